//! Interest-based delivery: which channels' publications this node's cluster stream carries.
//!
//! Channels are hashed into partitions (`crate::channels::partition`). A publication's stored
//! form names its channels' partitions (`partitions` on a cluster event, `appended.p` on a
//! history append), and the change stream's `$match` asks MongoDB for those of the partitions
//! this node has subscribers in, plus every event that is not a channel's (broadcasts, user
//! messages, disconnects, revocations, server-side subscriptions, forwarded posts). A
//! publication in a channel nobody here subscribes to is then never decoded, framed or even
//! sent to this node.
//!
//! The one rule that keeps delivery whole: **a subscription joins the hub only once the
//! stream carries its channel's partition** ([`Interest::cover`]). A subscribe in a partition
//! the stream does not carry wakes the stream's task, which reopens the stream from its last
//! resume token with the partition added and only then says the partition is carried; every
//! publication written after that point reaches the hub, and a history channel's window is
//! read from the store after it, so recovery meets the live publications with no gap. The
//! stream only ever widens when it reopens for a subscriber; it narrows on a timer, to the
//! partitions still held, after saying so first (under the same lock a subscribe takes), so
//! no subscribe can count on a partition that is being dropped.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bson::{Bson, Document, doc};
use tokio::sync::{Notify, watch};

use crate::channels::{PARTITIONS, partition_of};
use crate::db::Unavailable;
use crate::db::collections::{CHANNEL_HISTORY, CLUSTER_EVENTS};
use crate::hub::Hub;

/// From this many partitions on, the stream carries every channel: a list that long would
/// keep few events away and cost a match each.
const ALL_FROM: usize = (PARTITIONS / 2) as usize;

/// How often the stream drops the partitions nobody here holds any more (BUS_NARROW_SECS):
/// a channel's subscribers that come and go within it cost no reopening.
const NARROW_EVERY: Duration = Duration::from_secs(30);

/// The channel partitions a cluster stream carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Coverage {
    All,
    Partitions(BTreeSet<u32>),
}

impl Coverage {
    pub fn none() -> Self {
        Coverage::Partitions(BTreeSet::new())
    }

    fn of(partitions: BTreeSet<u32>) -> Self {
        if partitions.len() >= ALL_FROM {
            Coverage::All
        } else {
            Coverage::Partitions(partitions)
        }
    }

    pub fn contains(&self, partition: u32) -> bool {
        match self {
            Coverage::All => true,
            Coverage::Partitions(set) => set.contains(&partition),
        }
    }

    /// How many partitions it carries.
    pub fn partition_count(&self) -> usize {
        match self {
            Coverage::All => PARTITIONS as usize,
            Coverage::Partitions(set) => set.len(),
        }
    }

    fn is_superset_of(&self, other: &Coverage) -> bool {
        match (self, other) {
            (Coverage::All, _) => true,
            (Coverage::Partitions(_), Coverage::All) => false,
            (Coverage::Partitions(mine), Coverage::Partitions(theirs)) => mine.is_superset(theirs),
        }
    }

    /// The change stream's `$match`: the events that are no channel's, and the channel
    /// events in these partitions. Appends written by a node from before partitions (no
    /// `appended.p`) are carried everywhere, as they were then.
    pub fn stream_filter(&self) -> Document {
        let Coverage::Partitions(set) = self else {
            return doc! { "$or": [
                { "ns.coll": CLUSTER_EVENTS, "operationType": "insert" },
                { "ns.coll": CHANNEL_HISTORY, "operationType": { "$in": ["insert", "update"] } },
            ] };
        };
        let partitions: Vec<Bson> = set.iter().map(|p| Bson::Int32(*p as i32)).collect();
        doc! { "$or": [
            { "ns.coll": CLUSTER_EVENTS, "operationType": "insert",
              "fullDocument.partitions": { "$exists": false } },
            { "ns.coll": CLUSTER_EVENTS, "operationType": "insert",
              "fullDocument.partitions": { "$in": partitions.clone() } },
            { "ns.coll": CHANNEL_HISTORY, "operationType": "insert",
              "fullDocument.appended.p": { "$in": partitions.clone() } },
            { "ns.coll": CHANNEL_HISTORY, "operationType": "update",
              "updateDescription.updatedFields.appended.p": { "$in": partitions } },
            { "ns.coll": CHANNEL_HISTORY, "operationType": "insert",
              "fullDocument.appended": { "$exists": true },
              "fullDocument.appended.p": { "$exists": false } },
            { "ns.coll": CHANNEL_HISTORY, "operationType": "update",
              "updateDescription.updatedFields.appended": { "$exists": true },
              "updateDescription.updatedFields.appended.p": { "$exists": false } },
        ] }
    }
}

