//! Dashboards and alert rules as files: the rules pass `promtool check rules` and their unit
//! tests, the chart carries the same rules and dashboards as `deploy/`, and every dashboard
//! is one Grafana imports as it is (a datasource variable on every panel and query, a
//! unique uid, panels inside the 24-column grid).
//!
//! That every metric the PromQL names is really exported is checked against live scrapes of
//! a node and the operator in `operator/tests/integration/real_nodes.rs`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    llamanet_cluster::testing::repo_root()
}

fn promtool() -> PathBuf {
    llamanet_cluster::tools::file_or_env("LLAMANET_PROMTOOL", "PROMTOOL_BIN", "promtool")
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let checked = run_ok(
        Command::new(promtool())
            .args(["check", "rules", "llamanet.rules.yaml"])
            .current_dir(&dir),
    );
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    let tested = run_ok(
        Command::new(promtool())
            .args(["test", "rules", "llamanet.rules.test.yaml"])
            .current_dir(&dir),
    );
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a unit test.
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("llamanet.rules.yaml")).unwrap())
            .unwrap();
    let alerts: BTreeSet<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    let tests = std::fs::read_to_string(dir.join("llamanet.rules.test.yaml")).unwrap();
    for alert in &alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test"
        );
    }
}

#[test]
fn a_broken_rule_unit_test_fails() {
    // The unit tests can fail: raise one threshold and its test must notice.
    let dir = tempfile::tempdir().unwrap();
    let src = repo().join("deploy/prometheus");
    let rules = std::fs::read_to_string(src.join("llamanet.rules.yaml"))
        .unwrap()
        .replace(
            "llamanet_operator_heartbeat_age_seconds > 30",
            "llamanet_operator_heartbeat_age_seconds > 300",
        );
    std::fs::write(dir.path().join("llamanet.rules.yaml"), rules).unwrap();
    std::fs::copy(
        src.join("llamanet.rules.test.yaml"),
        dir.path().join("llamanet.rules.test.yaml"),
    )
    .unwrap();
    let out = Command::new(promtool())
        .args(["test", "rules", "llamanet.rules.test.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "a changed threshold went unnoticed");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains("alertname: LlamaNetHeartbeatLost"),
        "{report}"
    );
}

#[test]
fn chart_carries_the_same_rules_and_dashboards() {
    let rules =
        std::fs::read_to_string(repo().join("deploy/prometheus/llamanet.rules.yaml")).unwrap();
    let in_chart =
        std::fs::read_to_string(repo().join("charts/llamanet/files/llamanet.rules.yaml")).unwrap();
    assert!(
        rules == in_chart,
        "charts/llamanet/files/llamanet.rules.yaml differs: cp deploy/prometheus/llamanet.rules.yaml charts/llamanet/files/"
    );
    // The generator writes both dashboard folders; --check compares them with its output.
    run_ok(
        Command::new("python3")
            .arg(repo().join("deploy/grafana/generate.py"))
            .arg("--check"),
    );
}

#[test]
fn dashboards_are_importable_as_they_are() {
    let mut uids = BTreeSet::new();
    let dir = repo().join("deploy/grafana");
    let mut boards: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    boards.sort();
    assert_eq!(boards.len(), 3, "swarm overview, node inference, operator");
    for path in boards {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            uids.insert(board["uid"].as_str().unwrap().to_owned()),
            "{name}: uid reused"
        );
        assert!(board["title"].as_str().unwrap().starts_with("LlamaNet / "));
        assert!(board["schemaVersion"].as_u64().unwrap() >= 36);
        let variables: Vec<&str> = board["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert!(variables.contains(&"datasource"), "{name}: {variables:?}");
        let mut ids = BTreeSet::new();
        let panels = board["panels"].as_array().unwrap();
        assert!(panels.len() >= 8, "{name}: {} panels", panels.len());
        for panel in panels {
            let title = panel["title"].as_str().unwrap();
            assert!(
                ids.insert(panel["id"].as_u64().unwrap()),
                "{name}: id reused"
            );
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(x + w <= 24, "{name}/{title}: outside the grid");
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}/{title}"
            );
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}/{title}: no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{name}/{title}");
                let expr = t["expr"].as_str().unwrap();
                assert!(expr.contains("llamanet_"), "{name}/{title}: {expr}");
                assert_eq!(
                    expr.matches('(').count(),
                    expr.matches(')').count(),
                    "{name}/{title}: unbalanced {expr}"
                );
            }
        }
    }
}
