//! A TCP relay that can be cut the way a network drops a connection: it stops carrying bytes
//! either way and closes nothing, so neither end learns of the cut from TCP.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub struct CuttableLink {
    /// Where clients connect instead of the gateway.
    pub port: u16,
    cut: watch::Sender<bool>,
    /// The accept loop: aborted (its listener closed) when the link drops.
    accepts: tokio::task::JoinHandle<()>,
    /// Every relay: aborted (their sockets closed) when the link drops or is mended.
    relays: Arc<std::sync::Mutex<JoinSet<()>>>,
}

impl CuttableLink {
    /// A link to the server on `upstream` (a port on 127.0.0.1: a gateway, or a mongod).
    pub async fn to(upstream: u16) -> CuttableLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let relays = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let (for_accepts, cut_for_accepts) = (Arc::clone(&relays), cut.clone());
        let accepts = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(gateway) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (gateway_read, gateway_write) = gateway.into_split();
                let mut relays = for_accepts.lock().unwrap();
                relays.spawn(carry(
                    client_read,
                    gateway_write,
                    cut_for_accepts.subscribe(),
                ));
                relays.spawn(carry(
                    gateway_read,
                    client_write,
                    cut_for_accepts.subscribe(),
                ));
            }
        });
        CuttableLink {
            port,
            cut,
            accepts,
            relays,
        }
    }

    /// A `MONGODB_URI` through this link to a mongod. The driver finds the server again by
    /// its monitor's checks: frequent and short ones here, so that coming back after a
    /// [`mend`](Self::mend) is a matter of a second or two, not of the defaults' ten.
    pub fn mongodb_uri(&self) -> String {
        format!(
            "mongodb://127.0.0.1:{}/?directConnection=true&heartbeatFrequencyMS=500&connectTimeoutMS=2000",
            self.port
        )
    }

    /// From now on no byte crosses, and both sockets stay open.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// The network is back: the connections held silent are closed (as a peer that rebooted
    /// would), and new ones carry bytes again. The link is whole before the old connections
    /// close: a client reconnects at once when they do, and let in while the link was still
    /// cut, its new connection would be held silent for good.
    pub fn mend(&self) {
        let held = std::mem::take(&mut *self.relays.lock().unwrap());
        self.cut.send_replace(false);
        drop(held); // a JoinSet dropped aborts its tasks
    }
}

impl Drop for CuttableLink {
    fn drop(&mut self) {
        self.accepts.abort();
        self.relays.lock().unwrap().abort_all();
    }
}

/// Copies `from` to `to` until the link is cut; then holds both, silent, until aborted.
async fn carry(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = cut.wait_for(|cut| *cut) => break,
        };
        match read {
            Ok(n) if n > 0 && !*cut.borrow() => {
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            Ok(n) if n > 0 => break,
            _ => return,
        }
    }
    // Cut: keep both halves open and carry nothing.
    let _held = (from, to);
    std::future::pending::<()>().await;
}
