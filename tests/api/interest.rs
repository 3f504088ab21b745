//! Interest-based delivery (docs/SCALING.md): a node's change stream carries only the channel
//! partitions it has subscribers in, plus everything that is no channel's. A node pays
//! nothing for other channels' publications; a subscriber that joins while publications
//! flow gets every publication after its `subscribed`, and recovery the rest; nodes that
//! join and leave a channel's interest over and over lose and double nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ticketgate::channels::partition_of;
use tokio_tungstenite::tungstenite::Message;

use crate::channels::{ConfigFile, jwt_granting};
use crate::cluster::Cluster;
use crate::history_faults::NAMESPACES;
use crate::support::*;

fn start(count: usize, file: &ConfigFile) -> Cluster {
    tokio::task::block_in_place(|| {
        Cluster::start_with(
            &mongo_uri(),
            count,
            &[("CONFIG_FILE", file.path()), ("BUS_NARROW_SECS", "1")],
        )
    })
}

async fn metric(cluster: &Cluster, node: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
    let url = cluster.node(node).url("/metrics");
    metric_value(&scrape_metrics(&cluster.http, &url).await, name, labels)
}

/// Subscribes; the `subscribed` reply. Publications of other channels that come first are
/// put in `early`.
async fn subscribe_keeping(
    client: &mut WsClient,
    channel: &str,
    since: Option<(u64, &str)>,
    early: &mut Vec<Value>,
) -> Value {
    client.send_subscribe(channel, since).await;
    loop {
        let reply = client.next_json().await;
        if reply["type"] == "subscribed" {
            return reply;
        }
        assert_eq!(reply["type"], "publication", "{reply}");
        early.push(reply);
    }
}

async fn subscribe(client: &mut WsClient, channel: &str) -> Value {
    let mut early = Vec::new();
    let reply = subscribe_keeping(client, channel, None, &mut early).await;
    assert_eq!(early, Vec::<Value>::new());
    reply
}

