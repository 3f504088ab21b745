//! The server API for the application's backend, under `/api`: broadcasts, messages to one
//! user, disconnects and revocations (all through the bus, so on every node), connection
//! counts and the live nodes. Authenticated with `Authorization: Bearer <API_KEY>`;
//! without API_KEY configured these routes do not exist (404).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::api_caller::ApiCaller;
use super::api_io::{ObjectBody, Scope, accepted, bus_unavailable, send};
use super::{AppState, post_only, readable};
use crate::bus::{BusMode, Command};
use crate::clock::MAX_UNIX_SECS;
use crate::cluster::{ClusterCounts, NodeView};
use crate::error::ApiError;

/// The `/api` scope with this file's routes; the channel routes are added beside them
/// (`super::channel_api`).
pub fn scope(max_body_bytes: usize) -> actix_web::Scope {
    let json = web::JsonConfig::default()
        .limit(max_body_bytes)
        // `curl -d` sends a form content type; the body is what matters.
        .content_type_required(false)
        .error_handler(|error, _| ApiError::from(error).into());
    let query = web::QueryConfig::default().error_handler(|error, _| {
        ApiError::BadRequest(format!("the query string: {error}")).into()
    });
    web::scope("/api")
        .app_data(json)
        .app_data(query)
        .service(post_only("/broadcast", broadcast))
        .service(post_only("/users/{user_id}/messages", message_user))
        .service(post_only("/users/{user_id}/disconnect", disconnect_user))
        .service(readable("/users/{user_id}/connections", user_connections))
        .service(post_only("/revocations", revoke))
        .service(readable("/connections", connections))
        .service(readable("/nodes", nodes))
        .service(readable("/series", series))
}

#[derive(Deserialize)]
struct DataBody {
    data: Box<RawValue>,
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

/// Unix seconds as a whole number (`api_io::whole_number`).
fn whole_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    super::api_io::whole_number(&number, MAX_UNIX_SECS).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "expected a whole number from 0 to {MAX_UNIX_SECS}, got {number}"
        ))
    })
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
    let nodes = state.cluster.nodes().await.map_err(bus_unavailable)?;
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
    let nodes = state.cluster.nodes().await.map_err(bus_unavailable)?;
    Ok(HttpResponse::Ok().json(NodesBody {
        bus: state.bus.mode(),
        nodes,
    }))
}

/// Every live node's recent metrics (the console's charts); each node's series is its own.
async fn series(_: ApiCaller, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let series = state.cluster.series().await.map_err(bus_unavailable)?;
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
