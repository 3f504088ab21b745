//! The registry of open connections on this node: the connection limits, what stage each
//! connection is in, an index by user, and the kicks (server-side closes) that reach them.
//! One lock, so racing opens can never overshoot a limit.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::mailbox::{Control, Inbound, Mailbox};
use super::{ConnectionId, Hub, TransportKind, lock};
use crate::limits::{ConnectionLimits, ConnectionRefused};

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

pub(super) enum Stage {
    Unauthenticated,
    Authenticated {
        mailbox: Arc<Mailbox>,
        jti: Option<Arc<str>>,
    },
    /// Out of the pipelines, closing.
    Leaving,
}

struct Entry {
    doorbell: Arc<Doorbell>,
    stage: Stage,
    transport: TransportKind,
}

/// How a kick reaches a connection's task: the last kick, and a wake-up. A few dozen bytes
/// per connection, where a `watch` channel would keep a few hundred.
#[derive(Default)]
struct Doorbell {
    /// 0 while nobody kicked; else the kick, as [`Kick::code`] gives it.
    kick: AtomicU8,
    rung: Notify,
}

impl Kick {
    fn code(self) -> u8 {
        match self {
            Kick::Disconnected => 1,
            Kick::Revoked => 2,
            Kick::Draining => 3,
        }
    }

    fn of_code(code: u8) -> Option<Kick> {
        match code {
            1 => Some(Kick::Disconnected),
            2 => Some(Kick::Revoked),
            3 => Some(Kick::Draining),
            _ => None,
        }
    }
}

impl Doorbell {
    fn ring(&self, kick: Kick) {
        self.kick.store(kick.code(), Ordering::Release);
        // Kept as a permit when the task is not waiting right now: it looks again.
        self.rung.notify_one();
    }

    fn kick(&self) -> Option<Kick> {
        Kick::of_code(self.kick.load(Ordering::Acquire))
    }
}

#[derive(Default)]
struct Connections {
    entries: HashMap<ConnectionId, Entry>,
    by_user: HashMap<Arc<str>, UserConnections>,
    authenticated: usize,
    /// Open and authenticated connections per transport, indexed by [`TransportKind`].
    per_transport: [Tally; TransportKind::ALL.len()],
}

#[derive(Default, Clone, Copy)]
struct Tally {
    open: usize,
    authenticated: usize,
}

/// One user's open connections. Most users have one, which then costs no allocation of its
/// own (a set of one would take a block of its own per user).
enum UserConnections {
    One(ConnectionId),
    Many(HashSet<ConnectionId>),
}

impl UserConnections {
    fn len(&self) -> usize {
        match self {
            UserConnections::One(_) => 1,
            UserConnections::Many(ids) => ids.len(),
        }
    }

    fn add(&mut self, id: ConnectionId) {
        match self {
            UserConnections::One(first) => {
                *self = UserConnections::Many(HashSet::from([*first, id]))
            }
            UserConnections::Many(ids) => {
                ids.insert(id);
            }
        }
    }

    /// Takes `id` out; false when none are left.
    fn remove(&mut self, id: ConnectionId) -> bool {
        match self {
            UserConnections::One(only) => *only != id,
            UserConnections::Many(ids) => {
                ids.remove(&id);
                !ids.is_empty()
            }
        }
    }

