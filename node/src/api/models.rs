//! `GET /v1/models` and `GET /v1/models/{id}`: the models this node serves (the built-in
//! engine's while it loads too, so clients can discover the node before it is ready; a
//! sidecar's engine's) and, in a swarm, every model another peer serves.

use super::openapi::{ModelList, ModelObject};
use axum::Json;
use axum::extract::{Path, State};

use super::AppState;
use super::error::ApiError;

fn model_object(state: &AppState, id: &str) -> ModelObject {
    ModelObject {
        id: id.to_string(),
        object: "model".into(),
        created: state.config.started_unix,
        owned_by: "llamanet".into(),
    }
}

/// This node's models first, then every other model the swarm serves.
fn all_models(state: &AppState) -> Vec<String> {
    let mut ids = state.local_models();
    if let Some(swarm) = state.swarm.get() {
        // Then models scaled to zero somewhere: a request for one wakes it.
        for id in swarm.models().into_keys().chain(swarm.cold_models()) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// The models this node and its swarm serve.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "OpenAI",
    responses(
        (status = 200, description = "This node's models first, then the swarm's", body = super::openapi::ModelList),
        (status = 401, description = "The node has an API key and the request's bearer key is not it", body = super::openapi::ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn list(State(state): State<AppState>) -> Json<ModelList> {
    let data = all_models(&state)
        .iter()
        .map(|id| model_object(&state, id))
        .collect();
    Json(ModelList {
        object: "list".into(),
        data,
    })
}

/// One model, if this node or its swarm serves it.
#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    tag = "OpenAI",
    params(("id" = String, Path, description = "The model id")),
    responses(
        (status = 200, description = "The model", body = super::openapi::ModelObject),
        (status = 401, description = "The node has an API key and the request's bearer key is not it", body = super::openapi::ErrorBody),
        (status = 404, description = "Nobody serves it; the message lists the models that are served", body = super::openapi::ErrorBody),
    ),
    security((), ("api_key" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    let models = all_models(&state);
    if models.contains(&id) {
        Ok(Json(model_object(&state, &id)))
    } else {
        Err(ApiError::model_not_found(&id, &models))
    }
}
