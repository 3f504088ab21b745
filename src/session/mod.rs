//! One task per WebSocket connection, as a typed state machine:
//! `Connection<Unauthenticated>` → [`Connection::authenticate`] → `Connection<Authenticated>`.
//!
//! Only the authenticated state holds a [`Membership`], so a connection cannot receive a
//! broadcast or a ping before it has authenticated: the code to do so does not type-check.
//! Every path ends in one [`Closing`], which sends at most one close frame.

pub mod calls;
pub mod channels;
pub mod close;
pub mod expiry;
mod publish;
pub mod rules;

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures_util::FutureExt;
use tokio::time::{Instant, MissedTickBehavior, Sleep, interval_at, sleep_until, timeout};

use crate::bus::Bus;
use crate::channels::ClaimGrants;
use crate::hub::{ConnectionId, Fell, Hub, Inbound, Membership, OpenConnection};
use crate::jwt::{JwtRejection, JwtVerifier};
use crate::lifecycle::{EventKind, Lifecycle, Subject};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, RpcFailureCode, ServerMessage};
use crate::store::{PresenceStore, RevocationStore};
use crate::upstream::{Caller, Upstream};
use crate::wire::{self, FrameReader, FrameWriter, Incoming, MAX_BATCH};
use calls::{Answered, Calls};
pub use channels::ChannelPolicy;
use channels::TokenExpiries;
pub use close::CloseReason;
use expiry::{Expiry, ExpiryEvent};
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
    pub channels: ChannelPolicy,
    /// Join and leave announcements go through it to every node.
    pub bus: Arc<Bus>,
    /// Who is subscribed where, across nodes.
    pub presence: Arc<PresenceStore>,
    /// The app's backend, for RPCs.
    pub upstream: Arc<Upstream>,
    /// Connect, disconnect, subscribe and unsubscribe events for the events webhook.
    pub lifecycle: Arc<Lifecycle>,
}

