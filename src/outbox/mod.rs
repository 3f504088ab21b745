//! The transactional outbox (docs/PROTOCOL.md, "Publishing from the database"): the app
//! inserts a document into its outbox collection, in the same transaction as its own data or
//! not, and the gateway publishes it, once, in the order of the inserts' commits.
//!
//! One node at a time consumes an outbox: the one holding its lease (`outbox_leases`, taken
//! over when its holder stops renewing it, within three heartbeats). The holder follows the
//! outbox's change stream and writes each batch of documents in one transaction
//! (`bus::transaction`): their publications, their marks (`published_at`, the offset and
//! epoch), their keys' records, and the stream's resume token in the lease, which the
//! transaction also checks is still this node's. So exactly once rests on three things: the
//! transaction commits a document's publication and its mark together or not at all; a
//! marked document is never published again (each transaction re-reads the marks); and a
//! consumer that lost its lease cannot commit. Order rests on one consumer at a time
//! following the change stream, which lists inserts in commit order.
//!
//! The consumer publishes as a publisher of its own (`<node id>.outbox`), with its own event
//! numbers, so that its events and its node's never collide.

mod document;

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, DateTime, Document, doc};
use futures_util::TryStreamExt;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::{Error, ErrorKind};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database, IndexModel};
use tokio::sync::mpsc;

pub use document::Failure;

use crate::bus::transaction::{Item, OutboxWrite, Outcome, Stores, TransactionError};
use crate::bus::{EventDocument, NodeId, Sequencer};
use crate::channels::Namespaces;
use crate::db::collections::OUTBOX_LEASES;
use crate::metrics::Metrics;
use crate::store::MongoHistory;
use crate::store::cluster_events::ClusterEvents;
use crate::store::publish_keys::PublishKeys;

/// Most documents one transaction publishes.
const MAX_BATCH: usize = 256;
/// Server error codes meaning the resume point is gone for good.
const HISTORY_LOST_CODES: [i32; 3] = [286, 280, 260];

/// Where the outbox is and how the consumer behaves.
pub struct OutboxSettings {
    /// The outbox collection (OUTBOX_COLLECTION).
    pub collection: String,
    /// Its database (OUTBOX_DATABASE, default the gateway's).
    pub database: String,
    /// How long marked documents are kept (OUTBOX_RETENTION_SECS).
    pub retention: Duration,
    /// The node's heartbeat: the lease is renewed this often and lasts two of them.
    pub heartbeat: Duration,
    pub idempotency_window: Duration,
    pub namespaces: Namespaces,
}

pub struct Outbox {
    settings: OutboxSettings,
    /// The gateway's database: history, cluster events, keys, the lease.
    db: Database,
    documents: Collection<Document>,
    leases: Collection<Document>,
    events: ClusterEvents<EventDocument>,
    keys: PublishKeys,
    history: Arc<MongoHistory>,
    node: NodeId,
    /// This consumer as a publisher.
    publisher: NodeId,
    sequencer: Sequencer,
    metrics: Arc<Metrics>,
}

/// Why consuming stopped.
#[derive(Debug, thiserror::Error)]
enum Stop {
    #[error("the lease went to another node")]
    LeaseLost,
    #[error("{0}")]
    Mongo(#[from] Error),
}

impl From<TransactionError> for Stop {
    fn from(e: TransactionError) -> Self {
        match e {
            TransactionError::LeaseLost => Stop::LeaseLost,
            TransactionError::Mongo(e) => Stop::Mongo(e),
        }
    }
}

impl Outbox {
    pub fn new(
        settings: OutboxSettings,
        db: &Database,
        bounds: crate::db::Bounds,
        node: NodeId,
        metrics: Arc<Metrics>,
    ) -> Self {
        // A history of its own: its known positions are its own, and every append it makes
        // is checked against the stored position anyway.
        let history = Arc::new(MongoHistory::new(db, bounds.clone()));
        let outbox_db = db.client().database(&settings.database);
        let publisher = NodeId::from(format!("{node}.outbox").as_str());
        Outbox {
            documents: outbox_db.collection(&settings.collection),
            leases: db.collection(OUTBOX_LEASES),
            events: ClusterEvents::new(db, bounds),
            keys: PublishKeys::new(db),
            history,
            sequencer: Sequencer::new(publisher.clone()),
            publisher,
            node,
            db: db.clone(),
            settings,
            metrics,
        }
    }

