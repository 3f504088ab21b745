//! Presence stays true when a node dies: every node, at each heartbeat, looks for presence
//! entries of nodes that stopped beating, removes them, and announces each removed entry's
//! leave through the bus. Entries are removed one by one and only the node whose delete took
//! one announces it, so several nodes sweeping at once announce each leave exactly once.
//! Each node also retries here its own presence removals that MongoDB did not take, and
//! takes over dead nodes' lifecycle events ([`Adoption`]).

use std::sync::Arc;

use crate::bus::{Bus, Command};
use crate::channels::{ChannelName, Namespaces};
use crate::db::Unavailable;
use crate::lifecycle::adoption::Adoption;
use crate::store::PresenceStore;

pub struct Reaper {
    pub presence: Arc<PresenceStore>,
    pub namespaces: Namespaces,
    /// Lifecycle events in MongoDB: dead nodes' connections get their `node_lost`.
    pub lifecycle: Option<Arc<Adoption>>,
}

impl Reaper {
    /// Takes over what every node not in `live` (ids of the nodes that beat recently) left:
    /// its lifecycle events and its presence.
    pub async fn sweep(&self, bus: &Bus, live: &[String]) -> Result<(), Unavailable> {
        let events = match &self.lifecycle {
            Some(adoption) => adoption.sweep(live).await,
            None => Ok(()),
        };
        let presence = self.sweep_presence(bus, live).await;
        events.and(presence)
    }

    async fn sweep_presence(&self, bus: &Bus, live: &[String]) -> Result<(), Unavailable> {
        let PresenceStore::Mongo(store) = &*self.presence else {
            return Ok(());
        };
        store.retry_removals().await?;
        let me = bus.node().id.as_str();
        for node in store.nodes().await? {
            if node == me || live.contains(&node) {
                continue;
            }
            let cleared = store.clear_node(&node).await?;
            if cleared.is_empty() {
                continue;
            }
            log::warn!(
                node = node.as_str();
                "node {node} stopped beating: {} of its presence entries cleared here",
                cleared.len()
            );
            for entry in cleared {
                let Ok(channel) = ChannelName::parse(&entry.channel) else {
                    continue;
                };
                let join_leave = self
                    .namespaces
                    .options(&channel)
                    .is_ok_and(|options| options.join_leave);
                if join_leave {
                    let leave = Command::JoinLeave {
                        channel,
                        client: entry.client(),
                        joined: false,
                    };
                    bus.send(leave).await?;
                }
            }
        }
        Ok(())
    }
}
