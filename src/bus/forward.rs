//! Client messages posted to one node for a connection held by another (the SSE transport's
//! `POST /sse/messages`, with no sticky sessions): the receiving node writes a `post` event
//! addressed to the holding node and waits; the holder applies it to the connection's inbox
//! and writes a `post_answer` addressed back. Both travel the cluster stream like every other
//! event, so a forwarded request costs two of its hops (docs/BENCHMARKS.md measures them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use super::writer::Outgoing;
use super::{Command, Event, NodeId};
use crate::hub::{Hub, Posted};

/// How long a forwarded request waits for the holding node's answer. A node that does not
/// answer in this time is gone (or cut off): no open session there takes the request, and it
/// is answered as unknown, well within the 5 s the protocol promises after a stream ends.
pub const FORWARD_PATIENCE: Duration = Duration::from_secs(3);

/// A request to apply to a connection's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Post {
    pub session: String,
    pub seq: u64,
    pub messages: Vec<ByteString>,
    /// The request body's size, which the inbox holds against what the connection takes now.
    pub body_bytes: usize,
}

/// This node's side of forwarding: its requests waiting for answers, and the way answers go
/// out.
pub struct Forwarding {
    node: NodeId,
    hub: Arc<Hub>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Posted>>>,
    next_request: AtomicU64,
    /// The bus writer's queue, once the cluster route is up.
    answers: OnceLock<mpsc::Sender<Outgoing>>,
}

impl Forwarding {
    pub fn new(node: NodeId, hub: Arc<Hub>) -> Self {
        Forwarding {
            node,
            hub,
            waiting: Mutex::default(),
            next_request: AtomicU64::new(1),
            answers: OnceLock::new(),
        }
    }

    pub(super) fn answer_through(&self, queue: mpsc::Sender<Outgoing>) {
        let _ = self.answers.set(queue);
    }

    /// A number for a new request and the receiver of its answer, until the guard is dropped.
    pub(super) fn wait_for_answer(&self) -> (u64, oneshot::Receiver<Posted>, Waiting<'_>) {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiting).insert(request, sender);
        (
            request,
            receiver,
            Waiting {
                forwarding: self,
                request,
            },
        )
    }

    /// Takes the events that are forwarding's own out of the stream: a request for this
    /// node's inbox is applied and answered, an answer for this node completes its request.
    /// Every other event is handed back, to be delivered.
    pub fn intercept(&self, event: Event) -> Option<Event> {
        match event {
            Event::Post {
                to,
                from,
                request,
                session,
                seq,
                messages,
                body_bytes,
            } => {
                if to == self.node.as_str() {
                    let messages = messages.into_iter().map(ByteString::from).collect();
                    let posted = self.hub.inboxes().post(
                        &session,
                        seq,
                        messages,
                        usize::try_from(body_bytes).unwrap_or(usize::MAX),
                    );
                    self.send_answer(from, request, posted);
                }
                None
            }
            Event::PostAnswer {
                to,
                request,
                posted,
            } => {
                if to == self.node.as_str()
                    && let Some(waiting) = lock(&self.waiting).remove(&request)
                {
                    let _ = waiting.send(posted);
                }
                None
            }
            other => Some(other),
        }
    }

    fn send_answer(&self, to: String, request: u64, posted: Posted) {
        let Some(queue) = self.answers.get().cloned() else {
            return;
        };
        let command = Command::PostAnswer {
            to,
            request,
            posted,
        };
        // The stream's task must not wait on the writer's queue: the answer goes on its own.
        tokio::spawn(async move {
            let (reply, _) = oneshot::channel();
            let _ = queue
                .send(Outgoing {
                    command,
                    key: None,
                    reply,
                })
                .await;
        });
    }
}

/// A request waiting for its answer; forgotten when dropped (answered, timed out or given up).
pub(super) struct Waiting<'a> {
    forwarding: &'a Forwarding,
    request: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.forwarding.waiting).remove(&self.request);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
