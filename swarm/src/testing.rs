//! Helpers for the swarm's integration tests, here and in other crates (cargo feature
//! `testing`): loopback node configurations, statuses, and time-bounded waiting. Every
//! network test uses 127.0.0.1 only.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::{self as swarm, Backoff, ModelInfo, NodeStatus, SwarmConfig, SwarmHandle};
use libp2p::Multiaddr;

/// Heartbeat interval of test nodes: short, so expiry (3 intervals) is quick.
pub const INTERVAL: Duration = Duration::from_millis(500);

/// Logs to the test's captured output (shown on failure); `RUST_LOG` overrides the level.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "llamanet_node=info,llamanet_swarm=info".into()),
        )
        .try_init();
}

/// A full node on a random loopback port with fast timers.
pub fn node_config(bootstrap: Vec<Multiaddr>) -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        bootstrap_backoff: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
        },
        heartbeat_interval: INTERVAL,
        gossip_heartbeat: Duration::from_millis(200),
        query_timeout: Duration::from_secs(5),
        ..SwarmConfig::default()
    }
}

/// A healthy node serving `model` (or nothing: a router-only node).
pub fn status(model: Option<&str>) -> NodeStatus {
    NodeStatus {
        endpoints: vec!["http://127.0.0.1:8080".into()],
        models: model
            .map(|id| ModelInfo {
                id: id.into(),
                context_size: 2048,
                quantization: "Q4_K_M".into(),
                fingerprint: String::new(),
            })
            .into_iter()
            .collect(),
        slots_total: if model.is_some() { 4 } else { 0 },
        healthy: true,
        version: "test".into(),
        cluster: "loopback".into(),
        ..NodeStatus::default()
    }
}

/// Starts a node with a fresh identity.
pub async fn start_node(bootstrap: Vec<Multiaddr>, model: Option<&str>) -> SwarmHandle {
    let config = SwarmConfig {
        initial_status: status(model),
        ..node_config(bootstrap)
    };
    swarm::start(swarm::identity::ephemeral(), config)
        .await
        .expect("swarm starts")
}

/// The address others bootstrap from.
pub fn addr_of(node: &SwarmHandle) -> Multiaddr {
    node.dialable_addrs()
        .into_iter()
        .next()
        .expect("listening node has an address")
}

/// Polls `check` every 20 ms until it holds; returns how long that took, or panics naming
/// `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a whole test body under a hard time limit, so a hang fails instead of stalling CI.
pub async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {limit:?} budget"))
}
