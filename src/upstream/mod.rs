//! Calls to the app's backend (UPSTREAM_URL): client RPCs (`/rpc`) and proxied client
//! publications (`/publish`). HTTP/1.1 with keep-alive, JSON both ways, the shared key in
//! `Authorization: Bearer <UPSTREAM_KEY>`, every call bounded by UPSTREAM_TIMEOUT_MS (its wait
//! for one of UPSTREAM_MAX_IN_FLIGHT turns included), and every call saying who asks.

pub mod publish;
pub mod rpc;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::UpstreamSettings;
use crate::metrics::Metrics;

/// The largest answer read from the backend: it goes to one client in one message.
pub const MAX_ANSWER_BYTES: usize = 8 << 20;

/// Who asks: the connection a call is made for. Sent with every call.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub user_id: String,
    /// `c<number>@<node>`, as presence and the server API show it.
    pub connection_id: String,
    /// The node id, as `GET /api/nodes` lists it.
    pub node: String,
    /// The connection's JWT's `jti`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The client's address (behind a trusted proxy, the one it forwarded).
    pub client_ip: Option<IpAddr>,
}

/// Why a call brought no answer the gateway can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("UPSTREAM_URL is not set")]
    Disabled,
    /// Unreachable, a status other than 200, an answer that is not the documented JSON.
    #[error("the backend failed: {0}")]
    Unavailable(String),
    #[error("the backend did not answer within UPSTREAM_TIMEOUT_MS")]
    Timeout,
}

/// The backend and the means to call it; one per node.
pub struct Upstream {
    backend: Option<Target>,
    /// MAX_RPC_IN_FLIGHT_PER_CONNECTION.
    pub max_rpc_per_connection: usize,
    timeout: Duration,
    turns: tokio::sync::Semaphore,
    metrics: Arc<Metrics>,
    /// A span per call, whose `traceparent` the call carries.
    telemetry: crate::telemetry::Telemetry,
}

struct Target {
    url: String,
    /// `Bearer <UPSTREAM_KEY>`, ready to send.
    authorization: reqwest::header::HeaderValue,
}

thread_local! {
    /// Each thread's own client: its pooled connections are driven by the runtime that made
    /// them, so a client shared by the HTTP workers (each a runtime of its own) would make
    /// every call hop threads, as the MongoDB driver did (docs/BENCHMARKS.md).
    static CLIENT: reqwest::Client = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .build()
        .expect("an HTTP client with default TLS roots");
}

impl Upstream {
    pub fn new(
        settings: &UpstreamSettings,
        metrics: Arc<Metrics>,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        let backend = settings.backend.as_ref().map(|backend| Target {
            url: backend.url.clone(),
            authorization: bearer(&backend.key),
        });
        Upstream {
            backend,
            max_rpc_per_connection: settings.max_rpc_per_connection,
            timeout: settings.timeout,
            turns: tokio::sync::Semaphore::new(settings.max_in_flight.max(1)),
            metrics,
            telemetry,
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.backend.is_some()
    }

    /// `POST {UPSTREAM_URL}{path}` with `body`; the answer's body when the status is 200.
    pub async fn call(
        &self,
        path: &'static str,
        body: &impl Serialize,
    ) -> Result<bytes::Bytes, UpstreamError> {
        let Some(target) = &self.backend else {
            return Err(UpstreamError::Disabled);
        };
        let body = serde_json::to_vec(body).expect("call bodies always serialize");
        // The app's trace continues from this span: its `traceparent` goes with the call.
        let span = self.telemetry.client(match path {
            "/rpc" => "upstream.rpc",
            _ => "upstream.publish",
        });
        span.set("http.request.method", "POST");
        span.set("url.path", path);
        let traceparent = span.traceparent();
        let _timer = self
            .metrics
            .upstream_call_seconds
            .with_label_values(&[path])
            .start_timer();
        let call = async {
            let _turn = self.turns.acquire().await.expect("never closed");
            let request = CLIENT.with(|client| {
                let request = client
                    .post(format!("{}{path}", target.url))
                    .header(reqwest::header::AUTHORIZATION, target.authorization.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/json");
                match &traceparent {
                    Some(traceparent) => request.header("traceparent", traceparent),
                    None => request,
                }
                .body(body)
                .send()
            });
            let mut response = request.await.map_err(|e| {
                UpstreamError::Unavailable(format!("POST {path}: {}", without_url(&e)))
            })?;
            let status = response.status();
            if status != reqwest::StatusCode::OK {
                return Err(UpstreamError::Unavailable(format!(
                    "POST {path} answered {status}"
                )));
            }
            let mut answer = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| {
                UpstreamError::Unavailable(format!("POST {path}: {}", without_url(&e)))
            })? {
                if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(UpstreamError::Unavailable(format!(
                        "POST {path}: the answer is over {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(bytes::Bytes::from(answer))
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(UpstreamError::Timeout),
        };
        let label = match &outcome {
            Ok(_) => "answered",
            Err(UpstreamError::Timeout) => "timeout",
            Err(_) => "failed",
        };
        self.metrics
            .upstream_calls
            .with_label_values(&[path, label])
            .inc();
        span.set("outcome", label);
        if let Err(e) = &outcome {
            span.fail(e.to_string());
            log::warn!("calling the backend: {e}");
        }
        outcome
    }
}

impl Upstream {
    /// [`Upstream::call`], and the answer read by `parse`; an answer it refuses is a backend
    /// fault like any other.
    async fn ask<T>(
        &self,
        path: &'static str,
        body: &impl Serialize,
        parse: fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, UpstreamError> {
        let answer = self.call(path, body).await?;
        parse(&answer).map_err(|why| {
            let e = UpstreamError::Unavailable(format!("POST {path}: {why}"));
            log::warn!("calling the backend: {e}");
            e
        })
    }
}

/// `Authorization: Bearer <UPSTREAM_KEY>`, marked sensitive so it is never printed.
pub fn bearer(key: &secrecy::SecretString) -> reqwest::header::HeaderValue {
    let mut authorization =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", key.expose_secret()))
            .expect("UPSTREAM_KEY is checked to be printable at start");
    authorization.set_sensitive(true);
    authorization
}

/// A client error's text without the URL, which holds the backend's address (not a secret,
/// but not the client's business either; the log has the path).
fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the answer broke off"
    } else {
        "the request failed"
    };
    match std::error::Error::source(error) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_owned(),
    }
}
