//! Helpers for tests that drive a [`Cluster`]: waiting for a condition with a deadline, and
//! `kubectl` with input and a clear failure message.

use std::future::Future;
use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::Cluster;

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Prometheus Operator's CRDs (PodMonitor, ServiceMonitor, PrometheusRule) that
/// scripts/build-tools.sh fetched from the Go module proxy.
pub fn monitoring_crds() -> std::path::PathBuf {
    let dir = crate::control_plane::cache_dir().join("prometheus-operator-v0.85.0/crds");
    assert!(
        dir.join("monitoring.coreos.com_podmonitors.yaml").is_file(),
        "{} missing: run scripts/build-tools.sh",
        dir.display()
    );
    dir
}

/// The workspace root: the first folder above the running test's crate that holds
/// `Cargo.lock`. Found at run time from `CARGO_MANIFEST_DIR` (cargo sets it for every
/// test), not baked in at build time: a test binary reused from a shared target folder may
/// have been built in another checkout.
pub fn repo_root() -> std::path::PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        std::path::PathBuf::from,
    );
    crate_dir
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(&crate_dir)
        .to_path_buf()
}

/// Every PromQL expression of the Grafana dashboards in `deploy/grafana/*.json` (each
/// target's `expr`; the variables' queries are `query`s), with the file it is in, in file
/// order.
pub fn dashboard_exprs() -> Vec<(String, String)> {
    fn exprs(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match v {
                        serde_json::Value::String(expr) if key == "expr" => {
                            found.push(expr.clone())
                        }
                        _ => exprs(v, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, found)),
            _ => {}
        }
    }
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(repo_root().join("deploy/grafana"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let board: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut found = Vec::new();
        exprs(&board, &mut found);
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        out.extend(found.into_iter().map(|expr| (file.clone(), expr)));
    }
    out
}

