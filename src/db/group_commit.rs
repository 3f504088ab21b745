//! Group commit: many callers' small writes of one kind go to MongoDB as one command.
//!
//! Under load, MongoDB's cost is per command far more than per document: each command is
//! parsed, planned, journaled and (as a retryable write) recorded on its own, and each waits
//! for its own `majority` acknowledgement. So callers queue their requests here; a batch takes
//! everything queued when one of a few slots is free, runs as one operation, and hands each
//! caller its own answer. Alone, a request goes out at once as a batch of one, so nothing
//! waits for company; in a burst, requests gather while the slots are busy, and the batches
//! grow with the load. Each batch holds one turn of the store's admission (`Admission`).

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Unavailable;

/// Requests that may wait for a slot; past this the store is busy and refuses at once, like
/// `Admission` does.
const QUEUE: usize = 8192;

/// How batches of one kind are formed.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most requests per batch.
    pub max_batch: usize,
    /// Batches running at once.
    pub slots: usize,
}

struct Waiting<R, A> {
    request: R,
    answer: oneshot::Sender<Result<A, Unavailable>>,
}

/// The queue of one kind of request; cloning shares it.
pub struct GroupCommit<R, A> {
    queue: mpsc::Sender<Waiting<R, A>>,
}

impl<R, A> Clone for GroupCommit<R, A> {
    fn clone(&self) -> Self {
        GroupCommit {
            queue: self.queue.clone(),
        }
    }
}

impl<R: Send + 'static, A: Send + 'static> GroupCommit<R, A> {
    /// Starts the task that forms batches (on the current tokio runtime). `run` gets a batch's
    /// requests in arrival order and returns one answer per request, in the same order, or
    /// one error for them all. The task ends when every clone of the handle is dropped.
    pub fn start<F, Fut>(batching: Batching, run: F) -> Self
    where
        F: Fn(Vec<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<A>, Unavailable>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(form_batches(batching, waiting, Arc::new(run)));
        GroupCommit { queue }
    }

    /// Queues `request` and waits for its answer.
    pub async fn submit(&self, request: R) -> Result<A, Unavailable> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .try_send(Waiting { request, answer })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    Unavailable("MongoDB is busy: too many requests queued".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    Unavailable("the gateway is shutting down".into())
                }
            })?;
        answered
            .await
            .map_err(|_| Unavailable("the batch was dropped (shutting down)".into()))?
    }
}

async fn form_batches<R, A, F, Fut>(
    batching: Batching,
    mut waiting: mpsc::Receiver<Waiting<R, A>>,
    run: Arc<F>,
) where
    R: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<R>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<A>, Unavailable>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(batching.slots.max(1)));
    let max_batch = batching.max_batch.max(1);
    loop {
        // A slot first, then whatever queued meanwhile: while every slot is busy, requests
        // gather into the next batch.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if waiting.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            let (requests, answers): (Vec<R>, Vec<_>) = batch
                .into_iter()
                .map(|Waiting { request, answer }| (request, answer))
                .unzip();
            let count = requests.len();
            match run(requests).await {
                Ok(results) if results.len() == count => {
                    for (answer, result) in answers.into_iter().zip(results) {
                        let _ = answer.send(Ok(result));
                    }
                }
                Ok(results) => {
                    let e = format!("{} answers for a batch of {count}", results.len());
                    debug_assert!(false, "{e}");
                    for answer in answers {
                        let _ = answer.send(Err(Unavailable(e.clone())));
                    }
                }
                Err(e) => {
                    for answer in answers {
                        let _ = answer.send(Err(Unavailable(e.0.clone())));
                    }
                }
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Alone, a request is a batch of one; while the only slot is busy, the requests that
    /// arrive meanwhile form the next batch together, and each gets its own answer.
    #[tokio::test]
    async fn requests_that_wait_for_a_slot_go_out_together() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = Arc::clone(&batches);
        let doubler = GroupCommit::start(
            Batching {
                max_batch: 100,
                slots: 1,
            },
            move |requests: Vec<u32>| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(requests.clone());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(requests.into_iter().map(|r| r * 2).collect())
                }
            },
        );
        assert_eq!(doubler.submit(1).await.unwrap(), 2);
        let first = tokio::spawn({
            let doubler = doubler.clone();
            async move { doubler.submit(10).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let rest: Vec<_> = (11..15)
            .map(|n| {
                let doubler = doubler.clone();
                tokio::spawn(async move { doubler.submit(n).await })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), 20);
        for (n, handle) in (11..15).zip(rest) {
            assert_eq!(handle.await.unwrap().unwrap(), n * 2);
        }
        assert_eq!(
            *batches.lock().unwrap(),
            vec![vec![1], vec![10], vec![11, 12, 13, 14]]
        );
    }

    /// A batch's error reaches every request in it, and the next batch runs normally.
    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_requests() {
        let flaky = GroupCommit::start(
            Batching {
                max_batch: 10,
                slots: 2,
            },
            |requests: Vec<u32>| async move {
                if requests.contains(&0) {
                    Err(Unavailable("down".into()))
                } else {
                    Ok(requests)
                }
            },
        );
        assert_eq!(flaky.submit(0).await.unwrap_err().0, "down");
        assert_eq!(flaky.submit(7).await.unwrap(), 7);
    }
}
