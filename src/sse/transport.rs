//! [`ServerSentEvents`]: a session's transport on the socket of an SSE response. Server
//! messages go out as events (a delivery's event is made once per node and shared); client
//! messages come from the connection's inbox, filled by POSTs; the socket's read side only
//! tells when the client went away.

use std::io::ErrorKind;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::{HEARTBEAT, event};
use crate::hub::{Delivery, Form, InboxGuard};
use crate::protocol::ServerMessage;
use crate::session::CloseReason;
use crate::session::transport::{ClientEvent, MAX_BATCH, Transport, TransportKind};
use crate::wire::FrameWriter;

pub struct ServerSentEvents {
    reader: OwnedReadHalf,
    writer: FrameWriter,
    inbox: InboxGuard,
}

impl ServerSentEvents {
    /// Starts the stream on a socket whose response head was written: the first event names
    /// the session. The socket's send buffer is empty, so the event is written at once or
    /// the client is already gone. A peer that stops acknowledging what is written for
    /// `client_timeout` is taken for gone by the kernel (TCP_USER_TIMEOUT), so a heartbeat
    /// to a vanished client fails within it rather than after the kernel's own minutes.
    pub fn open(
        socket: TcpStream,
        inbox: InboxGuard,
        session: &str,
        client_timeout: Duration,
    ) -> std::io::Result<Self> {
        socket2::SockRef::from(&socket).set_tcp_user_timeout(Some(client_timeout))?;
        let first = event(&ServerMessage::Session { session }.encode());
        if socket.try_write(&first)? != first.len() {
            return Err(ErrorKind::WouldBlock.into());
        }
        let (reader, writer) = socket.into_split();
        Ok(ServerSentEvents {
            reader,
            writer: FrameWriter::new(writer),
            inbox,
        })
    }

    fn checked(
        message: bytestring::ByteString,
        max_bytes: usize,
    ) -> Result<ClientEvent, CloseReason> {
        if message.len() > max_bytes {
            return Err(CloseReason::MessageTooBig);
        }
        Ok(ClientEvent::Text(message))
    }
}

/// Resolves when the client closes its side (or sends anything: after an SSE request it has
/// nothing to say on this socket). Cancel-safe.
async fn client_gone(reader: &OwnedReadHalf) -> CloseReason {
    loop {
        if reader.readable().await.is_err() {
            return CloseReason::ConnectionLost;
        }
        let mut byte = [0u8; 1];
        match reader.try_read(&mut byte) {
            Ok(0) => return CloseReason::ConnectionLost,
            Ok(_) => return CloseReason::ProtocolError,
            Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
            Err(_) => return CloseReason::ConnectionLost,
        }
    }
}

impl Transport for ServerSentEvents {
    const KIND: TransportKind = TransportKind::ServerSentEvents;
    const PROBE_ANSWERED: bool = false;

    async fn next_event(&mut self, max_bytes: usize) -> Result<ClientEvent, CloseReason> {
        // What the session reads now is what a POST's body may hold.
        self.inbox.set_max_body(max_bytes);
        tokio::select! {
            message = self.inbox.take() => Self::checked(message, max_bytes),
            gone = client_gone(&self.reader) => Err(gone),
        }
    }

    fn buffered_event(&mut self, max_bytes: usize) -> Option<Result<ClientEvent, CloseReason>> {
        let message = self.inbox.try_take()?;
        Some(Self::checked(message, max_bytes))
    }

    async fn send(&mut self, messages: &[&str]) -> std::io::Result<()> {
        let events: Vec<Bytes> = messages.iter().map(|text| event(text)).collect();
        for chunk in events.chunks(MAX_BATCH) {
            self.writer.send(chunk).await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, deliveries: &[Delivery]) -> std::io::Result<()> {
        // As for the WebSocket: the list of events lives on the stack only until the kernel
        // has taken what it takes.
        let rest = {
            let mut events: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
            let count = deliveries.len().min(MAX_BATCH);
            for (slot, delivery) in events.iter_mut().zip(deliveries) {
                *slot = delivery.form(Form::ServerSentEvent, event);
            }
            self.writer.send_now(&events[..count])?
        };
        match rest {
            None => Ok(()),
            Some(rest) => self.writer.send_rest(rest).await,
        }
    }

    async fn probe(&mut self) -> std::io::Result<()> {
        self.writer.send(&[HEARTBEAT]).await
    }

    async fn close(&mut self, reason: &CloseReason) -> std::io::Result<()> {
        let Some(payload) = reason.payload() else {
            return Err(ErrorKind::NotConnected.into());
        };
        let description = payload.description.as_deref().unwrap_or("");
        let last = ServerMessage::Close {
            code: u16::from(payload.code),
            reason: description,
        }
        .encode();
        self.writer.send(&[event(&last)]).await?;
        // The response's body runs until the connection ends.
        self.writer.shutdown().await
    }

    async fn linger(self) {
        // Read until the client closes its side, so the socket ends with a FIN, not a reset
        // that could cost the client the last event.
        let mut buffer = [0u8; 256];
        loop {
            if self.reader.readable().await.is_err() {
                return;
            }
            match self.reader.try_read(&mut buffer) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    }
}
