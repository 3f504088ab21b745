//! Channel history: each channel of a history namespace numbers its publications (offsets
//! from 1, one more per publication) within an epoch, the name of one unbroken history, and
//! keeps the latest ones (docs/PROTOCOL.md, "History and recovery"). One enum over two
//! backends like the other stores: in process for a single node ([`memory`]), MongoDB for
//! one or many ([`mongo`]), where each append is one atomic update that matches only the
//! position it starts from, so offsets are contiguous across nodes, and every node delivers
//! the appends from its change stream, in order.

mod memory;
mod mongo;

pub use memory::MemoryHistory;
pub use mongo::{Append, Appended, MongoHistory};

use serde::{Deserialize, Serialize};

use crate::channels::{ChannelName, HistoryOptions};
use crate::db::Unavailable;

/// Where a channel's history stands: its epoch and latest offset (0 before any publication).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTop {
    pub epoch: String,
    pub offset: u64,
}

/// A publication's place in one history channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPublication {
    pub channel: String,
    pub offset: u64,
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredPublication {
    pub offset: u64,
    /// The publication's data as JSON text.
    pub data: String,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub top: StreamTop,
    /// The oldest offset still kept (`top.offset + 1` when none is).
    pub oldest: u64,
    /// In offset order.
    pub publications: Vec<StoredPublication>,
}

impl HistoryPage {
    /// Whether every publication after `offset` is still kept.
    pub fn holds_all_after(&self, offset: u64) -> bool {
        offset <= self.top.offset && offset.saturating_add(1) >= self.oldest
    }
}

/// Which publications to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The first `limit` with an offset above `offset`.
    Since { offset: u64, limit: usize },
    /// The newest `limit`.
    Latest { limit: usize },
}

/// The page a query asks of a history whose latest offset is `top` and which keeps `kept`
/// (oldest first).
fn page_of<'a>(
    epoch: &str,
    top: u64,
    kept: impl ExactSizeIterator<Item = &'a String>,
    query: HistoryQuery,
) -> HistoryPage {
    let len = kept.len();
    let oldest = top + 1 - len as u64;
    let (skip, limit) = match query {
        HistoryQuery::Since { offset, limit } => (
            usize::try_from(offset.saturating_add(1).saturating_sub(oldest)).unwrap_or(usize::MAX),
            limit,
        ),
        HistoryQuery::Latest { limit } => (len.saturating_sub(limit), limit),
    };
    let publications = kept
        .enumerate()
        .skip(skip)
        .take(limit)
        .map(|(i, data)| StoredPublication {
            offset: oldest + i as u64,
            data: data.clone(),
        })
        .collect();
    HistoryPage {
        top: StreamTop {
            epoch: epoch.to_owned(),
            offset: top,
        },
        oldest,
        publications,
    }
}

/// A new epoch: random, so a history that was lost and begun again is never taken for the
/// old one.
pub fn new_epoch() -> String {
    let bytes: [u8; 6] = crate::config::random_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads history wherever it is kept (appending is the bus's part).
pub enum HistoryStore {
    Memory(std::sync::Arc<MemoryHistory>),
    Mongo(std::sync::Arc<MongoHistory>),
}

impl HistoryStore {
    pub async fn read(
        &self,
        channel: &ChannelName,
        options: HistoryOptions,
        query: HistoryQuery,
    ) -> Result<HistoryPage, Unavailable> {
        match self {
            HistoryStore::Memory(history) => Ok(history.read(channel.as_str(), options, query)),
            HistoryStore::Mongo(history) => history.read(channel.as_str(), options, query).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(range: std::ops::RangeInclusive<u64>) -> Vec<String> {
        range.map(|n| n.to_string()).collect()
    }

    fn offsets(page: &HistoryPage) -> Vec<u64> {
        page.publications.iter().map(|p| p.offset).collect()
    }

    #[test]
    fn pages_count_offsets_from_the_top() {
        // Offsets 6..=10 kept of 10.
        let data = kept(6..=10);
        let since =
            |offset, limit| page_of("e", 10, data.iter(), HistoryQuery::Since { offset, limit });
        assert_eq!(offsets(&since(7, 100)), [8, 9, 10]);
        assert_eq!(since(7, 100).publications[0].data, "8");
        assert_eq!(offsets(&since(0, 2)), [6, 7]);
        assert_eq!(offsets(&since(10, 5)), [] as [u64; 0]);
        assert_eq!(offsets(&since(u64::MAX, 5)), [] as [u64; 0]);
        assert!(!since(u64::MAX, 5).holds_all_after(u64::MAX));
        let latest = page_of("e", 10, data.iter(), HistoryQuery::Latest { limit: 2 });
        assert_eq!(offsets(&latest), [9, 10]);
        assert_eq!((latest.oldest, latest.top.offset), (6, 10));
        assert!(latest.holds_all_after(5) && latest.holds_all_after(10));
        assert!(!latest.holds_all_after(4) && !latest.holds_all_after(11));
        let empty = page_of("e", 0, [].iter(), HistoryQuery::Latest { limit: 5 });
        assert_eq!((empty.oldest, empty.publications.len()), (1, 0));
        assert!(empty.holds_all_after(0));
    }
}
