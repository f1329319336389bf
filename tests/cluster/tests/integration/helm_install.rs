//! The chart as users install it: `helm install` on the local cluster brings up the
//! operator as pods (two replicas, leader election, in-cluster credentials from their
//! service account), an InferenceNode applied afterwards becomes Ready with two node pods
//! whose heartbeats reach the operator through its headless swarm Service, a chat
//! completion is answered, `helm upgrade` with a changed value rolls the operator, and
//! `helm uninstall` removes everything it installed but the CRD (Helm never deletes CRDs,
//! so resources and their nodes survive an uninstall).
//!
//! It runs on the test bed's real node: the operator and node images in containers, the
//! operator with its ServiceAccount's token, the nodes bootstrapping through the swarm
//! Service's DNS name. Two failures a user meets there are on the way: a node pod deleted
//! while it streams an answer to a client that came through the Service's ClusterIP (the
//! stream ends with an error event, not cut; the retry is answered by the other replica), and
//! a replica over its memory limit (`OOMKilled`, and the InferenceNode's condition says so).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use llamanet_cluster::testing::{RELEASE_NS, default_model, eventually};
use llamanet_cluster::{Cluster, ClusterConfig};

/// `--shutdown-grace` of the node pods here (seconds).
const SHUTDOWN_GRACE: u64 = 4;

const SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

fn repo() -> PathBuf {
    llamanet_cluster::testing::repo_root()
}

