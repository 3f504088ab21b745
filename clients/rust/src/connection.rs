//! The task behind a [`Client`](crate::Client): one connection at a time, made again after
//! every loss with a fresh ticket, and the subscriptions, requests and feeds it serves. The
//! handles talk to it by commands; it alone touches the socket, so a subscribe's reply and the
//! recovered publications after it are handled in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Message as Frame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{
    Backoff, Error, FATAL_CLOSE_CODES, JwtSource, Message, MessageKind, Publication, Resync,
    ResyncReason, SUBPROTOCOL, Shared, State, TokenSource, lock,
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
        message: Value,
        reply: oneshot::Sender<Result<Value, Error>>,
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
    Reply(oneshot::Sender<Result<Value, Error>>),
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
                } => wait.mul_f64(1.0 + fastrand::f64() * self.config.backoff.jitter),
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
        if send(&mut socket, &json!({"type": "jwt", "token": jwt}))
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
        let response = self
            .http
            .get(url)
            .bearer_auth(jwt)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|_| Error::NotConnected)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["token"].as_str() {
            Some(ticket) if status == 200 => Ok(ticket.to_owned()),
            _ => Err(Error::Ticket {
                status,
                code: body["error"].as_str().unwrap_or("unknown").to_owned(),
                message: body["message"].as_str().unwrap_or_default().to_owned(),
                retry_after,
            }),
        }
    }

    async fn open(&self, ticket: &str) -> Option<Socket> {
        let base = self.config.base_url.replacen("http", "ws", 1);
        let url = format!("{base}{}?token={ticket}", self.config.socket_path);
        let mut request = url.into_client_request().ok()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let connecting = tokio_tungstenite::connect_async(request);
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
                            let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
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
                            let _ = send(socket, &json!({"type": "unsubscribe", "channel": channel})).await;
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
    async fn on_message(&mut self, message: Value) -> Vec<Value> {
        if let Some(id) = message["id"].as_u64()
            && let Some(waiting) = self.waiting.remove(&id)
        {
            return self.on_reply(waiting, message).await;
        }
        match message["type"].as_str().unwrap_or_default() {
            "authenticated" => {
                *lock(&self.shared.user_id) = message["user_id"].as_str().map(str::to_owned);
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
            "token_expiring" => match (self.config.jwt)().await {
                Ok(jwt) => vec![json!({"type": "jwt", "token": jwt})],
                Err(_) => Vec::new(),
            },
            kind @ ("broadcast" | "message") => {
                let kind = if kind == "broadcast" {
                    MessageKind::Broadcast
                } else {
                    MessageKind::Message
                };
                let data = message["data"].clone();
                self.feeds.retain(|feed| {
                    feed.send(Ok(Message {
                        kind,
                        data: data.clone(),
                    }))
                    .is_ok()
                });
                Vec::new()
            }
            "publication" => {
                let name = message["channel"].as_str().unwrap_or_default();
                if let Some(channel) = self.channels.get_mut(name) {
                    let offset = message["offset"].as_u64();
                    let epoch = message["epoch"].as_str();
                    if channel.advance(name, offset, epoch) {
                        let _ = channel.publications.send(Ok(Publication {
                            channel: name.to_owned(),
                            data: message["data"].clone(),
                            offset,
                            epoch: epoch.map(str::to_owned),
                        }));
                    }
                }
                Vec::new()
            }
            "unsubscribed" => {
                // Ended by the server: the stream ends.
                if let Some(name) = message["channel"].as_str() {
                    self.channels.remove(name);
                }
                Vec::new()
            }
            "subscription_expiring" => {
                let name = message["channel"].as_str().unwrap_or_default().to_owned();
                let refreshable = self
                    .channels
                    .get(&name)
                    .is_some_and(|channel| channel.token.is_some());
                if refreshable {
                    self.subscribe_message(&name, true)
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

    async fn on_reply(&mut self, waiting: Waiting, message: Value) -> Vec<Value> {
        let refused = (message["type"] == "error").then(|| Error::Channel {
            code: message["error"].as_str().unwrap_or_default().to_owned(),
            message: message["message"].as_str().unwrap_or_default().to_owned(),
            channel: message["channel"].as_str().map(str::to_owned),
            detail: message.get("detail").cloned().map(Box::new),
        });
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
                let Some(subscribed) = self.channels.get_mut(&channel) else {
                    return Vec::new();
                };
                let recovered = message["recovered"].as_bool();
                if let Some(epoch) = message["epoch"].as_str()
                    && !refresh
                    && recovered != Some(true)
                {
                    // A first subscribe, or what was missed is gone: live from here on.
                    subscribed.epoch = Some(epoch.to_owned());
                    subscribed.offset = message["offset"].as_u64();
                }
                if let Some(ready) = subscribed.ready.take() {
                    let _ = ready.send(Ok(()));
                }
                if recovered == Some(false) {
                    let _ = subscribed.resyncs.send(Resync {
                        channel,
                        reason: ResyncReason::NotRecovered,
                        offset: message["offset"].as_u64().unwrap_or_default(),
                        epoch: message["epoch"].as_str().unwrap_or_default().to_owned(),
                    });
                }
                Vec::new()
            }
        }
    }

    /// A subscribe for `channel` (with `since` to recover, and a fresh token when it has a
    /// source), numbered; None when it cannot be made now.
    async fn subscribe_message(&mut self, name: &str, refresh: bool) -> Option<Value> {
        let channel = self.channels.get(name)?;
        let mut message = json!({"type": "subscribe", "channel": name});
        if !refresh && let (Some(epoch), Some(offset)) = (&channel.epoch, channel.offset) {
            message["since"] = json!({"offset": offset, "epoch": epoch});
        }
        if let Some(token) = channel.token.clone() {
            message["token"] = Value::String(token(name.to_owned()).await.ok()?);
        }
        let waiting = Waiting::Subscribe {
            channel: name.to_owned(),
            refresh,
        };
        Some(self.numbered(message, waiting))
    }

    fn numbered(&mut self, mut message: Value, waiting: Waiting) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        message["id"] = json!(id);
        self.waiting.insert(id, waiting);
        message
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
        self.set_state(State::Closed);
    }

    fn set_state(&self, state: State) {
        self.shared.state.send_replace(state);
    }
}

async fn send(socket: &mut Socket, message: &Value) -> Result<(), ()> {
    socket
        .send(Frame::text(message.to_string()))
        .await
        .map_err(|_| ())
}
