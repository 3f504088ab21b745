//! Lifecycle events for the app's backend: `connect`, `disconnect`, `subscribe` and
//! `unsubscribe` of authenticated connections, posted in batches to `EVENTS_WEBHOOK_URL`
//! (docs/PROTOCOL.md, "Lifecycle events").
//!
//! Sessions emit events without waiting: an event goes into the node's queue, numbered in
//! the node's series (`seq`), and tasks of its own take it from there:
//! - with MongoDB, [`recorder`] writes the series to `lifecycle_events`
//!   (`crate::store::lifecycle`) and then
//!   hands it to the webhook, in order, in batches, retried until taken; survivors deliver a
//!   dead node's rest and close its connections with `node_lost` ([`adoption`]);
//! - without MongoDB, [`webhook::MemoryDelivery`] posts the queue from memory, at least once
//!   while the process lives.

pub mod adoption;
pub mod recorder;
pub mod roster;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};

use self::adoption::Adoption;
use self::recorder::{OwnDelivery, Recorder};
use self::roster::Lookup;
use self::webhook::{MemoryDelivery, Webhook};
use crate::config::Settings;
use crate::db::Prepared;
use crate::metrics::Metrics;
use crate::store::lifecycle::EventLog;
pub use crate::store::lifecycle::{Event, EventKind, event_id};

/// Events the node's queue holds before it sheds new ones: the recorder (or, without MongoDB,
/// the webhook) fell this far behind. About 20 MB of events at most.
pub const QUEUE: usize = 65_536;

/// How often, at most, shedding is logged (each shed event is counted).
const SHED_WARNING_EVERY_MS: u64 = 60_000;

/// The node's lifecycle events (docs/PROTOCOL.md, "Lifecycle events"): with MongoDB,
/// recorded there and delivered from there, with survivors finishing a dead node's (the
/// [`Adoption`] the heartbeat runs); without it, posted from memory; with neither a webhook
/// nor RECORD_LIFECYCLE_EVENTS nor the console, not made at all. The console's user lookup
/// reads them: from MongoDB, or without it from this node's own roster.
pub fn start(
    settings: &Settings,
    node: &str,
    mongo: Option<&Prepared>,
    (metrics, telemetry): (&Arc<Metrics>, &crate::telemetry::Telemetry),
    fence: &Fence,
) -> (Lifecycle, Option<Arc<Adoption>>) {
    let id = node.to_owned();
    let webhook = settings.upstream.events_webhook.as_ref().map(|w| Webhook {
        url: w.url.clone(),
        authorization: crate::upstream::bearer(&w.key),
        timeout: settings.upstream.timeout,
        client: reqwest::Client::new(),
        metrics: Arc::clone(metrics),
        telemetry: telemetry.clone(),
    });
    let (queue, events) = mpsc::channel(QUEUE);
    let finished = Finished::default();
    let console = settings.api.console.is_some();
    let local_lookup = || Lookup::Local(std::sync::Mutex::default());
    match (mongo, webhook) {
        (Some(mongo), webhook)
            if webhook.is_some() || settings.upstream.record_events || console =>
        {
            let log = Arc::new(EventLog::new(&mongo.db, mongo.bounds.clone()));
            let delivery = webhook.clone().map(|webhook| {
                let (written, to_deliver) = mpsc::channel(recorder::DELIVERY_QUEUE);
                let shed = recorder::Shed::default();
                let own = OwnDelivery {
                    log: Arc::clone(&log),
                    shed: shed.clone(),
                    webhook,
                    node: id.clone(),
                    fence: fence.clone(),
                    finished: finished.clone(),
                };
                tokio::spawn(own.run(to_deliver));
                (written, shed)
            });
            ::log::info!(
                "lifecycle events: recorded in MongoDB ({}){}",
                crate::db::collections::LIFECYCLE_EVENTS,
                if delivery.is_some() {
                    ", then posted to EVENTS_WEBHOOK_URL"
                } else {
                    ""
                }
            );
            let recorder = Recorder {
                log: Arc::clone(&log),
                node: id.clone(),
                metrics: Arc::clone(metrics),
                delivery,
                finished: finished.clone(),
            };
            tokio::spawn(recorder.run(events));
            let adoption = Adoption {
                log: Arc::clone(&log),
                webhook,
                me: id.clone(),
                fence: fence.clone(),
                metrics: Arc::clone(metrics),
            };
            (
                Lifecycle::to_queue(id, queue, finished, Arc::clone(metrics))
                    .with_lookup(Lookup::Recorded(log)),
                Some(Arc::new(adoption)),
            )
        }
        (None, Some(webhook)) => {
            let delivery = MemoryDelivery {
                webhook,
                finished: finished.clone(),
            };
            tokio::spawn(delivery.run(events));
            ::log::info!(
                "lifecycle events: posted to EVENTS_WEBHOOK_URL from memory (without MongoDB, \
                 best effort)"
            );
            let lifecycle = Lifecycle::to_queue(id, queue, finished, Arc::clone(metrics));
            match console {
                true => (lifecycle.with_lookup(local_lookup()), None),
                false => (lifecycle, None),
            }
        }
        (None, None) if settings.upstream.record_events && !console => {
            ::log::warn!("RECORD_LIFECYCLE_EVENTS needs MONGODB_URI: no lifecycle events");
            (Lifecycle::off(id, Arc::clone(metrics)), None)
        }
        (None, None) if console => (
            Lifecycle::off(id, Arc::clone(metrics)).with_lookup(local_lookup()),
            None,
        ),
        _ => (Lifecycle::off(id, Arc::clone(metrics)), None),
    }
}

