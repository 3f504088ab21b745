//! SIGHUP (docs/PROTOCOL.md, "Reloading"): the channel namespaces and the JWT key files are
//! read again and put in force without dropping a connection; an invalid configuration keeps
//! the running one and the log says why.

use jsonwebtoken::Algorithm;
use serde_json::json;
use ticketgate_client::protocol;

use crate::jwt_keys::{claims, fixture, private_key, sign};
use crate::support::*;

/// A JWT for alice signed with the RSA fixture key `name`.
fn rs256(name: &str) -> String {
    sign(
        Algorithm::RS256,
        None,
        &private_key(name),
        &claims(json!({})),
    )
}

/// A ticket minted with `token`, or the status that refused it.
async fn ticket(gateway: &GatewayProcess, token: &str) -> Result<String, u16> {
    let http = reqwest::Client::new();
    protocol::request_ticket(&http, &gateway.url("/token/ws"), token)
        .await
        .map_err(|e| match e {
            ticketgate_client::Error::Ticket { status, .. } => status,
            other => panic!("minting: {other}"),
        })
}

async fn subscribe(client: &mut WsClient, channel: &str) -> serde_json::Value {
    client
        .send_json(&json!({ "type": "subscribe", "channel": channel }))
        .await;
    client.next_json().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_namespaces_and_keys_and_keeps_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (config, key) = (
        dir.path().join("ticketgate.toml"),
        dir.path().join("jwt.pem"),
    );
    let namespaces = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("[[channels.namespaces]]\nname = \"{n}\"\npublic = true\n"))
            .collect::<String>()
    };
    std::fs::write(&config, namespaces(&["news"])).unwrap();
    std::fs::copy(fixture("rsa-a.pub.pem"), &key).unwrap();
    let (config_path, key_path) = (config.to_str().unwrap(), key.to_str().unwrap());
    let gateway = GatewayProcess::start(&[
        ("CONFIG_FILE", config_path),
        ("JWT_PUBLIC_KEY_FILE", key_path),
        ("API_KEY", "reload-test-api-key-0123456789"),
    ]);
    let mut alice = try_connect_url(
        &gateway.ws_url(&ticket(&gateway, &rs256("rsa-a")).await.unwrap()),
        None,
    )
    .await
    .unwrap();
    alice.authenticate(&rs256("rsa-a")).await;
    assert_eq!(subscribe(&mut alice, "news:1").await["type"], "subscribed");
    let refused = subscribe(&mut alice, "sport:1").await;
    assert_eq!(refused["error"], "unknown_namespace", "{refused}");
    assert_eq!(ticket(&gateway, &rs256("rsa-b")).await, Err(401));

    // A new namespace and a rotated key, then SIGHUP.
    std::fs::write(&config, namespaces(&["news", "sport"])).unwrap();
    std::fs::copy(fixture("rsa-b.pub.pem"), &key).unwrap();
    gateway.signal("HUP");
    gateway
        .wait_for_log(
            "SIGHUP: configuration reloaded: 2 channel namespaces in force, JWT keys read again",
        )
        .await;
    // The same connection goes on, with the new namespace.
    assert_eq!(subscribe(&mut alice, "sport:1").await["type"], "subscribed");
    let http = reqwest::Client::new();
    let published = http
        .post(gateway.url("/api/channels/news:1/publish"))
        .bearer_auth("reload-test-api-key-0123456789")
        .json(&json!({ "data": "still here" }))
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 202);
    assert_eq!(
        alice.publications_then_silence(1).await,
        [json!("still here")]
    );
    // The rotated key mints; the old one no longer does.
    assert!(ticket(&gateway, &rs256("rsa-b")).await.is_ok());
    assert_eq!(ticket(&gateway, &rs256("rsa-a")).await, Err(401));

    // An invalid file keeps what runs, and says why.
    std::fs::write(&config, "[[channels.namespaces]]\nname = \"bad:name\"\n").unwrap();
    gateway.signal("HUP");
    let log = gateway.wait_for_log("the running one stays").await;
    assert!(
        log.contains("bad:name"),
        "the log names the problem:\n{log}"
    );
    assert_eq!(subscribe(&mut alice, "sport:2").await["type"], "subscribed");
    assert!(ticket(&gateway, &rs256("rsa-b")).await.is_ok());
}
