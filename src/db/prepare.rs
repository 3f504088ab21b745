//! Getting MongoDB ready at start: the migrations applied once, advice on mongod's snapshot
//! history for nodes that keep channel history, and a retry with backoff for
//! whatever start-up step needs the database while it is not reachable yet.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use mongodb::Database;
use mongodb::bson::doc;

use super::Bounds;
use super::migrations::{self, MigrationContext, MigrationError};

/// The database with the bounds its users run under, and what its migrations need.
pub struct Prepared {
    pub db: Database,
    pub bounds: Bounds,
    pub migrations: MigrationContext,
    /// Whether a namespace keeps channel history here, which mongod's snapshot history slows.
    pub keeps_history: bool,
}

impl Prepared {
    /// Applies pending migrations (once: afterwards a no-op) and opens the database for
    /// business; until then every bounded operation answers "unavailable" at once.
    pub async fn migrate(&self) -> Result<(), MigrationError> {
        if self.bounds.readiness.is_ready() {
            return Ok(());
        }
        let report = migrations::apply(&self.db, &self.migrations).await?;
        if self.keeps_history {
            advise_on_snapshot_history(&self.db, self.bounds.timeout).await;
        }
        log::info!(
            "MongoDB database {:?} is ready (migrations applied now: {:?})",
            self.db.name(),
            report.applied
        );
        self.bounds.readiness.set_ready();
        Ok(())
    }
}

/// Warns when mongod keeps snapshot history, which channel histories pay for: each is one
/// document rewritten at every append, and with the old versions of the last 5 minutes kept
/// (mongod's default), the page holding them is evicted every ~10,000 appends, stalling them
/// 50 to 100 ms (docs/BENCHMARKS.md, "Snapshot history"). ticketgate never reads at a past
/// cluster time. A user without the right to read server parameters (on a managed service,
/// say) gets no warning: the check is advice, not a condition.
async fn advise_on_snapshot_history(db: &Database, timeout: Duration) {
    let admin = db.client().database("admin");
    let ask = admin.run_command(doc! {
        "getParameter": 1,
        SNAPSHOT_WINDOW: 1,
    });
    let window = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(answer)) => snapshot_window_secs(&answer),
        Ok(Err(e)) => {
            log::debug!("reading {SNAPSHOT_WINDOW}: {e}");
            None
        }
        Err(_) => None,
    };
    if let Some(secs) = window.filter(|&secs| secs > 0) {
        log::warn!(
            "MongoDB keeps {secs} s of snapshot history ({SNAPSHOT_WINDOW}), which stalls \
             appends to channel histories every ~10,000 appends; ticketgate never reads at a \
             past cluster time, so run mongod with --setParameter {SNAPSHOT_WINDOW}=0 unless \
             other apps on it do (README, \"No message lost across a reconnect\")"
        );
    }
}

const SNAPSHOT_WINDOW: &str = "minSnapshotHistoryWindowInSeconds";

/// The window from a `getParameter` answer; mongod answers an int or a long.
fn snapshot_window_secs(answer: &mongodb::bson::Document) -> Option<i64> {
    match answer.get(SNAPSHOT_WINDOW)? {
        mongodb::bson::Bson::Int32(secs) => Some(i64::from(*secs)),
        mongodb::bson::Bson::Int64(secs) => Some(*secs),
        _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_window_is_read_from_either_integer_type() {
        assert_eq!(
            snapshot_window_secs(&doc! {SNAPSHOT_WINDOW: 300, "ok": 1}),
            Some(300)
        );
        assert_eq!(
            snapshot_window_secs(&doc! {SNAPSHOT_WINDOW: 0_i64, "ok": 1}),
            Some(0)
        );
        assert_eq!(snapshot_window_secs(&doc! {"ok": 1}), None);
        assert_eq!(snapshot_window_secs(&doc! {SNAPSHOT_WINDOW: "300"}), None);
    }
}
