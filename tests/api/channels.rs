//! Channels on one node: subscribing with claim grants, subscription tokens and public
//! namespaces; every error code; publications through the API; server-side subscriptions;
//! grants that follow refreshes, expiries and revocations; presence and join/leave; and the
//! hub's tables empty again once the connections are gone (docs/PROTOCOL.md, "Channels").

use std::time::Duration;

use serde_json::{Value, json};
use ticketgate::jwt::Claims;

use crate::support::*;

const API_KEY: &str = "channels-api-key-0123456789";

/// The namespaces every test here runs with.
pub const NAMESPACES: &str = r#"
[channels]
public = false

[[channels.namespaces]]
name = "chat"
presence = true
join_leave = true

[[channels.namespaces]]
name = "news"
public = true

[[channels.namespaces]]
name = "tenant-42"
"#;

/// A configuration file for the test's lifetime.
pub struct ConfigFile(std::path::PathBuf);

impl ConfigFile {
    pub fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("ticketgate-test-{}.toml", unique_db_name()));
        std::fs::write(&path, contents).unwrap();
        ConfigFile(path)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn channel_app(store: Store, extra: &[(&str, &str)]) -> TestApp {
    let file = ConfigFile::new(NAMESPACES);
    let mut vars = vec![("API_KEY", API_KEY), ("CONFIG_FILE", file.path())];
    vars.extend_from_slice(extra);
    spawn_app(store, &vars).await
}

/// A connection JWT for `sub` with a `channels` claim.
pub fn jwt_granting(sub: &str, channels: &[&str]) -> String {
    jwt_with(&Claims {
        sub: sub.into(),
        exp: now() + 600,
        channels: Some(channels.iter().map(|c| c.to_string()).collect()),
        ..Claims::default()
    })
}

/// A subscription token for `sub` and `channel`.
pub fn subscription_token(sub: &str, channel: &str, ttl: u64, jti: Option<&str>) -> String {
    jwt_with(&Claims {
        sub: sub.into(),
        exp: now() + ttl,
        channel: Some(channel.into()),
        jti: jti.map(str::to_owned),
        ..Claims::default()
    })
}

/// An authenticated connection of `sub` whose JWT grants `channels`.
async fn granted(app: &TestApp, sub: &str, channels: &[&str]) -> WsClient {
    let mut client = app.connect(&app.ticket(sub).await).await;
    assert_eq!(client.authenticate(&jwt_granting(sub, channels)).await, sub);
    client
}

/// Sends `request` and returns the next message.
async fn ask(client: &mut WsClient, request: Value) -> Value {
    client.send_json(&request).await;
    client.next_json().await
}

async fn subscribe(client: &mut WsClient, channel: &str) {
    let reply = ask(client, json!({"type": "subscribe", "channel": channel})).await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": channel}),
        "subscribing to {channel}"
    );
}

async fn api(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    app.call_api(API_KEY, method, path, body).await
}

