//! Faults that must lose nothing a history channel promised: a node killed under 200
//! subscribers while another keeps publishing, and mongod killed and restarted while
//! publications flow. Every acknowledged publication reaches every subscriber, once, in
//! offset order, and offsets stay contiguous. And a node whose change stream fell off the
//! oplog tells its connections so: history subscribers resubscribe and recover everything.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::channels::{ConfigFile, jwt_granting};
use crate::cluster::Cluster;
use crate::support::*;

/// A history namespace (`feed`) and a plain one (`plain`); interest.rs uses them too.
pub const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "feed"
history_size = 1000
history_ttl_secs = 600

[[channels.namespaces]]
name = "plain"
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
    client.send_subscribe(channel, since).await;
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

/// docs/PROTOCOL.md, "When a node loses its place": a node cut off from MongoDB (like a
/// network: nothing answers) while publications flow and the oplog rolls past the point
/// where its change stream stood cannot resume it. Its subscriber of a history channel is
/// told to resubscribe, does so with `since`, and recovers every publication it missed; its
/// channel without history, and the broadcasts, are named in one `missed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_stream_fell_off_the_oplog_has_its_subscribers_recover_everything() {
    let mongod = tokio::task::block_in_place(TestMongod::start_with_small_oplog);
    let link = CuttableLink::to(mongod.port).await;
    let cut_off = link.mongodb_uri();
    let file = ConfigFile::new(NAMESPACES);
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_on(&[&mongod.uri, &cut_off], &[("CONFIG_FILE", file.path())])
    });
    let publish = |channel: &'static str, n: u64| {
        let cluster = &cluster;
        async move {
            let path = format!("/api/channels/{channel}/publish");
            let (status, body) = cluster.post(1, &path, json!({ "data": n })).await;
            assert_eq!(status, 202, "{body}");
            body
        }
    };
    let mut alice = cluster
        .client_with(2, "alice", &jwt_granting("alice", &["feed:*", "plain:*"]))
        .await;
    for channel in ["feed:1", "plain:1"] {
        alice
            .send_json(&json!({ "type": "subscribe", "channel": channel }))
            .await;
        assert_eq!(alice.next_json().await["type"], "subscribed");
    }
    let first = publish("feed:1", 1).await;
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    let seen = alice.next_json().await;
    assert_eq!((&seen["offset"], &seen["data"]), (&json!(1), &json!(1)));

    link.cut();
    for n in 2..=6 {
        publish("feed:1", n).await;
    }
    publish("plain:1", 100).await;
    cluster.broadcast(1, json!("while cut off")).await;
    mongod.truncate_oplog().await;
    link.mend();

    let resubscribe = alice.next_json_within(Duration::from_secs(60)).await;
    assert_eq!(
        resubscribe,
        json!({ "type": "unsubscribed", "channel": "feed:1", "reason": "resubscribe" })
    );
    assert_eq!(
        alice.next_json().await,
        json!({ "type": "missed", "channels": ["plain:1"] })
    );
    cluster.node(2).wait_for_log("cannot resume").await;
    // As every client does: subscribe again from the last offset it had.
    alice
        .send_json(&json!({
            "type": "subscribe", "channel": "feed:1",
            "since": { "offset": 1, "epoch": epoch },
        }))
        .await;
    let subscribed = alice.next_json().await;
    assert_eq!(
        (&subscribed["type"], &subscribed["recovered"]),
        (&json!("subscribed"), &json!(true)),
        "{subscribed}"
    );
    let mut got = Vec::new();
    offsets_until(&mut alice, Some(6), &mut got).await;
    assert_eq!(got, [2, 3, 4, 5, 6], "everything missed, once, in order");
    // And it goes on live.
    publish("feed:1", 7).await;
    offsets_until(&mut alice, Some(7), &mut got).await;
    assert_eq!(got, [2, 3, 4, 5, 6, 7]);
    let lost = cluster
        .metric(
            2,
            "ticketgate_bus_history_lost_total",
            &[("stream", "cluster")],
        )
        .await;
    assert!(lost >= 1.0, "counted: {lost}");
    assert_eq!(
        cluster
            .metric(
                2,
                "ticketgate_bus_loss_notices_total",
                &[("notice", "missed")]
            )
            .await,
        lost,
        "one missed per loss for the one connection"
    );
}

