//! The bus: the one seam every broadcast, user message, disconnect and revocation goes
//! through. On one node it delivers in process. When MongoDB is a replica set it carries them
//! between nodes: each node writes events to `cluster_events`, and publications into history
//! channels to their histories ([`writer`]), and delivers everyone's, its own included, from
//! one change stream ([`stream`]), so every node delivers every event exactly once and in the
//! order it was written.

mod appends;
mod events;
mod nodes;
mod reaper;
mod stream;
mod writer;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bson::doc;
use mongodb::Database;
use tokio::sync::{mpsc, oneshot};

pub use events::{Command, Event, EventDocument, Sequencer, StreamPublication};
pub use nodes::{
    ChannelCount, ClusterCounts, NodeInfo, NodeRegistry, NodeSeries, NodeView, NodesSeries,
};
pub use reaper::Reaper;

use crate::channels::{ChannelName, HistoryOptions};
use crate::db::collections::{CHANNEL_HISTORY, CLUSTER_EVENTS};
use crate::db::{Bounds, Unavailable};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::{HistoryPage, HistoryQuery, HistoryStore, MemoryHistory, MongoHistory};

/// A node's identity: its name plus a random suffix drawn at every start, so a restarted node
/// is a new publisher whose `seq` starts again at 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(Arc<str>);

impl NodeId {
    pub fn generate(name: &str) -> Self {
        let suffix: [u8; 4] = crate::config::random_bytes();
        let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
        NodeId(Arc::from(format!("{name}-{hex}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        NodeId(Arc::from(id))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// How far an event went by the time the bus answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Delivered in process to this many of this node's connections.
    Node(usize),
    /// Written to the cluster; every node delivers it from its change stream.
    Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Broadcasts only: their number in this node's series.
    pub seq: Option<u64>,
    pub reach: Reach,
    /// Publications into history channels: the offset and epoch each got.
    pub streams: Vec<StreamPublication>,
}

/// Which way events travel; reported by `GET /api/nodes` and in the log at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BusMode {
    /// MongoDB's topology is not known yet (it has not answered since the start).
    Starting,
    /// This node only: the in-process store or a standalone MongoDB.
    Local,
    /// Every node on the replica set, through change streams.
    ChangeStream,
}

enum Route {
    /// One node: history in process, appended and delivered under one lock.
    Local(Mutex<LocalRoute>),
    Cluster {
        queue: mpsc::Sender<writer::Outgoing>,
        history: Arc<MongoHistory>,
    },
}

struct LocalRoute {
    sequencer: Sequencer,
    history: Arc<MemoryHistory>,
}

pub struct Bus {
    hub: Arc<Hub>,
    node: NodeInfo,
    /// Unset until MongoDB's topology is known; commands meanwhile answer "unavailable".
    route: OnceLock<Route>,
    registry: Option<NodeRegistry>,
    /// Clears dead nodes' presence at each heartbeat (presence in MongoDB only).
    reaper: Option<Reaper>,
    /// This node's recent metrics, sampled at each heartbeat, for the console.
    series: crate::series::Series,
    metrics: Arc<Metrics>,
}

impl Bus {
    /// A bus for a node whose route is decided later: by [`Bus::deliver_locally`] or
    /// [`start_on_mongodb`].
    pub fn new(
        hub: Arc<Hub>,
        node: NodeInfo,
        (registry, reaper): (Option<NodeRegistry>, Option<Reaper>),
        heartbeat: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Bus {
            hub,
            node,
            route: OnceLock::new(),
            registry,
            reaper,
            series: crate::series::Series::new(heartbeat),
            metrics,
        })
    }

    /// Settles the bus on in-process delivery (single node).
    pub fn deliver_locally(&self) {
        let _ = self.route.set(Route::Local(Mutex::new(LocalRoute {
            sequencer: Sequencer::new(self.node.id.clone()),
            history: Arc::default(),
        })));
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    pub fn mode(&self) -> BusMode {
        match self.route.get() {
            None => BusMode::Starting,
            Some(Route::Local(_)) => BusMode::Local,
            Some(Route::Cluster { .. }) => BusMode::ChangeStream,
        }
    }

    /// Carries out `command` on every node the bus reaches.
    pub async fn send(&self, command: Command) -> Result<Receipt, Unavailable> {
        match self.route.get() {
            None => Err(Unavailable("the cluster bus is waiting for MongoDB".into())),
            Some(Route::Local(route)) => {
                // Held while delivering, so seq order and offset order are delivery order.
                let mut route = route.lock().unwrap_or_else(|p| p.into_inner());
                let options = command.history_options();
                let mut stamped = route.sequencer.stamp(command);
                let history = Arc::clone(&route.history);
                stamped
                    .event
                    .number_streams(&options, |channel, options, data| {
                        history.append(channel, options, data)
                    });
                let streams = stamped.event.streams().to_vec();
                let reached = stamped.event.deliver(&self.hub);
                Ok(Receipt {
                    seq: stamped.seq,
                    reach: Reach::Node(reached),
                    streams,
                })
            }
            Some(Route::Cluster { queue, .. }) => {
                let (reply, written) = oneshot::channel();
                let gone = || Unavailable("the cluster bus writer stopped".into());
                queue
                    .send(writer::Outgoing { command, reply })
                    .await
                    .map_err(|_| gone())?;
                let written = written.await.map_err(|_| gone())??;
                Ok(Receipt {
                    seq: written.seq,
                    reach: Reach::Cluster,
                    streams: written.streams,
                })
            }
        }
    }

    /// Where history is read from: in process on one node, MongoDB in a cluster.
    pub fn history(&self) -> Result<HistoryStore, Unavailable> {
        match self.route.get() {
            None => Err(Unavailable("the cluster bus is waiting for MongoDB".into())),
            Some(Route::Local(route)) => Ok(HistoryStore::Memory(Arc::clone(
                &route.lock().unwrap_or_else(|p| p.into_inner()).history,
            ))),
            Some(Route::Cluster { history, .. }) => Ok(HistoryStore::Mongo(Arc::clone(history))),
        }
    }

    /// Reads `channel`'s history.
    pub async fn read_history(
        &self,
        channel: &ChannelName,
        options: HistoryOptions,
        query: HistoryQuery,
    ) -> Result<HistoryPage, Unavailable> {
        self.history()?.read(channel, options, query).await
    }

    /// The live nodes, this one first with its current counts.
    pub async fn nodes(&self) -> Result<Vec<NodeView>, Unavailable> {
        let me = self.node.view(self.hub.counts());
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
            for count in registry.others_channels(&self.node.id, prefix).await? {
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
            id: self.node.id.to_string(),
            samples: self.series.samples(),
        }];
        if let Some(registry) = &self.registry {
            nodes.extend(registry.others_series(&self.node.id).await?);
        }
        Ok(NodesSeries {
            step_secs: self.heartbeat_secs(),
            nodes,
        })
    }

    fn heartbeat_secs(&self) -> u64 {
        (crate::series::WINDOW.as_secs() / self.series.capacity() as u64).max(1)
    }

    /// Registers this node and refreshes its entry every `every` until the process ends,
    /// sampling its metrics at each beat.
    pub async fn heartbeat(&self, every: Duration) {
        let Some(registry) = &self.registry else {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                self.series.sample(&self.metrics, self.hub.counts());
            }
        };
        let mut ticks = tokio::time::interval(every);
        // Since when every beat succeeded promptly: after MongoDB was away every node's last
        // beat is old (a beat that waited out the outage carries the time it was sent), and
        // no node may be declared dead before it had the same time to beat again.
        let mut beating_since: Option<std::time::Instant> = None;
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
            let sent = std::time::Instant::now();
            let beat = registry.beat(&self.node, self.hub.counts(), channels, sample);
            if let Err(e) = beat.await {
                log::debug!("node heartbeat: {e}");
                beating_since = None;
                continue;
            }
            if sent.elapsed() > every {
                beating_since = None;
            }
            let since = *beating_since.get_or_insert_with(std::time::Instant::now);
            let Some(reaper) = &self.reaper else { continue };
            if since.elapsed() < every * 2 {
                continue;
            }
            // Two missed beats make a node dead here (three hide it from listings): with a
            // sweep every beat, a dead node's presence and connections are gone within three.
            let swept = async {
                let live = registry.beating_within(every * 2).await?;
                reaper.sweep(self, &live).await
            };
            if let Err(e) = swept.await {
                log::debug!("sweeping dead nodes' presence: {e}");
            }
        }
    }