async fn publish(app: &TestApp, channel: &str, data: Value) -> Value {
    let path = format!("/api/channels/{}/publish", encode(channel));
    let (status, body) = api(
        app,
        reqwest::Method::POST,
        &path,
        Some(json!({"data": data})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    body
}

/// A channel name as an API path segment: `/` percent-encoded.
fn encode(channel: &str) -> String {
    channel.replace('/', "%2F")
}

fn publication(channel: &str, data: Value) -> Value {
    json!({"type": "publication", "channel": channel, "data": data})
}

/// The error reply, without its human-readable `message` (checked to be there).
fn error_code(mut reply: Value) -> Value {
    assert!(reply["message"].is_string(), "{reply}");
    reply.as_object_mut().unwrap().remove("message");
    reply
}

#[tokio::test]
async fn subscribe_receive_unsubscribe() {
    for store in [Store::Memory, Store::Mongo] {
        let app = channel_app(store, &[]).await;
        let mut alice = granted(&app, "alice", &["chat:room-1"]).await;
        let mut bob = granted(&app, "bob", &["chat:room-1"]).await;
        let reply = ask(
            &mut alice,
            json!({"type": "subscribe", "channel": "chat:room-1", "id": 1}),
        )
        .await;
        assert_eq!(
            reply,
            json!({"type": "subscribed", "channel": "chat:room-1", "id": 1})
        );
        let join = alice.next_json().await;
        assert_eq!(join["type"], "join", "chat has join_leave: {join}");

        publish(&app, "chat:room-1", json!({"text": "hello"})).await;
        assert_eq!(
            alice.next_json().await,
            publication("chat:room-1", json!({"text": "hello"}))
        );
        bob.expect_silence(Duration::from_millis(200)).await;

        let reply = ask(
            &mut alice,
            json!({"type": "unsubscribe", "channel": "chat:room-1", "id": "u"}),
        )
        .await;
        assert_eq!(
            reply,
            json!({"type": "unsubscribed", "channel": "chat:room-1", "id": "u"})
        );
        publish(&app, "chat:room-1", json!(2)).await;
        alice.expect_silence(Duration::from_millis(300)).await;
        assert!(app.hub.channel_tables_are_empty());
    }
}

#[tokio::test]
async fn every_error_code_answers_and_keeps_the_connection_open() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = granted(&app, "alice", &["chat:room-1"]).await;
    let cases = [
        (
            json!({"type": "subscribe", "channel": "bad name", "id": 1}),
            json!({"type": "error", "error": "invalid_channel", "channel": "bad name", "id": 1}),
        ),
        (
            json!({"type": "subscribe", "channel": "", "id": 2}),
            json!({"type": "error", "error": "invalid_channel", "channel": "", "id": 2}),
        ),
        (
            json!({"type": "subscribe", "channel": "x".repeat(256), "id": 3}),
            json!({"type": "error", "error": "invalid_channel", "channel": "x".repeat(256), "id": 3}),
        ),
        (
            json!({"type": "subscribe", "channel": 5, "id": 4}),
            json!({"type": "error", "error": "bad_message", "id": 4}),
        ),
        (
            json!({"type": "subscribe", "id": 5}),
            json!({"type": "error", "error": "bad_message", "id": 5}),
        ),
        (
            json!({"type": "subscribe", "channel": "nowhere:x", "id": 6}),
            json!({"type": "error", "error": "unknown_namespace", "channel": "nowhere:x", "id": 6}),
        ),
        (
            json!({"type": "subscribe", "channel": "chat:room-2", "id": 7}),
            json!({"type": "error", "error": "permission_denied", "channel": "chat:room-2", "id": 7}),
        ),
        (
            json!({"type": "subscribe", "channel": "lobby", "id": 8}),
            json!({"type": "error", "error": "permission_denied", "channel": "lobby", "id": 8}),
        ),
        (
            json!({"type": "unsubscribe", "channel": "chat:room-1", "id": 9}),
            json!({"type": "error", "error": "not_subscribed", "channel": "chat:room-1", "id": 9}),
        ),
        (
            json!({"type": "presence", "channel": "chat:room-1", "id": 10}),
            json!({"type": "error", "error": "not_subscribed", "channel": "chat:room-1", "id": 10}),
        ),
        (
            json!({"type": "presence", "channel": "news:today", "id": 11}),
            json!({"type": "error", "error": "presence_disabled", "channel": "news:today", "id": 11}),
        ),
        (
            json!({"type": "unsubscribe", "channel": "a b", "id": 12}),
            json!({"type": "error", "error": "invalid_channel", "channel": "a b", "id": 12}),
        ),
        (
            json!({"type": "presence", "channel": "nowhere:x", "id": 13}),
            json!({"type": "error", "error": "unknown_namespace", "channel": "nowhere:x", "id": 13}),
        ),
    ];
    for (request, expected) in cases {
        let reply = ask(&mut client, request.clone()).await;
        assert_eq!(error_code(reply), expected, "for {request}");
    }
    let reply = ask(&mut client, json!({"type": "ping", "id": "still"})).await;
    assert_eq!(reply, json!({"type": "pong", "id": "still"}));
}

#[tokio::test]
async fn a_subscribe_before_authentication_closes_with_4400() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = app.connect(&app.ticket("alice").await).await;
    client
        .send_json(&json!({"type": "subscribe", "channel": "news:today"}))
        .await;
    client.expect_close(4400).await;
}

