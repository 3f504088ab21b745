//! Inboxes: where the messages of a client that sends over HTTP (the SSE transport's `POST
//! /sse/messages`) wait for its connection's task, in order. A POST reaches an inbox by the
//! session id from any node (the bus forwards it to the node that holds the connection).
//! Requests are numbered by the client (`seq`): each is applied once, in order, whole or not
//! at all, so a client may repeat a request whose answer it lost.
//!
//! Like the rest of the hub, an inbox never waits: a request that does not fit is refused
//! ([`Posted::Busy`]) and the client tries it again.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::lock;

/// Messages an inbox holds at most, unless it is empty: a request of up to the most messages
/// one may carry (100) always fits an empty inbox.
pub const INBOX_MESSAGES: usize = 256;

/// What became of a request (the bus carries it between nodes in this form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Posted {
    /// Its messages are queued for the connection, after all earlier ones.
    Accepted,
    /// That `seq` was applied already: nothing was applied again.
    Repeated,
    /// The request skips ahead of the next `seq`, which is `expected`: nothing was applied.
    OutOfOrder { expected: u64 },
    /// The body is larger than the connection takes now (16 KiB before authentication).
    TooLarge,
    /// The inbox is full: nothing was applied; the same request may be sent again.
    Busy,
    /// No open connection has that session id here.
    Unknown,
}

/// One connection's inbox.
pub struct Inbox {
    state: Mutex<InboxState>,
    /// `notify_one` keeps a permit when nobody waits, so a message queued between a look at
    /// the empty queue and the wait is not missed.
    filled: Notify,
    /// The largest body the connection takes now: what its session asks of the transport
    /// (16 KiB before authentication, MAX_MESSAGE_BYTES after).
    max_body: AtomicUsize,
}

#[derive(Default)]
struct InboxState {
    /// The last `seq` applied (0: none yet).
    applied: u64,
    queue: VecDeque<ByteString>,
    queued_bytes: usize,
}

impl Inbox {
    fn new(max_body: usize) -> Self {
        Inbox {
            state: Mutex::default(),
            filled: Notify::new(),
            max_body: AtomicUsize::new(max_body),
        }
    }

    /// Applies request `seq` carrying `messages` (a body of `body_bytes`), or says why not.
    pub fn post(&self, seq: u64, messages: Vec<ByteString>, body_bytes: usize) -> Posted {
        if body_bytes > self.max_body.load(Ordering::Relaxed) {
            return Posted::TooLarge;
        }
        let mut state = lock(&self.state);
        let expected = state.applied.saturating_add(1);
        if seq < expected {
            return Posted::Repeated;
        }
        if seq > expected {
            return Posted::OutOfOrder { expected };
        }
        let bytes: usize = messages.iter().map(|m| m.len()).sum();
        let room_for = |state: &InboxState| {
            state.queue.is_empty()
                || (state.queue.len() + messages.len() <= INBOX_MESSAGES
                    && state.queued_bytes + bytes <= 4 * self.max_body.load(Ordering::Relaxed))
        };
        if !room_for(&state) {
            return Posted::Busy;
        }
        state.applied = seq;
        state.queued_bytes += bytes;
        state.queue.extend(messages);
        drop(state);
        self.filled.notify_one();
        Posted::Accepted
    }

    /// The next message, if one is waiting.
    pub fn try_take(&self) -> Option<ByteString> {
        let mut state = lock(&self.state);
        let message = state.queue.pop_front()?;
        state.queued_bytes -= message.len();
        if state.queue.is_empty() && state.queue.capacity() > 32 {
            state.queue = VecDeque::new();
        }
        Some(message)
    }

    /// The next message, waiting for one. Cancel-safe: a message is taken only when returned.
    pub async fn take(&self) -> ByteString {
        loop {
            if let Some(message) = self.try_take() {
                return message;
            }
            self.filled.notified().await;
        }
    }

    /// The largest body the connection takes from now on.
    pub fn set_max_body(&self, bytes: usize) {
        self.max_body.store(bytes, Ordering::Relaxed);
    }
}

