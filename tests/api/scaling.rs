//! docs/SCALING.md stays true to its scripts: the capacity table is what scripts/capacity.py
//! prints, the simulation's table and plot are what its results draw, and the simulation
//! itself runs (two small clusters, real nodes, a real mongod) and counts what it should.

use std::process::Command;

use serde_json::Value;

use crate::support::*;

fn scaling_md() -> String {
    std::fs::read_to_string(repo_root().join("docs/SCALING.md")).unwrap()
}

fn python(interpreter: &str, args: &[&str]) -> String {
    let output = Command::new(interpreter)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running {interpreter} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?}:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_capacity_table_is_what_the_script_computes() {
    let printed = python("python3", &["scripts/capacity.py"]);
    let table = printed.split("\n\n").next().unwrap().trim();
    assert!(table.lines().count() > 10, "{printed}");
    assert!(
        scaling_md().contains(table),
        "docs/SCALING.md does not hold the table scripts/capacity.py prints:\n{table}"
    );
}

#[test]
fn the_simulation_table_and_plot_are_drawn_from_its_results() {
    let out = tempfile::tempdir().unwrap();
    let committed = repo_root().join("docs/scaling");
    std::fs::copy(
        committed.join("results.jsonl"),
        out.path().join("results.jsonl"),
    )
    .unwrap();
    let out_dir = out.path().to_str().unwrap();
    python(
        "python3",
        &[
            "scripts/scale_sim.py",
            "--mongod",
            "-",
            "--render",
            "--out",
            out_dir,
        ],
    );
    for file in ["table.md", "curves.svg"] {
        let drawn = std::fs::read_to_string(out.path().join(file)).unwrap();
        let kept = std::fs::read_to_string(committed.join(file)).unwrap();
        assert_eq!(
            drawn, kept,
            "docs/scaling/{file} is not what results.jsonl draws"
        );
    }
    let table = std::fs::read_to_string(committed.join("table.md")).unwrap();
    assert!(
        scaling_md().contains(table.trim()),
        "docs/SCALING.md shows another table"
    );
}

#[test]
fn the_simulation_runs_and_counts_every_node_and_mongod() {
    let mongod = installed("install-mongod.sh", "mongod is needed");
    // pymongo, for replSetInitiate, from the Python client's dev venv.
    let venv_python = installed("install-python-client-dev.sh", "pymongo is needed");
    let out = tempfile::tempdir().unwrap();
    let design = format!("this={BIN}");
    python(
        &venv_python,
        &[
            "scripts/scale_sim.py",
            "--mongod",
            &mongod,
            "--design",
            &design,
            "--load",
            LOAD_BIN,
            "--nodes",
            "1,3",
            "--kinds",
            "plain,history",
            "--rate",
            "50",
            "--secs",
            "2",
            "--rest-secs",
            "1",
            "--channels",
            "20",
            "--connections",
            "20",
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    let results: Vec<Value> = std::fs::read_to_string(out.path().join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(results.len(), 4, "{results:?}");
    for run in &results {
        assert_eq!(run["published"], 100, "{run}");
        assert_eq!(run["delivered"], run["expected"], "{run}");
        assert_eq!(run["lost"], 0, "{run}");
        for figure in [
            "mongod_us_per_event",
            "subscriber_node_us_per_event",
            "all_nodes_us_per_event",
        ] {
            assert!(
                run[figure].as_f64().is_some_and(|v| v >= 0.0),
                "{figure}: {run}"
            );
        }
        let idle = run["idle_node_us_per_event"].as_f64();
        assert_eq!(
            idle.is_some(),
            run["nodes"] == 3,
            "an idle node only among three: {run}"
        );
    }
    assert!(out.path().join("curves.svg").exists());
}
