//! A real Kubernetes node in a [`Machine`]: containerd with runc, the CNI bridge and
//! host-local plugins, and the real kubelet (cgroupfs driver), built from the same
//! `k8s.io/kubernetes` module as the control plane. Pods run in containers from the images
//! `scripts/build-images.sh` built from `deploy/docker/`, loaded into containerd when the
//! node starts; nothing is pulled.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::machine::Machine;
use crate::process::{Processes, sorted_entries};

/// The pod sandbox image every pod starts with (`scripts/build-images.sh` builds it from
/// `tests/cluster/pause/pause.c`); kubelets elsewhere use `registry.k8s.io/pause`.
pub const PAUSE_IMAGE: &str = "localhost/llamanet/pause:1";

/// The kubelet's root folder inside the machine.
const KUBELET_ROOT: &str = "/var/lib/kubelet";

/// The cluster DNS Service's address (the `kube-dns` Service).
pub const CLUSTER_DNS: &str = "10.0.0.10";

/// What a real node needs.
#[derive(Debug, Clone)]
pub struct RealNodeConfig {
    pub name: String,
    /// containerd's root and state, the kubelet's root, the CNI configuration, logs.
    pub dir: PathBuf,
    /// The folder with `kubelet`.
    pub k8s_bin_dir: PathBuf,
    /// The kubelet's kubeconfig (its own identity, `system:node:<name>`).
    pub kubeconfig: String,
    /// kube-proxy's (`system:kube-proxy`, bound to `system:node-proxier`).
    pub proxy_kubeconfig: String,
    /// The cluster CA (the kubelet accepts the API server's client certificate by it).
    pub ca_file: PathBuf,
    /// Image archives (`docker-archive` tarballs) loaded into containerd before the kubelet
    /// starts.
    pub images: Vec<PathBuf>,
    /// `nvidia.com/gpu` devices the GPU device plugin double advertises (none: no plugin).
    pub gpus: u32,
}

/// A running node. Dropping it stops the kubelet, then containerd; the machine's end stops
/// the containers.
pub struct RealNode {
    name: String,
    dir: PathBuf,
    machine: Arc<Machine>,
    // Stopped in reverse order: the kubelet first.
    processes: Processes,
}

