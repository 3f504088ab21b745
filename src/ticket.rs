//! The connection-ticket format: `<ObjectId hex>.<secret>`.
//!
//! An ObjectId alone is guessable (a timestamp, a per-process random value and a counter), so it
//! only names the ticket. The 256-bit random secret after the dot is what proves possession. The
//! store keeps only SHA-256 of the secret: a leaked database holds no usable tickets. SHA-256
//! without a salt or slow hash is enough because the secret is uniformly random, not a password.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bson::oid::ObjectId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::random_bytes;

pub const SECRET_BYTES: usize = 32;
/// 24 hex digits, a dot, 43 base64url characters.
pub const TICKET_LEN: usize = 24 + 1 + 43;

pub type SecretHash = [u8; 32];

/// A ticket just created: the only place the plain secret exists, on its way to the client.
pub struct NewTicket {
    pub id: ObjectId,
    secret: [u8; SECRET_BYTES],
}

impl NewTicket {
    pub fn generate() -> Self {
        NewTicket {
            id: ObjectId::new(),
            secret: random_bytes(),
        }
    }

    pub fn secret_hash(&self) -> SecretHash {
        hash_secret(&self.secret)
    }
}

/// The string handed to the client.
impl fmt::Display for NewTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}",
            self.id.to_hex(),
            URL_SAFE_NO_PAD.encode(self.secret)
        )
    }
}

/// A ticket as presented by a client, well formed but not yet checked against the store.
#[derive(Debug, Clone)]
pub struct PresentedTicket {
    pub id: ObjectId,
    secret_hash: SecretHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed ticket")]
pub struct MalformedTicket;

impl PresentedTicket {
    /// Strict: exactly lower-case hex, one dot, unpadded base64url of 32 bytes.
    pub fn parse(raw: &str) -> Result<Self, MalformedTicket> {
        if raw.len() != TICKET_LEN {
            return Err(MalformedTicket);
        }
        let (id_hex, secret_b64) = raw.split_once('.').ok_or(MalformedTicket)?;
        if id_hex.len() != 24
            || !id_hex
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(MalformedTicket);
        }
        let id = ObjectId::parse_str(id_hex).map_err(|_| MalformedTicket)?;
        let secret = URL_SAFE_NO_PAD
            .decode(secret_b64)
            .map_err(|_| MalformedTicket)?;
        let secret: [u8; SECRET_BYTES] = secret.try_into().map_err(|_| MalformedTicket)?;
        // Decoding is lenient about the unused low bits of the last character; re-encoding
        // makes sure each secret has exactly one spelling.
        if URL_SAFE_NO_PAD.encode(secret) != secret_b64 {
            return Err(MalformedTicket);
        }
        Ok(PresentedTicket {
            id,
            secret_hash: hash_secret(&secret),
        })
    }

    /// Constant-time comparison with the stored hash, so response timing reveals nothing.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        bool::from(self.secret_hash.as_slice().ct_eq(stored_hash))
    }

    pub fn secret_hash(&self) -> &SecretHash {
        &self.secret_hash
    }
}

fn hash_secret(secret: &[u8]) -> SecretHash {
    Sha256::digest(secret).into()
}

/// What may appear in logs: the first 8 characters, which name neither the secret nor the
/// whole ObjectId.
pub fn redact(raw: &str) -> String {
    let prefix: String = raw.chars().take(8).collect();
    format!("{prefix}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_ticket_parses_and_matches_its_hash() {
        let ticket = NewTicket::generate();
        let text = ticket.to_string();
        assert_eq!(text.len(), TICKET_LEN);
        let presented = PresentedTicket::parse(&text).unwrap();
        assert_eq!(presented.id, ticket.id);
        assert!(presented.matches(&ticket.secret_hash()));
        assert!(!presented.matches(&NewTicket::generate().secret_hash()));
        assert!(!presented.matches(&[]));
    }

    #[test]
    fn malformed_tickets_are_refused() {
        let good = NewTicket::generate().to_string();
        let (id, secret) = good.split_once('.').unwrap();
        for bad in [
            String::new(),
            id.to_string(),
            format!("{id}{secret}"),
            format!("{}.{secret}", id.to_uppercase()),
            format!("{id}.{secret}="),
            format!("{id}:{secret}"),
            format!("{id}.{}", &secret[1..]),
            format!("{id}.{}+", &secret[..42]),
            format!("{}.{secret}", &id[..23]),
            good.replace('.', "%2E"),
        ] {
            assert!(PresentedTicket::parse(&bad).is_err(), "{bad}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn ticket(oid: [u8; 12], secret: [u8; 32]) -> NewTicket {
            NewTicket {
                id: ObjectId::from_bytes(oid),
                secret,
            }
        }

        proptest! {
            /// Every ticket round-trips, and matches its own hash and no other.
            #[test]
            fn every_ticket_round_trips(oid in any::<[u8; 12]>(), secret in any::<[u8; 32]>(), other in any::<[u8; 32]>()) {
                let issued = ticket(oid, secret);
                let text = issued.to_string();
                prop_assert_eq!(text.len(), TICKET_LEN);
                let presented = PresentedTicket::parse(&text).unwrap();
                prop_assert_eq!(presented.id, issued.id);
                prop_assert!(presented.matches(&issued.secret_hash()));
                prop_assume!(other != secret);
                prop_assert!(!presented.matches(&ticket(oid, other).secret_hash()));
            }

            /// Changing any one character either breaks the format or names another secret:
            /// no second spelling of a ticket exists.
            #[test]
            fn any_single_change_is_refused_or_another_ticket(
                oid in any::<[u8; 12]>(), secret in any::<[u8; 32]>(), at in 0usize..TICKET_LEN, c in any::<char>(),
            ) {
                let issued = ticket(oid, secret);
                let text = issued.to_string();
                let mut changed: Vec<char> = text.chars().collect();
                prop_assume!(changed[at] != c);
                changed[at] = c;
                let changed: String = changed.into_iter().collect();
                if let Ok(presented) = PresentedTicket::parse(&changed) {
                    prop_assert!(presented.id != issued.id || !presented.matches(&issued.secret_hash()));
                }
            }

            /// Arbitrary text never panics, and whatever parses has the canonical shape.
            #[test]
            fn arbitrary_text_parses_only_in_canonical_form(raw in ".{0,80}") {
                if PresentedTicket::parse(&raw).is_ok() {
                    prop_assert_eq!(raw.len(), TICKET_LEN);
                    prop_assert_eq!(raw.as_bytes()[24], b'.');
                }
            }
        }
    }

    #[test]
    fn redaction_keeps_eight_characters() {
        let good = NewTicket::generate().to_string();
        assert_eq!(redact(&good), format!("{}…", &good[..8]));
    }
}
