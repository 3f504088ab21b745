//! Every `connect` is matched by one `disconnect`, even when a node dies: at each heartbeat
//! every node looks for event streams whose holder stopped beating, claims each (one
//! survivor wins the claim), writes a `disconnect` with reason `node_lost` for each of that
//! node's connections that had a `connect` and no `disconnect`, delivers the stream's rest to
//! the webhook in order, and marks it ended. A survivor that dies midway leaves the stream
//! to the next one, which carries on from what was noted.
//!
//! The same heartbeat checks that this node still holds its own stream: a node that was cut
//! off for longer than the survivors wait finds its connections already reported lost, and
//! ends (see [`Fence`]).

use std::sync::Arc;

use super::webhook::{Backoff, MAX_BATCH, Webhook};
use super::{Event, EventKind, Fence, NODE_LOST, event_id};
use crate::db::Unavailable;
use crate::metrics::Metrics;
use crate::store::lifecycle::{EventLog, Hold, Stream};

pub struct Adoption {
    pub log: Arc<EventLog>,
    /// `None`: events are only recorded (RECORD_LIFECYCLE_EVENTS), not posted.
    pub webhook: Option<Webhook>,
    /// This node's id.
    pub me: String,
    pub fence: Fence,
    pub metrics: Arc<Metrics>,
}

/// Why finishing an adopted stream stopped.
enum Stop {
    /// Another node holds it now.
    Lost,
    Unavailable(Unavailable),
}

impl From<Unavailable> for Stop {
    fn from(e: Unavailable) -> Self {
        Stop::Unavailable(e)
    }
}

/// Logs that `node` was declared lost and trips the fence.
pub fn declared_lost(node: &str, fence: &Fence) {
    log::error!(
        "this node ({node}) was declared lost: it missed heartbeats for longer than the other \
         nodes wait, and they reported its connections closed (node_lost); stopping so its \
         clients reconnect elsewhere"
    );
    fence.trip();
}

impl Adoption {
    /// Checks this node's own stream, then claims the streams whose holder is none of `live`
    /// (the nodes beating now) and finishes each in a task of its own.
    pub async fn sweep(self: &Arc<Self>, live: &[String]) -> Result<(), Unavailable> {
        if self.log.own_hold(&self.me).await? == Hold::Lost {
            declared_lost(&self.me, &self.fence);
            return Ok(());
        }
        for stream in self.log.abandoned(live).await? {
            if stream.node == self.me || !self.log.claim(&stream, &self.me).await? {
                continue;
            }
            log::warn!(
                "node {} stopped beating (its events held by {}): this node finishes its \
                 lifecycle events",
                stream.node,
                stream.holder
            );
            self.metrics.lifecycle_streams_adopted.inc();
            let this = Arc::clone(self);
            tokio::spawn(async move { this.finish(stream).await });
        }
        Ok(())
    }

    /// Retries until the stream is ended or another node holds it.
    async fn finish(&self, stream: Stream) {
        let mut delivered = u64::try_from(stream.delivered).unwrap_or(0);
        let mut backoff = Backoff::default();
        loop {
            match self.finish_once(&stream.node, &mut delivered).await {
                Ok(()) => {
                    log::info!("lifecycle events of node {} finished", stream.node);
                    return;
                }
                Err(Stop::Lost) => return,
                Err(Stop::Unavailable(e)) => {
                    let wait = backoff.wait();
                    log::warn!(
                        "finishing the lifecycle events of node {}: {e}; retrying in {wait:?}",
                        stream.node
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn finish_once(&self, node: &str, delivered: &mut u64) -> Result<(), Stop> {
        self.close_lost_connections(node).await?;
        if let Some(webhook) = &self.webhook {
            loop {
                let batch = self.log.after(node, *delivered, MAX_BATCH).await?;
                let Some(last) = batch.last() else { break };
                webhook.deliver(&batch, node).await;
                *delivered = last.seq;
                if self.log.mark_delivered(node, &self.me, *delivered).await? == Hold::Lost {
                    return Err(Stop::Lost);
                }
            }
        }
        self.log.end(node, &self.me).await?;
        Ok(())
    }

    /// Records `node_lost` disconnects for `node`'s open connections, after its last event.
    /// Idempotent: those already recorded close their connections.
    async fn close_lost_connections(&self, node: &str) -> Result<(), Unavailable> {
        let open = self.log.open_connections(node).await?;
        if open.is_empty() {
            return Ok(());
        }
        let last = self.log.last_seq(node).await?;
        let now = crate::clock::unix_now_ms();
        let lost: Vec<Event> = open
            .into_iter()
            .zip(last + 1..)
            .map(|(connection, seq)| Event {
                id: event_id(node, seq),
                seq,
                kind: EventKind::Disconnect {
                    code: None,
                    reason: NODE_LOST.into(),
                    duration_ms: now
                        .saturating_sub(u64::try_from(connection.connected_at).unwrap_or(0)),
                },
                time: now,
                user_id: connection.user_id,
                connection_id: connection.connection_id,
                node: node.to_owned(),
            })
            .collect();
        self.log.record(&lost).await?;
        log::warn!(
            "{} connections of node {node} closed as {NODE_LOST}",
            lost.len()
        );
        self.metrics
            .lifecycle_node_lost_disconnects
            .inc_by(lost.len() as u64);
        Ok(())
    }
}
