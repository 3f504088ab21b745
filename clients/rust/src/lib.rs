//! A tokio client for the ticketgate gateway, with the behaviour of the JavaScript reference
//! client (`client/ticketgate.js` in the gateway's repository):
//!
//! - every connection attempt trades the JWT for a fresh single-use ticket (`GET /token/ws`),
//!   opens `/demo?token=…` and sends the JWT as the first message;
//! - a lost connection is made again with exponential backoff and jitter, honouring the
//!   gateway's `Retry-After`; 4400, 4401 and 4403 end the client instead ([`Error::Closed`]);
//! - the JWT is refreshed in-band when the gateway says it is expiring, and a subscription
//!   token before it runs out;
//! - channels are subscribed again after every reconnect with `since`, so the publications
//!   missed meanwhile arrive first, in offset order, and none twice.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use ticketgate_client::Client;
//!
//! # async fn run() -> Result<(), ticketgate_client::Error> {
//! let client = Client::builder("http://127.0.0.1:8080")
//!     .jwt(|| async { Ok("<the user's JWT>".to_owned()) })
//!     .connect()
//!     .await?;
//! let mut orders = client.subscribe("orders:42");
//! orders.ready().await?;
//! while let Some(publication) = orders.next().await {
//!     println!("{:?}", publication?);
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod connection;
pub mod protocol;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use connection::{Command, Config, Connection};
use protocol::{ClientMessage, ServerMessage};

/// The WebSocket subprotocol the client offers and the gateway confirms.
pub const SUBPROTOCOL: &str = "ticketgate.v1";

/// Close codes after which reconnecting cannot help: the application must act.
pub const FATAL_CLOSE_CODES: [u16; 3] = [4400, 4401, 4403];

/// An error from the application's callbacks (the JWT, a subscription token).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type TokenFuture = Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>;
type JwtSource = Arc<dyn Fn() -> TokenFuture + Send + Sync>;
type TokenSource = Arc<dyn Fn(String) -> TokenFuture + Send + Sync>;

/// Reconnect delays: `initial`, then `factor` times longer each time up to `max`; `jitter` is
/// the share (0 to 1) of each delay that is randomised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How much longer each delay is than the one before.
    pub factor: f64,
    /// The share of each delay that is random (0 to 1).
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before reconnect number `step` (from 0).
    pub fn delay(&self, step: u32) -> Duration {
        self.delay_rolled(step, fastrand::f64())
    }

    /// [`delay`](Self::delay) with `roll` (0 to 1) as the random draw: for programs that
    /// must be the same every run (a load generator's seeded clients).
    pub fn delay_rolled(&self, step: u32, roll: f64) -> Duration {
        let base = (self.initial.as_secs_f64() * self.factor.powi(step.min(64) as i32))
            .min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(base * (1.0 - jitter) + roll.clamp(0.0, 1.0) * base * jitter)
    }

    /// The wait after the gateway asked for `asked` (`Retry-After`): that long, plus up to
    /// `jitter` of it again so that refused clients do not all return at once; `roll` (0 to
    /// 1) is the random draw. It replaces the backoff without growing it.
    pub fn after_retry_after(&self, asked: Duration, roll: f64) -> Duration {
        asked.mul_f64(1.0 + roll.clamp(0.0, 1.0) * self.jitter.clamp(0.0, 1.0))
    }
}

/// Where the client is, with the JavaScript client's state names ([`State::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started.
    Idle,
    /// Fetching a ticket and opening the first connection.
    Connecting,
    /// Open; the JWT is sent and its answer awaited.
    Authenticating,
    /// Authenticated: messages flow.
    Authenticated,
    /// Lost; waiting out the backoff, then connecting again.
    Reconnecting,
    /// Ended for good.
    Closed,
}

impl State {
    /// `idle`, `connecting`, `authenticating`, `authenticated`, `reconnecting` or `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Authenticating => "authenticating",
            State::Authenticated => "authenticated",
            State::Reconnecting => "reconnecting",
            State::Closed => "closed",
        }
    }
}

/// Whether a [`Message`] went to every connection or to this user's, or says what may have
/// been missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// To every connection (`POST /api/broadcast`).
    Broadcast,
    /// To this user's connections (`POST /api/users/{id}/messages`).
    Message,
    /// The gateway node lost its place in MongoDB's stream (docs/PROTOCOL.md, "When a node
    /// loses its place"): broadcasts, user messages and the publications of the channels
    /// without history that `data` lists (a JSON array) may be gone. Subscriptions with
    /// history are subscribed again with `since` by the client itself.
    Missed,
}

