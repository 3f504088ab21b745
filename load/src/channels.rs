//! The `channels` scenario: connections subscribed to channels, then the same connections
//! measured under broadcasts and under channel publications, so the two costs per delivery
//! come from one run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use ticketgate_client::protocol::ServerMessage;
use tokio::sync::Mutex;

use crate::Target;
use crate::client::CHANNEL_PREFIX;
use crate::measure::{CpuWatch, EachCpuWatch, percentiles_ms};
use crate::scenarios::{
    Report, Stamp, clients, open_many, per, subscribe_all, unix_micros, word_padding,
};

/// The channels scenario's parameters, straight from its command line.
#[derive(clap::Args)]
pub struct ChannelsPlan {
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Channel publications per second, each to a channel drawn at random.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long publications go on.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Broadcasts before the publications, for the per-delivery comparison (0: none).
    #[arg(long, default_value_t = 20)]
    pub broadcasts: usize,
    /// Broadcasts per second.
    #[arg(long, default_value_t = 5.0)]
    pub broadcast_rate: f64,
    /// Bytes of padding (words) in each message's data.
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Where publications go (default: the first --url).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Publishing requests in flight at once, sharing --rate between them.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Before the publications, watch the processes this long with nothing published: their
    /// CPU at rest, which `scripts/scale-sim.py` takes off to leave the cost of the events.
    #[arg(long, default_value_t = 0)]
    pub rest_secs: u64,
    /// mongod's process id: its CPU time during the publications is reported too, as is each
    /// gateway's on its own (`scripts/scale-sim.py`).
    #[arg(long)]
    pub mongod_pid: Option<u32>,
}

/// What the readers count, per kind of message.
#[derive(Default)]
struct Tally {
    received: AtomicU64,
    latencies: Mutex<Vec<Duration>>,
}

#[derive(Default)]
struct Tallies {
    broadcasts: Tally,
    publications: Tally,
    dropped: AtomicU64,
}

