//! This node's window on each history channel it has subscribers in: the channel's latest
//! publications as delivered here, encoded, with their offsets and epoch. Kept under
//! the same lock as the channel's subscribers, so a recovering subscriber gets what the
//! window holds after its `since` and then every live publication, with no gap and nothing
//! twice. Windows are filled from the store once per channel, however many subscribers
//! recover at once (a restarted node's reconnecting clients read MongoDB once per channel,
//! not once each).

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::watch;

use super::Delivery;

/// The most publications a window holds (fewer when `history_size` is smaller); a client
/// further behind reads the rest from the store.
pub const MAX_WINDOW: usize = 1024;

pub(super) enum StreamState {
    /// A subscriber is reading the window from the store; what is published meanwhile is
    /// kept, to be laid over what it reads. Dropping `done` wakes those waiting for it.
    Loading {
        arrived: Vec<(u64, Arc<str>, Delivery)>,
        #[allow(dead_code)] // held for its drop
        done: watch::Sender<()>,
    },
    Ready(Window),
}

impl StreamState {
    pub fn is_loading(&self) -> bool {
        matches!(self, StreamState::Loading { .. })
    }
}

/// A contiguous run of a channel's publications ending at its latest offset.
pub(super) struct Window {
    pub epoch: Arc<str>,
    pub top: u64,
    recent: VecDeque<(u64, Delivery)>,
    capacity: usize,
}

/// What a live publication did to a window.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Recorded {
    /// The next one (or the first of a new epoch): kept and delivered.
    Next,
    /// Already delivered here: dropped.
    Repeat,
    /// Not the next one: something was missed, the window no longer knows the channel.
    Broken,
}

impl Window {
    /// A window on `publications` (contiguous, oldest first, the last at `top`).
    pub fn new(
        epoch: Arc<str>,
        top: u64,
        publications: Vec<(u64, Delivery)>,
        capacity: usize,
    ) -> Self {
        let mut window = Window {
            epoch,
            top,
            recent: publications.into(),
            capacity: capacity.clamp(1, MAX_WINDOW),
        };
        window.trim();
        window
    }

    fn trim(&mut self) {
        while self.recent.len() > self.capacity {
            self.recent.pop_front();
        }
    }

    /// The oldest offset it holds (`top + 1` when it holds none).
    pub fn first(&self) -> u64 {
        self.recent
            .front()
            .map_or(self.top + 1, |(offset, _)| *offset)
    }

    pub fn record(&mut self, offset: u64, epoch: &str, delivery: &Delivery) -> Recorded {
        if *self.epoch != *epoch {
            if offset != 1 {
                return Recorded::Broken;
            }
            // The history was lost and begun again.
            self.epoch = Arc::from(epoch);
            self.recent.clear();
        } else if offset <= self.top {
            return Recorded::Repeat;
        } else if offset != self.top + 1 {
            return Recorded::Broken;
        }
        self.top = offset;
        self.recent.push_back((offset, delivery.clone()));
        self.trim();
        Recorded::Next
    }

    /// What it holds after `offset`, as deliveries for one recovering subscriber.
    pub fn after(&self, offset: u64) -> impl Iterator<Item = Delivery> + '_ {
        self.recent
            .iter()
            .filter(move |(o, _)| *o > offset)
            .map(|(_, delivery)| delivery.recovered())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(n: u64) -> Delivery {
        Delivery::new(n.to_string().into(), None)
    }

    fn frames(window: &Window, after: u64) -> Vec<String> {
        window.after(after).map(|d| d.message.to_string()).collect()
    }

    #[test]
    fn a_window_keeps_the_latest_in_order_and_notices_gaps() {
        let mut window = Window::new(
            Arc::from("e"),
            2,
            vec![(1, delivery(1)), (2, delivery(2))],
            3,
        );
        assert_eq!(window.record(3, "e", &delivery(3)), Recorded::Next);
        assert_eq!(window.record(4, "e", &delivery(4)), Recorded::Next);
        assert_eq!(window.record(4, "e", &delivery(4)), Recorded::Repeat);
        assert_eq!((window.first(), window.top), (2, 4));
        assert_eq!(frames(&window, 2), ["3", "4"]);
        assert_eq!(window.record(6, "e", &delivery(6)), Recorded::Broken);
        assert_eq!(window.record(5, "other", &delivery(5)), Recorded::Broken);
        assert_eq!(window.record(1, "new", &delivery(1)), Recorded::Next);
        assert_eq!((&*window.epoch, window.first(), window.top), ("new", 1, 1));
        let empty = Window::new(Arc::from("e"), 7, Vec::new(), 10);
        assert_eq!(empty.first(), 8);
    }
}
