//! Lifecycle events to the events webhook (docs/PROTOCOL.md, "Lifecycle events"): a real
//! gateway posting to a real HTTP backend (`support::backend`), which can refuse for a while,
//! from memory or through MongoDB's `lifecycle_events`; and nodes that die with connections
//! open, whose `node_lost` disconnects the survivors write and deliver.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::channels::ConfigFile;
use crate::cluster::Cluster;
use crate::support::*;

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "room"
public = true
"#;

async fn app_for(store: Store, backend: &TestBackend, file: &ConfigFile) -> TestApp {
    let webhook = format!("{}/events", backend.url);
    spawn_app(
        store,
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
async fn a_session_from_connect_to_disconnect_is_told_in_order_from_memory() {
    a_session_from_connect_to_disconnect_is_told_in_order(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_connect_to_disconnect_is_told_in_order_through_mongodb() {
    a_session_from_connect_to_disconnect_is_told_in_order(Store::Mongo).await;
}

async fn a_session_from_connect_to_disconnect_is_told_in_order(store: Store) {
    let file = ConfigFile::new(NAMESPACES);
    let backend = TestBackend::start().await;
    let app = app_for(store, &backend, &file).await;

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

    if let Some(db) = &app.db {
        // Written before delivered, in the node's series, and the progress noted.
        let stored = stored_events(db, &app.node).await;
        let stored_ids: Vec<&str> = stored.iter().map(|d| d.get_str("_id").unwrap()).collect();
        let sent_ids: Vec<&str> = got.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(stored_ids, sent_ids);
        let seqs: Vec<i64> = stored.iter().map(|d| d.get_i64("seq").unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        // Noted within a second of the last delivery.
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stream = db
                .collection::<mongodb::bson::Document>("lifecycle_streams")
                .find_one(mongodb::bson::doc! { "_id": &app.node })
                .await
                .unwrap()
                .expect("the node's stream");
            assert_eq!(stream.get_str("holder").unwrap(), app.node);
            if stream.get_i64("delivered").unwrap() == 5 {
                break;
            }
            assert!(Instant::now() < deadline, "progress not noted: {stream}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `node`'s documents in `lifecycle_events`, in its series' order.
async fn stored_events(db: &mongodb::Database, node: &str) -> Vec<mongodb::bson::Document> {
    use futures_util::TryStreamExt;
    db.collection::<mongodb::bson::Document>("lifecycle_events")
        .find(mongodb::bson::doc! { "node": node })
        .sort(mongodb::bson::doc! { "seq": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_for_ten_seconds_then_back_gets_every_event_from_memory() {
    a_webhook_down_for_ten_seconds_then_back_gets_every_event_in_order(Store::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_down_for_ten_seconds_then_back_gets_every_event_through_mongodb() {
    a_webhook_down_for_ten_seconds_then_back_gets_every_event_in_order(Store::Mongo).await;
}

async fn a_webhook_down_for_ten_seconds_then_back_gets_every_event_in_order(store: Store) {
    let file = ConfigFile::new(NAMESPACES);
    let backend = TestBackend::start().await;
    let app = app_for(store, &backend, &file).await;
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
        app.metric_settles_at("ticketgate_lifecycle_events_delivered_total", &[], 60.0)
            .await,
        60.0
    );
}

/// Apps that read MongoDB instead of taking a webhook: RECORD_LIFECYCLE_EVENTS writes the
/// events, and the change stream of `lifecycle_events` carries them in the documented shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_events_reach_the_change_stream_without_a_webhook() {
    use futures_util::StreamExt;
    let file = ConfigFile::new(NAMESPACES);
    let app = spawn_app(
        Store::Mongo,
        &[
            ("RECORD_LIFECYCLE_EVENTS", "true"),
            ("CONFIG_FILE", file.path()),
        ],
    )
    .await;
    let db = app.db.clone().unwrap();
    let mut changes = db
        .collection::<mongodb::bson::Document>("lifecycle_events")
        .watch()
        .await
        .unwrap();

    let mut client = app.connect(&app.ticket("alice").await).await;
    client
        .send_json(&json!({"type": "jwt", "token": jwt_with_jti("alice", "jti-7")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
        .send_json(&json!({"type": "subscribe", "channel": "room:9"}))
        .await;
    client.next_json().await;
    client.close(1000).await;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let change = tokio::time::timeout(PATIENCE, changes.next())
            .await
            .expect("a change within PATIENCE")
            .unwrap()
            .unwrap();
        assert_eq!(
            change.operation_type,
            mongodb::change_stream::event::OperationType::Insert
        );
        seen.push(change.full_document.unwrap());
    }
    let connection_id = seen[0].get_str("connection_id").unwrap().to_owned();
    for (i, (document, kind)) in seen
        .iter()
        .zip(["connect", "subscribe", "disconnect"])
        .enumerate()
    {
        assert_eq!(document.get_str("type").unwrap(), kind, "{document}");
        assert_eq!(document.get_str("node").unwrap(), app.node);
        let seq = document.get_i64("seq").unwrap();
        assert_eq!(seq, i as i64 + 1);
        assert_eq!(
            document.get_str("_id").unwrap(),
            format!("{}-{seq}", app.node)
        );
        assert_eq!(document.get_str("user_id").unwrap(), "alice");
        assert_eq!(document.get_str("connection_id").unwrap(), connection_id);
        let time = document.get_i64("time").unwrap();
        assert_eq!(
            document.get_datetime("at").unwrap().timestamp_millis(),
            time
        );
    }
    assert_eq!(seen[0].get_str("jti").unwrap(), "jti-7");
    assert_eq!(seen[0].get_str("client_ip").unwrap(), "127.0.0.1");
    assert_eq!(seen[1].get_str("channel").unwrap(), "room:9");
    assert_eq!(seen[2].get_i32("code").unwrap(), 1000);
    assert!(seen[2].get_i64("duration_ms").is_ok(), "{}", seen[2]);
    assert_eq!(
        app.metric_settles_at("ticketgate_lifecycle_events_recorded_total", &[], 3.0)
            .await,
        3.0
    );
}

/// Two nodes posting to `backend`, on a fresh database, with a 1 s heartbeat.
fn cluster_for(backend: &TestBackend) -> Cluster {
    let webhook = format!("{}/events", backend.url);
    let vars = [
        ("EVENTS_WEBHOOK_URL", webhook.as_str()),
        ("UPSTREAM_KEY", UPSTREAM_KEY),
    ];
    tokio::task::block_in_place(|| Cluster::start_with(&mongo_uri(), 2, &vars))
}

/// The distinct events (by id) the backend took that match `keep`.
fn distinct(backend: &TestBackend, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut ids = HashSet::new();
    backend
        .events()
        .into_iter()
        .filter(|e| keep(e) && ids.insert(e["id"].as_str().unwrap().to_owned()))
        .collect()
}

fn is_node_lost(event: &Value) -> bool {
    event["type"] == "disconnect" && event["reason"] == "node_lost"
}

/// The contract's fault test: a node SIGKILLed with 100 connections; the survivor writes and
/// delivers one `node_lost` disconnect for each, and none for connections that had closed or
/// that live elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_connections_are_closed_as_node_lost_by_the_survivor() {
    let backend = TestBackend::start().await;
    let cluster = cluster_for(&backend);
    let doomed = cluster.node_id(1).await;
    let mut clients = Vec::new();
    for i in 0..100 {
        clients.push(cluster.client(1, &format!("user{i}")).await);
    }
    let mut leaver = cluster.client(1, "leaver").await;
    leaver.close(1000).await;
    let _stayer = cluster.client(2, "stayer").await;
    wait_until("node 1's 101 connects and one disconnect delivered", || {
        distinct(&backend, |e| e["node"] == doomed.as_str()).len() >= 102
    })
    .await;

    cluster.node(1).signal("KILL");
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    while distinct(&backend, is_node_lost).len() < 100 {
        assert!(
            Instant::now() < deadline,
            "{} node_lost events within 30 s",
            distinct(&backend, is_node_lost).len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let noticed = killed.elapsed();
    // The promise: within three heartbeats (3 s here), plus the webhook's and a loaded test
    // machine's time.
    assert!(
        noticed < Duration::from_secs(10),
        "node_lost took {noticed:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut connected: HashMap<String, String> = HashMap::new();
    for event in distinct(&backend, |e| e["type"] == "connect") {
        connected.insert(
            event["connection_id"].as_str().unwrap().to_owned(),
            event["user_id"].as_str().unwrap().to_owned(),
        );
    }
    let lost = distinct(&backend, is_node_lost);
    assert_eq!(
        lost.len(),
        100,
        "one node_lost per open connection, none more"
    );
    let mut lost_users = HashSet::new();
    for event in &lost {
        assert_eq!(event["node"], doomed.as_str(), "{event}");
        assert_eq!(event["code"], Value::Null, "{event}");
        let connection = event["connection_id"].as_str().unwrap();
        assert_eq!(
            connected.get(connection).map(String::as_str),
            event["user_id"].as_str(),
            "a node_lost matches a connect: {event}"
        );
        lost_users.insert(event["user_id"].as_str().unwrap().to_owned());
    }
    let expected: HashSet<String> = (0..100).map(|i| format!("user{i}")).collect();
    assert_eq!(lost_users, expected, "not the leaver, not the stayer");
    assert_eq!(
        cluster
            .metric(2, "ticketgate_lifecycle_streams_adopted_total", &[])
            .await,
        1.0
    );
    assert_eq!(
        cluster
            .metric(2, "ticketgate_lifecycle_node_lost_disconnects_total", &[])
            .await,
        100.0
    );
    eprintln!("100 node_lost disconnects delivered {noticed:?} after the SIGKILL");
    drop(clients);
}

/// A node cut off for longer than the others wait (here: stopped) finds on its return that
/// its connections were reported lost, and ends rather than carry on with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_declared_lost_stops_when_it_comes_back() {
    let backend = TestBackend::start().await;
    let mut cluster = cluster_for(&backend);
    let _client = cluster.client(1, "alice").await;
    wait_until("alice's connect delivered", || {
        !distinct(&backend, |e| e["type"] == "connect").is_empty()
    })
    .await;

    cluster.node(1).signal("STOP");
    let deadline = Instant::now() + Duration::from_secs(30);
    while distinct(&backend, is_node_lost).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no node_lost within 30 s of the stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(distinct(&backend, is_node_lost)[0]["user_id"], "alice");
    cluster.node(1).signal("CONT");
    let status =
        tokio::task::block_in_place(|| cluster.nodes[0].wait_exit(Duration::from_secs(20)));
    assert!(!status.success(), "{status:?}");
    let log = cluster.node(1).log();
    assert!(log.contains("was declared lost"), "{log}");
}

/// A node that drains (SIGTERM) closes its connections with 1001 and posts their
/// disconnects before it leaves: the survivor finds nothing to report lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_delivers_its_own_disconnects_before_it_leaves() {
    let backend = TestBackend::start().await;
    let mut cluster = cluster_for(&backend);
    let leaving = cluster.node_id(1).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(cluster.client(1, &format!("user{i}")).await);
    }
    wait_until("20 connects delivered", || {
        distinct(&backend, |e| e["type"] == "connect").len() >= 20
    })
    .await;

    // The webhook refuses for the first second of the drain: the node waits for it (up to
    // SHUTDOWN_GRACE_SECS) rather than leave its disconnects behind.
    backend.refuse_events(true);
    cluster.node(1).signal("TERM");
    tokio::time::sleep(Duration::from_secs(1)).await;
    backend.refuse_events(false);
    let status =
        tokio::task::block_in_place(|| cluster.nodes[0].wait_exit(Duration::from_secs(20)));
    assert!(status.success(), "{status:?}");
    let disconnects = distinct(&backend, |e| e["type"] == "disconnect");
    assert_eq!(disconnects.len(), 20, "posted before the node exited");
    for event in &disconnects {
        assert_eq!(event["code"], 1001, "{event}");
        assert_eq!(event["node"], leaving.as_str(), "{event}");
    }
    // The survivor takes over the departed node's series, and finds nothing open.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(distinct(&backend, is_node_lost).is_empty());
    assert_eq!(
        distinct(&backend, |e| e["type"] == "disconnect").len(),
        20,
        "no disconnect twice"
    );
    drop(clients);
}

/// MongoDB away for several heartbeats stops every node's beats at once: when it is back, no
/// node may declare another dead before that one had time to beat again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongod_restart_declares_no_node_lost() {
    let mut mongod = tokio::task::block_in_place(TestMongod::start);
    let backend = TestBackend::start().await;
    let webhook = format!("{}/events", backend.url);
    let vars = [
        ("EVENTS_WEBHOOK_URL", webhook.as_str()),
        ("UPSTREAM_KEY", UPSTREAM_KEY),
    ];
    let cluster = tokio::task::block_in_place(|| Cluster::start_with(&mongod.uri, 2, &vars));
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(cluster.client(1 + i % 2, &format!("user{i}")).await);
    }
    wait_until("6 connects delivered", || {
        distinct(&backend, |e| e["type"] == "connect").len() >= 6
    })
    .await;

    tokio::task::block_in_place(|| mongod.stop());
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::task::block_in_place(|| mongod.restart());
    // Long enough for every node to sweep a few times.
    tokio::time::sleep(Duration::from_secs(6)).await;

    assert!(
        distinct(&backend, is_node_lost).is_empty(),
        "{:?}",
        distinct(&backend, is_node_lost)
    );
    for node in 1..=2 {
        let log = cluster.node(node).log();
        assert!(!log.contains("was declared lost"), "node {node}: {log}");
        assert_eq!(
            cluster
                .metric(node, "ticketgate_lifecycle_streams_adopted_total", &[])
                .await,
            0.0
        );
    }
    // Both nodes still serve, and still tell.
    let _late = cluster.client(2, "late").await;
    wait_until("the late connect delivered", || {
        distinct(&backend, |e| e["user_id"] == "late").len() == 1
    })
    .await;
    drop(clients);
}
