//! A whole local cluster: the control plane plus its real nodes, each in a machine of its
//! own, torn down in the right order when dropped (nodes, then the control plane, then the
//! machines, then its folder).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::control_plane::{ControlPlane, ControlPlaneConfig, cache_dir};
use crate::machine::Machine;
use crate::real_node::{RealNode, RealNodeConfig};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// State folder; a temporary one (removed on drop) when `None`.
    pub dir: Option<PathBuf>,
    /// How many real nodes (`local-node-0`, `local-node-1`, ...), each in a [`Machine`] of its
    /// own, running the images `scripts/build-images.sh` built; the control plane runs in the
    /// first one's machine, as on a kind cluster, and the machines reach each other (and each
    /// other's pods) through this host. With none, the control plane alone runs on this
    /// host's loopback.
    pub nodes: usize,
    pub gpus_per_node: u32,
    /// Where the control plane and node binaries are.
    pub k8s_bin_dir: PathBuf,
    /// The image archives and the pause binary `scripts/build-images.sh` leaves
    /// (`$LLAMANET_CACHE/images`).
    pub images_dir: PathBuf,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            dir: None,
            nodes: 1,
            gpus_per_node: 8,
            k8s_bin_dir: crate::control_plane::default_bin_dir(),
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

/// A running cluster. Fields drop in order: nodes, control plane, machines, folder.
pub struct Cluster {
    real_nodes: Vec<RealNode>,
    plane: ControlPlane,
    client: kube::Client,
    /// One per node, the control plane's first.
    machines: Vec<Arc<Machine>>,
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
        if config.nodes == 0 {
            return Self::start_control_plane(config, dir, tmp).await;
        }
        Self::start_machines(config, dir, tmp).await
    }

    /// No nodes: the control plane alone, on this host's loopback.
    async fn start_control_plane(
        config: ClusterConfig,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let plane = ControlPlane::start(&ControlPlaneConfig {
            bin_dir: config.k8s_bin_dir.clone(),
            dir: dir.join("control-plane"),
            machine: None,
        })
        .await?;
        let client = plane.client().await?;
        let cluster = Self {
            real_nodes: Vec::new(),
            plane,
            client,
            machines: Vec::new(),
            _tmp: tmp,
        };
        cluster.wait_usable(Duration::from_secs(120)).await?;
        Ok(cluster)
    }

    /// A machine per node, the control plane in the first.
    async fn start_machines(
        config: ClusterConfig,
        dir: PathBuf,
        tmp: Option<tempfile::TempDir>,
    ) -> Result<Self> {
        let pause = config.images_dir.join("pause/pause");
        let names: Vec<String> = (0..config.nodes)
            .map(|i| format!("local-node-{i}"))
            .collect();
        let machine_dir = |name: &str| dir.join("machines").join(name);
        let first = Arc::new(Machine::start(&pause, &machine_dir(&names[0]))?);
        let plane = ControlPlane::start(&ControlPlaneConfig {
            bin_dir: config.k8s_bin_dir.clone(),
            dir: dir.join("control-plane"),
            machine: Some(first.clone()),
        })
        .await?;
        let client = plane.client().await?;
        let images = image_archives(&config.images_dir.join("archives"))?;
        let mut cluster = Self {
            real_nodes: Vec::new(),
            plane,
            client,
            machines: vec![first],
            _tmp: tmp,
        };
        for (i, name) in names.iter().enumerate() {
            if i > 0 {
                let machine = Machine::start(&pause, &machine_dir(name))?;
                cluster.machines.push(Arc::new(machine));
            }
            let node = RealNode::start(
                cluster.machines[i].clone(),
                &RealNodeConfig {
                    name: name.clone(),
                    dir: dir.join("nodes").join(name),
                    k8s_bin_dir: config.k8s_bin_dir.clone(),
                    kubeconfig: cluster
                        .plane
                        .kubeconfig_for(&format!("system:node:{name}"), Some("system:nodes"))?,
                    proxy_kubeconfig: cluster.plane.kubeconfig_for("system:kube-proxy", None)?,
                    ca_file: cluster.plane.ca_file(),
                    images: images.clone(),
                    gpus: config.gpus_per_node,
                },
            )?;
            cluster.real_nodes.push(node);
        }
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

    /// The control plane's machine (the first node's); `None` without nodes.
    pub fn machine(&self) -> Option<&Machine> {
        self.machines.first().map(|m| &**m)
    }

    /// Where this host is reachable from the cluster's pods: the host's end of the first
    /// machine's veth pair (loopback without nodes).
    pub fn host_address(&self) -> std::net::Ipv4Addr {
        self.machine()
            .map_or(std::net::Ipv4Addr::LOCALHOST, Machine::host_address)
    }

    /// `program` run where the cluster's Service ClusterIPs work (kube-proxy's rules): inside
    /// the first node's machine. `None` without nodes.
    pub fn in_cluster_network(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Option<std::process::Command> {
        self.machine().map(|m| m.command(program))
    }

    /// The host PID of a running container, from the `containerID` of its status
    /// (`containerd://<id>`).
    pub fn container_pid(&self, container_id: &str) -> Option<u32> {
        let id = container_id.strip_prefix("containerd://")?;
        self.real_nodes
            .iter()
            .find_map(|node| node.container_pid(id).ok())
    }

    /// The nodes.
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
            if ready == self.real_nodes.len() && sa {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "cluster not usable after {timeout:?}: {ready}/{} nodes ready and untainted, default serviceaccount: {sa}",
                    self.real_nodes.len()
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
    /// If the cluster has no node `name`, or `name` is the node whose machine holds the
    /// control plane.
    pub fn crash_node(&mut self, name: &str) {
        let at = self
            .real_nodes
            .iter()
            .position(|n| n.name() == name)
            .unwrap_or_else(|| panic!("no node {name} in this cluster"));
        assert!(at > 0, "{name}'s machine holds the control plane");
        let machine = self.machines.remove(at);
        machine.power_off();
        drop(self.real_nodes.remove(at));
    }

    /// Stops the nodes, then the control plane (the machines go when dropped).
    pub async fn shutdown(mut self) {
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
        for log in self.real_nodes.iter().flat_map(RealNode::logs) {
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

/// The cluster DNS.
const COREDNS_MANIFEST: &str = include_str!("../manifests/coredns.yaml");

/// How many lines of each container log a failure report shows.
const LOG_TAIL: usize = 60;

fn is_ready(node: &k8s_openapi::api::core::v1::Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
