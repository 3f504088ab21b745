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
use super::deflate::Inflater;

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
    /// Its first frame had RSV1 (permessage-deflate): inflated once whole, and checked then.
    compressed: bool,
    bytes: BytesMut,
    /// How much of a text message's bytes is known to be UTF-8 so far: each fragment is
    /// checked as it arrives, so a bad one fails the connection at once (RFC 6455 §8.1),
    /// not after the last fragment.
    valid_utf8: usize,
}

impl Fragments {
    fn append(&mut self, payload: &[u8]) -> Result<(), ReadError> {
        self.bytes.extend_from_slice(payload);
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.bytes[self.valid_utf8..]) {
            Ok(_) => self.valid_utf8 = self.bytes.len(),
            // `error_len` is None when the bytes only stop inside a character that the next
            // fragment may complete.
            Err(e) if e.error_len().is_none() => self.valid_utf8 += e.valid_up_to(),
            Err(_) => return Err(ReadError::InvalidUtf8),
        }
        Ok(())
    }

    fn into_message(self) -> Result<(bool, Bytes), ReadError> {
        Ok((self.text, self.bytes.freeze()))
    }
}

pub struct FrameReader {
    socket: OwnedReadHalf,
    buffer: BytesMut,
    codec: Codec,
    fragments: Option<Fragments>,
    /// Set when permessage-deflate was negotiated.
    inflater: Option<Inflater>,
    /// The frame being decoded had RSV1, cleared before the codec (which refuses it).
    rsv1: bool,
    /// How much of the text frame still arriving was found to be UTF-8 so far.
    partial: Option<PartialText>,
}

