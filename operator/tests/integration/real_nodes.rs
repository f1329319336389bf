//! The operator with real node pods: `deploy/examples/cpu-node.yaml` applied with kubectl on
//! the test bed's real node (containerd, the real kubelet), whose pods run the node image
//! serving the default model. The operator (in this process, see `common`) joins the swarm, and the pods
//! bootstrap through it, so every figure in the status comes from real heartbeats.
//!
//! One test, in the order a user would meet things: the resource becomes Ready with a
//! heartbeat, answers a chat completion while its status shows tokens/s, scales to two
//! peers, reports a hung replica as Degraded/HeartbeatLost, recovers after the process is
//! killed and restarted (same peer id), gets a PodMonitor (the Prometheus Operator's CRDs
//! are installed), survives an operator restart in the middle of a
//! reconcile without duplicate children, tells a wrong checksum apart, and takes every child
//! and process with it when deleted. On the way, live scrapes of the node and the operator
//! show that every metric the dashboards and alert rules query is really exported.
//!
//! Needs the control plane binaries, the default model (`scripts/fetch-model.sh`) and the
//! workspace's `llamanet` binary (built by `cargo test --workspace`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use llamanet_cluster::testing::{dashboard_exprs, default_model, eventually, processes_with};
use llamanet_cluster::{Cluster, ClusterConfig};
use llamanet_operator::config::OperatorConfig;
use llamanet_operator::crd::{
    ConditionStatus, ConditionType, InferenceNode, InferenceNodeStatus, Phase,
};
use llamanet_operator::swarm_peer::SwarmPeerConfig;

use crate::common::{Operator, OperatorOptions, repo_root};

const NAMESPACE: &str = "default";
/// The name in `deploy/examples/cpu-node.yaml`.
const NAME: &str = "gemma-cpu";
const SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
/// Nodes beat every second here (the operator passes its interval to the pods), so a
/// replica counts as lost after three silent seconds.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

async fn status_of(client: &Client, name: &str) -> Option<InferenceNodeStatus> {
    Api::<InferenceNode>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .ok()??
        .status
}

fn condition(
    status: &InferenceNodeStatus,
    type_: ConditionType,
) -> Option<&llamanet_operator::crd::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn summary(status: &InferenceNodeStatus) -> String {
    format!(
        "phase {:?}, {} ready, {} peers, {} tok/s, conditions {:?}",
        status.phase,
        status.replicas_ready.as_deref().unwrap_or("-"),
        status.peer_count,
        status.tokens_per_second,
        status
            .conditions
            .iter()
            .map(|c| format!("{:?}={:?}/{}: {}", c.type_, c.status, c.reason, c.message))
            .collect::<Vec<_>>()
    )
}

/// The status once the resource is Ready with `replicas` fresh heartbeats.
async fn ready_with(client: &Client, replicas: i32, timeout: Duration) -> InferenceNodeStatus {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        if let Some(status) = status_of(client, NAME).await {
            if status.phase == Some(Phase::Ready)
                && status.ready_replicas == replicas
                && status.peer_count == replicas
            {
                return status;
            }
            let now = summary(&status);
            if now != last {
                eprintln!("  waiting for Ready {replicas}/{replicas}: {now}");
                last = now;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not Ready with {replicas} replicas within {timeout:?}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Pid of the `llamanet serve` process of `pod`.
fn serve_process(pod: &str) -> Option<u32> {
    let found = processes_with(&format!("--pod {pod} "));
    let serving: Vec<u32> = found
        .iter()
        .map(|(pid, _)| *pid)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(&b"serve"[..]))
        })
        .collect();
    assert!(serving.len() <= 1, "two serve processes for {pod}");
    serving.first().copied()
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn pod_ip(client: &Client, pod: &str) -> String {
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .get(pod)
        .await
        .unwrap()
        .status
        .and_then(|s| s.pod_ip)
        .expect("a running pod has an IP")
}

/// Sample names of a scrape (`_bucket`, `_total` and the like included).
fn sample_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `llamanet_*` name in the PromQL of `deploy/grafana/*.json` and
/// `deploy/prometheus/llamanet.rules.yaml`, with a file it appears in.
fn promql_metric_names() -> BTreeMap<String, String> {
    fn names_in(expr: &str, place: &str, out: &mut BTreeMap<String, String>) {
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if token.starts_with("llamanet_") {
                out.entry(token.to_owned())
                    .or_insert_with(|| place.to_owned());
            }
        }
    }
    let mut out = BTreeMap::new();
    for (file, expr) in dashboard_exprs() {
        names_in(&expr, &file, &mut out);
    }
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/prometheus/llamanet.rules.yaml"))
            .unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            names_in(
                rule["expr"].as_str().unwrap(),
                "llamanet.rules.yaml",
                &mut out,
            );
        }
    }
    out
}

