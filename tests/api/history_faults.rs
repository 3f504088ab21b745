//! Faults that must lose nothing a history channel promised: a node killed under 200
//! subscribers while another keeps publishing, and mongod killed and restarted while
//! publications flow. Every acknowledged publication reaches every subscriber, once, in
//! offset order, and offsets stay contiguous.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::channels::{ConfigFile, jwt_granting};
use crate::cluster::Cluster;
use crate::support::*;
use ticketgate_client::protocol::{ClientMessage, Position};

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "feed"
history_size = 1000
history_ttl_secs = 600
"#;

fn start(uri: &str, count: usize, file: &ConfigFile) -> Cluster {
    tokio::task::block_in_place(|| Cluster::start_with(uri, count, &[("CONFIG_FILE", file.path())]))
}

/// A subscriber of `channel` on `node`, from `since` when given; the `subscribed` reply.
async fn subscriber(
    cluster: &Cluster,
    node: usize,
    sub: &str,
    channel: &str,
    since: Option<(u64, &str)>,
) -> (WsClient, Value) {
    let mut client = cluster
        .client_with(node, sub, &jwt_granting(sub, &["feed:*"]))
        .await;
    let since = since.map(|(offset, epoch)| Position {
        offset,
        epoch: epoch.to_owned(),
    });
    client
        .send_message(&ClientMessage::Subscribe {
            id: None,
            channel: channel.to_owned(),
            since,
            token: None,
        })
        .await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    (client, reply)
}

