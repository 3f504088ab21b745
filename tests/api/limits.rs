//! Message-size, request-rate and connection limits, each against the running gateway.

use std::time::Duration;

use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::support::*;

fn fragment(opcode: Data, payload: &str, last: bool) -> Message {
    Message::Frame(Frame::message(
        payload.as_bytes().to_vec(),
        OpCode::Data(opcode),
        last,
    ))
}

#[tokio::test]
async fn before_auth_messages_are_capped_at_16_kib_after_auth_at_max_message_bytes() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let mut early = app.connect(&app.ticket("alice").await).await;
    let padding = "x".repeat(17 * 1024);
    early
        .send_json(&json!({"type": "jwt", "token": jwt("alice"), "pad": padding}))
        .await;
    early.expect_close(1009).await;

    // The same 17 KiB is fine once authenticated (MAX_MESSAGE_BYTES defaults to 64 KiB).
    let mut client = app.authenticated("alice").await;
    client
        .send_json(&json!({"type": "echo", "data": padding}))
        .await;
    assert_eq!(
        client.next_json().await["data"].as_str().unwrap().len(),
        padding.len()
    );
    client
        .send_json(&json!({"type": "echo", "data": "y".repeat(70 * 1024)}))
        .await;
    client.expect_close(1009).await;
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn fragmented_messages_are_aggregated_within_the_caps() {
    let app = spawn_app(Store::Mongo, &[("MAX_MESSAGE_BYTES", "2048")]).await;
    let mut client = app.connect(&app.ticket("alice").await).await;
    let first = json!({"type": "jwt", "token": jwt("alice")}).to_string();
    let (a, rest) = first.split_at(10);
    let (b, c) = rest.split_at(rest.len() / 2);
    client.send(fragment(Data::Text, a, false)).await;
    client.send(fragment(Data::Continue, b, false)).await;
    client.send(fragment(Data::Continue, c, true)).await;
    assert_eq!(
        client.next_json().await["type"],
        "authenticated",
        "a fragmented JWT message works"
    );

    client
        .send(fragment(Data::Text, r#"{"type":"echo","#, false))
        .await;
    client
        .send(fragment(Data::Continue, r#""data":"joined"}"#, true))
        .await;
    assert_eq!(
        client.next_json().await,
        json!({"type": "echo", "data": "joined"})
    );

    let chunk = "z".repeat(900);
    client
        .send(fragment(
            Data::Text,
            &format!(r#"{{"type":"echo","data":"{chunk}"#),
            false,
        ))
        .await;
    client.send(fragment(Data::Continue, &chunk, false)).await;
    client
        .send(fragment(Data::Continue, &format!(r#"{chunk}"}}"#), true))
        .await;
    client.expect_close(1009).await;

    // Fragments of a first message over 16 KiB are refused as they arrive.
    let mut early = app.connect(&app.ticket("alice").await).await;
    let big = "q".repeat(10 * 1024);
    early.send(fragment(Data::Text, &big, false)).await;
    early.send(fragment(Data::Continue, &big, true)).await;
    early.expect_close(1009).await;
    app.assert_no_connections_left().await;
}

#[tokio::test]
async fn ticket_minting_is_rate_limited_per_user() {
    let app = spawn_app(Store::Mongo, &[("TICKET_RATE_PER_MIN", "3")]).await;
    for _ in 0..3 {
        app.ticket("alice").await;
    }
    let response = app
        .http
        .get(app.url("/token/ws"))
        .bearer_auth(jwt("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=20).contains(&retry_after),
        "3 per minute refill one every 20 s: {retry_after}"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    app.ticket("bob").await;
}

async fn upgrade_status(app: &TestApp, headers: &[(&str, &str)]) -> u16 {
    // A well-formed but unknown ticket: the rate limit applies before the ticket is looked at.
    let url = app.ws_url(&ticketgate::ticket::NewTicket::generate().to_string());
    match try_connect_with_headers(&url, headers).await {
        Ok(_) => 101,
        Err((status, _)) => status,
    }
}

#[tokio::test]
async fn upgrade_attempts_are_rate_limited_per_client_ip() {
    let app = spawn_app(Store::Mongo, &[("UPGRADE_RATE_PER_MIN", "3")]).await;
    for _ in 0..3 {
        assert_eq!(upgrade_status(&app, &[]).await, 401);
    }
    assert_eq!(upgrade_status(&app, &[]).await, 429);
    // Without TRUSTED_PROXIES, X-Forwarded-For cannot buy a fresh allowance.
    assert_eq!(
        upgrade_status(&app, &[("X-Forwarded-For", "203.0.113.9")]).await,
        429
    );
    let (status, body) = app
        .try_connect(&app.ticket("alice").await, None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (429, "rate_limited")
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let app = spawn_app(
        Store::Mongo,
        &[
            ("UPGRADE_RATE_PER_MIN", "2"),
            ("TRUSTED_PROXIES", "127.0.0.0/8"),
        ],
    )
    .await;
    let one = [("X-Forwarded-For", "203.0.113.1")];
    let two = [("X-Forwarded-For", "198.51.100.7, 203.0.113.2")];
    assert_eq!(upgrade_status(&app, &one).await, 401);
    assert_eq!(upgrade_status(&app, &one).await, 401);
    assert_eq!(upgrade_status(&app, &one).await, 429);
    assert_eq!(upgrade_status(&app, &two).await, 401);
    assert_eq!(upgrade_status(&app, &two).await, 401);
    // The client wrote the left-most entry; only the right-most untrusted hop counts.
    let spoofed = [("X-Forwarded-For", "198.51.100.99, 203.0.113.2")];
    assert_eq!(upgrade_status(&app, &spoofed).await, 429);
}

#[tokio::test]
async fn connections_per_user_are_limited_before_the_upgrade_without_using_the_ticket() {
    let app = spawn_app(Store::Mongo, &[("MAX_CONNECTIONS_PER_USER", "2")]).await;
    let first = app.authenticated("alice").await;
    let _second = app.connect(&app.ticket("alice").await).await;
    let ticket = app.ticket("alice").await;
    let (status, body) = app.try_connect(&ticket, None).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (429, "too_many_connections")
    );
    let _bob = app.authenticated("bob").await;
    drop(first);
    wait_until("alice's first connection to close", || {
        app.hub.open_count_of("alice") == 1
    })
    .await;
    app.connect(&ticket).await;
}

#[tokio::test]
async fn total_connections_are_limited() {
    let app = spawn_app(Store::Mongo, &[("MAX_CONNECTIONS", "2")]).await;
    let _a = app.authenticated("a").await;
    let _b = app.connect(&app.ticket("b").await).await;
    let response_status = app
        .try_connect(&app.ticket("c").await, None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (
            response_status.0,
            response_status.1["error"].as_str().unwrap()
        ),
        (503, "at_capacity")
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(app.hub.open_count(), 2);
}

/// STORE_MAX_IN_FLIGHT with mints: they are group-committed, so a burst of 500 under a single
/// turn is minted whole, in fewer `insertMany` commands than tickets, and nothing is shed.
/// (The bound is generous here: how long a batch takes is the machine's, not the gateway's.)
#[tokio::test]
async fn a_burst_of_mints_under_one_turn_is_minted_whole() {
    let app = spawn_app(
        Store::Mongo,
        &[
            ("STORE_MAX_IN_FLIGHT", "1"),
            ("STORE_TIMEOUT_MS", "10000"),
            ("TICKET_RATE_PER_MIN", "100000"),
        ],
    )
    .await;
    let auth = format!("Bearer {}", jwt("burst"));
    let mints = (0..500).map(|_| {
        let request = app
            .http
            .get(app.url("/token/ws"))
            .header("Authorization", &auth);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures_util::future::join_all(mints).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let metrics = scrape_metrics(&app.http, &app.url("/metrics")).await;
    let inserts = metric_value(
        &metrics,
        "ticketgate_store_operation_seconds",
        &[("operation", "insert")],
    );
    assert!(
        inserts < 500.0,
        "{inserts} insertMany commands for 500 mints"
    );
    let shed = metric_value(&metrics, "ticketgate_store_operations_shed_total", &[]);
    assert_eq!(shed, 0.0);
}

/// STORE_MAX_IN_FLIGHT: a burst past what MongoDB is given at once is answered, not queued
/// into timeouts. Operations that are not batched (here the node registry read behind
/// `GET /api/nodes`) each need a turn: each request gets its answer or a quick 503
/// `store_unavailable` with `Retry-After`, and the refusals are counted.
#[tokio::test]
async fn a_burst_past_store_max_in_flight_is_shed_with_503() {
    const API_KEY: &str = "test-api-key-0123456789";
    let app = spawn_app(
        Store::Mongo,
        &[
            ("STORE_MAX_IN_FLIGHT", "1"),
            ("STORE_TIMEOUT_MS", "400"),
            ("API_KEY", API_KEY),
        ],
    )
    .await;
    let reads = (0..500).map(|_| {
        let request = app.http.get(app.url("/api/nodes")).bearer_auth(API_KEY);
        async move {
            let response = request.send().await.unwrap();
            let retry_after = response.headers().contains_key("retry-after");
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            (
                status,
                body["error"].as_str().map(str::to_owned),
                retry_after,
            )
        }
    });
    let answers = futures_util::future::join_all(reads).await;
    let served = answers.iter().filter(|(status, ..)| *status == 200).count();
    let shed = answers
        .iter()
        .filter(|answer| **answer == (503, Some("store_unavailable".into()), true))
        .count();
    assert_eq!(served + shed, answers.len(), "{answers:?}");
    assert!(served > 0 && shed > 0, "{served} served, {shed} shed");
    let metrics = scrape_metrics(&app.http, &app.url("/metrics")).await;
    let counted = metric_value(&metrics, "ticketgate_store_operations_shed_total", &[]);
    // Counted along with the node's own background operations (heartbeats) refused too.
    assert!(counted >= shed as f64, "{counted} counted, {shed} shed");
}
