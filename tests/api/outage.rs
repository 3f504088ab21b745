//! A failing MongoDB: clear 503s in bounded time, open connections untouched, recovery without
//! a restart, and a start while MongoDB is still down.

use std::time::{Duration, Instant};

use mongodb::bson::Document;
use serde_json::json;
use serde_json::value::RawValue;

use ticketgate::bus::{BusMode, Command};

use crate::support::*;

/// Well above STORE_TIMEOUT_MS below: the point is "bounded", not a speed.
const ANSWER_BOUND: Duration = Duration::from_secs(5);

async fn app_on(uri: &str, store_timeout_ms: &str) -> TestApp {
    let mut vars = base_vars(Store::Memory);
    vars.insert("MONGODB_URI".into(), uri.to_owned());
    vars.insert("MONGODB_DATABASE".into(), unique_db_name());
    vars.insert("STORE_TIMEOUT_MS".into(), store_timeout_ms.to_owned());
    spawn_app_with(vars).await
}

/// `GET /readyz`: the status, and the body (null when not JSON).
async fn readiness(app: &TestApp) -> (u16, serde_json::Value) {
    let response = app.http.get(app.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Waits until `/readyz` answers 200: after an outage the store answers first, and the change
/// stream, which readiness also waits for, reopens on its own backoff.
async fn ready_within(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = readiness(app).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "/readyz still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mint_until_ok(app: &TestApp, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = app.mint(Some(&format!("Bearer {}", jwt("alice")))).await;
        if status == 200 {
            return;
        }
        assert_eq!(
            (status, body["error"].as_str()),
            (503, Some("store_unavailable"))
        );
        assert!(Instant::now() < deadline, "minting never recovered");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_answers_503_keeps_open_connections_and_recovers() {
    let mut mongod = tokio::task::block_in_place(TestMongod::start);
    let app = app_on(&mongod.uri, "1000").await;
    let mut live = app.authenticated("alice").await;
    let minted_before = app.ticket("bob").await;

    tokio::task::block_in_place(|| mongod.stop());

    let started = Instant::now();
    let (status, body) = app.mint(Some(&format!("Bearer {}", jwt("bob")))).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (503, "store_unavailable")
    );
    assert!(
        started.elapsed() < ANSWER_BOUND,
        "minting hung for {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (status, body) = app.try_connect(&minted_before, None).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (503, "store_unavailable")
    );
    assert!(
        started.elapsed() < ANSWER_BOUND,
        "the upgrade hung for {:?}",
        started.elapsed()
    );
    eprintln!(
        "outage: upgrade answered 503 after {:?} (STORE_TIMEOUT_MS=1000)",
        started.elapsed()
    );

    // The authenticated connection does not depend on MongoDB.
    // The authenticated connection does not depend on MongoDB; broadcasts, which travel
    // through it on a replica set, are refused in bounded time.
    let started = Instant::now();
    let data = RawValue::from_string(r#""during the outage""#.into()).unwrap();
    assert!(app.bus.send(Command::Broadcast(data)).await.is_err());
    assert!(started.elapsed() < ANSWER_BOUND, "publishing hung");
    live.send_json(&json!({"type": "ping"})).await;
    assert_eq!(live.next_json().await, json!({"type": "pong"}));

    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "not ready while MongoDB is down");
    assert_eq!(body["cause"], "store_unavailable", "{body}");
    let livez = app.http.get(app.url("/livez")).send().await.unwrap();
    assert_eq!(livez.status(), 200, "alive while MongoDB is down");
    tokio::task::block_in_place(|| mongod.restart());
    let back = Instant::now();
    mint_until_ok(&app, Duration::from_secs(30)).await;
    ready_within(&app, Duration::from_secs(15)).await;
    eprintln!(
        "outage: minting recovered {:?} after mongod was primary again",
        back.elapsed()
    );
    // Nothing was lost: the ticket minted before the outage still opens a connection, and the
    // connection that lived through it gets broadcasts again once the change stream resumed.
    app.connect(&minted_before).await;
    let seq = app.publish(r#""after the outage""#).await;
    let next = live.next_json().await;
    assert_eq!(
        next,
        json!({"type": "broadcast", "seq": seq, "node": app.node, "data": "after the outage"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_while_mongodb_is_down_serves_503_until_it_comes_up() {
    let port = free_port();
    let uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let started = Instant::now();
    let app = app_on(&uri, "500").await;
    assert!(
        started.elapsed() < ANSWER_BOUND,
        "the start waited for MongoDB"
    );
    let (status, body) = app.mint(Some(&format!("Bearer {}", jwt("alice")))).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (503, "store_unavailable")
    );

    assert_eq!(readiness(&app).await.0, 503);
    // Until MongoDB has said what it is, the bus cannot choose a route: publishing is refused.
    assert_eq!(app.bus.mode(), BusMode::Starting);
    let data = RawValue::from_string("1".into()).unwrap();
    assert!(app.bus.send(Command::Broadcast(data)).await.is_err());
    let _mongod = tokio::task::block_in_place(|| TestMongod::start_on(port));
    mint_until_ok(&app, Duration::from_secs(60)).await;
    ready_within(&app, Duration::from_secs(15)).await;
    wait_until("the bus to take the replica set's change stream", || {
        app.bus.mode() == BusMode::ChangeStream
    })
    .await;
    let mut client = app.authenticated("alice").await;
    let seq = app.publish(r#""up""#).await;
    assert_eq!(client.next_json().await["seq"], seq);
    let indexes: Vec<String> = app
        .db
        .as_ref()
        .unwrap()
        .collection::<Document>("ws_tickets")
        .list_index_names()
        .await
        .unwrap();
    assert!(
        indexes.contains(&"created_at_ttl".to_string()),
        "migrations ran once it came up: {indexes:?}"
    );
}

/// Channels during an outage: a subscribe that needs MongoDB (presence) or a presence query is
/// refused with `unavailable` in bounded time and leaves nothing half-done; a subscribe granted
/// by the JWT in a namespace without presence needs no database and still works; once MongoDB
/// is back, a subscriber that left during the outage is gone from presence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_during_an_outage_refuse_clearly_and_leave_presence_true() {
    let mut mongod = tokio::task::block_in_place(TestMongod::start);
    let file = crate::channels::ConfigFile::new(crate::channels::NAMESPACES);
    let mut vars = base_vars(Store::Memory);
    vars.insert("MONGODB_URI".into(), mongod.uri.clone());
    vars.insert("MONGODB_DATABASE".into(), unique_db_name());
    vars.insert("STORE_TIMEOUT_MS".into(), "1000".into());
    vars.insert("NODE_HEARTBEAT_SECS".into(), "1".into());
    vars.insert("CONFIG_FILE".into(), file.path().to_owned());
    let app = spawn_app_with(vars).await;
    let token = crate::channels::jwt_granting("alice", &["chat:*", "tenant-42:*"]);
    let connect = |token: String| {
        let app = &app;
        async move {
            let mut client = app.connect(&app.ticket("alice").await).await;
            client
                .send_json(&json!({"type": "jwt", "token": token}))
                .await;
            assert_eq!(client.next_json().await["type"], "authenticated");
            client
        }
    };
    let mut stays = connect(token.clone()).await;
    let mut leaves = connect(token.clone()).await;
    for client in [&mut stays, &mut leaves] {
        client
            .send_json(&json!({"type": "subscribe", "channel": "chat:room"}))
            .await;
        assert_eq!(client.next_json().await["type"], "subscribed");
    }

    tokio::task::block_in_place(|| mongod.stop());
    let started = Instant::now();
    stays
        .send_json(&json!({"type": "subscribe", "channel": "chat:other", "id": 1}))
        .await;
    let refused = loop {
        let message = stays.next_json().await;
        if message["id"] == 1 {
            break message;
        }
    };
    assert_eq!(refused["error"], "unavailable", "{refused}");
    assert!(started.elapsed() < ANSWER_BOUND, "the subscribe hung");
    stays
        .send_json(&json!({"type": "presence", "channel": "chat:other", "id": 2}))
        .await;
    let reply = stays.next_json().await;
    assert_eq!(
        reply["error"], "not_subscribed",
        "the refused subscribe was undone: {reply}"
    );
    stays
        .send_json(&json!({"type": "presence", "channel": "chat:room", "id": 3}))
        .await;
    let reply = stays.next_json().await;
    assert_eq!(reply["error"], "unavailable", "{reply}");
    // A subscription token's jti cannot be checked against the revocations: try again.
    let token = crate::channels::subscription_token("alice", "tenant-42:t", 600, Some("t-1"));
    stays
        .send_json(&json!({"type": "subscribe", "channel": "tenant-42:t", "token": token, "id": 6}))
        .await;
    let reply = stays.next_json().await;
    assert_eq!(
        (reply["id"].as_u64(), reply["error"].as_str()),
        (Some(6), Some("unavailable")),
        "{reply}"
    );
    stays
        .send_json(&json!({"type": "subscribe", "channel": "tenant-42:x", "id": 4}))
        .await;
    assert_eq!(
        stays.next_json().await,
        json!({"type": "subscribed", "channel": "tenant-42:x", "id": 4}),
        "a claim grant needs no database"
    );
    // This one leaves while MongoDB cannot record it.
    drop(leaves);
    tokio::time::sleep(Duration::from_secs(2)).await;

    tokio::task::block_in_place(|| mongod.restart());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        stays
            .send_json(&json!({"type": "presence", "channel": "chat:room", "id": 5}))
            .await;
        let reply = loop {
            let message = stays.next_json().await;
            if message["id"] == 5 {
                break message;
            }
        };
        if reply["clients"].as_array().is_some_and(|c| c.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence still lists the one that left: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
