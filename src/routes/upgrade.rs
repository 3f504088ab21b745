//! `GET /demo?token=<ticket>`: checks the ticket, then upgrades to a WebSocket.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::opening::Opening;
use crate::error::ApiError;
use crate::hub::TransportKind;
use crate::session;
use crate::wire::deflate::{self, Inflater};
use crate::wire::socket::Handoff;
use crate::wire::{FrameReader, FrameWriter, WebSocket};

/// Answers 101 with a [`Handoff`] that starts the session on the socket; the upgrade hook
/// (`crate::wire::upgrade`) writes the 101 and hands the socket over.
pub async fn upgrade(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let opening = Opening::begin(&req, &state)?;
    // Check the handshake before redeeming, so a request that cannot upgrade does not burn
    // a single-use ticket.
    actix_http::ws::handshake(req.head()).map_err(|e| ApiError::NotWebSocket(e.to_string()))?;
    let subprotocol = chosen_subprotocol(&req)?;
    let compression = state.compression_threshold.and_then(|threshold| {
        let offers = req
            .headers()
            .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
            .filter_map(|value| value.to_str().ok());
        deflate::negotiate(offers).map(|negotiated| (negotiated, threshold))
    });
    let (client_ip, open) = opening.redeem(&state, TransportKind::WebSocket).await?;
    let mut handshake = actix_http::ws::handshake_response(req.head());
    if let Some(protocol) = subprotocol {
        handshake.insert_header((header::SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    if let Some((negotiated, _)) = compression {
        handshake.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, negotiated.response()));
    }
    let mut response = HttpResponse::from(handshake.finish()).map_into_boxed_body();
    let ctx = state.session.clone();
    response
        .extensions_mut()
        .insert(Handoff::new(move |socket, early| {
            let (read, write) = socket.into_split();
            let (mut reader, mut writer) = (FrameReader::new(read, early), FrameWriter::new(write));
            if let Some((negotiated, threshold)) = compression {
                reader = reader.with_inflater(Inflater::new(negotiated));
                writer = writer.compressing(threshold);
            }
            let transport = WebSocket::new(reader, writer);
            actix_web::rt::spawn(session::run(ctx, open, transport, client_ip));
        }));
    Ok(response)
}

/// The one WebSocket subprotocol the gateway speaks (docs/PROTOCOL.md).
pub const SUBPROTOCOL: &str = "ticketgate.v1";

/// The subprotocol to name in the 101: ours when the client offers it, none when it offers
/// none. A client that offers only others would fail the handshake itself (browsers do when
/// the answer names none of theirs), so it is refused here, before the ticket is spent.
fn chosen_subprotocol(req: &HttpRequest) -> Result<Option<&'static str>, ApiError> {
    let mut offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .flat_map(|value| value.to_str().unwrap_or("").split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    if offered.peek().is_none() {
        return Ok(None);
    }
    if offered.any(|p| p == SUBPROTOCOL) {
        Ok(Some(SUBPROTOCOL))
    } else {
        Err(ApiError::NotWebSocket(format!(
            "none of the offered subprotocols is spoken here; offer {SUBPROTOCOL} or none"
        )))
    }
}
