//! MongoDB as every part of the gateway uses it: connecting with bounded waits, the bounds each
//! operation runs under (readiness, `STORE_TIMEOUT_MS`, a latency metric), the one
//! "unavailable" error, a client per worker thread, and getting the database ready at start
//! (migrations, retried until they apply). The ticket store, the revocations, the cluster bus
//! and the node registry all stand on this.

pub mod collections;
mod group_commit;
pub mod migrations;
mod per_thread;
mod prepare;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

pub use group_commit::{Batching, GroupCommit};
pub use per_thread::PerThreadDatabase;
pub use prepare::{Prepared, retry_until_ready};

use crate::config::MongoSettings;
use crate::metrics::Metrics;

/// MongoDB could not answer in time or at all. Every user of the database (tickets,
/// revocations, the cluster bus, the node registry) reports this one error; the gateway
/// answers 503 and tries again on the next request, and nothing is cached as "down".
#[derive(Debug, thiserror::Error)]
#[error("MongoDB unavailable: {0}")]
pub struct Unavailable(pub String);

/// What every MongoDB operation runs under: the store must be ready (migrations applied), the
/// answer must come within `timeout`, and its latency is measured.
#[derive(Clone)]
pub struct Bounds {
    pub timeout: Duration,
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
    pub admission: Admission,
}

/// Whether an operation starts new work or carries on work under way; see [`Admission`].
#[derive(Debug, Clone, Copy)]
enum Work {
    New,
    UnderWay,
}

/// At most so many MongoDB operations at once, shared by every store of a node. Without it a
/// burst queues in the driver's connection pool, where each operation spends its whole
/// timeout waiting behind others that will time out too, and nothing gets through; with it
/// the excess is refused at once, and what runs finishes in MongoDB's time.
///
/// Operations that start new work (minting a ticket) may hold only half of the turns: a client
/// needs a mint and then a redeem, and in a burst of reconnects unlimited mints would take the
/// turns their own redeems need, so that tickets are minted only to have their redeem refused.
#[derive(Clone)]
pub struct Admission {
    all: Arc<tokio::sync::Semaphore>,
    entry: Arc<tokio::sync::Semaphore>,
}

/// The right to run one operation, given back when dropped.
struct Turn<'a> {
    _entry: Option<tokio::sync::SemaphorePermit<'a>>,
    _all: tokio::sync::SemaphorePermit<'a>,
}

impl Admission {
    pub fn new(max_in_flight: usize) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Admission {
            all: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
            entry: Arc::new(tokio::sync::Semaphore::new(max_in_flight.div_ceil(2))),
        }
    }

    /// Waits for a turn (the semaphores are never closed, so it only ever waits).
    async fn turn(&self, work: Work) -> Result<Turn<'_>, tokio::sync::AcquireError> {
        let entry = match work {
            Work::New => Some(self.entry.acquire().await?),
            Work::UnderWay => None,
        };
        Ok(Turn {
            _entry: entry,
            _all: self.all.acquire().await?,
        })
    }
}

impl Bounds {
    /// Runs a MongoDB operation within STORE_TIMEOUT_MS, after waiting at most half of it
    /// for a turn among STORE_MAX_IN_FLIGHT.
    pub async fn run<T>(
        &self,
        name: &'static str,
        operation: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, Unavailable> {
        self.run_as(Work::UnderWay, name, operation).await
    }

    /// Like [`Bounds::run`], for an operation that starts new work (minting a ticket): it
    /// also needs one of the half of the turns such operations share.
    pub async fn run_entry<T>(
        &self,
        name: &'static str,
        operation: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, Unavailable> {
        self.run_as(Work::New, name, operation).await
    }

    async fn run_as<T>(
        &self,
        work: Work,
        name: &'static str,
        operation: impl std::future::IntoFuture<Output = mongodb::error::Result<T>>,
    ) -> Result<T, Unavailable> {
        if !self.readiness.is_ready() {
            return Err(Unavailable(
                "MongoDB is not ready yet (migrations pending)".into(),
            ));
        }
        // Half the operation's bound to wait for a turn: past that it is refused, while the
        // operations that run get their whole bound.
        let turn = self.admission.turn(work);
        let Ok(Ok(_turn)) = tokio::time::timeout(self.timeout / 2, turn).await else {
            self.metrics.store_operations_shed.inc();
            return Err(Unavailable(
                "MongoDB is busy: STORE_MAX_IN_FLIGHT operations are running".into(),
            ));
        };
        let _timer = self
            .metrics
            .store_operation_seconds
            .with_label_values(&[name])
            .start_timer();
        match tokio::time::timeout(self.timeout, operation.into_future()).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Unavailable(e.to_string())),
            Err(_) => Err(Unavailable(format!("no answer within {:?}", self.timeout))),
        }
    }
}

