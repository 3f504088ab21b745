//! One task per WebSocket connection, as a typed state machine:
//! `Connection<Unauthenticated>` → [`Connection::authenticate`] → `Connection<Authenticated>`.
//!
//! Only the authenticated state holds a [`Membership`], so a connection cannot receive a
//! broadcast or a ping before it has authenticated: the code to do so does not type-check.
//! Every path ends in one [`Closing`], which sends at most one close frame.

pub mod close;
pub mod expiry;
pub mod frame_guard;
pub mod protocol;
pub mod rules;

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, Closed, Item, Message, MessageStream,
    ProtocolError, Session,
};
use bytestring::ByteString;
use tokio::time::{Instant, MissedTickBehavior, interval_at, sleep_until, timeout};

use crate::hub::{ConnectionId, Hub, Membership, OpenConnection};
use crate::jwt::{JwtRejection, JwtVerifier};
use crate::metrics::Metrics;
use crate::store::RevocationStore;
pub use close::CloseReason;
use expiry::{Expiry, ExpiryEvent};
use frame_guard::FrameLimit;
use protocol::ServerMessage;
use rules::Reply;

/// Shared by all connections of a gateway.
pub struct SessionContext {
    pub jwt: Arc<JwtVerifier>,
    pub hub: Arc<Hub>,
    pub timing: SessionTiming,
    pub metrics: Arc<Metrics>,
    pub revocations: Arc<RevocationStore>,
    /// Largest message after authentication (MAX_MESSAGE_BYTES).
    pub max_message_bytes: usize,
}

impl SessionContext {
    /// Refuses a JWT whose `jti` was revoked (4401), and fails closed when the revocation
    /// store cannot answer (1013, try again).
    async fn not_revoked(&self, jti: Option<&str>) -> Result<(), CloseReason> {
        let Some(jti) = jti else { return Ok(()) };
        match self.revocations.is_revoked(jti).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(CloseReason::JwtRejected(JwtRejection::Revoked)),
            Err(e) => {
                log::warn!("checking a revocation: {e}");
                Err(CloseReason::StoreUnavailable)
            }
        }
    }
}

/// Largest message before authentication: a JWT fits with room to spare, and a client that has
/// proven nothing yet cannot make the server buffer more.
pub const PRE_AUTH_MAX_MESSAGE_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct SessionTiming {
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// No sign of life for this long closes the connection; also the deadline for any one write.
    pub client_timeout: Duration,
    /// How long before `exp` the `token_expiring` notice goes out.
    pub token_refresh_notice: Duration,
    /// How long after `exp` the connection may live: the verifier's leeway, so a token accepted
    /// within it is not closed at once.
    pub expiry_grace: Duration,
}

impl SessionTiming {
    fn expiry_of(&self, expires_at: u64) -> Expiry {
        Expiry::new(expires_at, self.token_refresh_notice, self.expiry_grace)
    }
}

pub struct Connection<State> {
    open: OpenConnection,
    session: Session,
    state: State,
}

/// Upgraded with a valid ticket (whose user the connection slot records); waiting for the JWT.
/// Sends nothing. Reads raw frames capped at [`PRE_AUTH_MAX_MESSAGE_BYTES`].
pub struct Unauthenticated {
    stream: MessageStream,
    /// Raised to MAX_MESSAGE_BYTES once authenticated.
    frame_limit: FrameLimit,
}

/// The JWT checked out: in the broadcast pipeline, with a heartbeat. Reads messages of up to
/// MAX_MESSAGE_BYTES, continuations aggregated.
pub struct Authenticated {
    user_id: String,
    membership: Membership,
    stream: AggregatedMessageStream,
    /// When the current JWT runs out; a refresh starts it over.
    expiry: Expiry,
}

/// The end of a connection: why, and the means to say so.
pub struct Closing {
    open: OpenConnection,
    session: Session,
    reason: CloseReason,
}

