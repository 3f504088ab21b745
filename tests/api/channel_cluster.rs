//! Channels over several gateway processes on one replica set: publications, server-side
//! subscriptions and subscription-token revocations reach every node; presence, join and leave
//! span the nodes, and stay true when a node is killed; the channel list counts the cluster.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::channels::{ConfigFile, NAMESPACES, jwt_granting, subscription_token};
use crate::cluster::Cluster;
use crate::support::*;

fn start(count: usize, file: &ConfigFile) -> Cluster {
    tokio::task::block_in_place(|| {
        Cluster::start_with(&mongo_uri(), count, &[("CONFIG_FILE", file.path())])
    })
}

async fn subscribe(client: &mut WsClient, channel: &str) {
    client
        .send_json(&json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "subscribed", "channel": channel})
    );
}

/// The next message that is not a join or a leave.
async fn next_not_presence(client: &mut WsClient) -> Value {
    loop {
        let message = client.next_json().await;
        if !["join", "leave"].contains(&message["type"].as_str().unwrap_or("")) {
            return message;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_reach_every_node_in_order_exactly_once() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(3, &file);
    let mut on_1 = cluster
        .client_with(1, "alice", &jwt_granting("alice", &["tenant-42:*"]))
        .await;
    let mut on_2 = cluster
        .client_with(2, "bob", &jwt_granting("bob", &["tenant-42:*"]))
        .await;
    for client in [&mut on_1, &mut on_2] {
        subscribe(client, "tenant-42:orders").await;
        subscribe(client, "news:today").await;
    }
    for i in 0..50 {
        let (status, body) = cluster
            .post(
                3,
                "/api/channels/tenant-42:orders/publish",
                json!({"data": i}),
            )
            .await;
        assert_eq!(
            (status, body["scope"].as_str()),
            (202, Some("cluster")),
            "{body}"
        );
    }
    let (status, _) = cluster
        .post(
            2,
            "/api/publish",
            json!({"channels": ["news:today", "tenant-42:orders"], "data": "both"}),
        )
        .await;
    assert_eq!(status, 202);
    for client in [&mut on_1, &mut on_2] {
        for i in 0..50 {
            assert_eq!(
                client.next_json().await,
                json!({"type": "publication", "channel": "tenant-42:orders", "data": i})
            );
        }
        let mut both = [client.next_json().await, client.next_json().await];
        both.sort_by_key(|m| m["channel"].as_str().unwrap().to_owned());
        assert_eq!(both[0]["channel"], "news:today");
        assert_eq!(both[1]["channel"], "tenant-42:orders");
        client.expect_silence(Duration::from_millis(300)).await;
    }

    // The channel list counts both nodes' subscribers (the other node as of its heartbeat).
    let deadline = Instant::now() + PATIENCE;
    loop {
        let list = cluster.get(3, "/api/channels?prefix=tenant-42:").await;
        if list == json!({"channels": [{"channel": "tenant-42:orders", "subscribers": 2}]}) {
            break;
        }
        assert!(Instant::now() < deadline, "{list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_subscriptions_and_token_revocations_reach_every_node() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(3, &file);
    let mut first = cluster.client(1, "alice").await;
    let mut second = cluster.client(2, "alice").await;
    let (status, _) = cluster
        .post(
            3,
            "/api/users/alice/subscriptions",
            json!({"channel": "tenant-42:ops"}),
        )
        .await;
    assert_eq!(status, 202);
    for client in [&mut first, &mut second] {
        assert_eq!(
            client.next_json().await,
            json!({"type": "subscribed", "channel": "tenant-42:ops", "server": true})
        );
    }
    let (status, _) = cluster
        .api(
            3,
            reqwest::Method::DELETE,
            "/api/users/alice/subscriptions/tenant-42:ops",
            None,
        )
        .await;
    assert_eq!(status, 202);
    for client in [&mut first, &mut second] {
        assert_eq!(
            client.next_json().await,
            json!({"type": "unsubscribed", "channel": "tenant-42:ops", "reason": "server"})
        );
    }

    // A subscription token held on node 1, revoked through node 2.
    let token = subscription_token("alice", "tenant-42:secret", 600, Some("cluster-sub"));
    first
        .send_json(&json!({"type": "subscribe", "channel": "tenant-42:secret", "token": token}))
        .await;
    assert_eq!(first.next_json().await["type"], "subscribed");
    let (status, _) = cluster
        .post(
            2,
            "/api/revocations",
            json!({"jti": "cluster-sub", "expires_at": now() + 600}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        first.next_json().await,
        json!({"type": "unsubscribed", "channel": "tenant-42:secret", "reason": "revoked"})
    );
    first.send_json(&json!({"type": "ping"})).await;
    assert_eq!(
        first.next_json().await,
        json!({"type": "pong"}),
        "still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_spans_the_nodes_and_a_killed_node_leaves_it() {
    let file = ConfigFile::new(NAMESPACES);
    let cluster = start(3, &file);
    let channel = "chat:room-1";
    let users = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let mut client = cluster
            .client_with(i + 1, user, &jwt_granting(user, &[channel]))
            .await;
        subscribe(&mut client, channel).await;
        clients.push(client);
    }
    // Alice, subscribed first, hears everyone's join, her own included.
    let mut joined = Vec::new();
    while joined.len() < 3 {
        let join = clients[0].next_json().await;
        assert_eq!(join["type"], "join", "{join}");
        joined.push(join["user_id"].as_str().unwrap().to_owned());
    }
    joined.sort();
    assert_eq!(joined, users);

    clients[1]
        .send_json(&json!({"type": "presence", "channel": channel, "id": 1}))
        .await;
    let reply = next_not_presence(&mut clients[1]).await;
    assert_eq!(reply["type"], "presence", "{reply}");
    let listed: Vec<(String, String)> = reply["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["user_id"].as_str().unwrap().to_owned(),
                c["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for (i, user) in users.iter().enumerate() {
        expected.push((user.to_string(), cluster.node_id(i + 1).await));
    }
    assert_eq!(listed, expected, "every node's subscriber, with its node");
    let through_api = cluster
        .get(3, &format!("/api/channels/{channel}/presence"))
        .await;
    assert_eq!(through_api["clients"], reply["clients"]);

    // Bob unsubscribes on node 2: alice, on node 1, hears his leave; he comes back.
    clients[1]
        .send_json(&json!({"type": "unsubscribe", "channel": channel}))
        .await;
    let leave = loop {
        let message = clients[0].next_json().await;
        if message["type"] == "leave" {
            break message;
        }
    };
    assert_eq!(leave["user_id"], "bob", "{leave}");
    assert_eq!(leave["connection_id"], reply["clients"][1]["connection_id"]);
    assert_eq!(
        next_not_presence(&mut clients[1]).await["type"],
        "unsubscribed"
    );
    subscribe(&mut clients[1], channel).await;
    let rejoined = loop {
        let message = clients[0].next_json().await;
        if message["type"] == "join" {
            break message;
        }
    };
    assert_eq!(rejoined["user_id"], "bob");

    // SIGKILL node 3: carol leaves presence, with a leave, within three heartbeats (1 s).
    let carol = reply["clients"][2].clone();
    let killed = Instant::now();
    cluster.nodes[2].signal("KILL");
    let leave = loop {
        let message = clients[0].next_json().await;
        if message["type"] == "leave" {
            break message;
        }
    };
    let took = killed.elapsed();
    assert_eq!(
        leave,
        json!({"type": "leave", "channel": channel, "user_id": "carol", "connection_id": carol["connection_id"]})
    );
    assert!(
        took < Duration::from_secs(3) + Duration::from_millis(1500),
        "the leave came {took:?} after the kill"
    );
    let after = cluster
        .get(1, &format!("/api/channels/{channel}/presence"))
        .await;
    let users_after: Vec<&str> = after["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users_after, ["alice", "bob"]);
    // Exactly one leave, though two nodes swept.
    clients[0].expect_silence(Duration::from_secs(2)).await;
}
