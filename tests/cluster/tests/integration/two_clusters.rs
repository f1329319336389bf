//! One swarm across two clusters, as `deploy/examples/two-cluster.yaml` tells users to make
//! it: two clusters of real nodes on this machine (each node a machine with its own network
//! and mount namespaces, so their CNI bridges and kube-proxy rules never meet), the same
//! swarm key given to both releases as a Secret, cluster A's operator swarm port exposed by
//! the example's Service (its node port, as no load balancer exists here), and cluster B's
//! InferenceNode bootstrapping through that one address.
//!
//! Asserted: both resources become Ready; each cluster's node sees the other's model in the
//! swarm; each status lists only its own replica (the other cluster's heartbeats are not
//! signed by a replica of this resource); a request sent to cluster A's node for the model
//! only cluster B serves is forwarded across and answered there.

use std::time::{Duration, Instant};

use llamanet_cluster::testing::{RELEASE_NS, eventually, repo_root};
use llamanet_cluster::{Cluster, ClusterConfig};

/// Cluster B serves the default model under a name of its own, so that a request for it
/// at cluster A can only be answered by crossing over.
const B_MODEL: &str = "gemma-3-270m-eu";

async fn start() -> Cluster {
    Cluster::start(ClusterConfig::default())
        .await
        .expect("the real node starts (scripts/build-tools.sh, scripts/build-images.sh first)")
}

/// The example file's document labelled `cluster=<which>`.
fn example_document(which: &str) -> String {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/examples/two-cluster.yaml")).unwrap();
    text.split("\n---\n")
        .find(|doc| doc.contains(&format!("cluster: {which}\n")))
        .unwrap_or_else(|| panic!("no document labelled cluster={which}"))
        .to_owned()
}

/// The example's `helm install` with the swarm key Secret created first.
fn install(cluster: &Cluster, key: &std::path::Path) {
    cluster.kubectl_ok(&["create", "namespace", RELEASE_NS], None);
    cluster.kubectl_ok(
        &[
            "-n",
            RELEASE_NS,
            "create",
            "secret",
            "generic",
            "llamanet-swarm-key",
            &format!("--from-file=psk={}", key.display()),
        ],
        None,
    );
    cluster.install_chart_with(&["--set", "swarm.privateKeySecret.name=llamanet-swarm-key"]);
}

/// `status` of an InferenceNode as JSON.
fn status(cluster: &Cluster, name: &str) -> serde_json::Value {
    cluster.inference_node(name)["status"].clone()
}

fn pod_ip(cluster: &Cluster, pod: &str) -> String {
    cluster
        .kubectl_ok(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"], None)
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_join_one_swarm_through_one_address() {
    let started = Instant::now();
    let (a, b) = tokio::join!(start(), start());
    let (machine_a, machine_b) = (a.machine().unwrap(), b.machine().unwrap());
    assert_ne!(machine_a.address(), machine_b.address());
    eprintln!(
        "clusters up after {:?}: A at {}, B at {}",
        started.elapsed(),
        machine_a.address(),
        machine_b.address()
    );

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("swarm.key");
    let hex: String = (0..32).map(|i| format!("{:02x}", i * 7 + 3)).collect();
    std::fs::write(&key, format!("/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")).unwrap();
    install(&a, &key);
    install(&b, &key);

    // Cluster A: the example's Service in front of its operator's swarm port, and the CPU
    // example. No load balancer answers here, but the Service has a node port.
    a.kubectl_ok(&["apply", "-f", "-"], Some(&example_document("a")));
    let node_port = a
        .kubectl_ok(
            &[
                "-n",
                RELEASE_NS,
                "get",
                "service",
                "llamanet-swarm-public",
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ],
            None,
        )
        .trim()
        .to_owned();
    assert!(node_port.parse::<u16>().is_ok(), "{node_port}");
    let bootstrap = format!("/ip4/{}/tcp/{node_port}", machine_a.address());
    a.kubectl_ok(&["apply", "-f", "-"], Some(&a.cpu_example()));

    // Cluster B: the example's InferenceNode with A's address, one replica, the cached
    // model from this host's disk instead of the example's URL, and a model name of its own.
    let model = b.cpu_example();
    let path_line = model
        .lines()
        .find(|l| l.trim_start().starts_with("path: "))
        .unwrap()
        .trim()
        .to_owned();
    let resource = example_document("b")
        .replace("replicas: 2", "replicas: 1")
        .replace("name: gemma-3-270m\n", &format!("name: {B_MODEL}\n"))
        .replace(
            "url: https://models.example.com/gemma-3-270m-q4_k_m.gguf",
            &path_line,
        )
        .replace(
            "/dns4/llamanet-swarm.cluster-a.example.com/tcp/4001",
            &bootstrap,
        );
    assert!(resource.contains(&bootstrap) && resource.contains("path: "));
    b.kubectl_ok(&["apply", "-f", "-"], Some(&resource));

    a.wait_inference_node_ready("gemma-cpu");
    b.wait_inference_node_ready("gemma-eu");
    eprintln!("both Ready {:?} after start", started.elapsed());

    // Each cluster's node sees the other's model in the swarm.
    let a_ip = pod_ip(&a, "gemma-cpu-0");
    let b_ip = pod_ip(&b, "gemma-eu-0");
    let http = reqwest::Client::new();
    let swarm_of = |ip: String| {
        let http = http.clone();
        async move {
            llamanet_cluster::testing::get_json(&http, &format!("http://{ip}:8080/v1/swarm")).await
        }
    };
    let crossed = eventually(
        Duration::from_secs(90),
        "cluster A's node sees cluster B's model in the swarm",
        || async {
            let swarm = swarm_of(a_ip.clone()).await?;
            let text = swarm.to_string();
            text.contains(B_MODEL).then_some(swarm)
        },
    )
    .await;
    eprintln!("A's view of the swarm: {crossed}");
    let b_view = swarm_of(b_ip.clone()).await.unwrap().to_string();
    assert!(
        b_view.contains("gemma-3-270m\""),
        "B sees A's model: {b_view}"
    );

    // Each resource's status lists its own replica only.
    for (cluster, name, pod) in [
        (&a, "gemma-cpu", "gemma-cpu-0"),
        (&b, "gemma-eu", "gemma-eu-0"),
    ] {
        let status = status(cluster, name);
        let peers = status["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{name}: {status}");
        assert_eq!(peers[0]["pod"], pod, "{name}: {status}");
    }

    // A request at cluster A for cluster B's model crosses over and is answered there.
    let response = http
        .post(format!("http://{a_ip}:8080/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": B_MODEL,
            "messages": [{"role": "user", "content": "Say hello"}],
            "max_tokens": 8,
        }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let served_by = response.headers()["x-llamanet-node"]
        .to_str()
        .unwrap()
        .to_owned();
    let answer: serde_json::Value = response.json().await.unwrap();
    assert!(
        answer["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "{answer}"
    );
    let b_peer = status(&b, "gemma-eu")["peers"][0]["peerId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(served_by, b_peer, "answered by cluster B's replica");
    eprintln!(
        "a request at cluster A for {B_MODEL} answered by cluster B's {b_peer}; test took {:?}",
        started.elapsed()
    );
}
