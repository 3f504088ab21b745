//! The JSON messages of the WebSocket protocol (docs/PROTOCOL.md), in one place: what clients
//! send, parsed without copying, and every message the server sends, broadcasts and user
//! messages included (encoded once by the bus, for every connection on every node).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;

/// A message from the client, with the `id` its replies carry.
#[derive(Debug)]
pub struct Request<'a> {
    /// A string or a number, echoed as written in every reply to this message.
    pub id: Option<&'a RawValue>,
    pub message: ClientMessage<'a>,
}

#[derive(Debug)]
pub enum ClientMessage<'a> {
    Jwt {
        token: Cow<'a, str>,
    },
    Ping,
    Echo {
        data: &'a RawValue,
    },
    /// The channel as written: checking it is the session's part (`invalid_channel`).
    Subscribe {
        channel: Cow<'a, str>,
        /// A subscription JWT, for a channel the connection's own JWT does not grant.
        token: Option<Cow<'a, str>>,
        /// Where the client's copy of a history channel ends: recover what came after.
        since: Option<Since<'a>>,
    },
    Unsubscribe {
        channel: Cow<'a, str>,
    },
    Presence {
        channel: Cow<'a, str>,
    },
    /// A publication into a channel, from the client.
    Publish {
        channel: Cow<'a, str>,
        data: &'a RawValue,
    },
    /// A call to the app's backend; the parse guarantees an `id` to answer it with.
    Rpc {
        method: Cow<'a, str>,
        data: &'a RawValue,
    },
}

/// The last publication a client has of a history channel.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Since<'a> {
    pub offset: u64,
    #[serde(borrow)]
    pub epoch: Cow<'a, str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a JSON object")]
    NotJson,
    #[error("a field has the wrong type or is missing")]
    BadFields,
    #[error("unknown message type")]
    UnknownType,
}

/// A message that could not be taken, with its `id` when one could be read, so the error
/// reply can still be matched.
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub error: ParseError,
    pub id: Option<&'a RawValue>,
}

/// Every field any message may carry; which ones matter depends on `type`. Unknown fields are
/// ignored so clients can add their own.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<Since<'a>>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
}

/// Only the `id`, read again from a message whose other fields were wrong.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

const NULL: &str = "null";

impl<'a> ClientMessage<'a> {
    pub fn parse(text: &'a str) -> Result<Request<'a>, Refused<'a>> {
        let envelope: Envelope<'a> = serde_json::from_str(text).map_err(|e| Refused {
            error: match e.classify() {
                Category::Data => ParseError::BadFields,
                _ => ParseError::NotJson,
            },
            id: serde_json::from_str::<IdOnly<'a>>(text)
                .ok()
                .and_then(|only| only.id)
                .filter(|id| is_valid_id(id)),
        })?;
        let id = envelope.id.filter(|id| id.get() != NULL);
        let refuse = |error| Refused {
            error,
            id: id.filter(|id| is_valid_id(id)),
        };
        if id.is_some_and(|id| !is_valid_id(id)) {
            return Err(refuse(ParseError::BadFields));
        }
        let channel = || {
            envelope
                .channel
                .clone()
                .ok_or(refuse(ParseError::BadFields))
        };
        let message = match envelope.kind.as_deref() {
            Some("jwt") => ClientMessage::Jwt {
                token: envelope
                    .token
                    .clone()
                    .ok_or(refuse(ParseError::BadFields))?,
            },
            Some("ping") => ClientMessage::Ping,
            Some("echo") => ClientMessage::Echo {
                // `"data": null` and a missing `data` both echo null.
                data: envelope
                    .data
                    .unwrap_or_else(|| serde_json::from_str(NULL).expect("null is JSON")),
            },
            Some("subscribe") => ClientMessage::Subscribe {
                channel: channel()?,
                token: envelope.token.clone(),
                since: envelope.since.clone(),
            },
            Some("unsubscribe") => ClientMessage::Unsubscribe {
                channel: channel()?,
            },
            Some("presence") => ClientMessage::Presence {
                channel: channel()?,
            },
            Some("publish") => ClientMessage::Publish {
                channel: channel()?,
                data: envelope
                    .data
                    .unwrap_or_else(|| serde_json::from_str(NULL).expect("null is JSON")),
            },
            // Without an `id` the answer could not be matched: refused before any call.
            Some("rpc") if id.is_none() => return Err(refuse(ParseError::BadFields)),
            Some("rpc") => ClientMessage::Rpc {
                method: envelope
                    .method
                    .clone()
                    .filter(|method| !method.is_empty())
                    .ok_or(refuse(ParseError::BadFields))?,
                data: envelope
                    .data
                    .unwrap_or_else(|| serde_json::from_str(NULL).expect("null is JSON")),
            },
            Some(_) => return Err(refuse(ParseError::UnknownType)),
            None => return Err(refuse(ParseError::BadFields)),
        };
        Ok(Request { id, message })
    }
}