impl RealNode {
    /// Starts containerd, loads the images, starts the kubelet. The node registers itself;
    /// the caller waits for it to be Ready.
    pub fn start(machine: Arc<Machine>, config: &RealNodeConfig) -> Result<Self> {
        let kubelet_bin = config.k8s_bin_dir.join("kubelet");
        let proxy_bin = config.k8s_bin_dir.join("kube-proxy");
        let gpu_bin = config.k8s_bin_dir.join("gpu-plugin-double");
        for bin in [&kubelet_bin, &proxy_bin, &gpu_bin] {
            if !bin.is_file() {
                bail!(
                    "{} is missing: run scripts/build-tools.sh (it builds the node's components)",
                    bin.display()
                );
            }
        }
        let dir = &config.dir;
        for sub in [
            "logs",
            "cni/net.d",
            "cni/ipam",
            "containerd",
            "kubelet/root",
            "kube-proxy",
        ] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // The kubelet's folder where a node has it: the device-plugin socket's path is fixed
        // there. The mount is the machine's own; the host keeps an empty mount point.
        std::fs::create_dir_all(KUBELET_ROOT)?;
        machine.run(
            "mount",
            &[
                "--bind",
                &dir.join("kubelet/root").display().to_string(),
                KUBELET_ROOT,
            ],
        )?;
        let mut node = Self {
            name: config.name.clone(),
            dir: dir.clone(),
            machine: machine.clone(),
            processes: Processes::default(),
        };
        std::fs::write(
            dir.join("cni/net.d/10-llamanet.conflist"),
            cni_config(&machine.pod_cidr(), &dir.join("cni/ipam")),
        )?;
        // crictl's configuration: `crictl --config <dir>/crictl.yaml ps` lists the containers.
        std::fs::write(
            dir.join("crictl.yaml"),
            format!(
                "runtime-endpoint: unix://{socket}\nimage-endpoint: unix://{socket}\ntimeout: 10\n",
                socket = node.containerd_socket().display()
            ),
        )?;
        let containerd_config = dir.join("containerd/config.toml");
        std::fs::write(&containerd_config, containerd_config_toml(dir))?;
        node.processes.push(machine.spawn(
            "containerd",
            Path::new("containerd"),
            &["--config".into(), containerd_config.display().to_string()],
            &node.log("containerd"),
        )?);
        node.wait_containerd(Duration::from_secs(30))?;
        for archive in &config.images {
            node.ctr(&["images", "import", &archive.display().to_string()])
                .with_context(|| format!("loading {} into containerd", archive.display()))?;
        }

        let kubeconfig = dir.join("kubelet/kubeconfig");
        std::fs::write(&kubeconfig, &config.kubeconfig)?;
        let kubelet_config = dir.join("kubelet/config.yaml");
        std::fs::write(
            &kubelet_config,
            kubelet_config_yaml(&machine, dir, &config.ca_file),
        )?;
        node.processes.push(machine.spawn(
            "kubelet",
            &kubelet_bin,
            &[
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--hostname-override={}", config.name),
                format!("--node-ip={}", machine.address()),
                format!("--root-dir={KUBELET_ROOT}"),
                format!("--cert-dir={}", dir.join("kubelet/pki").display()),
                "--v=1".into(),
            ],
            &node.log("kubelet"),
        )?);

        let proxy_kubeconfig = dir.join("kube-proxy/kubeconfig");
        std::fs::write(&proxy_kubeconfig, &config.proxy_kubeconfig)?;
        let proxy_config = dir.join("kube-proxy/config.yaml");
        std::fs::write(
            &proxy_config,
            kube_proxy_config_yaml(&config.name, &machine.pod_cidr(), &proxy_kubeconfig),
        )?;
        node.processes.push(machine.spawn(
            "kube-proxy",
            &proxy_bin,
            &[
                format!("--config={}", proxy_config.display()),
                "--v=1".into(),
            ],
            &node.log("kube-proxy"),
        )?);

        if config.gpus > 0 {
            node.processes.push(machine.spawn(
                "gpu-plugin-double",
                &gpu_bin,
                &[
                    format!("--plugin-dir={KUBELET_ROOT}/device-plugins"),
                    format!("--count={}", config.gpus),
                ],
                &node.log("gpu-plugin-double"),
            )?);
        }
        Ok(node)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd/containerd.sock")
    }

    fn log(&self, component: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{component}.log"))
    }

    /// Component log files (containerd, kubelet, kube-proxy), then every container's
    /// (`pod-logs/<namespace>_<pod>_<uid>/<container>/<restart>.log`).
    pub fn logs(&self) -> Vec<PathBuf> {
        let mut logs = ["containerd", "kubelet", "kube-proxy", "gpu-plugin-double"]
            .map(|c| self.log(c))
            .to_vec();
        for pod in sorted_entries(&self.dir.join("pod-logs")) {
            for container in sorted_entries(&pod) {
                logs.extend(sorted_entries(&container));
            }
        }
        logs
    }

