//! Lifecycle events (`crate::lifecycle`): the events themselves, and how MongoDB keeps them
//! (migration 0006):
//! - `lifecycle_events`: one document per event, `_id` = the event's `id`, with its node's
//!   series number `seq` (unique per node) and `at` (the TTL index's date). Apps may watch
//!   this collection's change stream instead of taking the webhook (docs/PROTOCOL.md).
//! - `lifecycle_streams`: one document per node's series, `_id` = the node id: who delivers
//!   it to the webhook (`holder`: the node itself, or the survivor that adopted it), the last
//!   `seq` the webhook took (`delivered`), and `ended_at` once a survivor has finished it.

use std::net::IpAddr;

use bson::{DateTime, Document, doc};
use futures_util::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::UpdateOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use crate::db::collections::{LIFECYCLE_EVENTS, LIFECYCLE_STREAMS};
use crate::db::{Bounds, Unavailable};

/// One event, as the webhook receives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// Unique in the cluster: `<node id>-<seq>`; the backend drops repeats by it.
    pub id: String,
    /// Its place in its node's series, from 1: the order of delivery.
    #[serde(skip)]
    pub seq: u64,
    #[serde(flatten)]
    pub kind: EventKind,
    /// Unix milliseconds.
    pub time: u64,
    pub user_id: String,
    pub connection_id: String,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Connect {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        jti: Option<String>,
        client_ip: Option<IpAddr>,
        /// `websocket` or `sse` (events recorded before SSE have none: `websocket`).
        #[serde(default = "websocket")]
        transport: String,
    },
    Disconnect {
        /// The close code sent; `null` when the socket was simply gone.
        code: Option<u16>,
        reason: String,
        duration_ms: u64,
    },
    Subscribe {
        channel: String,
    },
    Unsubscribe {
        channel: String,
    },
}

fn websocket() -> String {
    "websocket".to_owned()
}

/// An event's id: unique in the cluster, since node ids are.
pub fn event_id(node: &str, seq: u64) -> String {
    format!("{node}-{seq}")
}

const DUPLICATE_KEY: i32 = 11000;
/// The most events a user lookup reads.
pub const MAX_USER_EVENTS: i64 = 100_000;

/// An event as `lifecycle_events` keeps it: the webhook's fields, flat, with `_id` for `id`,
/// absent fields left out.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredEvent {
    #[serde(rename = "_id")]
    pub id: String,
    pub node: String,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix milliseconds, as in the webhook's events.
    pub time: i64,
    /// `time` as a date, for the TTL index.
    pub at: DateTime,
    pub user_id: String,
    pub connection_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
}

impl From<&Event> for StoredEvent {
    fn from(event: &Event) -> Self {
        let time = i64::try_from(event.time).unwrap_or(i64::MAX);
        let mut stored = StoredEvent {
            id: event.id.clone(),
            node: event.node.clone(),
            seq: i64::try_from(event.seq).unwrap_or(i64::MAX),
            kind: String::new(),
            time,
            at: DateTime::from_millis(time),
            user_id: event.user_id.clone(),
            connection_id: event.connection_id.clone(),
            jti: None,
            client_ip: None,
            transport: None,
            code: None,
            reason: None,
            duration_ms: None,
            channel: None,
        };
        stored.kind = match &event.kind {
            EventKind::Connect {
                jti,
                client_ip,
                transport,
            } => {
                stored.jti = jti.clone();
                stored.client_ip = client_ip.map(|ip| ip.to_string());
                stored.transport = Some(transport.clone());
                "connect"
            }
            EventKind::Disconnect {
                code,
                reason,
                duration_ms,
            } => {
                stored.code = code.map(i32::from);
                stored.reason = Some(reason.clone());
                stored.duration_ms = Some(i64::try_from(*duration_ms).unwrap_or(i64::MAX));
                "disconnect"
            }
            EventKind::Subscribe { channel } => {
                stored.channel = Some(channel.clone());
                "subscribe"
            }
            EventKind::Unsubscribe { channel } => {
                stored.channel = Some(channel.clone());
                "unsubscribe"
            }
        }
        .to_owned();
        stored
    }
}

impl StoredEvent {
    /// The event again; `None` for a document the gateway did not write.
    pub fn event(self) -> Option<Event> {
        let kind = match self.kind.as_str() {
            "connect" => EventKind::Connect {
                jti: self.jti,
                client_ip: self.client_ip.and_then(|ip| ip.parse().ok()),
                transport: self.transport.unwrap_or_else(websocket),
            },
            "disconnect" => EventKind::Disconnect {
                code: self.code.and_then(|c| u16::try_from(c).ok()),
                reason: self.reason.unwrap_or_default(),
                duration_ms: u64::try_from(self.duration_ms.unwrap_or(0)).unwrap_or(0),
            },
            "subscribe" => EventKind::Subscribe {
                channel: self.channel?,
            },
            "unsubscribe" => EventKind::Unsubscribe {
                channel: self.channel?,
            },
            _ => return None,
        };
        Some(Event {
            id: self.id,
            seq: u64::try_from(self.seq).ok()?,
            kind,
            time: u64::try_from(self.time).unwrap_or(0),
            user_id: self.user_id,
            connection_id: self.connection_id,
            node: self.node,
        })
    }
}

