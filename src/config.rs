//! Typed, validated configuration, read from the environment (and `.env`) once at start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use secrecy::{SecretBox, SecretString};

use crate::client_ip::TrustedProxies;
use crate::hub::ConnectionLimits;
use crate::jwt::{self, JwtSettings};
use crate::origin::OriginPolicy;

/// Everything the gateway needs to start. Built by [`Settings::from_env`] or by tests directly.
#[derive(Debug)]
pub struct Settings {
    pub bind_addr: SocketAddr,
    /// `None`: the in-process ticket store (single node).
    pub mongodb: Option<MongoSettings>,
    pub jwt: JwtSettings,
    pub tickets: TicketPolicy,
    pub auth_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    /// How long before a JWT's `exp` a connection gets `token_expiring`.
    pub token_refresh_notice: Duration,
    /// `None`: the demo broadcaster is off.
    pub broadcast_interval: Option<Duration>,
    pub allowed_origins: OriginPolicy,
    /// Upper bound on any single ticket-store operation.
    pub store_timeout: Duration,
    /// Largest WebSocket message accepted from a client, after aggregating continuations.
    pub max_message_bytes: usize,
    pub ticket_rate_per_min: NonZeroU32,
    pub upgrade_rate_per_min: NonZeroU32,
    pub connection_limits: ConnectionLimits,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: TrustedProxies,
    /// Authenticates the server API; `None` turns the API off.
    pub api_key: Option<SecretString>,
    pub api_max_body_bytes: usize,
    /// How long a draining gateway waits for its connections before it exits.
    pub shutdown_grace: Duration,
    /// Time allowed to send a request's head (slowloris defence).
    pub http_request_timeout: Duration,
    pub node: NodeSettings,
}

/// How this node names itself to the others (`GET /api/nodes`).
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `None`: the host name. A random suffix is added at every start.
    pub name: Option<String>,
    /// `None`: the address it listens on.
    pub address: Option<String>,
    pub heartbeat: Duration,
}

/// Largest server-API body: a broadcast crosses nodes as one MongoDB document, limited to
/// 16 MiB, and its encoded frame is a little larger than its data.
const MAX_API_BODY_BYTES: u64 = 8 * 1024 * 1024;

/// The node registry's TTL index removes entries 60 s after their last heartbeat, so beats
/// must come well within that.
const MAX_NODE_HEARTBEAT_SECS: u64 = 20;

#[derive(Debug)]
pub struct MongoSettings {
    /// May carry credentials, hence secret: it is never logged.
    pub uri: SecretString,
    pub database: String,
}

#[derive(Debug, Clone, Copy)]
pub struct TicketPolicy {
    pub ttl: Duration,
    pub single_use: bool,
}

/// A configuration value that cannot be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: invalid value {value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Inconsistent(String),
    #[error("reading .env: {0}")]
    DotEnv(#[from] dotenvy::Error),
}

/// Every variable the gateway reads; .env.example lists each (a test checks).
pub const VARIABLES: &[&str] = &[
    "BIND_ADDR",
    "MONGODB_URI",
    "MONGODB_DATABASE",
    "JWT_SECRET",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_JWKS_FILE",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_LEEWAY_SECS",
    "TICKET_TTL_SECS",
    "TICKET_SINGLE_USE",
    "AUTH_TIMEOUT_SECS",
    "HEARTBEAT_INTERVAL_SECS",
    "CLIENT_TIMEOUT_SECS",
    "TOKEN_REFRESH_NOTICE_SECS",
    "BROADCAST_INTERVAL_SECS",
    "ALLOWED_ORIGINS",
    "STORE_TIMEOUT_MS",
    "MAX_MESSAGE_BYTES",
    "TICKET_RATE_PER_MIN",
    "UPGRADE_RATE_PER_MIN",
    "MAX_CONNECTIONS_PER_USER",
    "MAX_CONNECTIONS",
    "TRUSTED_PROXIES",
    "HTTP_REQUEST_TIMEOUT_SECS",
    "SHUTDOWN_GRACE_SECS",
    "API_KEY",
    "API_MAX_BODY_BYTES",
    "NODE_NAME",
    "NODE_ADDRESS",
    "NODE_HEARTBEAT_SECS",
    "RUST_LOG",
];

pub const DEFAULT_BIND_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE: &str = "ticketgate";
/// The demo broadcaster's interval in dev mode when BROADCAST_INTERVAL_SECS is not set.
pub const DEV_BROADCAST_INTERVAL_SECS: u64 = 5;
pub const DEFAULT_TICKET_TTL_SECS: u64 = 900;
/// MongoDB stores `expireAfterSeconds` as a 32-bit integer.
const MAX_TICKET_TTL_SECS: u64 = i32::MAX as u64;

