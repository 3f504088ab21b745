//! Lifecycle events for the app's backend: `connect`, `disconnect`, `subscribe` and
//! `unsubscribe` of authenticated connections, posted in batches to `EVENTS_WEBHOOK_URL`
//! (docs/PROTOCOL.md, "Lifecycle events").
//!
//! Sessions emit events without waiting: an event goes into the node's queue, numbered in
//! the node's series (`seq`), and tasks of its own take it from there:
//! - with MongoDB, [`recorder`] writes the series to `lifecycle_events` ([`log`]) and then
//!   hands it to the webhook, in order, in batches, retried until taken; survivors deliver a
//!   dead node's rest and close its connections with `node_lost` ([`adoption`]);
//! - without MongoDB, [`webhook::MemoryDelivery`] posts the queue from memory, at least once
//!   while the process lives.

pub mod adoption;
pub mod log;
pub mod recorder;
pub mod roster;
pub mod webhook;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::metrics::Metrics;

/// One event, as the webhook receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unique in the cluster: `<node id>-<seq>`; the backend drops repeats by it.
    pub id: String,
    /// Its place in its node's series, from 1: the order of delivery.
    #[serde(skip)]
    pub seq: u64,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Unix milliseconds.
    pub time: u64,
    pub user_id: String,
    pub connection_id: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Connect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        client_ip: Option<IpAddr>,
    },
    Disconnect {
        /// The close code sent; `null` when the socket was simply gone.
        code: Option<u16>,
        reason: String,
        duration_ms: u64,
    },
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
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
    queue: Option<mpsc::UnboundedSender<Event>>,
    finished: Finished,
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
        queue: mpsc::UnboundedSender<Event>,
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

    /// Queues an event about `subject`; never waits.
    pub fn emit(&self, subject: Subject<'_>, kind: EventKind) {
        if self.queue.is_none() && !matches!(self.lookup, roster::Lookup::Local(_)) {
            return;
        }
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
        if let Some(queue) = &self.queue {
            self.metrics.lifecycle_events_queued.inc();
            // The receiver lives as long as the process serves connections.
            let _ = queue.send(event);
        }
    }
}

/// An event's id: unique in the cluster, since node ids are.
pub fn event_id(node: &str, seq: u64) -> String {
    format!("{node}-{seq}")
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
