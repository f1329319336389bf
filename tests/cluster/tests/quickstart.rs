//! The main job's node, as `scripts/up.sh` deploys it: the quickstart manifest on the local
//! cluster runs `llamanet serve` as a pod (non-root, model from a read-only host folder,
//! bound to its pod IP), becomes Ready through its startup and readiness probes on
//! /health, and answers an OpenAI chat completion with the real default model.

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use llamanet_cluster::{Cluster, ClusterConfig};

const SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

fn default_model() -> std::path::PathBuf {
    std::env::var_os("LLAMANET_MODEL")
        .map(Into::into)
        .unwrap_or_else(|| {
            llamanet_cluster::control_plane::cache_dir().join("models/gemma-3-270m-q4_k_m.gguf")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_node_serves_the_default_model() {
    let model = default_model();
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-model.sh",
        model.display()
    );
    let bin = llamanet_cluster::cluster::default_workspace_bin_dir().join("llamanet");
    assert!(
        bin.is_file(),
        "{} missing: cargo build --bins first",
        bin.display()
    );

    let cluster = Cluster::start(ClusterConfig::default()).await.unwrap();
    // Pods run as uid 65532: give them a world-readable folder with the model.
    let models = cluster.dir().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let dest = models.join("gemma-3-270m-q4_k_m.gguf");
    if std::fs::hard_link(&model, &dest).is_err() {
        std::fs::copy(&model, &dest).unwrap();
    }
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/quickstart/node.yaml"),
    )
    .unwrap()
    .replace("@MODEL_DIR@", &models.display().to_string())
    .replace("@SHA256@", SHA256);
    let mut apply = cluster
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    apply
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    assert!(apply.wait().unwrap().success());

    let pods = Api::<Pod>::namespaced(cluster.client(), "default");
    let deadline = Instant::now() + Duration::from_secs(180);
    let ip = loop {
        let list = pods
            .list(
                &kube::api::ListParams::default().labels("app.kubernetes.io/name=llamanet-default"),
            )
            .await
            .unwrap();
        let ready = list.items.iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if let Some(p) = ready {
            break p.status.as_ref().unwrap().pod_ip.clone().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "node pod not Ready in 180 s: {:#?}",
            list.items.first().and_then(|p| p.status.clone())
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let http = reqwest::Client::new();
    let base = format!("http://{ip}:8080/v1");
    let models: serde_json::Value = http
        .get(format!("{base}/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"gemma-3-270m"), "{models}");

    let resp = http
        .post(format!("{base}/chat/completions"))
        .json(&serde_json::json!({
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": "Name a primary color."}],
            "max_tokens": 16,
            "temperature": 0
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    println!("chat completion through the local cluster: {body}");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    cluster.shutdown().await;
}
