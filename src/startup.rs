//! Building the gateway from [`Settings`] and running it: split so tests can start the real
//! application on port 0 and reach its hub. `build` binds, opens the stores, starts the bus,
//! builds the shared state, and hands the application to the server (`wire::server`).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, web};

use crate::bus::{self, Bus, BusMode, NodeId, NodeInfo};
use crate::channels::ChannelName;
use crate::cluster::reaper::Reaper;
use crate::cluster::{Cluster, NodeRegistry};
use crate::config::Settings;
use crate::db::migrations::{MigrationContext, MigrationError};
use crate::db::{self, Bounds, PerThreadDatabase, Prepared, Readiness, Unavailable};
use crate::hub::Hub;
use crate::jwt::JwtVerifier;
use crate::lifecycle::{self, Fence, Lifecycle};
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::outbox::{Outbox, OutboxSettings};
use crate::routes::{self, AppState};
use crate::session::{SessionContext, SessionTiming};
use crate::shutdown::Shutdown;
use crate::store::{
    MemoryRevocations, MemoryTicketStore, MongoPresence, MongoRevocations, MongoTicketStore,
    PresenceStore, RevocationStore, TicketStore,
};
use crate::telemetry::Telemetry;
use crate::wire;
use crate::wire::server::HttpTiming;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Database(#[from] Unavailable),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error(
        "cannot listen on {addr}: {source} (is another process on that port? set BIND_ADDR, e.g. BIND_ADDR=127.0.0.1:8081)"
    )]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "OUTBOX_COLLECTION needs MongoDB as a replica set (it follows the outbox's change \
         stream and publishes in transactions); this MongoDB is a standalone server"
    )]
    OutboxNeedsReplicaSet,
    #[error("tracing: {0}")]
    Telemetry(String),
}

