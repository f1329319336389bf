//! The test bed's real node: containerd, runc, the CNI bridge and the real kubelet in a
//! machine of their own, running the images `scripts/build-images.sh` built from
//! `deploy/docker/`. A node pod with the security context the operator gives it loads
//! the default model in its container; `kubectl logs` and `kubectl exec` go through the
//! kubelet; the container really runs as 65532 on a read-only root with the GPU the device
//! plugin double gave it; a Service answers by ClusterIP and by DNS name from inside the
//! pod, the API on the pod's address from this host; an image that does not exist shows as
//! a pull error.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use llamanet_cluster::testing::{default_model, eventually};
use llamanet_cluster::{Cluster, ClusterConfig, Runtime};

const VERSION: &str = env!("CARGO_PKG_VERSION");

async fn start() -> Cluster {
    Cluster::start(ClusterConfig {
        runtime: Runtime::Containers,
        ..Default::default()
    })
    .await
    .expect("the real node starts (scripts/build-tools.sh, scripts/build-images.sh first)")
}

/// The node pod as the operator shapes it: non-root, read-only root, no capabilities,
/// the model from the host read-only, a writable /tmp.
fn node_pod(model_dir: &str, model_file: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: node, labels: {{app: node}}}}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    seccompProfile: {{type: RuntimeDefault}}
  containers:
  - name: server
    image: ghcr.io/llamanet/llamanet-node:{VERSION}
    imagePullPolicy: Never
    args: [serve, --model, /models/{model_file}, --host, 0.0.0.0, --port, "8080",
           --ctx-size, "1024", --parallel, "2", --threads, "2", --identity, /tmp/identity]
    ports: [{{containerPort: 8080, name: http}}]
    resources: {{limits: {{nvidia.com/gpu: 1}}}}
    readinessProbe:
      httpGet: {{path: /health, port: http}}
      periodSeconds: 1
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
    volumeMounts:
    - {{name: model, mountPath: /models, readOnly: true}}
    - {{name: tmp, mountPath: /tmp}}
  volumes:
  - name: model
    hostPath: {{path: {model_dir}, type: Directory}}
  - name: tmp
    emptyDir: {{}}
"#
    )
}

