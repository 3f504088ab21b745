//! The node's one writer to `cluster_events`. One task numbers the node's events and writes
//! them in order, so the order of one node's events in the oplog, which every change stream
//! follows, is the order they were numbered in. Whatever queued up while a write was in
//! flight goes out as one ordered `insertMany`: one round trip for many events under load.

use std::sync::Arc;

use mongodb::Collection;
use tokio::sync::{mpsc, oneshot};

use super::{Command, EventDocument, NodeId, Sequencer};
use crate::db::{Bounds, Unavailable};
use crate::metrics::Metrics;

/// Commands that may wait for the writer; senders wait when it is full (backpressure).
pub const QUEUE: usize = 4096;
/// Most events per `insertMany`.
const MAX_BATCH: usize = 512;

pub struct Outgoing {
    pub command: Command,
    /// The broadcast's seq (or `None` for other events) once written.
    pub reply: oneshot::Sender<Result<Option<u64>, Unavailable>>,
}

pub struct Writer {
    pub events: Collection<EventDocument>,
    pub sequencer: Sequencer,
    pub node: NodeId,
    pub bounds: Bounds,
    pub metrics: Arc<Metrics>,
}

impl Writer {
    pub async fn run(mut self, mut queue: mpsc::Receiver<Outgoing>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let mut documents = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for Outgoing { command, reply } in batch.drain(..) {
                let stamped = self.sequencer.stamp(command);
                replies.push((reply, stamped.seq));
                documents.push(EventDocument::new(&self.node, stamped));
            }
            let written = self
                .bounds
                .run("publish", self.events.insert_many(&documents).ordered(true))
                .await;
            match &written {
                Ok(_) => self
                    .metrics
                    .cluster_events_published
                    .inc_by(documents.len() as u64),
                // The numbers are spent either way: a seq gap marks a broadcast that was
                // refused (or, if the write landed after all, one the client may still get).
                Err(e) => log::warn!("writing {} cluster events: {e}", documents.len()),
            }
            for (reply, seq) in replies {
                let _ = reply.send(match &written {
                    Ok(_) => Ok(seq),
                    Err(e) => Err(Unavailable(e.0.clone())),
                });
            }
        }
    }
}
