//! Publications written in one MongoDB transaction with what must hold with them: the
//! records of their idempotency keys, the marks of the outbox documents they come from, and
//! the outbox consumer's progress. The transaction commits all of it or none, so a
//! publication is never made without its key's record (or its outbox mark), nor the other way
//! round. Used by the node's writer for keyed API publications (`writer.rs`) and by the
//! outbox consumer (`crate::outbox`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use bson::{Bson, DateTime, Document, doc};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection, Database};

use super::batch::{appends_of, for_cluster_events, gather_appends, place};
use super::once::IdempotencyKey;
use super::{EventDocument, StreamPublication};
use crate::channels::HistoryOptions;
use crate::store::cluster_events::ClusterEvents;
use crate::store::publish_keys::{KeyRecord, PublishKeys};
use crate::store::{Appended, MongoHistory};

/// How often a transaction is tried again when it fails (another node appended to one of its
/// channels, or wrote one of its keys, meanwhile).
pub const MAX_ATTEMPTS: usize = 8;

/// Where the writes go.
pub struct Stores<'a> {
    pub db: &'a Database,
    pub events: &'a ClusterEvents<EventDocument>,
    pub keys: &'a PublishKeys,
    pub history: &'a MongoHistory,
}

/// One publication of a transaction, numbered already.
pub struct Item {
    pub document: EventDocument,
    /// Its streams' history options.
    pub options: Vec<HistoryOptions>,
    /// Publish only if this key has no live record.
    pub key: Option<IdempotencyKey>,
    /// The outbox document it comes from: published only if that is not marked yet, and
    /// marked in the same transaction.
    pub outbox_id: Option<Bson>,
}

/// The outbox a transaction's items come from, and the consumer's lease: the transaction
/// commits only while `holder` holds it, and records `progress` there.
pub struct OutboxWrite<'a> {
    pub documents: &'a Collection<Document>,
    pub leases: &'a Collection<Document>,
    pub lease: &'a str,
    pub holder: &'a str,
    pub progress: Document,
}

/// What became of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Published(Vec<StreamPublication>),
    /// Its key was used within its window (here or before): the first one's places.
    Duplicate(Vec<StreamPublication>),
    /// Its outbox document was marked already: nothing was done.
    AlreadyMarked,
}

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("{0}")]
    Mongo(#[from] mongodb::error::Error),
    /// Another node holds the outbox's lease now.
    #[error("the outbox lease was lost")]
    LeaseLost,
}

