//! Bad input that outside tools (Schemathesis) and people found: each answered with its
//! documented JSON error, never a panic, never a silent misreading.

use mongodb::bson::{Document, doc};
use serde_json::{Value, json};
use ticketgate::clock::MAX_UNIX_SECS;
use ticketgate::jwt::Claims;
use tokio_tungstenite::tungstenite::Message;

use crate::support::raw::{WS_HEADERS, raw_head, raw_http, upgrade_request};
use crate::support::*;

const API_KEY: &str = "test-api-key-0123456789";

fn claims(exp: u64, iat: Option<u64>) -> Claims {
    Claims {
        sub: "alice".into(),
        exp,
        nbf: None,
        iat,
        jti: None,
        ..Claims::default()
    }
}

/// A correctly signed JWT whose `exp` is u64::MAX once passed `/token/ws` and the first
/// message, and then the session task panicked in its expiry timer, dropping the socket.
#[tokio::test]
async fn times_past_the_year_9999_are_refused_and_nothing_panics() {
    let app = spawn_app(Store::Memory, &[]).await;
    for claims in [
        claims(u64::MAX, None),
        claims(MAX_UNIX_SECS + 1, None),
        claims(now() + 600, Some(u64::MAX)),
    ] {
        let token = jwt_with(&claims);
        let (status, body) = app.mint(Some(&format!("Bearer {token}"))).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_token"))
        );
        assert!(body["message"].as_str().unwrap().contains("9999"), "{body}");

        // Over the socket: a documented close, not a dropped connection.
        let mut client = app.connect(&app.ticket("alice").await).await;
        client
            .send_json(&json!({"type": "jwt", "token": token}))
            .await;
        let reason = client.expect_close(4401).await;
        assert!(reason.contains("9999"), "{reason}");
    }
    // The latest time allowed works, from mint to an authenticated session.
    let token = jwt_with(&claims(MAX_UNIX_SECS, Some(now())));
    let (status, body) = app.mint(Some(&format!("Bearer {token}"))).await;
    assert_eq!(status, 200, "{body}");
    let mut client = app.connect(body["token"].as_str().unwrap()).await;
    client
        .send_json(&json!({"type": "jwt", "token": token}))
        .await;
    let welcome = client.next_json().await;
    assert_eq!(welcome["expires_at"], MAX_UNIX_SECS, "{welcome}");
    client.send_json(&json!({"type": "ping"})).await;
    assert_eq!(client.next_json().await["type"], "pong");
}

