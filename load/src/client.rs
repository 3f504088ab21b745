//! One simulated browser: JWT, ticket, upgrade from a chosen source address, authentication.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::de::IgnoredAny;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use ticketgate::jwt::JwtSigner;
use ticketgate_client::Error;
use ticketgate_client::protocol::{self, ClientMessage, ServerMessage};

use crate::deflate_socket::{DeflateSocket, Incoming};
use crate::sse_socket::SseSocket;

/// One client's connection: tokio-tungstenite's, ours where permessage-deflate is wanted, or
/// an SSE stream with its POSTs.
pub enum Socket {
    Plain(Box<WebSocketStream<TcpStream>>),
    Deflate(Box<DeflateSocket>),
    Sse(Box<SseSocket>),
}

/// How clients reach the gateway (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    Websocket,
    Sse,
}

impl Clients {
    /// The channels the `k`-th held connection subscribes to: `subscribe` of them, spaced
    /// `channels / subscribe` apart, so every channel gets the same number of subscribers.
    pub fn channels_of(&self, k: usize) -> Vec<String> {
        let step = (self.channels / self.subscribe.max(1)).max(1);
        (0..self.subscribe)
            .map(|j| format!("{CHANNEL_PREFIX}{}", (k + j * step) % self.channels))
            .collect()
    }
}

impl Socket {
    /// Subscribes to `channels`, all requests first, then waits for every `subscribed`.
    pub async fn subscribe(&mut self, channels: &[String]) -> Result<(), String> {
        let requests: Vec<String> = channels
            .iter()
            .map(|channel| {
                ClientMessage::Subscribe {
                    id: None,
                    channel: channel.clone(),
                    since: None,
                    token: None,
                }
                .to_text()
            })
            .collect();
        self.send_all(requests).await?;
        let mut confirmed = 0;
        while confirmed < channels.len() {
            match tokio::time::timeout(Duration::from_secs(30), self.next_message()).await {
                Ok(Ok(Some((ServerMessage::Subscribed { .. }, _)))) => confirmed += 1,
                Ok(Ok(Some((ServerMessage::Error { .. }, text)))) => {
                    return Err(format!("subscribe refused: {text}"));
                }
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => return Err("the connection ended while subscribing".into()),
                Ok(Err(e)) => return Err(format!("while subscribing: {e}")),
                Err(_) => return Err("no subscribed within 30 s".into()),
            }
        }
        Ok(())
    }

