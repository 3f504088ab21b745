//! HTTP routes: one module per endpoint, wired together in [`configure`].

pub mod api;
mod health;
mod mint;
mod static_files;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{HttpResponse, ResponseError, web};

use secrecy::SecretString;

use crate::bus::Bus;
use crate::client_ip::TrustedProxies;
use crate::error::ApiError;
use crate::limits::RateLimits;
use crate::origin::OriginPolicy;
use crate::session::SessionContext;
use crate::shutdown::Shutdown;
use crate::store::TicketStore;

/// What the handlers share, built once by startup.
pub struct AppState {
    pub tickets: TicketStore,
    pub rate_limits: RateLimits,
    pub trusted_proxies: TrustedProxies,
    /// `None`: the server API is off (its routes answer 404).
    pub api_key: Option<SecretString>,
    /// While draining, mints and upgrades answer 503.
    pub shutdown: Shutdown,
    pub session: Arc<SessionContext>,
    pub origins: OriginPolicy,
    pub ticket_ttl: Duration,
    /// Where broadcasts, messages, disconnects and revocations go (this node or all).
    pub bus: Arc<Bus>,
}

pub fn configure(cfg: &mut web::ServiceConfig, origins: &OriginPolicy, api: Option<usize>) {
    if let Some(max_body_bytes) = api {
        api::configure(cfg, max_body_bytes);
    }
    cfg.service(
        web::resource("/token/ws")
            .wrap(origins.cors())
            // actix-cors answers refused preflights with plain text; every rejection is JSON.
            .wrap(ErrorHandlers::new().handler(StatusCode::BAD_REQUEST, cors_rejection_as_json))
            .route(web::get().to(mint::mint_ticket))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/demo")
            .route(web::get().to(upgrade::upgrade))
            .default_service(web::to(method_not_allowed)),
    )
    .route("/", web::get().to(static_files::demo_page))
    .route("/ticketgate.js", web::get().to(static_files::client_module))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/metrics", web::get().to(health::metrics))
    .route("/openapi.json", web::get().to(health::openapi))
    .default_service(web::to(not_found));
}

fn cors_rejection_as_json<B>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let (request, _) = response.into_parts();
    let json = ServiceResponse::new(request, ApiError::CorsRejected.error_response());
    Ok(ErrorHandlerResponse::Response(json.map_into_right_body()))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

async fn method_not_allowed() -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed)
}
