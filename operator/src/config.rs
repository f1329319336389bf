//! What the operator is configured with (from its command line) that shapes the children it
//! builds and the status it computes. Parsing lives in `main.rs`; this is the plain value the
//! pure functions take, with the defaults in one place.

use std::time::Duration;

/// Image of the node when neither the resource nor the command line names one. The tag is
/// this crate's version, so an operator release runs the node release it was built with.
pub const DEFAULT_NODE_IMAGE: &str =
    concat!("ghcr.io/llamanet/llamanet-node:", env!("CARGO_PKG_VERSION"));

/// How often nodes send heartbeats unless configured otherwise: three missed ones (6 s) plus a
/// status patch stay within the 10 s the operator promises for noticing a lost replica.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Node image for resources without `spec.image`.
    pub default_image: String,
    /// Multiaddrs every node bootstraps from besides `spec.swarm.bootstrapPeers`: the
    /// operator's own swarm Service, so all nodes of a cluster meet through it.
    pub bootstrap_peers: Vec<String>,
    /// Interval at which nodes send heartbeats; staleness is judged in multiples of it.
    pub heartbeat_interval: Duration,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image: DEFAULT_NODE_IMAGE.to_owned(),
            bootstrap_peers: Vec::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}
