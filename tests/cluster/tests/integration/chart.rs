//! The Helm chart: lints strictly, carries the generated CRD unchanged, and
//! renders objects the real API server accepts (server-side dry run).

use std::path::PathBuf;
use std::process::Command;

use llamanet_cluster::{Cluster, ClusterConfig};

fn repo() -> PathBuf {
    llamanet_cluster::testing::repo_root()
}

/// `$LLAMANET_HELM`, else where scripts/build-tools.sh caches it.
fn helm() -> PathBuf {
    llamanet_cluster::testing::helm()
}

/// The PrometheusRule the chart renders holds exactly the groups of the plain rules file.
fn assert_rule_groups_match_the_rules_file(rendered: &str) {
    let rule = rendered
        .split("\n---")
        .map(|doc| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(doc).unwrap_or_default())
        .find(|doc| doc["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let file: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/llamanet.rules.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(rule["spec"]["groups"], file["groups"]);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn chart_carries_the_generated_crd() {
    let generated = std::fs::read_to_string(repo().join("crds/inferencenode.yaml")).unwrap();
    let in_chart =
        std::fs::read_to_string(repo().join("charts/llamanet/crds/inferencenode.yaml")).unwrap();
    assert!(
        generated == in_chart,
        "charts/llamanet/crds/inferencenode.yaml differs from crds/: cp crds/inferencenode.yaml charts/llamanet/crds/"
    );
}

#[test]
fn chart_lints_strictly_and_rejects_bad_values() {
    let chart = repo().join("charts/llamanet");
    run(Command::new(helm()).arg("lint").arg("--strict").arg(&chart));
    let out = Command::new(helm())
        .arg("lint")
        .arg("--strict")
        .arg(&chart)
        .args(["--set", "replicas=-1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a negative replica count must fail");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/replicas"), "{text}");

    // An InferencePool needs the resource it selects named, and its CRD installed.
    let template = |values: &[&str]| {
        Command::new(helm())
            .args(["template", "llamanet"])
            .arg(&chart)
            .args(values)
            .output()
            .unwrap()
    };
    let out = template(&["--set", "inferencePools[0].port=8080"]);
    assert!(!out.status.success(), "a pool without its InferenceNode");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("inferenceNode"), "{text}");
    let out = template(&["--set", "inferencePools[0].inferenceNode=gemma"]);
    assert!(
        !out.status.success(),
        "a pool without the InferencePool CRD"
    );
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("the InferencePool CRD (inference.networking.k8s.io/v1) is not installed"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_renders_objects_the_api_server_accepts() {
    // Server-side dry runs need the API server only.
    let cluster = Cluster::start(ClusterConfig {
        nodes: 0,
        ..ClusterConfig::default()
    })
    .await
    .unwrap();
    let chart = repo().join("charts/llamanet");
    run(cluster
        .kubectl()
        .args(["create", "namespace", "llamanet-system"]));
    // The Prometheus Operator's own CRDs, so its objects are validated for real.
    cluster.install_monitoring_crds();
    let monitoring = "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,\
                      metrics.prometheusRule.enabled=true,metrics.prometheusRule.labels.release=prom";
    // The inference extension's InferencePool CRD, for the chart's pools.
    cluster.install_inference_pool_crd();
    let pools = "inferencePools[0].inferenceNode=gemma,inferencePools[0].namespace=llamanet-system";
    for values in [
        vec![],
        vec!["--set", "leaderElection=false,replicas=1"],
        vec!["--set", monitoring],
        vec![
            "--set",
            pools,
            "--api-versions",
            "inference.networking.k8s.io/v1/InferencePool",
        ],
    ] {
        let rendered = run(Command::new(helm())
            .args([
                "template",
                "llamanet",
                "--namespace",
                "llamanet-system",
                "--include-crds",
            ])
            .arg(&chart)
            .args(&values));
        eprintln!("server-side dry run of the chart with {values:?}");
        let applied = server_dry_run(&cluster, &rendered);
        let mut kinds = vec![
            "deployment.apps/llamanet",
            "clusterrole.rbac.authorization.k8s.io/llamanet",
            // Private by default: the generated pre-shared key.
            "secret/llamanet-swarm-key",
            "configmap/llamanet-dashboard-swarm-overview",
            "configmap/llamanet-dashboard-node-inference",
            "configmap/llamanet-dashboard-operator",
        ];
        if values.contains(&monitoring) {
            kinds.extend([
                "servicemonitor.monitoring.coreos.com/llamanet",
                "podmonitor.monitoring.coreos.com/llamanet-nodes",
                "prometheusrule.monitoring.coreos.com/llamanet",
            ]);
            assert_rule_groups_match_the_rules_file(&rendered);
        } else {
            assert!(!applied.contains("monitoring.coreos.com"), "{applied}");
        }
        if values.contains(&pools) {
            kinds.extend([
                "inferencepool.inference.networking.k8s.io/gemma",
                "configmap/gemma-epp-config",
            ]);
        } else {
            assert!(!applied.contains("inferencepool"), "{applied}");
        }
        for kind in kinds {
            assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
        }
    }
    // The kustomize base (the chart rendered with its defaults) is accepted too.
    let kustomized = run(cluster
        .kubectl()
        .arg("kustomize")
        .arg(repo().join("deploy/kustomize/base")));
    eprintln!("server-side dry run of the kustomize base");
    let applied = server_dry_run(&cluster, &kustomized);
    for kind in [
        "namespace/llamanet-system",
        "customresourcedefinition.apiextensions.k8s.io/inferencenodes.llamanet.io",
        "deployment.apps/llamanet",
    ] {
        assert!(applied.contains(kind), "{kind} missing from:\n{applied}");
    }
    cluster.shutdown().await;
}

#[test]
fn kustomize_base_is_the_rendered_chart() {
    let rendered = run(Command::new(helm())
        .args([
            "template",
            "llamanet",
            "--namespace",
            "llamanet-system",
            "--include-crds",
            "--set",
            "dashboards.enabled=false",
            "--set",
            "swarm.privateKeySecret.name=llamanet-swarm-key",
        ])
        .arg(repo().join("charts/llamanet")));
    let committed =
        std::fs::read_to_string(repo().join("deploy/kustomize/base/operator.yaml")).unwrap();
    let body = committed
        .split_once('\n')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    assert!(
        body == rendered,
        "deploy/kustomize/base/operator.yaml is stale: run deploy/kustomize/generate.sh"
    );
}

/// What `kubectl apply --dry-run=server` reports for `manifests`; fails the test with the
/// API server's message when it refuses any of them.
fn server_dry_run(cluster: &Cluster, manifests: &str) -> String {
    cluster.kubectl_ok(&["apply", "--dry-run=server", "-f", "-"], Some(manifests))
}
