//! Raw HTTP requests and WebSocket frames over plain TCP, for the inputs a well-behaved client
//! library would never send.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

// ---------------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------------

/// The status line's code (None when the server just closed), and the body.
pub async fn raw_http(port: u16, request: &[u8]) -> (Option<u16>, String) {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The server may close before reading it all; that is an answer too.
    let _ = socket.write_all(request).await;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                received.extend_from_slice(&buffer[..n]);
                if response_complete(&received) {
                    break;
                }
            }
            Err(_) => panic!(
                "no answer to {:?}",
                String::from_utf8_lossy(&request[..request.len().min(80)])
            ),
        }
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The response head of `request`, header names in lower case.
pub async fn raw_head(port: u16, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before the head");
        received.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&received).to_ascii_lowercase()
}

fn response_complete(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok());
    match length {
        Some(length) => body.len() >= length,
        None => head.starts_with("HTTP/1.1 101"),
    }
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes()
}

pub fn upgrade_request(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}\r\n").into_bytes()
}

pub const WS_HEADERS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// An HTTP request that must get `status` with a JSON `error` of `code`, or, with `code` empty,
/// any answer of that status.
pub async fn expect_http(app: &TestApp, what: &str, request: Vec<u8>, status: u16, code: &str) {
    let (got, body) = raw_http(app.port, &request).await;
    assert_eq!(got, Some(status), "{what}: {body}");
    if !code.is_empty() {
        let json: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{what}: not JSON: {body}"));
        assert_eq!(json["error"], code, "{what}");
    }
}

/// A request the HTTP parser refuses: a 4xx, or the connection closed without an answer.
pub async fn expect_refused(app: &TestApp, what: &str, request: Vec<u8>) {
    let (status, body) = raw_http(app.port, &request).await;
    match status {
        None => {}
        Some(code) if (400..500).contains(&code) => {}
        Some(code) => panic!("{what}: expected a refusal, got {code}: {body}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw WebSocket frames
// ---------------------------------------------------------------------------------------------

pub struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
    /// Claim this length instead of the payload's (for truncated and huge frames).
    pub claimed_len: Option<u64>,
}

impl RawFrame {
    pub fn new(opcode: u8, payload: &[u8]) -> Self {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode,
            masked: true,
            payload: payload.to_vec(),
            claimed_len: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let len = self.claimed_len.unwrap_or(self.payload.len() as u64);
        let mask_bit = if self.masked { 0x80 } else { 0 };
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= u16::MAX as u64 {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if self.masked {
            out.extend_from_slice(&key);
            out.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// A raw socket to the gateway on `port`, upgraded with `ticket` (the 101 read and checked).
pub async fn raw_upgrade(port: u16, ticket: &str) -> TcpStream {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    socket
        .write_all(&upgrade_request(
            &format!("/demo?token={ticket}"),
            WS_HEADERS,
        ))
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// A raw socket upgraded with a fresh ticket; authenticated too when `authenticate`.
pub async fn raw_ws(app: &TestApp, authenticate: bool) -> TcpStream {
    let ticket = app.ticket("raw").await;
    let mut socket = raw_upgrade(app.port, &ticket).await;
    if authenticate {
        let jwt_message = serde_json::json!({"type": "jwt", "token": jwt("raw")}).to_string();
        socket
            .write_all(&RawFrame::new(TEXT, jwt_message.as_bytes()).encode())
            .await
            .unwrap();
        let (opcode, payload) = read_frame(&mut socket)
            .await
            .expect("the authenticated message");
        assert_eq!(opcode, TEXT);
        assert!(String::from_utf8_lossy(&payload).contains("authenticated"));
    }
    socket
}

/// One server frame (servers never mask): opcode and payload; None at end of stream.
pub async fn read_frame(socket: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.ok()?;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            socket.read_exact(&mut ext).await.ok()?;
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            socket.read_exact(&mut ext).await.ok()?;
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; len as usize];
        socket.read_exact(&mut payload).await.ok()?;
        Some((head[0] & 0x0f, payload))
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server neither answered nor closed")
}

/// How the server ended the connection: its close code, or None for a plain disconnect.
pub async fn close_code(socket: &mut TcpStream) -> Option<u16> {
    while let Some((opcode, payload)) = read_frame(socket).await {
        if opcode == CLOSE {
            return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
    }
    None
}

/// Sends `frames` and expects the connection to end with `expected` (None: a disconnect).
pub async fn expect_ws_end(
    app: &TestApp,
    what: &str,
    authenticated: bool,
    frames: &[RawFrame],
    expected: Option<u16>,
) {
    let mut socket = raw_ws(app, authenticated).await;
    for frame in frames {
        let _ = socket.write_all(&frame.encode()).await;
    }
    assert_eq!(close_code(&mut socket).await, expected, "{what}");
}
