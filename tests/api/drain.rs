//! Graceful drain: new work is refused, every connection hears 1001, the process exits 0.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn while_draining_connections_hear_1001_and_new_work_gets_503() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let mut authenticated = app.authenticated("alice").await;
    let mut waiting = app.connect(&app.ticket("bob").await).await;
    let unused = app.ticket("carol").await;
    assert_eq!(app.shutdown.begin(), 2);
    assert_eq!(authenticated.expect_close(1001).await, "going away");
    waiting.expect_close(1001).await;
    let (status, body) = app.mint(Some(&format!("Bearer {}", jwt("alice")))).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (503, "draining"));
    let (status, body) = app.try_connect(&unused, None).await.err().unwrap();
    assert_eq!((status, body["error"].as_str().unwrap()), (503, "draining"));
    app.assert_no_connections_left().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_sigint_drain_then_exit_0_within_the_grace_period() {
    for signal in ["TERM", "INT"] {
        let mut gateway =
            GatewayProcess::start(&[("JWT_SECRET", SECRET), ("SHUTDOWN_GRACE_SECS", "5")]);
        let http = reqwest::Client::new();
        let mut clients = Vec::new();
        for i in 0..3 {
            let user = format!("user-{i}");
            let mut client =
                try_connect_url(&gateway.ws_url(&gateway.ticket(&http, &user).await), None)
                    .await
                    .unwrap();
            client
                .send_json(&json!({"type": "jwt", "token": jwt(&user)}))
                .await;
            assert_eq!(client.next_json().await["type"], "authenticated");
            clients.push(client);
        }
        let waiting = gateway.ticket(&http, "late").await;
        clients.push(
            try_connect_url(&gateway.ws_url(&waiting), None)
                .await
                .unwrap(),
        );

        let sent = Instant::now();
        gateway.signal(signal);
        for client in &mut clients {
            assert_eq!(client.expect_close(1001).await, "going away", "SIG{signal}");
        }
        let status = tokio::task::block_in_place(|| gateway.wait_exit(Duration::from_secs(5)));
        assert!(status.success(), "SIG{signal}: exit status {status}");
        let log = gateway
            .wait_for_log("4 connections closed, 0 left open")
            .await;
        assert!(log.contains(&format!("SIG{signal}: draining")), "{log}");
        eprintln!(
            "drain on SIG{signal}: 4 connections closed, exited 0 after {:?}",
            sent.elapsed()
        );
    }
}
