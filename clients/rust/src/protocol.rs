//! The wire protocol (the gateway's docs/PROTOCOL.md) as types: what a client sends
//! ([`ClientMessage`]), what the gateway sends ([`ServerMessage`]), the ticket request
//! ([`request_ticket`]) and the opening of the WebSocket ([`socket_request`], [`open_on`]).
//!
//! [`Client`](crate::Client) is built on these. Programs that hold their own sockets use them
//! directly: a load generator opening thousands of connections from chosen source addresses,
//! a test that needs the raw frames. The protocol then lives in one place on the client side.
//!
//! ```no_run
//! use futures_util::{SinkExt, StreamExt};
//! use ticketgate_client::protocol::{self, ClientMessage, ServerMessage};
//! use tokio_tungstenite::tungstenite::Message;
//!
//! # async fn run(jwt: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let http = reqwest::Client::new();
//! let ticket = protocol::request_ticket(&http, "http://127.0.0.1:8080/token/ws", jwt).await?;
//! let tcp = tokio::net::TcpStream::connect("127.0.0.1:8080").await?;
//! let url = protocol::socket_url("http://127.0.0.1:8080", "/demo", &ticket);
//! let mut socket = protocol::open_on(tcp, &url, None).await?;
//! let first = ClientMessage::Jwt { token: jwt.to_owned() };
//! socket.send(Message::text(first.to_text())).await?;
//! while let Some(Ok(Message::Text(text))) = socket.next().await {
//!     // Broadcast, message and publication data as any JSON (`ServerMessage<Value>`).
//!     let message: ServerMessage = ServerMessage::parse(&text)?;
//!     if let ServerMessage::Authenticated { user_id, .. } = message {
//!         println!("authenticated as {user_id}");
//!         break;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::borrow::Cow;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{Error, PresenceClient, SUBPROTOCOL};

/// Where a subscription's copy of a channel ends: recovery asks for what came after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The last offset received.
    pub offset: u64,
    /// The history's epoch it belongs to.
    pub epoch: String,
}

