//! An InferenceNode with `engine.kind: external` on the test bed's real node:
//! `deploy/examples/llama-server-sidecar.yaml` applied with kubectl runs llama.cpp's own
//! `llama-server` (the `ghcr.io/ggml-org/llama.cpp:server` image scripts/build-images.sh
//! builds from `scripts/build-llama-cpp.sh`'s llama-server) in a container, with the
//! LlamaNet sidecar (the router image) beside it. The resource becomes Ready on the
//! sidecar's heartbeats, which carry llama-server's own slots, and after a request
//! `kubectl get inode` shows its tokens/s.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use llamanet_cluster::testing::{default_model, eventually, processes_with};
use llamanet_cluster::{Cluster, ClusterConfig};
use llamanet_operator::config::OperatorConfig;
use llamanet_operator::crd::{ConditionStatus, ConditionType, InferenceNode, Phase};
use llamanet_operator::swarm_peer::SwarmPeerConfig;

use crate::common::{Operator, OperatorOptions};

const NAMESPACE: &str = "default";
/// The name in `deploy/examples/llama-server-sidecar.yaml`.
const NAME: &str = "gemma-llama-server";

async fn inode(client: &Client) -> Option<InferenceNode> {
    Api::<InferenceNode>::namespaced(client.clone(), NAMESPACE)
        .get_opt(NAME)
        .await
        .ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_llama_server_joins_the_swarm_through_its_sidecar() {
    default_model();
    let config = ClusterConfig::default();
    // The example's engine image, as scripts/build-images.sh saves it once llama-server is
    // built.
    let archive = config
        .images_dir
        .join("archives/ghcr.io_ggml-org_llama.cpp_server.tar");
    assert!(
        archive.is_file(),
        "{} missing: run scripts/build-llama-cpp.sh, then scripts/build-images.sh",
        archive.display()
    );
    let cluster = Cluster::start(config)
        .await
        .expect("the cluster starts (scripts/build-tools.sh and scripts/build-images.sh first)");
    let client = cluster.client();
    cluster.install_crd();
    let swarm_port = llamanet_cluster::control_plane::free_port().unwrap();
    let host = cluster.host_address();
    let mut operator = Operator::start_with(
        &cluster,
        "operator-external",
        OperatorOptions {
            config: OperatorConfig {
                bootstrap_peers: vec![format!("/ip4/{host}/tcp/{swarm_port}")],
                heartbeat_interval: Duration::from_secs(1),
                ..OperatorConfig::default()
            },
            leader_election: None,
            swarm: Some(SwarmPeerConfig {
                listen: vec![format!("/ip4/{host}/tcp/{swarm_port}").parse().unwrap()],
                bootstrap: vec![],
                identity: None,
                swarm_key: None,
            }),
        },
    );

    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&cluster.example("llama-server-sidecar.yaml")),
    );
    let applied = Instant::now();

    // Ready on heartbeats: the sidecar only says healthy once llama-server answers.
    let status = eventually(
        Duration::from_secs(180),
        "Ready with a heartbeat",
        || async {
            let status = inode(&client).await?.status?;
            (status.phase == Some(Phase::Ready) && status.peer_count == 1).then_some(status)
        },
    )
    .await;
    eprintln!("Ready {:?} after apply", applied.elapsed());
    for type_ in [ConditionType::Ready, ConditionType::HeartbeatFresh] {
        let c = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        assert_eq!(c.status, ConditionStatus::True, "{c:?}");
    }
    let peer = &status.peers[0];
    assert_eq!(peer.pod, format!("{NAME}-0"));
    // llama-server's `--parallel 2`, read from its /slots: not the sidecar's own default.
    assert_eq!(peer.slots_total, 2, "{peer:?}");
    assert_eq!(status.model.as_deref(), Some("gemma-3-270m"));

    // Two containers: the sidecar (named like a built-in node's server) and the engine.
    let pod = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .get(&format!("{NAME}-0"))
        .await
        .unwrap();
    let containers: Vec<String> = pod
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(containers, ["llamanet", "engine"]);
    // The sidecar runs the image without llama.cpp (the engine-less build of `llamanet`).
    let sidecar_image = pod.spec.as_ref().unwrap().containers[0].image.clone();
    assert_eq!(
        sidecar_image.as_deref(),
        Some(llamanet_operator::config::DEFAULT_ROUTER_IMAGE)
    );
    let sidecars = processes_with(&format!("--inference-node {NAMESPACE}/{NAME}"));
    assert_eq!(sidecars.len(), 1, "one sidecar process");
    let exe = format!("/proc/{}/exe", sidecars[0].0);
    assert_eq!(
        std::fs::read_link(&exe).unwrap(),
        Path::new("/usr/local/bin/llamanet")
    );
    // The image's binary is the build without llama.cpp: it cannot serve a model itself.
    let serve = std::process::Command::new(&exe)
        .args(["serve", "--model", "x.gguf"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&serve.stderr);
    assert!(
        !serve.status.success() && said.contains("built without the engine"),
        "the sidecar's binary: {said}"
    );
    assert_eq!(
        processes_with("--alias gemma-3-270m").len(),
        1,
        "one llama-server process with the model's name"
    );

    // A completion through the sidecar's API, answered by llama-server, named by the peer.
    let ip = pod.status.unwrap().pod_ip.unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{ip}:8080/v1/completions"))
        .json(&serde_json::json!({
            "model": "gemma-3-270m",
            "prompt": "The capital of France is",
            "max_tokens": 48,
            "temperature": 0,
        }))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-llamanet-node"].to_str().unwrap(),
        peer.peer_id
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["model"], "gemma-3-270m",
        "llama-server runs with --alias"
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // Its tokens/s reach the status (from llama-server's token counter) and kubectl.
    let status = eventually(
        Duration::from_secs(15),
        "tokens/s in the status",
        || async {
            let status = inode(&client).await?.status?;
            (status.tokens_per_second > 0.0).then_some(status)
        },
    )
    .await;
    let table = cluster.kubectl_ok(&["get", "inode", NAME], None);
    eprintln!("kubectl get inode:\n{table}");
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let column = header.iter().position(|h| *h == "TOK/S").unwrap();
    let shown: f64 = row[column].parse().unwrap();
    assert!(shown > 0.0, "kubectl shows tokens/s: {table}");
    eprintln!("status tokens/s {:.1}", status.tokens_per_second);

    cluster.kubectl_ok(&["delete", "inode", NAME, "--wait=false"], None);
    eventually(Duration::from_secs(60), "both processes gone", || async {
        (processes_with("--alias gemma-3-270m").is_empty()
            && processes_with(&format!("--inference-node {NAMESPACE}/{NAME}")).is_empty())
        .then_some(())
    })
    .await;
    operator.stop().await;
    cluster.shutdown().await;
}
