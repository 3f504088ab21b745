//! Which browser origins may open the WebSocket, under each ALLOWED_ORIGINS policy.

use crate::support::*;

async fn outcome(app: &TestApp, origin: Option<&str>) -> Result<(), (u16, String)> {
    let ticket = app.ticket("alice").await;
    match app.try_connect(&ticket, origin).await {
        Ok(_) => Ok(()),
        Err((status, body)) => Err((status, body["error"].as_str().unwrap_or("").to_owned())),
    }
}

fn forbidden() -> Result<(), (u16, String)> {
    Err((403, "origin_not_allowed".into()))
}

#[tokio::test]
async fn by_default_only_same_origin_browsers_and_non_browsers() {
    let app = spawn_app(Store::Memory, &[]).await;
    let own = format!("http://127.0.0.1:{}", app.port);
    assert_eq!(
        outcome(&app, None).await,
        Ok(()),
        "no Origin: a non-browser client"
    );
    assert_eq!(outcome(&app, Some(&own)).await, Ok(()), "same origin");
    assert_eq!(
        outcome(&app, Some("https://evil.example")).await,
        forbidden()
    );
    assert_eq!(
        outcome(&app, Some(&format!("http://127.0.0.1:{}", app.port + 1))).await,
        forbidden()
    );
    assert_eq!(outcome(&app, Some("null")).await, forbidden());
}

#[tokio::test]
async fn a_configured_list_allows_exactly_its_origins() {
    let app = spawn_app(
        Store::Memory,
        &[(
            "ALLOWED_ORIGINS",
            "https://app.example, http://localhost:3000",
        )],
    )
    .await;
    assert_eq!(outcome(&app, Some("https://app.example")).await, Ok(()));
    assert_eq!(outcome(&app, Some("http://localhost:3000")).await, Ok(()));
    assert_eq!(outcome(&app, None).await, Ok(()));
    assert_eq!(outcome(&app, Some("http://app.example")).await, forbidden());
    assert_eq!(
        outcome(&app, Some(&format!("http://127.0.0.1:{}", app.port))).await,
        forbidden()
    );
}

#[tokio::test]
async fn a_wildcard_allows_any_origin() {
    let app = spawn_app(Store::Memory, &[("ALLOWED_ORIGINS", "*")]).await;
    assert_eq!(outcome(&app, Some("https://anyone.example")).await, Ok(()));
    assert_eq!(outcome(&app, Some("null")).await, Ok(()));
}

#[tokio::test]
async fn a_refused_origin_does_not_consume_the_ticket() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let ticket = app.ticket("alice").await;
    let (status, body) = app
        .try_connect(&ticket, Some("https://evil.example"))
        .await
        .err()
        .unwrap();
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (403, "origin_not_allowed")
    );
    app.connect(&ticket).await;
}