    /// Sends `texts` in one write where the library allows, as a page subscribing to its
    /// channels at once does.
    async fn send_all(&mut self, texts: Vec<String>) -> Result<(), String> {
        match self {
            Socket::Plain(ws) => {
                for text in texts {
                    ws.feed(Message::text(text))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                ws.flush().await.map_err(|e| e.to_string())
            }
            Socket::Deflate(ws) => {
                for text in texts {
                    ws.send_text(&text).await?;
                }
                Ok(())
            }
            Socket::Sse(sse) => sse.send_all(&texts).await,
        }
    }

    pub async fn send_text(&mut self, text: String) -> Result<(), String> {
        match self {
            Socket::Plain(ws) => ws
                .send(Message::text(text))
                .await
                .map_err(|e| e.to_string()),
            Socket::Deflate(ws) => ws.send_text(&text).await,
            Socket::Sse(sse) => sse.send_all(&[text]).await,
        }
    }

    /// The next text message (`Ok(None)` when the server closed); pings are answered.
    pub async fn next_text(&mut self) -> Result<Option<String>, String> {
        match self {
            Socket::Plain(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => return Ok(Some(text.to_string())),
                    Some(Ok(Message::Close(frame))) => {
                        return Err(format!("closed: {frame:?}"));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Ok(None),
                }
            },
            Socket::Deflate(ws) => match ws.next().await? {
                Incoming::Text(text) => Ok(Some(text)),
                Incoming::Close(code) => Err(format!("closed: {code:?}")),
            },
            Socket::Sse(sse) => sse.next().await,
        }
    }

    /// The next message the protocol knows, read without its data, with its text; skips text
    /// that is not a server message.
    pub async fn next_message(
        &mut self,
    ) -> Result<Option<(ServerMessage<IgnoredAny>, String)>, String> {
        loop {
            let Some(text) = self.next_text().await? else {
                return Ok(None);
            };
            if let Ok(message) = ServerMessage::parse(&text) {
                return Ok(Some((message, text)));
            }
        }
    }

    /// Compressed text received so far: bytes on the wire, bytes inflated.
    pub fn compressed_bytes(&self) -> Option<(u64, u64)> {
        match self {
            Socket::Plain(_) | Socket::Sse(_) => None,
            Socket::Deflate(ws) => Some((ws.wire_bytes, ws.inflated_bytes)),
        }
    }

    /// Reads until the connection ends, answering pings: what an idle client does.
    pub async fn drain(mut self) {
        while let Ok(Some(_)) = self.next_text().await {}
    }
}

/// One gateway node as clients reach it.
pub struct Gateway {
    pub base_url: String,
    pub addr: SocketAddr,
}

impl Gateway {
    pub fn parse(base_url: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(base_url).map_err(|e| format!("{base_url}: {e}"))?;
        let host: IpAddr = url
            .host_str()
            .unwrap_or("127.0.0.1")
            .parse()
            .map_err(|_| format!("{base_url}: name an IP address"))?;
        if !host.is_loopback() {
            return Err("load is only ever sent to loopback addresses".into());
        }
        Ok(Gateway {
            base_url: base_url.trim_end_matches('/').to_owned(),
            addr: SocketAddr::new(host, url.port_or_known_default().unwrap_or(80)),
        })
    }
}

/// What every simulated client shares.
pub struct Clients {
    /// Client `i` uses gateway `i % len`.
    pub gateways: Vec<Gateway>,
    pub signer: JwtSigner,
    pub http: reqwest::Client,
    pub source_addresses: u8,
    pub user_prefix: String,
    /// Negotiate permessage-deflate (the gateway needs WS_COMPRESSION=true).
    pub compression: bool,
    /// Subscriptions per connection, and the channels they are spread over.
    pub subscribe: usize,
    pub channels: usize,
    /// Every JWT gets a `jti` of its own (`--jti`).
    pub jti: bool,
    /// WebSocket or SSE (`--transport`).
    pub transport: TransportChoice,
    /// SSE: where client messages are posted (`--post-url`), when not the stream's node.
    pub post_url: Option<String>,
    /// Numbers the `jti`s.
    jtis: std::sync::atomic::AtomicU64,
}

/// The prefix of every channel the generator uses; its JWTs grant `load:*`.
pub const CHANNEL_PREFIX: &str = "load:c";

impl Clients {
    pub fn new(
        base_urls: &[String],
        secret: &str,
        source_addresses: u8,
        user_prefix: &str,
        compression: bool,
        (subscribe, channels): (usize, usize),
    ) -> Result<Self, String> {
        let gateways = base_urls
            .iter()
            .map(|url| Gateway::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if gateways.is_empty() {
            return Err("give at least one --url".into());
        }
        Ok(Clients {
            gateways,
            signer: JwtSigner::hs256(secret.as_bytes()),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .map_err(|e| e.to_string())?,
            source_addresses: source_addresses.max(1),
            user_prefix: user_prefix.to_owned(),
            compression,
            subscribe,
            channels: channels.max(1),
            jti: false,
            jtis: std::sync::atomic::AtomicU64::new(0),
            transport: TransportChoice::Websocket,
            post_url: None,
        })
    }

    /// Ticket request to `authenticated`: the socket and how long it took. A refused ticket is
    /// [`Error::Ticket`] (with the gateway's `Retry-After`); anything else is
    /// [`Error::Unreachable`] with what went wrong.
    pub async fn authenticate(&self, index: usize) -> Result<(Socket, Duration), Error> {
        let started = Instant::now();
        let gateway = &self.gateways[index % self.gateways.len()];
        let jwt = self.jwt_of(index);
        let ticket_url = format!("{}/token/ws", gateway.base_url);
        let ticket = protocol::request_ticket(&self.http, &ticket_url, &jwt).await?;
        let unreachable = |message: String| Error::Unreachable { message };
        let stream = self
            .connect_from_source(index, gateway)
            .await
            .map_err(unreachable)?;
        let mut ws = if self.transport == TransportChoice::Sse {
            let post_base = self.post_url.as_deref().unwrap_or(&gateway.base_url);
            Socket::Sse(Box::new(
                SseSocket::open(
                    stream,
                    &gateway.addr.to_string(),
                    &format!("/sse?token={ticket}"),
                    self.http.clone(),
                    post_base,
                )
                .await
                .map_err(unreachable)?,
            ))
        } else if self.compression {
            Socket::Deflate(Box::new(
                DeflateSocket::upgrade(
                    stream,
                    &gateway.addr.to_string(),
                    &format!("/demo?token={ticket}"),
                )
                .await
                .map_err(unreachable)?,
            ))
        } else {
            let url = protocol::socket_url(&gateway.base_url, "/demo", &ticket);
            Socket::Plain(Box::new(
                protocol::open_on(stream, &url, Some(light_config())).await?,
            ))
        };
        ws.send_text(ClientMessage::Jwt { token: jwt }.to_text())
            .await
            .map_err(|e| unreachable(format!("send jwt: {e}")))?;
        loop {
            let failure =
                match tokio::time::timeout(Duration::from_secs(30), ws.next_message()).await {
                    Ok(Ok(Some((ServerMessage::Authenticated { .. }, _)))) => {
                        return Ok((ws, started.elapsed()));
                    }
                    Ok(Ok(Some(_))) => continue,
                    Ok(Ok(None)) => "the connection ended before authenticating".to_owned(),
                    Ok(Err(e)) => format!("while authenticating: {e}"),
                    Err(_) => "no authenticated message within 30 s".to_owned(),
                };
            return Err(unreachable(failure));
        }
    }

    /// Client `index`'s JWT: its user, granted `load:*` when it subscribes, with a `jti` of
    /// its own under `--jti`.
    fn jwt_of(&self, index: usize) -> String {
        let user = format!("{}-{index}", self.user_prefix);
        if !(self.subscribe > 0 || self.jti) {
            return self.signer.mint(&user, 3600);
        }
        let now = ticketgate::clock::unix_now();
        let jti = self.jti.then(|| {
            let n = self.jtis.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("{user}-{now}-{n}")
        });
        self.signer.sign(&ticketgate::jwt::Claims {
            sub: user,
            exp: now + 3600,
            iat: Some(now),
            jti,
            channels: (self.subscribe > 0).then(|| vec!["load:*".into()]),
            ..Default::default()
        })
    }

    /// A TCP connection to `gateway` from client `index`'s loopback source address.
    async fn connect_from_source(
        &self,
        index: usize,
        gateway: &Gateway,
    ) -> Result<TcpStream, String> {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            2 + (index % usize::from(self.source_addresses)) as u8,
        );
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        bind_address_only(&socket)?;
        socket
            .bind(SocketAddr::new(source.into(), 0))
            .map_err(|e| format!("bind {source}: {e}"))?;
        socket
            .connect(gateway.addr)
            .await
            .map_err(|e| format!("connect: {e}"))
    }
}

/// A simulated client reads small messages, as a browser tab does. tungstenite's default read
/// buffer is 128 KiB, and every read zero-fills what it may use of it: with thousands of
/// clients that was the generator's biggest cost (memset, page faults, and the `munmap` of
/// every freed buffer), CPU the gateway and mongod need on the same two cores.
fn light_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4096)
}

/// Closed connections leave their ports in TIME_WAIT on this side. A `bind` to port 0 then
/// has to search past every one of them (more generator CPU with every run, and in the end
/// "address in use"); with `IP_BIND_ADDRESS_NO_PORT` the port is chosen at `connect`, unique
/// per destination, where the kernel may reuse TIME_WAIT ports on loopback (`tcp_tw_reuse`).
fn bind_address_only(socket: &TcpSocket) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, and an option value of the size given.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(format!(
            "IP_BIND_ADDRESS_NO_PORT: {}",
            std::io::Error::last_os_error()
        ))
    }
}
