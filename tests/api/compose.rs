//! docker-compose.yml and Dockerfile, checked with a real YAML parser (no Docker engine runs on
//! our build machines): the variables, ports, healthchecks and build commands must match the
//! gateway they run.

use std::collections::BTreeSet;

use ticketgate::config::VARIABLES;

use crate::support::repo_root;
use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = include_str!("../../docker-compose.yml");
const DOCKERFILE: &str = include_str!("../../Dockerfile");

fn compose() -> Yaml {
    YamlLoader::load_from_str(COMPOSE)
        .expect("docker-compose.yml parses")
        .remove(0)
}

fn text(yaml: &Yaml) -> String {
    match yaml {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        other => panic!("not text: {other:?}"),
    }
}

/// A YAML list of scalars as text.
fn texts(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("not a list: {yaml:?}"))
        .iter()
        .map(text)
        .collect()
}

#[test]
fn every_variable_compose_sets_is_one_the_gateway_reads() {
    let doc = compose();
    let environment = doc["services"]["gateway"]["environment"]
        .as_hash()
        .expect("gateway environment");
    let set: BTreeSet<String> = environment.keys().map(text).collect();
    for var in &set {
        assert!(
            VARIABLES.contains(&var.as_str()),
            "compose sets {var}, which the gateway does not read"
        );
    }
    let uri = text(&doc["services"]["gateway"]["environment"]["MONGODB_URI"]);
    assert!(
        uri.contains("mongo:27017") && uri.contains("replicaSet=rs0"),
        "{uri}"
    );
    let env_file = &doc["services"]["gateway"]["env_file"][0];
    assert_eq!(text(&env_file["path"]), ".env");
}

#[test]
fn mongo_is_a_replica_set_initialised_by_its_healthcheck() {
    let doc = compose();
    let mongo = &doc["services"]["mongo"];
    let command = texts(&mongo["command"]);
    assert!(
        command.windows(2).any(|w| w == ["--replSet", "rs0"]),
        "{command:?}"
    );
    // The deployment docs/BENCHMARKS.md measured: no snapshot history kept for
    // point-in-time reads, which ticketgate never makes.
    assert!(
        command
            .windows(2)
            .any(|w| w == ["--setParameter", "minSnapshotHistoryWindowInSeconds=0"]),
        "{command:?}"
    );
    let check = text(&mongo["healthcheck"]["test"]);
    assert!(
        check.contains("rs.initiate") && check.contains("mongo:27017"),
        "{check}"
    );
    let condition = text(&doc["services"]["gateway"]["depends_on"]["mongo"]["condition"]);
    assert_eq!(condition, "service_healthy");
}

#[test]
fn ports_and_healthchecks_match_the_gateways_configuration() {
    let doc = compose();
    let gateway = &doc["services"]["gateway"];
    let bind = text(&gateway["environment"]["BIND_ADDR"]);
    let port = bind.rsplit(':').next().unwrap().to_owned();
    assert!(
        bind.starts_with("0.0.0.0:"),
        "inside a container the gateway must listen on all interfaces: {bind}"
    );
    assert_eq!(
        texts(&gateway["ports"]),
        [format!("{port}:{port}")],
        "the demo is at http://localhost:{port}"
    );
    let check = texts(&gateway["healthcheck"]["test"]);
    assert_eq!(
        check.last().unwrap(),
        &format!("http://127.0.0.1:{port}/readyz")
    );
    assert!(DOCKERFILE.contains(&format!("EXPOSE {port}")));
    assert!(DOCKERFILE.contains(&format!("ENV BIND_ADDR=0.0.0.0:{port}")));
    assert!(DOCKERFILE.contains(&format!("http://127.0.0.1:{port}/readyz")));
}

