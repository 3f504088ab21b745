//! This node's channel subscribers: channel → connections, in shards so that a publish or a
//! subscribe locks one shard of the table, not all of it (as centrifuge's hub does). The
//! reverse map, connection → channels, is each connection's own [`super::Membership`], so
//! leaving costs only what the connection had joined.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::mailbox::{Inbound, Mailbox};
use super::streams::{Recorded, StreamState, Window};
use super::{ConnectionId, Delivery, lock};
use crate::channels::{ChannelName, PARTITIONS, partition_of};

const SHARDS: usize = 16;

/// One subscribed connection, as the table needs it for delivery and presence (its mailbox
/// knows its user): one pointer per subscription.
pub(super) type Subscriber = Arc<Mailbox>;

/// One channel on this node: its subscribers and, for a history channel, the window.
#[derive(Default)]
struct ChannelEntry {
    subscribers: HashMap<ConnectionId, Subscriber>,
    stream: Option<StreamState>,
}

impl ChannelEntry {
    /// Nobody is subscribed and nobody is loading its window: the entry can go.
    fn is_unused(&self) -> bool {
        self.subscribers.is_empty() && !self.stream.as_ref().is_some_and(StreamState::is_loading)
    }

    fn deliver(&self, delivery: &Delivery) -> usize {
        self.subscribers
            .values()
            .filter(|mailbox| mailbox.push(Inbound::Delivery(delivery.clone())))
            .count()
    }
}

type Shard = HashMap<ChannelName, ChannelEntry>;

/// Where a recovering subscriber's copy of a history channel ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recover {
    /// A plain subscribe: live publications from now on.
    No,
    /// Every publication after `offset` in `epoch`.
    From { epoch: String, offset: u64 },
    /// Recovery was asked for and cannot be done: live from now on, `recovered: false`.
    Failed,
}

/// Publications older than a window, read from the store for one subscriber.
#[derive(Debug)]
pub struct Older {
    pub epoch: String,
    /// Contiguous, oldest first.
    pub publications: Vec<(u64, Delivery)>,
}

/// One step of subscribing to a history channel; the caller (the session's recovery) loops
/// until it gets [`StreamStep::Joined`]. `L` is what the caller must do to load a window:
/// nothing here in the table, a guard to settle once it reaches the membership.
#[derive(Debug)]
pub enum StreamStep<L> {
    /// Subscribed: the channel's epoch and latest offset, and whether it recovered. Whatever
    /// was recovered is queued before any live publication.
    Joined {
        name: ChannelName,
        epoch: Arc<str>,
        offset: u64,
        recovered: Option<bool>,
    },
    /// Another subscriber is loading the window: wait for it to finish, then try again.
    Wait(watch::Receiver<()>),
    /// Nobody has the window: read it and settle it.
    Load(L),
    /// The window does not reach back to the client's offset: read what comes before `before`.
    Older { before: u64 },
    /// This node has not yet delivered the offset the client has: try again shortly.
    Behind,
}

impl<L> StreamStep<L> {
    /// The same step, with `load` made into what the caller loads with.
    pub fn with_load<M>(self, load: impl FnOnce() -> M) -> StreamStep<M> {
        match self {
            StreamStep::Joined {
                name,
                epoch,
                offset,
                recovered,
            } => StreamStep::Joined {
                name,
                epoch,
                offset,
                recovered,
            },
            StreamStep::Wait(done) => StreamStep::Wait(done),
            StreamStep::Load(_) => StreamStep::Load(load()),
            StreamStep::Older { before } => StreamStep::Older { before },
            StreamStep::Behind => StreamStep::Behind,
        }
    }
}

/// A window as read from the store.
pub struct Loaded {
    pub epoch: Arc<str>,
    pub top: u64,
    pub publications: Vec<(u64, Delivery)>,
    pub capacity: usize,
}

pub(super) struct ChannelTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// How many channels of each partition have an entry here: what this node's change stream
    /// must carry (`crate::bus::interest`).
    partitions: Box<[AtomicU32]>,
}

