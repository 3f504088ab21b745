//! Idempotent publishing (docs/PROTOCOL.md, "Idempotent publishing"): a publish repeated with
//! the same `idempotency_key` into the same channels within IDEMPOTENCY_WINDOW_SECS publishes
//! nothing and is answered as the first was, on one node and across nodes (the key recorded
//! in the publication's own MongoDB transaction), concurrent repeats included; a bad key is
//! a 400; after the window the key is forgotten.

use std::time::Duration;

use serde_json::{Value, json};

use crate::channels::{ConfigFile, jwt_granting};
use crate::cluster::Cluster;
use crate::support::*;

const API_KEY: &str = "idempotency-api-key-0123456789";

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "orders"
history_size = 100
history_ttl_secs = 600

[[channels.namespaces]]
name = "plain"
"#;

async fn publish(app: &TestApp, channel: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/channels/{channel}/publish");
    app.call_api(API_KEY, reqwest::Method::POST, &path, Some(body))
        .await
}

#[tokio::test]
async fn a_repeated_key_publishes_once_on_one_node() {
    let file = ConfigFile::new(NAMESPACES);
    let app = spawn_app(
        Store::Memory,
        &[
            ("API_KEY", API_KEY),
            ("CONFIG_FILE", file.path()),
            ("IDEMPOTENCY_WINDOW_SECS", "1"),
        ],
    )
    .await;
    let mut client = app.connect(&app.ticket("ann").await).await;
    client
        .authenticate(&jwt_granting("ann", &["orders:*", "plain:*"]))
        .await;
    for channel in ["orders:42", "plain:42"] {
        client
            .send_json(&json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(client.next_json().await["type"], "subscribed");
    }

    let first = publish(
        &app,
        "orders:42",
        json!({"data": 1, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(
        (first.0, first.1["offset"].as_u64()),
        (202, Some(1)),
        "{first:?}"
    );
    let again = publish(
        &app,
        "orders:42",
        json!({"data": 1, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(again, first, "the repeat is answered as the first was");
    // Another key, and the same key in another channel, are other publications.
    let other = publish(
        &app,
        "orders:42",
        json!({"data": 2, "idempotency_key": "k2"}),
    )
    .await;
    assert_eq!(other.1["offset"], 2, "{other:?}");
    let (status, plain) = publish(
        &app,
        "plain:42",
        json!({"data": 3, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(status, 202, "{plain}");
    let (_, plain_again) = publish(
        &app,
        "plain:42",
        json!({"data": 3, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(plain_again, plain);
    assert_eq!(
        client.publications_then_silence(3).await,
        [json!(1), json!(2), json!(3)]
    );
    assert_eq!(
        app.metric("ticketgate_publish_duplicates_total", &[]).await,
        2.0
    );

    // Bad keys are refused and publish nothing.
    for bad in [
        json!(""),
        json!("x".repeat(129)),
        json!("caf\u{e9}"),
        json!(7),
    ] {
        let (status, body) = publish(
            &app,
            "orders:42",
            json!({"data": 9, "idempotency_key": bad}),
        )
        .await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    let (status, _) = publish(
        &app,
        "orders:42",
        json!({"data": 4, "idempotency_key": "x".repeat(128)}),
    )
    .await;
    assert_eq!(status, 202, "128 bytes is the most a key may have");
    assert_eq!(client.publications_then_silence(1).await, [json!(4)]);

    // After the window the key is forgotten: the same publish goes out again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = publish(
        &app,
        "orders:42",
        json!({"data": 1, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(later.1["offset"], 4, "{later:?}");
    assert_eq!(client.publications_then_silence(1).await, [json!(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_publishes_once_across_nodes_even_when_repeats_race() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(&mongo_uri(), 3, &[("CONFIG_FILE", file.path())])
    });
    let mut watcher = cluster
        .client_with(
            3,
            "watcher",
            &jwt_granting("watcher", &["orders:*", "plain:*"]),
        )
        .await;
    for channel in ["orders:7", "plain:7"] {
        watcher
            .send_json(&json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(watcher.next_json().await["type"], "subscribed");
    }

    // A retry through another node after the first was answered.
    let path = "/api/channels/orders:7/publish";
    let body = json!({"data": "paid", "idempotency_key": "order-7-paid"});
    let (status, first) = cluster.post(1, path, body.clone()).await;
    assert_eq!(
        (status, first["offset"].as_u64()),
        (202, Some(1)),
        "{first}"
    );
    let (status, again) = cluster.post(2, path, body.clone()).await;
    assert_eq!((status, &again), (202, &first));

    // Twelve repeats at once over three nodes: one publication, every answer the same.
    for (round, channel) in [(1, "orders:7"), (2, "plain:7")] {
        let path = format!("/api/channels/{channel}/publish");
        let body =
            json!({"data": format!("race {round}"), "idempotency_key": format!("race-{round}")});
        let answers = futures_util::future::join_all(
            (0..12).map(|i| cluster.post(1 + i % 3, &path, body.clone())),
        )
        .await;
        for (status, answer) in &answers {
            assert_eq!(*status, 202, "{answer}");
            assert_eq!(answer, &answers[0].1, "every repeat gets the first answer");
        }
        if channel == "orders:7" {
            assert_eq!(answers[0].1["offset"], 2, "{:?}", answers[0]);
        }
    }
    // Through `POST /api/publish` with the same key and the same (one) channel: the first
    // publication's place again.
    let (status, many) = cluster
        .post(
            2,
            "/api/publish",
            json!({"channels": ["orders:7"], "data": "paid", "idempotency_key": "order-7-paid"}),
        )
        .await;
    assert_eq!(status, 202, "{many}");
    assert_eq!(many["publications"][0]["offset"], 1, "{many}");

    let mut got = Vec::new();
    while got.len() < 3 {
        let message = watcher.next_json().await;
        if message["type"] == "publication" {
            got.push(message["data"].clone());
        }
    }
    watcher.expect_silence(Duration::from_millis(500)).await;
    assert_eq!(got, [json!("paid"), json!("race 1"), json!("race 2")]);
    // Each key has one record, kept in MongoDB with where its publication went.
    let history = cluster.get(3, "/api/channels/orders:7/history").await;
    assert_eq!(history["offset"], 2, "{history}");
}
