//! Where tickets live: MongoDB for one or many nodes (`mongo.rs`), or in process for a single
//! node (`memory.rs`).
//! Both give the same answers; `tests/api/store_conformance.rs` holds them to it.

mod memory;
mod mongo;

use std::time::Duration;

pub use memory::MemoryTicketStore;
pub use mongo::MongoTicketStore;

use crate::config::TicketPolicy;
use crate::db::Unavailable;
use crate::ticket::{NewTicket, PresentedTicket};

/// Why a well-formed ticket was refused. All of these answer the client with the same
/// `invalid_ticket`; the distinction is for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TicketRejection {
    #[error("unknown, expired and removed, or already used")]
    Unknown,
    #[error("secret does not match")]
    SecretMismatch,
    #[error("expired")]
    Expired,
    #[error("already used")]
    AlreadyUsed,
}

impl TicketRejection {
    /// The `reason` label of the rejected-tickets metric.
    pub fn label(&self) -> &'static str {
        match self {
            TicketRejection::Unknown => "unknown",
            TicketRejection::SecretMismatch => "secret_mismatch",
            TicketRejection::Expired => "expired",
            TicketRejection::AlreadyUsed => "already_used",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedeemError<E = std::convert::Infallible> {
    #[error("ticket refused: {0}")]
    Rejected(TicketRejection),
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The ticket is valid, but the admission check refused; the ticket was not consumed.
    #[error("not admitted")]
    NotAdmitted(E),
}

/// A ticket that was valid and, under the single-use policy, is now consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    pub user_id: String,
}

pub enum TicketStore {
    Memory(MemoryTicketStore),
    Mongo(MongoTicketStore),
}

impl TicketStore {
    /// Creates and stores a ticket for `user_id`; the returned value is its only plain copy.
    pub async fn issue(&self, user_id: &str) -> Result<NewTicket, Unavailable> {
        let ticket = NewTicket::generate();
        match self {
            TicketStore::Memory(store) => store.insert(&ticket, user_id),
            TicketStore::Mongo(store) => store.insert(&ticket, user_id).await?,
        }
        Ok(ticket)
    }

    /// Checks a presented ticket and, when single use, consumes it atomically: of any number of
    /// concurrent redemptions of one ticket, on any number of nodes, exactly one succeeds.
    /// (The gateway always redeems with an admission check; this is the plain form, for tests.)
    #[cfg(any(test, feature = "testing"))]
    pub async fn redeem(&self, ticket: &PresentedTicket) -> Result<Redeemed, RedeemError> {
        self.redeem_admitting(ticket, |_| Ok(()))
            .await
            .map(|(redeemed, ())| redeemed)
    }

    /// Like [`redeem`](Self::redeem), with `admit` run on the ticket's user after the ticket is
    /// verified and before it is consumed: a refusal (say, a connection limit) leaves the
    /// ticket usable. What `admit` returns is dropped if the ticket is lost to a racing redeemer.
    pub async fn redeem_admitting<T, E>(
        &self,
        ticket: &PresentedTicket,
        admit: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(Redeemed, T), RedeemError<E>> {
        match self {
            TicketStore::Memory(store) => store.redeem(ticket, admit),
            TicketStore::Mongo(store) => store.redeem(ticket, admit).await,
        }
    }

    /// Whether the store answers now (for `/readyz`).
    pub async fn ping(&self) -> Result<(), Unavailable> {
        match self {
            TicketStore::Memory(_) => Ok(()),
            TicketStore::Mongo(store) => store.ping().await,
        }
    }

    /// Deletes every unused ticket of `user_id`; returns how many.
    pub async fn delete_user_tickets(&self, user_id: &str) -> Result<u64, Unavailable> {
        match self {
            TicketStore::Memory(store) => Ok(store.delete_user(user_id)),
            TicketStore::Mongo(store) => store.delete_user(user_id).await,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TicketStore::Memory(_) => "in-process",
            TicketStore::Mongo(_) => "mongodb",
        }
    }
}

/// Whether a ticket created `age` ago is past its TTL. Shared so both stores agree to the
/// millisecond; MongoDB's TTL monitor only runs once a minute by default, so the store checks
/// expiry itself rather than relying on deletion.
fn is_expired(age: Duration, policy: &TicketPolicy) -> bool {
    age >= policy.ttl
}
