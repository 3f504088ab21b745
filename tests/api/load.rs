//! The load generator still works: a small run of each scenario against a real gateway process
//! and MongoDB. This asserts behaviour (everything authenticated, nothing lost), never speed;
//! the figures live in docs/BENCHMARKS.md.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

const API_KEY: &str = "load-smoke-api-key-0123";

fn run(gateway: &GatewayProcess, args: &[&str]) -> Value {
    let output = Command::new(LOAD_BIN)
        .args([
            "--url",
            &gateway.url(""),
            "--secret",
            SECRET,
            "--gateway-pid",
            &gateway.pid().to_string(),
        ])
        .args(args)
        .output()
        .expect("running ticketgate-load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ticketgate-load {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{}", stdout.lines().next().unwrap_or_default());
    serde_json::from_str(stdout.lines().last().unwrap()).expect("the last line is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_hundred_clients_through_each_scenario() {
    let (uri, db) = (mongo_uri(), unique_db_name());
    let gateway = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("API_KEY", API_KEY),
        ("MONGODB_URI", &uri),
        ("MONGODB_DATABASE", &db),
        ("TICKET_RATE_PER_MIN", "100000"),
        ("UPGRADE_RATE_PER_MIN", "100000"),
        ("RUST_LOG", "warn,ticketgate::startup=info"),
    ]);
    let report = tokio::task::spawn_blocking(move || {
        let connect = run(
            &gateway,
            &["connect", "--connections", "300", "--concurrency", "30"],
        );
        assert_eq!(connect["authenticated"], 300, "{connect}");
        assert_eq!(connect["failures"], 0);
        assert!(
            connect["gateway_cpu_seconds"].as_f64().is_some(),
            "CPU is read from /proc"
        );

        let fanout = run(
            &gateway,
            &[
                "fanout",
                "--connections",
                "200",
                "--messages",
                "20",
                "--rate",
                "100",
                "--size",
                "100",
                "--api-key",
                API_KEY,
            ],
        );
        assert_eq!(fanout["deliveries"], 4000, "{fanout}");
        assert_eq!(fanout["lost"], 0);
        assert_eq!(fanout["dropped_connections"], 0);

        let idle = run(
            &gateway,
            &["idle", "--connections", "200", "--hold-secs", "1"],
        );
        assert_eq!(idle["held"], 200, "{idle}");
        assert!(idle["gateway_kib_per_connection"].as_f64().is_some());

        // Spread over two generator processes, as runs past ~19,900 sockets are.
        let spread = run(
            &gateway,
            &[
                "idle",
                "--connections",
                "101",
                "--hold-secs",
                "1",
                "--processes",
                "2",
            ],
        );
        assert_eq!(spread["generator_processes"], 2, "{spread}");
        assert_eq!(
            (spread["held"].as_u64(), spread["failures"].as_u64()),
            (Some(101), Some(0))
        );
    });
    report.await.unwrap();
}

/// The generator's own permessage-deflate client against a gateway with WS_COMPRESSION: every
/// broadcast arrives, compressed, so the compression figures in docs/BENCHMARKS.md are real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_negotiates_compression() {
    let gateway = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("API_KEY", API_KEY),
        ("WS_COMPRESSION", "true"),
        ("TICKET_RATE_PER_MIN", "100000"),
        ("UPGRADE_RATE_PER_MIN", "100000"),
        ("RUST_LOG", "warn,ticketgate::startup=info"),
    ]);
    let fanout = tokio::task::spawn_blocking(move || {
        run(
            &gateway,
            &[
                "fanout",
                "--compression",
                "--connections",
                "50",
                "--messages",
                "10",
                "--rate",
                "100",
                "--size",
                "1600",
                "--word-padding",
                "--api-key",
                API_KEY,
            ],
        )
    })
    .await
    .unwrap();
    assert_eq!(fanout["deliveries"], 500, "{fanout}");
    assert_eq!(fanout["lost"], 0);
    let (wire, inflated) = (
        fanout["compressed"]["wire_bytes"].as_u64().unwrap(),
        fanout["compressed"]["inflated_bytes"].as_u64().unwrap(),
    );
    assert!(
        inflated >= 500 * 1600,
        "every broadcast came compressed: {fanout}"
    );
    assert!(wire * 2 < inflated, "words compress at least 2:1: {fanout}");
}

