//! The hub: every open connection on this node, what stage it is in, and local delivery to
//! them. What to deliver is decided by the bus (`crate::bus`), which numbers broadcasts and,
//! in a cluster, carries events between nodes; the hub only delivers frames already encoded.
//!
//! Broadcasts are serialized and framed once, and the frame's bytes shared by every connection
//! (a `Bytes` clone is a reference-count bump).
//! They travel on a bounded `tokio::sync::broadcast` ring: publishing never waits for any
//! connection, and a connection that falls more than [`BROADCAST_BUFFER`] messages behind learns
//! it lagged and is closed, so one slow client never holds up the others. Messages for one user,
//! channel publications and the server's requests go through each connection's bounded
//! [`mailbox`], with the same rule. Server-side closes (disconnect, revocation, drain) reach a
//! connection through its [`Kick`] channel.

mod channels;
pub mod mailbox;
mod streams;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::channels::{ChannelName, Grant, HistoryOptions};
use crate::protocol::EncodedMessage;
use crate::store::{HistoryPage, HistoryQuery, HistoryStore};
use channels::ChannelTable;
pub use channels::Recover;
use channels::{Loaded, Older, StreamJoin};
pub use mailbox::{Control, Inbound, MAILBOX_BUFFER, Mailbox};
pub use streams::MAX_WINDOW;

/// Broadcasts a connection may fall behind before it is closed as a slow consumer.
pub const BROADCAST_BUFFER: usize = 1024;

/// Identifies one WebSocket connection in logs and in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A WebSocket text frame, encoded once, ready to be written to any number of sockets.
pub type Frame = Bytes;

/// A frame on its way to one connection. Cloning it is two reference-count bumps' worth of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub frame: Frame,
    /// For broadcasts: when it was published, for the fan-out latency metric.
    pub published_at: Option<Instant>,
    /// For broadcasts: the frame compressed (permessage-deflate), made by the first connection
    /// that needs it and shared with the others.
    pub compressed: Option<Arc<OnceLock<Frame>>>,
}

impl Delivery {
    /// A message framed once for many connections, its compressed form made on first need.
    fn shared(message: &EncodedMessage, published_at: Option<Instant>) -> Self {
        Delivery {
            frame: crate::wire::text_frame(message),
            published_at,
            compressed: Some(Arc::new(OnceLock::new())),
        }
    }
}

impl AsRef<[u8]> for Delivery {
    fn as_ref(&self) -> &[u8] {
        &self.frame
    }
}

/// Limits on concurrent WebSocket connections, checked when one is opened.
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

/// A server-side decision to close a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// `POST /api/users/{id}/disconnect`.
    Disconnected,
    /// The JWT it authenticated with was revoked.
    Revoked,
    /// The gateway is shutting down.
    Draining,
}

/// Counts of open connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    pub total: usize,
    pub authenticated: usize,
    pub unauthenticated: usize,
}

enum Stage {
    Unauthenticated,
    Authenticated {
        mailbox: Arc<Mailbox>,
        jti: Option<Arc<str>>,
    },
    /// Out of the pipelines, closing.
    Leaving,
}

struct Entry {
    kick: watch::Sender<Option<Kick>>,
    stage: Stage,
}

/// The table of open connections, with an index by user; one lock, so limits can never be
/// overshot by racing upgrades.
#[derive(Default)]
struct Connections {
    entries: HashMap<ConnectionId, Entry>,
    by_user: HashMap<Arc<str>, HashSet<ConnectionId>>,
    authenticated: usize,
}

pub struct Hub {
    broadcasts: broadcast::Sender<Delivery>,
    connections: Mutex<Connections>,
    channels: ChannelTable,
    /// Subscription tokens' `jti`s → the connections holding subscriptions by them, and how
    /// many each, so a revocation reaches exactly those.
    token_jtis: Mutex<HashMap<Arc<str>, HashMap<ConnectionId, u32>>>,
    next_connection: AtomicU64,
    limits: ConnectionLimits,
}