#[tokio::test]
async fn claim_grants_exact_names_and_prefixes_and_public_namespaces() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = granted(&app, "alice", &["chat:room-1", "tenant-42:*"]).await;
    for allowed in ["tenant-42:dashboard", "tenant-42:a/b", "news:today"] {
        subscribe(&mut client, allowed).await;
    }
    for denied in ["chat:room-10", "chat:room", "lobby"] {
        let reply = ask(&mut client, json!({"type": "subscribe", "channel": denied})).await;
        assert_eq!(reply["error"], "permission_denied", "{denied}: {reply}");
    }
    // A connection without any claim still reaches public namespaces.
    let mut plain = app.authenticated("bob").await;
    subscribe(&mut plain, "news:today").await;
    let reply = ask(
        &mut plain,
        json!({"type": "subscribe", "channel": "tenant-42:dashboard"}),
    )
    .await;
    assert_eq!(reply["error"], "permission_denied", "{reply}");

    // `/` in a channel name is percent-encoded in API paths.
    publish(&app, "tenant-42:a/b", json!("slash")).await;
    assert_eq!(
        client.next_json().await,
        publication("tenant-42:a/b", json!("slash"))
    );
}

#[tokio::test]
async fn subscribing_twice_is_idempotent_even_at_the_limit() {
    let app = channel_app(Store::Memory, &[("MAX_SUBSCRIPTIONS_PER_CONNECTION", "3")]).await;
    let mut client = granted(&app, "alice", &["tenant-42:*"]).await;
    for i in 0..3 {
        subscribe(&mut client, &format!("tenant-42:c{i}")).await;
    }
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": "tenant-42:c3", "id": 1}),
    )
    .await;
    assert_eq!(
        error_code(reply),
        json!({"type": "error", "error": "too_many_subscriptions", "channel": "tenant-42:c3", "id": 1})
    );
    // Held already: the same reply, at the limit, and still one delivery per publication.
    subscribe(&mut client, "tenant-42:c0").await;
    publish(&app, "tenant-42:c0", json!(1)).await;
    assert_eq!(
        client.next_json().await,
        publication("tenant-42:c0", json!(1))
    );
    client.expect_silence(Duration::from_millis(300)).await;
    // Leaving one makes room.
    ask(
        &mut client,
        json!({"type": "unsubscribe", "channel": "tenant-42:c1"}),
    )
    .await;
    subscribe(&mut client, "tenant-42:c3").await;
}

#[tokio::test]
async fn the_default_limit_is_128_subscriptions() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = granted(&app, "alice", &["tenant-42:*"]).await;
    for i in 0..128 {
        client
            .send_json(&json!({"type": "subscribe", "channel": format!("tenant-42:c{i}")}))
            .await;
    }
    for _ in 0..128 {
        assert_eq!(client.next_json().await["type"], "subscribed");
    }
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": "tenant-42:one-more"}),
    )
    .await;
    assert_eq!(reply["error"], "too_many_subscriptions", "{reply}");
    assert_eq!(app.hub.channel_counts("tenant-42:").len(), 128);
}

#[tokio::test]
async fn subscription_tokens_for_the_right_user_and_channel_only() {
    let app = channel_app(Store::Mongo, &[]).await;
    let mut client = app.authenticated("alice").await;
    let channel = "chat:secret";
    let refused = [
        subscription_token("mallory", channel, 600, None),
        subscription_token("alice", "chat:other", 600, None),
        jwt_with(&Claims {
            sub: "alice".into(),
            exp: now() - 30,
            channel: Some(channel.into()),
            ..Claims::default()
        }),
        // A connection JWT is not a subscription token.
        jwt("alice"),
        "not-a-jwt".into(),
    ];
    for token in refused {
        let reply = ask(
            &mut client,
            json!({"type": "subscribe", "channel": channel, "token": token, "id": 1}),
        )
        .await;
        assert_eq!(reply["error"], "permission_denied", "{reply}");
        assert_eq!(reply["id"], 1);
    }
    // A revoked jti is refused.
    let (status, body) = api(
        &app,
        reqwest::Method::POST,
        "/api/revocations",
        Some(json!({"jti": "sub-revoked", "expires_at": now() + 600})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let token = subscription_token("alice", channel, 600, Some("sub-revoked"));
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": channel, "token": token}),
    )
    .await;
    assert_eq!(reply["error"], "permission_denied", "{reply}");

    let token = subscription_token("alice", channel, 600, Some("sub-1"));
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": channel, "token": token, "id": 2}),
    )
    .await;
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": channel, "id": 2})
    );
    assert_eq!(client.next_json().await["type"], "join");
    publish(&app, channel, json!("for alice")).await;
    assert_eq!(
        client.next_json().await,
        publication(channel, json!("for alice"))
    );
}