/// Reads publications' offsets until the connection drops, or until `last` is reached.
async fn offsets_until(client: &mut WsClient, last: Option<u64>, got: &mut Vec<u64>) {
    loop {
        if last.is_some_and(|last| got.last().is_some_and(|o| *o >= last)) {
            return;
        }
        let frame = match tokio::time::timeout(PATIENCE, client.stream.next()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(ending) => {
                assert!(
                    last.is_none(),
                    "the connection ended ({ending:?}) at {:?}",
                    got.last()
                );
                return;
            }
            Err(_) => panic!("no publication within {PATIENCE:?}; had {:?}", got.last()),
        };
        if let Message::Close(frame) = &frame {
            assert!(last.is_none(), "closed: {frame:?} at {:?}", got.last());
            return;
        }
        if let Message::Text(text) = frame {
            let message: Value = serde_json::from_str(&text).unwrap();
            if message["type"] == "publication" {
                got.push(message["offset"].as_u64().unwrap());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_of_a_killed_node_recover_everything_on_the_others() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(&mongo_uri(), 3, &file);
    let subscribers = 200;
    let mut clients = Vec::new();
    let mut epoch = String::new();
    for i in 0..subscribers {
        let (client, reply) = subscriber(&cluster, 1, &format!("user{i}"), "feed:kill", None).await;
        epoch = reply["epoch"].as_str().unwrap().to_owned();
        clients.push(client);
    }
    // Every subscriber reads on its own task until its connection drops.
    let followers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                offsets_until(&mut client, None, &mut got).await;
                got
            })
        })
        .collect();
    let total = 150_u64;
    let publisher = {
        let cluster = &cluster;
        async move {
            let mut acknowledged = Vec::new();
            for n in 1..=total {
                let (status, body) = cluster
                    .post(2, "/api/channels/feed:kill/publish", json!({ "data": n }))
                    .await;
                assert_eq!(status, 202, "{body}");
                acknowledged.push(body["offset"].as_u64().unwrap());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acknowledged
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.node(1).signal("KILL");
    };
    let (acknowledged, ()) = tokio::join!(publisher, killer);
    assert_eq!(acknowledged, (1..=total).collect::<Vec<_>>());

    let mut recovered_from_the_middle = 0;
    let mut back = Vec::new();
    for (i, follower) in followers.into_iter().enumerate() {
        let mut got = follower.await.unwrap();
        assert!(
            got.iter().copied().eq(1..=got.len() as u64),
            "before the kill: {got:?}"
        );
        let since = got.last().copied().unwrap_or(0);
        if since > 0 && since < total {
            recovered_from_the_middle += 1;
        }
        // Back on node 2 or 3, as a client's reconnect would land.
        let node = 2 + i % 2;
        let (mut client, reply) = subscriber(
            &cluster,
            node,
            &format!("user{i}"),
            "feed:kill",
            Some((since, &epoch)),
        )
        .await;
        assert_eq!(reply["recovered"], true, "{reply}");
        offsets_until(&mut client, Some(total), &mut got).await;
        assert_eq!(got, (1..=total).collect::<Vec<_>>(), "subscriber {i}");
        // Still subscribed, as a reconnected client stays.
        back.push(client);
    }
    assert!(
        recovered_from_the_middle > 0,
        "the kill landed while publications flowed"
    );
    // Each surviving node read the channel's window from MongoDB about once, not once per
    // recovering subscriber.
    for node in 2..=3 {
        let reads = cluster
            .metric(node, "ticketgate_history_reads_total", &[])
            .await;
        assert!(
            reads <= 5.0,
            "node {node}: {reads} reads for 100 recoveries"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongod_restart_while_publishing_loses_no_acknowledged_publication() {
    let mut mongod = tokio::task::block_in_place(TestMongod::start);
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(&mongod.uri, 2, &file);
    let refused = publish_through_a_fault(&cluster, "feed:outage", |n| {
        if n == 20 {
            tokio::task::block_in_place(|| mongod.stop());
        }
        if n == 25 {
            tokio::task::block_in_place(|| mongod.restart());
        }
    })
    .await;
    assert!(refused > 0, "the outage refused some publications");
}

/// A three-member replica set whose primary steps down while two nodes publish: another
/// member is elected, and every publication acknowledged (with write concern majority) is
/// still there, at its offset, and reached the subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_step_down_while_publishing_loses_no_acknowledged_publication() {
    let set = tokio::task::block_in_place(TestReplicaSet::start);
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(&set.uri, 2, &file);
    let mut stepped_down = None;
    let refused = publish_through_a_fault(&cluster, "feed:failover", |n| {
        if n == 20 {
            stepped_down = Some(tokio::task::block_in_place(|| set.step_down_primary()));
        }
    })
    .await;
    let old = stepped_down.unwrap();
    let new = tokio::task::block_in_place(|| set.primary_port());
    assert_ne!(old, new, "another member was elected");
    eprintln!("step-down: {refused} publications refused during the election, none lost");
}

/// Publishes 60 acknowledged publications into `channel` through two nodes in turn, calling
/// `fault(n)` before the n-th attempt, then checks the stored history and two subscribers
/// that stayed connected throughout. Returns how many attempts were refused (503).
async fn publish_through_a_fault(
    cluster: &Cluster,
    channel: &str,
    mut fault: impl FnMut(u64),
) -> u64 {
    // Two subscribers that stay connected throughout, reading (and so answering pings) on
    // their own tasks until they are told the last offset.
    let (last_offset, told) = tokio::sync::watch::channel(None::<u64>);
    let mut watchers = Vec::new();
    for node in 1..=2 {
        let (mut client, _) = subscriber(cluster, node, "watcher", channel, None).await;
        let mut told = told.clone();
        watchers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                if told.borrow().is_some_and(|last| got.last() >= Some(&last)) {
                    return got;
                }
                let frame = tokio::select! {
                    frame = client.stream.next() => frame,
                    _ = told.changed() => continue,
                };
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => panic!("the connection ended ({other:?}) at {:?}", got.last()),
                };
                let message: Value = serde_json::from_str(&text).unwrap();
                if message["type"] == "publication" {
                    got.push(message["offset"].as_u64().unwrap());
                }
            }
        }));
    }
    let path = format!("/api/channels/{channel}/publish");
    let mut acknowledged: Vec<(u64, u64)> = Vec::new();
    let mut refused = 0;
    let mut n = 0;
    let started = Instant::now();
    while acknowledged.len() < 60 {
        n += 1;
        fault(n);
        let node = 1 + (n % 2) as usize;
        let (status, body) = cluster.post(node, &path, json!({ "data": n })).await;
        match status {
            202 => acknowledged.push((n, body["offset"].as_u64().unwrap())),
            503 => refused += 1,
            other => panic!("{other}: {body}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "publishing never came back"
        );
    }
    let epoch_page = cluster
        .get(1, &format!("/api/channels/{channel}/history?limit=1000"))
        .await;
    let latest = epoch_page["offset"].as_u64().unwrap();

    // The stored history: contiguous offsets, every acknowledged publication at the offset
    // it was given, none twice.
    let stored: Vec<(u64, u64)> = epoch_page["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["offset"].as_u64().unwrap(), p["data"].as_u64().unwrap()))
        .collect();
    assert!(
        stored.iter().map(|(o, _)| *o).eq(1..=latest),
        "contiguous: {stored:?}"
    );
    let data: Vec<u64> = stored.iter().map(|(_, d)| *d).collect();
    assert_eq!(
        data.iter().collect::<HashSet<_>>().len(),
        data.len(),
        "none twice"
    );
    for (n, offset) in &acknowledged {
        assert_eq!(
            stored[*offset as usize - 1],
            (*offset, *n),
            "acknowledged {n}"
        );
    }

    // The subscribers that stayed connected got all of it, in order.
    last_offset.send_replace(Some(latest));
    for watcher in watchers {
        let got = tokio::time::timeout(PATIENCE, watcher)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (1..=latest).collect::<Vec<_>>());
    }
    refused
}
