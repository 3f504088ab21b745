//! Operations endpoints: health, readiness, and Prometheus metrics read back with a real
//! Prometheus text parser.

use std::time::{Duration, Instant};

use prometheus_parse::Sample;
use serde_json::{Value, json};

use crate::support::*;

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app.http.get(app.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn scrape(app: &TestApp) -> Vec<Sample> {
    scrape_metrics(&app.http, &app.url("/metrics")).await
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app(Store::Mongo, &[]).await;
    assert_eq!(
        get_json(&app, "/healthz").await,
        (200, json!({"status": "ok"}))
    );
    assert_eq!(
        get_json(&app, "/readyz").await,
        (200, json!({"status": "ready", "store": "mongodb"}))
    );
    assert_eq!(
        get_json(&app, "/livez").await,
        (200, json!({"status": "live"}))
    );
    app.shutdown.begin();
    let (status, body) = get_json(&app, "/readyz").await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (503, "not_ready")
    );
    assert_eq!(
        (&body["cause"], &body["message"]),
        (&json!("draining"), &json!("draining"))
    );
    assert_eq!(get_json(&app, "/livez").await.0, 200, "live while draining");
    assert_eq!(
        get_json(&app, "/healthz").await.0,
        200,
        "alive while draining"
    );
}

#[tokio::test]
async fn metrics_count_what_happened() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let mut alice = app.authenticated("alice").await;
    // A reused ticket, a malformed one, a missing one.
    let used = app.ticket("bob").await;
    let mut bob = app.connect(&used).await;
    app.try_connect(&used, None).await.err().unwrap();
    app.try_connect("garbage", None).await.err().unwrap();
    app.try_connect("", None).await.err().unwrap();
    // bob fails authentication.
    bob.send_json(&json!({"type": "jwt", "token": jwt("mallory")}))
        .await;
    bob.expect_close(4401).await;
    // alice: a ping, an echo, a broadcast.
    alice.send_json(&json!({"type": "ping"})).await;
    alice.next_json().await;
    alice.send_json(&json!({"type": "echo", "data": 1})).await;
    alice.next_json().await;
    app.publish("7").await;
    assert_eq!(alice.next_json().await["type"], "broadcast");
    wait_until("bob's connection to close", || app.hub.open_count() == 1).await;

    let samples = scrape(&app).await;
    let metric = |name: &str, labels: &[(&str, &str)]| metric_value(&samples, name, labels);
    assert_eq!(metric("ticketgate_tickets_minted_total", &[]), 2.0);
    assert_eq!(metric("ticketgate_tickets_consumed_total", &[]), 2.0);
    assert!(
        metric(
            "ticketgate_tickets_rejected_total",
            &[("reason", "unknown")]
        ) >= 1.0
    );
    assert_eq!(
        metric(
            "ticketgate_tickets_rejected_total",
            &[("reason", "malformed")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            "ticketgate_tickets_rejected_total",
            &[("reason", "missing")]
        ),
        1.0
    );
    assert_eq!(
        metric("ticketgate_auth_failures_total", &[("code", "4401")]),
        1.0
    );
    assert_eq!(
        metric("ticketgate_connections_closed_total", &[("code", "4401")]),
        1.0
    );
    assert_eq!(
        metric(
            "ticketgate_connections",
            &[("state", "authenticated"), ("transport", "websocket")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            "ticketgate_connections",
            &[("state", "unauthenticated"), ("transport", "websocket")]
        ),
        0.0
    );
    // In: alice's jwt, ping, echo and bob's jwt. Out: authenticated, pong, echo, broadcast.
    assert_eq!(metric("ticketgate_messages_in_total", &[]), 4.0);
    assert_eq!(metric("ticketgate_messages_out_total", &[]), 4.0);
    assert_eq!(metric("ticketgate_broadcast_fanout_seconds", &[]), 1.0);
    assert!(
        metric(
            "ticketgate_store_operation_seconds",
            &[("operation", "insert")]
        ) >= 2.0
    );
    assert!(
        metric(
            "ticketgate_store_operation_seconds",
            &[("operation", "consume")]
        ) >= 2.0
    );
    assert!(
        metric("ticketgate_process_open_fds", &[]) > 0.0,
        "process metrics are exported"
    );
}

/// A node cut off from MongoDB like a network (no FIN, nothing answers): its change stream
/// stalls, and `/readyz` says so within BUS_STALL_SECS + 2 s of the stream's last answer,
/// whatever STORE_TIMEOUT_MS is, while `/livez` stays 200; mended, it is ready again within
/// BUS_STALL_SECS + 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_mongodb_is_not_ready_and_still_live() {
    let mongod = tokio::task::block_in_place(TestMongod::start);
    let link = CuttableLink::to(mongod.port).await;
    let uri = link.mongodb_uri();
    let database = unique_db_name();
    let node = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("MONGODB_URI", &uri),
        ("MONGODB_DATABASE", &database),
        ("BUS_STALL_SECS", "2"),
        ("STORE_TIMEOUT_MS", "30000"),
    ]);
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, url) = (http.clone(), node.url(path));
        async move {
            let started = Instant::now();
            let response = http.get(url).send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_default();
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "{path} took {:?}",
                started.elapsed()
            );
            (status, body)
        }
    };
    let ready_within = |limit: Duration, want: u16| {
        let get = &get;
        async move {
            let started = Instant::now();
            loop {
                let (status, body) = get("/readyz").await;
                if status == want {
                    return (started.elapsed(), body);
                }
                assert!(started.elapsed() < limit, "/readyz still {status}: {body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    ready_within(STARTUP_PATIENCE, 200).await;

    link.cut();
    let (took, _) = ready_within(Duration::from_secs(2 + 2), 503).await;
    eprintln!("not ready {took:?} after the cut");
    // Past BUS_STALL_SECS the cause is the stalled stream (the store's ping fails sooner).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = get("/readyz").await;
    assert_eq!(
        (status, &body["cause"]),
        (503, &json!("bus_stalled")),
        "{body}"
    );
    assert_eq!(get("/livez").await.0, 200, "alive while cut off");
    let bus_up = |samples: Vec<Sample>| {
        metric_value(&samples, "ticketgate_bus_up", &[("stream", "cluster")])
    };
    assert_eq!(
        bus_up(scrape_metrics(&http, &node.url("/metrics")).await),
        0.0
    );

    link.mend();
    let (took, _) = ready_within(Duration::from_secs(2 + 5), 200).await;
    eprintln!("ready {took:?} after the mend");
    assert_eq!(
        bus_up(scrape_metrics(&http, &node.url("/metrics")).await),
        1.0
    );
}
