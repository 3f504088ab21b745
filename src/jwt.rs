//! Verifying user JWTs against the configured keys (and minting HS256 ones for development).
//!
//! Each key is bound to exactly one algorithm, and a token is only ever checked with a key of
//! its header's algorithm. This is what defeats algorithm confusion: an HS256 token "signed" with
//! an RSA public key's bytes is checked against the HMAC secret (if any), never against the RSA
//! key.

use std::fmt;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode,
};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};

use crate::clock::MAX_UNIX_SECS;

/// The claims ticketgate relies on; other claims are ignored (`iss` and `aud` are checked by
/// the validation when configured).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Connection JWTs: the channels the connection may subscribe to, exact names and
    /// prefixes ending in `*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
    /// Connection JWTs: the channels the connection may publish to (in namespaces with
    /// `client_publish`), in the same syntax as `channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Subscription tokens: the one channel this token lets its `sub` subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

/// Everything that decides which JWTs are accepted.
#[derive(Debug)]
pub struct JwtSettings {
    /// JWT_SECRET (or the dev-mode random secret): verifies HS256, signs `mint-jwt` tokens.
    pub hs256_secret: Option<SecretBox<Vec<u8>>>,
    /// From JWT_PUBLIC_KEY_FILE and JWT_JWKS_FILE.
    pub public_keys: Vec<VerificationKey>,
    /// No key was configured: `hs256_secret` is random and lives only in this process.
    pub dev_mode: bool,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// When set, `iss` must be present and equal.
    pub issuer: Option<String>,
    /// When set, `aud` must be present and contain it.
    pub audience: Option<String>,
}

impl JwtSettings {
    /// HS256 with one secret and no other checks: for tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn hs256(secret: &[u8]) -> Self {
        JwtSettings {
            hs256_secret: Some(SecretBox::new(Box::new(secret.to_vec()))),
            public_keys: Vec::new(),
            dev_mode: false,
            leeway_secs: 0,
            issuer: None,
            audience: None,
        }
    }
}

/// A public key, or the HMAC secret, with the one algorithm it verifies.
pub struct VerificationKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VerificationKey({:?}, kid {:?})",
            self.algorithm, self.kid
        )
    }
}

/// Reads a PEM public key: RSA keys verify RS256, P-256 keys ES256.
pub fn key_from_pem(pem: &[u8]) -> Result<VerificationKey, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(VerificationKey {
            kid: None,
            algorithm: Algorithm::RS256,
            key,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok(VerificationKey {
            kid: None,
            algorithm: Algorithm::ES256,
            key,
        });
    }
    Err("not a PEM RSA or EC (P-256) public key".into())
}

/// Reads a JWKS document: every key becomes a verification key, selected by its `kid`.
pub fn keys_from_jwks(json: &str) -> Result<Vec<VerificationKey>, String> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| format!("not a JWKS document: {e}"))?;
    if set.keys.is_empty() {
        return Err("the JWKS has no keys".into());
    }
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let kid = jwk.common.key_id.clone();
        let name = kid.clone().unwrap_or_else(|| "(no kid)".into());
        let algorithm = match jwk.common.key_algorithm {
            Some(alg) => {
                Algorithm::try_from(alg).map_err(|_| format!("key {name}: unsupported alg"))?
            }
            // RFC 7517 makes `alg` optional; infer it where the key type leaves one choice.
            None => match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => return Err(format!("key {name}: give its alg")),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {name}: {e}"))?;
        keys.push(VerificationKey {
            kid,
            algorithm,
            key,
        });
    }
    let kids: Vec<&str> = keys.iter().filter_map(|k| k.kid.as_deref()).collect();
    if (1..kids.len()).any(|i| kids[..i].contains(&kids[i])) {
        return Err("two keys share a kid".into());
    }
    Ok(keys)
}

/// A JWT that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    pub sub: String,
    /// The JWT's `exp`, unix seconds.
    pub expires_at: u64,
    /// The JWT's `jti`, by which it can be revoked.
    pub jti: Option<String>,
    /// Connection JWTs: the `channels` claim (empty without one).
    pub channels: Vec<String>,
    /// Connection JWTs: the `publish` claim (empty without one).
    pub publish: Vec<String>,
}

