//! `GET /v1/models` and `GET /v1/models/{id}`: the model this node serves (listed while it
//! loads too, so clients can discover the node before it is ready) and, in a swarm, every
//! model another peer serves.

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;

fn model_object(state: &AppState) -> Value {
    json!({
        "id": state.config.model_id,
        "object": "model",
        "created": state.config.started_unix,
        "owned_by": "llamanet",
    })
}

/// This node's model, then every other model the swarm serves.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let mut data = vec![model_object(&state)];
    if let Some(swarm) = state.swarm.get() {
        for id in swarm.models().into_keys() {
            if id != state.config.model_id {
                data.push(json!({
                    "id": id,
                    "object": "model",
                    "created": state.config.started_unix,
                    "owned_by": "llamanet",
                }));
            }
        }
    }
    Json(json!({"object": "list", "data": data}))
}

pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state.check_model(&id)?;
    Ok(Json(model_object(&state)))
}
