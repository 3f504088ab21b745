//! CORS on `GET /token/ws` and the SSE endpoints: preflights and response headers follow
//! ALLOWED_ORIGINS.

use reqwest::Method;

use crate::support::*;

async fn preflight(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .request(Method::OPTIONS, app.url("/token/ws"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap()
}

async fn cross_origin_get(app: &TestApp, origin: &str) -> reqwest::Response {
    app.http
        .get(app.url("/token/ws"))
        .header("Origin", origin)
        .bearer_auth(jwt("alice"))
        .send()
        .await
        .unwrap()
}

fn allow_origin(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("access-control-allow-origin")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn a_listed_origin_passes_the_preflight_and_reads_the_ticket() {
    let app = spawn_app(Store::Mongo, &[("ALLOWED_ORIGINS", "https://app.example")]).await;
    let response = preflight(&app, "https://app.example").await;
    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(
        allow_origin(&response).as_deref(),
        Some("https://app.example")
    );
    let headers = response.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(headers.contains("authorization"), "{headers}");
    let methods = response.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap();
    assert!(methods.contains("GET"), "{methods}");

    let response = cross_origin_get(&app, "https://app.example").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        allow_origin(&response).as_deref(),
        Some("https://app.example")
    );
}

#[tokio::test]
async fn an_unlisted_origin_gets_no_cors_headers_and_a_json_403() {
    let app = spawn_app(Store::Mongo, &[("ALLOWED_ORIGINS", "https://app.example")]).await;
    let response = preflight(&app, "https://evil.example").await;
    assert_eq!(
        allow_origin(&response),
        None,
        "the browser refuses the actual request"
    );
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "cors_rejected");
    let response = cross_origin_get(&app, "https://evil.example").await;
    assert_eq!(response.status(), 403);
    assert_eq!(allow_origin(&response), None);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "origin_not_allowed");
}

#[tokio::test]
async fn by_default_cross_origin_minting_is_refused() {
    let app = spawn_app(Store::Mongo, &[]).await;
    assert_eq!(
        allow_origin(&preflight(&app, "https://app.example").await),
        None
    );
    assert_eq!(
        cross_origin_get(&app, "https://app.example").await.status(),
        403
    );
    let same = cross_origin_get(&app, &format!("http://127.0.0.1:{}", app.port)).await;
    assert_eq!(same.status(), 200, "same origin needs no CORS");
}

#[tokio::test]
async fn a_wildcard_allows_every_origin() {
    let app = spawn_app(Store::Mongo, &[("ALLOWED_ORIGINS", "*")]).await;
    let response = preflight(&app, "https://anywhere.example").await;
    assert!(response.status().is_success());
    assert!(allow_origin(&response).is_some());
    let response = cross_origin_get(&app, "https://anywhere.example").await;
    assert_eq!(response.status(), 200);
    assert!(allow_origin(&response).is_some());
}

/// The SSE endpoints answer a listed origin as `/token/ws` does: the stream with its CORS
/// headers, and the POST's preflight for `Content-Type`.
#[tokio::test]
async fn the_sse_endpoints_follow_the_same_policy() {
    let app = spawn_app(Store::Memory, &[("ALLOWED_ORIGINS", "https://app.example")]).await;
    let ticket = app.ticket("alice").await;
    let stream = open_sse(
        app.port,
        &ticket,
        "Accept: text/event-stream\r\nOrigin: https://app.example\r\n",
    )
    .await
    .expect("a listed origin opens a stream");
    assert_eq!(
        header_value(&stream.head, "access-control-allow-origin"),
        Some("https://app.example")
    );
    let preflight = app
        .http
        .request(Method::OPTIONS, app.url("/sse/messages"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        allow_origin(&preflight).as_deref(),
        Some("https://app.example")
    );
    let headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(headers.contains("content-type"), "{headers}");
    // Another origin is refused with the JSON 403.
    let response = app
        .http
        .post(app.url("/sse/messages"))
        .header("Origin", "https://elsewhere.example")
        .header("Content-Type", "application/json")
        .body(r#"{"session":"x","seq":1,"messages":[{}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "origin_not_allowed");
    drop(stream);
}
