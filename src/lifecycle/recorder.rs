//! A node's own events with MongoDB: the [`Recorder`] writes them to `lifecycle_events` in
//! batches, and only then hands them to the [`OwnDelivery`], which posts them to the webhook
//! in order and notes in `lifecycle_streams` how far the webhook got, so that a survivor can
//! take over from there if this node dies.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::log::{EventLog, Hold};
use super::webhook::{Backoff, MAX_BATCH, MAX_WAITING, Webhook, gather};
use super::{Event, Fence};
use crate::metrics::Metrics;

/// The most events written in one `insert_many`.
const MAX_RECORD_BATCH: usize = 1_000;
/// How often, at most, a busy node notes its delivery progress (a survivor may post again
/// what was delivered since: at least once).
const MARK_EVERY: Duration = Duration::from_secs(1);

pub struct Recorder {
    pub log: Arc<EventLog>,
    pub node: String,
    pub metrics: Arc<Metrics>,
    /// Where written events go next; `None` without a webhook (apps read MongoDB).
    pub delivery: Option<mpsc::UnboundedSender<Vec<Event>>>,
}

impl Recorder {
    /// Runs until every sender is gone (the process is ending).
    pub async fn run(self, mut queue: mpsc::UnboundedReceiver<Event>) {
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
                    if let Some(delivery) = &self.delivery {
                        // The delivery lives as long as the recorder.
                        let _ = delivery.send(batch);
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

pub struct OwnDelivery {
    pub log: Arc<EventLog>,
    pub webhook: Webhook,
    pub node: String,
    pub fence: Fence,
}

impl OwnDelivery {
    /// Runs until the recorder is gone, or this node learns it was declared lost.
    pub async fn run(self, mut written: mpsc::UnboundedReceiver<Vec<Event>>) {
        let mut waiting: VecDeque<Event> = VecDeque::new();
        let mut backoff = Backoff::default();
        let mut delivered: u64 = 0;
        // Events dropped from memory up to this seq are read back from MongoDB.
        let mut dropped_through: u64 = 0;
        let mut marked_at = Instant::now();
        loop {
            if waiting.is_empty() && delivered >= dropped_through {
                match written.recv().await {
                    Some(batch) => waiting.extend(batch),
                    None => return,
                }
            }
            while let Ok(batch) = written.try_recv() {
                waiting.extend(batch);
            }
            if waiting.len() > MAX_WAITING {
                let over = waiting.len() - MAX_WAITING;
                dropped_through = waiting.drain(..over).next_back().map_or(0, |e| e.seq);
            }
            let batch: Vec<Event> = if delivered < dropped_through {
                match self.log.after(&self.node, delivered, MAX_BATCH).await {
                    Ok(mut events) => {
                        events.retain(|e| e.seq <= dropped_through);
                        if events.is_empty() {
                            delivered = dropped_through;
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
            delivered = batch.last().map_or(delivered, |e| e.seq);
            while waiting.front().is_some_and(|e| e.seq <= delivered) {
                waiting.pop_front();
            }
            if waiting.is_empty() || marked_at.elapsed() >= MARK_EVERY {
                match self
                    .log
                    .mark_delivered(&self.node, &self.node, delivered)
                    .await
                {
                    Ok(Hold::Held) => marked_at = Instant::now(),
                    Ok(Hold::Lost) => {
                        super::adoption::declared_lost(&self.node, &self.fence);
                        return;
                    }
                    // Noted with the next batch; meanwhile a survivor would post more again.
                    Err(e) => log::debug!("noting lifecycle delivery: {e}"),
                }
            }
        }
    }
}