/// A broadcast, or a message for this user (`POST /api/users/{id}/messages`).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Broadcast or message.
    pub kind: MessageKind,
    /// The JSON the server API was given.
    pub data: Value,
}

/// A channel's publication; `offset` and `epoch` in a history namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The channel it was published in.
    pub channel: String,
    /// The published JSON.
    pub data: Value,
    /// Its place in the channel's history (history namespaces).
    pub offset: Option<u64>,
    /// The history's epoch (history namespaces).
    pub epoch: Option<String>,
}

/// Why publications were lost to a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// After a reconnect, the missed publications could not be recovered (trimmed or
    /// expired history, a new epoch).
    NotRecovered,
    /// An offset was skipped.
    Gap,
}

/// Publications were lost to a subscription: reload the channel's state from the app.
#[derive(Debug, Clone, PartialEq)]
pub struct Resync {
    /// The channel that lost publications.
    pub channel: String,
    /// How they were lost.
    pub reason: ResyncReason,
    /// Where the subscription goes on from.
    pub offset: u64,
    /// The history's epoch from here on.
    pub epoch: String,
}

/// One subscriber of a channel, as presence lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PresenceClient {
    /// The subscriber's user.
    pub user_id: String,
    /// Unique in the cluster: `c<n>@<node id>`.
    pub connection_id: String,
    /// The node holding the connection.
    pub node: String,
}

/// Where a client publication went: set in a history namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its offset in the channel's history.
    pub offset: Option<u64>,
    /// The history's epoch.
    pub epoch: Option<String>,
}

