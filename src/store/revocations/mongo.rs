//! Revocations in MongoDB: collection `revocations`, `_id` = jti, removed by a TTL index on
//! `expires_at`.
//!
//! Every mint and every authentication of a JWT with a `jti` asks whether it is revoked, so
//! the lookups are group-committed (`crate::db::GroupCommit`): a burst of them is one `find`
//! of many ids.

use std::collections::HashSet;

use bson::{DateTime, doc};
use futures_util::TryStreamExt;
use mongodb::options::ReplaceOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::clock::MAX_UNIX_SECS;
use crate::db::collections::REVOCATIONS;
use crate::db::{Batching, Bounds, GroupCommit, Unavailable};

#[derive(Debug, Serialize, Deserialize)]
struct RevocationDocument {
    #[serde(rename = "_id")]
    jti: String,
    expires_at: DateTime,
}

/// Lookups per batch, and batches at once.
const BATCHING: Batching = Batching {
    max_batch: 256,
    slots: 4,
};

pub struct MongoRevocations {
    revocations: Collection<RevocationDocument>,
    bounds: Bounds,
    lookups: GroupCommit<String, bool>,
}

impl MongoRevocations {
    /// Must be called within a tokio runtime: it starts the task that forms the batches.
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        let revocations: Collection<RevocationDocument> = db.collection(REVOCATIONS);
        let lookups = GroupCommit::start(BATCHING, {
            let (revocations, bounds) = (revocations.clone(), bounds.clone());
            move |jtis| look_up(revocations.clone(), bounds.clone(), jtis)
        });
        MongoRevocations {
            revocations,
            bounds,
            lookups,
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
        self.lookups.submit(jti.to_owned()).await
    }
}

/// Which of a batch's jtis are revoked: one `find` of their ids, reading only the ids.
async fn look_up(
    revocations: Collection<RevocationDocument>,
    bounds: Bounds,
    jtis: Vec<String>,
) -> Result<Vec<bool>, Unavailable> {
    let ids = revocations.clone_with_type::<bson::Document>();
    let find = ids
        .find(doc! { "_id": { "$in": &jtis } })
        .projection(doc! { "_id": 1 });
    let revoked: HashSet<String> = bounds
        .run("is_revoked", async {
            find.await?.try_collect::<Vec<_>>().await
        })
        .await?
        .into_iter()
        .filter_map(|document| document.get_str("_id").ok().map(str::to_owned))
        .collect();
    Ok(jtis.iter().map(|jti| revoked.contains(jti)).collect())
}
