//! Heartbeat load for `bench/operator_scale.py`: `--count` swarm peers in one process, peer
//! `i` claiming to be replica 0 of InferenceNode `<namespace>/<prefix>-<i>`. Each bootstraps
//! from the operator and beats every `--interval` seconds until `--seconds` have passed:
//! the operator's side of a swarm of that many nodes, without loading any model.
//!
//! The operator keeps a heartbeat only when its signer holds the key it wrote for that pod
//! into the Secret `<name>-identity`. With `--identity-dir`, peer `i` signs with the file
//! `<dir>/<prefix>-<i>-0` (that Secret's entry, as a pod mounts it); without it every peer
//! makes a key of its own and the operator refuses it as a stranger.
//!
//!     cargo run --release -p llamanet-node --example heartbeat_load -- \
//!         --bootstrap /ip4/127.0.0.1/tcp/4001 --namespace bench --prefix inode --count 50

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use llamanet_node::swarm::{self, InferenceNodeRef, Keypair, Multiaddr, NodeStatus, SwarmConfig};

#[derive(Debug, Parser)]
struct Args {
    /// The operator's swarm address.
    #[arg(long)]
    bootstrap: Multiaddr,
    #[arg(long, default_value = "bench")]
    namespace: String,
    /// Resource names are `<prefix>-<i>`.
    #[arg(long, default_value = "inode")]
    prefix: String,
    #[arg(long, default_value_t = 50)]
    count: usize,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// A folder with each pod's identity key (libp2p's protobuf encoding), by pod name.
    #[arg(long)]
    identity_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut peers = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let name = format!("{}-{i}", args.prefix);
        let status = NodeStatus {
            slots_total: 4,
            healthy: true,
            pod: Some(format!("{name}-0")),
            inference_node: Some(InferenceNodeRef {
                namespace: args.namespace.clone(),
                name,
            }),
            ..NodeStatus::default()
        };
        let config = SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            bootstrap: vec![args.bootstrap.clone()],
            heartbeat_interval: Duration::from_secs_f64(args.interval),
            initial_status: status,
            ..SwarmConfig::default()
        };
        let key = match &args.identity_dir {
            Some(dir) => {
                let path = dir.join(format!("{}-{i}-0", args.prefix));
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("reading the identity key {}", path.display()))?;
                Keypair::from_protobuf_encoding(&bytes)
                    .with_context(|| format!("{} is not a libp2p key", path.display()))?
            }
            None => Keypair::generate_ed25519(),
        };
        peers.push(swarm::start(key, config).await?);
    }
    eprintln!("{} peers beating every {}s", peers.len(), args.interval);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    for peer in &peers {
        peer.shutdown().await;
    }
    Ok(())
}