pub struct Application {
    port: u16,
    server: Server,
    broadcast_interval: Option<Duration>,
    state: web::Data<AppState>,
    shutdown_grace: Duration,
    bus: Arc<Bus>,
    cluster: Arc<Cluster>,
    node_heartbeat: Duration,
    /// Tripped when the other nodes declared this one lost: the process ends.
    fence: Fence,
    /// What SIGHUP reloads.
    reloadable: crate::reload::Reloadable,
    /// Flushes the last spans when the application ends.
    _exporting: crate::telemetry::Exporting,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let bind_error = |source| StartupError::Bind {
            addr: settings.server.bind_addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(settings.server.bind_addr).map_err(bind_error)?;
        let port = listener.local_addr().map_err(bind_error)?.port();
        let metrics = Arc::new(Metrics::new());
        let (telemetry, exporting) =
            Telemetry::start(&settings.telemetry).map_err(StartupError::Telemetry)?;
        let hub = Hub::new(settings.limits.connections);
        let Stores {
            tickets,
            revocations,
            presence,
            mongo,
        } = stores(&settings, &metrics).await?;
        let presence = Arc::new(presence);
        let node = node_info(&settings, port);
        let fence = Fence::default();
        let (lifecycle, adoption) = lifecycle::start(
            &settings,
            &node.id.to_string(),
            mongo.as_ref(),
            (&metrics, &telemetry),
            &fence,
        );
        let reaper = Reaper {
            presence: Arc::clone(&presence),
            namespaces: settings.channels.namespaces.clone(),
            lifecycle: adoption,
        };
        let registry = mongo.as_ref().map(|m| {
            let samples = crate::cluster::series::Series::new(settings.node.heartbeat).capacity();
            NodeRegistry::new(&m.db, m.bounds.clone(), settings.node.heartbeat, samples)
        });
        let outbox = mongo.as_ref().and_then(|m| {
            let config = settings.database.mongodb.as_ref()?.outbox.clone()?;
            Some((config, m.db.clone(), m.bounds.clone()))
        });
        let bus = start_bus(&hub, mongo, node, &metrics, settings.node.bus_narrow).await?;
        bus.stream_health().set_stall_limit(settings.node.bus_stall);
        if let Some((config, db, bounds)) = outbox {
            if bus.mode() == BusMode::Local {
                return Err(StartupError::OutboxNeedsReplicaSet);
            }
            let outbox = Outbox::new(
                OutboxSettings {
                    collection: config.collection,
                    database: config.database,
                    retention: config.retention,
                    heartbeat: settings.node.heartbeat,
                    idempotency_window: settings.channels.idempotency_window,
                    namespaces: settings.channels.namespaces.clone(),
                },
                &db,
                bounds,
                bus.node().id.clone(),
                Arc::clone(&metrics),
            );
            tokio::spawn(consume_outbox(Arc::clone(&bus), outbox));
        }
        let cluster = Cluster::new(
            Arc::clone(&bus),
            (registry, Some(reaper)),
            settings.node.heartbeat,
            Arc::clone(&metrics),
        );
        let state = app_state(
            &settings,
            tickets,
            revocations,
            presence,
            (&hub, &bus, &cluster),
            lifecycle,
            (metrics, telemetry),
        );
        let app_state = state.clone();
        let console = settings.api.console.is_some();
        let api_body_limit =
            (settings.api.key.is_some() || console).then_some(settings.api.max_body_bytes);
        let app = move || {
            App::new()
                .wrap(actix_web::middleware::from_fn(
                    routes::refuse_ambiguous_headers,
                ))
                .app_data(app_state.clone())
                .configure(|cfg| {
                    routes::configure(cfg, &app_state.origins, api_body_limit, console)
                })
        };
        let timing = HttpTiming {
            request_timeout: settings.server.http_request_timeout,
            shutdown_grace: settings.server.shutdown_grace,
        };
        let server = wire::server::serve(listener, app, timing).map_err(bind_error)?;
        log::info!("listening on {}:{port}", settings.server.bind_addr.ip());
        Ok(Application {
            port,
            server,
            broadcast_interval: settings.server.broadcast_interval,
            shutdown_grace: settings.server.shutdown_grace,
            node_heartbeat: settings.node.heartbeat,
            _exporting: exporting,
            reloadable: crate::reload::Reloadable {
                namespaces: state.session.channels.namespaces.clone(),
                jwt: Arc::clone(&state.session.jwt),
                dev_mode: settings.jwt.dev_mode,
            },
            state,
            bus,
            cluster,
            fence,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The drain that SIGTERM and SIGINT start; tests start it directly.
    pub fn shutdown(&self) -> Shutdown {
        self.state.shutdown.clone()
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn hub(&self) -> Arc<Hub> {
        Arc::clone(&self.state.session.hub)
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn session(&self) -> Arc<crate::session::SessionContext> {
        Arc::clone(&self.state.session)
    }

    #[cfg(any(test, feature = "testing"))]
    pub fn bus(&self) -> Arc<Bus> {
        Arc::clone(&self.bus)
    }

    /// Stops the server (used by tests and, later, by graceful drain).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until the server stops, running the background jobs alongside.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let demo_broadcasts = async {
            match self.broadcast_interval {
                Some(every) => {
                    let namespaces = &self.state.session.channels.namespaces;
                    let channel = namespaces
                        .is_declared(crate::channels::DEMO_NAMESPACE)
                        .then(|| ChannelName::parse(crate::channels::DEMO_CHANNEL))
                        .and_then(Result::ok)
                        .and_then(|name| Some((namespaces.options(&name).ok()?, name)))
                        .map(|(options, name)| (name, options));
                    crate::demo_broadcaster::run(Arc::clone(&self.bus), every, channel).await
                }
                None => std::future::pending().await,
            }
        };
        let state = self.state.clone();
        let forget_idle_rate_limits = async move {
            let mut every_minute = tokio::time::interval(Duration::from_secs(60));
            loop {
                every_minute.tick().await;
                state.rate_limits.forget_idle();
                if let Some(console) = &state.console {
                    console.forget_idle();
                }
            }
        };
        let heartbeat = self.cluster.heartbeat(self.node_heartbeat);
        let (server, shutdown, grace, cluster, lifecycle) = (
            self.server.handle(),
            self.state.shutdown.clone(),
            self.shutdown_grace,
            Arc::clone(&self.cluster),
            Arc::clone(&self.state.session.lifecycle),
        );
        let drain_on_signal = async move {
            let name = crate::shutdown::signal().await;
            log::info!("{name}: draining (grace {grace:?})");
            let drained = shutdown.drain(grace).await;
            log::info!(
                "drained: {} connections closed, {} left open",
                drained.closed,
                drained.left_open
            );
            // Only then leave: the survivors finish a departed node's events, and would
            // report its connections node_lost while their disconnects were on the way.
            if !lifecycle.settle(grace).await {
                log::warn!(
                    "lifecycle events still waiting after {grace:?}: the other nodes finish them"
                );
            }
            cluster.leave().await;
            server.stop(true).await;
        };
        let fenced = self.fence.tripped();
        tokio::select! {
            result = self.server => result,
            () = fenced => Err(std::io::Error::other(
                "this node was declared lost by the other nodes",
            )),
            () = drain_on_signal => Ok(()),
            () = demo_broadcasts => unreachable!("the demo broadcaster never ends"),
            () = heartbeat => unreachable!("the heartbeat never ends"),
            () = forget_idle_rate_limits => unreachable!("housekeeping never ends"),
            () = self.reloadable.on_sighup() => unreachable!("reloads never end"),
        }
    }
}

/// Who this node is: a fresh id at every start.
fn node_info(settings: &Settings, port: u16) -> NodeInfo {
    NodeInfo {
        id: NodeId::generate(&settings.node.name.clone().unwrap_or_else(host_name)),
        address: settings
            .node
            .address
            .clone()
            .unwrap_or_else(|| format!("{}:{port}", settings.server.bind_addr.ip())),
        started_at: bson::DateTime::now(),
    }
}

/// Runs the outbox consumer once the bus follows MongoDB's change stream. A MongoDB found to
/// be standalone only after the start (it was not reachable then) ends the process, as the
/// start would have.
async fn consume_outbox(bus: Arc<Bus>, outbox: Outbox) {
    loop {
        match bus.mode() {
            BusMode::ChangeStream => return outbox.run().await,
            BusMode::Local => {
                log::error!("{}", StartupError::OutboxNeedsReplicaSet);
                std::process::exit(2);
            }
            BusMode::Starting => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The bus: in process only, or on MongoDB's change stream once the database is ready (in the
/// background, serving 503 meanwhile, when it is not reachable yet).
async fn start_bus(
    hub: &Arc<Hub>,
    mongo: Option<Prepared>,
    node: NodeInfo,
    metrics: &Arc<Metrics>,
    narrow_every: std::time::Duration,
) -> Result<Arc<Bus>, StartupError> {
    let bus = Bus::new(Arc::clone(hub), node);
    bus.narrow_every(narrow_every);
    match mongo {
        None => {
            log::info!("cluster bus: in process only (the in-process store is single-node)");
            bus.deliver_locally();
        }
        Some(mongo) => match prepare(&mongo, &bus, metrics).await {
            Ok(()) => {}
            Err(NotReady::Migration(e @ MigrationError::Invalid { .. })) => {
                return Err(e.into());
            }
            Err(e) => {
                log::warn!(
                    "MongoDB is not ready yet ({e}); serving 503 and retrying in the background"
                );
                let (bus, metrics) = (Arc::clone(&bus), Arc::clone(metrics));
                tokio::spawn(async move {
                    db::retry_until_ready(|| prepare(&mongo, &bus, &metrics)).await;
                });
            }
        },
    }
    log::info!(node = bus.node().id.as_str(); "node id {}", bus.node().id);
    Ok(bus)
}

/// What every request handler and connection shares.
fn app_state(
    settings: &Settings,
    tickets: TicketStore,
    revocations: RevocationStore,
    presence: Arc<PresenceStore>,
    (hub, bus, cluster): (&Arc<Hub>, &Arc<Bus>, &Arc<Cluster>),
    lifecycle: Lifecycle,
    (metrics, telemetry): (Arc<Metrics>, Telemetry),
) -> web::Data<AppState> {
    web::Data::new(AppState {
        tickets,
        rate_limits: RateLimits::new(
            settings.limits.ticket_rate_per_min,
            settings.limits.upgrade_rate_per_min,
        ),
        trusted_proxies: settings.server.trusted_proxies.clone(),
        api_key: settings.api.key.clone(),
        console: settings
            .api
            .console
            .as_ref()
            .map(|console| Arc::new(crate::console::Console::new(console))),
        shutdown: Shutdown::new(Arc::clone(hub)),
        session: Arc::new(SessionContext {
            jwt: Arc::new(JwtVerifier::new(&settings.jwt)),
            hub: Arc::clone(hub),
            timing: SessionTiming {
                auth_timeout: settings.session.auth_timeout,
                heartbeat_interval: settings.session.heartbeat_interval,
                client_timeout: settings.session.client_timeout,
                token_refresh_notice: settings.session.token_refresh_notice,
                expiry_grace: Duration::from_secs(settings.jwt.leeway_secs),
            },
            max_message_bytes: settings.session.max_message_bytes,
            channels: settings.channels.clone(),
            bus: Arc::clone(bus),
            presence,
            upstream: Arc::new(crate::upstream::Upstream::new(
                &settings.upstream,
                Arc::clone(&metrics),
                telemetry.clone(),
            )),
            lifecycle: Arc::new(lifecycle),
            metrics,
            telemetry,
            revocations: Arc::new(revocations),
        }),
        origins: settings.server.allowed_origins.clone(),
        ticket_ttl: settings.tickets.ttl,
        compression_threshold: settings.session.compression_threshold,
        bus: Arc::clone(bus),
        cluster: Arc::clone(cluster),
    })
}

/// Where tickets, revocations and presence live, and the MongoDB behind them if any.
struct Stores {
    tickets: TicketStore,
    revocations: RevocationStore,
    presence: PresenceStore,
    mongo: Option<Prepared>,
}

async fn stores(settings: &Settings, metrics: &Arc<Metrics>) -> Result<Stores, StartupError> {
    let Some(mongo) = &settings.database.mongodb else {
        log::info!("MONGODB_URI is not set: tickets live in this process (single node only)");
        return Ok(Stores {
            tickets: TicketStore::Memory(MemoryTicketStore::new(settings.tickets)),
            revocations: RevocationStore::Memory(MemoryRevocations::new()),
            presence: PresenceStore::Local,
            mongo: None,
        });
    };
    // Only a malformed URI fails here; an unreachable server is found out by `prepare`.
    let (db, options) = db::connect_with_options(mongo, settings.database.timeout).await?;
    let bounds = Bounds {
        admission: crate::db::Admission::new(settings.database.max_in_flight),
        timeout: settings.database.timeout,
        readiness: Readiness::default(),
        metrics: Arc::clone(metrics),
    };
    let tickets = TicketStore::Mongo(
        MongoTicketStore::new(&db, settings.tickets, bounds.clone())
            .with_per_thread_clients(PerThreadDatabase::new(options, db.clone())),
    );
    let revocations = RevocationStore::Mongo(MongoRevocations::new(&db, bounds.clone()));
    let presence = PresenceStore::Mongo(MongoPresence::new(&db, bounds.clone()));
    let migrations = MigrationContext::of(settings);
    Ok(Stores {
        tickets,
        revocations,
        presence,
        mongo: Some(Prepared {
            db,
            bounds,
            migrations,
            keeps_history: settings.channels.namespaces.any_history(),
        }),
    })
}

/// Why MongoDB is not ready for business yet.
#[derive(Debug, thiserror::Error)]
enum NotReady {
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("starting the cluster bus: {0}")]
    Bus(#[from] Unavailable),
}

/// Applies the migrations, then settles the bus on the change stream.
async fn prepare(mongo: &Prepared, bus: &Arc<Bus>, metrics: &Arc<Metrics>) -> Result<(), NotReady> {
    mongo.migrate().await?;
    bus::start_on_mongodb(bus, &mongo.db, &mongo.bounds, metrics).await?;
    Ok(())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| crate::config::is_node_name(name))
        .unwrap_or_else(|| "ticketgate".into())
}
