//! The hub: every open connection on this node and in-memory fan-out to them. It delivers
//! messages already encoded (by `crate::protocol`, through the bus) to the connections'
//! queues; it never encodes, frames, reads a store or waits on anything but a lock. What to
//! deliver is decided by the bus (`crate::bus`); recovery from history sits above it, in the
//! session (`crate::session::recovery`), and uses the windows it keeps.
//!
//! Files, one job each: [`registry`] (open connections, limits, kicks), [`membership`] (an
//! authenticated connection's place in the pipelines), [`channels`] (channel → subscribers,
//! sharded), [`streams`] (the history windows), [`mailbox`] (one connection's bounded queue),
//! [`token_index`] (subscription-token `jti`s), [`watch`] (the console's channel tail),
//! [`delivery`] (a message and the forms the transports make of it, once per node).
//!
//! Broadcasts travel on a bounded `tokio::sync::broadcast` ring: publishing never waits for
//! any connection, and a connection that falls more than [`BROADCAST_BUFFER`] messages behind
//! learns it lagged and is closed, so one slow client never holds up the others. Messages for
//! one user, channel publications and the server's requests go through each connection's
//! bounded [`mailbox`], with the same rule. Server-side closes (disconnect, revocation, drain)
//! reach a connection through its [`Kick`] channel.

mod channels;
pub mod delivery;
pub mod inbox;
pub mod mailbox;
mod membership;
mod registry;
mod streams;
mod token_index;
mod watch;

use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::channels::ChannelName;
use crate::limits::ConnectionLimits;
pub use channels::{Loaded, Older, Recover, StreamStep};
pub use delivery::{Delivery, Form};
pub use inbox::{Inbox, InboxGuard, Inboxes, Posted};
pub use mailbox::{Control, Inbound, MAILBOX_BUFFER, Mailbox};
pub use membership::{Fell, Membership, WindowLoad};
pub use registry::{ConnectionCounts, Kick, OpenConnection};
pub use streams::MAX_WINDOW;
pub use watch::ChannelWatch;

/// A server message encoded once (JSON text), ready for any number of connections.
pub type EncodedMessage = ByteString;

/// Broadcasts a connection may fall behind before it is closed as a slow consumer.
pub const BROADCAST_BUFFER: usize = 1024;

/// Identifies one connection (of any transport) in logs and in the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// The transports a connection can be on. The hub counts connections by transport; only the
/// transports themselves know what they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    WebSocket = 0,
    ServerSentEvents = 1,
}

impl TransportKind {
    pub const ALL: [TransportKind; 2] = [TransportKind::WebSocket, TransportKind::ServerSentEvents];

    /// The name in metrics labels, lifecycle events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::ServerSentEvents => "sse",
        }
    }
}

/// How many channels have a subscriber on this node, and how many subscriptions there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub channels: usize,
    pub subscriptions: usize,
}

pub struct Hub {
    broadcasts: broadcast::Sender<Delivery>,
    registry: registry::Registry,
    channels: channels::ChannelTable,
    token_jtis: token_index::TokenIndex,
    inboxes: Arc<Inboxes>,
}

