//! The server API's channel routes, under `/api` with the same key and error bodies:
//! publishing, server-side subscriptions, the channel list and presence (docs/PROTOCOL.md,
//! "Channels"). A channel in a path is percent-encoded (`/` as `%2F`).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::AppState;
use super::api::{ApiCaller, ObjectBody, accepted, send};
use crate::bus::{ChannelCount, Command};
use crate::channels::{ChannelName, NamespaceOptions};
use crate::error::ApiError;
use crate::protocol::PresenceClient;

/// Channels one `POST /api/publish` may name.
pub const MAX_PUBLISH_CHANNELS: usize = 1000;

pub fn configure(scope: actix_web::Scope) -> actix_web::Scope {
    use super::{post_only, readable};
    scope
        .service(post_only("/channels/{channel}/publish", publish_one))
        .service(post_only("/publish", publish_many))
        .service(readable("/channels", list))
        .service(readable("/channels/{channel}/presence", presence))
        .service(post_only("/users/{user_id}/subscriptions", subscribe_user))
        .service(
            web::resource("/users/{user_id}/subscriptions/{channel}")
                .route(web::delete().to(unsubscribe_user))
                .default_service(web::to(|| super::method_not_allowed("DELETE"))),
        )
}

/// A valid channel name in a declared namespace.
fn checked(state: &AppState, channel: &str) -> Result<(ChannelName, NamespaceOptions), ApiError> {
    let name = ChannelName::parse(channel).map_err(|_| ApiError::InvalidChannel)?;
    let options = state
        .session
        .channels
        .namespaces
        .options(&name)
        .map_err(|_| ApiError::UnknownNamespace)?;
    Ok((name, options))
}

#[derive(Deserialize)]
struct DataBody {
    data: Box<RawValue>,
}

async fn publish_one(
    _: ApiCaller,
    state: web::Data<AppState>,
    channel: web::Path<String>,
    body: ObjectBody<DataBody>,
) -> Result<HttpResponse, ApiError> {
    let (name, _) = checked(&state, &channel)?;
    let command = Command::Publish {
        channels: vec![name],
        data: body.0.data,
    };
    Ok(accepted(send(&state, command).await?))
}

#[derive(Deserialize)]
struct PublishManyBody {
    channels: Vec<String>,
    data: Box<RawValue>,
}

/// The same data to many channels: one bus event, the data encoded once.
async fn publish_many(
    _: ApiCaller,
    state: web::Data<AppState>,
    body: ObjectBody<PublishManyBody>,
) -> Result<HttpResponse, ApiError> {
    let ObjectBody(PublishManyBody { channels, data }) = body;
    if channels.is_empty() || channels.len() > MAX_PUBLISH_CHANNELS {
        return Err(ApiError::BadRequest(format!(
            "channels must name 1 to {MAX_PUBLISH_CHANNELS} channels"
        )));
    }
    let mut names: Vec<ChannelName> = Vec::with_capacity(channels.len());
    for channel in &channels {
        let (name, _) = checked(&state, channel)?;
        // A channel named twice is published to once.
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let command = Command::Publish {
        channels: names,
        data,
    };
    Ok(accepted(send(&state, command).await?))
}

#[derive(Deserialize)]
struct ChannelBody {
    channel: String,
}

async fn subscribe_user(
    _: ApiCaller,
    state: web::Data<AppState>,
    user_id: web::Path<String>,
    body: ObjectBody<ChannelBody>,
) -> Result<HttpResponse, ApiError> {
    let (name, _) = checked(&state, &body.0.channel)?;
    let command = Command::Subscribe {
        user_id: user_id.into_inner(),
        channel: name,
    };
    Ok(accepted(send(&state, command).await?))
}

async fn unsubscribe_user(
    _: ApiCaller,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (user_id, channel) = path.into_inner();
    let (name, _) = checked(&state, &channel)?;
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
    let channels = state.bus.channel_counts(&query.prefix).await.map_err(|e| {
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
    let (name, options) = checked(&state, &channel)?;
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
