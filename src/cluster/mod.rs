//! Cluster housekeeping: what a node does on its heartbeat, apart from carrying messages
//! (which is the bus's). Every `NODE_HEARTBEAT_SECS` it samples its own metrics ([`series`]),
//! refreshes its entry in the node registry (`crate::store::nodes`) and, once it has beaten steadily,
//! takes over what dead nodes left ([`reaper`]). It also answers what the server API and the
//! console ask of the cluster: the live nodes, channel counts over them, their recent series.

pub mod reaper;
pub mod series;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bson::DateTime;

use crate::bus::{Bus, NodeInfo};
use crate::db::Unavailable;
use crate::hub::{ConnectionCounts, Hub};
use crate::metrics::Metrics;
pub use crate::store::nodes::{
    ChannelCount, ClusterCounts, NodeEntry, NodeRegistry, NodeSeries, NodeView, NodesSeries,
};
use reaper::Reaper;
use series::Series;

pub struct Cluster {
    hub: Arc<Hub>,
    bus: Arc<Bus>,
    /// The node registry in MongoDB; `None` on a node without MongoDB.
    registry: Option<NodeRegistry>,
    /// Clears dead nodes' presence and adopts their lifecycle events (MongoDB only).
    reaper: Option<Reaper>,
    /// This node's recent metrics, sampled at each heartbeat, for the console.
    series: Series,
    metrics: Arc<Metrics>,
}

impl Cluster {
    pub fn new(
        bus: Arc<Bus>,
        (registry, reaper): (Option<NodeRegistry>, Option<Reaper>),
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Cluster {
            hub: Arc::clone(bus.hub()),
            bus,
            registry,
            reaper,
            series: Series::new(heartbeat),
            metrics,
        })
    }

    fn me(&self) -> &NodeInfo {
        self.bus.node()
    }

    /// Registers this node and refreshes its entry every `every` until the process ends,
    /// sampling its metrics at each beat, and sweeping dead nodes' leftovers.
    pub async fn heartbeat(&self, every: Duration) {
        let mut ticks = tokio::time::interval(every);
        let Some(registry) = &self.registry else {
            loop {
                ticks.tick().await;
                self.series.sample(&self.metrics, self.hub.counts());
            }
        };
        // Since when every beat succeeded promptly: after MongoDB was away every node's last
        // beat is old (a beat that waited out the outage carries the time it was sent), and
        // no node may be declared dead before it had the same time to beat again.
        let mut beating_since: Option<Instant> = None;
        loop {
            ticks.tick().await;
            let channels = self
                .hub
                .channel_counts("")
                .into_iter()
                .map(|(name, subscribers)| ChannelCount {
                    channel: name.as_str().to_owned(),
                    subscribers: subscribers as u64,
                })
                .collect();
            let sample = self.series.sample(&self.metrics, self.hub.counts());
            let sent = Instant::now();
            let me = self.me();
            let entry = NodeEntry {
                id: me.id.as_str(),
                address: &me.address,
                started_at: me.started_at,
            };
            let beat = registry.beat(entry, self.hub.counts(), channels, sample);
            if let Err(e) = beat.await {
                log::debug!("node heartbeat: {e}");
                beating_since = None;
                continue;
            }
            if sent.elapsed() > every {
                beating_since = None;
            }
            let since = *beating_since.get_or_insert_with(Instant::now);
            let Some(reaper) = &self.reaper else { continue };
            if since.elapsed() < every * 2 {
                continue;
            }
            // Two missed beats make a node dead here (three hide it from listings): with a
            // sweep every beat, a dead node's presence and connections are gone within three.
            let swept = async {
                let live = registry.beating_within(every * 2).await?;
                reaper.sweep(&self.bus, &live).await
            };
            if let Err(e) = swept.await {
                log::debug!("sweeping dead nodes' presence: {e}");
            }
        }
    }

    /// Removes this node from the registry (graceful shutdown).
    pub async fn leave(&self) {
        if let Some(registry) = &self.registry
            && let Err(e) = registry.remove(self.me().id.as_str()).await
        {
            log::warn!("removing this node from the registry: {e}");
        }
    }

    /// The live nodes, this one first with its current counts.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Unavailable> {
        let me = view(self.me(), self.hub.counts());
        match &self.registry {
            None => Ok(vec![me]),
            Some(registry) => registry.live(me).await,
        }
    }

    /// The channels with subscribers whose name starts with `prefix`, counted over the live
    /// nodes (this one as of now, the others as of their last heartbeat), by name.
    pub async fn channel_counts(&self, prefix: &str) -> Result<Vec<ChannelCount>, Unavailable> {
        let mut totals: std::collections::BTreeMap<String, u64> = self
            .hub
            .channel_counts(prefix)
            .into_iter()
            .map(|(name, n)| (name.as_str().to_owned(), n as u64))
            .collect();
        if let Some(registry) = &self.registry {
            for count in registry
                .others_channels(self.me().id.as_str(), prefix)
                .await?
            {
                *totals.entry(count.channel).or_default() += count.subscribers;
            }
        }
        Ok(totals
            .into_iter()
            .map(|(channel, subscribers)| ChannelCount {
                channel,
                subscribers,
            })
            .collect())
    }

    /// The recent samples of every live node's metrics, this node's first, with the interval
    /// between samples.
    pub async fn series(&self) -> Result<NodesSeries, Unavailable> {
        let mut nodes = vec![NodeSeries {
            id: self.me().id.to_string(),
            samples: self.series.samples(),
        }];
        if let Some(registry) = &self.registry {
            nodes.extend(registry.others_series(self.me().id.as_str()).await?);
        }
        Ok(NodesSeries {
            step_secs: (series::WINDOW.as_secs() / self.series.capacity() as u64).max(1),
            nodes,
        })
    }
}

/// This node as `GET /api/nodes` shows it, with its counts as of now.
fn view(node: &NodeInfo, connections: ConnectionCounts) -> NodeView {
    NodeView {
        id: node.id.to_string(),
        address: node.address.clone(),
        version: crate::build_info::VERSION.to_owned(),
        commit: crate::build_info::COMMIT.to_owned(),
        started_at: crate::store::nodes::rfc3339(node.started_at),
        heartbeat_at: crate::store::nodes::rfc3339(DateTime::now()),
        connections,
    }
}
