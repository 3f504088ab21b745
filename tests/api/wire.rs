//! The upgraded socket as the gateway serves it (src/wire/): bytes that arrive with the
//! upgrade request, broadcasts that pile up while a client is not reading, and the end of
//! the TCP connection after a close.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{self, RawFrame, TEXT, WS_HEADERS};
use crate::support::*;

/// A masked client text frame.
fn client_text_frame(text: &str) -> Vec<u8> {
    RawFrame::new(TEXT, text.as_bytes()).encode()
}

/// The upgrade request for `ticket`, as raw bytes.
fn upgrade(ticket: &str) -> Vec<u8> {
    raw::upgrade_request(&format!("/demo?token={ticket}"), WS_HEADERS)
}

/// Reads server frames off a raw socket, after the 101 response head.
struct RawClient {
    socket: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    async fn read_more(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut chunk))
            .await
            .expect("the server answers within 10 s")
            .expect("reading");
        self.buffer.extend_from_slice(&chunk[..read]);
        read
    }

    async fn response_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buffer.drain(..end + 4).collect()).unwrap();
                return head;
            }
            assert!(self.read_more().await > 0, "EOF before the response head");
        }
    }

    /// The next frame's opcode and payload (server frames are unmasked).
    async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buffer.len() >= 2 {
                let (header, len) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                    ),
                    126 => (usize::MAX, 0),
                    127 => panic!("no frame here is that long"),
                    short => (2, usize::from(short)),
                };
                if header != usize::MAX && self.buffer.len() >= header + len {
                    let opcode = self.buffer[0] & 0x0f;
                    let frame: Vec<u8> = self.buffer.drain(..header + len).collect();
                    return (opcode, frame[header..].to_vec());
                }
            }
            assert!(self.read_more().await > 0, "EOF inside a frame");
        }
    }

    async fn json(&mut self) -> Value {
        let (opcode, payload) = self.frame().await;
        assert_eq!(opcode, 1, "a text frame");
        serde_json::from_slice(&payload).unwrap()
    }
}

#[tokio::test]
async fn a_jwt_sent_together_with_the_upgrade_request_is_read() {
    let app = spawn_app(Store::Memory, &[]).await;
    let ticket = app.ticket("alice").await;
    // One write: the request head and the first frame arrive together, so the frame is in
    // actix-http's read buffer when the socket is handed over.
    let mut bytes = upgrade(&ticket);
    bytes.extend(client_text_frame(
        &json!({"type": "jwt", "token": jwt("alice")}).to_string(),
    ));
    let mut socket = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    socket.write_all(&bytes).await.unwrap();
    let mut client = RawClient {
        socket,
        buffer: Vec::new(),
    };
    let head = client.response_head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let welcome = client.json().await;
    assert_eq!(welcome["type"], "authenticated", "{welcome}");
    assert_eq!(welcome["user_id"], "alice");
}

#[tokio::test]
async fn broadcasts_that_pile_up_unread_arrive_whole_and_in_order() {
    let app = spawn_app(Store::Memory, &[]).await;
    let mut client = app.authenticated("alice").await;
    // Published back to back, far faster than one write each: they reach the socket in
    // batches (one vectored write for whatever is waiting).
    let mut seqs = Vec::new();
    for i in 0..300 {
        seqs.push(
            app.publish(&json!({"i": i, "pad": "x".repeat(200)}).to_string())
                .await,
        );
    }
    for (i, seq) in seqs.iter().enumerate() {
        let message = client.next_json().await;
        assert_eq!(message["type"], "broadcast");
        assert_eq!(message["seq"], *seq);
        assert_eq!(message["data"]["i"], i, "{message}");
    }
    client.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn after_its_close_frame_the_server_ends_the_tcp_connection() {
    let app = spawn_app(Store::Memory, &[]).await;
    let ticket = app.ticket("alice").await;
    let mut socket = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let mut bytes = upgrade(&ticket);
    bytes.extend(client_text_frame("not json"));
    socket.write_all(&bytes).await.unwrap();
    let mut client = RawClient {
        socket,
        buffer: Vec::new(),
    };
    assert!(client.response_head().await.starts_with("HTTP/1.1 101"));
    let (opcode, payload) = client.frame().await;
    assert_eq!(opcode, 8, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 4400);
    // The client has not closed anything, yet the server's FIN arrives.
    assert_eq!(client.read_more().await, 0, "EOF after the close frame");
    app.assert_no_connections_left().await;
}
