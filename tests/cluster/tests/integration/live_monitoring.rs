//! LlamaNet read by the monitoring users run, on the test bed's real nodes: a real Prometheus (built
//! from the module promtool comes from) with `deploy/prometheus/prometheus.yml` and the
//! alert rules, finding the node and operator pods through Kubernetes service discovery; and
//! the Gateway API inference extension's real endpoint picker (EPP v1.5.0), pointed at an
//! InferencePool the chart made, with the configuration the chart ships.
//!
//! The cluster has two nodes, each a machine of its own: the operator (helm install) on one,
//! the InferenceNode's two replicas on the other. Under load the picker reports both pods ready and the same queue
//! sizes the nodes' own `/metrics` show, and every PromQL expression of every dashboard panel
//! returns data. A pool whose InferenceNode does not exist has no ready pods. Then the node
//! machine dies (its kubelet and every process on it, SIGKILL): the picker drops the pods
//! whose metrics stopped, Prometheus marks their targets down, and the heartbeat-lost alert
//! goes pending and then firing within its `for:` window.
//!
//! Needs `scripts/build-tools.sh` (Prometheus, EPP, the InferencePool CRD), the default model
//! and the workspace's release binaries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use llamanet_cluster::control_plane::free_port;
use llamanet_cluster::testing::{dashboard_exprs, default_model, eventually, get_json, repo_root};
use llamanet_cluster::{Cluster, ClusterConfig};
use serde_json::Value;

const NAME: &str = "gemma-cpu";
const OPERATOR_NODE: &str = "local-node-0";
const MODEL_NODE: &str = "local-node-1";
/// Grafana panels that need an NVIDIA GPU (NVML): this machine has none, so no series.
const GPU_ONLY: &str = "llamanet_gpu_";

