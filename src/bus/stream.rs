//! Following `cluster_events` and `channel_history` through one change stream on the
//! database, and delivering each event, and each append to a channel's history, to this
//! node's connections. The stream resumes from the last resume token after any break
//! (step-down, network cut, mongod restart), so nothing still in the oplog is missed; when the
//! token has fallen out of the oplog it logs an error, counts it, tells every connection
//! (subscribers of channels with history resubscribe and recover; everyone hears what else
//! they missed), and goes on from now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{Document, doc};
use futures_util::FutureExt;
use mongodb::Database;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::{Error, ErrorKind};

use super::appends::appended_in;
use super::forward::Forwarding;
use super::{Event, EventDocument, StreamPublication};
use crate::db::Unavailable;
use crate::db::collections::{CHANNEL_HISTORY, CLUSTER_EVENTS};
use crate::hub::Hub;
use crate::metrics::Metrics;

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// How long the server holds an empty `getMore` open; also how often the resume token
/// advances while no events flow.
const MAX_AWAIT: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Server error codes meaning the resume point is gone for good: ChangeStreamHistoryLost,
/// ChangeStreamFatalError, InvalidResumeToken.
const HISTORY_LOST_CODES: [i32; 3] = [286, 280, 260];

/// Opens the change stream of cluster events and history appends, from `token` or from now,
/// within `timeout`.
pub async fn open(
    db: &Database,
    token: Option<ResumeToken>,
    timeout: Duration,
) -> Result<Stream, OpenError> {
    let watch = db
        .watch()
        .pipeline([doc! { "$match": { "$or": [
            { "ns.coll": CLUSTER_EVENTS, "operationType": "insert" },
            { "ns.coll": CHANNEL_HISTORY, "operationType": { "$in": ["insert", "update"] } },
        ] } }])
        .max_await_time(MAX_AWAIT)
        .resume_after(token);
    match tokio::time::timeout(timeout, watch.into_future()).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if history_lost(&e) => Err(OpenError::HistoryLost(e.to_string())),
        Ok(Err(e)) => Err(OpenError::Unavailable(e.to_string())),
        Err(_) => Err(OpenError::Unavailable(format!(
            "no answer within {timeout:?}"
        ))),
    }
}

#[derive(Debug)]
pub enum OpenError {
    /// The resume token is no longer in the oplog.
    HistoryLost(String),
    Unavailable(String),
}

impl From<OpenError> for Unavailable {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::HistoryLost(reason) | OpenError::Unavailable(reason) => Unavailable(reason),
        }
    }
}

fn history_lost(e: &Error) -> bool {
    matches!(&*e.kind, ErrorKind::Command(command) if HISTORY_LOST_CODES.contains(&command.code))
}

pub struct Follower {
    db: Database,
    hub: Arc<Hub>,
    /// Takes the forwarded client requests and their answers out of the stream.
    forwarding: Arc<Forwarding>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Told of every answer from MongoDB: readiness watches it.
    health: Arc<super::StreamHealth>,
    /// The last event number delivered per publishing node: an event at or below it is a
    /// repeat (or a write that landed late) and is dropped, so each publisher's events reach
    /// connections once and in order.
    delivered: HashMap<String, i64>,
}

impl Follower {
    pub fn new(
        db: Database,
        hub: Arc<Hub>,
        forwarding: Arc<Forwarding>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        health: Arc<super::StreamHealth>,
    ) -> Self {
        Follower {
            db,
            hub,
            forwarding,
            metrics,
            timeout,
            health,
            delivered: HashMap::new(),
        }
    }

