//! One task per connection, as a typed state machine over any [`Transport`]:
//! `Connection<Unauthenticated, T>` → [`Connection::authenticate`] →
//! `Connection<Authenticated, T>` → [`Closing`].
//!
//! Only the authenticated state holds a [`Membership`], so a connection cannot receive a
//! broadcast or a heartbeat probe before it has authenticated: the code to do so does not
//! type-check. Every path ends in one [`Closing`], which tells the client once.
//!
//! The session never sees a frame or a socket: its transport (`crate::wire::WebSocket`, or
//! another) turns the client's bytes into [`ClientEvent`]s and writes what the session hands
//! it. The authenticated loop is in [`serve`].

pub mod calls;
pub mod channels;
pub mod close;
pub mod expiry;
pub mod heartbeat;
mod publish;
pub mod recovery;
pub mod rules;
mod serve;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures_util::FutureExt;
use tokio::time::{Instant, timeout};

use crate::bus::Bus;
use crate::channels::{ChannelName, ClaimGrants, Grant};
use crate::hub::{ConnectionId, Fell, Hub, Membership, OpenConnection};
use crate::jwt::{JwtRejection, JwtVerifier};
use crate::lifecycle::{EventKind, Lifecycle, Subject};
use crate::metrics::Metrics;
use crate::protocol::ServerMessage;
use crate::store::{PresenceStore, RevocationStore};
use crate::upstream::Upstream;
use calls::Calls;
pub use channels::ChannelPolicy;
use channels::TokenExpiries;
pub use close::CloseReason;
use expiry::Expiry;
use heartbeat::Heartbeat;
pub use transport::{ClientEvent, Transport, TransportKind};

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
    /// Spans, when tracing is on (also the mint's, openings' and the server API's).
    pub telemetry: crate::telemetry::Telemetry,
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

pub struct Connection<State, T> {
    open: OpenConnection,
    transport: T,
    state: State,
}

/// Opened with a valid ticket (whose user the connection slot records); waiting for the JWT.
/// Sends nothing but what the transport itself owes (a WebSocket Pong). Reads messages of at
/// most [`PRE_AUTH_MAX_MESSAGE_BYTES`].
pub struct Unauthenticated {
    /// The client's address, as the opening request saw it (behind a trusted proxy, the
    /// forwarded one).
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
    /// Probes a quiet client, and ends a silent one.
    heartbeat: Heartbeat,
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
    /// The server-made and token-held subscriptions a lost stream ended with `resubscribe`:
    /// the client's subscribe takes them back with the grant they had, needing no token or
    /// claim (docs/PROTOCOL.md, "When a node loses its place").
    resubscribable: HashMap<ChannelName, Grant>,
}

/// The end of a connection: why, and the means to say so.
pub struct Closing<T> {
    open: OpenConnection,
    transport: T,
    reason: CloseReason,
}

/// What the connection task does from opening to close.
///
/// Every connection keeps this task for its whole life, so its size is every connection's
/// cost (tests/api/task_size.rs holds it). rustc keeps the storage of a value moved from one
/// local to another across an `.await`, so the connection travels in boxes: in from the
/// opening, out of the authentication (which itself runs boxed), and served by reference.
pub fn run<T: Transport>(
    ctx: Arc<SessionContext>,
    open: OpenConnection,
    transport: T,
    client_ip: Option<IpAddr>,
) -> impl Future<Output = ()> {
    let connection = Box::new(Connection {
        open,
        transport,
        state: Unauthenticated { client_ip },
    });
    live(ctx, connection)
}

async fn live<T: Transport>(
    ctx: Arc<SessionContext>,
    connection: Box<Connection<Unauthenticated, T>>,
) {
    let started = Instant::now();
    let mut authenticated = match Box::pin(connection.authenticate(&ctx)).await {
        Ok(authenticated) => authenticated,
        Err(closing) => {
            if let Some(code @ (4400 | 4401 | 4408)) = closing.reason.code() {
                ctx.metrics
                    .auth_failures
                    .with_label_values(&[&code.to_string()])
                    .inc();
            }
            return Box::pin(closing.finish(&ctx, started)).await;
        }
    };
    let since = Instant::now();
    let reason = authenticated.serve(&ctx).await;
    let closing = (*authenticated).leave(&ctx, reason);
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
    Box::pin(closing.finish(&ctx, started)).await;
}

impl<S, T> Connection<S, T> {
    fn closing(self, reason: CloseReason) -> Closing<T> {
        Closing {
            open: self.open,
            transport: self.transport,
            reason,
        }
    }

    fn id(&self) -> ConnectionId {
        self.open.id
    }
}

impl<T: Transport> Connection<Unauthenticated, T> {
    /// Waits up to AUTH_TIMEOUT_SECS for `{"type":"jwt","token":…}` whose `sub` is the ticket's user.
    /// Both ways out are boxed: whatever the task holds across a later `.await` stays in it.
    pub async fn authenticate(
        self: Box<Self>,
        ctx: &SessionContext,
    ) -> Result<Box<Connection<Authenticated, T>>, Box<Closing<T>>> {
        (*self).authenticate_unboxed(ctx).await
    }

