//! Revoked JWT ids: a JWT whose `jti` is here can no longer mint tickets, authenticate or
//! refresh. Kept until the token would have expired anyway. Like the ticket store, one enum
//! over two backends with the same answers: MongoDB (`mongo.rs`, a TTL index on `expires_at`)
//! and in process (`memory.rs`, swept on insert).

mod memory;
mod mongo;

pub use memory::MemoryRevocations;
pub use mongo::MongoRevocations;

use crate::db::Unavailable;

pub enum RevocationStore {
    Memory(MemoryRevocations),
    Mongo(MongoRevocations),
}

impl RevocationStore {
    /// Revokes `jti` until `expires_at` (unix seconds). Revoking again extends or keeps it.
    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), Unavailable> {
        match self {
            RevocationStore::Memory(store) => {
                store.revoke(jti, expires_at);
                Ok(())
            }
            RevocationStore::Mongo(store) => store.revoke(jti, expires_at).await,
        }
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, Unavailable> {
        match self {
            RevocationStore::Memory(store) => Ok(store.is_revoked(jti)),
            RevocationStore::Mongo(store) => store.is_revoked(jti).await,
        }
    }
}
