//! What the operator is configured with (from its command line): [`OperatorConfig`] shapes
//! the children it builds and the status it computes, [`RunConfig`] how the process runs (web
//! server, leader election). Parsing lives in `main.rs`; these are plain values with the
//! defaults in one place.

use std::net::SocketAddr;
use std::time::Duration;

/// Image of the node when neither the resource nor the command line names one. The tag is
/// this crate's version, so an operator release runs the node release it was built with.
pub const DEFAULT_NODE_IMAGE: &str =
    concat!("ghcr.io/llamanet/llamanet-node:", env!("CARGO_PKG_VERSION"));

/// Image of the LlamaNet container beside an external engine (`llamanet sidecar`): the same
/// binary built without the engine, so it carries no llama.cpp.
pub const DEFAULT_ROUTER_IMAGE: &str = concat!(
    "ghcr.io/llamanet/llamanet-router:",
    env!("CARGO_PKG_VERSION")
);

/// How often nodes send heartbeats unless configured otherwise: three missed ones (6 s) plus a
/// status patch stay within the 10 s the operator promises for noticing a lost replica.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Node image for resources without `spec.image`.
    pub default_image: String,
    /// Image of the sidecar beside an external engine, for resources without `spec.image`.
    pub router_image: String,
    /// Multiaddrs every node bootstraps from besides `spec.swarm.bootstrapPeers`: the
    /// operator's own swarm Service, so all nodes of a cluster meet through it.
    pub bootstrap_peers: Vec<String>,
    /// Interval at which nodes send heartbeats; staleness is judged in multiples of it.
    pub heartbeat_interval: Duration,
    /// The pre-shared key the operator's own swarm uses (the key file's text): replicas of
    /// resources that name no key of their own get a copy, so the swarm is private by
    /// default. `None`: a public swarm.
    pub swarm_key: Option<String>,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image: DEFAULT_NODE_IMAGE.to_owned(),
            router_image: DEFAULT_ROUTER_IMAGE.to_owned(),
            bootstrap_peers: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            swarm_key: None,
        }
    }
}

/// Where `/metrics`, `/healthz` and `/readyz` are served unless configured otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:8080";

/// Name of the Lease the operator replicas compete for.
pub const DEFAULT_LEASE_NAME: &str = "llamanet-operator";
/// How long a Lease holds without renewal: a crashed leader's successor waits this long.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews: three tries fit in one lease duration.
pub const DEFAULT_RENEW_PERIOD: Duration = Duration::from_secs(5);
/// A leader that could not renew for this long stops acting; shorter than the lease duration,
/// so it has stopped before a successor can take over.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often a standby looks at the Lease.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// How the operator process runs around the controller.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub operator: OperatorConfig,
    /// Address of the metrics and probes server; `None` serves nothing (tests).
    pub metrics_addr: Option<SocketAddr>,
    /// Compete for a Lease and act only while holding it; `None` acts at once, alone.
    pub leader_election: Option<LeaderElection>,
    /// Who this replica is, in events and the Lease (the pod name in a cluster).
    pub identity: String,
}

/// The Lease that decides which operator replica acts, and its timing.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderElection {
    pub lease_name: String,
    pub namespace: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderElection {
    /// The default timing for the Lease `DEFAULT_LEASE_NAME` in `namespace`.
    pub fn in_namespace(namespace: impl Into<String>) -> Self {
        Self {
            lease_name: DEFAULT_LEASE_NAME.to_owned(),
            namespace: namespace.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_period: DEFAULT_RENEW_PERIOD,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }
}

/// This replica's name in the Lease and in Events: `POD_NAME` (the downward API) in a
/// cluster, else `<hostname>-<pid>`, unique among processes on one machine too.
pub fn default_identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| DEFAULT_LEASE_NAME.to_owned());
    format!("{host}-{}", std::process::id())
}