impl Settings {
    /// Reads `.env` (when present) into the process environment, then the environment.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Builds settings from a map of variables: the environment in production, a literal in tests.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let env = Vars(vars);
        let heartbeat_interval = env.secs("HEARTBEAT_INTERVAL_SECS", 15, 1)?;
        let client_timeout = env.secs("CLIENT_TIMEOUT_SECS", 45, 1)?;
        if client_timeout <= heartbeat_interval {
            return Err(ConfigError::Inconsistent(format!(
                "CLIENT_TIMEOUT_SECS ({}) must be greater than HEARTBEAT_INTERVAL_SECS ({})",
                client_timeout.as_secs(),
                heartbeat_interval.as_secs()
            )));
        }
        let ttl = env.secs("TICKET_TTL_SECS", DEFAULT_TICKET_TTL_SECS, 1)?;
        if ttl.as_secs() > MAX_TICKET_TTL_SECS {
            return Err(env.invalid("TICKET_TTL_SECS", "at most 2147483647 seconds"));
        }
        let jwt = env.jwt_settings()?;
        // Dev mode shows traffic at once; a real deployment broadcasts only what it is told to.
        let broadcast_default = if jwt.dev_mode {
            DEV_BROADCAST_INTERVAL_SECS
        } else {
            0
        };
        let broadcast_secs = env.number("BROADCAST_INTERVAL_SECS", broadcast_default, 0)?;
        let heartbeat = env.number("NODE_HEARTBEAT_SECS", 5, 1)?;
        if heartbeat > MAX_NODE_HEARTBEAT_SECS {
            return Err(env.invalid("NODE_HEARTBEAT_SECS", "at most 20 seconds"));
        }
        let node_name = env.get("NODE_NAME").map(str::to_owned);
        if let Some(name) = &node_name
            && !is_node_name(name)
        {
            return Err(env.invalid("NODE_NAME", "use 1 to 64 letters, digits, '.', '_' or '-'"));
        }
        Ok(Settings {
            node: NodeSettings {
                name: node_name,
                address: env.get("NODE_ADDRESS").map(str::to_owned),
                heartbeat: Duration::from_secs(heartbeat),
            },
            bind_addr: env.parsed("BIND_ADDR", DEFAULT_BIND_ADDR)?,
            mongodb: match env.get("MONGODB_URI") {
                None => None,
                Some(uri) => Some(MongoSettings {
                    uri: SecretString::from(uri.to_owned()),
                    database: env.database_name()?,
                }),
            },
            jwt,
            tickets: TicketPolicy {
                ttl,
                single_use: env.boolean("TICKET_SINGLE_USE", true)?,
            },
            auth_timeout: env.secs("AUTH_TIMEOUT_SECS", 10, 1)?,
            heartbeat_interval,
            client_timeout,
            token_refresh_notice: env.secs("TOKEN_REFRESH_NOTICE_SECS", 60, 0)?,
            broadcast_interval: (broadcast_secs > 0).then(|| Duration::from_secs(broadcast_secs)),
            allowed_origins: match env.get("ALLOWED_ORIGINS") {
                None => OriginPolicy::SameOrigin,
                Some(list) => OriginPolicy::parse_list(list)
                    .map_err(|reason| env.invalid("ALLOWED_ORIGINS", &reason))?,
            },
            store_timeout: Duration::from_millis(env.number("STORE_TIMEOUT_MS", 2000, 1)?),
            max_message_bytes: env.number("MAX_MESSAGE_BYTES", 64 * 1024, 256)? as usize,
            ticket_rate_per_min: env.rate("TICKET_RATE_PER_MIN", 30)?,
            upgrade_rate_per_min: env.rate("UPGRADE_RATE_PER_MIN", 120)?,
            connection_limits: ConnectionLimits {
                max_per_user: env.number("MAX_CONNECTIONS_PER_USER", 20, 1)? as usize,
                max_total: env.number("MAX_CONNECTIONS", 100_000, 1)? as usize,
            },
            api_key: match env.get("API_KEY") {
                Some(key) if key.len() < 16 => {
                    return Err(ConfigError::Invalid {
                        var: "API_KEY",
                        value: "<hidden>".into(),
                        reason: "use at least 16 characters".into(),
                    });
                }
                key => key.map(|k| SecretString::from(k.to_owned())),
            },
            api_max_body_bytes: match env.number("API_MAX_BODY_BYTES", 256 * 1024, 64)? {
                // A broadcast travels as one MongoDB document (16 MiB at most) between nodes.
                bytes if bytes > MAX_API_BODY_BYTES => {
                    return Err(env.invalid("API_MAX_BODY_BYTES", "at most 8388608 (8 MiB)"));
                }
                bytes => bytes as usize,
            },
            shutdown_grace: env.secs("SHUTDOWN_GRACE_SECS", 10, 0)?,
            http_request_timeout: env.secs("HTTP_REQUEST_TIMEOUT_SECS", 5, 1)?,
            trusted_proxies: match env.get("TRUSTED_PROXIES") {
                None => TrustedProxies::default(),
                Some(list) => {
                    TrustedProxies::parse(list).map_err(|e| env.invalid("TRUSTED_PROXIES", &e))?
                }
            },
        })
    }
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

