//! History in MongoDB: collection `channel_history`, one document per channel,
//! `{_id: channel, epoch, top, pubs: [data…], expires_at}`. The publication with offset
//! `top` is the last of `pubs`, so offsets need no storing. One `$push` with `$slice` appends
//! and trims in the same atomic update, and the TTL index on `expires_at` (the last
//! publication plus `history_ttl_secs`) removes a whole history at once: the channel's next
//! publication or read then makes a new document, with a new epoch.

use std::collections::HashMap;

use bson::{DateTime, Document, doc};
use mongodb::options::{CollectionOptions, ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection, Database};

use super::{HistoryPage, HistoryQuery, StoredPublication, StreamTop, new_epoch};
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};

pub const HISTORY_COLLECTION: &str = "channel_history";
/// Offsets beyond any real history (2^53, where MongoDB's numbers stay exact).
const MAX_OFFSET: u64 = 1 << 53;

/// Channels whose position a node remembers (past it, it forgets them all and reads again).
const MAX_KNOWN: usize = 100_000;

/// A channel's position after an append: its epoch and latest offset, and how many
/// publications the stored history holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub top: StreamTop,
    pub kept: u32,
}

/// An append found a channel's position moved by another node: run it again from a read.
#[derive(Debug, Clone, Copy)]
pub struct StaleHistory;

/// One channel's share of an append: its publications' data, in order.
pub struct Append<'a> {
    pub channel: &'a str,
    pub options: HistoryOptions,
    pub data: Vec<&'a str>,
}

pub struct MongoHistory {
    /// Reads and writes majority-committed data only: a publication a read returned can never
    /// be rolled back by a failover, and its offset never given to another.
    history: Collection<Document>,
    /// For the `update` command that appends to many channels at once.
    db: Database,
    known: std::sync::Mutex<HashMap<String, Appended>>,
    bounds: Bounds,
}

/// Now plus `history_ttl_secs`, rounded up to a whole second: the appends to a busy channel
/// within one second then store the same instant, and MongoDB rewrites the TTL index entry
/// only when the second changes (each rewrite is an index delete and insert; in a profile at
/// ten publications per channel and second, about a tenth of mongod's CPU).
fn expires_at(options: HistoryOptions) -> DateTime {
    let at = DateTime::now()
        .timestamp_millis()
        .saturating_add(i64::from(options.ttl_secs) * 1000);
    DateTime::from_millis(at.saturating_add(999).div_euclid(1000).saturating_mul(1000))
}

