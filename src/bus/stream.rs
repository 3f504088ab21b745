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

use bson::{Document, Timestamp, doc};
use mongodb::Database;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::{Error, ErrorKind};

use super::appends::appended_in;
use super::forward::Forwarding;
use super::interest::{Coverage, Interest};
use super::{Event, EventDocument, StreamPublication};
use crate::db::Unavailable;
use crate::db::collections::CHANNEL_HISTORY;
use crate::hub::Hub;
use crate::metrics::Metrics;

type Stream = ChangeStream<ChangeStreamEvent<Document>>;

/// How long the server holds an empty `getMore` open; also how often the resume token
/// advances while no events flow.
const MAX_AWAIT: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The most a stream's open or read may take once MongoDB has shown it is there but slow.
const MAX_PATIENCE: Duration = Duration::from_secs(30);

/// Server error codes meaning the resume point is gone for good: ChangeStreamHistoryLost,
/// ChangeStreamFatalError, InvalidResumeToken.
const HISTORY_LOST_CODES: [i32; 3] = [286, 280, 260];

/// Where a stream goes on from when it is opened again.
#[derive(Debug, Clone)]
pub enum Place {
    /// From now: the first stream, or one whose point was lost.
    Now,
    /// After a token that names no event (the end of a batch): a stream with any filter
    /// resumes from it.
    Token(ResumeToken),
    /// After an event. MongoDB resumes after an event's token only in a stream that shows
    /// that event, which a narrower filter may not: the stream starts at the event's cluster
    /// time instead, and skips what comes up to the event's token
    /// ([`Follower::already_delivered`]).
    Event { time: Timestamp, token: String },
}

/// Opens the change stream of cluster events and history appends, carrying the channel
/// events of `coverage` (`interest.rs`), from `place`, within `timeout`.
pub async fn open(
    db: &Database,
    place: &Place,
    timeout: Duration,
    coverage: &Coverage,
) -> Result<Stream, OpenError> {
    let watch = db
        .watch()
        .pipeline([doc! { "$match": coverage.stream_filter() }])
        .max_await_time(MAX_AWAIT);
    let watch = match place {
        Place::Now => watch,
        Place::Token(token) => watch.resume_after(token.clone()),
        Place::Event { time, .. } => watch.start_at_operation_time(*time),
    };
    match tokio::time::timeout(timeout, watch.into_future()).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) if history_lost(&e) => Err(OpenError::HistoryLost(e.to_string())),
        Ok(Err(e)) => Err(OpenError::Unavailable(e.to_string())),
        Err(_) => Err(OpenError::TimedOut(timeout)),
    }
}

#[derive(Debug)]
pub enum OpenError {
    /// The resume token is no longer in the oplog.
    HistoryLost(String),
    Unavailable(String),
    /// No answer within the time given.
    TimedOut(Duration),
}

impl From<OpenError> for Unavailable {
    fn from(e: OpenError) -> Self {
        match e {
            OpenError::HistoryLost(reason) | OpenError::Unavailable(reason) => Unavailable(reason),
            OpenError::TimedOut(timeout) => Unavailable(format!("no answer within {timeout:?}")),
        }
    }
}

/// An event token's `_data`: hex of a key that orders tokens as MongoDB does.
fn token_data(token: &ResumeToken) -> Option<String> {
    match bson::to_bson(token).ok()? {
        bson::Bson::Document(document) => document.get_str("_data").ok().map(str::to_owned),
        _ => None,
    }
}

fn history_lost(e: &Error) -> bool {
    matches!(&*e.kind, ErrorKind::Command(command) if HISTORY_LOST_CODES.contains(&command.code))
}

