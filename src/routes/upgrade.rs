//! `GET /demo?token=<ticket>`: checks the ticket, then upgrades to a WebSocket.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use crate::error::ApiError;
use crate::session;
use crate::store::RedeemError;
use crate::ticket::{PresentedTicket, redact};

pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let raw_ticket = ticket_param(req.query_string())?;
    // Check the handshake before redeeming, so a request that cannot upgrade does not burn
    // a single-use ticket.
    actix_http::ws::handshake(req.head()).map_err(|e| ApiError::NotWebSocket(e.to_string()))?;
    let ticket = PresentedTicket::parse(&raw_ticket).map_err(|_| {
        log::debug!("malformed ticket {}", redact(&raw_ticket));
        ApiError::InvalidTicket
    })?;
    let redeemed = state.tickets.redeem(&ticket).await.map_err(|e| match e {
        RedeemError::Rejected(why) => {
            log::debug!("ticket {} refused: {why}", redact(&raw_ticket));
            ApiError::InvalidTicket
        }
        RedeemError::Unavailable(e) => {
            log::warn!("redeeming a ticket: {e}");
            ApiError::StoreUnavailable
        }
    })?;

    let (response, ws_session, stream) =
        actix_ws::handle(&req, body).map_err(|e| ApiError::NotWebSocket(e.to_string()))?;
    let stream = stream
        .max_frame_size(state.max_message_bytes)
        .aggregate_continuations()
        .max_continuation_size(state.max_message_bytes);
    let open = state.session.hub.open_connection();
    log::info!("{} upgraded for user {}", open.id, redeemed.user_id);
    actix_web::rt::spawn(session::run(
        state.session.clone(),
        open,
        ws_session,
        stream,
        redeemed.user_id,
    ));
    Ok(response)
}

/// Same-origin compares with the raw `Host` header, not `X-Forwarded-Host`: forwarding headers
/// are only trustworthy behind a known proxy, and the proxy should pass `Host` through.
fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let header_text = |name| -> Result<Option<&str>, ApiError> {
        match req.headers().get(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(Some)
                .map_err(|_| ApiError::OriginNotAllowed),
        }
    };
    let origin = header_text(header::ORIGIN)?;
    let host = header_text(header::HOST)?;
    if state.origins.allows(origin, host) {
        Ok(())
    } else {
        Err(ApiError::OriginNotAllowed)
    }
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
