//! The LlamaNet operator: reconciles `InferenceNode` resources into inference pods and mirrors
//! the swarm's heartbeats into their status.
//!
//! The crate is split by concern, each part pure where it can be so it is testable without a
//! cluster: [`crd`] holds the resource types (the single source of the CRD yaml), [`children`]
//! turns a resource into the objects it owns (StatefulSet, Services), [`status`] turns what was
//! observed (pods, heartbeats) into conditions and a phase, with [`conditions`] keeping the
//! `metav1.Condition` rules and [`events`] the Events a status change announces. [`identity`]
//! makes the replicas' swarm keys, [`heartbeat`] holds the newest heartbeat of every replica,
//! which [`swarm_peer`] receives from the swarm.
//! [`reconcile`] is the only part that talks to the API server about InferenceNodes,
//! [`leader`] the one that competes for the Lease, [`server`] serves [`metrics`] and the
//! probes. [`config`] is what the command line configures; [`run`] wires the parts together
//! and `main.rs` only parses the command line.

pub mod autoscale;
pub mod children;
pub mod conditions;
pub mod config;
pub mod crd;
pub mod error;
pub mod events;
pub mod heartbeat;
pub mod identity;
pub mod leader;
pub mod metrics;
pub mod monitoring;
pub mod reconcile;
pub mod server;
pub mod status;
pub mod swarm_peer;
pub mod wake;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

use llamanet_swarm::SwarmHandle;
use llamanet_swarm::discovery::Discovery;

use crate::config::{LeaderElection, RunConfig};
use crate::heartbeat::HeartbeatTable;
use crate::leader::{Elector, Role};
use crate::metrics::Metrics;
use crate::reconcile::Context;
use crate::server::{AppState, Readiness};
use crate::wake::Waker;

/// Runs the operator until `shutdown` resolves: the metrics and probes server, and the
/// controller — at once, or with leader election only while this replica holds the Lease.
/// `heartbeats` is the table the swarm peer fills, and `swarm` that peer's view of the whole
/// swarm (`status.swarmNodes`). On shutdown running reconciles finish, then the Lease is
/// released. Fails only when the metrics address cannot be bound.
pub async fn run(
    client: Client,
    config: RunConfig,
    heartbeats: HeartbeatTable,
    swarm: Option<SwarmHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let waker = swarm.clone().map(Waker::new);
    let swarm = swarm.map(|handle| Arc::new(handle) as Arc<dyn Discovery>);
    let stop = CancellationToken::new();
    let watch_shutdown = tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let metrics = Arc::new(Metrics::new(heartbeats.clone()));
    let readiness = Arc::new(Readiness::default());
    let server = match config.metrics_addr {
        Some(addr) => {
            let state = AppState {
                metrics: metrics.clone(),
                readiness: readiness.clone(),
            };
            let served = server::serve(addr, state, stop.clone()).await;
            Some(served.with_context(|| format!("serving metrics on {addr}"))?)
        }
        None => None,
    };
    // A fresh context per term of leadership: nothing remembered from an earlier term is
    // trusted after another replica may have written in between.
    let context = || {
        Arc::new(
            Context::new(
                client.clone(),
                config.operator.clone(),
                heartbeats.clone(),
                metrics.clone(),
                &config.identity,
            )
            .with_discovery(swarm.clone())
            .with_waker(waker.clone()),
        )
    };

    match config.leader_election.clone() {
        None => reconcile::run(context(), readiness.clone(), stop.clone()).await,
        Some(settings) => {
            let elector = Elector::new(client.clone(), settings.clone(), config.identity.clone());
            lead(elector, &settings, context, &readiness, &stop).await;
        }
    }

    stop.cancel();
    watch_shutdown.abort();
    if let Some(server) = server {
        let _ = server.await;
    }
    Ok(())
}

/// Runs the controller during every term of leadership until `stop`, then releases the Lease.
async fn lead(
    mut elector: Elector,
    settings: &LeaderElection,
    context: impl Fn() -> Arc<Context>,
    readiness: &Arc<Readiness>,
    stop: &CancellationToken,
) {
    let (role_tx, role_rx) = watch::channel(Role::Candidate);
    let elector = tokio::spawn({
        let stop = stop.clone();
        async move {
            elector.run(&role_tx, &stop).await;
            elector
        }
    });
    let standby = tokio::spawn({
        let readiness = readiness.clone();
        let mut role = role_rx.clone();
        async move {
            loop {
                let now = *role.borrow_and_update();
                readiness.set_standing_by(now == Role::Follower);
                if role.changed().await.is_err() {
                    return;
                }
            }
        }
    });
    tracing::info!(lease = %settings.lease_name, namespace = %settings.namespace, "leader election: waiting for the Lease");

    loop {
        let mut role = role_rx.clone();
        let leading = tokio::select! {
            biased;
            () = stop.cancelled() => false,
            result = role.wait_for(|r| *r == Role::Leader) => result.is_ok(),
        };
        if !leading {
            break;
        }
        // The term ends when the elector says so (renewal failed, Lease taken) or on stop.
        let term = stop.child_token();
        let term_watch = tokio::spawn({
            let term = term.clone();
            let mut role = role_rx.clone();
            async move {
                let _ = role.wait_for(|r| *r != Role::Leader).await;
                term.cancel();
            }
        });
        tracing::info!("leader election: leading, starting the controller");
        reconcile::run(context(), readiness.clone(), term).await;
        term_watch.abort();
        tracing::info!("leader election: controller stopped");
    }

    standby.abort();
    readiness.set_standing_by(false);
    match elector.await {
        Ok(elector) => elector.release().await,
        Err(err) => tracing::error!(error = %err, "leader election task failed"),
    }
}