impl Hub {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        let (broadcasts, _) = broadcast::channel(BROADCAST_BUFFER);
        Arc::new(Hub {
            broadcasts,
            connections: Mutex::new(Connections::default()),
            channels: ChannelTable::default(),
            token_jtis: Mutex::default(),
            next_connection: AtomicU64::new(1),
            limits,
        })
    }

    /// Queues a broadcast for every authenticated connection; returns how many there are.
    /// Callers deliver one broadcast at a time, so every connection sees the same order.
    pub fn broadcast(&self, message: &EncodedMessage) -> usize {
        let delivery = Delivery {
            frame: crate::wire::text_frame(message),
            published_at: Some(Instant::now()),
            compressed: Some(Arc::new(OnceLock::new())),
        };
        // An error only means nobody is listening right now, which is fine for a broadcast.
        self.broadcasts.send(delivery).unwrap_or(0)
    }

    /// Queues an encoded message for each authenticated connection of `user_id`; returns how
    /// many got it. A connection whose mailbox is full is closed as a slow consumer.
    pub fn send_to_user(&self, user_id: &str, message: &EncodedMessage) -> usize {
        let connections = lock(&self.connections);
        // Framed only once a connection of the user is found: in a cluster most nodes have none.
        let mut delivery = None;
        let mut delivered = 0;
        for entry in connections.of_user(user_id) {
            if let Stage::Authenticated { mailbox, .. } = &entry.stage {
                let delivery = delivery.get_or_insert_with(|| Delivery {
                    frame: crate::wire::text_frame(message),
                    published_at: None,
                    compressed: None,
                });
                if mailbox.push(Inbound::Delivery(delivery.clone())) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Queues a message for every subscriber of `channel` on this node; returns how many got
    /// it. Encoded and framed once, and only where someone subscribed.
    pub fn publish_with(&self, channel: &str, encode: impl FnOnce() -> EncodedMessage) -> usize {
        if !self.channels.has_subscribers(channel) {
            return 0;
        }
        let delivery = Delivery::shared(&encode(), Some(Instant::now()));
        self.channels.deliver(channel, &delivery)
    }

    /// Delivers a history channel's publication to its subscribers here, in offset order:
    /// this node's window on the channel records it (or drops a repeat). Encoded only where
    /// someone subscribed or is recovering.
    pub fn publish_stream(
        &self,
        channel: &str,
        offset: u64,
        epoch: &str,
        encode: impl FnOnce() -> EncodedMessage,
    ) -> usize {
        if !self.channels.is_watched(channel) {
            return 0;
        }
        let delivery = Delivery::shared(&encode(), Some(Instant::now()));
        self.channels
            .deliver_stream(channel, offset, epoch, &delivery)
    }

    /// Forgets every history window: this node may have missed publications (its cluster
    /// stream lost its place), so the next subscriber of each channel reads the store.
    pub fn forget_windows(&self) {
        self.channels.forget_windows();
    }

    /// Asks each authenticated connection of `user_id` to carry out `control`; returns how many.
    pub fn control_user(&self, user_id: &str, control: &Control) -> usize {
        let connections = lock(&self.connections);
        connections
            .of_user(user_id)
            .filter(|entry| match &entry.stage {
                Stage::Authenticated { mailbox, .. } => {
                    mailbox.push(Inbound::Control(control.clone()))
                }
                _ => false,
            })
            .count()
    }

    /// Ends the subscriptions held by subscription tokens with this `jti`; returns how many
    /// connections were asked to.
    pub fn revoke_subscription_token(&self, jti: &str) -> usize {
        let holders: Vec<ConnectionId> = lock(&self.token_jtis)
            .get(jti)
            .map(|holders| holders.keys().copied().collect())
            .unwrap_or_default();
        if holders.is_empty() {
            return 0;
        }
        let control = Control::TokenRevoked(Arc::from(jti));
        let connections = lock(&self.connections);
        holders
            .iter()
            .filter_map(|id| connections.entries.get(id))
            .filter(|entry| match &entry.stage {
                Stage::Authenticated { mailbox, .. } => {
                    mailbox.push(Inbound::Control(control.clone()))
                }
                _ => false,
            })
            .count()
    }

    /// `channel`'s subscribers on this node: connection and user.
    pub fn subscribers(&self, channel: &str) -> Vec<(ConnectionId, Arc<str>)> {
        self.channels.subscribers(channel)
    }

    /// The channels with a subscriber on this node, by prefix, with their subscriber counts.
    pub fn channel_counts(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        self.channels.counts(prefix)
    }

    /// How many channels have a subscriber here, and how many subscriptions there are.
    pub fn channel_stats(&self) -> crate::metrics::ChannelStats {
        let counts = self.channels.counts("");
        crate::metrics::ChannelStats {
            channels: counts.len(),
            subscriptions: counts.iter().map(|(_, n)| n).sum(),
        }
    }

    /// No channel has a subscriber and no subscription token is indexed: what a node whose
    /// connections all left must come back to.
    pub fn channel_tables_are_empty(&self) -> bool {
        self.channels.is_empty() && lock(&self.token_jtis).is_empty()
    }

    /// Closes every connection of `user_id`, authenticated or not; returns how many.
    pub fn kick_user(&self, user_id: &str, kick: Kick) -> usize {
        let connections = lock(&self.connections);
        kick_each(connections.of_user(user_id), kick)
    }

    /// Closes every connection authenticated with a JWT whose `jti` is `jti`; returns how many.
    pub fn kick_jti(&self, jti: &str, kick: Kick) -> usize {
        let connections = lock(&self.connections);
        let matching = connections.entries.values().filter(|entry| {
            matches!(&entry.stage, Stage::Authenticated { jti: Some(current), .. } if &**current == jti)
        });
        kick_each(matching, kick)
    }

    /// Closes every open connection; returns how many.
    pub fn kick_all(&self, kick: Kick) -> usize {
        let connections = lock(&self.connections);
        kick_each(connections.entries.values(), kick)
    }

    /// Takes a connection slot for `user_id`, within the limits, until the guard is dropped.
    pub fn try_open(self: &Arc<Self>, user_id: &str) -> Result<OpenConnection, ConnectionRefused> {
        let mut connections = lock(&self.connections);
        if connections.entries.len() >= self.limits.max_total {
            return Err(ConnectionRefused::Capacity);
        }
        if connections.by_user.get(user_id).map_or(0, HashSet::len) >= self.limits.max_per_user {
            return Err(ConnectionRefused::UserLimit);
        }
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let user: Arc<str> = Arc::from(user_id);
        let (kick, kicked) = watch::channel(None);
        connections.entries.insert(
            id,
            Entry {
                kick,
                stage: Stage::Unauthenticated,
            },
        );
        connections
            .by_user
            .entry(Arc::clone(&user))
            .or_default()
            .insert(id);
        Ok(OpenConnection {
            hub: Arc::clone(self),
            id,
            user,
            kicked,
        })
    }

    /// Adds an authenticated connection to the broadcast and message pipelines. Only the
    /// session's authenticated state can call this, so nothing reaches a connection before it
    /// authenticates.
    pub fn join(self: &Arc<Self>, connection: &OpenConnection, jti: Option<&str>) -> Membership {
        // Subscribe before registering: a connection counted as authenticated receives every
        // broadcast published from then on.
        let receiver = self.broadcasts.subscribe();
        let mailbox = Arc::new(Mailbox::new(Arc::clone(&connection.user)));
        let mut connections = lock(&self.connections);
        if let Some(entry) = connections.entries.get_mut(&connection.id) {
            entry.stage = Stage::Authenticated {
                mailbox: Arc::clone(&mailbox),
                jti: jti.map(Arc::from),
            };
            connections.authenticated += 1;
        }
        Membership {
            hub: Arc::clone(self),
            id: connection.id,
            receiver,
            mailbox,
            subscriptions: HashMap::new(),
        }
    }

    pub fn counts(&self) -> ConnectionCounts {
        let connections = lock(&self.connections);
        ConnectionCounts {
            total: connections.entries.len(),
            authenticated: connections.authenticated,
            unauthenticated: connections.entries.len() - connections.authenticated,
        }
    }

    /// Connections in the broadcast pipeline.
    pub fn authenticated_count(&self) -> usize {
        self.counts().authenticated
    }

    /// All open WebSocket connections, authenticated or not.
    pub fn open_count(&self) -> usize {
        self.counts().total
    }

    /// Open connections of one user, authenticated or not.
    pub fn open_count_of(&self, user_id: &str) -> usize {
        lock(&self.connections)
            .by_user
            .get(user_id)
            .map_or(0, HashSet::len)
    }
}

impl Connections {
    fn of_user<'a>(&'a self, user_id: &str) -> impl Iterator<Item = &'a Entry> {
        let ids = self.by_user.get(user_id).into_iter().flatten();
        ids.filter_map(|id| self.entries.get(id))
    }
}