/// One node's series of events, as `lifecycle_streams` keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stream {
    /// The node whose events these are.
    #[serde(rename = "_id")]
    pub node: String,
    /// The node delivering them: `node` itself while it lives, then a survivor.
    pub holder: String,
    /// The last `seq` the webhook took.
    pub delivered: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime>,
}

/// Whether a node still holds the stream it writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held,
    /// Another node took it: this one was declared lost.
    Lost,
}

/// A connection with a `connect` and no `disconnect` yet.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenConnection {
    #[serde(rename = "_id")]
    pub connection_id: String,
    pub user_id: String,
    /// Unix milliseconds of its `connect`.
    pub connected_at: i64,
}

pub struct EventLog {
    events: Collection<StoredEvent>,
    streams: Collection<Stream>,
    bounds: Bounds,
}

impl EventLog {
    pub fn new(db: &Database, bounds: Bounds) -> Self {
        EventLog {
            events: db.collection(LIFECYCLE_EVENTS),
            streams: db.collection(LIFECYCLE_STREAMS),
            bounds,
        }
    }

    /// Creates `node`'s stream, held by itself, unless it exists.
    pub async fn open(&self, node: &str) -> Result<(), Unavailable> {
        let upsert = self
            .streams
            .update_one(
                doc! { "_id": node },
                doc! { "$setOnInsert": { "holder": node, "delivered": 0_i64 } },
            )
            .with_options(UpdateOptions::builder().upsert(true).build());
        self.bounds.run("lifecycle_open", upsert).await.map(drop)
    }

    /// Writes `events`; those already there (a retry after an answer that got lost) count as
    /// written.
    pub async fn record(&self, events: &[Event]) -> Result<(), Unavailable> {
        if events.is_empty() {
            return Ok(());
        }
        let documents: Vec<StoredEvent> = events.iter().map(StoredEvent::from).collect();
        let insert = async {
            match self.events.insert_many(documents).ordered(false).await {
                Err(e) if only_duplicates(&e) => Ok(()),
                other => other.map(drop),
            }
        };
        self.bounds.run("lifecycle_record", insert).await
    }

