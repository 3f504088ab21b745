//! The bus: the one seam every broadcast, user message, disconnect and revocation goes
//! through. On one node it delivers in process. When MongoDB is a replica set it carries them
//! between nodes: each node writes events to `cluster_events`, and publications into history
//! channels to their histories ([`writer`]), and delivers everyone's, its own included, from
//! one change stream ([`stream`]), so every node delivers every event exactly once and in the
//! order it was written.

mod appends;
mod batch;
mod events;
pub mod forward;
mod health;
pub mod interest;
mod once;
mod stream;
pub mod transaction;
mod writer;

use std::sync::{Arc, Mutex, OnceLock};

use bson::doc;
use mongodb::Database;
use tokio::sync::{mpsc, oneshot};

pub use events::{Command, Event, EventDocument, Sequencer, StreamPublication};
pub use forward::Post;
use forward::{FORWARD_PATIENCE, Forwarding};
pub use health::StreamHealth;
pub use interest::Covering;
use interest::Interest;
pub use once::{BadKey, IdempotencyKey, MAX_KEY_BYTES};
use once::{FirstAnswer, LocalKeys};

use crate::channels::{ChannelName, HistoryOptions};
use crate::db::collections::{CHANNEL_HISTORY, CLUSTER_EVENTS};
use crate::db::{Bounds, Unavailable};
use crate::hub::{Hub, Posted};
use crate::metrics::Metrics;
use crate::store::cluster_events::ClusterEvents;
use crate::store::publish_keys::PublishKeys;
use crate::store::{HistoryPage, HistoryQuery, HistoryStore, MemoryHistory, MongoHistory};

/// What a node says about itself.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where operators reach it (NODE_ADDRESS, or the address it listens on).
    pub address: String,
    pub started_at: bson::DateTime,
}

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
    /// A keyed publication made before within the key's window: nothing was published now,
    /// and `streams` (and on one node `reach`) are the first one's.
    pub duplicate: bool,
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
        /// How long a subscribe waits for the stream to take its channel's partition in.
        cover_patience: std::time::Duration,
    },
}

struct LocalRoute {
    sequencer: Sequencer,
    history: Arc<MemoryHistory>,
    keys: LocalKeys,
}

pub struct Bus {
    hub: Arc<Hub>,
    node: NodeInfo,
    /// The change stream's liveness (in a cluster).
    health: Arc<StreamHealth>,
    forwarding: Arc<Forwarding>,
    /// Which channel partitions the change stream carries (in a cluster).
    interest: Arc<Interest>,
    /// Unset until MongoDB's topology is known; commands meanwhile answer "unavailable".
    route: OnceLock<Route>,
}

impl Bus {
    /// A bus for a node whose route is decided later: by [`Bus::deliver_locally`] or
    /// [`start_on_mongodb`].
    pub fn new(hub: Arc<Hub>, node: NodeInfo) -> Arc<Self> {
        Arc::new(Bus {
            forwarding: Arc::new(Forwarding::new(node.id.clone(), Arc::clone(&hub))),
            health: Arc::default(),
            interest: Interest::new(Arc::clone(&hub)),
            hub,
            node,
            route: OnceLock::new(),
        })
    }

    /// How often the change stream drops the channel partitions nobody here holds any more
    /// (BUS_NARROW_SECS); set before the stream starts.
    pub fn narrow_every(&self, every: std::time::Duration) {
        self.interest.narrow_every(every);
    }

    /// Settles the bus on in-process delivery (single node).
    pub fn deliver_locally(&self) {
        let _ = self.route.set(Route::Local(Mutex::new(LocalRoute {
            sequencer: Sequencer::new(self.node.id.clone()),
            history: Arc::default(),
            keys: LocalKeys::default(),
        })));
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Whether the change stream has heard from MongoDB lately (see `health.rs`).
    pub fn stream_health(&self) -> &StreamHealth {
        &self.health
    }

    /// The hub this bus delivers to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub fn mode(&self) -> BusMode {
        match self.route.get() {
            None => BusMode::Starting,
            Some(Route::Local(_)) => BusMode::Local,
            Some(Route::Cluster { .. }) => BusMode::ChangeStream,
        }
    }

    /// Makes sure this node receives `channel`'s publications before a subscription to it
    /// joins the hub: in a cluster, waits until the change stream carries the channel's
    /// partition (`interest.rs`). Keep the answer until the subscription has joined.
    pub async fn cover(&self, channel: &ChannelName) -> Result<Covering, Unavailable> {
        match self.route.get() {
            None => Err(Unavailable("the cluster bus is waiting for MongoDB".into())),
            Some(Route::Local(_)) => Ok(Covering::local()),
            Some(Route::Cluster { cover_patience, .. }) => {
                self.interest.cover(channel.as_str(), *cover_patience).await
            }
        }
    }

    /// Carries out `command` on every node the bus reaches.
    pub async fn send(&self, command: Command) -> Result<Receipt, Unavailable> {
        self.send_keyed(command, None).await
    }

