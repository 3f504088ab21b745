//! The `ticketgate` binary: commands, configuration errors, dev mode, `.env`.

use std::process::Command;
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use serde_json::json;
use ticketgate::jwt::{JwtSettings, JwtVerifier};

use crate::support::*;

/// The binary with a clean environment (no inherited MONGODB_URI, JWT_SECRET…) in an empty
/// directory, so no `.env` is picked up unless a test writes one.
fn ticketgate(dir: &std::path::Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(test_run_marker())
        .current_dir(dir);
    command
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    let version = String::from_utf8(output.stdout).unwrap();
    // "ticketgate 0.1.0 (commit 0123456789ab, built 2026-12-07)"
    let (name, rest) = version.trim().split_once(' ').unwrap();
    assert_eq!(name, "ticketgate");
    let (semver, rest) = rest.split_once(" (commit ").unwrap();
    assert_eq!(semver, ticketgate::build_info::VERSION);
    let (commit, rest) = rest.split_once(", built ").unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    let date = rest.strip_suffix(')').unwrap();
    let parts: Vec<&str> = date.split('-').collect();
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [4, 2, 2],
        "{version}"
    );
    assert!(
        parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())),
        "{version}"
    );
}

#[test]
fn help_documents_every_command_and_variable() {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let words = ["serve", "migrate", "mint-jwt"].into_iter();
    for word in words.chain(ticketgate::config::VARIABLES.iter().copied()) {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let output = Command::new(BIN)
        .args(["mint-jwt", "--help"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8(output.stdout)
            .unwrap()
            .contains("--ttl-secs")
    );
}

#[test]
fn mint_jwt_signs_with_jwt_secret() {
    let dir = tempfile::tempdir().unwrap();
    let output = ticketgate(dir.path())
        .env("JWT_SECRET", SECRET)
        .args(["mint-jwt", "--sub", "carol", "--ttl-secs", "120"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap();
    let verifier = JwtVerifier::new(&JwtSettings::hs256(SECRET.as_bytes()));
    let verified = verifier.verify(token.trim()).unwrap();
    assert_eq!(verified.sub, "carol");
    assert!((now() + 110..=now() + 121).contains(&verified.expires_at));

    let output = ticketgate(dir.path())
        .args(["mint-jwt", "--sub", "carol"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("JWT_SECRET"));
}

#[test]
fn an_invalid_variable_stops_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (var, value) in [
        ("TICKET_TTL_SECS", "soon"),
        ("BIND_ADDR", "here"),
        ("TICKET_SINGLE_USE", "perhaps"),
    ] {
        let output = ticketgate(dir.path()).env(var, value).output().unwrap();
        assert!(!output.status.success(), "{var}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
}

#[test]
fn migrate_without_mongodb_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let output = ticketgate(dir.path()).arg("migrate").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("MONGODB_URI"));
}

#[tokio::test]
async fn migrate_applies_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let database = unique_db_name();
    let output = ticketgate(dir.path())
        .env("MONGODB_URI", mongo_uri())
        .env("MONGODB_DATABASE", &database)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let db = mongodb::Client::with_uri_str(mongo_uri())
        .await
        .unwrap()
        .database(&database);
    let recorded = db
        .collection::<Document>("schema_migrations")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(
        recorded as usize,
        ticketgate::db::migrations::MIGRATIONS.len()
    );
}

/// `cargo run --release` with nothing configured: dev mode on the in-process store. The printed
/// JWT walks the whole flow; `.env` in the working directory is read.
#[tokio::test]
async fn dev_mode_prints_a_jwt_that_walks_the_whole_flow() {
    let gateway = GatewayProcess::start_with_dotenv(&[], Some("TICKET_TTL_SECS=77\n"));
    let deadline = Instant::now() + PATIENCE;
    let jwt = loop {
        if let Some(line) = gateway.stdout().lines().find(|l| l.starts_with("ey")) {
            break line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no dev JWT on stdout:\n{}",
            gateway.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = gateway.log();
    assert!(log.contains("DEV MODE"), "{log}");
    assert!(
        log.contains("in this process"),
        "the in-process store is announced: {log}"
    );
    assert!(
        !log.contains(&jwt),
        "the JWT is printed to stdout, never logged"
    );

    let http = reqwest::Client::new();
    let body: serde_json::Value = http
        .get(gateway.url("/token/ws"))
        .bearer_auth(&jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], 77, ".env was read");
    let url = gateway.ws_url(body["token"].as_str().unwrap());
    let mut client = try_connect_url(&url, None).await.unwrap();
    client
        .send_json(&json!({"type": "jwt", "token": jwt}))
        .await;
    let welcome = client.next_json().await;
    assert_eq!(welcome["type"], "authenticated");
    assert_eq!(welcome["user_id"], "demo-user");
    // The dev JWT grants the demo namespace, which dev mode declares with presence.
    client
        .send_json(&json!({"type": "subscribe", "channel": "demo:lobby", "id": 1}))
        .await;
    let mut subscribed = false;
    let (mut broadcast, mut publication) = (None, None);
    while !(subscribed && broadcast.is_some() && publication.is_some()) {
        let message = client.next_json().await;
        match message["type"].as_str() {
            Some("subscribed") => subscribed = true,
            Some("join") => assert_eq!(message["user_id"], "demo-user"),
            // Dev mode broadcasts on its own, and publishes into demo:lobby, so the demo
            // shows traffic at once.
            Some("broadcast") => broadcast = Some(message),
            Some("publication") if subscribed => publication = Some(message),
            _ => {}
        }
    }
    assert!(broadcast.unwrap()["data"]["counter"].is_u64());
    let publication = publication.unwrap();
    assert_eq!(publication["channel"], "demo:lobby");
    assert!(publication["data"]["counter"].is_u64(), "{publication}");
    client
        .send_json(&json!({"type": "subscribe", "channel": "other:x"}))
        .await;
    let refused = loop {
        let message = client.next_json().await;
        if message["type"] == "error" {
            break message;
        }
    };
    assert_eq!(refused["error"], "unknown_namespace", "{refused}");
    let link = gateway.stdout();
    assert!(
        link.contains(&format!("http://127.0.0.1:{}/#jwt={jwt}", gateway.port)),
        "{link}"
    );
}

/// `ticketgate config` shows every setting's effective value and where it came from, secrets
/// redacted; `--check` validates without serving, and names what is wrong.
#[test]
fn config_prints_the_effective_values_and_their_origins() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ticketgate.toml");
    std::fs::write(
        &file,
        "ticket_ttl_secs = 120\napi_key = \"file-api-key-0123456789\"\nauth_timeout_secs = 4\n\
         [[channels.namespaces]]\nname = \"chat\"\npresence = true\n",
    )
    .unwrap();
    let output = ticketgate(dir.path())
        .env("CONFIG_FILE", &file)
        .env("AUTH_TIMEOUT_SECS", "6")
        .env("JWT_SECRET", SECRET)
        .arg("config")
        .output()
        .unwrap();
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{printed}");
    let line = |name: &str| {
        printed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{printed}"))
            .to_owned()
    };
    let file_name = file.display().to_string();
    assert!(
        line("TICKET_TTL_SECS").contains("120") && line("TICKET_TTL_SECS").contains(&file_name)
    );
    assert!(
        line("AUTH_TIMEOUT_SECS").contains(" 6 ")
            && line("AUTH_TIMEOUT_SECS").contains("(environment)")
    );
    assert!(line("HEARTBEAT_INTERVAL_SECS").contains("(default)"));
    assert!(line("API_KEY").contains("<redacted>"));
    assert!(
        !printed.contains("file-api-key") && !printed.contains(SECRET),
        "{printed}"
    );
    for var in ticketgate::config::VARIABLES.iter() {
        line(var);
    }
    assert!(
        line("(default)").contains("public=false presence=false join_leave=false")
            && line("chat").contains("public=false presence=true join_leave=false"),
        "the namespaces are shown: {printed}"
    );

    let check = ticketgate(dir.path())
        .env("CONFIG_FILE", &file)
        .args(["config", "--check"])
        .output()
        .unwrap();
    assert!(check.status.success());
    std::fs::write(&file, "ticket_ttl_secs = 120\nheartbeat_secs = 5\n").unwrap();
    let check = ticketgate(dir.path())
        .env("CONFIG_FILE", &file)
        .args(["config", "--check"])
        .output()
        .unwrap();
    assert!(!check.status.success(), "an unknown key fails the check");
    let stderr = String::from_utf8(check.stderr).unwrap();
    assert!(stderr.contains("heartbeat_secs"), "{stderr}");
}

/// The gateway reads the configuration file at start, under the environment, and refuses to
/// start on an invalid value in it, naming the key and the file.
#[tokio::test]
async fn the_gateway_serves_with_its_configuration_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "ticket_ttl_secs = 61\njwt_secret = \"integration-test-secret-0123456789abcdef\"\n",
    )
    .unwrap();
    let path = file.display().to_string();
    let gateway = GatewayProcess::start(&[("CONFIG_FILE", &path)]);
    let http = reqwest::Client::new();
    let minted: serde_json::Value = http
        .get(gateway.url("/token/ws"))
        .bearer_auth(jwt("alice"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(minted["expires_in"], 61, "{minted}");

    std::fs::write(&file, "ticket_ttl_secs = \"soon\"\n").unwrap();
    let output = ticketgate(dir.path())
        .env("CONFIG_FILE", &file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("ticket_ttl_secs") && stderr.contains(&path),
        "{stderr}"
    );
}
