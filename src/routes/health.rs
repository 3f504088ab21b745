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
    match state.tickets.ping().await {
        Ok(()) => {
            HttpResponse::Ok().json(json!({"status": "ready", "store": state.tickets.kind()}))
        }
        Err(e) => not_ready("store_unavailable", e.to_string()),
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