async fn pods(cluster: &Cluster, namespace: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(cluster.client(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn names(pods: &[Pod]) -> Vec<String> {
    let mut names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

/// `llamanet serve` of the default model on the host, outside the cluster; killed on drop.
struct Outside(std::process::Child);

impl Outside {
    /// Joins through `pod_ip`'s swarm port, with the swarm's key file if given, listening
    /// for the swarm where the pods reach this host.
    fn serve(cluster: &Cluster, model: &Path, pod_ip: &str, swarm_key: Option<&Path>) -> Self {
        let port = llamanet_cluster::control_plane::free_port()
            .unwrap()
            .to_string();
        let bin = llamanet_cluster::cluster::default_workspace_bin_dir().join("llamanet");
        let child = Command::new(bin)
            .args(["serve", "--model"])
            .arg(model)
            .args([
                "--model-id",
                "gemma-3-270m",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
            ])
            .args([
                "--parallel",
                "1",
                "--ctx-size",
                "1024",
                "--cluster",
                "outside",
            ])
            .args([
                "--swarm-listen",
                &format!("/ip4/{}/tcp/0", cluster.host_address()),
            ])
            .args(["--bootstrap", &format!("/ip4/{pod_ip}/tcp/4001")])
            .args(
                swarm_key
                    .map(|key| ["--swarm-key".as_ref(), key.as_os_str()])
                    .into_iter()
                    .flatten(),
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("llamanet serve starts");
        Outside(child)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_the_operator() {
    let model = default_model();
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-model.sh",
        model.display()
    );
    let started = Instant::now();
    let cluster = Cluster::start(ClusterConfig::default())
        .await
        .expect("the real node starts (scripts/build-tools.sh, scripts/build-images.sh first)");
    let chart = repo().join("charts/llamanet");

    cluster.install_chart();
    let operator_selector = "app.kubernetes.io/name=llamanet-operator";
    let operators = pods(&cluster, RELEASE_NS, operator_selector).await;
    assert_eq!(operators.len(), 2, "two operator replicas");
    assert!(operators.iter().all(ready));
    eprintln!(
        "helm install --wait done {:?} after start",
        started.elapsed()
    );

    // An InferenceNode with two replicas, as the CPU example with the cached model; a short
    // shutdown grace period, so that a long answer outlasts it.
    let example = cluster
        .cpu_example()
        .replace("replicas: 1", "replicas: 2")
        .replace(
            "  engine:\n",
            &format!("  engine:\n    extraArgs: [--shutdown-grace, \"{SHUTDOWN_GRACE}\"]\n"),
        );
    assert!(example.contains("--shutdown-grace"));
    assert!(example.contains(SHA256));
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&example));
    let applied = Instant::now();
    cluster.wait_inference_node_ready("gemma-cpu");
    let table = cluster.kubectl_ok(&["get", "inferencenodes"], None);
    eprintln!(
        "InferenceNode Ready {:?} after apply:\n{table}",
        applied.elapsed()
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..5], ["gemma-cpu", "True", "2/2", "gemma-3-270m", "2"]);

    // `-o wide` adds the whole swarm's count of nodes serving the model, as the operator's
    // swarm peer sees them (here: the same two).
    let wide = eventually(Duration::from_secs(30), "SWARM 2 in -o wide", || async {
        let wide = cluster.kubectl_ok(&["get", "inferencenodes", "-o", "wide"], None);
        let header: Vec<&str> = wide.lines().next()?.split_whitespace().collect();
        let row: Vec<&str> = wide.lines().nth(1)?.split_whitespace().collect();
        let column = header.iter().position(|h| *h == "SWARM")?;
        (row.get(column) == Some(&"2")).then_some(wide)
    })
    .await;
    eprintln!("{wide}");
    let swarm_nodes =
        || async { cluster.inference_node("gemma-cpu")["status"]["swarmNodes"].as_i64() };

    // A node outside Kubernetes joins through one pod's swarm address: the count covers the
    // whole swarm, not only this resource's replicas, and drops again when it dies.
    let pods_now = pods(&cluster, "default", "app.kubernetes.io/instance=gemma-cpu").await;
    let pod_ip = pods_now[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    // The swarm is private by default: the chart generated its key, the operator copied it
    // to the resource. A node without it cannot connect, so it is never counted.
    let key = cluster.swarm_key(RELEASE_NS, "llamanet-swarm-key");
    assert!(
        key.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
        "{key}"
    );
    assert_eq!(cluster.swarm_key("default", "gemma-cpu-swarm-key"), key);
    let keyless = Outside::serve(&cluster, &model, &pod_ip, None);
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        swarm_nodes().await,
        Some(2),
        "a node without the swarm key joined"
    );
    drop(keyless);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("swarm.key");
    std::fs::write(&key_file, &key).unwrap();
    let outside = Outside::serve(&cluster, &model, &pod_ip, Some(&key_file));
    let joined = Instant::now();
    eventually(Duration::from_secs(60), "swarmNodes 3", || async {
        (swarm_nodes().await == Some(3)).then_some(())
    })
    .await;
    eprintln!(
        "a node outside the cluster counted {:?} after it started",
        joined.elapsed()
    );
    drop(outside);
    let killed = Instant::now();
    eventually(Duration::from_secs(30), "swarmNodes back to 2", || async {
        (swarm_nodes().await == Some(2)).then_some(())
    })
    .await;
    eprintln!("and uncounted {:?} after it was killed", killed.elapsed());

    // Both node pods answer; one of them through the swarm for the other's model.
    let nodes = pods(&cluster, "default", "app.kubernetes.io/instance=gemma-cpu").await;
    assert_eq!(nodes.len(), 2);
    let ip = nodes[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{ip}:8080/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 16,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        answer["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{answer}"
    );
    let swarm: serde_json::Value = reqwest::get(format!("http://{ip}:8080/v1/swarm"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let peers = swarm["peers"].as_array().unwrap();
    assert!(peers.len() >= 2, "each node sees the other: {swarm}");

    deleted_mid_stream(&cluster).await;
    over_its_memory_limit(&cluster).await;

    // helm upgrade with a changed value rolls the operator pods.
    let before = names(&operators);
    cluster.helm_ok(&[
        "upgrade",
        "llamanet",
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NS,
        "--reuse-values",
        "--set",
        "logLevel=debug",
        "--wait",
        "--timeout",
        "180s",
    ]);
    let rolled = eventually(
        Duration::from_secs(120),
        "operator pods replaced",
        || async {
            let now = pods(&cluster, RELEASE_NS, operator_selector).await;
            let live: Vec<Pod> = now.into_iter().filter(ready).collect();
            (live.len() == 2 && names(&live).iter().all(|n| !before.contains(n))).then_some(live)
        },
    )
    .await;
    eprintln!("helm upgrade rolled {:?} -> {:?}", before, names(&rolled));
    let env = rolled[0].spec.as_ref().unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "LLAMANET_LOG" && e.value.as_deref() == Some("debug"))
    );
    // The new operator replicas find the nodes (through the old ones and the DHT) and keep
    // the status fresh: heartbeats that arrived after the roll, both replicas, Ready.
    let rolled_at = k8s_openapi::jiff::Timestamp::now();
    eventually(
        Duration::from_secs(90),
        "Ready on heartbeats the new operator received",
        || async {
            let node = cluster.inference_node("gemma-cpu");
            let status = &node["status"];
            let peers = status["peers"].as_array()?;
            let fresh = peers.iter().all(|p| {
                p["lastHeartbeatTime"]
                    .as_str()
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .is_some_and(|t| t > rolled_at)
            });
            (status["phase"] == "Ready" && peers.len() == 2 && fresh).then_some(())
        },
    )
    .await;

    // The upgrade kept the swarm's key (or the nodes could not have stayed in touch).
    assert_eq!(cluster.swarm_key(RELEASE_NS, "llamanet-swarm-key"), key);

    // helm uninstall: the operator, its RBAC and Services go; the CRD stays, and so does the
    // swarm key, which the running nodes still use.
    cluster.helm_ok(&["uninstall", "llamanet", "--namespace", RELEASE_NS, "--wait"]);
    eventually(
        Duration::from_secs(90),
        "operator objects removed",
        || async {
            let left = pods(&cluster, RELEASE_NS, operator_selector).await;
            let rbac = cluster.kubectl_run(&["get", "clusterrole", "llamanet"], None);
            let svc = cluster.kubectl_run(&["get", "service", "-n", RELEASE_NS, "llamanet"], None);
            (left.is_empty() && !rbac.status.success() && !svc.status.success()).then_some(())
        },
    )
    .await;
    cluster.kubectl_ok(&["get", "crd", "inferencenodes.llamanet.io"], None);
    assert_eq!(cluster.swarm_key(RELEASE_NS, "llamanet-swarm-key"), key);
    eprintln!("test took {:?}", started.elapsed());
    cluster.shutdown().await;
}

/// `curl args...` where the Service ClusterIPs work (inside the real node's machine), its
/// output read line by line; killed on drop.
fn curl_in_cluster(cluster: &Cluster, args: &[&str]) -> tokio::process::Child {
    let mut cmd = cluster
        .in_cluster_network("curl")
        .expect("a cluster of real nodes");
    cmd.args(["-sS", "-N", "-i", "--max-time", "120"])
        .args(args)
        .stdout(std::process::Stdio::piped());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    cmd.spawn().expect("curl runs")
}

/// The peer id the `x-llamanet-node` header of a response (`curl -i`) names.
fn node_header(line: &str) -> Option<String> {
    let (name, value) = line.split_once(':')?;
    name.eq_ignore_ascii_case("x-llamanet-node")
        .then(|| value.trim().to_owned())
}

/// The pod of the InferenceNode `gemma-cpu` whose replica has `peer_id`.
fn pod_of_peer(cluster: &Cluster, peer_id: &str) -> String {
    let node = cluster.inference_node("gemma-cpu");
    node["status"]["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["peerId"] == peer_id)
        .and_then(|p| p["pod"].as_str())
        .unwrap_or_else(|| panic!("no replica with peer id {peer_id}: {}", node["status"]))
        .to_owned()
}

/// A client streams a long answer through the Service's ClusterIP; the pod serving it is
/// deleted (`kubectl delete pod`: endpoint removal and preStop, SIGTERM, the node's grace
/// period). The answer goes on while the node drains, then the stream ends with an OpenAI
/// error event that says why, and `[DONE]`: never a silent cut a client could take for a
/// whole answer. The client's retry through the same ClusterIP is answered by the other
/// replica.
async fn deleted_mid_stream(cluster: &Cluster) {
    use tokio::io::AsyncBufReadExt;
    let ip = cluster.kubectl_ok(
        &[
            "get",
            "service",
            "gemma-cpu",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    let url = format!("http://{}:8080/v1/chat/completions", ip.trim());
    let request = |stream: bool| {
        serde_json::json!({
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": "Count from 1 to 2000, one number per line."}],
            "max_tokens": if stream { 900 } else { 16 },
            "temperature": 0,
            "stream": stream,
        })
        .to_string()
    };
    let body = request(true);
    let mut curl = curl_in_cluster(
        cluster,
        &["-H", "content-type: application/json", "-d", &body, &url],
    );
    let mut lines = tokio::io::BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the stream says something within 60 s")
            .unwrap()
    };
    // The head names the serving node; read up to the first text chunk.
    let mut serving = None;
    loop {
        let line = next_line().await.expect("the stream ended before any text");
        if let Some(peer) = node_header(&line) {
            serving = Some(peer);
        }
        if line.starts_with("data: {") && line.contains("\"content\":\"") {
            break;
        }
    }
    let serving = serving.expect("a response names its node (x-llamanet-node)");
    let pod = pod_of_peer(cluster, &serving);
    let deleted = Instant::now();
    cluster.kubectl_ok(&["delete", "pod", &pod, "--wait=false"], None);
    let mut events = Vec::new();
    while let Some(line) = next_line().await {
        if let Some(data) = line.strip_prefix("data: ") {
            events.push(data.to_owned());
        }
    }
    let ended = deleted.elapsed();
    eprintln!(
        "{pod} deleted mid-stream: {} more events in {ended:?}, ending with {:?}",
        events.len(),
        &events[events.len().saturating_sub(2)..]
    );
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "the stream was cut"
    );
    let before_done = events.iter().rev().nth(1).expect("an event before [DONE]");
    let error: serde_json::Value = serde_json::from_str(before_done).unwrap();
    assert_eq!(error["error"]["code"], "shutting_down", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("shutdown grace period"), "{message}");
    let texts = events
        .iter()
        .filter(|e| e.contains("\"content\":\""))
        .count();
    assert!(texts > 10, "the answer went on while the node drained");
    // preStop (the endpoint's removal) first, then the node's own grace period.
    assert!(
        ended >= Duration::from_secs(SHUTDOWN_GRACE),
        "ended after {ended:?}"
    );

    // The retry through the same ClusterIP: the other replica answers.
    let body = request(false);
    let mut retry = curl_in_cluster(
        cluster,
        &["-H", "content-type: application/json", "-d", &body, &url],
    );
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(retry.stdout.as_mut().unwrap(), &mut out)
        .await
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let answered_by = out.lines().find_map(node_header).expect("x-llamanet-node");
    assert_ne!(answered_by, serving, "the deleted node answered: {out}");
    eprintln!(
        "the retry was answered by {}",
        pod_of_peer(cluster, &answered_by)
    );
}

/// A replica whose memory limit is far below what the model needs: the kernel's OOM killer
/// ends its container, the pod shows `OOMKilled`, and the InferenceNode's ModelLoaded
/// condition says so (reason `OOMKilled`, the limit, what to change), phase Degraded, with a
/// Warning event.
async fn over_its_memory_limit(cluster: &Cluster) {
    let tiny = cluster
        .cpu_example()
        .replace("name: gemma-cpu", "name: gemma-tiny")
        .replace("memory: 1Gi", "memory: 48Mi");
    assert!(tiny.contains("memory: 48Mi"));
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&tiny));
    let started = Instant::now();
    let message = eventually(
        Duration::from_secs(180),
        "ModelLoaded False/OOMKilled",
        || async {
            let node = cluster.inference_node("gemma-tiny");
            let status = &node["status"];
            let loaded = status["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "ModelLoaded")?;
            (loaded["status"] == "False"
                && loaded["reason"] == "OOMKilled"
                && status["phase"] == "Degraded")
                .then(|| loaded["message"].as_str().unwrap_or_default().to_owned())
        },
    )
    .await;
    eprintln!(
        "OOMKilled in the InferenceNode's condition {:?} after apply: {message}",
        started.elapsed()
    );
    assert!(message.starts_with("gemma-tiny-0: container "), "{message}");
    assert!(message.contains("memory limit 48Mi"), "{message}");
    assert!(message.contains("spec.resources.memory"), "{message}");
    let pod = cluster.kubectl_ok(&["get", "pod", "gemma-tiny-0", "-o", "json"], None);
    assert!(pod.contains("\"reason\": \"OOMKilled\""), "{pod}");
    // The Warning event is recorded after the condition (a cold CI run once described the
    // resource between the two): give it a bounded while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let described = cluster.kubectl_ok(&["describe", "inferencenode", "gemma-tiny"], None);
        if described
            .lines()
            .any(|l| l.contains("Warning") && l.contains("OOMKilled"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no OOMKilled Warning event: {described}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    cluster.kubectl_ok(&["delete", "inferencenode", "gemma-tiny", "--wait"], None);
}
