//! A client that negotiates permessage-deflate (RFC 7692), which tokio-tungstenite cannot:
//! just enough WebSocket to upgrade, send masked text, answer pings and read text messages,
//! compressed or not. Only the load generator uses it, to measure WS_COMPRESSION end to end.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use ticketgate::wire::deflate::{Inflater, Negotiated};

/// What the client offers: each message compressed on its own in both directions, so neither
/// side keeps a context (the cheapest shape for the server, and what the gateway always takes).
const OFFER: &str = "permessage-deflate; client_no_context_takeover; server_no_context_takeover";
/// Bigger messages than this are a fault of the run, not something to measure.
const MAX_MESSAGE: usize = 1 << 20;

pub struct DeflateSocket {
    stream: BufReader<TcpStream>,
    inflater: Inflater,
    /// Bytes of text received compressed and how many they inflated to.
    pub wire_bytes: u64,
    pub inflated_bytes: u64,
}

pub enum Incoming {
    Text(String),
    Close(Option<u16>),
}

impl DeflateSocket {
    /// Upgrades `stream` at `path_and_query`; fails unless the server accepted the extension.
    pub async fn upgrade(
        stream: TcpStream,
        host: &str,
        path_and_query: &str,
    ) -> Result<Self, String> {
        let mut stream = BufReader::new(stream);
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: {OFFER}\r\n\r\n"
        );
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("upgrade request: {e}"))?;
        let mut head = String::new();
        loop {
            let before = head.len();
            let read = stream
                .read_line(&mut head)
                .await
                .map_err(|e| format!("upgrade response: {e}"))?;
            if read == 0 {
                return Err("the connection ended during the upgrade".into());
            }
            if &head[before..] == "\r\n" {
                break;
            }
        }
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!(
                "upgrade refused: {}",
                head.lines().next().unwrap_or("")
            ));
        }
        let extension = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        if !extension.is_some_and(|value| value.starts_with("permessage-deflate")) {
            return Err(
                "the gateway did not take permessage-deflate: is WS_COMPRESSION on?".into(),
            );
        }
        Ok(DeflateSocket {
            stream,
            inflater: Inflater::new(Negotiated {
                client_no_context_takeover: true,
                server_max_window_bits: false,
            }),
            wire_bytes: 0,
            inflated_bytes: 0,
        })
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.send(0x1, text.as_bytes()).await
    }

    /// The next text message; pings are answered on the way.
    pub async fn next(&mut self) -> Result<Incoming, String> {
        let mut message = Vec::new();
        let mut compressed = false;
        loop {
            let mut head = [0u8; 2];
            self.read_exact(&mut head).await?;
            let (fin, rsv1, opcode) = (head[0] & 0x80 != 0, head[0] & 0x40 != 0, head[0] & 0x0f);
            let len = match head[1] & 0x7f {
                126 => {
                    let mut len = [0u8; 2];
                    self.read_exact(&mut len).await?;
                    u64::from(u16::from_be_bytes(len))
                }
                127 => {
                    let mut len = [0u8; 8];
                    self.read_exact(&mut len).await?;
                    u64::from_be_bytes(len)
                }
                len => u64::from(len),
            };
            if len > MAX_MESSAGE as u64 || message.len() + len as usize > MAX_MESSAGE {
                return Err(format!("a frame of {len} B"));
            }
            let mut payload = vec![0u8; len as usize];
            self.read_exact(&mut payload).await?;
            match opcode {
                0x9 => self.send(0xA, &payload).await?,
                0xA => {}
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    let _ = self.send(0x8, &payload[..payload.len().min(2)]).await;
                    return Ok(Incoming::Close(code));
                }
                0x1 | 0x0 => {
                    if opcode == 0x1 {
                        compressed = rsv1;
                    }
                    message.extend_from_slice(&payload);
                    if fin {
                        return self.finish(message, compressed);
                    }
                }
                other => return Err(format!("unexpected opcode {other}")),
            }
        }
    }

    fn finish(&mut self, message: Vec<u8>, compressed: bool) -> Result<Incoming, String> {
        let text = if compressed {
            self.wire_bytes += message.len() as u64;
            let inflated = self
                .inflater
                .inflate(&message, MAX_MESSAGE)
                .map_err(|e| format!("inflate: {e:?}"))?;
            self.inflated_bytes += inflated.len() as u64;
            inflated.to_vec()
        } else {
            message
        };
        String::from_utf8(text)
            .map(Incoming::Text)
            .map_err(|_| "a text message that is not UTF-8".into())
    }

    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.stream
            .read_exact(buf)
            .await
            .map(drop)
            .map_err(|e| format!("read: {e}"))
    }

    /// One unfragmented, masked frame (every client frame must be masked).
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> Result<(), String> {
        let mask: [u8; 4] = rand_mask();
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | len as u8),
            len @ 126..=0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream
            .get_mut()
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))
    }
}

/// Masks only need to differ between frames for proxies' sake; a cheap counter-based value
/// is enough for a load generator on loopback.
fn rand_mask() -> [u8; 4] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0x9e37_79b9);
    NEXT.fetch_add(0x6d2b_79f5, Ordering::Relaxed).to_be_bytes()
}
