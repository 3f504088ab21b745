//! Lifecycle events for the app's backend: `connect`, `disconnect`, `subscribe` and
//! `unsubscribe` of authenticated connections, posted in batches to `EVENTS_WEBHOOK_URL`
//! (docs/PROTOCOL.md, "Lifecycle events").
//!
//! Sessions emit events without waiting: an event goes into the node's queue, and one task
//! ([`webhook`]) delivers the queue in order, in batches, retrying a refused or failed batch
//! with backoff until the webhook takes it. This part keeps the queue in memory: events are
//! delivered at least once while the process lives.

pub mod webhook;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One event, as the webhook receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unique in the cluster: `<node id>-<number>`; the backend drops repeats by it.
    pub id: String,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Unix milliseconds.
    pub time: u64,
    pub user_id: String,
    pub connection_id: String,
    pub node: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Connect {
        #[serde(skip_serializing_if = "Option::is_none")]
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

/// The node's event queue; a no-op without `EVENTS_WEBHOOK_URL`.
pub struct Lifecycle {
    node: String,
    next: AtomicU64,
    queue: Option<mpsc::UnboundedSender<Event>>,
    metrics: Arc<Metrics>,
}

impl Lifecycle {
    /// Events are dropped: no webhook is configured.
    pub fn off(node: String, metrics: Arc<Metrics>) -> Self {
        Lifecycle {
            node,
            next: AtomicU64::new(1),
            queue: None,
            metrics,
        }
    }

    /// Events go to `queue`, which a [`webhook::Delivery`] drains.
    pub fn to_queue(
        node: String,
        queue: mpsc::UnboundedSender<Event>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Lifecycle {
            queue: Some(queue),
            ..Lifecycle::off(node, metrics)
        }
    }

    /// Queues an event about `subject`; never waits.
    pub fn emit(&self, subject: Subject<'_>, kind: EventKind) {
        let Some(queue) = &self.queue else { return };
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            id: format!("{}-{number}", self.node),
            kind,
            time: crate::clock::unix_now_ms(),
            user_id: subject.user_id.to_owned(),
            connection_id: subject.connection_id,
            node: self.node.clone(),
        };
        self.metrics.lifecycle_events_queued.inc();
        // The receiver lives as long as the process serves connections.
        let _ = queue.send(event);
    }
}
