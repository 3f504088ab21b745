//! Reading client messages off the upgraded socket: frames decoded by actix-http's WebSocket
//! codec, fragments aggregated, every length checked against the current limit from the frame
//! header alone, before any of its payload is buffered.
//!
//! An idle connection holds no read buffer: bytes are read only once the socket is readable,
//! and the buffer is released whenever it has been drained.

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use tokio::net::tcp::OwnedReadHalf;

use super::Incoming;

/// Bytes asked of the kernel per read. Client messages are small; a larger one takes a few reads.
const READ_CHUNK: usize = 2048;

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the client closed the TCP connection")]
    Eof,
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
    #[error("a message over {limit} bytes")]
    TooBig { limit: usize },
    #[error("a text message that is not UTF-8")]
    InvalidUtf8,
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// A fragmented message being put together.
struct Fragments {
    text: bool,
    bytes: BytesMut,
}

impl Fragments {
    fn into_message(self) -> Result<Incoming, ReadError> {
        if self.text {
            text_message(self.bytes.freeze())
        } else {
            Ok(Incoming::Binary(self.bytes.freeze()))
        }
    }
}

pub struct FrameReader {
    socket: OwnedReadHalf,
    buffer: BytesMut,
    codec: Codec,
    fragments: Option<Fragments>,
}

impl FrameReader {
    /// `already_read`: bytes that arrived with the upgrade request (a client may send its first
    /// frame without waiting for the 101).
    pub fn new(socket: OwnedReadHalf, already_read: &[u8]) -> Self {
        FrameReader {
            socket,
            buffer: BytesMut::from(already_read),
            // The codec's own limit is only checked once a whole frame is buffered; the real
            // one is applied to the header in `next_frame`.
            codec: Codec::new().max_size(usize::MAX),
            fragments: None,
        }
    }

    /// The next whole message of at most `limit` bytes (fragments joined). Cancel-safe: a
    /// partly read message stays buffered for the next call.
    pub async fn next_message(&mut self, limit: usize) -> Result<Incoming, ReadError> {
        loop {
            let frame = self.next_frame(limit).await?;
            let (last, text, payload) = match frame {
                Frame::Ping(payload) => return Ok(Incoming::Ping(payload)),
                Frame::Pong(payload) => return Ok(Incoming::Pong(payload)),
                Frame::Close(reason) => return Ok(Incoming::Close(reason)),
                Frame::Text(payload) => return text_message(payload),
                Frame::Binary(payload) => return Ok(Incoming::Binary(payload)),
                Frame::Continuation(Item::FirstText(payload)) => (false, Some(true), payload),
                Frame::Continuation(Item::FirstBinary(payload)) => (false, Some(false), payload),
                Frame::Continuation(Item::Continue(payload)) => (false, None, payload),
                Frame::Continuation(Item::Last(payload)) => (true, None, payload),
            };
            // Taken out and put back with no await in between, so cancelling loses nothing.
            let mut fragments = match (text, self.fragments.take()) {
                (Some(text), _) => Fragments {
                    text,
                    bytes: BytesMut::new(),
                },
                (None, Some(fragments)) => fragments,
                // The codec refuses a continuation that was not started.
                (None, None) => return Err(ReadError::Protocol("stray continuation".into())),
            };
            if fragments.bytes.len() + payload.len() > limit {
                return Err(ReadError::TooBig { limit });
            }
            fragments.bytes.extend_from_slice(&payload);
            if last {
                return fragments.into_message();
            }
            self.fragments = Some(fragments);
        }
    }

    async fn next_frame(&mut self, limit: usize) -> Result<Frame, ReadError> {
        loop {
            if let Some(frame) = decode_frame(&mut self.codec, &mut self.buffer, limit)? {
                if self.buffer.is_empty() {
                    // Give the allocation back (the frame's payload keeps its part alive
                    // only as long as it needs it).
                    self.buffer = BytesMut::new();
                }
                return Ok(frame);
            }
            self.socket.readable().await?;
            self.buffer.reserve(READ_CHUNK);
            match self.socket.try_read_buf(&mut self.buffer) {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl FrameReader {
    /// Reads and drops whatever the client still sends, until it closes its side.
    pub async fn discard_until_eof(self) {
        loop {
            if self.socket.readable().await.is_err() {
                return;
            }
            let mut scratch = [0u8; 512];
            match self.socket.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// The next frame in `buffer`, once all of it is there. A declared length over `limit` is
/// refused from the header alone: actix-http's codec would otherwise wait for (and buffer) the
/// whole frame before comparing.
pub fn decode_frame(
    codec: &mut Codec,
    buffer: &mut BytesMut,
    limit: usize,
) -> Result<Option<Frame>, ReadError> {
    if let Some((_, declared)) = declared_lengths(buffer)
        && declared > limit as u64
    {
        return Err(ReadError::TooBig { limit });
    }
    codec.decode(buffer).map_err(|e| match e {
        ProtocolError::Overflow => ReadError::TooBig { limit },
        other => ReadError::Protocol(other.to_string()),
    })
}

fn text_message(payload: Bytes) -> Result<Incoming, ReadError> {
    ByteString::try_from(payload)
        .map(Incoming::Text)
        .map_err(|_| ReadError::InvalidUtf8)
}

/// A frame header's total length and its declared payload length, once enough of the header
/// is known to tell (RFC 6455 §5.2: the length comes before the 4-byte mask).
pub fn declared_lengths(header: &[u8]) -> Option<(usize, u64)> {
    let second = *header.get(1)?;
    let mask_len = if second & 0x80 != 0 { 4 } else { 0 };
    let (extended, payload_len) = match second & 0x7f {
        126 => (
            2,
            u64::from(u16::from_be_bytes(header.get(2..4)?.try_into().ok()?)),
        ),
        127 => (8, u64::from_be_bytes(header.get(2..10)?.try_into().ok()?)),
        short => (0, u64::from(short)),
    };
    Some((2 + extended + mask_len, payload_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame header declaring `len` payload bytes.
    fn header(len: usize) -> Vec<u8> {
        let mut out = vec![0x81];
        match len {
            0..=125 => out.push(0x80 | len as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&[1, 2, 3, 4]);
        out
    }

    #[test]
    fn a_huge_declared_length_is_known_from_the_header_alone() {
        let header = [0x81, 0x80 | 127, 0, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(declared_lengths(&header), Some((14, 1 << 40)));
        assert_eq!(declared_lengths(&header[..5]), None);
    }

    proptest! {
        #[test]
        fn reads_every_length_form(len in prop_oneof![0usize..130, 120usize..70_000, 65_530usize..200_000]) {
            let header = header(len);
            prop_assert_eq!(declared_lengths(&header), Some((header.len(), len as u64)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..32)) {
            let _ = declared_lengths(&bytes);
        }
    }
}