impl SessionContext {
    /// Who a lifecycle event is about.
    fn subject<'a>(&self, connection: ConnectionId, user_id: &'a str) -> Subject<'a> {
        Subject {
            user_id,
            connection_id: format!("{connection}@{}", self.bus.node().id),
        }
    }

    /// Refuses a JWT whose `jti` was revoked (4401), and fails closed when the revocation
    /// store cannot answer (1013, try again).
    async fn not_revoked(&self, jti: Option<&str>) -> Result<(), CloseReason> {
        let Some(jti) = jti else { return Ok(()) };
        match self.revocations.is_revoked(jti).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(CloseReason::JwtRejected(JwtRejection::Revoked)),
            Err(e) => {
                log::warn!("checking a revocation: {e}");
                Err(CloseReason::DatabaseUnavailable)
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
    reader: FrameReader,
    writer: FrameWriter,
    state: State,
}

/// Upgraded with a valid ticket (whose user the connection slot records); waiting for the JWT.
/// Sends nothing but the Pong a Ping asks for. Reads messages of at most
/// [`PRE_AUTH_MAX_MESSAGE_BYTES`].
pub struct Unauthenticated {
    /// The client's address, as the upgrade saw it (behind a trusted proxy, the forwarded one).
    client_ip: Option<IpAddr>,
}

/// The JWT checked out: in the broadcast pipeline, with a heartbeat. Reads messages of up to
/// MAX_MESSAGE_BYTES.
pub struct Authenticated {
    user_id: String,
    connection: ConnectionId,
    membership: Membership,
    /// When the current JWT runs out; a refresh starts it over.
    expiry: Expiry,
    /// The current JWT's `channels` claim.
    claims: ClaimGrants,
    /// The current JWT's `publish` claim.
    publish_grants: ClaimGrants,
    /// The client's address, which calls to the backend carry.
    client_ip: Option<IpAddr>,
    /// Subscriptions held by subscription tokens, and when each runs out.
    tokens: TokenExpiries,
    /// The current JWT's `jti`, which calls to the backend carry.
    jti: Option<String>,
    /// RPCs waiting for the backend.
    calls: Calls,
}

/// The end of a connection: why, and the means to say so.
pub struct Closing {
    open: OpenConnection,
    reader: FrameReader,
    writer: FrameWriter,
    reason: CloseReason,
}

/// What the connection task does from upgrade to close.
pub async fn run(
    ctx: Arc<SessionContext>,
    open: OpenConnection,
    reader: FrameReader,
    writer: FrameWriter,
    client_ip: Option<IpAddr>,
) {
    let started = Instant::now();
    let connection = Connection {
        open,
        reader,
        writer,
        state: Unauthenticated { client_ip },
    };
    // Boxed: the authentication phase's state (a MongoDB query among it) then lives on the
    // heap only while it runs, instead of sizing the task every connection keeps for life.
    let closing = match Box::pin(connection.authenticate(&ctx)).await {
        Ok(authenticated) => {
            let since = Instant::now();
            let closing = authenticated.serve(&ctx).await;
            // Every connect is matched by one disconnect.
            let reason = closing.reason.payload();
            ctx.lifecycle.emit(
                ctx.subject(closing.open.id, closing.open.user_id()),
                EventKind::Disconnect {
                    code: reason.as_ref().map(|p| u16::from(p.code)),
                    reason: reason.and_then(|p| p.description).unwrap_or_default(),
                    duration_ms: since.elapsed().as_millis() as u64,
                },
            );
            closing
        }
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
            reader: self.reader,
            writer: self.writer,
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
        let first = first_text_message(ctx, &mut self.reader, &mut self.writer);
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
            id: None,
        }
        .encode();
        let welcome = self.writer.text_frame(&welcome);
        if send(ctx, &mut self.writer, &[welcome]).await.is_err() {
            return Err(self.closing(CloseReason::ConnectionLost));
        }
        log::info!("{} authenticated as user {}", self.id(), verified.sub);
        ctx.metrics.authentications.inc();
        ctx.lifecycle.emit(
            ctx.subject(self.open.id, &verified.sub),
            EventKind::Connect {
                jti: verified.jti.clone(),
                client_ip: self.state.client_ip,
            },
        );
        let connection = self.open.id;
        Ok(Connection {
            open: self.open,
            reader: self.reader,
            writer: self.writer,
            state: Authenticated {
                expiry: ctx.timing.expiry_of(verified.expires_at),
                connection,
                user_id: verified.sub,
                membership,
                claims: ClaimGrants::from_claim(&verified.channels),
                publish_grants: ClaimGrants::from_claim(&verified.publish),
                client_ip: self.state.client_ip,
                tokens: TokenExpiries::default(),
                jti: verified.jti,
                calls: Calls::default(),
            },
        })
    }
}

