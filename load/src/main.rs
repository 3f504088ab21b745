//! `ticketgate-load`: a load generator that behaves like real clients. It mints JWTs with the
//! gateway's secret, fetches tickets, upgrades, authenticates, then runs one scenario and prints
//! a summary line and a JSON line.
//!
//!   ticketgate-load connect --connections 20000 --concurrency 200 --gateway-pid $(pidof ticketgate)
//!   ticketgate-load fanout  --connections 10000 --messages 100 --rate 50 --size 100 --api-key …
//!   ticketgate-load idle    --connections 19000 --hold-secs 30 --gateway-pid …
//!   ticketgate-load --url http://127.0.0.1:8081 --url http://127.0.0.1:8082 \
//!       fanout --publish-url http://127.0.0.1:8083 …     (cross-node: receive on 2 nodes, publish on a 3rd)
//!
//! Sockets are spread over the loopback source addresses 127.0.0.2… (see `--source-addresses`)
//! so that one process is not limited by one address's ephemeral ports; one process holds at
//! most ~19,900 sockets here (20,000 open files), so larger runs use several processes.

mod channels;
mod client;
mod deflate_socket;
mod history;
mod measure;
mod outbox;
mod roundtrip;
mod rpc;
mod scenarios;
mod sse_socket;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "ticketgate-load",
    version,
    about = "Load generator for ticketgate"
)]
struct Cli {
    #[command(flatten)]
    target: Target,
    /// The generator's threads; 0: one per core. On a machine the gateway and mongod share,
    /// one thread keeps the generator's share of the cores small: its threads otherwise spend
    /// most of their time waking each other (a client on a machine of its own costs the
    /// gateway's machine nothing).
    #[arg(long, default_value_t = 0, global = true)]
    threads: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

/// Where the gateway is and how to pass as its clients.
#[derive(Args, Clone)]
pub struct Target {
    /// A gateway's base URL; repeat it for several nodes, and connections are spread over
    /// them in turn.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080", global = true)]
    pub urls: Vec<String>,
    /// The gateway's JWT_SECRET, to mint user JWTs.
    #[arg(long, env = "JWT_SECRET", global = true, hide_env_values = true)]
    pub secret: Option<String>,
    /// The gateway's process id: its CPU time and memory are read from /proc. Repeat it for
    /// several nodes; their figures are summed.
    #[arg(long = "gateway-pid", global = true)]
    pub gateway_pids: Vec<u32>,
    /// How many loopback source addresses to spread sockets over (127.0.0.2 onwards).
    #[arg(long, default_value_t = 4, global = true)]
    pub source_addresses: u8,
    /// Users are named `load-<i>`; this prefix tells several generator processes apart.
    #[arg(long, default_value = "load", global = true)]
    pub user_prefix: String,
    /// Negotiate permessage-deflate on every connection (the gateway needs WS_COMPRESSION=true).
    #[arg(long, global = true)]
    pub compression: bool,
    /// Channels each connection subscribes to once authenticated, granted by its JWT's
    /// `channels` claim (`load:*`); 0: none.
    #[arg(long, default_value_t = 0, global = true)]
    pub subscribe: usize,
    /// The channels subscriptions are spread over, evenly: `load:c0` … (every channel gets
    /// connections × subscribe / channels subscribers).
    #[arg(long, default_value_t = 1000, global = true)]
    pub channels: usize,
    /// Give every JWT a `jti` of its own, as apps that revoke tokens do: the gateway then
    /// looks it up among the revocations at minting and at authentication.
    #[arg(long, global = true)]
    pub jti: bool,
    /// How clients connect: a WebSocket, or Server-Sent Events with their messages posted.
    #[arg(long, value_enum, default_value = "websocket", global = true)]
    pub transport: client::TransportChoice,
    /// SSE: post client messages to this base URL instead of the stream's node (to measure
    /// a POST forwarded through the cluster bus).
    #[arg(long, global = true)]
    pub post_url: Option<String>,
}

#[derive(Subcommand)]
enum Scenario {
    /// N full two-phase authentications, C in flight: authentications/s, latency, CPU per auth.
    Connect {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// Hold N connections; publish M broadcasts at R/s through the server API: deliveries/s,
    /// publish-to-receipt latency, losses, CPU per delivery.
    Fanout(scenarios::FanoutPlan),
    /// Hold N connections, each subscribed to --subscribe of --channels channels: the subscribe
    /// rate; then broadcasts, then publications to random channels at R/s for T seconds:
    /// CPU per delivery of each, latency, losses.
    Channels(scenarios::ChannelsPlan),
    /// Publications into history channels (a namespace with history_size): publications/s
    /// and publish latency, as fast as it goes or at --rate.
    HistoryPublish(history::PublishPlan),
    /// Subscribers whose connections are cut every ~15 s for ~2 s while publications flow,
    /// recovering with `since`: who got every publication, replay latency.
    Jitter(history::JitterPlan),
    /// Subscribers on one node; the node killed, publications made through another, the node
    /// started again: time until every subscriber recovered, reads per recovery.
    RestartStorm(history::StormPlan),
    /// RPCs through the gateway to a minimal backend (`backend`), against calling the backend
    /// directly: RPC/s, added latency, gateway CPU per RPC.
    Rpc(rpc::RpcPlan),
    /// One ping in flight per connection for T seconds: the round trip to its pong, p50/p99
    /// (on SSE: POST → event; with --post-url, through another node).
    Roundtrip(roundtrip::RoundtripPlan),
    /// Publishing from the database (OUTBOX_COLLECTION) against the API, alternated: the
    /// publications per second each delivers, and the latency from the write at a steady rate.
    Outbox(outbox::OutboxPlan),
    /// The minimal app backend for `rpc`: answers every POST with `{"result": <data>}`.
    Backend {
        #[arg(long)]
        port: u16,
    },
    /// Hold N authenticated idle connections for T seconds: RSS per connection, idle CPU.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// Generator processes to spread the sockets over; 0: as many as needed for at most
        /// 19,000 sockets each (a process may open 20,000 files here).
        #[arg(long, default_value_t = 0)]
        processes: usize,
    },
    /// One process of a spread `idle` run: opens its share, says `ready <held> <failed>` on
    /// stdout, and holds the sockets until its stdin closes.
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        connections: usize,
        #[arg(long)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(secret) = cli.target.secret.clone() else {
        eprintln!("ticketgate-load: give the gateway's JWT_SECRET (--secret or the environment)");
        return ExitCode::FAILURE;
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if cli.threads > 0 {
        runtime.worker_threads(cli.threads);
    }
    let runtime = runtime.enable_all().build().expect("a runtime");
    let target = cli.target;
    let outcome = runtime.block_on(async move {
        match cli.scenario {
            Scenario::Connect {
                connections,
                concurrency,
            } => scenarios::connect(&target, &secret, connections, concurrency).await,
            Scenario::Fanout(plan) => scenarios::fanout(&target, &secret, plan).await,
            Scenario::Channels(plan) => scenarios::channels(&target, &secret, plan).await,
            Scenario::HistoryPublish(plan) => {
                history::history_publish(&target, &secret, plan).await
            }
            Scenario::Jitter(plan) => history::jitter(&target, &secret, plan).await,
            Scenario::RestartStorm(plan) => history::restart_storm(&target, &secret, plan).await,
            Scenario::Rpc(plan) => rpc::rpc(&target, &secret, plan).await,
            Scenario::Roundtrip(plan) => roundtrip::roundtrip(&target, &secret, plan).await,
            Scenario::Outbox(plan) => outbox::outbox(&target, &secret, plan).await,
            Scenario::Backend { port } => rpc::backend(port).await,
            Scenario::Idle {
                connections,
                concurrency,
                hold_secs,
                processes,
            } => {
                let processes = match processes {
                    0 => connections.div_ceil(scenarios::SOCKETS_PER_PROCESS).max(1),
                    n => n,
                };
                if processes == 1 {
                    scenarios::idle(&target, &secret, connections, concurrency, hold_secs).await
                } else {
                    let plan = scenarios::SpreadIdle {
                        connections,
                        concurrency,
                        hold_secs,
                        processes,
                    };
                    scenarios::idle_spread(&target, &secret, plan).await
                }
            }
            Scenario::IdleWorker {
                connections,
                concurrency,
            } => scenarios::idle_worker(&target, &secret, connections, concurrency).await,
        }
    });
    match outcome {
        Ok(report) => {
            // A worker's reader may be gone by now (its coordinator stopped listening after
            // `ready`): a closed stdout is not an error worth a panic.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", report.summary);
            let _ = writeln!(out, "{}", report.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ticketgate-load: {e}");
            ExitCode::FAILURE
        }
    }
}
