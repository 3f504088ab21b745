//! What opening a connection asks, whatever carries it (`upgrade.rs` for a WebSocket, `sse.rs`
//! for an event stream): the same checks in the same documented order, and the ticket
//! redeemed for a connection slot. Between [`Opening::begin`] and [`Opening::redeem`] each
//! transport checks what it needs of the request (the handshake, `Accept`), so a request that
//! could not open does not burn a single-use ticket.

use std::net::IpAddr;

use actix_web::HttpRequest;

use super::AppState;
use crate::error::ApiError;
use crate::hub::{OpenConnection, TransportKind};
use crate::limits::ConnectionRefused;
use crate::store::RedeemError;
use crate::ticket::{PresentedTicket, redact};

/// A request to open a connection that passed the checks before the transport's own.
pub struct Opening {
    client_ip: Option<IpAddr>,
    raw_ticket: String,
}

impl Opening {
    /// The rate per client IP, draining, the origin, and a ticket's presence, in that order.
    pub fn begin(req: &HttpRequest, state: &AppState) -> Result<Opening, ApiError> {
        let client_ip = state.trusted_proxies.client_ip(req);
        if let Some(client) = client_ip {
            state
                .rate_limits
                .check_upgrade(client)
                .map_err(ApiError::RateLimited)?;
        }
        if state.shutdown.is_draining() {
            return Err(ApiError::Draining);
        }
        if !state.origins.allows_request(req) {
            return Err(ApiError::OriginNotAllowed);
        }
        let rejected = |reason: &str| {
            state
                .session
                .metrics
                .tickets_rejected
                .with_label_values(&[reason])
                .inc()
        };
        let raw_ticket = ticket_param(req.query_string()).inspect_err(|e| match e {
            ApiError::MissingTicket => rejected("missing"),
            _ => rejected("malformed"),
        })?;
        Ok(Opening {
            client_ip,
            raw_ticket,
        })
    }

    /// Checks the ticket, takes a connection slot on `transport` for its user, and consumes
    /// the ticket: the client's address and the slot.
    pub async fn redeem(
        self,
        state: &AppState,
        transport: TransportKind,
    ) -> Result<(Option<IpAddr>, OpenConnection), ApiError> {
        let span = state.session.telemetry.server("connection.open");
        span.set("transport", transport.as_str());
        let opened = self.redeem_traced(state, transport).await;
        match &opened {
            Ok((_, open)) => {
                span.set_with("connection.id", || open.id.to_string());
                span.set_with("enduser.id", || open.user_id().to_owned());
            }
            Err(e) => span.fail(e.code()),
        }
        opened
    }

    async fn redeem_traced(
        self,
        state: &AppState,
        transport: TransportKind,
    ) -> Result<(Option<IpAddr>, OpenConnection), ApiError> {
        let metrics = &state.session.metrics;
        let rejected = |reason: &str| metrics.tickets_rejected.with_label_values(&[reason]).inc();
        let raw_ticket = &self.raw_ticket;
        let ticket = PresentedTicket::parse(raw_ticket).map_err(|_| {
            log::debug!("malformed ticket {}", redact(raw_ticket));
            rejected("malformed");
            ApiError::InvalidTicket
        })?;
        // The connection slot is taken inside the redemption, after the ticket checks out
        // and before it is consumed: a user at their limit keeps the ticket for later.
        let hub = &state.session.hub;
        let (_, open) = state
            .tickets
            .redeem_admitting(&ticket, |user_id| hub.try_open(user_id, transport))
            .await
            .map_err(|e| match e {
                RedeemError::Rejected(why) => {
                    log::debug!("ticket {} refused: {why}", redact(raw_ticket));
                    rejected(why.label());
                    ApiError::InvalidTicket
                }
                RedeemError::Unavailable(e) => {
                    log::warn!("redeeming a ticket: {e}");
                    ApiError::DatabaseUnavailable
                }
                RedeemError::NotAdmitted(ConnectionRefused::UserLimit) => {
                    ApiError::TooManyConnections
                }
                RedeemError::NotAdmitted(ConnectionRefused::Capacity) => ApiError::AtCapacity,
            })?;
        metrics.tickets_consumed.inc();
        log::info!(
            connection_id:% = open.id, transport = transport.as_str(), user_id = open.user_id();
            "{} opened ({}) for user {}",
            open.id,
            transport.as_str(),
            open.user_id()
        );
        Ok((self.client_ip, open))
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
