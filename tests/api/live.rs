//! Live sessions: a JWT's expiry while connected, the notice before it, and in-band refresh.

use std::time::Duration;

use serde_json::json;
use ticketgate::jwt::Claims;

use crate::support::*;

fn jwt_expiring_in(sub: &str, secs: u64) -> (String, u64) {
    let exp = now() + secs;
    let token = jwt_with(&Claims {
        sub: sub.into(),
        exp,
        nbf: None,
        iat: None,
        jti: None,
        ..Claims::default()
    });
    (token, exp)
}

/// Authenticates `sub` with `token` as the first message.
async fn connect_with(app: &TestApp, sub: &str, token: &str) -> WsClient {
    let mut client = app.connect(&app.ticket(sub).await).await;
    client
        .send_json(&json!({"type": "jwt", "token": token}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
}

#[tokio::test]
async fn a_notice_comes_before_exp_then_the_connection_closes_with_4401() {
    let app = spawn_app(Store::Mongo, &[("TOKEN_REFRESH_NOTICE_SECS", "2")]).await;
    let (token, exp) = jwt_expiring_in("alice", 4);
    let mut client = connect_with(&app, "alice", &token).await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "token_expiring", "expires_at": exp})
    );
    // Exactly one notice, then the end.
    let reason = client.expect_close(4401).await;
    assert_eq!(reason, "token expired");
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn an_in_band_refresh_keeps_the_connection_past_the_old_exp() {
    let app = spawn_app(Store::Mongo, &[("TOKEN_REFRESH_NOTICE_SECS", "2")]).await;
    let (token, exp) = jwt_expiring_in("alice", 3);
    let mut client = connect_with(&app, "alice", &token).await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "token_expiring", "expires_at": exp})
    );
    let (fresh, fresh_exp) = jwt_expiring_in("alice", 600);
    client
        .send_json(&json!({"type": "jwt", "token": fresh}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "authenticated", "user_id": "alice", "expires_at": fresh_exp})
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    client.send_json(&json!({"type": "ping"})).await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "pong"}),
        "still open after the old exp"
    );
    assert_eq!(app.hub.authenticated_count(), 1);
}

#[tokio::test]
async fn a_refresh_at_any_time_moves_the_notice_too() {
    let app = spawn_app(Store::Mongo, &[("TOKEN_REFRESH_NOTICE_SECS", "2")]).await;
    let (token, _) = jwt_expiring_in("alice", 600);
    let mut client = connect_with(&app, "alice", &token).await;
    // Refreshing early, to a token that expires soon, brings its notice and end forward.
    let (short, short_exp) = jwt_expiring_in("alice", 3);
    client
        .send_json(&json!({"type": "jwt", "token": short}))
        .await;
    assert_eq!(client.next_json().await["expires_at"], short_exp);
    assert_eq!(
        client.next_json().await,
        json!({"type": "token_expiring", "expires_at": short_exp})
    );
    client.expect_close(4401).await;
}

#[tokio::test]
async fn a_refresh_with_another_user_or_a_bad_token_closes_with_4401() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let (expired, _) = {
        let exp = now() - 60;
        (
            jwt_with(&Claims {
                sub: "alice".into(),
                exp,
                nbf: None,
                iat: None,
                jti: None,
                ..Claims::default()
            }),
            exp,
        )
    };
    for (what, token) in [
        ("another user", jwt("mallory")),
        ("garbage", "x.y.z".into()),
        ("expired", expired),
    ] {
        let mut client = app.authenticated("alice").await;
        client
            .send_json(&json!({"type": "jwt", "token": token}))
            .await;
        let reason = client.expect_close(4401).await;
        assert!(!reason.is_empty(), "{what}");
    }
    app.assert_no_connections_left().await;
}

/// One log line per connection event, each with the connection id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_event_is_one_log_line_with_the_connection_id() {
    let gateway = GatewayProcess::start(&[("JWT_SECRET", SECRET)]);
    let http = reqwest::Client::new();
    let mut client = try_connect_url(&gateway.ws_url(&gateway.ticket(&http, "alice").await), None)
        .await
        .unwrap();
    client
        .send_json(&json!({"type": "jwt", "token": jwt("alice")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
        .send_json(&json!({"type": "jwt", "token": jwt("alice")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
        .send(tokio_tungstenite::tungstenite::Message::Close(Some(
            tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 1000.into(),
                reason: "done".into(),
            },
        )))
        .await;
    client.ending().await;
    let log = gateway.wait_for_log(" closed: code 1000 after ").await;
    let id = log
        .lines()
        .find_map(|l| {
            l.split("] ")
                .nth(1)?
                .strip_suffix(" opened (websocket) for user alice")
        })
        .unwrap_or_else(|| panic!("no 'upgraded' line:\n{log}"))
        .to_owned();
    let events: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("] ").nth(1))
        .filter(|l| l.starts_with(&format!("{id} ")))
        .collect();
    assert_eq!(events.len(), 4, "{events:#?}");
    assert_eq!(events[0], format!("{id} opened (websocket) for user alice"));
    assert_eq!(events[1], format!("{id} authenticated as user alice"));
    assert!(
        events[2].starts_with(&format!("{id} refreshed, now valid until ")),
        "{}",
        events[2]
    );
    assert!(
        events[3].starts_with(&format!("{id} closed: code 1000 after ")),
        "{}",
        events[3]
    );
}
