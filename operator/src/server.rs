//! The operator's HTTP server: `/metrics` (Prometheus), `/healthz` (the process answers) and
//! `/readyz` (it is doing its job). Routes are in [`router`], shared state in [`AppState`].
//!
//! Readiness means: the controller's watches have synced, or — with leader election — this
//! replica is a standby that can read the Lease. A standby is Ready on purpose: it is healthy
//! and able to take over, and a Deployment rollout must not wait on leadership.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What this replica reports on `/readyz`.
#[derive(Debug, Default)]
pub struct Readiness {
    watches_synced: AtomicBool,
    standing_by: AtomicBool,
}

impl Readiness {
    /// The controller's watches have listed everything (true) or the controller stopped.
    pub fn set_watches_synced(&self, synced: bool) {
        self.watches_synced.store(synced, Ordering::Relaxed);
    }

    /// Another replica leads and this one reads the Lease fine.
    pub fn set_standing_by(&self, standing_by: bool) {
        self.standing_by.store(standing_by, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.watches_synced.load(Ordering::Relaxed) || self.standing_by.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Serves [`router`] on `addr` until `shutdown`. Fails only when the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "metrics server failed");
        }
    }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "watches not synced")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::HeartbeatTable;

    async fn get_path(router: Router, path: &str) -> (StatusCode, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        let response = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    #[tokio::test]
    async fn routes_answer() {
        let state = AppState {
            metrics: Arc::new(Metrics::new(HeartbeatTable::default())),
            readiness: Arc::default(),
        };
        let (status, body) = get_path(router(state.clone()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("llamanet_operator_reconciles_total"),
            "{body}"
        );
        assert_eq!(
            get_path(router(state.clone()), "/healthz").await.0,
            StatusCode::OK
        );
        assert_eq!(
            get_path(router(state.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.readiness.set_standing_by(true);
        assert_eq!(
            get_path(router(state.clone()), "/readyz").await.0,
            StatusCode::OK
        );
        state.readiness.set_standing_by(false);
        state.readiness.set_watches_synced(true);
        assert_eq!(get_path(router(state), "/readyz").await.0, StatusCode::OK);
    }
}