#[tokio::test]
async fn a_subscription_token_can_not_authenticate_a_connection() {
    let app = channel_app(Store::Memory, &[]).await;
    let token = subscription_token("alice", "chat:x", 600, None);
    let (status, body) = app.mint(Some(&format!("Bearer {token}"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token")),
        "{body}"
    );
    let mut client = app.connect(&app.ticket("alice").await).await;
    client
        .send_json(&json!({"type": "jwt", "token": token}))
        .await;
    client.expect_close(4401).await;
}

#[tokio::test]
async fn a_fresh_token_refreshes_in_place_without_a_gap() {
    let app = channel_app(Store::Memory, &[]).await;
    let channel = "chat:refresh";
    let mut client = app.authenticated("alice").await;
    let token = subscription_token("alice", channel, 600, Some("first"));
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": channel, "token": token}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(client.next_json().await["type"], "join");

    // Publications keep flowing while the token is replaced.
    let publisher = {
        let app_url = app.url("");
        let http = app.http.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                let response = http
                    .post(format!("{app_url}/api/channels/{channel}/publish"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"data": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let token = subscription_token("alice", channel, 1200, Some("second"));
    client
        .send_json(&json!({"type": "subscribe", "channel": channel, "token": token, "id": "r"}))
        .await;
    publisher.await.unwrap();
    let mut received = Vec::new();
    let mut refreshed = None;
    while received.len() < 50 {
        let message = client.next_json().await;
        match message["type"].as_str() {
            Some("publication") => received.push(message["data"].as_u64().unwrap()),
            Some("subscribed") => refreshed = Some(message),
            _ => panic!("unexpected {message}"),
        }
    }
    let refreshed = match refreshed {
        Some(reply) => reply,
        None => client.next_json().await,
    };
    assert_eq!(
        refreshed,
        json!({"type": "subscribed", "channel": channel, "id": "r", "refreshed": true})
    );
    assert_eq!(
        received,
        (0..50).collect::<Vec<_>>(),
        "every publication once, in order"
    );
    client.expect_silence(Duration::from_millis(200)).await;

    // The old token's jti no longer holds it; the new one's does.
    let (status, _) = api(
        &app,
        reqwest::Method::POST,
        "/api/revocations",
        Some(json!({"jti": "first", "expires_at": now() + 600})),
    )
    .await;
    assert_eq!(status, 201);
    client.expect_silence(Duration::from_millis(300)).await;
    let (status, _) = api(
        &app,
        reqwest::Method::POST,
        "/api/revocations",
        Some(json!({"jti": "second", "expires_at": now() + 600})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        client.next_json().await,
        json!({"type": "unsubscribed", "channel": channel, "reason": "revoked"})
    );
    assert_eq!(
        ask(&mut client, json!({"type": "ping"})).await,
        json!({"type": "pong"}),
        "still open"
    );
}

#[tokio::test]
async fn a_token_subscription_gets_its_notice_then_ends_at_exp() {
    let app = channel_app(Store::Memory, &[("TOKEN_REFRESH_NOTICE_SECS", "1")]).await;
    let channel = "tenant-42:short";
    let mut client = app.authenticated("alice").await;
    let token = subscription_token("alice", channel, 2, None);
    let expires_at = now() + 2;
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": channel, "token": token}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let notice = client.next_json().await;
    assert_eq!(notice["type"], "subscription_expiring", "{notice}");
    assert_eq!(notice["channel"], channel);
    assert!(
        notice["expires_at"].as_u64().unwrap().abs_diff(expires_at) <= 1,
        "{notice}"
    );
    assert_eq!(
        client.next_json().await,
        json!({"type": "unsubscribed", "channel": channel, "reason": "token_expired"})
    );
    publish(&app, channel, json!(1)).await;
    client.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        ask(&mut client, json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );
}

#[tokio::test]
async fn a_refresh_that_drops_a_grant_ends_only_those_subscriptions() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = granted(&app, "alice", &["tenant-42:*", "chat:keep"]).await;
    subscribe(&mut client, "tenant-42:a").await;
    subscribe(&mut client, "news:today").await;
    let token = subscription_token("alice", "tenant-42:by-token", 600, None);
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": "tenant-42:by-token", "token": token}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed");

    let refresh = jwt_granting("alice", &["chat:keep"]);
    let welcome = ask(
        &mut client,
        json!({"type": "jwt", "token": refresh, "id": 5}),
    )
    .await;
    assert_eq!(welcome["type"], "authenticated");
    assert_eq!(welcome["id"], 5);
    assert_eq!(
        client.next_json().await,
        json!({"type": "unsubscribed", "channel": "tenant-42:a", "reason": "permission_lost"})
    );
    client.expect_silence(Duration::from_millis(200)).await;
    for (channel, reaches) in [
        ("tenant-42:a", false),
        ("news:today", true),
        ("tenant-42:by-token", true),
    ] {
        publish(&app, channel, json!(channel)).await;
        if reaches {
            assert_eq!(
                client.next_json().await,
                publication(channel, json!(channel))
            );
        }
    }
    client.expect_silence(Duration::from_millis(200)).await;
    // The new claims grant what they say.
    let reply = ask(
        &mut client,
        json!({"type": "subscribe", "channel": "tenant-42:b"}),
    )
    .await;
    assert_eq!(reply["error"], "permission_denied");
}

#[tokio::test]
async fn server_side_subscriptions_need_no_grant_and_survive_a_refresh() {
    for store in [Store::Memory, Store::Mongo] {
        let app = channel_app(store, &[]).await;
        let mut first = app.authenticated("alice").await;
        let mut second = app.authenticated("alice").await;
        let mut other = app.authenticated("bob").await;
        let (status, body) = api(
            &app,
            reqwest::Method::POST,
            "/api/users/alice/subscriptions",
            Some(json!({"channel": "tenant-42:ops"})),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        for client in [&mut first, &mut second] {
            assert_eq!(
                client.next_json().await,
                json!({"type": "subscribed", "channel": "tenant-42:ops", "server": true})
            );
        }
        publish(&app, "tenant-42:ops", json!("ops")).await;
        for client in [&mut first, &mut second] {
            assert_eq!(
                client.next_json().await,
                publication("tenant-42:ops", json!("ops"))
            );
        }
        other.expect_silence(Duration::from_millis(200)).await;

        // A refresh whose JWT grants nothing leaves it alone.
        let welcome = ask(&mut first, json!({"type": "jwt", "token": jwt("alice")})).await;
        assert_eq!(welcome["type"], "authenticated");
        first.expect_silence(Duration::from_millis(200)).await;

        let (status, _) = api(
            &app,
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
        // Names and namespaces are still checked; a user without connections is no error.
        for (path, body, code) in [
            (
                "/api/users/alice/subscriptions",
                json!({"channel": "bad name"}),
                "invalid_channel",
            ),
            (
                "/api/users/alice/subscriptions",
                json!({"channel": "nowhere:x"}),
                "unknown_namespace",
            ),
        ] {
            let (status, reply) = api(&app, reqwest::Method::POST, path, Some(body)).await;
            assert_eq!(
                (status, reply["error"].as_str()),
                (400, Some(code)),
                "{reply}"
            );
        }
        let (status, _) = api(
            &app,
            reqwest::Method::POST,
            "/api/users/nobody/subscriptions",
            Some(json!({"channel": "lobby"})),
        )
        .await;
        assert_eq!(status, 202);
        let (status, reply) = api(
            &app,
            reqwest::Method::DELETE,
            "/api/users/alice/subscriptions/nowhere:x",
            None,
        )
        .await;
        assert_eq!(
            (status, reply["error"].as_str()),
            (400, Some("unknown_namespace"))
        );
        let (status, reply) = api(
            &app,
            reqwest::Method::GET,
            "/api/users/alice/subscriptions/lobby",
            None,
        )
        .await;
        assert_eq!(
            (status, reply["error"].as_str()),
            (405, Some("method_not_allowed"))
        );
    }
}

#[tokio::test]
async fn presence_and_join_leave_on_one_node() {
    for store in [Store::Memory, Store::Mongo] {
        presence_on_one_node(store).await;
    }
}

async fn presence_on_one_node(store: Store) {
    let app = channel_app(store, &[]).await;
    let channel = "chat:room-1";
    let mut alice = granted(&app, "alice", &[channel]).await;
    let mut bob = granted(&app, "bob", &[channel]).await;
    subscribe(&mut alice, channel).await;
    let own_join = alice.next_json().await;
    assert_eq!(
        (own_join["type"].as_str(), own_join["user_id"].as_str()),
        (Some("join"), Some("alice"))
    );
    subscribe(&mut bob, channel).await;
    let bob_join = alice.next_json().await;
    assert_eq!(bob_join["type"], "join");
    assert_eq!(bob_join["user_id"], "bob");
    let bob_connection = bob_join["connection_id"].as_str().unwrap().to_owned();
    assert!(
        bob_connection.ends_with(&format!("@{}", app.node)),
        "{bob_connection}"
    );
    assert_eq!(
        bob.next_json().await["type"],
        "join",
        "bob sees his own join"
    );

    let reply = ask(
        &mut alice,
        json!({"type": "presence", "channel": channel, "id": 1}),
    )
    .await;
    assert_eq!(reply["type"], "presence");
    assert_eq!(reply["id"], 1);
    let mut users: Vec<&str> = reply["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user_id"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    assert!(
        reply["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["node"] == app.node.as_str())
    );

    let (status, body) = api(
        &app,
        reqwest::Method::GET,
        &format!("/api/channels/{channel}/presence"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["channel"], channel);
    assert_eq!(
        body["clients"], reply["clients"],
        "the API and the socket agree"
    );
    let (status, body) = api(
        &app,
        reqwest::Method::GET,
        "/api/channels/news:today/presence",
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("presence_disabled"))
    );

    // Going, by unsubscribe and by closing.
    drop(bob);
    let leave = alice.next_json().await;
    assert_eq!(
        leave,
        json!({"type": "leave", "channel": channel, "user_id": "bob", "connection_id": bob_connection})
    );
    let reply = ask(&mut alice, json!({"type": "presence", "channel": channel})).await;
    assert_eq!(reply["clients"].as_array().unwrap().len(), 1, "{reply}");
}

#[tokio::test]
async fn the_channel_list_counts_subscribers_by_prefix() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut a = granted(&app, "a", &["tenant-42:*"]).await;
    let mut b = granted(&app, "b", &["tenant-42:*"]).await;
    subscribe(&mut a, "tenant-42:x").await;
    subscribe(&mut b, "tenant-42:x").await;
    subscribe(&mut a, "tenant-42:y").await;
    subscribe(&mut b, "news:today").await;
    let (status, body) = api(&app, reqwest::Method::GET, "/api/channels", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"channels": [
            {"channel": "news:today", "subscribers": 1},
            {"channel": "tenant-42:x", "subscribers": 2},
            {"channel": "tenant-42:y", "subscribers": 1},
        ]})
    );
    let (_, body) = api(
        &app,
        reqwest::Method::GET,
        "/api/channels?prefix=tenant-42:y",
        None,
    )
    .await;
    assert_eq!(
        body,
        json!({"channels": [{"channel": "tenant-42:y", "subscribers": 1}]})
    );
}

#[tokio::test]
async fn publishing_to_many_channels_at_once() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = granted(&app, "alice", &["tenant-42:*"]).await;
    subscribe(&mut client, "tenant-42:a").await;
    subscribe(&mut client, "news:b").await;
    let (status, body) = api(&app, reqwest::Method::POST, "/api/publish", Some(json!({"channels": ["tenant-42:a", "news:b", "lobby", "tenant-42:a"], "data": {"n": 1}}))).await;
    assert_eq!(status, 202, "{body}");
    let mut got = vec![client.next_json().await, client.next_json().await];
    got.sort_by_key(|m| m["channel"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        [
            publication("news:b", json!({"n": 1})),
            publication("tenant-42:a", json!({"n": 1}))
        ]
    );
    client.expect_silence(Duration::from_millis(200)).await;

    let too_many: Vec<String> = (0..1001).map(|i| format!("lobby-{i}")).collect();
    for (body, code) in [
        (json!({"channels": too_many, "data": 1}), "bad_request"),
        (json!({"channels": [], "data": 1}), "bad_request"),
        (
            json!({"channels": ["bad name"], "data": 1}),
            "invalid_channel",
        ),
        (
            json!({"channels": ["nowhere:x"], "data": 1}),
            "unknown_namespace",
        ),
        (json!({"channels": "lobby", "data": 1}), "bad_request"),
    ] {
        let (status, reply) = api(&app, reqwest::Method::POST, "/api/publish", Some(body)).await;
        assert_eq!(
            (status, reply["error"].as_str()),
            (400, Some(code)),
            "{reply}"
        );
    }
    let (status, reply) = api(
        &app,
        reqwest::Method::POST,
        "/api/channels/bad%20name/publish",
        Some(json!({"data": 1})),
    )
    .await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (400, Some("invalid_channel"))
    );
}

#[tokio::test]
async fn metrics_count_channels_subscriptions_and_refusals() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut client = granted(&app, "alice", &["tenant-42:*"]).await;
    subscribe(&mut client, "tenant-42:a").await;
    subscribe(&mut client, "tenant-42:b").await;
    let mut other = granted(&app, "bob", &["tenant-42:*"]).await;
    subscribe(&mut other, "tenant-42:a").await;
    for _ in 0..2 {
        let reply = ask(
            &mut client,
            json!({"type": "subscribe", "channel": "lobby"}),
        )
        .await;
        assert_eq!(reply["error"], "permission_denied");
    }
    let samples = scrape_metrics(&app.http, &app.url("/metrics")).await;
    let metric = |name: &str, labels: &[(&str, &str)]| metric_value(&samples, name, labels);
    assert_eq!(metric("ticketgate_channels", &[]), 2.0);
    assert_eq!(metric("ticketgate_subscriptions", &[]), 3.0);
    assert_eq!(
        metric(
            "ticketgate_channel_requests_refused_total",
            &[("code", "permission_denied")]
        ),
        2.0
    );
}

/// The MongoDB operations the gateway made so far for requests (the heartbeat's own, which
/// run on a timer, left out).
async fn store_operations(app: &TestApp) -> f64 {
    const TIMED: &[&str] = &["node_heartbeat", "beating_nodes", "presence_nodes"];
    let samples = scrape_metrics(&app.http, &app.url("/metrics")).await;
    samples
        .iter()
        .filter(|s| s.metric == "ticketgate_store_operation_seconds")
        .filter(|s| !TIMED.contains(&s.labels.get("operation").unwrap_or_default()))
        .map(|s| match &s.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .sum()
}

/// A subscribe granted by the JWT's claim costs no MongoDB operation (in a namespace without
/// presence), nor does an unsubscribe: the rate is the gateway's own.
#[tokio::test]
async fn subscribing_with_a_claim_grant_touches_no_database() {
    let app = channel_app(Store::Mongo, &[]).await;
    let mut client = granted(&app, "alice", &["tenant-42:*"]).await;
    let before = store_operations(&app).await;
    for i in 0..50 {
        subscribe(&mut client, &format!("tenant-42:c{i}")).await;
    }
    subscribe(&mut client, "news:today").await;
    let reply = ask(
        &mut client,
        json!({"type": "unsubscribe", "channel": "tenant-42:c0"}),
    )
    .await;
    assert_eq!(reply["type"], "unsubscribed");
    assert_eq!(store_operations(&app).await, before);
    // A presence namespace, by contrast, records the subscriber.
    let mut chat = granted(&app, "bob", &["chat:*"]).await;
    let before = store_operations(&app).await;
    subscribe(&mut chat, "chat:room").await;
    assert!(store_operations(&app).await > before);
}

#[tokio::test]
async fn connections_that_close_leave_the_channel_tables_empty() {
    let app = channel_app(Store::Memory, &[]).await;
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut client = granted(&app, &format!("user-{i}"), &["tenant-42:*"]).await;
        for c in 0..40 {
            client
                .send_json(&json!({"type": "subscribe", "channel": format!("tenant-42:c{c}")}))
                .await;
        }
        let token = subscription_token(&format!("user-{i}"), "chat:with-token", 600, Some("jti-x"));
        client
            .send_json(&json!({"type": "subscribe", "channel": "chat:with-token", "token": token}))
            .await;
        // 41 `subscribed`, and its own join in chat (a join_leave namespace).
        for _ in 0..42 {
            let reply = client.next_json().await;
            assert!(
                ["subscribed", "join"].contains(&reply["type"].as_str().unwrap()),
                "{reply}"
            );
        }
        clients.push(client);
    }
    assert_eq!(app.hub.channel_counts("").len(), 41);
    assert!(!app.hub.channel_tables_are_empty());
    drop(clients);
    app.assert_no_connections_left().await;
    wait_until("the channel tables to empty", || {
        app.hub.channel_tables_are_empty()
    })
    .await;
}