/// Everything that can go wrong, as the gateway says it.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// `GET /token/ws` refused: its status, the gateway's code and its `Retry-After`.
    Ticket {
        /// The HTTP status (0: no JWT source was given).
        status: u16,
        /// The gateway's error code (`invalid_token`, `rate_limited`, …).
        code: String,
        /// The gateway's words.
        message: String,
        /// How long the gateway asked to wait.
        retry_after: Option<Duration>,
    },
    /// A refused request, with the gateway's code and the channel it named.
    Channel {
        /// The gateway's error code (`permission_denied`, `unknown_namespace`, …).
        code: String,
        /// The gateway's words.
        message: String,
        /// The channel the request named.
        channel: Option<String>,
        /// A publication refused by the app's backend: its error object.
        detail: Option<Box<Value>>,
    },
    /// A failed RPC: `detail` is the backend's error object as written, `None` for the
    /// gateway's own errors (`upstream_unavailable`, `upstream_timeout`, …).
    Rpc {
        /// The error's `code`, as the backend (or the gateway) wrote it.
        code: Value,
        /// Its `message`.
        message: String,
        /// The backend's whole error object; `None` for the gateway's own errors.
        detail: Option<Box<Value>>,
    },
    /// The connection ended for good (4400, 4401, 4403, or [`Client::close`]: 1000).
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// No authenticated connection right now; the client is reconnecting.
    NotConnected,
    /// The gateway could not be reached, or did not upgrade (the cause, for logs).
    Unreachable {
        /// What went wrong, with its causes.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Ticket {
                status,
                code,
                message,
                ..
            } => write!(
                f,
                "the gateway refused a ticket (HTTP {status} {code}): {message}"
            ),
            Error::Channel { code, message, .. } => write!(f, "{code}: {message}"),
            Error::Rpc { code, message, .. } => write!(f, "rpc failed ({code}): {message}"),
            Error::Closed { code, reason } => write!(f, "closed with {code}: {reason}"),
            Error::NotConnected => f.write_str("not connected"),
            Error::Unreachable { message } => {
                write!(f, "the gateway could not be reached: {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

/// Builds a [`Client`]: [`Client::builder`], then [`ClientBuilder::jwt`], then
/// [`ClientBuilder::connect`].
pub struct ClientBuilder {
    base_url: String,
    jwt: Option<JwtSource>,
    token_path: String,
    socket_path: String,
    backoff: Backoff,
}

impl ClientBuilder {
    /// The user's current JWT, asked for every ticket and every in-band refresh.
    pub fn jwt<F, Fut>(mut self, source: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        self.jwt = Some(Arc::new(move || Box::pin(source())));
        self
    }

    /// Where tickets are minted (default `/token/ws`).
    pub fn token_path(mut self, path: impl Into<String>) -> Self {
        self.token_path = path.into();
        self
    }

    /// Where the WebSocket opens (default `/demo`).
    pub fn socket_path(mut self, path: impl Into<String>) -> Self {
        self.socket_path = path.into();
        self
    }

    /// The reconnect delays (default 0.5 s doubling up to 30 s, half of each random).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Starts connecting (and reconnecting, for the client's life); returns once the first
    /// connection authenticated, or the error that stopped it.
    pub async fn connect(self) -> Result<Client, Error> {
        let jwt = self.jwt.ok_or_else(|| Error::Ticket {
            status: 0,
            code: "no_jwt".into(),
            message: "give the client a JWT source (ClientBuilder::jwt)".into(),
            retry_after: None,
        })?;
        let (state_tx, mut state) = watch::channel(State::Idle);
        let shared = Arc::new(Shared {
            state: state_tx,
            user_id: Mutex::default(),
            ending: Mutex::default(),
        });
        let (commands, receiver) = mpsc::unbounded_channel();
        let config = Config {
            base_url: self.base_url.trim_end_matches('/').to_owned(),
            token_path: self.token_path,
            socket_path: self.socket_path,
            backoff: self.backoff,
            jwt,
        };
        let task = tokio::spawn(Connection::new(Arc::clone(&shared), config, receiver).run());
        let client = Client {
            shared,
            commands,
            task: Arc::new(Mutex::new(Some(task))),
        };
        loop {
            match *state.borrow_and_update() {
                State::Authenticated => return Ok(client),
                State::Closed => return Err(client.ending()),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(client.ending());
            }
        }
    }
}

pub(crate) struct Shared {
    pub(crate) state: watch::Sender<State>,
    pub(crate) user_id: Mutex<Option<String>>,
    /// Why the client stopped for good.
    pub(crate) ending: Mutex<Option<Error>>,
}

/// A connected client; cheap to clone (every clone drives the same connection).
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Client {
    /// Starts building a client for the gateway at `base_url` (`http://…` or `https://…`).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            jwt: None,
            token_path: "/token/ws".into(),
            socket_path: "/demo".into(),
            backoff: Backoff::default(),
        }
    }

    /// Where the client is now.
    pub fn state(&self) -> State {
        *self.shared.state.borrow()
    }

    /// The authenticated user (the JWT's `sub`).
    pub fn user_id(&self) -> Option<String> {
        lock(&self.shared.user_id).clone()
    }

    /// Broadcasts and messages for this user, from now until the client ends (then the
    /// stream yields the [`Error::Closed`] that ended it, or just ends after [`Client::close`]).
    pub fn messages(&self) -> impl Stream<Item = Result<Message, Error>> + Send + Unpin + 'static {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.command(Command::Messages(sender));
        Receiving(receiver)
    }

    /// Subscribes to `channel` now (or once connected) and after every reconnect.
    pub fn subscribe(&self, channel: impl Into<String>) -> Subscription {
        self.subscribe_with(channel, None)
    }

    /// Subscribes with a subscription token from `token(channel)`, asked again for every
    /// subscribe and before the current token runs out.
    pub fn subscribe_with_token<F, Fut>(&self, channel: impl Into<String>, token: F) -> Subscription
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, BoxError>> + Send + 'static,
    {
        let source: TokenSource = Arc::new(move |channel| Box::pin(token(channel)));
        self.subscribe_with(channel, Some(source))
    }

    fn subscribe_with(
        &self,
        channel: impl Into<String>,
        token: Option<TokenSource>,
    ) -> Subscription {
        let channel = channel.into();
        let (publications, receiver) = mpsc::unbounded_channel();
        let (resyncs, resync_receiver) = mpsc::unbounded_channel();
        let (ready, ready_receiver) = oneshot::channel();
        self.command(Command::Subscribe {
            channel: channel.clone(),
            token,
            publications,
            resyncs,
            ready,
        });
        Subscription {
            channel,
            client: self.clone(),
            publications: receiver,
            resyncs: Some(resync_receiver),
            ready: Some(ready_receiver),
        }
    }

    /// Calls `method` on the app's backend with `data`: its result, or [`Error::Rpc`].
    pub async fn rpc(&self, method: &str, data: Value) -> Result<Value, Error> {
        let call = ClientMessage::Rpc {
            id: None,
            method: method.to_owned(),
            data,
        };
        match self.request(call).await {
            Ok(ServerMessage::RpcResult { result, .. }) => Ok(result),
            Ok(ServerMessage::RpcError { error, .. }) => Err(rpc_error(error)),
            Ok(other) => Err(unexpected(&other)),
            Err(Error::Channel { code, message, .. }) => Err(Error::Rpc {
                code: Value::String(code),
                message,
                detail: None,
            }),
            Err(other) => Err(other),
        }
    }

    /// Publishes `data` into `channel` (a namespace with `client_publish`): where it went, or
    /// [`Error::Channel`].
    pub async fn publish(&self, channel: &str, data: Value) -> Result<Published, Error> {
        let publish = ClientMessage::Publish {
            id: None,
            channel: channel.to_owned(),
            data,
        };
        match self.request(publish).await? {
            ServerMessage::Published { offset, epoch, .. } => Ok(Published { offset, epoch }),
            other => Err(unexpected(&other)),
        }
    }

    /// Closes for good: streams end, and nothing reconnects.
    pub async fn close(&self) {
        self.command(Command::Close);
        let task = lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    async fn request(&self, message: ClientMessage) -> Result<ServerMessage, Error> {
        let (reply, answer) = oneshot::channel();
        self.command(Command::Request { message, reply });
        answer.await.unwrap_or_else(|_| Err(self.ending()))
    }

    fn command(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    fn ending(&self) -> Error {
        lock(&self.shared.ending).clone().unwrap_or(Error::Closed {
            code: 1000,
            reason: "client closed".into(),
        })
    }
}

/// One channel, made by [`Client::subscribe`]: a [`Stream`] of its publications.
pub struct Subscription {
    channel: String,
    client: Client,
    publications: mpsc::UnboundedReceiver<Result<Publication, Error>>,
    resyncs: Option<mpsc::UnboundedReceiver<Resync>>,
    ready: Option<oneshot::Receiver<Result<(), Error>>>,
}

impl Subscription {
    /// The channel's name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Returns once subscribed; [`Error::Channel`] with the gateway's code when refused.
    pub async fn ready(&mut self) -> Result<(), Error> {
        match self.ready.take() {
            Some(ready) => ready.await.unwrap_or_else(|_| Err(self.client.ending())),
            None => Ok(()),
        }
    }

    /// The resync events (publications that could not be recovered); taken once.
    pub fn resyncs(&mut self) -> impl Stream<Item = Resync> + Send + Unpin + 'static {
        let receiver = self
            .resyncs
            .take()
            .unwrap_or_else(|| mpsc::unbounded_channel().1);
        Receiving(receiver)
    }

    /// Who is subscribed, on every node (namespaces with presence).
    pub async fn presence(&self) -> Result<Vec<PresenceClient>, Error> {
        let ask = ClientMessage::Presence {
            id: None,
            channel: self.channel.clone(),
        };
        match self.client.request(ask).await? {
            ServerMessage::Presence { clients, .. } => Ok(clients),
            other => Err(unexpected(&other)),
        }
    }

    /// Leaves the channel: the stream ends, and no resubscribe follows.
    pub fn unsubscribe(self) {
        self.client.command(Command::Unsubscribe {
            channel: self.channel,
        });
    }
}

impl Stream for Subscription {
    type Item = Result<Publication, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.publications.poll_recv(cx)
    }
}

/// What the connection's task sends one handle, as a stream.
struct Receiving<T>(mpsc::UnboundedReceiver<T>);

impl<T> Stream for Receiving<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// A failed RPC: the backend's error object, or the gateway's own (`upstream_unavailable`, …:
/// only `code` and `message`), which has no `detail`.
fn rpc_error(failure: Value) -> Error {
    let code = failure["code"].clone();
    let message = failure["message"].as_str().unwrap_or_default().to_owned();
    let own = [
        "upstream_unavailable",
        "upstream_timeout",
        "too_many_requests",
        "upstream_disabled",
    ]
    .iter()
    .any(|c| code == *c)
        && failure
            .as_object()
            .is_some_and(|o| o.keys().all(|k| k == "code" || k == "message"));
    Error::Rpc {
        code,
        message,
        detail: (!own).then(|| Box::new(failure)),
    }
}

/// An answer of another type than the request's (a gateway of another version).
fn unexpected<D: fmt::Debug>(answer: &ServerMessage<D>) -> Error {
    Error::Channel {
        code: "unexpected_answer".into(),
        message: format!("{answer:?}"),
        channel: None,
        detail: None,
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
