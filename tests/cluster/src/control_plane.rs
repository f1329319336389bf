//! The control plane: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, started in the first node's machine (or, for a cluster without
//! nodes, on this host's loopback with free ports).
//!
//! Everything lives in one folder: the PKI (generated here with rcgen), each
//! component's data and log file, and an admin kubeconfig with embedded
//! credentials. Dropping a [`ControlPlane`] stops every process; each child
//! also gets `PR_SET_PDEATHSIG`, so a killed parent leaves no orphans.
//! Pods run on the real nodes: see [`crate::real_node`].

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::machine::Machine;
use crate::process::{ManagedProcess, Processes};

/// The Kubernetes version the Go module in `tests/cluster/k8s` builds.
pub const K8S_VERSION: &str = "v1.34.4";

/// Where the control plane binaries are, and where its state goes.
#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Folder holding `etcd`, `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`.
    pub bin_dir: PathBuf,
    /// State folder (PKI, etcd data, logs, kubeconfig). Created if missing.
    pub dir: PathBuf,
    /// Where the components run: on this host's loopback (`None`), or inside a machine
    /// (as kind's control-plane node), reached at the machine's address.
    pub machine: Option<Arc<Machine>>,
}

impl ControlPlaneConfig {
    /// The binaries as `scripts/build-k8s.sh` caches them, in `dir`.
    pub fn cached(dir: impl Into<PathBuf>) -> Self {
        Self {
            bin_dir: default_bin_dir(),
            dir: dir.into(),
            machine: None,
        }
    }
}

/// `$LLAMANET_K8S_BIN`, else `$LLAMANET_CACHE/k8s-<version>/bin`, else
/// `~/.cache/llamanet/k8s-<version>/bin`.
pub fn default_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLAMANET_K8S_BIN") {
        return dir.into();
    }
    cache_dir().join(format!("k8s-{K8S_VERSION}")).join("bin")
}

/// The project's cache folder outside any clone (`$LLAMANET_CACHE` or `~/.cache/llamanet`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LLAMANET_CACHE") {
        return dir.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("llamanet")
}

/// A running control plane. Dropping it stops every component.
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server: String,
    service_cidr: String,
    pki: Pki,
    // Stopped in reverse start order by `stop`.
    processes: Processes,
}

