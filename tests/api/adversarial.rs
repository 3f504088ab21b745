//! Over forty distinct bad inputs, thrown at the running gateway over raw TCP: malformed HTTP,
//! bad query strings and handshakes, and WebSocket frames that break RFC 6455. Each has a
//! pinned outcome; afterwards the gateway still serves a full session and has leaked nothing.

use tokio::io::AsyncWriteExt;

use crate::support::raw::*;
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// The barrage
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_kinds_of_bad_input_then_a_healthy_gateway() {
    let app = spawn_app(
        Store::Mongo,
        &[
            ("TICKET_RATE_PER_MIN", "10000"),
            ("UPGRADE_RATE_PER_MIN", "10000"),
            ("AUTH_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let mut kinds = 0;

    // Malformed HTTP: refused by the parser (4xx or a closed socket), never a crash.
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("binary garbage", vec![0x00, 0xff, 0x13, 0x37, b'\r', b'\n', b'\r', b'\n']),
        ("invalid method token", b"G@T /token/ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("HTTP/0.9 request", b"GET /token/ws\r\n\r\n".to_vec()),
        ("HTTP/2 preface on HTTP/1", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("unknown HTTP version", b"GET /token/ws HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("header without a colon", b"GET /token/ws HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        ("control character in a header name", b"GET /token/ws HTTP/1.1\r\nHo\x01st: x\r\n\r\n".to_vec()),
        ("a NUL in the path", b"GET /tok\x00en/ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("space in the request target", b"GET /token /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("negative content length", b"POST /token/ws HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n".to_vec()),
        (
            "content length and chunked together",
            b"POST /token/ws HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "invalid chunk size",
            b"POST /token/ws HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
        ("a 100 KiB header", format!("GET /token/ws HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(100 * 1024)).into_bytes()),
        ("a thousand headers", {
            let headers: String = (0..1000).map(|i| format!("X-H{i}: v\r\n")).collect();
            format!("GET /token/ws HTTP/1.1\r\nHost: x\r\n{headers}\r\n").into_bytes()
        }),
        ("a 100 KiB URL", format!("GET /demo?token={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100 * 1024)).into_bytes()),
    ];
    for (what, request) in malformed {
        expect_refused(&app, what, request).await;
        kinds += 1;
    }

    // Wrong methods on every route: 405 with a JSON body and the methods it allows.
    for (method, path, allow) in [
        ("POST", "/token/ws", "GET"),
        ("PUT", "/token/ws", "GET"),
        ("DELETE", "/token/ws", "GET"),
        ("PATCH", "/demo", "GET"),
        ("POST", "/demo", "GET"),
        ("HEAD", "/demo", "GET"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/", "GET, HEAD"),
        ("PUT", "/metrics", "GET, HEAD"),
    ] {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_http(app.port, request.as_bytes()).await;
        assert_eq!(status, Some(405), "{method} {path}: {body}");
        let head = raw_head(app.port, request.as_bytes()).await;
        assert!(
            head.contains(&format!("allow: {}\r\n", allow.to_ascii_lowercase())),
            "{method} {path}: {head}"
        );
        if method != "HEAD" {
            assert!(
                body.contains("method_not_allowed"),
                "{method} {path}: {body}"
            );
        }
        kinds += 1;
    }
    expect_http(&app, "an unknown route", get("/admin"), 404, "not_found").await;
    kinds += 1;

    // Query strings: bad, duplicated, encoded, oversized tickets, all refused as documented.
    let ticket = app.ticket("victim").await;
    let queries = [
        ("no query", "/demo".to_string(), "missing_ticket"),
        ("empty token", "/demo?token=".to_string(), "missing_ticket"),
        (
            "token in another case",
            format!("/demo?TOKEN={ticket}"),
            "missing_ticket",
        ),
        (
            "token as an array",
            format!("/demo?token[]={ticket}"),
            "missing_ticket",
        ),
        (
            "duplicated token",
            format!("/demo?token={ticket}&token={ticket}"),
            "invalid_ticket",
        ),
        (
            "broken percent-encoding",
            "/demo?token=%ZZ%".to_string(),
            "invalid_ticket",
        ),
        (
            "unicode ticket",
            "/demo?token=%E2%9C%93%F0%9F%94%91".to_string(),
            "invalid_ticket",
        ),
        (
            "fullwidth dot in the ticket",
            ticket
                .replacen('.', "%EF%BC%8E", 1)
                .replacen("", "/demo?token=", 1),
            "invalid_ticket",
        ),
        (
            "invalid UTF-8 in the ticket",
            "/demo?token=%FF%FE%FD".to_string(),
            "invalid_ticket",
        ),
        (
            "a 6 KiB ticket",
            format!("/demo?token={}", "b".repeat(6 * 1024)),
            "invalid_ticket",
        ),
    ];
    for (what, path, code) in queries {
        expect_http(
            &app,
            what,
            upgrade_request(&path, &format!("{WS_HEADERS}Connection: Upgrade\r\n")),
            401,
            code,
        )
        .await;
        kinds += 1;
    }

    // Broken handshakes with a valid ticket: 400 not_websocket, and the ticket survives them all.
    let path = format!("/demo?token={ticket}");
    let handshakes = [
        ("no upgrade headers at all", ""),
        (
            "no Sec-WebSocket-Key",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
        ),
        (
            "unsupported version",
            "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
        (
            "Upgrade to another protocol",
            "Connection: Upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
        (
            "Connection: close instead of Upgrade",
            "Connection: close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        ),
    ];
    for (what, headers) in handshakes {
        expect_http(
            &app,
            what,
            upgrade_request(&path, headers),
            400,
            "not_websocket",
        )
        .await;
        kinds += 1;
    }
    app.connect(&ticket).await;

    // Frames that break RFC 6455, before and after authentication.
    let mut unmasked = RawFrame::new(TEXT, br#"{"type":"ping"}"#);
    unmasked.masked = false;
    let mut reserved_bits = RawFrame::new(TEXT, br#"{"type":"ping"}"#);
    reserved_bits.rsv = 0b100;
    let mut fragmented_ping = RawFrame::new(PING, b"x");
    fragmented_ping.fin = false;
    let mut huge = RawFrame::new(TEXT, b"");
    huge.claimed_len = Some(1 << 40);
    let mut megabyte_before_auth = RawFrame::new(TEXT, b"");
    megabyte_before_auth.claimed_len = Some(1 << 20);
    let mut truncated = RawFrame::new(TEXT, b"only part");
    truncated.claimed_len = Some(100);
    let mut started = RawFrame::new(TEXT, b"{\"type\":");
    started.fin = false;
    let frame_cases: Vec<(&str, bool, Vec<RawFrame>, Option<u16>)> = vec![
        ("unmasked client frame", false, vec![unmasked], Some(1002)),
        ("reserved bits set", true, vec![reserved_bits], Some(1002)),
        (
            "reserved data opcode 0x3",
            true,
            vec![RawFrame::new(0x3, b"x")],
            Some(1002),
        ),
        (
            "reserved control opcode 0xB",
            true,
            vec![RawFrame::new(0xB, b"x")],
            Some(1002),
        ),
        (
            "control frame over 125 bytes",
            true,
            vec![RawFrame::new(PING, &[b'p'; 126])],
            Some(1002),
        ),
        (
            "fragmented control frame",
            true,
            vec![fragmented_ping],
            Some(1002),
        ),
        ("a frame claiming a terabyte", true, vec![huge], Some(1009)),
        (
            "a header declaring 1 MiB before auth",
            false,
            vec![megabyte_before_auth],
            Some(1009),
        ),
        (
            "continuation without a start",
            false,
            vec![RawFrame::new(CONTINUATION, b"x")],
            Some(1002),
        ),
        (
            "new message inside a fragmented one",
            false,
            vec![started, RawFrame::new(TEXT, b"{}")],
            Some(1002),
        ),
        (
            "invalid UTF-8 before auth",
            false,
            vec![RawFrame::new(TEXT, &[0xc3, 0x28, 0xff])],
            Some(1007),
        ),
        (
            "invalid UTF-8 after auth",
            true,
            vec![RawFrame::new(TEXT, &[0xed, 0xa0, 0x80])],
            Some(1007),
        ),
        (
            "close frame whose reason is not UTF-8",
            true,
            vec![RawFrame::new(CLOSE, &[0x03, 0xe8, 0xce, 0xba, 0xff])],
            Some(1007),
        ),
        (
            // Fail fast: the message is never finished, so only a check of each fragment as it
            // arrives can answer (a check at the end would wait for the heartbeat timeout).
            "a first fragment that is not UTF-8, the message left open",
            true,
            vec![{
                let mut open = RawFrame::new(TEXT, &[b'{', 0xff]);
                open.fin = false;
                open
            }],
            Some(1007),
        ),
        (
            "a later fragment that is not UTF-8, the message left open",
            false,
            vec![
                {
                    let mut first = RawFrame::new(TEXT, &[b'{', 0xce]);
                    first.fin = false;
                    first
                },
                {
                    let mut second = RawFrame::new(CONTINUATION, &[0xba, 0xc0, 0x80]);
                    second.fin = false;
                    second
                },
            ],
            Some(1007),
        ),
        (
            // Fail fast inside one frame: the frame is never finished (autobahn 6.4.3/6.4.4
            // send it in chops), so only a check of its bytes as they arrive can answer.
            "a text frame whose first bytes are not UTF-8, the frame left unfinished",
            false,
            vec![RawFrame {
                claimed_len: Some(100),
                ..RawFrame::new(TEXT, &[b'{', 0xff])
            }],
            Some(1007),
        ),
        (
            "a continuation frame whose first bytes are not UTF-8, the frame left unfinished",
            true,
            vec![
                {
                    let mut first = RawFrame::new(TEXT, &[b'{', 0xce]);
                    first.fin = false;
                    first
                },
                RawFrame {
                    fin: false,
                    claimed_len: Some(50),
                    ..RawFrame::new(CONTINUATION, &[0xba, 0xc0])
                },
            ],
            Some(1007),
        ),
        (
            "close frame with a 1-byte payload",
            true,
            vec![RawFrame::new(CLOSE, &[0x03])],
            Some(1002),
        ),
        (
            "binary before auth",
            false,
            vec![RawFrame::new(BINARY, b"\x00\x01")],
            Some(4400),
        ),
        (
            "truncated frame, then silence",
            false,
            vec![truncated],
            Some(4408),
        ),
    ];
    for (what, authenticated, frames, expected) in frame_cases {
        eprintln!("frame case: {what}");
        expect_ws_end(&app, what, authenticated, &frames, expected).await;
        kinds += 1;
    }
    // Close frames with codes a client may not send: answered and closed, never crashing.
    for code in [0u16, 999, 1005, 1006, 5000] {
        let mut socket = raw_ws(&app, true).await;
        socket
            .write_all(&RawFrame::new(CLOSE, &code.to_be_bytes()).encode())
            .await
            .unwrap();
        let answer = close_code(&mut socket).await;
        assert!(
            matches!(answer, Some(1002) | None),
            "close code {code}: answered {answer:?}"
        );
        kinds += 1;
    }

    assert!(kinds >= 40, "only {kinds} kinds of bad input");

    // Still healthy: a whole session works, and nothing leaked.
    let mut client = app.authenticated("after-the-storm").await;
    client.send_json(&serde_json::json!({"type": "ping"})).await;
    assert_eq!(client.next_json().await["type"], "pong");
    drop(client);
    app.assert_no_connections_left().await;
    eprintln!("adversarial: {kinds} kinds of bad input, gateway healthy afterwards");
}
