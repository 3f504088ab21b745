//! When an authenticated connection's JWT runs out: one `token_expiring` notice shortly before,
//! and the end at `exp` (plus the verifier's leeway) unless the client refreshed in-band.

use std::time::Duration;

use tokio::time::Instant;

use crate::clock::{saturating_deadline, until_unix};

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
        // `expires_at` is bounded by the verifier (clock::MAX_UNIX_SECS); the arithmetic
        // saturates anyway, so no timestamp can make it panic.
        let now = Instant::now();
        let exp = saturating_deadline(now, until_unix(expires_at));
        Expiry::Valid {
            expires_at,
            notice_at: exp.checked_sub(notice).unwrap_or(now).max(now),
            ends_at: saturating_deadline(exp, grace),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::unix_now;
    use proptest::prelude::*;

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

    proptest! {
        /// Found by hand: `exp` = u64::MAX used to panic here ("overflow when adding duration
        /// to instant"). Any timestamp and any configured durations now give a deadline.
        #[test]
        fn any_timestamp_gives_deadlines_without_panicking(
            expires_at in any::<u64>(),
            notice in any::<u64>(),
            grace in any::<u64>(),
        ) {
            let expiry = Expiry::new(expires_at, Duration::from_secs(notice), Duration::from_secs(grace));
            let (_, noticed) = expiry.fire();
            prop_assert!(noticed.next_deadline() >= expiry.next_deadline());
        }
    }
}
