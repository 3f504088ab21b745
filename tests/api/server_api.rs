//! The server API: authentication by API key, broadcasts, messages to one user, disconnects,
//! connection counts, and the JSON errors for bad bodies.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const API_KEY: &str = "test-api-key-0123456789";

async fn api_app(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![("API_KEY", API_KEY)];
    vars.extend_from_slice(extra);
    spawn_app(Store::Mongo, &vars).await
}

async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    app.call_api(API_KEY, method, path, body).await
}

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    call(app, reqwest::Method::POST, path, Some(body)).await
}

/// How an answer reports its reach: on one node (the in-process store) with the count of
/// connections reached; on a replica set, as written to the cluster, without a count.
fn assert_reach(store: Store, body: &Value, field: &str, count: u64) {
    match store {
        Store::Memory => {
            assert_eq!(body["scope"], "node", "{body}");
            assert_eq!(body[field].as_u64(), Some(count), "{body}");
        }
        Store::Mongo => {
            assert_eq!(body["scope"], "cluster", "{body}");
            assert!(body.get(field).is_none(), "{body}");
        }
    }
}

#[tokio::test]
async fn without_api_key_the_api_does_not_exist() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let (status, body) = post(&app, "/api/broadcast", json!({"data": 1})).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (404, "not_found")
    );
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    let app = api_app(&[]).await;
    let response = app
        .http
        .post(app.url("/api/broadcast"))
        .json(&json!({"data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "missing_api_key"
    );
    let response = app
        .http
        .get(app.url("/api/connections"))
        .bearer_auth("test-api-key-0123456780")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "invalid_api_key"
    );
}

#[tokio::test]
async fn a_broadcast_reaches_every_authenticated_connection() {
    let app = api_app(&[]).await;
    let mut alice = app.authenticated("alice").await;
    let mut bob = app.authenticated("bob").await;
    let mut waiting = app.connect(&app.ticket("carol").await).await;
    let (status, body) = post(&app, "/api/broadcast", json!({"data": {"news": [1, 2]}})).await;
    assert_eq!(status, 202);
    let seq = body["seq"].as_u64().unwrap();
    for client in [&mut alice, &mut bob] {
        assert_eq!(
            client.next_json().await,
            json!({"type": "broadcast", "seq": seq, "node": app.node, "data": {"news": [1, 2]}})
        );
    }
    waiting.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_user_message_reaches_each_connection_of_that_user_only() {
    for store in [Store::Mongo, Store::Memory] {
        user_messages_on(store).await;
    }
}

async fn user_messages_on(store: Store) {
    let app = spawn_app(store, &[("API_KEY", API_KEY)]).await;
    let mut first = app.authenticated("alice").await;
    let mut second = app.authenticated("alice").await;
    let mut bob = app.authenticated("bob").await;
    let (status, body) = post(
        &app,
        "/api/users/alice/messages",
        json!({"data": "for alice"}),
    )
    .await;
    assert_eq!(status, 202);
    assert_reach(store, &body, "delivered", 2);
    for client in [&mut first, &mut second] {
        assert_eq!(
            client.next_json().await,
            json!({"type": "message", "data": "for alice"})
        );
    }
    bob.send_json(&json!({"type": "ping"})).await;
    assert_eq!(
        bob.next_json().await,
        json!({"type": "pong"}),
        "bob got nothing before his pong"
    );
    let (status, body) = post(&app, "/api/users/nobody/messages", json!({"data": 1})).await;
    assert_eq!(status, 202);
    assert_reach(store, &body, "delivered", 0);
}

#[tokio::test]
async fn a_disconnect_closes_the_users_connections_with_4403_and_deletes_their_tickets() {
    for store in [Store::Mongo, Store::Memory] {
        disconnects_on(store).await;
    }
}

async fn disconnects_on(store: Store) {
    let app = spawn_app(store, &[("API_KEY", API_KEY)]).await;
    let mut authenticated = app.authenticated("alice").await;
    let mut waiting = app.connect(&app.ticket("alice").await).await;
    let unused = app.ticket("alice").await;
    let mut bob = app.authenticated("bob").await;
    let (status, body) = post(&app, "/api/users/alice/disconnect", json!({})).await;
    assert_eq!(status, 202);
    assert_reach(store, &body, "disconnected", 2);
    assert_eq!(body["tickets_deleted"], 1);
    assert_eq!(
        authenticated.expect_close(4403).await,
        "disconnected by the server"
    );
    waiting.expect_close(4403).await;
    let (status, body) = app.try_connect(&unused, None).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (401, "invalid_ticket")
    );
    bob.send_json(&json!({"type": "ping"})).await;
    assert_eq!(bob.next_json().await, json!({"type": "pong"}));
    wait_until("alice's connections to close", || {
        app.hub.open_count_of("alice") == 0
    })
    .await;
}

