//! permessage-deflate (RFC 7692, WS_COMPRESSION): negotiated only when offered and enabled,
//! server messages over the threshold compressed on their own, client messages inflated with a
//! bound, compressed broadcasts shared. The client side here is hand-made with flate2.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{CONTINUATION, RawFrame, TEXT, WS_HEADERS, close_code, upgrade_request};
use crate::support::*;

const OFFER: &str = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// Raw deflate with the sync-flush tail removed, as RFC 7692 §7.2.1 sends it.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    compress
        .compress_vec(data, &mut out, FlushCompress::Sync)
        .unwrap();
    assert_eq!(compress.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    Decompress::new(false)
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

fn compressed_frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
    let mut frame = RawFrame::new(opcode, payload);
    frame.rsv = if opcode == CONTINUATION { 0 } else { 0b100 };
    frame.fin = fin;
    frame.encode()
}

/// Upgrades with `extra` headers; returns the socket and the 101's head in lower case.
async fn upgrade(app: &TestApp, extra: &str) -> (TcpStream, String) {
    let ticket = app.ticket("alice").await;
    let mut socket = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let request = upgrade_request(
        &format!("/demo?token={ticket}"),
        &format!("{WS_HEADERS}{extra}"),
    );
    socket.write_all(&request).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    (socket, head)
}

/// One server frame: whether RSV1 was set, and the message (inflated when it was).
async fn message(socket: &mut TcpStream) -> (bool, Value) {
    let read = async {
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.unwrap();
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut ext = [0u8; 2];
            socket.read_exact(&mut ext).await.unwrap();
            len = u64::from(u16::from_be_bytes(ext));
        } else if len == 127 {
            let mut ext = [0u8; 8];
            socket.read_exact(&mut ext).await.unwrap();
            len = u64::from_be_bytes(ext);
        }
        let mut payload = vec![0u8; len as usize];
        socket.read_exact(&mut payload).await.unwrap();
        assert_eq!(head[0] & 0x0f, TEXT, "a text frame");
        let compressed = head[0] & 0x40 != 0;
        let text = if compressed {
            inflate(&payload)
        } else {
            payload
        };
        (compressed, serde_json::from_slice(&text).unwrap())
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("a message")
}

