//! The server API for the application's backend, under `/api`: broadcasts, messages to one
//! user, disconnects, connection counts. Authenticated with `Authorization: Bearer <API_KEY>`;
//! without API_KEY configured these routes do not exist (404).

use std::future::{Ready, ready};

use actix_web::error::JsonPayloadError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::ApiError;
use crate::hub::{ConnectionCounts, Kick};

pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    let json = web::JsonConfig::default()
        .limit(max_body_bytes)
        // `curl -d` sends a form content type; the body is what matters.
        .content_type_required(false)
        .error_handler(|error, _| ApiError::from(error).into());
    cfg.service(
        web::scope("/api")
            .app_data(json)
            .route("/broadcast", web::post().to(broadcast))
            .route("/users/{user_id}/messages", web::post().to(message_user))
            .route(
                "/users/{user_id}/disconnect",
                web::post().to(disconnect_user),
            )
            .route("/revocations", web::post().to(revoke))
            .route("/connections", web::get().to(connections)),
    );
}

/// A request that presented the API key. Extracting it is the check.
pub struct ApiCaller;

impl FromRequest for ApiCaller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(check_api_key(req))
    }
}

fn check_api_key(req: &HttpRequest) -> Result<ApiCaller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::NotFound)?;
    let expected = state.api_key.as_ref().ok_or(ApiError::NotFound)?;
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, key)| key.trim())
        .ok_or(ApiError::MissingApiKey)?;
    // Constant time, so response timing reveals nothing about the key.
    if bool::from(
        presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    ) {
        Ok(ApiCaller)
    } else {
        Err(ApiError::InvalidApiKey)
    }
}

impl From<JsonPayloadError> for ApiError {
    fn from(error: JsonPayloadError) -> Self {
        match error {
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                ApiError::BodyTooLarge
            }
            other => ApiError::BadRequest(other.to_string()),
        }
    }
}

#[derive(Deserialize)]
struct DataBody {
    data: Box<RawValue>,
}

#[derive(Serialize)]
struct Published {
    seq: u64,
}

async fn broadcast(
    _: ApiCaller,
    state: web::Data<AppState>,
    body: web::Json<DataBody>,
) -> HttpResponse {
    let seq = state.session.hub.publish(&body.data);
    HttpResponse::Accepted().json(Published { seq })
}

#[derive(Serialize)]
struct Delivered {
    delivered: usize,
}

async fn message_user(
    _: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
    body: web::Json<DataBody>,
) -> HttpResponse {
    let delivered = state.session.hub.send_to_user(&user_id, &body.data);
    HttpResponse::Accepted().json(Delivered { delivered })
}

#[derive(Serialize)]
struct Disconnected {
    disconnected: usize,
    tickets_deleted: u64,
}

async fn disconnect_user(
    _: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let disconnected = state.session.hub.kick_user(&user_id, Kick::Disconnected);
    // Without its unused tickets the user cannot come straight back with one fetched earlier.
    let tickets_deleted = state
        .tickets
        .delete_user_tickets(&user_id)
        .await
        .map_err(|e| {
            log::warn!("deleting the tickets of a disconnected user: {e}");
            ApiError::StoreUnavailable
        })?;
    log::info!(
        "disconnected user {user_id}: {disconnected} connections, {tickets_deleted} tickets"
    );
    Ok(HttpResponse::Accepted().json(Disconnected {
        disconnected,
        tickets_deleted,
    }))
}

#[derive(Deserialize)]
struct RevocationBody {
    jti: String,
    /// Unix seconds: when the token expires anyway; the revocation is kept until then.
    expires_at: u64,
}

#[derive(Serialize)]
struct Revoked {
    jti: String,
    disconnected: usize,
}

async fn revoke(
    _: ApiCaller,
    state: web::Data<AppState>,
    body: web::Json<RevocationBody>,
) -> Result<HttpResponse, ApiError> {
    let RevocationBody { jti, expires_at } = body.into_inner();
    if jti.is_empty() || jti.len() > 512 {
        return Err(ApiError::BadRequest(
            "jti must have 1 to 512 characters".into(),
        ));
    }
    state
        .session
        .revocations
        .revoke(&jti, expires_at)
        .await
        .map_err(|e| {
            log::warn!("recording a revocation: {e}");
            ApiError::StoreUnavailable
        })?;
    let disconnected = state.session.hub.kick_jti(&jti, Kick::Revoked);
    log::info!("revoked a token until {expires_at}: {disconnected} connections closed");
    Ok(HttpResponse::Created().json(Revoked { jti, disconnected }))
}

#[derive(Deserialize)]
struct ConnectionsQuery {
    user_id: Option<String>,
}

#[derive(Serialize)]
struct ConnectionsBody {
    #[serde(flatten)]
    counts: ConnectionCounts,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_connections: Option<usize>,
}

async fn connections(
    _: ApiCaller,
    state: web::Data<AppState>,
    query: web::Query<ConnectionsQuery>,
) -> HttpResponse {
    let hub = &state.session.hub;
    HttpResponse::Ok().json(ConnectionsBody {
        counts: hub.counts(),
        user_connections: query.user_id.as_deref().map(|user| hub.open_count_of(user)),
    })
}
