//! `llamanet-cluster`: the local Kubernetes test bed for people.
//!
//! `llamanet-cluster up` starts the control plane and its real nodes (each in a machine
//! of its own), writes the kubeconfig, and runs until interrupted; then it stops every
//! container and component.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use llamanet_cluster::{Cluster, ClusterConfig, K8S_VERSION};

#[derive(Parser)]
#[command(
    version,
    about = "A real local Kubernetes cluster: the control plane and real nodes (containerd, \
             the kubelet) in network namespaces of their own, running the project's images"
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
        /// Number of nodes, each a machine of its own (0: the control plane alone, on
        /// loopback). Pods run from the images scripts/build-images.sh built.
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// `nvidia.com/gpu` capacity of each node (a device plugin test double).
        #[arg(long, default_value_t = 8)]
        gpus: u32,
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
    let Command::Up { dir, nodes, gpus } = Cli::parse().command;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let config = ClusterConfig {
        dir: Some(dir.clone()),
        nodes,
        gpus_per_node: gpus,
        ..Default::default()
    };
    let cluster = Cluster::start(config).await?;
    let env_file = dir.join("env");
    std::fs::write(
        &env_file,
        format!("export KUBECONFIG={}\n", cluster.kubeconfig().display()),
    )?;
    println!("Kubernetes {K8S_VERSION} is up at {}", cluster.server());
    println!("  export KUBECONFIG={}", cluster.kubeconfig().display());
    println!(
        "  pod logs: {}/nodes/<node>/pod-logs/<ns>_<pod>_<uid>/<container>/ (or kubectl logs)",
        dir.display()
    );
    println!(
        "  node logs (containerd, kubelet, kube-proxy): {}/nodes/<node>/logs/",
        dir.display()
    );
    println!("  component logs: {}/control-plane/logs/", dir.display());
    // A marker for scripts waiting on us.
    std::fs::write(dir.join("ready"), "")?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("stopping: nodes, control plane, machines");
    let _ = std::fs::remove_file(dir.join("ready"));
    cluster.shutdown().await;
    Ok(())
}
