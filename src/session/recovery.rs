//! Subscribing to a history channel with recovery: what the client missed after its `since`
//! comes from this node's window on the channel (kept by the hub), loaded from the history
//! store by the first subscriber that needs it while the others wait; older publications are
//! read for the one subscriber that needs them. This is the only place where a subscribe
//! waits on the store; the hub it drives never does.

use std::sync::Arc;
use std::time::Duration;

use crate::channels::{ChannelName, Grant, HistoryOptions};
use crate::db::Unavailable;
use crate::hub::{Delivery, Loaded, MAX_WINDOW, Membership, Older, Recover, StreamStep};
use crate::protocol;
use crate::store::{HistoryPage, HistoryQuery, HistoryStore};

/// How many times a subscribe to a history channel goes round (waiting for a window, reading
/// older publications) before it gives up as unavailable.
const MAX_JOIN_ATTEMPTS: usize = 60;
/// How long, and how many times, a subscribe waits for this node to catch up with an offset
/// the client has.
const BEHIND_WAIT: Duration = Duration::from_millis(50);
const MAX_BEHIND_WAITS: usize = 40;

/// Where a history channel's publications are read from, how many it keeps, and whether a
/// subscriber that recovers nothing is given the latest (`deliver_latest`).
pub struct HistorySource<'a> {
    pub store: &'a HistoryStore,
    pub options: HistoryOptions,
    pub deliver_latest: bool,
}

/// A subscription to a history channel, as it began.
#[derive(Debug)]
pub struct Joined {
    pub name: ChannelName,
    /// The channel's epoch and latest offset (unknown for a subscription held already whose
    /// window is not loaded here).
    pub position: Option<(Arc<str>, u64)>,
    /// Whether recovery, when asked for, recovered everything.
    pub recovered: Option<bool>,
    /// Reads of the store this subscribe made.
    pub reads: u32,
}

/// Subscribes `membership` to a history channel (or replaces the grant of a subscription held
/// already), recovering what the client missed after `recover`. The recovered publications
/// are queued before any live one. Returns the channel's position and whether the
/// subscription is new.
pub async fn subscribe_stream(
    membership: &mut Membership,
    channel: &ChannelName,
    grant: Grant,
    mut recover: Recover,
    history: &HistorySource<'_>,
) -> Result<(Joined, bool), Unavailable> {
    if membership.holds(channel.as_str()) {
        let (name, _) = membership.subscribe(channel, grant);
        let position = membership.position(name.as_str());
        let joined = Joined {
            name,
            position,
            recovered: None,
            reads: 0,
        };
        return Ok((joined, false));
    }
    let mut reads = 0;
    let mut older: Option<Older> = None;
    let mut behind = 0;
    for _ in 0..MAX_JOIN_ATTEMPTS {
        let wanted = (&recover, history.deliver_latest);
        match membership.join_stream(channel, &grant, wanted, older.as_ref()) {
            StreamStep::Joined {
                name,
                epoch,
                offset,
                recovered,
            } => {
                let joined = Joined {
                    name,
                    position: Some((epoch, offset)),
                    recovered,
                    reads,
                };
                return Ok((joined, true));
            }
            StreamStep::Wait(mut loaded) => {
                // Woken when the loader settles the window (or gives up).
                let _ = loaded.changed().await;
            }
            StreamStep::Load(loading) => {
                reads += 1;
                let capacity = (history.options.size as usize).min(MAX_WINDOW);
                let query = HistoryQuery::Latest { limit: capacity };
                // A failed read drops `loading` unsettled, which lets the waiting go on.
                let page = history.store.read(channel, history.options, query).await?;
                loading.settle(Loaded {
                    epoch: Arc::from(page.top.epoch.as_str()),
                    top: page.top.offset,
                    publications: deliveries_of(channel, &page),
                    capacity,
                });
            }
            StreamStep::Older { before } => {
                let Recover::From { offset, .. } = recover else {
                    recover = Recover::Failed;
                    continue;
                };
                reads += 1;
                let query = HistoryQuery::Since {
                    offset,
                    limit: usize::try_from(before.saturating_sub(offset + 1))
                        .unwrap_or(usize::MAX)
                        .max(1),
                };
                let page = history.store.read(channel, history.options, query).await?;
                if !page.holds_all_after(offset) {
                    recover = Recover::Failed;
                    continue;
                }
                older = Some(Older {
                    publications: deliveries_of(channel, &page),
                    epoch: page.top.epoch,
                });
            }
            StreamStep::Behind => {
                // Another node delivered an offset this one has not yet: its change stream is
                // a moment behind. Past a while, the client's offset is taken as one this
                // history never had.
                behind += 1;
                if behind >= MAX_BEHIND_WAITS {
                    recover = Recover::Failed;
                } else {
                    tokio::time::sleep(BEHIND_WAIT).await;
                }
            }
        }
    }
    Err(Unavailable(format!(
        "subscribing to {channel} did not settle"
    )))
}

