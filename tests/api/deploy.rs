//! deploy/: the Kubernetes manifests validated offline against the Kubernetes schemas
//! (kubernetes-validate, from PyPI, carries them) and checked for what the schemas cannot
//! see (tests/deploy/check_kubernetes.py: the drain fits the grace period, the probes, the
//! ServiceMonitor's shape, every setting a real one), their settings accepted by the gateway
//! itself (`ticketgate config --check`). The Grafana dashboard's metrics are checked in
//! src/metrics.rs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

/// kubernetes-validate's venv python, installed by scripts/install-kubernetes-validate.sh.
fn kubernetes_validate_python() -> PathBuf {
    let install = Command::new("bash")
        .arg(repo_root().join("scripts/install-kubernetes-validate.sh"))
        .output()
        .expect("running scripts/install-kubernetes-validate.sh");
    assert!(
        install.status.success(),
        "this test needs kubernetes-validate (scripts/install-kubernetes-validate.sh installs it \
         from PyPI into a venv; it needs python3 with venv and pip):\n{}",
        String::from_utf8_lossy(&install.stderr)
    );
    String::from_utf8(install.stdout).unwrap().trim().into()
}

#[test]
fn the_kubernetes_manifests_validate_offline_and_hold_together() {
    let python = kubernetes_validate_python();
    let manifest = repo_root().join("deploy/kubernetes/ticketgate.yaml");
    let validated = Command::new(python.with_file_name("kubernetes-validate"))
        .arg("--strict")
        .arg(&manifest)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
    assert!(validated.status.success(), "{report}");
    for kind in [
        "configmap",
        "secret",
        "deployment",
        "poddisruptionbudget",
        "service",
    ] {
        assert!(
            report.contains(&format!("passed for resource {kind}/ticketgate")),
            "{kind} validated: {report}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let (env_file, toml_file) = (
        dir.path().join("env.json"),
        dir.path().join("ticketgate.toml"),
    );
    let checked = Command::new(&python)
        .arg(repo_root().join("tests/deploy/check_kubernetes.py"))
        .arg(&manifest)
        .arg(repo_root().join("docs/PROTOCOL.md"))
        .arg(&env_file)
        .arg(&toml_file)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // The gateway takes the manifest's settings as they are (the file at the path the
    // ConfigMap mounts it, here in the temporary folder).
    let env: HashMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(&env_file).unwrap()).unwrap();
    let check = Command::new(BIN)
        .current_dir(dir.path())
        .env_clear()
        .envs(&env)
        .env("CONFIG_FILE", &toml_file)
        .args(["config", "--check"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ticketgate config --check with the manifest's settings: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}