#[test]
fn the_dockerfile_builds_and_runs_this_crates_binary() {
    let manifest = include_str!("../../Cargo.toml");
    assert!(manifest.contains("name = \"ticketgate\""));
    assert!(DOCKERFILE.contains("cargo build --release --locked --bin ticketgate"));
    // Every workspace member's manifest must be in the build context, or cargo refuses to start.
    for member in manifest
        .split("members = [")
        .nth(1)
        .and_then(|rest| rest.split(']').next())
        .expect("Cargo.toml declares its workspace members")
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty() && *m != ".")
    {
        assert!(
            DOCKERFILE.contains(&format!("COPY {member} ./{member}")),
            "the Dockerfile does not copy the workspace member {member}"
        );
    }
    // The build script (the version's commit and date) is part of the crate.
    assert!(DOCKERFILE.contains("COPY Cargo.toml Cargo.lock build.rs ./"));
    assert!(
        DOCKERFILE
            .contains("COPY --from=build /src/target/release/ticketgate /usr/local/bin/ticketgate")
    );
    assert!(DOCKERFILE.contains(r#"ENTRYPOINT ["/usr/local/bin/ticketgate"]"#));
    assert!(
        DOCKERFILE.contains("USER ticketgate"),
        "the runtime runs as a non-root user"
    );
    // Every file the binary embeds must be in the build context.
    let sources = [
        "src/db/migrations.rs",
        "src/routes/static_files.rs",
        "src/routes/health.rs",
    ];
    for source in sources {
        let code = std::fs::read_to_string(repo_root().join(source)).unwrap();
        for embedded in code
            .split("include_str!(\"")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
        {
            let path = embedded.trim_start_matches("../").trim_start_matches("../");
            let copied = path.split('/').next().unwrap();
            let in_context = DOCKERFILE.lines().any(|l| {
                l.starts_with("COPY ")
                    && !l.contains("--from")
                    && (l.contains(path) || l.contains(&format!(" {copied} ./{copied}")))
            });
            assert!(
                in_context,
                "{source} embeds {path}, which the Dockerfile does not copy"
            );
        }
    }
}

const NGINX: &str = include_str!("../../deploy/nginx-cluster.conf");

#[test]
fn the_cluster_profile_puts_two_nodes_on_the_replica_set_behind_nginx() {
    let doc = compose();
    let services = &doc["services"];
    let profile = |name: &str| texts(&services[name]["profiles"]);
    for node in ["node1", "node2"] {
        assert_eq!(profile(node), ["cluster"]);
        let environment = &services[node]["environment"];
        for var in environment.as_hash().unwrap().keys().map(text) {
            assert!(VARIABLES.contains(&var.as_str()), "{node} sets {var}");
        }
        assert_eq!(
            text(&environment["MONGODB_URI"]),
            text(&services["gateway"]["environment"]["MONGODB_URI"]),
            "{node} shares the gateway's replica set"
        );
        assert_eq!(text(&environment["NODE_NAME"]), node);
        assert_eq!(text(&environment["BIND_ADDR"]), "0.0.0.0:8080");
        assert!(ticketgate::config::is_node_name(node));
        // The nodes believe nginx's X-Forwarded-For: the setting must parse.
        ticketgate::client_ip::TrustedProxies::parse(&text(&environment["TRUSTED_PROXIES"]))
            .unwrap();
        assert!(
            NGINX.contains(&format!("server {node}:8080")),
            "nginx proxies to {node}"
        );
        assert_eq!(
            text(&services[node]["depends_on"]["mongo"]["condition"]),
            "service_healthy"
        );
    }
    assert_eq!(profile("nginx"), ["cluster"]);
    assert_eq!(
        texts(&services["nginx"]["volumes"]),
        ["./deploy/nginx-cluster.conf:/etc/nginx/nginx.conf:ro"]
    );
    assert_eq!(texts(&services["nginx"]["ports"]), ["8090:8090"]);
    // Like every other service, nginx reports its health: through itself, to a node.
    assert_eq!(
        texts(&services["nginx"]["healthcheck"]["test"]),
        ["CMD", "wget", "-qO-", "http://127.0.0.1:8090/readyz"]
    );
    assert!(NGINX.contains("listen 8090;"));
    // WebSocket upgrades pass through, with the Host the same-origin check needs.
    for directive in [
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ] {
        assert!(NGINX.contains(directive), "nginx lacks {directive}");
    }
}
