//! Delivers the node's lifecycle events to `EVENTS_WEBHOOK_URL`: `POST` with `{"events": […]}`
//! and `Authorization: Bearer <UPSTREAM_KEY>`, up to [`MAX_BATCH`] events a call, in the order
//! they were emitted. A 2xx takes the batch; anything else, or no answer within
//! UPSTREAM_TIMEOUT_MS, is retried with backoff (0.5 s doubling to 30 s), the same events
//! first, so the webhook sees each connection's events in order.

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

const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

pub struct Delivery {
    pub url: String,
    /// `Bearer <UPSTREAM_KEY>`, marked sensitive.
    pub authorization: reqwest::header::HeaderValue,
    pub timeout: Duration,
    pub metrics: Arc<Metrics>,
}

#[derive(Serialize)]
struct Batch<'a> {
    events: &'a [Event],
}

impl Delivery {
    /// Runs until every sender is gone (the process is ending).
    pub async fn run(self, mut queue: mpsc::UnboundedReceiver<Event>) {
        let client = reqwest::Client::new();
        let mut waiting: VecDeque<Event> = VecDeque::new();
        let mut retry = FIRST_RETRY;
        loop {
            if waiting.is_empty() {
                match queue.recv().await {
                    Some(event) => waiting.push_back(event),
                    None => return,
                }
            }
            while let Ok(event) = queue.try_recv() {
                waiting.push_back(event);
            }
            if waiting.len() > MAX_WAITING {
                let dropped = waiting.len() - MAX_WAITING;
                waiting.drain(..dropped);
                self.metrics.lifecycle_events_dropped.inc_by(dropped as u64);
                log::warn!("events webhook: {dropped} events dropped, over {MAX_WAITING} waiting");
            }
            let count = waiting.len().min(MAX_BATCH);
            let batch = &waiting.make_contiguous()[..count];
            match self.post(&client, batch).await {
                Ok(()) => {
                    waiting.drain(..count);
                    self.metrics.lifecycle_events_delivered.inc_by(count as u64);
                    retry = FIRST_RETRY;
                }
                Err(why) => {
                    self.metrics.lifecycle_webhook_failures.inc();
                    log::warn!(
                        "events webhook: {why}; {} events waiting, retrying in {retry:?}",
                        waiting.len()
                    );
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }

    async fn post(&self, client: &reqwest::Client, events: &[Event]) -> Result<(), String> {
        let body = serde_json::to_vec(&Batch { events }).expect("events always serialize");
        let call = client
            .post(&self.url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(body)
            .send();
        match call.await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("answered {}", response.status())),
            Err(e) if e.is_timeout() => Err("no answer within UPSTREAM_TIMEOUT_MS".into()),
            Err(e) if e.is_connect() => Err("cannot connect".into()),
            Err(_) => Err("the call failed".into()),
        }
    }
}
