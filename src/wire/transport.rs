//! The WebSocket transport: a session's [`Transport`] on an upgraded socket. It owns the
//! framing (a delivery's frame is made once per node and shared), permessage-deflate, the
//! control frames (a Ping is answered with its Pong, the heartbeat's probe is a Ping) and the
//! closing handshake.

use bytes::Bytes;
use futures_util::FutureExt;

use super::reader::{FrameReader, ReadError};
use super::writer::FrameWriter;
use super::{Incoming, close_frame, ping_frame, pong_frame, text_frame};
use crate::hub::{Delivery, Form};
use crate::session::CloseReason;
use crate::session::transport::{ClientEvent, MAX_BATCH, Transport, TransportKind};

pub struct WebSocket {
    reader: FrameReader,
    writer: FrameWriter,
    /// The Pong owed for the latest Ping, written before the next messages (RFC 6455 §5.5.3
    /// lets an endpoint answer only the most recent Ping).
    owed_pong: Option<Bytes>,
}

impl WebSocket {
    pub fn new(reader: FrameReader, writer: FrameWriter) -> Self {
        WebSocket {
            reader,
            writer,
            owed_pong: None,
        }
    }

    fn event(&mut self, read: Result<Incoming, ReadError>) -> Result<ClientEvent, CloseReason> {
        Ok(match read? {
            Incoming::Text(text) => ClientEvent::Text(text),
            Incoming::Binary(_) => ClientEvent::Binary,
            Incoming::Ping(payload) => {
                self.owed_pong = Some(payload);
                ClientEvent::Alive
            }
            Incoming::Pong(_) => ClientEvent::Alive,
            Incoming::Close(payload) => ClientEvent::Closed(payload),
        })
    }

    /// The frame a delivery goes out in on this connection: its shared text frame, or its
    /// shared compressed frame where permessage-deflate was negotiated and it is large enough.
    fn frame_of(compress_from: Option<usize>, delivery: &Delivery) -> &[u8] {
        match compress_from {
            Some(threshold) if delivery.message.len() >= threshold => delivery
                .form(Form::WebSocketDeflate, |text| {
                    super::deflate::compressed_text_frame(text.as_bytes())
                }),
            _ => delivery.form(Form::WebSocketText, text_frame),
        }
    }
}

impl From<ReadError> for CloseReason {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Eof | ReadError::Io(_) => CloseReason::ConnectionLost,
            ReadError::TooBig { .. } => CloseReason::MessageTooBig,
            ReadError::InvalidUtf8 => CloseReason::InvalidUtf8,
            ReadError::Protocol(_) => CloseReason::ProtocolError,
        }
    }
}

impl Transport for WebSocket {
    const KIND: TransportKind = TransportKind::WebSocket;
    const PROBE_ANSWERED: bool = true;

    async fn next_event(&mut self, max_bytes: usize) -> Result<ClientEvent, CloseReason> {
        let read = self.reader.next_message(max_bytes).await;
        self.event(read)
    }

    fn buffered_event(&mut self, max_bytes: usize) -> Option<Result<ClientEvent, CloseReason>> {
        let read = self.reader.next_message(max_bytes).now_or_never()?;
        Some(self.event(read))
    }

    async fn send(&mut self, messages: &[&str]) -> std::io::Result<()> {
        let mut frames: Vec<Bytes> = Vec::with_capacity(messages.len() + 1);
        frames.extend(self.owed_pong.take().map(|payload| pong_frame(&payload)));
        frames.extend(messages.iter().map(|text| self.writer.text_frame(text)));
        for chunk in frames.chunks(MAX_BATCH) {
            self.writer.send(chunk).await?;
        }
        Ok(())
    }

    async fn deliver(&mut self, deliveries: &[Delivery]) -> std::io::Result<()> {
        if self.owed_pong.is_some() {
            self.send(&[]).await?;
        }
        // The frames' list lives on the stack only until the kernel has taken what it takes:
        // held across a wait, it would grow every connection's task by a kilobyte.
        let rest = {
            let compress_from = self.writer.compress_from();
            let mut frames: [&[u8]; MAX_BATCH] = [&[]; MAX_BATCH];
            let count = deliveries.len().min(MAX_BATCH);
            for (frame, delivery) in frames.iter_mut().zip(deliveries) {
                *frame = Self::frame_of(compress_from, delivery);
            }
            self.writer.send_now(&frames[..count])?
        };
        match rest {
            None => Ok(()),
            Some(rest) => self.writer.send_rest(rest).await,
        }
    }

    async fn probe(&mut self) -> std::io::Result<()> {
        self.writer.send(&[ping_frame()]).await
    }

    async fn close(&mut self, reason: &CloseReason) -> std::io::Result<()> {
        let Some(payload) = reason.payload() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        self.writer.send(&[close_frame(Some(payload))]).await?;
        // RFC 6455 §7.1.1: the server ends the TCP connection first.
        self.writer.shutdown().await
    }

    async fn linger(self) {
        // Read on until the client closes its side, so bytes it still sends do not turn the
        // close into a reset that could cost it the close frame.
        self.reader.discard_until_eof().await;
    }
}

#[cfg(test)]
mod size_probe {
    #[test]
    fn print_sizes() {
        use std::mem::size_of;
        println!(
            "Connection<Authenticated, WebSocket> {}",
            size_of::<crate::session::Connection<crate::session::Authenticated, super::WebSocket>>(
            )
        );
        println!(
            "Authenticated {}",
            size_of::<crate::session::Authenticated>()
        );
        println!("WebSocket {}", size_of::<super::WebSocket>());
        println!("FrameReader {}", size_of::<super::FrameReader>());
        println!("FrameWriter {}", size_of::<super::FrameWriter>());
        println!("OpenConnection {}", size_of::<crate::hub::OpenConnection>());
        println!("Membership {}", size_of::<crate::hub::Membership>());
        println!("Sleep {}", size_of::<tokio::time::Sleep>());
        println!("Expiry {}", size_of::<crate::session::expiry::Expiry>());
        println!("ClaimGrants {}", size_of::<crate::channels::ClaimGrants>());
        println!("Calls {}", size_of::<crate::session::calls::Calls>());
        println!(
            "Closing {}",
            size_of::<crate::session::Closing<super::WebSocket>>()
        );
    }
}
