//! Getting MongoDB ready at start: the migrations applied once, and a retry with backoff for
//! whatever start-up step needs the database while it is not reachable yet.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use mongodb::Database;

use super::Bounds;
use crate::migrations::{self, MigrationContext, MigrationError};

/// The database with the bounds its users run under, and what its migrations need.
pub struct Prepared {
    pub db: Database,
    pub bounds: Bounds,
    pub migrations: MigrationContext,
}

impl Prepared {
    /// Applies pending migrations (once: afterwards a no-op) and opens the database for
    /// business; until then every bounded operation answers "unavailable" at once.
    pub async fn migrate(&self) -> Result<(), MigrationError> {
        if self.bounds.readiness.is_ready() {
            return Ok(());
        }
        let report = migrations::apply(&self.db, &self.migrations).await?;
        log::info!(
            "MongoDB database {:?} is ready (migrations applied now: {:?})",
            self.db.name(),
            report.applied
        );
        self.bounds.readiness.set_ready();
        Ok(())
    }
}

/// Runs `step` until it succeeds, waiting 0.5 s, then twice as long each time, up to 30 s.
pub async fn retry_until_ready<F, Fut, E>(mut step: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut backoff = Duration::from_millis(500);
    loop {
        tokio::time::sleep(backoff).await;
        match step().await {
            Ok(()) => {
                log::info!("MongoDB is ready");
                return;
            }
            Err(e) => {
                backoff = (backoff * 2).min(Duration::from_secs(30));
                log::warn!("MongoDB still not ready ({e}); retrying in {backoff:?}");
            }
        }
    }
}