fn kubectl(cluster: &Cluster, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut cmd = cluster.kubectl();
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread")]
async fn node_image_serves_in_a_real_container() {
    let cluster = start().await;
    let node = Api::<Node>::all(cluster.client())
        .get("local-node-0")
        .await
        .unwrap();
    let info = node.status.unwrap().node_info.unwrap();
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "{info:?}"
    );
    assert_eq!(info.kubelet_version, llamanet_cluster::K8S_VERSION);
    // The GPU device plugin double registered its devices with the kubelet.
    let gpus = eventually(
        Duration::from_secs(30),
        "nvidia.com/gpu capacity",
        || async {
            let node = Api::<Node>::all(cluster.client())
                .get("local-node-0")
                .await
                .ok()?;
            let capacity = node.status?.capacity?;
            capacity.get("nvidia.com/gpu").map(|q| q.0.clone())
        },
    )
    .await;
    assert_eq!(gpus, "8");

    let model = default_model();
    let model_dir = model.parent().unwrap().display().to_string();
    let model_file = model.file_name().unwrap().to_string_lossy().into_owned();
    kubectl(
        &cluster,
        &["apply", "-f", "-"],
        Some(&node_pod(&model_dir, &model_file)),
    );
    let pods = Api::<Pod>::namespaced(cluster.client(), "default");
    let pod = eventually(
        Duration::from_secs(120),
        "the node pod is ready",
        || async { pods.get_opt("node").await.ok().flatten().filter(is_ready) },
    )
    .await;
    let status = pod.status.unwrap();
    let pod_ip = status.pod_ip.unwrap();
    let machine = cluster.machine().unwrap();
    assert!(
        pod_ip.starts_with(&format!("198.19.{}.", machine.index())),
        "{pod_ip} is not from the machine's pod range {}",
        machine.pod_cidr()
    );

    // The kubelet serves the container's log and exec.
    let logs = kubectl(&cluster, &["logs", "node", "-c", "server"], None);
    assert!(logs.contains("model loaded"), "kubectl logs:\n{logs}");
    let version = kubectl(
        &cluster,
        &[
            "exec",
            "node",
            "-c",
            "server",
            "--",
            "llamanet",
            "--version",
        ],
        None,
    );
    assert!(version.contains(VERSION), "kubectl exec: {version}");

    // What runs is the image's binary as 65532, on a read-only root, without capabilities.
    let container_id = status.container_statuses.unwrap()[0]
        .container_id
        .clone()
        .unwrap();
    let id = container_id.trim_start_matches("containerd://");
    let pid = cluster.real_nodes()[0].container_pid(id).unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), ["65532"; 4], "{proc_status}");
    assert_eq!(field("Gid:"), ["65532"; 4], "{proc_status}");
    assert_eq!(field("CapEff:"), ["0000000000000000"], "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), ["1"]);
    assert_eq!(
        field("Seccomp:"),
        ["2"],
        "seccomp filter mode (RuntimeDefault)"
    );
    // The GPU it asked for came from the device plugin double, and says so.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    let gpu = environ
        .split('\0')
        .find_map(|v| v.strip_prefix("LLAMANET_GPU_DOUBLE="))
        .unwrap_or_else(|| panic!("no LLAMANET_GPU_DOUBLE in {environ}"));
    assert!(
        gpu.starts_with("gpu-double-") && !gpu.contains(','),
        "{gpu}"
    );
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe.to_string_lossy(), "/usr/local/bin/llamanet");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .expect("a root mount");
    let options = root.split_whitespace().nth(5).unwrap();
    assert!(options.split(',').any(|o| o == "ro"), "root mount: {root}");

    // A Service (kube-proxy's rules in the machine), from inside the pod.
    kubectl(&cluster, &["expose", "pod", "node", "--port=8080"], None);
    let cluster_ip = kubectl(
        &cluster,
        &["get", "service", "node", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    assert!(cluster_ip.starts_with("10.0."), "{cluster_ip}");
    // By its address, then by its name (CoreDNS behind the kube-dns Service).
    for host in [cluster_ip.as_str(), "node.default.svc.cluster.local"] {
        let url = format!("--url=http://{host}:8080");
        let check = kubectl(
            &cluster,
            &[
                "exec",
                "node",
                "-c",
                "server",
                "--",
                "llamanet",
                "check",
                &url,
                "--timeout=20s",
            ],
            None,
        );
        assert!(
            check.lines().any(|l| l == "healthy"),
            "llamanet check through {host}: {check}"
        );
    }

    // The API on the pod's own address, from this host (routed into the machine).
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{pod_ip}:8080/v1/chat/completions"))
        .json(&serde_json::json!({
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "temperature": 0,
        }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.is_empty(), "{answer}");
    assert_eq!(answer["usage"]["completion_tokens"], 8, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_that_does_not_exist_is_a_pull_error() {
    let cluster = start().await;
    kubectl(
        &cluster,
        &[
            "run",
            "missing",
            "--image=ghcr.io/llamanet/does-not-exist:1",
            "--restart=Never",
        ],
        None,
    );
    let pods = Api::<Pod>::namespaced(cluster.client(), "default");
    // Nothing is reachable from the machine: the pull fails at once, as it does on a node
    // without a route to the registry.
    let reason = eventually(Duration::from_secs(90), "a pull error", || async {
        let pod = pods.get("missing").await.ok()?;
        let waiting = pod
            .status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .waiting?;
        waiting
            .reason
            .filter(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    })
    .await;
    let describe = kubectl(&cluster, &["describe", "pod", "missing"], None);
    assert!(describe.contains(&reason), "{describe}");
    assert!(
        describe.contains("Failed to pull image \"ghcr.io/llamanet/does-not-exist:1\""),
        "{describe}"
    );
}
