//! The operations console's server side (docs/PROTOCOL.md, "Operations console"): sign-in
//! with CONSOLE_PASSWORD, the session cookie's flags, the page's Content-Security-Policy,
//! the rate limit, expiry and sign-out, and the server API taking a console session (with
//! its header) in place of the API key.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::support::*;

const PASSWORD: &str = "console-password-0123456789";
const API_KEY: &str = "console-test-api-key-0123456789";

async fn console_app(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![("CONSOLE_PASSWORD", PASSWORD), ("API_KEY", API_KEY)];
    vars.extend_from_slice(extra);
    spawn_app(Store::Memory, &vars).await
}

/// Signs in at `base`; the response's status, `Set-Cookie` and body.
async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut request = http
        .post(format!("{base}/console/session"))
        .json(&json!({ "password": password }));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, cookie, response.json().await.unwrap_or(Value::Null))
}

/// Signs in to `app`: the `Cookie` header's value.
async fn session_cookie(app: &TestApp) -> String {
    let (status, cookie, body) = sign_in(&app.http, &app.url(""), PASSWORD, &[]).await;
    assert_eq!(status, 200, "{body}");
    pair(&cookie.unwrap())
}

/// A console GET of `path` on `app`, with the session and the console's header.
async fn console_get(app: &TestApp, path: &str, cookie: &str) -> (u16, Value) {
    call(&app.http, app.url(path), Method::GET, Some(cookie), true).await
}

/// `name=value` of a `Set-Cookie`, for the `Cookie` header.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