impl Stores<'_> {
    /// Writes `items` in one transaction, tried again up to [`MAX_ATTEMPTS`] times; `retried`
    /// is told of each retry.
    pub async fn write(
        &self,
        items: &[Item],
        outbox: Option<&OutboxWrite<'_>>,
        retried: impl Fn(),
    ) -> Result<Vec<Outcome>, TransactionError> {
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            match self.attempt(items, outbox).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(TransactionError::LeaseLost) => return Err(TransactionError::LeaseLost),
                Err(e) => {
                    retried();
                    last = Some(e);
                    // A conflicting writer usually finishes in milliseconds: wait a little
                    // longer each time rather than conflict with it again at once.
                    let pause = 5 * (1u64 << attempt.min(6));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn attempt(
        &self,
        items: &[Item],
        outbox: Option<&OutboxWrite<'_>>,
    ) -> Result<Vec<Outcome>, TransactionError> {
        let mut session = self.db.client().start_session().await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await?;
        let (outcomes, positions) = match self.write_in(&mut session, items, outbox).await {
            Ok(done) => done,
            Err(e) => {
                let _ = session.abort_transaction().await;
                self.history.forget(
                    items
                        .iter()
                        .flat_map(|item| item.document.event.streams())
                        .map(|s| s.channel.as_str()),
                );
                return Err(e);
            }
        };
        if let Err(e) = session.commit_transaction().await {
            self.history
                .forget(positions.iter().map(|(channel, _)| channel.as_str()));
            return Err(e.into());
        }
        self.history
            .remember(positions.iter().map(|(c, p)| (c.as_str(), p.clone())));
        Ok(outcomes)
    }

    async fn write_in(
        &self,
        session: &mut ClientSession,
        items: &[Item],
        outbox: Option<&OutboxWrite<'_>>,
    ) -> Result<(Vec<Outcome>, Vec<(String, Appended)>), TransactionError> {
        if let Some(outbox) = outbox {
            let fenced = outbox
                .leases
                .update_one(
                    doc! { "_id": outbox.lease, "holder": outbox.holder },
                    doc! { "$set": outbox.progress.clone() },
                )
                .session(&mut *session)
                .await?;
            if fenced.matched_count == 0 {
                return Err(TransactionError::LeaseLost);
            }
        }
        let marked = match outbox {
            Some(outbox) => marked_in(session, outbox.documents, items).await?,
            None => HashSet::new(),
        };
        let ids: Vec<&str> = items
            .iter()
            .filter_map(|item| item.key.as_ref().map(IdempotencyKey::id))
            .collect();
        let recorded = self.keys.find_in(session, &ids).await?;
        // Which to write: an unmarked document's, and of each key without a record the first.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut chosen = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if item
                .outbox_id
                .as_ref()
                .is_some_and(|id| marked.contains(&id_key(id)))
            {
                continue;
            }
            match &item.key {
                Some(key) if recorded.contains_key(key.id()) || first_of.contains_key(key.id()) => {
                }
                Some(key) => {
                    first_of.insert(key.id(), i);
                    chosen.push(i);
                }
                None => chosen.push(i),
            }
        }
        let mut written: Vec<EventDocument> =
            chosen.iter().map(|&i| items[i].document.clone()).collect();
        let options: Vec<Vec<HistoryOptions>> =
            chosen.iter().map(|&i| items[i].options.clone()).collect();
        let appends = gather_appends(&written, &options);
        let stored: Vec<Cow<EventDocument>> =
            written.iter().filter_map(for_cluster_events).collect();
        let (placed, positions) = self
            .history
            .append_in(session, &appends_of(&written, &appends))
            .await?;
        let stored: Vec<&EventDocument> = stored.iter().map(AsRef::as_ref).collect();
        self.events.insert_in(session, &stored).await?;
        place(&mut written, &appends, placed);
        let records: Vec<KeyRecord> = chosen
            .iter()
            .zip(&written)
            .filter_map(|(&i, document)| {
                let key = items[i].key.as_ref()?;
                Some(KeyRecord {
                    id: key.id(),
                    streams: document.event.streams(),
                    window: key.window(),
                })
            })
            .collect();
        self.keys.record_in(session, &records).await?;
        let published: HashMap<usize, &EventDocument> =
            chosen.iter().copied().zip(&written).collect();
        let by_key: HashMap<&str, &EventDocument> = first_of
            .iter()
            .map(|(key, i)| (*key, published[i]))
            .collect();
        let outcomes: Vec<Outcome> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                if let Some(document) = published.get(&i) {
                    return Outcome::Published(document.event.streams().to_vec());
                }
                if item
                    .outbox_id
                    .as_ref()
                    .is_some_and(|id| marked.contains(&id_key(id)))
                {
                    return Outcome::AlreadyMarked;
                }
                let key = item.key.as_ref().expect("only keyed items are left out");
                match recorded.get(key.id()) {
                    Some(streams) => Outcome::Duplicate(streams.clone()),
                    None => Outcome::Duplicate(by_key[key.id()].event.streams().to_vec()),
                }
            })
            .collect();
        if let Some(outbox) = outbox {
            mark_in(session, outbox.documents, items, &outcomes).await?;
        }
        Ok((outcomes, positions))
    }
}

/// An `_id` as a set key (BSON values do not hash): its canonical extended JSON.
fn id_key(id: &Bson) -> String {
    id.clone().into_canonical_extjson().to_string()
}

/// Which of the items' outbox documents are marked (published or failed) already.
async fn marked_in(
    session: &mut ClientSession,
    documents: &Collection<Document>,
    items: &[Item],
) -> mongodb::error::Result<HashSet<String>> {
    let ids: Vec<&Bson> = items.iter().filter_map(|i| i.outbox_id.as_ref()).collect();
    let mut marked = HashSet::new();
    if ids.is_empty() {
        return Ok(marked);
    }
    let mut cursor = documents
        .find(doc! {
            "_id": { "$in": ids },
            "$or": [ { "published_at": { "$exists": true } }, { "failed": { "$exists": true } } ],
        })
        .projection(doc! { "_id": 1 })
        .session(&mut *session)
        .await?;
    while let Some(document) = cursor.next(&mut *session).await {
        if let Some(id) = document?.get("_id") {
            marked.insert(id_key(id));
        }
    }
    Ok(marked)
}

/// Marks each item's outbox document published: when, where (the first history channel's
/// offset and epoch), and whether it was a repeat of its key.
async fn mark_in(
    session: &mut ClientSession,
    documents: &Collection<Document>,
    items: &[Item],
    outcomes: &[Outcome],
) -> mongodb::error::Result<()> {
    let now = DateTime::now();
    let mut updates = Vec::new();
    for (item, outcome) in items.iter().zip(outcomes) {
        let Some(id) = &item.outbox_id else { continue };
        let (streams, duplicate) = match outcome {
            Outcome::Published(streams) => (streams, false),
            Outcome::Duplicate(streams) => (streams, true),
            Outcome::AlreadyMarked => continue,
        };
        let mut set = doc! { "published_at": now };
        if let Some(first) = streams.first() {
            set.insert("offset", i64::try_from(first.offset).unwrap_or(i64::MAX));
            set.insert("epoch", first.epoch.clone());
        }
        if duplicate {
            set.insert("duplicate", true);
        }
        updates.push(doc! { "q": { "_id": id.clone() }, "u": { "$set": set } });
    }
    // One command for the whole batch: a statement per document.
    crate::db::update_in(session, documents, updates).await
}