    /// `ctr` against this node's containerd, in the kubelet's namespace (`k8s.io`).
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let socket = self.containerd_socket().display().to_string();
        let mut all = vec!["--address", &socket, "--namespace", "k8s.io"];
        all.extend_from_slice(args);
        self.machine.run("ctr", &all)
    }

    /// `crictl` against this node's containerd: the CRI as the kubelet sees it
    /// (`scripts/build-tools.sh` builds crictl).
    pub fn crictl(&self, args: &[&str]) -> Result<String> {
        let bin = crictl_bin();
        if !bin.is_file() {
            bail!("{} is missing: run scripts/build-tools.sh", bin.display());
        }
        let out = std::process::Command::new(&bin)
            .arg(format!(
                "--config={}",
                self.dir.join("crictl.yaml").display()
            ))
            .args(args)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "crictl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The host PID of the process a running container started (from containerd).
    pub fn container_pid(&self, container_id: &str) -> Result<u32> {
        let out = self.ctr(&["tasks", "ls"])?;
        let pid_in_machine: u32 = out
            .lines()
            .find_map(|line| {
                let mut f = line.split_whitespace();
                (f.next() == Some(container_id)).then(|| f.next()?.parse().ok())?
            })
            .with_context(|| format!("containerd runs no task {container_id}:\n{out}"))?;
        // containerd answers in the machine's PID namespace; the host sees another number.
        host_pid(pid_in_machine, self.machine.init_pid())
    }

    fn wait_containerd(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.processes.check_alive()?;
            if self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("containerd did not answer on its socket within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails, with its log's end, if containerd or the kubelet has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.processes.check_alive()
    }

    /// Stops kube-proxy, the kubelet, then containerd (the containers stop with the
    /// machine).
    pub fn stop(&mut self) {
        self.processes.stop();
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// crictl (sigs.k8s.io/cri-tools, its version pinned in scripts/common.sh).
pub fn crictl_bin() -> PathBuf {
    crate::tools::folder("CRICTL_BIN").join("crictl")
}

/// The host PID of the process whose PID in the machine is `inner`: among the machine
/// init's descendants, the one whose `NSpid` (its PID in each namespace, the host's first)
/// says `inner` in the machine's namespace.
fn host_pid(inner: u32, machine_init: u32) -> Result<u32> {
    let status = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
    let field = |text: &str, name: &str| -> Vec<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let descends_from_init = |mut pid: u32| {
        for _ in 0..64 {
            if pid == machine_init {
                return true;
            }
            match status(pid).and_then(|s| field(&s, "PPid:").first().copied()) {
                Some(parent) if parent > 1 => pid = parent,
                _ => return false,
            }
        }
        false
    };
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(text) = status(pid) else { continue };
        if field(&text, "NSpid:").get(1) == Some(&inner) && descends_from_init(pid) {
            return Ok(pid);
        }
    }
    bail!("no process is PID {inner} in the machine of PID {machine_init}")
}

/// The pod network: a bridge inside the machine, addresses from the machine's range.
fn cni_config(pod_cidr: &str, ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "llamanet",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": pod_cidr }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": ipam_dir,
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
    .to_string()
}

/// containerd's configuration: everything under `dir`, CRI with runc (cgroupfs) and the
/// CNI plugins Debian installs, OOM scores no lower than containerd's.
fn containerd_config_toml(dir: &Path) -> String {
    let d = |sub: &str| dir.join(sub).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # No process here may lower its OOM score (CAP_SYS_RESOURCE is not ours): containers
  # get at least containerd's own score instead of the kubelet's negative ones.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        socket = d("containerd/containerd.sock"),
        cni = d("cni/net.d"),
    )
}

/// The kubelet's configuration: cgroupfs under the machine's own cgroup, cgroup v1 and swap allowed, the API server's
/// client certificate trusted by the cluster CA, no eviction on a shared disk.
fn kubelet_config_yaml(machine: &Machine, dir: &Path, ca_file: &Path) -> String {
    let socket = dir.join("containerd/containerd.sock");
    let resolv = dir.join("kubelet/resolv.conf");
    // Pods with `dnsPolicy: Default` get this; the cluster's have CoreDNS.
    let _ = std::fs::write(&resolv, "nameserver 127.0.0.1\n");
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://{socket}
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
failCgroupV1: false
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: cluster.local
resolvConf: {resolv}
podLogsDir: {pod_logs}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
"#,
        address = machine.address(),
        socket = socket.display(),
        cgroup_root = machine.cgroup_root(),
        resolv = resolv.display(),
        pod_logs = dir.join("pod-logs").display(),
        ca = ca_file.display(),
    )
}

/// kube-proxy in iptables mode, inside the machine (its rules are the machine's own). It
/// leaves the host-wide conntrack table size as it is.
fn kube_proxy_config_yaml(node: &str, pod_cidr: &str, kubeconfig: &Path) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node}
clusterCIDR: {pod_cidr}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack:
  maxPerCore: 0
"#,
        kubeconfig = kubeconfig.display(),
    )
}