/// Opens a client whose every wait is bounded by `timeout`, so an unreachable server turns
/// into an error rather than a hang.
/// Runs `updates` (statements of the `update` command) on `collection` as one command, in
/// the transaction of `session`: one round trip for a batch; a statement's error fails it all.
pub async fn update_in<T: Send + Sync>(
    session: &mut mongodb::ClientSession,
    collection: &mongodb::Collection<T>,
    updates: Vec<bson::Document>,
) -> mongodb::error::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let answer = collection
        .client()
        .database(&collection.namespace().db)
        .run_command(bson::doc! {
            "update": collection.name(),
            "updates": updates,
            "ordered": true,
        })
        .session(session)
        .await?;
    match answer.get_array("writeErrors") {
        Ok(errors) if !errors.is_empty() => Err(mongodb::error::Error::custom(format!(
            "updating {}: {answer}",
            collection.name()
        ))),
        _ => Ok(()),
    }
}

pub async fn connect(settings: &MongoSettings, timeout: Duration) -> Result<Database, Unavailable> {
    Ok(connect_with_options(settings, timeout).await?.0)
}

/// [`connect`], and the options it used, for making more clients like it.
pub async fn connect_with_options(
    settings: &MongoSettings,
    timeout: Duration,
) -> Result<(Database, ClientOptions), Unavailable> {
    use secrecy::ExposeSecret;
    let mut options = ClientOptions::parse(settings.uri.expose_secret())
        .await
        .map_err(|e| Unavailable(format!("MONGODB_URI: {e}")))?;
    // Named in mongod's logs and currentOp; a URI's own `appName` (one per node, say) wins.
    options.app_name.get_or_insert_with(|| "ticketgate".into());
    options.server_selection_timeout = Some(timeout);
    options.connect_timeout = Some(timeout);
    let client = Client::with_options(options.clone()).map_err(|e| Unavailable(e.to_string()))?;
    Ok((client.database(&settings.database), options))
}

/// Whether the database is ready for tickets (migrations applied). Until it is, every
/// operation answers "unavailable" at once instead of touching half-prepared collections.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Ready from the start: for tests that apply the migrations themselves.
    #[cfg(any(test, feature = "testing"))]
    pub fn ready() -> Self {
        let readiness = Self::default();
        readiness.set_ready();
        readiness
    }

    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mints may hold half of the turns; redeems and the rest may hold them all.
    #[tokio::test]
    async fn new_work_holds_at_most_half_of_the_turns() {
        let admission = Admission::new(4);
        let soon = |work| tokio::time::timeout(Duration::from_millis(20), admission.turn(work));
        let first = soon(Work::New).await.unwrap().unwrap();
        let second = soon(Work::New).await.unwrap().unwrap();
        assert!(soon(Work::New).await.is_err(), "a third mint must wait");
        let under_way = soon(Work::UnderWay).await.unwrap().unwrap();
        let more = soon(Work::UnderWay).await.unwrap().unwrap();
        assert!(
            soon(Work::UnderWay).await.is_err(),
            "all four turns are taken"
        );
        drop(first);
        // The mint's turn is free again, for either kind.
        let again = soon(Work::New).await.unwrap().unwrap();
        drop((second, under_way, more, again));
    }
}
