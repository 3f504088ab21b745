//! The server API for the application's backend, under `/api`: broadcasts, messages to one
//! user, disconnects and revocations (all through the bus, so on every node), connection
//! counts and the live nodes. Authenticated with `Authorization: Bearer <API_KEY>`;
//! without API_KEY configured these routes do not exist (404).

use actix_web::error::JsonPayloadError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use super::{AppState, post_only, readable};
use crate::bus::{BusMode, ClusterCounts, Command, NodeView, Reach};
use crate::clock::MAX_UNIX_SECS;
use crate::console::{CALL_HEADER, COOKIE, ConsoleSession};
use crate::db::Unavailable;
use crate::error::ApiError;

pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize) {
    let json = web::JsonConfig::default()
        .limit(max_body_bytes)
        // `curl -d` sends a form content type; the body is what matters.
        .content_type_required(false)
        .error_handler(|error, _| ApiError::from(error).into());
    let query = web::QueryConfig::default().error_handler(|error, _| {
        ApiError::BadRequest(format!("the query string: {error}")).into()
    });
    let scope = web::scope("/api")
        .app_data(json)
        .app_data(query)
        .service(post_only("/broadcast", broadcast))
        .service(post_only("/users/{user_id}/messages", message_user))
        .service(post_only("/users/{user_id}/disconnect", disconnect_user))
        .service(readable("/users/{user_id}/connections", user_connections))
        .service(post_only("/revocations", revoke))
        .service(readable("/connections", connections))
        .service(readable("/nodes", nodes))
        .service(readable("/series", series));
    cfg.service(super::channel_api::configure(scope));
}

/// Who called the server API: the backend with the API key, or an operator from the console
/// (its session cookie plus the console's header). Extracting it is the check.
#[derive(Debug, Clone)]
pub enum ApiCaller {
    Backend,
    Console(ConsoleSession),
}

impl std::fmt::Display for ApiCaller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiCaller::Backend => f.write_str("the server API"),
            ApiCaller::Console(session) => write!(f, "console {}", session.id),
        }
    }
}

impl ApiCaller {
    /// Writes an operator's action to the log with the console session's id (the backend's
    /// calls are its own to log).
    pub fn note(&self, action: std::fmt::Arguments<'_>) {
        if let ApiCaller::Console(session) = self {
            log::info!("console {}: {action}", session.id);
        }
    }
}

impl FromRequest for ApiCaller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { api_caller(&req).await })
    }
}

async fn api_caller(req: &HttpRequest) -> Result<ApiCaller, ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or(ApiError::NotFound)?;
    let presented = req.headers().get(header::AUTHORIZATION);
    if presented.is_none() && state.console.is_some() && req.cookie(COOKIE).is_some() {
        if !req.headers().contains_key(CALL_HEADER) {
            return Err(ApiError::ConsoleSessionRequired);
        }
        return super::console::session_of(req, state)
            .await
            .map(ApiCaller::Console);
    }
    let Some(expected) = state.api_key.as_ref() else {
        return Err(match (state.console.is_some(), presented) {
            (false, _) => ApiError::NotFound,
            (true, None) => ApiError::ConsoleSessionRequired,
            (true, Some(_)) => ApiError::InvalidApiKey,
        });
    };
    let presented = presented
        .ok_or(ApiError::MissingApiKey)?
        // Bytes that are not visible ASCII cannot be the key: a wrong key, not a missing one.
        .to_str()
        .map_err(|_| ApiError::InvalidApiKey)?;
    let presented = Some(presented)
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
        Ok(ApiCaller::Backend)
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
            other => ApiError::BadRequest(format!("the body: {other}")),
        }
    }
}

/// A request body that is a JSON object, read as `T`. serde reads a struct from a JSON array
/// too (`["j1", 5]` as `{"jti": "j1", "expires_at": 5}`); the API takes objects only.
pub struct ObjectBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for ObjectBody<T> {
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        // Any JSON first (limits and errors as configured above), then the object check.
        let json = web::Json::<Box<RawValue>>::from_request(req, payload);
        Box::pin(async move {
            let raw = json.await?.into_inner();
            if !raw.get().starts_with('{') {
                return Err(ApiError::BadRequest("the body must be a JSON object".into()).into());
            }
            serde_json::from_str(raw.get())
                .map(ObjectBody)
                .map_err(|e| ApiError::BadRequest(format!("the body: {e}")).into())
        })
    }
}