/// Who an event is about.
pub struct Subject<'a> {
    pub user_id: &'a str,
    /// `c<number>@<node>`.
    pub connection_id: String,
}

/// The node's event queue; a no-op without `EVENTS_WEBHOOK_URL` or RECORD_LIFECYCLE_EVENTS.
pub struct Lifecycle {
    node: String,
    next: AtomicU64,
    queue: Option<mpsc::Sender<Event>>,
    finished: Finished,
    /// When shedding was last logged (unix ms), so a full queue warns once a minute at most.
    shed_warned_at: AtomicU64,
    lookup: roster::Lookup,
    metrics: Arc<Metrics>,
}

/// How far the node's events got through their last stage (taken by the webhook, or
/// written to MongoDB without one): the `seq` of the last event there. A draining node waits
/// on it, so that it leaves nothing for the survivors to finish.
#[derive(Clone)]
pub struct Finished(Arc<watch::Sender<u64>>);

impl Default for Finished {
    fn default() -> Self {
        Finished(Arc::new(watch::channel(0).0))
    }
}

impl Finished {
    /// Every event up to `seq` went through.
    pub fn reach(&self, seq: u64) {
        self.0.send_if_modified(|finished| {
            let further = seq > *finished;
            if further {
                *finished = seq;
            }
            further
        });
    }

    async fn until(&self, seq: u64) {
        let mut seen = self.0.subscribe();
        // The sender lives in `self`, so the wait ends only by the value.
        let _ = seen.wait_for(|finished| *finished >= seq).await;
    }
}

impl Lifecycle {
    /// Events are dropped: no webhook is configured.
    pub fn off(node: String, metrics: Arc<Metrics>) -> Self {
        Lifecycle {
            node,
            next: AtomicU64::new(1),
            queue: None,
            finished: Finished::default(),
            shed_warned_at: AtomicU64::new(0),
            lookup: roster::Lookup::Unavailable,
            metrics,
        }
    }

    /// Where user lookups read; a local lookup also makes this node fold its own events.
    pub fn with_lookup(self, lookup: roster::Lookup) -> Self {
        Lifecycle { lookup, ..self }
    }

    pub fn lookup(&self) -> &roster::Lookup {
        &self.lookup
    }

    /// Events go to `queue`, which a [`recorder::Recorder`] or a [`webhook::MemoryDelivery`]
    /// drains, reporting to `finished`.
    pub fn to_queue(
        node: String,
        queue: mpsc::Sender<Event>,
        finished: Finished,
        metrics: Arc<Metrics>,
    ) -> Self {
        Lifecycle {
            queue: Some(queue),
            finished,
            ..Lifecycle::off(node, metrics)
        }
    }

