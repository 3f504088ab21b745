//! Every setting the gateway reads, described once: its name, kind, bounds, default and one
//! line of documentation. This table drives the parsing and its error messages, `--help`,
//! `ticketgate config`, `.env.example` and the configuration table of docs/PROTOCOL.md (the
//! last two are generated from it; a test fails when they are out of date).

/// What a setting holds, with the bounds its parser enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A whole number of seconds.
    Secs {
        min: u64,
        max: u64,
    },
    /// A whole number of milliseconds.
    Millis {
        min: u64,
        max: u64,
    },
    /// A whole number (bytes, a count, a rate).
    Count {
        min: u64,
        max: u64,
    },
    Bool,
    /// Text checked by the code that uses it (an address, a list, a name, a path).
    Text,
}

impl Kind {
    /// The bounds of a number, if it is one.
    pub fn bounds(self) -> Option<(u64, u64)> {
        match self {
            Kind::Secs { min, max } | Kind::Millis { min, max } | Kind::Count { min, max } => {
                Some((min, max))
            }
            Kind::Bool | Kind::Text => None,
        }
    }
}

/// Who uses a setting; `.env.example` and the docs list settings in these groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Server,
    Database,
    Jwt,
    Tickets,
    Session,
    Channels,
    Limits,
    Api,
    Upstream,
    Cluster,
    Logging,
}

impl Group {
    pub fn title(self) -> &'static str {
        match self {
            Group::Server => "The server",
            Group::Database => "MongoDB",
            Group::Jwt => "User JWTs",
            Group::Tickets => "Tickets",
            Group::Session => "The WebSocket session",
            Group::Channels => {
                "Channels (namespaces are declared in the configuration file's `[channels]` table)"
            }
            Group::Limits => "Limits",
            Group::Api => "The server API and the operations console",
            Group::Upstream => "The app's backend (RPC, the publish proxy, lifecycle events)",
            Group::Cluster => "Several nodes",
            Group::Logging => "Logging",
        }
    }
}

#[derive(Debug)]
pub struct Setting {
    /// The environment variable; in lower case, the configuration file's key.
    pub name: &'static str,
    pub group: Group,
    pub kind: Kind,
    /// The value when unset, as it would be written; `None`: unset means off or absent.
    pub default: Option<&'static str>,
    /// How the docs describe the default when the value alone does not say it.
    pub default_text: Option<&'static str>,
    /// Never printed, logged or echoed back in an error.
    pub secret: bool,
    /// One line, Markdown.
    pub doc: &'static str,
}

const fn setting(name: &'static str, group: Group, kind: Kind, doc: &'static str) -> Setting {
    Setting {
        name,
        group,
        kind,
        default: None,
        default_text: None,
        secret: false,
        doc,
    }
}

impl Setting {
    const fn default(mut self, value: &'static str) -> Self {
        self.default = Some(value);
        self
    }

    const fn described(mut self, text: &'static str) -> Self {
        self.default_text = Some(text);
        self
    }

