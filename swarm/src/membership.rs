//! How a serving process (a node, later the sidecar) joins the swarm: the command-line
//! flags every such process shares, and turning them into a running [`SwarmHandle`] that
//! advertises what the process serves. What the heartbeat says about load is fed in later
//! with [`SwarmHandle::update_status`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::heartbeat::{InferenceNodeRef, ModelInfo};
use super::{
    Multiaddr, NodeStatus, SwarmConfig, SwarmHandle, bootstrap, identity, load_psk, start,
};

/// Swarm flags of `llamanet serve` (each also from its `LLAMANET_*` variable).
#[derive(Args, Debug, Clone)]
pub struct MembershipArgs {
    /// Key file of this node's swarm identity (ed25519), created with mode 0600 on first
    /// start: the peer id survives restarts. A fresh identity per start when unset.
    #[arg(long, env = "LLAMANET_IDENTITY")]
    pub identity: Option<PathBuf>,

    /// Swarm listen multiaddr (repeatable). Default: TCP `--swarm-port` on the HTTP host.
    #[arg(
        long = "swarm-listen",
        env = "LLAMANET_SWARM_LISTEN",
        value_delimiter = ','
    )]
    pub swarm_listen: Vec<String>,

    /// TCP port of the default swarm listen address (ignored with --swarm-listen).
    #[arg(long, env = "LLAMANET_SWARM_PORT", default_value_t = DEFAULT_SWARM_PORT)]
    pub swarm_port: u16,

    /// Peer to bootstrap from (repeatable): /ip4, /ip6, /dns, /dns4 multiaddrs, with or
    /// without /p2p/<peer id>. Retried with back-off while none answers.
    #[arg(long = "bootstrap", env = "LLAMANET_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,

    /// Pre-shared key file (`/key/swarm/psk/1.0.0/` format) of a private swarm.
    #[arg(long, env = "LLAMANET_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,

    /// Seconds between heartbeats; peers drop this node after three missed ones.
    #[arg(long, env = "LLAMANET_HEARTBEAT_INTERVAL", default_value_t = 2.0)]
    pub heartbeat_interval: f64,

    /// Cluster label carried in heartbeats.
    #[arg(long, env = "LLAMANET_CLUSTER", default_value = "")]
    pub cluster: String,

    /// Zone label carried in heartbeats.
    #[arg(long, env = "LLAMANET_ZONE", default_value = "")]
    pub zone: String,

    /// The InferenceNode this process is a replica of, as `namespace/name` (set by the
    /// operator, which maps heartbeats to resources with it).
    #[arg(long, env = "LLAMANET_INFERENCE_NODE")]
    pub inference_node: Option<String>,

    /// The pod this process runs in (set by the operator).
    #[arg(long, env = "LLAMANET_POD")]
    pub pod: Option<String>,

    /// HTTP endpoint peers forward to (default: http://<host>:<port>).
    #[arg(long, env = "LLAMANET_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// Do not join any swarm: serve this process's model only.
    #[arg(long, env = "LLAMANET_NO_SWARM")]
    pub no_swarm: bool,

    /// Peer id allowed to forward requests here (repeatable). Only needed for a node with
    /// an API key in a public swarm (no --swarm-key): there, peers not listed get 403, since
    /// anyone can join a public swarm. In a private swarm every member may forward.
    #[arg(
        long = "trusted-peer",
        env = "LLAMANET_TRUSTED_PEERS",
        value_delimiter = ','
    )]
    pub trusted_peers: Vec<String>,
}

/// What the process serves, for its first heartbeats.
#[derive(Debug, Clone)]
pub struct Advertised {
    pub http_host: String,
    pub http_port: u16,
    pub models: Vec<ModelInfo>,
    pub slots_total: u32,
}

/// A swarm flag with a value that cannot be used; the message names the flag and value.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("--heartbeat-interval must be a positive number of seconds, got {0}")]
    HeartbeatInterval(f64),
    #[error("{flag} {value:?}: {reason}")]
    Address {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("--bootstrap: {0}")]
    Bootstrap(bootstrap::BadAddress),
    #[error("--host {0:?} is not an IP address: pass --swarm-listen")]
    Host(String),
    #[error("--inference-node must be namespace/name, got {0:?}")]
    InferenceNode(String),
    #[error("--swarm-key: {0}")]
    SwarmKey(std::io::Error),
    #[error("--trusted-peer {value:?} is not a peer id: {reason}")]
    TrustedPeer { value: String, reason: String },
}

impl MembershipArgs {
    /// `--heartbeat-interval` as a duration.
    pub fn interval(&self) -> Result<Duration, FlagError> {
        Duration::try_from_secs_f64(self.heartbeat_interval)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or(FlagError::HeartbeatInterval(self.heartbeat_interval))
    }

