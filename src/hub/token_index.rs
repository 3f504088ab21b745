//! Subscription tokens' `jti`s → the connections holding subscriptions by them, and how many
//! each, so a revoked subscription token reaches exactly those connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{ConnectionId, lock};

#[derive(Default)]
pub(super) struct TokenIndex {
    holders: Mutex<HashMap<Arc<str>, HashMap<ConnectionId, u32>>>,
}

impl TokenIndex {
    /// `connection` holds one more subscription by `jti`.
    pub fn add(&self, jti: &Arc<str>, connection: ConnectionId) {
        *lock(&self.holders)
            .entry(Arc::clone(jti))
            .or_default()
            .entry(connection)
            .or_default() += 1;
    }

    /// `connection` holds one subscription by `jti` fewer.
    pub fn remove(&self, jti: &str, connection: ConnectionId) {
        let mut index = lock(&self.holders);
        let Some(holders) = index.get_mut(jti) else {
            return;
        };
        if let Some(count) = holders.get_mut(&connection) {
            *count -= 1;
            if *count == 0 {
                holders.remove(&connection);
            }
        }
        if holders.is_empty() {
            index.remove(jti);
        }
    }

    /// The connections holding a subscription by `jti`.
    pub fn holders(&self, jti: &str) -> Vec<ConnectionId> {
        lock(&self.holders)
            .get(jti)
            .map(|holders| holders.keys().copied().collect())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.holders).is_empty()
    }
}
