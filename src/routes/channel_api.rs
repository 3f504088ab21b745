//! The server API's channel routes, under `/api` with the same key and error bodies:
//! publishing, server-side subscriptions, the channel list and presence (docs/PROTOCOL.md,
//! "Channels"). A channel in a path is percent-encoded (`/` as `%2F`).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::AppState;
use super::api_caller::ApiCaller;
use super::api_io::{
    ObjectBody, Scope, accepted, checked_channel, idempotency_key, send, send_keyed,
};
use crate::bus::{Command, StreamPublication};
use crate::channels::{ChannelName, NamespaceOptions};
use crate::cluster::ChannelCount;
use crate::error::ApiError;
use crate::protocol::PresenceClient;
use crate::store::HistoryQuery;

/// Channels one `POST /api/publish` may name.
pub const MAX_PUBLISH_CHANNELS: usize = 1000;

pub fn configure(scope: actix_web::Scope) -> actix_web::Scope {
    use super::{post_only, readable};
    scope
        .service(post_only("/channels/{channel}/publish", publish_one))
        .service(post_only("/publish", publish_many))
        .service(readable("/channels", list))
        .service(readable("/channels/{channel}/presence", presence))
        .service(readable("/channels/{channel}/history", history))
        .service(post_only("/users/{user_id}/subscriptions", subscribe_user))
        .service(
            web::resource("/users/{user_id}/subscriptions/{channel}")
                .route(web::delete().to(unsubscribe_user))
                .default_service(web::to(|| super::method_not_allowed("DELETE"))),
        )
}

#[derive(Deserialize)]
struct PublishBody {
    data: Box<RawValue>,
    /// Publish once per key and channel within IDEMPOTENCY_WINDOW_SECS.
    idempotency_key: Option<String>,
}

/// A publication into a history namespace must leave room for the rest of the history.
fn fits_history(options: NamespaceOptions, data: &RawValue) -> Result<(), ApiError> {
    match options.history {
        Some(history) if data.get().len() > history.max_publication_bytes() => {
            Err(ApiError::PublicationTooLarge {
                max: history.max_publication_bytes(),
            })
        }
        _ => Ok(()),
    }
}

/// The 202 of a publication: how far it went and, in history channels, where it went.
#[derive(Serialize)]
struct PublishedOne {
    scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
}

async fn publish_one(
    caller: ApiCaller,
    state: web::Data<AppState>,
    channel: web::Path<String>,
    body: ObjectBody<PublishBody>,
) -> Result<HttpResponse, ApiError> {
    caller.note(format_args!("publish to {channel}"));
    let ObjectBody(PublishBody {
        data,
        idempotency_key: key,
    }) = body;
    let (name, options) = checked_channel(&state, &channel)?;
    fits_history(options, &data)?;
    let key = idempotency_key(&state, key.as_deref(), [name.as_str()])?;
    let command = Command::publish([(name, options)], data);
    let sent = send_keyed(&state, command, key).await?;
    let stream = sent.streams.into_iter().next();
    Ok(HttpResponse::Accepted().json(PublishedOne {
        scope: sent.scope,
        delivered: sent.reached,
        offset: stream.as_ref().map(|s| s.offset),
        epoch: stream.map(|s| s.epoch),
    }))
}

#[derive(Serialize)]
struct PublishedMany {
    scope: Scope,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered: Option<usize>,
    /// The history channels, each with the publication's offset and epoch there.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    publications: Vec<StreamPublication>,
}

#[derive(Deserialize)]
struct PublishManyBody {
    channels: Vec<String>,
    data: Box<RawValue>,
    /// Publish once per key and set of channels within IDEMPOTENCY_WINDOW_SECS.
    idempotency_key: Option<String>,
}

/// The same data to many channels: one bus event, the data encoded once.
async fn publish_many(
    caller: ApiCaller,
    state: web::Data<AppState>,
    body: ObjectBody<PublishManyBody>,
) -> Result<HttpResponse, ApiError> {
    let ObjectBody(PublishManyBody {
        channels,
        data,
        idempotency_key: key,
    }) = body;
    caller.note(format_args!("publish to {} channels", channels.len()));
    if channels.is_empty() || channels.len() > MAX_PUBLISH_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "channels must name 1 to {MAX_PUBLISH_CHANNELS} channels"
        )));
    }
    let mut targets: Vec<(ChannelName, NamespaceOptions)> = Vec::with_capacity(channels.len());
    let mut named = std::collections::HashSet::with_capacity(channels.len());
    for channel in &channels {
        let (name, options) = checked_channel(&state, channel)?;
        fits_history(options, &data)?;
        // A channel named twice is published to once.
        if named.insert(name.clone()) {
            targets.push((name, options));
        }
    }
    let key = idempotency_key(
        &state,
        key.as_deref(),
        targets.iter().map(|(n, _)| n.as_str()),
    )?;
    let sent = send_keyed(&state, Command::publish(targets, data), key).await?;
    Ok(HttpResponse::Accepted().json(PublishedMany {
        scope: sent.scope,
        delivered: sent.reached,
        publications: sent.streams,
    }))
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

