//! History in process, for a single node: the same numbering and trimming as MongoDB's, lost
//! at restart (the next read or publication then starts a new epoch).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{HistoryPage, HistoryQuery, StreamTop, new_epoch, page_of};
use crate::channels::HistoryOptions;

/// How often expired histories are swept out (each is also checked when it is used).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Stream {
    epoch: String,
    top: u64,
    kept: VecDeque<String>,
    expires_at: Instant,
}

#[derive(Default)]
struct Streams {
    by_channel: HashMap<String, Stream>,
    swept_at: Option<Instant>,
}

#[derive(Default)]
pub struct MemoryHistory {
    streams: Mutex<Streams>,
}

fn ttl(options: HistoryOptions) -> Duration {
    Duration::from_secs(u64::from(options.ttl_secs))
}

impl Streams {
    /// The channel's live history, begun anew (new epoch) when there was none or it expired.
    fn live(&mut self, channel: &str, options: HistoryOptions, now: Instant) -> &mut Stream {
        if self
            .swept_at
            .is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY)
        {
            self.by_channel.retain(|_, stream| stream.expires_at > now);
            self.swept_at = Some(now);
        }
        let stream = self
            .by_channel
            .entry(channel.to_owned())
            .or_insert_with(|| Stream {
                epoch: new_epoch(),
                top: 0,
                kept: VecDeque::new(),
                expires_at: now + ttl(options),
            });
        if stream.expires_at <= now {
            *stream = Stream {
                epoch: new_epoch(),
                top: 0,
                kept: VecDeque::new(),
                expires_at: now + ttl(options),
            };
        }
        stream
    }
}

impl MemoryHistory {
    /// Appends one publication; its offset and epoch.
    pub fn append(&self, channel: &str, options: HistoryOptions, data: &str) -> StreamTop {
        self.append_at(channel, options, data, Instant::now())
    }

    fn append_at(
        &self,
        channel: &str,
        options: HistoryOptions,
        data: &str,
        now: Instant,
    ) -> StreamTop {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let stream = streams.live(channel, options, now);
        stream.top += 1;
        stream.kept.push_back(data.to_owned());
        while stream.kept.len() > options.size as usize {
            stream.kept.pop_front();
        }
        stream.expires_at = now + ttl(options);
        StreamTop {
            epoch: stream.epoch.clone(),
            offset: stream.top,
        }
    }

    pub fn read(&self, channel: &str, options: HistoryOptions, query: HistoryQuery) -> HistoryPage {
        self.read_at(channel, options, query, Instant::now())
    }

    fn read_at(
        &self,
        channel: &str,
        options: HistoryOptions,
        query: HistoryQuery,
        now: Instant,
    ) -> HistoryPage {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let stream = streams.live(channel, options, now);
        page_of(&stream.epoch, stream.top, stream.kept.iter(), query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: HistoryOptions = HistoryOptions {
        size: 3,
        ttl_secs: 60,
    };

    #[test]
    fn offsets_rise_by_one_and_the_oldest_are_trimmed() {
        let history = MemoryHistory::default();
        let empty = history.read("c", OPTIONS, HistoryQuery::Latest { limit: 10 });
        assert_eq!(empty.top.offset, 0);
        for n in 1..=5 {
            let top = history.append("c", OPTIONS, &n.to_string());
            assert_eq!((top.offset, &top.epoch), (n, &empty.top.epoch));
        }
        let page = history.read(
            "c",
            OPTIONS,
            HistoryQuery::Since {
                offset: 0,
                limit: 10,
            },
        );
        let kept: Vec<_> = page
            .publications
            .iter()
            .map(|p| (p.offset, p.data.as_str()))
            .collect();
        assert_eq!(kept, [(3, "3"), (4, "4"), (5, "5")]);
        assert!(!page.holds_all_after(1) && page.holds_all_after(2));
        assert_eq!(history.append("other", OPTIONS, "x").offset, 1);
    }

    #[test]
    fn an_expired_history_starts_a_new_epoch() {
        let history = MemoryHistory::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let latest = HistoryQuery::Latest { limit: 10 };
        let first = history.append_at("c", OPTIONS, "1", at(0));
        assert_eq!(
            history.append_at("c", OPTIONS, "2", at(59)).epoch,
            first.epoch
        );
        let page = history.read_at("c", OPTIONS, latest, at(119));
        assert_ne!(page.top.epoch, first.epoch);
        assert_eq!((page.top.offset, page.publications.len()), (0, 0));
        // An empty history keeps its epoch for its first publication.
        assert_eq!(
            history.append_at("c", OPTIONS, "3", at(120)),
            StreamTop {
                epoch: page.top.epoch,
                offset: 1
            }
        );
    }
}
