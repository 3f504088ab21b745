//! Every accepted socket, as actix-http's HTTP/1 dispatcher holds it: the parser's bare
//! refusals get JSON bodies ([`JsonRefusals`]), and a response may hand the socket on once it
//! is written, instead of the socket being closed ([`AfterResponse`]).
//!
//! The second is how an SSE stream leaves the dispatcher. A streamed response body would keep
//! the dispatcher, with its two fixed 8 KiB buffers, for the stream's whole life (four times
//! what a WebSocket connection costs: docs/BENCHMARKS.md). Instead the application answers the
//! stream's head with no body and `Connection: close` (an HTTP/1.1 body that runs until the
//! connection closes, as SSE has always been served), leaves a [`Handoff`] in the connection's
//! [`AfterResponse`], and the dispatcher, having written the head, ends: the socket is handed
//! to the session where it would have been shut down. It works on any request of a keep-alive
//! connection, not only the first.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::refusals::JsonRefusals;

/// What to run on a socket once the response is written: left by the application in a 101
/// response's extensions (`upgrade.rs`), or in the connection's [`AfterResponse`]. Given the
/// socket and any bytes the client sent after its request (its first frame may already be
/// here).
pub struct Handoff(Box<StartSession>);

type StartSession = dyn FnOnce(TcpStream, &[u8]);

impl Handoff {
    pub fn new(start: impl FnOnce(TcpStream, &[u8]) + 'static) -> Self {
        Handoff(Box::new(start))
    }

    pub(super) fn start(self, socket: TcpStream, early: &[u8]) {
        (self.0)(socket, early)
    }
}

/// A connection's socket.
pub struct Socket {
    /// Taken only when the socket is handed on.
    io: Option<JsonRefusals<TcpStream>>,
    after: AfterResponse,
    /// The dispatcher wrote everything and would close the socket now.
    finished: bool,
}

/// What to do with a connection's socket after the current response, instead of closing it.
/// Every connection has one, in its connection data (`HttpRequest::conn_data`).
#[derive(Clone, Default)]
pub struct AfterResponse(Rc<Cell<Option<Handoff>>>);

impl AfterResponse {
    /// Hands the socket to `handoff` once the response is written. The response must end
    /// the exchange: no body of its own, and `Connection: close`. If the response is not
    /// written whole, the handoff is dropped unrun.
    pub fn hand_off(&self, handoff: Handoff) {
        self.0.set(Some(handoff));
    }

    /// Whether a handoff waits.
    fn is_set(&self) -> bool {
        let handoff = self.0.take();
        let set = handoff.is_some();
        self.0.set(handoff);
        set
    }
}

impl Socket {
    pub fn new(socket: TcpStream) -> Self {
        Socket {
            io: Some(JsonRefusals::new(socket)),
            after: AfterResponse::default(),
            finished: false,
        }
    }

    /// Where the application leaves a handoff for this connection.
    pub fn after_response(&self) -> &AfterResponse {
        &self.after
    }

    /// The socket itself, for the WebSocket session after an upgrade.
    pub fn into_tcp(mut self) -> Option<TcpStream> {
        self.io.take().map(JsonRefusals::into_inner)
    }

    fn io(&mut self) -> io::Result<&mut JsonRefusals<TcpStream>> {
        self.io
            .as_mut()
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io() {
            Ok(io) => Pin::new(io).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// The dispatcher shuts the socket down after it flushed the last response: where that
    /// response handed the socket on, it stays open for the handoff instead.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.after.is_set() {
            self.finished = true;
            return Poll::Ready(Ok(()));
        }
        match self.io() {
            Ok(io) => Pin::new(io).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let handoff = self.after.0.take();
        if let (true, Some(handoff), Some(io)) = (self.finished, handoff, self.io.take()) {
            handoff.start(io.into_inner(), &[]);
        }
    }
}