/// Why [`Follower::follow`] stopped following a stream.
enum Stop {
    /// The stream ended by itself.
    Ended,
    Failed(Error),
    /// This node's interest changed (`widen` or `narrow`): reopen carrying this.
    Interest(&'static str, Coverage),
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
    /// Which channel partitions the stream carries, and which this node's subscribers want.
    interest: Arc<Interest>,
    /// After reopening at an event's time: that event's, up to which everything at that
    /// time was delivered already.
    skip_through: Option<(Timestamp, String)>,
    /// The last event number delivered per publishing node: an event at or below it is a
    /// repeat (or a write that landed late) and is dropped, so each publisher's events reach
    /// connections once and in order.
    delivered: HashMap<String, i64>,
    /// How many times in a row an open or a read ran out of time while MongoDB answered a
    /// ping: each doubles the next one's patience ([`Follower::patience`]).
    slow: u32,
}

impl Follower {
    pub fn new(
        db: Database,
        hub: Arc<Hub>,
        forwarding: Arc<Forwarding>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        health: Arc<super::StreamHealth>,
        interest: Arc<Interest>,
    ) -> Self {
        Follower {
            db,
            hub,
            forwarding,
            metrics,
            timeout,
            health,
            interest,
            skip_through: None,
            delivered: HashMap::new(),
            slow: 0,
        }
    }

    /// How long an open or a read of the stream may take. `STORE_TIMEOUT_MS` at first; but a
    /// stream resumed after a long break reads the oplog written meanwhile before it answers,
    /// which on a busy mongod can take longer than any request should: held to the store's
    /// bound, it would time out and start over from the same point, for ever. So each time
    /// it runs out of time while MongoDB answers a ping, the next attempt gets twice as long
    /// (up to 30 s); a MongoDB that does not answer at all keeps the short bound, so a cut is
    /// still noticed at once.
    fn patience(&self) -> Duration {
        let factor = 1u32 << self.slow.min(8);
        self.timeout
            .saturating_mul(factor)
            .min(MAX_PATIENCE.max(self.timeout))
    }

    /// After an open or a read ran out of time: lengthens the next one's patience if MongoDB
    /// is there.
    async fn ran_out_of_time(&mut self) {
        let ping = self.db.run_command(doc! { "ping": 1 });
        if let Ok(Ok(_)) = tokio::time::timeout(self.timeout, ping).await {
            self.slow = self.slow.saturating_add(1);
            log::debug!(
                "the cluster event stream's MongoDB answers but the stream took too long; \
                 waiting up to {:?} next time",
                self.patience()
            );
        }
    }

