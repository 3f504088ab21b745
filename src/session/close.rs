//! Why a connection ends, mapped in this one place to WebSocket close codes (docs/PROTOCOL.md).

use actix_http::ws::CloseCode;
/// A WebSocket close frame's payload: the code table every transport closes with.
pub use actix_http::ws::CloseReason as ClosePayload;

use crate::hub::Kick;
use crate::jwt::JwtRejection;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// 4400: the first message was not `{"type":"jwt","token":…}` as a text frame.
    MalformedAuth(&'static str),
    /// 4401: the JWT was refused.
    JwtRejected(JwtRejection),
    /// 4401: a valid JWT for another user than the ticket's.
    WrongUser,
    /// 4401: the JWT's `exp` passed without an in-band refresh.
    TokenExpired,
    /// 4408: no JWT message within AUTH_TIMEOUT_SECS.
    AuthTimeout,
    /// 4408: no sign of life within CLIENT_TIMEOUT_SECS.
    HeartbeatTimeout,
    /// The server closed it: 4403 for a disconnect or revocation, 1001 when draining.
    Kicked(Kick),
    /// 1013: the connection fell too far behind the broadcasts; reconnecting is the remedy.
    SlowConsumer { missed: u64 },
    /// 1013: its mailbox (user messages, publications) overflowed.
    MailboxFull,
    /// 1013: the revocation store could not be asked; try again.
    DatabaseUnavailable,
    /// 1009: a message over MAX_MESSAGE_BYTES.
    MessageTooBig,
    /// 1002: the client broke the WebSocket protocol.
    ProtocolError,
    /// 1007: a text message that is not UTF-8.
    InvalidUtf8,
    /// The client sent a close frame: answered with the same code, as RFC 6455 asks.
    ClientClosed(Option<ClosePayload>),
    /// The socket is gone (reset, or writes no longer complete): no close frame can be sent.
    ConnectionLost,
    /// The app's backend answered an RPC with `disconnect`: its code (4000 to 4999, checked
    /// when the answer was read) and reason.
    ByBackend { code: u16, reason: String },
}

impl CloseReason {
    pub fn code(&self) -> Option<u16> {
        Some(match self {
            CloseReason::MalformedAuth(_) => 4400,
            CloseReason::JwtRejected(_) | CloseReason::WrongUser | CloseReason::TokenExpired => {
                4401
            }
            CloseReason::AuthTimeout | CloseReason::HeartbeatTimeout => 4408,
            CloseReason::SlowConsumer { .. }
            | CloseReason::MailboxFull
            | CloseReason::DatabaseUnavailable => 1013,
            CloseReason::Kicked(Kick::Disconnected | Kick::Revoked) => 4403,
            CloseReason::Kicked(Kick::Draining) => 1001,
            CloseReason::MessageTooBig => 1009,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidUtf8 => 1007,
            CloseReason::ClientClosed(frame) => frame.as_ref().map_or(1000, |f| u16::from(f.code)),
            CloseReason::ByBackend { code, .. } => *code,
            CloseReason::ConnectionLost => return None,
        })
    }

    fn description(&self) -> String {
        match self {
            CloseReason::MalformedAuth(why) => {
                format!("first message must be a jwt message: {why}")
            }
            CloseReason::JwtRejected(why) => format!("invalid token: {why}"),
            CloseReason::WrongUser => "the token's sub is not the ticket's user".into(),
            CloseReason::TokenExpired => "token expired".into(),
            CloseReason::AuthTimeout => "authentication timeout".into(),
            CloseReason::HeartbeatTimeout => "heartbeat timeout".into(),
            CloseReason::SlowConsumer { missed } => {
                format!("slow consumer: missed {missed} broadcasts")
            }
            CloseReason::Kicked(Kick::Disconnected) => "disconnected by the server".into(),
            CloseReason::Kicked(Kick::Revoked) => "token revoked".into(),
            CloseReason::Kicked(Kick::Draining) => "going away".into(),
            CloseReason::MailboxFull => "slow consumer: too many messages waiting".into(),
            CloseReason::MessageTooBig => "message too big".into(),
            CloseReason::DatabaseUnavailable => "try again later".into(),
            CloseReason::ProtocolError => "protocol error".into(),
            CloseReason::InvalidUtf8 => "text message is not UTF-8".into(),
            CloseReason::ClientClosed(frame) => frame
                .as_ref()
                .and_then(|f| f.description.clone())
                .unwrap_or_default(),
            CloseReason::ByBackend { reason, .. } => reason.clone(),
            CloseReason::ConnectionLost => String::new(),
        }
    }

    /// The close frame to send; `None` when none can be sent.
    pub fn payload(&self) -> Option<ClosePayload> {
        let code = self.code()?;
        let description = self.description();
        Some(ClosePayload {
            code: CloseCode::from(code),
            description: (!description.is_empty()).then_some(description),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(CloseReason::MalformedAuth("binary").code(), Some(4400));
        assert_eq!(
            CloseReason::JwtRejected(JwtRejection::Expired).code(),
            Some(4401)
        );
        assert_eq!(CloseReason::WrongUser.code(), Some(4401));
        assert_eq!(CloseReason::AuthTimeout.code(), Some(4408));
        assert_eq!(CloseReason::HeartbeatTimeout.code(), Some(4408));
        assert_eq!(CloseReason::SlowConsumer { missed: 3 }.code(), Some(1013));
        assert_eq!(CloseReason::MessageTooBig.code(), Some(1009));
        assert_eq!(CloseReason::ClientClosed(None).code(), Some(1000));
        assert_eq!(CloseReason::ConnectionLost.payload(), None);
    }

    #[test]
    fn descriptions_fit_in_a_close_frame() {
        // RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code.
        for reason in [
            CloseReason::MalformedAuth("the first message must be a text frame"),
            CloseReason::JwtRejected(JwtRejection::MissingClaim),
            CloseReason::WrongUser,
            CloseReason::SlowConsumer { missed: u64::MAX },
        ] {
            assert!(reason.description().len() <= 123, "{reason:?}");
        }
    }
}
