//! Who is connected, as the lifecycle events tell it: a user's open connections with their
//! node, start, address and subscriptions, for the console's user lookup
//! (`GET /api/users/{user_id}/connections`). The same fold serves both sources: a node's own
//! events as they happen (without MongoDB, where one node is the whole cluster), and a user's
//! events read back from `lifecycle_events` (every node's, with MongoDB).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use super::{Event, EventKind};
use crate::db::Unavailable;
use crate::store::lifecycle::EventLog;

/// One open connection of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionView {
    pub connection_id: String,
    pub node: String,
    /// Unix milliseconds of its authentication.
    pub connected_at: u64,
    pub client_ip: Option<String>,
    /// `websocket` or `sse`.
    pub transport: String,
    pub subscriptions: BTreeSet<String>,
}

/// Open connections by user, built from events in their order.
#[derive(Debug, Default)]
pub struct Roster {
    by_user: HashMap<String, BTreeMap<String, ConnectionView>>,
}

impl Roster {
    pub fn apply(&mut self, event: &Event) {
        let connections = self.by_user.entry(event.user_id.clone()).or_default();
        match &event.kind {
            EventKind::Connect {
                client_ip,
                transport,
                ..
            } => {
                connections.insert(
                    event.connection_id.clone(),
                    ConnectionView {
                        connection_id: event.connection_id.clone(),
                        node: event.node.clone(),
                        connected_at: event.time,
                        client_ip: client_ip.map(|ip| ip.to_string()),
                        transport: transport.clone(),
                        subscriptions: BTreeSet::new(),
                    },
                );
            }
            EventKind::Disconnect { .. } => {
                connections.remove(&event.connection_id);
            }
            EventKind::Subscribe { channel } => {
                if let Some(connection) = connections.get_mut(&event.connection_id) {
                    connection.subscriptions.insert(channel.clone());
                }
            }
            EventKind::Unsubscribe { channel } => {
                if let Some(connection) = connections.get_mut(&event.connection_id) {
                    connection.subscriptions.remove(channel);
                }
            }
        }
        if connections.is_empty() {
            self.by_user.remove(&event.user_id);
        }
    }

    /// The user's open connections, oldest first.
    pub fn connections_of(&self, user_id: &str) -> Vec<ConnectionView> {
        let mut connections: Vec<ConnectionView> = self
            .by_user
            .get(user_id)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default();
        connections.sort_by_key(|c| c.connected_at);
        connections
    }
}

/// Where a user lookup reads from.
pub enum Lookup {
    /// Lifecycle events are made neither for a webhook nor for MongoDB nor for the console.
    Unavailable,
    /// This node's own events, folded as they happen (without MongoDB).
    Local(Mutex<Roster>),
    /// Every node's events in `lifecycle_events`.
    Recorded(std::sync::Arc<EventLog>),
}

impl Lookup {
    /// The user's open connections on every node; `None` when lookups are unavailable.
    pub async fn connections_of(
        &self,
        user_id: &str,
    ) -> Result<Option<Vec<ConnectionView>>, Unavailable> {
        match self {
            Lookup::Unavailable => Ok(None),
            Lookup::Local(roster) => Ok(Some(
                roster
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .connections_of(user_id),
            )),
            Lookup::Recorded(log) => {
                let mut roster = Roster::default();
                for event in log.events_of_user(user_id).await? {
                    roster.apply(&event);
                }
                Ok(Some(roster.connections_of(user_id)))
            }
        }
    }

    /// Folds one of this node's events in, when the lookup is local.
    pub fn note(&self, event: &Event) {
        if let Lookup::Local(roster) = self {
            roster
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .apply(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(connection: &str, node: &str, time: u64, kind: EventKind) -> Event {
        Event {
            id: format!("{node}-{time}"),
            seq: time,
            kind,
            time,
            user_id: "alice".into(),
            connection_id: connection.into(),
            node: node.into(),
        }
    }

    #[test]
    fn the_roster_follows_connects_subscriptions_and_disconnects() {
        let mut roster = Roster::default();
        let connect = |ip: &str| EventKind::Connect {
            jti: None,
            client_ip: Some(ip.parse().unwrap()),
            transport: "sse".into(),
        };
        let subscribe = |c: &str| EventKind::Subscribe { channel: c.into() };
        for e in [
            event("c1@a", "a", 1, connect("10.0.0.1")),
            event("c1@a", "a", 2, subscribe("room:1")),
            event("c1@a", "a", 3, subscribe("room:2")),
            event("c7@b", "b", 4, connect("10.0.0.2")),
            event(
                "c1@a",
                "a",
                5,
                EventKind::Unsubscribe {
                    channel: "room:1".into(),
                },
            ),
            event("c9@b", "b", 6, connect("10.0.0.3")),
            event(
                "c9@b",
                "b",
                7,
                EventKind::Disconnect {
                    code: Some(1000),
                    reason: String::new(),
                    duration_ms: 1,
                },
            ),
        ] {
            roster.apply(&e);
        }
        let open = roster.connections_of("alice");
        assert_eq!(open.len(), 2);
        assert_eq!(open[0].connection_id, "c1@a");
        assert_eq!(open[0].subscriptions, BTreeSet::from(["room:2".to_owned()]));
        assert_eq!(open[0].client_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!((open[1].node.as_str(), open[1].connected_at), ("b", 4));
        assert!(roster.connections_of("bob").is_empty());
    }
}