    /// Follows the stream for as long as the process runs.
    pub async fn run(mut self, mut stream: Stream) {
        let mut token = stream.resume_token();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.follow(&mut stream, &mut token).await {
                // The stream itself ended (say, the collection was dropped): reopen.
                None => log::warn!("the cluster event stream ended; reopening"),
                Some(e) if history_lost(&e) => self.lost_history(&mut token, &e),
                Some(e) => log::warn!("the cluster event stream broke ({e}); resuming"),
            }
            self.metrics
                .bus_restarts
                .with_label_values(&["cluster"])
                .inc();
            stream = loop {
                match open(&self.db, token.clone(), self.timeout).await {
                    Ok(stream) => break stream,
                    Err(OpenError::HistoryLost(reason)) => {
                        self.lost_history(&mut token, &reason);
                    }
                    Err(OpenError::Unavailable(reason)) => {
                        log::debug!("reopening the cluster event stream: {reason}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            log::info!("the cluster event stream resumed");
            backoff = Duration::from_millis(100);
        }
    }

    /// The stream cannot resume: events written while it was away are lost to this node.
    /// Its connections are told (the hub's [`stream_lost`](Hub::stream_lost)): subscribers
    /// of channels with history resubscribe and recover them from MongoDB; the rest hear
    /// what they missed.
    fn lost_history(&self, token: &mut Option<ResumeToken>, reason: &dyn std::fmt::Display) {
        let told = self.hub.stream_lost();
        log::error!(
            "the cluster event stream cannot resume ({reason}): events written while it was \
             down are lost to this node; going on from now, and {told} connections are told \
             to resubscribe to channels with history and what else they missed"
        );
        self.metrics
            .bus_history_lost
            .with_label_values(&["cluster"])
            .inc();
        *token = None;
    }

    /// Delivers events until the stream fails; keeps `token` at the last point handled.
    async fn follow(
        &mut self,
        stream: &mut Stream,
        token: &mut Option<ResumeToken>,
    ) -> Option<Error> {
        // A server that stops answering (paused, cut off) must not hang the stream forever.
        let patience = self.timeout + MAX_AWAIT;
        loop {
            let next = tokio::time::timeout(patience, stream.next_if_any()).map(|r| match r {
                Ok(result) => result,
                Err(_) => Err(Error::custom(format!("no answer within {patience:?}"))),
            });
            match next.await {
                Ok(Some(change)) => {
                    self.health.answered();
                    self.deliver(change)
                }
                Ok(None) if !stream.is_alive() => return None,
                // An empty answer is an answer: the stream is alive.
                Ok(None) => self.health.answered(),
                Err(e) => return Some(e),
            }
            if let Some(latest) = stream.resume_token() {
                *token = Some(latest);
            }
        }
    }

    fn deliver(&mut self, change: ChangeStreamEvent<Document>) {
        let collection = change.ns.as_ref().and_then(|ns| ns.coll.as_deref());
        if collection == Some(CHANNEL_HISTORY) {
            self.deliver_appended(&change);
        } else {
            self.deliver_event(change);
        }
    }

    fn deliver_event(&mut self, change: ChangeStreamEvent<Document>) {
        let Some(document) = change.full_document else {
            return;
        };
        let event = match bson::from_document::<EventDocument>(document) {
            Ok(event) => event,
            Err(e) => {
                log::warn!("skipping a malformed cluster event: {e}");
                self.skipped("malformed");
                return;
            }
        };
        let last = self.delivered.entry(event.node).or_insert(0);
        if event.n <= *last {
            self.skipped("repeat");
            return;
        }
        *last = event.n;
        self.delivered_one(event.event, event.created_at);
    }

    /// Delivers the publications an append to a channel's history added, one by one. The
    /// change stream shows each channel's appends in offset order, and the channel's window
    /// here drops any it has delivered already.
    fn deliver_appended(&mut self, change: &ChangeStreamEvent<Document>) {
        let appended = match appended_in(change) {
            Ok(Some(appended)) => appended,
            // A history read made an empty document: nothing was published.
            Ok(None) => return,
            Err(e) => {
                log::warn!("skipping a malformed history change: {e}");
                self.skipped("malformed");
                return;
            }
        };
        let written_at = change.wall_time.unwrap_or_else(bson::DateTime::now);
        for (data, offset) in appended.data.into_iter().zip(appended.first..) {
            let event = Event::Publications {
                channels: Vec::new(),
                streams: vec![StreamPublication {
                    channel: appended.channel.clone(),
                    offset,
                    epoch: appended.epoch.clone(),
                }],
                data,
            };
            self.delivered_one(event, written_at);
        }
    }

    fn skipped(&self, reason: &str) {
        self.metrics
            .cluster_events_skipped
            .with_label_values(&[reason])
            .inc();
    }

    fn delivered_one(&self, event: Event, written_at: bson::DateTime) {
        let lag_ms = bson::DateTime::now().timestamp_millis() - written_at.timestamp_millis();
        self.metrics
            .bus_lag_seconds
            .observe(lag_ms.max(0) as f64 / 1000.0);
        self.metrics
            .cluster_events_delivered
            .with_label_values(&[event.kind()])
            .inc();
        if let Some(event) = self.forwarding.intercept(event) {
            event.deliver(&self.hub);
        }
    }
}
