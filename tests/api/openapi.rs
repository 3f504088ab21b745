//! docs/openapi.json against the running server: every documented operation answers with a
//! documented status, and every route the server has is documented.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::*;

const API_KEY: &str = "openapi-test-key-0123456789";

fn spec() -> Value {
    serde_json::from_str(include_str!("../../docs/openapi.json"))
        .expect("docs/openapi.json is JSON")
}

#[tokio::test]
async fn the_served_document_is_the_one_in_docs() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let served: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, spec());
    assert_eq!(served["openapi"], "3.1.0");
}

#[tokio::test]
async fn every_documented_operation_answers_with_a_documented_status() {
    let app = spawn_app(Store::Mongo, &[("API_KEY", API_KEY)]).await;
    let spec = spec();
    let ticket = app.ticket("alice").await;
    for (path, operations) in spec["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let documented: BTreeSet<&str> = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            // A plausible request: real path parameters, a valid body, the right credentials.
            let url = app.url(
                &path
                    .replace("{user_id}", "alice")
                    .replace("/demo", &format!("/demo?token={ticket}")),
            );
            let mut request = app
                .http
                .request(method.to_uppercase().parse().unwrap(), url);
            let security = operation["security"][0]
                .as_object()
                .and_then(|s| s.keys().next())
                .map(String::as_str);
            request = match security {
                Some("apiKey") => request.bearer_auth(API_KEY),
                Some("userJwt") => request.bearer_auth(jwt("alice")),
                _ => request,
            };
            if operation.get("requestBody").is_some() {
                request = request.json(&json!({"data": 1, "jti": "x", "expires_at": now() + 60}));
            }
            let status = request.send().await.unwrap().status().as_u16().to_string();
            assert!(
                documented.contains(status.as_str()),
                "{method} {path}: {status} is not documented ({documented:?})"
            );
        }
    }
}

/// The server's routes, as registered in src/routes; a new route must be documented.
const SERVED: &[(&str, &str)] = &[
    ("get", "/token/ws"),
    ("get", "/demo"),
    ("post", "/api/broadcast"),
    ("post", "/api/users/{user_id}/messages"),
    ("post", "/api/users/{user_id}/disconnect"),
    ("post", "/api/revocations"),
    ("get", "/api/connections"),
    ("get", "/api/nodes"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/"),
    ("get", "/ticketgate.js"),
];

#[test]
fn every_route_is_documented_and_nothing_else() {
    let spec = spec();
    let documented: BTreeSet<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let served: BTreeSet<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);
    let routes = include_str!("../../src/routes/mod.rs").to_owned()
        + include_str!("../../src/routes/api.rs");
    for (_, path) in SERVED.iter().filter(|(_, p)| *p != "/") {
        let last = path.rsplit('/').next().unwrap();
        assert!(
            routes.contains(&format!("\"/{last}\"")) || routes.contains(&format!("/{last}\"")),
            "{path} is not routed"
        );
    }
}