/// A message a client sends. `id`s are echoed in the answer; [`ClientMessage::to_text`] is
/// the text frame (or the element of an SSE POST's `messages`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// The first message of every connection, and an in-band refresh later.
    Jwt {
        /// The user's JWT.
        token: String,
    },
    /// Subscribes to a channel (or refreshes its token).
    Subscribe {
        /// Echoed in `subscribed` or `error`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// Recovery: the publications after this position come first.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        /// A subscription token (JWT) for channels the connection's JWT does not grant.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Leaves a channel.
    Unsubscribe {
        /// Echoed in `unsubscribed`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
    },
    /// Asks who is subscribed to a channel.
    Presence {
        /// Echoed in the answer.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
    },
    /// Calls a method of the app's backend.
    Rpc {
        /// Echoed in `rpc_result` or `rpc_error`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The method's name.
        method: String,
        /// Its argument.
        data: Value,
    },
    /// Publishes into a channel (a namespace with `client_publish`).
    Publish {
        /// Echoed in `published` or `error`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// What to publish.
        data: Value,
    },
    /// Answered with `pong`.
    Ping {
        /// Echoed in `pong`.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ClientMessage {
    /// The message as JSON text.
    pub fn to_text(&self) -> String {
        // Strings, numbers and JSON values only: serialising cannot fail.
        serde_json::to_string(self).expect("a client message serialises")
    }

    /// Numbers a request (a no-op for `jwt`, which is never answered by id).
    pub fn with_id(mut self, new_id: u64) -> Self {
        match &mut self {
            ClientMessage::Jwt { .. } => {}
            ClientMessage::Subscribe { id, .. }
            | ClientMessage::Unsubscribe { id, .. }
            | ClientMessage::Presence { id, .. }
            | ClientMessage::Rpc { id, .. }
            | ClientMessage::Publish { id, .. }
            | ClientMessage::Ping { id } => *id = Some(new_id),
        }
        self
    }
}

/// A message from the gateway. `D` is the type of broadcast, message and publication `data`
/// (any JSON by default; a program that knows its payloads can read them straight into its
/// own type). Types this version does not know arrive as [`ServerMessage::Other`].
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<D = Value> {
    /// The JWT was accepted (first, or an in-band refresh).
    Authenticated {
        /// The JWT's `sub`.
        user_id: String,
        /// When the JWT expires (Unix seconds).
        expires_at: Option<u64>,
    },
    /// The JWT expires soon: send a fresh one ([`ClientMessage::Jwt`]).
    TokenExpiring {
        /// When it expires (Unix seconds).
        expires_at: Option<u64>,
    },
    /// To every connection.
    Broadcast {
        /// What the server API was given.
        data: D,
        /// Its number on the node that sent it.
        seq: Option<u64>,
        /// That node.
        node: Option<String>,
    },
    /// To this user's connections.
    Message {
        /// What the server API was given.
        data: D,
    },
    /// A channel's publication.
    Publication {
        /// The channel.
        channel: String,
        /// What was published.
        data: D,
        /// Its place in the channel's history (history namespaces).
        offset: Option<u64>,
        /// The history's epoch (history namespaces).
        epoch: Option<String>,
    },
    /// A subscribe succeeded (or the server API subscribed the user).
    Subscribed {
        /// The subscribe's `id`.
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// History namespaces: the latest offset, or where recovery ended.
        offset: Option<u64>,
        /// History namespaces: the epoch.
        epoch: Option<String>,
        /// After a `since`: whether every missed publication followed.
        recovered: Option<bool>,
        /// A token refresh of a channel already held.
        refreshed: bool,
        /// Made by the server API, not asked for.
        server: bool,
    },
    /// A subscription ended (asked for, or by the server with a `reason`).
    Unsubscribed {
        /// The unsubscribe's `id`.
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// Why the server ended it (`permission_lost`, `token_expired`, `revoked`, `server`,
        /// `resubscribe`: subscribe again with `since`).
        reason: Option<String>,
    },
    /// The node lost its place in MongoDB's stream: broadcasts, user messages and the
    /// publications of these subscribed channels without history may be gone (those with
    /// history were ended with reason `resubscribe`, to be subscribed again with `since`).
    Missed {
        /// The subscribed channels without history.
        channels: Vec<String>,
    },
    /// A subscription token expires soon: subscribe again with a fresh one.
    SubscriptionExpiring {
        /// The channel.
        channel: String,
        /// When the token expires (Unix seconds).
        expires_at: Option<u64>,
    },
    /// Someone subscribed to a `join_leave` channel.
    Join {
        /// The channel.
        channel: String,
        /// Who.
        user_id: String,
        /// Their connection.
        connection_id: String,
    },
    /// Someone left a `join_leave` channel.
    Leave {
        /// The channel.
        channel: String,
        /// Who.
        user_id: String,
        /// Their connection.
        connection_id: String,
    },
    /// Who is subscribed.
    Presence {
        /// The request's `id`.
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// Every subscriber, on every node.
        clients: Vec<PresenceClient>,
    },
    /// The backend's result.
    RpcResult {
        /// The call's `id`.
        id: Option<u64>,
        /// The result as the backend wrote it.
        result: Value,
    },
    /// The backend's (or the gateway's) error object.
    RpcError {
        /// The call's `id`.
        id: Option<u64>,
        /// `{"code", "message", …}` as written.
        error: Value,
    },
    /// A client publication went out.
    Published {
        /// The publish's `id`.
        id: Option<u64>,
        /// The channel.
        channel: String,
        /// Its offset (history namespaces).
        offset: Option<u64>,
        /// The history's epoch (history namespaces).
        epoch: Option<String>,
    },
    /// The answer to [`ClientMessage::Ping`].
    Pong {
        /// The ping's `id`.
        id: Option<u64>,
    },
    /// A refused request.
    Error {
        /// The request's `id`.
        id: Option<u64>,
        /// The gateway's code (`permission_denied`, `unavailable`, …).
        code: String,
        /// The gateway's words.
        message: String,
        /// The channel the request named.
        channel: Option<String>,
        /// A publication refused by the app's backend: its error object.
        detail: Option<Value>,
    },
    /// SSE only: the stream's first event, with the session id its POSTs name.
    Session {
        /// The session id.
        session: String,
    },
    /// SSE only: the stream's last event, with what a WebSocket would have closed with.
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// A type this version does not know.
    Other {
        /// Its `type`.
        kind: String,
    },
}

/// Every field any server message has, read in one pass; [`ServerMessage::parse`] makes the
/// variant. (serde's internally tagged enums would buffer each message first.)
#[derive(Deserialize)]
struct Fields<'a, D> {
    /// Borrowed unless escaped: most messages need no copy of their type.
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    id: Option<Value>,
    channel: Option<String>,
    data: Option<D>,
    offset: Option<u64>,
    epoch: Option<String>,
    recovered: Option<bool>,
    refreshed: Option<bool>,
    server: Option<bool>,
    reason: Option<String>,
    user_id: Option<String>,
    connection_id: Option<String>,
    expires_at: Option<u64>,
    seq: Option<u64>,
    node: Option<String>,
    clients: Option<Vec<PresenceClient>>,
    channels: Option<Vec<String>>,
    result: Option<Value>,
    /// A code in `error`, an object in `rpc_error`.
    error: Option<Value>,
    message: Option<String>,
    detail: Option<Value>,
    session: Option<String>,
    code: Option<u16>,
}