/// Variable lookup with parsing helpers; empty values count as unset.
struct Vars<'a>(&'a HashMap<String, String>);

impl Vars<'_> {
    fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    fn invalid(&self, var: &'static str, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            var,
            value: self.get(var).unwrap_or_default().to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn parsed<T: std::str::FromStr>(
        &self,
        var: &'static str,
        default: &str,
    ) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        let raw = self.get(var).unwrap_or(default);
        raw.parse()
            .map_err(|e: T::Err| self.invalid(var, &e.to_string()))
    }

    fn number(&self, var: &'static str, default: u64, min: u64) -> Result<u64, ConfigError> {
        let value: u64 = match self.get(var) {
            None => default,
            Some(raw) => raw
                .parse()
                .map_err(|_| self.invalid(var, "expected a whole number"))?,
        };
        if value < min {
            return Err(self.invalid(var, &format!("must be at least {min}")));
        }
        Ok(value)
    }

    fn rate(&self, var: &'static str, default: u64) -> Result<NonZeroU32, ConfigError> {
        let value = self.number(var, default, 1)?;
        u32::try_from(value)
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| self.invalid(var, "too large"))
    }

    fn secs(&self, var: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
        self.number(var, default, min).map(Duration::from_secs)
    }

    fn boolean(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(var).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(_) => Err(self.invalid(var, "expected true or false")),
        }
    }

    fn jwt_settings(&self) -> Result<JwtSettings, ConfigError> {
        let hs256_secret = match self.get("JWT_SECRET") {
            Some(secret) if secret.len() < 32 => {
                return Err(ConfigError::Invalid {
                    var: "JWT_SECRET",
                    value: "<hidden>".into(),
                    reason: "an HS256 secret must be at least 32 bytes".into(),
                });
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
            leeway_secs: self.number("JWT_LEEWAY_SECS", 30, 0)?,
            issuer: self.get("JWT_ISSUER").map(str::to_owned),
            audience: self.get("JWT_AUDIENCE").map(str::to_owned),
        })
    }

    fn read_file(&self, var: &'static str, path: &str) -> Result<String, ConfigError> {
        std::fs::read_to_string(path)
            .map_err(|e| self.invalid(var, &format!("cannot read the file: {e}")))
    }

    fn database_name(&self) -> Result<String, ConfigError> {
        let name = self.get("MONGODB_DATABASE").unwrap_or(DEFAULT_DATABASE);
        // MongoDB's own rules: no empty names, none of these characters, under 64 bytes.
        if name.len() >= 64
            || name.contains(['/', '\\', '.', ' ', '"', '$', '*', '<', '>', ':', '|', '?'])
        {
            return Err(self.invalid("MONGODB_DATABASE", "not a valid MongoDB database name"));
        }
        Ok(name.to_owned())
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
        assert_eq!(s.bind_addr.to_string(), "127.0.0.1:8080");
        assert!(s.mongodb.is_none());
        assert!(s.jwt.dev_mode && s.jwt.hs256_secret.is_some());
        assert!(s.jwt.issuer.is_none() && s.jwt.audience.is_none());
        assert_eq!(s.jwt.leeway_secs, 30);
        assert_eq!(s.tickets.ttl, Duration::from_secs(900));
        assert!(s.tickets.single_use);
        assert_eq!(s.auth_timeout, Duration::from_secs(10));
        assert_eq!(s.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(s.client_timeout, Duration::from_secs(45));
        assert_eq!(
            s.broadcast_interval,
            Some(Duration::from_secs(5)),
            "dev mode shows broadcasts"
        );
        let configured =
            Settings::from_vars(&vars(&[("JWT_SECRET", "0123456789abcdef0123456789abcdef")]))
                .unwrap();
        assert!(
            configured.broadcast_interval.is_none(),
            "off unless asked for"
        );
        assert!(matches!(s.allowed_origins, OriginPolicy::SameOrigin));
        assert_eq!(s.ticket_rate_per_min.get(), 30);
        assert_eq!(s.upgrade_rate_per_min.get(), 120);
        assert_eq!(s.connection_limits.max_per_user, 20);
        assert_eq!(s.connection_limits.max_total, 100_000);
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

    #[test]
    fn env_example_lists_every_variable_with_its_default() {
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
        assert!(from_example.mongodb.is_none() && from_example.jwt.dev_mode);
    }

    #[test]
    fn protocol_md_documents_every_variable() {
        let protocol = include_str!("../docs/PROTOCOL.md");
        for var in VARIABLES {
            assert!(
                protocol.contains(&format!("`{var}`")),
                "docs/PROTOCOL.md does not document {var}"
            );
        }
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