    /// Follows the stream for as long as the process runs: reopened from its last resume
    /// token when it breaks, and when this node's interest in channel partitions changes.
    pub async fn run(mut self, mut stream: Stream) {
        let mut place = stream.resume_token().map_or(Place::Now, Place::Token);
        let mut backoff = Duration::from_millis(100);
        loop {
            let stop = self.follow(&mut stream, &mut place).await;
            let broke = !matches!(stop, Stop::Interest(..));
            let mut coverage = match stop {
                Stop::Interest(change, coverage) => {
                    self.metrics
                        .bus_interest_changes
                        .with_label_values(&[change])
                        .inc();
                    coverage
                }
                stop => {
                    match stop {
                        // The stream itself ended (say, the collection was dropped): reopen.
                        Stop::Ended => {
                            self.interest.down();
                            log::warn!("the cluster event stream ended; reopening")
                        }
                        Stop::Failed(e) if history_lost(&e) => self.lost_history(&mut place, &e),
                        Stop::Failed(e) => {
                            self.interest.down();
                            log::warn!("the cluster event stream broke ({e}); resuming")
                        }
                        Stop::Interest(..) => unreachable!("matched above"),
                    }
                    self.metrics
                        .bus_restarts
                        .with_label_values(&["cluster"])
                        .inc();
                    self.interest.target()
                }
            };
            stream = loop {
                match open(&self.db, &place, self.patience(), &coverage).await {
                    Ok(opened) => {
                        self.skip_through = match &place {
                            Place::Event { time, token } => Some((*time, token.clone())),
                            _ => None,
                        };
                        // A stream opened from now pins "now" down at once: reopened to
                        // widen before it has read anything, it must go on from where this
                        // one started, not from a later now that skips what came between.
                        if let (Place::Now, Some(start)) = (&place, opened.resume_token()) {
                            place = Place::Token(start);
                        }
                        self.interest.opened(coverage.clone());
                        self.metrics
                            .bus_partitions
                            .set(coverage.partition_count() as i64);
                        // Subscribes that joined while no stream was open are taken in
                        // before anything is read, from the same place.
                        match self.interest.widening() {
                            None => break opened,
                            Some(wider) => {
                                self.metrics
                                    .bus_interest_changes
                                    .with_label_values(&["widen"])
                                    .inc();
                                coverage = wider;
                            }
                        }
                    }
                    Err(OpenError::HistoryLost(reason)) => {
                        self.lost_history(&mut place, &reason);
                    }
                    Err(e @ (OpenError::Unavailable(_) | OpenError::TimedOut(_))) => {
                        if let OpenError::TimedOut(_) = e {
                            self.ran_out_of_time().await;
                        }
                        let Unavailable(reason) = e.into();
                        // Subscribes join meanwhile only if the next stream resumes from a
                        // point before them; one from now makes them wait for it.
                        if !matches!(place, Place::Now) {
                            self.interest.down();
                        }
                        log::debug!("reopening the cluster event stream: {reason}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        // Subscribes may have come meanwhile.
                        coverage = self.interest.target();
                    }
                }
            };
            if broke {
                log::info!("the cluster event stream resumed");
            }
            backoff = Duration::from_millis(100);
        }
    }

    /// The stream cannot resume: events written while it was away are lost to this node.
    /// Its connections are told (the hub's [`stream_lost`](Hub::stream_lost)): subscribers
    /// of channels with history resubscribe and recover them from MongoDB; the rest hear
    /// what they missed.
    fn lost_history(&self, place: &mut Place, reason: &dyn std::fmt::Display) {
        // First: the next stream starts from now, so a subscribe from here on must wait for
        // it (one that joined before is in the hub, or finishes before its connection reads
        // the notice below, and is told to resubscribe).
        self.interest.lost();
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
        *place = Place::Now;
    }

    /// Delivers events until the stream fails or has to carry other partitions; keeps
    /// `place` at the last point handled. A getMore under way when the interest changes is
    /// dropped with the stream: whatever it held comes again from `place`.
    async fn follow(&mut self, stream: &mut Stream, place: &mut Place) -> Stop {
        let every = self.interest.narrowing_period();
        let mut narrow = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            // A server that stops answering (paused, cut off) must not hang the stream forever.
            let patience = self.patience() + MAX_AWAIT;
            let answer = {
                let next = tokio::time::timeout(patience, stream.next_if_any());
                let mut next = std::pin::pin!(next);
                loop {
                    tokio::select! {
                        answer = &mut next => break answer,
                        () = self.interest.wanted() => {
                            if let Some(coverage) = self.interest.widening() {
                                return Stop::Interest("widen", coverage);
                            }
                        }
                        _ = narrow.tick() => {
                            if let Some(coverage) = self.interest.narrowing() {
                                return Stop::Interest("narrow", coverage);
                            }
                        }
                    }
                }
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(_) => {
                    self.ran_out_of_time().await;
                    let e = Error::custom(format!("no answer within {patience:?}"));
                    return Stop::Failed(e);
                }
            };
            match answer {
                Ok(Some(change)) => {
                    self.answered();
                    match (change.cluster_time, token_data(&change.id)) {
                        (Some(time), Some(token)) => {
                            let delivered = self.already_delivered(time, &token);
                            *place = Place::Event { time, token };
                            if !delivered {
                                self.deliver(change);
                            }
                        }
                        // Every change event has both; were one without, its own token
                        // still resumes a stream with the same filter.
                        _ => {
                            if let Some(latest) = stream.resume_token() {
                                *place = Place::Token(latest);
                            }
                            self.deliver(change);
                        }
                    }
                }
                Ok(None) if !stream.is_alive() => return Stop::Ended,
                // An empty answer is an answer: the stream is alive, and the batch's end
                // token marks how far it has looked.
                Ok(None) => {
                    self.answered();
                    if let Some(latest) = stream.resume_token() {
                        *place = Place::Token(latest);
                    }
                }
                Err(e) => return Stop::Failed(e),
            }
        }
    }

    /// MongoDB answered a read within its patience: readiness hears of it, and the next read
    /// is held to the store's bound again.
    fn answered(&mut self) {
        self.health.answered();
        self.slow = 0;
    }

    /// Whether a stream reopened at an event's cluster time has not yet gone past that
    /// event: what it shows up to the event's token (tokens order as their `_data` strings
    /// do) was delivered before.
    fn already_delivered(&mut self, time: Timestamp, token: &str) -> bool {
        let Some((through_time, through_token)) = &self.skip_through else {
            return false;
        };
        if time == *through_time && token <= through_token.as_str() {
            return true;
        }
        self.skip_through = None;
        false
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
