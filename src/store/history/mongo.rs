//! History in MongoDB: collection `channel_history`, one document per channel,
//! `{_id: channel, epoch, top, pubs: [data…], appended: {epoch, first, last}, expires_at}`.
//! The publication with offset `top` is the last of `pubs`, so offsets need no storing. One
//! `$push` (with `$slice` when it trims) appends in one atomic update of the document, which
//! also names what it appended (`appended`): its change event then carries the new
//! publications with their epoch and offsets, and every node delivers them from its change
//! stream (`crate::bus`, which reads them). The TTL index on `expires_at` (the last publication plus
//! `history_ttl_secs`) removes a whole history at once: the channel's next publication or
//! read then makes a new document, with a new epoch.

use std::collections::HashMap;

use bson::{Bson, DateTime, Document, doc};
use mongodb::options::{CollectionOptions, ReadConcern, WriteConcern};
use mongodb::{ClientSession, Collection, Database};

use super::{HistoryPage, HistoryQuery, StoredPublication, StreamTop, new_epoch};
use crate::channels::HistoryOptions;
use crate::db::collections::CHANNEL_HISTORY;
use crate::db::{Bounds, Unavailable};

/// Offsets beyond any real history (2^53, where MongoDB's numbers stay exact).
const MAX_OFFSET: u64 = 1 << 53;

/// Channels whose position a node remembers (past it, it forgets them all and reads again).
const MAX_KNOWN: usize = 100_000;

/// How often one append may find a channel moved by another node before it gives up (each
/// time, the other node has appended: this bounds a livelock, not a normal race).
const MAX_STALE: usize = 64;

/// Server error codes of a statement that matched no document: PathNotViable, from the
/// `$setOnInsert` that makes an appending statement refuse to insert, and DuplicateKey, from
/// a first append that found the document there after all.
const STALE_CODES: [i32; 2] = [28, 11000];

/// A channel's position: its epoch and latest offset, and how many publications the stored
/// history holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub top: StreamTop,
    pub kept: u32,
}

/// One channel's share of an append: its publications' data, in order.
pub struct Append<'a> {
    pub channel: &'a str,
    pub options: HistoryOptions,
    pub data: Vec<&'a str>,
}

/// One statement of an append: a run of one channel's publications (at most `history_size`
/// of them, so that a trim never drops one before its change event has shown it).
struct Piece {
    append: usize,
    items: std::ops::Range<usize>,
}