/// A listener on one channel that is not a connection (the console's live tail): in no
/// connection count or limit, and it gets no broadcasts; dropping it leaves the channel.
pub struct ChannelWatch {
    hub: Arc<Hub>,
    id: ConnectionId,
    channel: ChannelName,
    mailbox: Arc<Mailbox>,
}

impl Hub {
    /// Starts listening to `channel`'s publications on this node; `label` names the listener
    /// where the mailbox needs a user.
    pub fn watch(self: &Arc<Self>, channel: &ChannelName, label: &str) -> ChannelWatch {
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let mailbox = Arc::new(Mailbox::new(Arc::from(label)));
        let channel = self.channels.add(channel, id, Arc::clone(&mailbox));
        ChannelWatch {
            hub: Arc::clone(self),
            id,
            channel,
            mailbox,
        }
    }
}

impl ChannelWatch {
    /// The next publication (or, of a history channel, recovered ones) for the channel.
    pub async fn next(&self) -> Result<Inbound, Fell> {
        Ok(self.mailbox.pop().await?)
    }
}

impl Drop for ChannelWatch {
    fn drop(&mut self) {
        self.hub.channels.remove(self.channel.as_str(), self.id);
    }
}

/// A WebSocket connection's slot, held from upgrade to the end of its task.
pub struct OpenConnection {
    hub: Arc<Hub>,
    pub id: ConnectionId,
    user: Arc<str>,
    kicked: watch::Receiver<Option<Kick>>,
}

