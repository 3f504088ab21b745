//! JSON bodies for the refusals actix-http's HTTP/1 parser writes by itself: 400 for a request
//! it cannot parse, 408 when a request head does not arrive in time, 431 for a head that is
//! too large. actix-http sends those with an empty body and offers no hook for them, so the
//! connection's socket is wrapped: a response head of one of these statuses with
//! `content-length: 0` (the application never answers so; its errors always carry JSON) is
//! replaced, on its way out, by the same status with the gateway's JSON error body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection's socket, with the parser's bare refusals given JSON bodies.
pub struct JsonRefusals<T = TcpStream> {
    inner: T,
    /// A replacement response still to be written.
    pending: Bytes,
}

impl<T> JsonRefusals<T> {
    pub fn new(inner: T) -> Self {
        JsonRefusals {
            inner,
            pending: Bytes::new(),
        }
    }

    /// The socket itself, for the WebSocket session after an upgrade.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

/// The JSON error for a bare refusal of the parser's, if `head` is one.
fn replacement(head: &[u8]) -> Option<Bytes> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (code, error, message) = match status {
        b"400" => (
            "400 Bad Request",
            "bad_request",
            "the request is not valid HTTP/1.1",
        ),
        b"408" => (
            "408 Request Timeout",
            "request_timeout",
            "the request head did not arrive within HTTP_REQUEST_TIMEOUT_SECS",
        ),
        b"431" => (
            "431 Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large",
        ),
        _ => return None,
    };
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let empty = head[..end]
        .split(|&b| b == b'\n')
        .any(|line| line.eq_ignore_ascii_case(b"content-length: 0\r"));
    if !empty {
        return None;
    }
    let body = format!(r#"{{"error":"{error}","message":"{message}"}}"#);
    Some(Bytes::from(format!(
        "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )))
}

impl<T: AsyncWrite + Unpin> JsonRefusals<T> {
    /// Writes what is pending; ready once none is left.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRefusals<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_pending(cx))?;
        if let Some(json) = replacement(buf) {
            // The parser's whole (bodiless) response counts as written; ours goes out instead.
            self.pending = json;
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_parsers_bare_refusals_are_replaced() {
        let bare = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\ndate: x\r\n\r\n";
        let json = replacement(bare).expect("replaced");
        let text = std::str::from_utf8(&json).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        let value: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(value["error"], "headers_too_large");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));

        // The application's own 400s carry a body, and other statuses pass untouched.
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 57\r\n\r\n{}").is_none());
        assert!(replacement(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0").is_none());
    }
}
