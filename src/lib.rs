//! ticketgate: a WebSocket gateway with two-phase authentication.
//!
//! Phase 1: `GET /token/ws` trades a user JWT for a short-lived, single-use ticket.
//! Phase 2: `GET /demo?token=<ticket>` upgrades; the first message must carry the JWT again.
//! See docs/PROTOCOL.md for the wire contract.

pub mod build_info;
pub mod bus;
pub mod channels;
pub mod client_ip;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod db;
pub mod demo_broadcaster;
pub mod error;
pub mod hub;
pub mod jwt;
pub mod lifecycle;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod origin;
pub mod outbox;
pub mod protocol;
pub mod reload;
pub mod routes;
pub mod session;
pub mod shutdown;
pub mod sse;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod ticket;
pub mod upstream;
pub mod wire;