/// A text frame (or a text message's continuation) not all here yet: its payload is checked
/// for UTF-8 as it arrives, so invalid bytes fail the connection at once (RFC 6455 §8.1, "fail
/// fast"), not when the frame's last byte comes.
#[derive(Debug, Default)]
struct PartialText {
    /// Payload bytes checked so far.
    checked: usize,
    /// The start of a character whose rest has not arrived.
    pending: Vec<u8>,
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
            inflater: None,
            rsv1: false,
            partial: None,
        }
    }

    /// Reads messages compressed with permessage-deflate, as negotiated at the upgrade.
    pub fn with_inflater(mut self, inflater: Inflater) -> Self {
        self.inflater = Some(inflater);
        self
    }

    /// A whole data message: inflated when compressed, then checked for UTF-8 when text.
    fn finish(
        &mut self,
        text: bool,
        compressed: bool,
        payload: Bytes,
        limit: usize,
    ) -> Result<Incoming, ReadError> {
        let payload = match (compressed, &mut self.inflater) {
            (true, Some(inflater)) => inflater.inflate(&payload, limit)?,
            _ => payload,
        };
        if text {
            text_message(payload)
        } else {
            Ok(Incoming::Binary(payload))
        }
    }

    /// The next whole message of at most `limit` bytes (fragments joined). Cancel-safe: a
    /// partly read message stays buffered for the next call.
    pub async fn next_message(&mut self, limit: usize) -> Result<Incoming, ReadError> {
        loop {
            let frame = self.next_frame(limit).await?;
            let compressed = std::mem::take(&mut self.rsv1);
            let (last, text, payload) = match frame {
                Frame::Ping(payload) => return Ok(Incoming::Ping(payload)),
                Frame::Pong(payload) => return Ok(Incoming::Pong(payload)),
                Frame::Close(reason) => return Ok(Incoming::Close(reason)),
                Frame::Text(payload) => return self.finish(true, compressed, payload, limit),
                Frame::Binary(payload) => return self.finish(false, compressed, payload, limit),
                Frame::Continuation(Item::FirstText(payload)) => (false, Some(true), payload),
                Frame::Continuation(Item::FirstBinary(payload)) => (false, Some(false), payload),
                Frame::Continuation(Item::Continue(payload)) => (false, None, payload),
                Frame::Continuation(Item::Last(payload)) => (true, None, payload),
            };
            // Taken out and put back with no await in between, so cancelling loses nothing.
            let mut fragments = match (text, self.fragments.take()) {
                (Some(text), _) => Fragments {
                    text,
                    compressed,
                    bytes: BytesMut::new(),
                    valid_utf8: 0,
                },
                (None, Some(fragments)) => fragments,
                // The codec refuses a continuation that was not started.
                (None, None) => return Err(ReadError::Protocol("stray continuation".into())),
            };
            if fragments.bytes.len() + payload.len() > limit {
                return Err(ReadError::TooBig { limit });
            }
            fragments.append(&payload)?;
            if last {
                let compressed = fragments.compressed;
                let (text, bytes) = fragments.into_message()?;
                return self.finish(text, compressed, bytes, limit);
            }
            self.fragments = Some(fragments);
        }
    }

    async fn next_frame(&mut self, limit: usize) -> Result<Frame, ReadError> {
        loop {
            self.take_rsv1()?;
            if let Some(frame) = decode_frame(&mut self.codec, &mut self.buffer, limit)? {
                self.partial = None;
                if self.buffer.is_empty() {
                    // Give the allocation back (the frame's payload keeps its part alive
                    // only as long as it needs it).
                    self.buffer = BytesMut::new();
                }
                return Ok(frame);
            }
            self.check_partial_text()?;
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
    /// With permessage-deflate, RSV1 marks the first frame of a compressed message. actix-http's
    /// codec refuses any RSV bit, so it is cleared here, once per frame, and remembered.
    /// Without the extension the bit stays, and the codec refuses the frame (1002).
    fn take_rsv1(&mut self) -> Result<(), ReadError> {
        let Some(&first) = self.buffer.first() else {
            return Ok(());
        };
        if first & RSV1 == 0 || self.inflater.is_none() {
            return Ok(());
        }
        let opcode = first & 0x0f;
        if !(opcode == 0x1 || opcode == 0x2) {
            return Err(ReadError::Protocol(
                "RSV1 on a frame that cannot carry it".into(),
            ));
        }
        self.buffer[0] = first & !RSV1;
        self.rsv1 = true;
        Ok(())
    }

    /// Checks what has arrived of an incomplete text frame (not a compressed one, which is
    /// checked once inflated) for UTF-8.
    fn check_partial_text(&mut self) -> Result<(), ReadError> {
        let Some(&first) = self.buffer.first() else {
            return Ok(());
        };
        let carried = match (first & 0x0f, &self.fragments) {
            (0x1, _) if !self.rsv1 => &[][..],
            (0x0, Some(fragments)) if fragments.text && !fragments.compressed => {
                // A character may begin in the fragments before this one.
                &fragments.bytes[fragments.valid_utf8..]
            }
            _ => return Ok(()),
        };
        let partial = self.partial.get_or_insert_with(|| PartialText {
            checked: 0,
            pending: carried.to_vec(),
        });
        check_partial_utf8(&self.buffer, partial)
    }

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
    if let Some((header_len, declared)) = declared_lengths(buffer) {
        if declared > limit as u64 {
            return Err(ReadError::TooBig { limit });
        }
        check_control_frame(buffer, header_len, declared)?;
    }
    codec.decode(buffer).map_err(|e| match e {
        ProtocolError::Overflow => ReadError::TooBig { limit },
        other => ReadError::Protocol(other.to_string()),
    })
}

const OPCODE_CLOSE: u8 = 0x8;
const RSV1: u8 = 0x40;
const FIN: u8 = 0x80;

/// What actix-http's codec would get wrong about a control frame, checked before it sees one:
/// it logs a fragmented control frame at ERROR level (any client could fill the error log),
/// and it calls a close reason that is not UTF-8 a protocol error, where RFC 6455 §8.1 asks
/// for 1007.
fn check_control_frame(buffer: &[u8], header_len: usize, declared: u64) -> Result<(), ReadError> {
    let first = buffer[0];
    let opcode = first & 0x0f;
    if opcode & 0x08 == 0 {
        return Ok(());
    }
    if first & FIN == 0 {
        return Err(ReadError::Protocol("fragmented control frame".into()));
    }
    // Longer control frames, and unmasked ones, are the codec's to refuse.
    let masked = buffer[1] & 0x80 != 0;
    if opcode != OPCODE_CLOSE || !masked || !(3..=125).contains(&declared) {
        return Ok(());
    }
    let Some(frame) = buffer.get(..header_len + declared as usize) else {
        return Ok(()); // not all here yet
    };
    let mask = &frame[header_len - 4..header_len];
    let reason: Vec<u8> = frame[header_len + 2..]
        .iter()
        .enumerate()
        .map(|(i, byte)| byte ^ mask[(i + 2) % 4])
        .collect();
    match std::str::from_utf8(&reason) {
        Ok(_) => Ok(()),
        Err(_) => Err(ReadError::InvalidUtf8),
    }
}

/// Checks the payload bytes of the (masked, incomplete) frame at the start of `buffer` that
/// arrived since the last call.
fn check_partial_utf8(buffer: &[u8], partial: &mut PartialText) -> Result<(), ReadError> {
    let Some((header_len, declared)) = declared_lengths(buffer) else {
        return Ok(());
    };
    // An unmasked client frame is the codec's to refuse.
    if buffer[1] & 0x80 == 0 || buffer.len() <= header_len {
        return Ok(());
    }
    let arrived = (buffer.len() - header_len).min(usize::try_from(declared).unwrap_or(usize::MAX));
    if arrived <= partial.checked {
        return Ok(());
    }
    let mask = &buffer[header_len - 4..header_len];
    let mut bytes = std::mem::take(&mut partial.pending);
    bytes.extend((partial.checked..arrived).map(|i| buffer[header_len + i] ^ mask[i % 4]));
    partial.checked = arrived;
    match std::str::from_utf8(&bytes) {
        Ok(_) => Ok(()),
        // The bytes stop inside a character that the next ones may complete.
        Err(e) if e.error_len().is_none() => {
            partial.pending = bytes[e.valid_up_to()..].to_vec();
            Ok(())
        }
        Err(_) => Err(ReadError::InvalidUtf8),
    }
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

    /// A masked client frame carrying `payload`.
    fn frame(first: u8, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::from(&header(payload.len())[..]);
        out[0] = first;
        let mask = [1, 2, 3, 4];
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode(mut buffer: BytesMut) -> Result<Option<Frame>, ReadError> {
        decode_frame(&mut Codec::new(), &mut buffer, 1 << 20)
    }

    #[test]
    fn a_close_reason_that_is_not_utf8_is_1007_material() {
        let mut bad = vec![0x03, 0xe8];
        bad.extend_from_slice(&[0xce, 0xba, 0xff]);
        assert!(matches!(
            decode(frame(0x88, &bad)),
            Err(ReadError::InvalidUtf8)
        ));
        let good = [0x03, 0xe8, b'o', b'k'];
        assert!(matches!(
            decode(frame(0x88, &good)),
            Ok(Some(Frame::Close(Some(_))))
        ));
        // Half a frame: nothing to say yet.
        let half = frame(0x88, &bad);
        assert!(matches!(decode(BytesMut::from(&half[..8])), Ok(None)));
    }

    #[test]
    fn a_fragmented_control_frame_is_refused_before_the_codec_sees_it() {
        assert!(matches!(
            decode(frame(0x09, b"x")),
            Err(ReadError::Protocol(_))
        ));
        assert!(matches!(
            decode(frame(0x89, b"x")),
            Ok(Some(Frame::Ping(_)))
        ));
    }

    #[test]
    fn text_fragments_are_checked_as_they_arrive() {
        let mut fragments = Fragments {
            text: true,
            compressed: false,
            bytes: BytesMut::new(),
            valid_utf8: 0,
        };
        // "κ" split across two fragments is fine...
        fragments.append(&[b'a', 0xce]).unwrap();
        fragments.append(&[0xba]).unwrap();
        assert_eq!(fragments.valid_utf8, 3);
        // ...a byte that can never be UTF-8 fails on the fragment that carries it.
        assert!(matches!(
            fragments.append(&[0xff]),
            Err(ReadError::InvalidUtf8)
        ));
    }

    #[test]
    fn a_text_frame_is_checked_as_its_bytes_arrive() {
        let whole = frame(0x81, "aκ\u{ff}b".as_bytes());
        let mut bad = whole.to_vec();
        let at = header(6).len() + 3; // the first byte of "ÿ", masked
        bad[at] = 0xff ^ 4; // unmasks to 0xff, which no UTF-8 has
        let mut partial = PartialText::default();
        // "κ" split between two reads is fine; the invalid byte fails the read that brings it.
        let head = header(6).len();
        check_partial_utf8(&bad[..head + 2], &mut partial).unwrap();
        assert_eq!((partial.checked, partial.pending.len()), (2, 1));
        check_partial_utf8(&bad[..head + 3], &mut partial).unwrap();
        assert!(matches!(
            check_partial_utf8(&bad[..head + 4], &mut partial),
            Err(ReadError::InvalidUtf8)
        ));
        // The valid frame passes, chop by chop.
        let mut partial = PartialText::default();
        for end in head..whole.len() {
            check_partial_utf8(&whole[..end], &mut partial).unwrap();
        }
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