/// A subscription token that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedSubscription {
    pub sub: String,
    pub channel: String,
    pub expires_at: u64,
    pub jti: Option<String>,
}

/// Why a JWT was refused. The text goes back to the client; it never contains the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtRejection {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's algorithm is not accepted")]
    AlgorithmNotAllowed,
    #[error("the token's kid names no configured key")]
    UnknownKey,
    #[error("the token has no kid, and several keys are configured")]
    MissingKid,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token lacks a required claim")]
    MissingClaim,
    #[error("the token's sub claim is empty")]
    EmptySubject,
    #[error("the token's issuer is not accepted")]
    WrongIssuer,
    #[error("the token's audience is not accepted")]
    WrongAudience,
    #[error("the token has been revoked")]
    Revoked,
    #[error("the token's exp, nbf or iat is past the year 9999")]
    TimeOutOfRange,
    #[error("the token's crit header names an extension this gateway does not understand")]
    UnknownCriticalExtension,
    #[error("a subscription token (with a channel claim) cannot authenticate a connection")]
    SubscriptionToken,
    #[error("the token has no channel claim, so it is no subscription token")]
    NotASubscriptionToken,
}

struct ConfiguredKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    /// Built once; names only this key's algorithm.
    validation: Validation,
}

pub struct JwtVerifier {
    /// Replaced whole at a SIGHUP's reload ([`JwtVerifier::reload`]); a verification reads
    /// one set throughout.
    keys: arc_swap::ArcSwap<KeySet>,
}

/// The keys in force.
struct KeySet {
    keys: Vec<ConfiguredKey>,
    /// Whether any key has a kid, i.e. a JWKS is in use: then a token's kid must match one.
    kids_in_use: bool,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Self {
        JwtVerifier {
            keys: arc_swap::ArcSwap::from_pointee(KeySet::new(settings)),
        }
    }

    /// Verifies with the keys `settings` hold from now on (the key files read again).
    pub fn reload(&self, settings: &JwtSettings) {
        self.keys.store(std::sync::Arc::new(KeySet::new(settings)));
    }
}

impl KeySet {
    fn new(settings: &JwtSettings) -> Self {
        let hmac = settings.hs256_secret.iter().map(|secret| VerificationKey {
            kid: None,
            algorithm: Algorithm::HS256,
            key: DecodingKey::from_secret(secret.expose_secret()),
        });
        let keys: Vec<ConfiguredKey> = hmac
            .chain(settings.public_keys.iter().map(|k| VerificationKey {
                kid: k.kid.clone(),
                algorithm: k.algorithm,
                key: k.key.clone(),
            }))
            .map(|k| ConfiguredKey {
                validation: validation(settings, k.algorithm),
                kid: k.kid,
                algorithm: k.algorithm,
                key: k.key,
            })
            .collect();
        KeySet {
            kids_in_use: keys.iter().any(|k| k.kid.is_some()),
            keys,
        }
    }
}

impl JwtVerifier {
    /// A connection JWT: at `/token/ws`, authentication and refresh.
    pub fn verify(&self, token: &str) -> Result<VerifiedJwt, JwtRejection> {
        let claims = self.verify_claims(token)?;
        if claims.channel.is_some() {
            return Err(JwtRejection::SubscriptionToken);
        }
        Ok(VerifiedJwt {
            sub: claims.sub,
            expires_at: claims.exp,
            jti: claims.jti,
            channels: claims.channels.unwrap_or_default(),
            publish: claims.publish.unwrap_or_default(),
        })
    }

    /// A subscription token: the same keys and rules as connection JWTs, plus a `channel`.
    pub fn verify_subscription(&self, token: &str) -> Result<VerifiedSubscription, JwtRejection> {
        let claims = self.verify_claims(token)?;
        let channel = claims.channel.ok_or(JwtRejection::NotASubscriptionToken)?;
        Ok(VerifiedSubscription {
            sub: claims.sub,
            channel,
            expires_at: claims.exp,
            jti: claims.jti,
        })
    }

