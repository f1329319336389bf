//! `llamanet-cluster`: the local Kubernetes test bed for people.
//!
//! `llamanet-cluster up` starts the control plane and local nodes, writes the
//! kubeconfig, and runs until interrupted; then it stops every pod process
//! and component.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use llamanet_cluster::{Cluster, ClusterConfig, K8S_VERSION, Runtime};

#[derive(Parser)]
#[command(
    version,
    about = "A real local Kubernetes control plane whose pods run as local processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the cluster and keep it running until Ctrl-C or SIGTERM.
    Up {
        /// State folder (PKI, etcd, logs, pods). Wiped first.
        #[arg(
            long,
            env = "LLAMANET_CLUSTER_DIR",
            default_value = "/var/tmp/llamanet-cluster"
        )]
        dir: PathBuf,
        /// Number of local nodes.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// `nvidia.com/gpu` capacity of each node.
        #[arg(long, default_value_t = 8)]
        gpus: u32,
        /// Folder with the workspace binaries that the project's images map to.
        #[arg(long, env = "LLAMANET_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// Run pods in containers on a real node (containerd, the real kubelet) in a
        /// machine of its own, from the images scripts/build-images.sh built; one node.
        #[arg(long)]
        containers: bool,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,kube_client::client::builder=off".into()),
        )
        .init();
    let Command::Up {
        dir,
        nodes,
        gpus,
        bin_dir,
        containers,
    } = Cli::parse().command;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let mut config = ClusterConfig {
        dir: Some(dir.clone()),
        nodes,
        gpus_per_node: gpus,
        runtime: if containers {
            Runtime::Containers
        } else {
            Runtime::Processes
        },
        ..Default::default()
    };
    if let Some(b) = bin_dir {
        config.bin_dir = b;
    }
    let cluster = Cluster::start(config).await?;
    let env_file = dir.join("env");
    std::fs::write(
        &env_file,
        format!("export KUBECONFIG={}\n", cluster.kubeconfig().display()),
    )?;
    println!("Kubernetes {K8S_VERSION} is up at {}", cluster.server());
    println!("  export KUBECONFIG={}", cluster.kubeconfig().display());
    if containers {
        println!(
            "  pod logs: {}/nodes/<node>/pod-logs/<ns>_<pod>_<uid>/<container>/ (or kubectl logs)",
            dir.display()
        );
        println!(
            "  node logs (containerd, kubelet, kube-proxy): {}/nodes/<node>/logs/",
            dir.display()
        );
    } else {
        println!(
            "  pod logs: {}/nodes/<node>/pods/<ns>_<pod>_<uid>/logs/",
            dir.display()
        );
    }
    println!("  component logs: {}/control-plane/logs/", dir.display());
    // A marker for scripts waiting on us.
    std::fs::write(dir.join("ready"), "")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping: pods, nodes, control plane");
    let _ = std::fs::remove_file(dir.join("ready"));
    cluster.shutdown().await;
    Ok(())
}