    const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// The configuration file's key.
    pub fn key(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

/// Upper bounds that only keep arithmetic sane (timers, `Instant`s): generous, never in the way.
const DAY: u64 = 86_400;
const HOUR: u64 = 3_600;

use Group::*;
use Kind::*;

pub static SETTINGS: &[Setting] = &[
    setting("CONFIG_FILE", Server, Text,
        "a TOML file with any of these settings as lower-case keys (`ticket_ttl_secs = 900`); the environment wins over it"),
    setting("BIND_ADDR", Server, Text,
        "listen address (`ip:port`; port 0 picks a free one and logs it)")
        .default("127.0.0.1:8080"),
    setting("ALLOWED_ORIGINS", Server, Text,
        "browser origins that may open the WebSocket: a comma-separated list (`https://app.example.com,http://localhost:3000`) or `*` for any. Unset: same-origin only")
        .described("same-origin only"),
    setting("TRUSTED_PROXIES", Server, Text,
        "comma-separated IPs and CIDR ranges of reverse proxies whose `X-Forwarded-For` names the client IP"),
    setting("HTTP_REQUEST_TIMEOUT_SECS", Server, Secs { min: 1, max: HOUR },
        "time a client has to send a request's head; slower clients are cut off (slowloris)")
        .default("5"),
    setting("SHUTDOWN_GRACE_SECS", Server, Secs { min: 0, max: HOUR },
        "on SIGTERM or SIGINT, how long to wait for connections to close before exiting")
        .default("10"),
    setting("BROADCAST_INTERVAL_SECS", Server, Secs { min: 0, max: DAY },
        "demo broadcaster: `{\"counter\": n}` to every authenticated connection at this interval (and into the channel `demo:lobby` when the `demo` namespace exists); 0 is off")
        .described("0 (off); 5 in dev mode"),
    setting("MONGODB_URI", Database, Text,
        "set: tickets, revocations and the cluster bus live in MongoDB. Unset: an in-process store with the same semantics serves a single node (the embedded default); the start-up log says so")
        .secret(),
    setting("MONGODB_DATABASE", Database, Text, "database name").default("ticketgate"),
    setting("OUTBOX_COLLECTION", Database, Text,
        "the transactional outbox: a collection the app inserts publications into (in its own transactions or not), which the gateway publishes once each, in commit order; needs MongoDB as a replica set")
        .described("unset: no outbox"),
    setting("OUTBOX_DATABASE", Database, Text,
        "the outbox collection's database, on the same deployment (the app's own database, next to its data)")
        .described("MONGODB_DATABASE"),
    setting("OUTBOX_RETENTION_SECS", Database, Secs { min: 60, max: 30 * DAY },
        "how long outbox documents are kept once published (`published_at`) or failed (`failed_at`); a TTL index removes them after")
        .default("3600"),
    setting("STORE_TIMEOUT_MS", Database, Millis { min: 1, max: 10 * 60 * 1000 },
        "upper bound on one MongoDB operation")
        .default("2000"),
    setting("STORE_MAX_IN_FLIGHT", Database, Count { min: 1, max: 100_000 },
        "MongoDB operations one node runs at once. Past them an operation waits up to half of `STORE_TIMEOUT_MS` for its turn, and is otherwise refused (503, `store_unavailable`): a burst, such as thousands of clients reconnecting after a restart, is served at MongoDB's pace instead of queueing until every operation times out. Ticket mints may hold only half of the turns, so the redeems of tickets already minted are not crowded out")
        .default("64"),
    setting("JWT_SECRET", Jwt, Text,
        "HS256 key that verifies user JWTs, at least 32 bytes (RFC 7518 §3.2). With none of `JWT_SECRET`, `JWT_PUBLIC_KEY_FILE`, `JWT_JWKS_FILE`: dev mode")
        .secret(),
    setting("JWT_PUBLIC_KEY_FILE", Jwt, Text,
        "a PEM public key: RSA verifies RS256, P-256 verifies ES256"),
    setting("JWT_JWKS_FILE", Jwt, Text,
        "a JWKS document whose keys are selected by the token's `kid` (several keys at once, for rotation)"),
    setting("JWT_ISSUER", Jwt, Text, "when set, `iss` is required and must equal it"),
    setting("JWT_AUDIENCE", Jwt, Text, "when set, `aud` is required and must contain it"),
    setting("JWT_LEEWAY_SECS", Jwt, Secs { min: 0, max: DAY },
        "clock skew tolerated on `exp` and `nbf`")
        .default("30"),
    setting("TICKET_TTL_SECS", Tickets, Secs { min: 1, max: i32::MAX as u64 },
        "ticket lifetime; also the TTL index's `expireAfterSeconds` (a 32-bit number in MongoDB)")
        .default("900"),
    setting("TICKET_SINGLE_USE", Tickets, Bool,
        "`false`: a ticket may be reused until it expires (for reconnect logic that reuses it)")
        .default("true"),
    setting("AUTH_TIMEOUT_SECS", Session, Secs { min: 1, max: HOUR },
        "how long a new connection may stay unauthenticated")
        .default("10"),
    setting("HEARTBEAT_INTERVAL_SECS", Session, Secs { min: 1, max: HOUR },
        "server Ping frames to authenticated connections")
        .default("15"),
    setting("CLIENT_TIMEOUT_SECS", Session, Secs { min: 1, max: DAY },
        "no sign of life for this long closes the connection; also the deadline for any single write to a client. Must be greater than `HEARTBEAT_INTERVAL_SECS`")
        .default("45"),
    setting("TOKEN_REFRESH_NOTICE_SECS", Session, Secs { min: 0, max: DAY },
        "how long before the JWT's `exp` a connection gets `token_expiring`")
        .default("60"),
    setting("MAX_MESSAGE_BYTES", Session, Count { min: 256, max: 64 << 20 },
        "largest client message after authentication, with continuation frames aggregated; larger closes with 1009. Before authentication the limit is 16 KiB")
        .default("65536"),
    setting("WS_COMPRESSION", Session, Bool,
        "permessage-deflate (RFC 7692), negotiated only with clients that offer it; the server never keeps a compression context, so idle connections hold no compression state")
        .default("false"),
    setting("WS_COMPRESSION_THRESHOLD_BYTES", Session, Count { min: 0, max: 64 << 20 },
        "with `WS_COMPRESSION`, server messages under this size go uncompressed")
        .default("1024"),
    setting("TICKET_RATE_PER_MIN", Limits, Count { min: 1, max: u32::MAX as u64 },
        "tickets one user may mint per minute (a burst of the whole allowance, refilled evenly); over: 429 `rate_limited`")
        .default("30"),
    setting("UPGRADE_RATE_PER_MIN", Limits, Count { min: 1, max: u32::MAX as u64 },
        "upgrade attempts one client IP may make per minute, valid or not; over: 429 `rate_limited`")
        .default("120"),
    setting("MAX_SUBSCRIPTIONS_PER_CONNECTION", Channels, Count { min: 1, max: 100_000 },
        "channels one connection may subscribe to; over: error `too_many_subscriptions`")
        .default("128"),
    setting("IDEMPOTENCY_WINDOW_SECS", Channels, Secs { min: 1, max: 7 * DAY },
        "how long a publication's `idempotency_key` is remembered: a publish with the same key into the same channels within it publishes nothing and gets the first answer")
        .default("300"),
    setting("MAX_CONNECTIONS_PER_USER", Limits, Count { min: 1, max: 10_000_000 },
        "open WebSocket connections per user, authenticated or not; over: 429 `too_many_connections`")
        .default("20"),
    setting("MAX_CONNECTIONS", Limits, Count { min: 1, max: 10_000_000 },
        "open WebSocket connections in total; over: 503 `at_capacity`")
        .default("100000"),
    setting("API_KEY", Api, Text,
        "enables the server API (`/api/...`), which requires `Authorization: Bearer <API_KEY>`; at least 16 characters. Unset: the API routes answer 404")
        .secret(),
    setting("API_MAX_BODY_BYTES", Api, Count { min: 64, max: 8 << 20 },
        "largest server-API request body (a broadcast crosses nodes as one MongoDB document, limited to 16 MiB); larger: 413 `body_too_large`")
        .default("262144"),
    setting("CONSOLE_PASSWORD", Api, Text,
        "enables the operations console at `/console` (and the server API for its sessions); at least 16 characters. Unset: `/console` answers 404")
        .secret(),
    setting("CONSOLE_SESSION_SECS", Api, Secs { min: 1, max: 7 * DAY },
        "how long a console sign-in lasts")
        .default("28800"),
    setting("CONSOLE_SIGNIN_RATE_PER_MIN", Api, Count { min: 1, max: 10_000 },
        "console sign-in attempts per client IP per minute; more: 429 `rate_limited`")
        .default("10"),
    setting("UPSTREAM_URL", Upstream, Text,
        "the app's backend, an `http` or `https` URL: client RPCs go to `POST {UPSTREAM_URL}/rpc` and proxied client publications to `/publish`. Unset: RPC and the publish proxy are off (`upstream_disabled`)"),
    setting("EVENTS_WEBHOOK_URL", Upstream, Text,
        "where lifecycle events (connect, disconnect, subscribe, unsubscribe) are posted in batches, an `http` or `https` URL. Unset: no events"),
    setting("UPSTREAM_KEY", Upstream, Text,
        "sent as `Authorization: Bearer <UPSTREAM_KEY>` on every call to the backend and the events webhook, so they know the gateway; at least 16 characters; required with `UPSTREAM_URL` or `EVENTS_WEBHOOK_URL`")
        .secret(),
    setting("UPSTREAM_TIMEOUT_MS", Upstream, Millis { min: 10, max: 60_000 },
        "how long one call to the backend may take, its wait for a turn included; slower: `upstream_timeout`")
        .default("5000"),
    setting("UPSTREAM_MAX_IN_FLIGHT", Upstream, Count { min: 1, max: 100_000 },
        "calls to the backend one node makes at once; a call waits for a turn within `UPSTREAM_TIMEOUT_MS`")
        .default("1000"),
    setting("MAX_RPC_IN_FLIGHT_PER_CONNECTION", Upstream, Count { min: 1, max: 1024 },
        "RPCs one connection may have waiting for the backend; more: `rpc_error` `too_many_requests`, and no call")
        .default("16"),
    setting("LIFECYCLE_EVENTS_TTL_SECS", Upstream, Secs { min: 60, max: 30 * DAY },
        "with MongoDB, how long lifecycle events are kept in `lifecycle_events` (and retried to the webhook); a TTL index removes them after")
        .default("86400"),
    setting("RECORD_LIFECYCLE_EVENTS", Upstream, Bool,
        "with MongoDB, write lifecycle events to `lifecycle_events` even without `EVENTS_WEBHOOK_URL`, for apps that watch its change stream")
        .default("false"),
    setting("NODE_NAME", Cluster, Text,
        "this node's name in `GET /api/nodes`: 1 to 64 letters, digits, `.`, `_`, `-`. The node id is the name plus a random suffix drawn at every start")
        .described("the host name"),
    setting("NODE_ADDRESS", Cluster, Text,
        "where operators reach this node, as `GET /api/nodes` lists it")
        .described("the listen address"),
    // The node registry's TTL index removes an entry 60 s after its last beat.
    setting("BUS_STALL_SECS", Cluster, Secs { min: 1, max: 600 },
        "a node whose change stream has had no answer from MongoDB this long is not ready (`/readyz` 503, cause `bus_stalled`): it would deliver nothing from the other nodes")
        .default("10"),
    setting("BUS_NARROW_SECS", Cluster, Secs { min: 1, max: 3600 },
        "how often a node's change stream drops the channel partitions it no longer has subscribers in (docs/SCALING.md); a partition held again within it costs no reopening")
        .default("30"),
    setting("NODE_HEARTBEAT_SECS", Cluster, Secs { min: 1, max: 20 },
        "how often the node refreshes its entry in the node registry; a node missing three beats is no longer listed")
        .default("5"),
    setting("RUST_LOG", Logging, Text, "env_logger filter, e.g. `info`, `debug`, `ticketgate=debug`")
        .default("info"),
    setting("OTEL_EXPORTER_OTLP_ENDPOINT", Logging, Text,
        "an OpenTelemetry Collector's OTLP/HTTP base URL, plain `http://` (`http://127.0.0.1:4318`; the collector may forward over TLS): spans go to `/v1/traces` as protobuf, and calls to the backend and the webhook carry a W3C `traceparent`. Unset: no tracing")
        .described("unset (no tracing)"),
    setting("OTEL_SERVICE_NAME", Logging, Text, "the `service.name` the spans carry")
        .default("ticketgate"),
    setting("LOG_FORMAT", Logging, Text,
        "`text` (env_logger's lines) or `json`: one object per line with `time` (RFC 3339, UTC), `level`, `target`, `message`, and the line's structured fields (`connection_id`, `user_id`, `node`, `channel`, `code`…) as top-level keys")
        .default("text"),
];

/// The setting called `name`. Every name the code asks for is in the table (a test checks
/// each by parsing the defaults), so a miss is a bug in the gateway, not in the input.
pub fn lookup(name: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the settings table"))
}
