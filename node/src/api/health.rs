//! `GET /health` (503 `{"status":"loading"}` until the model serves, then 200
//! `{"status":"ok"}` with slot figures; 503 `shutting_down` after SIGTERM) and
//! `GET /metrics` (Prometheus text). Neither needs the API key: probes and scrapers call
//! them.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use crate::metrics::EngineGauges;

pub async fn health(State(state): State<AppState>) -> Response {
    if state.shutting_down.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    match state.loaded.get() {
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
    let gauges = state.loaded.get().map(|loaded| {
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
            tokens_per_second: load.tokens_per_second(),
        }
    });
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
