//! The one interface between a session and whatever carries it to the client. The session's
//! rules, channels, RPC, recovery and lifecycle know only this; a transport (the WebSocket in
//! `crate::wire`, and any other) owns its framing, its control traffic and how it closes.
//!
//! Every method that writes is not cancel-safe: the session bounds each with
//! CLIENT_TIMEOUT_SECS and treats a timeout as a lost connection. [`Transport::next_event`]
//! is cancel-safe: the session waits for it beside its other events.

use std::future::Future;

use bytestring::ByteString;

use super::close::{ClosePayload, CloseReason};
use crate::hub::Delivery;

/// The most messages the session hands a transport in one write.
pub const MAX_BATCH: usize = 64;

/// What a client did, as the session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// One whole text message.
    Text(ByteString),
    /// One whole binary message: the protocol has none, so it is refused.
    Binary,
    /// A sign of life that carries nothing for the session (a WebSocket Ping, which the
    /// transport answers itself, or Pong).
    Alive,
    /// The client closed, with what it said (echoed back where the transport can).
    Closed(Option<ClosePayload>),
}

pub use crate::hub::TransportKind;

pub trait Transport {
    const KIND: TransportKind;

    /// Whether the client answers the heartbeat's probe (a WebSocket Pong). Where it cannot
    /// (an SSE client only reads), a probe the client's socket took counts as its sign of
    /// life: a client that stops taking writes is then lost through the write deadline.
    const PROBE_ANSWERED: bool;

    /// The next thing the client did. Messages over `max_bytes` end the connection.
    fn next_event(
        &mut self,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ClientEvent, CloseReason>>;

    /// The next event if the transport has it already, without waiting: a client that
    /// pipelines requests is then answered in one write.
    fn buffered_event(&mut self, max_bytes: usize) -> Option<Result<ClientEvent, CloseReason>>;

    /// Writes messages encoded for this connection alone, in order, after whatever the
    /// transport owes the client itself (a Pong); with no messages, only that.
    fn send(&mut self, messages: &[&str]) -> impl Future<Output = std::io::Result<()>>;

    /// Writes deliveries (at most [`MAX_BATCH`]) in order, each in the form its transport
    /// shares across this node's connections.
    fn deliver(&mut self, deliveries: &[Delivery]) -> impl Future<Output = std::io::Result<()>>;

    /// The transport's own probe of a quiet client (a WebSocket Ping), sent on the heartbeat.
    fn probe(&mut self) -> impl Future<Output = std::io::Result<()>>;

    /// Tells the client why the connection ends, and ends it; an error when it cannot be told.
    fn close(&mut self, reason: &CloseReason) -> impl Future<Output = std::io::Result<()>>;

    /// After a close the client was told of: waits for the client to end its side (the
    /// session bounds the wait).
    fn linger(self) -> impl Future<Output = ()>;
}
