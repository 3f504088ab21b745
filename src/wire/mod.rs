//! The WebSocket connection after the upgrade, on the raw socket.
//!
//! actix-ws would drive the socket through actix-http's HTTP/1 dispatcher, which keeps two
//! fixed 8 KiB buffers per connection for its whole life and costs two task hops per message
//! (docs/BENCHMARKS.md measured both). Instead the gateway takes the socket from actix-http's
//! upgrade hook ([`upgrade`]) and speaks WebSocket with actix-http's own frame codec: reads
//! buffer only what a message needs, and writes send frames encoded once per broadcast.
//! [`WebSocket`] is the session's transport on that socket.

pub mod deflate;
pub mod reader;
pub mod refusals;
pub mod server;
pub mod socket;
mod transport;
pub mod upgrade;
pub mod writer;

use actix_codec::Encoder;
use actix_http::ws::{CloseReason, Codec, Message, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;

pub use reader::{FrameReader, ReadError};
pub use transport::WebSocket;
pub use writer::FrameWriter;

/// One whole client message, fragments joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<CloseReason>),
}

/// A server text frame (unmasked, so the same bytes serve every connection).
pub fn text_frame(text: &str) -> Bytes {
    let mut frame = BytesMut::with_capacity(text.len() + 10);
    Parser::write_message(&mut frame, text, OpCode::Text, true, false);
    frame.freeze()
}

/// The length of a server frame's header (servers never mask).
pub fn frame_header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    }
}

/// An empty server ping.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x89, 0x00])
}

pub fn pong_frame(payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 2);
    Parser::write_message(&mut frame, payload, OpCode::Pong, true, false);
    frame.freeze()
}

pub fn close_frame(reason: Option<CloseReason>) -> Bytes {
    let mut frame = BytesMut::new();
    // The server codec never fails to encode a close.
    let _ = Codec::new().encode(Message::Close(reason), &mut frame);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Decoder;
    use actix_http::ws::{CloseCode, Frame};

    /// Decodes a server frame the way a client does.
    fn decode(frame: &Bytes) -> Frame {
        let mut buffer = BytesMut::from(&frame[..]);
        let decoded = Codec::new()
            .client_mode()
            .max_size(1 << 20)
            .decode(&mut buffer);
        assert!(buffer.is_empty());
        decoded.unwrap().unwrap()
    }

    #[test]
    fn server_frames_decode_as_clients_read_them() {
        let long = "x".repeat(70_000);
        assert_eq!(
            decode(&text_frame("hello")),
            Frame::Text(Bytes::from_static(b"hello"))
        );
        assert_eq!(
            decode(&text_frame(&long)),
            Frame::Text(Bytes::from(long.clone()))
        );
        assert_eq!(decode(&ping_frame()), Frame::Ping(Bytes::new()));
        assert_eq!(
            decode(&pong_frame(b"abc")),
            Frame::Pong(Bytes::from_static(b"abc"))
        );
        let reason = CloseReason {
            code: CloseCode::from(4401),
            description: Some("invalid token".into()),
        };
        assert_eq!(
            decode(&close_frame(Some(reason.clone()))),
            Frame::Close(Some(reason))
        );
    }
}