    /// Waits up to `within` for every event emitted so far to go through (a draining node,
    /// after its connections closed); false when some had not.
    pub async fn settle(&self, within: std::time::Duration) -> bool {
        if self.queue.is_none() {
            return true;
        }
        let last = self.next.load(Ordering::Relaxed) - 1;
        tokio::time::timeout(within, self.finished.until(last))
            .await
            .is_ok()
    }

    /// Queues an event about `subject`; never waits. With the queue full, the event is shed:
    /// counted in `ticketgate_lifecycle_events_shed_total` and logged at most once a minute.
    pub fn emit(&self, subject: Subject<'_>, kind: EventKind) {
        if self.queue.is_none() && !matches!(self.lookup, roster::Lookup::Local(_)) {
            return;
        }
        // A place in the queue first, so a shed event takes no number: the series stays
        // without gaps, and settling does not wait for an event that never comes.
        let permit = match self.queue.as_ref().map(mpsc::Sender::try_reserve) {
            Some(Ok(permit)) => Some(permit),
            Some(Err(_)) => {
                self.shed();
                return;
            }
            None => None,
        };
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            id: event_id(&self.node, seq),
            seq,
            kind,
            time: crate::clock::unix_now_ms(),
            user_id: subject.user_id.to_owned(),
            connection_id: subject.connection_id,
            node: self.node.clone(),
        };
        self.lookup.note(&event);
        if let Some(permit) = permit {
            self.metrics.lifecycle_events_queued.inc();
            permit.send(event);
        }
    }

    fn shed(&self) {
        self.metrics.lifecycle_events_shed.inc();
        let now = crate::clock::unix_now_ms();
        let last = self.shed_warned_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= SHED_WARNING_EVERY_MS
            && self
                .shed_warned_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            ::log::warn!(
                "lifecycle events: the queue holds {QUEUE} events, new ones are shed \
                 (ticketgate_lifecycle_events_shed_total counts them)"
            );
        }
    }
}

/// The `disconnect` reason of a connection whose node died without saying goodbye.
pub const NODE_LOST: &str = "node_lost";

/// Tripped when surviving nodes declared this node lost (it stopped beating for longer than
/// they wait) and closed its connections with `node_lost`: those connections must not go on
/// as if nothing happened, so the process ends and its clients reconnect elsewhere.
#[derive(Clone)]
pub struct Fence(Arc<watch::Sender<bool>>);

impl Default for Fence {
    fn default() -> Self {
        Fence(Arc::new(watch::channel(false).0))
    }
}

impl Fence {
    pub fn trip(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once the fence is tripped.
    pub async fn tripped(&self) {
        let mut seen = self.0.subscribe();
        // The sender lives in `self`, so the wait ends only by the value.
        let _ = seen.wait_for(|tripped| *tripped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject<'static> {
        Subject {
            user_id: "alice",
            connection_id: "c1@n".to_owned(),
        }
    }

    fn disconnect() -> EventKind {
        EventKind::Disconnect {
            code: Some(1000),
            reason: String::new(),
            duration_ms: 1,
        }
    }

    #[tokio::test]
    async fn a_full_queue_sheds_counts_and_numbers_only_what_it_keeps() {
        let metrics = Arc::new(Metrics::new());
        let (queue, mut events) = mpsc::channel(2);
        let finished = Finished::default();
        let lifecycle =
            Lifecycle::to_queue("n".into(), queue, finished.clone(), Arc::clone(&metrics));
        for _ in 0..5 {
            lifecycle.emit(subject(), disconnect());
        }
        assert_eq!(metrics.lifecycle_events_queued.get(), 2);
        assert_eq!(metrics.lifecycle_events_shed.get(), 3);
        assert_eq!(events.recv().await.map(|e| e.seq), Some(1));
        assert_eq!(events.recv().await.map(|e| e.seq), Some(2));
        // Room again: the next event takes the next number, with no gap for the shed ones.
        lifecycle.emit(subject(), disconnect());
        assert_eq!(events.recv().await.map(|e| e.id), Some("n-3".to_owned()));
        // Settling waits for what was kept, not for the shed events.
        finished.reach(3);
        assert!(
            lifecycle
                .settle(std::time::Duration::from_millis(100))
                .await
        );
        assert!(
            metrics
                .render(&[], Default::default())
                .contains("ticketgate_lifecycle_events_shed_total 3")
        );
    }
}