/// The default model: `$LLAMANET_MODEL`, else where scripts/fetch-model.sh caches it.
pub fn default_model() -> std::path::PathBuf {
    let model = std::env::var_os("LLAMANET_MODEL")
        .map(Into::into)
        .unwrap_or_else(|| {
            crate::control_plane::cache_dir().join("models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        model.is_file(),
        "{} missing: run scripts/fetch-model.sh",
        model.display()
    );
    model
}

impl Cluster {
    /// Applies the InferenceNode CRD from `crds/` and waits until it is served.
    pub fn install_crd(&self) {
        let crd = repo_root().join("crds/inferencenode.yaml");
        self.kubectl_ok(
            &["apply", "--server-side", "-f", crd.to_str().unwrap()],
            None,
        );
        self.wait_for(
            "condition=Established",
            &["crd/inferencenodes.llamanet.io"],
            Duration::from_secs(60),
        );
    }

    /// `deploy/examples/cpu-node.yaml` as a user applies it, its hostPath pointing at the
    /// default model linked into this cluster's folder (pods run as uid 65532, so the file
    /// sits where they can read it).
    pub fn cpu_example(&self) -> String {
        self.example("cpu-node.yaml")
    }

    /// `deploy/examples/<file>` with its model path pointing at the cached default model.
    pub fn example(&self, file: &str) -> String {
        let models = self.dir().join("models");
        std::fs::create_dir_all(&models).unwrap();
        let host_model = models.join("gemma-3-270m-q4_k_m.gguf");
        if !host_model.exists() && std::fs::hard_link(default_model(), &host_model).is_err() {
            std::fs::copy(default_model(), &host_model).unwrap();
        }
        let example =
            std::fs::read_to_string(repo_root().join("deploy/examples").join(file)).unwrap();
        let path = "/var/lib/llamanet/models/gemma-3-270m-q4_k_m.gguf";
        assert!(example.contains(path), "the example's model path moved");
        example.replace(path, host_model.to_str().unwrap())
    }
}

impl Cluster {
    /// Installs the Prometheus Operator's CRDs and waits until they are served.
    pub fn install_monitoring_crds(&self) {
        let dir = monitoring_crds();
        self.kubectl_ok(
            &["apply", "--server-side", "-f", dir.to_str().unwrap()],
            None,
        );
        self.wait_for(
            "condition=Established",
            &[
                "crd/podmonitors.monitoring.coreos.com",
                "crd/servicemonitors.monitoring.coreos.com",
                "crd/prometheusrules.monitoring.coreos.com",
            ],
            Duration::from_secs(60),
        );
    }

    /// Installs the Gateway API inference extension's InferencePool CRD (fetched by
    /// scripts/build-tools.sh) and waits until it is served.
    pub fn install_inference_pool_crd(&self) {
        let crd = crate::tools::file(
            "INFERENCE_CRDS",
            "inference.networking.k8s.io_inferencepools.yaml",
        );
        self.kubectl_ok(
            &["apply", "--server-side", "-f", crd.to_str().unwrap()],
            None,
        );
        self.wait_for(
            "condition=Established",
            &["crd/inferencepools.inference.networking.k8s.io"],
            Duration::from_secs(60),
        );
    }
}

/// helm as scripts/build-tools.sh built it (`$LLAMANET_HELM` overrides).
pub fn helm() -> std::path::PathBuf {
    crate::tools::file_or_env("LLAMANET_HELM", "HELM_BIN", "helm")
}

/// The release namespace the tests install the chart into, as the main job does.
pub const RELEASE_NS: &str = "llamanet-system";

impl Cluster {
    /// Runs `helm args...` against this cluster; panics with helm's output unless it
    /// succeeds, returns its stdout.
    pub fn helm_ok(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(helm())
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .expect("helm runs");
        assert!(
            out.status.success(),
            "helm {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `helm install llamanet charts/llamanet` into [`RELEASE_NS`], waiting for the operator.
    pub fn install_chart(&self) {
        self.install_chart_with(&[]);
    }

    /// `helm install` of the chart with more arguments (`--set` values).
    pub fn install_chart_with(&self, extra: &[&str]) {
        let chart = repo_root().join("charts/llamanet");
        let mut args = vec![
            "install",
            "llamanet",
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
        ];
        args.extend_from_slice(extra);
        self.helm_ok(&args);
    }

    /// The pre-shared key file in a Secret's `psk` entry.
    pub fn swarm_key(&self, namespace: &str, secret: &str) -> String {
        use base64::Engine;
        let encoded = self.kubectl_ok(
            &[
                "get",
                "secret",
                "-n",
                namespace,
                secret,
                "-o",
                "jsonpath={.data.psk}",
            ],
            None,
        );
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .expect("a base64 Secret value");
        String::from_utf8(bytes).expect("a key file is text")
    }
}

/// Live processes whose command line (arguments joined by spaces) contains `marker`, as
/// `(pid, uid)`: how tests find the process of a pod's container.
pub fn processes_with(marker: &str) -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(marker)
        {
            continue;
        }
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse().ok())
            .unwrap_or(u32::MAX);
        found.push((pid, uid));
    }
    found
}

impl Cluster {
    /// Runs `kubectl args...` against this cluster with `stdin` as its input.
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        let mut input = child.stdin.take().expect("piped stdin");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .expect("kubectl reads its input");
        }
        drop(input);
        child.wait_with_output().expect("kubectl finishes")
    }

    /// Waits (`kubectl wait`, up to 240 s) until InferenceNode `name` is Ready.
    /// The InferenceNode `name` in `default` as the API server has it (`kubectl get -o json`).
    pub fn inference_node(&self, name: &str) -> serde_json::Value {
        let json = self.kubectl_ok(&["get", "inferencenode", name, "-o", "json"], None);
        serde_json::from_str(&json).expect("kubectl prints JSON")
    }

    pub fn wait_inference_node_ready(&self, name: &str) {
        self.wait_for(
            "condition=Ready",
            &[&format!("inferencenode/{name}")],
            Duration::from_secs(240),
        );
    }

    /// `kubectl wait --for=<what> <resources>`, up to `timeout`, panicking with kubectl's
    /// stderr when it does not come true.
    ///
    /// kubectl gives up at once, instead of waiting, while an object's
    /// `status.conditions` is still `null` (a CRD in the instant after it is created:
    /// "accessor error: <nil> is of the type <nil>"); that is retried until the deadline.
    pub fn wait_for(&self, what: &str, resources: &[&str], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let for_ = format!("--for={what}");
            let timeout_ = format!("--timeout={}ms", left.as_millis().max(1));
            let mut args = vec!["wait", &for_, &timeout_];
            args.extend_from_slice(resources);
            let out = self.kubectl_run(&args, None);
            let stderr = String::from_utf8_lossy(&out.stderr);
            let not_written_yet = stderr.contains("accessor error: <nil>");
            if out.status.success() || !not_written_yet || Instant::now() >= deadline {
                assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like [`Cluster::kubectl_run`], but panics with kubectl's stderr unless it succeeds;
    /// returns its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl_run(args, stdin);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("kubectl prints UTF-8")
    }
}

/// `GET url` as JSON; `None` on any failure (for polling with [`eventually`]).
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    client.get(url).send().await.ok()?.json().await.ok()
}

/// `llamanet router` as a process on loopback, joining the swarm through `bootstrap` with
/// `extra` arguments (a swarm key, hold limits); killed on drop. Its log goes to a file whose
/// end is printed when the test that holds it fails.
pub struct RouterProcess {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

impl RouterProcess {
    pub fn start(bootstrap: &str, extra: &[&str]) -> Self {
        let port = crate::control_plane::free_port().unwrap().to_string();
        let bin = crate::cluster::default_workspace_bin_dir().join("llamanet");
        let log = tempfile::NamedTempFile::new().expect("a file for the router's log");
        let child = std::process::Command::new(bin)
            .args(["router", "--host", "127.0.0.1", "--port", &port])
            .args(["--swarm-listen", "/ip4/127.0.0.1/tcp/0"])
            .args(["--bootstrap", bootstrap])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("the router's log file"))
            .spawn()
            .expect("llamanet router starts");
        RouterProcess {
            child,
            log,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The router's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            eprintln!(
                "the router's log (last {} lines):\n{}",
                tail.len(),
                tail.join("\n")
            );
        }
    }
}
