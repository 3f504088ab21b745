//! The idempotency keys of publications (`publish_keys`, migration 0008): one document per
//! key and the channels it covers, `{_id, streams: [{channel, offset, epoch}], at,
//! expires_at}`, written in the same transaction as the publication (`crate::bus`), removed
//! by the TTL index once `expires_at` has passed. A record past its `expires_at` that the TTL
//! monitor has not removed yet is taken as gone.

use std::collections::HashMap;
use std::time::Duration;

use bson::{DateTime, Document, doc};
use mongodb::{ClientSession, Collection, Database};

use super::StreamPublication;
use crate::db::collections::PUBLISH_KEYS;

pub struct PublishKeys {
    keys: Collection<Document>,
}

/// A key's record to write: its `_id`, where the publication went, how long it is kept.
pub struct KeyRecord<'a> {
    pub id: &'a str,
    pub streams: &'a [StreamPublication],
    pub window: Duration,
}

impl PublishKeys {
    pub fn new(db: &Database) -> Self {
        PublishKeys {
            keys: db.collection(PUBLISH_KEYS),
        }
    }

    /// The records of `ids` whose window has not passed, in the transaction of `session`.
    pub async fn find_in(
        &self,
        session: &mut ClientSession,
        ids: &[&str],
    ) -> mongodb::error::Result<HashMap<String, Vec<StreamPublication>>> {
        let mut found = HashMap::new();
        if ids.is_empty() {
            return Ok(found);
        }
        let mut cursor = self
            .keys
            .find(doc! { "_id": { "$in": ids }, "expires_at": { "$gt": DateTime::now() } })
            .session(&mut *session)
            .await?;
        while let Some(record) = cursor.next(&mut *session).await {
            let record = record?;
            let id = record.get_str("_id").unwrap_or_default().to_owned();
            let streams = record
                .get_array("streams")
                .map(|streams| {
                    streams
                        .iter()
                        .filter_map(|s| bson::from_bson(s.clone()).ok())
                        .collect()
                })
                .unwrap_or_default();
            found.insert(id, streams);
        }
        Ok(found)
    }

    /// Writes `records` in the transaction of `session`, replacing expired ones still there.
    pub async fn record_in(
        &self,
        session: &mut ClientSession,
        records: &[KeyRecord<'_>],
    ) -> mongodb::error::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let now = DateTime::now();
        let mut updates = Vec::with_capacity(records.len());
        for record in records {
            let window_ms = i64::try_from(record.window.as_millis()).unwrap_or(i64::MAX);
            let expires_at =
                DateTime::from_millis(now.timestamp_millis().saturating_add(window_ms));
            let streams = bson::to_bson(record.streams)
                .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
            // The `find_in` of this transaction found no live record; one past its window is
            // replaced. A record another transaction wrote meanwhile makes this one conflict.
            updates.push(doc! {
                "q": { "_id": record.id },
                "u": { "_id": record.id, "streams": streams, "at": now, "expires_at": expires_at },
                "upsert": true,
            });
        }
        // One command for all of them.
        crate::db::update_in(session, &self.keys, updates).await
    }
}