    /// Carries out a publication unless `key` was used within its window (then nothing
    /// happens, and the receipt is the first one's, marked `duplicate`); see `once.rs`.
    pub async fn send_keyed(
        &self,
        command: Command,
        key: Option<IdempotencyKey>,
    ) -> Result<Receipt, Unavailable> {
        match self.route.get() {
            None => Err(Unavailable("the cluster bus is waiting for MongoDB".into())),
            Some(Route::Local(route)) => {
                // Held while delivering, so seq order and offset order are delivery order.
                let mut route = route.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(first) = key.as_ref().and_then(|key| route.keys.get(key)) {
                    return Ok(Receipt {
                        seq: None,
                        reach: Reach::Node(first.reached.unwrap_or(0)),
                        streams: first.streams,
                        duplicate: true,
                    });
                }
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
                if let Some(key) = &key {
                    let first = FirstAnswer {
                        streams: streams.clone(),
                        reached: Some(reached),
                    };
                    route.keys.record(key, first);
                }
                Ok(Receipt {
                    seq: stamped.seq,
                    reach: Reach::Node(reached),
                    streams,
                    duplicate: false,
                })
            }
            Some(Route::Cluster { queue, .. }) => {
                let (reply, written) = oneshot::channel();
                let gone = || Unavailable("the cluster bus writer stopped".into());
                queue
                    .send(writer::Outgoing {
                        command,
                        key,
                        reply,
                    })
                    .await
                    .map_err(|_| gone())?;
                let written = written.await.map_err(|_| gone())??;
                Ok(Receipt {
                    seq: written.seq,
                    reach: Reach::Cluster,
                    streams: written.streams,
                    duplicate: written.duplicate,
                })
            }
        }
    }

    /// Applies a client's request to the inbox of `post.session` on `node`: here at once, or
    /// forwarded through the cluster to the node that holds it, answered once that node has
    /// applied it. A node that does not answer within [`FORWARD_PATIENCE`] holds no such
    /// session.
    pub async fn post(&self, node: &str, post: Post) -> Result<Posted, Unavailable> {
        if node == self.node.id.as_str() {
            let Post {
                session,
                seq,
                messages,
                body_bytes,
            } = post;
            return Ok(self.hub.inboxes().post(&session, seq, messages, body_bytes));
        }
        match self.route.get() {
            None => Err(Unavailable("the cluster bus is waiting for MongoDB".into())),
            // One node is the whole cluster: no other node holds anything.
            Some(Route::Local(_)) => Ok(Posted::Unknown),
            Some(Route::Cluster { .. }) => {
                let (request, answer, _waiting) = self.forwarding.wait_for_answer();
                let command = Command::Post {
                    to: node.to_owned(),
                    request,
                    post,
                };
                self.send(command).await?;
                match tokio::time::timeout(FORWARD_PATIENCE, answer).await {
                    Ok(Ok(posted)) => Ok(posted),
                    Ok(Err(_)) | Err(_) => Ok(Posted::Unknown),
                }
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
    // Open the stream before accepting commands, so this node sees its own first event. It
    // carries no channel's publications until a subscriber here wants them.
    let coverage = bus.interest.target();
    let opened = stream::open(db, &stream::Place::Now, bounds.timeout, &coverage).await?;
    bus.interest.opened(coverage.clone());
    metrics
        .bus_partitions
        .set(coverage.partition_count() as i64);
    let (queue, outgoing) = mpsc::channel(writer::QUEUE);
    bus.forwarding.answer_through(queue.clone());
    let follower = stream::Follower::new(
        db.clone(),
        Arc::clone(&bus.hub),
        Arc::clone(&bus.forwarding),
        Arc::clone(metrics),
        bounds.timeout,
        Arc::clone(&bus.health),
        Arc::clone(&bus.interest),
    );
    bus.health.answered();
    tokio::spawn(follower.run(opened));
    let history = Arc::new(MongoHistory::new(db, bounds.clone()));
    let writer = writer::Writer {
        db: db.clone(),
        events: ClusterEvents::new(db, bounds.clone()),
        keys: PublishKeys::new(db),
        history: Arc::clone(&history),
        sequencer: Sequencer::new(bus.node.id.clone()),
        node: bus.node.id.clone(),
        bounds: bounds.clone(),
        metrics: Arc::clone(metrics),
    };
    tokio::spawn(writer.run(outgoing));
    let _ = bus.route.set(Route::Cluster {
        queue,
        history,
        // Reopening the stream is one aggregate command: the store's bound, twice over.
        cover_patience: bounds.timeout * 2,
    });
    log::info!(
        "cluster bus: MongoDB replica set, change stream on {CLUSTER_EVENTS} and \
         {CHANNEL_HISTORY}, carrying the channels this node has subscribers in (node {})",
        bus.node.id
    );
    Ok(BusMode::ChangeStream)
}
