//! One MongoDB client per thread, for the operations on every authentication's path.
//!
//! The driver runs a client's connection pool, and the readiness of its sockets, on the tokio
//! runtime that created the client. The gateway's HTTP workers are single-threaded runtimes of
//! their own, so with one client shared by all, every operation from a worker hops to the main
//! thread and back several times (checking a connection out, each socket wake-up, checking it
//! in). On this project's 2-core VM that hopping cost more CPU than the operations themselves
//! (docs/BENCHMARKS.md). A client per thread keeps each operation on the thread that asked.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

thread_local! {
    /// This thread's clients, by [`PerThreadDatabase::id`].
    static DATABASES: RefCell<HashMap<u64, Database>> = RefCell::new(HashMap::new());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A database whose client is made, on first use, by each thread that uses it.
#[derive(Debug)]
pub struct PerThreadDatabase {
    id: u64,
    /// Boxed: large, and read only when a thread makes its client.
    options: Box<ClientOptions>,
    /// Used where a thread's own client cannot be made (it never fails in practice: options
    /// were validated when `shared` was made from them).
    shared: Database,
}

impl PerThreadDatabase {
    pub fn new(options: ClientOptions, shared: Database) -> Self {
        PerThreadDatabase {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            options: Box::new(options),
            shared,
        }
    }

    /// This thread's handle on the database (a reference-count bump once made). Must be called
    /// from within a tokio runtime, which runs the new client's background tasks.
    pub fn get(&self) -> Database {
        DATABASES.with(|databases| {
            if let Some(database) = databases.borrow().get(&self.id) {
                return database.clone();
            }
            let database = match Client::with_options((*self.options).clone()) {
                Ok(client) => client.database(self.shared.name()),
                Err(e) => {
                    log::warn!("a MongoDB client for this thread: {e}; sharing the main one");
                    self.shared.clone()
                }
            };
            databases.borrow_mut().insert(self.id, database.clone());
            database
        })
    }
}

impl Drop for PerThreadDatabase {
    fn drop(&mut self) {
        // Only this thread's copy can be reached; the others go when their threads end.
        let _ = DATABASES.try_with(|databases| databases.borrow_mut().remove(&self.id));
    }
}