/// A page of stored publications as deliveries, encoded as live ones are.
fn deliveries_of(channel: &ChannelName, page: &HistoryPage) -> Vec<(u64, Delivery)> {
    page.publications
        .iter()
        .filter_map(|publication| {
            let Ok(data) = serde_json::value::RawValue::from_string(publication.data.clone())
            else {
                log::warn!("a stored publication in {channel} is not JSON; skipped");
                return None;
            };
            let position = Some((publication.offset, page.top.epoch.as_str()));
            let message = protocol::publication(channel.as_str(), position, &data);
            Some((publication.offset, Delivery::new(message, None)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{Hub, Inbound};
    use crate::limits::ConnectionLimits;
    use crate::store::MemoryHistory;

    /// A publication of `n` into `channel`'s in-process history, delivered as the bus would.
    fn publish_numbered(hub: &Hub, history: &MemoryHistory, channel: &str, n: u64) -> u64 {
        let top = history.append(channel, HISTORY, &n.to_string());
        hub.publish_stream(channel, top.offset, &top.epoch, || format!("p{n}").into());
        top.offset
    }

    const HISTORY: HistoryOptions = HistoryOptions {
        size: 5,
        ttl_secs: 60,
    };

    /// What a recovering member was given, then what it gets live, as offsets.
    async fn offsets_received(member: &mut Membership, live: usize) -> Vec<u64> {
        let mut offsets = Vec::new();
        let number = |d: &Delivery| -> u64 {
            let text = d.message.to_string();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            json["offset"]
                .as_u64()
                .unwrap_or_else(|| text.trim_start_matches('p').parse().unwrap())
        };
        let mut got_live = 0;
        while got_live < live {
            match member.next().await.unwrap() {
                Inbound::Recovered(recovered) => offsets.extend(recovered.iter().map(number)),
                Inbound::Delivery(delivery) => {
                    offsets.push(number(&delivery));
                    got_live += 1;
                }
                Inbound::Control(control) => panic!("a control: {control:?}"),
            }
        }
        offsets
    }

    #[tokio::test]
    async fn a_subscriber_recovers_from_the_window_then_goes_on_live_in_order() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let history = Arc::new(MemoryHistory::default());
        let store = HistoryStore::Memory(Arc::clone(&history));
        let source = HistorySource {
            store: &store,
            options: HISTORY,
            deliver_latest: false,
        };
        let channel = ChannelName::parse("feed:a").unwrap();
        for n in 1..=3 {
            publish_numbered(&hub, &history, "feed:a", n);
        }
        let epoch = history
            .read("feed:a", HISTORY, HistoryQuery::Latest { limit: 1 })
            .top
            .epoch;

        // The first subscriber loads the window (one read) and recovers 2 and 3.
        let conn = hub
            .try_open("alice", crate::hub::TransportKind::WebSocket)
            .unwrap();
        let mut alice = hub.join(&conn, None);
        let from = |offset| Recover::From {
            epoch: epoch.clone(),
            offset,
        };
        let (joined, new) = subscribe_stream(&mut alice, &channel, Grant::Server, from(1), &source)
            .await
            .unwrap();
        assert!(new);
        assert_eq!((joined.recovered, joined.reads), (Some(true), 1));
        assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(3));
        publish_numbered(&hub, &history, "feed:a", 4);
        assert_eq!(offsets_received(&mut alice, 1).await, [2, 3, 4]);

        // The next recovers from the window this node now keeps: no read.
        let conn = hub
            .try_open("bob", crate::hub::TransportKind::WebSocket)
            .unwrap();
        let mut bob = hub.join(&conn, None);
        let (joined, _) = subscribe_stream(&mut bob, &channel, Grant::Server, from(2), &source)
            .await
            .unwrap();
        assert_eq!((joined.recovered, joined.reads), (Some(true), 0));
        publish_numbered(&hub, &history, "feed:a", 5);
        assert_eq!(offsets_received(&mut bob, 1).await, [3, 4, 5]);

        // Trimmed away (history_size 5), another epoch, an offset never given: not recovered.
        for n in 6..=9 {
            publish_numbered(&hub, &history, "feed:a", n);
        }
        for (recover, expected) in [
            (from(2), Some(false)),
            (from(3), Some(false)),
            (from(4), Some(true)),
            (
                Recover::From {
                    epoch: "other".into(),
                    offset: 8,
                },
                Some(false),
            ),
            (Recover::No, None),
        ] {
            let conn = hub
                .try_open("carol", crate::hub::TransportKind::WebSocket)
                .unwrap();
            let mut carol = hub.join(&conn, None);
            let (joined, _) = subscribe_stream(
                &mut carol,
                &channel,
                Grant::Server,
                recover.clone(),
                &source,
            )
            .await
            .unwrap();
            assert_eq!(joined.recovered, expected, "{recover:?}");
            assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(9));
        }
    }

    #[tokio::test]
    async fn deliver_latest_gives_a_subscriber_that_recovers_nothing_the_latest_first() {
        let hub = Hub::new(ConnectionLimits::UNLIMITED);
        let history = Arc::new(MemoryHistory::default());
        let store = HistoryStore::Memory(Arc::clone(&history));
        let source = HistorySource {
            store: &store,
            options: HISTORY,
            deliver_latest: true,
        };
        let channel = ChannelName::parse("price:a").unwrap();
        let member = |user: &str| {
            let conn = hub
                .try_open(user, crate::hub::TransportKind::WebSocket)
                .unwrap();
            hub.join(&conn, None)
        };

        // An empty channel has no latest: nothing comes before the first live publication.
        let mut early = member("early");
        let (joined, _) =
            subscribe_stream(&mut early, &channel, Grant::Server, Recover::No, &source)
                .await
                .unwrap();
        assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(0));
        for n in 1..=3 {
            publish_numbered(&hub, &history, "price:a", n);
        }
        assert_eq!(offsets_received(&mut early, 3).await, [1, 2, 3]);
        let epoch = history
            .read("price:a", HISTORY, HistoryQuery::Latest { limit: 1 })
            .top
            .epoch;

        // No `since`, and a `since` that cannot recover (another epoch): the latest, told as
        // the position just before it; then live.
        for (user, recover, recovered, top) in [
            ("plain", Recover::No, None, 3),
            (
                "lost",
                Recover::From {
                    epoch: "other".into(),
                    offset: 1,
                },
                Some(false),
                4,
            ),
        ] {
            let mut late = member(user);
            let (joined, _) =
                subscribe_stream(&mut late, &channel, Grant::Server, recover, &source)
                    .await
                    .unwrap();
            assert_eq!(joined.recovered, recovered, "{user}");
            assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(top - 1));
            publish_numbered(&hub, &history, "price:a", top + 1);
            assert_eq!(
                offsets_received(&mut late, 1).await,
                [top, top + 1],
                "{user}"
            );
        }

        // A `since` that recovers gets the gap only.
        let mut back = member("back");
        let from = Recover::From { epoch, offset: 3 };
        let (joined, _) = subscribe_stream(&mut back, &channel, Grant::Server, from, &source)
            .await
            .unwrap();
        assert_eq!(joined.recovered, Some(true));
        assert_eq!(joined.position.as_ref().map(|(_, o)| *o), Some(5));
        publish_numbered(&hub, &history, "price:a", 6);
        assert_eq!(offsets_received(&mut back, 1).await, [4, 5, 6]);
    }
}