impl Default for ChannelTable {
    fn default() -> Self {
        ChannelTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            partitions: (0..PARTITIONS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl ChannelTable {
    /// `channel` got an entry (under its shard's lock).
    fn entered(&self, channel: &str) {
        self.partitions[partition_of(channel) as usize].fetch_add(1, Ordering::AcqRel);
    }

    /// `channel`'s entry went (under its shard's lock).
    fn left(&self, channel: &str) {
        self.partitions[partition_of(channel) as usize].fetch_sub(1, Ordering::AcqRel);
    }

    /// The partitions with at least one channel that has subscribers or a window loading here.
    pub fn watched_partitions(&self) -> Vec<u32> {
        (0..PARTITIONS)
            .filter(|p| self.partitions[*p as usize].load(Ordering::Acquire) > 0)
            .collect()
    }

    fn shard(&self, channel: &str) -> &Mutex<Shard> {
        let index = self.hasher.hash_one(channel) as usize % SHARDS;
        &self.shards[index]
    }

    /// Adds `id` to `channel`'s subscribers; returns the table's copy of the name, so every
    /// subscriber shares one.
    pub fn add(
        &self,
        channel: &ChannelName,
        id: ConnectionId,
        subscriber: Subscriber,
    ) -> ChannelName {
        let mut shard = lock(self.shard(channel.as_str()));
        let name = match shard.get_key_value(channel.as_str()) {
            Some((name, _)) => name.clone(),
            None => {
                self.entered(channel.as_str());
                channel.clone()
            }
        };
        shard
            .entry(name.clone())
            .or_default()
            .subscribers
            .insert(id, subscriber);
        name
    }

    pub fn remove(&self, channel: &str, id: ConnectionId) {
        let mut shard = lock(self.shard(channel));
        if let Some(entry) = shard.get_mut(channel) {
            entry.subscribers.remove(&id);
            if entry.is_unused() {
                shard.remove(channel);
                self.left(channel);
            }
        }
    }

    /// Queues `delivery` for every subscriber of `channel`; returns how many got it. A
    /// subscriber whose mailbox is full is marked a slow consumer by the mailbox.
    pub fn deliver(&self, channel: &str, delivery: &Delivery) -> usize {
        let shard = lock(self.shard(channel));
        shard
            .get(channel)
            .map_or(0, |entry| entry.deliver(delivery))
    }

    /// Whether any connection of this node is subscribed to `channel`.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        lock(self.shard(channel))
            .get(channel)
            .is_some_and(|entry| !entry.subscribers.is_empty())
    }

    /// Whether `channel` has subscribers or a window being loaded: a publication there has
    /// to be framed.
    pub fn is_watched(&self, channel: &str) -> bool {
        lock(self.shard(channel)).contains_key(channel)
    }

    /// Records a history channel's publication in its window and delivers it (unless this
    /// node delivered it already); returns how many got it.
    pub fn deliver_stream(
        &self,
        channel: &str,
        offset: u64,
        epoch: &str,
        delivery: &Delivery,
    ) -> usize {
        let mut shard = lock(self.shard(channel));
        let Some(entry) = shard.get_mut(channel) else {
            return 0;
        };
        match &mut entry.stream {
            Some(StreamState::Loading { arrived, .. }) => {
                arrived.push((offset, Arc::from(epoch), delivery.clone()));
            }
            Some(StreamState::Ready(window)) => match window.record(offset, epoch, delivery) {
                Recorded::Next => {}
                Recorded::Repeat => return 0,
                Recorded::Broken => {
                    log::warn!(
                        "channel {channel}: offset {offset} of epoch {epoch} does not follow \
                         {} of {}; its window here is dropped and reloaded at the next subscribe",
                        window.top,
                        window.epoch
                    );
                    entry.stream = None;
                }
            },
            None => {}
        }
        entry.deliver(delivery)
    }

    /// Subscribes `id` to a history channel, recovering from `recover` where the window
    /// allows (see [`StreamStep`]); `older` is what a previous [`StreamStep::Older`] read.
    /// With `deliver_latest`, a subscriber that recovers nothing (it did not ask, or it
    /// cannot) is given the channel's latest publication first, and the position it is told
    /// is the one just before it, so that every client takes it as the next publication.
    pub fn join_stream(
        &self,
        channel: &ChannelName,
        id: ConnectionId,
        subscriber: &Subscriber,
        (recover, deliver_latest): (&Recover, bool),
        older: Option<&Older>,
    ) -> StreamStep<()> {
        let mut shard = lock(self.shard(channel.as_str()));
        let (name, entry) = match shard.get_key_value(channel.as_str()) {
            Some((name, _)) => {
                let name = name.clone();
                let entry = shard.get_mut(channel.as_str()).expect("just found");
                (name, entry)
            }
            None => {
                self.entered(channel.as_str());
                (channel.clone(), shard.entry(channel.clone()).or_default())
            }
        };
        let window = match &entry.stream {
            Some(StreamState::Ready(window)) => window,
            Some(StreamState::Loading { done, .. }) => return StreamStep::Wait(done.subscribe()),
            None => {
                let (done, _) = watch::channel(());
                entry.stream = Some(StreamState::Loading {
                    arrived: Vec::new(),
                    done,
                });
                return StreamStep::Load(());
            }
        };
        let (recovered, deliveries): (Option<bool>, Vec<Delivery>) = match recover {
            Recover::No => (None, Vec::new()),
            Recover::Failed => (Some(false), Vec::new()),
            Recover::From { epoch, .. } if **epoch != *window.epoch => (Some(false), Vec::new()),
            Recover::From { offset, .. } if *offset > window.top => return StreamStep::Behind,
            Recover::From { offset, .. } if offset.saturating_add(1) >= window.first() => {
                (Some(true), window.after(*offset).collect())
            }
            Recover::From { epoch, offset } => {
                let first = window.first();
                // What was read before must meet the window: from `offset + 1` to just
                // before its first, in the same epoch.
                let meets = older.is_some_and(|older| {
                    older.epoch == *epoch
                        && older.publications.first().map(|(o, _)| *o) == Some(offset + 1)
                        && older.publications.last().map(|(o, _)| o + 1) >= Some(first)
                });
                let Some(older) = older.filter(|_| meets) else {
                    return StreamStep::Older { before: first };
                };
                let deliveries = older
                    .publications
                    .iter()
                    .filter(|(o, _)| *o < first)
                    .map(|(_, d)| d.recovered())
                    .chain(window.after(first - 1))
                    .collect();
                (Some(true), deliveries)
            }
        };
        let (mut deliveries, mut offset) = (deliveries, window.top);
        if deliver_latest && recovered != Some(true) && window.first() <= window.top {
            deliveries = window.after(window.top - 1).collect();
            offset = window.top - 1;
        }
        let epoch = Arc::clone(&window.epoch);
        let mailbox = Arc::clone(subscriber);
        if !deliveries.is_empty() {
            mailbox.push_recovered(deliveries);
        }
        entry.subscribers.insert(id, mailbox);
        StreamStep::Joined {
            name,
            epoch,
            offset,
            recovered,
        }
    }

    /// Settles a window that [`StreamStep::Load`] asked for: what was read, with what was
    /// published meanwhile laid over it; or, when the read failed, no window (the next
    /// subscriber loads it again).
    pub fn finish_load(&self, channel: &str, loaded: Option<Loaded>) {
        let mut shard = lock(self.shard(channel));
        let Some(entry) = shard.get_mut(channel) else {
            return;
        };
        let Some(StreamState::Loading { arrived, .. }) = &mut entry.stream else {
            return;
        };
        let arrived = std::mem::take(arrived);
        entry.stream = loaded.and_then(|loaded| {
            let mut window = Window::new(
                loaded.epoch,
                loaded.top,
                loaded.publications,
                loaded.capacity,
            );
            for (offset, epoch, delivery) in arrived {
                if window.record(offset, &epoch, &delivery) == Recorded::Broken {
                    return None;
                }
            }
            Some(StreamState::Ready(window))
        });
        // A window just loaded stays for the subscriber that loaded it, who joins next.
        if entry.stream.is_none() && entry.is_unused() {
            shard.remove(channel);
            self.left(channel);
        }
    }

    /// A history channel's epoch and latest offset, when this node has its window.
    pub fn position(&self, channel: &str) -> Option<(Arc<str>, u64)> {
        match lock(self.shard(channel)).get(channel)?.stream.as_ref()? {
            StreamState::Ready(window) => Some((Arc::clone(&window.epoch), window.top)),
            StreamState::Loading { .. } => None,
        }
    }

    /// Drops every window (this node may have missed publications): each is loaded again
    /// at its next subscribe.
    pub fn forget_windows(&self) {
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            shard.retain(|name, entry| {
                if matches!(entry.stream, Some(StreamState::Ready(_))) {
                    entry.stream = None;
                }
                let keep = !entry.is_unused();
                if !keep {
                    self.left(name.as_str());
                }
                keep
            });
        }
    }

    /// `channel`'s subscribers on this node: connection and user.
    pub fn subscribers(&self, channel: &str) -> Vec<(ConnectionId, Arc<str>)> {
        let shard = lock(self.shard(channel));
        shard.get(channel).map_or_else(Vec::new, |entry| {
            entry
                .subscribers
                .iter()
                .map(|(id, mailbox)| (*id, Arc::clone(&mailbox.user)))
                .collect()
        })
    }

    /// Every channel with a subscriber on this node whose name starts with `prefix`, with its
    /// subscriber count.
    pub fn counts(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        let mut counts = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            counts.extend(
                shard
                    .iter()
                    .filter(|(name, entry)| {
                        name.as_str().starts_with(prefix) && !entry.subscribers.is_empty()
                    })
                    .map(|(name, entry)| (name.clone(), entry.subscribers.len())),
            );
        }
        counts
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).is_empty())
    }
}
