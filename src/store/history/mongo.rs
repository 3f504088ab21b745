//! History in MongoDB: collection `channel_history`, one document per channel,
//! `{_id: channel, epoch, top, pubs: [data…], expires_at}`. The publication with offset
//! `top` is the last of `pubs`, so offsets need no storing. One `$push` with `$slice` appends
//! and trims in the same atomic update, and the TTL index on `expires_at` (the last
//! publication plus `history_ttl_secs`) removes a whole history at once: the channel's next
//! publication or read then makes a new document, with a new epoch.

use bson::{DateTime, Document, doc};
use mongodb::options::{CollectionOptions, ReadConcern, ReturnDocument, WriteConcern};
use mongodb::{ClientSession, Collection, Database};

use super::{HistoryPage, HistoryQuery, StoredPublication, StreamTop, new_epoch};
use crate::channels::HistoryOptions;
use crate::db::{Bounds, Unavailable};

pub const HISTORY_COLLECTION: &str = "channel_history";
/// Offsets beyond any real history (2^53, where MongoDB's numbers stay exact).
const MAX_OFFSET: u64 = 1 << 53;

pub struct MongoHistory {
    /// Reads and writes majority-committed data only: a publication a read returned can never
    /// be rolled back by a failover, and its offset never given to another.
    history: Collection<Document>,
    bounds: Bounds,
}

fn expires_at(options: HistoryOptions) -> DateTime {
    DateTime::from_millis(
        DateTime::now()
            .timestamp_millis()
            .saturating_add(i64::from(options.ttl_secs) * 1000),
    )
}

impl MongoHistory {
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        let options = CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .write_concern(WriteConcern::majority())
            .build();
        MongoHistory {
            history: db.collection_with_options(HISTORY_COLLECTION, options),
            bounds,
        }
    }

    /// Appends `data` (publications in order) to `channel`'s history, in the caller's
    /// transaction; the new latest offset and the epoch. Two transactions appending to one
    /// channel conflict, so the second waits for the first (MongoDB retries it) and commits
    /// after it: offsets are taken in commit order.
    pub async fn append(
        &self,
        session: &mut ClientSession,
        channel: &str,
        options: HistoryOptions,
        data: &[&str],
    ) -> mongodb::error::Result<StreamTop> {
        let update = doc! {
            "$inc": { "top": data.len() as i64 },
            "$push": { "pubs": { "$each": data, "$slice": -i64::from(options.size) } },
            "$set": { "expires_at": expires_at(options) },
            "$setOnInsert": { "epoch": new_epoch() },
        };
        let after = self
            .history
            .find_one_and_update(doc! { "_id": channel }, update)
            .upsert(true)
            .return_document(ReturnDocument::After)
            .projection(doc! { "epoch": 1, "top": 1 })
            .session(session)
            .await?
            .ok_or_else(|| mongodb::error::Error::custom("an upsert returned no document"))?;
        top_of(&after).map_err(mongodb::error::Error::custom)
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
