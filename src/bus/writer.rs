//! The node's one writer to MongoDB. One task numbers the node's events and writes them in
//! order, so the order of one node's events in the oplog, which every change stream follows,
//! is the order they were numbered in. Whatever queued up while a write was in flight goes
//! out together: one round trip for many events under load.
//!
//! A batch's publications into history channels are appended to the channels' histories
//! (one `update` command for all of them, see [`MongoHistory::append`]); every node delivers
//! them from the history's change events. Its other events, and the publications' channels
//! without history, go to `cluster_events` in one ordered `insertMany`. The two writes go out
//! at once; the next batch waits for both, so a node's events and each channel's appends
//! reach the oplog in order.
//!
//! Publications with an idempotency key (`super::once`) go out in runs of their own, each run
//! one transaction: the keys' records are read, the publications whose key has none are
//! written, and their keys' records with them. The commands before a run are written before
//! it and those after it after, so the node's order holds.

use std::borrow::Cow;
use std::sync::Arc;

use mongodb::Database;
use tokio::sync::{mpsc, oneshot};

use super::batch::{Appends, appends_of, for_cluster_events, gather_appends, place};
use super::once::IdempotencyKey;
use super::transaction::{Item, Outcome, Stores, TransactionError};
use super::{Command, EventDocument, NodeId, Sequencer, StreamPublication};
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};
use crate::metrics::Metrics;
use crate::store::cluster_events::ClusterEvents;
use crate::store::publish_keys::PublishKeys;
use crate::store::{MongoHistory, StreamTop};

/// Commands that may wait for the writer; senders wait when it is full (backpressure).
pub const QUEUE: usize = 4096;
/// Most events per batch.
const MAX_BATCH: usize = 512;

/// What the writer answers once a command's event is written.
#[derive(Debug)]
pub struct Written {
    /// A broadcast's seq.
    pub seq: Option<u64>,
    /// A publication's offsets and epochs in its history channels.
    pub streams: Vec<StreamPublication>,
    /// A keyed publication whose key was used within its window: nothing was written, and
    /// `streams` are the first publication's.
    pub duplicate: bool,
}

pub struct Outgoing {
    pub command: Command,
    /// Publish only if this key has no record (publications only).
    pub key: Option<IdempotencyKey>,
    pub reply: oneshot::Sender<Result<Written, Unavailable>>,
}

type Replies = Vec<(oneshot::Sender<Result<Written, Unavailable>>, Option<u64>)>;

pub struct Writer {
    pub db: Database,
    pub events: ClusterEvents<EventDocument>,
    pub keys: PublishKeys,
    pub history: Arc<MongoHistory>,
    pub sequencer: Sequencer,
    pub node: NodeId,
    pub bounds: Bounds,
    pub metrics: Arc<Metrics>,
}

/// A batch of numbered events, with each history channel's share of it.
struct Batch {
    documents: Vec<EventDocument>,
    /// The history options of each document's streams.
    options: Vec<Vec<HistoryOptions>>,
    appends: Vec<Appends>,
    replies: Replies,
}