impl OpenConnection {
    pub fn user_id(&self) -> &str {
        &self.user
    }

    /// Resolves when the server decides to close this connection.
    pub async fn kicked(&mut self) -> Kick {
        loop {
            if let Some(kick) = *self.kicked.borrow_and_update() {
                return kick;
            }
            if self.kicked.changed().await.is_err() {
                // The sender lives in the hub's entry, which outlives this guard.
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut connections = lock(&self.hub.connections);
        if let Some(entry) = connections.entries.remove(&self.id)
            && matches!(entry.stage, Stage::Authenticated { .. })
        {
            connections.authenticated -= 1;
        }
        if let Some(ids) = connections.by_user.get_mut(&self.user) {
            ids.remove(&self.id);
            if ids.is_empty() {
                connections.by_user.remove(&self.user);
            }
        }
    }
}

/// An authenticated connection's place in the pipelines: the broadcasts, its mailbox, and its
/// channel subscriptions (the reverse of the hub's channel table). Dropping it is the one and
/// only way out, so every exit path (close, error, panic) leaves them all.
pub struct Membership {
    hub: Arc<Hub>,
    id: ConnectionId,
    receiver: broadcast::Receiver<Delivery>,
    mailbox: Arc<Mailbox>,
    subscriptions: HashMap<ChannelName, Grant>,
}

/// Why a connection can no longer be kept up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fell {
    /// This many broadcasts were dropped for it.
    Behind { missed: u64 },
    /// Its mailbox overflowed.
    MailboxFull,
}

impl From<mailbox::Overflowed> for Fell {
    fn from(_: mailbox::Overflowed) -> Self {
        Fell::MailboxFull
    }
}

impl Membership {
    /// The next thing for this connection: a delivery (user message, publication or
    /// broadcast) or a control, whichever is ready.
    pub async fn next(&mut self) -> Result<Inbound, Fell> {
        tokio::select! {
            item = self.mailbox.pop() => Ok(item?),
            broadcast = self.receiver.recv() => match broadcast {
                Ok(delivery) => Ok(Inbound::Delivery(delivery)),
                Err(broadcast::error::RecvError::Lagged(missed)) => Err(Fell::Behind { missed }),
                // The hub owns the sender and this membership keeps the hub alive.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
        }
    }

    /// `first` and whatever other deliveries are already waiting, up to `max`, without
    /// waiting (a control stays queued for the next turn).
    pub fn with_waiting(&mut self, first: Delivery, max: usize) -> Result<Vec<Delivery>, Fell> {
        let mut batch = vec![first];
        while batch.len() < max {
            if let Some(delivery) = self.mailbox.try_pop_delivery()? {
                batch.push(delivery);
                continue;
            }
            match self.receiver.try_recv() {
                Ok(delivery) => batch.push(delivery),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    return Err(Fell::Behind { missed });
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// After an in-band refresh: revocation now concerns the new JWT's `jti`.
    pub fn set_jti(&self, jti: Option<&str>) {
        let mut connections = lock(&self.hub.connections);
        if let Some(Entry {
            stage: Stage::Authenticated { jti: current, .. },
            ..
        }) = connections.entries.get_mut(&self.id)
        {
            *current = jti.map(Arc::from);
        }
    }

    /// Subscribes to `channel` with `grant`, or replaces the grant of a subscription held
    /// already (no delivery is missed or doubled either way); returns the hub's copy of the
    /// name and whether the subscription is new.
    pub fn subscribe(&mut self, channel: &ChannelName, grant: Grant) -> (ChannelName, bool) {
        if let Some((name, current)) = self.subscriptions.get_key_value(channel.as_str()) {
            let name = name.clone();
            let previous = current.clone();
            self.index_token(&previous, -1);
            self.index_token(&grant, 1);
            self.subscriptions.insert(name.clone(), grant);
            return (name, false);
        }
        let name = self
            .hub
            .channels
            .add(channel, self.id, Arc::clone(&self.mailbox));
        self.index_token(&grant, 1);
        self.subscriptions.insert(name.clone(), grant);
        (name, true)
    }

    /// Subscribes to a history channel (or replaces the grant of a subscription held
    /// already), recovering what the client missed after `recover`: this node's window on
    /// the channel answers, loaded from `history` by the first subscriber that needs it
    /// while the others wait for it. The recovered publications are queued before any live
    /// one. Returns the channel's position and whether the subscription is new.
    pub async fn subscribe_stream(
        &mut self,
        channel: &ChannelName,
        grant: Grant,
        mut recover: Recover,
        history: &HistorySource<'_>,
    ) -> Result<(Joined, bool), crate::db::Unavailable> {
        if self.subscriptions.contains_key(channel.as_str()) {
            let (name, _) = self.subscribe(channel, grant);
            let position = self.hub.channels.position(name.as_str());
            return Ok((
                Joined {
                    name,
                    position,
                    recovered: None,
                    reads: 0,
                },
                false,
            ));
        }
        let mut reads = 0;
        let mut older: Option<Older> = None;
        let mut behind = 0;
        for _ in 0..MAX_JOIN_ATTEMPTS {
            let join = self.hub.channels.join_stream(
                channel,
                self.id,
                &self.mailbox,
                &recover,
                older.as_ref(),
            );
            match join {
                StreamJoin::Joined {
                    name,
                    epoch,
                    offset,
                    recovered,
                } => {
                    self.index_token(&grant, 1);
                    self.subscriptions.insert(name.clone(), grant);
                    let joined = Joined {
                        name,
                        position: Some((epoch, offset)),
                        recovered,
                        reads,
                    };
                    return Ok((joined, true));
                }
                StreamJoin::Wait(mut loaded) => {
                    // Woken when the loader settles the window (or gives up).
                    let _ = loaded.changed().await;
                }
                StreamJoin::Load => {
                    let loading = Loading {
                        hub: &self.hub,
                        channel: channel.as_str(),
                        settled: false,
                    };
                    reads += 1;
                    let capacity = (history.options.size as usize).min(MAX_WINDOW);
                    let query = HistoryQuery::Latest { limit: capacity };
                    let page = history.store.read(channel, history.options, query).await?;
                    loading.settle(Loaded {
                        epoch: Arc::from(page.top.epoch.as_str()),
                        top: page.top.offset,
                        publications: deliveries_of(channel, &page),
                        capacity,
                    });
                }
                StreamJoin::Older { before } => {
                    let Recover::From { offset, .. } = recover else {
                        recover = Recover::Failed;
                        continue;
                    };
                    reads += 1;
                    let query = HistoryQuery::Since {
                        offset,
                        limit: usize::try_from(before.saturating_sub(offset + 1))
                            .unwrap_or(usize::MAX)
                            .max(1),
                    };
                    let page = history.store.read(channel, history.options, query).await?;
                    if !page.holds_all_after(offset) {
                        recover = Recover::Failed;
                        continue;
                    }
                    older = Some(Older {
                        publications: deliveries_of(channel, &page),
                        epoch: page.top.epoch,
                    });
                }
                StreamJoin::Behind => {
                    // Another node delivered an offset this one has not yet: its change
                    // stream is a moment behind. Past a while, the client's offset is
                    // taken as one this history never had.
                    behind += 1;
                    if behind >= MAX_BEHIND_WAITS {
                        recover = Recover::Failed;
                    } else {
                        tokio::time::sleep(BEHIND_WAIT).await;
                    }
                }
            }
        }
        Err(crate::db::Unavailable(format!(
            "subscribing to {channel} did not settle"
        )))
    }

    /// Ends the subscription to `channel`; its grant, or `None` when there was none.
    pub fn unsubscribe(&mut self, channel: &str) -> Option<Grant> {
        let grant = self.subscriptions.remove(channel)?;
        self.hub.channels.remove(channel, self.id);
        self.index_token(&grant, -1);
        Some(grant)
    }

    pub fn subscription(&self, channel: &str) -> Option<&Grant> {
        self.subscriptions.get(channel)
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&ChannelName, &Grant)> {
        self.subscriptions.iter()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Counts this connection in or out of the revocation index for `grant`'s token `jti`.
    fn index_token(&self, grant: &Grant, change: i32) {
        let Some(jti) = grant.token_jti() else {
            return;
        };
        let mut index = lock(&self.hub.token_jtis);
        if change > 0 {
            *index
                .entry(Arc::clone(jti))
                .or_default()
                .entry(self.id)
                .or_default() += 1;
            return;
        }
        if let Some(holders) = index.get_mut(&**jti) {
            if let Some(count) = holders.get_mut(&self.id) {
                *count -= 1;
                if *count == 0 {
                    holders.remove(&self.id);
                }
            }
            if holders.is_empty() {
                index.remove(&**jti);
            }
        }
    }
}

/// How many times a subscribe to a history channel goes round (waiting for a window, reading
/// older publications) before it gives up as unavailable.
const MAX_JOIN_ATTEMPTS: usize = 60;
/// How long, and how many times, a subscribe waits for this node to catch up with an offset
/// the client has.
const BEHIND_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
const MAX_BEHIND_WAITS: usize = 40;

/// Where a history channel's publications are read from, and how many it keeps.
pub struct HistorySource<'a> {
    pub store: &'a HistoryStore,
    pub options: HistoryOptions,
}

/// A subscription to a history channel, as it began.
#[derive(Debug)]
pub struct Joined {
    pub name: ChannelName,
    /// The channel's epoch and latest offset (unknown for a subscription held already whose
    /// window is not loaded here).
    pub position: Option<(Arc<str>, u64)>,
    /// Whether recovery, when asked for, recovered everything.
    pub recovered: Option<bool>,
    /// Reads of the store this subscribe made.
    pub reads: u32,
}

/// A window being loaded: settled with what was read, or (dropped unsettled: the read failed
/// or the task ended) given up, so the subscribers waiting for it go on.
struct Loading<'a> {
    hub: &'a Hub,
    channel: &'a str,
    settled: bool,
}

impl Loading<'_> {
    fn settle(mut self, loaded: Loaded) {
        self.hub.channels.finish_load(self.channel, Some(loaded));
        self.settled = true;
    }
}

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.hub.channels.finish_load(self.channel, None);
        }
    }
}

