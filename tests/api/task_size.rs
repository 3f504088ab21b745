//! What every open connection keeps for its whole life, held in bytes: the connection task's
//! future. The idle-memory figure (docs/BENCHMARKS.md, under 6 KiB per authenticated
//! connection) is mostly this, the hub's entry and the socket; a future that grows by a
//! buffer held across an `.await` (or a future passed by value into an `async fn`, which
//! rustc keeps twice) would grow every connection, and this test names the size it found.

use tokio::net::{TcpListener, TcpStream};

use ticketgate::hub::TransportKind;
use ticketgate::session;
use ticketgate::sse::ServerSentEvents;
use ticketgate::wire::{FrameReader, FrameWriter, WebSocket};

use crate::support::*;

/// The most a WebSocket connection's task may hold, in bytes (1,000 on 2026-12-06, from
/// 3,720 before the connection travelled in boxes and `written` stopped keeping its write
/// twice). The authenticated connection itself (about 670 bytes) is on the heap beside it.
const MAX_TASK_BYTES: usize = 1200;

#[tokio::test]
async fn a_websocket_connections_task_stays_small() {
    let app = spawn_app(Store::Memory, &[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (read, write) = server.into_split();
    let transport = WebSocket::new(FrameReader::new(read, &[]), FrameWriter::new(write));
    let open = app.hub.try_open("alice", TransportKind::WebSocket).unwrap();
    let task = session::run(std::sync::Arc::clone(&app.session), open, transport, None);
    let size = std::mem::size_of_val(&task);
    println!("a WebSocket connection's task: {size} bytes");
    assert!(
        size <= MAX_TASK_BYTES,
        "a WebSocket connection's task is {size} bytes, over {MAX_TASK_BYTES}: something \
         large is held across an .await in session::serve or the transport"
    );
    drop((task, client));
}

#[tokio::test]
async fn an_sse_connections_task_stays_as_small() {
    let app = spawn_app(Store::Memory, &[]).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let inbox = app.hub.inboxes().open("n.0".into(), 16 * 1024);
    let transport =
        ServerSentEvents::open(server, inbox, "n.0", std::time::Duration::from_secs(5)).unwrap();
    let open = app
        .hub
        .try_open("alice", TransportKind::ServerSentEvents)
        .unwrap();
    let task = session::run(std::sync::Arc::clone(&app.session), open, transport, None);
    let size = std::mem::size_of_val(&task);
    println!("an SSE connection's task: {size} bytes");
    assert!(
        size <= MAX_TASK_BYTES,
        "an SSE connection's task is {size} bytes, over {MAX_TASK_BYTES}: something large \
         is held across an .await in session::serve or the SSE transport"
    );
    drop((task, client));
}
