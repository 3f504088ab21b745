//! Channels: names and namespaces, who may subscribe, and what a subscription holds. The
//! delivery tables live in the hub; the rules here are pure, so the session can apply them
//! without MongoDB or the app (docs/PROTOCOL.md, "Channels").

pub mod grants;
pub mod name;
pub mod namespaces;
pub mod partition;

pub use grants::ClaimGrants;
pub use name::{ChannelName, InvalidChannel, MAX_CHANNEL_BYTES};
pub use namespaces::{
    ChannelsTable, ClientPublish, HistoryOptions, NamespaceOptions, Namespaces, UnknownNamespace,
};
pub use partition::{PARTITIONS, partition_of};

/// The namespace the demo uses: declared by dev mode (presence and join/leave on) when the
/// configuration file does not declare it; the dev JWT grants it.
pub const DEMO_NAMESPACE: &str = "demo";
/// The demo namespace's history in dev mode: enough to show recovery after a reconnect.
pub const DEMO_HISTORY: HistoryOptions = HistoryOptions {
    size: 100,
    ttl_secs: 600,
};
/// Where the demo broadcaster also publishes, when the demo namespace exists.
pub const DEMO_CHANNEL: &str = "demo:lobby";

/// What every connection's channel decisions share (from the configuration).
#[derive(Debug, Clone, Default)]
pub struct ChannelPolicy {
    pub namespaces: Namespaces,
    /// MAX_SUBSCRIPTIONS_PER_CONNECTION.
    pub max_subscriptions: usize,
    /// IDEMPOTENCY_WINDOW_SECS: how long a publication's idempotency key is remembered.
    pub idempotency_window: std::time::Duration,
}

/// Why a connection holds a subscription; it decides what can end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The connection's JWT `channels` claim: a refresh that drops it ends the subscription.
    Claim,
    /// A subscription token: ends at its `exp` (plus the leeway), or when its `jti` is revoked.
    /// Boxed: most subscriptions hold none, and every subscription's grant is kept.
    Token(Box<TokenGrant>),
    /// The namespace is public: nothing ends it but the client or the server.
    Public,
    /// Made by the server API: no grant is checked, and only the API or the client ends it.
    Server,
}

/// What a subscription token grants, as long as it lasts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub jti: Option<std::sync::Arc<str>>,
    /// The token's `exp`, unix seconds.
    pub expires_at: u64,
}

impl Grant {
    /// The `jti` of the token holding the subscription, if a token with one holds it.
    pub fn token_jti(&self) -> Option<&std::sync::Arc<str>> {
        match self {
            Grant::Token(token) => token.jti.as_ref(),
            _ => None,
        }
    }
}

/// The one place that says whether a subscribe is allowed without a token.
pub fn grant_without_token(
    options: NamespaceOptions,
    claims: &ClaimGrants,
    channel: &ChannelName,
) -> Option<Grant> {
    if options.public {
        Some(Grant::Public)
    } else if claims.allows(channel.as_str()) {
        Some(Grant::Claim)
    } else {
        None
    }
}
