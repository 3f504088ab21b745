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

/// kubernetes-validate's venv python.
fn kubernetes_validate_python() -> PathBuf {
    installed(
        "install-kubernetes-validate.sh",
        "this test needs kubernetes-validate (installed from PyPI into a venv; it needs python3 \
         with venv and pip)",
    )
    .into()
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

/// The Debian package (`cargo deb`, from Cargo.toml's `[package.metadata.deb]`): the binary
/// runs `--version` and `config --check` with the packaged settings file, the systemd unit is
/// hardened and fits the gateway's defaults, the settings are conffiles, and the postinst
/// makes the system user and enables the unit.
#[test]
fn the_debian_package_holds_a_working_binary_a_hardened_unit_and_conffiles() {
    let cargo_deb = installed(
        "install-cargo-deb.sh",
        "this test needs cargo-deb (installed from crates.io)",
    );
    let out = tempfile::tempdir().unwrap();
    // The dev profile: the suite has built it already, and packaging is the same.
    let built = Command::new(&cargo_deb)
        .current_dir(repo_root())
        .args([
            "-p",
            "ticketgate",
            "--profile",
            "dev",
            "--no-strip",
            "--output",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "cargo deb: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("a .deb");
    let (root, control) = (out.path().join("root"), out.path().join("control"));
    for (flag, into) in [("-x", &root), ("-e", &control)] {
        let unpacked = Command::new("dpkg-deb")
            .arg(flag)
            .arg(&deb)
            .arg(into)
            .output()
            .expect("dpkg-deb (apt-get install dpkg)");
        assert!(unpacked.status.success(), "dpkg-deb {flag}");
    }

    let binary = root.join("usr/bin/ticketgate");
    let version = Command::new(&binary).arg("--version").output().unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    assert!(
        version.starts_with("ticketgate 0.1.0 (commit "),
        "--version: {version}"
    );
    let check = Command::new(&binary)
        .current_dir(out.path())
        .env_clear()
        .env("CONFIG_FILE", root.join("etc/ticketgate/ticketgate.toml"))
        .args(["config", "--check"])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "config --check with the packaged file: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    for file in [
        "/etc/ticketgate/ticketgate.toml",
        "/etc/ticketgate/ticketgate.env",
    ] {
        assert!(
            conffiles.lines().any(|l| l == file),
            "{file} is a conffile: {conffiles}"
        );
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper"),
        "the unit is enabled: {postinst}"
    );

    let unit = ["lib", "usr/lib"]
        .iter()
        .map(|dir| root.join(dir).join("systemd/system/ticketgate.service"))
        .find(|path| path.exists())
        .expect("the systemd unit in the package");
    let unit = std::fs::read_to_string(unit).unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in the unit"))
            .to_owned()
    };
    assert_eq!(value("User"), "ticketgate");
    assert_eq!(value("NoNewPrivileges"), "yes");
    assert_eq!(value("Restart"), "on-failure");
    assert_eq!(value("ExecStart"), "/usr/bin/ticketgate serve");
    let default = |name: &str| -> u64 {
        ticketgate::config::table::lookup(name)
            .default
            .unwrap()
            .parse()
            .unwrap()
    };
    let files: u64 = value("LimitNOFILE").parse().unwrap();
    assert!(files >= default("MAX_CONNECTIONS"), "LimitNOFILE={files}");
    let stop: u64 = value("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > default("SHUTDOWN_GRACE_SECS"),
        "TimeoutStopSec={stop}"
    );
}
