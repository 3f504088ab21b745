//! An authenticated connection's place in the pipelines: the broadcast ring, its mailbox, and
//! its channel subscriptions (the reverse of the hub's channel table). Only the session's
//! authenticated state can make one, and dropping it is the one and only way out, so every
//! exit path (close, error, panic) leaves them all.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::channels::{Loaded, Older, Recover, StreamStep};
use super::mailbox::{self, Inbound, Mailbox};
use super::registry::{OpenConnection, Stage};
use super::{ConnectionId, Delivery, Hub};
use crate::channels::{ChannelName, Grant};

pub struct Membership {
    hub: Arc<Hub>,
    id: ConnectionId,
    receiver: broadcast::Receiver<Delivery>,
    mailbox: Arc<Mailbox>,
    subscriptions: HashMap<ChannelName, Grant>,
}

/// Why a connection can no longer be kept up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fell {
    /// This many broadcasts were dropped for it.
    Behind { missed: u64 },
    /// Its mailbox overflowed.
    MailboxFull,
}

impl From<mailbox::Overflowed> for Fell {
    fn from(_: mailbox::Overflowed) -> Self {
        Fell::MailboxFull
    }
}

/// A window being loaded: settled with what was read, or (dropped unsettled: the read failed
/// or the task ended) given up, so the subscribers waiting for it go on.
pub struct WindowLoad {
    hub: Arc<Hub>,
    channel: ChannelName,
    settled: bool,
}

impl WindowLoad {
    pub fn settle(mut self, loaded: Loaded) {
        self.hub
            .channels
            .finish_load(self.channel.as_str(), Some(loaded));
        self.settled = true;
    }
}

impl Drop for WindowLoad {
    fn drop(&mut self) {
        if !self.settled {
            self.hub.channels.finish_load(self.channel.as_str(), None);
        }
    }
}

impl Hub {
    /// Adds an authenticated connection to the broadcast and message pipelines. Only the
    /// session's authenticated state can call this, so nothing reaches a connection before it
    /// authenticates.
    pub fn join(self: &Arc<Self>, connection: &OpenConnection, jti: Option<&str>) -> Membership {
        // Subscribe before registering: a connection counted as authenticated receives every
        // broadcast published from then on.
        let receiver = self.broadcasts.subscribe();
        let mailbox = Arc::new(Mailbox::new(Arc::clone(&connection.user)));
        let stage = Stage::Authenticated {
            mailbox: Arc::clone(&mailbox),
            jti: jti.map(Arc::from),
        };
        self.registry.set_stage(connection.id, stage);
        Membership {
            hub: Arc::clone(self),
            id: connection.id,
            receiver,
            mailbox,
            subscriptions: HashMap::new(),
        }
    }
}

impl Membership {
    /// The next thing for this connection: a delivery (user message, publication or
    /// broadcast) or a control, whichever is ready.
    pub async fn next(&mut self) -> Result<Inbound, Fell> {
        tokio::select! {
            item = self.mailbox.pop() => Ok(item?),
            broadcast = self.receiver.recv() => match broadcast {
                Ok(delivery) => Ok(Inbound::Delivery(delivery)),
                Err(broadcast::error::RecvError::Lagged(missed)) => Err(Fell::Behind { missed }),
                // The hub owns the sender and this membership keeps the hub alive.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
        }
    }

    /// `first` and whatever other deliveries are already waiting, up to `max`, without
    /// waiting (a control stays queued for the next turn).
    pub fn with_waiting(&mut self, first: Delivery, max: usize) -> Result<Vec<Delivery>, Fell> {
        let mut batch = vec![first];
        while batch.len() < max {
            if let Some(delivery) = self.mailbox.try_pop_delivery()? {
                batch.push(delivery);
                continue;
            }
            match self.receiver.try_recv() {
                Ok(delivery) => batch.push(delivery),
                Err(broadcast::error::TryRecvError::Lagged(missed)) => {
                    return Err(Fell::Behind { missed });
                }
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    /// After an in-band refresh: revocation now concerns the new JWT's `jti`.
    pub fn set_jti(&self, jti: Option<&str>) {
        self.hub.registry.set_jti(self.id, jti);
    }

    /// Subscribes to `channel` with `grant`, or replaces the grant of a subscription held
    /// already (no delivery is missed or doubled either way); returns the hub's copy of the
    /// name and whether the subscription is new.
    pub fn subscribe(&mut self, channel: &ChannelName, grant: Grant) -> (ChannelName, bool) {
        if let Some((name, current)) = self.subscriptions.get_key_value(channel.as_str()) {
            let name = name.clone();
            let previous = current.clone();
            self.index_token(&previous, false);
            self.index_token(&grant, true);
            self.subscriptions.insert(name.clone(), grant);
            return (name, false);
        }
        let name = self
            .hub
            .channels
            .add(channel, self.id, Arc::clone(&self.mailbox));
        self.index_token(&grant, true);
        self.subscriptions.insert(name.clone(), grant);
        (name, true)
    }

    /// One step of subscribing to a history channel this connection does not hold yet,
    /// recovering from `recover` where this node's window allows; `older` is what a previous
    /// [`StreamStep::Older`] read.
    pub fn join_stream(
        &mut self,
        channel: &ChannelName,
        grant: &Grant,
        wanted: (&Recover, bool),
        older: Option<&Older>,
    ) -> StreamStep<WindowLoad> {
        let step = self
            .hub
            .channels
            .join_stream(channel, self.id, &self.mailbox, wanted, older)
            .with_load(|| WindowLoad {
                hub: Arc::clone(&self.hub),
                channel: channel.clone(),
                settled: false,
            });
        if let StreamStep::Joined { name, .. } = &step {
            self.index_token(grant, true);
            self.subscriptions.insert(name.clone(), grant.clone());
        }
        step
    }

    /// A history channel's epoch and latest offset, when this node has its window.
    pub fn position(&self, channel: &str) -> Option<(Arc<str>, u64)> {
        self.hub.channels.position(channel)
    }

    /// Ends the subscription to `channel`; its grant, or `None` when there was none.
    pub fn unsubscribe(&mut self, channel: &str) -> Option<Grant> {
        let grant = self.subscriptions.remove(channel)?;
        self.hub.channels.remove(channel, self.id);
        self.index_token(&grant, false);
        Some(grant)
    }

    pub fn holds(&self, channel: &str) -> bool {
        self.subscriptions.contains_key(channel)
    }

    pub fn subscription(&self, channel: &str) -> Option<&Grant> {
        self.subscriptions.get(channel)
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = (&ChannelName, &Grant)> {
        self.subscriptions.iter()
    }

    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Counts this connection in or out of the revocation index for `grant`'s token `jti`.
    fn index_token(&self, grant: &Grant, holds: bool) {
        let Some(jti) = grant.token_jti() else {
            return;
        };
        if holds {
            self.hub.token_jtis.add(jti, self.id);
        } else {
            self.hub.token_jtis.remove(jti, self.id);
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let channels: Vec<ChannelName> = self.subscriptions.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe(channel.as_str());
        }
        self.hub.registry.set_stage(self.id, Stage::Leaving);
    }
}
