//! The operations console: its page and scripts (from client/console/, embedded), and its
//! sign-in at `/console/session`. The page calls the server API (`/api/...`) with the
//! session's cookie; [`super::api_caller::ApiCaller`] takes that in place of the API key. Only when
//! CONSOLE_PASSWORD is set; otherwise none of this exists (404).

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite, time};
use actix_web::http::header::{self, ContentType};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::api_caller::console_session;
use super::{AppState, method_not_allowed, readable};
use crate::console::{COOKIE, Console};
use crate::error::ApiError;
use crate::hub::{ChannelWatch, Inbound};

/// Only the console's own scripts, styles and API: no inline script, no other origin, no
/// framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(readable("/console", page))
        .service(readable("/console/console.js", script))
        .service(readable("/console/console.css", stylesheet))
        .service(readable("/console/vendor/uPlot.iife.min.js", chart_script))
        .service(readable("/console/vendor/uPlot.min.css", chart_stylesheet))
        .service(
            web::resource("/console/session")
                .route(web::post().to(sign_in))
                .route(web::get().to(current))
                .route(web::delete().to(sign_out))
                .default_service(web::to(|| method_not_allowed("GET, POST, DELETE"))),
        )
        .service(readable("/console/channels/{channel}/tail", tail));
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(body)
}

async fn page() -> HttpResponse {
    asset(
        &ContentType::html().to_string(),
        include_str!("../../client/console/index.html"),
    )
}

async fn script() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../client/console/console.js"),
    )
}

async fn stylesheet() -> HttpResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../client/console/console.css"),
    )
}

/// uPlot 1.6.32 (MIT), vendored from its npm package (client/console/vendor/; a test checks
/// the copy against the package): small (50 KB), fast on canvas, no dependencies, no `eval`.
async fn chart_script() -> HttpResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("../../client/console/vendor/uPlot.iife.min.js"),
    )
}

async fn chart_stylesheet() -> HttpResponse {
    asset(
        "text/css; charset=utf-8",
        include_str!("../../client/console/vendor/uPlot.min.css"),
    )
}

fn console(state: &AppState) -> Result<&Console, ApiError> {
    state.console.as_deref().ok_or(ApiError::NotFound)
}

#[derive(Deserialize)]
struct SignIn {
    password: String,
}

async fn sign_in(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<SignIn>,
) -> Result<HttpResponse, ApiError> {
    let console = console(&state)?;
    let client = state.trusted_proxies.client_ip(&req);
    if let Some(client) = client {
        console
            .check_signin_rate(client)
            .map_err(ApiError::RateLimited)?;
    }
    let client = client.map_or_else(|| "an unknown address".to_owned(), |ip| ip.to_string());
    if !console.password_matches(&body.password) {
        log::warn!("console: a wrong password from {client}");
        return Err(ApiError::WrongPassword);
    }
    let (session, token) = console.open_session();
    log::info!("console: {} signed in from {client}", session.id);
    let cookie = Cookie::build(COOKIE, token)
        .path("/")
        .http_only(true)
        .secure(state.trusted_proxies.forwarded_https(&req))
        .same_site(SameSite::Strict)
        .max_age(time::Duration::seconds(
            i64::try_from(console.lasts().as_secs()).unwrap_or(i64::MAX),
        ))
        .finish();
    Ok(HttpResponse::Ok()
        .cookie(cookie)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "expires_at": session.expires_at })))
}

async fn current(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let session = console_session(&req, &state).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "expires_at": session.expires_at })))
}

async fn sign_out(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let session = console_session(&req, &state).await?;
    state
        .session
        .revocations
        .revoke(&session.id, session.expires_at)
        .await
        .map_err(|_| ApiError::DatabaseUnavailable)?;
    log::info!("console: {} signed out", session.id);
    let mut gone = Cookie::build(COOKIE, "").path("/").finish();
    gone.make_removal();
    Ok(HttpResponse::NoContent().cookie(gone).finish())
}

/// What the console's own subscriptions are called where a user id is needed.
const TAIL_LABEL: &str = "ticketgate-console";
/// A comment line this often keeps proxies from closing a quiet stream, and finds out that
/// the browser left (the server learns it only when a write fails): a closed tail leaves
/// its channel within a few of these.
const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// `GET /console/channels/{channel}/tail`: the channel's publications from now on, as
/// Server-Sent Events (`data: <the publication as clients get it>`). The console subscribes
/// through a listener of its own on this node (a [`crate::hub::ChannelWatch`], which
/// publications from every node reach, and which counts as no connection); closing the
/// stream ends it. A GET with no effect beyond its own answer, so the cookie
/// suffices (EventSource cannot send the console's header, and another site cannot read the
/// answer).
async fn tail(
    req: HttpRequest,
    state: web::Data<AppState>,
    channel: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let session = console_session(&req, &state).await?;
    let (name, _) = super::api_io::checked_channel(&state, &channel)?;
    // The listener joins once this node's stream carries the channel (`bus::interest`).
    let covering = state
        .bus
        .cover(&name)
        .await
        .map_err(super::api_io::bus_unavailable)?;
    let watch = state.session.hub.watch(&name, TAIL_LABEL);
    drop(covering);
    log::info!("console {}: tails {}", session.id, name.as_str());
    let tail = Tail {
        watch,
        channel: name.as_str().to_owned(),
    };
    let events = futures_util::stream::unfold(tail, |mut tail| async move {
        let event = tail.next_event().await?;
        Some((Ok::<_, actix_web::Error>(event), tail))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(events))
}

/// One tail: its listener, dropped (leaving the channel) with the stream.
struct Tail {
    watch: ChannelWatch,
    channel: String,
}

impl Tail {
    /// The next event to send: a publication of the channel, or a keep-alive comment;
    /// `None` ends the stream (the listener fell behind: the browser reconnects).
    async fn next_event(&mut self) -> Option<Bytes> {
        loop {
            let inbound = match tokio::time::timeout(KEEP_ALIVE, self.watch.next()).await {
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                Ok(Err(_)) => return None,
                Ok(Ok(inbound)) => inbound,
            };
            let deliveries = match inbound {
                Inbound::Delivery(delivery) => vec![delivery],
                Inbound::Recovered(deliveries) => deliveries,
                Inbound::Control(_) => continue,
            };
            let mut events = Vec::new();
            for delivery in deliveries {
                let text = delivery.message.as_bytes();
                if self.is_publication(text) {
                    events.extend_from_slice(b"data: ");
                    events.extend_from_slice(text);
                    events.extend_from_slice(b"\n\n");
                }
            }
            if !events.is_empty() {
                return Some(Bytes::from(events));
            }
        }
    }

    /// Only this channel's publications go out (join and leave notices stay).
    fn is_publication(&self, text: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Head<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            channel: Option<&'a str>,
        }
        serde_json::from_slice::<Head>(text)
            .is_ok_and(|head| head.kind == "publication" && head.channel == Some(&self.channel))
    }
}