struct State {
    /// Subscribes under way, by partition: each holds its partition in until it has joined.
    pending: HashMap<u32, usize>,
    /// What the stream carries, as its task last said.
    in_force: Coverage,
    /// No stream is open (MongoDB does not answer): a subscribe joins at once, since the
    /// next stream resumes from a point before it and its task first takes in every
    /// partition held by then.
    down: bool,
}

impl State {
    /// Whether a subscribe in `partition` may join now.
    fn settles(&self, partition: u32) -> bool {
        self.down || self.in_force.contains(partition)
    }
}

/// This node's interest in channel partitions, between its subscribes and its stream's task.
pub struct Interest {
    state: Mutex<State>,
    /// Bumped each time the stream in force is said to carry something new.
    carried: watch::Sender<u64>,
    /// Wakes the stream's task: a subscribe waits for a partition it does not carry.
    wanted: Notify,
    /// BUS_NARROW_SECS, in milliseconds.
    narrow_every_ms: AtomicU64,
    hub: Arc<Hub>,
}

/// A subscribe's hold on its channel's partition; the partition stays carried while it is
/// held, and after that for as long as a channel of it has an entry in the hub.
#[must_use = "the partition is held only while this lives"]
pub struct Covering {
    held: Option<(Arc<Interest>, u32)>,
}

impl Covering {
    /// The hold of a node without a cluster stream (it delivers everything in process).
    pub fn local() -> Self {
        Covering { held: None }
    }
}

impl Drop for Covering {
    fn drop(&mut self) {
        if let Some((interest, partition)) = self.held.take() {
            let mut state = interest.lock();
            if let Some(count) = state.pending.get_mut(&partition) {
                *count -= 1;
                if *count == 0 {
                    state.pending.remove(&partition);
                }
            }
        }
    }
}

