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

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Command, EventDocument, NodeId, Sequencer, StreamPublication};
use crate::bus::Event;
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};
use crate::metrics::Metrics;
use crate::store::cluster_events::ClusterEvents;
use crate::store::{Append, MongoHistory, StreamTop};

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
}

pub struct Outgoing {
    pub command: Command,
    pub reply: oneshot::Sender<Result<Written, Unavailable>>,
}

type Replies = Vec<(oneshot::Sender<Result<Written, Unavailable>>, Option<u64>)>;

pub struct Writer {
    pub events: ClusterEvents<EventDocument>,
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

impl Writer {
    pub async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let mut incoming = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut incoming, MAX_BATCH).await > 0 {
            let Batch {
                mut documents,
                appends,
                replies,
            } = self.number(incoming.drain(..));
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
        let appends: Vec<Append> = appends
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
        self.bounds
            .run("publish_history", self.history.append(&appends))
            .await
    }

    async fn insert(&self, stored: &[Cow<'_, EventDocument>]) -> Result<(), Unavailable> {
        self.events.insert(stored.iter().map(AsRef::as_ref)).await
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
