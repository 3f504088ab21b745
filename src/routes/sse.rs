//! The SSE transport's two endpoints: `GET /sse?token=<ticket>` opens an event stream (the
//! same checks as a WebSocket upgrade, then `Accept`), and `POST /sse/messages` carries the
//! client's messages into a stream's inbox, on whichever node holds it.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::web::BytesMut;
use actix_web::{HttpRequest, HttpResponse, web};
use bytestring::ByteString;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::AppState;
use super::opening::Opening;
use crate::bus::Post;
use crate::error::ApiError;
use crate::hub::{Posted, TransportKind};
use crate::session::{self, PRE_AUTH_MAX_MESSAGE_BYTES};
use crate::sse::{ServerSentEvents, SessionId};
use crate::wire::socket::{AfterResponse, Handoff};

/// The most messages one request may carry.
pub const MAX_MESSAGES_PER_POST: usize = 100;

/// The largest `seq`: JavaScript's largest safe integer, so every client counts exactly.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Answers 200 with the stream's head and hands the socket to the session once it is written
/// (`crate::wire::socket`): the body is the events, until the connection ends.
pub async fn open_stream(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let opening = Opening::begin(&req, &state)?;
    // Checked before redeeming, so a request that cannot take a stream keeps its ticket.
    if !accepts_event_stream(&req) {
        return Err(ApiError::NotEventStream);
    }
    // Every connection of the gateway's own server has one (`crate::wire::server`).
    let Some(after) = req.conn_data::<AfterResponse>().cloned() else {
        log::warn!("an SSE request arrived outside the gateway's HTTP server");
        return Err(ApiError::NotEventStream);
    };
    let session_id = SessionId::generate(state.bus.node().id.as_str()).map_err(|e| {
        log::warn!("no randomness for a session id: {e}");
        ApiError::AtCapacity
    })?;
    let (client_ip, open) = opening
        .redeem(&state, TransportKind::ServerSentEvents)
        .await?;
    let ctx = Arc::clone(&state.session);
    let inbox = ctx
        .hub
        .inboxes()
        .open(Arc::from(session_id.as_str()), PRE_AUTH_MAX_MESSAGE_BYTES);
    log::info!(
        "{} is SSE session {}",
        open.id,
        SessionId::redacted(session_id.as_str())
    );
    let client_timeout = ctx.timing.client_timeout;
    after.hand_off(Handoff::new(move |socket, _| match ServerSentEvents::open(
        socket,
        inbox,
        session_id.as_str(),
        client_timeout,
    ) {
        Ok(transport) => {
            actix_web::rt::spawn(session::run(ctx, open, transport, client_ip));
        }
        Err(e) => log::debug!("{} was gone before its stream started: {e}", open.id),
    }));
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx buffers proxied responses unless told not to.
        .insert_header(("x-accel-buffering", "no"))
        .force_close()
        .body(actix_web::body::None::new()))
}

/// Whether `Accept` allows `text/event-stream`: no `Accept`, or a range that matches it with a
/// weight above zero.
fn accepts_event_stream(req: &HttpRequest) -> bool {
    let mut values = req.headers().get_all(header::ACCEPT).peekable();
    if values.peek().is_none() {
        return true;
    }
    values
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused && matches!(media.as_str(), "text/event-stream" | "text/*" | "*/*")
        })
}

/// `POST /sse/messages`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    session: String,
    /// A whole number (`4685.0` is one, as JSON Schema's `integer` has it).
    seq: serde_json::Number,
    messages: Vec<Box<RawValue>>,
}