pub struct MongoHistory {
    /// Reads and writes majority-committed data only: a publication a read returned can never
    /// be rolled back by a failover, and its offset never given to another.
    history: Collection<Document>,
    /// Where appends start from: the latest write, majority-committed or not (one of another
    /// node not yet committed is followed at once; if it is rolled back, so is what followed
    /// it, before it was acknowledged).
    positions: Collection<Document>,
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
        let latest = CollectionOptions::builder()
            .read_concern(ReadConcern::local())
            .build();
        MongoHistory {
            history: db.collection_with_options(CHANNEL_HISTORY, options),
            positions: db.collection_with_options(CHANNEL_HISTORY, latest),
            db: db.clone(),
            known: std::sync::Mutex::default(),
            bounds,
        }
    }

    /// Appends each channel's publications (in order) to its history; answers each
    /// publication's epoch and offset, in the order given.
    ///
    /// All channels are appended to by one `update` command (write concern `majority`, no
    /// transaction), one statement per channel, each an atomic update of one document. A
    /// statement starts from the channel's position as this node last wrote it or, for a
    /// channel it does not know, as read just before, and it matches only that position; a
    /// position another node moved (or the TTL index removed) makes it fail rather than
    /// insert, and the command stops there (it is ordered). The statements before it are
    /// done; the rest are made again from a fresh read. So two nodes' appends to one channel
    /// follow each other, offsets are contiguous, and the oplog (and every change stream)
    /// holds each channel's appends in offset order.
    ///
    /// An error leaves it unknown what was appended: the publications may be in the history
    /// (once), and this node reads the channels' positions afresh next time.
    pub async fn append(
        &self,
        appends: &[Append<'_>],
    ) -> mongodb::error::Result<Vec<Vec<StreamTop>>> {
        let pieces = pieces_of(appends);
        let mut placed = placements_for(appends);
        let mut positions: HashMap<&str, Option<Appended>> = {
            let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            appends
                .iter()
                .filter_map(|a| Some((a.channel, Some(known.get(a.channel)?.clone()))))
                .collect()
        };
        let mut pending = &pieces[..];
        let mut stale = 0;
        loop {
            let mut unknown: Vec<&str> = pending
                .iter()
                .map(|piece| appends[piece.append].channel)
                .filter(|channel| !positions.contains_key(channel))
                .collect();
            unknown.sort_unstable();
            unknown.dedup();
            if !unknown.is_empty() {
                positions.extend(self.read_positions(&unknown).await?);
            }
            let (updates, planned) = plan(appends, pending, &mut positions);
            let result = self
                .db
                .run_command(doc! {
                    "update": CHANNEL_HISTORY,
                    "updates": updates,
                    "ordered": true,
                    "writeConcern": { "w": "majority" },
                })
                .await;
            let done = match &result {
                Ok(answer) => Outcome::of(answer, pending.len()),
                Err(_) => Outcome::Failed(String::new()),
            };
            let applied = match done {
                Outcome::All => pending.len(),
                Outcome::StaleAt(k) => k,
                Outcome::Failed(_) => 0,
            };
            place(&mut placed, &pending[..applied], &planned);
            match done {
                Outcome::All => {
                    self.remember(
                        pending
                            .iter()
                            .zip(planned)
                            .map(|(piece, after)| (appends[piece.append].channel, after)),
                    );
                    return Ok(placed);
                }
                Outcome::StaleAt(k) => {
                    self.remember(
                        pending[..k]
                            .iter()
                            .zip(planned)
                            .map(|(piece, after)| (appends[piece.append].channel, after)),
                    );
                    pending = &pending[k..];
                    let moved = appends[pending[0].append].channel;
                    self.forget([moved].into_iter());
                    self.bounds.metrics.history_appends_moved.inc();
                    positions.clear();
                    stale += 1;
                    if stale > MAX_STALE {
                        return Err(mongodb::error::Error::custom(format!(
                            "history append: channel {moved} moved {MAX_STALE} times during one append"
                        )));
                    }
                }
                Outcome::Failed(reason) => {
                    self.forget(appends.iter().map(|a| a.channel));
                    return match result {
                        Err(e) => Err(e),
                        Ok(_) => Err(mongodb::error::Error::custom(format!(
                            "history append: {reason}"
                        ))),
                    };
                }
            }
        }
    }

    /// Appends as [`append`](Self::append) does, as part of the transaction of `session`:
    /// each channel's position is read first and every statement must match it, and anything
    /// else (another node appended meanwhile) fails the whole append, for the caller to abort
    /// the transaction and try again. Answers each publication's place and the channels'
    /// positions after it, which the caller [`remember`s](Self::remember) once the
    /// transaction commits (and [`forget`s](Self::forget) if it does not).
    pub async fn append_in(
        &self,
        session: &mut ClientSession,
        appends: &[Append<'_>],
    ) -> mongodb::error::Result<(Vec<Vec<StreamTop>>, Vec<(String, Appended)>)> {
        let pieces = pieces_of(appends);
        let mut placed = placements_for(appends);
        if pieces.is_empty() {
            return Ok((placed, Vec::new()));
        }
        let mut channels: Vec<&str> = appends.iter().map(|a| a.channel).collect();
        channels.sort_unstable();
        channels.dedup();
        let mut positions: HashMap<&str, Option<Appended>> =
            self.read_positions(&channels).await?.into_iter().collect();
        let (updates, planned) = plan(appends, &pieces, &mut positions);
        // No write concern here: a transaction's is given when it commits.
        let answer = self
            .db
            .run_command(doc! {
                "update": CHANNEL_HISTORY,
                "updates": updates,
                "ordered": true,
            })
            .session(&mut *session)
            .await?;
        if !matches!(Outcome::of(&answer, pieces.len()), Outcome::All) {
            return Err(mongodb::error::Error::custom(
                "history append in a transaction: a channel moved",
            ));
        }
        place(&mut placed, &pieces, &planned);
        let after = pieces
            .iter()
            .zip(planned)
            .map(|(piece, after)| (appends[piece.append].channel.to_owned(), after))
            .collect();
        Ok((placed, after))
    }

    /// The channels' positions as stored now; `None` for a channel without a document.
    async fn read_positions<'a>(
        &self,
        channels: &[&'a str],
    ) -> mongodb::error::Result<Vec<(&'a str, Option<Appended>)>> {
        let mut found = self
            .positions
            .find(doc! { "_id": { "$in": channels } })
            .projection(doc! { "epoch": 1, "top": 1, "kept": { "$size": "$pubs" } })
            .await?;
        let mut stored = HashMap::new();
        while found.advance().await? {
            let document = found.deserialize_current()?;
            let id = document.get_str("_id").unwrap_or_default().to_owned();
            let kept = u32::try_from(document.get_i32("kept").unwrap_or(0)).unwrap_or(0);
            let top = top_of(&document).map_err(mongodb::error::Error::custom)?;
            stored.insert(id, Appended { top, kept });
        }
        Ok(channels
            .iter()
            .map(|channel| (*channel, stored.remove(*channel)))
            .collect())
    }

    /// Records where this node's acknowledged appends left each channel, so the next append
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

    pub fn forget<'a>(&self, channels: impl Iterator<Item = &'a str>) {
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

/// The statement that appends `append.data[items]` to a channel at `position` (`None`: no
/// document yet), and the position it leaves.
/// Each channel's publications in runs of at most `history_size` (see [`Piece`]).
fn pieces_of(appends: &[Append<'_>]) -> Vec<Piece> {
    appends
        .iter()
        .enumerate()
        .flat_map(|(append, a)| {
            let run = (a.options.size as usize).max(1);
            (0..a.data.len()).step_by(run).map(move |start| Piece {
                append,
                items: start..(start + run).min(a.data.len()),
            })
        })
        .collect()
}

/// The update statements of `pieces`, each from its channel's position in `positions` (which
/// it moves on), and the positions they leave.
fn plan(
    appends: &[Append<'_>],
    pieces: &[Piece],
    positions: &mut HashMap<&str, Option<Appended>>,
) -> (Vec<Document>, Vec<Appended>) {
    let mut updates = Vec::with_capacity(pieces.len());
    let mut planned = Vec::with_capacity(pieces.len());
    for piece in pieces {
        let append = &appends[piece.append];
        let position = positions
            .get_mut(append.channel)
            .expect("every pending channel's position was read");
        let (statement, after) = statement(append, &piece.items, position.as_ref());
        *position = Some(after.clone());
        updates.push(statement);
        planned.push(after);
    }
    (updates, planned)
}

/// Room for each publication's place, per channel.
fn placements_for(appends: &[Append<'_>]) -> Vec<Vec<StreamTop>> {
    appends
        .iter()
        .map(|a| Vec::with_capacity(a.data.len()))
        .collect()
}

/// The places of the publications of the `done` pieces, which left their channels `after`.
fn place(placed: &mut [Vec<StreamTop>], done: &[Piece], after: &[Appended]) {
    for (piece, after) in done.iter().zip(after) {
        let first = after.top.offset + 1 - piece.items.len() as u64;
        placed[piece.append].extend((first..=after.top.offset).map(|offset| StreamTop {
            epoch: after.top.epoch.clone(),
            offset,
        }));
    }
}

fn statement(
    append: &Append<'_>,
    items: &std::ops::Range<usize>,
    position: Option<&Appended>,
) -> (Document, Appended) {
    let data = &append.data[items.clone()];
    let added = data.len() as u32;
    let kept = position.map_or(0, |p| p.kept).saturating_add(added);
    // Trimming rewrites the whole stored array, appending does not: the history is
    // trimmed back to history_size only once it holds half as many again.
    let (push, kept) = if kept > append.options.kept_at_most() {
        let size = append.options.size;
        let push = doc! { "pubs": { "$each": data, "$slice": -i64::from(size) } };
        (push, size)
    } else {
        (doc! { "pubs": { "$each": data } }, kept)
    };
    let (epoch, top) = match position {
        Some(p) => (p.top.epoch.clone(), p.top.offset + u64::from(added)),
        None => (new_epoch(), u64::from(added)),
    };
    let set = doc! {
        "top": top as i64,
        "expires_at": expires_at(append.options),
        "appended": {
            // The channel's partition: only nodes with subscribers in it take the append
            // from their change streams (`crate::bus::interest`).
            "p": crate::channels::partition_of(append.channel) as i32,
            "epoch": &epoch,
            "first": (top + 1 - u64::from(added)) as i64,
            "last": top as i64,
        },
    };
    let statement = match position {
        // Matches only the position it starts from, and never inserts: where the document
        // is not (or no longer) at that position, the upsert's insert sets a field inside the
        // string `epoch`, which fails (PathNotViable) and stops the command there.
        Some(p) => doc! {
            "q": { "_id": append.channel, "epoch": &p.top.epoch, "top": p.top.offset as i64 },
            "u": { "$set": set, "$push": push, "$setOnInsert": { "epoch.moved": true } },
            "upsert": true,
        },
        // Inserts only: a document made meanwhile (by another node, or a history read) fails
        // it with a duplicate key.
        None => doc! {
            "q": { "_id": append.channel, "epoch": { "$exists": false } },
            "u": { "$setOnInsert": { "epoch": &epoch }, "$set": set, "$push": push },
            "upsert": true,
        },
    };
    let after = Appended {
        top: StreamTop { epoch, offset: top },
        kept,
    };
    (statement, after)
}

/// What an ordered `update` command of `statements` statements did.
enum Outcome {
    All,
    /// Statement k found its channel moved: those before it are done, it and the rest not.
    StaleAt(usize),
    /// Unknown how much was done.
    Failed(String),
}

impl Outcome {
    fn of(answer: &Document, statements: usize) -> Outcome {
        if let Ok(concern) = answer.get_document("writeConcernError") {
            return Outcome::Failed(format!("write concern: {concern}"));
        }
        let first_error = answer
            .get_array("writeErrors")
            .ok()
            .and_then(|errors| errors.first())
            .and_then(Bson::as_document);
        let n = answer.get_i32("n").map_or(0, |n| n as usize);
        match first_error {
            None if n == statements => Outcome::All,
            None => Outcome::Failed(format!("{n} of {statements} statements matched")),
            Some(error) => {
                let index = error.get_i32("index").map_or(usize::MAX, |i| i as usize);
                let code = error.get_i32("code").unwrap_or(0);
                if STALE_CODES.contains(&code) && index == n && index < statements {
                    Outcome::StaleAt(index)
                } else {
                    Outcome::Failed(format!("statement {index}: {error}"))
                }
            }
        }
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
    fn an_update_answer_tells_how_far_the_ordered_statements_got() {
        let outcome = |answer: Document| match Outcome::of(&answer, 3) {
            Outcome::All => "all".to_owned(),
            Outcome::StaleAt(k) => format!("stale at {k}"),
            Outcome::Failed(_) => "failed".to_owned(),
        };
        assert_eq!(outcome(doc! { "n": 3, "ok": 1.0 }), "all");
        let moved = |index: i32, code: i32, n: i32| {
            doc! { "n": n, "ok": 1.0, "writeErrors": [{ "index": index, "code": code }] }
        };
        assert_eq!(outcome(moved(1, 28, 1)), "stale at 1");
        assert_eq!(outcome(moved(0, 11000, 0)), "stale at 0");
        // Any other error, a count that does not add up, or a write concern error leave it
        // unknown what was written.
        assert_eq!(outcome(moved(1, 2, 1)), "failed");
        assert_eq!(outcome(moved(2, 28, 1)), "failed");
        assert_eq!(outcome(doc! { "n": 2, "ok": 1.0 }), "failed");
        let concern = doc! { "n": 3, "ok": 1.0, "writeConcernError": { "code": 64 } };
        assert_eq!(outcome(concern), "failed");
    }

    #[test]
    fn a_statement_starts_from_its_position_and_never_inserts_over_one() {
        let options = HistoryOptions {
            size: 2,
            ttl_secs: 60,
        };
        let append = Append {
            channel: "feed:a",
            options,
            data: vec!["1", "2"],
        };
        let (fresh, after) = statement(&append, &(0..2), None);
        assert_eq!(after.top.offset, 2);
        assert_eq!(
            fresh
                .get_document("q")
                .unwrap()
                .get_document("epoch")
                .unwrap(),
            &doc! { "$exists": false }
        );
        let position = Appended {
            top: StreamTop {
                epoch: "e".into(),
                offset: 2,
            },
            kept: 2,
        };
        let (next, after) = statement(&append, &(0..2), Some(&position));
        assert_eq!(
            (after.top.epoch.as_str(), after.top.offset, after.kept),
            ("e", 4, 2)
        );
        let q = next.get_document("q").unwrap();
        assert_eq!((q.get_str("epoch"), q.get_i64("top")), (Ok("e"), Ok(2)));
        let u = next.get_document("u").unwrap();
        assert_eq!(
            u.get_document("$setOnInsert").unwrap(),
            &doc! { "epoch.moved": true }
        );
        // Four kept would pass 1.5 × 2: this append trims back to two.
        let pubs = u
            .get_document("$push")
            .unwrap()
            .get_document("pubs")
            .unwrap();
        assert_eq!(pubs.get_i64("$slice"), Ok(-2));
        assert_eq!(
            u.get_document("$set")
                .unwrap()
                .get_document("appended")
                .unwrap(),
            &doc! {
                "p": crate::channels::partition_of("feed:a") as i32,
                "epoch": "e", "first": 3_i64, "last": 4_i64,
            }
        );
    }

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