/// An `id` is a string or a number (`null` counts as none).
fn is_valid_id(id: &RawValue) -> bool {
    matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// A message from the server.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    /// To every authenticated connection: `seq` numbers the publishing node's broadcasts.
    Broadcast {
        seq: u64,
        node: &'a str,
        data: &'a RawValue,
    },
    /// To each authenticated connection of one user.
    Message {
        data: &'a RawValue,
    },
    /// To each subscriber of a channel; numbered in a history namespace.
    Publication {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        data: &'a RawValue,
    },
    /// SSE only, first on the stream: the id the client's `POST /sse/messages` names.
    Session {
        session: &'a str,
    },
    /// SSE only, last on the stream: the close code and reason a WebSocket would get.
    Close {
        code: u16,
        reason: &'a str,
    },
    Authenticated {
        user_id: &'a str,
        expires_at: u64,
        /// When it answers an in-band refresh that carried one.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    TokenExpiring {
        expires_at: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Echo {
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Subscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        /// A fresh subscription token replaced the one the subscription held.
        #[serde(skip_serializing_if = "is_false")]
        refreshed: bool,
        /// Made by the server API, not asked for by the client.
        #[serde(skip_serializing_if = "is_false")]
        server: bool,
        /// In a history namespace: where the channel's history stands.
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        stream: Option<StreamPosition<'a>>,
    },
    Unsubscribed {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        /// Why the server ended it; absent when the client asked.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<UnsubscribeReason>,
    },
    SubscriptionExpiring {
        channel: &'a str,
        expires_at: u64,
    },
    /// This node may have lost deliveries (its cluster stream lost its place): broadcasts,
    /// user messages, and publications in these channels without history. Sent once, after
    /// the `unsubscribed` (reason `resubscribe`) of each channel with history.
    Missed {
        channels: &'a [&'a str],
    },
    Presence {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        clients: &'a [PresenceClient],
    },
    Join {
        channel: &'a str,
        user_id: &'a str,
        connection_id: &'a str,
    },
    Leave {
        channel: &'a str,
        user_id: &'a str,
        connection_id: &'a str,
    },
    /// A client's publication went out; numbered in a history namespace.
    Published {
        channel: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// The backend's `result` for an `rpc`.
    RpcResult {
        id: &'a RawValue,
        result: &'a RawValue,
    },
    /// The backend's error object for an `rpc`, or the gateway's when the call failed.
    RpcError {
        id: &'a RawValue,
        error: RpcFailure<'a>,
    },
    Error {
        error: ErrorCode,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        message: &'static str,
        /// The app's backend's error object, when it refused a publication with one.
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<&'a RawValue>,
    },
}

/// An `rpc_error`'s `error`: `{"code", "message", …}` either way.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RpcFailure<'a> {
    /// The backend's own error object, passed on as it wrote it.
    Backend(&'a RawValue),
    /// The gateway's: `upstream_unavailable`, `upstream_timeout`, `too_many_requests`.
    Gateway {
        code: RpcFailureCode,
        message: &'static str,
    },
}

/// The codes of the errors the gateway itself gives an `rpc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RpcFailureCode {
    /// The backend was unreachable, answered another status than 200, or not the documented
    /// JSON.
    UpstreamUnavailable,
    /// No answer within UPSTREAM_TIMEOUT_MS.
    UpstreamTimeout,
    /// MAX_RPC_IN_FLIGHT_PER_CONNECTION calls of this connection are waiting already.
    TooManyRequests,
}

