//! A listener on one channel that is not a connection (the console's live tail): in no
//! connection count or limit, and it gets no broadcasts; dropping it leaves the channel.

use std::sync::Arc;

use super::mailbox::{Inbound, Mailbox};
use super::membership::Fell;
use super::{ConnectionId, Hub};
use crate::channels::ChannelName;

pub struct ChannelWatch {
    hub: Arc<Hub>,
    id: ConnectionId,
    channel: ChannelName,
    mailbox: Arc<Mailbox>,
}

impl Hub {
    /// Starts listening to `channel`'s publications on this node; `label` names the listener
    /// where the mailbox needs a user.
    pub fn watch(self: &Arc<Self>, channel: &ChannelName, label: &str) -> ChannelWatch {
        let id = self.registry.next_id();
        let mailbox = Arc::new(Mailbox::new(Arc::from(label)));
        let channel = self.channels.add(channel, id, Arc::clone(&mailbox));
        ChannelWatch {
            hub: Arc::clone(self),
            id,
            channel,
            mailbox,
        }
    }
}

impl ChannelWatch {
    /// The next publication (or, of a history channel, recovered ones) for the channel.
    pub async fn next(&self) -> Result<Inbound, Fell> {
        Ok(self.mailbox.pop().await?)
    }
}

impl Drop for ChannelWatch {
    fn drop(&mut self) {
        self.hub.channels.remove(self.channel.as_str(), self.id);
    }
}