/// Names of the objects `params` selects.
async fn names<K>(api: &Api<K>, params: &ListParams) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let list = api.list(params).await.unwrap();
    list.items.iter().map(|o| o.name_any()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_runs_real_node_pods() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("LLAMANET_TEST_LOG")
                .unwrap_or_else(|_| "warn,llamanet_operator=info".into()),
        )
        .with_test_writer()
        .try_init();
    default_model();
    let started = Instant::now();
    let cluster = Cluster::start(ClusterConfig::default())
        .await
        .expect("the cluster starts (scripts/build-tools.sh and scripts/build-images.sh first)");
    let client = cluster.client();
    cluster.install_crd();

    // With the Prometheus Operator's CRDs present, each InferenceNode gets a PodMonitor.
    cluster.install_monitoring_crds();

    // The operator's swarm peer listens on a fixed port with a kept identity, so that a
    // restarted operator is found where the pods' bootstrap address points.
    let state = tempfile::tempdir().unwrap();
    let swarm_port = llamanet_cluster::control_plane::free_port().unwrap();
    let host = cluster.host_address();
    let options = || OperatorOptions {
        config: OperatorConfig {
            bootstrap_peers: vec![format!("/ip4/{host}/tcp/{swarm_port}")],
            heartbeat_interval: HEARTBEAT_INTERVAL,
            ..OperatorConfig::default()
        },
        leader_election: None,
        swarm: Some(SwarmPeerConfig {
            listen: vec![format!("/ip4/{host}/tcp/{swarm_port}").parse().unwrap()],
            bootstrap: vec![],
            identity: Some(state.path().join("operator.key")),
            swarm_key: None,
        }),
    };
    let mut operator = Operator::start_with(&cluster, "operator-a", options());

    // The example as a user applies it, with the cached model.
    let example = cluster.cpu_example();
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&example));
    let applied = Instant::now();

    // A second resource with a wrong checksum, meanwhile.
    let wrong = example
        .replace(&format!("name: {NAME}"), "name: wrong-sum")
        .replace(SHA256, &"0123456789abcdef".repeat(4));
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&wrong));

    // Ready: the init container verified and copied the model, the server loaded it, and
    // its heartbeat came through the swarm.
    let status = ready_with(&client, 1, Duration::from_secs(240)).await;
    eprintln!(
        "Ready {:?} after apply: {}",
        applied.elapsed(),
        summary(&status)
    );
    assert_eq!(status.replicas_ready.as_deref(), Some("1/1"));
    assert_eq!(status.model.as_deref(), Some("gemma-3-270m"));
    assert_eq!(status.peers.len(), 1);
    let peer = &status.peers[0];
    assert_eq!(peer.pod, format!("{NAME}-0"));
    assert!(peer.peer_id.starts_with("12D3KooW"), "{}", peer.peer_id);
    assert_eq!(peer.slots_total, 4, "engine.parallel of the example");
    for type_ in [
        ConditionType::Ready,
        ConditionType::ModelLoaded,
        ConditionType::SwarmJoined,
        ConditionType::HeartbeatFresh,
    ] {
        let c = condition(&status, type_).unwrap();
        assert_eq!(c.status, ConditionStatus::True, "{c:?}");
    }

    let table = cluster.kubectl_ok(&["get", "inferencenodes", NAME], None);
    eprintln!("kubectl get inferencenodes:\n{table}");
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "READY",
            "REPLICAS",
            "MODEL",
            "PEERS",
            "TOK/S",
            "LAST-HEARTBEAT",
            "AGE"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], [NAME, "True", "1/1", "gemma-3-270m", "1"]);
    assert_eq!(row.len(), header.len(), "every column has a value: {row:?}");

    let monitor = cluster.kubectl_ok(&["get", "podmonitor", NAME, "-o", "json"], None);
    let monitor: serde_json::Value = serde_json::from_str(&monitor).unwrap();
    assert_eq!(
        monitor["metadata"]["ownerReferences"][0]["kind"],
        "InferenceNode"
    );
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"][0]["port"], "http",
        "{monitor}"
    );

    // A chat completion on the pod, long enough for the status to show its tokens/s.
    let ip = pod_ip(&client, &format!("{NAME}-0")).await;
    let url = format!("http://{ip}:8080/v1/chat/completions");
    let generation = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(url)
            .json(&serde_json::json!({
                "model": "gemma-3-270m",
                "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
                "max_tokens": 400,
                "temperature": 0.7,
                "seed": 1,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<serde_json::Value>().await.unwrap()
    });
    let busy = eventually(
        Duration::from_secs(30),
        "tokens/s and a busy slot in the status",
        || async {
            let status = status_of(&client, NAME).await?;
            let peer = status.peers.first()?;
            (status.tokens_per_second > 0.0 && peer.slots_busy >= 1).then_some(status)
        },
    )
    .await;
    eprintln!(
        "while generating: {} tok/s, {}/{} slots busy",
        busy.tokens_per_second, busy.peers[0].slots_busy, busy.peers[0].slots_total
    );
    let answer = generation.await.unwrap();
    let completion_tokens = answer["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(completion_tokens > 0, "{answer}");
    assert!(
        !answer["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );

    // Every metric the dashboards and alert rules query is one these real processes export
    // (GPU series only exist with an NVIDIA driver, so they are taken from the node's list).
    let node_scrape = reqwest::get(format!("http://{ip}:8080/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (_, operator_scrape) = operator.get("/metrics").await;
    let mut exported = sample_names(&node_scrape);
    exported.extend(sample_names(&operator_scrape));
    exported.extend(
        llamanet_node::metrics::GPU_METRIC_NAMES
            .iter()
            .map(|n| n.to_string()),
    );
    for name in llamanet_node::metrics::SWARM_METRIC_NAMES {
        assert!(
            exported.contains(*name),
            "{name} not exported by a swarm node"
        );
    }
    let used = promql_metric_names();
    assert!(used.len() > 20, "{used:?}");
    let unknown: Vec<String> = used
        .iter()
        .filter(|(name, _)| !exported.contains(*name))
        .map(|(name, place)| format!("{name} (in {place})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "PromQL names metrics nobody exports: {unknown:?}"
    );
    eprintln!(
        "{} metric names in dashboards and rules, all exported",
        used.len()
    );

    // Wrong checksum: the fetch init container refuses the file.
    let failed = eventually(Duration::from_secs(60), "ChecksumMismatch", || async {
        let status = status_of(&client, "wrong-sum").await?;
        let loaded = condition(&status, ConditionType::ModelLoaded)?;
        (loaded.status == ConditionStatus::False && loaded.reason == "ChecksumMismatch")
            .then_some(status)
    })
    .await;
    eprintln!("wrong checksum: {}", summary(&failed));
    assert_eq!(failed.phase, Some(Phase::Failed));
    // The fetch's own words, from its log tail (FallbackToLogsOnError), name both sums.
    let loaded = condition(&failed, ConditionType::ModelLoaded).unwrap();
    assert!(
        loaded.message.contains(&format!(
            "has sha256 {SHA256}, expected {}",
            "0123456789abcdef".repeat(4)
        )),
        "{}",
        loaded.message
    );
    cluster.kubectl_ok(
        &["delete", "inferencenode", "wrong-sum", "--wait=false"],
        None,
    );

    // kubectl scale: two peers with their own identities.
    cluster.kubectl_ok(&["scale", "inferencenode", NAME, "--replicas=2"], None);
    let scaled_at = Instant::now();
    let status = ready_with(&client, 2, Duration::from_secs(240)).await;
    eprintln!("Ready 2/2 {:?} after scaling", scaled_at.elapsed());
    let peers: BTreeSet<(&str, &str)> = status
        .peers
        .iter()
        .map(|p| (p.pod.as_str(), p.peer_id.as_str()))
        .collect();
    assert_eq!(peers.len(), 2);
    let second = format!("{NAME}-1");
    let second_peer_id = status
        .peers
        .iter()
        .find(|p| p.pod == second)
        .unwrap()
        .peer_id
        .clone();
    assert_eq!(
        status
            .peers
            .iter()
            .map(|p| &p.peer_id)
            .collect::<BTreeSet<_>>()
            .len(),
        2,
        "distinct peer ids"
    );

    // A hung replica (stopped, not dead): its heartbeats stop while the pod still exists.
    let pid = serve_process(&second).expect("the second replica's process");
    signal(pid, "-STOP");
    let stopped = Instant::now();
    let lost = eventually(
        Duration::from_secs(10),
        "Degraded/HeartbeatLost",
        || async {
            let status = status_of(&client, NAME).await?;
            let fresh = condition(&status, ConditionType::HeartbeatFresh)?;
            (status.phase == Some(Phase::Degraded)
                && fresh.status == ConditionStatus::False
                && fresh.reason == "HeartbeatLost")
                .then_some(status)
        },
    )
    .await;
    eprintln!(
        "HeartbeatLost {:?} after the process stopped: {}",
        stopped.elapsed(),
        summary(&lost)
    );
    let fresh = condition(&lost, ConditionType::HeartbeatFresh).unwrap();
    assert!(fresh.message.contains(&second), "{}", fresh.message);
    let ready = condition(&lost, ConditionType::Ready).unwrap();
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(lost.peer_count, 1);

    // Killed: the kubelet restarts the container, which comes back with the same peer id.
    signal(pid, "-KILL");
    let killed = Instant::now();
    let status = ready_with(&client, 2, Duration::from_secs(120)).await;
    eprintln!("Ready again {:?} after kill -9", killed.elapsed());
    let restarted = serve_process(&second).expect("restarted process");
    assert_ne!(restarted, pid);
    let peer = status.peers.iter().find(|p| p.pod == second).unwrap();
    assert_eq!(
        peer.peer_id, second_peer_id,
        "identity kept across restarts"
    );

    // The operator is killed right after a spec change, whether or not it has reconciled
    // it yet (150 ms: the test does not control which), and a new one takes over: no
    // duplicate children, the change is carried out, and the status converges on real
    // heartbeats again (the pods find the new operator through their bootstrap address).
    cluster.kubectl_ok(&["scale", "inferencenode", NAME, "--replicas=1"], None);
    tokio::time::sleep(Duration::from_millis(150)).await;
    operator.kill();
    drop(operator);
    let restart = Timestamp::now();
    let mut operator = Operator::start_with(&cluster, "operator-b", options());
    let restarted_at = Instant::now();
    let status = eventually(
        Duration::from_secs(120),
        "Ready 1/1 on heartbeats the new operator received",
        || async {
            let status = status_of(&client, NAME).await?;
            let heard = status
                .peers
                .iter()
                .all(|p| p.last_heartbeat_time.0 > restart);
            (status.phase == Some(Phase::Ready)
                && status.replicas_ready.as_deref() == Some("1/1")
                && status.peer_count == 1
                && status.peers.len() == 1
                && heard)
                .then_some(status)
        },
    )
    .await;
    eprintln!(
        "converged {:?} after the operator restart: {}",
        restarted_at.elapsed(),
        summary(&status)
    );
    let owned = ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}"));
    let stateful_sets = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE);
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    assert_eq!(names(&stateful_sets, &owned).await, [NAME]);
    assert_eq!(
        names(&services, &owned).await,
        [NAME.to_owned(), format!("{NAME}-swarm")]
    );
    assert_eq!(names(&secrets, &owned).await, [format!("{NAME}-identity")]);
    eventually(
        Duration::from_secs(60),
        "the second pod is gone",
        || async { serve_process(&second).is_none().then_some(()) },
    )
    .await;

    // Delete: every child and every process goes.
    cluster.kubectl_ok(&["delete", "inferencenode", NAME, "--wait=false"], None);
    let deleted = Instant::now();
    eventually(
        Duration::from_secs(90),
        "children and processes gone",
        || async {
            let sts = stateful_sets.get_opt(NAME).await.unwrap();
            let svc = services.get_opt(NAME).await.unwrap();
            let secret = secrets.get_opt(&format!("{NAME}-identity")).await.unwrap();
            let monitor = cluster.kubectl_run(&["get", "podmonitor", NAME], None);
            let left = processes_with(&format!("--inference-node {NAMESPACE}/"));
            (sts.is_none()
                && svc.is_none()
                && secret.is_none()
                && !monitor.status.success()
                && left.is_empty())
            .then_some(())
        },
    )
    .await;
    eprintln!(
        "children and processes gone {:?} after delete",
        deleted.elapsed()
    );
    operator.stop().await;
    eprintln!("test took {:?}", started.elapsed());
    cluster.shutdown().await;
}