/// What the connection task does from upgrade to close.
pub async fn run(
    ctx: Arc<SessionContext>,
    open: OpenConnection,
    session: Session,
    stream: MessageStream,
    frame_limit: FrameLimit,
) {
    let started = Instant::now();
    let connection = Connection {
        open,
        session,
        state: Unauthenticated {
            frame_limit,
            stream: stream.max_frame_size(PRE_AUTH_MAX_MESSAGE_BYTES),
        },
    };
    // Boxed: the authentication phase's state (a MongoDB query among it) then lives on the
    // heap only while it runs, instead of sizing the task every connection keeps for life.
    let closing = match Box::pin(connection.authenticate(&ctx)).await {
        Ok(authenticated) => authenticated.serve(&ctx).await,
        Err(closing) => {
            if let Some(code @ (4400 | 4401 | 4408)) = closing.reason.code() {
                ctx.metrics
                    .auth_failures
                    .with_label_values(&[&code.to_string()])
                    .inc();
            }
            closing
        }
    };
    Box::pin(closing.finish(&ctx, started)).await;
}

impl<S> Connection<S> {
    fn closing(self, reason: CloseReason) -> Closing {
        Closing {
            open: self.open,
            session: self.session,
            reason,
        }
    }

    fn id(&self) -> ConnectionId {
        self.open.id
    }
}

impl Connection<Unauthenticated> {
    /// Waits up to AUTH_TIMEOUT_SECS for `{"type":"jwt","token":…}` whose `sub` is the ticket's user.
    pub async fn authenticate(
        mut self,
        ctx: &SessionContext,
    ) -> Result<Connection<Authenticated>, Closing> {
        let first = first_text_message(&mut self.state.stream);
        let outcome = tokio::select! {
            outcome = timeout(ctx.timing.auth_timeout, first) => outcome,
            kick = self.open.kicked() => return Err(self.closing(CloseReason::Kicked(kick))),
        };
        let text = match outcome {
            Err(_) => return Err(self.closing(CloseReason::AuthTimeout)),
            Ok(Err(reason)) => return Err(self.closing(reason)),
            Ok(Ok(text)) => text,
        };
        ctx.metrics.messages_in.inc();
        let verified = match rules::check_first_message(&text, &ctx.jwt, self.open.user_id()) {
            Ok(verified) => verified,
            Err(reason) => return Err(self.closing(reason)),
        };
        // Join (registering the jti) before checking revocation: a revocation that lands in
        // between is then either seen here or kicks the registered connection.
        let membership = ctx.hub.join(&self.open, verified.jti.as_deref());
        if let Err(reason) = ctx.not_revoked(verified.jti.as_deref()).await {
            return Err(self.closing(reason));
        }
        let welcome = ServerMessage::Authenticated {
            user_id: &verified.sub,
            expires_at: verified.expires_at,
        }
        .encode();
        if send(ctx, &mut self.session, welcome).await.is_err() {
            return Err(self.closing(CloseReason::ConnectionLost));
        }
        log::info!("{} authenticated as user {}", self.id(), verified.sub);
        self.state.frame_limit.set(ctx.max_message_bytes);
        let stream = self
            .state
            .stream
            .max_frame_size(ctx.max_message_bytes)
            .aggregate_continuations()
            .max_continuation_size(ctx.max_message_bytes);
        Ok(Connection {
            open: self.open,
            session: self.session,
            state: Authenticated {
                expiry: ctx.timing.expiry_of(verified.expires_at),
                user_id: verified.sub,
                membership,
                stream,
            },
        })
    }
}