    /// Up to `limit` of `node`'s events after `seq`, in order.
    pub async fn after(
        &self,
        node: &str,
        seq: u64,
        limit: usize,
    ) -> Result<Vec<Event>, Unavailable> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let found = self
            .events
            .find(doc! { "node": node, "seq": { "$gt": seq } })
            .sort(doc! { "seq": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let stored: Vec<StoredEvent> = self
            .bounds
            .run("lifecycle_read", async { found.await?.try_collect().await })
            .await?;
        Ok(stored.into_iter().filter_map(StoredEvent::event).collect())
    }

    /// A user's events (at most [`MAX_USER_EVENTS`], the latest), in each node's order.
    pub async fn events_of_user(&self, user_id: &str) -> Result<Vec<Event>, Unavailable> {
        let found = self
            .events
            .find(doc! { "user_id": user_id })
            .sort(doc! { "node": 1, "seq": 1 })
            .limit(MAX_USER_EVENTS);
        let stored: Vec<StoredEvent> = self
            .bounds
            .run("lifecycle_user", async { found.await?.try_collect().await })
            .await?;
        Ok(stored.into_iter().filter_map(StoredEvent::event).collect())
    }

    /// The highest `seq` of `node`'s events (0: none).
    pub async fn last_seq(&self, node: &str) -> Result<u64, Unavailable> {
        let found = self
            .events
            .find_one(doc! { "node": node })
            .sort(doc! { "seq": -1 });
        let last = self.bounds.run("lifecycle_last", found).await?;
        Ok(last.map_or(0, |e| u64::try_from(e.seq).unwrap_or(0)))
    }

    /// Records that the webhook took `node`'s events up to `seq`, if `holder` still holds
    /// the stream.
    pub async fn mark_delivered(
        &self,
        node: &str,
        holder: &str,
        seq: u64,
    ) -> Result<Hold, Unavailable> {
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let update = self.streams.update_one(
            doc! { "_id": node, "holder": holder },
            doc! { "$max": { "delivered": seq } },
        );
        let done = self.bounds.run("lifecycle_delivered", update).await?;
        Ok(if done.matched_count == 1 {
            Hold::Held
        } else {
            Hold::Lost
        })
    }

    /// Whether `node` still holds its own stream.
    pub async fn own_hold(&self, node: &str) -> Result<Hold, Unavailable> {
        let found = self.streams.find_one(doc! { "_id": node });
        let stream = self.bounds.run("lifecycle_hold", found).await?;
        Ok(match stream {
            Some(stream) if stream.holder != node => Hold::Lost,
            // Not opened yet, or held: either way nobody took it.
            _ => Hold::Held,
        })
    }

    /// The unfinished streams whose holder is none of `live`.
    pub async fn abandoned(&self, live: &[String]) -> Result<Vec<Stream>, Unavailable> {
        let found = self
            .streams
            .find(doc! { "ended_at": { "$exists": false }, "holder": { "$nin": live } });
        self.bounds
            .run("lifecycle_abandoned", async {
                found.await?.try_collect().await
            })
            .await
    }

    /// Makes `me` the holder of `stream` if `stream.holder` still is; true when it did.
    pub async fn claim(&self, stream: &Stream, me: &str) -> Result<bool, Unavailable> {
        let update = self.streams.update_one(
            doc! { "_id": &stream.node, "holder": &stream.holder, "ended_at": { "$exists": false } },
            doc! { "$set": { "holder": me } },
        );
        let done = self.bounds.run("lifecycle_claim", update).await?;
        Ok(done.modified_count == 1)
    }

    /// `node`'s connections with more `connect`s than `disconnect`s (one at most, in fact).
    pub async fn open_connections(&self, node: &str) -> Result<Vec<OpenConnection>, Unavailable> {
        let count = |kind: &str| doc! { "$sum": { "$cond": [{ "$eq": ["$type", kind] }, 1, 0] } };
        let pipeline = [
            doc! { "$match": { "node": node, "type": { "$in": ["connect", "disconnect"] } } },
            doc! { "$group": {
                "_id": "$connection_id",
                "user_id": { "$first": "$user_id" },
                "connected_at": { "$min": "$time" },
                "connects": count("connect"),
                "disconnects": count("disconnect"),
            } },
            doc! { "$match": { "$expr": { "$gt": ["$connects", "$disconnects"] } } },
            doc! { "$sort": { "connected_at": 1 } },
        ];
        let aggregate = self.events.aggregate(pipeline);
        let found: Vec<Document> = self
            .bounds
            .run("lifecycle_open_connections", async {
                aggregate.await?.try_collect().await
            })
            .await?;
        Ok(found
            .into_iter()
            .filter_map(|d| bson::from_document(d).ok())
            .collect())
    }

    /// Marks `stream` finished, if `holder` still holds it; the TTL index removes it later.
    pub async fn end(&self, node: &str, holder: &str) -> Result<(), Unavailable> {
        let update = self.streams.update_one(
            doc! { "_id": node, "holder": holder },
            doc! { "$set": { "ended_at": DateTime::now() } },
        );
        self.bounds.run("lifecycle_end", update).await.map(drop)
    }
}

/// An unordered insert whose only failures are documents already there.
fn only_duplicates(error: &mongodb::error::Error) -> bool {
    match error.kind.as_ref() {
        ErrorKind::InsertMany(e) => {
            e.write_concern_error.is_none()
                && e.write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            id: "n-1-7".into(),
            seq: 7,
            kind,
            time: 1_700_000_000_123,
            user_id: "alice".into(),
            connection_id: "c1@n-1".into(),
            node: "n-1".into(),
        }
    }

    /// Every kind of event comes back from its document as it went in.
    #[test]
    fn events_survive_the_round_trip_through_their_documents() {
        let kinds = [
            EventKind::Connect {
                jti: Some("j".into()),
                client_ip: Some("10.0.0.1".parse().unwrap()),
                transport: "sse".into(),
            },
            EventKind::Connect {
                jti: None,
                client_ip: None,
                transport: "websocket".into(),
            },
            EventKind::Disconnect {
                code: Some(1000),
                reason: "bye".into(),
                duration_ms: 42,
            },
            EventKind::Disconnect {
                code: None,
                reason: String::new(),
                duration_ms: 0,
            },
            EventKind::Subscribe {
                channel: "chat:a".into(),
            },
            EventKind::Unsubscribe {
                channel: "chat:a".into(),
            },
        ];
        for kind in kinds {
            let sent = event(kind);
            let stored = StoredEvent::from(&sent);
            let document = bson::to_document(&stored).unwrap();
            assert_eq!(document.get_str("_id").unwrap(), "n-1-7");
            let back: StoredEvent = bson::from_document(document).unwrap();
            assert_eq!(back.event().as_ref(), Some(&sent));
        }
    }
}
