//! Operations endpoints: health, readiness, and Prometheus metrics read back with a real
//! Prometheus text parser.

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
