//! A node's own events with MongoDB: the [`Recorder`] writes them to `lifecycle_events` in
//! batches, and only then hands them to the [`OwnDelivery`], which posts them to the webhook
//! in order and notes in `lifecycle_streams` how far the webhook got, so that a survivor can
//! take over from there if this node dies.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::webhook::{Backoff, MAX_BATCH, MAX_WAITING, Webhook, gather};
use super::{Event, Fence, Finished};
use crate::metrics::Metrics;
use crate::store::lifecycle::{EventLog, Hold};

/// The most events written in one `insert_many`.
const MAX_RECORD_BATCH: usize = 1_000;
/// Written batches the delivery may have waiting; past that the recorder drops a batch from
/// memory and the delivery reads it back from MongoDB (see [`Shed`]).
pub const DELIVERY_QUEUE: usize = 16;
/// How often, at most, a node notes its delivery progress (a survivor may post again what
/// was delivered since: at least once).
const MARK_EVERY: Duration = Duration::from_secs(1);

pub struct Recorder {
    pub log: Arc<EventLog>,
    pub node: String,
    pub metrics: Arc<Metrics>,
    /// Where written events go next; `None` without a webhook (apps read MongoDB), and then
    /// being written is what finishes them.
    pub delivery: Option<(mpsc::Sender<Vec<Event>>, Shed)>,
    pub finished: Finished,
}

impl Recorder {
    /// Runs until every sender is gone (the process is ending).
    pub async fn run(self, mut queue: mpsc::Receiver<Event>) {
        let mut waiting: VecDeque<Event> = VecDeque::new();
        let mut backoff = Backoff::default();
        let mut opened = false;
        loop {
            if !gather(
                &mut queue,
                &mut waiting,
                &self.metrics,
                "waiting for MongoDB",
            )
            .await
            {
                return;
            }
            let count = waiting.len().min(MAX_RECORD_BATCH);
            let batch = &waiting.make_contiguous()[..count];
            let written = async {
                if !opened {
                    self.log.open(&self.node).await?;
                    opened = true;
                }
                self.log.record(batch).await
            };
            match written.await {
                Ok(()) => {
                    backoff.reset();
                    self.metrics.lifecycle_events_recorded.inc_by(count as u64);
                    let batch: Vec<Event> = waiting.drain(..count).collect();
                    let last = batch.last().map_or(0, |e| e.seq);
                    match &self.delivery {
                        Some((delivery, shed)) => {
                            // The batch is in MongoDB: a delivery that is this far behind
                            // reads it back from there instead of from memory.
                            if delivery.try_send(batch).is_err() {
                                shed.through(last);
                            }
                        }
                        None => self.finished.reach(last),
                    }
                }
                Err(e) => {
                    self.metrics.lifecycle_record_failures.inc();
                    let wait = backoff.wait();
                    log::warn!(
                        "recording lifecycle events: {e}; {} waiting, retrying in {wait:?}",
                        waiting.len()
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The last `seq` of the written batches the recorder could not hand to the delivery: the
/// delivery reads everything up to it back from MongoDB.
#[derive(Clone, Default)]
pub struct Shed(Arc<AtomicU64>);

impl Shed {
    fn through(&self, seq: u64) {
        self.0.fetch_max(seq, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct OwnDelivery {
    pub log: Arc<EventLog>,
    pub shed: Shed,
    pub webhook: Webhook,
    pub node: String,
    pub fence: Fence,
    pub finished: Finished,
}

/// How far the webhook got, and what `lifecycle_streams` says of it.
struct Progress {
    delivered: u64,
    noted: u64,
    noted_at: Instant,
}

impl OwnDelivery {
    /// Runs until the recorder is gone, or this node learns it was declared lost.
    pub async fn run(self, mut written: mpsc::Receiver<Vec<Event>>) {
        let mut waiting: VecDeque<Event> = VecDeque::new();
        let mut backoff = Backoff::default();
        let mut progress = Progress {
            delivered: 0,
            noted: 0,
            noted_at: Instant::now(),
        };
        // Events dropped from memory up to this seq are read back from MongoDB.
        let mut dropped_through: u64 = 0;
        loop {
            dropped_through = dropped_through.max(self.shed.get());
            if waiting.is_empty() && progress.delivered >= dropped_through {
                // Idle: note the progress once the note is due, then wait for more.
                let due = MARK_EVERY.saturating_sub(progress.noted_at.elapsed());
                let more = if progress.noted < progress.delivered {
                    tokio::time::timeout(due, written.recv()).await
                } else {
                    Ok(written.recv().await)
                };
                match more {
                    Ok(Some(batch)) => waiting.extend(batch),
                    Ok(None) => return,
                    Err(_) => {
                        if self.note(&mut progress).await == Hold::Lost {
                            return;
                        }
                        continue;
                    }
                }
            }
            while let Ok(batch) = written.try_recv() {
                waiting.extend(batch);
            }
            if waiting.len() > MAX_WAITING {
                let over = waiting.len() - MAX_WAITING;
                dropped_through = waiting.drain(..over).next_back().map_or(0, |e| e.seq);
            }
            let batch: Vec<Event> = if progress.delivered < dropped_through {
                match self
                    .log
                    .after(&self.node, progress.delivered, MAX_BATCH)
                    .await
                {
                    Ok(mut events) => {
                        events.retain(|e| e.seq <= dropped_through);
                        if events.is_empty() {
                            progress.delivered = dropped_through;
                            continue;
                        }
                        events
                    }
                    Err(e) => {
                        log::warn!("reading back lifecycle events: {e}");
                        tokio::time::sleep(backoff.wait()).await;
                        continue;
                    }
                }
            } else {
                waiting.iter().take(MAX_BATCH).cloned().collect()
            };
            if !self.webhook.attempt(&batch, "this node").await {
                tokio::time::sleep(backoff.wait()).await;
                continue;
            }
            backoff.reset();
            progress.delivered = batch.last().map_or(progress.delivered, |e| e.seq);
            self.finished.reach(progress.delivered);
            while waiting.front().is_some_and(|e| e.seq <= progress.delivered) {
                waiting.pop_front();
            }
            if progress.noted_at.elapsed() >= MARK_EVERY
                && self.note(&mut progress).await == Hold::Lost
            {
                return;
            }
        }
    }

    /// Notes the progress in `lifecycle_streams`; `Lost` (and the fence tripped) when
    /// another node holds this node's stream.
    async fn note(&self, progress: &mut Progress) -> Hold {
        progress.noted_at = Instant::now();
        match self
            .log
            .mark_delivered(&self.node, &self.node, progress.delivered)
            .await
        {
            Ok(Hold::Held) => {
                progress.noted = progress.delivered;
                Hold::Held
            }
            Ok(Hold::Lost) => {
                super::adoption::declared_lost(&self.node, &self.fence);
                Hold::Lost
            }
            // Noted at the next turn; meanwhile a survivor would post more again.
            Err(e) => {
                log::debug!("noting lifecycle delivery: {e}");
                Hold::Held
            }
        }
    }
}
