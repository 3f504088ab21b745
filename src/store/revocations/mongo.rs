//! Revocations in MongoDB: collection `revocations`, `_id` = jti, removed by a TTL index on
//! `expires_at`.

use bson::{DateTime, doc};
use mongodb::options::ReplaceOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::clock::MAX_UNIX_SECS;
use crate::db::{Bounds, Unavailable};

pub const REVOCATIONS_COLLECTION: &str = "revocations";

#[derive(Debug, Serialize, Deserialize)]
struct RevocationDocument {
    #[serde(rename = "_id")]
    jti: String,
    expires_at: DateTime,
}

pub struct MongoRevocations {
    revocations: Collection<RevocationDocument>,
    bounds: Bounds,
}

impl MongoRevocations {
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        MongoRevocations {
            revocations: db.collection(REVOCATIONS_COLLECTION),
            bounds,
        }
    }

    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), Unavailable> {
        let document = RevocationDocument {
            jti: jti.to_owned(),
            // The API refuses later times; the bound keeps the milliseconds in range.
            expires_at: DateTime::from_millis((expires_at.min(MAX_UNIX_SECS) * 1000) as i64),
        };
        let replace = self
            .revocations
            .replace_one(doc! { "_id": jti }, &document)
            .with_options(ReplaceOptions::builder().upsert(true).build());
        self.bounds.run("revoke", replace).await.map(|_| ())
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, Unavailable> {
        let found = self
            .bounds
            .run("is_revoked", self.revocations.find_one(doc! { "_id": jti }))
            .await?;
        Ok(found.is_some())
    }
}