/// `count` channel names in namespace `ns` whose partitions differ from `apart`'s and from
/// each other's.
fn channels_apart(ns: &str, apart: &[&str], count: usize) -> Vec<String> {
    let mut taken: Vec<u32> = apart.iter().map(|c| partition_of(c)).collect();
    let mut found = Vec::new();
    for i in 0.. {
        let channel = format!("{ns}:other-{i}");
        if !taken.contains(&partition_of(&channel)) {
            taken.push(partition_of(&channel));
            found.push(channel);
            if found.len() == count {
                break;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_only_the_channels_it_has_subscribers_in_and_every_broadcast() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(2, &file);
    let mut watcher = cluster
        .client_with(2, "bob", &jwt_granting("bob", &["plain:*", "feed:*"]))
        .await;
    subscribe(&mut watcher, "plain:mine").await;
    subscribe(&mut watcher, "feed:mine").await;
    assert_eq!(
        metric(&cluster, 2, "ticketgate_bus_partitions", &[]).await,
        2.0
    );
    assert_eq!(
        metric(&cluster, 1, "ticketgate_bus_partitions", &[]).await,
        0.0
    );
    // Thirty publications in channels nobody subscribes to, plain and with history, then
    // one in each of node 2's channels and a broadcast.
    let others = channels_apart("plain", &["plain:mine", "feed:mine"], 15);
    let histories = channels_apart("feed", &["plain:mine", "feed:mine"], 15);
    for channel in others.iter().chain(&histories) {
        let path = format!("/api/channels/{channel}/publish");
        let (status, body) = cluster.post(1, &path, json!({"data": "elsewhere"})).await;
        assert_eq!(status, 202, "{body}");
    }
    for channel in ["plain:mine", "feed:mine"] {
        let path = format!("/api/channels/{channel}/publish");
        let (status, body) = cluster.post(1, &path, json!({"data": "here"})).await;
        assert_eq!(status, 202, "{body}");
    }
    cluster.broadcast(1, json!("everyone")).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let message = watcher.next_json().await;
        got.push((message["type"].clone(), message["data"].clone()));
    }
    assert!(got.iter().all(|(_, data)| data != "elsewhere"), "{got:?}");
    // Node 2's stream carried its two publications and the broadcast; node 1, with no
    // subscriber, carried only the broadcast (and decoded none of the 32 publications).
    assert_eq!(delivered(&cluster, "publications").await, (0.0, 2.0));
    assert_eq!(delivered(&cluster, "broadcast").await, (1.0, 1.0));
}

/// How many cluster events of `kind` nodes 1 and 2 delivered from their streams.
async fn delivered(cluster: &Cluster, kind: &str) -> (f64, f64) {
    let mut counts = [0.0; 2];
    for (node, count) in counts.iter_mut().enumerate() {
        let url = cluster.node(node + 1).url("/metrics");
        let samples = scrape_metrics(&cluster.http, &url).await;
        let name = "ticketgate_cluster_events_delivered_total";
        *count = try_metric_value(&samples, name, &[("kind", kind)]).unwrap_or(0.0);
    }
    (counts[0], counts[1])
}

/// One round of publications made by the publisher task: its number, and when it began.
#[derive(Clone, Copy)]
struct Sent {
    i: u64,
    sent: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_that_come_and_go_while_publications_flow_lose_and_double_nothing() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = Arc::new(start(2, &file));
    // Node 1 publishes into a history channel and a plain one, one after the other, for as
    // long as the subscriber on node 2 comes and goes.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (cluster, sent, stop) = (Arc::clone(&cluster), Arc::clone(&sent), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let at = Instant::now();
                for channel in ["feed:flow", "plain:flow"] {
                    let path = format!("/api/channels/{channel}/publish");
                    let (status, body) = cluster.post(1, &path, json!({ "data": i })).await;
                    assert_eq!(status, 202, "{body}");
                }
                sent.lock().unwrap().push(Sent { i, sent: at });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            i
        })
    };
    // Node 2's stream is kept busy meanwhile (its resume token moves on every few
    // milliseconds), with a subscriber of another channel there and its own publisher.
    let mut busy = cluster
        .client_with(2, "dave", &jwt_granting("dave", &["plain:*"]))
        .await;
    subscribe(&mut busy, "plain:busy").await;
    // The number of the busy channel's last publication, once it is known: the reader looks
    // again when it is told, since the last publication may have come before it was.
    let (busy_last, mut last_known) = tokio::sync::watch::channel(None::<u64>);
    let busy_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            let last = *last_known.borrow_and_update();
            if last.is_some() && got.last() == last.as_ref() {
                break;
            }
            let frame = tokio::select! {
                frame = busy.next_frame_within(PATIENCE) => frame,
                _ = last_known.changed() => continue,
            };
            let text = match frame {
                Some(Message::Text(text)) => text,
                Some(_) => continue,
                None => panic!("the busy subscriber was dropped after {:?}", got.last()),
            };
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["type"] == "publication" {
                got.push(message["data"].as_u64().unwrap());
            }
        }
        got
    });
    let busy_publisher = {
        let (cluster, stop) = (Arc::clone(&cluster), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let path = "/api/channels/plain:busy/publish";
                let (status, body) = cluster.post(1, path, json!({ "data": n })).await;
                assert_eq!(status, 202, "{body}");
            }
            n
        })
    };
    let token = jwt_granting("carol", &["plain:*", "feed:*"]);
    let mut history: Vec<u64> = Vec::new();
    let mut position: Option<(u64, String)> = None;
    let rounds = 6;
    for round in 0..rounds {
        // Half the rounds on a fresh connection, half on the same one resubscribing.
        let mut client = cluster.client_with(2, "carol", &token).await;
        let since = position.as_ref().map(|(o, e)| (*o, e.as_str()));
        let mut early = Vec::new();
        subscribe_keeping(&mut client, "plain:flow", None, &mut early).await;
        let subscribed_at = Instant::now();
        let reply = subscribe_keeping(&mut client, "feed:flow", since, &mut early).await;
        if round > 0 {
            assert_eq!(reply["recovered"], true, "round {round}: {reply}");
        }
        let epoch = reply["epoch"].as_str().unwrap().to_owned();
        if round == 0 {
            history.extend(1..=reply["offset"].as_u64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Everything acknowledged so far must arrive: wait for the last one, in both channels.
        let last = sent
            .lock()
            .unwrap()
            .last()
            .copied()
            .expect("publications made");
        let mut plain: Vec<u64> = Vec::new();
        let mut feed_done = false;
        let mut early = early.into_iter();
        while !(feed_done && plain.last() >= Some(&last.i)) {
            let message = match early.next() {
                Some(message) => message,
                None => client.next_json().await,
            };
            assert_eq!(message["type"], "publication", "{message}");
            let n = message["data"].as_u64().unwrap();
            if message["channel"] == "feed:flow" {
                let offset = message["offset"].as_u64().unwrap();
                assert_eq!(message["epoch"], epoch.as_str());
                history.push(offset);
                feed_done = n >= last.i;
            } else {
                plain.push(n);
            }
        }
        // Plain: every publication sent after `subscribed` came, once, in order.
        let wanted: Vec<u64> = sent
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.sent > subscribed_at && s.i <= last.i)
            .map(|s| s.i)
            .collect();
        let after: Vec<u64> = plain
            .iter()
            .copied()
            .filter(|n| *n >= wanted.first().copied().unwrap_or(u64::MAX))
            .collect();
        assert_eq!(after, wanted, "round {round}: plain publications");
        assert!(plain.windows(2).all(|w| w[0] < w[1]), "{plain:?}");
        position = Some((*history.last().unwrap(), epoch));
        // Leave: by unsubscribing, or by closing the connection; then stay away long
        // enough for node 2's stream to drop the partitions (BUS_NARROW_SECS=1).
        if round % 2 == 0 {
            for channel in ["feed:flow", "plain:flow"] {
                client
                    .send_json(&json!({"type": "unsubscribe", "channel": channel}))
                    .await;
            }
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    let busy_sent = busy_publisher.await.unwrap();
    busy_last.send_replace(Some(busy_sent));
    let busy_got = busy_reader.await.unwrap();
    // The busy channel's subscriber got everything, once, in order, through every reopening
    // (a stream narrowed past the event its token names cannot resume after that token).
    let missing: Vec<u64> = (1..=busy_sent).filter(|n| !busy_got.contains(n)).collect();
    assert_eq!(missing, Vec::<u64>::new(), "{}", cluster.node(2).log());
    assert_eq!(busy_got, (1..=busy_sent).collect::<Vec<_>>());
    // History: every offset from the first to the last seen, once, in order, across the
    // comings and goings.
    let expected: Vec<u64> = (1..=*history.last().unwrap()).collect();
    assert_eq!(
        history,
        expected,
        "node 2's log:\n{}",
        cluster.node(2).log()
    );
    // Node 2's stream did widen and narrow, round after round.
    let name = "ticketgate_bus_interest_changes_total";
    let widened = metric(&cluster, 2, name, &[("change", "widen")]).await;
    let narrowed = metric(&cluster, 2, name, &[("change", "narrow")]).await;
    assert!(
        widened >= rounds as f64,
        "widened {widened} times in {rounds} rounds"
    );
    assert!(narrowed >= (rounds - 1) as f64, "narrowed {narrowed} times");
    let lost = metric(
        &cluster,
        2,
        "ticketgate_bus_history_lost_total",
        &[("stream", "cluster")],
    );
    assert_eq!(lost.await, 0.0, "{}", cluster.node(2).log());
}