pub async fn channels(target: &Target, secret: &str, plan: ChannelsPlan) -> Result<Report, String> {
    if target.subscribe == 0 {
        return Err("channels needs --subscribe N (subscriptions per connection)".into());
    }
    let clients = clients(target, secret)?;
    let (mut sockets, _, failures) = open_many(&clients, plan.connections, plan.concurrency).await;
    if let Some(first) = failures.first() {
        return Err(format!(
            "{} connections failed, first: {first}",
            failures.len()
        ));
    }
    let held = sockets.len();

    // Subscribing: every connection at once, as after a deploy.
    let cpu = CpuWatch::start(&target.gateway_pids);
    let started = Instant::now();
    let refused = subscribe_all(&clients, &mut sockets, plan.concurrency).await;
    let subscribe_secs = started.elapsed().as_secs_f64();
    let (subscribe_cpu, _) = cpu.elapsed();
    if let Some(first) = refused.first() {
        return Err(format!(
            "{} subscriptions failed, first: {first}",
            refused.len()
        ));
    }
    let subscribes = held * clients.subscribe;
    let subscribers_of = {
        let mut counts = vec![0u64; clients.channels];
        for k in 0..held {
            for channel in clients.channels_of(k) {
                let n: usize = channel[CHANNEL_PREFIX.len()..].parse().unwrap_or(0);
                counts[n] += 1;
            }
        }
        counts
    };

    let tallies = Arc::new(Tallies::default());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (tallies, stop) = (Arc::clone(&tallies), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut broadcasts, mut publications) = (Vec::new(), Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let text =
                        match tokio::time::timeout(Duration::from_millis(500), socket.next_text())
                            .await
                        {
                            Err(_) => continue,
                            Ok(Ok(Some(text))) => text,
                            Ok(_) => {
                                tallies.dropped.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        };
                    // The data read only for its stamp: the generator shares the cores with the
                    // gateway, and a full parse of every message would cost it most of them.
                    let Ok(message) = ServerMessage::<Stamp>::parse(&text) else {
                        continue;
                    };
                    let (tally, mine, data) = match message {
                        ServerMessage::Broadcast { data, .. } => {
                            (&tallies.broadcasts, &mut broadcasts, data)
                        }
                        ServerMessage::Publication { data, .. } => {
                            (&tallies.publications, &mut publications, data)
                        }
                        _ => continue,
                    };
                    let now = unix_micros();
                    let sent = data.t.unwrap_or(now);
                    mine.push(Duration::from_micros(now.saturating_sub(sent)));
                    tally.received.fetch_add(1, Ordering::Relaxed);
                }
                tallies.broadcasts.latencies.lock().await.extend(broadcasts);
                tallies
                    .publications
                    .latencies
                    .lock()
                    .await
                    .extend(publications);
                socket
            })
        })
        .collect();

    let http = &clients.http;
    let base = plan
        .publish_url
        .clone()
        .unwrap_or_else(|| clients.gateways[0].base_url.clone());
    let padding = word_padding(plan.size);

    // Broadcasts to everyone, for the comparison.
    let cpu = CpuWatch::start(&target.gateway_pids);
    let interval = Duration::from_secs_f64(1.0 / plan.broadcast_rate.max(0.001));
    let mut ticks = tokio::time::interval(interval);
    for i in 0..plan.broadcasts {
        ticks.tick().await;
        let data = json!({"t": unix_micros(), "i": i, "pad": padding});
        post(http, &format!("{base}/api/broadcast"), &plan.api_key, data).await?;
    }
    let expected_broadcasts = (held * plan.broadcasts) as u64;
    settle(&tallies.broadcasts.received, expected_broadcasts).await;
    let (broadcast_cpu, _) = cpu.elapsed();
    let broadcast_deliveries = tallies.broadcasts.received.load(Ordering::Relaxed);

    // Publications to random channels at a steady rate.
    let watched: Vec<u32> = target
        .gateway_pids
        .iter()
        .copied()
        .chain(plan.mongod_pid)
        .collect();
    let at_rest = EachCpuWatch::start(&watched);
    let rest_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(plan.rest_secs)).await;
    let mut rest = at_rest.elapsed();
    let rest_secs = rest_started.elapsed().as_secs_f64();
    let mongod_rest = plan.mongod_pid.and_then(|_| rest.pop().flatten());
    let cpu = CpuWatch::start(&target.gateway_pids);
    let each_cpu = EachCpuWatch::start(&watched);
    let publishers = plan.publishers.max(1);
    let total = (plan.rate * plan.duration_secs as f64).round() as usize;
    let interval = Duration::from_secs_f64(publishers as f64 / plan.rate.max(0.001));
    let first_publish = Instant::now();
    let tasks = (0..publishers).map(|p| {
        let (base, padding, channels) = (&base, &padding, clients.channels);
        let (api_key, subscribers_of) = (&plan.api_key, &subscribers_of);
        async move {
            let (mut expected, mut took) = (0u64, Vec::new());
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            // A fixed xorshift per publisher: every run draws the same channels.
            let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ (p as u64 + 1);
            for i in (p..total).step_by(publishers) {
                ticks.tick().await;
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let channel = (state % channels as u64) as usize;
                let data = json!({"t": unix_micros(), "i": i, "pad": padding});
                let url = format!("{base}/api/channels/{CHANNEL_PREFIX}{channel}/publish");
                let sent = Instant::now();
                post(http, &url, api_key, data).await?;
                took.push(sent.elapsed());
                expected += subscribers_of[channel];
            }
            Ok::<(u64, Vec<Duration>), String>((expected, took))
        }
    });
    let mut publish_latencies = Vec::new();
    let mut expected_publications = 0;
    for (expected, took) in futures_util::future::try_join_all(tasks).await? {
        expected_publications += expected;
        publish_latencies.extend(took);
    }
    let published_in = first_publish.elapsed().as_secs_f64();
    settle(&tallies.publications.received, expected_publications).await;
    let span = first_publish.elapsed().as_secs_f64();
    let (publication_cpu, own_cpu) = cpu.elapsed();
    let mut each = each_cpu.elapsed();
    let mongod_cpu = plan.mongod_pid.and_then(|_| each.pop().flatten());
    let (publish_p50, publish_p99, _) = percentiles_ms(&mut publish_latencies);
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        let _ = reader.await;
    }

    let deliveries = tallies.publications.received.load(Ordering::Relaxed);
    let mut latencies = std::mem::take(&mut *tallies.publications.latencies.lock().await);
    let (p50, p99, max) = percentiles_ms(&mut latencies);
    let mut broadcast_latencies = std::mem::take(&mut *tallies.broadcasts.latencies.lock().await);
    let (b50, b99, _) = percentiles_ms(&mut broadcast_latencies);
    let publication_us = per(publication_cpu, deliveries as usize, 1e6);
    let broadcast_us = per(broadcast_cpu, broadcast_deliveries as usize, 1e6);
    let subscribe_us = per(subscribe_cpu, subscribes, 1e6);
    let ratio = publication_us.zip(broadcast_us).map(|(p, b)| p / b);
    let fmt = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.2}"));
    Ok(Report {
        summary: format!(
            "channels: {held} connections x {} subscriptions over {} channels: {subscribes} subscribes in {subscribe_secs:.2}s = {:.0}/s, \
             gateway CPU {} µs each; broadcasts {broadcast_deliveries}/{expected_broadcasts} delivered at {} µs CPU each (p50 {b50:.1} ms, p99 {b99:.1} ms); \
             publications {total} at {:.0}/s: {deliveries}/{expected_publications} delivered ({} lost) at {:.0}/s, \
             p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms, gateway CPU {} µs per delivery ({} x a broadcast's); generator CPU {}",
            clients.subscribe,
            clients.channels,
            subscribes as f64 / subscribe_secs,
            fmt(subscribe_us),
            fmt(broadcast_us),
            total as f64 / published_in.max(1e-6),
            expected_publications.saturating_sub(deliveries),
            deliveries as f64 / span.max(1e-6),
            fmt(publication_us),
            fmt(ratio),
            own_cpu.map_or("?".into(), |v| format!("{v:.2}s")),
        ),
        json: json!({
            "scenario": "channels", "connections": held, "subscriptions_per_connection": clients.subscribe,
            "channels": clients.channels, "gateways": clients.gateways.len(), "publish_url": plan.publish_url,
            "subscribes": subscribes, "subscribe_seconds": subscribe_secs,
            "subscribes_per_second": subscribes as f64 / subscribe_secs,
            "gateway_cpu_us_per_subscribe": subscribe_us,
            "broadcasts": plan.broadcasts, "broadcast_deliveries": broadcast_deliveries,
            "broadcast_expected": expected_broadcasts, "gateway_cpu_us_per_broadcast_delivery": broadcast_us,
            "broadcast_latency_ms": {"p50": b50, "p99": b99},
            "publications": total, "published_per_second": total as f64 / published_in.max(1e-6),
            "deliveries": deliveries, "expected": expected_publications,
            "lost": expected_publications.saturating_sub(deliveries),
            "dropped_connections": tallies.dropped.load(Ordering::Relaxed),
            "deliveries_per_second": deliveries as f64 / span.max(1e-6),
            "latency_ms": {"p50": p50, "p99": p99, "max": max},
            "gateway_cpu_us_per_delivery": publication_us, "cpu_ratio_to_broadcast": ratio,
            "generator_cpu_seconds": own_cpu,
            "publish_latency_ms": {"p50": publish_p50, "p99": publish_p99},
            "gateway_cpu_seconds_each": each, "mongod_cpu_seconds": mongod_cpu,
            "publication_seconds": span,
            "rest_seconds": rest_secs, "gateway_cpu_seconds_at_rest_each": rest,
            "mongod_cpu_seconds_at_rest": mongod_rest,
        }),
    })
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    api_key: &str,
    data: serde_json::Value,
) -> Result<(), String> {
    let response = http
        .post(url)
        .bearer_auth(api_key)
        .json(&json!({ "data": data }))
        .send()
        .await
        .map_err(|e| format!("publishing: {e}"))?;
    if response.status() != 202 {
        return Err(format!("publishing to {url}: {}", response.status()));
    }
    Ok(())
}

/// Waits until `received` reaches `expected`, or nothing more arrives for 5 s: when the last
/// one came.
pub(crate) async fn settle(received: &AtomicU64, expected: u64) -> Instant {
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = received.load(Ordering::Relaxed);
        if now >= expected {
            return Instant::now();
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
