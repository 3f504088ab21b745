//! Verifying user JWTs (and minting them for development and tests).

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};

use crate::config::JwtSettings;

/// The claims ticketgate relies on; other claims are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// A JWT that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedJwt {
    pub sub: String,
    /// The JWT's `exp`, unix seconds.
    pub expires_at: u64,
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
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token lacks a required claim (exp, sub)")]
    MissingClaim,
    #[error("the token's sub claim is empty")]
    EmptySubject,
}

pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Without JWT_AUDIENCE nothing is said about `aud`, so a token that carries one is fine.
        validation.validate_aud = false;
        validation.algorithms = vec![Algorithm::HS256];
        JwtVerifier {
            key: DecodingKey::from_secret(settings.key.hs256_secret()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<VerifiedJwt, JwtRejection> {
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| rejection(e.kind()))?;
        if data.claims.sub.is_empty() {
            return Err(JwtRejection::EmptySubject);
        }
        Ok(VerifiedJwt {
            sub: data.claims.sub,
            expires_at: data.claims.exp,
        })
    }
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
            exp: now + ttl_secs,
            nbf: None,
            iat: Some(now),
            jti: None,
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
    use crate::config::JwtKey;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use secrecy::SecretBox;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtSettings {
            key: JwtKey::Hs256(SecretBox::new(Box::new(SECRET.to_vec()))),
            leeway_secs: 0,
        })
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
}
