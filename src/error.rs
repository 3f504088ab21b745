//! Every HTTP rejection, mapped in this one place to a status and a JSON body
//! `{"error": <code>, "message": <text>}` (docs/PROTOCOL.md lists them).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::jwt::JwtRejection;
use crate::limits::RetryAfter;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("send the user's JWT as `Authorization: Bearer <JWT>`")]
    MissingToken,
    #[error("{0}")]
    InvalidToken(JwtRejection),
    #[error("pass the ticket from GET /token/ws as ?token=<ticket>")]
    MissingTicket,
    #[error("the ticket is unknown, malformed, expired or already used; fetch a new one")]
    InvalidTicket,
    #[error("this Origin may not open the WebSocket")]
    OriginNotAllowed,
    #[error("this endpoint only accepts WebSocket upgrades ({0})")]
    NotWebSocket(String),
    #[error("this endpoint answers with an event stream: send `Accept: text/event-stream`")]
    NotEventStream,
    #[error("no open SSE session has this id; open a new stream")]
    UnknownSession,
    #[error("the request's seq skips ahead: the next one is {expected}")]
    OutOfOrder { expected: u64 },
    #[error("the session's inbox is full; send the same request again shortly")]
    SessionBusy,
    #[error("the request body is over MAX_MESSAGE_BYTES (16 KiB before authentication)")]
    MessagesTooLarge,
    #[error("CORS preflight refused: this origin, method or header is not allowed")]
    CorsRejected,
    /// MongoDB did not answer (the code keeps its first name, `store_unavailable`).
    #[error("the database is unavailable; try again shortly")]
    DatabaseUnavailable,
    #[error("this gateway is shutting down; connect again (to another node)")]
    Draining,
    #[error("too many requests; retry after {} s", .0.secs())]
    RateLimited(RetryAfter),
    #[error("this user already has the maximum number of open connections")]
    TooManyConnections,
    #[error("the gateway is at its connection capacity; try again shortly")]
    AtCapacity,
    #[error("send the API key as `Authorization: Bearer <API_KEY>`")]
    MissingApiKey,
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the request is not acceptable: {0}")]
    BadRequest(String),
    #[error("the request is not acceptable: send one {0} header, not several")]
    DuplicateHeader(&'static str),
    #[error("the request body is over the limit (API_MAX_BODY_BYTES)")]
    BodyTooLarge,
    #[error("no such endpoint")]
    NotFound,
    #[error("a channel name is 1 to 255 bytes of ASCII letters, digits and _ - . : @ / =")]
    InvalidChannel,
    #[error("the channel's namespace is not declared in the [channels] table")]
    UnknownNamespace,
    #[error("the channel's namespace has no presence")]
    PresenceDisabled,
    #[error("the channel's namespace keeps no history (history_size)")]
    HistoryDisabled,
    #[error(
        "the data is over {max} bytes, the most a publication into this namespace's history \
         may hold (10 MiB / history_size)"
    )]
    PublicationTooLarge { max: usize },
    #[error("method not allowed on this endpoint; it allows {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error(
        "user lookup reads the lifecycle events, and none are made: set CONSOLE_PASSWORD, \
         EVENTS_WEBHOOK_URL or RECORD_LIFECYCLE_EVENTS (the last two with MONGODB_URI)"
    )]
    UserLookupDisabled,
    #[error("the console password is not right")]
    WrongPassword,
    #[error(
        "sign in to the console first (POST /console/session); console calls send its cookie \
         and the X-Ticketgate-Console header"
    )]
    ConsoleSessionRequired,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
}

impl ApiError {
    /// The stable, machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "missing_token",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::MissingTicket => "missing_ticket",
            ApiError::InvalidTicket => "invalid_ticket",
            ApiError::OriginNotAllowed => "origin_not_allowed",
            ApiError::NotWebSocket(_) => "not_websocket",
            ApiError::CorsRejected => "cors_rejected",
            ApiError::NotEventStream => "not_event_stream",
            ApiError::UnknownSession => "unknown_session",
            ApiError::OutOfOrder { .. } => "out_of_order",
            ApiError::SessionBusy => "session_busy",
            ApiError::MessagesTooLarge => "body_too_large",
            ApiError::DatabaseUnavailable => "store_unavailable",
            ApiError::Draining => "draining",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::AtCapacity => "at_capacity",
            ApiError::MissingApiKey => "missing_api_key",
            ApiError::InvalidApiKey => "invalid_api_key",
            ApiError::BadRequest(_) | ApiError::DuplicateHeader(_) => "bad_request",
            ApiError::BodyTooLarge => "body_too_large",
            ApiError::NotFound => "not_found",
            ApiError::InvalidChannel => "invalid_channel",
            ApiError::UnknownNamespace => "unknown_namespace",
            ApiError::PresenceDisabled => "presence_disabled",
            ApiError::HistoryDisabled => "history_disabled",
            ApiError::PublicationTooLarge { .. } => "publication_too_large",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::UserLookupDisabled => "user_lookup_disabled",
            ApiError::WrongPassword => "wrong_password",
            ApiError::ConsoleSessionRequired => "console_session_required",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::MissingTicket | ApiError::InvalidTicket => StatusCode::UNAUTHORIZED,
            ApiError::OriginNotAllowed => StatusCode::FORBIDDEN,
            ApiError::NotWebSocket(_) | ApiError::CorsRejected => StatusCode::BAD_REQUEST,
            ApiError::NotEventStream => StatusCode::NOT_ACCEPTABLE,
            ApiError::UnknownSession => StatusCode::NOT_FOUND,
            ApiError::OutOfOrder { .. } => StatusCode::CONFLICT,
            ApiError::SessionBusy => StatusCode::TOO_MANY_REQUESTS,
            ApiError::MessagesTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::DatabaseUnavailable | ApiError::AtCapacity | ApiError::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RateLimited(_) | ApiError::TooManyConnections => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::MissingApiKey
            | ApiError::InvalidApiKey
            | ApiError::WrongPassword
            | ApiError::ConsoleSessionRequired => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_)
            | ApiError::DuplicateHeader(_)
            | ApiError::InvalidChannel
            | ApiError::UnknownNamespace => StatusCode::BAD_REQUEST,
            ApiError::PresenceDisabled
            | ApiError::HistoryDisabled
            | ApiError::UserLookupDisabled => StatusCode::NOT_FOUND,
            ApiError::BodyTooLarge | ApiError::PublicationTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let message = self.to_string();
        let mut response = HttpResponse::build(self.status_code());
        match self {
            // RFC 6750: tell the client which scheme the endpoint wants.
            ApiError::MissingToken => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::InvalidToken(_) => {
                response
                    .insert_header((header::WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#));
            }
            ApiError::DatabaseUnavailable | ApiError::Draining | ApiError::SessionBusy => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("1")));
            }
            ApiError::AtCapacity => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            ApiError::MethodNotAllowed { allow } => {
                response.insert_header((header::ALLOW, *allow));
            }
            ApiError::RateLimited(retry) => {
                response.insert_header((header::RETRY_AFTER, retry.secs()));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code(),
            message: &message,
        })
    }
}