/// A page of stored publications as deliveries, framed as live ones are.
fn deliveries_of(channel: &ChannelName, page: &HistoryPage) -> Vec<(u64, Delivery)> {
    page.publications
        .iter()
        .filter_map(|publication| {
            let Ok(data) = serde_json::value::RawValue::from_string(publication.data.clone())
            else {
                log::warn!("a stored publication in {channel} is not JSON; skipped");
                return None;
            };
            let message = crate::protocol::ServerMessage::Publication {
                channel: channel.as_str(),
                offset: Some(publication.offset),
                epoch: Some(&page.top.epoch),
                data: &data,
            }
            .encode();
            let delivery = Delivery::shared(&EncodedMessage::from(message), None);
            Some((publication.offset, delivery))
        })
        .collect()
}

impl Drop for Membership {
    fn drop(&mut self) {
        let channels: Vec<ChannelName> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(channel.as_str());
        }
        let mut connections = lock(&self.hub.connections);
        let was_authenticated = match connections.entries.get_mut(&self.id) {
            Some(entry) => matches!(
                std::mem::replace(&mut entry.stage, Stage::Leaving),
                Stage::Authenticated { .. }
            ),
            None => false,
        };
        if was_authenticated {
            connections.authenticated -= 1;
        }
    }
}

fn kick_each<'a>(entries: impl Iterator<Item = &'a Entry>, kick: Kick) -> usize {
    let mut kicked = 0;
    for entry in entries {
        entry.kick.send_replace(Some(kick));
        kicked += 1;
    }
    kicked
}

