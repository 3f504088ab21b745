//! The transactional outbox (docs/PROTOCOL.md, "Publishing from the database"), against real
//! gateway processes and a real replica set: documents inserted by the app in multi-document
//! transactions (some aborted) are published once each, in commit order, to subscribers on
//! every node, and marked; documents that can never be published are marked failed and
//! block nothing; an idempotency key shared with the API publishes once; one node holds the
//! lease; a standalone mongod is refused at start; a SIGKILLed lease holder, a mongod
//! restart and a primary step-down lose and repeat nothing.

use std::time::Duration;

use mongodb::bson::{Document, doc};
use serde_json::{Value, json};

use crate::channels::{ConfigFile, jwt_granting};
use crate::cluster::Cluster;
use crate::support::*;

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "orders"
history_size = 1000
history_ttl_secs = 600

[[channels.namespaces]]
name = "plain"
"#;

/// The app's database, where its data and its outbox live.
struct App {
    client: mongodb::Client,
    db: mongodb::Database,
}

impl App {
    async fn connect(uri: &str, name: &str) -> App {
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = client.database(name);
        // Collections exist before transactions insert into them.
        for collection in ["outbox", "orders"] {
            let _ = db.create_collection(collection).await;
        }
        App { client, db }
    }

    fn outbox(&self) -> mongodb::Collection<Document> {
        self.db.collection("outbox")
    }

    /// Changes an order and queues its publication in one transaction; `commit` or abort.
    async fn change_order(&self, n: i64, commit: bool) {
        let mut session = self.client.start_session().await.unwrap();
        session.start_transaction().await.unwrap();
        self.db
            .collection::<Document>("orders")
            .insert_one(doc! { "n": n })
            .session(&mut session)
            .await
            .unwrap();
        self.outbox()
            .insert_one(doc! { "channel": "orders:1", "data": { "n": n } })
            .session(&mut session)
            .await
            .unwrap();
        if commit {
            session.commit_transaction().await.unwrap();
        } else {
            session.abort_transaction().await.unwrap();
        }
    }

    /// As [`change_order`](Self::change_order), committed, with the order's number as both
    /// documents' `_id`: a retry after an unknown commit result finds them there (duplicate
    /// key) instead of adding a second outbox document.
    async fn try_change_order(&self, n: i64) -> Result<(), mongodb::error::Error> {
        let mut session = self.client.start_session().await?;
        session.start_transaction().await?;
        let written = async {
            self.db
                .collection::<Document>("orders")
                .insert_one(doc! { "_id": n, "n": n })
                .session(&mut session)
                .await?;
            self.outbox()
                .insert_one(doc! { "_id": n, "channel": "orders:1", "data": { "n": n } })
                .session(&mut session)
                .await?;
            session.commit_transaction().await
        }
        .await;
        match written {
            Err(e) if e.to_string().contains("E11000") => Ok(()),
            other => other,
        }
    }

    /// The offsets the outbox's documents were marked with, in `_id` order, once all are.
    async fn marked_offsets(&self) -> Vec<i64> {
        let marked = self.all_marked().await;
        marked
            .iter()
            .map(|d| d.get_i64("offset").unwrap())
            .collect()
    }