/// Kills, on mongod, the cursors of the gateways named `app_names` (their change streams:
/// they hold no other cursor open), as an operator or a tool may; returns how many.
async fn kill_stream_cursors(uri: &str, app_names: &[String]) -> usize {
    use futures_util::TryStreamExt;
    use mongodb::bson::{Document, doc};
    let client = mongodb::Client::with_uri_str(uri).await.unwrap();
    let ops: Vec<Document> = client
        .database("admin")
        .aggregate([
            doc! { "$currentOp": { "allUsers": true, "idleCursors": true } },
            doc! { "$match": { "appName": { "$in": app_names }, "cursor.cursorId": { "$exists": true } } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut killed = 0;
    for op in ops {
        let (Ok(ns), Ok(cursor)) = (op.get_str("ns"), op.get_document("cursor")) else {
            continue;
        };
        let (Some((db, collection)), Ok(id)) = (ns.split_once('.'), cursor.get_i64("cursorId"))
        else {
            continue;
        };
        let answer = client
            .database(db)
            .run_command(doc! { "killCursors": collection, "cursors": [id] })
            .await
            .unwrap();
        killed += answer.get_array("cursorsKilled").map_or(0, Vec::len);
    }
    killed
}

/// docs/PROTOCOL.md, "Several nodes": the nodes' change-stream cursors killed on mongod
/// (`killCursors`) again and again while two nodes publish: each stream resumes from its
/// point, and every acknowledged publication reaches the subscribers on both nodes, once,
/// in order; no node says it lost its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_stream_cursors_resume_and_lose_no_publication() {
    let file = ConfigFile::new(NAMESPACES);
    let names: Vec<String> = (1..=2)
        .map(|i| format!("tg-kill{i}-{}", &unique_db_name()[3..]))
        .collect();
    let uris: Vec<String> = names
        .iter()
        .map(|name| with_app_name(&mongo_uri(), name))
        .collect();
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_on(&[&uris[0], &uris[1]], &[("CONFIG_FILE", file.path())])
    });
    let mut killed = 0;
    publish_through_a_fault(&cluster, "feed:killed", |n| {
        if n % 10 == 5 {
            killed += tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current()
                    .block_on(kill_stream_cursors(&mongo_uri(), &names))
            });
        }
    })
    .await;
    assert!(killed >= 6, "two cursors killed six times: {killed}");
    for node in 1..=2 {
        assert!(
            !cluster.node(node).log().contains("cannot resume"),
            "node {node} kept its place"
        );
    }
}

/// A stream reopened after a break first reads what was written meanwhile, which on a busy
/// mongod may take longer than `STORE_TIMEOUT_MS`; held to that bound, it would time out and
/// start over from the same point for ever, and the node would deliver nothing again. Here
/// every `aggregate` of one node takes 1.5 s against a 500 ms bound when its stream's cursor
/// is killed: the stream still reopens (its patience doubles while MongoDB answers pings) and
/// the next publication arrives. On a mongod of its own: `failCommand` is one fail point per
/// mongod, which the client suites' lost-place tests set on the shared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reopening_outlasts_the_store_bound_still_reopens() {
    use mongodb::bson::doc;
    let mongod = tokio::task::block_in_place(TestMongod::start);
    let file = ConfigFile::new(NAMESPACES);
    let name = "tg-slow";
    let uri = with_app_name(&mongod.uri, name);
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_on(
            &[&uri],
            &[("CONFIG_FILE", file.path()), ("STORE_TIMEOUT_MS", "500")],
        )
    });
    let mut client = cluster
        .client_with(1, "slow", &jwt_granting("slow", &["plain:*"]))
        .await;
    client.send_subscribe("plain:slow", None).await;
    let reply = client.next_json().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // From now on each of this node's aggregates is held 1.5 s.
    let admin = mongodb::Client::with_uri_str(&mongod.uri)
        .await
        .unwrap()
        .database("admin");
    admin
        .run_command(doc! {
            "configureFailPoint": "failCommand",
            "mode": "alwaysOn",
            "data": { "failCommands": ["aggregate"], "blockConnection": true,
                      "blockTimeMS": 1500, "appName": name },
        })
        .await
        .expect("a fail point (the tests' mongod enables test commands)");
    assert!(kill_stream_cursors(&mongod.uri, &[name.to_owned()]).await >= 1);
    let (status, body) = cluster
        .post(
            1,
            "/api/channels/plain:slow/publish",
            json!({ "data": "after" }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let publication = client.next_json_within(Duration::from_secs(30)).await;
    assert_eq!(publication["type"], "publication", "{publication}");
    assert_eq!(publication["data"], "after");
    assert!(
        !cluster.node(1).log().contains("cannot resume"),
        "{}",
        cluster.node(1).log()
    );
}
