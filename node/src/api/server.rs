//! A serving process's life: bind first, then load the model in the background (or look at
//! the sidecar's engine), join the swarm, serve until SIGTERM or an unhealthy watchdog, then
//! drain within the grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::middleware;
use tokio::net::TcpListener;

#[cfg(feature = "engine")]
use super::loading::{self, EngineOptions};
use super::{ApiConfig, AppState, Local, hooks, router, strip_internal_headers, swarm, watchdog};
use crate::sidecar::{Upstream, UpstreamConfig};
use crate::swarm::membership::{Advertised, MembershipArgs};

/// After the grace period: how long the answers ended then get to be written out.
const GRACE_OVER_FLUSH: Duration = Duration::from_secs(2);

/// What a serving process runs behind its API.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `llamanet serve`: a GGUF in the built-in engine.
    #[cfg(feature = "engine")]
    Engine(EngineOptions),
    /// `llamanet router`: no model; needs the swarm.
    Router,
    /// `llamanet sidecar`: an engine beside this process.
    Upstream(UpstreamConfig),
}

/// Everything `llamanet serve`, `router` and `sidecar` need.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub address: SocketAddr,
    pub backend: Backend,
    pub api: ApiConfig,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How to join the swarm; `None` serves alone.
    pub membership: Option<MembershipArgs>,
    /// When a dead or stuck engine or swarm makes the node unhealthy.
    pub watchdog: watchdog::WatchdogConfig,
    /// Serve `POST /debug/inject/{failure}` to break the node on purpose (tests only).
    pub test_hooks: bool,
}

