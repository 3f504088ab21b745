//! The Rust client crate (clients/rust) against real gateways: messages, RPC through a real
//! backend, client publish, presence and refusals, the stop on 4403, a reconnect across a node
//! killed with SIGKILL with the missed publications recovered in order, a node that lost its
//! place in MongoDB's stream (resubscribed with `since`, `missed` raised), and its `tail`
//! example.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Value, json};
use ticketgate::jwt::Claims;
use ticketgate_client::{Backoff, Client, Error, Message, MessageKind, State};

use crate::channels::ConfigFile;
use crate::support::*;

const API_KEY: &str = "rust-client-api-key-0123456789";

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "feed"
public = true
history_size = 100
history_ttl_secs = 600
[[channels.namespaces]]
name = "room"
presence = true
[[channels.namespaces]]
name = "talk"
public = true
client_publish = true
history_size = 50
history_ttl_secs = 600
[[channels.namespaces]]
name = "plain"
public = true
[[channels.namespaces]]
name = "price"
public = true
history_size = 1
history_ttl_secs = 600
deliver_latest = true
"#;

fn fast() -> Backoff {
    Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        factor: 2.0,
        jitter: 0.5,
    }
}

async fn connect(base_url: &str, token: String) -> Client {
    Client::builder(base_url)
        .jwt(move || {
            let token = token.clone();
            async move { Ok(token) }
        })
        .backoff(fast())
        .connect()
        .await
        .expect("the client connects")
}

