//! An authenticated connection's heartbeat, as a small state machine: every
//! HEARTBEAT_INTERVAL_SECS the transport probes the client (a WebSocket Ping), and a client
//! from which nothing at all (a message, a Pong, a Ping) was heard for CLIENT_TIMEOUT_SECS is
//! taken for gone. autopush-rs's `ping.rs` is the model.

use std::time::Duration;

use tokio::time::Instant;

use crate::clock::saturating_deadline;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Heard from at `last_seen` or later; the next beat probes at `beat_at`.
    Alive {
        last_seen: Instant,
        beat_at: Instant,
    },
    /// Silent for too long: the connection ends.
    Gone,
}

/// What a beat asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Probe the client through the transport.
    Probe,
    /// Nothing was heard for CLIENT_TIMEOUT_SECS: close (4408).
    Silent,
}

impl Heartbeat {
    pub fn new(now: Instant, interval: Duration) -> Self {
        Heartbeat::Alive {
            last_seen: now,
            beat_at: saturating_deadline(now, interval),
        }
    }

    /// The client showed a sign of life.
    pub fn seen(&mut self, now: Instant) {
        if let Heartbeat::Alive { last_seen, .. } = self {
            *last_seen = now;
        }
    }

    /// When the next beat is due (never, once gone).
    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            Heartbeat::Alive { beat_at, .. } => Some(*beat_at),
            Heartbeat::Gone => None,
        }
    }

    /// The beat is due: what to do, and the state after it.
    pub fn fire(self, now: Instant, interval: Duration, timeout: Duration) -> (Beat, Heartbeat) {
        match self {
            Heartbeat::Alive { last_seen, .. } if now.duration_since(last_seen) < timeout => (
                Beat::Probe,
                Heartbeat::Alive {
                    last_seen,
                    beat_at: saturating_deadline(now, interval),
                },
            ),
            _ => (Beat::Silent, Heartbeat::Gone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(5);
    const TIMEOUT: Duration = Duration::from_secs(12);

    #[test]
    fn a_quiet_client_is_probed_every_interval_until_the_timeout() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(start, INTERVAL);
        let mut beats = Vec::new();
        while let Some(due) = heartbeat.next_deadline() {
            let (beat, next) = heartbeat.fire(due, INTERVAL, TIMEOUT);
            beats.push((beat, due.duration_since(start).as_secs()));
            heartbeat = next;
        }
        assert_eq!(
            beats,
            [(Beat::Probe, 5), (Beat::Probe, 10), (Beat::Silent, 15)]
        );
    }

    #[test]
    fn any_sign_of_life_keeps_it_alive() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(start, INTERVAL);
        for beat in 1..10u32 {
            let due = heartbeat.next_deadline().unwrap();
            heartbeat.seen(due - Duration::from_secs(1));
            let (outcome, next) = heartbeat.fire(due, INTERVAL, TIMEOUT);
            assert_eq!(outcome, Beat::Probe, "beat {beat}");
            heartbeat = next;
        }
    }
}
