//! Several gateway processes on one MongoDB replica set: broadcasts, user messages,
//! disconnects and revocations cross nodes through the change-stream bus; tickets are single
//! use across nodes; a killed node or a restarted mongod does not disturb the rest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use serde_json::{Value, json};

use crate::support::*;

pub const API_KEY: &str = "cluster-api-key-0123456789";

/// Gateway processes sharing one database.
pub struct Cluster {
    pub nodes: Vec<GatewayProcess>,
    pub http: reqwest::Client,
    uri: String,
    pub database: String,
}

impl Cluster {
    /// `count` nodes on `uri` (one fresh database), with a 1 s node heartbeat.
    pub fn start(uri: &str, count: usize) -> Cluster {
        Self::start_with(uri, count, &[])
    }

    pub fn start_with(uri: &str, count: usize, extra: &[(&str, &str)]) -> Cluster {
        Self::start_on(&vec![uri; count], extra)
    }

    /// A node on each of `uris` (the same MongoDB, reached each its own way: say, one through
    /// a [`CuttableLink`]), sharing one fresh database.
    pub fn start_on(uris: &[&str], extra: &[(&str, &str)]) -> Cluster {
        Self::start_in(&unique_db_name(), uris, extra)
    }

    /// Like [`start_on`](Self::start_on) in a given database (say, a stopped cluster's).
    pub fn start_in(database: &str, uris: &[&str], extra: &[(&str, &str)]) -> Cluster {
        let database = database.to_owned();
        let nodes = (1..=uris.len())
            .zip(uris)
            .map(|(i, uri)| {
                let name = format!("node{i}");
                let mut vars = vec![
                    ("JWT_SECRET", SECRET),
                    ("MONGODB_URI", *uri),
                    ("MONGODB_DATABASE", &database),
                    ("API_KEY", API_KEY),
                    ("NODE_NAME", &name),
                    ("NODE_HEARTBEAT_SECS", "1"),
                    // Every client here comes from 127.0.0.1.
                    ("UPGRADE_RATE_PER_MIN", "100000"),
                    ("TICKET_RATE_PER_MIN", "100000"),
                ];
                vars.extend_from_slice(extra);
                GatewayProcess::start(&vars)
            })
            .collect();
        Cluster {
            nodes,
            http: reqwest::Client::new(),
            uri: uris[0].to_owned(),
            database,
        }
    }

    /// Node `i`, counting from 1 as the test names do.
    pub fn node(&self, i: usize) -> &GatewayProcess {
        &self.nodes[i - 1]
    }

    pub async fn api(
        &self,
        node: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.node(node).url(path))
            .bearer_auth(API_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    pub async fn post(&self, node: usize, path: &str, body: Value) -> (u16, Value) {
        self.api(node, reqwest::Method::POST, path, Some(body))
            .await
    }

    pub async fn get(&self, node: usize, path: &str) -> Value {
        let (status, body) = self.api(node, reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// An authenticated connection of `sub` on node `i`, with a JWT carrying `jti`.
    pub async fn client(&self, i: usize, sub: &str) -> WsClient {
        self.client_with(i, sub, &jwt(sub)).await
    }

    pub async fn client_with(&self, i: usize, sub: &str, token: &str) -> WsClient {
        let node = self.node(i);
        let ticket = node.ticket(&self.http, sub).await;
        let mut client = try_connect_url(&node.ws_url(&ticket), None)
            .await
            .unwrap_or_else(|e| panic!("upgrade on node {i}: {e:?}"));
        client.authenticate(token).await;
        client
    }

    /// The id of node `i`, as its broadcasts carry it.
    pub async fn node_id(&self, i: usize) -> String {
        let nodes = self.get(i, "/api/nodes").await;
        nodes["nodes"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Publishes through node `i`, retrying 503 (MongoDB coming back) for up to a minute.
    pub async fn broadcast(&self, i: usize, data: Value) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self
                .post(i, "/api/broadcast", json!({ "data": data }))
                .await;
            match status {
                202 => return body,
                503 if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => panic!("broadcast through node {i}: {status} {body}"),
            }
        }
    }

    /// A metric's value on node `i`.
    pub async fn metric(&self, i: usize, name: &str, labels: &[(&str, &str)]) -> f64 {
        let samples = scrape_metrics(&self.http, &self.node(i).url("/metrics")).await;
        metric_value(&samples, name, labels)
    }

    /// A metric's sum over the nodes; a labelled counter a node never incremented (it has no
    /// sample yet) counts 0 there.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for node in &self.nodes {
            let samples = scrape_metrics(&self.http, &node.url("/metrics")).await;
            let present = samples.iter().any(|s| {
                s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            });
            if present {
                sum += metric_value(&samples, name, labels);
            }
        }
        sum
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_and_user_messages_reach_every_node() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongo_uri(), 3));
    let mut on_node1 = cluster.client(1, "bob").await;
    let mut alice = Vec::new();
    for i in 1..=3 {
        alice.push(cluster.client(i, "alice").await);
    }
    assert!(
        cluster.nodes[0]
            .log()
            .contains("cluster bus: MongoDB replica set"),
        "{}",
        cluster.nodes[0].log()
    );

