//! `GET /v1/models` and `GET /v1/models/{id}`: the models this node serves (the built-in
//! engine's while it loads too, so clients can discover the node before it is ready; a
//! sidecar's engine's) and, in a swarm, every model another peer serves.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

fn model_object(state: &AppState, id: &str) -> Value {
    json!({
        "id": id,
        "object": "model",
        "created": state.config.started_unix,
        "owned_by": "llamanet",
    })
}

/// This node's models first, then every other model the swarm serves.
fn all_models(state: &AppState) -> Vec<String> {
    let mut ids = state.local_models();
    if let Some(swarm) = state.swarm.get() {
        for id in swarm.models().into_keys() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = all_models(&state)
        .iter()
        .map(|id| model_object(&state, id))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let models = all_models(&state);
    if models.contains(&id) {
        Ok(Json(model_object(&state, &id)))
    } else {
        Err(ApiError::model_not_found(&id, &models))
    }
}