/// The first message, which must be text (possibly fragmented) of at most
/// [`PRE_AUTH_MAX_MESSAGE_BYTES`]. Control frames before authentication are ignored: the server
/// sends nothing at all until the JWT checks out (not even a Pong), and the deadline around this
/// call does not move.
async fn first_text_message(stream: &mut MessageStream) -> Result<ByteString, CloseReason> {
    const NOT_TEXT: CloseReason =
        CloseReason::MalformedAuth("the first message must be a text frame");
    let mut fragments: Option<Vec<u8>> = None;
    loop {
        let message = match stream.recv().await {
            None => return Err(CloseReason::ConnectionLost),
            Some(Err(error)) => return Err(protocol_failure(&error)),
            Some(Ok(message)) => message,
        };
        let last_fragment = match message {
            Message::Ping(_) | Message::Pong(_) | Message::Nop => continue,
            Message::Close(frame) => return Err(CloseReason::ClientClosed(frame)),
            Message::Text(text) if fragments.is_none() => return Ok(text),
            Message::Continuation(Item::FirstText(bytes)) if fragments.is_none() => {
                fragments = Some(bytes.to_vec());
                continue;
            }
            Message::Continuation(Item::Continue(bytes)) => (bytes, false),
            Message::Continuation(Item::Last(bytes)) => (bytes, true),
            _ => return Err(NOT_TEXT),
        };
        let (bytes, last) = last_fragment;
        let Some(buffer) = fragments.as_mut() else {
            return Err(CloseReason::ProtocolError);
        };
        if buffer.len() + bytes.len() > PRE_AUTH_MAX_MESSAGE_BYTES {
            return Err(CloseReason::MessageTooBig);
        }
        buffer.extend_from_slice(&bytes);
        if last {
            let buffer = fragments.take().unwrap_or_default();
            return String::from_utf8(buffer)
                .map(ByteString::from)
                .map_err(|_| CloseReason::InvalidUtf8);
        }
    }
}

/// What to do after handling one client message.
enum Next {
    Continue,
    Close(CloseReason),
}

impl Connection<Authenticated> {
    /// The authenticated loop: client messages, broadcasts and the heartbeat, until one ends it.
    pub async fn serve(mut self, ctx: &SessionContext) -> Closing {
        let timing = &ctx.timing;
        let expiry_timer = sleep_until(self.state.expiry.next_deadline());
        tokio::pin!(expiry_timer);
        let mut heartbeat = interval_at(
            Instant::now() + timing.heartbeat_interval,
            timing.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let reason = loop {
            tokio::select! {
                incoming = self.state.stream.recv() => {
                    last_seen = Instant::now();
                    let next = match incoming {
                        None => Next::Close(CloseReason::ConnectionLost),
                        Some(Err(error)) => Next::Close(protocol_failure(&error)),
                        // Boxed: client messages are rare next to the connection's lifetime,
                        // and handling one (a refresh queries MongoDB) needs the most state.
                        Some(Ok(message)) => Box::pin(self.handle(message, ctx)).await,
                    };
                    if let Next::Close(reason) = next {
                        break reason;
                    }
                    // A refresh moved the expiry.
                    if expiry_timer.deadline() != self.state.expiry.next_deadline() {
                        expiry_timer.as_mut().reset(self.state.expiry.next_deadline());
                    }
                }
                () = &mut expiry_timer => {
                    let (event, next) = self.state.expiry.fire();
                    self.state.expiry = next;
                    match event {
                        ExpiryEvent::Expired => break CloseReason::TokenExpired,
                        ExpiryEvent::Notice { expires_at } => {
                            let notice = ServerMessage::TokenExpiring { expires_at }.encode();
                            if send(ctx, &mut self.session, notice).await.is_err() {
                                break CloseReason::ConnectionLost;
                            }
                            expiry_timer.as_mut().reset(self.state.expiry.next_deadline());
                        }
                    }
                }
                kick = self.open.kicked() => break CloseReason::Kicked(kick),
                delivery = self.state.membership.next() => match delivery {
                    Ok(delivery) => {
                        if send(ctx, &mut self.session, delivery.frame).await.is_err() {
                            break CloseReason::ConnectionLost;
                        }
                        if let Some(published_at) = delivery.published_at {
                            ctx.metrics.broadcast_fanout_seconds.observe(published_at.elapsed().as_secs_f64());
                        }
                    }
                    Err(lagged) => break CloseReason::SlowConsumer { missed: lagged.missed },
                },
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= timing.client_timeout {
                        break CloseReason::HeartbeatTimeout;
                    }
                    let ping = timeout(timing.client_timeout, self.session.ping(b""));
                    if !matches!(ping.await, Ok(Ok(()))) {
                        break CloseReason::ConnectionLost;
                    }
                }
            }
        };
        log::debug!(
            "{} (user {}) leaving: {reason:?}",
            self.id(),
            self.state.user_id
        );
        // Leaving the broadcast pipeline happens here, by dropping the membership.
        let Connection {
            open,
            session,
            state,
            ..
        } = self;
        drop(state);
        Closing {
            open,
            session,
            reason,
        }
    }

