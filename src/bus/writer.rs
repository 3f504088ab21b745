//! The node's one writer to `cluster_events`. One task numbers the node's events and writes
//! them in order, so the order of one node's events in the oplog, which every change stream
//! follows, is the order they were numbered in. Whatever queued up while a write was in
//! flight goes out as one ordered `insertMany`: one round trip for many events under load.
//!
//! A batch with publications into history channels is written in one transaction: for each
//! such channel, one update appends the batch's publications to its history and takes the
//! next offsets; then the events, offsets included, are inserted. Two nodes' transactions
//! that touch one channel conflict, and MongoDB lets the second commit only after the
//! first, so offsets are contiguous across nodes, and each channel's events reach the oplog
//! (and every change stream) in offset order.
//!
//! The commit is pipelined: while one batch's transaction commits (the journal is flushed for
//! write concern `majority`: about 40 % of a transaction at 1,000 publications/s), the next
//! batch's transaction makes its writes, if its channels differ from those being committed.
//! It commits only after the previous commit has returned, so the node's events still become
//! visible in the order of their numbers, which every node relies on to drop repeats.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Command, EventDocument, NodeId, Sequencer, StreamPublication};
use crate::bus::Event;
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};
use crate::metrics::Metrics;
use crate::store::{Append, Appended, MongoHistory, StaleHistory};

/// Commands that may wait for the writer; senders wait when it is full (backpressure).
pub const QUEUE: usize = 4096;
/// Most events per `insertMany`.
const MAX_BATCH: usize = 512;

/// What the writer answers once a command's event is written.
#[derive(Debug)]
pub struct Written {
    /// A broadcast's seq.
    pub seq: Option<u64>,
    /// A publication's offsets and epochs in its history channels.
    pub streams: Vec<StreamPublication>,
}

pub struct Outgoing {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Written, Unavailable>>,
}

type Replies = Vec<(oneshot::Sender<Result<Written, Unavailable>>, Option<u64>)>;

pub struct Writer {
    pub events: Collection<EventDocument>,
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
    appends: Vec<Appends>,
    replies: Replies,
}

/// A batch whose transaction has made its writes and waits for its turn to commit.
struct Prepared {
    session: ClientSession,
    numbered: Vec<EventDocument>,
    appended: Vec<Appended>,
}

/// The batch whose commit is in flight, and the history channels it writes.
struct Committing {
    channels: HashSet<String>,
    task: JoinHandle<()>,
}

/// What the writer's transactions need, shared with the task that commits a batch.
#[derive(Clone)]
struct Transactions {
    events: Collection<EventDocument>,
    history: Arc<MongoHistory>,
    bounds: Bounds,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let transactions = Transactions {
            events: self.events.clone(),
            history: Arc::clone(&self.history),
            bounds: self.bounds.clone(),
            metrics: Arc::clone(&self.metrics),
        };
        let mut incoming = Vec::with_capacity(MAX_BATCH);
        let mut committing: Option<Committing> = None;
        while queue.recv_many(&mut incoming, MAX_BATCH).await > 0 {
            let batch = self.number(incoming.drain(..));
            let overlaps = committing.as_ref().is_some_and(|c| {
                batch
                    .appends
                    .iter()
                    .any(|a| c.channels.contains(&a.channel))
            });
            // Events without history go out only after the commit in flight (their numbers
            // are higher), and so does a batch that shares a channel with it (its positions
            // there are known only once that commit is done).
            if batch.appends.is_empty() || overlaps {
                finish(&mut committing).await;
            }
            if batch.appends.is_empty() {
                let written = self
                    .bounds
                    .run(
                        "publish",
                        self.events.insert_many(&batch.documents).ordered(true),
                    )
                    .await
                    .map(|_| batch.documents);
                answer(&self.metrics, batch.replies, written);
                continue;
            }
            let prepared = self
                .bounds
                .run(
                    "publish_history",
                    transactions.prepare(&batch.documents, &batch.appends),
                )
                .await;
            finish(&mut committing).await;
            match prepared {
                Ok(prepared) => {
                    let channels = batch.appends.iter().map(|a| a.channel.clone()).collect();
                    let task = tokio::spawn(transactions.clone().commit(prepared, batch));
                    committing = Some(Committing { channels, task });
                }
                Err(e) => answer(&self.metrics, batch.replies, Err(e)),
            }
        }
        finish(&mut committing).await;
    }

    /// Numbers the commands' events, and gathers each history channel's share of them.
    fn number(&mut self, outgoing: impl Iterator<Item = Outgoing>) -> Batch {
        let mut documents = Vec::new();
        let mut replies = Vec::new();
        let mut appends: Vec<Appends> = Vec::new();
        let mut by_channel: HashMap<String, usize> = HashMap::new();
        for Outgoing { command, reply } in outgoing {
            let options = command.history_options();
            let stamped = self.sequencer.stamp(command);
            for (s, (stream, options)) in stamped.event.streams().iter().zip(options).enumerate() {
                let index = *by_channel.entry(stream.channel.clone()).or_insert_with(|| {
                    appends.push(Appends {
                        channel: stream.channel.clone(),
                        options,
                        places: Vec::new(),
                    });
                    appends.len() - 1
                });
                appends[index].places.push((documents.len(), s));
            }
            replies.push((reply, stamped.seq));
            documents.push(EventDocument::new(&self.node, stamped));
        }
        Batch {
            documents,
            appends,
            replies,
        }
    }
}