/// RFC 7515 §4.1.11: a `crit` extension the recipient does not understand fails the token.
#[tokio::test]
async fn a_jwt_with_a_critical_extension_is_refused() {
    let app = spawn_app(Store::Memory, &[]).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.crit = Some(vec!["http://example.com/unknown".into()]);
    let token = jsonwebtoken::encode(
        &header,
        &claims(now() + 600, None),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (status, body) = app.mint(Some(&format!("Bearer {token}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert!(body["message"].as_str().unwrap().contains("crit"), "{body}");
}

/// Bytes that are not visible ASCII in `Authorization` presented something: a bad token, not
/// a missing one.
#[tokio::test]
async fn non_ascii_credentials_are_invalid_not_missing() {
    let app = spawn_app(Store::Memory, &[("API_KEY", API_KEY)]).await;
    let request = |path: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer caf\u{e9}\r\nConnection: close\r\n\r\n")
            .into_bytes()
    };
    let (status, body) = raw_http(app.port, &request("/token/ws")).await;
    assert_eq!(status, Some(401), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "invalid_token"
    );
    let (status, body) = raw_http(app.port, &request("/api/nodes")).await;
    assert_eq!(status, Some(401), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "invalid_api_key"
    );
}

/// Two copies of a header a proxy may read differently from the gateway: refused.
#[tokio::test]
async fn two_authorization_or_two_origin_headers_are_refused() {
    let app = spawn_app(Store::Memory, &[]).await;
    let ticket = app.ticket("alice").await;
    let bearer = format!("Authorization: Bearer {}\r\n", jwt("alice"));
    let cases = [
        (
            "two Authorization headers",
            format!(
                "GET /token/ws HTTP/1.1\r\nHost: x\r\n{bearer}{bearer}Connection: close\r\n\r\n"
            )
            .into_bytes(),
            "Authorization",
        ),
        (
            "two Origin headers on the upgrade",
            upgrade_request(
                &format!("/demo?token={ticket}"),
                &format!("{WS_HEADERS}Origin: http://127.0.0.1\r\nOrigin: http://evil.example\r\n"),
            ),
            "Origin",
        ),
    ];
    for (what, request, header) in cases {
        let (status, body) = raw_http(app.port, &request).await;
        assert_eq!(status, Some(400), "{what}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "bad_request", "{what}");
        assert!(
            body["message"].as_str().unwrap().contains(header),
            "{what}: {body}"
        );
    }
    // The ticket was not spent by the refused upgrade.
    app.connect(&ticket).await;
}

/// serde reads a struct from a JSON array as well; the API's bodies are objects only.
#[tokio::test]
async fn api_bodies_that_are_not_objects_are_400_and_change_nothing() {
    let app = spawn_app(Store::Mongo, &[("API_KEY", API_KEY)]).await;
    for (path, body) in [
        ("/api/revocations", json!(["j1", 99_999_999_999u64])),
        ("/api/broadcast", json!([1])),
        ("/api/users/alice/messages", json!("text")),
        ("/api/broadcast", json!(null)),
    ] {
        let response = app
            .http
            .post(app.url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path} {body}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"], "bad_request", "{path} {body}");
        assert!(
            reply["message"].as_str().unwrap().contains("object"),
            "{reply}"
        );
    }
    let stored = app
        .db
        .as_ref()
        .unwrap()
        .collection::<Document>("revocations")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(stored, 0, "the array body created a revocation");
}

#[tokio::test]
async fn revocation_times_and_jti_lengths_are_bounded_as_documented() {
    let app = spawn_app(Store::Memory, &[("API_KEY", API_KEY)]).await;
    let revoke = |body: Value| {
        app.http
            .post(app.url("/api/revocations"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
    };
    let response = revoke(json!({"jti": "j", "expires_at": MAX_UNIX_SECS + 1}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = revoke(json!({"jti": "j", "expires_at": MAX_UNIX_SECS}))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    // 512 characters of 3 bytes each: within the limit, which counts characters as the
    // OpenAPI document's maxLength does.
    let response = revoke(json!({"jti": "€".repeat(512), "expires_at": now() + 60}))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let response = revoke(json!({"jti": "€".repeat(513), "expires_at": now() + 60}))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // JSON Schema's integer: 2014.0 is one (Schemathesis found it refused), 2014.5 is not.
    let response = revoke(json!({"jti": "k", "expires_at": (now() + 60) as f64}))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    for bad in [json!(2014.5), json!(-1), json!(1e300)] {
        let response = revoke(json!({"jti": "k", "expires_at": bad}))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn a_repeated_query_parameter_is_a_json_400() {
    let app = spawn_app(Store::Memory, &[("API_KEY", API_KEY)]).await;
    let response = app
        .http
        .get(app.url("/api/connections?user_id=a&user_id=b"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "bad_request", "{body}");
}

/// HEAD answers where GET does (RFC 9110 §9.3.2); other methods get 405 with `Allow`.
#[tokio::test]
async fn head_works_where_get_does_and_405_says_what_is_allowed() {
    let app = spawn_app(Store::Memory, &[("API_KEY", API_KEY)]).await;
    for path in [
        "/healthz",
        "/livez",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/",
        "/ticketgate.js",
    ] {
        let response = app.http.head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
    }
    let response = app
        .http
        .head(app.url("/api/nodes"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "HEAD /api/nodes");
    for (method, path, allow) in [
        ("GET", "/api/broadcast", "POST"),
        ("DELETE", "/api/revocations", "POST"),
        ("POST", "/api/nodes", "GET, HEAD"),
        ("PUT", "/api/connections", "GET, HEAD"),
    ] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let head = raw_head(app.port, request.as_bytes()).await;
        assert!(head.starts_with("http/1.1 405"), "{method} {path}: {head}");
        assert!(
            head.contains(&format!("allow: {}\r\n", allow.to_ascii_lowercase())),
            "{head}"
        );
        let (_, body) = raw_http(app.port, request.as_bytes()).await;
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "method_not_allowed"
        );
    }
}

/// `new WebSocket(url, ["ticketgate.v1"])` works; offering only unknown subprotocols is refused
/// before the ticket is spent.
#[tokio::test]
async fn the_ticketgate_subprotocol_is_accepted_when_offered() {
    let app = spawn_app(Store::Memory, &[]).await;
    let ticket = app.ticket("alice").await;
    let refused = try_connect_with_headers(
        &app.ws_url(&ticket),
        &[("Sec-WebSocket-Protocol", "chat, superchat")],
    )
    .await
    .err()
    .expect("an unknown subprotocol is refused");
    assert_eq!(refused.0, 400);
    assert_eq!(refused.1["error"], "not_websocket");
    assert!(
        refused.1["message"]
            .as_str()
            .unwrap()
            .contains("ticketgate.v1")
    );

    let request = upgrade_request(
        &format!("/demo?token={ticket}"),
        &format!("{WS_HEADERS}Sec-WebSocket-Protocol: chat, ticketgate.v1\r\n"),
    );
    let head = raw_head(app.port, &request).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: ticketgate.v1\r\n"),
        "{head}"
    );

    // Through a real client library that checks the answer.
    let mut client = try_connect_with_headers(
        &app.ws_url(&app.ticket("alice").await),
        &[("Sec-WebSocket-Protocol", "ticketgate.v1")],
    )
    .await
    .expect("the handshake succeeds");
    client
        .send_json(&json!({"type": "jwt", "token": jwt("alice")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client.send(Message::Close(None)).await;
}

/// The refusals actix-http's parser writes by itself once had empty bodies; every rejection is
/// JSON, these three included.
#[tokio::test]
async fn the_parsers_own_refusals_are_json() {
    let app = spawn_app(Store::Memory, &[("HTTP_REQUEST_TIMEOUT_SECS", "1")]).await;
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let cases: [(&str, Vec<u8>, u16, &str); 3] = [
        (
            "a 200 KiB header",
            huge.into_bytes(),
            431,
            "headers_too_large",
        ),
        ("not HTTP", b"GARBAGE\r\n\r\n".to_vec(), 400, "bad_request"),
        (
            "half a request head, then silence",
            b"GET / HTTP/1.1\r\nHo".to_vec(),
            408,
            "request_timeout",
        ),
    ];
    for (what, request, status, code) in cases {
        let (got, body) = raw_http(app.port, &request).await;
        assert_eq!(got, Some(status), "{what}: {body}");
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
        assert_eq!(json["error"], code, "{what}");
        assert!(json["message"].is_string(), "{what}");
    }
    // The same server still serves, and an upgrade (whose socket is unwrapped) still works.
    let mut client = app.authenticated("after-refusals").await;
    client.send_json(&json!({"type": "ping"})).await;
    assert_eq!(client.next_json().await["type"], "pong");
}