/// Applies a request to its session's inbox, here or on the node that holds it; 204 once
/// applied (or when it was applied before).
pub async fn post_messages(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if !state.origins.allows_request(&req) {
        return Err(ApiError::OriginNotAllowed);
    }
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::BadRequest(
            "send the messages as Content-Type: application/json".into(),
        ));
    }
    let body = read_body(&req, payload, state.session.max_message_bytes).await?;
    let post = parse(&body)?;
    let Some(node) = SessionId::node_of(&post.session) else {
        return Err(ApiError::UnknownSession);
    };
    let node = node.to_owned();
    let posted = state.bus.post(&node, post).await.map_err(|e| {
        log::warn!("forwarding client messages: {e}");
        ApiError::DatabaseUnavailable
    })?;
    match posted {
        Posted::Accepted | Posted::Repeated => Ok(HttpResponse::NoContent().finish()),
        Posted::OutOfOrder { expected } => Err(ApiError::OutOfOrder { expected }),
        Posted::TooLarge => Err(ApiError::MessagesTooLarge),
        Posted::Busy => Err(ApiError::SessionBusy),
        Posted::Unknown => Err(ApiError::UnknownSession),
    }
}

/// The body, refused past `max` bytes without reading the rest.
async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    max: usize,
) -> Result<BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > max as u64) {
        return Err(ApiError::MessagesTooLarge);
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the body: {e}")))?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::MessagesTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The request, checked: an object of exactly `session`, `seq` (1 to [`MAX_SEQ`]) and 1 to
/// [`MAX_MESSAGES_PER_POST`] messages, each a JSON object.
fn parse(body: &[u8]) -> Result<Post, ApiError> {
    let bad = |why: String| ApiError::BadRequest(why);
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(bad("the body must be a JSON object".into()));
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body: {e}")))?;
    let seq = super::api_io::whole_number(&envelope.seq, MAX_SEQ)
        .filter(|&seq| seq >= 1)
        .ok_or_else(|| bad(format!("seq is a whole number from 1 to {MAX_SEQ}")))?;
    if envelope.messages.is_empty() || envelope.messages.len() > MAX_MESSAGES_PER_POST {
        return Err(bad(format!(
            "send 1 to {MAX_MESSAGES_PER_POST} messages per request"
        )));
    }
    if envelope.messages.iter().any(|m| !m.get().starts_with('{')) {
        return Err(bad("each message must be a JSON object".into()));
    }
    Ok(Post {
        session: envelope.session,
        seq,
        messages: envelope
            .messages
            .into_iter()
            .map(|m| ByteString::from(String::from(Box::<str>::from(m))))
            .collect(),
        body_bytes: body.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn accept_allows_the_stream_or_anything() {
        let accepts = |value: Option<&str>| {
            let mut req = TestRequest::default();
            if let Some(value) = value {
                req = req.insert_header((header::ACCEPT, value));
            }
            accepts_event_stream(&req.to_http_request())
        };
        assert!(accepts(None));
        assert!(accepts(Some("text/event-stream")));
        assert!(accepts(Some("*/*")));
        assert!(accepts(Some("application/json, text/*;q=0.5")));
        assert!(!accepts(Some("application/json")));
        assert!(!accepts(Some("text/event-stream;q=0")));
    }

    #[test]
    fn only_the_documented_shape_parses() {
        let ok = br#"{"session":"n.1","seq":1,"messages":[{"type":"ping"}]}"#;
        let post = parse(ok).unwrap();
        assert_eq!((post.seq, post.messages.len()), (1, 1));
        let whole = br#"{"session":"n.1","seq":4685.0,"messages":[{}]}"#;
        assert_eq!(parse(whole).unwrap().seq, 4685);
        for bad in [
            &br#"[1]"#[..],
            br#"{"session":"n.1","seq":0,"messages":[{}]}"#,
            br#"{"session":"n.1","seq":9007199254740992,"messages":[{}]}"#,
            br#"{"session":"n.1","seq":1,"messages":[]}"#,
            br#"{"session":"n.1","seq":1,"messages":[1]}"#,
            br#"{"session":"n.1","seq":1,"messages":[{}],"extra":1}"#,
            br#"{"session":"n.1","messages":[{}]}"#,
            br#"{"session":"n.1","seq":-1,"messages":[{}]}"#,
            br#"{"session":"n.1","seq":1.5,"messages":[{}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many = format!(
            r#"{{"session":"n.1","seq":1,"messages":[{}]}}"#,
            vec!["{}"; 101].join(",")
        );
        assert!(parse(many.as_bytes()).is_err());
    }
}
