//! What the integration tests share, one concern a module: a throwaway mongod (`mongod`), the
//! application in process (`app`), a WebSocket client (`ws_client`), the gateway as a process
//! (`process`), raw HTTP and WebSocket frames for bad input (`raw`), an SSE client
//! (`sse_client`), and metrics (`metrics`).
//! Tests `use crate::support::*`.
//!
//! The protocol's messages, the ticket request and the first-message JWT come from the Rust
//! client crate (`ticketgate_client::protocol`): the protocol has one client-side
//! implementation, and these helpers are its users. Tests of the gateway's wire behaviour
//! still read what arrives as raw JSON (`next_json`): the crate's `Client` hides what those
//! tests assert (it drops repeated publications, retries `unavailable`), so it is used where a
//! test plays an application (tests/api/client_rust.rs), not where it checks the gateway.

mod app;
mod backend;
mod collector;
mod link;
mod metrics;
mod mongod;
mod process;
pub mod raw;
mod sse_client;
mod ws_client;

pub use app::*;
pub use backend::*;
pub use collector::*;
pub use link::CuttableLink;
pub use metrics::*;
pub use mongod::*;
pub use process::*;
pub use sse_client::*;
pub use ws_client::*;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use ticketgate::jwt::{Claims, JwtSigner};

pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// Long enough for any wait a test expects to succeed, short enough to fail fast.
pub const PATIENCE: Duration = Duration::from_secs(10);
/// For a gateway process to start: it applies the migrations first, and with eight tests at a
/// time on two cores (some holding thousands of sockets) MongoDB can take longer than
/// [`PATIENCE`] to create a fresh database's collections and indexes.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// The repository's root (this package lives in tests/).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// Runs `scripts/<script>` (one of the install scripts the test command runs first) and
/// returns what it prints: the installed tool's path. Fails with `needs` (what the test needs
/// and what the script needs to get it) and the script's output when it cannot install.
pub fn installed(script: &str, needs: &str) -> String {
    let output = std::process::Command::new("bash")
        .arg(repo_root().join("scripts").join(script))
        .output()
        .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"));
    assert!(
        output.status.success(),
        "{needs} (scripts/{script}):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The variable by which scripts/test.sh finds every process the tests started and left
/// behind; a child started with a cleared environment must still carry it.
pub fn test_run_marker() -> Option<(String, String)> {
    const NAME: &str = "TICKETGATE_TEST_RUN";
    std::env::var(NAME).ok().map(|v| (NAME.to_owned(), v))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Tokens

pub fn jwt(sub: &str) -> String {
    JwtSigner::hs256(SECRET.as_bytes()).mint(sub, 3600)
}

pub fn jwt_with(claims: &Claims) -> String {
    JwtSigner::hs256(SECRET.as_bytes()).sign(claims)
}

/// A test-secret JWT for `sub` carrying `jti`, valid for ten minutes.
pub fn jwt_with_jti(sub: &str, jti: &str) -> String {
    jwt_with(&Claims {
        sub: sub.into(),
        exp: now() + 600,
        nbf: None,
        iat: None,
        jti: Some(jti.into()),
        ..Claims::default()
    })
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
