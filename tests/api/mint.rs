//! `GET /token/ws`: every status and error code of ticket minting.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use ticketgate::jwt::{Claims, JwtSigner};

use crate::support::*;

fn claims(sub: &str, exp: u64) -> Claims {
    Claims {
        sub: sub.into(),
        exp,
        nbf: None,
        iat: None,
        jti: None,
        ..Claims::default()
    }
}

#[tokio::test]
async fn a_valid_jwt_gets_a_ticket_stored_as_documented() {
    let app = spawn_app(Store::Mongo, &[("TICKET_TTL_SECS", "120")]).await;
    let response = app
        .http
        .get(app.url("/token/ws"))
        .bearer_auth(jwt("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["expires_in"], 120);
    let ticket = body["token"].as_str().unwrap();
    let (id_hex, secret) = ticket.split_once('.').unwrap();
    assert_eq!(
        URL_SAFE_NO_PAD.decode(secret).unwrap().len(),
        32,
        "a 256-bit secret"
    );

    let stored = app
        .db
        .as_ref()
        .unwrap()
        .collection::<Document>("ws_tickets")
        .find_one(doc! { "_id": ObjectId::parse_str(id_hex).unwrap() })
        .await
        .unwrap()
        .expect("the ticket is stored under its ObjectId");
    assert_eq!(stored.get_str("token_type").unwrap(), "ws");
    assert_eq!(stored.get_str("user_id").unwrap(), "alice");
    assert!(matches!(stored.get("created_at"), Some(Bson::DateTime(_))));
    let Some(Bson::Binary(hash)) = stored.get("secret_hash") else {
        panic!("{stored:?}")
    };
    assert_eq!(hash.bytes.len(), 32);
    let text = stored.to_string();
    assert!(
        !text.contains(secret),
        "the plain secret must not be stored: {text}"
    );
}

#[tokio::test]
async fn the_in_process_store_mints_too() {
    let app = spawn_app(Store::Memory, &[]).await;
    let (status, body) = app.mint(Some(&format!("Bearer {}", jwt("bob")))).await;
    assert_eq!(status, 200);
    assert_eq!(body["expires_in"], 900, "the documented default TTL");
}

#[tokio::test]
async fn a_missing_or_non_bearer_header_is_missing_token() {
    let app = spawn_app(Store::Memory, &[]).await;
    for header in [
        None,
        Some("Basic YWxpY2U6cHc="),
        Some("Bearer "),
        Some("Bearer"),
        Some(""),
    ] {
        let (status, body) = app.mint(header).await;
        assert_eq!(status, 401, "{header:?}");
        assert_eq!(body["error"], "missing_token", "{header:?}");
        assert!(body["message"].as_str().unwrap().contains("Bearer"));
    }
    let response = app.http.get(app.url("/token/ws")).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn every_kind_of_bad_jwt_is_invalid_token() {
    let app = spawn_app(Store::Memory, &[]).await;
    let other_key = JwtSigner::hs256(b"some-other-secret-some-other-secret");
    let unsigned = |payload: String| {
        format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    };
    let hs256_raw = |payload: &str| {
        // Signed correctly, but with claims our Claims type cannot express.
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::from_str::<serde_json::Value>(payload).unwrap(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    let cases = [
        ("garbage", "not-a-jwt".to_string()),
        ("wrong signature", other_key.mint("alice", 600)),
        ("expired", jwt_with(&claims("alice", now() - 60))),
        (
            "alg none",
            unsigned(format!(r#"{{"sub":"alice","exp":{}}}"#, now() + 600)),
        ),
        (
            "HS512 instead of HS256",
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS512),
                &claims("alice", now() + 600),
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .unwrap(),
        ),
        (
            "missing sub",
            hs256_raw(&format!(r#"{{"exp":{}}}"#, now() + 600)),
        ),
        ("empty sub", jwt_with(&claims("", now() + 600))),
        ("missing exp", hs256_raw(r#"{"sub":"alice"}"#)),
        (
            "nbf in the future",
            jwt_with(&Claims {
                nbf: Some(now() + 300),
                ..claims("alice", now() + 600)
            }),
        ),
    ];
    for (what, token) in cases {
        let (status, body) = app.mint(Some(&format!("Bearer {token}"))).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(body["error"], "invalid_token", "{what}: {body}");
        assert!(!body["message"].as_str().unwrap().is_empty(), "{what}");
    }
}

#[tokio::test]
async fn other_methods_and_paths_get_json_errors() {
    let app = spawn_app(Store::Memory, &[]).await;
    let response = app.http.post(app.url("/token/ws")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
    let response = app.http.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}