impl RpcFailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RpcFailureCode::UpstreamUnavailable => "upstream_unavailable",
            RpcFailureCode::UpstreamTimeout => "upstream_timeout",
            RpcFailureCode::TooManyRequests => "too_many_requests",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            RpcFailureCode::UpstreamUnavailable => {
                "the app's backend could not be reached or gave no valid answer; try again"
            }
            RpcFailureCode::UpstreamTimeout => {
                "the app's backend did not answer within UPSTREAM_TIMEOUT_MS; try again"
            }
            RpcFailureCode::TooManyRequests => {
                "MAX_RPC_IN_FLIGHT_PER_CONNECTION calls are waiting; wait for an answer first"
            }
        }
    }

    pub fn failure(self) -> RpcFailure<'static> {
        RpcFailure::Gateway {
            code: self,
            message: self.message(),
        }
    }
}

/// A history channel's position, as a `subscribed` reply gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StreamPosition<'a> {
    /// Whether every publication after the `since` asked for was recovered; absent without
    /// `since`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// The channel's latest offset when the subscription began.
    pub offset: u64,
    pub epoch: &'a str,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// A broadcast, numbered `seq` in the series of the node that took it: the one place one is
/// encoded (once, by that node; every node delivers the same text).
pub fn broadcast(seq: u64, node: &str, data: &RawValue) -> String {
    ServerMessage::Broadcast { seq, node, data }.encode()
}

/// A message for one user's connections: the one place one is encoded.
pub fn user_message(data: &RawValue) -> String {
    ServerMessage::Message { data }.encode()
}

/// A subscriber came (`joined`) to or left a channel with `join_leave`: the one place the
/// `join` and `leave` messages are encoded.
pub fn presence_change(channel: &str, client: &PresenceClient, joined: bool) -> String {
    let (user_id, connection_id) = (client.user_id.as_str(), client.connection_id.as_str());
    let message = if joined {
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
    };
    message.encode()
}

/// A channel's publication for its subscribers, live or recovered (`position`: its offset and
/// epoch, in a history namespace): the one place one is encoded.
pub fn publication(
    channel: &str,
    position: Option<(u64, &str)>,
    data: &RawValue,
) -> EncodedMessage {
    ServerMessage::Publication {
        channel,
        offset: position.map(|(offset, _)| offset),
        epoch: position.map(|(_, epoch)| epoch),
        data,
    }
    .encode()
    .into()
}

impl<'a> ServerMessage<'a> {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }

    /// The error reply to a request, with its text from [`ErrorCode::message`].
    pub fn error(error: ErrorCode, channel: Option<&'a str>, id: Option<&'a RawValue>) -> Self {
        ServerMessage::Error {
            error,
            channel,
            id,
            message: error.message(),
            detail: None,
        }
    }
}

/// One subscriber as presence lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PresenceClient {
    pub user_id: String,
    /// Unique in the cluster: `c<number>@<node>`.
    pub connection_id: String,
    pub node: String,
}

/// Why the server ended a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// A refreshed JWT no longer grants the channel.
    PermissionLost,
    /// The subscription token's `exp` passed.
    TokenExpired,
    /// The subscription token's `jti` was revoked.
    Revoked,
    /// `DELETE /api/users/{user_id}/subscriptions/{channel}`.
    Server,
    /// This node may have missed publications: subscribe again with `since`, and history
    /// fills the gap.
    Resubscribe,
}