/// A console call: the cookie and, when `header`, the console's header.
async fn call(
    http: &reqwest::Client,
    url: String,
    method: Method,
    cookie: Option<&str>,
    header: bool,
) -> (u16, Value) {
    let mut request = http.request(method.clone(), url);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if header {
        request = request.header("x-ticketgate-console", "1");
    }
    if method == Method::POST {
        request = request.json(&json!({ "data": 1 }));
    }
    let response = request.send().await.unwrap();
    (
        response.status().as_u16(),
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn without_a_password_there_is_no_console() {
    let app = spawn_app(Store::Memory, &[]).await;
    for path in ["/console", "/console/console.js", "/console/session"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "not_found");
    }
    let (status, _, _) = sign_in(&app.http, &app.url(""), PASSWORD, &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_page_allows_only_its_own_scripts() {
    let app = console_app(&[]).await;
    for (path, kind) in [
        ("/console", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
    ] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(
            headers["content-type"].to_str().unwrap().starts_with(kind),
            "{path}: {headers:?}"
        );
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    let page = app
        .http
        .get(app.url("/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("<script>") && page.contains(r#"src="/console/console.js""#),
        "no inline script, or the CSP would block it"
    );
}

#[tokio::test]
async fn sign_in_sets_a_strict_http_only_cookie() {
    let app = console_app(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let base = app.url("");

    let (status, cookie, body) = sign_in(&app.http, &base, "not the password at all", &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("wrong_password"))
    );
    assert!(cookie.is_none());

    let (status, cookie, body) = sign_in(&app.http, &base, PASSWORD, &[]).await;
    assert_eq!(status, 200, "{body}");
    let now = ticketgate::clock::unix_now();
    let expires_at = body["expires_at"].as_u64().unwrap();
    assert!(
        (now + 28_790..=now + 28_810).contains(&expires_at),
        "{body}"
    );
    let cookie = cookie.unwrap();
    assert!(cookie.starts_with("ticketgate_console="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(cookie.contains(flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");

    // Behind a trusted proxy that terminated TLS, the cookie is Secure.
    let (_, cookie, _) = sign_in(
        &app.http,
        &base,
        PASSWORD,
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(cookie.unwrap().contains("Secure"));
}

#[tokio::test]
async fn the_server_api_takes_a_console_session_with_its_header() {
    let app = console_app(&[]).await;
    let cookie = session_cookie(&app).await;
    let _alice = app.authenticated("alice").await;

    let (status, console_view) = console_get(&app, "/api/connections", &cookie).await;
    assert_eq!(status, 200, "{console_view}");
    let (_, backend_view) = app
        .call_api(API_KEY, Method::GET, "/api/connections", None)
        .await;
    assert_eq!(console_view, backend_view, "the same data for the console");
    assert_eq!(console_view["authenticated"], 1);

    // Every route: refused without the session, and without the console's header.
    let routes = [
        (Method::GET, "/api/nodes"),
        (Method::GET, "/api/series"),
        (Method::GET, "/api/connections"),
        (Method::GET, "/api/channels"),
        (Method::GET, "/api/channels/room:a/presence"),
        (Method::GET, "/api/channels/room:a/history"),
        (Method::GET, "/api/users/alice/connections"),
        (Method::POST, "/api/broadcast"),
        (Method::POST, "/api/publish"),
        (Method::POST, "/api/channels/room:a/publish"),
        (Method::POST, "/api/users/alice/messages"),
        (Method::POST, "/api/users/alice/disconnect"),
        (Method::POST, "/api/users/alice/subscriptions"),
        (Method::DELETE, "/api/users/alice/subscriptions/room:a"),
        (Method::POST, "/api/revocations"),
    ];
    let tampered = format!("{cookie}x");
    for (method, path) in &routes {
        let url = app.url(path);
        let (status, body) = call(&app.http, url.clone(), method.clone(), None, true).await;
        assert_eq!(status, 401, "{path} without a session: {body}");
        let (status, body) =
            call(&app.http, url.clone(), method.clone(), Some(&cookie), false).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("console_session_required")),
            "{path} without the header"
        );
        let (status, _) = call(&app.http, url, method.clone(), Some(&tampered), true).await;
        assert_eq!(status, 401, "{path} with a tampered cookie");
    }
}

#[tokio::test]
async fn a_console_without_an_api_key_still_reaches_the_api() {
    let app = spawn_app(Store::Memory, &[("CONSOLE_PASSWORD", PASSWORD)]).await;
    let cookie = session_cookie(&app).await;
    let (status, body) = console_get(&app, "/api/nodes", &cookie).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["nodes"].as_array().unwrap().len(), 1);
    let (status, body) = app
        .call_api("any-key-at-all-0123456789", Method::GET, "/api/nodes", None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_api_key"))
    );
}

#[tokio::test]
async fn sign_ins_are_limited_per_address() {
    let app = console_app(&[("CONSOLE_SIGNIN_RATE_PER_MIN", "3")]).await;
    for _ in 0..3 {
        let (status, _, _) = sign_in(&app.http, &app.url(""), "wrong wrong wrong wrong", &[]).await;
        assert_eq!(status, 401);
    }
    let response = app
        .http
        .post(app.url("/console/session"))
        .json(&json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "even with the right password");
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
}

#[tokio::test]
async fn a_session_expires() {
    let app = console_app(&[("CONSOLE_SESSION_SECS", "1")]).await;
    let cookie = session_cookie(&app).await;
    let (status, _) = call(
        &app.http,
        app.url("/console/session"),
        Method::GET,
        Some(&cookie),
        false,
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = console_get(&app, "/api/nodes", &cookie).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("console_session_required"))
    );
}

/// Two nodes: a session from one works on the other, and signing out on one ends it on both.
/// Operators' actions are logged with the session's id, and never with the cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_works_on_every_node_until_signed_out() {
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(&mongo_uri(), 2, &[("CONSOLE_PASSWORD", PASSWORD)])
    });
    let http = reqwest::Client::new();
    let (status, set_cookie, _) = sign_in(&http, &cluster.node(1).url(""), PASSWORD, &[]).await;
    assert_eq!(status, 200);
    let set_cookie = set_cookie.unwrap();
    let cookie = pair(&set_cookie);
    let token = cookie.split_once('=').unwrap().1.to_owned();

    let _bob = cluster.client(2, "bob").await;
    let (status, body) = call(
        &http,
        cluster.node(2).url("/api/users/bob/disconnect"),
        Method::POST,
        Some(&cookie),
        true,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let log = cluster.node(2).wait_for_log("disconnect user bob").await;
    assert!(log.contains("console console-session-"), "{log}");
    for node in 1..=2 {
        assert!(
            !cluster.node(node).log().contains(&token),
            "the token is a secret"
        );
    }

    let response = http
        .delete(cluster.node(1).url("/console/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let removal = response.headers()["set-cookie"].to_str().unwrap();
    assert!(removal.contains("Max-Age=0"), "{removal}");
    for node in 1..=2 {
        let (status, _) = call(
            &http,
            cluster.node(node).url("/api/nodes"),
            Method::GET,
            Some(&cookie),
            true,
        )
        .await;
        assert_eq!(status, 401, "node {node} after the sign-out");
    }
}

/// The charts' data: every live node's samples, taken at each heartbeat from its own metrics,
/// for the same nodes `/api/nodes` lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_carries_every_node_s_recent_samples() {
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(&mongo_uri(), 2, &[("CONSOLE_PASSWORD", PASSWORD)])
    });
    let http = reqwest::Client::new();
    let (_, set_cookie, _) = sign_in(&http, &cluster.node(1).url(""), PASSWORD, &[]).await;
    let cookie = pair(&set_cookie.unwrap());
    let _clients = [
        cluster.client(2, "ann").await,
        cluster.client(2, "bo").await,
    ];
    let get = |path: &'static str| {
        let (http, cookie, url) = (&http, &cookie, cluster.node(1).url(path));
        async move { call(http, url, Method::GET, Some(cookie), true).await }
    };

    let deadline = std::time::Instant::now() + PATIENCE;
    let series = loop {
        let (status, series) = get("/api/series").await;
        assert_eq!(status, 200, "{series}");
        let node2_saw_them = series["nodes"][1]["samples"]
            .as_array()
            .is_some_and(|samples| {
                samples.iter().any(|s| s["authenticated"] == 2)
                    && samples
                        .iter()
                        .any(|s| s["authentications_per_sec"].as_f64() > Some(0.0))
            });
        if node2_saw_them {
            break series;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node 2's samples never showed its two clients: {series}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(series["step_secs"], 1);
    let (_, nodes) = get("/api/nodes").await;
    let ids = |body: &Value| -> Vec<String> {
        body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&series), ids(&nodes), "the same nodes, this one first");
    let first = &series["nodes"][0]["samples"][0];
    for field in ["t", "connections", "messages_out_per_sec", "fanout_p99_ms"] {
        assert!(first.get(field).is_some(), "{field} in {first}");
    }
}

const ROOMS: &str = r#"
[[channels.namespaces]]
name = "room"
public = true
"#;

async fn subscribe(client: &mut WsClient, channel: &str) {
    client
        .send_json(&json!({"type": "subscribe", "channel": channel}))
        .await;
    assert_eq!(client.next_json().await["type"], "subscribed");
}

/// Polls a user lookup until `done` holds (the events are written in batches, a moment after).
async fn look_up_until(
    http: &reqwest::Client,
    url: &str,
    done: impl Fn(&Vec<Value>) -> bool,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let response = http
            .get(url)
            .bearer_auth(crate::cluster::API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let connections = body["connections"].as_array().unwrap().clone();
        if done(&connections) {
            return connections;
        }
        assert!(std::time::Instant::now() < deadline, "lookup: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A user with connections on two nodes: the lookup through either node lists both, with
/// their node, address and current subscriptions, and forgets a connection once it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_lookup_lists_the_connections_on_every_node() {
    let file = crate::channels::ConfigFile::new(ROOMS);
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(
            &mongo_uri(),
            2,
            &[("CONSOLE_PASSWORD", PASSWORD), ("CONFIG_FILE", file.path())],
        )
    });
    let (one, two) = (cluster.node_id(1).await, cluster.node_id(2).await);
    let mut first = cluster.client(1, "alice").await;
    subscribe(&mut first, "room:a").await;
    let mut second = cluster.client(2, "alice").await;
    for channel in ["room:b", "room:c"] {
        subscribe(&mut second, channel).await;
    }
    second
        .send_json(&json!({"type": "unsubscribe", "channel": "room:b"}))
        .await;
    second.next_json().await;
    let _bystander = cluster.client(1, "bob").await;

    let http = reqwest::Client::new();
    let url = cluster.node(1).url("/api/users/alice/connections");
    let connections = look_up_until(&http, &url, |c| {
        c.len() == 2 && c[1]["subscriptions"] == json!(["room:c"])
    })
    .await;
    let nodes: Vec<&str> = connections
        .iter()
        .map(|c| c["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, [one.as_str(), two.as_str()], "oldest first");
    assert_eq!(connections[0]["subscriptions"], json!(["room:a"]));
    for connection in &connections {
        assert_eq!(connection["client_ip"], "127.0.0.1");
        assert!(connection["connected_at"].as_u64().unwrap() > 1_700_000_000_000);
        assert!(connection["connection_id"].as_str().unwrap().contains('@'));
    }

    second.close(1000).await;
    let url = cluster.node(2).url("/api/users/alice/connections");
    let left = look_up_until(&http, &url, |c| c.len() == 1).await;
    assert_eq!(left[0]["node"], one.as_str());
}

/// Without MongoDB the node folds its own events: one node is the whole cluster.
#[tokio::test]
async fn a_user_lookup_without_mongodb_reads_this_node() {
    let file = crate::channels::ConfigFile::new(ROOMS);
    let app = console_app(&[("CONFIG_FILE", file.path())]).await;
    let mut alice = app.authenticated("alice").await;
    subscribe(&mut alice, "room:x").await;
    let (status, body) = app
        .call_api(API_KEY, Method::GET, "/api/users/alice/connections", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connections"][0]["subscriptions"], json!(["room:x"]));
    assert_eq!(body["connections"][0]["node"], app.node.as_str());
    alice.close(1000).await;
    wait_until("alice's connection to end", || {
        app.hub.authenticated_count() == 0
    })
    .await;
    let (_, body) = app
        .call_api(API_KEY, Method::GET, "/api/users/alice/connections", None)
        .await;
    assert_eq!(body["connections"], json!([]));

    let plain = spawn_app(Store::Memory, &[("API_KEY", API_KEY)]).await;
    let (status, body) = plain
        .call_api(API_KEY, Method::GET, "/api/users/alice/connections", None)
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("user_lookup_disabled"))
    );
}

/// The console's live tail: Server-Sent Events with the channel's publications made through
/// any node, and nothing else; refused without a session; the listener leaves with the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_streams_the_channel_s_publications_from_every_node() {
    let file = crate::channels::ConfigFile::new(ROOMS);
    let cluster = tokio::task::block_in_place(|| {
        Cluster::start_with(
            &mongo_uri(),
            2,
            &[("CONSOLE_PASSWORD", PASSWORD), ("CONFIG_FILE", file.path())],
        )
    });
    let http = reqwest::Client::new();
    let tail_url = cluster.node(1).url("/console/channels/room:live/tail");
    let refused = http.get(&tail_url).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let (_, set_cookie, _) = sign_in(&http, &cluster.node(1).url(""), PASSWORD, &[]).await;
    let cookie = pair(&set_cookie.unwrap());
    for (channel, error) in [
        ("bad%20name", "invalid_channel"),
        ("nowhere:x", "unknown_namespace"),
    ] {
        let url = cluster
            .node(1)
            .url(&format!("/console/channels/{channel}/tail"));
        let response = http
            .get(url)
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{channel}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], error);
    }

    let response = http
        .get(&tail_url)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response;
    let connections_before = cluster.get(1, "/api/connections").await;
    cluster
        .broadcast(2, json!("a broadcast is not the channel's"))
        .await;
    for (channel, data) in [("room:other", "elsewhere"), ("room:live", "through node 2")] {
        let path = format!("/api/channels/{channel}/publish");
        let (status, body) = cluster.post(2, &path, json!({ "data": data })).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(PATIENCE, stream.chunk())
            .await
            .expect("an event within PATIENCE")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let event = text
        .strip_prefix("data: ")
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    let publication: Value = serde_json::from_str(event).unwrap();
    assert_eq!(publication["type"], "publication");
    assert_eq!(publication["channel"], "room:live");
    assert_eq!(publication["data"], "through node 2");
    assert_eq!(
        connections_before["total"], 0,
        "the console's listener is no connection: {connections_before}"
    );

    // The server learns that the browser left when a keep-alive write fails (every 3 s).
    drop(stream);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let channels = cluster.get(1, "/api/channels?prefix=room:").await;
        if channels["channels"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the listener stayed: {channels}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
