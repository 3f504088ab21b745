//! The Python client (clients/python): its pytest suite against real gateway processes of
//! this build on the test MongoDB, `mypy --strict` on the package, and its wheel built.
//! scripts/install-python-client-dev.sh installs what these need into a cached venv.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;

fn package_dir() -> PathBuf {
    repo_root().join("clients/python")
}

/// The venv's python, with websockets, httpx, pytest, mypy and setuptools.
fn python() -> String {
    installed(
        "install-python-client-dev.sh",
        "the Python client's tests need python3 with venv and pip, and PyPI",
    )
}

/// Runs `python args…` in the package's folder; its output, or a failure that shows it.
fn run(python: &str, what: &str, args: &[&str]) -> String {
    run_on(&mongo_uri(), python, what, args)
}

/// [`run`] with the suite's gateways on the MongoDB at `uri`.
fn run_on(uri: &str, python: &str, what: &str, args: &[&str]) -> String {
    let output = Command::new(python)
        .args(args)
        .current_dir(package_dir())
        .env("PYTHONPATH", package_dir().join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("TICKETGATE_BIN", BIN)
        .env("MONGODB_URI", uri)
        .output()
        .unwrap_or_else(|e| panic!("running {what}: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{what} failed:\n{report}");
    report
}

#[test]
fn the_python_client_passes_its_suite_against_real_gateways() {
    let python = python();
    // A mongod of its own: its lost-place test sets MongoDB's one `failCommand` fail point,
    // which the other clients' suites set too.
    let mongod = TestMongod::start();
    let report = run_on(
        &mongod.uri,
        &python,
        "pytest",
        &["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
    );
    let summary = report.lines().next_back().unwrap_or_default().to_owned();
    eprintln!("pytest clients/python: {summary}");
    assert!(
        summary.contains("passed") && !summary.contains("failed"),
        "{report}"
    );
}

#[test]
fn the_python_client_is_typed_strictly_and_builds_a_wheel() {
    let python = python();
    let report = run(
        &python,
        "mypy --strict",
        &["-m", "mypy", "--strict", "--cache-dir", "/dev/null", "src"],
    );
    assert!(report.contains("Success: no issues found"), "{report}");
    let wheels = tempfile::tempdir().unwrap();
    let out = wheels.path().display().to_string();
    run(
        &python,
        "pip wheel",
        &[
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            &out,
            ".",
        ],
    );
    let wheel = std::fs::read_dir(wheels.path())
        .unwrap()
        .filter_map(Result::ok)
        .find(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .ends_with("-py3-none-any.whl")
        })
        .expect("a pure-Python wheel");
    let listing = Command::new(&python)
        .args(["-m", "zipfile", "-l"])
        .arg(wheel.path())
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("ticketgate_client/py.typed")
            && listing.contains("ticketgate_client/_client.py"),
        "{listing}"
    );
}