/// Binds, answers `/health` with 503 while the model loads in the background (or the
/// sidecar's engine is not answering), serves until SIGTERM or Ctrl-C, then stops
/// admitting and lets in-flight requests finish within the grace period. Returns an error
/// when the model cannot be loaded, or a router is asked to run without a swarm.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let joins_swarm = options.membership.as_ref().is_some_and(|m| !m.no_swarm);
    if matches!(options.backend, Backend::Router) && !joins_swarm {
        anyhow::bail!("a router serves nothing itself: it needs the swarm (drop --no-swarm)");
    }
    let listener = TcpListener::bind(options.address)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", options.address))?;
    let address = listener.local_addr()?;
    // A model that fails to load ends the server with its error.
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let (state, models, slots_total, seeder): (_, _, _, Option<crate::weights::Seeder>) =
        match &options.backend {
            #[cfg(feature = "engine")]
            Backend::Engine(engine) => {
                tracing::info!(%address, model = %engine.model.display(), "listening; loading the model");
                let started =
                    loading::start(engine, &options.api, options.membership.as_ref(), failed_tx)?;
                (
                    started.state,
                    vec![started.model],
                    started.slots,
                    started.seeder,
                )
            }
            Backend::Router => {
                tracing::info!(%address, "listening as a router: every request goes to a peer");
                // Nothing loads in the background here.
                drop(failed_tx);
                (
                    AppState::with_local(options.api.clone(), Local::Router),
                    Vec::new(),
                    0,
                    None,
                )
            }
            Backend::Upstream(config) => {
                let upstream = Upstream::new(config.clone());
                // A first look, so the first heartbeat already names the engine's models.
                upstream.poll().await;
                let seen = upstream.snapshot();
                tracing::info!(%address, upstream = %config.base, healthy = seen.healthy, "listening as a sidecar");
                let state = AppState::with_local(options.api.clone(), Local::Upstream(upstream));
                let models = swarm::advertised_models(&seen);
                drop(failed_tx);
                (state, models, seen.figures.slots_total, None)
            }
        };

    let mut trust = None;
    if let Some(membership) = &options.membership {
        let advertised = Advertised {
            http_host: address.ip().to_string(),
            http_port: address.port(),
            models,
            slots_total,
        };
        if let Some(handle) = membership.join(&advertised).await? {
            trust = Some(crate::route::PeerTrust::for_node(
                membership.swarm_key.is_some(),
                options.api.api_key.is_some(),
                &membership.trusted_peers()?,
            ));
            if let Some(seeder) = &seeder {
                seeder.attach(&handle)?;
            }
            let _ = state.swarm.set(handle);
        }
    }
    tokio::spawn(swarm::report_load(state.clone()));

    let mut app = router(state.clone());
    if options.test_hooks {
        tracing::warn!("test hooks are on: POST /debug/inject/{{failure}} breaks this node");
        app = app.merge(hooks::routes(state.clone()));
    }
    let (unhealthy_tx, mut unhealthy_rx) = tokio::sync::mpsc::channel::<String>(1);
    watchdog::spawn(state.clone(), options.watchdog, unhealthy_tx)?;
    // Requests peers forward arrive over swarm streams; each is a task of `peer_tasks`, so
    // draining can wait for them like for HTTP connections.
    let peer_tasks = tokio_util::task::TaskTracker::new();
    let peers_draining = tokio_util::sync::CancellationToken::new();
    if let (Some(swarm), Some(trust)) = (state.swarm.get(), trust) {
        crate::route::transport::serve_peers(
            swarm,
            app.clone(),
            trust,
            peer_tasks.clone(),
            peers_draining.clone(),
        )?;
    }
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let public = app.layer(middleware::from_fn(strip_internal_headers));
    let server_shutdown = Arc::clone(&shutdown);
    let server = axum::serve(listener, public).with_graceful_shutdown(async move {
        server_shutdown.notified().await;
    });
    let server = tokio::spawn(async move { server.await });

    tokio::select! {
        // A loader that succeeded drops its sender; only a real error ends the server.
        Some(err) = failed_rx.recv() => {
            shutdown.notify_one();
            return Err(err);
        }
        // Dead or stuck inside: /health says so already; tell the swarm (if it still
        // listens), linger a moment so probes and forwarders see the 503, then exit
        // non-zero so Kubernetes restarts the pod.
        Some(reason) = unhealthy_rx.recv() => {
            tracing::error!(%reason, "unhealthy; exiting so that the node is restarted");
            let _ = tokio::time::timeout(
                options.watchdog.exit_after,
                swarm::announce_leaving(&state),
            )
            .await;
            tokio::time::sleep(options.watchdog.exit_after).await;
            shutdown.notify_one();
            anyhow::bail!("unhealthy: {reason}");
        }
        () = termination() => {}
    }
    tracing::info!(
        grace_seconds = options.shutdown_grace.as_secs(),
        "shutting down: no new requests, finishing those in flight"
    );
    // New requests get 503 `shutting_down` from here on (forwarders try elsewhere), and the
    // swarm hears at once that this node is leaving. The swarm itself stays up until the
    // requests peers forwarded here are done: their answers travel on its streams.
    state.shutting_down.store(true, Ordering::Relaxed);
    swarm::announce_leaving(&state).await;
    shutdown.notify_one();
    peers_draining.cancel();
    peer_tasks.close();
    let drained = async {
        let served = server.await;
        peer_tasks.wait().await;
        served
    };
    tokio::pin!(drained);
    let finished = match tokio::time::timeout(options.shutdown_grace, &mut drained).await {
        Ok(finished) => {
            tracing::info!("all requests finished");
            Some(finished)
        }
        Err(_) => {
            // Answers still running end now: streams with an error event, the others with
            // a 503 (which clients and forwarders retry); a moment to write them out.
            tracing::warn!("grace period over; ending the requests still running");
            state.grace_over.cancel();
            tokio::time::timeout(GRACE_OVER_FLUSH, &mut drained)
                .await
                .ok()
        }
    };
    let result = match finished {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(err))) => Err(err.into()),
        Some(Err(err)) => Err(anyhow::anyhow!("the server task failed: {err}")),
    };
    swarm::leave(&state).await;
    result
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
