//! The MongoDB ticket store: collection `ws_tickets`, one document per ticket.
//!
//! Mints and single-use redeems go through group commits (`crate::db::GroupCommit`): in a
//! burst of connections (a node restarting, say), MongoDB gets one `insertMany` for many
//! mints and one claim for many redeems instead of a command each, which is what it can keep
//! up with. A request alone is still one command, sent at once.

use std::collections::HashMap;
use std::time::Duration;

use bson::oid::ObjectId;
use bson::{Binary, DateTime, doc, spec::BinarySubtype};
use futures_util::TryStreamExt;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{RedeemError, Redeemed, TicketRejection, is_expired};
use crate::config::TicketPolicy;
use crate::db::collections::TICKETS;
use crate::db::{Batching, Bounds, GroupCommit, PerThreadDatabase, Unavailable};
use crate::ticket::{NewTicket, PresentedTicket};

const TOKEN_TYPE: &str = "ws";
/// The field a batch of redeems marks the tickets it takes with, before it deletes them.
const CLAIMED_BY: &str = "claimed_by";

/// Batches of mints, and of redeems: up to 256 tickets each, four of each kind at once (a
/// handful of the store's `STORE_MAX_IN_FLIGHT` turns, however large the burst).
const BATCHING: Batching = Batching {
    max_batch: 256,
    slots: 4,
};

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
    /// Set by the batch of redeems that took the ticket, in the moment between taking it and
    /// deleting it: a claimed ticket is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    claimed_by: Option<ObjectId>,
}

/// A ticket as presented for a single-use redeem: its id and its secret's hash.
struct Presented {
    id: ObjectId,
    secret_hash: Vec<u8>,
}

impl Presented {
    /// The ticket, when unclaimed and this is its secret.
    fn filter(&self) -> bson::Document {
        doc! {
            "_id": self.id,
            "token_type": TOKEN_TYPE,
            "secret_hash": binary(&self.secret_hash),
            CLAIMED_BY: { "$exists": false },
        }
    }
}

pub struct MongoTicketStore {
    db: Database,
    tickets: Collection<TicketDocument>,
    /// When set, each thread's own client serves the ticket operations.
    per_thread: Option<PerThreadDatabase>,
    policy: TicketPolicy,
    bounds: Bounds,
    mints: GroupCommit<TicketDocument, ()>,
    redeems: GroupCommit<Presented, Option<TicketDocument>>,
}

impl MongoTicketStore {
    /// Must be called within a tokio runtime: it starts the tasks that form the batches.
    pub fn new(db: &Database, policy: TicketPolicy, bounds: Bounds) -> Self {
        let tickets: Collection<TicketDocument> = db.collection(TICKETS);
        let mints = GroupCommit::start(BATCHING, {
            let (tickets, bounds) = (tickets.clone(), bounds.clone());
            move |documents| insert_batch(tickets.clone(), bounds.clone(), documents)
        });
        // One delete at a time is plenty: nobody waits for it.
        let deletes = GroupCommit::start(
            Batching {
                max_batch: 64,
                slots: 1,
            },
            {
                let (tickets, bounds) = (tickets.clone(), bounds.clone());
                move |batches| delete_used(tickets.clone(), bounds.clone(), batches)
            },
        );
        let redeems = GroupCommit::start(BATCHING, {
            let (tickets, bounds) = (tickets.clone(), bounds.clone());
            move |presented| {
                consume_batch(tickets.clone(), bounds.clone(), deletes.clone(), presented)
            }
        });
        MongoTicketStore {
            db: db.clone(),
            tickets,
            per_thread: None,
            policy,
            bounds,
            mints,
            redeems,
        }
    }

    /// Ticket operations go through a client of the calling thread's own (see `per_thread`).
    pub fn with_per_thread_clients(mut self, per_thread: PerThreadDatabase) -> Self {
        self.per_thread = Some(per_thread);
        self
    }

    fn tickets(&self) -> Collection<TicketDocument> {
        match &self.per_thread {
            Some(per_thread) => per_thread.get().collection(TICKETS),
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
            claimed_by: None,
        };
        self.mints.submit(document).await
    }

