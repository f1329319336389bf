//! Model weights through the swarm on the test bed's real node: the first replica of a `url` model
//! downloads it from the origin (an HTTP server in this test that counts what it sends);
//! with the origin stopped, a second replica gets the file from the first one through the
//! private swarm, verified, and serves. The origin served exactly one copy.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use kube::{Api, Client};
use llamanet_cluster::testing::{default_model, eventually};
use llamanet_cluster::{Cluster, ClusterConfig};
use llamanet_operator::children::{FETCH_CONTAINER, SERVER_CONTAINER};
use llamanet_operator::crd::InferenceNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::Operator;

const NAMESPACE: &str = "default";
const NAME: &str = "gemma-shared";
const SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

/// An HTTP/1.1 origin serving one file to every GET, counting the bytes it sent; dropped,
/// it stops listening.
struct Origin {
    url: String,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Listens on `host` (where the cluster's pods reach this host).
    async fn start(file: PathBuf, host: std::net::Ipv4Addr) -> Origin {
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let url = format!(
            "http://{}/gemma-3-270m-q4_k_m.gguf",
            listener.local_addr().unwrap()
        );
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let file = file.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = tokio::fs::read(&file).await.unwrap();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    if conn.write_all(reply.as_bytes()).await.is_ok()
                        && conn.write_all(&body).await.is_ok()
                    {
                        counter.fetch_add(body.len() as u64, Ordering::Relaxed);
                    }
                });
            }
        });
        Origin { url, sent, task }
    }

    fn stop(&self) {
        self.task.abort();
    }
}

async fn ready_replicas(client: &Client) -> Option<String> {
    let api: Api<InferenceNode> = Api::namespaced(client.clone(), NAMESPACE);
    api.get(NAME).await.ok()?.status?.replicas_ready
}

/// The log of `container` in the pod named `pod` (`kubectl logs`).
fn container_log(cluster: &Cluster, pod: &str, container: &str) -> String {
    cluster.kubectl_ok(&["logs", pod, "-c", container], None)
}

/// The `model ready` line of a fetch log, as JSON.
fn fetch_summary(log: &str) -> serde_json::Value {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "model ready")
        .unwrap_or_else(|| panic!("no `model ready` line in:\n{log}"))
}

fn model_size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_fetches_the_model_from_the_first_with_the_origin_stopped() {
    let model = default_model();
    let size = model_size(&model);
    let cluster = Cluster::start(ClusterConfig::default())
        .await
        .expect("the cluster starts (scripts/build-tools.sh and scripts/build-images.sh first)");
    let client = cluster.client();
    cluster.install_crd();

    // A private swarm: the operator copies its key into the namespace, replicas and their
    // fetch init containers mount it.
    let key = format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "5e".repeat(32));
    let (_operator, _) = Operator::meeting_point(&cluster, "operator-a", Some(key));

    let origin = Origin::start(model.clone(), cluster.host_address()).await;
    let resource = format!(
        "apiVersion: llamanet.io/v1alpha1
kind: InferenceNode
metadata:
  name: {NAME}
spec:
  replicas: 1
  model:
    name: gemma-3-270m
    url: {url}
    sha256: {SHA256}
  resources:
    cpu: 250m
    memory: 1Gi
  engine:
    contextSize: 1024
    parallel: 1
",
        url = origin.url
    );
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&resource));
    cluster.wait_inference_node_ready(NAME);
    assert_eq!(
        origin.sent.load(Ordering::Relaxed),
        size,
        "the first replica downloaded one copy from the origin"
    );
    let first = fetch_summary(&container_log(
        &cluster,
        &format!("{NAME}-0"),
        FETCH_CONTAINER,
    ));
    assert_eq!(first["fields"]["from_origin"], size, "{first}");

    // The origin goes away; a second replica still gets the model, from the first.
    origin.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        reqwest::get(&origin.url).await.is_err(),
        "the origin no longer answers"
    );
    cluster.kubectl_ok(
        &[
            "patch",
            "inode",
            NAME,
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ],
        None,
    );
    eventually(Duration::from_secs(240), "both replicas ready", || async {
        (ready_replicas(&client).await.as_deref() == Some("2/2")).then_some(())
    })
    .await;
    let second = fetch_summary(&container_log(
        &cluster,
        &format!("{NAME}-1"),
        FETCH_CONTAINER,
    ));
    assert_eq!(second["fields"]["from_peers"], size, "{second}");
    assert_eq!(second["fields"]["from_origin"], 0, "{second}");
    assert_eq!(second["fields"]["peers_used"], 1, "{second}");
    assert_eq!(origin.sent.load(Ordering::Relaxed), size, "still one copy");

    // The first replica says it shares the file; the second serves what it fetched.
    let server = container_log(&cluster, &format!("{NAME}-0"), SERVER_CONTAINER);
    assert!(
        server.contains("sharing the model file with the swarm"),
        "{server}"
    );

    cluster.kubectl_ok(&["delete", "inode", NAME, "--wait=false"], None);
    cluster.shutdown().await;
}
