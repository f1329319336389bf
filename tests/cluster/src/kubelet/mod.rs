//! A kubelet whose container runtime is "a local process": it registers a
//! Node (with `nvidia.com/gpu` capacity, so GPU pods schedule), keeps its
//! Lease and Ready condition fresh, and runs every pod the scheduler binds to
//! it (see `pod.rs`). It also provisions PersistentVolumes for claims of the
//! `local-process` StorageClass as host folders.

mod container;
mod env;
mod hosts;
mod images;
mod ip;
mod pod;
mod probe;
mod provisioner;
mod volumes;

pub use images::{IMAGE_USER, ImageCatalog, ImageError, LocalImage};
pub use ip::PodIpPool;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::control_plane::K8S_VERSION;

/// How often the node renews its Lease and reports Ready.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// The node's shape.
#[derive(Debug, Clone)]
pub struct LocalNodeConfig {
    pub name: String,
    /// Node state: pod folders, "pulled" images, provisioned volumes.
    pub dir: PathBuf,
    pub images: ImageCatalog,
    /// `nvidia.com/gpu` capacity advertised (nothing is attached; GPU pods
    /// just schedule and run on the CPU).
    pub gpus: u32,
    /// The API server's loopback port, for `KUBERNETES_SERVICE_*` in pods.
    pub api_port: u16,
    pub labels: Vec<(String, String)>,
}

impl LocalNodeConfig {
    pub fn new(name: &str, dir: impl Into<PathBuf>, images: ImageCatalog, api_port: u16) -> Self {
        Self {
            name: name.into(),
            dir: dir.into(),
            images,
            gpus: 8,
            api_port,
            labels: Vec::new(),
        }
    }
}

/// What pod workers of one node share.
pub(crate) struct NodeContext {
    pub client: kube::Client,
    pub dir: PathBuf,
    pub images: ImageCatalog,
    pub ips: Arc<PodIpPool>,
    pub base_env: Vec<(String, String)>,
    pub host_path: String,
    pub http: reqwest::Client,
    /// Process group leaders of running containers, killed if the node is dropped.
    pub processes: Mutex<HashSet<u32>>,
}

/// A running local node. Dropping it kills every pod process at once;
/// [`LocalNode::shutdown`] stops them gracefully first.
pub struct LocalNode {
    name: String,
    ctx: Arc<NodeContext>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl LocalNode {
    /// Registers the Node and starts running its pods. `ips` may be shared by
    /// several nodes of one cluster so their pods never share an address.
    pub async fn start(
        client: kube::Client,
        config: LocalNodeConfig,
        ips: Arc<PodIpPool>,
    ) -> Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        // Pods may run as non-root users: they must reach their folders.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.dir, std::fs::Permissions::from_mode(0o755))?;
        let port = config.api_port.to_string();
        let ctx = Arc::new(NodeContext {
            client: client.clone(),
            dir: config.dir.clone(),
            images: config.images.clone(),
            ips,
            base_env: vec![
                ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
                ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
                ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
                ("KUBERNETES_PORT".into(), format!("tcp://127.0.0.1:{port}")),
            ],
            host_path: std::env::var("PATH")
                .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            http: reqwest::Client::builder()
                .danger_accept_invalid_certs(true)
                .build()?,
            processes: Mutex::new(HashSet::new()),
        });
        register(&client, &config)
            .await
            .context("registering the node")?;
        provisioner::ensure_storage_class(&client).await?;

        let cancel = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(heartbeat_loop(
                client.clone(),
                config.clone(),
                cancel.clone(),
            )),
            tokio::spawn(pod_loop(ctx.clone(), config.name.clone(), cancel.clone())),
            tokio::spawn(provisioner::run(
                client.clone(),
                config.dir.join("volumes"),
                cancel.clone(),
            )),
        ];
        info!(node = %config.name, "local node registered");
        Ok(Self {
            name: config.name,
            ctx,
            cancel,
            tasks,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops watching, gives running containers SIGTERM and a moment, then kills them.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        self.kill_all(libc::SIGTERM);
        for _ in 0..50 {
            if self.alive() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill_all(libc::SIGKILL);
    }

    fn alive(&self) -> usize {
        let pids = self.ctx.processes.lock().unwrap();
        pids.iter()
            // SAFETY: signal 0 only checks for existence.
            .filter(|p| unsafe { libc::kill(**p as libc::pid_t, 0) } == 0)
            .count()
    }

    fn kill_all(&self, signal: libc::c_int) {
        for pid in self.ctx.processes.lock().unwrap().iter() {
            crate::process::signal_group(*pid, signal);
        }
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in &self.tasks {
            t.abort();
        }
        self.kill_all(libc::SIGKILL);
    }
}

async fn register(client: &kube::Client, config: &LocalNodeConfig) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let mut labels = serde_json::Map::new();
    for (k, v) in [
        ("kubernetes.io/hostname", config.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", std::env::consts::ARCH),
        ("llamanet.io/local-node", "true"),
    ] {
        labels.insert(k.into(), v.into());
    }
    for (k, v) in &config.labels {
        labels.insert(k.clone(), v.clone().into());
    }
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": config.name, "labels": labels },
        "spec": {}
    });
    let pp = PatchParams::apply("llamanet-local-node").force();
    nodes.patch(&config.name, &pp, &Patch::Apply(node)).await?;
    nodes
        .patch_status(&config.name, &pp, &Patch::Apply(node_status(config)))
        .await?;
    Ok(())
}

