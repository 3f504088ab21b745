//! `outbox`: publishing from the database against publishing through the API, into the same
//! channels, alternated in one run. Each round measures, for the API and then for the outbox,
//! the most publications per second `--publishers` concurrent writers get delivered (as fast
//! as each write is answered), and the latency from the write (the app's commit, for the
//! outbox) to the subscriber's receipt at a steady `--rate`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use serde_json::json;
use std::sync::Mutex;

use crate::Target;
use crate::channels::settle;
use crate::client::CHANNEL_PREFIX;
use crate::measure::{CpuWatch, percentiles_ms};
use crate::scenarios::{Report, Stamp, clients, open_many, subscribe_all, unix_micros};
use ticketgate_client::protocol::ServerMessage;

#[derive(clap::Args)]
pub struct OutboxPlan {
    /// Subscribed connections (`--subscribe 1`: each to one of `--channels`).
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Concurrent writers in the throughput phase.
    #[arg(long, default_value_t = 16)]
    pub publishers: usize,
    /// How long each throughput phase writes.
    #[arg(long, default_value_t = 10)]
    pub throughput_secs: u64,
    /// Publications per second in the latency phase.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// API then outbox, this many times.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// The replica set the gateway follows.
    #[arg(long)]
    pub mongodb_uri: String,
    /// The gateway's OUTBOX_DATABASE and OUTBOX_COLLECTION.
    #[arg(long)]
    pub outbox_database: String,
    #[arg(long, default_value = "outbox")]
    pub outbox_collection: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Api,
    Outbox,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Api => "api",
            Path::Outbox => "outbox",
        }
    }
}

/// One writer's way of publishing `data` into a channel.
struct Writers {
    http: reqwest::Client,
    base: String,
    api_key: String,
    outbox: mongodb::Collection<Document>,
}

impl Writers {
    async fn write(
        &self,
        path: Path,
        channel: usize,
        data: serde_json::Value,
    ) -> Result<(), String> {
        let channel = format!("{CHANNEL_PREFIX}{channel}");
        match path {
            Path::Api => {
                let response = self
                    .http
                    .post(format!("{}/api/channels/{channel}/publish", self.base))
                    .bearer_auth(&self.api_key)
                    .json(&json!({ "data": data }))
                    .send()
                    .await
                    .map_err(|e| format!("publishing: {e}"))?;
                match response.status().as_u16() {
                    202 => Ok(()),
                    status => Err(format!("publishing to {channel}: {status}")),
                }
            }
            Path::Outbox => {
                let data = mongodb::bson::to_bson(&data).map_err(|e| e.to_string())?;
                self.outbox
                    .insert_one(doc! { "channel": channel, "data": data })
                    .await
                    .map(drop)
                    .map_err(|e| format!("inserting into the outbox: {e}"))
            }
        }
    }
}

