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
use std::collections::HashMap;
use std::sync::Arc;

use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{ClientSession, Database};
use tokio::sync::{mpsc, oneshot};

use super::once::IdempotencyKey;
use super::{Command, EventDocument, NodeId, Sequencer, StreamPublication};
use crate::bus::Event;
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};
use crate::metrics::Metrics;
use crate::store::cluster_events::ClusterEvents;
use crate::store::publish_keys::{KeyRecord, PublishKeys};
use crate::store::{Append, Appended, MongoHistory, StreamTop};

/// Commands that may wait for the writer; senders wait when it is full (backpressure).
pub const QUEUE: usize = 4096;
/// Most events per batch.
const MAX_BATCH: usize = 512;
/// How often a run of keyed publications is tried again when its transaction fails (another
/// node appended to one of its channels, or wrote one of its keys, meanwhile).
const MAX_TRANSACTION_ATTEMPTS: usize = 8;

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

/// One history channel's share of a batch: where its publications sit, in batch order.
struct Appends {
    channel: String,
    options: HistoryOptions,
    /// (document index, stream index within the document).
    places: Vec<(usize, usize)>,
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
    /// record, with the records of those it writes; answers every one.
    async fn write_once(&mut self, run: Vec<Outgoing>) {
        let mut keys = Vec::with_capacity(run.len());
        let mut outgoing = Vec::with_capacity(run.len());
        for Outgoing {
            command,
            key,
            reply,
        } in run
        {
            keys.push(key.expect("a run of keyed commands"));
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
        let bounds = self.bounds.clone();
        let attempts = async {
            let mut last = None;
            for _ in 0..MAX_TRANSACTION_ATTEMPTS {
                match self.transact(&keys, &documents, &options).await {
                    Ok(answers) => return Ok(answers),
                    Err(e) => {
                        self.metrics.publish_transaction_retries.inc();
                        last = Some(e);
                    }
                }
            }
            Err(last.expect("at least one attempt"))
        };
        match bounds.run("publish_once", attempts).await {
            Ok(answers) => {
                let written = answers.iter().filter(|a| !a.duplicate).count();
                self.metrics.cluster_events_published.inc_by(written as u64);
                for ((reply, seq), mut answer) in replies.into_iter().zip(answers) {
                    if !answer.duplicate {
                        answer.seq = seq;
                    }
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

    /// One attempt at a run of keyed publications: one transaction.
    async fn transact(
        &self,
        keys: &[IdempotencyKey],
        documents: &[EventDocument],
        options: &[Vec<HistoryOptions>],
    ) -> mongodb::error::Result<Vec<Written>> {
        let mut session = self.db.client().start_session().await?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await?;
        let result = self
            .transact_in(&mut session, keys, documents, options)
            .await;
        let (answers, positions) = match result {
            Ok(done) => done,
            Err(e) => {
                let _ = session.abort_transaction().await;
                self.history.forget(
                    documents
                        .iter()
                        .flat_map(|d| d.event.streams())
                        .map(|s| s.channel.as_str()),
                );
                return Err(e);
            }
        };
        if let Err(e) = session.commit_transaction().await {
            self.history
                .forget(positions.iter().map(|(channel, _)| channel.as_str()));
            return Err(e);
        }
        self.history
            .remember(positions.iter().map(|(c, p)| (c.as_str(), p.clone())));
        Ok(answers)
    }

    async fn transact_in(
        &self,
        session: &mut ClientSession,
        keys: &[IdempotencyKey],
        documents: &[EventDocument],
        options: &[Vec<HistoryOptions>],
    ) -> mongodb::error::Result<(Vec<Written>, Vec<(String, Appended)>)> {
        let ids: Vec<&str> = keys.iter().map(IdempotencyKey::id).collect();
        let recorded = self.keys.find_in(session, &ids).await?;
        // Which to write: the first of each key without a record.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut chosen = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            if !recorded.contains_key(key.id()) && !first_of.contains_key(key.id()) {
                first_of.insert(key.id(), i);
                chosen.push(i);
            }
        }
        let mut written: Vec<EventDocument> =
            chosen.iter().map(|&i| documents[i].clone()).collect();
        let written_options: Vec<Vec<HistoryOptions>> =
            chosen.iter().map(|&i| options[i].clone()).collect();
        let appends = gather_appends(&written, &written_options);
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
            .map(|(&i, document)| KeyRecord {
                id: keys[i].id(),
                streams: document.event.streams(),
                window: keys[i].window(),
            })
            .collect();
        self.keys.record_in(session, &records).await?;
        let by_key: HashMap<&str, &EventDocument> = chosen
            .iter()
            .zip(&written)
            .map(|(&i, document)| (keys[i].id(), document))
            .collect();
        let answers = keys
            .iter()
            .enumerate()
            .map(|(i, key)| match recorded.get(key.id()) {
                Some(streams) => Written {
                    seq: None,
                    streams: streams.clone(),
                    duplicate: true,
                },
                None => Written {
                    seq: None,
                    streams: by_key[key.id()].event.streams().to_vec(),
                    duplicate: first_of[key.id()] != i,
                },
            })
            .collect();
        Ok((answers, positions))
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

/// Each history channel's share of `documents` (whose streams have `options`), in order.
fn gather_appends(documents: &[EventDocument], options: &[Vec<HistoryOptions>]) -> Vec<Appends> {
    let mut appends: Vec<Appends> = Vec::new();
    let mut by_channel: HashMap<&str, usize> = HashMap::new();
    for (d, (document, options)) in documents.iter().zip(options).enumerate() {
        for (s, (stream, options)) in document.event.streams().iter().zip(options).enumerate() {
            let index = *by_channel.entry(&stream.channel).or_insert_with(|| {
                appends.push(Appends {
                    channel: stream.channel.clone(),
                    options: *options,
                    places: Vec::new(),
                });
                appends.len() - 1
            });
            appends[index].places.push((d, s));
        }
    }
    appends
}

/// The history appends of `appends`, with the data of `documents`.
fn appends_of<'a>(documents: &'a [EventDocument], appends: &'a [Appends]) -> Vec<Append<'a>> {
    appends
        .iter()
        .map(|append| Append {
            channel: &append.channel,
            options: append.options,
            data: append
                .places
                .iter()
                .map(|&(d, _)| match &documents[d].event {
                    Event::Publications { data, .. } => data.as_str(),
                    _ => "null",
                })
                .collect(),
        })
        .collect()
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

/// What of an event goes to `cluster_events`: all but a publication's history channels,
/// which their histories' change events carry. A publication only into history channels has
/// nothing left.
fn for_cluster_events(document: &EventDocument) -> Option<Cow<'_, EventDocument>> {
    match &document.event {
        Event::Publications { channels, data, .. } if !document.event.streams().is_empty() => {
            if channels.is_empty() {
                return None;
            }
            let plain = EventDocument {
                event: Event::Publications {
                    channels: channels.clone(),
                    streams: Vec::new(),
                    data: data.clone(),
                },
                id: document.id,
                node: document.node.clone(),
                n: document.n,
                created_at: document.created_at,
            };
            Some(Cow::Owned(plain))
        }
        _ => Some(Cow::Borrowed(document)),
    }
}

/// Fills in each publication's offset and epoch in its history channels.
fn place(documents: &mut [EventDocument], appends: &[Appends], placed: Vec<Vec<StreamTop>>) {
    for (append, tops) in appends.iter().zip(placed) {
        for (&(d, s), top) in append.places.iter().zip(tops) {
            if let Event::Publications { streams, .. } = &mut documents[d].event {
                streams[s].offset = top.offset;
                streams[s].epoch = top.epoch;
            }
        }
    }
}
