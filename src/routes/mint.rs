//! `GET /token/ws`: trades a user JWT for a connection ticket.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

use super::AppState;
use crate::error::ApiError;
use crate::jwt::JwtRejection;
use crate::ticket::redact;

#[derive(Serialize)]
struct TicketResponse {
    token: String,
    expires_in: u64,
}

pub async fn mint_ticket(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let span = state.session.telemetry.server("ticket.mint");
    let minted = mint(&req, &state, &span).await;
    if let Err(e) = &minted {
        span.set("error.type", e.code());
        span.fail(e.code());
    }
    minted
}

async fn mint(
    req: &HttpRequest,
    state: &AppState,
    span: &crate::telemetry::Span,
) -> Result<HttpResponse, ApiError> {
    if state.shutdown.is_draining() {
        return Err(ApiError::Draining);
    }
    if !state.origins.allows_request(req) {
        return Err(ApiError::OriginNotAllowed);
    }
    let jwt = bearer_token(req)?;
    let user = state
        .session
        .jwt
        .verify(jwt)
        .map_err(ApiError::InvalidToken)?;
    if let Some(jti) = &user.jti {
        let revoked = state
            .session
            .revocations
            .is_revoked(jti)
            .await
            .map_err(|e| {
                log::warn!("checking a revocation: {e}");
                ApiError::DatabaseUnavailable
            })?;
        if revoked {
            return Err(ApiError::InvalidToken(JwtRejection::Revoked));
        }
    }
    state
        .rate_limits
        .check_ticket(&user.sub)
        .map_err(ApiError::RateLimited)?;
    let ticket = state.tickets.issue(&user.sub).await.map_err(|e| {
        log::warn!("minting a ticket: {e}");
        ApiError::DatabaseUnavailable
    })?;
    state.session.metrics.tickets_minted.inc();
    span.set_with("enduser.id", || user.sub.clone());
    let token = ticket.to_string();
    log::debug!("minted ticket {} for user {}", redact(&token), user.sub);
    Ok(HttpResponse::Ok()
        // A ticket is a credential: no cache may keep it (RFC 6749 §5.1 does the same).
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(TicketResponse {
            token,
            expires_in: state.ticket_ttl.as_secs(),
        }))
}

/// The token of `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235).
/// A header whose bytes are not visible ASCII presented something, just not a JWT.
fn bearer_token(req: &HttpRequest) -> Result<&str, ApiError> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?
        .to_str()
        .map_err(|_| ApiError::InvalidToken(JwtRejection::Malformed))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingToken)?;
    let token = token.trim();
    if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() {
        Ok(token)
    } else {
        Err(ApiError::MissingToken)
    }
}
