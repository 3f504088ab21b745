//! The session's decisions as pure functions, so the state machine's transitions can be checked
//! without sockets: what the first message decides, and what an authenticated connection
//! answers. The async loop in `mod.rs` only moves bytes and timers around these.

use std::borrow::Cow;

use super::close::CloseReason;
use super::transport::ClientEvent;
use crate::jwt::{JwtVerifier, VerifiedJwt};
use crate::protocol::{ClientMessage, ErrorCode, ParseError, Refused, Request, ServerMessage};
use serde_json::value::RawValue;

/// Unauthenticated → Authenticated, or the close code that ends it.
pub fn check_first_message(
    text: &str,
    jwt: &JwtVerifier,
    ticket_user: &str,
) -> Result<VerifiedJwt, CloseReason> {
    let token = match ClientMessage::parse(text).map_err(|refused| refused.error) {
        Ok(Request {
            message: ClientMessage::Jwt { token },
            ..
        }) => token,
        Ok(_) | Err(ParseError::UnknownType) => {
            return Err(CloseReason::MalformedAuth("expected type jwt"));
        }
        Err(ParseError::NotJson) => return Err(CloseReason::MalformedAuth("not JSON")),
        Err(ParseError::BadFields) => return Err(CloseReason::MalformedAuth("missing token")),
    };
    check_jwt(&token, jwt, ticket_user)
}

/// A JWT for this connection's user, at authentication or refresh.
pub fn check_jwt(token: &str, jwt: &JwtVerifier, user: &str) -> Result<VerifiedJwt, CloseReason> {
    let verified = jwt.verify(token).map_err(CloseReason::JwtRejected)?;
    if verified.sub != user {
        return Err(CloseReason::WrongUser);
    }
    Ok(verified)
}

/// What an authenticated connection does with one client message.
#[derive(Debug)]
pub enum Reply<'a> {
    Text(String),
    /// An in-band refresh: check this JWT with [`check_jwt`].
    Refresh {
        token: Cow<'a, str>,
        id: Option<&'a RawValue>,
    },
    /// A subscribe, unsubscribe, presence or publish request: the connection's channels decide.
    Channel {
        request: ClientMessage<'a>,
        id: Option<&'a RawValue>,
    },
    /// A call to the app's backend, answered when the backend does.
    Rpc {
        method: Cow<'a, str>,
        data: &'a RawValue,
        id: &'a RawValue,
    },
    Nothing,
    Close(CloseReason),
}

