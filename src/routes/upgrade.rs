//! `GET /demo?token=<ticket>`: checks the ticket, then upgrades to a WebSocket.

use actix_http::BoxedPayloadStream;
use actix_web::{FromRequest, HttpRequest, HttpResponse, dev, web};

use super::AppState;
use crate::error::ApiError;
use crate::hub::ConnectionRefused;
use crate::session::frame_guard::{FrameGuard, FrameLimit};
use crate::session::{self, PRE_AUTH_MAX_MESSAGE_BYTES};
use crate::store::RedeemError;
use crate::ticket::{PresentedTicket, redact};

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if let Some(client) = state.trusted_proxies.client_ip(&req) {
        state
            .rate_limits
            .check_upgrade(client)
            .map_err(ApiError::RateLimited)?;
    }
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining);
    }
    if !state.origins.allows_request(&req) {
        return Err(ApiError::OriginNotAllowed);
    }
    let metrics = &state.session.metrics;
    let rejected = |reason: &str| metrics.tickets_rejected.with_label_values(&[reason]).inc();
    let raw_ticket = ticket_param(req.query_string()).inspect_err(|e| match e {
        ApiError::MissingTicket => rejected("missing"),
        _ => rejected("malformed"),
    })?;
    // Check the handshake before redeeming, so a request that cannot upgrade does not burn
    // a single-use ticket.
    actix_http::ws::handshake(req.head()).map_err(|e| ApiError::NotWebSocket(e.to_string()))?;
    let ticket = PresentedTicket::parse(&raw_ticket).map_err(|_| {
        log::debug!("malformed ticket {}", redact(&raw_ticket));
        rejected("malformed");
        ApiError::InvalidTicket
    })?;
    // The connection slot is taken inside the redemption, after the ticket checks out and
    // before it is consumed: a user at their limit keeps the ticket for later.
    let hub = &state.session.hub;
    let (_, open) = state
        .tickets
        .redeem_admitting(&ticket, |user_id| hub.try_open(user_id))
        .await
        .map_err(|e| match e {
            RedeemError::Rejected(why) => {
                log::debug!("ticket {} refused: {why}", redact(&raw_ticket));
                rejected(why.label());
                ApiError::InvalidTicket
            }
            RedeemError::Unavailable(e) => {
                log::warn!("redeeming a ticket: {e}");
                ApiError::StoreUnavailable
            }
            RedeemError::NotAdmitted(ConnectionRefused::UserLimit) => ApiError::TooManyConnections,
            RedeemError::NotAdmitted(ConnectionRefused::Capacity) => ApiError::AtCapacity,
        })?;

    // Every frame header is checked against the limit before actix buffers the frame.
    let frame_limit = FrameLimit::new(PRE_AUTH_MAX_MESSAGE_BYTES);
    let guarded: BoxedPayloadStream =
        Box::pin(FrameGuard::new(body.into_inner(), frame_limit.clone()));
    let body = web::Payload::from_request(&req, &mut dev::Payload::from(guarded))
        .await
        .map_err(|e| ApiError::NotWebSocket(e.to_string()))?;
    let (response, ws_session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::NotWebSocket(e.to_string()))?;
    metrics.tickets_consumed.inc();
    log::info!("{} upgraded for user {}", open.id, open.user_id());
    actix_web::rt::spawn(session::run(
        state.session.clone(),
        open,
        ws_session,
        stream,
        frame_limit,
    ));
    Ok(response)
}

/// The single `token` query parameter. Several `token` parameters are refused as ambiguous.
fn ticket_param(query: &str) -> Result<String, ApiError> {
    let mut tokens = url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == "token");
    match (tokens.next(), tokens.next()) {
        (None, _) => Err(ApiError::MissingTicket),
        (Some((_, v)), None) if v.is_empty() => Err(ApiError::MissingTicket),
        (Some((_, v)), None) => Ok(v.into_owned()),
        (Some(_), Some(_)) => Err(ApiError::InvalidTicket),
    }
}
