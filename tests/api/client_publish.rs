//! Publishing from clients (docs/PROTOCOL.md, "Upstream"): allowed by the JWT's `publish`
//! claim or by the app's backend through the publish proxy, and then delivered exactly like a
//! publication from the server API, offsets included.

use serde_json::{Value, json};
use ticketgate::jwt::Claims;

use crate::channels::ConfigFile;
use crate::support::*;

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "room"
public = true
client_publish = true

[[channels.namespaces]]
name = "feed"
public = true
client_publish = true
history_size = 1000
history_ttl_secs = 600

[[channels.namespaces]]
name = "moderated"
public = true
client_publish = true
publish_proxy = true

[[channels.namespaces]]
name = "readonly"
public = true
"#;

/// A JWT for `sub` with this `publish` claim.
fn jwt_publishing(sub: &str, publish: &[&str]) -> String {
    jwt_with(&Claims {
        sub: sub.into(),
        exp: now() + 600,
        publish: Some(publish.iter().map(|c| c.to_string()).collect()),
        ..Claims::default()
    })
}

async fn app_with(file: &ConfigFile, backend: Option<&TestBackend>) -> TestApp {
    let mut vars: Vec<(&str, String)> = vec![("CONFIG_FILE", file.path().to_owned())];
    if let Some(backend) = backend {
        vars.extend(backend.vars());
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    spawn_app(Store::Memory, &vars).await
}

async fn connected(app: &TestApp, sub: &str, jwt: String) -> WsClient {
    let mut client = app.connect(&app.ticket(sub).await).await;
    client
        .send_json(&json!({"type": "jwt", "token": jwt}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
}

async fn subscribed(client: &mut WsClient, channel: &str) {
    client
        .send_json(&json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(client.next_json().await["type"], "subscribed");
}

async fn publish(client: &mut WsClient, channel: &str, data: Value, id: u64) -> Value {
    client
        .send_json(&json!({"type": "publish", "channel": channel, "data": data, "id": id}))
        .await;
    client.next_json().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_claim_lets_a_client_publish_like_the_server_api() {
    let file = ConfigFile::new(NAMESPACES);
    // The `moderated` namespace needs a backend to start; these publications never ask it.
    let backend = TestBackend::start().await;
    let app = app_with(&file, Some(&backend)).await;
    let mut reader = connected(&app, "reader", jwt("reader")).await;
    subscribed(&mut reader, "room:1").await;
    subscribed(&mut reader, "feed:news").await;
    let mut writer = connected(
        &app,
        "writer",
        jwt_publishing("writer", &["room:*", "feed:news"]),
    )
    .await;

    // Not a subscriber itself, and still allowed.
    assert_eq!(
        publish(&mut writer, "room:1", json!({"text": "hello"}), 1).await,
        json!({"type": "published", "channel": "room:1", "id": 1})
    );
    assert_eq!(
        reader.next_json().await,
        json!({"type": "publication", "channel": "room:1", "data": {"text": "hello"}})
    );
    // In a history namespace it is numbered, like a server API publication.
    let reply = publish(&mut writer, "feed:news", json!("first"), 2).await;
    assert_eq!(reply["type"], "published", "{reply}");
    assert_eq!(reply["offset"], 1);
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    let got = reader.next_json().await;
    assert_eq!(
        got,
        json!({"type": "publication", "channel": "feed:news", "offset": 1, "epoch": epoch, "data": "first"})
    );
    assert_eq!(
        publish(&mut writer, "feed:news", json!("second"), 3).await["offset"],
        2
    );
    assert_eq!(reader.next_json().await["offset"], 2);

    // Refusals: outside the claim, a namespace without client_publish, a bad name.
    for (channel, code) in [
        ("room2:x", "unknown_namespace"),
        ("feed:other", "permission_denied"),
        ("readonly:x", "permission_denied"),
        ("bad channel", "invalid_channel"),
    ] {
        let reply = publish(&mut writer, channel, json!(0), 9).await;
        assert_eq!(reply["type"], "error", "{channel}: {reply}");
        assert_eq!(reply["error"], code, "{channel}: {reply}");
        assert_eq!(reply["id"], 9, "{channel}: {reply}");
    }
    // A connection without the claim may not publish where the claim is the only way in.
    let reply = publish(&mut reader, "room:1", json!(0), 4).await;
    assert_eq!(reply["error"], "permission_denied", "{reply}");
    assert_eq!(reply["channel"], "room:1");
    // Data too large for the channel's history: 10 MiB / history_size, about 10 KiB here.
    let big = "x".repeat(12 * 1024);
    let reply = publish(&mut writer, "feed:news", json!(big), 5).await;
    assert_eq!(reply["error"], "publication_too_large", "{}", reply["type"]);
    assert_eq!(
        app.metric(
            "ticketgate_client_publications_total",
            &[("result", "published")]
        )
        .await,
        3.0
    );
    assert!(backend.calls().is_empty(), "{:?}", backend.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_proxy_lets_the_backend_allow_replace_or_refuse() {
    let file = ConfigFile::new(NAMESPACES);
    let mut backend = TestBackend::start().await;
    let app = app_with(&file, Some(&backend)).await;
    let mut reader = connected(&app, "reader", jwt("reader")).await;
    subscribed(&mut reader, "moderated:lobby").await;
    let mut writer = connected(&app, "writer", jwt_with_jti("writer", "j-1")).await;

    // The test backend allows `{"say": …}`, replaces `{"shout": X}` by `{"say": X}` and
    // refuses anything else with its error object.
    let reply = publish(&mut writer, "moderated:lobby", json!({"say": "hi"}), 1).await;
    assert_eq!(
        reply,
        json!({"type": "published", "channel": "moderated:lobby", "id": 1})
    );
    assert_eq!(reader.next_json().await["data"], json!({"say": "hi"}));
    publish(&mut writer, "moderated:lobby", json!({"shout": "HEY"}), 2).await;
    assert_eq!(reader.next_json().await["data"], json!({"say": "hey"}));
    let reply = publish(&mut writer, "moderated:lobby", json!({"spam": 1}), 3).await;
    assert_eq!(reply["type"], "error");
    assert_eq!(reply["error"], "permission_denied");
    assert_eq!(reply["channel"], "moderated:lobby");
    assert_eq!(
        reply["detail"],
        json!({"code": 403, "message": "not on my watch"})
    );
    reader
        .expect_silence(std::time::Duration::from_millis(200))
        .await;

    // Every call carried who asks, the channel and the data as sent.
    let calls = backend.calls();
    assert_eq!(calls.len(), 3);
    let call = &calls[0];
    assert_eq!(call.path, "/internal/publish");
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Bearer {UPSTREAM_KEY}").as_str())
    );
    assert_eq!(call.body["channel"], "moderated:lobby");
    assert_eq!(call.body["data"], json!({"say": "hi"}));
    assert_eq!(call.body["user_id"], "writer");
    assert_eq!(call.body["jti"], "j-1");
    assert_eq!(call.body["node"], app.node.as_str());

    // A JWT whose publish claim covers the channel is not put to the backend.
    let mut granted = connected(&app, "granted", jwt_publishing("granted", &["moderated:*"])).await;
    publish(&mut granted, "moderated:lobby", json!({"spam": 2}), 4).await;
    assert_eq!(reader.next_json().await["data"], json!({"spam": 2}));
    assert_eq!(backend.calls().len(), 3);

    // The backend gone: refused clearly, and the connection stays.
    backend.go_away().await;
    let reply = publish(&mut writer, "moderated:lobby", json!({"say": "anyone?"}), 5).await;
    assert_eq!(reply["error"], "upstream_unavailable", "{reply}");
    writer.send_json(&json!({"type": "ping", "id": 6})).await;
    assert_eq!(writer.next_json().await, json!({"type": "pong", "id": 6}));
    reader
        .expect_silence(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_proxy_needs_client_publish_and_an_upstream_url() {
    let vars = |contents: &str| {
        let file = ConfigFile::new(contents);
        let mut vars = base_vars(Store::Memory);
        vars.insert("CONFIG_FILE".into(), file.path().to_owned());
        (file, vars)
    };
    let (_file, without_url) = vars(NAMESPACES);
    let err = ticketgate::config::Settings::from_vars(&without_url)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("moderated") && err.contains("UPSTREAM_URL"),
        "{err}"
    );
    let (_file, proxy_alone) =
        vars("[[channels.namespaces]]\nname = \"x\"\npublish_proxy = true\n");
    let err = ticketgate::config::Settings::from_vars(&proxy_alone)
        .unwrap_err()
        .to_string();
    assert!(err.contains("client_publish"), "{err}");
}