    // A broadcast published through node 3 reaches a client on node 1 (and everyone else).
    let node3 = cluster.node_id(3).await;
    let receipt = cluster.broadcast(3, json!({"from": 3})).await;
    assert_eq!(receipt["scope"], "cluster");
    assert_eq!(receipt["node"], node3);
    let expected =
        json!({"type": "broadcast", "seq": receipt["seq"], "node": node3, "data": {"from": 3}});
    assert_eq!(on_node1.next_json().await, expected);
    for client in &mut alice {
        assert_eq!(client.next_json().await, expected);
    }

    // A user message through node 2 reaches that user's connections on every node, only them.
    let (status, body) = cluster
        .post(2, "/api/users/alice/messages", json!({"data": "hi alice"}))
        .await;
    assert_eq!((status, body["scope"].as_str()), (202, Some("cluster")));
    for client in &mut alice {
        assert_eq!(
            client.next_json().await,
            json!({"type": "message", "data": "hi alice"})
        );
    }
    on_node1.send_json(&json!({"type": "ping"})).await;
    assert_eq!(
        on_node1.next_json().await,
        json!({"type": "pong"}),
        "bob got nothing before his pong"
    );

    // Each node's broadcasts keep their own seq series, in order, with nothing doubled.
    let mut sent: Vec<(String, u64)> = Vec::new();
    for round in 0..5 {
        for i in 1..=3 {
            let receipt = cluster
                .broadcast(i, json!({"round": round, "via": i}))
                .await;
            sent.push((
                receipt["node"].as_str().unwrap().to_owned(),
                receipt["seq"].as_u64().unwrap(),
            ));
        }
    }
    for client in alice.iter_mut().chain([&mut on_node1]) {
        let mut last: HashMap<String, u64> = HashMap::new();
        for _ in 0..sent.len() {
            let message = client.next_json().await;
            let node = message["node"].as_str().unwrap().to_owned();
            let seq = message["seq"].as_u64().unwrap();
            let previous = last.insert(node.clone(), seq);
            assert!(
                previous.is_none_or(|p| seq == p + 1),
                "node {node}: seq {seq} after {previous:?}"
            );
        }
        let got: Vec<(String, u64)> = {
            let mut pairs: Vec<_> = last.into_iter().collect();
            pairs.sort();
            pairs
        };
        let mut highest: HashMap<String, u64> = HashMap::new();
        for (node, seq) in &sent {
            highest.insert(node.clone(), *seq);
        }
        let mut want: Vec<_> = highest.into_iter().collect();
        want.sort();
        assert_eq!(got, want);
    }

