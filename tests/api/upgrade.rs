//! `GET /demo?token=…`: the ticket is checked before the upgrade; no 101 for a bad one.

use std::time::Duration;

use futures_util::future::join_all;
use ticketgate::ticket::NewTicket;

use crate::support::*;

async fn assert_refused(app: &TestApp, ticket: &str, status: u16, code: &str) {
    match app.try_connect(ticket, None).await {
        Ok(_) => panic!("{ticket:?}: expected {status} {code}, got 101"),
        Err((got_status, body)) => {
            assert_eq!(got_status, status, "{ticket:?}: {body}");
            assert_eq!(body["error"], code, "{ticket:?}: {body}");
            assert!(body["message"].is_string());
        }
    }
}

#[tokio::test]
async fn a_missing_ticket_is_missing_ticket() {
    let app = spawn_app(Store::Memory, &[]).await;
    let url = format!("ws://127.0.0.1:{}/demo", app.port);
    let (status, body) = try_connect_url(&url, None).await.err().unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (401, "missing_ticket")
    );
    assert_refused(&app, "", 401, "missing_ticket").await;
}

#[tokio::test]
async fn unknown_malformed_and_tampered_tickets_are_invalid_and_burn_nothing() {
    for store in [Store::Mongo, Store::Memory] {
        let app = spawn_app(store, &[]).await;
        let ticket = app.ticket("alice").await;
        let (id, secret) = ticket.split_once('.').unwrap();
        let flipped = format!(
            "{}{}",
            if secret.starts_with('A') { 'B' } else { 'A' },
            &secret[1..]
        );
        for bad in [
            NewTicket::generate().to_string(),
            "abc".to_string(),
            format!("{id}.{flipped}"),
            id.to_string(),
            format!("{}.{secret}", id.to_uppercase()),
            format!("{ticket}%00"),
            format!("{id}.{secret}%C3%A9"),
            format!("{ticket}&token={ticket}"),
        ] {
            assert_refused(&app, &bad, 401, "invalid_ticket").await;
        }
        // Someone who knows the ObjectId but not the secret cannot use up the ticket.
        app.connect(&ticket).await;
    }
}

#[tokio::test]
async fn a_ticket_works_once_then_is_invalid() {
    for store in [Store::Mongo, Store::Memory] {
        let app = spawn_app(store, &[]).await;
        let ticket = app.ticket("alice").await;
        app.connect(&ticket).await;
        assert_refused(&app, &ticket, 401, "invalid_ticket").await;
    }
}

#[tokio::test]
async fn reusable_tickets_work_until_they_expire() {
    for store in [Store::Mongo, Store::Memory] {
        let app = spawn_app(
            store,
            &[("TICKET_SINGLE_USE", "false"), ("TICKET_TTL_SECS", "2")],
        )
        .await;
        let ticket = app.ticket("alice").await;
        for _ in 0..3 {
            app.connect(&ticket).await;
        }
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_refused(&app, &ticket, 401, "invalid_ticket").await;
    }
}

#[tokio::test]
async fn an_expired_ticket_is_refused_before_mongodb_removes_it() {
    let app = spawn_app(Store::Mongo, &[("TICKET_TTL_SECS", "1")]).await;
    // TTL monitor or not, a ticket older than the TTL is refused by the gateway's own check.
    let ticket = app.ticket("alice").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_refused(&app, &ticket, 401, "invalid_ticket").await;

    let memory = spawn_app(Store::Memory, &[("TICKET_TTL_SECS", "1")]).await;
    let ticket = memory.ticket("alice").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_refused(&memory, &ticket, 401, "invalid_ticket").await;
}

#[tokio::test]
async fn mongodb_ttl_index_removes_stale_tickets() {
    let app = spawn_app(Store::Mongo, &[("TICKET_TTL_SECS", "1")]).await;
    app.ticket("alice").await;
    let tickets = app
        .db
        .as_ref()
        .unwrap()
        .collection::<mongodb::bson::Document>("ws_tickets");
    assert_eq!(
        tickets
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        1
    );
    // The test mongod runs its TTL monitor every second; a shared MONGODB_URI may be slower.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while tickets
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap()
        != 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the TTL monitor never removed the ticket"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_request_that_cannot_upgrade_keeps_the_ticket() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let ticket = app.ticket("alice").await;
    let response = app
        .http
        .get(app.ws_url(&ticket).replace("ws://", "http://"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "not_websocket"
    );
    app.connect(&ticket).await;
}

/// 20 clients race with one ticket, spread over two gateways sharing one database: the
/// atomic delete in MongoDB lets exactly one through, whichever process serves it.
#[tokio::test]
async fn twenty_racing_clients_one_ticket_exactly_one_upgrade() {
    let first = spawn_app(Store::Mongo, &[]).await;
    let mut vars = base_vars(Store::Mongo);
    vars.insert(
        "MONGODB_DATABASE".into(),
        first.db.as_ref().unwrap().name().to_owned(),
    );
    let second = spawn_app_with(vars).await;
    for _round in 0..3 {
        let ticket = first.ticket("alice").await;
        let attempts = (0..20).map(|i| {
            let app = if i % 2 == 0 { &first } else { &second };
            app.try_connect(&ticket, None)
        });
        let results = join_all(attempts).await;
        let upgraded = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(upgraded, 1, "exactly one of 20 racing clients upgrades");
        for refused in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(refused.0, 401);
            assert_eq!(refused.1["error"], "invalid_ticket");
        }
    }
    let memory = spawn_app(Store::Memory, &[]).await;
    let ticket = memory.ticket("alice").await;
    let results = join_all((0..20).map(|_| memory.try_connect(&ticket, None))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}

#[tokio::test]
async fn other_methods_on_the_websocket_route_are_405() {
    let app = spawn_app(Store::Memory, &[]).await;
    let response = app
        .http
        .post(app.url("/demo?token=x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
}
