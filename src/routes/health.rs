//! Operations endpoints: liveness, readiness and Prometheus metrics.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;
use crate::hub::TransportKind;

/// The process is alive and serving HTTP.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// For a liveness probe: 200 while the process serves HTTP at all, whatever MongoDB or the
/// bus are doing (a node must not be restarted because MongoDB is away; readiness says that).
pub async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "live"}))
}

/// How long readiness waits for the store's answer.
const READYZ_PATIENCE: std::time::Duration = std::time::Duration::from_millis(900);

/// Ready for new connections: the ticket store answers and the gateway is not draining.
/// Load balancers take a 503 here as "send new clients elsewhere".
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let not_ready = |cause: &str, message: String| {
        HttpResponse::ServiceUnavailable()
            .json(json!({"error": "not_ready", "cause": cause, "message": message}))
    };
    if state.shutdown.is_draining() {
        return not_ready("draining", "draining".into());
    }
    if let Some(silent) = state.bus.stream_health().stalled_for() {
        return not_ready(
            "bus_stalled",
            format!(
                "the cluster event stream has had no answer from MongoDB for {} s",
                silent.as_secs()
            ),
        );
    }
    // Readiness answers within a second, whatever STORE_TIMEOUT_MS is: a probe that waits
    // longer is a probe that times out.
    match tokio::time::timeout(READYZ_PATIENCE, state.tickets.ping()).await {
        Ok(Ok(())) => {
            HttpResponse::Ok().json(json!({"status": "ready", "store": state.tickets.kind()}))
        }
        Ok(Err(e)) => not_ready("store_unavailable", e.to_string()),
        Err(_) => not_ready(
            "store_unavailable",
            format!("the store did not answer within {READYZ_PATIENCE:?}"),
        ),
    }
}

/// The OpenAPI document of the HTTP side (docs/openapi.json, embedded).
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(include_str!("../../docs/openapi.json"))
}

/// Prometheus text exposition format.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let up = match state.bus.mode() {
        crate::bus::BusMode::Starting => false,
        crate::bus::BusMode::Local => true,
        crate::bus::BusMode::ChangeStream => state.bus.stream_health().stalled_for().is_none(),
    };
    state
        .session
        .metrics
        .bus_up
        .with_label_values(&["cluster"])
        .set(i64::from(up));
    let hub = &state.session.hub;
    let counts = TransportKind::ALL.map(|transport| (transport, hub.counts_on(transport)));
    let body = state.session.metrics.render(&counts, hub.channel_stats());
    HttpResponse::Ok()
        .content_type(ContentType(
            "text/plain; version=0.0.4; charset=utf-8"
                .parse()
                .expect("a valid media type"),
        ))
        .body(body)
}
