//! The operator as a swarm peer: it listens on the swarm port (its Service is where the
//! node pods of this cluster bootstrap), takes part in the DHT, publishes no heartbeat of
//! its own, and offers every verified heartbeat that names an InferenceNode and pod to the
//! [`HeartbeatTable`], which keeps it only if its signer is that pod's own identity (and
//! then wakes that resource's reconciler). Refusals are counted there and logged here at
//! most once per signer a minute, so a flood of false claims costs no log volume.
//!
//! The swarm itself (transport, signatures, peer table) is `llamanet_swarm`, built
//! without the llama.cpp engine.

use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use llamanet_swarm::log_limit::LogLimit;
use llamanet_swarm::{self as swarm, PeerEvent, SwarmConfig, SwarmHandle};
use tokio::sync::broadcast::error::RecvError;

use crate::heartbeat::HeartbeatTable;
use crate::status::ReplicaHeartbeat;

/// How the operator joins the swarm.
#[derive(Clone, Debug)]
pub struct SwarmPeerConfig {
    pub listen: Vec<swarm::Multiaddr>,
    /// Peers of other clusters (the same list the nodes get).
    pub bootstrap: Vec<swarm::Multiaddr>,
    /// Key file for a stable peer id; a fresh key per start when `None`.
    pub identity: Option<PathBuf>,
    /// Pre-shared key file of a private swarm.
    pub swarm_key: Option<PathBuf>,
}

/// Starts the peer and the task that mirrors heartbeats into `table`.
pub async fn start(config: SwarmPeerConfig, table: HeartbeatTable) -> anyhow::Result<SwarmHandle> {
    let key = match &config.identity {
        Some(path) => swarm::identity::load_or_create(path)?.0,
        None => swarm::Keypair::generate_ed25519(),
    };
    let psk = config
        .swarm_key
        .as_deref()
        .map(swarm::load_psk)
        .transpose()?;
    let handle = swarm::start(
        key,
        SwarmConfig {
            listen: config.listen,
            bootstrap: config.bootstrap,
            publish_heartbeats: false,
            dht_server: true,
            psk,
            ..SwarmConfig::default()
        },
    )
    .await?;
    let mut events = handle.subscribe();
    tokio::spawn(async move {
        let mut quiet = LogLimit::default();
        loop {
            match events.recv().await {
                Ok(PeerEvent::Heartbeat(heartbeat)) => record(&table, &heartbeat, &mut quiet),
                Ok(_) => {}
                // Missed some: the next heartbeat of each replica comes within an interval.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "heartbeat events lagged");
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    tracing::info!(peer = %handle.peer_id(), addrs = ?handle.listen_addrs(), "joined the swarm");
    Ok(handle)
}

/// Offers a heartbeat that says which InferenceNode replica sent it to the table; others
/// (nodes run by hand, tools, other clusters' replicas) are not the operator's business.
fn record(table: &HeartbeatTable, heartbeat: &swarm::Heartbeat, quiet: &mut LogLimit) {
    let status = &heartbeat.status;
    let (Some(owner), Some(pod)) = (&status.inference_node, &status.pod) else {
        return;
    };
    let accepted = table.accept(
        &owner.namespace,
        &owner.name,
        &heartbeat.peer_id,
        ReplicaHeartbeat {
            pod: pod.clone(),
            peer_id: heartbeat.peer_id.to_string(),
            received_at: Timestamp::now(),
            tokens_per_second: status.tokens_per_second,
            slots_busy: status.slots_busy,
            slots_total: status.slots_total,
            queued: status.queue_depth,
        },
    );
    if let Err(rejection) = accepted
        && quiet.allow(heartbeat.peer_id)
    {
        tracing::warn!(
            peer = %heartbeat.peer_id,
            claims = %format!("{}/{} pod {pod}", owner.namespace, owner.name),
            reason = rejection.as_str(),
            "refused a heartbeat that claims a replica it cannot prove (further ones from this peer are counted, not logged, for a minute)"
        );
    }
}
