//! The `roundtrip` scenario: C authenticated connections, each with one `ping` in flight at a
//! time for D seconds; the round trip from sending a ping to reading its `pong`, p50 and p99.
//! On SSE the ping goes by POST (to the stream's node, or through another with `--post-url`:
//! forwarded over the cluster bus) and the pong comes on the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde_json::json;
use ticketgate_client::protocol::{ClientMessage, ServerMessage};

use crate::Target;
use crate::client::Socket;
use crate::measure::{CpuWatch, percentiles_ms};
use crate::scenarios::{Report, clients};

#[derive(clap::Args)]
pub struct RoundtripPlan {
    /// Connections, each with one ping in flight.
    #[arg(long, default_value_t = 20)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
}

pub async fn roundtrip(
    target: &Target,
    secret: &str,
    plan: RoundtripPlan,
) -> Result<Report, String> {
    let clients = clients(target, secret)?;
    let mut sockets: Vec<Socket> = Vec::new();
    for k in 0..plan.connections {
        sockets.push(clients.authenticate(k).await.map_err(|e| e.to_string())?.0);
    }
    let cpu = CpuWatch::start(&target.gateway_pids);
    let started = Instant::now();
    let mut latencies = one_in_flight_each(
        sockets,
        Duration::from_secs(plan.duration_secs),
        |id| ClientMessage::Ping { id: Some(id) },
        |answer| matches!(answer, ServerMessage::Pong { .. }),
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (gateway_cpu, _) = cpu.elapsed();
    let count = latencies.len();
    let (p50, p99, _) = percentiles_ms(&mut latencies);
    let transport = format!("{:?}", target.transport).to_lowercase();
    let cross_node = target.post_url.is_some();
    let cpu_per_roundtrip_us = gateway_cpu.map(|cpu| cpu / count.max(1) as f64 * 1e6);
    Ok(Report {
        summary: format!(
            "roundtrip ({transport}{}): {count} pings in {elapsed:.1} s = {:.0}/s, p50 {p50:.2} ms, \
             p99 {p99:.2} ms; gateway CPU per round trip {}",
            if cross_node {
                ", posted through another node"
            } else {
                ""
            },
            count as f64 / elapsed,
            cpu_per_roundtrip_us.map_or("n/a".into(), |us| format!("{us:.0} µs")),
        ),
        json: json!({
            "scenario": "roundtrip", "transport": transport, "cross_node": cross_node,
            "connections": plan.connections, "pings": count,
            "latency_ms": {"p50": p50, "p99": p99},
            "gateway_cpu_per_roundtrip_us": cpu_per_roundtrip_us,
        }),
    })
}

/// Each connection with one request in flight at a time for `duration`: request `id` is
/// `request(id)`, and its reply (the message with that `id`) must be one that `expected`
/// accepts. The time of every round trip, from sending to reading the reply.
pub async fn one_in_flight_each(
    sockets: Vec<Socket>,
    duration: Duration,
    request: impl Fn(u64) -> ClientMessage + Clone + Send + 'static,
    expected: fn(&ServerMessage<IgnoredAny>) -> bool,
) -> Result<Vec<Duration>, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut socket in sockets {
        let (stop, request) = (Arc::clone(&stop), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut id = 0u64;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sent = Instant::now();
                socket.send_text(request(id).to_text()).await?;
                loop {
                    let (reply, text) = socket
                        .next_message()
                        .await?
                        .ok_or("the gateway closed the connection")?;
                    if reply.id() != Some(id) {
                        continue; // a broadcast or anything else
                    }
                    if !expected(&reply) {
                        return Err(format!("request {id}: {text}"));
                    }
                    break;
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    Ok(latencies)
}