    async fn authenticate_unboxed(
        mut self,
        ctx: &SessionContext,
    ) -> Result<Box<Connection<Authenticated, T>>, Box<Closing<T>>> {
        let first = first_text_message(ctx, &mut self.transport);
        let outcome = tokio::select! {
            outcome = timeout(ctx.timing.auth_timeout, first) => outcome,
            kick = self.open.kicked() => return Err(Box::new(self.closing(CloseReason::Kicked(kick)))),
        };
        let text = match outcome {
            Err(_) => return Err(Box::new(self.closing(CloseReason::AuthTimeout))),
            Ok(Err(reason)) => return Err(Box::new(self.closing(reason))),
            Ok(Ok(text)) => text,
        };
        ctx.metrics.messages_in.inc();
        let span = ctx.telemetry.server("connection.authenticate");
        span.set_with("connection.id", || self.id().to_string());
        let verified = match rules::check_first_message(&text, &ctx.jwt, self.open.user_id()) {
            Ok(verified) => verified,
            Err(reason) => {
                span.fail("refused");
                return Err(Box::new(self.closing(reason)));
            }
        };
        span.set_with("enduser.id", || verified.sub.clone());
        // Join (registering the jti) before checking revocation: a revocation that lands in
        // between is then either seen here or kicks the registered connection.
        let membership = ctx.hub.join(&self.open, verified.jti.as_deref());
        if let Err(reason) = ctx.not_revoked(verified.jti.as_deref()).await {
            return Err(Box::new(self.closing(reason)));
        }
        let welcome = ServerMessage::Authenticated {
            user_id: &verified.sub,
            expires_at: verified.expires_at,
            id: None,
        }
        .encode();
        if ctx.send(&mut self.transport, &[&welcome]).await.is_err() {
            return Err(Box::new(self.closing(CloseReason::ConnectionLost)));
        }
        log::info!(
            connection_id:% = self.id(), user_id = verified.sub.as_str();
            "{} authenticated as user {}", self.id(), verified.sub
        );
        ctx.metrics.authentications.inc();
        ctx.lifecycle.emit(
            ctx.subject(self.open.id, &verified.sub),
            EventKind::Connect {
                jti: verified.jti.clone(),
                client_ip: self.state.client_ip,
                transport: T::KIND.as_str().to_owned(),
            },
        );
        let connection = self.open.id;
        let now = Instant::now();
        Ok(Box::new(Connection {
            open: self.open,
            transport: self.transport,
            state: Authenticated {
                expiry: ctx.timing.expiry_of(verified.expires_at),
                heartbeat: Heartbeat::new(now, ctx.timing.heartbeat_interval),
                connection,
                user_id: verified.sub,
                membership,
                claims: ClaimGrants::from_claim(&verified.channels),
                publish_grants: ClaimGrants::from_claim(&verified.publish),
                client_ip: self.state.client_ip,
                tokens: TokenExpiries::default(),
                jti: verified.jti,
                calls: Calls::default(),
                resubscribable: HashMap::new(),
            },
        }))
    }
}

/// The first message, which must be text of at most [`PRE_AUTH_MAX_MESSAGE_BYTES`]. What the
/// transport owes the client meanwhile (a WebSocket Pong, which RFC 6455 §5.5.2 requires) is
/// the only thing written before the JWT checks out, and the deadline around this call does
/// not move for it.
async fn first_text_message<T: Transport>(
    ctx: &SessionContext,
    transport: &mut T,
) -> Result<ByteString, CloseReason> {
    loop {
        match transport.next_event(PRE_AUTH_MAX_MESSAGE_BYTES).await? {
            ClientEvent::Alive => {
                if ctx.written(transport.send(&[])).await.is_err() {
                    return Err(CloseReason::ConnectionLost);
                }
            }
            ClientEvent::Closed(payload) => return Err(CloseReason::ClientClosed(payload)),
            ClientEvent::Text(text) => return Ok(text),
            ClientEvent::Binary => {
                return Err(CloseReason::MalformedAuth(
                    "the first message must be a text frame",
                ));
            }
        }
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

impl<T: Transport> Closing<T> {
    /// Tells the client why (if the transport still can) and ends the connection; the
    /// connection stops counting as open only after that.
    async fn finish(self, ctx: &SessionContext, started: Instant) {
        let Closing {
            open,
            mut transport,
            reason,
        } = self;
        let told = ctx.written(transport.close(&reason)).await.is_ok();
        let code = reason
            .code()
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        ctx.metrics.closes.with_label_values(&[&code]).inc();
        let message = format!(
            "{} closed: code {code} after {:.1}s",
            open.id,
            started.elapsed().as_secs_f64()
        );
        // A close without a code (the socket just ended) has no `code` field.
        match reason.code() {
            Some(code) => log::info!(connection_id:% = open.id, code = code; "{message}"),
            None => log::info!(connection_id:% = open.id; "{message}"),
        }
        drop(open);
        if told {
            let _ = timeout(CLOSE_LINGER, transport.linger()).await;
        }
    }
}

/// How long a closed connection waits for the client to end its side.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// The transport did not take a write within CLIENT_TIMEOUT_SECS, or failed.
struct Lost;

impl SessionContext {
    /// A write, given up when the client does not take it within CLIENT_TIMEOUT_SECS: a
    /// client that stopped reading must not pin its task forever. Not an `async fn`: one
    /// would keep the write's future twice (its argument, and the timeout around it) in every
    /// connection's task.
    fn written<W: Future<Output = std::io::Result<()>>>(
        &self,
        write: W,
    ) -> impl Future<Output = Result<(), Lost>> + use<W> {
        timeout(self.timing.client_timeout, write).map(|written| match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Lost),
        })
    }

    /// Writes messages for one connection, counted in `messages_out`.
    async fn send<T: Transport>(&self, transport: &mut T, messages: &[&str]) -> Result<(), Lost> {
        self.written(transport.send(messages)).await?;
        self.metrics.messages_out.inc_by(messages.len() as u64);
        Ok(())
    }
}
