//! Presence in MongoDB: collection `presence`, one document per subscribed connection and
//! channel (`_id` = `"<connection_id> <channel>"`), indexed by channel (to list one) and by
//! node (to clear a dead node's).

use bson::{DateTime, doc};
use futures_util::TryStreamExt;
use mongodb::options::ReplaceOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::channels::ChannelName;
use crate::db::collections::PRESENCE;
use crate::db::{Bounds, Unavailable};
use crate::protocol::PresenceClient;

/// Failed removals kept for a retry.
const MAX_PENDING_REMOVALS: usize = 100_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceDocument {
    #[serde(rename = "_id")]
    pub id: String,
    pub channel: String,
    pub user_id: String,
    pub connection_id: String,
    pub node: String,
    pub since: DateTime,
}

impl PresenceDocument {
    pub fn client(&self) -> PresenceClient {
        PresenceClient {
            user_id: self.user_id.clone(),
            connection_id: self.connection_id.clone(),
            node: self.node.clone(),
        }
    }
}

fn key(channel: &str, connection_id: &str) -> String {
    // A space is in neither a connection id nor a channel name, so the key is unambiguous.
    format!("{connection_id} {channel}")
}

pub struct MongoPresence {
    presence: Collection<PresenceDocument>,
    bounds: Bounds,
    /// Removals MongoDB did not take (it was down): retried at each heartbeat, so a
    /// subscriber that left never stays in presence.
    pending_removals: std::sync::Mutex<Vec<String>>,
}

impl MongoPresence {
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        MongoPresence {
            presence: db.collection(PRESENCE),
            bounds,
            pending_removals: std::sync::Mutex::default(),
        }
    }

    pub async fn add(
        &self,
        channel: &ChannelName,
        client: &PresenceClient,
    ) -> Result<(), Unavailable> {
        let document = PresenceDocument {
            id: key(channel.as_str(), &client.connection_id),
            channel: channel.as_str().to_owned(),
            user_id: client.user_id.clone(),
            connection_id: client.connection_id.clone(),
            node: client.node.clone(),
            since: DateTime::now(),
        };
        let upsert = self
            .presence
            .replace_one(doc! { "_id": &document.id }, &document)
            .with_options(ReplaceOptions::builder().upsert(true).build());
        self.bounds.run("presence_add", upsert).await.map(drop)
    }

    pub async fn remove(
        &self,
        channel: &ChannelName,
        connection_id: &str,
    ) -> Result<(), Unavailable> {
        let id = key(channel.as_str(), connection_id);
        let delete = self.presence.delete_one(doc! { "_id": &id });
        let removed = self.bounds.run("presence_remove", delete).await.map(drop);
        if removed.is_err() {
            let mut pending = self.pending();
            // Bounded: past this, a long outage's leftovers stay until this node restarts
            // (its entries are then a dead node's, and swept) instead of growing memory.
            if pending.len() < MAX_PENDING_REMOVALS {
                pending.push(id);
            }
        }
        removed
    }

    /// Retries the removals that failed; what fails again waits for the next call.
    pub async fn retry_removals(&self) -> Result<(), Unavailable> {
        let ids = std::mem::take(&mut *self.pending());
        if ids.is_empty() {
            return Ok(());
        }
        let delete = self.presence.delete_many(doc! { "_id": { "$in": &ids } });
        let retried = self
            .bounds
            .run("presence_remove_retry", delete)
            .await
            .map(drop);
        if retried.is_err() {
            self.pending().extend(ids);
        }
        retried
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.pending_removals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub async fn list(&self, channel: &ChannelName) -> Result<Vec<PresenceClient>, Unavailable> {
        let clients = self.presence.clone_with_type::<PresenceClient>();
        let found = clients
            .find(doc! { "channel": channel.as_str() })
            .projection(doc! { "_id": 0, "user_id": 1, "connection_id": 1, "node": 1 })
            .sort(doc! { "user_id": 1, "connection_id": 1 });
        let clients: Vec<PresenceClient> = self
            .bounds
            .run("presence_list", async { found.await?.try_collect().await })
            .await?;
        Ok(clients)
    }

    /// The nodes that have presence entries.
    pub async fn nodes(&self) -> Result<Vec<String>, Unavailable> {
        let distinct = self.presence.distinct("node", doc! {});
        let values = self.bounds.run("presence_nodes", distinct).await?;
        Ok(values
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Removes a dead node's entries one by one; each entry this call removed (and no other
    /// node's sweep did) is returned, so its leave is announced exactly once.
    pub async fn clear_node(&self, node: &str) -> Result<Vec<PresenceDocument>, Unavailable> {
        let found = self.presence.find(doc! { "node": node });
        let entries: Vec<PresenceDocument> = self
            .bounds
            .run("presence_dead_node", async {
                found.await?.try_collect().await
            })
            .await?;
        let mut cleared = Vec::new();
        for entry in entries {
            let delete = self.presence.delete_one(doc! { "_id": &entry.id });
            if self
                .bounds
                .run("presence_clear", delete)
                .await?
                .deleted_count
                == 1
            {
                cleared.push(entry);
            }
        }
        Ok(cleared)
    }
}
