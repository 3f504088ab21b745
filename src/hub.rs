//! The fan-out hub: which connections are authenticated, and the one seam every broadcast goes
//! through ([`Hub::publish`]). A later cluster bus publishes through the same seam.
//!
//! Broadcasts are serialized once and shared (a `ByteString` clone is a reference-count bump).
//! They travel on a bounded `tokio::sync::broadcast` ring: publishing never waits for any
//! connection, and a connection that falls more than [`BROADCAST_BUFFER`] messages behind learns
//! it lagged and is closed, so one slow client never holds up the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

/// Broadcasts a connection may fall behind before it is closed as a slow consumer.
pub const BROADCAST_BUFFER: usize = 1024;

/// Identifies one WebSocket connection in logs and in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(u64);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// An encoded broadcast, ready to be written to any number of sockets.
pub type Frame = ByteString;

struct Registration {
    #[allow(dead_code)] // read by per-user delivery and connection listings in later issues
    user_id: Arc<str>,
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

/// Open connections, in total and per user (authenticated or not), counted under one lock so
/// a limit can never be overshot by racing upgrades.
#[derive(Default)]
struct OpenCounts {
    total: usize,
    per_user: HashMap<Arc<str>, usize>,
}

pub struct Hub {
    /// Held with the sender so `seq` order is delivery order even with concurrent publishers.
    publisher: Mutex<Publisher>,
    registry: Mutex<HashMap<ConnectionId, Registration>>,
    next_connection: AtomicU64,
    open: Mutex<OpenCounts>,
    limits: ConnectionLimits,
}

struct Publisher {
    last_seq: u64,
    sender: broadcast::Sender<Frame>,
}

#[derive(Serialize)]
struct BroadcastMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u64,
    data: &'a RawValue,
}

impl Hub {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        let (sender, _) = broadcast::channel(BROADCAST_BUFFER);
        Arc::new(Hub {
            publisher: Mutex::new(Publisher {
                last_seq: 0,
                sender,
            }),
            registry: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            open: Mutex::new(OpenCounts::default()),
            limits,
        })
    }

    /// Sends `{"type":"broadcast","seq":n,"data":…}` to every authenticated connection and
    /// returns `n`. `seq` starts at 1 and increases by one per broadcast.
    pub fn publish(&self, data: &RawValue) -> u64 {
        let mut publisher = lock(&self.publisher);
        publisher.last_seq += 1;
        let seq = publisher.last_seq;
        let message = BroadcastMessage {
            kind: "broadcast",
            seq,
            data,
        };
        let frame = serde_json::to_string(&message).expect("serializing a RawValue cannot fail");
        // An error only means nobody is listening right now, which is fine for a broadcast.
        let _ = publisher.sender.send(ByteString::from(frame));
        seq
    }

    /// Takes a connection slot for `user_id`, within the limits, until the guard is dropped.
    pub fn try_open(self: &Arc<Self>, user_id: &str) -> Result<OpenConnection, ConnectionRefused> {
        let mut open = lock(&self.open);
        if open.total >= self.limits.max_total {
            return Err(ConnectionRefused::Capacity);
        }
        let user: Arc<str> = Arc::from(user_id);
        let of_user = open.per_user.entry(Arc::clone(&user)).or_insert(0);
        if *of_user >= self.limits.max_per_user {
            return Err(ConnectionRefused::UserLimit);
        }
        *of_user += 1;
        open.total += 1;
        Ok(OpenConnection {
            hub: Arc::clone(self),
            id: ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed)),
            user,
        })
    }

    /// Adds an authenticated connection to the broadcast pipeline. Only the session's
    /// authenticated state can call this, so nothing reaches a connection before it authenticates.
    pub fn join(self: &Arc<Self>, connection: &OpenConnection) -> Membership {
        // Subscribe before registering: a connection counted as registered receives everything
        // published from then on.
        let receiver = lock(&self.publisher).sender.subscribe();
        lock(&self.registry).insert(
            connection.id,
            Registration {
                user_id: Arc::clone(&connection.user),
            },
        );
        Membership {
            hub: Arc::clone(self),
            id: connection.id,
            receiver,
        }
    }

    /// Connections in the broadcast pipeline.
    pub fn authenticated_count(&self) -> usize {
        lock(&self.registry).len()
    }

    /// All open WebSocket connections, authenticated or not.
    pub fn open_count(&self) -> usize {
        lock(&self.open).total
    }

    /// Open connections of one user, authenticated or not.
    pub fn open_count_of(&self, user_id: &str) -> usize {
        lock(&self.open).per_user.get(user_id).copied().unwrap_or(0)
    }
}

/// A WebSocket connection's slot, held from upgrade to the end of its task.
pub struct OpenConnection {
    hub: Arc<Hub>,
    pub id: ConnectionId,
    user: Arc<str>,
}

impl OpenConnection {
    pub fn user_id(&self) -> &str {
        &self.user
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        let mut open = lock(&self.hub.open);
        open.total -= 1;
        if let Some(count) = open.per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.per_user.remove(&self.user);
            }
        }
    }
}

/// An authenticated connection's place in the broadcast pipeline. Dropping it is the one and
/// only way out, so every exit path (close, error, panic) unregisters.
pub struct Membership {
    hub: Arc<Hub>,
    id: ConnectionId,
    receiver: broadcast::Receiver<Frame>,
}

/// The connection fell so far behind that broadcasts were dropped for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lagged {
    pub missed: u64,
}

impl Membership {
    pub async fn next_broadcast(&mut self) -> Result<Frame, Lagged> {
        match self.receiver.recv().await {
            Ok(frame) => Ok(frame),
            Err(broadcast::error::RecvError::Lagged(missed)) => Err(Lagged { missed }),
            // The hub owns the sender and this membership keeps the hub alive.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        lock(&self.hub.registry).remove(&self.id);
    }
}

/// Registry and publisher updates are single operations, so a panic elsewhere cannot leave them
/// half-done; a poisoned lock is still consistent.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    #[tokio::test]
    async fn members_receive_broadcasts_in_seq_order_and_leave_on_drop() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("alice").unwrap();
        assert_eq!(hub.open_count(), 1);
        let mut member = hub.join(&conn);
        assert_eq!(hub.authenticated_count(), 1);
        assert_eq!(hub.publish(&raw(r#"{"a":1}"#)), 1);
        assert_eq!(hub.publish(&raw("2")), 2);
        assert_eq!(
            &*member.next_broadcast().await.unwrap(),
            r#"{"type":"broadcast","seq":1,"data":{"a":1}}"#
        );
        assert_eq!(
            &*member.next_broadcast().await.unwrap(),
            r#"{"type":"broadcast","seq":2,"data":2}"#
        );
        drop(member);
        assert_eq!(hub.authenticated_count(), 0);
        drop(conn);
        assert_eq!(hub.open_count(), 0);
    }

    #[tokio::test]
    async fn a_lagging_member_is_told_how_much_it_missed() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let conn = hub.try_open("slow").unwrap();
        let mut member = hub.join(&conn);
        for _ in 0..BROADCAST_BUFFER + 5 {
            hub.publish(&raw("0"));
        }
        assert_eq!(member.next_broadcast().await, Err(Lagged { missed: 5 }));
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
