//! What the gateway keeps: tickets, revocations, channel presence and channel history. Each
//! is one enum over two backends that give the same answers, MongoDB for one or many nodes
//! and in process for a single node (`tests/api/store_conformance.rs` holds them to it).

pub mod cluster_events;
pub mod history;
pub mod lifecycle;
pub mod nodes;
pub mod presence;
pub mod publish_keys;
pub mod revocations;
pub mod tickets;

pub use history::{
    Append, Appended, HistoryPage, HistoryQuery, HistoryStore, MemoryHistory, MongoHistory,
    StoredPublication, StreamPublication, StreamTop,
};
pub use presence::{MongoPresence, PresenceStore};
pub use revocations::{MemoryRevocations, MongoRevocations, RevocationStore};
pub use tickets::{
    MemoryTicketStore, MongoTicketStore, RedeemError, Redeemed, TicketRejection, TicketStore,
};
