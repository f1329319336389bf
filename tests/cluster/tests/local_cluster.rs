//! End to end on the real control plane: Deployments become ReplicaSets
//! (controller-manager), pods are scheduled (scheduler) to the local node and
//! run as local processes with their own loopback IPs; volumes, probes,
//! restarts, bad images and deletion behave as in Kubernetes; nothing is left
//! running afterwards, even when the harness is killed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use llamanet_cluster::testing::{eventually, processes_with};
use llamanet_cluster::{Cluster, ClusterConfig};

async fn pods(cluster: &Cluster, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(cluster.client(), "default")
        .list(&kube::api::ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn start_cluster() -> Cluster {
    Cluster::start(ClusterConfig::default())
        .await
        .expect("local cluster starts (run scripts/build-k8s.sh first)")
}

const DEPLOYMENT: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: site}
data: {index.html: "served from a configMap volume"}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: ghcr.io/llamanet/llamanet-node:test
        # A small command from the host: there is no image filesystem.
        # $0 of sh (which stays as the parent) marks the processes so the test can find them in /proc.
        command: ["/bin/sh", "-c", "/usr/bin/python3 -m http.server --bind $(POD_IP) --directory /srv/site 8080; exit $?", "marker-deploy-e2e"]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        ports: [{containerPort: 8080, name: http}]
        readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 1}
        resources: {limits: {nvidia.com/gpu: 1}}
        volumeMounts: [{name: site, mountPath: /srv/site, readOnly: true}]
      volumes: [{name: site, configMap: {name: site}}]
"#;

// Multi-threaded: kubectl calls block this thread while the local node's
// tasks must keep running pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_pods_run_as_local_processes() {
    let cluster = start_cluster().await;
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(DEPLOYMENT));

    let ready = eventually(Duration::from_secs(60), "2 web pods Ready", || async {
        let pods = pods(&cluster, "app=web").await;
        (pods.len() == 2 && pods.iter().all(is_ready)).then_some(pods)
    })
    .await;

    let ips: Vec<String> = ready
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    assert_ne!(ips[0], ips[1], "each pod has its own address");
    for ip in &ips {
        assert!(ip.starts_with("127.0."), "pod IP {ip} is loopback");
        // Both pods listen on 8080, each on its own IP, and serve the
        // configMap mounted at /srv/site in their private mount namespace.
        let body = reqwest::get(format!("http://{ip}:8080/index.html"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "served from a configMap volume");
    }
    assert!(
        !Path::new("/srv/site/index.html").exists(),
        "the volume is not visible on the host"
    );
    for p in &ready {
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("local-node-0"));
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "ReplicaSet", "made by the controller-manager");
    }
    let procs = processes_with("marker-deploy-e2e");
    assert_eq!(procs.len(), 2, "one process per pod: {procs:?}");
    assert!(
        procs.iter().all(|(_, uid)| *uid == 65532),
        "the image's non-root user: {procs:?}"
    );

    let listing = cluster.kubectl_ok(&["get", "nodes,pods", "-A", "-o", "wide"], None);
    println!("{listing}");
    assert!(listing.contains("local-node-0"));

    cluster.kubectl_ok(&["delete", "deployment", "web", "--wait=true"], None);
    eventually(
        Duration::from_secs(30),
        "pods and processes gone",
        || async {
            (pods(&cluster, "app=web").await.is_empty()
                && processes_with("marker-deploy-e2e").is_empty())
            .then_some(())
        },
    )
    .await;
    cluster.shutdown().await;
}