    /// The lease's `_id`: the outbox's namespace.
    fn lease_id(&self) -> String {
        format!("{}.{}", self.settings.database, self.settings.collection)
    }

    /// Takes the lease when it is free, consumes while it holds it, and tries again every
    /// heartbeat, for the life of the process.
    pub async fn run(mut self) {
        if let Err(e) = self.ensure_indexes().await {
            log::warn!("outbox: making its TTL indexes: {e}");
        }
        loop {
            match self.acquire().await {
                Ok(true) => {
                    log::info!("outbox {}: this node consumes it", self.lease_id());
                    self.metrics.outbox_lease_held.set(1);
                    let restarts = self.metrics.bus_restarts.with_label_values(&["outbox"]);
                    match self.consume().await {
                        Err(Stop::LeaseLost) => {
                            log::info!("outbox {}: the lease went to another node", self.lease_id())
                        }
                        Err(Stop::Mongo(e)) => {
                            log::warn!("outbox {}: {e}", self.lease_id());
                            restarts.inc();
                        }
                        // The stream ended (the collection was dropped, say).
                        Ok(()) => restarts.inc(),
                    }
                    self.metrics.outbox_lease_held.set(0);
                    self.stream_up(false);
                }
                Ok(false) => {
                    // The stream is another node's: this one has none to report on.
                    let _ = self.metrics.bus_up.remove_label_values(&["outbox"]);
                }
                Err(e) => log::debug!("outbox: taking the lease: {e}"),
            }
            tokio::time::sleep(self.settings.heartbeat).await;
        }
    }

    /// Marked documents are removed `retention` after they were marked.
    async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let ttl = |field: &str| {
            IndexModel::builder()
                .keys(doc! { field: 1 })
                .options(
                    IndexOptions::builder()
                        .name(format!("{field}_ttl"))
                        .expire_after(self.settings.retention)
                        .build(),
                )
                .build()
        };
        let created = self
            .documents
            .create_indexes([ttl("published_at"), ttl("failed_at")])
            .await;
        // An index made with another OUTBOX_RETENTION_SECS conflicts: its expiry is changed
        // in place, as the migrations do for the gateway's own TTL indexes.
        let indexes: Vec<IndexModel> = self.documents.list_indexes().await?.try_collect().await?;
        let wanted = self.settings.retention.as_secs();
        for field in ["published_at", "failed_at"] {
            let name = format!("{field}_ttl");
            let current = indexes
                .iter()
                .find(|i| i.options.as_ref().and_then(|o| o.name.as_deref()) == Some(name.as_str()))
                .and_then(|i| i.options.as_ref()?.expire_after)
                .map(|d| d.as_secs());
            if current.is_some_and(|current| current != wanted) {
                let collection = self.documents.name();
                self.documents
                    .client()
                    .database(&self.settings.database)
                    .run_command(doc! {
                        "collMod": collection,
                        "index": { "name": &name, "expireAfterSeconds": wanted as i64 },
                    })
                    .await?;
                log::info!(
                    "outbox {}: {name} now expires after {wanted} s",
                    self.lease_id()
                );
            }
        }
        match created {
            Err(e) if !index_options_conflict(&e) => Err(e),
            _ => Ok(()),
        }
    }

    fn lease_for(&self) -> DateTime {
        let millis = i64::try_from(self.settings.heartbeat.as_millis() * 2).unwrap_or(i64::MAX);
        DateTime::from_millis(DateTime::now().timestamp_millis().saturating_add(millis))
    }