impl<D: DeserializeOwned + Default> ServerMessage<D> {
    /// Reads one message (a text frame, or an SSE event's data).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let f: Fields<'_, D> = serde_json::from_str(text)?;
        let id = f.id.as_ref().and_then(Value::as_u64);
        let channel = f.channel.unwrap_or_default();
        let data = f.data.unwrap_or_default();
        Ok(match f.kind.as_ref() {
            "authenticated" => ServerMessage::Authenticated {
                user_id: f.user_id.unwrap_or_default(),
                expires_at: f.expires_at,
            },
            "token_expiring" => ServerMessage::TokenExpiring {
                expires_at: f.expires_at,
            },
            "broadcast" => ServerMessage::Broadcast {
                data,
                seq: f.seq,
                node: f.node,
            },
            "message" => ServerMessage::Message { data },
            "publication" => ServerMessage::Publication {
                channel,
                data,
                offset: f.offset,
                epoch: f.epoch,
            },
            "subscribed" => ServerMessage::Subscribed {
                id,
                channel,
                offset: f.offset,
                epoch: f.epoch,
                recovered: f.recovered,
                refreshed: f.refreshed.unwrap_or(false),
                server: f.server.unwrap_or(false),
            },
            "unsubscribed" => ServerMessage::Unsubscribed {
                id,
                channel,
                reason: f.reason,
            },
            "missed" => ServerMessage::Missed {
                channels: f.channels.unwrap_or_default(),
            },
            "subscription_expiring" => ServerMessage::SubscriptionExpiring {
                channel,
                expires_at: f.expires_at,
            },
            kind @ ("join" | "leave") => {
                let (user_id, connection_id) = (
                    f.user_id.unwrap_or_default(),
                    f.connection_id.unwrap_or_default(),
                );
                if kind == "join" {
                    ServerMessage::Join {
                        channel,
                        user_id,
                        connection_id,
                    }
                } else {
                    ServerMessage::Leave {
                        channel,
                        user_id,
                        connection_id,
                    }
                }
            }
            "presence" => ServerMessage::Presence {
                id,
                channel,
                clients: f.clients.unwrap_or_default(),
            },
            "rpc_result" => ServerMessage::RpcResult {
                id,
                result: f.result.unwrap_or(Value::Null),
            },
            "rpc_error" => ServerMessage::RpcError {
                id,
                error: f.error.unwrap_or(Value::Null),
            },
            "published" => ServerMessage::Published {
                id,
                channel,
                offset: f.offset,
                epoch: f.epoch,
            },
            "pong" => ServerMessage::Pong { id },
            "error" => ServerMessage::Error {
                id,
                code: match f.error {
                    Some(Value::String(code)) => code,
                    _ => String::new(),
                },
                message: f.message.unwrap_or_default(),
                channel: (!channel.is_empty()).then_some(channel),
                detail: f.detail,
            },
            "session" => ServerMessage::Session {
                session: f.session.unwrap_or_default(),
            },
            "close" => ServerMessage::Close {
                code: f.code.unwrap_or(1005),
                reason: f.reason.unwrap_or_default(),
            },
            _ => ServerMessage::Other {
                kind: f.kind.into_owned(),
            },
        })
    }
}

impl<D> ServerMessage<D> {
    /// The `id` of the request this answers, if it answers one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ServerMessage::Subscribed { id, .. }
            | ServerMessage::Unsubscribed { id, .. }
            | ServerMessage::Presence { id, .. }
            | ServerMessage::RpcResult { id, .. }
            | ServerMessage::RpcError { id, .. }
            | ServerMessage::Published { id, .. }
            | ServerMessage::Pong { id }
            | ServerMessage::Error { id, .. } => *id,
            _ => None,
        }
    }
}

/// Trades the user's JWT for a single-use ticket at `url` (`GET /token/ws`). A refusal is
/// [`Error::Ticket`] with the gateway's status, code and `Retry-After`; no answer at all is
/// [`Error::Unreachable`].
pub async fn request_ticket(http: &reqwest::Client, url: &str, jwt: &str) -> Result<String, Error> {
    let response = http
        .get(url)
        .bearer_auth(jwt)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| Error::Unreachable {
            message: error_chain(&e),
        })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    match body["token"].as_str() {
        Some(ticket) if status == 200 => Ok(ticket.to_owned()),
        _ => Err(Error::Ticket {
            status,
            code: body["error"].as_str().unwrap_or("unknown").to_owned(),
            message: body["message"].as_str().unwrap_or_default().to_owned(),
            retry_after,
        }),
    }
}

