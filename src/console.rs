//! The operations console's sign-in (docs/PROTOCOL.md, "Operations console"): one password
//! (CONSOLE_PASSWORD) buys a session, kept by the browser in an `HttpOnly` cookie holding a
//! token the server signed. The signing key is derived from the password, so every node
//! accepts every node's sessions, and changing the password ends them all. Signing out
//! revokes the session's id in the revocation store, which every node reads.

use std::net::IpAddr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ConsoleSettings;
use crate::limits::RetryAfter;

/// The session cookie's name.
pub const COOKIE: &str = "ticketgate_console";
/// What a console call must send besides the cookie: a header no cross-site form or image
/// can set, so a page elsewhere cannot make the browser act with the operator's session.
pub const CALL_HEADER: &str = "x-ticketgate-console";
/// Session ids are kept among JWT ids in the revocation store; the prefix keeps them apart.
const SESSION_ID_PREFIX: &str = "console-session-";
const AUDIENCE: &str = "ticketgate-console";

/// A signed-in operator's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Random; written to the log with every action the operator takes.
    pub id: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sid: String,
    iat: u64,
    exp: u64,
    aud: String,
}

pub struct Console {
    password_digest: [u8; 32],
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lasts: Duration,
    signins_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl Console {
    pub fn new(settings: &ConsoleSettings) -> Self {
        let password = settings.password.expose_secret().as_bytes();
        let key: [u8; 32] = Sha256::new()
            .chain_update(b"ticketgate console sessions\0")
            .chain_update(password)
            .finalize()
            .into();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.leeway = 0;
        Console {
            password_digest: Sha256::digest(password).into(),
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
            lasts: settings.session,
            signins_per_ip: RateLimiter::keyed(Quota::per_minute(settings.signin_rate_per_min)),
            clock: DefaultClock::default(),
        }
    }

    /// How long a session lasts.
    pub fn lasts(&self) -> Duration {
        self.lasts
    }

    pub fn check_signin_rate(&self, client: IpAddr) -> Result<(), RetryAfter> {
        self.signins_per_ip
            .check_key(&client)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Compares digests, in constant time, so neither the content nor the length of the
    /// password leaks through timing.
    pub fn password_matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.ct_eq(&self.password_digest).into()
    }

    /// A new session and its signed token (the cookie's value).
    pub fn open_session(&self) -> (ConsoleSession, String) {
        let random: [u8; 16] = crate::config::random_bytes();
        let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let now = crate::clock::unix_now();
        let session = ConsoleSession {
            id: format!("{SESSION_ID_PREFIX}{id}"),
            expires_at: now.saturating_add(self.lasts.as_secs()),
        };
        let claims = Claims {
            sid: session.id.clone(),
            iat: now,
            exp: session.expires_at,
            aud: AUDIENCE.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail");
        (session, token)
    }

    /// The session a token stands for, if this server signed it and it has not expired
    /// (whether it was signed out is the revocation store's to say).
    pub fn session_of(&self, token: &str) -> Option<ConsoleSession> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()?
            .claims;
        claims
            .sid
            .starts_with(SESSION_ID_PREFIX)
            .then_some(ConsoleSession {
                id: claims.sid,
                expires_at: claims.exp,
            })
    }

    pub fn forget_idle(&self) {
        self.signins_per_ip.retain_recent();
        self.signins_per_ip.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(password: &str) -> Console {
        Console::new(&ConsoleSettings {
            password: password.to_owned().into(),
            session: Duration::from_secs(60),
            signin_rate_per_min: std::num::NonZeroU32::new(2).unwrap(),
        })
    }

    #[test]
    fn a_session_token_is_good_on_every_node_with_the_same_password_only() {
        let one = console("correct horse battery staple");
        let (session, token) = one.open_session();
        let another_node = console("correct horse battery staple");
        assert_eq!(another_node.session_of(&token), Some(session));
        assert_eq!(
            console("another password, quite long").session_of(&token),
            None
        );
        assert_eq!(one.session_of(&format!("{token}x")), None);
        assert_eq!(one.session_of("not-a-token"), None);
    }

    #[test]
    fn the_password_must_match_exactly_and_signins_are_limited_per_ip() {
        let console = console("correct horse battery staple");
        assert!(console.password_matches("correct horse battery staple"));
        assert!(!console.password_matches("correct horse battery stapl"));
        assert!(!console.password_matches(""));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        console.check_signin_rate(ip).unwrap();
        console.check_signin_rate(ip).unwrap();
        assert!(console.check_signin_rate(ip).unwrap_err().secs() >= 1);
        console
            .check_signin_rate("10.0.0.2".parse().unwrap())
            .unwrap();
    }
}