/// Waits until the commit in flight, if any, has answered its publishers.
async fn finish(committing: &mut Option<Committing>) {
    if let Some(Committing { task, .. }) = committing.take() {
        // A commit task that panicked has dropped its replies: its publishers get an error.
        let _ = task.await;
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
                let _ = reply.send(Ok(Written { seq, streams }));
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

impl Transactions {
    /// Commits a prepared batch and answers its publishers. A commit MongoDB refused as
    /// transient (nothing was written) is followed by the whole transaction once more.
    async fn commit(self, prepared: Prepared, batch: Batch) {
        let Batch {
            documents,
            appends,
            replies,
        } = batch;
        let written = self
            .bounds
            .run("publish_history_commit", async {
                let Prepared {
                    mut session,
                    numbered,
                    appended,
                } = prepared;
                match commit(&mut session).await {
                    Ok(()) => {
                        self.remember(&appends, appended);
                        Ok(numbered)
                    }
                    Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => {
                        self.write_whole(&documents, &appends).await
                    }
                    Err(e) => Err(e),
                }
            })
            .await;
        answer(&self.metrics, replies, written);
    }

    /// The transaction from start to commit, run again as long as MongoDB calls its failure
    /// transient (within the caller's bound).
    async fn write_whole(
        &self,
        documents: &[EventDocument],
        appends: &[Appends],
    ) -> mongodb::error::Result<Vec<EventDocument>> {
        loop {
            let Prepared {
                mut session,
                numbered,
                appended,
            } = self.prepare(documents, appends).await?;
            match commit(&mut session).await {
                Ok(()) => {
                    self.remember(appends, appended);
                    return Ok(numbered);
                }
                Err(e) if e.contains_label(TRANSIENT_TRANSACTION_ERROR) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a transaction and makes a batch's writes in it: appends to each history channel,
    /// then inserts the events, offsets filled in. Run again when it conflicts with another
    /// node's transaction (transient), and once more from a fresh read when a channel's
    /// position this node remembered had moved.
    async fn prepare(
        &self,
        documents: &[EventDocument],
        appends: &[Appends],
    ) -> mongodb::error::Result<Prepared> {
        let mut trust_known = true;
        loop {
            let mut session = self.events.client().start_session().await?;
            session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .await?;
            match self
                .writes(&mut session, documents, appends, trust_known)
                .await
            {
                Ok((numbered, appended)) => {
                    return Ok(Prepared {
                        session,
                        numbered,
                        appended,
                    });
                }
                Err(e) => {
                    let _ = session.abort_transaction().await;
                    if trust_known && e.get_custom::<StaleHistory>().is_some() {
                        trust_known = false;
                    } else if !e.contains_label(TRANSIENT_TRANSACTION_ERROR) {
                        return Err(e);
                    }
                }
            }
        }
    }

    async fn writes(
        &self,
        session: &mut ClientSession,
        documents: &[EventDocument],
        appends: &[Appends],
        trust_known: bool,
    ) -> mongodb::error::Result<(Vec<EventDocument>, Vec<Appended>)> {
        let batch: Vec<Append> = appends
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
            .collect();
        let appended = self.history.append(session, &batch, trust_known).await?;
        let mut numbered = documents.to_vec();
        for (append, after) in appends.iter().zip(appended.iter()) {
            let first = after.top.offset + 1 - append.places.len() as u64;
            for (&(d, s), offset) in append.places.iter().zip(first..) {
                if let Event::Publications { streams, .. } = &mut numbered[d].event {
                    streams[s].offset = offset;
                    streams[s].epoch = after.top.epoch.clone();
                }
            }
        }
        self.events
            .insert_many(&numbered)
            .ordered(true)
            .session(&mut *session)
            .await?;
        Ok((numbered, appended))
    }

    /// Records where a committed batch left each channel, so the next append there needs no
    /// read.
    fn remember(&self, appends: &[Appends], appended: Vec<Appended>) {
        let channels = appends.iter().map(|a| a.channel.as_str());
        self.history.remember(channels.zip(appended));
    }
}

/// Commits, asking again while MongoDB cannot tell whether the commit took effect (asking
/// again is safe: it commits at most once).
async fn commit(session: &mut ClientSession) -> mongodb::error::Result<()> {
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) => continue,
            done => return done,
        }
    }
}
