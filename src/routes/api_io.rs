//! What the server API's routes share: JSON object bodies, channel names checked against the
//! namespaces, and sending a command through the bus with the answer it makes.

use actix_web::error::JsonPayloadError;
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::AppState;
use crate::bus::{Command, IdempotencyKey, Reach};
use crate::channels::{ChannelName, NamespaceOptions};
use crate::db::Unavailable;
use crate::error::ApiError;

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

/// A JSON number with no fractional part from 0 to `max`, as JSON Schema's `integer` means
/// it: `2014.0` is one (Schemathesis sends such), `2014.5` and `-1` are not.
pub(super) fn whole_number(number: &serde_json::Number, max: u64) -> Option<u64> {
    if let Some(n) = number.as_u64() {
        return (n <= max).then_some(n);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..=max as f64).contains(&f) => Some(f as u64),
        _ => None,
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
    send_keyed(state, command, None).await
}

/// Sends a publication through the bus unless `key` was used within its window; a repeat
/// is answered as the first was.
pub(super) async fn send_keyed(
    state: &AppState,
    command: Command,
    key: Option<IdempotencyKey>,
) -> Result<Sent, ApiError> {
    let receipt = state
        .bus
        .send_keyed(command, key)
        .await
        .map_err(bus_unavailable)?;
    if receipt.duplicate {
        state.session.metrics.publish_duplicates.inc();
    }
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

pub(super) fn bus_unavailable(e: Unavailable) -> ApiError {
    log::warn!("cluster bus: {e}");
    ApiError::DatabaseUnavailable
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

/// The body's `idempotency_key` for a publication into `channels`, if it has one.
pub(super) fn idempotency_key<'a>(
    state: &AppState,
    key: Option<&str>,
    channels: impl IntoIterator<Item = &'a str>,
) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    let window = state.session.channels.idempotency_window;
    IdempotencyKey::new(key, channels, window)
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// A valid channel name in a declared namespace.
pub fn checked_channel(
    state: &AppState,
    channel: &str,
) -> Result<(ChannelName, NamespaceOptions), ApiError> {
    let name = ChannelName::parse(channel).map_err(|_| ApiError::InvalidChannel)?;
    let options = state
        .session
        .channels
        .namespaces
        .options(&name)
        .map_err(|_| ApiError::UnknownNamespace)?;
    Ok((name, options))
}
