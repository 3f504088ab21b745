//! The node registry (`crate::cluster` beats it): each node keeps a document in `cluster_nodes` fresh with a heartbeat
//! (its counts, its channels, its recent metrics); a TTL index removes the documents of nodes
//! that died without leaving.

use std::time::Duration;

use bson::{DateTime, doc};
use futures_util::TryStreamExt;
use mongodb::options::UpdateOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::db::collections::CLUSTER_NODES;
use crate::db::{Bounds, Unavailable};
use crate::hub::ConnectionCounts;

/// One heartbeat's worth: gauges as of its end, rates per second over it, percentiles (in
/// milliseconds) of what was observed during it (`None`: nothing was).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix seconds at the end of the interval.
    pub t: i64,
    pub connections: u64,
    pub authenticated: u64,
    pub messages_in_per_sec: f64,
    pub messages_out_per_sec: f64,
    pub authentications_per_sec: f64,
    /// By close code.
    pub auth_failures_per_sec: BTreeMap<String, f64>,
    /// By reason.
    pub ticket_rejections_per_sec: BTreeMap<String, f64>,
    pub fanout_p50_ms: Option<f64>,
    pub fanout_p99_ms: Option<f64>,
    pub event_lag_p50_ms: Option<f64>,
    pub event_lag_p99_ms: Option<f64>,
    /// On the node consuming the outbox: the age of its oldest unpublished document.
    #[serde(default)]
    pub outbox_lag_ms: Option<f64>,
}

/// What a node says about itself in its entry.
#[derive(Debug, Clone, Copy)]
pub struct NodeEntry<'a> {
    pub id: &'a str,
    /// Where operators reach it (NODE_ADDRESS, or the address it listens on).
    pub address: &'a str,
    pub started_at: DateTime,
}

/// A node as `GET /api/nodes` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub id: String,
    pub address: String,
    /// The node's build: its version and git commit (a rolling deploy's mix shows here).
    pub version: String,
    pub commit: String,
    pub started_at: String,
    pub heartbeat_at: String,
    pub connections: ConnectionCounts,
}

/// Connection counts summed over the live nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClusterCounts {
    #[serde(flatten)]
    pub connections: ConnectionCounts,
    pub nodes: usize,
}