    fn verify_claims(&self, token: &str) -> Result<Claims, JwtRejection> {
        let header = decode_header(token).map_err(|e| rejection(e.kind()))?;
        // RFC 7515 §4.1.11: a recipient that does not understand every extension `crit` lists
        // must reject the token. This gateway understands none (and an empty list is invalid).
        if header.crit.is_some() {
            return Err(JwtRejection::UnknownCriticalExtension);
        }
        let keys = self.keys.load();
        let key = keys.select(&header)?;
        let claims = decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| rejection(e.kind()))?
            .claims;
        if claims.sub.is_empty() {
            return Err(JwtRejection::EmptySubject);
        }
        // A signed `exp` of u64::MAX once reached the session's timers; every time the
        // gateway keeps is bounded here, once.
        let times = [Some(claims.exp), claims.nbf, claims.iat];
        if times.into_iter().flatten().any(|t| t > MAX_UNIX_SECS) {
            return Err(JwtRejection::TimeOutOfRange);
        }
        Ok(claims)
    }
}

impl KeySet {
    /// A token with a kid gets the key with that kid (when keys have kids at all); otherwise
    /// the one key without a kid for the token's algorithm.
    fn select(&self, header: &Header) -> Result<&ConfiguredKey, JwtRejection> {
        if let (Some(kid), true) = (&header.kid, self.kids_in_use) {
            let key = self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(JwtRejection::UnknownKey)?;
            return if key.algorithm == header.alg {
                Ok(key)
            } else {
                Err(JwtRejection::AlgorithmNotAllowed)
            };
        }
        let mut same_alg = self.keys.iter().filter(|k| k.algorithm == header.alg);
        match same_alg.clone().find(|k| k.kid.is_none()) {
            Some(key) => Ok(key),
            None if same_alg.next().is_some() => Err(JwtRejection::MissingKid),
            None => Err(JwtRejection::AlgorithmNotAllowed),
        }
    }
}