#[derive(Deserialize)]
struct DataBody {
    data: Box<RawValue>,
}

/// How far a command went: `node` answers carry counts of this node's connections it
/// reached; `cluster` answers come once the event is written, and every node delivers it.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Scope {
    Node,
    Cluster,
}

/// What the bus did with a command, as the answers report it.
pub(super) struct Sent {
    /// Broadcasts only.
    pub seq: Option<u64>,
    pub scope: Scope,
    /// Connections reached, when the scope is one node.
    pub reached: Option<usize>,
    /// Publications into history channels: where each went.
    pub streams: Vec<crate::bus::StreamPublication>,
}

/// Sends `command` through the bus; a bus that cannot take it is a 503.
pub(super) async fn send(state: &AppState, command: Command) -> Result<Sent, ApiError> {
    let receipt = state.bus.send(command).await.map_err(bus_unavailable)?;
    let (scope, reached) = match receipt.reach {
        Reach::Node(reached) => (Scope::Node, Some(reached)),
        Reach::Cluster => (Scope::Cluster, None),
    };
    Ok(Sent {
        seq: receipt.seq,
        scope,
        reached,
        streams: receipt.streams,
    })
}

fn bus_unavailable(e: Unavailable) -> ApiError {
    log::warn!("cluster bus: {e}");
    ApiError::DatabaseUnavailable
}

#[derive(Serialize)]
struct Published {
    seq: u64,
    node: String,
    scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered: Option<usize>,
}

async fn broadcast(
    caller: ApiCaller,
    state: web::Data<AppState>,
    body: ObjectBody<DataBody>,
) -> Result<HttpResponse, ApiError> {
    caller.note(format_args!("broadcast"));
    let sent = send(&state, Command::Broadcast(body.0.data)).await?;
    Ok(HttpResponse::Accepted().json(Published {
        seq: sent.seq.unwrap_or_default(),
        node: state.bus.node().id.to_string(),
        scope: sent.scope,
        delivered: sent.reached,
    }))
}

/// The 202 of a command that reaches connections: how far it went, and on one node how many
/// connections it reached.
#[derive(Serialize)]
struct Delivered {
    scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered: Option<usize>,
}

/// 202 `{"scope", "delivered"?}` for a command the bus took.
pub(super) fn accepted(sent: Sent) -> HttpResponse {
    HttpResponse::Accepted().json(Delivered {
        scope: sent.scope,
        delivered: sent.reached,
    })
}

async fn message_user(
    caller: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
    body: ObjectBody<DataBody>,
) -> Result<HttpResponse, ApiError> {
    caller.note(format_args!("message to user {user_id}"));
    let command = Command::Message {
        user_id: user_id.into_inner(),
        data: body.0.data,
    };
    Ok(accepted(send(&state, command).await?))
}

#[derive(Serialize)]
struct Disconnected {
    scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnected: Option<usize>,
    tickets_deleted: u64,
}

async fn disconnect_user(
    caller: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = user_id.into_inner();
    caller.note(format_args!("disconnect user {user_id}"));
    let command = Command::Disconnect {
        user_id: user_id.clone(),
    };
    let sent = send(&state, command).await?;
    // Without its unused tickets the user cannot come straight back with one fetched earlier.
    let tickets_deleted = state
        .tickets
        .delete_user_tickets(&user_id)
        .await
        .map_err(|e| {
            log::warn!("deleting the tickets of a disconnected user: {e}");
            ApiError::DatabaseUnavailable
        })?;
    log::info!(
        "disconnected user {user_id}: {} connections, {tickets_deleted} tickets",
        sent.reached
            .map_or("every node's".to_owned(), |n| n.to_string())
    );
    Ok(HttpResponse::Accepted().json(Disconnected {
        scope: sent.scope,
        disconnected: sent.reached,
        tickets_deleted,
    }))
}

/// The longest `jti` a revocation takes.
const MAX_JTI_CHARS: usize = 512;

#[derive(Deserialize)]
struct RevocationBody {
    jti: String,
    /// Unix seconds: when the token expires anyway; the revocation is kept until then.
    #[serde(deserialize_with = "whole_number")]
    expires_at: u64,
}