impl MongoHistory {
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        let options = CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .write_concern(WriteConcern::majority())
            .build();
        MongoHistory {
            history: db.collection_with_options(HISTORY_COLLECTION, options),
            db: db.clone(),
            known: std::sync::Mutex::default(),
            bounds,
        }
    }

    /// Appends each channel's publications (in order) to its history, in the caller's
    /// transaction; each channel's new position, in the order given.
    ///
    /// The channels' current positions come from what this node last wrote
    /// ([`remember`](Self::remember)) or, for those it does not know (or with `trust_known`
    /// false), from the transaction's snapshot; the offsets are worked out here, and every
    /// channel is updated by one `update` command whose statements each match only the
    /// position they start from. A position another node moved since makes its statement
    /// match nothing: the append fails with [`StaleHistory`], and the caller runs the
    /// transaction again without trusting what it knew. Another node's transaction that
    /// touches one of these channels while this one runs makes it fail with a write conflict,
    /// and the driver runs it again. Either way two nodes' appends to a channel commit one
    /// after the other, and offsets are taken in commit order.
    pub async fn append(
        &self,
        session: &mut ClientSession,
        appends: &[Append<'_>],
        trust_known: bool,
    ) -> mongodb::error::Result<Vec<Appended>> {
        let mut current: HashMap<String, Appended> = if trust_known {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            appends
                .iter()
                .filter_map(|a| Some((a.channel.to_owned(), known.get(a.channel)?.clone())))
                .collect()
        } else {
            HashMap::new()
        };
        let from_memory = current.len();
        let unknown: Vec<&str> = appends
            .iter()
            .map(|a| a.channel)
            .filter(|channel| !current.contains_key(*channel))
            .collect();
        if !unknown.is_empty() {
            let mut found = self
                .history
                .find(doc! { "_id": { "$in": &unknown } })
                .projection(doc! { "epoch": 1, "top": 1, "kept": { "$size": "$pubs" } })
                .session(&mut *session)
                .await?;
            while let Some(document) = found.next(&mut *session).await {
                let document = document?;
                let id = document.get_str("_id").unwrap_or_default().to_owned();
                let kept = u32::try_from(document.get_i32("kept").unwrap_or(0)).unwrap_or(0);
                let top = top_of(&document).map_err(mongodb::error::Error::custom)?;
                current.insert(id, Appended { top, kept });
            }
        }
        let mut updates = Vec::with_capacity(appends.len());
        let mut appended = Vec::with_capacity(appends.len());
        for append in appends {
            let added = append.data.len() as u32;
            let now = current.get(append.channel);
            let kept = now.map_or(0, |now| now.kept).saturating_add(added);
            // Trimming rewrites the whole stored array, appending does not: the history is
            // trimmed back to history_size only once it holds half as many again.
            let (push, kept) = if kept > append.options.kept_at_most() {
                let size = append.options.size;
                let push = doc! { "pubs": { "$each": &append.data, "$slice": -i64::from(size) } };
                (push, size)
            } else {
                (doc! { "pubs": { "$each": &append.data } }, kept)
            };
            let set =
                |top: u64| doc! { "top": top as i64, "expires_at": expires_at(append.options) };
            let statement = match now {
                Some(now) => {
                    let top = now.top.offset + u64::from(added);
                    appended.push(Appended {
                        top: StreamTop {
                            epoch: now.top.epoch.clone(),
                            offset: top,
                        },
                        kept,
                    });
                    doc! {
                        "q": { "_id": append.channel, "epoch": &now.top.epoch, "top": now.top.offset as i64 },
                        "u": { "$set": set(top), "$push": push },
                    }
                }
                None => {
                    let epoch = new_epoch();
                    let statement = doc! {
                        "q": { "_id": append.channel },
                        "u": { "$setOnInsert": { "epoch": &epoch }, "$set": set(u64::from(added)), "$push": push },
                        "upsert": true,
                    };
                    appended.push(Appended {
                        top: StreamTop {
                            epoch,
                            offset: u64::from(added),
                        },
                        kept,
                    });
                    statement
                }
            };
            updates.push(statement);
        }
        let answer = self
            .db
            .run_command(doc! { "update": HISTORY_COLLECTION, "updates": updates, "ordered": true })
            .session(&mut *session)
            .await?;
        let matched = answer.get_i32("n").unwrap_or(0) as usize;
        if matched != appends.len() && from_memory > 0 {
            // Another node appended to (or TTL removed) a channel this node thought it knew.
            self.forget(appends.iter().map(|a| a.channel));
            return Err(mongodb::error::Error::custom(StaleHistory));
        }
        if matched != appends.len() || answer.contains_key("writeErrors") {
            return Err(mongodb::error::Error::custom(format!(
                "history append: {matched} of {} channels updated ({answer})",
                appends.len()
            )));
        }
        Ok(appended)
    }

    /// Records where this node's committed appends left each channel, so the next append
    /// there needs no read.
    pub fn remember<'a>(&self, appended: impl Iterator<Item = (&'a str, Appended)>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() > MAX_KNOWN {
            known.clear();
        }
        for (channel, position) in appended {
            known.insert(channel.to_owned(), position);
        }
    }

    fn forget<'a>(&self, channels: impl Iterator<Item = &'a str>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for channel in channels {
            known.remove(channel);
        }
    }

    pub async fn read(
        &self,
        channel: &str,
        options: HistoryOptions,
        query: HistoryQuery,
    ) -> Result<HistoryPage, Unavailable> {
        // Only the publications asked for leave MongoDB: the slice is worked out there.
        let size = doc! { "$size": "$pubs" };
        let (skip, limit) = match query {
            HistoryQuery::Since { offset, limit } => (
                // Those above `offset` start at index size - (top - offset), kept within
                // 0..=size (and `offset` within what no arithmetic there overflows).
                doc! { "$min": [size.clone(), { "$max": [0, { "$subtract": [size.clone(),
                { "$subtract": ["$top", offset.min(MAX_OFFSET) as i64] }] }] }] },
                limit,
            ),
            HistoryQuery::Latest { limit } => (
                doc! { "$max": [0, { "$subtract": [size.clone(), limit as i64] }] },
                limit,
            ),
        };
        let projection = doc! {
            "epoch": 1,
            "top": 1,
            "size": size,
            "pubs": { "$slice": ["$pubs", skip, limit.clamp(1, i32::MAX as usize) as i64] },
        };
        for _ in 0..2 {
            let found = self
                .bounds
                .run(
                    "history_read",
                    self.history
                        .find_one(doc! { "_id": channel })
                        .projection(projection.clone()),
                )
                .await?;
            if let Some(found) = found {
                return page_from(&found, query).map_err(Unavailable);
            }
            // A channel without history yet gets its epoch now, which its first publication
            // keeps (two nodes doing this at once make the same single document).
            let create = self
                .history
                .update_one(
                    doc! { "_id": channel },
                    doc! { "$setOnInsert": {
                        "epoch": new_epoch(),
                        "top": 0_i64,
                        "pubs": [],
                        "expires_at": expires_at(options),
                    } },
                )
                .upsert(true);
            self.bounds.run("history_create", create).await?;
        }
        Err(Unavailable(
            "a channel's history vanished as it was made".into(),
        ))
    }
}

