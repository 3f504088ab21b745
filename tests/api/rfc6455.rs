//! RFC 6455 details beyond the barrage in adversarial.rs: what the client can make the
//! gateway log.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::{PING, RawFrame, WS_HEADERS, close_code, upgrade_request};
use crate::support::*;

/// A fragmented Ping once made actix-http's codec log at ERROR level: any client could fill
/// the error log. Client protocol faults are logged at debug and counted by close code.
#[tokio::test]
async fn no_client_fault_reaches_the_error_log() {
    let gateway = GatewayProcess::start(&[("JWT_SECRET", SECRET), ("RUST_LOG", "debug")]);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let ticket = gateway.ticket(&http, "mallory").await;
        let mut socket = TcpStream::connect(("127.0.0.1", gateway.port))
            .await
            .unwrap();
        socket
            .write_all(&upgrade_request(
                &format!("/demo?token={ticket}"),
                WS_HEADERS,
            ))
            .await
            .unwrap();
        let mut fragmented_ping = RawFrame::new(PING, b"x");
        fragmented_ping.fin = false;
        socket.write_all(&fragmented_ping.encode()).await.unwrap();
        // Skip the 101's head, then read the close.
        skip_response_head(&mut socket).await;
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

async fn skip_response_head(socket: &mut TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
}
