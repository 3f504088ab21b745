//! Who is subscribed to the channels of presence namespaces, across nodes. Like the other
//! stores, one enum over two backends: in process, where this node's hub is the whole truth
//! (single node), and MongoDB (`mongo.rs`), where every node writes its subscribers' entries
//! and any node can list a channel's, or clear a dead node's.

mod mongo;

pub use mongo::MongoPresence;

use crate::channels::ChannelName;
use crate::db::Unavailable;
use crate::protocol::PresenceClient;

pub enum PresenceStore {
    /// One node: the hub's channel table answers presence.
    Local,
    Mongo(MongoPresence),
}

impl PresenceStore {
    /// Records that `client` subscribed to `channel`.
    pub async fn add(
        &self,
        channel: &ChannelName,
        client: &PresenceClient,
    ) -> Result<(), Unavailable> {
        match self {
            PresenceStore::Local => Ok(()),
            PresenceStore::Mongo(store) => store.add(channel, client).await,
        }
    }

    pub async fn remove(
        &self,
        channel: &ChannelName,
        connection_id: &str,
    ) -> Result<(), Unavailable> {
        match self {
            PresenceStore::Local => Ok(()),
            PresenceStore::Mongo(store) => store.remove(channel, connection_id).await,
        }
    }

    /// The channel's subscribers on every node, sorted; `None` where the hub is the truth.
    pub async fn list(
        &self,
        channel: &ChannelName,
    ) -> Result<Option<Vec<PresenceClient>>, Unavailable> {
        match self {
            PresenceStore::Local => Ok(None),
            PresenceStore::Mongo(store) => store.list(channel).await.map(Some),
        }
    }
}
