//! The `rpc` scenario and its minimal app backend.
//!
//! - `backend`: an HTTP/1.1 keep-alive server that answers every `POST` with
//!   `{"result": <the call's data>}`, run as a process of its own (`ticketgate-load backend`).
//! - `rpc`: first calls the backend directly (as the gateway would, one keep-alive client,
//!   C calls in flight) for a baseline; then opens C authenticated connections to a gateway
//!   whose `UPSTREAM_URL` is that backend, each with one `rpc` in flight at a time, for the
//!   same time. Reported: RPC/s both ways, latency p50/p99 both ways and the gateway's added
//!   latency, and the gateway's CPU per RPC.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use serde_json::json;
use ticketgate_client::protocol::{ClientMessage, ServerMessage};

use crate::Target;
use crate::client::Socket;
use crate::measure::{CpuWatch, percentiles_ms};
use crate::roundtrip::one_in_flight_each;
use crate::scenarios::{Report, clients};

#[derive(clap::Args)]
pub struct RpcPlan {
    /// The backend's URL, as the gateway's UPSTREAM_URL names it.
    #[arg(long)]
    pub backend_url: String,
    /// Connections (and calls in flight).
    #[arg(long, default_value_t = 50)]
    pub connections: usize,
    /// How long each phase runs.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
}

/// Serves the minimal backend on 127.0.0.1:`port` until killed.
pub async fn backend(port: u16) -> Result<Report, String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("binding 127.0.0.1:{port}: {e}"))?;
    eprintln!("backend: listening on 127.0.0.1:{port}");
    loop {
        let (stream, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(answer);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let data = serde_json::from_slice::<Call>(&body)
        .ok()
        .and_then(|call| call.data)
        .map_or("null", |data| data.get());
    let answer = format!(r#"{{"result":{data}}}"#);
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(answer)))
        .expect("a valid response"))
}

pub async fn rpc(target: &Target, secret: &str, plan: RpcPlan) -> Result<Report, String> {
    let duration = Duration::from_secs(plan.duration_secs);
    let data = json!({"sku": "A-1", "quantity": 2});

    // Direct: what a call costs without the gateway.
    let http = reqwest::Client::new();
    let url = format!("{}/rpc", plan.backend_url.trim_end_matches('/'));
    let body = json!({"method": "cart.add", "data": data, "user_id": "u", "connection_id": "c1@n",
                      "node": "n", "client_ip": "127.0.0.1"})
    .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let mut direct = Vec::new();
    for _ in 0..plan.connections {
        let (http, url, body, stop) = (http.clone(), url.clone(), body.clone(), Arc::clone(&stop));
        direct.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let response = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                response.bytes().await.map_err(|e| e.to_string())?;
                latencies.push(started.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut direct_latencies = Vec::new();
    for task in direct {
        direct_latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    let direct_rate = direct_latencies.len() as f64 / duration.as_secs_f64();
    let (direct_p50, direct_p99, _) = percentiles_ms(&mut direct_latencies);

    // Through the gateway.
    let clients = clients(target, secret)?;
    let mut sockets: Vec<Socket> = Vec::new();
    for k in 0..plan.connections {
        sockets.push(clients.authenticate(k).await.map_err(|e| e.to_string())?.0);
    }
    let cpu = CpuWatch::start(&target.gateway_pids);
    let started = Instant::now();
    let mut gateway_latencies = one_in_flight_each(
        sockets,
        duration,
        move |id| ClientMessage::Rpc {
            id: Some(id),
            method: "cart.add".into(),
            data: data.clone(),
        },
        |answer| matches!(answer, ServerMessage::RpcResult { .. }),
    )
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (gateway_cpu, generator_cpu) = cpu.elapsed();
    let calls = gateway_latencies.len();
    let rate = calls as f64 / elapsed;
    let (p50, p99, _) = percentiles_ms(&mut gateway_latencies);
    let cpu_per_rpc_us = gateway_cpu.map(|cpu| cpu / calls.max(1) as f64 * 1e6);
    Ok(Report {
        summary: format!(
            "rpc: {calls} calls through the gateway in {elapsed:.1} s = {rate:.0} RPC/s, p50 {p50:.2} ms, \
             p99 {p99:.2} ms; the backend directly: {direct_rate:.0} calls/s, p50 {direct_p50:.2} ms, \
             p99 {direct_p99:.2} ms; added by the gateway: p50 {:.2} ms, p99 {:.2} ms; gateway CPU per \
             RPC {}; generator CPU {}",
            p50 - direct_p50,
            p99 - direct_p99,
            cpu_per_rpc_us.map_or("n/a".into(), |us| format!("{us:.0} µs")),
            generator_cpu.map_or("n/a".into(), |s| format!("{s:.2} s")),
        ),
        json: json!({
            "scenario": "rpc", "connections": plan.connections, "calls": calls,
            "rpc_per_sec": rate, "latency_ms": {"p50": p50, "p99": p99},
            "direct": {"calls_per_sec": direct_rate, "latency_ms": {"p50": direct_p50, "p99": direct_p99}},
            "added_ms": {"p50": p50 - direct_p50, "p99": p99 - direct_p99},
            "gateway_cpu_per_rpc_us": cpu_per_rpc_us,
        }),
    })
}