impl Hub {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        let (broadcasts, _) = broadcast::channel(BROADCAST_BUFFER);
        Arc::new(Hub {
            broadcasts,
            registry: registry::Registry::new(limits),
            channels: channels::ChannelTable::default(),
            token_jtis: token_index::TokenIndex::default(),
            inboxes: Arc::default(),
        })
    }

    /// The inboxes of this node's connections whose clients send over HTTP.
    pub fn inboxes(&self) -> &Arc<Inboxes> {
        &self.inboxes
    }

    /// Queues a broadcast for every authenticated connection; returns how many there are.
    /// Callers deliver one broadcast at a time, so every connection sees the same order.
    pub fn broadcast(&self, message: &EncodedMessage) -> usize {
        let delivery = Delivery::new(message.clone(), Some(Instant::now()));
        // An error only means nobody is listening right now, which is fine for a broadcast.
        self.broadcasts.send(delivery).unwrap_or(0)
    }

    /// Queues an encoded message for each authenticated connection of `user_id`; returns how
    /// many got it. A connection whose mailbox is full is closed as a slow consumer.
    pub fn send_to_user(&self, user_id: &str, message: &EncodedMessage) -> usize {
        // Made only once a connection of the user is found: in a cluster most nodes have none.
        let mut delivery = None;
        self.registry.push_to_user(user_id, || {
            let delivery = delivery.get_or_insert_with(|| Delivery::new(message.clone(), None));
            Inbound::Delivery(delivery.clone())
        })
    }

    /// Queues a message for every subscriber of `channel` on this node; returns how many got
    /// it. Encoded only where someone subscribed.
    pub fn publish_with(&self, channel: &str, encode: impl FnOnce() -> EncodedMessage) -> usize {
        if !self.channels.has_subscribers(channel) {
            return 0;
        }
        let delivery = Delivery::new(encode(), Some(Instant::now()));
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
        let delivery = Delivery::new(encode(), Some(Instant::now()));
        self.channels
            .deliver_stream(channel, offset, epoch, &delivery)
    }

    /// This node's cluster stream lost its place, so it may have missed publications,
    /// broadcasts and user messages. Every history window is forgotten (the next subscriber
    /// of each channel reads the store) and every authenticated connection is told
    /// ([`Control::StreamLost`]); returns how many connections were.
    pub fn stream_lost(&self) -> usize {
        self.channels.forget_windows();
        self.registry.control_all(&Control::StreamLost)
    }

    /// Asks each authenticated connection of `user_id` to carry out `control`; returns how many.
    pub fn control_user(&self, user_id: &str, control: &Control) -> usize {
        self.registry
            .push_to_user(user_id, || Inbound::Control(control.clone()))
    }

    /// Ends the subscriptions held by subscription tokens with this `jti`; returns how many
    /// connections were asked to.
    pub fn revoke_subscription_token(&self, jti: &str) -> usize {
        let holders = self.token_jtis.holders(jti);
        if holders.is_empty() {
            return 0;
        }
        let control = Control::TokenRevoked(Arc::from(jti));
        self.registry.control_each(&holders, &control)
    }

    /// `channel`'s subscribers on this node: connection and user.
    pub fn subscribers(&self, channel: &str) -> Vec<(ConnectionId, Arc<str>)> {
        self.channels.subscribers(channel)
    }

    /// The channels with a subscriber on this node, by prefix, with their subscriber counts.
    pub fn channel_counts(&self, prefix: &str) -> Vec<(ChannelName, usize)> {
        self.channels.counts(prefix)
    }

    /// The channel partitions this node has subscribers (or a window loading) in: what its
    /// cluster stream must carry.
    pub fn watched_partitions(&self) -> Vec<u32> {
        self.channels.watched_partitions()
    }

    pub fn channel_stats(&self) -> ChannelStats {
        let counts = self.channels.counts("");
        ChannelStats {
            channels: counts.len(),
            subscriptions: counts.iter().map(|(_, n)| n).sum(),
        }
    }

    /// No channel has a subscriber and no subscription token is indexed: what a node whose
    /// connections all left must come back to.
    pub fn channel_tables_are_empty(&self) -> bool {
        self.channels.is_empty() && self.token_jtis.is_empty()
    }

    /// Closes every connection of `user_id`, authenticated or not; returns how many.
    pub fn kick_user(&self, user_id: &str, kick: Kick) -> usize {
        self.registry.kick_user(user_id, kick)
    }

    /// Closes every connection authenticated with a JWT whose `jti` is `jti`; returns how many.
    pub fn kick_jti(&self, jti: &str, kick: Kick) -> usize {
        self.registry.kick_jti(jti, kick)
    }

    /// Closes every open connection; returns how many.
    pub fn kick_all(&self, kick: Kick) -> usize {
        self.registry.kick_all(kick)
    }

    pub fn counts(&self) -> ConnectionCounts {
        self.registry.counts()
    }

    /// Open connections on one transport.
    pub fn counts_on(&self, transport: TransportKind) -> ConnectionCounts {
        self.registry.counts_on(transport)
    }

    /// Connections in the broadcast pipeline.
    pub fn authenticated_count(&self) -> usize {
        self.counts().authenticated
    }

    /// All open connections, authenticated or not.
    pub fn open_count(&self) -> usize {
        self.counts().total
    }

    /// Open connections of one user, authenticated or not.
    pub fn open_count_of(&self, user_id: &str) -> usize {
        self.registry.open_count_of(user_id)
    }
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
    use crate::limits::ConnectionRefused;

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

    fn text(message: &EncodedMessage) -> &str {
        message
    }

    #[tokio::test]
    async fn members_receive_broadcasts_in_seq_order_and_leave_on_drop() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("alice", TransportKind::WebSocket).unwrap();
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
            text(&next_delivery(&mut member).await.unwrap().message),
            "one"
        );
        assert_eq!(
            text(&next_delivery(&mut member).await.unwrap().message),
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
        let conn = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        let mut member = hub.join(&conn, None);
        for i in 0..5 {
            hub.broadcast(&frame(&i.to_string()));
        }
        let first = next_delivery(&mut member).await.unwrap();
        let batch = member.with_waiting(first, 3).unwrap();
        let texts: Vec<&str> = batch.iter().map(|d| text(&d.message)).collect();
        assert_eq!(texts, ["0", "1", "2"]);
        let first = next_delivery(&mut member).await.unwrap();
        let batch = member.with_waiting(first, 64).unwrap();
        assert_eq!(batch.len(), 2, "only what was waiting");
    }

    #[tokio::test]
    async fn a_lagging_member_is_told_how_much_it_missed() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("slow", TransportKind::WebSocket).unwrap();
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
            hub.try_open("alice", TransportKind::WebSocket).unwrap(),
            hub.try_open("alice", TransportKind::WebSocket).unwrap(),
            hub.try_open("bob", TransportKind::WebSocket).unwrap(),
        );
        let _waiting = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        let (mut m1, mut m2, mut mb) =
            (hub.join(&a1, None), hub.join(&a2, None), hub.join(&b, None));
        assert_eq!(hub.send_to_user("alice", &frame("hi")), 2);
        assert_eq!(text(&next_delivery(&mut m1).await.unwrap().message), "hi");
        assert_eq!(text(&next_delivery(&mut m2).await.unwrap().message), "hi");
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
        let conn = hub.try_open("alice", TransportKind::WebSocket).unwrap();
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
                messages.push(text(&delivery.message).to_owned());
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
        let conn = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        let mut member = hub.join(&conn, None);
        let waiting =
            tokio::spawn(async move { next_delivery(&mut member).await.unwrap().message });
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
        let mut alice = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        let mut pending = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        let mut bob = hub.try_open("bob", TransportKind::WebSocket).unwrap();
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
        let a1 = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        let _a2 = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        assert_eq!(
            hub.try_open("alice", TransportKind::WebSocket).err(),
            Some(ConnectionRefused::UserLimit)
        );
        let _b1 = hub.try_open("bob", TransportKind::WebSocket).unwrap();
        assert_eq!(
            hub.try_open("carol", TransportKind::WebSocket).err(),
            Some(ConnectionRefused::Capacity)
        );
        drop(a1);
        assert_eq!(hub.open_count_of("alice"), 1);
        let _a3 = hub.try_open("alice", TransportKind::WebSocket).unwrap();
        assert_eq!(hub.open_count(), 3);
    }
}
