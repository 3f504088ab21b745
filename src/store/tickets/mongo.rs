//! The MongoDB ticket store: collection `ws_tickets`, one document per ticket.

use std::time::Duration;

use bson::oid::ObjectId;
use bson::{Binary, DateTime, doc, spec::BinarySubtype};
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{RedeemError, Redeemed, TicketRejection, is_expired};
use crate::config::TicketPolicy;
use crate::db::{Bounds, PerThreadDatabase, Unavailable};
use crate::ticket::{NewTicket, PresentedTicket};

pub const TICKETS_COLLECTION: &str = "ws_tickets";
const TOKEN_TYPE: &str = "ws";

/// The stored form of a ticket. Field names are part of the documented contract.
#[derive(Debug, Serialize, Deserialize)]
struct TicketDocument {
    #[serde(rename = "_id")]
    id: ObjectId,
    token_type: String,
    user_id: String,
    /// The TTL index is on this field.
    created_at: DateTime,
    /// SHA-256 of the ticket's secret; the secret itself is never stored.
    secret_hash: Binary,
}

pub struct MongoTicketStore {
    db: Database,
    tickets: Collection<TicketDocument>,
    /// When set, each thread's own client serves the ticket operations.
    per_thread: Option<PerThreadDatabase>,
    policy: TicketPolicy,
    bounds: Bounds,
}

impl MongoTicketStore {
    pub fn new(db: &Database, policy: TicketPolicy, bounds: Bounds) -> Self {
        MongoTicketStore {
            db: db.clone(),
            tickets: db.collection(TICKETS_COLLECTION),
            per_thread: None,
            policy,
            bounds,
        }
    }

    /// Ticket operations go through a client of the calling thread's own (see `per_thread`).
    pub fn with_per_thread_clients(mut self, per_thread: PerThreadDatabase) -> Self {
        self.per_thread = Some(per_thread);
        self
    }

    fn tickets(&self) -> Collection<TicketDocument> {
        match &self.per_thread {
            Some(per_thread) => per_thread.get().collection(TICKETS_COLLECTION),
            None => self.tickets.clone(),
        }
    }

    /// Ready (migrations applied) and answering a `ping` within the store timeout.
    pub(super) async fn ping(&self) -> Result<(), Unavailable> {
        self.bounds
            .run("ping", self.db.run_command(doc! { "ping": 1 }))
            .await
            .map(|_| ())
    }

    pub(super) async fn insert(
        &self,
        ticket: &NewTicket,
        user_id: &str,
    ) -> Result<(), Unavailable> {
        let document = TicketDocument {
            id: ticket.id,
            token_type: TOKEN_TYPE.into(),
            user_id: user_id.to_owned(),
            created_at: DateTime::now(),
            secret_hash: binary(&ticket.secret_hash()),
        };
        self.bounds
            .run_entry("insert", self.tickets().insert_one(&document))
            .await?;
        Ok(())
    }

    /// Single use: one round trip, `findOneAndDelete` on `{_id, secret_hash}`. Only the holder
    /// of the secret can consume the ticket (someone who guessed an ObjectId cannot burn it),
    /// and of racing redeemers exactly one gets the document. The secret's hash is matched by
    /// the server rather than compared here in constant time; timing cannot leak anything
    /// useful, since nobody can choose a SHA-256 prefix. When `admit` refuses (a connection
    /// limit), the document is put back as it was, so the client keeps its ticket.
    pub(super) async fn redeem<T, E>(
        &self,
        presented: &PresentedTicket,
        admit: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(Redeemed, T), RedeemError<E>> {
        if !self.policy.single_use {
            return self.redeem_reusable(presented, admit).await;
        }
        let consume = doc! {
            "_id": presented.id,
            "token_type": TOKEN_TYPE,
            "secret_hash": binary(presented.secret_hash()),
        };
        let Some(stored) = self
            .bounds
            .run("consume", self.tickets().find_one_and_delete(consume))
            .await?
        else {
            return Err(RedeemError::Rejected(self.why_not_found(presented).await));
        };
        if self.is_expired(&stored) {
            return Err(RedeemError::Rejected(TicketRejection::Expired));
        }
        match admit(&stored.user_id) {
            Ok(admitted) => Ok((
                Redeemed {
                    user_id: stored.user_id,
                },
                admitted,
            )),
            Err(refusal) => {
                if let Err(e) = self
                    .bounds
                    .run("restore", self.tickets().insert_one(&stored))
                    .await
                {
                    log::warn!("putting back a ticket refused by a limit: {e}");
                }
                Err(RedeemError::NotAdmitted(refusal))
            }
        }
    }

    /// Reusable tickets: find, compare the hash in constant time, admit; nothing is deleted.
    async fn redeem_reusable<T, E>(
        &self,
        presented: &PresentedTicket,
        admit: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(Redeemed, T), RedeemError<E>> {
        let filter = doc! { "_id": presented.id, "token_type": TOKEN_TYPE };
        let stored = self
            .bounds
            .run("find", self.tickets().find_one(filter))
            .await?
            .ok_or(RedeemError::Rejected(TicketRejection::Unknown))?;
        if !presented.matches(&stored.secret_hash.bytes) {
            return Err(RedeemError::Rejected(TicketRejection::SecretMismatch));
        }
        if self.is_expired(&stored) {
            return Err(RedeemError::Rejected(TicketRejection::Expired));
        }
        let admitted = admit(&stored.user_id).map_err(RedeemError::NotAdmitted)?;
        Ok((
            Redeemed {
                user_id: stored.user_id,
            },
            admitted,
        ))
    }

    /// For the log and the metric only (the client hears `invalid_ticket` either way): is the
    /// ticket's id known with another secret, or not at all (never, expired, or used)?
    async fn why_not_found(&self, presented: &PresentedTicket) -> TicketRejection {
        let filter = doc! { "_id": presented.id, "token_type": TOKEN_TYPE };
        match self
            .bounds
            .run("find", self.tickets().find_one(filter))
            .await
        {
            Ok(Some(_)) => TicketRejection::SecretMismatch,
            _ => TicketRejection::Unknown,
        }
    }

    fn is_expired(&self, stored: &TicketDocument) -> bool {
        let age_ms = DateTime::now().timestamp_millis() - stored.created_at.timestamp_millis();
        is_expired(Duration::from_millis(age_ms.max(0) as u64), &self.policy)
    }

    pub(super) async fn delete_user(&self, user_id: &str) -> Result<u64, Unavailable> {
        let filter = doc! { "user_id": user_id, "token_type": TOKEN_TYPE };
        Ok(self
            .bounds
            .run("delete_user", self.tickets().delete_many(filter))
            .await?
            .deleted_count)
    }
}

fn binary(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}