async fn subscribe_user(
    caller: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
    body: ObjectBody<ChannelBody>,
) -> Result<HttpResponse, ApiError> {
    caller.note(format_args!(
        "subscribe user {user_id} to {}",
        body.0.channel
    ));
    let (name, _) = checked_channel(&state, &body.0.channel)?;
    let command = Command::Subscribe {
        user_id: user_id.into_inner(),
        channel: name,
    };
    Ok(accepted(send(&state, command).await?))
}

async fn unsubscribe_user(
    caller: ApiCaller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, channel) = path.into_inner();
    caller.note(format_args!("unsubscribe user {user_id} from {channel}"));
    let (name, _) = checked_channel(&state, &channel)?;
    let command = Command::Unsubscribe {
        user_id,
        channel: name,
    };
    Ok(accepted(send(&state, command).await?))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
}

#[derive(Serialize)]
struct ChannelList {
    channels: Vec<ChannelCount>,
}

/// The channels with at least one subscriber over the cluster, by name.
async fn list(
    _: ApiCaller,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let channels = state
        .cluster
        .channel_counts(&query.prefix)
        .await
        .map_err(|e| {
            log::warn!("counting channels: {e}");
            ApiError::DatabaseUnavailable
        })?;
    Ok(HttpResponse::Ok().json(ChannelList { channels }))
}

#[derive(Serialize)]
struct PresenceBody<'a> {
    channel: &'a str,
    clients: Vec<PresenceClient>,
}

async fn presence(
    _: ApiCaller,
    state: web::Data<AppState>,
    channel: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (name, options) = checked_channel(&state, &channel)?;
    if !options.presence {
        return Err(ApiError::PresenceDisabled);
    }
    let clients = state.session.presence(&name).await.map_err(|e| {
        log::warn!("listing presence: {e}");
        ApiError::DatabaseUnavailable
    })?;
    Ok(HttpResponse::Ok().json(PresenceBody {
        channel: name.as_str(),
        clients,
    }))
}

/// Most publications one history read returns.
pub const MAX_HISTORY_LIMIT: usize = 1000;
const DEFAULT_HISTORY_LIMIT: usize = 100;

#[derive(Deserialize)]
struct HistoryParams {
    since: Option<u64>,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct HistoryBody<'a> {
    epoch: &'a str,
    /// The channel's latest offset.
    offset: u64,
    publications: Vec<HistoryEntry<'a>>,
}

#[derive(Serialize)]
struct HistoryEntry<'a> {
    offset: u64,
    data: &'a RawValue,
}

/// `GET /api/channels/{channel}/history?since=&limit=`: the publications after `since`, or
/// the newest `limit`, in offset order.
async fn history(
    _: ApiCaller,
    state: web::Data<AppState>,
    channel: web::Path<String>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    let (name, options) = checked_channel(&state, &channel)?;
    let history = options.history.ok_or(ApiError::HistoryDisabled)?;
    let limit = params.limit.unwrap_or(DEFAULT_HISTORY_LIMIT);
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit is 1 to {MAX_HISTORY_LIMIT}"
        )));
    }
    let query = match params.since {
        Some(offset) => HistoryQuery::Since { offset, limit },
        None => HistoryQuery::Latest { limit },
    };
    let page = state
        .bus
        .read_history(&name, history, query)
        .await
        .map_err(|e| {
            log::warn!("reading history: {e}");
            ApiError::DatabaseUnavailable
        })?;
    let data: Vec<Box<RawValue>> = page
        .publications
        .iter()
        .filter_map(|p| RawValue::from_string(p.data.clone()).ok())
        .collect();
    let publications = page
        .publications
        .iter()
        .zip(&data)
        .map(|(p, data)| HistoryEntry {
            offset: p.offset,
            data,
        })
        .collect();
    Ok(HttpResponse::Ok().json(HistoryBody {
        epoch: &page.top.epoch,
        offset: page.top.offset,
        publications,
    }))
}
