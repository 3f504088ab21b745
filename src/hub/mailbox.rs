//! A connection's mailbox: user messages, channel publications and the server's requests to
//! the connection, in the order they were sent. Bounded: a connection that lets
//! [`MAILBOX_BUFFER`] items pile up is a slow consumer, and is closed rather than allowed to
//! hold the others up or grow without limit.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::{Delivery, lock};
use crate::channels::ChannelName;

/// Items a connection may have waiting before it is closed as a slow consumer.
pub const MAILBOX_BUFFER: usize = 1024;
/// A queue that grew past this in a burst gives its memory back once drained.
const KEPT_CAPACITY: usize = 32;

/// What reaches one connection through its mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Delivery(Delivery),
    /// What a subscriber recovered of a history channel, in offset order: one item, so a
    /// long recovery does not count as a slow consumer's backlog.
    Recovered(Vec<Delivery>),
    Control(Control),
}

/// Something the server asks of one connection, carried out by its own task, in order with
/// its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// `POST /api/users/{user_id}/subscriptions`.
    Subscribe(ChannelName),
    /// `DELETE /api/users/{user_id}/subscriptions/{channel}`.
    Unsubscribe(ChannelName),
    /// A subscription token's `jti` was revoked: end the subscriptions it holds.
    TokenRevoked(std::sync::Arc<str>),
    /// This node's cluster stream lost its place: deliveries may be missing, so the
    /// connection asks its client to resubscribe with `since` and says what else it missed.
    StreamLost,
}

/// The mailbox overflowed: the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflowed;

/// Most connections never get an item, and an empty queue allocates nothing: about a hundred
/// bytes per connection where a channel would keep its first block of slots for life.
pub struct Mailbox {
    /// Whose connection this is (presence lists it), kept here so a channel's table needs one
    /// pointer per subscriber.
    pub user: std::sync::Arc<str>,
    queue: Mutex<VecDeque<Inbound>>,
    /// `notify_one` keeps a permit when nobody waits, so a push between a look at the empty
    /// queue and the wait is not missed.
    filled: Notify,
    overflowed: AtomicBool,
}

impl Mailbox {
    pub fn new(user: std::sync::Arc<str>) -> Self {
        Mailbox {
            user,
            queue: Mutex::default(),
            filled: Notify::new(),
            overflowed: AtomicBool::new(false),
        }
    }

    /// Queues `item`; false (and the mailbox marked overflowed) when it is full.
    pub fn push(&self, item: Inbound) -> bool {
        let mut queue = lock(&self.queue);
        let fits = queue.len() < MAILBOX_BUFFER;
        if fits {
            queue.push_back(item);
        } else {
            self.overflowed.store(true, Ordering::Relaxed);
        }
        drop(queue);
        self.filled.notify_one();
        fits
    }

    /// Queues a recovery, whatever the mailbox holds: it is bounded by the history kept.
    pub fn push_recovered(&self, deliveries: Vec<Delivery>) {
        lock(&self.queue).push_back(Inbound::Recovered(deliveries));
        self.filled.notify_one();
    }

    pub async fn pop(&self) -> Result<Inbound, Overflowed> {
        loop {
            if let Some(item) = self.try_pop()? {
                return Ok(item);
            }
            self.filled.notified().await;
        }
    }

    pub fn try_pop(&self) -> Result<Option<Inbound>, Overflowed> {
        if self.overflowed.load(Ordering::Relaxed) {
            return Err(Overflowed);
        }
        let mut queue = lock(&self.queue);
        let item = queue.pop_front();
        if queue.is_empty() && queue.capacity() > KEPT_CAPACITY {
            queue.shrink_to(KEPT_CAPACITY);
        }
        Ok(item)
    }

    /// The next item if it is a delivery (a control waits for the session's own turn).
    pub fn try_pop_delivery(&self) -> Result<Option<Delivery>, Overflowed> {
        if self.overflowed.load(Ordering::Relaxed) {
            return Err(Overflowed);
        }
        let mut queue = lock(&self.queue);
        if matches!(queue.front(), Some(Inbound::Delivery(_)))
            && let Some(Inbound::Delivery(delivery)) = queue.pop_front()
        {
            return Ok(Some(delivery));
        }
        Ok(None)
    }
}
