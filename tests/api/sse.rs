//! The SSE transport: `GET /sse` opens a stream with the same checks as a WebSocket upgrade,
//! `POST /sse/messages` carries the client's messages, and the session behind them is the
//! WebSocket's, message for message.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

const ACCEPT: &str = "Accept: text/event-stream\r\n";

async fn open(app: &TestApp, sub: &str) -> SseClient {
    let ticket = app.ticket(sub).await;
    open_sse(app.port, &ticket, ACCEPT)
        .await
        .expect("the stream opens")
}

#[tokio::test]
async fn a_stream_opens_authenticates_over_post_and_carries_the_session() {
    let app = spawn_app(Store::Memory, &[("HEARTBEAT_INTERVAL_SECS", "1")]).await;
    let mut client = open(&app, "alice").await;
    assert_eq!(
        header_value(&client.head, "content-type"),
        Some("text/event-stream")
    );
    assert_eq!(
        header_value(&client.head, "cache-control"),
        Some("no-cache")
    );
    assert_eq!(header_value(&client.head, "x-accel-buffering"), Some("no"));
    // 128 random bits after the node's id.
    let (node, random) = client.session.rsplit_once('.').unwrap();
    assert_eq!(node, app.node);
    assert_eq!(random.len(), 32);

    let authenticated = client.authenticate("alice").await;
    assert_eq!(authenticated["user_id"], "alice");
    app.publish(r#"{"n":1}"#).await;
    let broadcast = client.next_of("broadcast").await;
    assert_eq!(broadcast["data"], json!({"n": 1}));

    // Echoed data written with line breaks arrives on one line, the same JSON value.
    let pretty = "{\"type\":\"echo\",\"data\":{\n  \"a\": [1,\r\n 2]\n}}";
    let (status, _) = post_body(
        &reqwest::Client::new(),
        &client.post_base,
        &format!(
            r#"{{"session":"{}","seq":2,"messages":[{pretty}]}}"#,
            client.session
        ),
    )
    .await;
    assert_eq!(status, 204);
    client.next_seq = 3;
    assert_eq!(client.next_of("echo").await["data"], json!({"a": [1, 2]}));

    // Idle: heartbeat comments, and no close for never posting past CLIENT_TIMEOUT_SECS.
    let before = client.comments;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.publish(r#"{"n":2}"#).await;
    assert_eq!(client.next_of("broadcast").await["data"], json!({"n": 2}));
    assert!(
        client.comments >= before + 2,
        "{} comments",
        client.comments
    );

    assert_eq!(
        app.metric(
            "ticketgate_connections",
            &[("state", "authenticated"), ("transport", "sse")]
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "ticketgate_connections",
            &[("state", "authenticated"), ("transport", "websocket")]
        )
        .await,
        0.0
    );
}
