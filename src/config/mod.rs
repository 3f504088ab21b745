//! Typed, validated configuration: read once at start from the environment (and `.env`) layered
//! over the configuration file, described by one table ([`table::SETTINGS`]), and grouped by
//! who uses it, as zero2prod's `configuration.rs` does.

pub mod docs;
pub mod sources;
pub mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use secrecy::{SecretBox, SecretString};

use crate::channels::ChannelPolicy;
use crate::client_ip::TrustedProxies;
use crate::jwt::{self, JwtSettings};
use crate::limits::ConnectionLimits;
use crate::origin::OriginPolicy;
use sources::{Origin, Values};
use table::{Kind, lookup};

/// Everything the gateway needs to start. Built by [`Settings::from_process_env`], or by tests
/// from a map of variables.
#[derive(Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub jwt: JwtSettings,
    pub tickets: TicketPolicy,
    pub session: SessionSettings,
    pub limits: LimitSettings,
    pub api: ApiSettings,
    pub upstream: UpstreamSettings,
    pub node: NodeSettings,
    /// Namespaces (from the file's `[channels]` table) and per-connection limits.
    pub channels: ChannelPolicy,
    /// The env_logger filter (RUST_LOG).
    pub log_filter: String,
    /// Text or one JSON object per line (LOG_FORMAT).
    pub log_format: crate::logging::LogFormat,
    /// Traces (OTEL_*).
    pub telemetry: crate::telemetry::TelemetrySettings,
}

/// The app's backend, which answers RPCs and proxied publications.
#[derive(Debug)]
pub struct UpstreamSettings {
    /// `None`: UPSTREAM_URL is unset, RPC and the publish proxy are off.
    pub backend: Option<Backend>,
    /// `None`: EVENTS_WEBHOOK_URL is unset, no lifecycle events.
    pub events_webhook: Option<Backend>,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub max_rpc_per_connection: usize,
    /// How long `lifecycle_events` keeps events (LIFECYCLE_EVENTS_TTL_SECS).
    pub events_ttl: Duration,
    /// Write events to MongoDB even without a webhook (RECORD_LIFECYCLE_EVENTS).
    pub record_events: bool,
}

#[derive(Debug)]
pub struct Backend {
    /// The URL without a trailing `/` (UPSTREAM_URL: call paths are appended as they are).
    pub url: String,
    pub key: SecretString,
}

/// The HTTP server and who may reach it.
#[derive(Debug)]
pub struct ServerSettings {
    pub bind_addr: SocketAddr,
    /// Time allowed to send a request's head (slowloris defence).
    pub http_request_timeout: Duration,
    /// How long a draining gateway waits for its connections before it exits.
    pub shutdown_grace: Duration,
    pub allowed_origins: OriginPolicy,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: TrustedProxies,
    /// `None`: the demo broadcaster is off.
    pub broadcast_interval: Option<Duration>,
}

#[derive(Debug)]
pub struct DatabaseSettings {
    /// `None`: the in-process stores (single node).
    pub mongodb: Option<MongoSettings>,
    /// Upper bound on any single MongoDB operation.
    pub timeout: Duration,
    /// MongoDB operations run at once (STORE_MAX_IN_FLIGHT).
    pub max_in_flight: usize,
}

#[derive(Debug)]
pub struct MongoSettings {
    /// May carry credentials, hence secret: it is never logged.
    pub uri: SecretString,
    pub database: String,
    /// The transactional outbox, when OUTBOX_COLLECTION is set.
    pub outbox: Option<OutboxConfig>,
}

/// Where the app's outbox is (`crate::outbox`).
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub collection: String,
    pub database: String,
    /// How long marked documents are kept (OUTBOX_RETENTION_SECS).
    pub retention: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct TicketPolicy {
    pub ttl: Duration,
    pub single_use: bool,
}

/// The WebSocket session's clock and sizes.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    /// How long before a JWT's `exp` a connection gets `token_expiring`.
    pub token_refresh_notice: Duration,
    /// Largest WebSocket message accepted from a client, after aggregating continuations.
    pub max_message_bytes: usize,
    /// permessage-deflate on: messages from this many bytes up go compressed.
    pub compression_threshold: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub struct LimitSettings {
    pub ticket_rate_per_min: NonZeroU32,
    pub upgrade_rate_per_min: NonZeroU32,
    pub connections: ConnectionLimits,
}

#[derive(Debug)]
pub struct ApiSettings {
    /// Authenticates the server API; `None` turns the API off (unless the console is on).
    pub key: Option<SecretString>,
    pub max_body_bytes: usize,
    /// `None`: CONSOLE_PASSWORD is unset, no console.
    pub console: Option<ConsoleSettings>,
}

/// The operations console (`/console`).
#[derive(Debug)]
pub struct ConsoleSettings {
    pub password: SecretString,
    /// How long a sign-in lasts.
    pub session: Duration,
    pub signin_rate_per_min: NonZeroU32,
}

