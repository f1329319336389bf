//! The test bed's real node: containerd, runc, the CNI bridge and the real kubelet in a
//! machine of their own, running the images `scripts/build-images.sh` built from
//! `deploy/docker/`. A node pod with the security context the operator gives it loads
//! the default model in its container; `kubectl logs`, `exec` and `port-forward` go through
//! the kubelet; the container really runs as 65532 on a read-only root with the GPU the
//! device plugin double gave it (seen from this host's /proc, and with `kubectl debug` as a
//! user looks into an image without a shell); a Service answers by ClusterIP and by DNS name
//! from inside the pod, the API on the pod's address from this host; an image that does not
//! exist shows as a pull error; a node over its memory limit is `OOMKilled`; and a test bed killed outright
//! leaves nothing running.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use llamanet_cluster::testing::{default_model, eventually};
use llamanet_cluster::{Cluster, ClusterConfig};

const VERSION: &str = env!("CARGO_PKG_VERSION");

async fn start() -> Cluster {
    Cluster::start(ClusterConfig::default())
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

/// The local port `kubectl port-forward` says it listens on ("Forwarding from 127.0.0.1:N").
/// Its output is read to the end afterwards: kubectl writes a line per connection and dies
/// of a closed pipe.
async fn forwarded_port(forward: &mut tokio::process::Child) -> u16 {
    use tokio::io::AsyncBufReadExt;
    let stdout = forward.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("Forwarding from 127.0.0.1:") {
                return line;
            }
        }
        panic!("kubectl port-forward ended without forwarding");
    })
    .await
    .expect("kubectl port-forward listens within 30 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let port = line
        .trim_start_matches("Forwarding from 127.0.0.1:")
        .split_whitespace()
        .next()
        .unwrap();
    port.parse().unwrap()
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
    cluster.kubectl_ok(
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
    let logs = cluster.kubectl_ok(&["logs", "node", "-c", "server"], None);
    assert!(logs.contains("model loaded"), "kubectl logs:\n{logs}");
    let version = cluster.kubectl_ok(
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

    // The CRI lists it as the node's operator would see it.
    let crictl = cluster.real_nodes()[0]
        .crictl(&["ps", "--name", "server", "--state", "Running", "-o", "json"])
        .unwrap();
    let crictl: serde_json::Value = serde_json::from_str(&crictl).unwrap();
    let listed = &crictl["containers"][0];
    assert_eq!(
        listed["labels"]["io.kubernetes.pod.name"], "node",
        "{crictl}"
    );
    assert_eq!(listed["state"], "CONTAINER_RUNNING", "{crictl}");

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

    // The same, seen the way a user looks into an image without a shell: `kubectl debug`
    // puts a shell image beside the container, in its process namespace (restricted, as
    // the pod's own user), and reads the server's /proc/1.
    let custom = cluster.dir().join("debug.json");
    std::fs::write(&custom, r#"{"securityContext": {"runAsUser": 65532}}"#).unwrap();
    cluster.kubectl_ok(
        &[
            "debug",
            "node",
            "--image=localhost/llamanet/curl:bookworm",
            "--image-pull-policy=Never",
            "--target=server",
            "--container=inspect",
            "--profile=restricted",
            &format!("--custom={}", custom.display()),
            "--",
            "busybox",
            "sh",
            "-c",
            "busybox grep -E '^(Uid|CapEff):' /proc/1/status; \
             busybox sed -n 's|^[0-9]* [0-9]* [0-9:]* / / \\([^ ]*\\) .*|root \\1|p' \
             /proc/1/mountinfo; busybox tr '\\0' ' ' < /proc/1/cmdline",
        ],
        None,
    );
    let inspected = eventually(
        Duration::from_secs(60),
        "the debug container's output",
        || async {
            let pod = pods.get("node").await.ok()?;
            let done = pod
                .status?
                .ephemeral_container_statuses?
                .iter()
                .any(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()));
            done.then(|| cluster.kubectl_ok(&["logs", "node", "-c", "inspect"], None))
        },
    )
    .await;
    eprintln!("kubectl debug --target=server:\n{inspected}");
    assert!(
        inspected.contains("Uid:\t65532\t65532\t65532\t65532"),
        "{inspected}"
    );
    assert!(
        inspected.contains("CapEff:\t0000000000000000"),
        "{inspected}"
    );
    let root = inspected.lines().find(|l| l.starts_with("root ")).unwrap();
    assert!(root.split([' ', ',']).any(|o| o == "ro"), "{inspected}");
    assert!(inspected.contains("llamanet serve"), "{inspected}");

    // A Service (kube-proxy's rules in the machine), from inside the pod.
    cluster.kubectl_ok(&["expose", "pod", "node", "--port=8080"], None);
    let cluster_ip = cluster.kubectl_ok(
        &["get", "service", "node", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    );
    assert!(cluster_ip.starts_with("10.0."), "{cluster_ip}");
    // By its address, then by its name (CoreDNS behind the kube-dns Service). kube-proxy
    // writes the Service's rules within a second or two of its creation.
    for host in [cluster_ip.as_str(), "node.default.svc.cluster.local"] {
        let url = format!("--url=http://{host}:8080");
        let args = [
            "exec", "node", "-c", "server", "--", "llamanet", "check", &url,
        ];
        let check = eventually(
            Duration::from_secs(30),
            &format!("llamanet check through {host} in the pod"),
            || async {
                let out = cluster.kubectl().args(args).output().ok()?;
                let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
                stdout.lines().any(|l| l == "healthy").then_some(stdout)
            },
        )
        .await;
        assert!(check.contains("1 nodes (1 healthy)"), "{check}");
    }

    // kubectl port-forward, through the API server and the kubelet into the pod.
    let mut forward = tokio::process::Command::from(cluster.kubectl())
        .args(["port-forward", "pod/node", ":8080"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl port-forward runs");
    let local_port = forwarded_port(&mut forward).await;
    let health = reqwest::get(format!("http://127.0.0.1:{local_port}/health"))
        .await
        .unwrap();
    assert!(health.status().is_success(), "{health:?}");
    drop(forward);

    // The API on the pod's own address, from this host (routed into the machine).
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{pod_ip}:8080/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": model_file.trim_end_matches(".gguf"),
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
    cluster.kubectl_ok(
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
    let describe = cluster.kubectl_ok(&["describe", "pod", "missing"], None);
    assert!(describe.contains(&reason), "{describe}");
    assert!(
        describe.contains("Failed to pull image \"ghcr.io/llamanet/does-not-exist:1\""),
        "{describe}"
    );
}

/// A node pod given less memory than the model needs is killed by the kernel's OOM killer in
/// its cgroup, and the kubelet says so: `OOMKilled`, exit code 137.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_over_its_memory_limit_is_oom_killed() {
    let cluster = start().await;
    let model = default_model();
    let model_dir = model.parent().unwrap().display().to_string();
    let model_file = model.file_name().unwrap().to_string_lossy().into_owned();
    let pod = node_pod(&model_dir, &model_file)
        .replace("{nvidia.com/gpu: 1}", "{memory: 48Mi}")
        .replace("containers:", "restartPolicy: Never\n  containers:");
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&pod));
    let pods = Api::<Pod>::namespaced(cluster.client(), "default");
    let terminated = eventually(Duration::from_secs(120), "the node pod ends", || async {
        let pod = pods.get("node").await.ok()?;
        pod.status?
            .container_statuses?
            .first()?
            .state
            .clone()?
            .terminated
    })
    .await;
    assert_eq!(
        terminated.reason.as_deref(),
        Some("OOMKilled"),
        "{terminated:?}"
    );
    assert_eq!(terminated.exit_code, 137, "{terminated:?}");
    let describe = cluster.kubectl_ok(&["describe", "pod", "node"], None);
    assert!(describe.contains("OOMKilled"), "{describe}");
}

/// `llamanet-cluster up` killed outright (SIGKILL: no chance to clean up, as when a test
/// run is cut): the machine's PID 1 dies with it, and with it the control plane, containerd,
/// the kubelet, every container and the machine's mounts; its number is free for the next.
#[test]
fn a_killed_test_bed_leaves_nothing_behind() {
    use llamanet_cluster::testing::processes_with;
    let dir = tempfile::Builder::new()
        .prefix("llamanet-killed-")
        .tempdir()
        .unwrap();
    let cluster_dir = dir.path().join("cluster");
    let mut up = std::process::Command::new(env!("CARGO_BIN_EXE_llamanet-cluster"))
        .args(["up", "--dir"])
        .arg(&cluster_dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !cluster_dir.join("ready").exists() {
        assert!(
            up.try_wait().unwrap().is_none(),
            "llamanet-cluster up exited"
        );
        assert!(std::time::Instant::now() < deadline, "not up within 180 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let marker = cluster_dir.display().to_string();
    let running = processes_with(&marker);
    assert!(running.len() >= 5, "the components run: {running:?}");
    // The machine's number, from the API server's address (https://198.18.<k>.2:6443).
    let kubeconfig = std::fs::read_to_string(cluster_dir.join("control-plane/kubeconfig"));
    let k = kubeconfig
        .unwrap()
        .split("https://198.18.")
        .nth(1)
        .and_then(|rest| rest.split('.').next())
        .expect("the API server's address")
        .to_owned();
    let veth = |k: &str| {
        std::process::Command::new("ip")
            .args(["link", "show", &format!("lln{k}")])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(veth(&k), "the machine's veth lln{k}");

    up.kill().unwrap();
    up.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running 20 s after the kill: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The machine's number is free again (its lock died with the process). The kernel
    // removes the veth pair once the namespace's last sockets have timed out (about two
    // minutes here); a machine that gets the number sooner replaces it.
    let lock = std::fs::File::options()
        .write(true)
        .open(format!("/tmp/llamanet-machines/{k}.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0, "machine {k} is still claimed");
}