    fn ids(&self) -> impl Iterator<Item = &ConnectionId> {
        let (one, many) = match self {
            UserConnections::One(id) => (Some(id), None),
            UserConnections::Many(ids) => (None, Some(ids.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl Connections {
    fn of_user<'a>(&'a self, user_id: &str) -> impl Iterator<Item = &'a Entry> {
        let ids = self
            .by_user
            .get(user_id)
            .into_iter()
            .flat_map(UserConnections::ids);
        ids.filter_map(|id| self.entries.get(id))
    }
}

pub(super) struct Registry {
    connections: Mutex<Connections>,
    next_connection: AtomicU64,
    limits: ConnectionLimits,
}

impl Registry {
    pub fn new(limits: ConnectionLimits) -> Self {
        Registry {
            connections: Mutex::default(),
            next_connection: AtomicU64::new(1),
            limits,
        }
    }

    /// A new connection id (listeners that are not connections take them too).
    pub fn next_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    /// Takes a slot for `user`, within the limits.
    fn open(
        &self,
        user: &Arc<str>,
        transport: TransportKind,
    ) -> Result<(ConnectionId, Arc<Doorbell>), ConnectionRefused> {
        let mut connections = lock(&self.connections);
        if connections.entries.len() >= self.limits.max_total {
            return Err(ConnectionRefused::Capacity);
        }
        if connections
            .by_user
            .get(user)
            .map_or(0, UserConnections::len)
            >= self.limits.max_per_user
        {
            return Err(ConnectionRefused::UserLimit);
        }
        let id = self.next_id();
        let doorbell = Arc::new(Doorbell::default());
        let entry = Entry {
            doorbell: Arc::clone(&doorbell),
            stage: Stage::Unauthenticated,
            transport,
        };
        connections.entries.insert(id, entry);
        connections.per_transport[transport as usize].open += 1;
        match connections.by_user.get_mut(user) {
            Some(ids) => ids.add(id),
            None => {
                connections
                    .by_user
                    .insert(Arc::clone(user), UserConnections::One(id));
            }
        }
        Ok((id, doorbell))
    }

    fn close(&self, id: ConnectionId, user: &str) {
        let mut connections = lock(&self.connections);
        if let Some(entry) = connections.entries.remove(&id) {
            let tally = &mut connections.per_transport[entry.transport as usize];
            tally.open -= 1;
            if matches!(entry.stage, Stage::Authenticated { .. }) {
                tally.authenticated -= 1;
                connections.authenticated -= 1;
            }
        }
        if let Some(ids) = connections.by_user.get_mut(user)
            && !ids.remove(id)
        {
            connections.by_user.remove(user);
        }
    }

    /// Moves a connection into `stage`, keeping the authenticated count.
    pub fn set_stage(&self, id: ConnectionId, stage: Stage) {
        let mut connections = lock(&self.connections);
        let Some(entry) = connections.entries.get_mut(&id) else {
            return;
        };
        let was = matches!(entry.stage, Stage::Authenticated { .. });
        let is = matches!(stage, Stage::Authenticated { .. });
        entry.stage = stage;
        let transport = entry.transport as usize;
        match (was, is) {
            (false, true) => {
                connections.authenticated += 1;
                connections.per_transport[transport].authenticated += 1;
            }
            (true, false) => {
                connections.authenticated -= 1;
                connections.per_transport[transport].authenticated -= 1;
            }
            _ => {}
        }
    }

    /// After an in-band refresh: revocation now concerns the new JWT's `jti`.
    pub fn set_jti(&self, id: ConnectionId, jti: Option<&str>) {
        let mut connections = lock(&self.connections);
        if let Some(Entry {
            stage: Stage::Authenticated { jti: current, .. },
            ..
        }) = connections.entries.get_mut(&id)
        {
            *current = jti.map(Arc::from);
        }
    }

    /// Pushes `item` (made on first need) to the mailbox of each authenticated connection of
    /// `user_id`; returns how many took it.
    pub fn push_to_user(&self, user_id: &str, mut item: impl FnMut() -> Inbound) -> usize {
        let connections = lock(&self.connections);
        connections
            .of_user(user_id)
            .filter(|entry| match &entry.stage {
                Stage::Authenticated { mailbox, .. } => mailbox.push(item()),
                _ => false,
            })
            .count()
    }

    /// Pushes `control` to each of `ids` that is authenticated; returns how many took it.
    pub fn control_each(&self, ids: &[ConnectionId], control: &Control) -> usize {
        let connections = lock(&self.connections);
        ids.iter()
            .filter_map(|id| connections.entries.get(id))
            .filter(|entry| match &entry.stage {
                Stage::Authenticated { mailbox, .. } => {
                    mailbox.push(Inbound::Control(control.clone()))
                }
                _ => false,
            })
            .count()
    }

    /// Pushes `control` to every authenticated connection; returns how many took it.
    pub fn control_all(&self, control: &Control) -> usize {
        let connections = lock(&self.connections);
        connections
            .entries
            .values()
            .filter(|entry| match &entry.stage {
                Stage::Authenticated { mailbox, .. } => {
                    mailbox.push(Inbound::Control(control.clone()))
                }
                _ => false,
            })
            .count()
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

    pub fn counts(&self) -> ConnectionCounts {
        let connections = lock(&self.connections);
        ConnectionCounts {
            total: connections.entries.len(),
            authenticated: connections.authenticated,
            unauthenticated: connections.entries.len() - connections.authenticated,
        }
    }

    pub fn counts_on(&self, transport: TransportKind) -> ConnectionCounts {
        let tally = lock(&self.connections).per_transport[transport as usize];
        ConnectionCounts {
            total: tally.open,
            authenticated: tally.authenticated,
            unauthenticated: tally.open - tally.authenticated,
        }
    }

    pub fn open_count_of(&self, user_id: &str) -> usize {
        lock(&self.connections)
            .by_user
            .get(user_id)
            .map_or(0, UserConnections::len)
    }
}

fn kick_each<'a>(entries: impl Iterator<Item = &'a Entry>, kick: Kick) -> usize {
    let mut kicked = 0;
    for entry in entries {
        entry.doorbell.ring(kick);
        kicked += 1;
    }
    kicked
}

impl Hub {
    /// Takes a connection slot for `user_id` on `transport`, within the limits (which count
    /// every transport together), until the guard is dropped.
    pub fn try_open(
        self: &Arc<Self>,
        user_id: &str,
        transport: TransportKind,
    ) -> Result<OpenConnection, ConnectionRefused> {
        let user: Arc<str> = Arc::from(user_id);
        let (id, doorbell) = self.registry.open(&user, transport)?;
        Ok(OpenConnection {
            hub: Arc::clone(self),
            id,
            user,
            doorbell,
        })
    }
}

/// A connection's slot, held from the transport's opening to the end of its task.
pub struct OpenConnection {
    pub(super) hub: Arc<Hub>,
    pub id: ConnectionId,
    pub(super) user: Arc<str>,
    doorbell: Arc<Doorbell>,
}

impl OpenConnection {
    pub fn user_id(&self) -> &str {
        &self.user
    }

    /// Resolves when the server decides to close this connection.
    pub async fn kicked(&mut self) -> Kick {
        loop {
            if let Some(kick) = self.doorbell.kick() {
                return kick;
            }
            self.doorbell.rung.notified().await;
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.hub.registry.close(self.id, &self.user);
    }
}