/// How this node names itself to the others (`GET /api/nodes`).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `None`: the host name. A random suffix is added at every start.
    pub name: Option<String>,
    /// `None`: the address it listens on.
    pub address: Option<String>,
    pub heartbeat: Duration,
    /// BUS_STALL_SECS: a change stream silent this long makes the node not ready.
    pub bus_stall: Duration,
    /// BUS_NARROW_SECS: how often the change stream drops partitions nobody here holds.
    pub bus_narrow: Duration,
}

/// A configuration that cannot be used; the message names the setting and where it was set.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}invalid value {value:?}: {reason}", where_set(var, origin))]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
        origin: Origin,
    },
    #[error("{0}")]
    Inconsistent(String),
    #[error("CONFIG_FILE {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error("reading .env: {0}")]
    DotEnv(#[from] dotenvy::Error),
}

fn where_set(var: &str, origin: &Origin) -> String {
    match origin {
        Origin::File(path) => format!(
            "{var} (`{}` in {}): ",
            var.to_ascii_lowercase(),
            path.display()
        ),
        _ => format!("{var}: "),
    }
}

/// Every variable the gateway reads, in the table's order.
pub static VARIABLES: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| table::SETTINGS.iter().map(|s| s.name).collect());

/// The demo broadcaster's interval in dev mode when BROADCAST_INTERVAL_SECS is not set.
pub const DEV_BROADCAST_INTERVAL_SECS: u64 = 5;

