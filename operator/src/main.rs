//! `llamanet-operator`: parses the command line, sets up logging, checks that the
//! InferenceNode CRD is installed (exiting with an install hint when it is not) and runs the
//! operator until SIGTERM or Ctrl-C. Everything else lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};
use kube::{Client, CustomResourceExt};
use llamanet_operator::config::{self, LeaderElection, OperatorConfig, RunConfig};
use llamanet_operator::crd::InferenceNode;
use llamanet_operator::heartbeat::HeartbeatTable;
use llamanet_operator::swarm_peer::{self, SwarmPeerConfig};
use llamanet_swarm as swarm;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "llamanet-operator",
    version,
    about = "Reconciles InferenceNode resources into LlamaNet inference pods"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, env = "LLAMANET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax.
    #[arg(long, env = "LLAMANET_LOG", default_value = "info,kube=warn")]
    log: String,

    /// Node image for InferenceNodes that name none.
    #[arg(long, env = "LLAMANET_NODE_IMAGE", default_value = config::DEFAULT_NODE_IMAGE)]
    node_image: String,

    /// Image of the sidecar beside an external engine (the node binary without llama.cpp)
    /// for InferenceNodes that name no image.
    #[arg(long, env = "LLAMANET_ROUTER_IMAGE", default_value = config::DEFAULT_ROUTER_IMAGE)]
    router_image: String,

    /// Multiaddr every node bootstraps from (the operator's swarm Service); repeatable.
    #[arg(
        long = "bootstrap-peer",
        env = "LLAMANET_BOOTSTRAP_PEERS",
        value_delimiter = ','
    )]
    bootstrap_peers: Vec<String>,

    /// Seconds between a node's heartbeats; a replica is lost after three missed ones.
    #[arg(long, env = "LLAMANET_HEARTBEAT_INTERVAL", default_value_t = config::DEFAULT_HEARTBEAT_INTERVAL.as_secs_f64())]
    heartbeat_interval: f64,

    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(long, env = "LLAMANET_METRICS_ADDR", default_value = config::DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,

    /// Act only while holding a Lease, so that of several replicas one acts (`=false` to act
    /// at once, for a single replica).
    #[arg(long, env = "LLAMANET_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_election: bool,

    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,

    /// Name of the Lease.
    #[arg(long, default_value = config::DEFAULT_LEASE_NAME)]
    leader_election_lease: String,

    /// This replica's name in the Lease and in Events (default: POD_NAME, else hostname-pid).
    #[arg(long)]
    identity: Option<String>,

    /// Swarm listen multiaddr: node pods of this cluster bootstrap through it.
    #[arg(
        long,
        env = "LLAMANET_SWARM_LISTEN",
        default_value = "/ip4/0.0.0.0/tcp/4001"
    )]
    swarm_listen: Vec<String>,

    /// Key file of the operator's swarm identity (a fresh key per start when unset).
    #[arg(long, env = "LLAMANET_SWARM_IDENTITY")]
    swarm_identity: Option<std::path::PathBuf>,

    /// Pre-shared key file of a private swarm.
    #[arg(long, env = "LLAMANET_SWARM_KEY")]
    swarm_key: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(err) => {
            eprintln!("error: --log {:?}: {err}", cli.log);
            return ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let heartbeat_interval = match Duration::try_from_secs_f64(cli.heartbeat_interval) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            eprintln!("error: --heartbeat-interval must be a positive number of seconds");
            return ExitCode::FAILURE;
        }
    };

    let client = match Client::try_default().await {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(error = %err, "no Kubernetes API server to talk to (in-cluster config or KUBECONFIG)");
            return ExitCode::FAILURE;
        }
    };
    if let Err(err) = check_crd_installed(&client).await {
        tracing::error!("{err:#}");
        return ExitCode::FAILURE;
    }

    let leader_election = cli.leader_election.then(|| {
        let namespace = cli
            .leader_election_namespace
            .unwrap_or_else(|| client.default_namespace().to_owned());
        LeaderElection {
            lease_name: cli.leader_election_lease,
            ..LeaderElection::in_namespace(namespace)
        }
    });
    // The key's text goes to the replicas of resources that name no key of their own
    // (private by default); the swarm peer reads the same file below.
    let swarm_key = match &cli.swarm_key {
        None => None,
        Some(path) => match swarm::load_psk(path) {
            Ok(psk) => Some(psk.to_key_file()),
            Err(err) => {
                tracing::error!("{err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let config = RunConfig {
        operator: OperatorConfig {
            default_image: cli.node_image,
            router_image: cli.router_image,
            bootstrap_peers: cli.bootstrap_peers,
            heartbeat_interval,
            swarm_key,
        },
        metrics_addr: Some(cli.metrics_addr),
        leader_election,
        identity: cli.identity.unwrap_or_else(config::default_identity),
    };
    let heartbeats = HeartbeatTable::default();
    let parse = |addrs: &[String]| -> Result<Vec<_>, String> {
        addrs
            .iter()
            .map(|a| a.parse().map_err(|e| format!("bad multiaddr {a:?}: {e}")))
            .collect()
    };
    let swarm_config = match (
        parse(&cli.swarm_listen),
        parse(&config.operator.bootstrap_peers),
    ) {
        (Ok(listen), Ok(bootstrap)) => SwarmPeerConfig {
            listen,
            bootstrap,
            identity: cli.swarm_identity,
            swarm_key: cli.swarm_key,
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let swarm = match swarm_peer::start(swarm_config, heartbeats.clone()).await {
        Ok(handle) => handle,
        Err(err) => {
            tracing::error!("joining the swarm: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(?config, "operator started");
    let result =
        llamanet_operator::run(client, config, heartbeats, Some(swarm), shutdown_signal()).await;
    if let Err(err) = result {
        tracing::error!("{err:#}");
        return ExitCode::FAILURE;
    }
    tracing::info!("operator stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM (what the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(error = %err, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: stopping"),
    }
}

/// Fails with an install hint unless the API server serves InferenceNodes. Uses discovery,
/// which every authenticated client may read, so the operator needs no right on CRDs.
async fn check_crd_installed(client: &Client) -> anyhow::Result<()> {
    let crd = InferenceNode::crd();
    let version = &crd.spec.versions[0].name;
    let hint = format!(
        "the {} CRD is not installed: run `kubectl apply -f crds/` (or install the Helm chart \
         charts/llamanet, which carries it)",
        InferenceNode::crd_name()
    );
    let group = match kube::discovery::group(client, &crd.spec.group).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(_)) => anyhow::bail!(hint),
        Err(kube::Error::Api(status)) if status.code == 404 => anyhow::bail!(hint),
        Err(err) => {
            return Err(anyhow::Error::new(err).context("discovering the llamanet.io API group"));
        }
    };
    let served = group
        .versioned_resources(version)
        .iter()
        .any(|(resource, _)| resource.kind == crd.spec.names.kind);
    anyhow::ensure!(
        served,
        "{hint} (API group {} lacks {version}/{})",
        crd.spec.group,
        crd.spec.names.kind
    );
    Ok(())
}