#[tokio::test]
async fn negotiated_only_when_enabled_and_offered() {
    let off = spawn_app(Store::Memory, &[]).await;
    let (_, head) = upgrade(&off, OFFER).await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");

    let on = spawn_app(Store::Memory, &[("WS_COMPRESSION", "true")]).await;
    let (_, head) = upgrade(&on, OFFER).await;
    assert!(
        head.contains(
            "sec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    let (_, head) = upgrade(
        &on,
        "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n",
    )
    .await;
    assert!(
        head.contains("server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    // An offer it cannot honour (a smaller server window) is declined, not half-taken.
    let (_, head) = upgrade(
        &on,
        "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n",
    )
    .await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
    let (_, head) = upgrade(&on, "").await;
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
}

#[tokio::test]
async fn compressed_both_ways_above_the_threshold_and_bounded_when_inflated() {
    let app = spawn_app(
        Store::Memory,
        &[
            ("WS_COMPRESSION", "true"),
            ("WS_COMPRESSION_THRESHOLD_BYTES", "100"),
        ],
    )
    .await;
    let (mut socket, _) = upgrade(&app, OFFER).await;
    // The JWT message itself compressed, and in two fragments.
    let jwt_message = json!({"type": "jwt", "token": jwt("alice")}).to_string();
    let compressed = deflate(jwt_message.as_bytes());
    let (first, rest) = compressed.split_at(compressed.len() / 2);
    socket
        .write_all(&compressed_frame(TEXT, first, false))
        .await
        .unwrap();
    socket
        .write_all(&compressed_frame(CONTINUATION, rest, true))
        .await
        .unwrap();
    let (compressed, welcome) = message(&mut socket).await;
    assert_eq!(welcome["type"], "authenticated", "{welcome}");
    assert!(!compressed, "a short message goes uncompressed");

    // A broadcast over the threshold arrives compressed; one under it does not.
    let big = "x".repeat(500);
    app.publish(&json!({"text": big}).to_string()).await;
    let (compressed, broadcast) = message(&mut socket).await;
    assert!(compressed);
    assert_eq!(broadcast["data"]["text"], big);
    app.publish("1").await;
    let (compressed, small) = message(&mut socket).await;
    assert!(!compressed);
    assert_eq!(small["data"], 1);

    // A compressed echo request is answered compressed.
    let echo = json!({"type": "echo", "data": big}).to_string();
    socket
        .write_all(&compressed_frame(TEXT, &deflate(echo.as_bytes()), true))
        .await
        .unwrap();
    let (compressed, reply) = message(&mut socket).await;
    assert!(compressed);
    assert_eq!(reply["data"], big);

    // 1 MiB that compresses to a few KiB: past MAX_MESSAGE_BYTES once inflated, so 1009.
    let bomb = format!(r#"{{"type":"echo","data":"{}"}}"#, "0".repeat(1 << 20));
    let bomb = deflate(bomb.as_bytes());
    assert!(bomb.len() < 16 * 1024);
    socket
        .write_all(&compressed_frame(TEXT, &bomb, true))
        .await
        .unwrap();
    assert_eq!(close_code(&mut socket).await, Some(1009));
}

/// Two connections, one broadcast: the compressed frame is made once and both get the same
/// bytes, which inflate to the message.
#[tokio::test]
async fn a_compressed_broadcast_reaches_every_compressing_connection() {
    let app = spawn_app(Store::Memory, &[("WS_COMPRESSION", "true")]).await;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (mut socket, _) = upgrade(&app, OFFER).await;
        let jwt_message = json!({"type": "jwt", "token": jwt("alice")}).to_string();
        socket
            .write_all(&RawFrame::new(TEXT, jwt_message.as_bytes()).encode())
            .await
            .unwrap();
        assert_eq!(message(&mut socket).await.1["type"], "authenticated");
        sockets.push(socket);
    }
    let text = "y".repeat(4000);
    app.publish(&json!(text).to_string()).await;
    for socket in &mut sockets {
        let (compressed, broadcast) = message(socket).await;
        assert!(compressed);
        assert_eq!(broadcast["data"], text);
    }
}

/// Python's `websockets`: strict about RFC 7692 (it refuses an answer that leaves out a
/// parameter the RFC requires), and it offers `server_max_window_bits` when asked to.
const PYTHON_CLIENT: &str = r#"
import json, sys
from websockets.sync.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
url, jwt = sys.argv[1], sys.argv[2]
offer = ClientPerMessageDeflateFactory(server_max_window_bits=15, client_max_window_bits=True)
with connect(url, extensions=[offer], compression=None, open_timeout=10) as ws:
    print("answer:", ws.response.headers.get("Sec-WebSocket-Extensions"))
    ws.send(json.dumps({"type": "jwt", "token": jwt}))
    assert json.loads(ws.recv(timeout=10))["type"] == "authenticated"
    big = "word " * 1000
    ws.send(json.dumps({"type": "echo", "data": big}))
    while True:
        reply = json.loads(ws.recv(timeout=10))
        if reply["type"] == "echo":
            break
    assert reply["data"] == big, reply
    print("echoed", len(big))
"#;

/// Node's `ws` (the client tests' dependency), offering the same.
const NODE_CLIENT: &str = r#"
import WebSocket from 'ws';
const [url, jwt] = process.argv.slice(1);
const big = 'word '.repeat(1000);
const ws = new WebSocket(url, {
  perMessageDeflate: { serverMaxWindowBits: 15, clientMaxWindowBits: true, threshold: 0 },
});
const fail = (why) => { console.error(why); process.exit(1); };
setTimeout(() => fail('timed out'), 10000).unref();
ws.on('upgrade', (res) => console.log('answer:', res.headers['sec-websocket-extensions']));
ws.on('error', (e) => fail(e.message));
ws.on('open', () => ws.send(JSON.stringify({ type: 'jwt', token: jwt })));
ws.on('message', (data) => {
  const message = JSON.parse(data.toString());
  if (message.type === 'authenticated') ws.send(JSON.stringify({ type: 'echo', data: big }));
  if (message.type === 'echo') {
    if (message.data !== big) fail('another echo');
    console.log('echoed', big.length);
    process.exit(0);
  }
});
"#;

/// Runs a client program to its end (killed if the test ends first); its stdout.
async fn run_client(what: &str, command: &mut tokio::process::Command) -> String {
    let output = tokio::time::timeout(PATIENCE * 2, command.kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Two independent client libraries that offer `server_max_window_bits=15` get it named in
/// the answer (RFC 7692 §7.1.2.1), and then exchange compressed messages both ways.
#[tokio::test]
async fn independent_clients_negotiate_compression_with_every_parameter_answered() {
    let app = spawn_app(Store::Memory, &[("WS_COMPRESSION", "true")]).await;
    let python = installed(
        "install-python-clients.sh",
        "this test needs Python's websockets (installed from PyPI into a venv; it needs \
         python3 with venv and pip)",
    );
    let expected =
        "answer: permessage-deflate; server_no_context_takeover; server_max_window_bits=15";

    let url = format!(
        "ws://127.0.0.1:{}/demo?token={}",
        app.port,
        app.ticket("alice").await
    );
    let out = run_client(
        "Python's websockets",
        tokio::process::Command::new(&python).args(["-c", PYTHON_CLIENT, &url, &jwt("alice")]),
    )
    .await;
    assert!(
        out.contains(expected) && out.contains("echoed 5000"),
        "{out}"
    );

    let url = format!(
        "ws://127.0.0.1:{}/demo?token={}",
        app.port,
        app.ticket("alice").await
    );
    let out = run_client(
        "Node's ws",
        tokio::process::Command::new("node")
            .current_dir(repo_root().join("client"))
            .args([
                "--input-type=module",
                "-e",
                NODE_CLIENT,
                &url,
                &jwt("alice"),
            ]),
    )
    .await;
    assert!(
        out.contains(expected) && out.contains("echoed 5000"),
        "{out}"
    );
}
