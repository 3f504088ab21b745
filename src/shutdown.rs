//! Graceful shutdown: on SIGTERM or SIGINT, refuse new work (503 `draining`), close every
//! connection with 1001 "going away", and wait up to SHUTDOWN_GRACE_SECS for them to finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::hub::{Hub, Kick};

/// The drain, shared by the signal handler, the routes (which refuse new work) and tests.
#[derive(Clone)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
    hub: Arc<Hub>,
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    pub closed: usize,
    /// Connections still open when the grace period ran out.
    pub left_open: usize,
}

impl Shutdown {
    pub fn new(hub: Arc<Hub>) -> Self {
        Shutdown {
            draining: Arc::new(AtomicBool::new(false)),
            hub,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// From now on mints and upgrades answer 503, and every connection is told 1001.
    pub fn begin(&self) -> usize {
        self.draining.store(true, Ordering::Release);
        self.hub.kick_all(Kick::Draining)
    }

    /// [`begin`](Self::begin), then waits until no connection is open or `grace` has passed.
    pub async fn drain(&self, grace: Duration) -> Drained {
        let closed = self.begin();
        let deadline = Instant::now() + grace;
        while self.hub.open_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Drained {
            closed,
            left_open: self.hub.open_count(),
        }
    }
}

/// Resolves on SIGTERM or SIGINT, with the signal's name.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        // Without signal handlers there is nothing to wait for; the process is stopped by force.
        _ => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
