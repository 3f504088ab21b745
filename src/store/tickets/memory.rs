//! The in-process ticket store: the embedded default for a single node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use bson::oid::ObjectId;

use super::{RedeemError, Redeemed, TicketRejection, is_expired};
use crate::config::TicketPolicy;
use crate::ticket::{NewTicket, PresentedTicket, SecretHash};

struct StoredTicket {
    user_id: String,
    secret_hash: SecretHash,
    created_at: Instant,
}

struct Tickets {
    by_id: HashMap<ObjectId, StoredTicket>,
    /// Expired tickets are swept when the map reaches this size; doubling it keeps sweeping
    /// amortised O(1) per insert without a background task.
    sweep_at: usize,
}

const MIN_SWEEP_AT: usize = 1024;

pub struct MemoryTicketStore {
    policy: TicketPolicy,
    tickets: Mutex<Tickets>,
}

impl MemoryTicketStore {
    pub fn new(policy: TicketPolicy) -> Self {
        MemoryTicketStore {
            policy,
            tickets: Mutex::new(Tickets {
                by_id: HashMap::new(),
                sweep_at: MIN_SWEEP_AT,
            }),
        }
    }

    pub(super) fn insert(&self, ticket: &NewTicket, user_id: &str) {
        let mut tickets = self.lock();
        if tickets.by_id.len() >= tickets.sweep_at {
            let policy = self.policy;
            tickets
                .by_id
                .retain(|_, t| !is_expired(t.created_at.elapsed(), &policy));
            tickets.sweep_at = (tickets.by_id.len() * 2).max(MIN_SWEEP_AT);
        }
        tickets.by_id.insert(
            ticket.id,
            StoredTicket {
                user_id: user_id.to_owned(),
                secret_hash: ticket.secret_hash(),
                created_at: Instant::now(),
            },
        );
    }

    /// Check, admit and consume under one lock: that is what makes single use atomic here.
    pub(super) fn redeem<T, E>(
        &self,
        presented: &PresentedTicket,
        admit: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<(Redeemed, T), RedeemError<E>> {
        let mut tickets = self.lock();
        let rejected = |why| Err(RedeemError::Rejected(why));
        let Some(stored) = tickets.by_id.get(&presented.id) else {
            return rejected(TicketRejection::Unknown);
        };
        if !presented.matches(&stored.secret_hash) {
            return rejected(TicketRejection::SecretMismatch);
        }
        if is_expired(stored.created_at.elapsed(), &self.policy) {
            tickets.by_id.remove(&presented.id);
            return rejected(TicketRejection::Expired);
        }
        let admitted = admit(&stored.user_id).map_err(RedeemError::NotAdmitted)?;
        let user_id = if self.policy.single_use {
            tickets
                .by_id
                .remove(&presented.id)
                .map(|t| t.user_id)
                .unwrap_or_default()
        } else {
            stored.user_id.clone()
        };
        Ok((Redeemed { user_id }, admitted))
    }

    pub(super) fn delete_user(&self, user_id: &str) -> u64 {
        let mut tickets = self.lock();
        let before = tickets.by_id.len();
        tickets.by_id.retain(|_, t| t.user_id != user_id);
        (before - tickets.by_id.len()) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tickets> {
        // A panic while holding this lock cannot leave the map half-updated (every mutation is
        // a single insert/remove/retain), so a poisoned lock is still safe to use.
        self.tickets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
