//! `llamanet-operator`: parses the command line, sets up logging, checks that the
//! InferenceNode CRD is installed (exiting with an install hint when it is not) and runs the
//! controller. Everything else lives in the library.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use kube::{Client, CustomResourceExt};
use llamanet_operator::config::{self, OperatorConfig};
use llamanet_operator::crd::InferenceNode;
use llamanet_operator::heartbeat::HeartbeatTable;
use llamanet_operator::reconcile::{self, Context};
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

    let config = OperatorConfig {
        default_image: cli.node_image,
        bootstrap_peers: cli.bootstrap_peers,
        heartbeat_interval,
    };
    tracing::info!(?config, "operator started");
    reconcile::run(Context {
        client,
        config,
        heartbeats: HeartbeatTable::default(),
    })
    .await;
    tracing::info!("operator stopped");
    ExitCode::SUCCESS
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