impl Writer {
    pub async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let mut incoming = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut incoming, MAX_BATCH).await > 0 {
            let mut rest = incoming.drain(..).peekable();
            while let Some(next) = rest.peek() {
                let keyed = next.key.is_some();
                let mut run = Vec::new();
                while let Some(command) = rest.next_if(|c| c.key.is_some() == keyed) {
                    run.push(command);
                }
                if keyed {
                    self.write_once(run).await;
                } else {
                    self.write(run).await;
                }
            }
        }
    }

    /// Writes a run of commands without keys.
    async fn write(&mut self, run: Vec<Outgoing>) {
        let Batch {
            mut documents,
            appends,
            replies,
            ..
        } = self.number(run.into_iter());
        let stored: Vec<Cow<EventDocument>> =
            documents.iter().filter_map(for_cluster_events).collect();
        let (appended, inserted) =
            tokio::join!(self.append(&documents, &appends), self.insert(&stored));
        let written = appended.and_then(|placed| {
            inserted?;
            place(&mut documents, &appends, placed);
            Ok(documents)
        });
        answer(&self.metrics, replies, written);
    }

    /// Appends the batch's publications to their history channels.
    async fn append(
        &self,
        documents: &[EventDocument],
        appends: &[Appends],
    ) -> Result<Vec<Vec<StreamTop>>, Unavailable> {
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let appends = appends_of(documents, appends);
        self.bounds
            .run("publish_history", self.history.append(&appends))
            .await
    }

    /// Writes a run of keyed publications in one transaction, each only if its key has no
    /// record, with the records of those it writes (`transaction.rs`); answers every one.
    async fn write_once(&mut self, run: Vec<Outgoing>) {
        let mut keys = Vec::with_capacity(run.len());
        let mut outgoing = Vec::with_capacity(run.len());
        for Outgoing {
            command,
            key,
            reply,
        } in run
        {
            keys.push(key);
            outgoing.push(Outgoing {
                command,
                key: None,
                reply,
            });
        }
        // Numbered once: an attempt that fails wrote nothing, and the next writes the same
        // documents (or, if a commit did land after all, finds their keys recorded).
        let Batch {
            documents,
            options,
            replies,
            ..
        } = self.number(outgoing.into_iter());
        let items: Vec<Item> = documents
            .into_iter()
            .zip(options)
            .zip(keys)
            .map(|((document, options), key)| Item {
                document,
                options,
                key,
                outbox_id: None,
            })
            .collect();
        let stores = Stores {
            db: &self.db,
            events: &self.events,
            keys: &self.keys,
            history: &self.history,
        };
        let metrics = &self.metrics;
        let retried = || metrics.publish_transaction_retries.inc();
        let written = stores.write(&items, None, retried);
        let written = self
            .bounds
            .run("publish_once", async {
                written.await.map_err(|e| match e {
                    TransactionError::Mongo(e) => e,
                    other => mongodb::error::Error::custom(other.to_string()),
                })
            })
            .await;
        match written {
            Ok(outcomes) => {
                let published = outcomes
                    .iter()
                    .filter(|o| matches!(o, Outcome::Published(_)))
                    .count();
                self.metrics
                    .cluster_events_published
                    .inc_by(published as u64);
                for ((reply, seq), outcome) in replies.into_iter().zip(outcomes) {
                    let answer = match outcome {
                        Outcome::Published(streams) => Written {
                            seq,
                            streams,
                            duplicate: false,
                        },
                        Outcome::Duplicate(streams) => Written {
                            seq: None,
                            streams,
                            duplicate: true,
                        },
                        // Without an outbox nothing is marked.
                        Outcome::AlreadyMarked => Written {
                            seq: None,
                            streams: Vec::new(),
                            duplicate: true,
                        },
                    };
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) => {
                log::warn!("writing {} keyed publications: {e}", replies.len());
                for (reply, _) in replies {
                    let _ = reply.send(Err(Unavailable(e.0.clone())));
                }
            }
        }
    }

    async fn insert(&self, stored: &[Cow<'_, EventDocument>]) -> Result<(), Unavailable> {
        self.events.insert(stored.iter().map(AsRef::as_ref)).await
    }

    /// Numbers the commands' events, and gathers each history channel's share of them.
    fn number(&mut self, outgoing: impl Iterator<Item = Outgoing>) -> Batch {
        let mut documents = Vec::new();
        let mut options = Vec::new();
        let mut replies = Vec::new();
        for Outgoing { command, reply, .. } in outgoing {
            options.push(command.history_options());
            let stamped = self.sequencer.stamp(command);
            replies.push((reply, stamped.seq));
            documents.push(EventDocument::new(&self.node, stamped));
        }
        let appends = gather_appends(&documents, &options);
        Batch {
            documents,
            options,
            appends,
            replies,
        }
    }
}

/// Answers each command of a batch with what its event got, or the batch's error.
fn answer(metrics: &Metrics, replies: Replies, written: Result<Vec<EventDocument>, Unavailable>) {
    match written {
        Ok(documents) => {
            metrics
                .cluster_events_published
                .inc_by(documents.len() as u64);
            for ((reply, seq), document) in replies.into_iter().zip(documents) {
                let streams = document.event.streams().to_vec();
                let _ = reply.send(Ok(Written {
                    seq,
                    streams,
                    duplicate: false,
                }));
            }
        }
        Err(e) => {
            // The numbers are spent either way: a seq gap marks a broadcast that was
            // refused (or, if the write landed after all, one the client may still get).
            log::warn!("writing {} cluster events: {e}", replies.len());
            for (reply, _) in replies {
                let _ = reply.send(Err(Unavailable(e.0.clone())));
            }
        }
    }
}