/// Table updates are single operations, so a panic elsewhere cannot leave them
/// half-done; a poisoned lock is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::store::MemoryHistory;

    fn frame(text: &str) -> EncodedMessage {
        EncodedMessage::from(text.to_owned())
    }

    /// The next delivery (the tests send no controls but where they say so).
    async fn next_delivery(member: &mut Membership) -> Result<Delivery, Fell> {
        match member.next().await? {
            Inbound::Delivery(delivery) => Ok(delivery),
            Inbound::Recovered(recovered) => panic!("a recovery: {recovered:?}"),
            Inbound::Control(control) => panic!("a control: {control:?}"),
        }
    }

    /// A publication of `n` into `channel`'s in-process history, delivered as the bus would.
    fn publish_numbered(hub: &Hub, history: &MemoryHistory, channel: &str, n: u64) -> u64 {
        let top = history.append(channel, HISTORY, &n.to_string());
        hub.publish_stream(channel, top.offset, &top.epoch, || frame(&format!("p{n}")));
        top.offset
    }

    const HISTORY: HistoryOptions = HistoryOptions {
        size: 5,
        ttl_secs: 60,
    };

    /// What a recovering member was given, then what it gets live, as offsets.
    async fn offsets_received(member: &mut Membership, live: usize) -> Vec<u64> {
        let mut offsets = Vec::new();
        let number = |d: &Delivery| -> u64 {
            let text = String::from_utf8_lossy(&d.frame[2..]).to_string();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            json["offset"]
                .as_u64()
                .unwrap_or_else(|| text.trim_start_matches('p').parse().unwrap())
        };
        let mut got_live = 0;
        while got_live < live {
            match member.next().await.unwrap() {
                Inbound::Recovered(recovered) => offsets.extend(recovered.iter().map(number)),
                Inbound::Delivery(delivery) => {
                    offsets.push(number(&delivery));
                    got_live += 1;
                }
                Inbound::Control(control) => panic!("a control: {control:?}"),
            }
        }
        offsets
    }

    #[tokio::test]
    async fn a_subscriber_recovers_from_the_window_then_goes_on_live_in_order() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let history = Arc::new(MemoryHistory::default());
        let store = HistoryStore::Memory(Arc::clone(&history));
        let source = HistorySource {
            store: &store,
            options: HISTORY,
        };
        let channel = ChannelName::parse("feed:a").unwrap();
        for n in 1..=3 {
            publish_numbered(&hub, &history, "feed:a", n);
        }
        let epoch = history
            .read("feed:a", HISTORY, HistoryQuery::Latest { limit: 1 })
            .top
            .epoch;

        // The first subscriber loads the window (one read) and recovers 2 and 3.
        let conn = hub.try_open("alice").unwrap();
        let mut alice = hub.join(&conn, None);
        let from = |offset| Recover::From {
            epoch: epoch.clone(),
            offset,
        };
        let (joined, new) = alice
            .subscribe_stream(&channel, Grant::Server, from(1), &source)
            .await
            .unwrap();
        assert!(new);
        assert_eq!((joined.recovered, joined.reads), (Some(true), 1));
        assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(3));
        publish_numbered(&hub, &history, "feed:a", 4);
        assert_eq!(offsets_received(&mut alice, 1).await, [2, 3, 4]);

        // The next recovers from the window this node now keeps: no read.
        let conn = hub.try_open("bob").unwrap();
        let mut bob = hub.join(&conn, None);
        let (joined, _) = bob
            .subscribe_stream(&channel, Grant::Server, from(2), &source)
            .await
            .unwrap();
        assert_eq!((joined.recovered, joined.reads), (Some(true), 0));
        publish_numbered(&hub, &history, "feed:a", 5);
        assert_eq!(offsets_received(&mut bob, 1).await, [3, 4, 5]);

        // Trimmed away (history_size 5), another epoch, an offset never given: not recovered.
        for n in 6..=9 {
            publish_numbered(&hub, &history, "feed:a", n);
        }
        for (recover, expected) in [
            (from(2), Some(false)),
            (from(3), Some(false)),
            (from(4), Some(true)),
            (
                Recover::From {
                    epoch: "other".into(),
                    offset: 8,
                },
                Some(false),
            ),
            (Recover::No, None),
        ] {
            let conn = hub.try_open("carol").unwrap();
            let mut carol = hub.join(&conn, None);
            let (joined, _) = carol
                .subscribe_stream(&channel, Grant::Server, recover.clone(), &source)
                .await
                .unwrap();
            assert_eq!(joined.recovered, expected, "{recover:?}");
            assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(9));
        }
    }

    /// The text a client reads from a short server frame (a two-byte header, RFC 6455 §5.2).
    fn text(frame: &Frame) -> &str {
        assert!(frame.len() < 127, "a short frame");
        std::str::from_utf8(&frame[2..]).unwrap()
    }

    #[tokio::test]
    async fn members_receive_broadcasts_in_seq_order_and_leave_on_drop() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("alice").unwrap();
        assert_eq!(
            hub.counts(),
            ConnectionCounts {
                total: 1,
                authenticated: 0,
                unauthenticated: 1
            }
        );
        let mut member = hub.join(&conn, None);
        assert_eq!(hub.authenticated_count(), 1);
        assert_eq!(hub.broadcast(&frame("one")), 1);
        assert_eq!(hub.broadcast(&frame("two")), 1);
        assert_eq!(
            text(&next_delivery(&mut member).await.unwrap().frame),
            "one"
        );
        assert_eq!(
            text(&next_delivery(&mut member).await.unwrap().frame),
            "two"
        );
        drop(member);
        assert_eq!(
            hub.counts(),
            ConnectionCounts {
                total: 1,
                authenticated: 0,
                unauthenticated: 1
            }
        );
        drop(conn);
        assert_eq!(hub.open_count(), 0);
    }

    #[tokio::test]
    async fn what_is_waiting_comes_in_one_batch_in_order() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("alice").unwrap();
        let mut member = hub.join(&conn, None);
        for i in 0..5 {
            hub.broadcast(&frame(&i.to_string()));
        }
        let first = next_delivery(&mut member).await.unwrap();
        let batch = member.with_waiting(first, 3).unwrap();
        let texts: Vec<&str> = batch.iter().map(|d| text(&d.frame)).collect();
        assert_eq!(texts, ["0", "1", "2"]);
        let first = next_delivery(&mut member).await.unwrap();
        let batch = member.with_waiting(first, 64).unwrap();
        assert_eq!(batch.len(), 2, "only what was waiting");
    }

    #[tokio::test]
    async fn a_lagging_member_is_told_how_much_it_missed() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("slow").unwrap();
        let mut member = hub.join(&conn, None);
        for _ in 0..BROADCAST_BUFFER + 5 {
            hub.broadcast(&frame("0"));
        }
        assert_eq!(
            next_delivery(&mut member).await,
            Err(Fell::Behind { missed: 5 })
        );
    }

    #[tokio::test]
    async fn user_messages_reach_only_that_users_authenticated_connections() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let (a1, a2, b) = (
            hub.try_open("alice").unwrap(),
            hub.try_open("alice").unwrap(),
            hub.try_open("bob").unwrap(),
        );
        let _waiting = hub.try_open("alice").unwrap();
        let (mut m1, mut m2, mut mb) =
            (hub.join(&a1, None), hub.join(&a2, None), hub.join(&b, None));
        assert_eq!(hub.send_to_user("alice", &frame("hi")), 2);
        assert_eq!(text(&next_delivery(&mut m1).await.unwrap().frame), "hi");
        assert_eq!(text(&next_delivery(&mut m2).await.unwrap().frame), "hi");
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), mb.next())
                .await
                .is_err()
        );
        assert_eq!(hub.send_to_user("nobody", &frame("1")), 0);
    }

    #[tokio::test]
    async fn user_messages_keep_their_order_and_an_overflowing_mailbox_ends_the_member() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("alice").unwrap();
        let mut member = hub.join(&conn, None);
        for i in 0..MAILBOX_BUFFER {
            assert_eq!(hub.send_to_user("alice", &frame(&i.to_string())), 1);
        }
        // A broadcast in between leaves the messages' own order alone.
        hub.broadcast(&frame("all"));
        let mut messages = Vec::new();
        while messages.len() < MAILBOX_BUFFER {
            let delivery = next_delivery(&mut member).await.unwrap();
            if delivery.published_at.is_none() {
                messages.push(text(&delivery.frame).to_owned());
            }
        }
        let expected: Vec<String> = (0..MAILBOX_BUFFER).map(|i| i.to_string()).collect();
        assert_eq!(messages, expected);

        for i in 0..MAILBOX_BUFFER {
            assert_eq!(hub.send_to_user("alice", &frame(&i.to_string())), 1);
        }
        assert_eq!(hub.send_to_user("alice", &frame("one too many")), 0);
        assert_eq!(member.next().await, Err(Fell::MailboxFull));
    }

    #[tokio::test]
    async fn a_message_sent_while_the_member_waits_wakes_it() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("alice").unwrap();
        let mut member = hub.join(&conn, None);
        let waiting = tokio::spawn(async move { next_delivery(&mut member).await.unwrap().frame });
        tokio::task::yield_now().await;
        hub.send_to_user("alice", &frame("wake up"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiting member woke")
            .unwrap();
        assert_eq!(text(&got), "wake up");
    }

    #[tokio::test]
    async fn kicks_reach_users_jtis_and_everyone() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let mut alice = hub.try_open("alice").unwrap();
        let mut pending = hub.try_open("alice").unwrap();
        let mut bob = hub.try_open("bob").unwrap();
        let member = hub.join(&bob, Some("jti-1"));
        assert_eq!(hub.kick_user("alice", Kick::Disconnected), 2);
        assert_eq!(alice.kicked().await, Kick::Disconnected);
        assert_eq!(pending.kicked().await, Kick::Disconnected);
        member.set_jti(Some("jti-2"));
        assert_eq!(hub.kick_jti("jti-1", Kick::Revoked), 0);
        assert_eq!(hub.kick_jti("jti-2", Kick::Revoked), 1);
        assert_eq!(bob.kicked().await, Kick::Revoked);
        assert_eq!(hub.kick_all(Kick::Draining), 3);
    }

    #[test]
    fn connection_limits_hold_per_user_and_in_total() {
        let hub = Hub::new(ConnectionLimits {
            max_total: 3,
            max_per_user: 2,
        });
        let a1 = hub.try_open("alice").unwrap();
        let _a2 = hub.try_open("alice").unwrap();
        assert_eq!(
            hub.try_open("alice").err(),
            Some(ConnectionRefused::UserLimit)
        );
        let _b1 = hub.try_open("bob").unwrap();
        assert_eq!(
            hub.try_open("carol").err(),
            Some(ConnectionRefused::Capacity)
        );
        drop(a1);
        assert_eq!(hub.open_count_of("alice"), 1);
        let _a3 = hub.try_open("alice").unwrap();
        assert_eq!(hub.open_count(), 3);
    }
}