const FEATURES: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {token: s3cret}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: steps, labels: {app: steps}}
spec:
  restartPolicy: Never
  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}
  initContainers:
  - name: first
    image: llamanet-node
    command: ["/bin/sh", "-c", "echo one > /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  - name: second
    image: llamanet-node
    command: ["/bin/sh", "-c", "echo two >> /work/order"]
    volumeMounts: [{name: work, mountPath: /work}]
  containers:
  - name: main
    image: llamanet-node
    command: ["/bin/sh", "-c"]
    args:
    - >-
      cat /work/order /creds/token > /data/out &&
      echo "$(MY_NAME) $(MY_NS) $(id -u)" >> /data/out
    env:
    - {name: MY_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: MY_NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
    volumeMounts:
    - {name: work, mountPath: /work}
    - {name: creds, mountPath: /creds}
    - {name: data, mountPath: /data}
  volumes:
  - {name: work, emptyDir: {}}
  - {name: creds, secret: {secretName: creds}}
  - {name: data, persistentVolumeClaim: {claimName: data}}
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  containers:
  - {name: main, image: llamanet-node, command: ["/bin/sh", "-c", "exit 3"]}
---
apiVersion: v1
kind: Pod
metadata: {name: unhealthy}
spec:
  containers:
  - name: main
    image: llamanet-node
    command: ["/bin/sleep", "600"]
    # Nothing listens on this port: the liveness probe fails and the
    # container is killed and restarted.
    livenessProbe: {tcpSocket: {port: 1}, periodSeconds: 1, failureThreshold: 2}
---
apiVersion: v1
kind: Pod
metadata: {name: foreign}
spec:
  containers:
  - {name: main, image: docker.io/library/nginx:1.27}
"#;

// Multi-threaded: kubectl calls block this thread while the local node's
// tasks must keep running pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_features_behave_as_in_kubernetes() {
    let cluster = start_cluster().await;
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(FEATURES));
    let api = Api::<Pod>::namespaced(cluster.client(), "default");

    // Init containers in order, env from the downward API, secret and PVC
    // volumes, the pod's user: all visible in what the main container wrote.
    let steps = eventually(Duration::from_secs(60), "pod steps Succeeded", || async {
        let p = api.get("steps").await.ok()?;
        let phase = p.status.as_ref()?.phase.clone()?;
        assert_ne!(phase, "Failed", "{:?}", p.status);
        (phase == "Succeeded").then_some(p)
    })
    .await;
    let pvc_dir = {
        let pvc = cluster.kubectl_ok(
            &["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"],
            None,
        );
        let pv = cluster.kubectl_ok(
            &["get", "pv", &pvc, "-o", "jsonpath={.spec.hostPath.path}"],
            None,
        );
        std::path::PathBuf::from(pv)
    };
    let out = std::fs::read_to_string(pvc_dir.join("out")).unwrap();
    assert_eq!(out, "one\ntwo\ns3cretsteps default 1000\n");
    let statuses = steps.status.unwrap().init_container_statuses.unwrap();
    assert!(statuses.iter().all(|s| {
        s.state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    }));

    // restartPolicy Always: a crashing container is restarted with back-off.
    eventually(Duration::from_secs(30), "crasher restarted", || async {
        let p = api.get("crasher").await.ok()?;
        let cs = &p.status?.container_statuses?[0];
        let last = cs.last_state.as_ref()?.terminated.as_ref()?;
        assert_eq!(last.exit_code, 3);
        (cs.restart_count >= 2).then_some(())
    })
    .await;

    // A failing liveness probe restarts a container that is still running.
    eventually(Duration::from_secs(30), "unhealthy restarted", || async {
        let p = api.get("unhealthy").await.ok()?;
        let cs = &p.status?.container_statuses?[0];
        (cs.restart_count >= 1).then_some(())
    })
    .await;

    // An image that is not built here: ErrImagePull naming the image.
    let (reason, message) = eventually(
        Duration::from_secs(30),
        "foreign pod ErrImagePull",
        || async {
            let p = api.get("foreign").await.ok()?;
            let w = p.status?.container_statuses?[0].state.clone()?.waiting?;
            (w.reason.as_deref() == Some("ErrImagePull")).then_some((w.reason?, w.message?))
        },
    )
    .await;
    println!("foreign pod: {reason}: {message}");
    assert!(message.contains("nginx:1.27") && message.contains("llamanet-node"));

    cluster.kubectl_ok(&["delete", "pod", "--all", "--wait=true"], None);
    cluster.shutdown().await;
}

/// `kill -9` of the harness takes every component and pod with it.
#[test]
fn killed_harness_leaves_no_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_llamanet-cluster");
    let mut up = Command::new(bin)
        .args(["up", "--dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while !dir.path().join("ready").exists() {
        assert!(Instant::now() < deadline, "cluster did not come up");
        assert!(
            up.try_wait().unwrap().is_none(),
            "llamanet-cluster exited early"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let marker = dir.path().display().to_string();
    let children = processes_with(&marker);
    assert!(
        children.len() >= 4,
        "etcd and the three control plane components: {children:?}"
    );

    up.kill().unwrap();
    up.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "orphans after kill -9: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
