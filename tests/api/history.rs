//! History and recovery (docs/PROTOCOL.md, "History and recovery"): offsets and epochs on
//! publications and in the publish answers, the history API, recovery on subscribe, on one
//! node (both stores) and across nodes on a replica set, with concurrent publishers, a
//! client that moves to another node, and a history that expires.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::channels::{ConfigFile, jwt_granting};
use crate::cluster::Cluster;
use crate::support::*;

const API_KEY: &str = "history-api-key-0123456789";

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "feed"
history_size = 20
history_ttl_secs = 600

[[channels.namespaces]]
name = "brief"
history_size = 20
history_ttl_secs = 2

[[channels.namespaces]]
name = "deep"
history_size = 10000
history_ttl_secs = 60

[[channels.namespaces]]
name = "tiny"
history_size = 2
history_ttl_secs = 600

[[channels.namespaces]]
name = "plain"

[[channels.namespaces]]
name = "state"
history_size = 3
history_ttl_secs = 600
deliver_latest = true
"#;

async fn app(store: Store, file: &ConfigFile) -> TestApp {
    spawn_app(store, &[("API_KEY", API_KEY), ("CONFIG_FILE", file.path())]).await
}

async fn feed_client(app: &TestApp, sub: &str) -> WsClient {
    let mut client = app.connect(&app.ticket(sub).await).await;
    client
        .send_json(
            &json!({"type": "jwt", "token": jwt_granting(sub, &["feed:*", "plain:*", "brief:*", "deep:*"])}),
        )
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
}

