//! The JavaScript client (client/) and the demo page, tested with Node's test runner against
//! real gateway processes, and in headless Chromium. The suites start their own gateways from
//! this build's binary, on the test MongoDB.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

fn client_dir() -> PathBuf {
    repo_root().join("client")
}

/// `npm ci` when the client's dependencies (ws, playwright-core, uplot) are missing.
fn ensure_node_modules() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "Node.js 20 or later is needed for the client tests (apt-get install nodejs, or nodejs.org)"
    );
    if ["ws", "playwright-core", "uplot", "eventsource"]
        .iter()
        .all(|package| client_dir().join("node_modules").join(package).exists())
    {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(client_dir())
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "npm ci in client/ failed"
    );
}

fn run_node_suite(suite: &str) {
    run_node_suite_on(suite, &mongo_uri());
}

/// [`run_node_suite`] with the suite's gateways on the MongoDB at `uri`.
fn run_node_suite_on(suite: &str, uri: &str) {
    ensure_node_modules();
    let artifacts = repo_root().join("target/artifacts");
    let output = Command::new("node")
        // A test that hangs fails after two minutes, and a handle a failed test left open
        // (a client still reconnecting) cannot keep the suite from ending.
        .args([
            "--test",
            "--test-reporter=spec",
            "--test-timeout=120000",
            "--test-force-exit",
            suite,
        ])
        .current_dir(client_dir())
        .env("TICKETGATE_BIN", BIN)
        .env("MONGODB_URI", uri)
        .env("ARTIFACTS_DIR", &artifacts)
        .output()
        .expect("running node");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Straight to stderr, past the test harness's capture, so the run's output shows the
    // suite's counts whether it passed or not.
    let _ = writeln!(
        std::io::stderr(),
        "node --test {suite}: {}",
        summary(&report)
    );
    assert!(
        output.status.success(),
        "node --test {suite} failed:\n{report}"
    );
    eprintln!("{report}");
}

/// "12 tests: 12 pass, 0 fail" from the reporter's closing counts.
fn summary(report: &str) -> String {
    let count = |word: &str| {
        report
            .lines()
            .filter_map(|line| line.trim_start_matches(['ℹ', '#', ' ']).strip_prefix(word))
            .filter_map(|rest| rest.trim().parse::<u32>().ok())
            .next_back()
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    format!(
        "{} tests: {} pass, {} fail",
        count("tests "),
        count("pass "),
        count("fail ")
    )
}

#[test]
fn the_javascript_client_passes_its_suite_against_real_gateways() {
    // A mongod of its own: its lost-place test sets MongoDB's one `failCommand` fail point,
    // which the other clients' suites set too.
    let mongod = TestMongod::start();
    run_node_suite_on("test/", &mongod.uri);
}

#[test]
fn the_demo_page_and_the_console_work_in_headless_chromium() {
    let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium}: apt-get install chromium (scripts/test.sh installs it)"
    );
    run_node_suite("e2e/");
    for name in [
        "demo-authenticated.png",
        "demo-channel.png",
        "demo-sse.png",
        "console-overview.png",
        "console-channel.png",
        "console-user.png",
    ] {
        let screenshot = repo_root().join("target/artifacts").join(name);
        assert!(
            screenshot.exists(),
            "the screenshot artefact {name} was written"
        );
    }
}

#[tokio::test]
async fn the_gateway_serves_the_client_and_the_demo_page() {
    let app = spawn_app(Store::Mongo, &[]).await;
    let module = app
        .http
        .get(app.url("/ticketgate.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        module.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        module.text().await.unwrap(),
        include_str!("../../client/ticketgate.js")
    );
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"import { TicketgateClient } from "/ticketgate.js""#));
    // The SharedWorker of `shared: true`, beside the module it imports.
    let worker = app
        .http
        .get(app.url("/ticketgate-worker.js"))
        .send()
        .await
        .unwrap();
    assert!(
        worker.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert_eq!(
        worker.text().await.unwrap(),
        include_str!("../../client/ticketgate-worker.js")
    );
}

/// The console's charting library is uPlot, vendored into the binary from its npm package:
/// the copy in client/console/vendor/ is the package's, byte for byte.
#[test]
fn the_vendored_chart_library_is_the_npm_package() {
    ensure_node_modules();
    for file in ["uPlot.iife.min.js", "uPlot.min.css"] {
        let vendored = std::fs::read(client_dir().join("console/vendor").join(file)).unwrap();
        let packaged =
            std::fs::read(client_dir().join("node_modules/uplot/dist").join(file)).unwrap();
        assert!(
            vendored == packaged,
            "{file} differs from the npm package's"
        );
    }
    let license =
        std::fs::read_to_string(client_dir().join("console/vendor/uPlot.LICENSE")).unwrap();
    assert!(license.contains("MIT"));
}
