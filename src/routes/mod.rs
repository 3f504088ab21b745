//! HTTP routes: one module per endpoint, wired together in [`configure`].

pub mod api;
mod api_caller;
mod api_io;
pub mod channel_api;
mod console;
mod health;
mod mint;
mod opening;
mod sse;
mod static_files;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers, Next};
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
    /// `None`: the server API takes no key (its routes answer 404 unless the console is on).
    pub api_key: Option<SecretString>,
    /// `None`: CONSOLE_PASSWORD is unset, `/console` answers 404.
    pub console: Option<Arc<crate::console::Console>>,
    /// While draining, mints and upgrades answer 503.
    pub shutdown: Shutdown,
    pub session: Arc<SessionContext>,
    pub origins: OriginPolicy,
    pub ticket_ttl: Duration,
    /// permessage-deflate on (WS_COMPRESSION): messages from this many bytes up go compressed.
    pub compression_threshold: Option<usize>,
    /// Where broadcasts, messages, disconnects and revocations go (this node or all).
    pub bus: Arc<Bus>,
    /// The live nodes, their channels and series.
    pub cluster: Arc<crate::cluster::Cluster>,
}

/// `api`: the server API's body limit, when it is on; `console`: whether the console is.
pub fn configure(
    cfg: &mut web::ServiceConfig,
    origins: &OriginPolicy,
    api: Option<usize>,
    console: bool,
) {
    if let Some(max_body_bytes) = api {
        cfg.service(
            channel_api::configure(api::scope(max_body_bytes))
                .wrap(actix_web::middleware::from_fn(trace_api)),
        );
    }
    if console {
        console::configure(cfg);
    }
    cfg.service(
        web::resource("/token/ws")
            .wrap(origins.cors())
            // actix-cors answers refused preflights with plain text; every rejection is JSON.
            .wrap(ErrorHandlers::new().handler(StatusCode::BAD_REQUEST, cors_rejection_as_json))
            .route(web::get().to(mint::mint_ticket))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::resource("/sse")
            .wrap(origins.cors())
            .wrap(ErrorHandlers::new().handler(StatusCode::BAD_REQUEST, cors_rejection_as_json))
            .route(web::get().to(sse::open_stream))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(
        web::resource("/sse/messages")
            .wrap(origins.cors_for_posts())
            .wrap(ErrorHandlers::new().handler(StatusCode::BAD_REQUEST, cors_rejection_as_json))
            .route(web::post().to(sse::post_messages))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        // No HEAD: a HEAD cannot upgrade (RFC 6455 asks for GET), and minting above has an
        // effect whose result a HEAD answer could not carry.
        web::resource("/demo")
            .route(web::get().to(upgrade::upgrade))
            .default_service(web::to(|| method_not_allowed("GET"))),
    )
    .service(readable("/", static_files::demo_page))
    .service(readable("/ticketgate.js", static_files::client_module))
    .service(readable(
        "/ticketgate-worker.js",
        static_files::worker_module,
    ))
    .service(readable("/healthz", health::healthz))
    .service(readable("/livez", health::livez))
    .service(readable("/readyz", health::readyz))
    .service(readable("/metrics", health::metrics))
    .service(readable("/openapi.json", health::openapi))
    .default_service(web::to(not_found));
}

/// A read-only resource: GET, HEAD (the same answer without its body, as RFC 9110 asks), and
/// 405 with `Allow` for any other method.
pub(crate) fn readable<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(web::to(|| method_not_allowed("GET, HEAD")))
}

/// A resource that only takes POST; 405 with `Allow` for any other method.
pub(crate) fn post_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|| method_not_allowed("POST")))
}

/// A span for each server API call (when tracing): its method, route and status.
pub async fn trace_api(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let span = req
        .app_data::<web::Data<AppState>>()
        .filter(|state| state.session.telemetry.is_on())
        .map(|state| state.session.telemetry.server("api.request"));
    let Some(span) = span else {
        return next.call(req).await;
    };
    span.set_with("http.request.method", || req.method().to_string());
    let response = next.call(req).await?;
    if let Some(route) = response.request().match_pattern() {
        span.set("http.route", route);
    }
    let status = response.status();
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.fail(status.to_string());
    }
    Ok(response)
}

/// Refuses a request with two `Authorization` or two `Origin` headers: whichever copy the
/// gateway read, a proxy in front of it may have read the other, and the two would disagree
/// about who is asking.
pub async fn refuse_ambiguous_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    for (name, label) in [
        (header::AUTHORIZATION, "Authorization"),
        (header::ORIGIN, "Origin"),
    ] {
        if req.headers().get_all(name).nth(1).is_some() {
            let response = ApiError::DuplicateHeader(label).error_response();
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

fn cors_rejection_as_json<B>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    // The handlers' own 400s are JSON already.
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    }
    let (request, _) = response.into_parts();
    let json = ServiceResponse::new(request, ApiError::CorsRejected.error_response());
    Ok(ErrorHandlerResponse::Response(json.map_into_right_body()))
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

pub(crate) async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}