/// The WebSocket URL for `ticket`: `base_url` (`http://…`, `https://…`) as `ws://…`/`wss://…`,
/// then `socket_path` (`/demo`).
pub fn socket_url(base_url: &str, socket_path: &str, ticket: &str) -> String {
    let base = base_url.trim_end_matches('/').replacen("http", "ws", 1);
    format!("{base}{socket_path}?token={ticket}")
}

/// The upgrade request for `url`, offering the [`SUBPROTOCOL`].
pub fn socket_request(url: &str) -> Result<Request, Error> {
    let mut request = url.into_client_request().map_err(|e| Error::Unreachable {
        message: format!("{url}: {e}"),
    })?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(request)
}

/// Opens the WebSocket at `url` on a stream the caller connected (from a chosen source
/// address, through a proxy, …), with tungstenite's `config` (its defaults when `None`).
pub async fn open_on<S>(
    stream: S,
    url: &str,
    config: Option<WebSocketConfig>,
) -> Result<WebSocketStream<S>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = socket_request(url)?;
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, config)
        .await
        .map_err(|e| Error::Unreachable {
            message: format!("upgrade: {e}"),
        })?;
    Ok(socket)
}

/// An error and its sources, innermost last ("error sending request" alone says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn requests_are_written_as_the_protocol_says() {
        let subscribe = ClientMessage::Subscribe {
            id: None,
            channel: "news".into(),
            since: Some(Position {
                offset: 4,
                epoch: "e".into(),
            }),
            token: None,
        }
        .with_id(7);
        let written: Value = serde_json::from_str(&subscribe.to_text()).unwrap();
        assert_eq!(
            written,
            json!({"type": "subscribe", "id": 7, "channel": "news",
                   "since": {"offset": 4, "epoch": "e"}})
        );
        let jwt: Value = serde_json::from_str(
            &ClientMessage::Jwt { token: "t".into() }
                .with_id(1)
                .to_text(),
        )
        .unwrap();
        assert_eq!(jwt, json!({"type": "jwt", "token": "t"}));
    }

    #[test]
    fn every_answer_reads_into_its_variant() {
        let error: ServerMessage = ServerMessage::parse(
            r#"{"type":"error","error":"permission_denied","id":"3","message":"no","channel":"c"}"#,
        )
        .unwrap();
        assert_eq!(
            error,
            ServerMessage::Error {
                id: None,
                code: "permission_denied".into(),
                message: "no".into(),
                channel: Some("c".into()),
                detail: None,
            },
            "a string id is not one of ours"
        );
        let failed: ServerMessage =
            ServerMessage::parse(r#"{"type":"rpc_error","id":2,"error":{"code":5}}"#).unwrap();
        assert_eq!(failed.id(), Some(2));
        let result: ServerMessage =
            ServerMessage::parse(r#"{"type":"rpc_result","id":2,"result":null}"#).unwrap();
        assert_eq!(
            result,
            ServerMessage::RpcResult {
                id: Some(2),
                result: Value::Null
            }
        );
        let unknown: ServerMessage = ServerMessage::parse(r#"{"type":"later","x":1}"#).unwrap();
        assert_eq!(
            unknown,
            ServerMessage::Other {
                kind: "later".into()
            }
        );
    }

    #[test]
    fn data_reads_into_the_callers_type() {
        #[derive(Debug, Default, PartialEq, Deserialize)]
        struct Stamp {
            t: u64,
        }
        let message: ServerMessage<Stamp> = ServerMessage::parse(
            r#"{"type":"broadcast","seq":1,"node":"n","data":{"t":9,"pad":"xx"}}"#,
        )
        .unwrap();
        assert_eq!(
            message,
            ServerMessage::Broadcast {
                data: Stamp { t: 9 },
                seq: Some(1),
                node: Some("n".into())
            }
        );
        let other: ServerMessage<Stamp> =
            ServerMessage::parse(r#"{"type":"subscribed","channel":"c"}"#).unwrap();
        assert!(matches!(other, ServerMessage::Subscribed { .. }));
    }

    #[test]
    fn the_socket_url_follows_the_base_url_scheme() {
        assert_eq!(
            socket_url("https://gw.example/", "/demo", "abc"),
            "wss://gw.example/demo?token=abc"
        );
        assert_eq!(
            socket_url("http://127.0.0.1:8080", "/demo", "abc"),
            "ws://127.0.0.1:8080/demo?token=abc"
        );
    }
}
