//! `SIGHUP`: the configuration read again, and what can change live put in force without
//! dropping a connection: the channel namespaces (from `CONFIG_FILE`) and the JWT keys (the
//! key files read again). An invalid configuration keeps the running one, and the log says
//! why. Everything else takes a restart; `ticketgate config` marks what reloads.

use std::sync::Arc;

use crate::channels::Namespaces;
use crate::config::Settings;
use crate::jwt::JwtVerifier;

/// The settings whose files a SIGHUP reads again (besides CONFIG_FILE's `[channels]`);
/// `ticketgate config` marks them.
pub const LIVE: [&str; 2] = ["JWT_PUBLIC_KEY_FILE", "JWT_JWKS_FILE"];

/// What a reload replaces, shared with the parts that read it.
pub struct Reloadable {
    pub namespaces: Namespaces,
    pub jwt: Arc<JwtVerifier>,
    /// A dev-mode secret is drawn at start: a reload must not draw another.
    pub dev_mode: bool,
}

impl Reloadable {
    /// Reads the configuration again and puts it in force; false when it is invalid (the
    /// running one stays).
    pub fn reload(&self) -> bool {
        let settings = match Settings::from_process_env() {
            Ok(settings) => settings,
            Err(e) => {
                log::warn!("SIGHUP: the configuration is invalid, the running one stays: {e}");
                return false;
            }
        };
        self.apply(&settings);
        true
    }

    /// Puts `settings`' namespaces and keys in force.
    pub fn apply(&self, settings: &Settings) {
        self.namespaces.replace(&settings.channels.namespaces);
        let keys = if self.dev_mode || settings.jwt.dev_mode {
            "kept (dev mode)"
        } else {
            self.jwt.reload(&settings.jwt);
            "read again"
        };
        log::info!(
            "SIGHUP: configuration reloaded: {} channel namespaces in force, JWT keys {keys}",
            settings.channels.namespaces.listed().len() - 1
        );
    }

    /// Reloads at every SIGHUP, for the life of the process.
    pub async fn on_sighup(self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            log::warn!("SIGHUP cannot be listened for: no live reload");
            return std::future::pending().await;
        };
        while hangups.recv().await.is_some() {
            self.reload();
        }
        std::future::pending().await
    }
}
