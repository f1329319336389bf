//! What the operator's end-to-end tests share: operator replicas running in the test process,
//! each on its own tokio runtime so that one can be killed outright (its runtime dropped: no
//! Lease release, no goodbye on the swarm, like a crashed pod).

use std::path::PathBuf;
use std::time::Duration;

use llamanet_cluster::Cluster;
use llamanet_operator::config::{LeaderElection, OperatorConfig, RunConfig};
use llamanet_operator::heartbeat::HeartbeatTable;
use llamanet_operator::swarm_peer::{self, SwarmPeerConfig};
use tokio::sync::oneshot;

pub fn repo_root() -> PathBuf {
    llamanet_cluster::testing::repo_root()
}

/// How a replica runs.
pub struct OperatorOptions {
    pub config: OperatorConfig,
    /// Compete for the Lease in this namespace; `None` acts at once.
    pub leader_election: Option<String>,
    /// Join the swarm as the operator binary does (`--swarm-listen`), so that node pods'
    /// heartbeats reach the status.
    pub swarm: Option<SwarmPeerConfig>,
}

/// One operator replica on its own runtime.
pub struct Operator {
    pub identity: String,
    pub metrics_port: u16,
    pub heartbeats: HeartbeatTable,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Operator {
    /// A replica with the default configuration, competing for the Lease in `namespace`.
    pub fn start(cluster: &Cluster, identity: &str, namespace: &str) -> Self {
        Self::start_with(
            cluster,
            identity,
            OperatorOptions {
                config: OperatorConfig::default(),
                leader_election: Some(namespace.to_owned()),
                swarm: None,
            },
        )
    }

    /// A replica without leader election that is also the swarm's meeting point: it listens
    /// on a free port where the cluster's pods reach this host, and every replica bootstraps from it, with heartbeats every
    /// second; with `swarm_key` (the key file's text) the swarm is private. Returns it and
    /// its swarm address.
    pub fn meeting_point(
        cluster: &Cluster,
        identity: &str,
        swarm_key: Option<String>,
    ) -> (Self, String) {
        let swarm_port = llamanet_cluster::control_plane::free_port().unwrap();
        // Where the pods reach this host (loopback for the process kubelet's pods).
        let addr = format!("/ip4/{}/tcp/{swarm_port}", cluster.host_address());
        let key_file = swarm_key.as_ref().map(|key| {
            let file = cluster.dir().join(format!("{identity}-swarm.key"));
            std::fs::write(&file, key).unwrap();
            file
        });
        let operator = Self::start_with(
            cluster,
            identity,
            OperatorOptions {
                config: OperatorConfig {
                    bootstrap_peers: vec![addr.clone()],
                    heartbeat_interval: Duration::from_secs(1),
                    swarm_key,
                    ..OperatorConfig::default()
                },
                leader_election: None,
                swarm: Some(SwarmPeerConfig {
                    listen: vec![addr.parse().unwrap()],
                    bootstrap: vec![],
                    identity: None,
                    swarm_key: key_file,
                }),
            },
        );
        (operator, addr)
    }

    pub fn start_with(cluster: &Cluster, identity: &str, options: OperatorOptions) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics_port = llamanet_cluster::control_plane::free_port().unwrap();
        let heartbeats = HeartbeatTable::default();
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        let config = RunConfig {
            operator: options.config,
            metrics_addr: Some(([127, 0, 0, 1], metrics_port).into()),
            leader_election: options.leader_election.map(LeaderElection::in_namespace),
            identity: identity.to_owned(),
        };
        let kubeconfig = cluster.kubeconfig().to_path_buf();
        let table = heartbeats.clone();
        runtime.spawn(async move {
            // Its own client and swarm peer, so that they die with its runtime.
            let swarm = match options.swarm {
                Some(swarm) => Some(swarm_peer::start(swarm, table.clone()).await.unwrap()),
                None => None,
            };
            let client = llamanet_cluster::control_plane::client_from_kubeconfig(&kubeconfig)
                .await
                .unwrap();
            let shutdown = async move {
                let _ = shutdown_rx.await;
            };
            llamanet_operator::run(client, config, table, swarm, shutdown)
                .await
                .unwrap();
            let _ = done_tx.send(());
        });
        Self {
            identity: identity.to_owned(),
            metrics_port,
            heartbeats,
            runtime: Some(runtime),
            shutdown: Some(shutdown_tx),
            done: Some(done_rx),
        }
    }

    /// Graceful stop: what SIGTERM does. Returns once `run` has returned.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(30), done)
                .await
                .expect("operator stops within 30 s")
                .expect("operator ran to its end");
        }
    }

    /// Like a crash: every task of this replica ends at once, nothing is released.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Status and body of a GET on its metrics server; status 0 while it does not listen yet.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let url = format!("http://127.0.0.1:{}{path}", self.metrics_port);
        match reqwest::get(url).await {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap()),
            Err(_) => (0, String::new()),
        }
    }

    /// A counter or gauge sample from /metrics (0 when absent).
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}