/// `{"type":"error","error":…}` codes: answers to a request that keep the connection open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not a text frame, or fields of the wrong type.
    BadMessage,
    UnknownType,
    InvalidChannel,
    UnknownNamespace,
    PermissionDenied,
    TooManySubscriptions,
    NotSubscribed,
    PresenceDisabled,
    /// MongoDB could not answer (a presence query); try again.
    Unavailable,
    /// An `rpc` while UPSTREAM_URL is unset.
    UpstreamDisabled,
    /// A client publication larger than its history namespace takes.
    PublicationTooLarge,
    /// The app's backend, asked about a publication, could not be reached or gave no valid
    /// answer.
    UpstreamUnavailable,
    /// The app's backend, asked about a publication, did not answer in time.
    UpstreamTimeout,
}

impl ErrorCode {
    /// The code as it is sent (and as metrics label it).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::UnknownNamespace => "unknown_namespace",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::NotSubscribed => "not_subscribed",
            ErrorCode::PresenceDisabled => "presence_disabled",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UpstreamDisabled => "upstream_disabled",
            ErrorCode::PublicationTooLarge => "publication_too_large",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The human-readable text every error reply carries.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => {
                "not a JSON object, not a text frame, or a field of the wrong type"
            }
            ErrorCode::UnknownType => "unknown message type",
            ErrorCode::InvalidChannel => {
                "a channel name is 1 to 255 bytes of ASCII letters, digits and _ - . : @ / ="
            }
            ErrorCode::UnknownNamespace => "the channel's namespace is not declared",
            ErrorCode::PermissionDenied => {
                "not allowed: to subscribe, the JWT's channels claim, a subscription token or a public namespace; to publish, a namespace with client_publish and the JWT's publish claim or the app's backend"
            }
            ErrorCode::TooManySubscriptions => {
                "the connection holds MAX_SUBSCRIPTIONS_PER_CONNECTION subscriptions"
            }
            ErrorCode::NotSubscribed => "the connection is not subscribed to this channel",
            ErrorCode::PresenceDisabled => "the channel's namespace has no presence",
            ErrorCode::Unavailable => "the database is unavailable; try again shortly",
            ErrorCode::UpstreamDisabled => {
                "RPC needs UPSTREAM_URL, which this gateway does not set"
            }
            ErrorCode::PublicationTooLarge => {
                "the data is larger than the channel's history takes (10 MiB / history_size)"
            }
            ErrorCode::UpstreamUnavailable => {
                "the app's backend could not be reached or gave no valid answer; try again"
            }
            ErrorCode::UpstreamTimeout => {
                "the app's backend did not answer within UPSTREAM_TIMEOUT_MS; try again"
            }
        }
    }
}

