//! Whether the node's change stream is alive: when MongoDB last answered it. The stream asks
//! at least every half second (its `getMore` waits that long for events), so a stream that
//! has heard nothing for `BUS_STALL_SECS` is stalled: the node would deliver nothing from
//! other nodes while every check that only pings MongoDB stays green. Readiness turns it into
//! a 503 (`bus_stalled`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct StreamHealth {
    /// Unix milliseconds of MongoDB's last answer to the stream (0: the stream is not open).
    last_answer_ms: AtomicI64,
    /// BUS_STALL_SECS.
    stall_limit: OnceLock<Duration>,
}

impl StreamHealth {
    /// MongoDB answered the stream (with events or without).
    pub fn answered(&self) {
        self.last_answer_ms
            .store(bson::DateTime::now().timestamp_millis(), Ordering::Relaxed);
    }

    pub fn set_stall_limit(&self, limit: Duration) {
        let _ = self.stall_limit.set(limit);
    }

    /// How long the stream has gone without an answer, once that is past the stall limit;
    /// `None` while it is fine (or there is no stream).
    pub fn stalled_for(&self) -> Option<Duration> {
        let last = self.last_answer_ms.load(Ordering::Relaxed);
        if last == 0 {
            return None;
        }
        let silent = bson::DateTime::now()
            .timestamp_millis()
            .saturating_sub(last);
        let silent = Duration::from_millis(u64::try_from(silent).unwrap_or(0));
        let limit = self
            .stall_limit
            .get()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        (silent > limit).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_is_stalled_only_past_the_limit_after_an_answer() {
        let health = StreamHealth::default();
        health.set_stall_limit(Duration::from_millis(50));
        assert_eq!(health.stalled_for(), None, "no stream yet");
        health.answered();
        assert_eq!(health.stalled_for(), None);
        std::thread::sleep(Duration::from_millis(80));
        assert!(health.stalled_for().is_some());
        health.answered();
        assert_eq!(health.stalled_for(), None);
    }
}