/// A process of this test (Prometheus, a picker), its output in a file; killed on drop, and
/// the end of its log printed when the test failed.
struct Daemon {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, command: &mut Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
        Daemon { name, child, log }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("----- {} (last 40 lines) -----", self.name);
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// The value of the sample of `name` whose label set contains every `labels` pair, in
/// Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn text(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http.get(url).send().await.ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}

/// The result list of an instant PromQL query; `None` while Prometheus does not answer.
/// A query Prometheus refuses fails the test.
async fn query(http: &reqwest::Client, prometheus: &str, expr: &str) -> Option<Vec<Value>> {
    let body: Value = http
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    assert_eq!(body["status"], "success", "{expr}: {body}");
    Some(
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
}

/// Every panel query of `deploy/grafana/*.json`, with the dashboard it is on, Grafana's
/// variables replaced as Grafana would for "all namespaces, all pods".
fn dashboard_queries() -> Vec<(String, String)> {
    dashboard_exprs()
        .into_iter()
        .map(|(file, expr)| {
            // Scrapes every second here: Grafana's $__rate_interval would be 4 of them.
            let expr = expr
                .replace("$__rate_interval", "15s")
                .replace("$namespace", ".*")
                .replace("$pod", ".*");
            (file, expr)
        })
        .collect()
}

/// `deploy/prometheus/prometheus.yml` as a user runs it outside the cluster: with the
/// cluster's kubeconfig added to each service discovery, the rule file's path made
/// absolute, and scrapes and evaluations every second so the test takes seconds, not
/// minutes (the alert's `for:` is the rule file's own).
fn prometheus_config(kubeconfig: &Path) -> String {
    let deploy = repo_root().join("deploy/prometheus");
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(deploy.join("prometheus.yml")).unwrap())
            .unwrap();
    config["global"]["scrape_interval"] = "1s".into();
    config["global"]["evaluation_interval"] = "1s".into();
    let rules = config["rule_files"].as_sequence_mut().unwrap();
    assert_eq!(rules.len(), 1);
    rules[0] = deploy
        .join(rules[0].as_str().unwrap())
        .to_str()
        .unwrap()
        .into();
    let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
    assert_eq!(
        jobs.len(),
        2,
        "a job for the nodes and one for the operator"
    );
    for job in jobs {
        for sd in job["kubernetes_sd_configs"].as_sequence_mut().unwrap() {
            sd["kubeconfig_file"] = kubeconfig.to_str().unwrap().into();
        }
    }
    serde_yaml_ng::to_string(&config).unwrap()
}

/// The endpoint picker for pool `pool` in `default`, with the chart's configuration, its
/// metrics on `127.0.0.1:<port>`.
fn picker(cluster: &Cluster, pool: &str, dir: &Path) -> (Daemon, String) {
    let config = cluster.kubectl_ok(
        &[
            "get",
            "configmap",
            &format!("{pool}-epp-config"),
            "-o",
            "jsonpath={.data.config\\.yaml}",
        ],
        None,
    );
    let file = dir.join(format!("{pool}-epp.yaml"));
    std::fs::write(&file, config).unwrap();
    let metrics = free_port().unwrap();
    let mut command = Command::new(llamanet_cluster::tools::file("EPP_BIN", "epp"));
    command
        .env("KUBECONFIG", cluster.kubeconfig())
        .args(["--pool-name", pool, "--pool-namespace", "default"])
        .arg("--config-file")
        .arg(&file)
        .args(["--grpc-port", &free_port().unwrap().to_string()])
        .args(["--grpc-health-port", &free_port().unwrap().to_string()])
        .args(["--metrics-port", &metrics.to_string()])
        .args([
            "--metrics-endpoint-auth=false",
            "--secure-serving=false",
            "--tracing=false",
            "--enable-pprof=false",
        ]);
    let name = if pool == NAME { "epp" } else { "epp-missing" };
    (
        Daemon::start(name, &mut command, dir),
        format!("http://127.0.0.1:{metrics}/metrics"),
    )
}

/// Streaming chats in a loop against `ip` from `clients` clients, until `stop`.
fn load(ip: String, clients: usize, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<u32>> {
    (0..clients)
        .map(|i| {
            let (ip, stop) = (ip.clone(), stop.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut answered = 0;
                while !stop.load(Ordering::Relaxed) {
                    let sent = http
                        .post(format!("http://{ip}:8080/v1/chat/completions"))
                        .json(&serde_json::json!({
                            "model": "gemma-3-270m",
                            "messages": [{"role": "user", "content": format!("Count to {} in words.", 20 + i)}],
                            "max_tokens": 48,
                            "stream": true,
                        }))
                        .timeout(Duration::from_secs(60))
                        .send()
                        .await;
                    if let Ok(response) = sent
                        && response.status().is_success()
                        && response.bytes().await.is_ok()
                    {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect()
}

async fn node_pods(cluster: &Cluster) -> BTreeMap<String, String> {
    Api::<Pod>::namespaced(cluster.client(), "default")
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={NAME}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|pod| {
            let name = pod.metadata.name.unwrap();
            let ip = pod.status.and_then(|s| s.pod_ip).unwrap();
            (name, ip)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_the_endpoint_picker_read_llamanet() {
    let prometheus_bin = llamanet_cluster::tools::file("PROMETHEUS_BIN", "prometheus");
    assert!(default_model().is_file(), "run scripts/fetch-model.sh");
    let started = Instant::now();
    let mut cluster = Cluster::start(ClusterConfig {
        nodes: 2,
        ..ClusterConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The inference extension's CRD, then the chart with two pools: one for the resource
    // applied below, one for a resource that does not exist.
    cluster.install_inference_pool_crd();
    let hostname = format!("nodeSelector.kubernetes\\.io/hostname={OPERATOR_NODE}");
    cluster.install_chart_with(&[
        "--set",
        &hostname,
        "--set",
        &format!("inferencePools[0].inferenceNode={NAME}"),
        "--set",
        "inferencePools[0].namespace=default",
        "--set",
        "inferencePools[1].inferenceNode=missing",
        "--set",
        "inferencePools[1].namespace=default",
    ]);
    let pools = cluster.kubectl_ok(&["get", "inferencepools", "-o", "name"], None);
    assert_eq!(
        pools.lines().collect::<Vec<_>>(),
        [
            format!("inferencepool.inference.networking.k8s.io/{NAME}"),
            "inferencepool.inference.networking.k8s.io/missing".into()
        ]
    );

    let example = cluster.cpu_example().replace(
        "spec:\n  replicas: 1\n",
        &format!(
            "spec:\n  replicas: 2\n  nodeSelector:\n    kubernetes.io/hostname: {MODEL_NODE}\n"
        ),
    );
    assert!(example.contains(MODEL_NODE), "the example's spec moved");
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&example));
    cluster.wait_inference_node_ready(NAME);
    let pods = node_pods(&cluster).await;
    assert_eq!(pods.len(), 2);
    eprintln!("{NAME} Ready {:?} after start: {pods:?}", started.elapsed());

    // Prometheus with the shipped configuration and rules.
    let web = free_port().unwrap();
    let prometheus = format!("http://127.0.0.1:{web}");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        prometheus_config(cluster.kubeconfig()),
    )
    .unwrap();
    let _prometheus = Daemon::start(
        "prometheus",
        Command::new(&prometheus_bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}")),
        dir.path(),
    );
    let (_picker, picker_metrics) = picker(&cluster, NAME, dir.path());
    let (_missing, missing_metrics) = picker(&cluster, "missing", dir.path());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // Every target found through service discovery and up: two node pods, two operators.
    eventually(Duration::from_secs(60), "4 targets up", || async {
        let up = query(&http, &prometheus, "up == 1").await?;
        (up.len() == 4).then_some(())
    })
    .await;
    let jobs = query(&http, &prometheus, "count by (job) (up)")
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let rules = get_json(&http, &format!("{prometheus}/api/v1/rules"))
        .await
        .unwrap();
    let groups: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(groups.contains(&"llamanet-swarm"), "{groups:?}");

    // Load: 7 streaming clients per replica, which has 4 slots, so 3 wait.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = pods
        .values()
        .flat_map(|ip| load(ip.clone(), 7, stop.clone()))
        .collect();

    // The picker sees both pods ready and the queues the nodes report. A node's queue moves
    // as requests finish, so a match is read between two equal readings of the picker.
    let ready =
        |text: &str, pool: &str| sample(text, "inference_pool_ready_pods", &[("name", pool)]);
    let picker_counts = |pods: f64, what: &'static str, within: u64| {
        let (http, url) = (&http, &picker_metrics);
        eventually(Duration::from_secs(within), what, move || async move {
            let text = text(http, url).await?;
            (ready(&text, NAME) == Some(pods)).then_some(())
        })
    };
    picker_counts(2.0, "the picker reports 2 ready pods", 60).await;
    for (pod, ip) in &pods {
        let rank = format!("{pod}-rank-0");
        let labels = [("name", NAME), ("model_server_pod", rank.as_str())];
        let matched = eventually(
            Duration::from_secs(90),
            &format!("the picker's queue size of {pod} matches the node's own"),
            || async {
                let before = text(&http, &picker_metrics).await?;
                let own = text(&http, &format!("http://{ip}:8080/metrics")).await?;
                let after = text(&http, &picker_metrics).await?;
                let own = sample(&own, "llamanet_queue_depth", &[])?;
                let before = sample(&before, "inference_pool_per_pod_queue_size", &labels)?;
                let after = sample(&after, "inference_pool_per_pod_queue_size", &labels)?;
                (own > 0.0 && before == own && after == own).then_some(own)
            },
        )
        .await;
        eprintln!("{pod}: {matched} waiting, the node and the picker agree");
    }
    let missing = text(&http, &missing_metrics).await.unwrap_or_default();
    assert_eq!(
        ready(&missing, "missing").unwrap_or(0.0),
        0.0,
        "a pool whose InferenceNode does not exist has no ready pods:\n{missing}"
    );
    assert!(
        sample(
            &missing,
            "inference_pool_per_pod_queue_size",
            &[("name", "missing")]
        )
        .is_none(),
        "{missing}"
    );

    // Every dashboard panel has data (GPU panels aside: no NVML here).
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut empty = Vec::new();
    let mut gpu = 0;
    let queries = dashboard_queries();
    assert!(queries.len() > 40, "{} panel queries", queries.len());
    for (board, expr) in &queries {
        let series = query(&http, &prometheus, expr).await.unwrap();
        if expr.contains(GPU_ONLY) {
            gpu += 1;
            assert!(series.is_empty(), "a GPU series without a GPU: {expr}");
        } else if series.is_empty() {
            empty.push(format!("{board}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data under load:\n{}",
        empty.join("\n")
    );
    eprintln!(
        "{} panel queries returned data ({gpu} GPU-only ones none, as expected)",
        queries.len() - gpu
    );
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for client in clients {
        answered += client.await.unwrap();
    }
    assert!(answered > 0);
    eprintln!("{answered} chats answered under load");

    // The machine under both replicas dies.
    cluster.crash_node(MODEL_NODE);
    let crashed = Instant::now();
    picker_counts(0.0, "the picker drops the dead pods", 30).await;
    eprintln!(
        "the picker counted 0 ready pods {:?} after the crash",
        crashed.elapsed()
    );
    // Their targets fail, and go once the operator replaces the silent replicas (the new
    // pods stay Pending without an address: their node is gone), so what holds throughout
    // is that no node target is up.
    eventually(Duration::from_secs(30), "no node target up", || async {
        let up = query(&http, &prometheus, r#"up{job="llamanet-nodes"} == 1"#).await?;
        up.is_empty().then_some(())
    })
    .await;
    let alert_state = || async {
        let body = get_json(&http, &format!("{prometheus}/api/v1/alerts")).await?;
        body["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "LlamaNetHeartbeatLost"
                    && a["labels"]["name"] == NAME
                    && a["labels"]["namespace"] == "default"
            })
            .map(|a| a["state"].as_str().unwrap_or_default().to_owned())
    };
    let alert_becomes = |state: &'static str, what: &'static str, within: u64| {
        let alert_state = &alert_state;
        eventually(Duration::from_secs(within), what, move || async move {
            (alert_state().await.as_deref() == Some(state)).then_some(())
        })
    };
    // Heartbeats every 2 s (the chart's default); the rule wants an age over 30 s for 1 m.
    alert_becomes("pending", "LlamaNetHeartbeatLost pending", 60).await;
    let pending = crashed.elapsed();
    alert_becomes("firing", "LlamaNetHeartbeatLost firing", 120).await;
    let firing = crashed.elapsed();
    eprintln!("LlamaNetHeartbeatLost pending {pending:?} and firing {firing:?} after the crash");
    // The age counts from the last heartbeat before the crash, up to one interval (2 s) and
    // a scrape's timestamp earlier than the crash: a cold CI run saw 27.6 s.
    assert!(
        pending >= Duration::from_secs(26),
        "pending before the 30 s threshold: {pending:?}"
    );
    assert!(
        firing >= pending + Duration::from_secs(59) && firing <= Duration::from_secs(30 + 60 + 20),
        "firing not within the rule's window: pending {pending:?}, firing {firing:?}"
    );
}