/// This node's inboxes by session id.
#[derive(Default)]
pub struct Inboxes {
    by_session: Mutex<HashMap<Arc<str>, Arc<Inbox>>>,
}

impl Inboxes {
    /// Opens the inbox of a new connection under `session` (unguessable, chosen by the
    /// caller), until the guard is dropped. Bodies of up to `max_body` bytes until the
    /// connection says otherwise.
    pub fn open(self: &Arc<Self>, session: Arc<str>, max_body: usize) -> InboxGuard {
        let inbox = Arc::new(Inbox::new(max_body));
        lock(&self.by_session).insert(Arc::clone(&session), Arc::clone(&inbox));
        InboxGuard {
            inboxes: Arc::clone(self),
            session,
            inbox,
        }
    }

    /// Applies a request to the inbox of `session`, if one is open here.
    pub fn post(
        &self,
        session: &str,
        seq: u64,
        messages: Vec<ByteString>,
        body_bytes: usize,
    ) -> Posted {
        let inbox = lock(&self.by_session).get(session).cloned();
        match inbox {
            Some(inbox) => inbox.post(seq, messages, body_bytes),
            None => Posted::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        lock(&self.by_session).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An open inbox; closed (and its session id unknown) when dropped.
pub struct InboxGuard {
    inboxes: Arc<Inboxes>,
    session: Arc<str>,
    inbox: Arc<Inbox>,
}

impl std::ops::Deref for InboxGuard {
    type Target = Inbox;

    fn deref(&self) -> &Inbox {
        &self.inbox
    }
}

impl Drop for InboxGuard {
    fn drop(&mut self) {
        lock(&self.inboxes.by_session).remove(&self.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(texts: &[&'static str]) -> Vec<ByteString> {
        texts.iter().map(|t| ByteString::from_static(t)).collect()
    }

    #[test]
    fn requests_apply_once_and_in_order() {
        let inboxes = Arc::new(Inboxes::default());
        let inbox = inboxes.open(Arc::from("s1"), 1024);
        assert_eq!(
            inboxes.post("s1", 2, messages(&["b"]), 10),
            Posted::OutOfOrder { expected: 1 }
        );
        assert_eq!(
            inboxes.post("s1", 1, messages(&["a1", "a2"]), 10),
            Posted::Accepted
        );
        assert_eq!(
            inboxes.post("s1", 1, messages(&["a1", "a2"]), 10),
            Posted::Repeated
        );
        assert_eq!(
            inboxes.post("s1", 3, messages(&["c"]), 10),
            Posted::OutOfOrder { expected: 2 }
        );
        assert_eq!(
            inboxes.post("s1", 2, messages(&["b"]), 10),
            Posted::Accepted
        );
        let taken: Vec<_> = std::iter::from_fn(|| inbox.try_take()).collect();
        assert_eq!(taken, messages(&["a1", "a2", "b"]));
        assert_eq!(
            inboxes.post("other", 1, messages(&["x"]), 10),
            Posted::Unknown
        );
        drop(inbox);
        assert_eq!(inboxes.post("s1", 3, messages(&["c"]), 10), Posted::Unknown);
        assert!(inboxes.is_empty());
    }

    #[test]
    fn a_body_over_the_limit_or_a_full_inbox_applies_nothing_and_uses_no_seq() {
        let inboxes = Arc::new(Inboxes::default());
        let inbox = inboxes.open(Arc::from("s"), 100);
        assert_eq!(
            inboxes.post("s", 1, messages(&["a"]), 101),
            Posted::TooLarge
        );
        inbox.set_max_body(1000);
        assert_eq!(
            inboxes.post("s", 1, messages(&["a"]), 101),
            Posted::Accepted
        );
        let many = vec![ByteString::from_static("m"); INBOX_MESSAGES];
        assert_eq!(inboxes.post("s", 2, many.clone(), 500), Posted::Busy);
        assert!(inbox.try_take().is_some());
        // Empty again: any request fits.
        assert_eq!(inboxes.post("s", 2, many, 500), Posted::Accepted);
    }
}
