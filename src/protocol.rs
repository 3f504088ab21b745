//! The JSON messages of the WebSocket protocol (docs/PROTOCOL.md), in one place: what clients
//! send, parsed without copying, and every message the server sends, broadcasts and user
//! messages included (encoded once by the bus, for every connection on every node).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::error::Category;
use serde_json::value::RawValue;

/// A message from the client.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    Jwt { token: Cow<'a, str> },
    Ping,
    Echo { data: &'a RawValue },
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
}

const NULL: &str = "null";

impl<'a> ClientMessage<'a> {
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        let envelope: Envelope<'a> =
            serde_json::from_str(text).map_err(|e| match e.classify() {
                Category::Data => ParseError::BadFields,
                _ => ParseError::NotJson,
            })?;
        match envelope.kind.as_deref() {
            Some("jwt") => match envelope.token {
                Some(token) => Ok(ClientMessage::Jwt { token }),
                None => Err(ParseError::BadFields),
            },
            Some("ping") => Ok(ClientMessage::Ping),
            Some("echo") => Ok(ClientMessage::Echo {
                // `"data": null` and a missing `data` both echo null.
                data: envelope
                    .data
                    .unwrap_or_else(|| serde_json::from_str(NULL).expect("null is JSON")),
            }),
            Some(_) => Err(ParseError::UnknownType),
            None => Err(ParseError::BadFields),
        }
    }
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
    Authenticated {
        user_id: &'a str,
        expires_at: u64,
    },
    TokenExpiring {
        expires_at: u64,
    },
    Pong,
    Echo {
        data: &'a RawValue,
    },
    Error {
        error: ErrorCode,
    },
}

/// `{"type":"error","error":…}` codes: answers to a bad message that keep the connection open.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, not a text frame, or fields of the wrong type.
    BadMessage,
    UnknownType,
}

impl ServerMessage<'_> {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// A server message encoded as JSON text, before it is framed for the wire.
pub type EncodedMessage = bytestring::ByteString;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message_type() {
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"jwt","token":"a.b.c"}"#),
            Ok(ClientMessage::Jwt { token }) if token == "a.b.c"
        ));
        assert!(matches!(
            ClientMessage::parse(r#"{"type":"ping","extra":1}"#),
            Ok(ClientMessage::Ping)
        ));
        let ClientMessage::Echo { data } =
            ClientMessage::parse(r#"{"type":"echo","data":{"x":[1, 2]}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(data.get(), r#"{"x":[1, 2]}"#);
        let ClientMessage::Echo { data } = ClientMessage::parse(r#"{"type":"echo"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(data.get(), "null");
    }

    /// Found by fuzzing (fuzz/fuzz_targets/client_message.rs): a number beyond f64's range is
    /// valid JSON; it is echoed exactly as written rather than refused or rounded.
    #[test]
    fn echoes_numbers_beyond_f64_exactly() {
        let text =
            r#"{"type":"echo","data":{"x":[111111111.110111115e11111111111177,true,71.5e10]}}"#;
        let ClientMessage::Echo { data } = ClientMessage::parse(text).unwrap() else {
            panic!()
        };
        assert_eq!(
            data.get(),
            r#"{"x":[111111111.110111115e11111111111177,true,71.5e10]}"#
        );
        let reply = ServerMessage::Echo { data }.encode();
        assert_eq!(reply, format!(r#"{{"type":"echo","data":{}}}"#, data.get()));
    }

    #[test]
    fn classifies_bad_messages() {
        assert_eq!(
            ClientMessage::parse("hello").unwrap_err(),
            ParseError::NotJson
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"jwt""#).unwrap_err(),
            ParseError::NotJson
        );
        assert_eq!(
            ClientMessage::parse("[1]").unwrap_err(),
            ParseError::BadFields
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"jwt"}"#).unwrap_err(),
            ParseError::BadFields
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"jwt","token":5}"#).unwrap_err(),
            ParseError::BadFields
        );
        assert_eq!(
            ClientMessage::parse(r#"{"token":"x"}"#).unwrap_err(),
            ParseError::BadFields
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe"}"#).unwrap_err(),
            ParseError::UnknownType
        );
    }

    #[test]
    fn encodes_server_messages() {
        assert_eq!(
            ServerMessage::Authenticated {
                user_id: "u",
                expires_at: 5
            }
            .encode(),
            r#"{"type":"authenticated","user_id":"u","expires_at":5}"#
        );
        assert_eq!(ServerMessage::Pong.encode(), r#"{"type":"pong"}"#);
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
        let data = RawValue::from_string("[1,2]".into()).unwrap();
        assert_eq!(
            ServerMessage::Echo { data: &data }.encode(),
            r#"{"type":"echo","data":[1,2]}"#
        );
        assert_eq!(
            ServerMessage::Error {
                error: ErrorCode::UnknownType
            }
            .encode(),
            r#"{"type":"error","error":"unknown_type"}"#
        );
    }
}