    // The registry lists the three nodes, and the counts sum over them.
    let nodes = cluster.get(2, "/api/nodes").await;
    assert_eq!(nodes["bus"], "change_stream");
    let listed = nodes["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{nodes}");
    assert!(listed[0]["id"].as_str().unwrap().starts_with("node2-"));
    // Each names its build, the one `--version` prints.
    let version = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    for node in listed {
        let (v, commit) = (
            node["version"].as_str().unwrap(),
            node["commit"].as_str().unwrap(),
        );
        assert!(!v.is_empty() && !commit.is_empty(), "{node}");
        assert!(
            version.contains(&format!("{v} (commit {commit}, built ")),
            "{version} against {node}"
        );
    }
    wait_for_counts(&cluster, 4).await;
}

/// Waits until `GET /api/connections` on node 1 sums to `authenticated` (the other nodes'
/// shares come with their next heartbeat).
async fn wait_for_counts(cluster: &Cluster, authenticated: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let counts = cluster.get(1, "/api/connections").await;
        if counts["authenticated"] == authenticated && counts["nodes"] == 3 {
            assert_eq!(counts["total"], authenticated);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "counts never summed up: {counts}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_or_revocation_on_one_node_closes_sockets_on_the_others() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongo_uri(), 3));
    let mut alice1 = cluster.client(1, "alice").await;
    let mut alice3 = cluster.client(3, "alice").await;
    let mut bob1 = cluster.client(1, "bob").await;

    let (status, body) = cluster
        .post(2, "/api/users/alice/disconnect", json!({}))
        .await;
    assert_eq!((status, body["scope"].as_str()), (202, Some("cluster")));
    assert_eq!(
        alice1.expect_close(4403).await,
        "disconnected by the server"
    );
    assert_eq!(
        alice3.expect_close(4403).await,
        "disconnected by the server"
    );
    bob1.send_json(&json!({"type": "ping"})).await;
    assert_eq!(bob1.next_json().await, json!({"type": "pong"}));

    // A revocation through node 1 closes the connection that used the token on node 3.
    let doomed = jwt_with_jti("carol", "cluster-doomed");
    let mut carol3 = cluster.client_with(3, "carol", &doomed).await;
    let (status, body) = cluster
        .post(
            1,
            "/api/revocations",
            json!({"jti": "cluster-doomed", "expires_at": now() + 600}),
        )
        .await;
    assert_eq!((status, body["scope"].as_str()), (201, Some("cluster")));
    assert_eq!(carol3.expect_close(4403).await, "token revoked");
    bob1.send_json(&json!({"type": "ping"})).await;
    assert_eq!(bob1.next_json().await, json!({"type": "pong"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_minted_on_node_1_works_once_on_node_2_and_is_refused_on_node_3() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongo_uri(), 3));
    let ticket = cluster.node(1).ticket(&cluster.http, "alice").await;
    let mut client = try_connect_url(&cluster.node(2).ws_url(&ticket), None)
        .await
        .expect("the ticket opens a connection on node 2");
    client
        .send_json(&json!({"type": "jwt", "token": jwt("alice")}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    for i in [3, 2] {
        let refused = try_connect_url(&cluster.node(i).ws_url(&ticket), None).await;
        let (status, body) = refused.err().expect("a used ticket is refused");
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_ticket")),
            "node {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_node_does_not_disturb_the_others() {
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(&mongo_uri(), 3));
    let mut on_node1 = cluster.client(1, "alice").await;
    let mut on_node2 = cluster.client(2, "bob").await;
    let mut on_node3 = cluster.client(3, "carol").await;
    let killed = cluster.node_id(2).await;

    cluster.node(2).signal("KILL");
    tokio::task::block_in_place(|| cluster.nodes[1].wait_exit(PATIENCE));
    assert_eq!(on_node2.ending().await, Ending::Dropped);

    let receipt = cluster.broadcast(3, json!("after the kill")).await;
    for client in [&mut on_node1, &mut on_node3] {
        let message = client.next_json().await;
        assert_eq!(
            (&message["data"], &message["seq"]),
            (&json!("after the kill"), &receipt["seq"])
        );
    }
    on_node1.send_json(&json!({"type": "ping"})).await;
    assert_eq!(on_node1.next_json().await, json!({"type": "pong"}));

    // The killed node drops out of the registry within three missed heartbeats.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let nodes = cluster.get(1, "/api/nodes").await;
        let ids: Vec<&str> = nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        if !ids.contains(&killed.as_str()) {
            assert_eq!(ids.len(), 2, "{nodes}");
            break;
        }
        assert!(Instant::now() < deadline, "the killed node is still listed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.nodes.remove(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_leaves_the_registry_at_once() {
    // Beats 20 s apart: a node that merely died would stay listed for up to a minute.
    let mut cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(&mongo_uri(), 2, &[("NODE_HEARTBEAT_SECS", "20")])
    });
    let leaving = cluster.node_id(2).await;
    let listed = |nodes: &Value| -> Vec<String> {
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(listed(&cluster.get(1, "/api/nodes").await).contains(&leaving));
    cluster.node(2).signal("TERM");
    let status = tokio::task::block_in_place(|| cluster.nodes[1].wait_exit(PATIENCE));
    assert!(status.success());
    let remaining = listed(&cluster.get(1, "/api/nodes").await);
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert!(!remaining.contains(&leaving));
    cluster.nodes.remove(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_mongod_restart_the_streams_resume_and_no_broadcast_is_lost() {
    let mut mongod = tokio::task::block_in_place(TestMongod::start);
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongod.uri, 3));
    let mut clients = Vec::new();
    for i in 1..=3 {
        clients.push(cluster.client(i, &format!("user{i}")).await);
    }
    cluster.broadcast(1, json!("before")).await;
    for client in &mut clients {
        assert_eq!(client.next_json().await["data"], "before");
    }

    tokio::task::block_in_place(|| mongod.stop());
    let (status, _) = cluster
        .post(2, "/api/broadcast", json!({"data": "down"}))
        .await;
    assert_eq!(status, 503, "publishing needs MongoDB on a replica set");
    tokio::task::block_in_place(|| mongod.restart());

    // Everything accepted once it is back reaches every connection on every node, in order.
    let mut accepted = Vec::new();
    for n in 0..30 {
        let via = 1 + n % 3;
        let receipt = cluster.broadcast(via, json!({"n": n})).await;
        accepted.push(receipt);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        for receipt in &accepted {
            let mut message = client.next_json().await;
            // A 503 during the outage may still have been written; it is skipped here.
            while message["data"] == "down" {
                message = client.next_json().await;
            }
            assert_eq!(
                (&message["node"], &message["seq"]),
                (&receipt["node"], &receipt["seq"]),
                "client on node {}",
                i + 1
            );
        }
    }
    for i in 1..=3 {
        assert!(
            cluster
                .metric(i, "ticketgate_bus_restarts_total", &[("stream", "cluster")])
                .await
                >= 1.0
        );
        cluster
            .node(i)
            .wait_for_log("the cluster event stream resumed")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_history_is_gone_logs_counts_tells_and_goes_on_from_now() {
    let mongod = tokio::task::block_in_place(TestMongod::start);
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongod.uri, 1));
    let mut client = cluster.client(1, "alice").await;
    cluster.broadcast(1, json!("first")).await;
    assert_eq!(client.next_json().await["data"], "first");

    // MongoDB's own fail point makes the server give the answer it gives when a stream's
    // history is gone: ChangeStreamHistoryLost (286) to the node's next getMore. (The oplog
    // truly rolled over: history_faults.rs.)
    lose_stream_place(&mongod.uri, "ticketgate", 0).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while cluster
        .metric(
            1,
            "ticketgate_bus_history_lost_total",
            &[("stream", "cluster")],
        )
        .await
        < 1.0
    {
        assert!(Instant::now() < deadline, "{}", cluster.node(1).log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.node(1).wait_for_log("cannot resume").await;
    // The connection hears that it may have missed something (it holds no channel).
    assert_eq!(
        client.next_json().await,
        json!({ "type": "missed", "channels": [] })
    );
    let receipt = cluster.broadcast(1, json!("after")).await;
    let message = client.next_json().await;
    assert_eq!(
        (&message["data"], &message["seq"]),
        (&json!("after"), &receipt["seq"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_cluster_event_is_skipped_counted_and_stalls_nothing() {
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongo_uri(), 2));
    let mut client = cluster.client(1, "alice").await;
    let events = mongodb::Client::with_uri_str(&cluster.uri)
        .await
        .unwrap()
        .database(&cluster.database)
        .collection::<mongodb::bson::Document>("cluster_events");
    // Written by something that is not a gateway: no numbers, an unknown kind, no frame.
    events
        .insert_many([
            doc! { "kind": "broadcast" },
            doc! { "node": "intruder", "n": 1, "kind": "shutdown", "created_at": mongodb::bson::DateTime::now() },
        ])
        .await
        .unwrap();
    let receipt = cluster.broadcast(2, json!("still flowing")).await;
    let message = client.next_json().await;
    assert_eq!(
        (&message["data"], &message["seq"]),
        (&json!("still flowing"), &receipt["seq"])
    );
    let skipped = "ticketgate_cluster_events_skipped_total";
    for i in 1..=2 {
        let malformed = cluster.metric(i, skipped, &[("reason", "malformed")]).await;
        assert_eq!(malformed, 2.0, "node {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_mongodb_or_no_mongodb_delivers_on_this_node_and_says_so() {
    let mongod = tokio::task::block_in_place(TestMongod::start_standalone);
    let cluster = tokio::task::block_in_place(|| Cluster::start(&mongod.uri, 1));
    assert!(cluster.node(1).log().contains("standalone server"));
    assert_eq!(cluster.get(1, "/api/nodes").await["bus"], "local");
    let mut client = cluster.client(1, "alice").await;
    let receipt = cluster.broadcast(1, json!("local")).await;
    assert_eq!(
        (receipt["scope"].as_str(), receipt["delivered"].as_u64()),
        (Some("node"), Some(1))
    );
    assert_eq!(client.next_json().await["data"], "local");

    let single = tokio::task::block_in_place(|| {
        GatewayProcess::start(&[("JWT_SECRET", SECRET), ("API_KEY", API_KEY)])
    });
    assert!(single.log().contains("cluster bus: in process only"));
}

/// nginx, run from deploy/nginx-cluster.conf with the compose host names and port swapped for
/// local ones; stopped when dropped.
struct Nginx {
    port: u16,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start_in_front_of(nodes: &[&GatewayProcess]) -> Nginx {
        let bin = installed(
            "install-nginx.sh",
            "the cluster proxy test needs nginx (the script unpacks Debian's package; it needs \
             apt-get and dpkg)",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = include_str!("../../deploy/nginx-cluster.conf").to_owned();
        let mut swap = |from: &str, to: &str| {
            assert!(
                config.contains(from),
                "deploy/nginx-cluster.conf lacks {from:?}"
            );
            config = config.replace(from, to);
        };
        for (i, node) in nodes.iter().enumerate() {
            swap(
                &format!("server node{}:8080", i + 1),
                &format!("server 127.0.0.1:{}", node.port),
            );
        }
        swap("listen 8090;", &format!("listen 127.0.0.1:{port};"));
        let d = dir.path().display();
        swap(
            "http {",
            &format!(
                "http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;"
            ),
        );
        let config = format!("daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n{config}");
        std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
        // A process group of its own, so the drop ends the workers with the master.
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(&bin)
            .process_group(0)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting nginx");
        let nginx = Nginx { port, child, dir };
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not listen: {}",
                std::fs::read_to_string(nginx.dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        nginx
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Nginx {
    /// Kills the whole group: killing only the master (as this once did) left a worker
    /// running, still listening, after every test run.
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_profiles_nginx_config_serves_the_whole_flow_over_both_nodes() {
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(&mongo_uri(), 2, &[("TRUSTED_PROXIES", "127.0.0.1")])
    });
    let nginx = tokio::task::block_in_place(|| {
        Nginx::start_in_front_of(&[cluster.node(1), cluster.node(2)])
    });
    let http = &cluster.http;

    // Browsers send an Origin; the same-origin check passes only if nginx forwards the Host
    // with its port.
    let origin = format!("http://127.0.0.1:{}", nginx.port);
    // Tickets first, then upgrades: nginx takes turns per request, and a mint followed by its
    // upgrade would always put the upgrade on the same node.
    let mut tickets = Vec::new();
    for i in 0..4 {
        let user = format!("user{i}");
        let response = http
            .get(nginx.url("/token/ws"))
            .bearer_auth(jwt(&user))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let ticket: Value = response.json().await.unwrap();
        tickets.push((user, ticket));
    }
    let mut clients = Vec::new();
    for (user, ticket) in tickets {
        let url = format!(
            "ws://127.0.0.1:{}/demo?token={}",
            nginx.port,
            ticket["token"].as_str().unwrap()
        );
        let mut client = try_connect_url(&url, Some(&origin))
            .await
            .unwrap_or_else(|e| panic!("upgrade through nginx: {e:?}"));
        client
            .send_json(&json!({"type": "jwt", "token": jwt(&user)}))
            .await;
        assert_eq!(client.next_json().await["type"], "authenticated");
        clients.push(client);
    }
    // nginx spread them over both nodes.
    for i in 1..=2 {
        let connections =
            cluster.get(i, "/api/nodes").await["nodes"][0]["connections"]["authenticated"]
                .as_u64()
                .unwrap();
        assert!(connections >= 1, "node {i} got no connection through nginx");
    }
    // A broadcast through nginx reaches every connection, on both nodes.
    let response = http
        .post(nginx.url("/api/broadcast"))
        .bearer_auth(API_KEY)
        .json(&json!({"data": "through nginx"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    for client in &mut clients {
        assert_eq!(client.next_json().await["data"], "through nginx");
    }

    // An SSE stream through nginx, its POSTs spread over both nodes by nginx (no sticky
    // sessions): every one is applied, in order, whichever node it reached.
    let response = http
        .get(nginx.url("/token/ws"))
        .bearer_auth(jwt("sse-user"))
        .send()
        .await
        .unwrap();
    let ticket: Value = response.json().await.unwrap();
    let mut stream = open_sse(
        nginx.port,
        ticket["token"].as_str().unwrap(),
        &format!("Accept: text/event-stream\r\nOrigin: {origin}\r\n"),
    )
    .await
    .unwrap_or_else(|e| panic!("an event stream through nginx: {e:?}"));
    let through_nginx = nginx.url("");
    let through_nginx = through_nginx.trim_end_matches('/');
    let jwt_message = json!({"type": "jwt", "token": jwt("sse-user")});
    assert_eq!(
        stream.post_raw(through_nginx, 1, &[jwt_message]).await.0,
        204
    );
    assert_eq!(stream.next_json().await["type"], "authenticated");
    for seq in 2..=7 {
        let ping = json!({"type": "ping", "id": seq});
        assert_eq!(stream.post_raw(through_nginx, seq, &[ping]).await.0, 204);
    }
    for seq in 2..=7 {
        assert_eq!(stream.next_of("pong").await["id"], seq);
    }
    let forwarded: f64 = futures_util::future::join_all((1..=2).map(|i| {
        cluster.metric(
            i,
            "ticketgate_cluster_events_delivered_total",
            &[("kind", "post")],
        )
    }))
    .await
    .into_iter()
    .sum();
    assert!(forwarded >= 1.0, "nginx sent no POST to the other node");
}
