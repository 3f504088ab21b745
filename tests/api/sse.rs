//! The SSE transport: `GET /sse` opens a stream with the same checks as a WebSocket upgrade,
//! `POST /sse/messages` carries the client's messages, and the session behind them is the
//! WebSocket's, message for message.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const ACCEPT: &str = "Accept: text/event-stream\r\n";

async fn open(app: &TestApp, sub: &str) -> SseClient {
    let ticket = app.ticket(sub).await;
    open_sse(app.port, &ticket, ACCEPT)
        .await
        .expect("the stream opens")
}

#[tokio::test]
async fn a_stream_opens_authenticates_over_post_and_carries_the_session() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("HEARTBEAT_INTERVAL_SECS", "1"),
            ("CLIENT_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let mut client = open(&app, "alice").await;
    assert_eq!(
        header_value(&client.head, "content-type"),
        Some("text/event-stream")
    );
    assert_eq!(
        header_value(&client.head, "cache-control"),
        Some("no-cache")
    );
    assert_eq!(header_value(&client.head, "x-accel-buffering"), Some("no"));
    // 128 random bits after the node's id.
    let (node, random) = client.session.rsplit_once('.').unwrap();
    assert_eq!(node, app.node);
    assert_eq!(random.len(), 32);

    let authenticated = client.authenticate("alice").await;
    assert_eq!(authenticated["user_id"], "alice");
    app.publish(r#"{"n":1}"#).await;
    let broadcast = client.next_of("broadcast").await;
    assert_eq!(broadcast["data"], json!({"n": 1}));

    // Echoed data written with line breaks arrives on one line, the same JSON value.
    let pretty = "{\"type\":\"echo\",\"data\":{\n  \"a\": [1,\r\n 2]\n}}";
    let (status, _) = post_body(
        &reqwest::Client::new(),
        &client.post_base,
        &format!(
            r#"{{"session":"{}","seq":2,"messages":[{pretty}]}}"#,
            client.session
        ),
    )
    .await;
    assert_eq!(status, 204);
    client.next_seq = 3;
    assert_eq!(client.next_of("echo").await["data"], json!({"a": [1, 2]}));

    // Idle: heartbeat comments, and no close for never posting past CLIENT_TIMEOUT_SECS.
    let before = client.comments;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    app.publish(r#"{"n":2}"#).await;
    assert_eq!(client.next_of("broadcast").await["data"], json!({"n": 2}));
    assert!(
        client.comments >= before + 2,
        "{} comments",
        client.comments
    );

    assert_eq!(
        app.metric(
            "ticketgate_connections",
            &[("state", "authenticated"), ("transport", "sse")]
        )
        .await,
        1.0
    );
    assert_eq!(
        app.metric(
            "ticketgate_connections",
            &[("state", "authenticated"), ("transport", "websocket")]
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn refusals_are_the_upgrades_and_a_refused_request_keeps_its_ticket() {
    let app = spawn_app(Store::Memory, &[("MAX_CONNECTIONS_PER_USER", "1")]).await;
    let refused = |result: Result<SseClient, (u16, Value)>| match result {
        Ok(_) => panic!("the stream opened"),
        Err((status, body)) => (status, body["error"].as_str().unwrap().to_owned()),
    };
    assert_eq!(
        refused(open_sse(app.port, "", ACCEPT).await),
        (401, "missing_ticket".into())
    );
    assert_eq!(
        refused(open_sse(app.port, "not-a-ticket", ACCEPT).await),
        (401, "invalid_ticket".into())
    );
    let ticket = app.ticket("alice").await;
    assert_eq!(
        refused(open_sse(app.port, &ticket, "Accept: application/json\r\n").await),
        (406, "not_event_stream".into())
    );
    assert_eq!(
        refused(open_sse(app.port, &ticket, "Origin: http://elsewhere.example\r\n").await),
        (403, "origin_not_allowed".into())
    );
    // Neither refusal used the ticket; no Accept at all allows the stream.
    let mut alice = open_sse(app.port, &ticket, "")
        .await
        .expect("the ticket still works");
    assert_eq!(
        refused(open_sse(app.port, &ticket, ACCEPT).await),
        (401, "invalid_ticket".into()),
        "single use"
    );
    // Connection limits count both transports together.
    let second = app.ticket("alice").await;
    assert_eq!(
        refused(open_sse(app.port, &second, ACCEPT).await),
        (429, "too_many_connections".into())
    );
    let (status, body) = app.try_connect(&second, None).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (429, "too_many_connections")
    );
    alice.authenticate("alice").await;

    // Draining: the open stream hears 1001, a new one gets 503 with Retry-After.
    let unused = app.ticket("bob").await;
    app.shutdown.begin();
    assert_eq!(alice.expect_close(1001).await, "going away");
    assert_eq!(
        refused(open_sse(app.port, &unused, ACCEPT).await),
        (503, "draining".into())
    );
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn the_rate_and_the_capacity_count_streams_like_upgrades() {
    let app = spawn_app(
        Store::Memory,
        &[("UPGRADE_RATE_PER_MIN", "2"), ("MAX_CONNECTIONS", "1")],
    )
    .await;
    let _first = open(&app, "alice").await;
    let ticket = app.ticket("bob").await;
    match open_sse(app.port, &ticket, ACCEPT).await {
        Err((503, body)) => assert_eq!(body["error"], "at_capacity"),
        other => panic!("expected at_capacity, got {:?}", other.err()),
    }
    match open_sse(app.port, &ticket, ACCEPT).await {
        Err((429, body)) => assert_eq!(body["error"], "rate_limited"),
        other => panic!("expected rate_limited, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn authentication_over_sse_fails_as_on_a_websocket() {
    let app = spawn_app(Store::Memory, &[("AUTH_TIMEOUT_SECS", "1")]).await;
    // Another user's JWT: 204 for the request, the close on the stream.
    let mut client = open(&app, "alice").await;
    assert_eq!(
        client
            .post(&[json!({"type": "jwt", "token": jwt("mallory")})])
            .await,
        204
    );
    assert!(client.expect_close(4401).await.contains("ticket's user"));

    // Not a jwt message first.
    let mut client = open(&app, "alice").await;
    assert_eq!(client.post(&[json!({"type": "ping"})]).await, 204);
    client.expect_close(4400).await;

    // Nothing within AUTH_TIMEOUT_SECS; nothing but the session event before it.
    let mut client = open(&app, "alice").await;
    assert_eq!(client.expect_close(4408).await, "authentication timeout");

    // A first request over 16 KiB is refused whole and uses up no seq.
    let mut client = open(&app, "alice").await;
    let padding = "x".repeat(17 * 1024);
    let (status, body) = client
        .post_raw(
            &client.post_base.clone(),
            1,
            &[json!({"type": "jwt", "token": jwt("alice"), "pad": padding})],
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (413, "body_too_large")
    );
    client.authenticate("alice").await;
    wait_until("the failed streams to end", || app.hub.open_count() == 1).await;
}

#[tokio::test]
async fn requests_apply_once_in_order_and_bad_ones_apply_nothing() {
    let app = spawn_app(Store::Memory, &[("MAX_MESSAGE_BYTES", "32768")]).await;
    let mut client = open(&app, "alice").await;
    client.authenticate("alice").await;
    let base = client.post_base.clone();
    let ping = |id: &str| json!({"type": "ping", "id": id});

    // seq 2, then the same request again (its answer was lost, say): applied once.
    assert_eq!(
        client.post_raw(&base, 2, &[ping("a1"), ping("a2")]).await.0,
        204
    );
    assert_eq!(
        client.post_raw(&base, 2, &[ping("a1"), ping("a2")]).await.0,
        204
    );
    let (status, body) = client.post_raw(&base, 4, &[ping("skipped")]).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (409, "out_of_order")
    );

    let http = reqwest::Client::new();
    let session = client.session.clone();
    let too_many = vec![json!({"type": "ping"}); 101];
    for (what, body) in [
        ("not JSON", "{not json".to_owned()),
        ("an array", "[1]".to_owned()),
        (
            "no session",
            json!({"seq": 3, "messages": [ping("x")]}).to_string(),
        ),
        (
            "no messages",
            json!({"session": session, "seq": 3, "messages": []}).to_string(),
        ),
        (
            "101 messages",
            json!({"session": session, "seq": 3, "messages": too_many}).to_string(),
        ),
        (
            "an entry not an object",
            json!({"session": session, "seq": 3, "messages": [1]}).to_string(),
        ),
        (
            "seq 0",
            json!({"session": session, "seq": 0, "messages": [ping("x")]}).to_string(),
        ),
        (
            "an unknown field",
            json!({"session": session, "seq": 3, "messages": [ping("x")], "x": 1}).to_string(),
        ),
    ] {
        let (status, answer) = post_body(&http, &base, &body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_request")),
            "{what}: {answer}"
        );
    }
    let response = http
        .post(format!("{base}/sse/messages"))
        .header("Content-Type", "text/plain")
        .body(json!({"session": session, "seq": 3, "messages": [ping("x")]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let big = "y".repeat(40_000);
    let (status, answer) = client
        .post_raw(&base, 3, &[json!({"type": "echo", "data": big})])
        .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (413, Some("body_too_large"))
    );
    // Nothing of the refused requests was applied: seq 3 is still next.
    assert_eq!(client.post_raw(&base, 3, &[ping("b")]).await.0, 204);
    let pongs: Vec<Value> = [
        client.next_json().await,
        client.next_json().await,
        client.next_json().await,
    ]
    .into_iter()
    .map(|pong| pong["id"].clone())
    .collect();
    assert_eq!(pongs, [json!("a1"), json!("a2"), json!("b")]);

    // Once the stream ends, its session is unknown; so is an id of no shape.
    drop(client);
    app.assert_no_connections_left().await;
    let (status, answer) = post_body(
        &http,
        &base,
        &json!({"session": session, "seq": 4, "messages": [ping("late")]}).to_string(),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (404, Some("unknown_session"))
    );
    let (status, _) = post_body(
        &http,
        &base,
        &json!({"session": "nonsense", "seq": 1, "messages": [ping("x")]}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
}

const NAMESPACES: &str = r#"
[[channels.namespaces]]
name = "feed"
history_size = 20
history_ttl_secs = 600
presence = true
"#;

const API_KEY: &str = "sse-api-key-0123456789abcdef";

/// Everything a WebSocket session does, over SSE: channels with grants, presence, history and
/// recovery, an RPC against a real backend, client publish, an in-band refresh, lifecycle
/// events naming the transport, and the server's kicks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_session_works_over_sse() {
    let backend = TestBackend::start().await;
    let file = crate::channels::ConfigFile::new(NAMESPACES);
    let webhook = format!("{}/events", backend.url);
    let mut vars: Vec<(&str, String)> = backend.vars().into_iter().collect();
    vars.extend([
        ("EVENTS_WEBHOOK_URL", webhook),
        ("CONFIG_FILE", file.path().to_owned()),
        ("API_KEY", API_KEY.to_owned()),
        ("CONSOLE_PASSWORD", "console-password-0123456789".to_owned()),
    ]);
    let overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = spawn_app(Store::Memory, &overrides).await;
    let publish = |data: Value| {
        let app = &app;
        async move {
            let (status, body) = app
                .call_api(
                    API_KEY,
                    reqwest::Method::POST,
                    "/api/channels/feed:1/publish",
                    Some(json!({"data": data})),
                )
                .await;
            assert_eq!(status, 202, "{body}");
            body
        }
    };

    let mut client = open(&app, "alice").await;
    let token = crate::channels::jwt_granting("alice", &["feed:*"]);
    assert_eq!(
        client.post(&[json!({"type": "jwt", "token": token})]).await,
        204
    );
    assert_eq!(client.next_json().await["type"], "authenticated");

    // Channels, presence and history.
    assert_eq!(
        client
            .post(&[json!({"type": "subscribe", "channel": "feed:1", "id": 1})])
            .await,
        204
    );
    let subscribed = client.next_of("subscribed").await;
    assert_eq!(subscribed["channel"], "feed:1");
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    publish(json!({"n": 1})).await;
    let first = client.next_of("publication").await;
    assert_eq!(
        (first["data"].clone(), first["offset"].clone()),
        (json!({"n": 1}), json!(1))
    );
    client
        .post(&[json!({"type": "presence", "channel": "feed:1", "id": 2})])
        .await;
    let presence = client.next_of("presence").await;
    assert_eq!(presence["clients"][0]["user_id"], "alice");
    // Recovery: leave, miss two, come back with `since`.
    client
        .post(&[json!({"type": "unsubscribe", "channel": "feed:1"})])
        .await;
    client.next_of("unsubscribed").await;
    publish(json!({"n": 2})).await;
    publish(json!({"n": 3})).await;
    client
        .post(&[json!({"type": "subscribe", "channel": "feed:1",
            "since": {"offset": 1, "epoch": epoch}})])
        .await;
    let resubscribed = client.next_of("subscribed").await;
    assert_eq!(resubscribed["recovered"], true, "{resubscribed}");
    for n in [2, 3] {
        assert_eq!(client.next_of("publication").await["data"], json!({"n": n}));
    }

    // An RPC, answered by the backend; a client publish.
    client
        .post(&[json!({"type": "rpc", "id": 7, "method": "echo", "data": {"x": "y"}})])
        .await;
    assert_eq!(
        client.next_of("rpc_result").await,
        json!({"type": "rpc_result", "id": 7, "result": {"x": "y"}})
    );

    // An in-band refresh.
    client
        .post(&[json!({"type": "jwt", "token": jwt("alice"), "id": "r"})])
        .await;
    let refreshed = client.next_of("authenticated").await;
    assert_eq!(refreshed["id"], "r");

    // Lifecycle events and the user lookup name the transport.
    let connect = loop {
        if let Some(event) = backend
            .events()
            .into_iter()
            .find(|e| e["type"] == "connect")
        {
            break event;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(connect["transport"], "sse", "{connect}");
    let (status, lookup) = app
        .call_api(
            API_KEY,
            reqwest::Method::GET,
            "/api/users/alice/connections",
            None,
        )
        .await;
    assert_eq!(status, 200, "{lookup}");
    assert_eq!(lookup["connections"][0]["transport"], "sse", "{lookup}");

    // The server's kick.
    let (status, _) = app
        .call_api(
            API_KEY,
            reqwest::Method::POST,
            "/api/users/alice/disconnect",
            None,
        )
        .await;
    assert!(status < 300);
    assert_eq!(
        client.expect_close(4403).await,
        "disconnected by the server"
    );
    app.assert_no_connections_left().await;
}

/// A client that stops reading is dropped once a write waits CLIENT_TIMEOUT_SECS, as a
/// WebSocket client would be.
#[tokio::test]
async fn a_stream_nobody_reads_is_dropped() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("CLIENT_TIMEOUT_SECS", "2"),
            ("HEARTBEAT_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    let mut client = open(&app, "alice").await;
    client.authenticate("alice").await;
    let big = format!(r#"{{"pad":"{}"}}"#, "z".repeat(64 * 1024));
    // Far more than loopback's socket buffers take, well under the broadcast ring.
    for _ in 0..600 {
        app.publish(&big).await;
    }
    wait_until("the unread stream to be dropped", || {
        app.hub.open_count() == 0
    })
    .await;
    assert_eq!(
        app.metric(
            "ticketgate_connections",
            &[("state", "authenticated"), ("transport", "sse")]
        )
        .await,
        0.0
    );
    drop(client);
}

/// No sticky sessions: a POST may land on any node; the node holding the stream applies it,
/// once and in order, and the answer waits for it. A session whose stream ended, or whose
/// node died, is unknown within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_on_another_node_reaches_the_stream_without_sticky_sessions() {
    use crate::cluster::Cluster;
    let mut cluster = tokio::task::block_in_place(|| Cluster::start(&mongo_uri(), 2));
    let (node1, node2) = (cluster.node(1), cluster.node(2));
    let base1 = format!("http://127.0.0.1:{}", node1.port);
    let base2 = format!("http://127.0.0.1:{}", node2.port);
    let ticket = node1.ticket(&cluster.http, "alice").await;
    let mut client = open_sse(node1.port, &ticket, ACCEPT).await.unwrap();

    let jwt_message = json!({"type": "jwt", "token": jwt("alice")});
    assert_eq!(client.post_raw(&base2, 1, &[jwt_message]).await.0, 204);
    assert_eq!(client.next_json().await["type"], "authenticated");
    let ping = |id: &str| json!({"type": "ping", "id": id});
    assert_eq!(client.post_raw(&base2, 2, &[ping("a")]).await.0, 204);
    // The same request again, through either node: applied once.
    assert_eq!(client.post_raw(&base1, 2, &[ping("a")]).await.0, 204);
    assert_eq!(client.post_raw(&base2, 2, &[ping("a")]).await.0, 204);
    let (status, body) = client.post_raw(&base2, 9, &[ping("x")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("out_of_order"))
    );
    assert_eq!(client.post_raw(&base2, 3, &[ping("b")]).await.0, 204);
    assert_eq!(client.next_json().await["id"], "a");
    assert_eq!(client.next_json().await["id"], "b");
    cluster.broadcast(2, json!("from node 2")).await;
    assert_eq!(client.next_of("broadcast").await["data"], "from node 2");

    // An id of no shape is unknown at once.
    drop(client);
    let (status, _) = post_body(
        &cluster.http,
        &base2,
        &json!({"session": "x", "seq": 1, "messages": [ping("x")]}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
    // A session, until its stream ends, then unknown through any node within 5 s.
    let late = |session: String| {
        let http = cluster.http.clone();
        let base2 = base2.clone();
        async move {
            let started = Instant::now();
            loop {
                let body = json!({"session": session, "seq": 1, "messages": [{"type": "ping"}]});
                let (status, answer) = post_body(&http, &base2, &body.to_string()).await;
                if status == 404 {
                    assert_eq!(answer["error"], "unknown_session");
                    return started.elapsed();
                }
                assert_eq!(status, 204, "{answer}");
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "still known after 5 s"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let ticket = node1.ticket(&cluster.http, "bob").await;
    let bob = open_sse(node1.port, &ticket, ACCEPT).await.unwrap();
    let bob_session = bob.session.clone();
    drop(bob);
    let waited = late(bob_session).await;
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // The node holding a stream dies: its session is unknown within 5 s.
    let ticket = node1.ticket(&cluster.http, "carol").await;
    let mut carol = open_sse(node1.port, &ticket, ACCEPT).await.unwrap();
    let jwt_message = json!({"type": "jwt", "token": jwt("carol")});
    assert_eq!(carol.post_raw(&base2, 1, &[jwt_message]).await.0, 204);
    assert_eq!(carol.next_json().await["type"], "authenticated");
    let carol_session = carol.session.clone();
    assert!(
        cluster.node(1).log().contains("is SSE session"),
        "the session is logged, redacted"
    );
    cluster.node(1).signal("KILL");
    tokio::task::block_in_place(|| cluster.nodes[0].wait_exit(PATIENCE));
    assert_eq!(carol.next_item_within(PATIENCE).await, SseItem::End);
    let waited = late(carol_session.clone()).await;
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    for node in [1, 2] {
        let log = cluster.node(node).log();
        assert!(!log.contains("ERROR") && !log.contains("panicked"), "{log}");
        assert!(
            !log.contains(&carol_session[carol_session.len() - 32..]),
            "a session id is never logged whole"
        );
    }
    cluster.nodes.remove(0);
}
