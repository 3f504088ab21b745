//! The per-connection state machine over real sockets: authentication, close codes, messages,
//! broadcasts, heartbeat, and leaving the broadcast pipeline on every exit path.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use ticketgate::jwt::{Claims, JwtSigner};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::support::*;

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

#[tokio::test]
async fn the_whole_flow_authenticates_with_user_and_expiry() {
    for store in [Store::Mongo, Store::Memory] {
        let app = spawn_app(store, &[]).await;
        let token = jwt("alice");
        let exp = jsonwebtoken::dangerous::insecure_decode::<Claims>(&token)
            .unwrap()
            .claims
            .exp;
        let mut client = app.connect(&app.ticket("alice").await).await;
        client
            .send_json(&json!({"type": "jwt", "token": token}))
            .await;
        assert_eq!(
            client.next_json().await,
            json!({"type": "authenticated", "user_id": "alice", "expires_at": exp})
        );
        wait_until("the connection to join the pipeline", || {
            app.hub.authenticated_count() == 1
        })
        .await;
    }
}

/// Before the JWT: no broadcasts, no pings, no messages; only the Pong a client's Ping asks
/// for (RFC 6455 §5.5.2).
#[tokio::test]
async fn an_unauthenticated_connection_receives_nothing() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("BROADCAST_INTERVAL_SECS", "1"),
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "3"),
            ("AUTH_TIMEOUT_SECS", "6"),
        ],
    )
    .await;
    let mut waiting = app.connect(&app.ticket("alice").await).await;
    waiting
        .send(Message::Ping(b"anyone?".to_vec().into()))
        .await;
    assert_eq!(
        waiting.next_frame().await,
        Some(Message::Pong(b"anyone?".to_vec().into()))
    );
    app.publish(r#""not for you""#).await;
    waiting.expect_silence(Duration::from_millis(2500)).await;
    assert_eq!(app.hub.authenticated_count(), 0);
    assert_eq!(app.hub.open_count(), 1);

    // The same connection, once authenticated, gets the demo broadcasts and pings.
    waiting
        .send_json(&json!({"type": "jwt", "token": jwt("alice")}))
        .await;
    assert_eq!(waiting.next_json().await["type"], "authenticated");
    let mut saw_ping = false;
    let mut saw_broadcast = false;
    while !(saw_ping && saw_broadcast) {
        match waiting.next_frame().await.unwrap() {
            Message::Ping(_) => saw_ping = true,
            Message::Text(text) => {
                let message: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(message["type"], "broadcast");
                assert!(message["data"]["counter"].is_u64(), "{message}");
                saw_broadcast = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_malformed_first_message_closes_with_4400() {
    let app = spawn_app(Store::Memory, &[]).await;
    let cases: Vec<(&str, Message)> = vec![
        ("not JSON", Message::text("hello")),
        (
            "binary",
            Message::binary(
                json!({"type": "jwt", "token": jwt("alice")})
                    .to_string()
                    .into_bytes(),
            ),
        ),
        ("another type", Message::text(r#"{"type":"ping"}"#)),
        (
            "unknown type",
            Message::text(r#"{"type":"subscribe","token":"x"}"#),
        ),
        ("no token", Message::text(r#"{"type":"jwt"}"#)),
        (
            "token not a string",
            Message::text(r#"{"type":"jwt","token":42}"#),
        ),
        ("no type", Message::text(r#"{"token":"x"}"#)),
        ("JSON array", Message::text("[]")),
    ];
    for (what, message) in cases {
        let mut client = app.connect(&app.ticket("alice").await).await;
        client.send(message).await;
        let reason = client.expect_close(4400).await;
        assert!(!reason.is_empty(), "{what}");
    }
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn a_bad_or_foreign_jwt_closes_with_4401() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let expired = jwt_with(&Claims {
        sub: "alice".into(),
        exp: now() - 60,
        nbf: None,
        iat: None,
        jti: None,
        ..Claims::default()
    });
    let cases = [
        ("garbage", "x.y.z".to_string()),
        (
            "wrong key",
            JwtSigner::hs256(b"another-secret-another-secret-xyz").mint("alice", 600),
        ),
        ("expired", expired),
        ("another user's JWT", jwt("mallory")),
    ];
    for (what, token) in cases {
        let mut client = app.connect(&app.ticket("alice").await).await;
        client
            .send_json(&json!({"type": "jwt", "token": token}))
            .await;
        let reason = client.expect_close(4401).await;
        if what == "another user's JWT" {
            assert!(reason.contains("ticket"), "{reason}");
        }
    }
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn silence_past_the_auth_deadline_closes_with_4408() {
    let app = spawn_app(Store::Memory, &[("AUTH_TIMEOUT_SECS", "1")]).await;
    let mut client = app.connect(&app.ticket("alice").await).await;
    // Pings are answered, but do not buy time: one every 200 ms for longer than the deadline.
    let started = std::time::Instant::now();
    let reason = loop {
        client
            .send(Message::Ping(b"still here".to_vec().into()))
            .await;
        match tokio::time::timeout(Duration::from_millis(200), client.stream.next()).await {
            Ok(Some(Ok(Message::Pong(payload)))) => assert_eq!(&payload[..], b"still here"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 4408);
                break frame.reason.to_string();
            }
            Ok(other) => panic!("expected a pong or the close, got {other:?}"),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < PATIENCE,
            "pings kept the connection open"
        );
    };
    assert!(reason.contains("authentication"), "{reason}");
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn after_auth_ping_echo_and_errors_keep_the_connection_open() {
    let app = spawn_app(Store::Memory, &[]).await;
    let mut client = app.authenticated("alice").await;
    client.send_json(&json!({"type": "ping"})).await;
    assert_eq!(client.next_json().await, json!({"type": "pong"}));
    let data = json!({"nested": [1, "two", {"three": null}], "unicode": "ü✓"});
    client
        .send_json(&json!({"type": "echo", "data": data}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "echo", "data": data})
    );
    let error = |code: &str, id: Option<Value>| {
        let mut error = json!({"type": "error", "error": code});
        if let Some(id) = id {
            error["id"] = id;
        }
        error
    };
    let without_message = |mut reply: Value| {
        assert!(
            reply["message"].is_string(),
            "every error explains itself: {reply}"
        );
        reply.as_object_mut().unwrap().remove("message");
        reply
    };
    client.send_json(&json!({"type": "shout", "id": 3})).await;
    assert_eq!(
        without_message(client.next_json().await),
        error("unknown_type", Some(json!(3)))
    );
    client.send_text("not json").await;
    assert_eq!(
        without_message(client.next_json().await),
        error("bad_message", None)
    );
    client.send(Message::binary(vec![1, 2, 3])).await;
    assert_eq!(
        without_message(client.next_json().await),
        error("bad_message", None)
    );
    client
        .send_json(&json!({"type": "echo", "data": 1, "id": ["not", "an", "id"]}))
        .await;
    assert_eq!(
        without_message(client.next_json().await),
        error("bad_message", None)
    );
    client
        .send_json(&json!({"type": "ping", "id": "p-1"}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong", "id": "p-1"}),
        "still open after the errors, and replies carry the request's id"
    );
    client
        .send_json(&json!({"type": "echo", "data": [1], "id": 9}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "echo", "data": [1], "id": 9})
    );
}

#[tokio::test]
async fn broadcasts_reach_every_authenticated_connection_in_seq_order() {
    let app = spawn_app(Store::Memory, &[]).await;
    let mut alice = app.authenticated("alice").await;
    let mut bob = app.authenticated("bob").await;
    wait_until("both to join", || app.hub.authenticated_count() == 2).await;
    let first = app.publish(r#"{"n":1}"#).await;
    let second = app.publish(r#""two""#).await;
    assert_eq!(second, first + 1);
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            client.next_json().await,
            json!({"type": "broadcast", "seq": first, "node": app.node, "data": {"n": 1}})
        );
        assert_eq!(
            client.next_json().await,
            json!({"type": "broadcast", "seq": second, "node": app.node, "data": "two"})
        );
    }
}

#[tokio::test]
async fn the_server_pings_and_answers_pings() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "3"),
        ],
    )
    .await;
    let mut client = app.authenticated("alice").await;
    client
        .send(Message::Ping(b"are you there".to_vec().into()))
        .await;
    let mut got_pong = false;
    let mut got_ping = false;
    while !(got_pong && got_ping) {
        match client.next_frame().await.unwrap() {
            Message::Pong(payload) => {
                assert_eq!(&payload[..], b"are you there");
                got_pong = true;
            }
            Message::Ping(_) => got_ping = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    // A client that keeps reading (and so answers pings) outlives several timeouts.
    let alive_until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < alive_until {
        match tokio::time::timeout(Duration::from_millis(500), client.stream.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Ping(_)))) => {}
            Ok(other) => panic!("a live client was disconnected: {other:?}"),
        }
    }
    assert_eq!(app.hub.authenticated_count(), 1);
}

#[tokio::test]
async fn a_client_that_stops_answering_is_closed_with_4408() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let mut client = app.authenticated("alice").await;
    // Not reading means not answering the server's pings.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let reason = client.expect_close(4408).await;
    assert!(reason.contains("heartbeat"), "{reason}");
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_no_one_else_notices() {
    let app = spawn_app(Store::Memory, &[("MAX_MESSAGE_BYTES", "1024")]).await;
    let mut bystander = app.authenticated("bob").await;
    let mut client = app.authenticated("alice").await;
    client
        .send_text(&format!(
            r#"{{"type":"echo","data":"{}"}}"#,
            "x".repeat(2000)
        ))
        .await;
    client.expect_close(1009).await;
    bystander.send_json(&json!({"type": "ping"})).await;
    assert_eq!(bystander.next_json().await, json!({"type": "pong"}));
    assert_eq!(app.hub.authenticated_count(), 1);
}

/// However a connection ends, it leaves the broadcast pipeline and stops counting as open.
#[tokio::test]
async fn every_way_of_leaving_unregisters() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("AUTH_TIMEOUT_SECS", "1"),
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    // A clean close: the server answers with the same code.
    let mut polite = app.authenticated("a").await;
    polite
        .send(Message::Close(Some(CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        })))
        .await;
    assert_eq!(
        polite.ending().await,
        Ending::Closed {
            code: 1000,
            reason: "bye".into()
        }
    );
    // Vanishing without a close frame.
    let vanished = app.authenticated("b").await;
    drop(vanished);
    // Dropping before authenticating, and timing out before authenticating.
    drop(app.connect(&app.ticket("c").await).await);
    let mut slow = app.connect(&app.ticket("d").await).await;
    // Authenticated, then silent until the heartbeat gives up.
    let mut silent = app.authenticated("e").await;
    slow.expect_close(4408).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    silent.expect_close(4408).await;
    app.assert_no_connections_left().await;
}

/// A client that stops reading must not slow down the others: they receive every broadcast,
/// in order, while the stuck one is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_never_holds_up_the_others() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("HEARTBEAT_INTERVAL_SECS", "5"),
            ("CLIENT_TIMEOUT_SECS", "6"),
        ],
    )
    .await;
    let mut fast = app.authenticated("fast").await;
    let _stuck = app.authenticated("stuck").await;
    wait_until("both to join", || app.hub.authenticated_count() == 2).await;
    // 3000 x 16 KiB = 48 MiB, far more than loopback socket buffers hold for the stuck client.
    let payload = raw(&format!(r#""{}""#, "x".repeat(16 * 1024)));
    let total = 3000u64;
    let received = AtomicU64::new(0);
    let reader = async {
        let mut expected = None;
        for _ in 0..total {
            let message = fast.next_json().await;
            let seq = message["seq"].as_u64().unwrap();
            if let Some(expected) = expected {
                assert_eq!(seq, expected, "no gaps, no reordering");
            }
            expected = Some(seq + 1);
            received.fetch_add(1, Ordering::Relaxed);
        }
    };
    let publisher = async {
        for published in 0..total {
            // Pace to the fast reader only: the stuck one gets no say.
            while published - received.load(Ordering::Relaxed) > 256 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            app.publish(payload.get()).await;
        }
    };
    tokio::join!(reader, publisher);
    wait_until("the stuck client to be dropped", || {
        app.hub.authenticated_count() == 1
    })
    .await;
}
