//! The node's side of the swarm: `GET /v1/swarm` (the peer table as JSON), the task that
//! keeps this node's heartbeat figures current from the engine, and leaving on shutdown.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;

/// How often the heartbeat figures are refreshed from the engine (heartbeats themselves go
/// out every `--heartbeat-interval` with the newest figures).
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

/// Copies the engine's load into the heartbeat status until the node shuts down. Healthy
/// means the model is loaded and the node admits requests.
pub async fn report_load(state: AppState) {
    let Some(swarm) = state.swarm.get().cloned() else {
        return;
    };
    let mut announced_ready = false;
    loop {
        if state.shutting_down.load(Ordering::Relaxed) {
            return;
        }
        let loaded = state.loaded.get();
        swarm.update_status(|status| {
            status.healthy = loaded.is_some();
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

/// Says goodbye: one last heartbeat marked unhealthy, so routers stop choosing this node
/// before its entry expires, then stops the swarm.
pub async fn leave(state: &AppState) {
    if let Some(swarm) = state.swarm.get() {
        swarm.update_status(|status| status.healthy = false);
        let _ = swarm.publish_heartbeat().await;
        swarm.shutdown().await;
    }
}
