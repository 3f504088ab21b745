//! This node's channel subscribers: channel → connections, in shards so that a publish or a
//! subscribe locks one shard of the table, not all of it (as centrifuge's hub does). The
//! reverse map, connection → channels, is each connection's own [`super::Membership`], so
//! leaving costs only what the connection had joined.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};

use super::mailbox::{Inbound, Mailbox};
use super::{ConnectionId, Delivery, lock};
use crate::channels::ChannelName;

const SHARDS: usize = 16;

/// One subscribed connection, as the table needs it for delivery and presence (its mailbox
/// knows its user): one pointer per subscription.
pub(super) type Subscriber = Arc<Mailbox>;

type Shard = HashMap<ChannelName, HashMap<ConnectionId, Subscriber>>;

pub(super) struct ChannelTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl Default for ChannelTable {
    fn default() -> Self {
        ChannelTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl ChannelTable {
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
            None => channel.clone(),
        };
        shard
            .entry(name.clone())
            .or_default()
            .insert(id, subscriber);
        name
    }

    pub fn remove(&self, channel: &str, id: ConnectionId) {
        let mut shard = lock(self.shard(channel));
        if let Some(subscribers) = shard.get_mut(channel) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                shard.remove(channel);
            }
        }
    }

    /// Queues `delivery` for every subscriber of `channel`; returns how many got it. A
    /// subscriber whose mailbox is full is marked a slow consumer by the mailbox.
    pub fn deliver(&self, channel: &str, delivery: &Delivery) -> usize {
        let shard = lock(self.shard(channel));
        let Some(subscribers) = shard.get(channel) else {
            return 0;
        };
        subscribers
            .values()
            .filter(|mailbox| mailbox.push(Inbound::Delivery(delivery.clone())))
            .count()
    }

    /// Whether any connection of this node is subscribed to `channel`.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        lock(self.shard(channel)).contains_key(channel)
    }

    /// `channel`'s subscribers on this node: connection and user.
    pub fn subscribers(&self, channel: &str) -> Vec<(ConnectionId, Arc<str>)> {
        let shard = lock(self.shard(channel));
        shard.get(channel).map_or_else(Vec::new, |subscribers| {
            subscribers
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
                    .filter(|(name, _)| name.as_str().starts_with(prefix))
                    .map(|(name, subscribers)| (name.clone(), subscribers.len())),
            );
        }
        counts
    }

    pub fn is_empty(&self) -> bool {
        self.shards.iter().all(|shard| lock(shard).is_empty())
    }
}