    /// The swarm configuration these flags describe.
    pub fn config(&self, advertised: &Advertised) -> Result<SwarmConfig, FlagError> {
        let interval = self.interval()?;
        let listen = if self.swarm_listen.is_empty() {
            vec![default_listen(&advertised.http_host, self.swarm_port)?]
        } else {
            parse_all("--swarm-listen", &self.swarm_listen)?
        };
        let bootstrap = self
            .bootstrap
            .iter()
            .map(|a| bootstrap::parse_addr(a).map_err(FlagError::Bootstrap))
            .collect::<Result<Vec<_>, _>>()?;
        let inference_node = match &self.inference_node {
            None => None,
            Some(text) => {
                let (namespace, name) = text
                    .split_once('/')
                    .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                    .ok_or_else(|| FlagError::InferenceNode(text.clone()))?;
                Some(InferenceNodeRef {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
        };
        let psk = match &self.swarm_key {
            None => None,
            Some(path) => Some(load_psk(path).map_err(FlagError::SwarmKey)?),
        };
        let endpoint = self.advertise_url.clone().unwrap_or_else(|| {
            format!(
                "http://{}:{}",
                host_for_url(&advertised.http_host),
                advertised.http_port
            )
        });
        Ok(SwarmConfig {
            listen,
            bootstrap,
            heartbeat_interval: interval,
            psk,
            initial_status: NodeStatus {
                endpoints: vec![endpoint],
                models: advertised.models.clone(),
                slots_total: advertised.slots_total,
                version: env!("CARGO_PKG_VERSION").into(),
                cluster: self.cluster.clone(),
                zone: self.zone.clone(),
                inference_node,
                pod: self.pod.clone(),
                healthy: false,
                ..Default::default()
            },
            ..SwarmConfig::default()
        })
    }

    /// `--trusted-peer` as peer ids.
    pub fn trusted_peers(&self) -> Result<Vec<super::PeerId>, FlagError> {
        self.trusted_peers
            .iter()
            .map(|p| {
                p.parse()
                    .map_err(|err: libp2p::identity::ParseError| FlagError::TrustedPeer {
                        value: p.clone(),
                        reason: err.to_string(),
                    })
            })
            .collect()
    }

    /// Joins the swarm (or returns `None` with `--no-swarm`).
    pub async fn join(&self, advertised: &Advertised) -> anyhow::Result<Option<SwarmHandle>> {
        if self.no_swarm {
            return Ok(None);
        }
        let config = self.config(advertised)?;
        self.trusted_peers()?;
        let key = match &self.identity {
            Some(path) => identity::load_or_create(path)?.0,
            None => super::Keypair::generate_ed25519(),
        };
        let handle = start(key, config).await?;
        tracing::info!(peer = %handle.peer_id(), listen = ?handle.listen_addrs(), "joined the swarm");
        Ok(Some(handle))
    }
}

fn parse_all(flag: &'static str, addrs: &[String]) -> Result<Vec<Multiaddr>, FlagError> {
    addrs
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|err: libp2p::multiaddr::Error| FlagError::Address {
                    flag,
                    value: a.clone(),
                    reason: err.to_string(),
                })
        })
        .collect()
}

/// The swarm's TCP port when none is given.
pub const DEFAULT_SWARM_PORT: u16 = 4001;

/// TCP `port` on the HTTP bind address (its pod IP in Kubernetes).
fn default_listen(host: &str, port: u16) -> Result<Multiaddr, FlagError> {
    let ip: std::net::IpAddr = match host {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| FlagError::Host(h.into()))?,
    };
    let proto = if ip.is_ipv4() { "ip4" } else { "ip6" };
    let text = format!("/{proto}/{ip}/tcp/{port}");
    text.parse()
        .map_err(|err: libp2p::multiaddr::Error| FlagError::Address {
            flag: "--host",
            value: text.clone(),
            reason: err.to_string(),
        })
}

fn host_for_url(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        // A wildcard bind is no address to forward to.
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".into(),
        _ => host.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        swarm: MembershipArgs,
    }

    fn advertised() -> Advertised {
        Advertised {
            http_host: "127.0.0.12".into(),
            http_port: 8080,
            models: vec![ModelInfo {
                id: "gemma-3-270m".into(),
                context_size: 2048,
                quantization: "Q4_K_M".into(),
                fingerprint: String::new(),
            }],
            slots_total: 4,
        }
    }

    fn config(args: &[&str]) -> Result<SwarmConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).unwrap();
        cli.swarm
            .config(&advertised())
            .map_err(|err| err.to_string())
    }

    #[test]
    fn defaults_follow_the_http_address() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen[0].to_string(), "/ip4/127.0.0.12/tcp/4001");
        assert_eq!(c.initial_status.endpoints, ["http://127.0.0.12:8080"]);
        assert_eq!(c.initial_status.slots_total, 4);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
    }

    #[test]
    fn operator_flags_land_in_the_heartbeat() {
        let c = config(&[
            "--inference-node",
            "ml/gemma",
            "--pod",
            "gemma-0",
            "--cluster",
            "eu",
            "--bootstrap",
            "/dns4/llamanet-swarm.ml.svc/tcp/4001",
        ])
        .unwrap();
        let node = c.initial_status.inference_node.unwrap();
        assert_eq!(
            (node.namespace.as_str(), node.name.as_str()),
            ("ml", "gemma")
        );
        assert_eq!(c.initial_status.pod.as_deref(), Some("gemma-0"));
        assert_eq!(c.initial_status.cluster, "eu");
        assert_eq!(c.bootstrap.len(), 1);
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        let err = config(&["--inference-node", "gemma"]).unwrap_err();
        assert!(err.contains("namespace/name"), "{err}");
        let err = config(&["--heartbeat-interval", "0"]).unwrap_err();
        assert!(err.contains("positive"), "{err}");
        let err = config(&["--bootstrap", "not-a-multiaddr"]).unwrap_err();
        assert!(err.contains("--bootstrap"), "{err}");
        let cli = Cli::try_parse_from(["x", "--trusted-peer", "nope"]).unwrap();
        let err = cli.swarm.trusted_peers().unwrap_err().to_string();
        assert!(err.contains("--trusted-peer \"nope\""), "{err}");
    }
}