/// What the subscribers received.
#[derive(Default)]
struct Received {
    deliveries: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

pub async fn outbox(target: &Target, secret: &str, plan: OutboxPlan) -> Result<Report, String> {
    let clients = clients(target, secret)?;
    if clients.subscribe != 1 {
        return Err("outbox needs --subscribe 1 (each connection in one channel)".into());
    }
    let (mut sockets, _, failures) = open_many(&clients, plan.connections, plan.concurrency).await;
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} connections failed, first: {first}",
            failures.len()
        ));
    }
    let refused = subscribe_all(&clients, &mut sockets, plan.concurrency).await;
    if let Some(first) = refused.first() {
        return Err(format!(
            "{} subscriptions failed, first: {first}",
            refused.len()
        ));
    }
    let mut subscribers_of = vec![0u64; clients.channels];
    for k in 0..sockets.len() {
        for channel in clients.channels_of(k) {
            let n: usize = channel[CHANNEL_PREFIX.len()..].parse().unwrap_or(0);
            subscribers_of[n] += 1;
        }
    }
    let received = Arc::new(Received::default());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (received, stop) = (Arc::clone(&received), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let text =
                        match tokio::time::timeout(Duration::from_millis(200), socket.next_text())
                            .await
                        {
                            Err(_) => continue,
                            Ok(Ok(Some(text))) => text,
                            Ok(_) => break,
                        };
                    if let Ok(ServerMessage::Publication { data, .. }) =
                        ServerMessage::<Stamp>::parse(&text)
                    {
                        let now = unix_micros();
                        let latency =
                            Duration::from_micros(now.saturating_sub(data.t.unwrap_or(now)));
                        lock(&received.latencies).push(latency);
                        received.deliveries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    let mongo = mongodb::Client::with_uri_str(&plan.mongodb_uri)
        .await
        .map_err(|e| format!("connecting to {}: {e}", plan.mongodb_uri))?;
    let writers = Arc::new(Writers {
        http: clients.http.clone(),
        base: clients.gateways[0].base_url.clone(),
        api_key: plan.api_key.clone(),
        outbox: mongo
            .database(&plan.outbox_database)
            .collection(&plan.outbox_collection),
    });
    let channels = clients.channels;
    let mut rounds = Vec::new();
    let mut lines = Vec::new();
    for round in 1..=plan.rounds {
        for path in [Path::Api, Path::Outbox] {
            let cpu = CpuWatch::start(&target.gateway_pids);
            let throughput =
                throughput(&writers, path, &plan, channels, &subscribers_of, &received).await?;
            let latency =
                paced(&writers, path, &plan, channels, &subscribers_of, &received).await?;
            let (gateway_cpu, _) = cpu.elapsed();
            lines.push(format!(
                "round {round} {}: {:.0} publications/s ({} writers); at {:.0}/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} lost; gateway CPU {}",
                path.name(),
                throughput.0,
                plan.publishers,
                plan.rate,
                latency.0,
                latency.1,
                latency.2,
                latency.3,
                gateway_cpu.map_or("?".into(), |c| format!("{c:.1}s")),
            ));
            rounds.push(json!({
                "round": round, "path": path.name(), "publications_per_second": throughput.0,
                "throughput_lost": throughput.1, "rate": plan.rate,
                "latency_ms": {"p50": latency.0, "p99": latency.1, "max": latency.2},
                "lost": latency.3, "gateway_cpu_seconds": gateway_cpu,
            }));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }
    let mean = |path: &str| {
        let values: Vec<f64> = rounds
            .iter()
            .filter(|r| r["path"] == path)
            .filter_map(|r| r["publications_per_second"].as_f64())
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    let ratio = mean("outbox") / mean("api").max(1e-9);
    Ok(Report {
        summary: format!(
            "outbox against API, {} subscribers over {channels} channels: {}; outbox/API throughput {ratio:.2}",
            plan.connections,
            lines.join("; ")
        ),
        json: json!({
            "scenario": "outbox", "connections": plan.connections, "channels": channels,
            "publishers": plan.publishers, "rounds": rounds, "throughput_ratio": ratio,
        }),
    })
}

/// `publishers` writers as fast as each write is answered for `throughput_secs`: the
/// publications delivered per second, from the first write to the last delivery, and how
/// many deliveries never came.
async fn throughput(
    writers: &Arc<Writers>,
    path: Path,
    plan: &OutboxPlan,
    channels: usize,
    subscribers_of: &[u64],
    received: &Received,
) -> Result<(f64, u64), String> {
    let before = received.deliveries.load(Ordering::Relaxed);
    let started = Instant::now();
    let until = started + Duration::from_secs(plan.throughput_secs);
    let tasks = (0..plan.publishers.max(1)).map(|p| {
        let writers = Arc::clone(writers);
        async move {
            let (mut published, mut expected, mut i) = (0u64, 0u64, p);
            while Instant::now() < until {
                let channel = i % channels;
                writers
                    .write(path, channel, json!({"t": unix_micros(), "i": i}))
                    .await?;
                published += 1;
                expected += subscribers_of[channel];
                i += plan.publishers.max(1);
            }
            Ok::<_, String>((published, expected))
        }
    });
    let counts = futures_util::future::try_join_all(tasks).await?;
    let published: u64 = counts.iter().map(|c| c.0).sum();
    let expected: u64 = counts.iter().map(|c| c.1).sum();
    let arrived = settle(&received.deliveries, before + expected).await;
    let span = arrived.duration_since(started).as_secs_f64();
    let lost = (before + expected).saturating_sub(received.deliveries.load(Ordering::Relaxed));
    Ok((published as f64 / span.max(1e-6), lost))
}

/// Writes at `rate` for `duration_secs`, then the latency percentiles of this phase's
/// deliveries and how many never came.
async fn paced(
    writers: &Arc<Writers>,
    path: Path,
    plan: &OutboxPlan,
    channels: usize,
    subscribers_of: &[u64],
    received: &Received,
) -> Result<(f64, f64, f64, u64), String> {
    lock(&received.latencies).clear();
    let before = received.deliveries.load(Ordering::Relaxed);
    let total = (plan.rate * plan.duration_secs as f64).round() as usize;
    let writers_n = plan.publishers.max(1);
    let interval = Duration::from_secs_f64(writers_n as f64 / plan.rate.max(0.001));
    let tasks = (0..writers_n).map(|p| {
        let writers = Arc::clone(writers);
        async move {
            let mut expected = 0u64;
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in (p..total).step_by(writers_n) {
                ticks.tick().await;
                let channel = i % channels;
                writers
                    .write(path, channel, json!({"t": unix_micros(), "i": i}))
                    .await?;
                expected += subscribers_of[channel];
            }
            Ok::<_, String>(expected)
        }
    });
    let expected: u64 = futures_util::future::try_join_all(tasks)
        .await?
        .into_iter()
        .sum();
    settle(&received.deliveries, before + expected).await;
    let lost = (before + expected).saturating_sub(received.deliveries.load(Ordering::Relaxed));
    let mut latencies = std::mem::take(&mut *lock(&received.latencies));
    let (p50, p99, max) = percentiles_ms(&mut latencies);
    Ok((p50, p99, max, lost))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
