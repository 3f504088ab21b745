//! Writing frames to the upgraded socket. Frames arrive already encoded (a broadcast is
//! encoded once and its bytes shared by every connection), and all frames waiting for a
//! connection go out in one vectored write: under load, one system call carries several
//! messages.

use std::io::{ErrorKind, IoSlice};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;

/// Frames handed to the kernel in one call, at most (well under any system's `IOV_MAX`): the
/// session's batch.
pub use crate::session::transport::MAX_BATCH;

pub struct FrameWriter {
    socket: OwnedWriteHalf,
    /// permessage-deflate was negotiated: text messages from this many bytes up go compressed.
    compress_from: Option<usize>,
}

impl FrameWriter {
    pub fn new(socket: OwnedWriteHalf) -> Self {
        FrameWriter {
            socket,
            compress_from: None,
        }
    }

    /// Compresses text messages of at least `threshold` bytes (permessage-deflate negotiated).
    pub fn compressing(mut self, threshold: usize) -> Self {
        self.compress_from = Some(threshold);
        self
    }

    /// With permessage-deflate negotiated: the size from which text messages go compressed.
    pub fn compress_from(&self) -> Option<usize> {
        self.compress_from
    }

    /// A text message framed for this connection: compressed when negotiated and large enough.
    pub fn text_frame(&self, text: &str) -> Bytes {
        match self.compress_from {
            Some(threshold) if text.len() >= threshold => {
                super::deflate::compressed_text_frame(text.as_bytes())
            }
            _ => super::text_frame(text),
        }
    }

    /// Writes `frames` (at most [`MAX_BATCH`]) in order. Not cancel-safe: the caller bounds it
    /// with a timeout and treats a timeout as a lost connection.
    pub async fn send<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> std::io::Result<()> {
        match self.send_now(frames)? {
            None => Ok(()),
            Some(rest) => self.send_rest(rest).await,
        }
    }

    /// Writes what the kernel takes of `frames` (at most [`MAX_BATCH`]) at once, without
    /// waiting; what it did not take, as one buffer for [`FrameWriter::send_rest`]. A caller
    /// whose frames borrow a buffer of its own can then let it go before it waits, so the
    /// buffer is not kept in every connection's task.
    pub fn send_now<F: AsRef<[u8]>>(&mut self, frames: &[F]) -> std::io::Result<Option<BytesMut>> {
        debug_assert!(frames.len() <= MAX_BATCH);
        let total: usize = frames.iter().map(|frame| frame.as_ref().len()).sum();
        // The usual case: the kernel takes everything at once, with no waiting.
        let written = match self.try_send(frames) {
            Ok(written) => written,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if written == total {
            return Ok(None);
        }
        Ok(Some(remainder(frames, written)))
    }

    /// Waits until the socket has taken `rest` (a slow reader filled its buffer).
    pub async fn send_rest(&mut self, rest: BytesMut) -> std::io::Result<()> {
        self.socket.write_all(&rest).await
    }

    fn try_send<F: AsRef<[u8]>>(&self, frames: &[F]) -> std::io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); MAX_BATCH];
        let count = frames.len().min(MAX_BATCH);
        for (slice, frame) in slices.iter_mut().zip(frames) {
            *slice = IoSlice::new(frame.as_ref());
        }
        self.socket.try_write_vectored(&slices[..count])
    }

    /// Sends FIN after the close frame, so the client reads the close before the socket ends.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.socket.shutdown().await
    }
}

/// What is left of `frames` after the first `written` bytes, as one buffer.
fn remainder<F: AsRef<[u8]>>(frames: &[F], mut written: usize) -> BytesMut {
    let mut rest = BytesMut::new();
    for frame in frames.iter().map(AsRef::as_ref) {
        if written >= frame.len() {
            written -= frame.len();
            continue;
        }
        rest.extend_from_slice(&frame[written..]);
        written = 0;
    }
    rest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainder_starts_where_the_kernel_stopped() {
        let frames = [
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"de"),
            Bytes::from_static(b"fgh"),
        ];
        assert_eq!(&remainder(&frames, 0)[..], b"abcdefgh");
        assert_eq!(&remainder(&frames, 4)[..], b"efgh");
        assert_eq!(&remainder(&frames, 5)[..], b"fgh");
        assert_eq!(&remainder(&frames, 8)[..], b"");
    }
}