    async fn handle(&mut self, message: AggregatedMessage, ctx: &SessionContext) -> Next {
        let timing = &ctx.timing;
        if matches!(
            message,
            AggregatedMessage::Text(_) | AggregatedMessage::Binary(_)
        ) {
            ctx.metrics.messages_in.inc();
        }
        let sent = match rules::reply_to(&message) {
            Reply::Text(text) => send(ctx, &mut self.session, text).await,
            Reply::Refresh(token) => {
                match rules::check_jwt(&token, &ctx.jwt, &self.state.user_id) {
                    Err(reason) => return Next::Close(reason),
                    Ok(verified) => {
                        self.state.expiry = timing.expiry_of(verified.expires_at);
                        self.state.membership.set_jti(verified.jti.as_deref());
                        // Boxed for the same reason as the authentication phase: refreshes are
                        // rare, and the MongoDB query's state would size every connection.
                        let revocation = Box::pin(ctx.not_revoked(verified.jti.as_deref()));
                        if let Err(reason) = revocation.await {
                            return Next::Close(reason);
                        }
                        log::info!(
                            "{} refreshed, now valid until {}",
                            self.id(),
                            verified.expires_at
                        );
                        let welcome = ServerMessage::Authenticated {
                            user_id: &verified.sub,
                            expires_at: verified.expires_at,
                        };
                        send(ctx, &mut self.session, welcome.encode()).await
                    }
                }
            }
            Reply::Pong(payload) => {
                match timeout(timing.client_timeout, self.session.pong(payload)).await {
                    Ok(result) => result,
                    Err(_) => Err(Closed),
                }
            }
            Reply::Nothing => Ok(()),
            Reply::Close(reason) => return Next::Close(reason),
        };
        match sent {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close(CloseReason::ConnectionLost),
        }
    }
}

impl Closing {
    /// Sends the close frame (if the socket can still take one) and ends the connection; the
    /// connection stops counting as open only after that.
    async fn finish(self, ctx: &SessionContext, started: Instant) {
        let Closing {
            open,
            session,
            reason,
        } = self;
        if let Some(frame) = reason.frame() {
            let _ = timeout(ctx.timing.client_timeout, session.close(Some(frame))).await;
        }
        let code = reason
            .code()
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        ctx.metrics.closes.with_label_values(&[&code]).inc();
        log::info!(
            "{} closed: code {code} after {:.1}s",
            open.id,
            started.elapsed().as_secs_f64()
        );
    }
}

/// Writes one text frame, giving up when the client does not take it within CLIENT_TIMEOUT_SECS:
/// a client that stopped reading must not pin its task forever.
async fn send(
    ctx: &SessionContext,
    session: &mut Session,
    text: impl Into<ByteString>,
) -> Result<(), Closed> {
    match timeout(ctx.timing.client_timeout, session.text(text)).await {
        Ok(Ok(())) => {
            ctx.metrics.messages_out.inc();
            Ok(())
        }
        Ok(Err(closed)) => Err(closed),
        Err(_) => Err(Closed),
    }
}

/// Maps a read error to its close. actix reports several protocol violations (reserved bits,
/// invalid UTF-8, over-long continuations) as `Io` errors of kind `InvalidData`, told apart only
/// by their text (its own TODO plans dedicated variants); any other I/O error is a lost socket.
fn protocol_failure(error: &ProtocolError) -> CloseReason {
    match error {
        ProtocolError::Overflow => CloseReason::MessageTooBig,
        ProtocolError::Io(e) if frame_guard::is_frame_overflow(e) => CloseReason::MessageTooBig,
        // actix-ws's aggregator reports an over-long fragmented message as an `Other` error.
        ProtocolError::Io(e) if e.to_string().contains("maximum continuation size") => {
            CloseReason::MessageTooBig
        }
        ProtocolError::Io(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            if e.to_string().to_ascii_lowercase().contains("utf-8") {
                CloseReason::InvalidUtf8
            } else {
                CloseReason::ProtocolError
            }
        }
        ProtocolError::Io(_) => CloseReason::ConnectionLost,
        _ => CloseReason::ProtocolError,
    }
}
