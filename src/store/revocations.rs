//! Revoked JWT ids: a JWT whose `jti` is here can no longer mint tickets, authenticate or
//! refresh. Kept until the token would have expired anyway (MongoDB: a TTL index on
//! `expires_at`; in process: swept on insert).

use std::collections::HashMap;
use std::sync::Mutex;

use bson::{DateTime, doc};
use mongodb::options::ReplaceOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{MongoBounds, StoreUnavailable};
use crate::clock::{MAX_UNIX_SECS, unix_now};

pub const REVOCATIONS_COLLECTION: &str = "revocations";

#[derive(Debug, Serialize, Deserialize)]
struct RevocationDocument {
    #[serde(rename = "_id")]
    jti: String,
    expires_at: DateTime,
}

pub struct RevocationStore(Backend);

enum Backend {
    Memory(Mutex<HashMap<String, u64>>),
    Mongo {
        revocations: Collection<RevocationDocument>,
        bounds: MongoBounds,
    },
}

impl RevocationStore {
    pub fn memory() -> Self {
        RevocationStore(Backend::Memory(Mutex::new(HashMap::new())))
    }

    pub fn mongo(db: &Database, bounds: MongoBounds) -> Self {
        RevocationStore(Backend::Mongo {
            revocations: db.collection(REVOCATIONS_COLLECTION),
            bounds,
        })
    }

    /// Revokes `jti` until `expires_at` (unix seconds). Revoking again extends or keeps it.
    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), StoreUnavailable> {
        match &self.0 {
            Backend::Memory(revoked) => {
                let mut revoked = revoked.lock().unwrap_or_else(|p| p.into_inner());
                let now = unix_now();
                revoked.retain(|_, until| *until > now);
                let until = revoked.entry(jti.to_owned()).or_insert(0);
                *until = (*until).max(expires_at);
                Ok(())
            }
            Backend::Mongo {
                revocations,
                bounds,
            } => {
                let document = RevocationDocument {
                    jti: jti.to_owned(),
                    // The API refuses later times; the bound keeps the milliseconds in range.
                    expires_at: DateTime::from_millis(
                        (expires_at.min(MAX_UNIX_SECS) * 1000) as i64,
                    ),
                };
                let replace = revocations
                    .replace_one(doc! { "_id": jti }, &document)
                    .with_options(ReplaceOptions::builder().upsert(true).build());
                bounds.run("revoke", replace).await.map(|_| ())
            }
        }
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreUnavailable> {
        match &self.0 {
            Backend::Memory(revoked) => {
                let revoked = revoked.lock().unwrap_or_else(|p| p.into_inner());
                Ok(revoked.get(jti).is_some_and(|until| *until > unix_now()))
            }
            Backend::Mongo {
                revocations,
                bounds,
            } => {
                let found = bounds
                    .run("is_revoked", revocations.find_one(doc! { "_id": jti }))
                    .await?;
                Ok(found.is_some())
            }
        }
    }
}
