//! The scenarios (channels in `channels.rs`). Each returns a one-line summary and a JSON document.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, stream};
use serde_json::json;
use ticketgate_client::protocol::ServerMessage;
use tokio::sync::Mutex;

use crate::Target;
use crate::client::{Clients, Socket};
use crate::measure::{CpuWatch, percentiles_ms, total_rss_kib};

pub struct Report {
    pub summary: String,
    pub json: serde_json::Value,
}

pub(crate) fn clients(target: &Target, secret: &str) -> Result<Clients, String> {
    let mut clients = Clients::new(
        &target.urls,
        secret,
        target.source_addresses,
        &target.user_prefix,
        target.compression,
        (target.subscribe, target.channels),
    )?;
    clients.jti = target.jti;
    clients.transport = target.transport;
    clients.post_url = target.post_url.clone();
    Ok(clients)
}

/// Subscribes every socket to its channels (`Clients::channels_of` its position), `concurrency`
/// sockets at a time; the failures' messages.
pub(crate) async fn subscribe_all(
    clients: &Clients,
    sockets: &mut [Socket],
    concurrency: usize,
) -> Vec<String> {
    if clients.subscribe == 0 {
        return Vec::new();
    }
    stream::iter(sockets.iter_mut().enumerate())
        .map(|(k, socket)| async move { socket.subscribe(&clients.channels_of(k)).await })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|outcome| async move { outcome.err() })
        .collect()
        .await
}

/// The publisher's timestamp in a broadcast's or publication's data, all the readers read of
/// it (the padding is skipped unread).
#[derive(serde::Deserialize, Default)]
pub struct Stamp {
    pub t: Option<u64>,
}

