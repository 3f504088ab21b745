//! Abuse that must cost nothing: sockets that never authenticate, clients that dribble their
//! request, and secrets that must never reach the log. Run against the gateway as a process,
//! whose file descriptors, memory and log are what is measured.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Waits until `measure` is at most `limit`; returns the last value seen.
async fn settles_to(what: &str, limit: usize, measure: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = measure();
        if value <= limit {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what} stayed at {value}, above {limit}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_sockets_that_never_authenticate_leave_nothing_behind() {
    const SOCKETS: usize = 2000;
    /// The most sockets the MongoDB pools (one per worker thread) may hold at once.
    const MONGO_POOL_SLACK: usize = 64;
    let (uri, db) = (mongo_uri(), unique_db_name());
    let gateway = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("MONGODB_URI", &uri),
        ("MONGODB_DATABASE", &db),
        // Long enough that all sockets are open at once even on a busy machine.
        ("AUTH_TIMEOUT_SECS", "15"),
        ("TICKET_RATE_PER_MIN", "1000000"),
        ("UPGRADE_RATE_PER_MIN", "1000000"),
    ]);
    // Warm up at the same concurrency (MongoDB's connection pool grows to its size), so the
    // baseline is the steady state of a used gateway.
    let mint_tickets = |count: usize| {
        let gateway = &gateway;
        async move {
            // A client of its own, dropped after: its keep-alive sockets are not the gateway's.
            let http = reqwest::Client::new();
            futures_util::stream::iter(0..count)
                .map(|i| {
                    let http = &http;
                    async move { gateway.ticket(http, &format!("user-{i}")).await }
                })
                .buffer_unordered(50)
                .collect::<Vec<String>>()
                .await
        }
    };
    let upgrade_all = |tickets: Vec<String>| {
        let gateway = &gateway;
        async move {
            futures_util::stream::iter(tickets)
                .map(|ticket| {
                    let url = gateway.ws_url(&ticket);
                    async move { try_connect_url(&url, None).await.expect("upgrade") }
                })
                .buffer_unordered(100)
                .collect::<Vec<WsClient>>()
                .await
        }
    };
    // Upgrades too, at the round's concurrency: redeems have their own MongoDB operations.
    drop(upgrade_all(mint_tickets(200).await).await);
    let warm_ticket = gateway.ticket(&reqwest::Client::new(), "warm").await;
    let mut warm = try_connect_url(&gateway.ws_url(&warm_ticket), None)
        .await
        .unwrap();
    warm.send_json(&json!({"type": "jwt", "token": jwt("warm")}))
        .await;
    let _ = warm.next_json().await;
    drop(warm);
    let baseline_fds = settles_to("fds after warm-up", 64, || gateway.open_fds()).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // past the HTTP keep-alive of 5 s
    let (baseline_fds, baseline_rss) = (gateway.open_fds().min(baseline_fds), gateway.rss_kib());

    // One round: SOCKETS upgrades that never authenticate, all open at once, all closed with
    // 4408 at the deadline; returns the peak fds and RSS.
    let round = || async {
        let clients = upgrade_all(mint_tickets(SOCKETS).await).await;
        let (peak_fds, peak_rss) = (gateway.open_fds(), gateway.rss_kib() as usize);
        // Less the MongoDB pool's sockets, which the driver may close and reopen meanwhile
        // (this failed once by a few fds under a loaded full run).
        assert!(
            peak_fds + MONGO_POOL_SLACK >= baseline_fds + SOCKETS,
            "all {SOCKETS} were open at once ({peak_fds} fds at the peak, {baseline_fds} before)"
        );
        let endings =
            join_all(clients.into_iter().map(|mut client| async move {
                client.ending_within(Duration::from_secs(40)).await
            }))
            .await;
        for ending in &endings {
            match ending {
                Ending::Closed { code: 4408, .. } => {}
                other => panic!("expected 4408 at the auth deadline, got {other:?}"),
            }
        }
        settles_to("open fds", baseline_fds + 4, || gateway.open_fds()).await;
        (peak_fds, peak_rss)
    };

    // Freed memory goes back to the allocator, which returns it to the system within a second
    // or so (jemalloc, see main.rs). Some stays after the first round: high-water capacity
    // (tokio's I/O registration slab, the hub's tables, the per-thread MongoDB pools) and
    // pages the allocator cannot return because something long-lived shares them. That is a
    // one-time cost, measured at a quarter to a half of the growth. What must not happen is
    // memory that stays for every round: so a second round must end where the first did.
    let (peak_fds, first_peak) = round().await;
    let baseline_rss = baseline_rss as usize;
    let growth = first_peak.saturating_sub(baseline_rss);
    settles_to(
        "RSS (KiB) after one round",
        baseline_rss + growth * 3 / 4,
        || gateway.rss_kib() as usize,
    )
    .await;
    // Where the first round ended, once the allocator has had time to give back what it can.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_first = gateway.rss_kib() as usize;
    let (_, second_peak) = round().await;
    let after_second = settles_to(
        "RSS (KiB) after a second round",
        after_first + growth / 5,
        || gateway.rss_kib() as usize,
    )
    .await;
    eprintln!(
        "never-authenticating sockets: 2 x {SOCKETS}; fds {baseline_fds} -> {peak_fds}; \
         RSS KiB {baseline_rss} -> {first_peak} -> {after_first} -> {second_peak} -> {after_second}"
    );
}

