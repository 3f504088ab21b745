//! JWT key options against the running gateway: RS256 and ES256 public keys, a JWKS with
//! several keys selected by kid, issuer and audience, and the classic attacks on them.

use std::path::PathBuf;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::*;

pub fn fixture(name: &str) -> PathBuf {
    repo_root()
        .to_path_buf()
        .join("tests/fixtures/keys")
        .join(name)
}

pub fn private_key(name: &str) -> EncodingKey {
    let pem = std::fs::read(fixture(&format!("{name}.key.pem"))).unwrap();
    match name {
        n if n.starts_with("rsa") => EncodingKey::from_rsa_pem(&pem).unwrap(),
        _ => EncodingKey::from_ec_pem(&pem).unwrap(),
    }
}

pub fn claims(extra: Value) -> Value {
    let mut claims = json!({"sub": "alice", "exp": now() + 600});
    claims
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    claims
}

pub fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A JWKS file holding the public halves of `keys`, each under its kid.
fn jwks_file(dir: &tempfile::TempDir, keys: &[(&str, &str, Algorithm)]) -> String {
    let set = JwkSet {
        keys: keys
            .iter()
            .map(|(kid, name, alg)| {
                let mut jwk = Jwk::from_encoding_key(&private_key(name), *alg).unwrap();
                jwk.common.key_id = Some(kid.to_string());
                jwk
            })
            .collect(),
    };
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_string(&set).unwrap()).unwrap();
    path.to_string_lossy().into_owned()
}

/// Settings with the given JWT variables only (no JWT_SECRET).
async fn app_with_keys(vars: &[(&str, &str)]) -> TestApp {
    let mut all = base_vars(Store::Mongo);
    all.remove("JWT_SECRET");
    for (k, v) in vars {
        all.insert(k.to_string(), v.to_string());
    }
    spawn_app_with(all).await
}

async fn mint_status(app: &TestApp, token: &str) -> (u16, String) {
    let (status, body) = app.mint(Some(&format!("Bearer {token}"))).await;
    let detail = format!(
        "{} {}",
        body["error"].as_str().unwrap_or(""),
        body["message"].as_str().unwrap_or("")
    );
    (status, detail)
}

#[tokio::test]
async fn rs256_and_es256_public_keys_verify_their_tokens() {
    for (name, alg) in [("rsa-a", Algorithm::RS256), ("ec-a", Algorithm::ES256)] {
        let pem = fixture(&format!("{name}.pub.pem"));
        let app = app_with_keys(&[("JWT_PUBLIC_KEY_FILE", pem.to_str().unwrap())]).await;
        let token = sign(alg, None, &private_key(name), &claims(json!({})));
        assert_eq!(mint_status(&app, &token).await.0, 200, "{name}");
        // The first WebSocket message is checked by the same keys.
        let ticket = app.mint(Some(&format!("Bearer {token}"))).await.1["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut client = app.connect(&ticket).await;
        client
            .send_json(&json!({"type": "jwt", "token": token}))
            .await;
        assert_eq!(client.next_json().await["type"], "authenticated", "{name}");
        // A token signed by a key that is not configured is refused.
        let other = if name == "rsa-a" { "rsa-b" } else { "rsa-a" };
        let forged = sign(
            Algorithm::RS256,
            None,
            &private_key(other),
            &claims(json!({})),
        );
        assert_eq!(mint_status(&app, &forged).await.0, 401, "{name}");
    }
}

#[tokio::test]
async fn algorithm_confusion_and_alg_none_are_refused() {
    let pem_path = fixture("rsa-a.pub.pem");
    let public_pem = std::fs::read(&pem_path).unwrap();
    // HS256 "signed" with the RSA public key's bytes: the classic confusion attack.
    let confused = sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(&public_pem),
        &claims(json!({})),
    );
    let unsigned = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none"}"#),
            b64.encode(claims(json!({})).to_string())
        )
    };
    let only_rsa = app_with_keys(&[("JWT_PUBLIC_KEY_FILE", pem_path.to_str().unwrap())]).await;
    let (status, detail) = mint_status(&only_rsa, &confused).await;
    assert_eq!(status, 401);
    assert!(detail.starts_with("invalid_token"), "{detail}");
    assert_eq!(mint_status(&only_rsa, &unsigned).await.0, 401);
    // With an HMAC secret configured too, the forged token meets the secret, not the RSA key.
    let both = app_with_keys(&[
        ("JWT_PUBLIC_KEY_FILE", pem_path.to_str().unwrap()),
        ("JWT_SECRET", SECRET),
    ])
    .await;
    assert_eq!(mint_status(&both, &confused).await.0, 401);
    assert_eq!(mint_status(&both, &jwt("alice")).await.0, 200);
    let rs256 = sign(
        Algorithm::RS256,
        None,
        &private_key("rsa-a"),
        &claims(json!({})),
    );
    assert_eq!(mint_status(&both, &rs256).await.0, 200);
}

