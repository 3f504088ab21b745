//! The cluster events in MongoDB (`cluster_events`, migration 0003): what one node's bus
//! writes for every node's bus to read back through its change stream (`crate::bus`), removed
//! by the TTL index after 10 minutes. Generic over the document, whose form is the bus's own.

use mongodb::{ClientSession, Collection, Database};
use serde::Serialize;

use crate::db::collections::CLUSTER_EVENTS;
use crate::db::{Bounds, Unavailable};

pub struct ClusterEvents<T: Send + Sync> {
    events: Collection<T>,
    bounds: Bounds,
}

impl<T: Serialize + Send + Sync> ClusterEvents<T> {
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        ClusterEvents {
            events: db.collection(CLUSTER_EVENTS),
            bounds,
        }
    }

    /// Inserts `documents` in their order, in one command (none when there are none).
    pub async fn insert<'a>(
        &self,
        documents: impl IntoIterator<Item = &'a T>,
    ) -> Result<(), Unavailable>
    where
        T: 'a,
    {
        let documents: Vec<&T> = documents.into_iter().collect();
        if documents.is_empty() {
            return Ok(());
        }
        let insert = self.events.insert_many(documents).ordered(true);
        self.bounds.run("publish", insert).await.map(drop)
    }

    /// Inserts `documents` in their order as part of the transaction of `session`.
    pub async fn insert_in(
        &self,
        session: &mut ClientSession,
        documents: &[&T],
    ) -> mongodb::error::Result<()> {
        if documents.is_empty() {
            return Ok(());
        }
        self.events
            .insert_many(documents.iter().copied())
            .ordered(true)
            .session(session)
            .await
            .map(drop)
    }
}
