//! Limits on what clients may ask: request rates (governor's GCRA, keyed: ticket minting per
//! user, upgrade attempts per client IP) and concurrent connections (enforced by the hub's
//! connection registry, which takes them from here).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// How long until the caller may try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds for the `Retry-After` header, never 0 (which would invite a busy loop).
    pub fn secs(&self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

pub struct RateLimits {
    tickets_per_user: DefaultKeyedRateLimiter<String>,
    upgrades_per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Each quota allows a burst of its whole per-minute allowance, refilled evenly.
    pub fn new(tickets_per_minute: NonZeroU32, upgrades_per_minute: NonZeroU32) -> Self {
        RateLimits {
            tickets_per_user: RateLimiter::keyed(Quota::per_minute(tickets_per_minute)),
            upgrades_per_ip: RateLimiter::keyed(Quota::per_minute(upgrades_per_minute)),
            clock: DefaultClock::default(),
        }
    }

    pub fn check_ticket(&self, user_id: &str) -> Result<(), RetryAfter> {
        self.tickets_per_user
            .check_key(&user_id.to_owned())
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    pub fn check_upgrade(&self, client: IpAddr) -> Result<(), RetryAfter> {
        self.upgrades_per_ip
            .check_key(&client)
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets keys whose quota has fully refilled, so memory follows the active clients
    /// rather than every client ever seen. Called periodically.
    pub fn forget_idle(&self) {
        self.tickets_per_user.retain_recent();
        self.tickets_per_user.shrink_to_fit();
        self.upgrades_per_ip.retain_recent();
        self.upgrades_per_ip.shrink_to_fit();
    }
}

/// Limits on concurrent connections (every transport), checked when one is opened.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_total: usize,
    pub max_per_user: usize,
}

impl ConnectionLimits {
    pub const UNLIMITED: ConnectionLimits = ConnectionLimits {
        max_total: usize::MAX,
        max_per_user: usize::MAX,
    };
}

/// Why a connection could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("the user already has the maximum number of connections")]
    UserLimit,
    #[error("the gateway is at its connection capacity")]
    Capacity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_with_a_retry_time() {
        let limits = RateLimits::new(NonZeroU32::new(3).unwrap(), NonZeroU32::new(2).unwrap());
        for _ in 0..3 {
            limits.check_ticket("alice").unwrap();
        }
        let retry = limits.check_ticket("alice").unwrap_err();
        assert!(
            retry.0 > Duration::ZERO && retry.0 <= Duration::from_secs(20),
            "{retry:?}"
        );
        assert_eq!(retry.secs(), retry.0.as_secs_f64().ceil() as u64);
        limits.check_ticket("bob").unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        limits.check_upgrade(ip).unwrap();
        limits.check_upgrade(ip).unwrap();
        limits.check_upgrade(ip).unwrap_err();
        limits.check_upgrade("127.0.0.2".parse().unwrap()).unwrap();
    }
}
