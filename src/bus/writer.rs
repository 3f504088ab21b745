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

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use mongodb::Collection;
use mongodb::options::{ReadConcern, WriteConcern};
use tokio::sync::{mpsc, oneshot};

use super::{Command, EventDocument, NodeId, Sequencer, StreamPublication};
use crate::bus::Event;
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};
use crate::metrics::Metrics;
use crate::store::{Append, MongoHistory, StaleHistory};

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

impl Writer {
    pub async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let mut documents = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            let mut appends: Vec<Appends> = Vec::new();
            let mut by_channel: HashMap<String, usize> = HashMap::new();
            for Outgoing { command, reply } in batch.drain(..) {
                let options = command.history_options();
                let stamped = self.sequencer.stamp(command);
                for (s, (stream, options)) in
                    stamped.event.streams().iter().zip(options).enumerate()
                {
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
            let written = if appends.is_empty() {
                self.bounds
                    .run("publish", self.events.insert_many(&documents).ordered(true))
                    .await
                    .map(|_| documents)
            } else {
                self.bounds
                    .run(
                        "publish_history",
                        self.write_with_history(documents, appends),
                    )
                    .await
            };
            match &written {
                Ok(documents) => self
                    .metrics
                    .cluster_events_published
                    .inc_by(documents.len() as u64),
                // The numbers are spent either way: a seq gap marks a broadcast that was
                // refused (or, if the write landed after all, one the client may still get).
                Err(e) => log::warn!("writing {} cluster events: {e}", replies.len()),
            }
            match written {
                Ok(documents) => {
                    for ((reply, seq), document) in replies.into_iter().zip(documents) {
                        let streams = document.event.streams().to_vec();
                        let _ = reply.send(Ok(Written { seq, streams }));
                    }
                }
                Err(e) => {
                    for (reply, _) in replies {
                        let _ = reply.send(Err(Unavailable(e.0.clone())));
                    }
                }
            }
        }
    }

    /// Appends to each history channel and inserts the events, offsets filled in, in one
    /// transaction (retried whole by the driver when it conflicts with another node's, and
    /// once more here, from a fresh read, when a channel's position this node remembered had
    /// moved).
    async fn write_with_history(
        &self,
        documents: Vec<EventDocument>,
        appends: Vec<Appends>,
    ) -> mongodb::error::Result<Vec<EventDocument>> {
        let mut context = (
            Arc::clone(&self.history),
            self.events.clone(),
            documents,
            appends,
            true,
            Vec::new(),
        );
        loop {
            let mut session = self.events.client().start_session().await?;
            let written = session
                .start_transaction()
                .read_concern(ReadConcern::snapshot())
                .write_concern(WriteConcern::majority())
                .and_run(&mut context, |session, context| {
                    let (history, events, documents, appends, trust_known, appended) =
                        &mut **context;
                    async move {
                        let mut numbered = documents.clone();
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
                        *appended = history.append(session, &batch, *trust_known).await?;
                        for (append, after) in appends.iter().zip(appended.iter()) {
                            let first = after.top.offset + 1 - append.places.len() as u64;
                            for (&(d, s), offset) in append.places.iter().zip(first..) {
                                if let Event::Publications { streams, .. } = &mut numbered[d].event
                                {
                                    streams[s].offset = offset;
                                    streams[s].epoch = after.top.epoch.clone();
                                }
                            }
                        }
                        events
                            .insert_many(&numbered)
                            .ordered(true)
                            .session(&mut *session)
                            .await?;
                        Ok(numbered)
                    }
                    .boxed()
                })
                .await;
            let (history, _, _, appends, trust_known, appended) = &mut context;
            match written {
                Ok(numbered) => {
                    let channels = appends.iter().map(|a| a.channel.as_str());
                    history.remember(channels.zip(appended.drain(..)));
                    return Ok(numbered);
                }
                Err(e) if *trust_known && e.get_custom::<StaleHistory>().is_some() => {
                    *trust_known = false;
                }
                Err(e) => return Err(e),
            }
        }
    }
}
