//! When an authenticated connection's JWT runs out: one `token_expiring` notice shortly before,
//! and the end at `exp` (plus the verifier's leeway) unless the client refreshed in-band.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Where a connection's authentication stands on the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Before the notice.
    Valid {
        expires_at: u64,
        notice_at: Instant,
        ends_at: Instant,
    },
    /// The notice went out; the end is next.
    Noticed { expires_at: u64, ends_at: Instant },
}

/// What happens when the current deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryEvent {
    /// Send `{"type":"token_expiring","expires_at":…}`.
    Notice { expires_at: u64 },
    /// Close with 4401 "token expired".
    Expired,
}

impl Expiry {
    /// For a JWT whose `exp` is `expires_at` (unix seconds): the notice `notice` before it, the end
    /// `grace` after it.
    pub fn new(expires_at: u64, notice: Duration, grace: Duration) -> Self {
        let now = Instant::now();
        let exp = now + until_unix(expires_at);
        Expiry::Valid {
            expires_at,
            notice_at: exp.checked_sub(notice).unwrap_or(now).max(now),
            ends_at: exp + grace,
        }
    }

    pub fn next_deadline(&self) -> Instant {
        match self {
            Expiry::Valid { notice_at, .. } => *notice_at,
            Expiry::Noticed { ends_at, .. } => *ends_at,
        }
    }

    /// The deadline passed: the event, and the state after it.
    pub fn fire(self) -> (ExpiryEvent, Expiry) {
        match self {
            Expiry::Valid {
                expires_at,
                ends_at,
                ..
            } => (
                ExpiryEvent::Notice { expires_at },
                Expiry::Noticed {
                    expires_at,
                    ends_at,
                },
            ),
            noticed @ Expiry::Noticed { .. } => (ExpiryEvent::Expired, noticed),
        }
    }
}

/// Time from now until a unix timestamp; zero if it is past.
fn until_unix(timestamp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(timestamp).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn notice_then_end() {
        let expiry = Expiry::new(
            unix_now() + 100,
            Duration::from_secs(60),
            Duration::from_secs(5),
        );
        let notice = expiry.next_deadline() - Instant::now();
        assert!(
            notice > Duration::from_secs(38) && notice <= Duration::from_secs(40),
            "{notice:?}"
        );
        let (event, noticed) = expiry.fire();
        assert_eq!(
            event,
            ExpiryEvent::Notice {
                expires_at: expiry_exp(&expiry)
            }
        );
        let end = noticed.next_deadline() - Instant::now();
        assert!(
            end > Duration::from_secs(103) && end <= Duration::from_secs(105),
            "{end:?}"
        );
        assert_eq!(noticed.fire().0, ExpiryEvent::Expired);
    }

    #[test]
    fn a_token_inside_the_notice_window_is_noticed_at_once() {
        let expiry = Expiry::new(unix_now() + 10, Duration::from_secs(60), Duration::ZERO);
        assert!(expiry.next_deadline() <= Instant::now());
    }

    fn expiry_exp(expiry: &Expiry) -> u64 {
        match expiry {
            Expiry::Valid { expires_at, .. } | Expiry::Noticed { expires_at, .. } => *expires_at,
        }
    }
}
