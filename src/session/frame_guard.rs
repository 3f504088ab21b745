//! Refuses an oversized WebSocket frame as soon as its header arrives.
//!
//! actix-http compares a frame's declared length with its size limit only once the whole frame
//! is buffered, and actix-ws buffers incoming bytes without bound. A client could declare a
//! terabyte-long frame and stream bytes into the gateway's memory. This guard sits on the raw
//! byte stream in front of them, reads every frame header (RFC 6455 §5.2), and fails the stream
//! with `PayloadError::Overflow` the moment a declared length exceeds the current limit.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use actix_http::error::PayloadError;
use bytes::Bytes;
use futures_util::Stream;

/// The largest frame payload currently allowed; the session raises it after authentication.
#[derive(Debug, Clone)]
pub struct FrameLimit(Arc<AtomicUsize>);

impl FrameLimit {
    pub fn new(bytes: usize) -> Self {
        FrameLimit(Arc::new(AtomicUsize::new(bytes)))
    }

    pub fn set(&self, bytes: usize) {
        self.0.store(bytes, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed) as u64
    }
}

/// Where the scanner is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Inside a frame header; `len` bytes of it seen so far.
    Header { len: usize },
    /// Inside a payload; this many bytes to skip.
    Payload { remaining: u64 },
}

/// Reads frame headers out of a byte stream split at arbitrary points.
#[derive(Debug)]
pub struct FrameScanner {
    position: Position,
    header: [u8; 14],
}

impl Default for FrameScanner {
    fn default() -> Self {
        FrameScanner {
            position: Position::Header { len: 0 },
            header: [0; 14],
        }
    }
}

impl FrameScanner {
    /// Scans `chunk`; `Err` with the declared length of the first frame over `limit`.
    pub fn scan(&mut self, chunk: &[u8], limit: u64) -> Result<(), u64> {
        let mut i = 0;
        while i < chunk.len() {
            match self.position {
                Position::Payload { remaining } => {
                    let skip = remaining.min((chunk.len() - i) as u64);
                    i += skip as usize;
                    self.position = match remaining - skip {
                        0 => Position::Header { len: 0 },
                        remaining => Position::Payload { remaining },
                    };
                }
                Position::Header { len } => {
                    self.header[len] = chunk[i];
                    i += 1;
                    let len = len + 1;
                    self.position = Position::Header { len };
                    if let Some((header_len, payload_len)) = declared_lengths(&self.header[..len]) {
                        if payload_len > limit {
                            return Err(payload_len);
                        }
                        if len == header_len {
                            self.position = match payload_len {
                                0 => Position::Header { len: 0 },
                                remaining => Position::Payload { remaining },
                            };
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The header's total length and the declared payload length, once enough of the header is
/// known to tell (the length is known before the 4-byte mask arrives).
fn declared_lengths(header: &[u8]) -> Option<(usize, u64)> {
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

/// The client's byte stream, failed at the first frame whose header declares too much.
pub struct FrameGuard<S> {
    inner: S,
    limit: FrameLimit,
    scanner: FrameScanner,
    failed: bool,
}

impl<S> FrameGuard<S> {
    pub fn new(inner: S, limit: FrameLimit) -> Self {
        FrameGuard {
            inner,
            limit,
            scanner: FrameScanner::default(),
            failed: false,
        }
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &polled {
            let limit = self.limit.get();
            let (chunk, this) = (chunk.clone(), &mut *self);
            if this.scanner.scan(&chunk, limit).is_err() {
                this.failed = true;
                return Poll::Ready(Some(Err(PayloadError::Overflow)));
            }
        }
        polled
    }
}

/// Whether a read error is this guard's refusal.
pub fn is_frame_overflow(error: &std::io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<PayloadError>()),
        Some(PayloadError::Overflow)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame header declaring `len` payload bytes, and its payload.
    fn frame(len: usize) -> Vec<u8> {
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
        out.extend(std::iter::repeat_n(b'x', len));
        out
    }

    #[test]
    fn refuses_a_huge_declared_length_from_the_header_alone() {
        let mut scanner = FrameScanner::default();
        let header = [0x81, 0x80 | 127, 0, 0, 1, 0, 0, 0, 0, 0];
        assert_eq!(scanner.scan(&header, 16 * 1024), Err(1 << 40));
    }

    proptest! {
        /// However the bytes are split, the scanner refuses exactly when some frame declares more
        /// than the limit, and never panics.
        #[test]
        fn finds_every_frame_boundary_across_any_split(
            lens in proptest::collection::vec(prop_oneof![0usize..130, 120usize..70_000], 1..8),
            cut in proptest::collection::vec(1usize..5_000, 1..20),
            limit in 0u64..70_000,
        ) {
            let bytes: Vec<u8> = lens.iter().flat_map(|&len| frame(len)).collect();
            let mut scanner = FrameScanner::default();
            let mut outcome = Ok(());
            let mut at = 0;
            for step in cut.iter().cycle() {
                if at >= bytes.len() || outcome.is_err() {
                    break;
                }
                let end = (at + step).min(bytes.len());
                outcome = scanner.scan(&bytes[at..end], limit);
                at = end;
            }
            let first_over = lens.iter().find(|&&len| len as u64 > limit).map(|&len| len as u64);
            prop_assert_eq!(outcome.err(), first_over);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), limit in any::<u64>()) {
            let _ = FrameScanner::default().scan(&bytes, limit);
        }
    }
}