fn validation(settings: &JwtSettings, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = settings.leeway_secs;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    match &settings.issuer {
        Some(issuer) => {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        None => validation.iss = None,
    }
    match &settings.audience {
        Some(audience) => {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        // Without JWT_AUDIENCE nothing is said about `aud`, so a token that carries one is fine.
        None => validation.validate_aud = false,
    }
    validation.set_required_spec_claims(&required);
    validation
}

fn rejection(kind: &ErrorKind) -> JwtRejection {
    match kind {
        ErrorKind::InvalidSignature => JwtRejection::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => JwtRejection::AlgorithmNotAllowed,
        ErrorKind::ExpiredSignature => JwtRejection::Expired,
        ErrorKind::ImmatureSignature => JwtRejection::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) => JwtRejection::MissingClaim,
        ErrorKind::InvalidIssuer => JwtRejection::WrongIssuer,
        ErrorKind::InvalidAudience => JwtRejection::WrongAudience,
        _ => JwtRejection::Malformed,
    }
}

/// Signs HS256 JWTs: `ticketgate mint-jwt` and the dev-mode demo token.
pub struct JwtSigner {
    key: EncodingKey,
}

impl JwtSigner {
    pub fn hs256(secret: &[u8]) -> Self {
        JwtSigner {
            key: EncodingKey::from_secret(secret),
        }
    }

    pub fn mint(&self, sub: &str, ttl_secs: u64) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            exp: now.saturating_add(ttl_secs),
            nbf: None,
            iat: Some(now),
            jti: None,
            ..Claims::default()
        };
        self.sign(&claims)
    }

    pub fn sign(&self, claims: &Claims) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .expect("HS256 signing cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtSettings::hs256(SECRET))
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn accepts_a_valid_token() {
        let token = JwtSigner::hs256(SECRET).mint("alice", 60);
        let v = verifier().verify(&token).unwrap();
        assert_eq!(v.sub, "alice");
        assert!(v.expires_at > now());
    }

    #[test]
    fn rejects_each_bad_token_with_its_reason() {
        let signer = JwtSigner::hs256(SECRET);
        let claims = |sub: &str, exp: u64, nbf: Option<u64>| Claims {
            sub: sub.into(),
            exp,
            nbf,
            iat: None,
            jti: None,
            ..Claims::default()
        };
        let v = verifier();
        assert_eq!(v.verify("garbage").unwrap_err(), JwtRejection::Malformed);
        assert_eq!(
            v.verify(&JwtSigner::hs256(b"another-secret-another-secret-xx").mint("a", 60))
                .unwrap_err(),
            JwtRejection::BadSignature
        );
        assert_eq!(
            v.verify(&signer.sign(&claims("a", now() - 10, None)))
                .unwrap_err(),
            JwtRejection::Expired
        );
        assert_eq!(
            v.verify(&signer.sign(&claims("a", now() + 60, Some(now() + 30))))
                .unwrap_err(),
            JwtRejection::NotYetValid
        );
        assert_eq!(
            v.verify(&signer.sign(&claims("", now() + 60, None)))
                .unwrap_err(),
            JwtRejection::EmptySubject
        );
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims("a", now() + 60, None),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            v.verify(&hs384).unwrap_err(),
            JwtRejection::AlgorithmNotAllowed
        );
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"a","exp":{}}}"#, now() + 60));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            payload
        );
        assert!(v.verify(&none).is_err());
        let no_sub = format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#),
            URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{}}}"#, now() + 60))
        );
        assert!(v.verify(&no_sub).is_err());
    }

    #[test]
    fn refuses_times_past_the_horizon_and_unknown_critical_extensions() {
        let signer = JwtSigner::hs256(SECRET);
        let v = verifier();
        let claims = |exp: u64, iat: Option<u64>| Claims {
            sub: "a".into(),
            exp,
            nbf: None,
            iat,
            jti: None,
            ..Claims::default()
        };
        for (exp, iat) in [
            (u64::MAX, None),
            (MAX_UNIX_SECS + 1, None),
            (now() + 60, Some(u64::MAX)),
        ] {
            assert_eq!(
                v.verify(&signer.sign(&claims(exp, iat))).unwrap_err(),
                JwtRejection::TimeOutOfRange,
                "exp {exp}, iat {iat:?}"
            );
        }
        assert!(v.verify(&signer.sign(&claims(MAX_UNIX_SECS, None))).is_ok());
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-ext".into()]);
        let critical = encode(
            &header,
            &claims(now() + 60, None),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            v.verify(&critical).unwrap_err(),
            JwtRejection::UnknownCriticalExtension
        );
    }

    proptest::proptest! {
        /// Any signed exp, nbf and iat: the verifier answers without panicking, and what it
        /// accepts lies within the horizon every timer of the gateway can hold.
        #[test]
        fn any_signed_times_verify_or_are_refused(
            exp in proptest::prop_oneof![
                proptest::prelude::any::<u64>(),
                // Around the horizon and today, where acceptance turns into refusal.
                MAX_UNIX_SECS - 10..MAX_UNIX_SECS + 10,
                1_700_000_000u64..2_000_000_000,
            ],
            nbf in proptest::prelude::any::<Option<u64>>(),
            iat in proptest::prelude::any::<Option<u64>>(),
        ) {
            let token = JwtSigner::hs256(SECRET).sign(&Claims {
                sub: "a".into(),
                exp,
                nbf,
                iat,
                jti: None,
                ..Claims::default()
            });
            if let Ok(verified) = verifier().verify(&token) {
                proptest::prop_assert!(verified.expires_at <= MAX_UNIX_SECS);
                proptest::prop_assert!(verified.expires_at >= now());
            }
        }
    }

    #[test]
    fn jwks_keys_need_distinct_kids_and_known_algorithms() {
        assert!(keys_from_jwks(r#"{"keys":[]}"#).is_err());
        assert!(keys_from_jwks("not json").is_err());
        let oct = r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#;
        assert!(keys_from_jwks(oct).unwrap_err().contains("alg"));
        assert!(
            key_from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err()
        );
    }
}