impl Settings {
    /// Reads `.env` (when present) into the process environment, then the environment over
    /// the configuration file.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::from_vars(&process_vars()?)
    }

    /// Builds settings from a map of variables: the environment in production, a literal in
    /// tests. `CONFIG_FILE` among them names the file beneath them.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_values(&Values::load(vars)?)
    }

    fn from_values(values: &Values) -> Result<Self, ConfigError> {
        let env = Vars(values);
        let session = SessionSettings {
            auth_timeout: env.secs("AUTH_TIMEOUT_SECS")?,
            heartbeat_interval: env.secs("HEARTBEAT_INTERVAL_SECS")?,
            client_timeout: env.secs("CLIENT_TIMEOUT_SECS")?,
            token_refresh_notice: env.secs("TOKEN_REFRESH_NOTICE_SECS")?,
            max_message_bytes: env.number("MAX_MESSAGE_BYTES")? as usize,
            compression_threshold: match env.boolean("WS_COMPRESSION")? {
                true => Some(env.number("WS_COMPRESSION_THRESHOLD_BYTES")? as usize),
                false => None,
            },
        };
        if session.client_timeout <= session.heartbeat_interval {
            return Err(ConfigError::Inconsistent(format!(
                "CLIENT_TIMEOUT_SECS ({}) must be greater than HEARTBEAT_INTERVAL_SECS ({})",
                session.client_timeout.as_secs(),
                session.heartbeat_interval.as_secs()
            )));
        }
        let jwt = env.jwt_settings()?;
        let dev_mode = jwt.dev_mode;
        // Dev mode shows traffic at once; a real deployment broadcasts only what it is told to.
        let broadcast_secs = match env.get("BROADCAST_INTERVAL_SECS") {
            None if jwt.dev_mode => DEV_BROADCAST_INTERVAL_SECS,
            None => 0,
            Some(_) => env.number("BROADCAST_INTERVAL_SECS")?,
        };
        let node_name = env.get("NODE_NAME").map(str::to_owned);
        if let Some(name) = &node_name
            && !is_node_name(name)
        {
            return Err(env.invalid("NODE_NAME", "use 1 to 64 letters, digits, '.', '_' or '-'"));
        }
        let settings = Settings {
            server: ServerSettings {
                bind_addr: env.parsed("BIND_ADDR")?,
                http_request_timeout: env.secs("HTTP_REQUEST_TIMEOUT_SECS")?,
                shutdown_grace: env.secs("SHUTDOWN_GRACE_SECS")?,
                allowed_origins: match env.get("ALLOWED_ORIGINS") {
                    None => OriginPolicy::SameOrigin,
                    Some(list) => OriginPolicy::parse_list(list)
                        .map_err(|reason| env.invalid("ALLOWED_ORIGINS", &reason))?,
                },
                trusted_proxies: match env.get("TRUSTED_PROXIES") {
                    None => TrustedProxies::default(),
                    Some(list) => TrustedProxies::parse(list)
                        .map_err(|e| env.invalid("TRUSTED_PROXIES", &e))?,
                },
                broadcast_interval: (broadcast_secs > 0)
                    .then(|| Duration::from_secs(broadcast_secs)),
            },
            database: DatabaseSettings {
                mongodb: match env.get("MONGODB_URI") {
                    None if env.get("OUTBOX_COLLECTION").is_some() => {
                        return Err(ConfigError::Inconsistent(
                            "OUTBOX_COLLECTION needs MongoDB (MONGODB_URI), as a replica set"
                                .into(),
                        ));
                    }
                    None => None,
                    Some(uri) => Some(MongoSettings {
                        uri: SecretString::from(uri.to_owned()),
                        database: env.database_name()?,
                        outbox: env.outbox()?,
                    }),
                },
                timeout: env.millis("STORE_TIMEOUT_MS")?,
                max_in_flight: env.number("STORE_MAX_IN_FLIGHT")? as usize,
            },
            jwt,
            tickets: TicketPolicy {
                ttl: env.secs("TICKET_TTL_SECS")?,
                single_use: env.boolean("TICKET_SINGLE_USE")?,
            },
            session,
            limits: LimitSettings {
                ticket_rate_per_min: env.rate("TICKET_RATE_PER_MIN")?,
                upgrade_rate_per_min: env.rate("UPGRADE_RATE_PER_MIN")?,
                connections: ConnectionLimits {
                    max_per_user: env.number("MAX_CONNECTIONS_PER_USER")? as usize,
                    max_total: env.number("MAX_CONNECTIONS")? as usize,
                },
            },
            api: ApiSettings {
                key: match env.get("API_KEY") {
                    Some(key) if key.len() < 16 => {
                        return Err(env.invalid("API_KEY", "use at least 16 characters"));
                    }
                    key => key.map(|k| SecretString::from(k.to_owned())),
                },
                max_body_bytes: env.number("API_MAX_BODY_BYTES")? as usize,
                console: match env.get("CONSOLE_PASSWORD") {
                    None => None,
                    Some(password) if password.len() < 16 => {
                        return Err(env.invalid("CONSOLE_PASSWORD", "use at least 16 characters"));
                    }
                    Some(password) => Some(ConsoleSettings {
                        password: SecretString::from(password.to_owned()),
                        session: env.secs("CONSOLE_SESSION_SECS")?,
                        signin_rate_per_min: env.rate("CONSOLE_SIGNIN_RATE_PER_MIN")?,
                    }),
                },
            },
            upstream: UpstreamSettings {
                backend: env.endpoint("UPSTREAM_URL")?,
                events_webhook: env.endpoint("EVENTS_WEBHOOK_URL")?,
                timeout: env.millis("UPSTREAM_TIMEOUT_MS")?,
                max_in_flight: env.number("UPSTREAM_MAX_IN_FLIGHT")? as usize,
                max_rpc_per_connection: env.number("MAX_RPC_IN_FLIGHT_PER_CONNECTION")? as usize,
                events_ttl: env.secs("LIFECYCLE_EVENTS_TTL_SECS")?,
                record_events: env.boolean("RECORD_LIFECYCLE_EVENTS")?,
            },
            node: NodeSettings {
                name: node_name,
                address: env.get("NODE_ADDRESS").map(str::to_owned),
                heartbeat: env.secs("NODE_HEARTBEAT_SECS")?,
                bus_stall: env.secs("BUS_STALL_SECS")?,
                bus_narrow: env.secs("BUS_NARROW_SECS")?,
            },
            channels: ChannelPolicy {
                namespaces: {
                    let mut namespaces = values.channels.clone();
                    if dev_mode {
                        namespaces.declare_if_absent(
                            crate::channels::DEMO_NAMESPACE,
                            crate::channels::NamespaceOptions {
                                public: false,
                                presence: true,
                                join_leave: true,
                                history: Some(crate::channels::DEMO_HISTORY),
                                deliver_latest: false,
                                client_publish: crate::channels::ClientPublish::Off,
                            },
                        );
                    }
                    namespaces
                },
                max_subscriptions: env.number("MAX_SUBSCRIPTIONS_PER_CONNECTION")? as usize,
                idempotency_window: env.secs("IDEMPOTENCY_WINDOW_SECS")?,
            },
            log_filter: env.text("RUST_LOG"),
            log_format: crate::logging::LogFormat::parse(&env.text("LOG_FORMAT"))
                .map_err(|reason| env.invalid("LOG_FORMAT", reason))?,
            telemetry: crate::telemetry::TelemetrySettings {
                endpoint: env
                    .get("OTEL_EXPORTER_OTLP_ENDPOINT")
                    .filter(|url| !url.is_empty())
                    .map(|url| {
                        // The exporter speaks plain HTTP: a collector beside the node (a
                        // sidecar or a DaemonSet) forwards over TLS.
                        if url.starts_with("http://") {
                            Ok(url.to_owned())
                        } else {
                            Err(env.invalid(
                                "OTEL_EXPORTER_OTLP_ENDPOINT",
                                "must be an http:// URL (an OpenTelemetry Collector beside the \
                                 gateway, which may forward over TLS)",
                            ))
                        }
                    })
                    .transpose()?,
                service_name: env.text("OTEL_SERVICE_NAME"),
            },
        };
        if settings.upstream.backend.is_none()
            && let Some((name, _)) =
                settings
                    .channels
                    .namespaces
                    .listed()
                    .into_iter()
                    .find(|(_, options)| {
                        options.client_publish == crate::channels::ClientPublish::GrantedOrProxied
                    })
        {
            let name = match name.as_str() {
                "" => "the default namespace".to_owned(),
                name => format!("namespace `{name}`"),
            };
            return Err(ConfigError::Inconsistent(format!(
                "{name} has publish_proxy = true, which asks the app's backend: set UPSTREAM_URL"
            )));
        }
        Ok(settings)
    }
}