/// The channels scenario: connections subscribed through their JWT's grant, broadcasts, then
/// publications to random channels; every delivery arrives, and idle connections hold their
/// subscriptions while memory is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channels_scenario_delivers_everything() {
    // The generator's channels are `load:c<n>`, granted by its JWTs' `load:*` claim.
    let file = crate::channels::ConfigFile::new("[[channels.namespaces]]\nname = \"load\"\n");
    let gateway = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("API_KEY", API_KEY),
        ("CONFIG_FILE", file.path()),
        ("TICKET_RATE_PER_MIN", "100000"),
        ("UPGRADE_RATE_PER_MIN", "100000"),
        ("RUST_LOG", "warn,ticketgate::startup=info"),
    ]);
    let (channels, idle) = tokio::task::spawn_blocking(move || {
        let channels = run(
            &gateway,
            &[
                "--subscribe",
                "5",
                "--channels",
                "50",
                "channels",
                "--connections",
                "100",
                "--rate",
                "40",
                "--duration-secs",
                "2",
                "--broadcasts",
                "3",
                "--broadcast-rate",
                "20",
                "--api-key",
                API_KEY,
            ],
        );
        let idle = run(
            &gateway,
            &[
                "--subscribe",
                "10",
                "--channels",
                "50",
                "idle",
                "--connections",
                "50",
                "--hold-secs",
                "1",
            ],
        );
        (channels, idle)
    })
    .await
    .unwrap();
    assert_eq!(channels["subscribes"], 500, "{channels}");
    assert_eq!(channels["broadcast_deliveries"], 300, "{channels}");
    assert_eq!(channels["publications"], 80, "{channels}");
    // 100 connections x 5 subscriptions over 50 channels: 10 subscribers a channel.
    assert_eq!(channels["expected"], 800, "{channels}");
    assert_eq!(channels["lost"], 0, "{channels}");
    assert!(channels["gateway_cpu_us_per_delivery"].as_f64().is_some());
    assert_eq!(
        (idle["held"].as_u64(), idle["failures"].as_u64()),
        (Some(50), Some(0)),
        "{idle}"
    );
    assert_eq!(idle["subscriptions_per_connection"], 10);
}

/// Kills the backend process when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpc_scenario_calls_through_the_gateway_to_its_backend() {
    let port = free_port();
    let backend = Child(
        Command::new(LOAD_BIN)
            .args(["--secret", SECRET, "backend", "--port", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting the load generator's backend"),
    );
    let backend_url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while http
        .post(format!("{backend_url}/rpc"))
        .body("{}")
        .send()
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the backend did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let gateway = GatewayProcess::start(&[
        ("JWT_SECRET", SECRET),
        ("UPSTREAM_URL", &backend_url),
        ("UPSTREAM_KEY", "load-smoke-upstream-key-0123"),
        ("RUST_LOG", "warn,ticketgate::startup=info"),
    ]);
    let report = tokio::task::spawn_blocking(move || {
        run(
            &gateway,
            &[
                "rpc",
                "--backend-url",
                &backend_url,
                "--connections",
                "4",
                "--duration-secs",
                "1",
            ],
        )
    })
    .await
    .unwrap();
    drop(backend);
    assert!(report["calls"].as_u64().unwrap() > 0, "{report}");
    assert!(
        report["direct"]["calls_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["gateway_cpu_per_rpc_us"].as_f64().is_some(),
        "{report}"
    );
}

/// The SSE transport in the generator, and the round-trip scenario on both transports: every
/// ping answered, on the stream's node and with the POSTs through another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_roundtrip_scenario_works_on_both_transports_and_across_nodes() {
    let (uri, db) = (mongo_uri(), unique_db_name());
    tokio::task::spawn_blocking(move || {
        let vars = [
            ("JWT_SECRET", SECRET),
            ("API_KEY", API_KEY),
            ("MONGODB_URI", uri.as_str()),
            ("MONGODB_DATABASE", db.as_str()),
            ("RUST_LOG", "warn,ticketgate::startup=info"),
        ];
        let (node1, node2) = (GatewayProcess::start(&vars), GatewayProcess::start(&vars));
        for transport in ["websocket", "sse"] {
            let report = run(
                &node1,
                &[
                    "--transport",
                    transport,
                    "roundtrip",
                    "--connections",
                    "3",
                    "--duration-secs",
                    "1",
                ],
            );
            assert_eq!(report["transport"], transport, "{report}");
            assert!(report["pings"].as_u64().unwrap() > 0, "{report}");
        }
        let across = run(
            &node1,
            &[
                "--transport",
                "sse",
                "--post-url",
                &node2.url(""),
                "roundtrip",
                "--connections",
                "2",
                "--duration-secs",
                "1",
            ],
        );
        assert_eq!(across["cross_node"], true, "{across}");
        assert!(across["pings"].as_u64().unwrap() > 0, "{across}");
    })
    .await
    .unwrap();
}
