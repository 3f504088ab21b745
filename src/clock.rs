//! Wall-clock time as unix seconds, and the one bound every client-supplied timestamp must
//! respect, so that no client-chosen number can overflow a `Duration`, an `Instant` or a
//! BSON date anywhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// 9999-12-31T23:59:59Z. A JWT's `exp`, `nbf` or `iat`, or a revocation's `expires_at`, past
/// this is refused: it fits every representation the gateway uses (BSON dates in milliseconds,
/// JavaScript dates, RFC 3339 years), and no real token lives that long.
pub const MAX_UNIX_SECS: u64 = 253_402_300_799;

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Now, in unix milliseconds.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Time from now until a unix timestamp; zero if it is past.
pub fn until_unix(timestamp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(timestamp).saturating_sub(now)
}

/// About thirty years: later than any deadline a connection can reach, and far from where
/// `Instant` arithmetic overflows (tokio uses the same horizon for "never").
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `instant + duration`, capped at thirty years from `instant`: a deadline that far away is
/// the same as none, and the addition can never panic.
pub fn saturating_deadline(instant: Instant, duration: Duration) -> Instant {
    instant + duration.min(FAR_FUTURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_horizon_fits_a_bson_date_and_a_duration() {
        assert!(MAX_UNIX_SECS.checked_mul(1000).unwrap() < i64::MAX as u64);
        let _ = saturating_deadline(Instant::now(), until_unix(MAX_UNIX_SECS));
    }

    proptest! {
        #[test]
        fn deadlines_never_overflow(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let now = Instant::now();
            let deadline = saturating_deadline(now, Duration::new(secs, nanos));
            prop_assert!(deadline >= now);
            let _ = saturating_deadline(now, until_unix(secs));
        }
    }
}
