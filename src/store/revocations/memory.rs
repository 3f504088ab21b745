//! Revocations in process, for a single node: a map from jti to the unix second it may be
//! forgotten, swept on every insert.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::clock::unix_now;

#[derive(Default)]
pub struct MemoryRevocations(Mutex<HashMap<String, u64>>);

impl MemoryRevocations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn revoke(&self, jti: &str, expires_at: u64) {
        let mut revoked = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now();
        revoked.retain(|_, until| *until > now);
        let until = revoked.entry(jti.to_owned()).or_insert(0);
        *until = (*until).max(expires_at);
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        let revoked = self.0.lock().unwrap_or_else(|p| p.into_inner());
        revoked.get(jti).is_some_and(|until| *until > unix_now())
    }
}