    /// Removes this node from the registry (graceful shutdown).
    pub async fn leave(&self) {
        if let Some(registry) = &self.registry
            && let Err(e) = registry.remove(&self.node.id).await
        {
            log::warn!("removing this node from the registry: {e}");
        }
    }
}

/// Settles the bus once MongoDB answers: a replica set (or sharded cluster) gets the change
/// stream; a standalone server, which has no change streams, gets in-process delivery. Either
/// way the log says which. Spawns nothing unless it succeeds, so a caller may retry it.
pub async fn start_on_mongodb(
    bus: &Arc<Bus>,
    db: &Database,
    bounds: &Bounds,
    metrics: &Arc<Metrics>,
) -> Result<BusMode, Unavailable> {
    if bus.route.get().is_some() {
        return Ok(bus.mode());
    }
    let hello = bounds
        .run("hello", db.run_command(doc! { "hello": 1 }))
        .await?;
    let replicated = hello.contains_key("setName") || hello.get_str("msg") == Ok("isdbgrid");
    if !replicated {
        log::warn!(
            "MongoDB is a standalone server, which has no change streams: broadcasts, messages, \
             disconnects and revocations reach this node's connections only. Run MongoDB as a \
             replica set to use several nodes."
        );
        bus.deliver_locally();
        return Ok(BusMode::Local);
    }
    // Open the stream before accepting commands, so this node sees its own first event.
    let opened = stream::open(db, None, bounds.timeout).await?;
    let follower = stream::Follower::new(
        db.clone(),
        Arc::clone(&bus.hub),
        Arc::clone(metrics),
        bounds.timeout,
    );
    tokio::spawn(follower.run(opened));
    let (queue, outgoing) = mpsc::channel(writer::QUEUE);
    let history = Arc::new(MongoHistory::new(db, bounds.clone()));
    let writer = writer::Writer {
        events: db.collection(CLUSTER_EVENTS),
        history: Arc::clone(&history),
        sequencer: Sequencer::new(bus.node.id.clone()),
        node: bus.node.id.clone(),
        bounds: bounds.clone(),
        metrics: Arc::clone(metrics),
    };
    tokio::spawn(writer.run(outgoing));
    let _ = bus.route.set(Route::Cluster { queue, history });
    log::info!(
        "cluster bus: MongoDB replica set, change stream on {CLUSTER_EVENTS} and \
         {CHANNEL_HISTORY} (node {})",
        bus.node.id
    );
    Ok(BusMode::ChangeStream)
}
