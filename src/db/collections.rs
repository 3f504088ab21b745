//! Every MongoDB collection the gateway uses, named once, with the indexes it has: the one
//! table to read to know what ticketgate keeps in MongoDB. The migrations (`migrations/`)
//! create them; `db::migrations` refuses a migration that names a collection missing here,
//! and a test holds the migrations and this table to the same collections and indexes.

/// Connection tickets: one document per ticket, single use (`store::tickets`).
pub const TICKETS: &str = "ws_tickets";
/// Revoked JWT ids and console sessions, until they would have expired (`store::revocations`).
pub const REVOCATIONS: &str = "revocations";
/// What crosses nodes: broadcasts, user messages, kicks, publications without history
/// (`store::cluster_events`), written by the bus and read back through change streams.
pub const CLUSTER_EVENTS: &str = "cluster_events";
/// One heartbeat document per live node (`store::nodes`).
pub const CLUSTER_NODES: &str = "cluster_nodes";
/// Who is subscribed where, for presence namespaces (`store::presence`).
pub const PRESENCE: &str = "presence";
/// One document per history channel, its latest publications (`store::history`).
pub const CHANNEL_HISTORY: &str = "channel_history";
/// Connect, disconnect, subscribe and unsubscribe events, per node in order
/// (`store::lifecycle`).
pub const LIFECYCLE_EVENTS: &str = "lifecycle_events";
/// Each node's series of lifecycle events: who delivers it and how far it got.
pub const LIFECYCLE_STREAMS: &str = "lifecycle_streams";
/// The idempotency keys of publications, while their window lasts (`store::publish_keys`).
pub const PUBLISH_KEYS: &str = "publish_keys";
/// Who consumes each outbox, until when, and where its change stream stands (`outbox`).
pub const OUTBOX_LEASES: &str = "outbox_leases";
/// The migrations applied, with their checksums (`db::migrations`).
pub const SCHEMA_MIGRATIONS: &str = "schema_migrations";

/// A collection and the names of its indexes (besides `_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionSpec {
    pub name: &'static str,
    pub indexes: &'static [&'static str],
}

/// Every collection, with its indexes.
pub const COLLECTIONS: &[CollectionSpec] = &[
    CollectionSpec {
        name: TICKETS,
        indexes: &["created_at_ttl", "user_id_created_at"],
    },
    CollectionSpec {
        name: REVOCATIONS,
        indexes: &["expires_at_ttl"],
    },
    CollectionSpec {
        name: CLUSTER_EVENTS,
        indexes: &["created_at_ttl"],
    },
    CollectionSpec {
        name: CLUSTER_NODES,
        indexes: &["heartbeat_at_ttl"],
    },
    CollectionSpec {
        name: PRESENCE,
        indexes: &["channel_user", "node"],
    },
    CollectionSpec {
        name: CHANNEL_HISTORY,
        indexes: &["expires_at_ttl"],
    },
    CollectionSpec {
        name: LIFECYCLE_EVENTS,
        indexes: &["node_seq", "at_ttl", "user_node_seq"],
    },
    CollectionSpec {
        name: LIFECYCLE_STREAMS,
        indexes: &["ended_at_ttl"],
    },
    CollectionSpec {
        name: PUBLISH_KEYS,
        indexes: &["expires_at_ttl"],
    },
    CollectionSpec {
        name: OUTBOX_LEASES,
        indexes: &[],
    },
    CollectionSpec {
        name: SCHEMA_MIGRATIONS,
        indexes: &[],
    },
];

/// The table's entry for `name`.
pub fn spec(name: &str) -> Option<&'static CollectionSpec> {
    COLLECTIONS.iter().find(|spec| spec.name == name)
}