pub fn reply_to(event: &ClientEvent) -> Reply<'_> {
    let error = |code, id| Reply::Text(ServerMessage::error(code, None, id).encode());
    match event {
        ClientEvent::Text(text) => match ClientMessage::parse(text) {
            Ok(Request { id, message }) => match message {
                ClientMessage::Ping => Reply::Text(ServerMessage::Pong { id }.encode()),
                ClientMessage::Echo { data } => {
                    Reply::Text(ServerMessage::Echo { data, id }.encode())
                }
                ClientMessage::Jwt { token } => Reply::Refresh { token, id },
                request @ (ClientMessage::Subscribe { .. }
                | ClientMessage::Unsubscribe { .. }
                | ClientMessage::Presence { .. }
                | ClientMessage::Publish { .. }) => Reply::Channel { request, id },
                ClientMessage::Rpc { method, data } => match id {
                    Some(id) => Reply::Rpc { method, data, id },
                    // The parse refuses an rpc without an id.
                    None => error(ErrorCode::BadMessage, None),
                },
            },
            Err(Refused {
                error: ParseError::UnknownType,
                id,
            }) => error(ErrorCode::UnknownType, id),
            Err(Refused { id, .. }) => error(ErrorCode::BadMessage, id),
        },
        ClientEvent::Binary => error(ErrorCode::BadMessage, None),
        ClientEvent::Alive => Reply::Nothing,
        ClientEvent::Closed(payload) => Reply::Close(CloseReason::ClientClosed(payload.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{JwtSettings, JwtSigner};
    use proptest::prelude::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const TICKET_USER: &str = "alice";

    /// What a client may send, as the model sees it.
    #[derive(Debug, Clone)]
    enum Input {
        JwtFor(&'static str),
        ForgedJwt,
        Echo(String),
        Ping,
        OtherType(String),
        Text(String),
        Binary,
        /// A WebSocket Ping (the transport answers it): a sign of life only.
        ControlPing,
        Close,
    }

    fn input() -> impl Strategy<Value = Input> {
        prop_oneof![
            prop_oneof![Just("alice"), Just("mallory")].prop_map(Input::JwtFor),
            Just(Input::ForgedJwt),
            any::<String>().prop_map(Input::Echo),
            Just(Input::Ping),
            "[a-z_]{1,12}"
                .prop_filter("not a known type", |t| ![
                    "jwt",
                    "ping",
                    "echo",
                    "subscribe",
                    "unsubscribe",
                    "presence",
                    "publish",
                    "rpc"
                ]
                .contains(&t.as_str()))
                .prop_map(Input::OtherType),
            any::<String>().prop_map(Input::Text),
            Just(Input::Binary),
            Just(Input::ControlPing),
            Just(Input::Close),
        ]
    }

    fn message(input: &Input) -> ClientEvent {
        let text = |json: serde_json::Value| ClientEvent::Text(json.to_string().into());
        match input {
            Input::JwtFor(user) => text(
                serde_json::json!({"type": "jwt", "token": JwtSigner::hs256(SECRET).mint(user, 600)}),
            ),
            Input::ForgedJwt => text(
                serde_json::json!({"type": "jwt", "token": JwtSigner::hs256(b"forged-forged-forged-forged-forged").mint(TICKET_USER, 600)}),
            ),
            Input::Echo(data) => text(serde_json::json!({"type": "echo", "data": data})),
            Input::Ping => text(serde_json::json!({"type": "ping"})),
            Input::OtherType(kind) => text(serde_json::json!({"type": kind})),
            Input::Text(raw) => ClientEvent::Text(raw.clone().into()),
            Input::Binary => ClientEvent::Binary,
            Input::ControlPing => ClientEvent::Alive,
            Input::Close => ClientEvent::Closed(None),
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Phase {
        Unauthenticated,
        Authenticated,
        Closed(Option<u16>),
    }

    /// One step of the state machine, composed of the same pure rules the async loop uses
    /// (control frames are skipped before authentication, as `first_text_message` does).
    fn step(phase: Phase, input: &Input, jwt: &JwtVerifier) -> (Phase, Vec<String>) {
        let message = message(input);
        match phase {
            Phase::Closed(_) => (phase, vec![]),
            Phase::Unauthenticated => match &message {
                ClientEvent::Alive => (phase, vec![]),
                ClientEvent::Closed(_) => (Phase::Closed(Some(1000)), vec![]),
                ClientEvent::Binary => (Phase::Closed(Some(4400)), vec![]),
                ClientEvent::Text(text) => match check_first_message(text, jwt, TICKET_USER) {
                    Ok(v) => {
                        let welcome = ServerMessage::Authenticated {
                            user_id: &v.sub,
                            expires_at: v.expires_at,
                            id: None,
                        };
                        (Phase::Authenticated, vec![welcome.encode()])
                    }
                    Err(reason) => (Phase::Closed(reason.code()), vec![]),
                },
            },
            Phase::Authenticated => match reply_to(&message) {
                Reply::Text(text) => (phase, vec![text]),
                Reply::Refresh { token, id } => match check_jwt(&token, jwt, TICKET_USER) {
                    Ok(v) => {
                        let welcome = ServerMessage::Authenticated {
                            user_id: &v.sub,
                            expires_at: v.expires_at,
                            id,
                        };
                        (phase, vec![welcome.encode()])
                    }
                    Err(reason) => (Phase::Closed(reason.code()), vec![]),
                },
                // Channel requests are the subscriptions' part (session/channels.rs); the
                // model's inputs name no channel type, so this is only reached by chance.
                Reply::Channel { .. } => (phase, vec![r#"{"type":"error"}"#.into()]),
                // RPCs are answered later, by the backend (session/calls.rs).
                Reply::Rpc { .. } | Reply::Nothing => (phase, vec![]),
                Reply::Close(reason) => (Phase::Closed(reason.code()), vec![]),
            },
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn transitions_keep_the_protocol_invariants(inputs in proptest::collection::vec(input(), 1..12)) {
            let jwt = JwtVerifier::new(&JwtSettings::hs256(SECRET));
            let mut phase = Phase::Unauthenticated;
            let mut first_data = None;
            for input in &inputs {
                let before = phase;
                let (after, sent) = step(phase, input, &jwt);
                match (before, after) {
                    // Nothing at all is sent before authentication...
                    (Phase::Unauthenticated, Phase::Unauthenticated) | (Phase::Unauthenticated, Phase::Closed(_)) => {
                        prop_assert!(sent.is_empty());
                    }
                    // ...and authentication is one `authenticated` message, for the ticket's
                    // user, after a valid JWT as the very first data message.
                    (Phase::Unauthenticated, Phase::Authenticated) => {
                        prop_assert!(matches!(input, Input::JwtFor("alice")));
                        prop_assert!(first_data.is_none());
                        prop_assert_eq!(sent.len(), 1);
                        prop_assert!(sent[0].contains(r#""type":"authenticated","user_id":"alice""#));
                    }
                    // Authenticated: every text gets exactly one JSON reply; a JWT for the same
                    // user refreshes, any other JWT or a close frame ends the connection.
                    (Phase::Authenticated, Phase::Authenticated) => {
                        let is_text = !matches!(input, Input::Binary | Input::ControlPing | Input::Close);
                        prop_assert_eq!(sent.len(), usize::from(is_text || matches!(input, Input::Binary)));
                        for reply in &sent {
                            let json: serde_json::Value = serde_json::from_str(reply).unwrap();
                            let kind = json["type"].as_str().unwrap();
                            prop_assert!(["pong", "echo", "error", "authenticated"].contains(&kind));
                            prop_assert_eq!(kind == "authenticated", matches!(input, Input::JwtFor("alice")));
                        }
                    }
                    (Phase::Authenticated, Phase::Closed(code)) => {
                        let expected = match input {
                            Input::Close => 1000,
                            Input::JwtFor(_) | Input::ForgedJwt => 4401,
                            other => return Err(TestCaseError::fail(format!("{other:?} closed the connection"))),
                        };
                        prop_assert_eq!(code, Some(expected));
                    }
                    (Phase::Closed(_), next) => prop_assert_eq!(next, before),
                    (Phase::Authenticated, Phase::Unauthenticated) => prop_assert!(false, "no way back"),
                }
                if before == Phase::Unauthenticated && !matches!(input, Input::ControlPing) {
                    first_data.get_or_insert(input.clone());
                }
                // A failed first message closes with the documented code for its kind.
                if let (Phase::Unauthenticated, Phase::Closed(code)) = (before, after) {
                    let expected = match input {
                        Input::JwtFor(_) | Input::ForgedJwt => Some(4401),
                        Input::Close => Some(1000),
                        _ => Some(4400),
                    };
                    prop_assert_eq!(code, expected);
                }
                phase = after;
            }
        }
    }
}