/// One client sends its request head a byte at a time; each is cut off at the request timeout.
async fn dribble(port: u16) -> Duration {
    let started = Instant::now();
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // A valid head so far; the last header's value never ends.
    socket
        .write_all(b"GET /token/ws HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buffer = [0u8; 512];
    loop {
        tokio::select! {
            read = socket.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return started.elapsed(),
                // A 408 answer; the close follows.
                Ok(_) => continue,
            },
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                if socket.write_all(b"a").await.is_err() {
                    return started.elapsed();
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a dribbling client was never cut off"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_at_the_request_timeout() {
    let gateway =
        GatewayProcess::start(&[("JWT_SECRET", SECRET), ("HTTP_REQUEST_TIMEOUT_SECS", "2")]);
    // Workers start after "listening on" is logged, each with its own epoll and event fds:
    // one served request makes the baseline the steady state, not a moment of start-up.
    let http = reqwest::Client::new();
    gateway.ticket(&http, "warm-up").await;
    drop(http);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline_fds = gateway.open_fds();
    let cut_after = join_all((0..50).map(|_| dribble(gateway.port))).await;
    let slowest = cut_after.iter().max().unwrap();
    let fastest = cut_after.iter().min().unwrap();
    assert!(
        *fastest >= Duration::from_millis(1500),
        "cut off for the timeout, not for bad input: {fastest:?}"
    );
    assert!(
        *slowest < Duration::from_secs(10),
        "the slowest dribbler lasted {slowest:?}"
    );
    settles_to("open fds", baseline_fds, || gateway.open_fds()).await;
    // And the gateway still serves.
    let http = reqwest::Client::new();
    gateway.ticket(&http, "alice").await;
    eprintln!("slowloris: 50 dribbling clients, all cut off, the slowest after {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_log_of_whole_sessions_holds_no_secret() {
    let log = a_debug_log_of_whole_sessions("text").await;
    assert!(log.contains(" DEBUG "), "debug logging was on");
}

/// LOG_FORMAT=json: every line one JSON object with the documented keys, the connection's
/// fields at the top, and no secret either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_debug_log_of_whole_sessions_is_structured_and_holds_no_secret() {
    let log = a_debug_log_of_whole_sessions("json").await;
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    for line in &lines {
        for key in ["time", "level", "target", "message"] {
            assert!(line[key].is_string(), "{key} in {line}");
        }
        let time = line["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "RFC 3339 in UTC: {time}"
        );
    }
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "debug logging was on"
    );
    let authenticated = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .unwrap()
                .contains(" authenticated as user ")
        })
        .expect("an authentication line");
    assert_eq!(authenticated["user_id"], "alice");
    let id = authenticated["connection_id"].as_str().unwrap();
    assert!(id.starts_with('c'), "{authenticated}");
    assert!(
        lines
            .iter()
            .any(|l| l["connection_id"] == id
                && l["message"].as_str().unwrap().contains(" closed: ")),
        "the connection's close line"
    );
    // The refused JWT's connection closed with 4401, a number.
    assert!(
        lines
            .iter()
            .any(|l| l["code"] == 4401 && l["connection_id"].is_string()),
        "a close line with its code"
    );
}

/// Whole sessions, good and refused, under RUST_LOG=debug in `format`: the log holds no
/// piece of a secret. Returns the log.
async fn a_debug_log_of_whole_sessions(format: &str) -> String {
    let (uri, db) = (mongo_uri(), unique_db_name());
    let gateway = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("MONGODB_URI", &uri),
        ("MONGODB_DATABASE", &db),
        ("RUST_LOG", "debug"),
        ("LOG_FORMAT", format),
    ]);
    let http = reqwest::Client::new();
    let token = jwt("alice");
    let mut secrets = vec![SECRET.to_owned(), token.clone()];
    // A good session.
    let ticket = gateway.ticket(&http, "alice").await;
    secrets.push(ticket.clone());
    let mut client = try_connect_url(&gateway.ws_url(&ticket), None)
        .await
        .unwrap();
    client
        .send_json(&json!({"type": "jwt", "token": token}))
        .await;
    assert_eq!(client.next_json().await["type"], "authenticated");
    client
        .send_json(&json!({"type": "echo", "data": "hi"}))
        .await;
    client.next_json().await;
    drop(client);
    // Refused tickets: reused, tampered.
    try_connect_url(&gateway.ws_url(&ticket), None)
        .await
        .err()
        .unwrap();
    let fresh = gateway.ticket(&http, "alice").await;
    secrets.push(fresh.clone());
    // Another canonical last character: one ticket in 16 already ends in "A".
    let last = if fresh.ends_with('A') { 'E' } else { 'A' };
    let tampered = format!("{}{last}", &fresh[..fresh.len() - 1]);
    secrets.push(tampered.clone());
    try_connect_url(&gateway.ws_url(&tampered), None)
        .await
        .err()
        .unwrap();
    // A refused JWT in the first message and at minting.
    let other = jwt("mallory");
    secrets.push(other.clone());
    let mut client = try_connect_url(&gateway.ws_url(&fresh), None)
        .await
        .unwrap();
    client
        .send_json(&json!({"type": "jwt", "token": other}))
        .await;
    client.expect_close(4401).await;
    let response = http
        .get(gateway.url("/token/ws"))
        .bearer_auth(format!("{other}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Refusals name the ticket by 8 characters.
    let log = gateway.wait_for_log(&format!("{}…", &tampered[..8])).await;
    for secret in &secrets {
        // Any long piece of a secret counts: a JWT's signature or a ticket's secret alone leaks it.
        for piece in secret.split('.').filter(|p| p.len() >= 16) {
            assert!(
                !log.contains(piece),
                "the log holds a secret piece {piece:?}"
            );
        }
    }
    log
}