/// The first message, which must be text (possibly fragmented) of at most
/// [`PRE_AUTH_MAX_MESSAGE_BYTES`]. A Ping is answered with its Pong, as RFC 6455 §5.5.2 requires;
/// that is the only frame the server sends before the JWT checks out (no message, no Ping of its
/// own), and the deadline around this call does not move for it.
async fn first_text_message(
    ctx: &SessionContext,
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
) -> Result<ByteString, CloseReason> {
    loop {
        match reader.next_message(PRE_AUTH_MAX_MESSAGE_BYTES).await? {
            Incoming::Ping(payload) => {
                if write(ctx, writer, &[wire::pong_frame(&payload)])
                    .await
                    .is_err()
                {
                    return Err(CloseReason::ConnectionLost);
                }
            }
            Incoming::Pong(_) => continue,
            Incoming::Close(frame) => return Err(CloseReason::ClientClosed(frame)),
            Incoming::Text(text) => return Ok(text),
            Incoming::Binary(_) => {
                return Err(CloseReason::MalformedAuth(
                    "the first message must be a text frame",
                ));
            }
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
        // Subscription tokens' notices and ends; allocated only while a token holds one.
        let mut token_timer: Option<Pin<Box<Sleep>>> = None;
        let mut heartbeat = interval_at(
            Instant::now() + timing.heartbeat_interval,
            timing.heartbeat_interval,
        );
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let reason = loop {
            tokio::select! {
                incoming = self.reader.next_message(ctx.max_message_bytes) => {
                    last_seen = Instant::now();
                    let next = match incoming {
                        Err(error) => Next::Close(error.into()),
                        // Boxed: client messages are rare next to the connection's lifetime,
                        // and handling one (a refresh queries MongoDB) needs the most state.
                        Ok(message) => Box::pin(self.handle_read(message, ctx)).await,
                    };
                    if let Next::Close(reason) = next {
                        break reason;
                    }
                    // A refresh moved the expiry.
                    if expiry_timer.deadline() != self.state.expiry.next_deadline() {
                        expiry_timer.as_mut().reset(self.state.expiry.next_deadline());
                    }
                    sync_token_timer(&mut token_timer, &self.state.tokens);
                }
                () = wait_for(&mut token_timer) => {
                    let notices = Box::pin(self.state.on_token_deadline(ctx)).await;
                    if self.send_messages(ctx, &notices).await.is_err() {
                        break CloseReason::ConnectionLost;
                    }
                    sync_token_timer(&mut token_timer, &self.state.tokens);
                }
                () = &mut expiry_timer => {
                    let (event, next) = self.state.expiry.fire();
                    self.state.expiry = next;
                    match event {
                        ExpiryEvent::Expired => break CloseReason::TokenExpired,
                        ExpiryEvent::Notice { expires_at } => {
                            let notice = ServerMessage::TokenExpiring { expires_at }.encode();
                            let notice = self.writer.text_frame(&notice);
                            if send(ctx, &mut self.writer, &[notice]).await.is_err() {
                                break CloseReason::ConnectionLost;
                            }
                            expiry_timer.as_mut().reset(self.state.expiry.next_deadline());
                        }
                    }
                }
                kick = self.open.kicked() => break CloseReason::Kicked(kick),
                finished = self.state.calls.next() => {
                    match finished.answer(ctx) {
                        Answered::Reply(reply) => {
                            if self.send_messages(ctx, &[reply]).await.is_err() {
                                break CloseReason::ConnectionLost;
                            }
                        }
                        Answered::Close(reason) => break reason,
                    }
                }
                inbound = self.state.membership.next() => {
                    let delivery = match inbound {
                        Ok(Inbound::Delivery(delivery)) => Some(delivery),
                        Ok(Inbound::Recovered(recovered)) => {
                            // Written before anything that came after, in writes of at most
                            // MAX_BATCH frames.
                            let mut lost = false;
                            for chunk in recovered.chunks(MAX_BATCH) {
                                let frames: Vec<_> = chunk
                                    .iter()
                                    .map(|d| self.writer.adapt(&d.frame, d.compressed.as_deref()))
                                    .collect();
                                if send(ctx, &mut self.writer, &frames).await.is_err() {
                                    lost = true;
                                    break;
                                }
                            }
                            if lost {
                                break CloseReason::ConnectionLost;
                            }
                            None
                        }
                        Ok(Inbound::Control(control)) => {
                            let replies = Box::pin(self.state.on_control(ctx, control)).await;
                            if self.send_messages(ctx, &replies).await.is_err() {
                                break CloseReason::ConnectionLost;
                            }
                            sync_token_timer(&mut token_timer, &self.state.tokens);
                            continue;
                        }
                        Err(fell) => break fell.into(),
                    };
                    let Some(delivery) = delivery else { continue };
                    // Whatever else is already waiting goes out in the same write: under load,
                    // one system call then carries several messages.
                    let batch = match self.state.membership.with_waiting(delivery, MAX_BATCH) {
                        Ok(batch) => batch,
                        Err(fell) => break fell.into(),
                    };
                    let sent = if self.writer.compresses() {
                        let frames: Vec<_> = batch
                            .iter()
                            .map(|d| self.writer.adapt(&d.frame, d.compressed.as_deref()))
                            .collect();
                        send(ctx, &mut self.writer, &frames).await
                    } else {
                        send(ctx, &mut self.writer, &batch).await
                    };
                    if sent.is_err() {
                        break CloseReason::ConnectionLost;
                    }
                    for published_at in batch.iter().filter_map(|d| d.published_at) {
                        ctx.metrics.broadcast_fanout_seconds.observe(published_at.elapsed().as_secs_f64());
                    }
                },
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= timing.client_timeout {
                        break CloseReason::HeartbeatTimeout;
                    }
                    if write(ctx, &mut self.writer, &[wire::ping_frame()]).await.is_err() {
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
        self.state.leave_all(ctx);
        // Leaving the broadcast pipeline happens here, by dropping the membership.
        let Connection {
            open,
            reader,
            writer,
            state,
        } = self;
        drop(state);
        Closing {
            open,
            reader,
            writer,
            reason,
        }
    }

    /// Handles one client message; its replies go to `out`, written by the caller.
    async fn handle(&mut self, message: Incoming, ctx: &SessionContext, out: &mut Outbox) -> Next {
        let timing = &ctx.timing;
        if matches!(message, Incoming::Text(_) | Incoming::Binary(_)) {
            ctx.metrics.messages_in.inc();
        }
        match rules::reply_to(&message) {
            Reply::Text(text) => out.message(&self.writer, &text),
            Reply::Channel { request, id } => {
                for reply in self.state.on_request(ctx, request, id).await {
                    out.message(&self.writer, &reply);
                }
            }
            Reply::Refresh { token, id } => {
                let verified = match rules::check_jwt(&token, &ctx.jwt, &self.state.user_id) {
                    Err(reason) => return Next::Close(reason),
                    Ok(verified) => verified,
                };
                self.state.expiry = timing.expiry_of(verified.expires_at);
                self.state.membership.set_jti(verified.jti.as_deref());
                self.state.jti.clone_from(&verified.jti);
                self.state.publish_grants = ClaimGrants::from_claim(&verified.publish);
                // Boxed for the same reason as the authentication phase: refreshes are rare,
                // and the MongoDB query's state would size every connection.
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
                    id,
                };
                out.message(&self.writer, &welcome.encode());
                let claims = ClaimGrants::from_claim(&verified.channels);
                for notice in self.state.on_refresh(ctx, claims).await {
                    out.message(&self.writer, &notice);
                }
            }
            Reply::Rpc { method, data, id } => {
                if let Some(refusal) = self.start_rpc(ctx, &method, data, id) {
                    out.message(&self.writer, &refusal);
                }
            }
            Reply::Pong(payload) => out.control(wire::pong_frame(payload)),
            Reply::Nothing => {}
            Reply::Close(reason) => return Next::Close(reason),
        }
        Next::Continue
    }

    /// The client messages one read brought, handled together, their replies written at
    /// once: a client that pipelines requests (a page subscribing to its channels) costs one
    /// write, not one per request.
    async fn handle_read(&mut self, first: Incoming, ctx: &SessionContext) -> Next {
        let mut out = Outbox::default();
        let mut next = self.handle(first, ctx, &mut out).await;
        while matches!(next, Next::Continue) && out.frames.len() < MAX_BATCH {
            // Only what is already buffered: never waits for the socket.
            match self
                .reader
                .next_message(ctx.max_message_bytes)
                .now_or_never()
            {
                Some(Ok(message)) => next = self.handle(message, ctx, &mut out).await,
                Some(Err(error)) => next = Next::Close(error.into()),
                None => break,
            }
        }
        if out.write(ctx, &mut self.writer).await.is_err() {
            return Next::Close(CloseReason::ConnectionLost);
        }
        next
    }
}

/// Frames to write after handling client messages, in order.
#[derive(Default)]
struct Outbox {
    frames: Vec<bytes::Bytes>,
    /// How many of them are messages (text frames), for `messages_out`.
    messages: u64,
}

impl Outbox {
    fn message(&mut self, writer: &FrameWriter, text: &str) {
        self.frames.push(writer.text_frame(text));
        self.messages += 1;
    }

    fn control(&mut self, frame: bytes::Bytes) {
        self.frames.push(frame);
    }

    async fn write(self, ctx: &SessionContext, writer: &mut FrameWriter) -> Result<(), Lost> {
        if self.frames.is_empty() {
            return Ok(());
        }
        write(ctx, writer, &self.frames).await?;
        ctx.metrics.messages_out.inc_by(self.messages);
        Ok(())
    }
}

impl Authenticated {
    /// Who asks, as every call to the app's backend says.
    fn caller(&self, ctx: &SessionContext) -> Caller {
        Caller {
            user_id: self.user_id.clone(),
            connection_id: format!("{}@{}", self.connection, ctx.bus.node().id),
            node: ctx.bus.node().id.to_string(),
            jti: self.jti.clone(),
            client_ip: self.client_ip,
        }
    }
}

impl Connection<Authenticated> {
    /// Calls the backend for an `rpc`, or refuses it at once (the refusal to send).
    fn start_rpc(
        &mut self,
        ctx: &SessionContext,
        method: &str,
        data: &serde_json::value::RawValue,
        id: &serde_json::value::RawValue,
    ) -> Option<String> {
        let refused = |label: &str, reply: String| {
            ctx.metrics.rpcs.with_label_values(&[label]).inc();
            Some(reply)
        };
        if !ctx.upstream.is_enabled() {
            let reply = ServerMessage::error(ErrorCode::UpstreamDisabled, None, Some(id));
            return refused("upstream_disabled", reply.encode());
        }
        if self.state.calls.waiting() >= ctx.upstream.max_rpc_per_connection {
            let (label, reply) = calls::failed(id, RpcFailureCode::TooManyRequests);
            return refused(label, reply);
        }
        let caller = self.state.caller(ctx);
        self.state
            .calls
            .start(&ctx.upstream, caller, method, data, id);
        None
    }

    /// Writes encoded messages, each its own text frame, in one write.
    async fn send_messages(
        &mut self,
        ctx: &SessionContext,
        messages: &[String],
    ) -> Result<(), Lost> {
        let mut out = Outbox::default();
        for message in messages {
            out.message(&self.writer, message);
        }
        out.write(ctx, &mut self.writer).await
    }
}

impl From<Fell> for CloseReason {
    fn from(fell: Fell) -> Self {
        match fell {
            Fell::Behind { missed } => CloseReason::SlowConsumer { missed },
            Fell::MailboxFull => CloseReason::MailboxFull,
        }
    }
}

/// Points the subscription-token timer at the earliest token deadline; drops it when no
/// token holds a subscription.
fn sync_token_timer(timer: &mut Option<Pin<Box<Sleep>>>, tokens: &TokenExpiries) {
    match (tokens.next_deadline(), timer.as_mut()) {
        (None, _) => *timer = None,
        (Some(next), Some(sleep)) if sleep.deadline() == next => {}
        (Some(next), Some(sleep)) => sleep.as_mut().reset(next),
        (Some(next), None) => *timer = Some(Box::pin(sleep_until(next))),
    }
}

/// Resolves when the timer fires; never without one.
async fn wait_for(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Closing {
    /// Sends the close frame (if the socket can still take one) and ends the connection; the
    /// connection stops counting as open only after that.
    async fn finish(self, ctx: &SessionContext, started: Instant) {
        let Closing {
            open,
            reader,
            mut writer,
            reason,
        } = self;
        let mut linger = false;
        if let Some(payload) = reason.payload() {
            let close = write(ctx, &mut writer, &[wire::close_frame(Some(payload))]).await;
            // RFC 6455 §7.1.1: the server ends the TCP connection first.
            linger = close.is_ok() && writer.shutdown().await.is_ok();
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
        drop(open);
        if linger {
            // Read on until the client closes its side, so bytes it still sends do not turn
            // the close into a reset that could cost it the close frame.
            let _ = timeout(CLOSE_LINGER, reader.discard_until_eof()).await;
        }
    }
}

/// How long a closed connection waits for the client to end its side.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The socket did not take a write within CLIENT_TIMEOUT_SECS, or failed.
struct Lost;

/// Writes frames, giving up when the client does not take them within CLIENT_TIMEOUT_SECS: a
/// client that stopped reading must not pin its task forever.
async fn write<F: AsRef<[u8]>>(
    ctx: &SessionContext,
    writer: &mut FrameWriter,
    frames: &[F],
) -> Result<(), Lost> {
    match timeout(ctx.timing.client_timeout, writer.send(frames)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) | Err(_) => Err(Lost),
    }
}

/// Writes messages (text frames), counted in `messages_out`.
async fn send<F: AsRef<[u8]>>(
    ctx: &SessionContext,
    writer: &mut FrameWriter,
    frames: &[F],
) -> Result<(), Lost> {
    write(ctx, writer, frames).await?;
    ctx.metrics.messages_out.inc_by(frames.len() as u64);
    Ok(())
}