/// A JSON number with no fractional part, as JSON Schema's `integer` means it: `2014.0` is
/// one (Schemathesis sends such), `2014.5` and `-1` are not.
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=MAX_UNIX_SECS as f64).contains(&f) => Ok(f as u64),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number from 0 to {MAX_UNIX_SECS}, got {number}"
        ))),
    }
}

#[derive(Serialize)]
struct Revoked {
    jti: String,
    scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnected: Option<usize>,
}

async fn revoke(
    caller: ApiCaller,
    state: web::Data<AppState>,
    body: ObjectBody<RevocationBody>,
) -> Result<HttpResponse, ApiError> {
    let ObjectBody(RevocationBody { jti, expires_at }) = body;
    caller.note(format_args!("revoke jti {jti} until {expires_at}"));
    // Characters, as JSON Schema's maxLength counts them (docs/openapi.json).
    if jti.is_empty() || jti.chars().count() > MAX_JTI_CHARS {
        return Err(ApiError::BadRequest(format!(
            "jti must have 1 to {MAX_JTI_CHARS} characters"
        )));
    }
    if expires_at > MAX_UNIX_SECS {
        return Err(ApiError::BadRequest(format!(
            "expires_at must be unix seconds no later than {MAX_UNIX_SECS} (the year 9999)"
        )));
    }
    // Recorded first: a node that authenticates a connection after this checks the store.
    state
        .session
        .revocations
        .revoke(&jti, expires_at)
        .await
        .map_err(|e| {
            log::warn!("recording a revocation: {e}");
            ApiError::DatabaseUnavailable
        })?;
    let sent = send(&state, Command::Revoke { jti: jti.clone() }).await?;
    log::info!("revoked a token until {expires_at}");
    Ok(HttpResponse::Created().json(Revoked {
        jti,
        scope: sent.scope,
        disconnected: sent.reached,
    }))
}

#[derive(Deserialize)]
struct ConnectionsQuery {
    user_id: Option<String>,
}

#[derive(Serialize)]
struct ConnectionsBody {
    #[serde(flatten)]
    counts: ClusterCounts,
    /// This node's connections of the user.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_connections: Option<usize>,
}

/// Counts summed over the live nodes (this node's as of now, the others' as of their last
/// heartbeat).
async fn connections(
    _: ApiCaller,
    state: web::Data<AppState>,
    query: web::Query<ConnectionsQuery>,
) -> Result<HttpResponse, ApiError> {
    let nodes = state.bus.nodes().await.map_err(bus_unavailable)?;
    let hub = &state.session.hub;
    Ok(HttpResponse::Ok().json(ConnectionsBody {
        counts: ClusterCounts::sum(&nodes),
        user_connections: query.user_id.as_deref().map(|user| hub.open_count_of(user)),
    }))
}

#[derive(Serialize)]
struct NodesBody {
    bus: BusMode,
    nodes: Vec<NodeView>,
}

/// The live nodes, this one first.
async fn nodes(_: ApiCaller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let nodes = state.bus.nodes().await.map_err(bus_unavailable)?;
    Ok(HttpResponse::Ok().json(NodesBody {
        bus: state.bus.mode(),
        nodes,
    }))
}

/// Every live node's recent metrics (the console's charts); each node's series is its own.
async fn series(_: ApiCaller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let series = state.bus.series().await.map_err(bus_unavailable)?;
    Ok(HttpResponse::Ok().json(series))
}

#[derive(Serialize)]
struct UserConnections {
    user_id: String,
    connections: Vec<crate::lifecycle::roster::ConnectionView>,
}

/// A user's open connections on every node, as the lifecycle events tell them.
async fn user_connections(
    _: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user_id = user_id.into_inner();
    let lookup = state.session.lifecycle.lookup();
    let connections = lookup
        .connections_of(&user_id)
        .await
        .map_err(|e| {
            log::warn!("looking up a user's connections: {e}");
            ApiError::DatabaseUnavailable
        })?
        .ok_or(ApiError::UserLookupDisabled)?;
    Ok(HttpResponse::Ok().json(UserConnections {
        user_id,
        connections,
    }))
}
