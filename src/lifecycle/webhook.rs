//! Posting lifecycle events to `EVENTS_WEBHOOK_URL`: `POST` with `{"events": […]}` and
//! `Authorization: Bearer <UPSTREAM_KEY>`, up to [`MAX_BATCH`] events a call, in the order
//! they were emitted. A 2xx takes the batch; anything else, or no answer within
//! UPSTREAM_TIMEOUT_MS, is retried with backoff ([`Backoff`]), the same events first, so the
//! webhook sees each connection's events in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::Event;
use crate::metrics::Metrics;

/// The most events in one call.
pub const MAX_BATCH: usize = 100;
/// The most events waiting in memory; past it the oldest are dropped (and counted).
pub const MAX_WAITING: usize = 100_000;

/// Waits between attempts: 0.5 s doubling to 30 s, back to 0.5 s after a success.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Self::FIRST)
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const LAST: Duration = Duration::from_secs(30);

    /// The wait before the next attempt, which waits longer.
    pub fn wait(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(Self::LAST);
        wait
    }

    pub fn reset(&mut self) {
        self.0 = Self::FIRST;
    }
}

/// The events webhook, as every deliverer calls it.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    /// `Bearer <UPSTREAM_KEY>`, marked sensitive.
    pub authorization: reqwest::header::HeaderValue,
    pub timeout: Duration,
    pub client: reqwest::Client,
    pub metrics: Arc<Metrics>,
    /// A span per delivery, whose `traceparent` the call carries.
    pub telemetry: crate::telemetry::Telemetry,
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

impl Webhook {
    /// One attempt to post `events`: true when the webhook took them. `what` names the
    /// series in the log.
    pub async fn attempt(&self, events: &[Event], what: &str) -> bool {
        match self.post(events).await {
            Ok(()) => {
                self.metrics
                    .lifecycle_events_delivered
                    .inc_by(events.len() as u64);
                true
            }
            Err(why) => {
                self.metrics.lifecycle_webhook_failures.inc();
                log::warn!(
                    "events webhook ({what}): {why}; {} events will be posted again",
                    events.len()
                );
                false
            }
        }
    }

    /// Posts `events` until the webhook takes them.
    pub async fn deliver(&self, events: &[Event], what: &str) {
        let mut backoff = Backoff::default();
        while !self.attempt(events, what).await {
            tokio::time::sleep(backoff.wait()).await;
        }
    }

    async fn post(&self, events: &[Event]) -> Result<(), String> {
        let body = serde_json::to_vec(&Batch { events }).expect("events always serialize");
        let span = self.telemetry.client("webhook.deliver");
        span.set("events", events.len() as i64);
        let mut call = self
            .client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout);
        if let Some(traceparent) = span.traceparent() {
            call = call.header("traceparent", traceparent);
        }
        let outcome = match call.body(body).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            Err(e) if e.is_timeout() => Err("no answer within UPSTREAM_TIMEOUT_MS".into()),
            Err(e) if e.is_connect() => Err("cannot connect".into()),
            Err(_) => Err("the call failed".into()),
        };
        if let Err(why) = &outcome {
            span.fail(why.clone());
        }
        outcome
    }
}

/// Without MongoDB: delivers the node's queue from memory, best effort (lost if the process
/// ends before the webhook takes them).
pub struct MemoryDelivery {
    pub webhook: Webhook,
    pub finished: super::Finished,
}

impl MemoryDelivery {
    /// Runs until every sender is gone (the process is ending).
    pub async fn run(self, mut queue: mpsc::Receiver<Event>) {
        let mut waiting: VecDeque<Event> = VecDeque::new();
        let mut backoff = Backoff::default();
        loop {
            if !gather(&mut queue, &mut waiting, &self.webhook.metrics, "in memory").await {
                return;
            }
            let count = waiting.len().min(MAX_BATCH);
            let batch = &waiting.make_contiguous()[..count];
            if self.webhook.attempt(batch, "in memory").await {
                if let Some(last) = batch.last() {
                    self.finished.reach(last.seq);
                }
                waiting.drain(..count);
                backoff.reset();
            } else {
                tokio::time::sleep(backoff.wait()).await;
            }
        }
    }
}

/// Takes every queued event into `waiting`, first waiting for one if none waits, and drops
/// the oldest past [`MAX_WAITING`]; false when the queue closed (the process is ending).
pub async fn gather(
    queue: &mut mpsc::Receiver<Event>,
    waiting: &mut VecDeque<Event>,
    metrics: &Metrics,
    what: &str,
) -> bool {
    if waiting.is_empty() {
        match queue.recv().await {
            Some(event) => waiting.push_back(event),
            None => return false,
        }
    }
    while let Ok(event) = queue.try_recv() {
        waiting.push_back(event);
    }
    drop_over_limit(waiting, metrics, what);
    true
}

/// Drops the oldest events past [`MAX_WAITING`], and counts them.
fn drop_over_limit(waiting: &mut VecDeque<Event>, metrics: &Metrics, what: &str) {
    if waiting.len() > MAX_WAITING {
        let dropped = waiting.len() - MAX_WAITING;
        waiting.drain(..dropped);
        metrics.lifecycle_events_dropped.inc_by(dropped as u64);
        log::warn!("lifecycle events ({what}): {dropped} dropped, over {MAX_WAITING} waiting");
    }
}