fn node_status(config: &LocalNodeConfig) -> serde_json::Value {
    let now = Timestamp::now().to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let memory_ki = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_else(|| "8388608".into());
    let resources = serde_json::json!({
        "cpu": cpus.to_string(),
        "memory": format!("{memory_ki}Ki"),
        "pods": "250",
        "ephemeral-storage": "100Gi",
        "nvidia.com/gpu": config.gpus.to_string(),
    });
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": config.name},
            ],
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "local process node is ready",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
                 "lastHeartbeatTime": now, "lastTransitionTime": now},
            ],
            "nodeInfo": {
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "llamanet-process://0.1",
                "operatingSystem": "linux",
                "architecture": std::env::consts::ARCH,
                "osImage": "local processes",
                "kernelVersion": "", "machineID": "", "systemUUID": "", "bootID": "",
            },
        }
    })
}

async fn heartbeat_loop(client: kube::Client, config: LocalNodeConfig, cancel: CancellationToken) {
    let nodes = Api::<Node>::all(client.clone());
    let leases = Api::<Lease>::namespaced(client, "kube-node-lease");
    let pp = PatchParams::apply("llamanet-local-node").force();
    loop {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": config.name },
            "spec": {
                "holderIdentity": config.name,
                "leaseDurationSeconds": 40,
                "renewTime": MicroTime(Timestamp::now()),
            }
        });
        if let Err(e) = leases.patch(&config.name, &pp, &Patch::Apply(lease)).await {
            warn!("renewing node lease: {e}");
        }
        if let Err(e) = nodes
            .patch_status(&config.name, &pp, &Patch::Apply(node_status(&config)))
            .await
        {
            warn!("node status: {e}");
        }
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// Watches the pods bound to this node and keeps one worker per pod.
async fn pod_loop(ctx: Arc<NodeContext>, node: String, cancel: CancellationToken) {
    let pods = Api::<Pod>::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher(pods, cfg).boxed();
    let mut workers: HashMap<String, (watch::Sender<Pod>, CancellationToken, JoinHandle<()>)> =
        HashMap::new();
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = cancel.cancelled() => break,
        };
        let Some(event) = event else { break };
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                workers.retain(|_, (_, _, h)| !h.is_finished());
                if let Some((tx, _, _)) = workers.get(&uid) {
                    let _ = tx.send(pod);
                } else {
                    let (tx, rx) = watch::channel(pod);
                    let gone = CancellationToken::new();
                    let handle = tokio::spawn(pod::run(ctx.clone(), rx, gone.clone()));
                    workers.insert(uid, (tx, gone, handle));
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some((_, gone, _)) = workers.get(&uid) {
                    gone.cancel();
                }
            }
            Ok(_) => {}
            Err(e) => {
                warn!("pod watch: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // The node is going away, not the pods: leave them in the API and let
    // `LocalNode::shutdown` (or drop) stop the processes.
    for (_, (_, _, handle)) in workers {
        handle.abort();
    }
}
