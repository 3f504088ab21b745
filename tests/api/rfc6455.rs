//! RFC 6455 details beyond the barrage in adversarial.rs: what the client can make the
//! gateway log.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::raw::{PING, RawFrame, close_code, raw_upgrade};
use crate::support::*;

/// A fragmented Ping once made actix-http's codec log at ERROR level: any client could fill
/// the error log. Client protocol faults are logged at debug and counted by close code.
#[tokio::test]
async fn no_client_fault_reaches_the_error_log() {
    let gateway = GatewayProcess::start(&[("JWT_SECRET", SECRET), ("RUST_LOG", "debug")]);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let ticket = gateway.ticket(&http, "mallory").await;
        let mut socket = raw_upgrade(gateway.port, &ticket).await;
        let mut fragmented_ping = RawFrame::new(PING, b"x");
        fragmented_ping.fin = false;
        socket.write_all(&fragmented_ping.encode()).await.unwrap();
        assert_eq!(close_code(&mut socket).await, Some(1002));
    }
    // Each fault is counted (just after its close frame goes out, so give it a moment).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let metrics = scrape_metrics(&http, &gateway.url("/metrics")).await;
        let closes = metric_value(
            &metrics,
            "ticketgate_connections_closed_total",
            &[("code", "1002")],
        );
        if closes == 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{closes} closes counted, not 3"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gateway.log();
    assert!(
        log.contains("DEBUG"),
        "the test must see debug lines:\n{log}"
    );
    assert!(
        !log.contains("ERROR"),
        "a client caused an ERROR line:\n{log}"
    );
}