    /// Waits until the outbox has no unmarked document; returns them all.
    async fn all_marked(&self) -> Vec<Document> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let unmarked = self
                .outbox()
                .count_documents(
                    doc! { "published_at": { "$exists": false }, "failed": { "$exists": false } },
                )
                .await
                .unwrap();
            if unmarked == 0 {
                let mut cursor = self
                    .outbox()
                    .find(doc! {})
                    .sort(doc! { "_id": 1 })
                    .await
                    .unwrap();
                let mut all = Vec::new();
                while cursor.advance().await.unwrap() {
                    all.push(cursor.deserialize_current().unwrap());
                }
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{unmarked} outbox documents still unmarked"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn start(uri: &str, app_db: &str, file: &ConfigFile) -> Cluster {
    start_nodes(uri, 3, app_db, file)
}

fn start_nodes(uri: &str, count: usize, app_db: &str, file: &ConfigFile) -> Cluster {
    tokio::task::block_in_place(|| {
        Cluster::start_with(
            uri,
            count,
            &[
                ("CONFIG_FILE", file.path()),
                ("OUTBOX_COLLECTION", "outbox"),
                ("OUTBOX_DATABASE", app_db),
            ],
        )
    })
}

async fn subscriber(cluster: &Cluster, node: usize, user: &str) -> WsClient {
    let mut client = cluster
        .client_with(node, user, &jwt_granting(user, &["orders:*", "plain:*"]))
        .await;
    client
        .send_json(&json!({"type": "subscribe", "channel": "orders:1"}))
        .await;
    assert_eq!(client.next_json().await["type"], "subscribed");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_outbox_documents_are_published_once_in_commit_order_on_every_node() {
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let cluster = start(&mongo_uri(), &app_db, &file);
    let app = App::connect(&mongo_uri(), &app_db).await;
    let mut subscribers = Vec::new();
    for (node, user) in [(1, "ann"), (2, "bob"), (3, "cid")] {
        subscribers.push(subscriber(&cluster, node, user).await);
    }

    // Twenty orders changed; every fourth change is rolled back with its outbox document.
    let committed: Vec<i64> = (1..=20).filter(|n| n % 4 != 0).collect();
    for n in 1..=20 {
        app.change_order(n, n % 4 != 0).await;
    }
    let expected: Vec<Value> = committed.iter().map(|n| json!({ "n": n })).collect();
    for subscriber in &mut subscribers {
        assert_eq!(
            subscriber.publications_then_silence(expected.len()).await,
            expected
        );
    }
    let marked = app.all_marked().await;
    assert_eq!(marked.len(), committed.len());
    for (document, offset) in marked.iter().zip(1_i64..) {
        assert!(document.get_datetime("published_at").is_ok(), "{document}");
        assert_eq!(document.get_i64("offset"), Ok(offset), "{document}");
        assert!(document.get_str("epoch").is_ok(), "{document}");
        assert!(!document.contains_key("duplicate"), "{document}");
    }

    // Documents that can never be published are marked with the reason, and the next go out.
    let failing = [
        (doc! { "channel": "a b", "data": 1 }, "invalid_channel"),
        (doc! { "channel": "nope:1", "data": 1 }, "unknown_namespace"),
        (
            doc! { "channel": "orders:1", "data": "x".repeat(11_000) },
            "publication_too_large",
        ),
        (doc! { "user": "ann" }, "bad_document"),
        (
            doc! { "channel": "orders:1", "user": "ann", "data": 1 },
            "bad_document",
        ),
        (
            doc! { "channel": "orders:1", "data": 1, "idempotency_key": "" },
            "bad_document",
        ),
    ];
    for (document, _) in &failing {
        app.outbox().insert_one(document.clone()).await.unwrap();
    }
    app.outbox()
        .insert_one(doc! { "channel": "orders:1", "data": "after the failures" })
        .await
        .unwrap();
    for subscriber in &mut subscribers {
        assert_eq!(
            subscriber.publications_then_silence(1).await,
            [json!("after the failures")]
        );
    }
    let marked = app.all_marked().await;
    for (document, reason) in &failing {
        let mut filter = document.clone();
        filter.insert("failed", reason);
        let found = app.outbox().find_one(filter).await.unwrap();
        let found = found.unwrap_or_else(|| panic!("{document} marked {reason}: {marked:?}"));
        assert!(found.get_datetime("failed_at").is_ok(), "{found}");
    }
    assert_eq!(
        cluster
            .metric_sum("ticketgate_outbox_documents_total", &[("result", "failed")])
            .await,
        failing.len() as f64
    );

    // One key through the API and through the outbox: one publication; the document is
    // marked with the first one's place.
    let (status, first) = cluster
        .post(
            2,
            "/api/channels/orders:1/publish",
            json!({"data": "paid", "idempotency_key": "order-1-paid"}),
        )
        .await;
    assert_eq!(status, 202, "{first}");
    app.outbox()
        .insert_one(
            doc! { "channel": "orders:1", "data": "paid", "idempotency_key": "order-1-paid" },
        )
        .await
        .unwrap();
    app.outbox()
        .insert_one(doc! { "channel": "orders:1", "data": "next" })
        .await
        .unwrap();
    for subscriber in &mut subscribers {
        assert_eq!(
            subscriber.publications_then_silence(2).await,
            [json!("paid"), json!("next")]
        );
    }
    app.all_marked().await;
    let repeat = app
        .outbox()
        .find_one(doc! { "idempotency_key": "order-1-paid" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(repeat.get_bool("duplicate"), Ok(true), "{repeat}");
    assert_eq!(
        repeat.get_i64("offset").ok(),
        first["offset"].as_i64(),
        "{repeat}"
    );

    // User messages and broadcasts go out too.
    app.outbox()
        .insert_one(doc! { "user": "ann", "data": { "note": "for ann" } })
        .await
        .unwrap();
    let message = loop {
        let message = subscribers[0].next_json().await;
        if message["type"] == "message" {
            break message;
        }
    };
    assert_eq!(message["data"], json!({ "note": "for ann" }));

    // One node holds the lease, and its console samples carry the outbox's lag (none left
    // unpublished now: 0), the other nodes' none.
    let mut held = 0.0;
    for node in 1..=3 {
        held += cluster
            .metric(node, "ticketgate_outbox_lease_held", &[])
            .await;
    }
    assert_eq!(held, 1.0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let series = cluster.get(1, "/api/series").await;
        let lags: Vec<Value> = series["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|node| {
                node["samples"]
                    .as_array()?
                    .last()?
                    .get("outbox_lag_ms")
                    .cloned()
            })
            .collect();
        let reporting = lags.iter().filter(|lag| !lag.is_null()).count();
        // Sampled every heartbeat: it settles at 0 once everything is published.
        if lags.len() == 3 && reporting == 1 && lags.contains(&json!(0.0)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn an_outbox_on_a_standalone_mongod_stops_the_start() {
    let mongod = TestMongod::start_standalone();
    let output = std::process::Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(test_run_marker())
        .env("JWT_SECRET", SECRET)
        .env("MONGODB_URI", &mongod.uri)
        .env("MONGODB_DATABASE", unique_db_name())
        .env("OUTBOX_COLLECTION", "outbox")
        .env("BIND_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("needs MongoDB as a replica set"), "{said}");
}

/// Reads the data of publications until `last` arrives (each within 30 s).
async fn read_until(client: &mut WsClient, last: i64) -> Vec<i64> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut got = Vec::new();
    while got.last() != Some(&last) {
        let frame = tokio::time::timeout(Duration::from_secs(30), client.stream.next())
            .await
            .unwrap_or_else(|_| panic!("publications stopped after {:?}", got.last()));
        let Some(Ok(Message::Text(text))) = frame else {
            continue;
        };
        let message: Value = serde_json::from_str(&text).unwrap();
        if message["type"] == "publication" {
            got.push(message["data"]["n"].as_i64().unwrap());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lease_holder_is_taken_over_and_nothing_is_lost_or_repeated() {
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let cluster = start(&mongo_uri(), &app_db, &file);
    let app = App::connect(&mongo_uri(), &app_db).await;
    // A node killed in the middle of a transaction leaves it open until MongoDB's
    // transactionLifetimeLimitSeconds (60 s by default), and the next holder's transactions
    // wait for it: docs/PROTOCOL.md recommends a lower limit, as here.
    app.client
        .database("admin")
        .run_command(doc! { "setParameter": 1, "transactionLifetimeLimitSeconds": 5 })
        .await
        .unwrap();
    // Which node consumes: the one whose gauge says so.
    let holder = loop {
        let mut holder = None;
        for node in 1..=3 {
            if cluster
                .metric(node, "ticketgate_outbox_lease_held", &[])
                .await
                == 1.0
            {
                holder = Some(node);
            }
        }
        if let Some(holder) = holder {
            break holder;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let watching = if holder == 1 { 2 } else { 1 };
    let mut watcher = subscriber(&cluster, watching, "watcher").await;

    // Documents at a steady rate, each in a transaction with the app's data; the holder is
    // killed with SIGKILL a second in.
    let total = 60;
    let inserting = async {
        for n in 1..=total {
            app.change_order(n, true).await;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    let killing = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.node(holder).signal("KILL");
    };
    tokio::join!(inserting, killing);

    assert_eq!(
        read_until(&mut watcher, total).await,
        (1..=total).collect::<Vec<_>>()
    );
    watcher.expect_silence(Duration::from_millis(500)).await;
    let offsets = app.marked_offsets().await;
    assert_eq!(
        offsets,
        (1..=total).collect::<Vec<_>>(),
        "each marked once, in order"
    );
    let taken_over: f64 = cluster
        .metric(watching, "ticketgate_outbox_lease_held", &[])
        .await
        + cluster
            .metric(6 - holder - watching, "ticketgate_outbox_lease_held", &[])
            .await;
    assert_eq!(taken_over, 1.0, "a surviving node holds the lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongod_restart_pauses_the_outbox_and_loses_nothing() {
    let mut mongod = tokio::task::block_in_place(TestMongod::start);
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let cluster = start_nodes(&mongod.uri, 2, &app_db, &file);
    // The app gives up on an unreachable server after 2 s, and tries again.
    let app_uri = format!("{}&serverSelectionTimeoutMS=2000", mongod.uri);
    let app = App::connect(&app_uri, &app_db).await;
    let mut watcher = subscriber(&cluster, 1, "watcher").await;
    let total = 40;
    let (down, up) = tokio::sync::oneshot::channel::<()>();
    let outage = tokio::task::spawn_blocking(move || {
        let _ = up.blocking_recv();
        mongod.stop();
        std::thread::sleep(Duration::from_secs(2));
        mongod.restart();
        mongod
    });
    let mut down = Some(down);
    let mut refused = 0;
    for n in 1..=total {
        if n == 15 {
            let _ = down.take().unwrap().send(());
        }
        // As an app does: the transaction again until MongoDB answers.
        while app.try_change_order(n).await.is_err() {
            refused += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _mongod = outage.await.unwrap();
    assert!(
        refused > 0,
        "the outage refused some of the app's transactions"
    );
    let got = tokio::time::timeout(Duration::from_secs(60), read_until(&mut watcher, total))
        .await
        .expect("the outbox went on after the outage");
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "once each, in order");
    watcher.expect_silence(Duration::from_millis(500)).await;
    let offsets = app.marked_offsets().await;
    assert_eq!(offsets, (1..=total).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_inserted_before_the_first_start_are_published_in_id_order() {
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let app = App::connect(&mongo_uri(), &app_db).await;
    for n in 1..=5 {
        app.change_order(n, true).await;
    }
    // No gateway has followed this outbox yet: no resume point, so the consumer publishes
    // what is unmarked, in `_id` order, and then follows the stream.
    let cluster = start_nodes(&mongo_uri(), 1, &app_db, &file);
    let offsets = app.marked_offsets().await;
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let mut watcher = subscriber(&cluster, 1, "watcher").await;
    app.change_order(6, true).await;
    assert_eq!(
        watcher.publications_then_silence(1).await,
        [json!({ "n": 6 })]
    );
    let history = cluster.get(1, "/api/channels/orders:1/history").await;
    let published: Vec<&Value> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["data"]["n"])
        .collect();
    assert_eq!(
        published,
        [1, 2, 3, 4, 5, 6]
            .map(|n| json!(n))
            .iter()
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_step_down_loses_and_repeats_nothing() {
    let set = tokio::task::block_in_place(TestReplicaSet::start);
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let cluster = start_nodes(&set.uri, 2, &app_db, &file);
    let app_uri = format!("{}&serverSelectionTimeoutMS=5000", set.uri);
    let app = App::connect(&app_uri, &app_db).await;
    let mut watcher = subscriber(&cluster, 1, "watcher").await;
    let total = 40;
    let mut stepped_down = None;
    let mut refused = 0;
    for n in 1..=total {
        if n == 15 {
            stepped_down = Some(tokio::task::block_in_place(|| set.step_down_primary()));
        }
        // As an app does: the transaction again until a primary answers.
        while app.try_change_order(n).await.is_err() {
            refused += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = tokio::task::block_in_place(|| set.primary_port());
    assert_ne!(stepped_down, Some(new), "another member was elected");
    let got = read_until(&mut watcher, total).await;
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "once each, in order");
    watcher.expect_silence(Duration::from_millis(500)).await;
    let offsets = app.marked_offsets().await;
    assert_eq!(offsets, (1..=total).collect::<Vec<_>>());
    eprintln!("step-down: the app's transaction was refused {refused} times, nothing lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_setting_rules_the_outbox_ttl_indexes_and_a_change_is_applied() {
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let app = App::connect(&mongo_uri(), &app_db).await;
    for retention in [3600_i64, 120] {
        let cluster = tokio::task::block_in_place(|| {
            Cluster::start_with(
                &mongo_uri(),
                1,
                &[
                    ("CONFIG_FILE", file.path()),
                    ("OUTBOX_COLLECTION", "outbox"),
                    ("OUTBOX_DATABASE", &app_db),
                    ("OUTBOX_RETENTION_SECS", &retention.to_string()),
                ],
            )
        });
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut cursor = app.outbox().list_indexes().await.unwrap();
            let mut expiries = Vec::new();
            while cursor.advance().await.unwrap() {
                let index = cursor.deserialize_current().unwrap();
                let options = index.options.unwrap_or_default();
                if let (Some(name), Some(after)) = (options.name, options.expire_after) {
                    expiries.push((name, after.as_secs() as i64));
                }
            }
            expiries.sort();
            let wanted = vec![
                ("failed_at_ttl".to_owned(), retention),
                ("published_at_ttl".to_owned(), retention),
            ];
            if expiries == wanted {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{expiries:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(cluster);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_fallen_off_the_oplog_publishes_the_unmarked_documents_in_id_order() {
    let mongod = tokio::task::block_in_place(TestMongod::start_with_small_oplog);
    let file = ConfigFile::new(NAMESPACES);
    let app_db = unique_db_name();
    let app = App::connect(&mongod.uri, &app_db).await;
    let cluster = start_nodes(&mongod.uri, 1, &app_db, &file);
    // As an app does: a transaction again after a transient error (a checkpoint every
    // second, as this mongod takes, makes lock timeouts likelier).
    let change_order = |n: i64| {
        let app = &app;
        async move {
            while let Err(e) = app.try_change_order(n).await {
                assert!(
                    e.contains_label("TransientTransactionError"),
                    "order {n}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // Once the consumer follows the stream, its documents' progress is the stream's.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let samples = scrape_metrics(&cluster.http, &cluster.node(1).url("/metrics")).await;
        if try_metric_value(&samples, "ticketgate_bus_up", &[("stream", "outbox")]) == Some(1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the outbox stream did not open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 1..=3 {
        change_order(n).await;
    }
    assert_eq!(app.marked_offsets().await, [1, 2, 3]);
    let gateway_db = cluster.database.clone();
    drop(cluster);
    // No gateway follows the outbox while the app goes on, longer than the oplog's window:
    // the point where the outbox's stream stopped is gone from the oplog.
    for n in 4..=8 {
        change_order(n).await;
    }
    mongod.truncate_oplog().await;

    // The same gateway database: the outbox's lease keeps where its stream stood.
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_in(
            &gateway_db,
            &[&mongod.uri],
            &[
                ("CONFIG_FILE", file.path()),
                ("OUTBOX_COLLECTION", "outbox"),
                ("OUTBOX_DATABASE", &app_db),
            ],
        )
    });
    let log = cluster.node(1).wait_for_log("cannot resume").await;
    assert!(
        log.contains("publishing the documents still unmarked"),
        "the node says what it does:\n{log}"
    );
    assert_eq!(
        app.marked_offsets().await,
        (1..=8).collect::<Vec<_>>(),
        "the documents inserted while nobody followed, once each, in _id order"
    );
    // And it goes on following the outbox.
    let mut watcher = subscriber(&cluster, 1, "watcher").await;
    change_order(9).await;
    assert_eq!(
        watcher.publications_then_silence(1).await,
        [json!({ "n": 9 })]
    );
    let history = cluster.get(1, "/api/channels/orders:1/history").await;
    let published: Vec<i64> = history["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(published, (1..=9).collect::<Vec<_>>());
}
