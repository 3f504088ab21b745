//! The task behind a [`Client`](crate::Client): one connection at a time, made again after
//! every loss with a fresh ticket, and the subscriptions, requests and feeds it serves. The
//! handles talk to it by commands; it alone touches the socket, so a subscribe's reply and the
//! recovered publications after it are handled in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{self, ClientMessage, Position, ServerMessage};
use crate::{
    Backoff, Error, FATAL_CLOSE_CODES, JwtSource, Message, MessageKind, Publication, Resync,
    ResyncReason, Shared, State, TokenSource, lock,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A quiet connection is probed this often…
const PING_EVERY: Duration = Duration::from_secs(20);
/// …and taken for dead after this long without a frame.
const SILENCE_LIMIT: Duration = Duration::from_secs(30);

pub(crate) struct Config {
    pub(crate) base_url: String,
    pub(crate) token_path: String,
    pub(crate) socket_path: String,
    pub(crate) backoff: Backoff,
    pub(crate) jwt: JwtSource,
}

pub(crate) enum Command {
    Request {
        message: ClientMessage,
        reply: oneshot::Sender<Result<ServerMessage, Error>>,
    },
    Subscribe {
        channel: String,
        token: Option<TokenSource>,
        publications: mpsc::UnboundedSender<Result<Publication, Error>>,
        resyncs: mpsc::UnboundedSender<Resync>,
        ready: oneshot::Sender<Result<(), Error>>,
    },
    Unsubscribe {
        channel: String,
    },
    Messages(mpsc::UnboundedSender<Result<Message, Error>>),
    Close,
}

struct Channel {
    token: Option<TokenSource>,
    publications: mpsc::UnboundedSender<Result<Publication, Error>>,
    resyncs: mpsc::UnboundedSender<Resync>,
    ready: Option<oneshot::Sender<Result<(), Error>>>,
    /// History namespaces: where this subscription's copy of the channel ends.
    epoch: Option<String>,
    offset: Option<u64>,
}

impl Channel {
    /// A publication from the gateway: false when this subscription had it already.
    fn advance(&mut self, name: &str, offset: Option<u64>, epoch: Option<&str>) -> bool {
        let (Some(offset), Some(epoch)) = (offset, epoch) else {
            return true;
        };
        let same_epoch = self.epoch.as_deref() == Some(epoch);
        if same_epoch && self.offset.is_some_and(|had| offset <= had) {
            return false;
        }
        let gap = same_epoch && self.offset.is_some_and(|had| offset > had + 1);
        self.epoch = Some(epoch.to_owned());
        self.offset = Some(offset);
        if gap {
            let _ = self.resyncs.send(Resync {
                channel: name.to_owned(),
                reason: ResyncReason::Gap,
                offset,
                epoch: epoch.to_owned(),
            });
        }
        true
    }
}

enum Waiting {
    Reply(oneshot::Sender<Result<ServerMessage, Error>>),
    Subscribe { channel: String, refresh: bool },
}

/// How one connection ended.
enum Ended {
    /// Lost (or refused): try again, after `retry_after` when the gateway said so.
    Retry {
        retry_after: Option<Duration>,
        authenticated: bool,
    },
    /// For good, with the error everything waiting gets.
    Fatal(Error),
    /// Closed by the application (or every handle dropped).
    Stopped,
}

pub(crate) struct Connection {
    shared: Arc<Shared>,
    config: Config,
    commands: mpsc::UnboundedReceiver<Command>,
    http: reqwest::Client,
    channels: HashMap<String, Channel>,
    feeds: Vec<mpsc::UnboundedSender<Result<Message, Error>>>,
    waiting: HashMap<u64, Waiting>,
    next_id: u64,
    authenticated: bool,
}

impl Connection {
    pub(crate) fn new(
        shared: Arc<Shared>,
        config: Config,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Connection {
            shared,
            config,
            commands,
            http: reqwest::Client::new(),
            channels: HashMap::new(),
            feeds: Vec::new(),
            waiting: HashMap::new(),
            next_id: 1,
            authenticated: false,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt = 0u32;
        let mut step = 0u32;
        loop {
            self.set_state(if attempt == 0 {
                State::Connecting
            } else {
                State::Reconnecting
            });
            let delay = match self.attempt().await {
                Ended::Stopped => return self.finish(None),
                Ended::Fatal(error) => return self.finish(Some(error)),
                Ended::Retry {
                    retry_after: Some(wait),
                    ..
                } => self.config.backoff.after_retry_after(wait, fastrand::f64()),
                Ended::Retry { authenticated, .. } => {
                    if authenticated {
                        step = 0;
                    }
                    step += 1;
                    self.config.backoff.delay(step - 1)
                }
            };
            attempt += 1;
            self.set_state(State::Reconnecting);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = &mut sleep => break,
                    command = self.commands.recv() => {
                        if !self.offline(command) {
                            return self.finish(None);
                        }
                    }
                }
            }
        }
    }

    /// A command while no connection is up; false when the client must stop.
    fn offline(&mut self, command: Option<Command>) -> bool {
        match command {
            None | Some(Command::Close) => false,
            Some(Command::Request { reply, .. }) => {
                let _ = reply.send(Err(Error::NotConnected));
                true
            }
            Some(command) => {
                self.register(command);
                true
            }
        }
    }

    /// Records a subscription, an unsubscription or a feed (whatever the connection).
    fn register(&mut self, command: Command) {
        match command {
            Command::Subscribe {
                channel,
                token,
                publications,
                resyncs,
                ready,
            } => {
                self.channels.insert(
                    channel,
                    Channel {
                        token,
                        publications,
                        resyncs,
                        ready: Some(ready),
                        epoch: None,
                        offset: None,
                    },
                );
            }
            Command::Unsubscribe { channel } => {
                self.channels.remove(&channel);
            }
            Command::Messages(feed) => self.feeds.push(feed),
            Command::Request { .. } | Command::Close => {}
        }
    }

    async fn attempt(&mut self) -> Ended {
        let jwt = match (self.config.jwt)().await {
            Ok(jwt) => jwt,
            Err(_) => {
                return Ended::Retry {
                    retry_after: None,
                    authenticated: false,
                };
            }
        };
        let ticket = match self.fetch_ticket(&jwt).await {
            Ok(ticket) => ticket,
            // A refused JWT does not get better by retrying; an outage might.
            Err(
                error @ Error::Ticket {
                    status: 401 | 403, ..
                },
            ) => return Ended::Fatal(error),
            Err(Error::Ticket { retry_after, .. }) => {
                return Ended::Retry {
                    retry_after,
                    authenticated: false,
                };
            }
            Err(_) => {
                return Ended::Retry {
                    retry_after: None,
                    authenticated: false,
                };
            }
        };
        let Some(mut socket) = self.open(&ticket).await else {
            return Ended::Retry {
                retry_after: None,
                authenticated: false,
            };
        };
        self.set_state(State::Authenticating);
        if send(&mut socket, &ClientMessage::Jwt { token: jwt })
            .await
            .is_err()
        {
            return Ended::Retry {
                retry_after: None,
                authenticated: false,
            };
        }
        let ended = self.serve(&mut socket).await;
        self.lost();
        ended
    }

    async fn fetch_ticket(&self, jwt: &str) -> Result<String, Error> {
        let url = format!("{}{}", self.config.base_url, self.config.token_path);
        protocol::request_ticket(&self.http, &url, jwt).await
    }

    async fn open(&self, ticket: &str) -> Option<Socket> {
        let url = protocol::socket_url(&self.config.base_url, &self.config.socket_path, ticket);
        let connecting = tokio_tungstenite::connect_async(protocol::socket_request(&url).ok()?);
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(Ok((socket, _))) => Some(socket),
            _ => None,
        }
    }

    /// The connection's life: frames, commands and the liveness probe, until it ends.
    async fn serve(&mut self, socket: &mut Socket) -> Ended {
        let mut heard = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_secs(5));
        let mut pinged = Instant::now();
        let mut authenticated = false;
        loop {
            tokio::select! {
                frame = socket.next() => {
                    heard = Instant::now();
                    match frame {
                        Some(Ok(Frame::Text(text))) => {
                            let Ok(message) = ServerMessage::parse(&text) else { continue };
                            let outgoing = self.on_message(message).await;
                            authenticated |= self.authenticated;
                            for message in outgoing {
                                if send(socket, &message).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Some(Ok(Frame::Close(frame))) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            if FATAL_CLOSE_CODES.contains(&code) {
                                return Ended::Fatal(Error::Closed { code, reason });
                            }
                            return Ended::Retry { retry_after: None, authenticated };
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return Ended::Retry { retry_after: None, authenticated },
                    }
                }
                command = self.commands.recv() => match command {
                    None | Some(Command::Close) => {
                        let _ = socket
                            .close(Some(CloseFrame { code: CloseCode::Normal, reason: "client closed".into() }))
                            .await;
                        return Ended::Stopped;
                    }
                    Some(Command::Request { message, reply }) => {
                        if !self.authenticated {
                            let _ = reply.send(Err(Error::NotConnected));
                            continue;
                        }
                        let message = self.numbered(message, Waiting::Reply(reply));
                        let _ = send(socket, &message).await;
                    }
                    Some(Command::Unsubscribe { channel }) => {
                        if self.channels.remove(&channel).is_some() && self.authenticated {
                            let _ = send(socket, &ClientMessage::Unsubscribe { id: None, channel }).await;
                        }
                    }
                    Some(command @ Command::Subscribe { .. }) => {
                        let channel = match &command {
                            Command::Subscribe { channel, .. } => channel.clone(),
                            _ => unreachable!("matched above"),
                        };
                        self.register(command);
                        if self.authenticated
                            && let Some(message) = self.subscribe_message(&channel, false).await
                        {
                            let _ = send(socket, &message).await;
                        }
                    }
                    Some(command) => self.register(command),
                },
                _ = ticker.tick() => {
                    // No frame at all for a while: the connection is dead even if the socket
                    // does not know. A closing handshake with a dead peer would never end.
                    if heard.elapsed() > SILENCE_LIMIT {
                        return Ended::Retry { retry_after: None, authenticated };
                    }
                    if pinged.elapsed() >= PING_EVERY {
                        pinged = Instant::now();
                        let _ = socket.send(Frame::Ping(Bytes::new())).await;
                    }
                }
            }
        }
    }

    /// Handles one message; what to send in answer.
    async fn on_message(&mut self, message: ServerMessage) -> Vec<ClientMessage> {
        if let Some(id) = message.id()
            && let Some(waiting) = self.waiting.remove(&id)
        {
            return self.on_reply(waiting, message).await;
        }
        match message {
            ServerMessage::Authenticated { user_id, .. } => {
                *lock(&self.shared.user_id) = Some(user_id);
                if self.authenticated {
                    return Vec::new();
                }
                self.authenticated = true;
                self.set_state(State::Authenticated);
                // A new connection holds nothing: every subscription is made again.
                let channels: Vec<String> = self.channels.keys().cloned().collect();
                let mut outgoing = Vec::new();
                for channel in channels {
                    outgoing.extend(self.subscribe_message(&channel, false).await);
                }
                outgoing
            }
            ServerMessage::TokenExpiring { .. } => match (self.config.jwt)().await {
                Ok(token) => vec![ClientMessage::Jwt { token }],
                Err(_) => Vec::new(),
            },
            ServerMessage::Broadcast { data, .. } => {
                self.deliver(MessageKind::Broadcast, data);
                Vec::new()
            }
            ServerMessage::Message { data } => {
                self.deliver(MessageKind::Message, data);
                Vec::new()
            }
            ServerMessage::Publication {
                channel: name,
                data,
                offset,
                epoch,
            } => {
                if let Some(channel) = self.channels.get_mut(&name)
                    && channel.advance(&name, offset, epoch.as_deref())
                {
                    let _ = channel.publications.send(Ok(Publication {
                        channel: name,
                        data,
                        offset,
                        epoch,
                    }));
                }
                Vec::new()
            }
            ServerMessage::Unsubscribed {
                channel, reason, ..
            } if reason.as_deref() == Some("resubscribe") => {
                // The node may have missed publications: subscribe again from the last
                // offset had, and recovery fills the gap.
                self.subscribe_message(&channel, false)
                    .await
                    .into_iter()
                    .collect()
            }
            ServerMessage::Unsubscribed { channel, .. } => {
                // Ended by the server: the stream ends.
                self.channels.remove(&channel);
                Vec::new()
            }
            ServerMessage::Missed { channels } => {
                self.deliver(MessageKind::Missed, serde_json::json!(channels));
                Vec::new()
            }
            ServerMessage::SubscriptionExpiring { channel, .. } => {
                let refreshable = self
                    .channels
                    .get(&channel)
                    .is_some_and(|held| held.token.is_some());
                if refreshable {
                    self.subscribe_message(&channel, true)
                        .await
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// A broadcast or a user message, to every feed still listening.
    fn deliver(&mut self, kind: MessageKind, data: serde_json::Value) {
        self.feeds.retain(|feed| {
            feed.send(Ok(Message {
                kind,
                data: data.clone(),
            }))
            .is_ok()
        });
    }

    async fn on_reply(&mut self, waiting: Waiting, message: ServerMessage) -> Vec<ClientMessage> {
        let refused = match &message {
            ServerMessage::Error {
                code,
                message,
                channel,
                detail,
                ..
            } => Some(Error::Channel {
                code: code.clone(),
                message: message.clone(),
                channel: channel.clone(),
                detail: detail.clone().map(Box::new),
            }),
            _ => None,
        };
        match waiting {
            Waiting::Reply(reply) => {
                let _ = reply.send(match refused {
                    Some(error) => Err(error),
                    None => Ok(message),
                });
                Vec::new()
            }
            Waiting::Subscribe { channel, refresh } => {
                if let Some(error) = refused {
                    if matches!(&error, Error::Channel { code, .. } if code == "unavailable") {
                        // MongoDB busy or away for a moment: asked again at once.
                        return self
                            .subscribe_message(&channel, refresh)
                            .await
                            .into_iter()
                            .collect();
                    }
                    if let Some(mut gone) = self.channels.remove(&channel) {
                        if let Some(ready) = gone.ready.take() {
                            let _ = ready.send(Err(error.clone()));
                        }
                        let _ = gone.publications.send(Err(error));
                    }
                    return Vec::new();
                }
                let ServerMessage::Subscribed {
                    offset,
                    epoch,
                    recovered,
                    ..
                } = message
                else {
                    return Vec::new();
                };
                let Some(subscribed) = self.channels.get_mut(&channel) else {
                    return Vec::new();
                };
                if let Some(epoch) = &epoch
                    && !refresh
                    && recovered != Some(true)
                {
                    // A first subscribe, or what was missed is gone: live from here on.
                    subscribed.epoch = Some(epoch.clone());
                    subscribed.offset = offset;
                }
                if let Some(ready) = subscribed.ready.take() {
                    let _ = ready.send(Ok(()));
                }
                if recovered == Some(false) {
                    let _ = subscribed.resyncs.send(Resync {
                        channel,
                        reason: ResyncReason::NotRecovered,
                        offset: offset.unwrap_or_default(),
                        epoch: epoch.unwrap_or_default(),
                    });
                }
                Vec::new()
            }
        }
    }

    /// A subscribe for `channel` (with `since` to recover, and a fresh token when it has a
    /// source), numbered; None when it cannot be made now.
    async fn subscribe_message(&mut self, name: &str, refresh: bool) -> Option<ClientMessage> {
        let channel = self.channels.get(name)?;
        let since = match (&channel.epoch, channel.offset) {
            (Some(epoch), Some(offset)) if !refresh => Some(Position {
                offset,
                epoch: epoch.clone(),
            }),
            _ => None,
        };
        let token = match channel.token.clone() {
            Some(source) => Some(source(name.to_owned()).await.ok()?),
            None => None,
        };
        let message = ClientMessage::Subscribe {
            id: None,
            channel: name.to_owned(),
            since,
            token,
        };
        let waiting = Waiting::Subscribe {
            channel: name.to_owned(),
            refresh,
        };
        Some(self.numbered(message, waiting))
    }

    fn numbered(&mut self, message: ClientMessage, waiting: Waiting) -> ClientMessage {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.insert(id, waiting);
        message.with_id(id)
    }

    /// The connection is gone: its requests fail; subscriptions wait for the next one.
    fn lost(&mut self) {
        self.authenticated = false;
        for (_, waiting) in self.waiting.drain() {
            if let Waiting::Reply(reply) = waiting {
                let _ = reply.send(Err(Error::NotConnected));
            }
        }
    }

    /// Stops for good: with `error` every stream yields it, without (a close) streams end.
    fn finish(&mut self, error: Option<Error>) {
        let ending = error.clone().unwrap_or(Error::Closed {
            code: 1000,
            reason: "client closed".into(),
        });
        *lock(&self.shared.ending) = Some(ending.clone());
        // Closed before anyone hears of the ending: an app that reads the state on hearing
        // it sees the end too.
        self.set_state(State::Closed);
        for (_, waiting) in self.waiting.drain() {
            if let Waiting::Reply(reply) = waiting {
                let _ = reply.send(Err(ending.clone()));
            }
        }
        for (_, mut channel) in self.channels.drain() {
            if let Some(ready) = channel.ready.take() {
                let _ = ready.send(Err(ending.clone()));
            }
            if let Some(error) = &error {
                let _ = channel.publications.send(Err(error.clone()));
            }
        }
        for feed in self.feeds.drain(..) {
            if let Some(error) = &error {
                let _ = feed.send(Err(error.clone()));
            }
        }
        // Requests still queued get the ending too.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Request { reply, .. } = command {
                let _ = reply.send(Err(ending.clone()));
            }
        }
    }

    fn set_state(&self, state: State) {
        self.shared.state.send_replace(state);
    }
}

async fn send(socket: &mut Socket, message: &ClientMessage) -> Result<(), ()> {
    socket
        .send(Frame::text(message.to_text()))
        .await
        .map_err(|_| ())
}
