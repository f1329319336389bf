//! `GET /health` (503 `{"status":"loading"}` until the model serves, then 200
//! `{"status":"ok"}` with slot figures; 503 `shutting_down` after SIGTERM; 503
//! `unhealthy` with the reason once the watchdog finds the engine or the swarm dead or
//! stuck, shortly before the process exits) and
//! `GET /metrics` (Prometheus text). Neither needs the API key: probes and scrapers call
//! them.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, Local};
use crate::metrics::EngineGauges;

/// Whether this node serves: for probes, no key needed.
#[utoipa::path(
    get,
    path = "/health",
    tag = "Node",
    responses(
        (status = 200, description = "Serving; slot figures with it", body = super::openapi::HealthBody),
        (status = 503, description = "Loading, shutting down, or unhealthy (the reason with it)", body = super::openapi::HealthBody),
    )
)]
pub async fn health(State(state): State<AppState>) -> Response {
    if let Some(reason) = state.failure.get() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "reason": reason})),
        )
            .into_response();
    }
    if state.shutting_down.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    match &state.local {
        #[cfg(feature = "engine")]
        Local::Engine(loaded) => engine_health(&state, loaded.get()),
        Local::Router => {
            let peers = state
                .swarm
                .get()
                .map_or(0, |swarm| swarm.snapshot().peers.len());
            Json(json!({"status": "ok", "role": "router", "peers": peers})).into_response()
        }
        Local::Upstream(upstream) => {
            let seen = upstream.snapshot();
            let models: Vec<&str> = seen.models.iter().map(|m| m.id.as_str()).collect();
            let (status, body) = if seen.healthy {
                (
                    StatusCode::OK,
                    json!({
                        "status": "ok",
                        "role": "sidecar",
                        "upstream": upstream.config().base,
                        "models": models,
                        "slots_busy": seen.figures.slots_busy,
                        "slots_total": seen.figures.slots_total,
                        "queue_depth": seen.figures.queue_depth,
                    }),
                )
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "status": "upstream_unavailable",
                        "upstream": upstream.config().base,
                        "reason": seen.reason,
                    }),
                )
            };
            (status, Json(body)).into_response()
        }
    }
}

#[cfg(feature = "engine")]
fn engine_health(state: &AppState, loaded: Option<&super::Loaded>) -> Response {
    match loaded {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "loading"})),
        )
            .into_response(),
        Some(loaded) => {
            let engine = &loaded.engine;
            let load = engine.load();
            Json(json!({
                "status": "ok",
                "model": state.config.model_id,
                "slots_busy": load.busy_slots.load(Ordering::Relaxed),
                "slots_total": engine.info().slots,
                "queue_depth": engine.queue_depth(),
            }))
            .into_response()
        }
    }
}

/// OpenMetrics for scrapers that ask for it (Prometheus does), the text format otherwise.
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let gauges = match &state.local {
        #[cfg(feature = "engine")]
        Local::Engine(_) => engine_gauges(&state),
        Local::Router => None,
        // The engine's own figures under LlamaNet's names, so dashboards read the same.
        Local::Upstream(upstream) => {
            let seen = upstream.snapshot();
            seen.healthy.then(|| EngineGauges {
                slots_busy: seen.figures.slots_busy.into(),
                slots_total: seen.figures.slots_total.into(),
                queue_depth: seen.figures.queue_depth.into(),
                kv_cache_usage: seen.figures.kv_cache_usage,
                tokens_per_second: seen.figures.tokens_per_second,
                ..EngineGauges::default()
            })
        }
    };
    let text = state.metrics.render(gauges);
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::metrics::openmetrics_to_text(&text),
        )
            .into_response()
    }
}

#[cfg(feature = "engine")]
fn engine_gauges(state: &AppState) -> Option<EngineGauges> {
    state.loaded().map(|loaded| {
        let engine = &loaded.engine;
        let info = engine.info();
        let load = engine.load();
        EngineGauges {
            slots_busy: load.busy_slots.load(Ordering::Relaxed) as i64,
            slots_total: info.slots as i64,
            queue_depth: engine.queue_depth() as i64,
            queue_capacity: info.queue as i64,
            kv_cache_cells_used: load.kv_cells_used.load(Ordering::Relaxed) as i64,
            kv_cache_cells_total: (info.slots * info.slot_context) as i64,
            kv_cache_usage: None,
            tokens_per_second: load.tokens_per_second(),
        }
    })
}