async fn next<T>(stream: &mut (impl futures_util::Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("an item in time")
        .expect("the stream goes on")
}

/// No publication follows (nothing twice), and no resync came (nothing lost).
async fn nothing_twice_nothing_lost(
    feed: &mut (impl futures_util::Stream + Unpin),
    resyncs: &mut (impl futures_util::Stream + Unpin),
) {
    assert!(
        tokio::time::timeout(Duration::from_millis(500), feed.next())
            .await
            .is_err(),
        "nothing twice"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), resyncs.next())
            .await
            .is_err(),
        "nothing lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_carries_messages_rpc_publish_presence_and_stops_on_4403() {
    let backend = TestBackend::start().await;
    let file = ConfigFile::new(NAMESPACES);
    let vars = backend.vars();
    let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    overrides.extend([("CONFIG_FILE", file.path()), ("API_KEY", API_KEY)]);
    let app = spawn_app(Store::Memory, &overrides).await;
    let token = jwt_with(&Claims {
        sub: "alice".into(),
        exp: now() + 600,
        channels: Some(vec!["room:*".into()]),
        publish: Some(vec!["talk:*".into()]),
        ..Claims::default()
    });
    let client = connect(&app.url(""), token).await;
    assert_eq!(client.state(), State::Authenticated);
    assert_eq!(client.user_id().as_deref(), Some("alice"));

    let mut messages = client.messages();
    app.publish(r#"{"hello":"all"}"#).await;
    let (status, _) = app
        .call_api(
            API_KEY,
            reqwest::Method::POST,
            "/api/users/alice/messages",
            Some(json!({"data": "you"})),
        )
        .await;
    assert_eq!(status, 202);
    // The broadcast ring and the user's mailbox are apart: either may arrive first.
    let mut got = vec![
        next(&mut messages).await.unwrap(),
        next(&mut messages).await.unwrap(),
    ];
    got.sort_by_key(|message| message.kind == MessageKind::Message);
    assert_eq!(
        got,
        [
            Message {
                kind: MessageKind::Broadcast,
                data: json!({"hello": "all"})
            },
            Message {
                kind: MessageKind::Message,
                data: json!("you")
            }
        ]
    );

    assert_eq!(
        client.rpc("echo", json!({"n": [1, 2]})).await.unwrap(),
        json!({"n": [1, 2]})
    );
    match client.rpc("error", json!("why")).await {
        Err(Error::Rpc { code, detail, .. }) => {
            assert_eq!(code, 42);
            assert_eq!(detail.unwrap()["detail"], "why");
        }
        other => panic!("expected the backend's error, got {other:?}"),
    }
    let first = client.publish("talk:1", json!(1)).await.unwrap();
    let second = client.publish("talk:1", json!(2)).await.unwrap();
    assert_eq!((first.offset, second.offset), (Some(1), Some(2)));

    // A state channel: the latest publication comes first, as an ordinary one.
    for price in [json!(1.07), json!(1.08)] {
        let (status, _) = app
            .call_api(
                API_KEY,
                reqwest::Method::POST,
                "/api/channels/price:eur/publish",
                Some(json!({ "data": price })),
            )
            .await;
        assert_eq!(status, 202);
    }
    let mut price = client.subscribe("price:eur");
    price.ready().await.unwrap();
    let latest = next(&mut price).await.unwrap();
    assert_eq!((latest.data, latest.offset), (json!(1.08), Some(2)));

    let mut room = client.subscribe("room:lobby");
    room.ready().await.unwrap();
    let present = room.presence().await.unwrap();
    assert_eq!(present[0].user_id, "alice");
    let mut nowhere = client.subscribe("nowhere:1");
    match nowhere.ready().await {
        Err(Error::Channel { code, .. }) => assert_eq!(code, "unknown_namespace"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // A server-side disconnect (4403) ends the client: streams and calls say so.
    app.call_api(
        API_KEY,
        reqwest::Method::POST,
        "/api/users/alice/disconnect",
        None,
    )
    .await;
    match next(&mut messages).await {
        Err(Error::Closed { code: 4403, reason }) => {
            assert_eq!(reason, "disconnected by the server")
        }
        other => panic!("expected 4403, got {other:?}"),
    }
    assert!(matches!(
        next(&mut room).await,
        Err(Error::Closed { code: 4403, .. })
    ));
    assert_eq!(client.state(), State::Closed);
    assert!(matches!(
        client.rpc("echo", Value::Null).await,
        Err(Error::Closed { code: 4403, .. })
    ));
    // A refused JWT stops without looping.
    let refused = Client::builder(app.url(""))
        .jwt(|| async { Ok("not-a-jwt".to_owned()) })
        .connect()
        .await;
    assert!(
        matches!(refused, Err(Error::Ticket { status: 401, .. })),
        "{:?}",
        refused.err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_recovers_across_a_sigkill_and_tail_prints_json_lines() {
    let file = ConfigFile::new(NAMESPACES);
    let (uri, database) = (mongo_uri(), unique_db_name());
    let bind = format!("127.0.0.1:{}", free_port());
    let node1_vars = [
        ("JWT_SECRET", SECRET),
        ("MONGODB_URI", uri.as_str()),
        ("MONGODB_DATABASE", database.as_str()),
        ("API_KEY", API_KEY),
        ("CONFIG_FILE", file.path()),
        ("BIND_ADDR", bind.as_str()),
    ];
    let mut node1 = tokio::task::block_in_place(|| GatewayProcess::start(&node1_vars));
    let node2 = tokio::task::block_in_place(|| GatewayProcess::start(&node1_vars[..5]));
    let http = reqwest::Client::new();
    let publish = |n: u64| {
        let request = http
            .post(node2.url("/api/channels/feed:live/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"data": n}));
        async move { request.send().await.unwrap().status().as_u16() }
    };

    let client = connect(&node1.url(""), jwt("carol")).await;
    let mut feed = client.subscribe("feed:live");
    feed.ready().await.unwrap();
    let mut resyncs = feed.resyncs();
    for n in 1..=3 {
        assert_eq!(publish(n).await, 202);
    }
    for n in 1..=3u64 {
        assert_eq!(next(&mut feed).await.unwrap().data, json!(n));
    }
    node1.signal("KILL");
    tokio::task::block_in_place(|| node1.wait_exit(PATIENCE));
    for n in 4..=6 {
        assert_eq!(publish(n).await, 202);
    }
    node1 = tokio::task::block_in_place(|| GatewayProcess::start(&node1_vars));
    assert_eq!(publish(7).await, 202);
    let mut got = Vec::new();
    for _ in 4..=7 {
        let publication = next(&mut feed).await.unwrap();
        got.push((publication.offset.unwrap(), publication.data));
    }
    assert_eq!(got, (4..=7u64).map(|n| (n, json!(n))).collect::<Vec<_>>());
    nothing_twice_nothing_lost(&mut feed, &mut resyncs).await;
    client.close().await;
    assert_eq!(client.state(), State::Closed);

    // The tail example: one JSON line per publication on stdout.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "ticketgate-client",
            "--example",
            "tail",
        ])
        .current_dir(repo_root())
        .status()
        .expect("running cargo build for the tail example");
    assert!(built.success(), "the tail example builds");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join("target"));
    let mut tail = ChildGuard(
        Command::new(target.join("debug/examples/tail"))
            .args([node2.url(""), "feed:live".to_owned()])
            .env("TICKETGATE_JWT", jwt("dave"))
            .envs(test_run_marker())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the tail example"),
    );
    let stderr = BufReader::new(tail.0.stderr.take().unwrap());
    let mut stdout = BufReader::new(tail.0.stdout.take().unwrap());
    // Subscribed before publishing, so nothing is missed.
    tokio::task::block_in_place(|| {
        for line in stderr.lines() {
            if line.unwrap().contains("subscribed to feed:live") {
                break;
            }
        }
    });
    assert_eq!(publish(8).await, 202);
    let line = tokio::task::block_in_place(|| {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        line
    });
    let printed: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(printed["channel"], "feed:live");
    assert_eq!(printed["offset"], 8);
    assert_eq!(printed["data"], 8);
    assert!(printed["epoch"].is_string());
    drop(node1);
}

/// Kills the child when dropped, on success and on panic.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The crate is publishable: `cargo package` finds its manifest, readme and files in order.
#[test]
fn the_rust_client_crate_packages() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "package",
            "--quiet",
            "--no-verify",
            "--allow-dirty",
            "-p",
            "ticketgate-client",
        ])
        .current_dir(repo_root())
        .output()
        .expect("running cargo package");
    assert!(
        output.status.success(),
        "cargo package -p ticketgate-client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The JWT is refreshed in-band before it runs out, and a subscription token before its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_refreshes_its_jwt_and_its_subscription_tokens() {
    let file = ConfigFile::new(NAMESPACES);
    let app = spawn_app(
        Store::Memory,
        &[
            ("CONFIG_FILE", file.path()),
            ("API_KEY", API_KEY),
            ("TOKEN_REFRESH_NOTICE_SECS", "2"),
        ],
    )
    .await;
    let jwts = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = std::sync::Arc::clone(&jwts);
    let client = Client::builder(app.url(""))
        .jwt(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                Ok(jwt_with(&Claims {
                    sub: "erin".into(),
                    exp: now() + if n == 0 { 3 } else { 600 },
                    ..Claims::default()
                }))
            }
        })
        .backoff(fast())
        .connect()
        .await
        .unwrap();
    let tokens = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let issued = std::sync::Arc::clone(&tokens);
    let mut room = client.subscribe_with_token("room:private", move |channel| {
        let n = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            Ok(jwt_with(&Claims {
                sub: "erin".into(),
                exp: now() + if n == 0 { 3 } else { 600 },
                channel: Some(channel),
                ..Claims::default()
            }))
        }
    });
    room.ready().await.unwrap();
    // Past both first tokens' exp: still connected, still subscribed.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(client.state(), State::Authenticated);
    assert!(
        jwts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the JWT was refreshed"
    );
    assert!(
        tokens.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the token was refreshed"
    );
    let (status, _) = app
        .call_api(
            API_KEY,
            reqwest::Method::POST,
            "/api/channels/room:private/publish",
            Some(json!({"data": "still here"})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(next(&mut room).await.unwrap().data, json!("still here"));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_resubscribes_when_its_node_lost_its_place_and_says_what_was_missed() {
    let file = ConfigFile::new(NAMESPACES);
    let database = unique_db_name();
    let app_name = format!("tg-rs-{}", &unique_db_name()[3..]);
    // A mongod of its own: MongoDB has one `failCommand` fail point, which the other
    // clients' suites set too.
    let mongod = tokio::task::block_in_place(TestMongod::start);
    let shared = mongod.uri.clone();
    let lossy = with_app_name(&shared, &app_name);
    let node = |uri: &str| {
        tokio::task::block_in_place(|| {
            GatewayProcess::start(&[
                ("JWT_SECRET", SECRET),
                ("MONGODB_URI", uri),
                ("MONGODB_DATABASE", database.as_str()),
                ("API_KEY", API_KEY),
                ("CONFIG_FILE", file.path()),
            ])
        })
    };
    let (node1, node2) = (node(&lossy), node(&shared));
    let http = reqwest::Client::new();
    let publish = |n: u64| {
        let request = http
            .post(node2.url("/api/channels/feed:lost/publish"))
            .bearer_auth(API_KEY)
            .json(&json!({"data": n}));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let client = connect(&node1.url(""), jwt("erin")).await;
    let mut messages = client.messages();
    let mut feed = client.subscribe("feed:lost");
    let mut plain = client.subscribe("plain:lost");
    feed.ready().await.unwrap();
    plain.ready().await.unwrap();
    let mut resyncs = feed.resyncs();
    assert_eq!(publish(1).await, 202);
    assert_eq!(next(&mut feed).await.unwrap().data, json!(1));

    // Node 1's stream is held, then loses its place: what is published meanwhile reaches it
    // only through the resubscribe's recovery.
    lose_stream_place(&shared, &app_name, 2000).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    for n in 2..=3 {
        assert_eq!(publish(n).await, 202);
    }
    assert_eq!(
        next(&mut messages).await.unwrap(),
        Message {
            kind: MessageKind::Missed,
            data: json!(["plain:lost"]),
        }
    );
    let mut got = Vec::new();
    for _ in 2..=3 {
        let publication = next(&mut feed).await.unwrap();
        got.push((publication.offset.unwrap(), publication.data));
    }
    assert_eq!(got, [(2, json!(2)), (3, json!(3))]);
    node1.wait_for_log("cannot resume").await;
    assert_eq!(publish(4).await, 202);
    assert_eq!(next(&mut feed).await.unwrap().data, json!(4));
    nothing_twice_nothing_lost(&mut feed, &mut resyncs).await;
    client.close().await;
}