    /// Takes or renews the lease: true while this node holds it.
    async fn acquire(&self) -> mongodb::error::Result<bool> {
        let now = DateTime::now();
        let taken = self
            .leases
            .update_one(
                doc! { "_id": self.lease_id(), "$or": [
                    { "holder": self.node.as_str() },
                    { "expires_at": { "$lt": now } },
                ] },
                doc! { "$set": { "holder": self.node.as_str(), "expires_at": self.lease_for() } },
            )
            .upsert(true)
            .await;
        match taken {
            Ok(_) => Ok(true),
            // Held by another node: the upsert found the `_id` taken.
            Err(e) if duplicate_key(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Follows the outbox while this node holds the lease.
    async fn consume(&mut self) -> Result<(), Stop> {
        let lease = self
            .leases
            .find_one(doc! { "_id": self.lease_id() })
            .await?;
        let token: Option<ResumeToken> = lease
            .as_ref()
            .and_then(|l| l.get("resume_token"))
            .and_then(|t| bson::from_bson(t.clone()).ok());
        let resumed = token.is_some();
        let stream = match self.open(token).await {
            Ok(stream) => stream,
            Err(e) if history_lost(&e) => {
                self.metrics
                    .bus_history_lost
                    .with_label_values(&["outbox"])
                    .inc();
                log::warn!(
                    "outbox {}: its change stream cannot resume ({e}); publishing the \
                     documents still unmarked, in _id order, then going on",
                    self.lease_id()
                );
                let stream = self.open(None).await?;
                self.catch_up().await?;
                stream
            }
            Err(e) => return Err(e.into()),
        };
        if !resumed {
            // First start (or a new outbox): documents inserted before the stream existed.
            self.catch_up().await?;
        }
        self.stream_up(true);
        // The stream is read on a task of its own, so the next events arrive while a batch's
        // transaction runs, and a batch is whatever has arrived: no wait for more.
        let (events, mut arrived) = mpsc::channel(MAX_BATCH * 4);
        // Held for its drop: the reader ends with this consumer.
        let _reader = AbortOnDrop(tokio::spawn(read_stream(stream, events)));
        let mut lag_noted = std::time::Instant::now();
        self.note_lag().await;
        loop {
            if lag_noted.elapsed() >= self.settings.heartbeat {
                lag_noted = std::time::Instant::now();
                self.note_lag().await;
            }
            let first = tokio::time::timeout(self.settings.heartbeat, arrived.recv()).await;
            let mut batch = match first {
                Err(_) => {
                    if !self.acquire().await? {
                        return Err(Stop::LeaseLost);
                    }
                    continue;
                }
                Ok(Some(Ok(event))) => vec![event],
                Ok(Some(Err(e))) => return Err(e.into()),
                // The stream ended (the collection was dropped, say): start over.
                Ok(None) => return Ok(()),
            };
            while batch.len() < MAX_BATCH {
                match arrived.try_recv() {
                    Ok(Ok(event)) => batch.push(event),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => break,
                }
            }
            // Each event's id is the resume token just past it.
            let progress = batch.last().and_then(|event| bson::to_bson(&event.id).ok());
            let documents: Vec<Document> =
                batch.into_iter().filter_map(|e| e.full_document).collect();
            self.publish(documents, progress).await?;
        }
    }

    /// `ticketgate_bus_up{stream="outbox"}`: whether this lease holder's stream is open.
    fn stream_up(&self, up: bool) {
        self.metrics
            .bus_up
            .with_label_values(&["outbox"])
            .set(i64::from(up));
    }

    /// The outbox's inserts, after `token` (from now without one).
    async fn open(&self, token: Option<ResumeToken>) -> mongodb::error::Result<OutboxStream> {
        let watch = self
            .documents
            .watch()
            .pipeline([doc! { "$match": { "operationType": "insert" } }])
            .max_await_time(Duration::from_millis(500));
        match token {
            // start_after, not resume_after: it also resumes past an invalidate.
            Some(token) => watch.start_after(token).await,
            None => watch.await,
        }
    }

    /// Publishes the documents still unmarked, in `_id` order.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        loop {
            let unmarked: Vec<Document> = self
                .documents
                .find(unmarked())
                .sort(doc! { "_id": 1 })
                .limit(MAX_BATCH as i64)
                .await?
                .try_collect()
                .await?;
            if unmarked.is_empty() {
                return Ok(());
            }
            log::info!(
                "outbox {}: publishing {} unmarked documents",
                self.lease_id(),
                unmarked.len()
            );
            self.publish(unmarked, None).await?;
        }
    }

    /// Publishes a batch in one transaction (the failed documents marked first), and records
    /// `token` (where the stream stands after it) in the lease.
    async fn publish(&mut self, documents: Vec<Document>, token: Option<Bson>) -> Result<(), Stop> {
        let mut items = Vec::with_capacity(documents.len());
        for document in &documents {
            let Some(id) = document.get("_id").cloned() else {
                continue;
            };
            match document::read(
                document,
                &self.settings.namespaces,
                self.settings.idempotency_window,
            ) {
                Ok(publication) => {
                    let options = publication.command.history_options();
                    let stamped = self.sequencer.stamp(publication.command);
                    items.push(Item {
                        document: EventDocument::new(&self.publisher, stamped),
                        options,
                        key: publication.key,
                        outbox_id: Some(id),
                    });
                }
                Err(failure) => self.fail(&id, failure).await?,
            }
        }
        let mut progress = doc! { "expires_at": self.lease_for() };
        if let Some(token) = token {
            progress.insert("resume_token", token);
        }
        let lease = self.lease_id();
        let outbox = OutboxWrite {
            documents: &self.documents,
            leases: &self.leases,
            lease: &lease,
            holder: self.node.as_str(),
            progress,
        };
        let stores = Stores {
            db: &self.db,
            events: &self.events,
            keys: &self.keys,
            history: &self.history,
        };
        let metrics = &self.metrics;
        let outcomes = stores
            .write(&items, Some(&outbox), || {
                metrics.publish_transaction_retries.inc()
            })
            .await?;
        let published = outcomes
            .iter()
            .filter(|o| !matches!(o, Outcome::AlreadyMarked))
            .count();
        self.metrics
            .outbox_documents
            .with_label_values(&["published"])
            .inc_by(published as u64);
        Ok(())
    }

    /// Marks a document that can never be published, so that it blocks nothing after it.
    async fn fail(&self, id: &Bson, failure: Failure) -> mongodb::error::Result<()> {
        log::warn!(
            "outbox {}: document {id} cannot be published: {}",
            self.lease_id(),
            failure.code()
        );
        self.metrics
            .outbox_documents
            .with_label_values(&["failed"])
            .inc();
        let mut filter = unmarked();
        filter.insert("_id", id.clone());
        self.documents
            .update_one(
                filter,
                doc! { "$set": { "failed": failure.code(), "failed_at": DateTime::now() } },
            )
            .await
            .map(drop)
    }

    /// The age of the oldest unmarked document (by its ObjectId), as the lag gauge.
    async fn note_lag(&self) {
        let oldest = self
            .documents
            .find_one(unmarked())
            .sort(doc! { "_id": 1 })
            .projection(doc! { "_id": 1 })
            .await;
        let age = match oldest {
            Ok(Some(document)) => match document.get("_id") {
                Some(Bson::ObjectId(id)) => {
                    let at = id.timestamp().timestamp_millis();
                    (DateTime::now().timestamp_millis() - at).max(0) as f64 / 1000.0
                }
                _ => 0.0,
            },
            _ => 0.0,
        };
        self.metrics.outbox_lag_seconds.set(age);
    }
}

type OutboxStream = ChangeStream<ChangeStreamEvent<Document>>;
type Arrived = Result<ChangeStreamEvent<Document>, Error>;

/// Hands the stream's events over until the stream ends or fails, or nobody takes them.
async fn read_stream(mut stream: OutboxStream, events: mpsc::Sender<Arrived>) {
    loop {
        let next = match stream.try_next().await {
            Ok(Some(event)) => Ok(event),
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = next.is_err();
        if events.send(next).await.is_err() || failed {
            return;
        }
    }
}

/// A task that ends with its handle.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Documents neither published nor failed.
fn unmarked() -> Document {
    doc! { "published_at": { "$exists": false }, "failed": { "$exists": false } }
}

fn history_lost(e: &Error) -> bool {
    matches!(&*e.kind, ErrorKind::Command(c) if HISTORY_LOST_CODES.contains(&c.code))
}

fn index_options_conflict(e: &Error) -> bool {
    matches!(&*e.kind, ErrorKind::Command(c) if c.code == 85 || c.code == 86)
}

fn duplicate_key(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}