/// Opens `count` authenticated connections, `concurrency` at a time: the sockets and each one's
/// ticket-to-authenticated time, plus the failures' messages.
pub(crate) async fn open_many(
    clients: &Clients,
    count: usize,
    concurrency: usize,
) -> (Vec<Socket>, Vec<Duration>, Vec<String>) {
    let outcomes: Vec<Result<(Socket, Duration), ticketgate_client::Error>> =
        stream::iter(0..count)
            .map(|i| clients.authenticate(i))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
    let (mut sockets, mut latencies, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            Ok((socket, latency)) => {
                sockets.push(socket);
                latencies.push(latency);
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    (sockets, latencies, failures)
}

pub(crate) fn per(value: Option<f64>, count: usize, scale: f64) -> Option<f64> {
    value
        .filter(|_| count > 0)
        .map(|v| v * scale / count as f64)
}

pub async fn connect(
    target: &Target,
    secret: &str,
    connections: usize,
    concurrency: usize,
) -> Result<Report, String> {
    let clients = clients(target, secret)?;
    let cpu = CpuWatch::start(&target.gateway_pids);
    let started = Instant::now();
    // Each socket is closed as soon as it authenticated: this measures authentication, not holding.
    let outcomes: Vec<Result<Duration, String>> = stream::iter(0..connections)
        .map(|i| {
            let clients = &clients;
            async move {
                clients
                    .authenticate(i)
                    .await
                    .map(|(_socket, latency)| latency)
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let wall = started.elapsed().as_secs_f64();
    let (gateway_cpu, own_cpu) = cpu.elapsed();
    let mut latencies: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    let failures: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    let authenticated = latencies.len();
    let (p50, p99, max) = percentiles_ms(&mut latencies);
    let rate = authenticated as f64 / wall;
    let cpu_per_auth_us = per(gateway_cpu, authenticated, 1e6);
    Ok(Report {
        summary: format!(
            "connect: {authenticated}/{connections} authenticated in {wall:.2}s = {rate:.0}/s; p50 {p50:.1} ms, p99 {p99:.1} ms; \
             gateway CPU per auth {} µs; generator CPU {}",
            cpu_per_auth_us.map_or("?".into(), |v| format!("{v:.0}")),
            own_cpu.map_or("?".into(), |v| format!("{v:.2}s")),
        ),
        json: json!({
            "scenario": "connect", "connections": connections, "concurrency": concurrency,
            "authenticated": authenticated, "failures": failures.len(), "first_failure": failures.first(),
            "seconds": wall, "authentications_per_second": rate,
            "latency_ms": {"p50": p50, "p99": p99, "max": max},
            "gateway_cpu_seconds": gateway_cpu, "gateway_cpu_us_per_auth": cpu_per_auth_us,
            "generator_cpu_seconds": own_cpu,
        }),
    })
}

/// The fanout scenario's parameters, straight from its command line.
#[derive(clap::Args)]
pub struct FanoutPlan {
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Bytes of padding in each broadcast's data.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Padding of words drawn at random from a small vocabulary, which compresses about as
    /// well as real JSON does (default: `x` repeated, which compresses to almost nothing).
    #[arg(long)]
    pub word_padding: bool,
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Where broadcasts are published (default: the first --url). A node that holds none of
    /// the connections makes every delivery cross nodes.
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Publishing requests in flight at once, sharing --rate between them.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
}

/// Publishes `plan.messages` broadcasts at `plan.rate` per second in all, from
/// `plan.publishers` tasks, each stamped with its publication time.
async fn publish_all(clients: &Clients, plan: &FanoutPlan) -> Result<(), String> {
    let url = match &plan.publish_url {
        Some(url) => format!("{}/api/broadcast", url.trim_end_matches('/')),
        None => format!("{}/api/broadcast", clients.gateways[0].base_url),
    };
    let publishers = plan.publishers.clamp(1, plan.messages.max(1));
    let padding = if plan.word_padding {
        word_padding(plan.size)
    } else {
        "x".repeat(plan.size)
    };
    let interval = Duration::from_secs_f64(publishers as f64 / plan.rate.max(0.001));
    let tasks = (0..publishers).map(|p| {
        let (url, padding) = (&url, &padding);
        async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for i in (p..plan.messages).step_by(publishers) {
                ticks.tick().await;
                let data = json!({"t": unix_micros(), "i": i, "pad": padding});
                let response = clients
                    .http
                    .post(url)
                    .bearer_auth(&plan.api_key)
                    .json(&json!({"data": data}))
                    .send()
                    .await
                    .map_err(|e| format!("publishing: {e}"))?;
                if response.status() != 202 {
                    return Err(format!("publishing: {}", response.status()));
                }
            }
            Ok(())
        }
    });
    futures_util::future::try_join_all(tasks).await.map(|_| ())
}

/// `size` bytes of words, chosen by a fixed xorshift sequence so every run sends the same.
pub(crate) fn word_padding(size: usize) -> String {
    const WORDS: [&str; 32] = [
        "user", "channel", "message", "online", "status", "price", "order", "cursor", "room",
        "update", "created", "deleted", "title", "body", "author", "true", "false", "null",
        "count", "value", "north", "south", "east", "west", "alpha", "bravo", "delta", "gamma",
        "item", "list", "token", "score",
    ];
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut padding = String::with_capacity(size + 16);
    while padding.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        padding.push_str(WORDS[(state % 32) as usize]);
        padding.push(if state & 0x300 == 0 { '-' } else { ' ' });
        if state & 0x3000 == 0 {
            padding.push_str(&(state % 10_000).to_string());
            padding.push(' ');
        }
    }
    padding.truncate(size);
    padding
}

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

pub async fn fanout(target: &Target, secret: &str, plan: FanoutPlan) -> Result<Report, String> {
    let clients = clients(target, secret)?;
    let (sockets, _, failures) = open_many(&clients, plan.connections, plan.concurrency).await;
    if !failures.is_empty() {
        return Err(format!(
            "{} connections failed, first: {}",
            failures.len(),
            failures[0]
        ));
    }
    let held = sockets.len();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(held * plan.messages)));
    let received = Arc::new(AtomicU64::new(0));
    let last_receipt = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (latencies, received, last_receipt, dropped) = (
                Arc::clone(&latencies),
                Arc::clone(&received),
                Arc::clone(&last_receipt),
                Arc::clone(&dropped),
            );
            let expected = plan.messages;
            tokio::spawn(async move {
                let mut mine = Vec::with_capacity(expected);
                while mine.len() < expected {
                    match tokio::time::timeout(Duration::from_secs(30), socket.next_text()).await {
                        Ok(Ok(Some(text))) => {
                            let Ok(ServerMessage::Broadcast { data, .. }) =
                                ServerMessage::<Stamp>::parse(&text)
                            else {
                                continue;
                            };
                            let now = unix_micros();
                            let sent = data.t.unwrap_or(now);
                            mine.push(Duration::from_micros(now.saturating_sub(sent)));
                            received.fetch_add(1, Ordering::Relaxed);
                            last_receipt.fetch_max(now, Ordering::Relaxed);
                        }
                        _ => {
                            dropped.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                latencies.lock().await.extend(mine);
                socket
            })
        })
        .collect();

    let cpu = CpuWatch::start(&target.gateway_pids);
    let first_publish = unix_micros();
    publish_all(&clients, &plan).await?;
    let published_in = (unix_micros() - first_publish) as f64 / 1e6;
    let mut sockets = Vec::with_capacity(held);
    for reader in readers {
        sockets.push(reader.await.map_err(|e| e.to_string())?);
    }
    let (gateway_cpu, own_cpu) = cpu.elapsed();
    let (wire_bytes, inflated_bytes) = sockets
        .iter()
        .filter_map(Socket::compressed_bytes)
        .fold((0, 0), |(w, i), (dw, di)| (w + dw, i + di));
    drop(sockets);

    let deliveries = received.load(Ordering::Relaxed);
    let expected = (held * plan.messages) as u64;
    let dropped = dropped.load(Ordering::Relaxed);
    let span = (last_receipt
        .load(Ordering::Relaxed)
        .saturating_sub(first_publish)) as f64
        / 1e6;
    let rate = if span > 0.0 {
        deliveries as f64 / span
    } else {
        0.0
    };
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    let (p50, p99, max) = percentiles_ms(&mut latencies);
    let cpu_per_delivery_us = per(gateway_cpu, deliveries as usize, 1e6);
    Ok(Report {
        summary: format!(
            "fanout: {held} connections x {} broadcasts of {} B (published at {:.0}/s): {deliveries}/{expected} delivered ({} lost, {dropped} connections dropped) \
             at {rate:.0}/s; latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; gateway CPU per delivery {} µs; generator CPU {}{}",
            plan.messages,
            plan.size,
            plan.messages as f64 / published_in.max(1e-6),
            expected - deliveries,
            cpu_per_delivery_us.map_or("?".into(), |v| format!("{v:.2}")),
            own_cpu.map_or("?".into(), |v| format!("{v:.2}s")),
            if inflated_bytes > 0 {
                format!("; compressed messages {inflated_bytes} B -> {wire_bytes} B on the wire")
            } else {
                String::new()
            },
        ),
        json: json!({
            "scenario": "fanout", "connections": held, "messages": plan.messages, "rate": plan.rate, "size": plan.size,
            "gateways": clients.gateways.len(), "publish_url": plan.publish_url, "publishers": plan.publishers,
            "published_per_second": plan.messages as f64 / published_in.max(1e-6),
            "deliveries": deliveries, "expected": expected, "lost": expected - deliveries, "dropped_connections": dropped,
            "deliveries_per_second": rate, "latency_ms": {"p50": p50, "p99": p99, "max": max},
            "gateway_cpu_seconds": gateway_cpu, "gateway_cpu_us_per_delivery": cpu_per_delivery_us,
            "generator_cpu_seconds": own_cpu,
            "compressed": {"wire_bytes": wire_bytes, "inflated_bytes": inflated_bytes},
        }),
    })
}

pub async fn idle(
    target: &Target,
    secret: &str,
    connections: usize,
    concurrency: usize,
    hold_secs: u64,
) -> Result<Report, String> {
    let pids = &target.gateway_pids;
    if pids.is_empty() {
        return Err("idle needs --gateway-pid to read the gateway's memory".into());
    }
    let clients = clients(target, secret)?;
    let rss_before = total_rss_kib(pids).ok_or("cannot read the gateway's memory")?;
    let (mut sockets, _, mut failures) = open_many(&clients, connections, concurrency).await;
    failures.extend(subscribe_all(&clients, &mut sockets, concurrency).await);
    let held = sockets.len();
    // Keep reading, so the client library answers the gateway's pings as a browser would.
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(socket.drain()))
        .collect();
    let cpu = CpuWatch::start(pids);
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let rss_held = total_rss_kib(pids).ok_or("cannot read the gateway's memory")?;
    let (gateway_cpu, own_cpu) = cpu.elapsed();
    readers.iter().for_each(|r| r.abort());
    let per_connection_kib = if held > 0 {
        rss_held.saturating_sub(rss_before) as f64 / held as f64
    } else {
        0.0
    };
    let idle_cpu_percent = gateway_cpu.map(|c| c * 100.0 / hold_secs.max(1) as f64);
    Ok(Report {
        summary: format!(
            "idle: {held}/{connections} connections held {hold_secs}s; gateway RSS {rss_before} -> {rss_held} KiB = {per_connection_kib:.2} KiB per connection; \
             gateway CPU while idle {}%",
            idle_cpu_percent.map_or("?".into(), |v| format!("{v:.1}")),
        ),
        json: json!({
            "scenario": "idle", "connections": connections, "held": held, "failures": failures.len(),
            "subscriptions_per_connection": clients.subscribe, "hold_seconds": hold_secs, "gateway_rss_kib_before": rss_before, "gateway_rss_kib_held": rss_held,
            "gateway_kib_per_connection": per_connection_kib, "gateway_idle_cpu_percent": idle_cpu_percent,
            "generator_cpu_seconds": own_cpu,
        }),
    })
}

/// Sockets one generator process holds at most (20,000 open files per process here).
pub const SOCKETS_PER_PROCESS: usize = 19_000;

/// An `idle` run spread over several generator processes.
pub struct SpreadIdle {
    pub connections: usize,
    pub concurrency: usize,
    pub hold_secs: u64,
    pub processes: usize,
}

/// Starts `plan.processes` copies of this program as idle workers, each with its share of the
/// sockets and its own user names, waits until all hold their sockets, then measures the
/// gateways like [`idle`] does.
pub async fn idle_spread(
    target: &Target,
    secret: &str,
    plan: SpreadIdle,
) -> Result<Report, String> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let pids = &target.gateway_pids;
    if pids.is_empty() {
        return Err("idle needs --gateway-pid to read the gateway's memory".into());
    }
    let rss_before = total_rss_kib(pids).ok_or("cannot read the gateway's memory")?;
    let program = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut workers = Vec::with_capacity(plan.processes);
    for p in 0..plan.processes {
        let share =
            plan.connections / plan.processes + usize::from(p < plan.connections % plan.processes);
        if share > SOCKETS_PER_PROCESS {
            return Err(format!(
                "{share} sockets for one process: use --processes {} or more",
                plan.connections.div_ceil(SOCKETS_PER_PROCESS)
            ));
        }
        let mut command = tokio::process::Command::new(&program);
        for url in &target.urls {
            command.arg("--url").arg(url);
        }
        command
            .arg("--source-addresses")
            .arg(target.source_addresses.to_string())
            .args(target.compression.then_some("--compression"))
            .arg("--subscribe")
            .arg(target.subscribe.to_string())
            .arg("--channels")
            .arg(target.channels.to_string())
            .arg("--user-prefix")
            .arg(format!("{}-p{p}", target.user_prefix))
            .arg("idle-worker")
            .arg("--connections")
            .arg(share.to_string())
            .arg("--concurrency")
            .arg(plan.concurrency.div_ceil(plan.processes).to_string())
            // The secret goes through the environment, not the command line (ps shows that).
            .env("JWT_SECRET", secret)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        workers.push(
            command
                .spawn()
                .map_err(|e| format!("starting worker {p}: {e}"))?,
        );
    }
    let (mut held, mut failures, mut worker_pids) = (0usize, 0usize, Vec::new());
    for (p, worker) in workers.iter_mut().enumerate() {
        let stdout = worker.stdout.take().ok_or("worker stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("worker {p} ended before it was ready"))?;
        let mut fields = line.split_whitespace();
        let (Some("ready"), Some(h), Some(f)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(format!("worker {p}: {line}"));
        };
        held += h.parse::<usize>().map_err(|e| e.to_string())?;
        failures += f.parse::<usize>().map_err(|e| e.to_string())?;
        worker_pids.extend(worker.id());
    }
    let cpu = CpuWatch::start(pids);
    let workers_cpu = CpuWatch::start(&worker_pids);
    tokio::time::sleep(Duration::from_secs(plan.hold_secs)).await;
    let rss_held = total_rss_kib(pids).ok_or("cannot read the gateway's memory")?;
    let (gateway_cpu, _) = cpu.elapsed();
    let (own_cpu, _) = workers_cpu.elapsed();
    for worker in &mut workers {
        drop(worker.stdin.take());
    }
    for worker in &mut workers {
        let _ = worker.wait().await;
    }
    let per_connection_kib = rss_held.saturating_sub(rss_before) as f64 / held.max(1) as f64;
    let idle_cpu_percent = gateway_cpu.map(|c| c * 100.0 / plan.hold_secs.max(1) as f64);
    Ok(Report {
        summary: format!(
            "idle: {held}/{} connections over {} gateway process(es) from {} generator processes, held {}s; \
             gateway RSS {rss_before} -> {rss_held} KiB = {per_connection_kib:.2} KiB per connection; gateway CPU while idle {}%",
            plan.connections,
            pids.len(),
            plan.processes,
            plan.hold_secs,
            idle_cpu_percent.map_or("?".into(), |v| format!("{v:.1}")),
        ),
        json: json!({
            "scenario": "idle", "connections": plan.connections, "held": held, "failures": failures,
            "gateway_processes": pids.len(), "generator_processes": plan.processes,
            "hold_seconds": plan.hold_secs, "gateway_rss_kib_before": rss_before, "gateway_rss_kib_held": rss_held,
            "gateway_kib_per_connection": per_connection_kib, "gateway_idle_cpu_percent": idle_cpu_percent,
            "generator_cpu_seconds": own_cpu,
        }),
    })
}

/// The worker side of [`idle_spread`].
pub async fn idle_worker(
    target: &Target,
    secret: &str,
    connections: usize,
    concurrency: usize,
) -> Result<Report, String> {
    use tokio::io::AsyncReadExt;
    let clients = clients(target, secret)?;
    let (mut sockets, _, mut failures) = open_many(&clients, connections, concurrency).await;
    failures.extend(subscribe_all(&clients, &mut sockets, concurrency).await);
    if let Some(first) = failures.first() {
        eprintln!(
            "ticketgate-load worker: {} failed, first: {first}",
            failures.len()
        );
    }
    println!("ready {} {}", sockets.len(), failures.len());
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(socket.drain()))
        .collect();
    // Hold until the coordinating process closes our stdin (or exits).
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    readers.iter().for_each(|r| r.abort());
    Ok(Report {
        summary: "worker done".into(),
        json: json!({"scenario": "idle-worker"}),
    })
}

pub use crate::channels::{ChannelsPlan, channels};