#[tokio::test]
async fn a_jwks_selects_keys_by_kid_for_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = jwks_file(
        &dir,
        &[
            ("2026-old", "rsa-a", Algorithm::RS256),
            ("2026-new", "rsa-b", Algorithm::RS256),
            ("ec", "ec-a", Algorithm::ES256),
        ],
    );
    let app = app_with_keys(&[("JWT_JWKS_FILE", &jwks)]).await;
    let body = claims(json!({}));
    // (what, algorithm, kid, signing key, expected status, a word the refusal must give)
    let cases = [
        (
            "the old key during rotation",
            Algorithm::RS256,
            Some("2026-old"),
            "rsa-a",
            200,
            "",
        ),
        (
            "the new key during rotation",
            Algorithm::RS256,
            Some("2026-new"),
            "rsa-b",
            200,
            "",
        ),
        (
            "an EC key beside RSA keys",
            Algorithm::ES256,
            Some("ec"),
            "ec-a",
            200,
            "",
        ),
        (
            "a missing kid with several keys",
            Algorithm::RS256,
            None,
            "rsa-a",
            401,
            "no kid",
        ),
        (
            "an unknown kid",
            Algorithm::RS256,
            Some("retired"),
            "rsa-a",
            401,
            "kid names no configured key",
        ),
        (
            "the right kid, the wrong key",
            Algorithm::RS256,
            Some("2026-new"),
            "rsa-a",
            401,
            "signature",
        ),
        (
            "a kid's key for another algorithm",
            Algorithm::ES256,
            Some("2026-old"),
            "ec-a",
            401,
            "algorithm",
        ),
    ];
    for (what, alg, kid, key, status, word) in cases {
        let (got, detail) = mint_status(&app, &sign(alg, kid, &private_key(key), &body)).await;
        assert_eq!(got, status, "{what}: {detail}");
        assert!(detail.contains(word), "{what}: {detail}");
    }
}

#[tokio::test]
async fn issuer_and_audience_are_required_and_checked_when_configured() {
    let app = app_with_keys(&[
        ("JWT_SECRET", SECRET),
        ("JWT_ISSUER", "https://id.example"),
        ("JWT_AUDIENCE", "ticketgate"),
    ])
    .await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let token = |extra: Value| sign(Algorithm::HS256, None, &key, &claims(extra));
    let good = json!({"iss": "https://id.example", "aud": "ticketgate"});
    assert_eq!(mint_status(&app, &token(good)).await.0, 200);
    let in_list = json!({"iss": "https://id.example", "aud": ["other", "ticketgate"]});
    assert_eq!(mint_status(&app, &token(in_list)).await.0, 200);
    for (what, extra, reason) in [
        (
            "wrong issuer",
            json!({"iss": "https://evil.example", "aud": "ticketgate"}),
            "issuer",
        ),
        (
            "missing issuer",
            json!({"aud": "ticketgate"}),
            "required claim",
        ),
        (
            "wrong audience",
            json!({"iss": "https://id.example", "aud": "other"}),
            "audience",
        ),
        (
            "missing audience",
            json!({"iss": "https://id.example"}),
            "required claim",
        ),
    ] {
        let (status, detail) = mint_status(&app, &token(extra)).await;
        assert_eq!(status, 401, "{what}");
        assert!(detail.contains(reason), "{what}: {detail}");
    }
}

#[tokio::test]
async fn leeway_tolerates_small_clock_skew_only() {
    let app = app_with_keys(&[("JWT_SECRET", SECRET), ("JWT_LEEWAY_SECS", "30")]).await;
    let key = EncodingKey::from_secret(SECRET.as_bytes());
    let expired_by = |secs: u64| {
        sign(
            Algorithm::HS256,
            None,
            &key,
            &json!({"sub": "alice", "exp": now() - secs}),
        )
    };
    assert_eq!(
        mint_status(&app, &expired_by(5)).await.0,
        200,
        "5 s of skew is tolerated"
    );
    assert_eq!(mint_status(&app, &expired_by(120)).await.0, 401);
}