/// A server message encoded as JSON text, before it is framed for the wire.
pub type EncodedMessage = bytestring::ByteString;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClientMessage<'_> {
        ClientMessage::parse(text).unwrap().message
    }

    fn refused(text: &str) -> ParseError {
        ClientMessage::parse(text).unwrap_err().error
    }

    #[test]
    fn parses_each_message_type() {
        assert!(matches!(
            parse(r#"{"type":"jwt","token":"a.b.c"}"#),
            ClientMessage::Jwt { token } if token == "a.b.c"
        ));
        assert!(matches!(
            parse(r#"{"type":"ping","extra":1}"#),
            ClientMessage::Ping
        ));
        let ClientMessage::Echo { data } = parse(r#"{"type":"echo","data":{"x":[1, 2]}}"#) else {
            panic!()
        };
        assert_eq!(data.get(), r#"{"x":[1, 2]}"#);
        let ClientMessage::Echo { data } = parse(r#"{"type":"echo"}"#) else {
            panic!()
        };
        assert_eq!(data.get(), "null");
        assert!(matches!(
            parse(r#"{"type":"subscribe","channel":"chat:a","token":"t"}"#),
            ClientMessage::Subscribe { channel, token: Some(token), since: None } if channel == "chat:a" && token == "t"
        ));
        let ClientMessage::Subscribe { since, .. } =
            parse(r#"{"type":"subscribe","channel":"c","since":{"offset":41,"epoch":"e1"}}"#)
        else {
            panic!()
        };
        assert_eq!(
            since,
            Some(Since {
                offset: 41,
                epoch: "e1".into()
            })
        );
        assert!(matches!(
            parse(r#"{"type":"unsubscribe","channel":"a\/b"}"#),
            ClientMessage::Unsubscribe { channel } if channel == "a/b"
        ));
        assert!(matches!(
            parse(r#"{"type":"presence","channel":"x"}"#),
            ClientMessage::Presence { channel } if channel == "x"
        ));
    }

    #[test]
    fn ids_are_strings_or_numbers_and_come_back_as_written() {
        let id = |text| ClientMessage::parse(text).unwrap().id.map(|id| id.get());
        assert_eq!(id(r#"{"type":"ping","id":1}"#), Some("1"));
        assert_eq!(id(r#"{"type":"ping","id":"a-1"}"#), Some(r#""a-1""#));
        assert_eq!(id(r#"{"type":"ping","id":-2.5e3}"#), Some("-2.5e3"));
        assert_eq!(id(r#"{"type":"ping","id":null}"#), None);
        assert_eq!(id(r#"{"type":"ping"}"#), None);
        for bad in [
            r#"{"type":"ping","id":true}"#,
            r#"{"type":"ping","id":[1]}"#,
            r#"{"type":"ping","id":{}}"#,
        ] {
            assert_eq!(refused(bad), ParseError::BadFields, "{bad}");
        }
        // A message refused for another field still has its id read, for the error reply.
        let refusal =
            ClientMessage::parse(r#"{"type":"subscribe","channel":5,"id":7}"#).unwrap_err();
        assert_eq!(
            (refusal.error, refusal.id.map(|id| id.get())),
            (ParseError::BadFields, Some("7"))
        );
        let refusal = ClientMessage::parse(r#"{"type":"nope","id":"q"}"#).unwrap_err();
        assert_eq!(
            (refusal.error, refusal.id.map(|id| id.get())),
            (ParseError::UnknownType, Some(r#""q""#))
        );
    }

    /// Found by fuzzing (fuzz/fuzz_targets/client_message.rs): a number beyond f64's range is
    /// valid JSON; it is echoed exactly as written rather than refused or rounded.
    #[test]
    fn echoes_numbers_beyond_f64_exactly() {
        let text =
            r#"{"type":"echo","data":{"x":[111111111.110111115e11111111111177,true,71.5e10]}}"#;
        let ClientMessage::Echo { data } = parse(text) else {
            panic!()
        };
        assert_eq!(
            data.get(),
            r#"{"x":[111111111.110111115e11111111111177,true,71.5e10]}"#
        );
        let reply = ServerMessage::Echo { data, id: None }.encode();
        assert_eq!(reply, format!(r#"{{"type":"echo","data":{}}}"#, data.get()));
    }

    #[test]
    fn classifies_bad_messages() {
        assert_eq!(refused("hello"), ParseError::NotJson);
        assert_eq!(refused(r#"{"type":"jwt""#), ParseError::NotJson);
        assert_eq!(refused("[1]"), ParseError::BadFields);
        assert_eq!(refused(r#"{"type":"jwt"}"#), ParseError::BadFields);
        assert_eq!(
            refused(r#"{"type":"jwt","token":5}"#),
            ParseError::BadFields
        );
        assert_eq!(refused(r#"{"token":"x"}"#), ParseError::BadFields);
        assert_eq!(refused(r#"{"type":"subscribe"}"#), ParseError::BadFields);
        assert_eq!(
            refused(r#"{"type":"subscribe","channel":["a"]}"#),
            ParseError::BadFields
        );
        assert_eq!(refused(r#"{"type":"publish"}"#), ParseError::BadFields);
        assert_eq!(
            refused(r#"{"type":"rpc","method":"m"}"#),
            ParseError::BadFields
        );
        assert_eq!(refused(r#"{"type":"rpc","id":1}"#), ParseError::BadFields);
        assert_eq!(refused(r#"{"type":"broadcast"}"#), ParseError::UnknownType);
        for since in [
            r#"{"offset":-1,"epoch":"e"}"#,
            r#"{"offset":1}"#,
            r#"{"offset":1.5,"epoch":"e"}"#,
            "7",
        ] {
            let text = format!(r#"{{"type":"subscribe","channel":"c","since":{since}}}"#);
            assert_eq!(refused(&text), ParseError::BadFields, "{since}");
        }
    }

    #[test]
    fn error_codes_are_sent_as_their_names() {
        for code in [
            ErrorCode::BadMessage,
            ErrorCode::UnknownType,
            ErrorCode::InvalidChannel,
            ErrorCode::UnknownNamespace,
            ErrorCode::PermissionDenied,
            ErrorCode::TooManySubscriptions,
            ErrorCode::NotSubscribed,
            ErrorCode::PresenceDisabled,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn encodes_server_messages() {
        assert_eq!(
            ServerMessage::Authenticated {
                user_id: "u",
                expires_at: 5,
                id: None,
            }
            .encode(),
            r#"{"type":"authenticated","user_id":"u","expires_at":5}"#
        );
        assert_eq!(
            ServerMessage::Pong { id: None }.encode(),
            r#"{"type":"pong"}"#
        );
        let id = RawValue::from_string(r#""r1""#.into()).unwrap();
        assert_eq!(
            ServerMessage::Pong { id: Some(&id) }.encode(),
            r#"{"type":"pong","id":"r1"}"#
        );
        let data = RawValue::from_string(r#"{"a":1}"#.into()).unwrap();
        assert_eq!(
            ServerMessage::Broadcast {
                seq: 7,
                node: "gw-1",
                data: &data
            }
            .encode(),
            r#"{"type":"broadcast","seq":7,"node":"gw-1","data":{"a":1}}"#
        );
        assert_eq!(
            ServerMessage::Message { data: &data }.encode(),
            r#"{"type":"message","data":{"a":1}}"#
        );
        assert_eq!(
            publication("chat:a", None, &data),
            r#"{"type":"publication","channel":"chat:a","data":{"a":1}}"#
        );
        assert_eq!(
            publication("feed:a", Some((42, "e1")), &data),
            r#"{"type":"publication","channel":"feed:a","offset":42,"epoch":"e1","data":{"a":1}}"#
        );
        assert_eq!(
            ServerMessage::Subscribed {
                channel: "feed:a",
                id: None,
                refreshed: false,
                server: false,
                stream: Some(StreamPosition {
                    recovered: Some(true),
                    offset: 42,
                    epoch: "e1"
                }),
            }
            .encode(),
            r#"{"type":"subscribed","channel":"feed:a","recovered":true,"offset":42,"epoch":"e1"}"#
        );
        assert_eq!(
            ServerMessage::Subscribed {
                channel: "c",
                id: Some(&id),
                refreshed: true,
                server: false,
                stream: None,
            }
            .encode(),
            r#"{"type":"subscribed","channel":"c","id":"r1","refreshed":true}"#
        );
        assert_eq!(
            ServerMessage::Unsubscribed {
                channel: "c",
                id: None,
                reason: Some(UnsubscribeReason::PermissionLost)
            }
            .encode(),
            r#"{"type":"unsubscribed","channel":"c","reason":"permission_lost"}"#
        );
        assert_eq!(
            ServerMessage::Missed {
                channels: &["a", "b"]
            }
            .encode(),
            r#"{"type":"missed","channels":["a","b"]}"#
        );
        assert_eq!(
            ServerMessage::error(ErrorCode::UnknownType, None, None).encode(),
            r#"{"type":"error","error":"unknown_type","message":"unknown message type"}"#
        );
        assert_eq!(
            ServerMessage::error(ErrorCode::NotSubscribed, Some("c"), Some(&id)).encode(),
            r#"{"type":"error","error":"not_subscribed","channel":"c","id":"r1","message":"the connection is not subscribed to this channel"}"#
        );
    }
}
