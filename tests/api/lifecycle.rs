//! Lifecycle events to the events webhook (docs/PROTOCOL.md, "Lifecycle events"): a real
//! gateway posting to a real HTTP backend (`support::backend`), which can refuse for a while.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::channels::ConfigFile;
use crate::support::*;

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "room"
public = true
"#;

async fn app_for(backend: &TestBackend, file: &ConfigFile) -> TestApp {
    let webhook = format!("{}/events", backend.url);
    spawn_app(
        Store::Memory,
        &[
            ("EVENTS_WEBHOOK_URL", &webhook),
            ("UPSTREAM_KEY", UPSTREAM_KEY),
            ("CONFIG_FILE", file.path()),
        ],
    )
    .await
}

/// Waits until the backend took `count` events.
async fn events(backend: &TestBackend, count: usize, patience: Duration) -> Vec<Value> {
    let deadline = Instant::now() + patience;
    loop {
        let events = backend.events();
        if events.len() >= count {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} events within {patience:?}: {events:?}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_connect_to_disconnect_is_told_in_order() {
    let file = ConfigFile::new(NAMESPACES);
    let backend = TestBackend::start().await;
    let app = app_for(&backend, &file).await;

    // A connection that never authenticates has no events.
    let unproven = app.connect(&app.ticket("mallory").await).await;
    drop(unproven);

    let mut client = app.connect(&app.ticket("alice").await).await;
    client
        .send_json(&json!({"type": "jwt", "token": jwt_with_jti("alice", "jti-9")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    for (kind, channel) in [
        ("subscribe", "room:1"),
        ("unsubscribe", "room:1"),
        ("subscribe", "room:2"),
    ] {
        client
            .send_json(&json!({"type": kind, "channel": channel}))
            .await;
        client.next_json().await;
    }
    client.close(1000).await;

    let got = events(&backend, 5, PATIENCE).await;
    let kinds: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "connect",
            "subscribe",
            "unsubscribe",
            "subscribe",
            "disconnect"
        ]
    );
    let connection_id = got[0]["connection_id"].as_str().unwrap();
    assert!(
        connection_id.ends_with(&format!("@{}", app.node)),
        "{connection_id}"
    );
    let ids: HashSet<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 5, "ids are unique");
    for event in &got {
        assert_eq!(event["user_id"], "alice", "{event}");
        assert_eq!(event["connection_id"], connection_id, "{event}");
        assert_eq!(event["node"], app.node.as_str(), "{event}");
        assert!(
            event["time"].as_u64().unwrap() > 1_700_000_000_000,
            "{event}"
        );
    }
    assert_eq!(got[0]["jti"], "jti-9");
    assert_eq!(got[0]["client_ip"], "127.0.0.1");
    assert_eq!(got[1]["channel"], "room:1");
    assert_eq!(got[2]["channel"], "room:1");
    assert_eq!(got[3]["channel"], "room:2");
    assert_eq!(got[4]["code"], 1000);
    assert!(got[4]["duration_ms"].as_u64().is_some(), "{}", got[4]);
    let calls = backend.calls();
    assert!(calls.iter().all(|call| call.path == "/internal/events"
        && call.authorization.as_deref() == Some(&format!("Bearer {UPSTREAM_KEY}"))));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.events().len(), 5, "nothing more, nothing twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_for_ten_seconds_then_back_gets_every_event_in_order() {
    let file = ConfigFile::new(NAMESPACES);
    let backend = TestBackend::start().await;
    let app = app_for(&backend, &file).await;
    backend.refuse_events(true);
    let down = Instant::now();
    for i in 0..20 {
        let mut client = app.authenticated(&format!("user-{i}")).await;
        client
            .send_json(&json!({"type": "subscribe", "channel": format!("room:{i}")}))
            .await;
        client.next_json().await;
        client.close(1000).await;
    }
    wait_until("the webhook refused a few times", || {
        backend.calls().iter().filter(|call| call.refused).count() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    assert!(backend.events().is_empty());
    backend.refuse_events(false);

    // 20 × (connect, subscribe, disconnect), within the longest backoff and then some.
    let got = events(&backend, 60, Duration::from_secs(40)).await;
    assert_eq!(got.len(), 60, "every event once");
    let mut per_connection: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in &got {
        per_connection
            .entry(event["connection_id"].as_str().unwrap())
            .or_default()
            .push(event["type"].as_str().unwrap());
    }
    assert_eq!(per_connection.len(), 20);
    for (connection, kinds) in per_connection {
        assert_eq!(
            kinds,
            ["connect", "subscribe", "disconnect"],
            "{connection}"
        );
    }
    assert!(
        app.metric("ticketgate_lifecycle_webhook_failures_total", &[])
            .await
            >= 3.0
    );
    assert_eq!(
        app.metric("ticketgate_lifecycle_events_delivered_total", &[])
            .await,
        60.0
    );
}
