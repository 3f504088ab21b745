//! Following `cluster_events` through a change stream and delivering each event to this
//! node's connections. The stream resumes from the last resume token after any break
//! (step-down, network cut, mongod restart), so nothing still in the oplog is missed; when the
//! token has fallen out of the oplog it logs an error, counts it, and goes on from now.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bson::{Document, doc};
use futures_util::FutureExt;
use mongodb::Collection;
use mongodb::change_stream::ChangeStream;
use mongodb::change_stream::event::{ChangeStreamEvent, ResumeToken};
use mongodb::error::{Error, ErrorKind};

use super::EventDocument;
use crate::db::Unavailable;
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

/// Opens a change stream of inserts, from `token` or from now, within `timeout`.
pub async fn open(
    events: &Collection<Document>,
    token: Option<ResumeToken>,
    timeout: Duration,
) -> Result<Stream, OpenError> {
    let watch = events
        .watch()
        .pipeline([doc! { "$match": { "operationType": "insert" } }])
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
    events: Collection<Document>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// The last event number delivered per publishing node: an event at or below it is a
    /// repeat (or a write that landed late) and is dropped, so each publisher's events reach
    /// connections once and in order.
    delivered: HashMap<String, i64>,
}

impl Follower {
    pub fn new(
        events: Collection<Document>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        timeout: Duration,
    ) -> Self {
        Follower {
            events,
            hub,
            metrics,
            timeout,
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
            self.metrics.cluster_stream_restarts.inc();
            stream = loop {
                match open(&self.events, token.clone(), self.timeout).await {
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

    fn lost_history(&self, token: &mut Option<ResumeToken>, reason: &dyn std::fmt::Display) {
        log::error!(
            "the cluster event stream cannot resume ({reason}): events written while it was \
             down are lost to this node; going on from now"
        );
        self.metrics.cluster_stream_history_lost.inc();
        // Publications were missed here: the history windows no longer hold them.
        self.hub.forget_windows();
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
                Ok(Some(change)) => self.deliver(change),
                Ok(None) if !stream.is_alive() => return None,
                Ok(None) => {}
                Err(e) => return Some(e),
            }
            if let Some(latest) = stream.resume_token() {
                *token = Some(latest);
            }
        }
    }

    fn deliver(&mut self, change: ChangeStreamEvent<Document>) {
        let Some(document) = change.full_document else {
            return;
        };
        let event = match bson::from_document::<EventDocument>(document) {
            Ok(event) => event,
            Err(e) => {
                log::warn!("skipping a malformed cluster event: {e}");
                self.metrics
                    .cluster_events_skipped
                    .with_label_values(&["malformed"])
                    .inc();
                return;
            }
        };
        let last = self.delivered.entry(event.node).or_insert(0);
        if event.n <= *last {
            self.metrics
                .cluster_events_skipped
                .with_label_values(&["repeat"])
                .inc();
            return;
        }
        *last = event.n;
        let lag_ms = bson::DateTime::now().timestamp_millis() - event.created_at.timestamp_millis();
        self.metrics
            .cluster_event_lag_seconds
            .observe(lag_ms.max(0) as f64 / 1000.0);
        self.metrics
            .cluster_events_delivered
            .with_label_values(&[event.event.kind()])
            .inc();
        event.event.deliver(&self.hub);
    }
}