    /// Single use: the ticket is taken by matching `{_id, secret_hash}` on the server (see
    /// [`consume_batch`]). Only the holder of the secret can consume the ticket (someone who
    /// guessed an ObjectId cannot burn it), and of racing redeemers exactly one gets the
    /// document. The secret's hash is matched by the server rather than compared here in
    /// constant time; timing cannot leak anything useful, since nobody can choose a SHA-256
    /// prefix. When `admit` refuses (a connection limit), the document is put back as it was,
    /// so the client keeps its ticket.
    pub(super) async fn redeem<T, E>(
        &self,
        presented: &PresentedTicket,
        admit: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(Redeemed, T), RedeemError<E>> {
        if !self.policy.single_use {
            return self.redeem_reusable(presented, admit).await;
        }
        let request = Presented {
            id: presented.id,
            secret_hash: presented.secret_hash().to_vec(),
        };
        let Some(mut stored) = self.redeems.submit(request).await? else {
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
                // Whether or not the batch's delete has run yet: it deletes only what its
                // claim still marks, and the upsert puts the ticket back either way.
                stored.claimed_by = None;
                let tickets = self.tickets();
                let restore = tickets
                    .replace_one(doc! { "_id": stored.id }, &stored)
                    .upsert(true);
                if let Err(e) = self.bounds.run("restore", restore).await {
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
        let filter = doc! {
            "_id": presented.id,
            "token_type": TOKEN_TYPE,
            CLAIMED_BY: { "$exists": false },
        };
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

/// One `insertMany` for a batch of mints (unordered: each document stands alone).
async fn insert_batch(
    tickets: Collection<TicketDocument>,
    bounds: Bounds,
    documents: Vec<TicketDocument>,
) -> Result<Vec<()>, Unavailable> {
    let count = documents.len();
    bounds
        .run_entry("insert", tickets.insert_many(documents).ordered(false))
        .await?;
    Ok(vec![(); count])
}

/// Takes a batch of presented tickets; answers, per request, the ticket it took, if any.
///
/// Alone, a request is one `findOneAndDelete`. Several are three commands however many they
/// are: one `updateMany` claims every unclaimed ticket whose id and secret hash were
/// presented, marking it with a fresh id for this batch (each document is claimed atomically,
/// so of racing batches, on this node or another, exactly one takes a ticket); one `find`
/// reads back what this batch claimed; and a `deleteMany` of those (with other batches'),
/// which nobody waits for (a claimed ticket is already used; if the delete is lost, the TTL
/// index removes it). A ticket presented twice in one batch goes to the first request with
/// its secret.
async fn consume_batch(
    tickets: Collection<TicketDocument>,
    bounds: Bounds,
    deletes: GroupCommit<Vec<ObjectId>, ()>,
    presented: Vec<Presented>,
) -> Result<Vec<Option<TicketDocument>>, Unavailable> {
    if let [one] = presented.as_slice() {
        let taken = bounds
            .run("consume", tickets.find_one_and_delete(one.filter()))
            .await?;
        return Ok(vec![taken]);
    }
    let claim = ObjectId::new();
    let ids: Vec<ObjectId> = presented.iter().map(|p| p.id).collect();
    let hashes: Vec<Binary> = presented.iter().map(|p| binary(&p.secret_hash)).collect();
    // Both lists rather than an `$or` of pairs, which MongoDB plans clause by clause: a
    // ticket whose id is in `ids` has its hash in `hashes` only if somebody in the batch
    // presented that very ticket's secret (secrets are 256 random bits, one per ticket), so
    // a guessed id claims nothing, just as with pairs.
    let claimable = doc! {
        "_id": { "$in": &ids },
        "token_type": TOKEN_TYPE,
        "secret_hash": { "$in": hashes },
        CLAIMED_BY: { "$exists": false },
    };
    let claimed = bounds
        .run(
            "claim",
            tickets.update_many(claimable, doc! { "$set": { CLAIMED_BY: claim } }),
        )
        .await?;
    if claimed.modified_count == 0 {
        return Ok(presented.iter().map(|_| None).collect());
    }
    let read = tickets.find(doc! { "_id": { "$in": &ids }, CLAIMED_BY: claim });
    let mut taken: HashMap<ObjectId, TicketDocument> = bounds
        .run("claimed", async {
            read.await?.try_collect::<Vec<_>>().await
        })
        .await?
        .into_iter()
        .map(|document| (document.id, document))
        .collect();
    let answers: Vec<Option<TicketDocument>> = presented
        .iter()
        .map(|request| match taken.get(&request.id) {
            Some(document) if document.secret_hash.bytes == request.secret_hash => {
                taken.remove(&request.id)
            }
            _ => None,
        })
        .collect();
    // What is left was claimed without being presented with its own secret (its holder put
    // the secret under another id): it is nobody's to take, so it goes back as it was.
    if !taken.is_empty() {
        let unpresented: Vec<ObjectId> = taken.into_keys().collect();
        let release = tickets.update_many(
            doc! { "_id": { "$in": unpresented }, CLAIMED_BY: claim },
            doc! { "$unset": { CLAIMED_BY: "" } },
        );
        if let Err(e) = bounds.run("release", release).await {
            log::warn!("putting back tickets claimed without their secret: {e}");
        }
    }
    let used: Vec<ObjectId> = answers.iter().flatten().map(|d| d.id).collect();
    tokio::spawn(async move {
        if let Err(e) = deletes.submit(used).await {
            log::debug!("deleting used tickets (the TTL index will): {e}");
        }
    });
    Ok(answers)
}

/// Deletes used tickets, the ids of several batches of redeems in one `deleteMany`. Only
/// what is still claimed: a ticket put back meanwhile (a connection limit refused its user)
/// has lost its `claimed_by`.
async fn delete_used(
    tickets: Collection<TicketDocument>,
    bounds: Bounds,
    batches: Vec<Vec<ObjectId>>,
) -> Result<Vec<()>, Unavailable> {
    let count = batches.len();
    let ids: Vec<ObjectId> = batches.into_iter().flatten().collect();
    let used = doc! { "_id": { "$in": ids }, CLAIMED_BY: { "$exists": true } };
    bounds.run("delete_used", tickets.delete_many(used)).await?;
    Ok(vec![(); count])
}

fn binary(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}