fn top_of(document: &Document) -> Result<StreamTop, String> {
    let epoch = document
        .get_str("epoch")
        .map_err(|e| format!("a history document's epoch: {e}"))?;
    let top = document
        .get_i64("top")
        .map_err(|e| format!("a history document's top: {e}"))?;
    Ok(StreamTop {
        epoch: epoch.to_owned(),
        offset: u64::try_from(top).map_err(|_| "a negative top offset".to_owned())?,
    })
}

/// The page of a document read with the projection above: `pubs` is the slice asked for,
/// `size` how many the document keeps.
fn page_from(document: &Document, query: HistoryQuery) -> Result<HistoryPage, String> {
    let top = top_of(document)?;
    let size = document
        .get_i32("size")
        .map_err(|e| format!("a history document's size: {e}"))?;
    let size = u64::try_from(size).unwrap_or(0).min(top.offset);
    let oldest = top.offset + 1 - size;
    let sliced = document
        .get_array("pubs")
        .map_err(|e| format!("a history document's publications: {e}"))?;
    // Where the slice sits among the kept publications.
    let first = match query {
        HistoryQuery::Since { offset, .. } => offset.saturating_add(1).max(oldest),
        HistoryQuery::Latest { .. } => top.offset + 1 - sliced.len() as u64,
    };
    let publications = sliced
        .iter()
        .zip(first..)
        .map(|(data, offset)| match data.as_str() {
            Some(data) => Ok(StoredPublication {
                offset,
                data: data.to_owned(),
            }),
            None => Err("a stored publication that is not text".to_owned()),
        })
        .collect::<Result<_, _>>()?;
    Ok(HistoryPage {
        top,
        oldest,
        publications,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_a_whole_second_no_earlier_than_the_ttl_from_now() {
        let options = HistoryOptions {
            size: 10,
            ttl_secs: 600,
        };
        let before = DateTime::now().timestamp_millis();
        let at = expires_at(options).timestamp_millis();
        assert_eq!(at % 1000, 0, "{at} is not a whole second");
        assert!(
            at >= before + 600_000,
            "{at} is before the TTL from {before}"
        );
        assert!(
            at < before + 602_000,
            "{at} is more than a second past the TTL"
        );
    }
}