impl Interest {
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Interest {
            state: Mutex::new(State {
                pending: HashMap::new(),
                in_force: Coverage::none(),
                down: false,
            }),
            carried: watch::channel(0).0,
            wanted: Notify::new(),
            narrow_every_ms: AtomicU64::new(NARROW_EVERY.as_millis() as u64),
            hub,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `channel`'s partition in, waiting (at most `patience`) until the stream carries
    /// it. Keep the answer until the subscription has joined the hub.
    pub async fn cover(
        self: &Arc<Self>,
        channel: &str,
        patience: Duration,
    ) -> Result<Covering, Unavailable> {
        let partition = partition_of(channel);
        let mut carried = self.carried.subscribe();
        let covered = {
            let mut state = self.lock();
            *state.pending.entry(partition).or_default() += 1;
            state.settles(partition)
        };
        let covering = Covering {
            held: Some((Arc::clone(self), partition)),
        };
        if covered {
            return Ok(covering);
        }
        self.wanted.notify_one();
        let carried_here = async {
            while !self.lock().settles(partition) {
                if carried.changed().await.is_err() {
                    // The sender lives as long as `self`: never reached.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(patience, carried_here)
            .await
            .map_err(|_| {
                Unavailable(format!(
                    "the cluster stream did not take channel partition {partition} in within \
                     {patience:?}"
                ))
            })?;
        Ok(covering)
    }

    pub(super) fn narrow_every(&self, every: Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX).max(1);
        self.narrow_every_ms.store(ms, Ordering::Relaxed);
    }

    /// How often the stream's task narrows.
    pub(super) fn narrowing_period(&self) -> Duration {
        Duration::from_millis(self.narrow_every_ms.load(Ordering::Relaxed))
    }

    /// Wakes when a subscribe waits for a partition (for the stream's task).
    pub(super) async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// What a stream opened now must carry: what it carries, and every partition held here.
    pub(super) fn target(&self) -> Coverage {
        let state = self.lock();
        self.widened(&state)
    }

    fn widened(&self, state: &State) -> Coverage {
        let Coverage::Partitions(carried) = &state.in_force else {
            return Coverage::All;
        };
        let mut partitions = carried.clone();
        partitions.extend(state.pending.keys());
        partitions.extend(self.hub.watched_partitions());
        Coverage::of(partitions)
    }

    /// A wider coverage, when some partition held here is not carried.
    pub(super) fn widening(&self) -> Option<Coverage> {
        let state = self.lock();
        let target = self.widened(&state);
        (target != state.in_force).then_some(target)
    }

    /// A narrower coverage, when the stream carries partitions nobody here holds: said to be
    /// in force at once, so that a subscribe from now on waits for the stream to take its
    /// partition again, and to be opened next.
    pub(super) fn narrowing(&self) -> Option<Coverage> {
        let mut state = self.lock();
        let mut held: BTreeSet<u32> = state.pending.keys().copied().collect();
        held.extend(self.hub.watched_partitions());
        let narrower = Coverage::of(held);
        if narrower == state.in_force || narrower.is_superset_of(&state.in_force) {
            return None;
        }
        state.in_force = narrower.clone();
        Some(narrower)
    }

    /// The stream's task opened a stream carrying `coverage`. It then asks for a
    /// [`widening`](Self::widening) before reading anything, for the subscribes that joined
    /// while it was down.
    pub(super) fn opened(&self, coverage: Coverage) {
        {
            let mut state = self.lock();
            state.in_force = coverage;
            state.down = false;
        }
        self.carried.send_modify(|n| *n += 1);
    }

    /// The stream's place is lost: the next one opens from now, so a subscribe made before
    /// it opens could read its channel's history before a publication the stream never
    /// shows. Subscribes wait for it, whatever the stream carried before.
    pub(super) fn lost(&self) {
        let mut state = self.lock();
        state.in_force = Coverage::none();
        state.down = false;
    }

    /// The stream broke, or could not be opened: subscribes join without waiting until one is
    /// (the next stream resumes from a point before them).
    pub(super) fn down(&self) {
        self.lock().down = true;
        self.carried.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(list: &[u32]) -> Coverage {
        Coverage::Partitions(list.iter().copied().collect())
    }

    #[test]
    fn coverage_turns_into_all_past_half_the_partitions() {
        let few: BTreeSet<u32> = (0..10).collect();
        assert_eq!(Coverage::of(few.clone()), Coverage::Partitions(few));
        assert_eq!(Coverage::of((0..ALL_FROM as u32).collect()), Coverage::All);
        assert!(Coverage::All.is_superset_of(&partitions(&[1, 2])));
        assert!(!partitions(&[1]).is_superset_of(&Coverage::All));
        assert!(partitions(&[1, 2]).is_superset_of(&partitions(&[2])));
        assert_eq!(Coverage::All.partition_count(), 4096);
    }

    #[tokio::test]
    async fn a_subscribe_waits_until_the_stream_carries_its_partition() {
        let interest = Interest::new(Hub::new(crate::limits::ConnectionLimits::UNLIMITED));
        let channel = "feed:a";
        let partition = partition_of(channel);
        // Nothing carried: the subscribe waits, and the stream's task is woken.
        let waiting = {
            let interest = Arc::clone(&interest);
            tokio::spawn(async move { interest.cover(channel, Duration::from_secs(5)).await })
        };
        interest.wanted().await;
        let wider = interest.widening().expect("a partition to take in");
        assert!(wider.contains(partition));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "joined before the stream carried it"
        );
        interest.opened(wider);
        let covering = waiting.await.unwrap().unwrap();
        // While held, the partition is never narrowed away.
        assert_eq!(interest.narrowing(), None);
        drop(covering);
        assert_eq!(interest.narrowing(), Some(Coverage::none()));
        // Narrowed: a new subscribe waits again, and gives up after its patience.
        let refused = interest.cover(channel, Duration::from_millis(20)).await;
        assert!(refused.is_err());
        // With no stream open, a subscribe joins at once, and the next stream takes it in.
        interest.down();
        let held = interest
            .cover(channel, Duration::from_millis(20))
            .await
            .unwrap();
        interest.opened(Coverage::none());
        assert!(interest.widening().unwrap().contains(partition));
        drop(held);
    }

    #[tokio::test]
    async fn after_a_lost_place_a_subscribe_waits_for_the_stream_opened_from_now() {
        let interest = Interest::new(Hub::new(crate::limits::ConnectionLimits::UNLIMITED));
        let channel = "feed:a";
        let partition = partition_of(channel);
        interest.opened(Coverage::Partitions([partition].into()));
        // Down, then the place is lost: nothing is carried until a stream opens again.
        interest.down();
        interest.lost();
        assert!(
            interest
                .cover(channel, Duration::from_millis(20))
                .await
                .is_err(),
            "joined while no stream from now was open"
        );
        let waiting = {
            let interest = Arc::clone(&interest);
            tokio::spawn(async move { interest.cover(channel, Duration::from_secs(5)).await })
        };
        // The refused subscribe's wake-up, then this one's.
        interest.wanted().await;
        interest.wanted().await;
        let target = interest.target();
        assert!(target.contains(partition));
        interest.opened(target);
        assert!(waiting.await.unwrap().is_ok());
    }
}