#[tokio::test]
async fn connection_counts_by_state_and_user() {
    let app = api_app(&[]).await;
    let _a = app.authenticated("alice").await;
    let _b = app.authenticated("bob").await;
    let _w = app.connect(&app.ticket("alice").await).await;
    let (status, body) = call(&app, reqwest::Method::GET, "/api/connections", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"total": 3, "authenticated": 2, "unauthenticated": 1, "nodes": 1})
    );
    let (_, body) = call(
        &app,
        reqwest::Method::GET,
        "/api/connections?user_id=alice",
        None,
    )
    .await;
    assert_eq!(body["user_connections"], 2);
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let app = api_app(&[("API_MAX_BODY_BYTES", "100")]).await;
    let send_raw = |body: &'static str| {
        app.http
            .post(app.url("/api/broadcast"))
            .bearer_auth(API_KEY)
            .body(body)
            .send()
    };
    for (what, body, status, code) in [
        ("not JSON", "{nope", 400, "bad_request"),
        ("no data field", r#"{"payload": 1}"#, 400, "bad_request"),
        ("an array", "[1,2]", 400, "bad_request"),
        (
            "over API_MAX_BODY_BYTES",
            r#"{"data":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#,
            413,
            "body_too_large",
        ),
    ] {
        let response = send_raw(body).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["error"],
            code,
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_revoked_jti_can_no_longer_mint_authenticate_or_refresh_and_its_connections_close() {
    for store in [Store::Mongo, Store::Memory] {
        let app = spawn_app(store, &[("API_KEY", API_KEY)]).await;
        let doomed = jwt_with_jti("alice", "jti-doomed");
        let fine = jwt_with_jti("alice", "jti-fine");
        // A live connection authenticated with the token about to be revoked.
        let mut live = app.connect(&app.ticket("alice").await).await;
        live.send_json(&json!({"type": "jwt", "token": doomed}))
            .await;
        assert_eq!(live.next_json().await["type"], "authenticated");
        let mut other = app.connect(&app.ticket("alice").await).await;
        other
            .send_json(&json!({"type": "jwt", "token": fine}))
            .await;
        assert_eq!(other.next_json().await["type"], "authenticated");
        let pending = app.ticket("alice").await;

        let (status, body) = post(
            &app,
            "/api/revocations",
            json!({"jti": "jti-doomed", "expires_at": now() + 600}),
        )
        .await;
        assert_eq!(status, 201, "{store:?}");
        assert_reach(store, &body, "disconnected", 1);
        assert_eq!(live.expect_close(4403).await, "token revoked");

        let (status, body) = app.mint(Some(&format!("Bearer {doomed}"))).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (401, "invalid_token")
        );
        assert!(body["message"].as_str().unwrap().contains("revoked"));
        let mut late = app.connect(&pending).await;
        late.send_json(&json!({"type": "jwt", "token": doomed}))
            .await;
        assert!(late.expect_close(4401).await.contains("revoked"));
        other
            .send_json(&json!({"type": "jwt", "token": doomed}))
            .await;
        other.expect_close(4401).await;
        // Tokens with other jtis are untouched.
        assert_eq!(app.mint(Some(&format!("Bearer {fine}"))).await.0, 200);
        if let Some(db) = &app.db {
            let stored = db
                .collection::<mongodb::bson::Document>("revocations")
                .find_one(mongodb::bson::doc! {"_id": "jti-doomed"})
                .await
                .unwrap()
                .expect("the revocation is stored");
            assert!(stored.get_datetime("expires_at").is_ok(), "{stored}");
        }
    }
}

#[tokio::test]
async fn revocation_bodies_are_checked() {
    let app = api_app(&[]).await;
    for body in [
        json!({"expires_at": 1}),
        json!({"jti": "a", "expires_at": "soon"}),
        json!({"jti": "", "expires_at": 1}),
    ] {
        let (status, reply) = post(&app, "/api/revocations", body.clone()).await;
        assert_eq!(
            (status, reply["error"].as_str().unwrap()),
            (400, "bad_request"),
            "{body}"
        );
    }
}
