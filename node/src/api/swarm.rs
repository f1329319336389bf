//! The node's side of the swarm: `GET /v1/swarm` (the peer table as JSON), the task that
//! keeps this node's heartbeat figures current (from the engine, or a sidecar's engine),
//! and leaving on shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::error::ApiError;
use super::{AppState, Local};
use crate::sidecar::{Upstream, UpstreamState};
use crate::swarm::ModelInfo;

/// How often the heartbeat figures are refreshed from the engine (heartbeats themselves go
/// out every `--heartbeat-interval` with the newest figures).
#[cfg(feature = "engine")]
const LOAD_REFRESH: Duration = Duration::from_millis(500);

/// `GET /v1/swarm`: every live peer's newest heartbeat, this node included.
pub async fn peers(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let swarm = state
        .swarm
        .get()
        .ok_or_else(|| ApiError::not_found("/v1/swarm (this node runs without a swarm)"))?;
    Ok(Json(
        serde_json::to_value(swarm.snapshot()).unwrap_or_default(),
    ))
}

/// Keeps this node's heartbeat figures current until it shuts down: from the built-in
/// engine, or from the sidecar's engine (polled every half `heartbeat_interval`, so one
/// that stops answering is reported unhealthy within one interval). A router is healthy
/// as long as it runs.
pub async fn report_load(state: AppState) {
    match &state.local {
        #[cfg(feature = "engine")]
        Local::Engine(_) => report_engine_load(&state).await,
        Local::Router => {
            if let Some(swarm) = state.swarm.get() {
                swarm.update_status(|status| status.healthy = true);
                let _ = swarm.publish_heartbeat().await;
            }
        }
        Local::Upstream(upstream) => report_upstream_load(&state, upstream).await,
    }
}

/// Healthy means the model is loaded and the node admits requests.
#[cfg(feature = "engine")]
async fn report_engine_load(state: &AppState) {
    let Some(swarm) = state.swarm.get().cloned() else {
        return;
    };
    let mut announced_ready = false;
    loop {
        if state.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let loaded = state.loaded();
        swarm.update_status(|status| {
            status.healthy = loaded.is_some()
                && !state.shutting_down.load(Ordering::Relaxed)
                && state.failure.get().is_none();
            if let Some(loaded) = loaded {
                let load = loaded.engine.load();
                status.slots_busy = load.busy_slots.load(Ordering::Relaxed) as u32;
                status.queue_depth = loaded.engine.queue_depth() as u32;
                status.tokens_per_second = load.tokens_per_second();
            }
        });
        // Tell the swarm at once that the model is ready, not a heartbeat interval later.
        if loaded.is_some() && !announced_ready {
            announced_ready = swarm.publish_heartbeat().await.is_ok();
        }
        tokio::time::sleep(LOAD_REFRESH).await;
    }
}

async fn report_upstream_load(state: &AppState, upstream: &Upstream) {
    let period = upstream.config().check_every;
    let mut ticks = tokio::time::interval(period.max(Duration::from_millis(50)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if state.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let changed = upstream.poll().await;
        let Some(swarm) = state.swarm.get() else {
            continue;
        };
        let seen = upstream.snapshot();
        swarm.update_status(|status| {
            status.healthy = seen.healthy;
            if seen.healthy {
                status.models = advertised_models(&seen);
            }
            status.slots_busy = seen.figures.slots_busy;
            status.slots_total = seen.figures.slots_total;
            status.queue_depth = seen.figures.queue_depth;
            status.tokens_per_second = seen.figures.tokens_per_second;
        });
        // Health flips are news: peers should not wait for the next heartbeat.
        if changed {
            let _ = swarm.publish_heartbeat().await;
        }
    }
}

/// The models a sidecar advertises for its engine.
pub fn advertised_models(seen: &UpstreamState) -> Vec<ModelInfo> {
    seen.models
        .iter()
        .map(|model| ModelInfo {
            id: model.id.clone(),
            context_size: model.context_size,
            quantization: String::new(),
            fingerprint: String::new(),
        })
        .collect()
}

/// Tells the swarm this node is leaving: a heartbeat marked unhealthy at once, so routers
/// stop choosing it before its entry expires. The swarm keeps running (requests forwarded
/// here still stream back over it).
pub async fn announce_leaving(state: &AppState) {
    if let Some(swarm) = state.swarm.get() {
        swarm.update_status(|status| status.healthy = false);
        let _ = swarm.publish_heartbeat().await;
    }
}

/// Stops the swarm (after [`announce_leaving`] and the drain).
pub async fn leave(state: &AppState) {
    if let Some(swarm) = state.swarm.get() {
        swarm.shutdown().await;
    }
}
