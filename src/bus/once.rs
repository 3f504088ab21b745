//! Publications made at most once: a publication with an idempotency key is published only
//! if no publication with the same key into the same channels was made within the window;
//! a repeat publishes nothing and is answered with the first one's offsets and epochs.
//!
//! On one node the keys are kept in process, checked and recorded under the route's lock. In
//! a cluster the key's record (collection `publish_keys`) is written in the same MongoDB
//! transaction as the publication itself (`writer.rs`), so the two exist together or not at
//! all: two nodes given the same key at the same moment cannot both publish (one commit
//! fails on the other's record and, retried, finds it), and a node that dies mid-write
//! leaves neither.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::StreamPublication;

/// The longest idempotency key: printable ASCII characters (so as many bytes).
pub const MAX_KEY_BYTES: usize = 128;

/// Past this many keys in process, the expired ones are swept at the next record.
const SWEEP_AT: usize = 10_000;

/// An idempotency key and the channels it covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    /// The stored `_id`: the channel (or a digest of several) and the key.
    id: String,
    window: Duration,
}

/// Why a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("idempotency_key is 1 to {MAX_KEY_BYTES} printable ASCII characters")]
    Shape,
}

impl IdempotencyKey {
    /// `key` for a publication into `channels` (in any order), remembered for `window`.
    pub fn new<'a>(
        key: &str,
        channels: impl IntoIterator<Item = &'a str>,
        window: Duration,
    ) -> Result<Self, BadKey> {
        // Printable ASCII: what keys are (ids, UUIDs), safe in logs, and a length in characters
        // that is also one in bytes, as the API document can say.
        let printable = key.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !printable {
            return Err(BadKey::Shape);
        }
        let mut channels: Vec<&str> = channels.into_iter().collect();
        channels.sort_unstable();
        channels.dedup();
        // Channel names hold no ',' and no '|', so the one-channel form is unambiguous; many
        // channels are named by a digest, which keeps the `_id` short.
        let covered = match channels.as_slice() {
            [one] => (*one).to_owned(),
            many => {
                let digest = Sha256::digest(many.join(",").as_bytes());
                let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
                format!("#{hex}")
            }
        };
        Ok(IdempotencyKey {
            id: format!("{covered}|{key}"),
            window,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

/// What the first publication with a key answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstAnswer {
    pub streams: Vec<StreamPublication>,
    /// On one node: the connections it reached.
    pub reached: Option<usize>,
}

/// The keys seen on one node, while their windows last.
#[derive(Default)]
pub struct LocalKeys {
    seen: HashMap<String, (FirstAnswer, Instant)>,
}

impl LocalKeys {
    /// The first answer for `key`, if its window has not passed.
    pub fn get(&self, key: &IdempotencyKey) -> Option<FirstAnswer> {
        let (answer, until) = self.seen.get(key.id())?;
        (Instant::now() < *until).then(|| answer.clone())
    }

    pub fn record(&mut self, key: &IdempotencyKey, answer: FirstAnswer) {
        let now = Instant::now();
        if self.seen.len() >= SWEEP_AT {
            self.seen.retain(|_, (_, until)| *until > now);
        }
        // A window too long for the clock is as good as forever.
        let until = now
            .checked_add(key.window())
            .unwrap_or(now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.seen.insert(key.id().to_owned(), (answer, until));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(300);

    #[test]
    fn a_key_covers_its_channels_in_any_order() {
        let one = IdempotencyKey::new("k", ["orders:1"], WINDOW).unwrap();
        assert_eq!(one.id(), "orders:1|k");
        let ab = IdempotencyKey::new("k", ["a", "b", "a"], WINDOW).unwrap();
        let ba = IdempotencyKey::new("k", ["b", "a"], WINDOW).unwrap();
        assert_eq!(ab, ba);
        assert!(ab.id().starts_with('#') && ab.id().ends_with("|k"));
        assert_ne!(ab, IdempotencyKey::new("k", ["a", "c"], WINDOW).unwrap());
        for bad in ["", "caf\u{e9}", "tab\t"] {
            assert_eq!(IdempotencyKey::new(bad, ["a"], WINDOW), Err(BadKey::Shape));
        }
        assert!(IdempotencyKey::new(&"x".repeat(MAX_KEY_BYTES), ["a"], WINDOW).is_ok());
        assert_eq!(
            IdempotencyKey::new(&"x".repeat(MAX_KEY_BYTES + 1), ["a"], WINDOW),
            Err(BadKey::Shape)
        );
    }

    #[test]
    fn local_keys_answer_within_their_window_only() {
        let mut keys = LocalKeys::default();
        let answer = FirstAnswer {
            streams: Vec::new(),
            reached: Some(3),
        };
        let kept = IdempotencyKey::new("k", ["a"], WINDOW).unwrap();
        let gone = IdempotencyKey::new("k", ["b"], Duration::ZERO).unwrap();
        let forever = IdempotencyKey::new("k", ["c"], Duration::MAX).unwrap();
        for key in [&kept, &gone, &forever] {
            assert_eq!(keys.get(key), None);
            keys.record(key, answer.clone());
        }
        assert_eq!(keys.get(&kept), Some(answer.clone()));
        assert_eq!(keys.get(&gone), None);
        assert_eq!(keys.get(&forever), Some(answer));
    }
}