async fn publish(app: &TestApp, channel: &str, data: Value) -> Value {
    let path = format!("/api/channels/{channel}/publish");
    let (status, body) = app
        .call_api(
            API_KEY,
            reqwest::Method::POST,
            &path,
            Some(json!({ "data": data })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    body
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    app.call_api(API_KEY, reqwest::Method::GET, path, None)
        .await
}

/// Sends a subscribe and returns the reply.
async fn subscribe(client: &mut WsClient, channel: &str, since: Option<(u64, &str)>) -> Value {
    let mut request = json!({"type": "subscribe", "channel": channel});
    if let Some((offset, epoch)) = since {
        request["since"] = json!({"offset": offset, "epoch": epoch});
    }
    client.send_json(&request).await;
    client.next_json().await
}

/// The next `n` publications' (offset, data).
async fn publications(client: &mut WsClient, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::new();
    while got.len() < n {
        let message = client.next_json().await;
        assert_eq!(message["type"], "publication", "{message}");
        got.push((message["offset"].as_u64().unwrap(), message["data"].clone()));
    }
    got
}

async fn numbered_publications_and_recovery_on_one_node(store: Store) {
    let file = ConfigFile::new(NAMESPACES);
    let app = app(store, &file).await;

    // A channel without publications has an epoch already, which its first keeps.
    let mut alice = feed_client(&app, "alice").await;
    let first = subscribe(&mut alice, "feed:a", None).await;
    assert_eq!(first["type"], "subscribed");
    assert_eq!(first["offset"], 0);
    let epoch = first["epoch"].as_str().unwrap().to_owned();
    assert!(first.get("recovered").is_none(), "{first}");
    for n in 1..=3 {
        let answer = publish(&app, "feed:a", json!(n)).await;
        assert_eq!(
            (answer["offset"].as_u64(), answer["epoch"].as_str()),
            (Some(n), Some(&*epoch))
        );
    }
    let live = publications(&mut alice, 3).await;
    assert_eq!(live, [(1, json!(1)), (2, json!(2)), (3, json!(3))]);

    // Gone for a while: 4..=8 are missed, then recovered in order, then live again.
    drop(alice);
    for n in 4..=8 {
        publish(&app, "feed:a", json!(n)).await;
    }
    let mut back = feed_client(&app, "alice").await;
    let reply = subscribe(&mut back, "feed:a", Some((3, &epoch))).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": "feed:a", "recovered": true, "offset": 8, "epoch": epoch})
    );
    publish(&app, "feed:a", json!(9)).await;
    let got = publications(&mut back, 6).await;
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [4, 5, 6, 7, 8, 9]
    );
    assert_eq!(got[0].1, json!(4));
    back.expect_silence(Duration::from_millis(200)).await;

    // Another epoch, or an offset this history never gave: not recovered, live from now.
    let mut other = feed_client(&app, "bob").await;
    let reply = subscribe(&mut other, "feed:a", Some((2, "not-this-one"))).await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(false), Some(9))
    );
    other.expect_silence(Duration::from_millis(200)).await;
    // Trimmed: history_size 20 keeps 12..=31 after 31 publications.
    for n in 10..=31 {
        publish(&app, "feed:a", json!(n)).await;
    }
    let mut late = feed_client(&app, "carol").await;
    let reply = subscribe(&mut late, "feed:a", Some((10, &epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    let reply = subscribe(&mut late, "feed:b", Some((0, &epoch))).await;
    assert_eq!(
        reply["recovered"], false,
        "another channel's epoch: {reply}"
    );

    // The history API: newest by default, `since` pages forward, limits checked.
    let (status, page) = get(&app, "/api/channels/feed:a/history?limit=3").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["epoch"], json!(epoch));
    assert_eq!(page["offset"], 31);
    assert_eq!(
        page["publications"],
        json!([{"offset": 29, "data": 29}, {"offset": 30, "data": 30}, {"offset": 31, "data": 31}])
    );
    let (_, page) = get(&app, "/api/channels/feed:a/history?since=5&limit=2").await;
    assert_eq!(
        page["publications"],
        json!([{"offset": 12, "data": 12}, {"offset": 13, "data": 13}])
    );
    let (_, page) = get(&app, "/api/channels/feed:a/history?since=30").await;
    assert_eq!(page["publications"], json!([{"offset": 31, "data": 31}]));
    let (_, page) = get(&app, "/api/channels/feed:a/history").await;
    assert_eq!(page["publications"].as_array().unwrap().len(), 20);
    for (path, status, code) in [
        (
            "/api/channels/feed:a/history?limit=1001",
            400,
            "bad_request",
        ),
        ("/api/channels/feed:a/history?limit=0", 400, "bad_request"),
        ("/api/channels/feed:a/history?since=-1", 400, "bad_request"),
        ("/api/channels/plain:a/history", 404, "history_disabled"),
        ("/api/channels/nope:a/history", 400, "unknown_namespace"),
    ] {
        let (got, body) = get(&app, path).await;
        assert_eq!(
            (got, body["error"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }

    // Publishing: many channels answer each history channel's place; data too large for
    // the history's share of a document is 413.
    let mut pat = feed_client(&app, "pat").await;
    for channel in ["plain:x", "feed:b"] {
        assert_eq!(
            subscribe(&mut pat, channel, None).await["type"],
            "subscribed"
        );
    }
    let (status, body) = app
        .call_api(
            API_KEY,
            reqwest::Method::POST,
            "/api/publish",
            Some(json!({"channels": ["plain:x", "feed:a", "feed:b"], "data": "many"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let places: Vec<(String, u64)> = body["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["channel"].as_str().unwrap().to_owned(),
                p["offset"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        places,
        [("feed:a".to_owned(), 32), ("feed:b".to_owned(), 1)]
    );
    // One publication into channels with and without history reaches both: the one numbered,
    // the other not.
    let mut both = [pat.next_json().await, pat.next_json().await];
    both.sort_by_key(|m| m["channel"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        both,
        [
            json!({"type": "publication", "channel": "feed:b", "offset": 1, "epoch": both[0]["epoch"], "data": "many"}),
            json!({"type": "publication", "channel": "plain:x", "data": "many"}),
        ]
    );
    assert!(both[0]["epoch"].is_string(), "{}", both[0]);
    // deep: history_size 10000 (15,000 at most between trims) leaves 15 MiB / 15000 = 1048
    // bytes a publication.
    let big = "x".repeat(1100);
    let (status, body) = app
        .call_api(
            API_KEY,
            reqwest::Method::POST,
            "/api/channels/deep:a/publish",
            Some(json!({ "data": big })),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("publication_too_large")),
        "{body}"
    );
    // Trimming is real: a channel keeps history_size publications, and up to half as many
    // again between trims.
    for n in 1..=100 {
        publish(&app, "feed:trimmed", json!(n)).await;
    }
    let (_, page) = get(
        &app,
        "/api/channels/feed:trimmed/history?since=0&limit=1000",
    )
    .await;
    let kept = page["publications"].as_array().unwrap();
    assert!((20..=30).contains(&kept.len()), "{} kept", kept.len());
    assert_eq!(kept.last().unwrap()["offset"], 100);
    // A long recovery (more than one write's worth of frames) arrives whole and in order.
    let mut reader = feed_client(&app, "dora").await;
    let start = subscribe(&mut reader, "deep:long", None).await;
    let deep_epoch = start["epoch"].as_str().unwrap().to_owned();
    drop(reader);
    for n in 1..=150 {
        publish(&app, "deep:long", json!(n)).await;
    }
    let mut reader = feed_client(&app, "dora").await;
    let reply = subscribe(&mut reader, "deep:long", Some((0, &deep_epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let got = publications(&mut reader, 150).await;
    assert_eq!(got, (1..=150).map(|n| (n, json!(n))).collect::<Vec<_>>());
    // A namespace without history numbers nothing.
    let plain = publish(&app, "plain:x", json!(1)).await;
    assert!(plain.get("offset").is_none(), "{plain}");
}

#[tokio::test]
async fn numbered_publications_and_recovery_in_process() {
    numbered_publications_and_recovery_on_one_node(Store::Memory).await;
}

#[tokio::test]
async fn numbered_publications_and_recovery_on_mongodb() {
    numbered_publications_and_recovery_on_one_node(Store::Mongo).await;
}

fn start_cluster(mongod_uri: &str, count: usize, file: &ConfigFile) -> Cluster {
    tokio::task::block_in_place(|| {
        Cluster::start_with(mongod_uri, count, &[("CONFIG_FILE", file.path())])
    })
}

async fn cluster_client(cluster: &Cluster, node: usize, sub: &str) -> WsClient {
    cluster
        .client_with(
            node,
            sub,
            &jwt_granting(sub, &["feed:*", "brief:*", "tiny:*"]),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_three_nodes_get_contiguous_offsets_delivered_in_order() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start_cluster(&mongo_uri(), 3, &file);
    let mut watchers = Vec::new();
    for node in 1..=3 {
        let mut client = cluster_client(&cluster, node, "watcher").await;
        let reply = subscribe(&mut client, "feed:race", None).await;
        assert_eq!(reply["offset"], 0, "{reply}");
        watchers.push(client);
    }
    // Three publishers, one per node, 40 publications each, all at once.
    let per_node = 40;
    let publishers = (1..=3).map(|node| {
        let cluster = &cluster;
        async move {
            let mut offsets = Vec::new();
            for i in 0..per_node {
                let (status, body) = cluster
                    .post(
                        node,
                        "/api/channels/feed:race/publish",
                        json!({"data": {"node": node, "i": i}}),
                    )
                    .await;
                assert_eq!(status, 202, "{body}");
                offsets.push(body["offset"].as_u64().unwrap());
            }
            offsets
        }
    });
    let answered: Vec<Vec<u64>> = futures_util::future::join_all(publishers).await;
    let mut all: Vec<u64> = answered.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=3 * per_node as u64).collect::<Vec<_>>(),
        "contiguous and unique"
    );
    for offsets in &answered {
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "each publisher's rise: {offsets:?}"
        );
    }
    // The nodes took turns: each found the channel moved by the others, and appended again.
    let mut moved = 0.0;
    for node in 1..=3 {
        moved += cluster
            .metric(node, "ticketgate_history_appends_moved_total", &[])
            .await;
    }
    assert!(moved >= 1.0, "no node found the channel moved");
    // Every node delivers every publication once, in offset order.
    for watcher in &mut watchers {
        let got = publications(watcher, 3 * per_node).await;
        let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, (1..=3 * per_node as u64).collect::<Vec<_>>());
        watcher.expect_silence(Duration::from_millis(200)).await;
    }
}

/// A node's bus writer appends a batch's publications to their histories while it inserts its
/// other events, and starts the next batch only when both are done. Were a later batch to
/// become visible first, the other nodes would drop the earlier one's events as repeats (they
/// pass each publisher's event numbers in order), or see a channel's offsets out of order:
/// this floods one node with publications into many channels, and broadcasts between them,
/// and checks that another node delivers every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_overlapping_batches_reach_the_other_nodes_whole_and_in_order() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start_cluster(&mongo_uri(), 2, &file);
    let (channels, per_channel) = (50_usize, 20_u64);
    let mut watcher = cluster_client(&cluster, 2, "watcher").await;
    for c in 0..channels {
        let reply = subscribe(&mut watcher, &format!("feed:lane{c}"), None).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
    // Each channel's publisher publishes its twenty one after the other; the fifty publishers
    // and a broadcaster run at once.
    let publishers = (0..channels).map(|c| {
        let cluster = &cluster;
        async move {
            for i in 1..=per_channel {
                let path = format!("/api/channels/feed:lane{c}/publish");
                let (status, body) = cluster.post(1, &path, json!({"data": i})).await;
                assert_eq!(status, 202, "{body}");
                assert_eq!(body["offset"], i, "{body}");
            }
        }
    });
    let broadcasts = async {
        for i in 0..20 {
            cluster.broadcast(1, json!({"b": i})).await;
        }
    };
    futures_util::join!(futures_util::future::join_all(publishers), broadcasts);
    // Every publication arrives on node 2 once, each channel's in offset order.
    let mut next = vec![1_u64; channels];
    let mut broadcast_count = 0;
    let total = channels * per_channel as usize;
    let mut delivered = 0;
    while delivered < total || broadcast_count < 20 {
        let message = watcher.next_json().await;
        match message["type"].as_str() {
            Some("broadcast") => broadcast_count += 1,
            Some("publication") => {
                let c: usize = message["channel"].as_str().unwrap()["feed:lane".len()..]
                    .parse()
                    .unwrap();
                assert_eq!(message["offset"], next[c], "{message}");
                assert_eq!(message["data"], next[c], "{message}");
                next[c] += 1;
                delivered += 1;
            }
            _ => panic!("unexpected {message}"),
        }
    }
    // (An event dropped as a repeat would have left the loop above waiting, and failed it.)
    watcher.expect_silence(Duration::from_millis(300)).await;
}

/// Every node delivers a channel's publications from the change events of its history's
/// appends. A burst into a channel that keeps fewer publications than the burst holds must
/// still reach every subscriber whole: each append adds at most `history_size`, so a trim
/// never drops a publication before its change event has shown it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_history_reaches_every_node_whole() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start_cluster(&mongo_uri(), 2, &file);
    let mut watchers = Vec::new();
    for node in 1..=2 {
        let mut client = cluster_client(&cluster, node, "watcher").await;
        let reply = subscribe(&mut client, "tiny:burst", None).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        watchers.push(client);
    }
    let burst = 60_u64;
    let publishers = (0..burst).map(|i| {
        let cluster = &cluster;
        async move {
            let (status, body) = cluster
                .post(1, "/api/channels/tiny:burst/publish", json!({"data": i}))
                .await;
            assert_eq!(status, 202, "{body} {}", cluster.node(1).log());
            body["offset"].as_u64().unwrap()
        }
    });
    let mut offsets: Vec<u64> = futures_util::future::join_all(publishers).await;
    offsets.sort_unstable();
    assert_eq!(offsets, (1..=burst).collect::<Vec<_>>());
    for watcher in &mut watchers {
        let got = publications(watcher, burst as usize).await;
        let delivered: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
        assert_eq!(delivered, (1..=burst).collect::<Vec<_>>());
        watcher.expect_silence(Duration::from_millis(200)).await;
    }
    // The history itself keeps about two, not sixty.
    let page = cluster
        .get(1, "/api/channels/tiny:burst/history?limit=1000")
        .await;
    let kept = page["publications"].as_array().unwrap().len();
    assert!((2..=3).contains(&kept), "{page}");
    assert_eq!(page["offset"], burst, "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_recovers_everything_on_another_node() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start_cluster(&mongo_uri(), 2, &file);
    // Node 1 is reached through a link that can be cut like a network: no FIN, no close.
    let link = CuttableLink::to(cluster.node(1).port).await;
    let http = reqwest::Client::new();
    let ticket = cluster.node(1).ticket(&http, "alice").await;
    let url = format!("ws://127.0.0.1:{}/demo?token={ticket}", link.port);
    let mut client = try_connect_url(&url, None).await.unwrap();
    let token = jwt_granting("alice", &["feed:*"]);
    client
        .send_json(&json!({"type": "jwt", "token": token}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    let reply = subscribe(&mut client, "feed:moving", None).await;
    let epoch = reply["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        cluster
            .post(2, "/api/channels/feed:moving/publish", json!({ "data": n }))
            .await;
    }
    let seen = publications(&mut client, 5).await;
    assert_eq!(seen.last().unwrap().0, 5);
    // The network drops the connection; publications go on meanwhile.
    link.cut();
    for n in 6..=12 {
        let (status, _) = cluster
            .post(1, "/api/channels/feed:moving/publish", json!({ "data": n }))
            .await;
        assert_eq!(status, 202);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut back = cluster_client(&cluster, 2, "alice").await;
    let reply = subscribe(&mut back, "feed:moving", Some((5, &epoch))).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 12, "{reply}");
    cluster
        .post(
            1,
            "/api/channels/feed:moving/publish",
            json!({ "data": 13 }),
        )
        .await;
    let got = publications(&mut back, 8).await;
    assert_eq!(
        got,
        (6..=13).map(|n| (n, json!(n))).collect::<Vec<_>>(),
        "nothing missing, nothing twice, in order"
    );
    back.expect_silence(Duration::from_millis(300)).await;
    // Node 1 still holds the cut connection (nothing told it), which changed nothing. Its own
    // gauge, not `/api/connections`, which sums every node's heartbeat and may or may not
    // count node 2's new connection yet.
    assert_eq!(
        cluster
            .metric(
                1,
                "ticketgate_connections",
                &[("state", "authenticated"), ("transport", "websocket")],
            )
            .await,
        1.0
    );
    drop(client);
    // Node 2 read the channel's window from MongoDB once.
    assert_eq!(
        cluster
            .metric(2, "ticketgate_history_reads_total", &[])
            .await,
        1.0
    );
    assert_eq!(
        cluster
            .metric(2, "ticketgate_recoveries_total", &[("result", "recovered")])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_latest_hands_a_new_subscriber_the_latest_on_every_node() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start_cluster(&mongo_uri(), 2, &file);
    let publish = |n: u64| {
        let cluster = &cluster;
        async move {
            let (status, body) = cluster
                .post(2, "/api/channels/state:price/publish", json!({ "data": n }))
                .await;
            assert_eq!((status, body["offset"].as_u64()), (202, Some(n)), "{body}");
        }
    };
    let client = |node: usize, sub: &'static str| {
        let cluster = &cluster;
        async move {
            cluster
                .client_with(node, sub, &jwt_granting(sub, &["state:*"]))
                .await
        }
    };
    for n in 1..=4 {
        publish(n).await;
    }
    // A subscriber on each node: `subscribed` names the offset before the latest, which
    // follows at once, before any live publication.
    let mut on_one = client(1, "alice").await;
    let mut on_two = client(2, "bob").await;
    let mut epoch = String::new();
    for subscriber in [&mut on_one, &mut on_two] {
        let reply = subscribe(subscriber, "state:price", None).await;
        assert_eq!(
            (reply["type"].as_str(), reply["offset"].as_u64()),
            (Some("subscribed"), Some(3)),
            "{reply}"
        );
        assert_eq!(reply.get("recovered"), None, "{reply}");
        epoch = reply["epoch"].as_str().unwrap().to_owned();
        assert_eq!(publications(subscriber, 1).await, [(4, json!(4))]);
    }
    publish(5).await;
    for subscriber in [&mut on_one, &mut on_two] {
        assert_eq!(publications(subscriber, 1).await, [(5, json!(5))]);
    }

    // Far behind (history_size 3): not recovered, and the latest instead of a reload.
    for n in 6..=12 {
        publish(n).await;
    }
    let mut behind = client(1, "carol").await;
    let reply = subscribe(&mut behind, "state:price", Some((1, &epoch))).await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(false), Some(11)),
        "{reply}"
    );
    assert_eq!(publications(&mut behind, 1).await, [(12, json!(12))]);
    // Recoverable: the gap only, as without the option.
    let mut back = client(2, "dave").await;
    let reply = subscribe(&mut back, "state:price", Some((10, &epoch))).await;
    assert_eq!(
        (reply["recovered"].as_bool(), reply["offset"].as_u64()),
        (Some(true), Some(12)),
        "{reply}"
    );
    assert_eq!(
        publications(&mut back, 2).await,
        [(11, json!(11)), (12, json!(12))]
    );
    for subscriber in [&mut behind, &mut back] {
        subscriber.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_history_is_not_recovered_and_starts_a_new_epoch() {
    let mongod = tokio::task::block_in_place(TestMongod::start);
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start_cluster(&mongod.uri, 1, &file);
    let (_, first) = cluster
        .post(1, "/api/channels/brief:x/publish", json!({ "data": "old" }))
        .await;
    let old_epoch = first["epoch"].as_str().unwrap().to_owned();
    assert_eq!(first["offset"], 1);
    // history_ttl_secs = 2, and the test mongod's TTL monitor runs every second.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = cluster.get(1, "/api/channels/brief:x/history").await;
        if page["epoch"] != json!(old_epoch) {
            assert_eq!(
                (
                    page["offset"].as_u64(),
                    page["publications"].as_array().map(Vec::len)
                ),
                (Some(0), Some(0)),
                "{page}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the history never expired: {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut client = cluster_client(&cluster, 1, "alice").await;
    let reply = subscribe(&mut client, "brief:x", Some((0, &old_epoch))).await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_ne!(reply["epoch"], json!(old_epoch));
    client.expect_silence(Duration::from_millis(300)).await;
    let (_, next) = cluster
        .post(1, "/api/channels/brief:x/publish", json!({ "data": "new" }))
        .await;
    assert_eq!(
        (next["offset"].as_u64(), &next["epoch"]),
        (Some(1), &reply["epoch"])
    );
    let got = publications(&mut client, 1).await;
    assert_eq!(got, [(1, json!("new"))]);
}

/// mongod's default snapshot history stalls the appends to channel histories (docs/BENCHMARKS.md,
/// "Snapshot history"): a node with history namespaces says so at start; a node without them,
/// or on a mongod that keeps none, says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_history_warns_while_mongodb_keeps_snapshot_history() {
    const WARNING: &str = "of snapshot history (minSnapshotHistoryWindowInSeconds)";
    const READY: &str = "is ready (migrations applied now";
    let mongod = tokio::task::block_in_place(TestMongod::start);
    let file = ConfigFile::new(NAMESPACES);
    let with_history = start_cluster(&mongod.uri, 1, &file);
    let log = with_history.node(1).wait_for_log(READY).await;
    assert!(
        log.contains("MongoDB keeps 300 s of snapshot history"),
        "{log}"
    );
    let without_history = tokio::task::block_in_place(|| Cluster::start(&mongod.uri, 1));
    let log = without_history.node(1).wait_for_log(READY).await;
    assert!(!log.contains(WARNING), "{log}");

    mongodb::Client::with_uri_str(&mongod.uri)
        .await
        .unwrap()
        .database("admin")
        .run_command(mongodb::bson::doc! {
            "setParameter": 1, "minSnapshotHistoryWindowInSeconds": 0,
        })
        .await
        .unwrap();
    let advised = start_cluster(&mongod.uri, 1, &file);
    let log = advised.node(1).wait_for_log(READY).await;
    assert!(!log.contains(WARNING), "{log}");
}