impl ClusterCounts {
    pub fn sum(nodes: &[NodeView]) -> Self {
        let mut connections = ConnectionCounts {
            total: 0,
            authenticated: 0,
            unauthenticated: 0,
        };
        for node in nodes {
            connections.total += node.connections.total;
            connections.authenticated += node.connections.authenticated;
            connections.unauthenticated += node.connections.unauthenticated;
        }
        ClusterCounts {
            connections,
            nodes: nodes.len(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct NodeDocument {
    #[serde(rename = "_id")]
    id: String,
    address: String,
    /// Entries of nodes from before versions were recorded have none.
    #[serde(default)]
    version: String,
    #[serde(default)]
    commit: String,
    started_at: DateTime,
    /// The TTL index is on this field.
    heartbeat_at: DateTime,
    /// Stored as 64-bit integers (BSON has no unsigned ones).
    connections: ConnectionCounts,
    /// The channels with subscribers on the node, with their counts (an array: channel names
    /// may hold `.`, which a BSON key may not).
    #[serde(default)]
    channels: Vec<ChannelCount>,
    /// Its recent metrics, one sample per beat, the last 15 minutes (for the console).
    #[serde(default)]
    series: Vec<Sample>,
}

/// One node's recent samples, as `GET /api/series` gives them.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSeries {
    pub id: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodesSeries {
    /// Seconds between samples (NODE_HEARTBEAT_SECS).
    pub step_secs: u64,
    pub nodes: Vec<NodeSeries>,
}

/// One channel's subscribers on one node, as its heartbeat reports them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelCount {
    pub channel: String,
    pub subscribers: u64,
}

pub struct NodeRegistry {
    nodes: Collection<NodeDocument>,
    bounds: Bounds,
    /// A node whose last heartbeat is older than this is not listed, whatever the TTL
    /// monitor (which runs once a minute) has or has not removed yet.
    liveness: Duration,
    /// Samples kept in a node's entry: 15 minutes of beats.
    series_length: usize,
}

impl NodeRegistry {
    /// `heartbeat`: how often nodes beat; three missed beats and a node is gone. Each entry
    /// keeps the node's last `series_length` samples.
    pub fn new(db: &Database, bounds: Bounds, heartbeat: Duration, series_length: usize) -> Self {
        NodeRegistry {
            nodes: db.collection(CLUSTER_NODES),
            bounds,
            liveness: heartbeat * 3,
            series_length,
        }
    }

    pub async fn beat(
        &self,
        node: NodeEntry<'_>,
        counts: ConnectionCounts,
        channels: Vec<ChannelCount>,
        sample: Option<Sample>,
    ) -> Result<(), Unavailable> {
        let mut update = doc! {
            "$set": {
                "address": node.address,
                "version": crate::build_info::VERSION,
                "commit": crate::build_info::COMMIT,
                "started_at": node.started_at,
                "heartbeat_at": DateTime::now(),
                "connections": as_bson(&counts)?,
                "channels": as_bson(&channels)?,
            },
        };
        if let Some(sample) = sample {
            update.insert(
                "$push",
                doc! { "series": { "$each": [as_bson(&sample)?], "$slice": -(self.series_length as i64) } },
            );
        }
        let upsert = self
            .nodes
            .update_one(doc! { "_id": node.id }, update)
            .with_options(UpdateOptions::builder().upsert(true).build());
        self.bounds.run("node_heartbeat", upsert).await.map(|_| ())
    }

    /// The other live nodes' entries (last heartbeat within the liveness window), oldest
    /// first, without the fields in `leave_out`: each caller reads only what it shows (the
    /// series are the bulk of an entry).
    async fn live_others(
        &self,
        me: &str,
        leave_out: &str,
        operation: &'static str,
    ) -> Result<Vec<NodeDocument>, Unavailable> {
        let since = DateTime::from_millis(
            DateTime::now().timestamp_millis() - self.liveness.as_millis() as i64,
        );
        let found = self
            .nodes
            .find(doc! { "heartbeat_at": { "$gte": since }, "_id": { "$ne": me } })
            .projection(doc! { leave_out: 0 })
            .sort(doc! { "started_at": 1 });
        self.bounds
            .run(operation, async { found.await?.try_collect().await })
            .await
    }

    /// The other live nodes' recent samples, as of their last heartbeats.
    pub async fn others_series(&self, me: &str) -> Result<Vec<NodeSeries>, Unavailable> {
        let others = self.live_others(me, "channels", "list_node_series").await?;
        Ok(others
            .into_iter()
            .map(|node| NodeSeries {
                id: node.id,
                samples: node.series,
            })
            .collect())
    }

    /// The live nodes: `me` first, with its current counts rather than its last heartbeat's,
    /// then the others, oldest first.
    pub async fn live(&self, me: NodeView) -> Result<Vec<NodeView>, Unavailable> {
        let others = self.live_others(&me.id, "series", "list_nodes").await?;
        let mut nodes = vec![me];
        nodes.extend(others.into_iter().map(|n| NodeView {
            id: n.id,
            address: n.address,
            version: n.version,
            commit: n.commit,
            started_at: rfc3339(n.started_at),
            heartbeat_at: rfc3339(n.heartbeat_at),
            connections: n.connections,
        }));
        Ok(nodes)
    }

    /// The other live nodes' channel counts, as of their last heartbeats, for channels whose
    /// name starts with `prefix`.
    pub async fn others_channels(
        &self,
        me: &str,
        prefix: &str,
    ) -> Result<Vec<ChannelCount>, Unavailable> {
        let others = self.live_others(me, "series", "list_node_channels").await?;
        Ok(others
            .into_iter()
            .flat_map(|node| node.channels)
            .filter(|count| count.channel.starts_with(prefix))
            .collect())
    }

    /// The ids of the nodes whose last heartbeat is at most `within` old.
    pub async fn beating_within(&self, within: Duration) -> Result<Vec<String>, Unavailable> {
        let since =
            DateTime::from_millis(DateTime::now().timestamp_millis() - within.as_millis() as i64);
        let ids = self.nodes.clone_with_type::<bson::Document>();
        let found = ids
            .find(doc! { "heartbeat_at": { "$gte": since } })
            .projection(doc! { "_id": 1 });
        let ids: Vec<bson::Document> = self
            .bounds
            .run("beating_nodes", async { found.await?.try_collect().await })
            .await?;
        Ok(ids
            .iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_owned))
            .collect())
    }

    pub async fn remove(&self, id: &str) -> Result<(), Unavailable> {
        let delete = self.nodes.delete_one(doc! { "_id": id });
        self.bounds.run("node_leave", delete).await.map(|_| ())
    }
}

fn as_bson(value: &impl Serialize) -> Result<bson::Bson, Unavailable> {
    bson::to_bson(value).map_err(|e| Unavailable(e.to_string()))
}

pub fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string()
        .unwrap_or_else(|_| at.timestamp_millis().to_string())
}