impl ControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler,
    /// and returns once `/readyz` answers `ok`.
    pub async fn start(config: &ControlPlaneConfig) -> Result<Self> {
        let dir = &config.dir;
        for bin in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            let path = config.bin_dir.join(bin);
            if !path.is_file() {
                bail!(
                    "{} is missing: run scripts/build-k8s.sh (it builds the control plane {K8S_VERSION} from the Go module proxy)",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(dir.join("logs"))?;
        // On loopback each component takes a free port; a machine has all its ports free.
        let on_host = config.machine.is_none();
        let port = |fixed: u16| if on_host { free_port() } else { Ok(fixed) };
        let address = config
            .machine
            .as_ref()
            .map_or(Ipv4Addr::LOCALHOST, |m| m.address());
        let pki = Pki::generate(&dir.join("pki"), address)?;

        let etcd_port = port(2379)?;
        let etcd_peer_port = port(2380)?;
        let api_port = port(6443)?;
        let server = format!("https://{address}:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            pki.kubeconfig(&server, "admin", Some("system:masters"))?,
        )?;

        let mut plane = Self {
            dir: dir.clone(),
            kubeconfig,
            server,
            // Room for thousands of Services (the operator benchmark creates one per resource).
            service_cidr: "10.0.0.0/16".into(),
            pki,
            processes: Processes::default(),
        };
        let bin = |name: &str| config.bin_dir.join(name);
        let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
        let spawn = |name: &str, args: &[String]| match &config.machine {
            None => ManagedProcess::spawn(name, &bin(name), args, &log(name)),
            Some(machine) => machine.spawn(name, &bin(name), args, &log(name)),
        };

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        plane.processes.push(spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // A throwaway cluster: durability buys nothing and fsync is slow.
                "--unsafe-no-fsync=true".into(),
                "--log-level=warn".into(),
            ],
        )?);

        let pki_dir = plane.pki.dir.clone();
        let p = |f: &str| pki_dir.join(f).display().to_string();
        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", dir.join("apiserver").display()),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-cluster-ip-range={}", plane.service_cidr),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            // What `kubectl logs`, `exec` and `port-forward` present to a real kubelet.
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ];
        if on_host {
            api_args.extend([
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                // No nodes, no pods: only this host talks to it.
                "--endpoint-reconciler-type=none".into(),
            ]);
        } else {
            // Inside the machine every interface is the machine's own: its loopback, its
            // veth to this host and its pods' bridge. The `kubernetes` Service's endpoint
            // is the machine's address, which pods reach through the bridge.
            api_args.extend([
                "--bind-address=0.0.0.0".into(),
                format!("--advertise-address={address}"),
            ]);
        }
        plane.processes.push(spawn("kube-apiserver", &api_args)?);
        plane
            .wait_ready(Duration::from_secs(90))
            .await
            .context("kube-apiserver did not become ready")?;

        let kc = plane.kubeconfig.display().to_string();
        let cm_port = port(10257)?;
        plane.processes.push(spawn(
            "kube-controller-manager",
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={cm_port}"),
                format!("--cert-dir={}", dir.join("controller-manager").display()),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                format!("--cluster-signing-cert-file={}", p("ca.crt")),
                format!("--cluster-signing-key-file={}", p("ca.key")),
                "--use-service-account-credentials=true".into(),
                "--leader-elect=false".into(),
                // No cloud and no pod network to allocate.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller".into(),
            ],
        )?);
        let sched_port = port(10259)?;
        plane.processes.push(spawn(
            "kube-scheduler",
            &[
                format!("--kubeconfig={kc}"),
                format!("--authentication-kubeconfig={kc}"),
                format!("--authorization-kubeconfig={kc}"),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={sched_port}"),
                format!("--cert-dir={}", dir.join("scheduler").display()),
                "--leader-elect=false".into(),
            ],
        )?);
        Ok(plane)
    }

    /// A kubeconfig for this cluster whose client certificate says `user`, in `group` if
    /// given (a kubelet's is `system:node:<name>` in `system:nodes`).
    pub fn kubeconfig_for(&self, user: &str, group: Option<&str>) -> Result<String> {
        self.pki.kubeconfig(&self.server, user, group)
    }

    /// The cluster CA's certificate file (what kubelets check clients against).
    pub fn ca_file(&self) -> PathBuf {
        self.pki.dir.join("ca.crt")
    }

    /// The admin kubeconfig (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The state folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            self.processes.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) => last = body,
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("/readyz not ok after {timeout:?}: {last}")
    }

    /// Stops every component, newest first. Also done on drop.
    pub fn stop(&mut self) {
        self.processes.stop();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A kube client for a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

/// A port nobody listens on right now. Racy by nature, but the window is short
/// and every component fails loudly if it loses.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The cluster's certificates and keys, written as PEM files; the CA stays to issue
/// client certificates.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    /// The CA, the API server's serving certificate (for `address` too), its client
    /// certificate towards kubelets, and the service account key pair.
    fn generate(dir: &Path, address: Ipv4Addr) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let write = |name: &str, contents: &str| -> Result<()> {
            let path = dir.join(name);
            std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
        };

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name = dn("llamanet-local-ca", None);
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
        write("ca.crt", &ca.pem())?;
        write("ca.key", &ca.key().serialize_pem())?;

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".into(),
            "kubernetes.default".into(),
            "kubernetes.default.svc".into(),
            "kubernetes.default.svc.cluster.local".into(),
        ])?;
        for ip in [Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 1), address] {
            server
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(ip)));
        }
        server.distinguished_name = dn("kube-apiserver", None);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &ca)?;
        write("apiserver.crt", &server_cert.pem())?;
        write("apiserver.key", &server_key.serialize_pem())?;

        let sa_key = KeyPair::generate()?;
        write("sa.key", &sa_key.serialize_pem())?;
        write("sa.pub", &sa_key.public_key_pem())?;

        let pki = Self {
            dir: dir.to_path_buf(),
            ca,
        };
        let (cert, key) =
            pki.client_cert("kube-apiserver-kubelet-client", Some("system:masters"))?;
        write("apiserver-kubelet-client.crt", &cert)?;
        write("apiserver-kubelet-client.key", &key)?;
        Ok(pki)
    }

    /// A client certificate and its key (PEM) for `user`, in `group` if given.
    fn client_cert(&self, user: &str, group: Option<&str>) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A kubeconfig for `server` with embedded credentials of `user` (in `group`).
    fn kubeconfig(&self, server: &str, user: &str, group: Option<&str>) -> Result<String> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (cert, key) = self.client_cert(user, group)?;
        Ok(format!(
            "apiVersion: v1
kind: Config
clusters:
- name: llamanet-local
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: llamanet-local
  context:
    cluster: llamanet-local
    user: {user}
current-context: llamanet-local
",
            ca = b64(&self.ca.pem()),
            cert = b64(&cert),
            key = b64(&key),
        ))
    }
}

fn dn(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}