/// `.env` (when present) loaded into the process environment, then the environment as a map.
fn process_vars() -> Result<HashMap<String, String>, ConfigError> {
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(std::env::vars().collect())
}

/// The effective configuration, for `ticketgate config`: every setting with its value (secrets
/// redacted) and where it came from, after checking that the whole of it is valid.
pub fn effective_from_process_env() -> Result<Effective, ConfigError> {
    let values = Values::load(&process_vars()?)?;
    let settings = Settings::from_values(&values)?;
    Ok(Effective {
        settings: values.effective(),
        namespaces: settings.channels.namespaces,
    })
}

/// What `ticketgate config` shows.
pub struct Effective {
    /// Every setting with its value (secrets redacted) and where it came from.
    pub settings: Vec<(&'static table::Setting, String, Origin)>,
    /// The channel namespaces from the file's `[channels]` table.
    pub namespaces: crate::channels::Namespaces,
}

pub fn is_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// OS randomness. A machine without it cannot run a secure gateway, so failing loudly is right.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
    bytes
}

/// Typed reads of the merged values, with defaults, bounds and error messages from the table.
struct Vars<'a>(&'a Values);

impl Vars<'_> {
    /// The set value, or the table's default.
    fn get(&self, var: &str) -> Option<&str> {
        self.0
            .get(var)
            .map(|raw| raw.text.as_str())
            .or(lookup(var).default)
    }

    fn text(&self, var: &str) -> String {
        self.get(var).unwrap_or_default().to_owned()
    }

    fn invalid(&self, var: &'static str, reason: &str) -> ConfigError {
        let setting = lookup(var);
        let raw = self.0.get(var);
        ConfigError::Invalid {
            var,
            value: match (setting.secret, raw) {
                (true, _) => "<hidden>".into(),
                (false, Some(raw)) => raw.text.clone(),
                (false, None) => String::new(),
            },
            reason: reason.to_owned(),
            origin: raw.map_or(Origin::Default, |r| r.origin.clone()),
        }
    }

    fn parsed<T: std::str::FromStr>(&self, var: &'static str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.text(var)
            .parse()
            .map_err(|e: T::Err| self.invalid(var, &e.to_string()))
    }

    /// A whole number within the table's bounds.
    fn number(&self, var: &'static str) -> Result<u64, ConfigError> {
        let (min, max) = lookup(var).kind.bounds().expect("a number setting");
        let value: u64 = self.text(var).parse().map_err(|_| {
            self.invalid(var, &format!("expected a whole number from {min} to {max}"))
        })?;
        if !(min..=max).contains(&value) {
            return Err(self.invalid(var, &format!("must be from {min} to {max}")));
        }
        Ok(value)
    }

    fn rate(&self, var: &'static str) -> Result<NonZeroU32, ConfigError> {
        let value = self.number(var)?;
        u32::try_from(value)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| self.invalid(var, "out of range"))
    }

    fn secs(&self, var: &'static str) -> Result<Duration, ConfigError> {
        debug_assert!(matches!(lookup(var).kind, Kind::Secs { .. }));
        self.number(var).map(Duration::from_secs)
    }

    fn millis(&self, var: &'static str) -> Result<Duration, ConfigError> {
        debug_assert!(matches!(lookup(var).kind, Kind::Millis { .. }));
        self.number(var).map(Duration::from_millis)
    }

    fn boolean(&self, var: &'static str) -> Result<bool, ConfigError> {
        match self.text(var).to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            _ => Err(self.invalid(var, "expected true or false")),
        }
    }

    fn jwt_settings(&self) -> Result<JwtSettings, ConfigError> {
        let hs256_secret = match self.get("JWT_SECRET") {
            Some(secret) if secret.len() < 32 => {
                return Err(self.invalid("JWT_SECRET", "an HS256 secret must be at least 32 bytes"));
            }
            Some(secret) => Some(SecretBox::new(Box::new(secret.as_bytes().to_vec()))),
            None => None,
        };
        let mut public_keys = Vec::new();
        if let Some(path) = self.get("JWT_PUBLIC_KEY_FILE") {
            let pem = self.read_file("JWT_PUBLIC_KEY_FILE", path)?;
            public_keys.push(
                jwt::key_from_pem(pem.as_bytes())
                    .map_err(|e| self.invalid("JWT_PUBLIC_KEY_FILE", &e))?,
            );
        }
        if let Some(path) = self.get("JWT_JWKS_FILE") {
            let json = self.read_file("JWT_JWKS_FILE", path)?;
            public_keys
                .extend(jwt::keys_from_jwks(&json).map_err(|e| self.invalid("JWT_JWKS_FILE", &e))?);
        }
        let dev_mode = hs256_secret.is_none() && public_keys.is_empty();
        Ok(JwtSettings {
            hs256_secret: match (hs256_secret, dev_mode) {
                (None, true) => Some(SecretBox::new(Box::new(random_bytes::<32>().to_vec()))),
                (secret, _) => secret,
            },
            public_keys,
            dev_mode,
            leeway_secs: self.number("JWT_LEEWAY_SECS")?,
            issuer: self.get("JWT_ISSUER").map(str::to_owned),
            audience: self.get("JWT_AUDIENCE").map(str::to_owned),
        })
    }

    fn read_file(&self, var: &'static str, path: &str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path)
            .map_err(|e| self.invalid(var, &format!("cannot read the file: {e}")))
    }

    /// UPSTREAM_URL or EVENTS_WEBHOOK_URL, with the UPSTREAM_KEY it then needs.
    fn endpoint(&self, var: &'static str) -> Result<Option<Backend>, ConfigError> {
        let Some(url) = self.get(var) else {
            return Ok(None);
        };
        let parsed = url::Url::parse(url).map_err(|e| self.invalid(var, &e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(self.invalid(var, "expected an http:// or https:// URL"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(self.invalid(var, "no query or fragment"));
        }
        let key = match self.get("UPSTREAM_KEY") {
            None => {
                return Err(ConfigError::Inconsistent(format!(
                    "{var} needs UPSTREAM_KEY, which the backend checks on every call"
                )));
            }
            Some(key) if key.len() < 16 => {
                return Err(self.invalid("UPSTREAM_KEY", "use at least 16 characters"));
            }
            // It travels in a header.
            Some(key) if !key.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(self.invalid("UPSTREAM_KEY", "use printable ASCII without spaces"));
            }
            Some(key) => SecretString::from(key.to_owned()),
        };
        Ok(Some(Backend {
            url: url.trim_end_matches('/').to_owned(),
            key,
        }))
    }

    fn database_name(&self) -> Result<String, ConfigError> {
        self.valid_database("MONGODB_DATABASE", self.text("MONGODB_DATABASE"))
    }

    fn valid_database(&self, var: &'static str, name: String) -> Result<String, ConfigError> {
        // MongoDB's own rules: no empty names, none of these characters, under 64 bytes.
        if name.is_empty()
            || name.len() >= 64
            || name.contains([
                '/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?', '\0',
            ])
        {
            return Err(self.invalid(var, "not a valid MongoDB database name"));
        }
        Ok(name)
    }

    fn outbox(&self) -> Result<Option<OutboxConfig>, ConfigError> {
        let Some(collection) = self.get("OUTBOX_COLLECTION") else {
            return Ok(None);
        };
        if collection.is_empty()
            || collection.len() > 120
            || collection.contains(['$', '\0'])
            || collection.starts_with("system.")
        {
            return Err(self.invalid("OUTBOX_COLLECTION", "not a valid MongoDB collection name"));
        }
        let database = match self.get("OUTBOX_DATABASE") {
            Some(name) => self.valid_database("OUTBOX_DATABASE", name.to_owned())?,
            None => self.database_name()?,
        };
        Ok(Some(OutboxConfig {
            collection: collection.to_owned(),
            database,
            retention: self.secs("OUTBOX_RETENTION_SECS")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let s = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(s.server.bind_addr.to_string(), "127.0.0.1:8080");
        assert!(s.database.mongodb.is_none());
        assert!(s.jwt.dev_mode && s.jwt.hs256_secret.is_some());
        assert!(s.jwt.issuer.is_none() && s.jwt.audience.is_none());
        assert_eq!(s.jwt.leeway_secs, 30);
        assert_eq!(s.tickets.ttl, Duration::from_secs(900));
        assert!(s.tickets.single_use);
        assert_eq!(s.session.auth_timeout, Duration::from_secs(10));
        assert_eq!(s.session.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(s.session.client_timeout, Duration::from_secs(45));
        assert_eq!(
            s.server.broadcast_interval,
            Some(Duration::from_secs(5)),
            "dev mode shows broadcasts"
        );
        let configured =
            Settings::from_vars(&vars(&[("JWT_SECRET", "0123456789abcdef0123456789abcdef")]))
                .unwrap();
        assert!(
            configured.server.broadcast_interval.is_none(),
            "off unless asked for"
        );
        assert!(matches!(s.server.allowed_origins, OriginPolicy::SameOrigin));
        assert_eq!(s.limits.ticket_rate_per_min.get(), 30);
        assert_eq!(s.limits.upgrade_rate_per_min.get(), 120);
        assert_eq!(s.limits.connections.max_per_user, 20);
        assert_eq!(s.limits.connections.max_total, 100_000);
        assert_eq!(s.log_filter, "info");
    }

    #[test]
    fn every_invalid_value_names_its_variable() {
        for (var, value) in [
            ("BIND_ADDR", "nowhere"),
            ("TICKET_TTL_SECS", "0"),
            ("TICKET_TTL_SECS", "ten"),
            ("TICKET_TTL_SECS", "99999999999"),
            ("TICKET_SINGLE_USE", "maybe"),
            ("AUTH_TIMEOUT_SECS", "-1"),
            ("HEARTBEAT_INTERVAL_SECS", "0"),
            ("CLIENT_TIMEOUT_SECS", "x"),
            ("BROADCAST_INTERVAL_SECS", "1.5"),
            ("ALLOWED_ORIGINS", "not a url"),
            ("JWT_SECRET", "short"),
            ("STORE_TIMEOUT_MS", "0"),
            ("JWT_PUBLIC_KEY_FILE", "/nonexistent.pem"),
            ("JWT_JWKS_FILE", "/nonexistent.json"),
            ("JWT_PUBLIC_KEY_FILE", "/etc/hostname"),
            ("TICKET_RATE_PER_MIN", "0"),
            ("UPGRADE_RATE_PER_MIN", "99999999999"),
            ("MAX_CONNECTIONS_PER_USER", "0"),
            ("MAX_CONNECTIONS", "none"),
            ("TRUSTED_PROXIES", "proxy.local"),
            // Numbers past any sane value once reached timers and Instants.
            ("AUTH_TIMEOUT_SECS", "18446744073709551615"),
            ("HEARTBEAT_INTERVAL_SECS", "99999999999"),
            ("SHUTDOWN_GRACE_SECS", "99999999999"),
            ("MAX_MESSAGE_BYTES", "99999999999"),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
        }
        let err = Settings::from_vars(&vars(&[
            ("MONGODB_URI", "mongodb://x"),
            ("MONGODB_DATABASE", "a/b"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("MONGODB_DATABASE"), "{err}");
    }

    /// Error messages come from the table's bounds, not from constants restated by hand.
    #[test]
    fn bounds_in_messages_are_the_tables() {
        let err = Settings::from_vars(&vars(&[("NODE_HEARTBEAT_SECS", "21")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("from 1 to 20"), "{err}");
        let err = Settings::from_vars(&vars(&[("API_MAX_BODY_BYTES", "8388609")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("8388608"), "{err}");
    }

    #[test]
    fn the_generated_files_are_up_to_date() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let protocol_path = root.join("docs/PROTOCOL.md");
        let protocol = std::fs::read_to_string(&protocol_path).unwrap();
        let expected_protocol =
            docs::protocol_with_table(&protocol).expect("docs/PROTOCOL.md has the table's markers");
        let env_path = root.join(".env.example");
        let env_example = std::fs::read_to_string(&env_path).unwrap();
        if std::env::var_os("UPDATE_GENERATED").is_some() {
            std::fs::write(&protocol_path, &expected_protocol).unwrap();
            std::fs::write(&env_path, docs::env_example()).unwrap();
            return;
        }
        assert!(
            protocol == expected_protocol,
            "docs/PROTOCOL.md's settings table is out of date: run \
             UPDATE_GENERATED=1 cargo test -p ticketgate config::"
        );
        assert!(
            env_example == docs::env_example(),
            ".env.example is out of date: run UPDATE_GENERATED=1 cargo test -p ticketgate config::"
        );
    }

    /// README's table of the essential settings restates some defaults: they must be the
    /// table's.
    #[test]
    fn readme_states_the_tables_defaults() {
        let readme = include_str!("../../README.md");
        let mut checked = 0;
        for row in readme.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let (name, default) = (cells[1].trim_matches('`'), cells[2]);
            let Some(setting) = table::SETTINGS.iter().find(|s| s.name == name) else {
                continue;
            };
            if let (Some(value), Some(stated)) = (
                setting.default,
                default.strip_prefix('`').and_then(|d| d.strip_suffix('`')),
            ) {
                assert_eq!(stated, value, "README states {name}'s default as {stated}");
                checked += 1;
            }
        }
        assert!(checked >= 5, "only {checked} defaults found in README");
    }

    #[test]
    fn env_example_parses_to_the_defaults() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example");
        let example: HashMap<String, String> = dotenvy::from_path_iter(path)
            .unwrap()
            .map(|item| item.unwrap())
            .collect();
        let mut listed: Vec<&str> = example.keys().map(String::as_str).collect();
        let mut known = VARIABLES.to_vec();
        listed.sort_unstable();
        known.sort_unstable();
        assert_eq!(listed, known);
        let from_example = Settings::from_vars(&example).unwrap();
        let defaults = Settings::from_vars(&HashMap::new()).unwrap();
        // Debug redacts secrets (the dev secret differs per call), so it compares every setting.
        assert_eq!(format!("{from_example:?}"), format!("{defaults:?}"));
        assert!(from_example.database.mongodb.is_none() && from_example.jwt.dev_mode);
    }

    fn config_file(contents: &str) -> tempfile_free::TempFile {
        tempfile_free::TempFile::new(contents)
    }

    /// A tiny temporary file, without a dev-dependency for it.
    mod tempfile_free {
        pub struct TempFile(pub std::path::PathBuf);
        impl TempFile {
            pub fn new(contents: &str) -> Self {
                let name = format!(
                    "ticketgate-config-{}-{}.toml",
                    std::process::id(),
                    u64::from_le_bytes(super::random_bytes::<8>())
                );
                let path = std::env::temp_dir().join(name);
                std::fs::write(&path, contents).unwrap();
                TempFile(path)
            }
            pub fn path(&self) -> &str {
                self.0.to_str().unwrap()
            }
        }
        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn the_file_sits_under_the_environment() {
        let file = config_file(
            "ticket_ttl_secs = 120\nauth_timeout_secs = 7\nticket_single_use = false\nbind_addr = \"127.0.0.1:9999\"\n",
        );
        let s = Settings::from_vars(&vars(&[
            ("CONFIG_FILE", file.path()),
            ("AUTH_TIMEOUT_SECS", "3"),
        ]))
        .unwrap();
        assert_eq!(s.tickets.ttl, Duration::from_secs(120), "from the file");
        assert!(!s.tickets.single_use, "a TOML boolean");
        assert_eq!(s.server.bind_addr.port(), 9999);
        assert_eq!(
            s.session.auth_timeout,
            Duration::from_secs(3),
            "the environment wins"
        );

        let values = Values::load(&vars(&[
            ("CONFIG_FILE", file.path()),
            ("AUTH_TIMEOUT_SECS", "3"),
        ]))
        .unwrap();
        let effective = values.effective();
        let origin = |name: &str| {
            effective
                .iter()
                .find(|(s, _, _)| s.name == name)
                .map(|(_, v, o)| (v.clone(), o.clone()))
                .unwrap()
        };
        assert_eq!(
            origin("TICKET_TTL_SECS"),
            ("120".into(), Origin::File(file.0.clone()))
        );
        assert_eq!(
            origin("AUTH_TIMEOUT_SECS"),
            ("3".into(), Origin::Environment)
        );
        assert_eq!(
            origin("HEARTBEAT_INTERVAL_SECS"),
            ("15".into(), Origin::Default)
        );
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_in_the_file_is_named() {
        let unknown = config_file("ticket_ttl = 120\n");
        let err = Settings::from_vars(&vars(&[("CONFIG_FILE", unknown.path())]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ticket_ttl") && err.contains(unknown.path()),
            "{err}"
        );

        let bad = config_file("ticket_ttl_secs = 0\n");
        let err = Settings::from_vars(&vars(&[("CONFIG_FILE", bad.path())]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ticket_ttl_secs") && err.contains(bad.path()),
            "the key and the file: {err}"
        );

        let fraction = config_file("auth_timeout_secs = 1.5\n");
        let err = Settings::from_vars(&vars(&[("CONFIG_FILE", fraction.path())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("auth_timeout_secs"), "{err}");

        let broken = config_file("ticket_ttl_secs = \n");
        let err = Settings::from_vars(&vars(&[("CONFIG_FILE", broken.path())]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONFIG_FILE"), "{err}");

        let err = Settings::from_vars(&vars(&[("CONFIG_FILE", "/nonexistent/ticketgate.toml")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/ticketgate.toml"), "{err}");
    }

    #[test]
    fn the_channels_table_declares_namespaces() {
        let file = config_file(
            "max_subscriptions_per_connection = 7\n[channels]\npublic = true\n\
             [[channels.namespaces]]\nname = \"chat\"\npresence = true\njoin_leave = true\n",
        );
        let s = Settings::from_vars(&vars(&[("CONFIG_FILE", file.path())])).unwrap();
        assert_eq!(s.channels.max_subscriptions, 7);
        let chat = crate::channels::ChannelName::parse("chat:a").unwrap();
        let options = s.channels.namespaces.options(&chat).unwrap();
        assert!(options.presence && options.join_leave && !options.public);
        let lobby = crate::channels::ChannelName::parse("lobby").unwrap();
        assert!(s.channels.namespaces.options(&lobby).unwrap().public);

        let defaults = Settings::from_vars(&vars(&[])).unwrap();
        assert_eq!(defaults.channels.max_subscriptions, 128);
        assert!(!defaults.channels.namespaces.options(&lobby).unwrap().public);
        assert!(
            defaults.channels.namespaces.options(&chat).is_err(),
            "undeclared"
        );

        for (text, named) in [
            ("[channels]\npublik = true\n", "publik"),
            ("[[channels.namespaces]]\nname = \"a:b\"\n", "a:b"),
            ("[[channels.namespaces]]\npresence = true\n", "name"),
            ("channels = 5\n", "channels"),
        ] {
            let file = config_file(text);
            let err = Settings::from_vars(&vars(&[("CONFIG_FILE", file.path())]))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(named) && err.contains(file.path()),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn secrets_in_the_file_are_neither_echoed_nor_shown() {
        let file = config_file("jwt_secret = \"short-secret\"\n");
        let err = Settings::from_vars(&vars(&[("CONFIG_FILE", file.path())]))
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("short-secret") && err.contains("jwt_secret"),
            "{err}"
        );
        let good = config_file("api_key = \"an-api-key-long-enough\"\n");
        let values = Values::load(&vars(&[("CONFIG_FILE", good.path())])).unwrap();
        let shown = format!(
            "{:?}",
            values
                .effective()
                .iter()
                .map(|(_, v, _)| v)
                .collect::<Vec<_>>()
        );
        assert!(!shown.contains("an-api-key-long-enough"), "{shown}");
    }

    #[test]
    fn client_timeout_must_exceed_heartbeat() {
        let err = Settings::from_vars(&vars(&[
            ("HEARTBEAT_INTERVAL_SECS", "30"),
            ("CLIENT_TIMEOUT_SECS", "30"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CLIENT_TIMEOUT_SECS") && err.contains("HEARTBEAT_INTERVAL_SECS"),
            "{err}"
        );
    }

    #[test]
    fn node_and_body_settings_are_bounded() {
        for (var, value) in [
            ("API_MAX_BODY_BYTES", "8388609"),
            ("NODE_HEARTBEAT_SECS", "21"),
            ("NODE_HEARTBEAT_SECS", "0"),
            ("NODE_NAME", "has space"),
            ("NODE_NAME", &"x".repeat(65)),
        ] {
            let err = Settings::from_vars(&vars(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(var), "{var}={value}: {err}");
        }
        let fine = Settings::from_vars(&vars(&[
            ("API_MAX_BODY_BYTES", "8388608"),
            ("NODE_HEARTBEAT_SECS", "20"),
            ("NODE_NAME", "gw-1.eu_west"),
        ]))
        .unwrap();
        assert_eq!(fine.node.name.as_deref(), Some("gw-1.eu_west"));
    }

    #[test]
    fn the_backend_needs_an_http_url_and_a_key() {
        let key = ("UPSTREAM_KEY", "0123456789abcdef");
        for (pairs, names) in [
            (
                vec![("UPSTREAM_URL", "http://app/internal")],
                "UPSTREAM_KEY",
            ),
            (
                vec![("EVENTS_WEBHOOK_URL", "http://app/events")],
                "UPSTREAM_KEY",
            ),
            (
                vec![("EVENTS_WEBHOOK_URL", "mailto:x@y"), key],
                "EVENTS_WEBHOOK_URL",
            ),
            (vec![("UPSTREAM_URL", "ftp://app"), key], "UPSTREAM_URL"),
            (vec![("UPSTREAM_URL", "not a url"), key], "UPSTREAM_URL"),
            (
                vec![("UPSTREAM_URL", "http://app/x?a=1"), key],
                "UPSTREAM_URL",
            ),
            (
                vec![("UPSTREAM_URL", "http://app"), ("UPSTREAM_KEY", "short")],
                "UPSTREAM_KEY",
            ),
            (
                vec![
                    ("UPSTREAM_URL", "http://app"),
                    ("UPSTREAM_KEY", "has a space in it, long"),
                ],
                "UPSTREAM_KEY",
            ),
            (
                vec![("UPSTREAM_TIMEOUT_MS", "60001")],
                "UPSTREAM_TIMEOUT_MS",
            ),
            (
                vec![("MAX_RPC_IN_FLIGHT_PER_CONNECTION", "0")],
                "MAX_RPC_IN_FLIGHT_PER_CONNECTION",
            ),
        ] {
            let err = Settings::from_vars(&vars(&pairs)).unwrap_err().to_string();
            assert!(err.contains(names), "{pairs:?}: {err}");
            assert!(!err.contains("has a space"), "the key was printed: {err}");
        }
        let off = Settings::from_vars(&vars(&[])).unwrap().upstream;
        assert!(off.backend.is_none() && off.events_webhook.is_none());
        assert_eq!(
            (off.timeout, off.max_in_flight, off.max_rpc_per_connection),
            (Duration::from_millis(5000), 1000, 16)
        );
        let on = Settings::from_vars(&vars(&[("UPSTREAM_URL", "https://app/internal/"), key]))
            .unwrap()
            .upstream;
        assert_eq!(on.backend.unwrap().url, "https://app/internal");
    }

    #[test]
    fn the_console_needs_a_long_password() {
        let err = Settings::from_vars(&vars(&[("CONSOLE_PASSWORD", "too-short-pw")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("CONSOLE_PASSWORD"), "{err}");
        assert!(
            !err.contains("too-short-pw"),
            "the password was printed: {err}"
        );
        assert!(
            Settings::from_vars(&vars(&[]))
                .unwrap()
                .api
                .console
                .is_none()
        );
        let on = Settings::from_vars(&vars(&[("CONSOLE_PASSWORD", "sixteen-chars-ok")]))
            .unwrap()
            .api
            .console
            .unwrap();
        assert_eq!(on.session, Duration::from_secs(8 * 3600));
        assert_eq!(on.signin_rate_per_min.get(), 10);
    }

    #[test]
    fn secrets_are_not_printed_by_debug() {
        let secret = "a-very-secret-value-that-is-long-enough";
        let s = Settings::from_vars(&vars(&[
            ("JWT_SECRET", secret),
            ("MONGODB_URI", "mongodb://user:pw@h"),
        ]))
        .unwrap();
        let printed = format!("{s:?}");
        assert!(
            !printed.contains(secret) && !printed.contains("pw@"),
            "{printed}"
        );
    }
}
