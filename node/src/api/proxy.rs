//! `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings` of a sidecar and of a
//! router, behind routing (which already sent on what a peer serves better).
//!
//! A sidecar passes the request to its engine as it came (the body untouched, the
//! client's key swapped for the engine's) and streams the answer back unbuffered, counting
//! it as in flight until the last byte; a stream's first chunk times its first token for
//! `llamanet_time_to_first_token_seconds`, and the answer's completion tokens count into
//! `llamanet_generated_tokens_total`, as for the built-in engine. A router serves nothing itself: what reaches its
//! handler is a model no peer serves (or a request forwarded to it by mistake).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::error::ApiError;
use super::{AppState, Local};
use crate::route::RouteError;
use crate::route::failover::upstream_headers;
use crate::route::layer::ModelField;

pub async fn pass(State(state): State<AppState>, request: Request) -> Response {
    match proxy(&state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn proxy(state: &AppState, request: Request) -> Result<Response, ApiError> {
    if state.shutting_down.load(Ordering::Relaxed) {
        return Err(ApiError::shutting_down());
    }
    let (parts, body) = request.into_parts();
    let bytes = super::body::read(body, state.config.body_limit, state.config.body_timeout).await?;
    let model = serde_json::from_slice::<ModelField>(&bytes)
        .map_err(|err| ApiError::invalid(format!("invalid request body: {err}")))?
        .model;
    let Local::Upstream(upstream) = &state.local else {
        let swarm_models = state.swarm.get().map(|s| s.models().into_keys().collect());
        return Ok(
            RouteError::not_served(&model, swarm_models.unwrap_or_default()).into_response(),
        );
    };
    let seen = upstream.snapshot();
    if !seen.healthy {
        return Err(ApiError::upstream_unavailable(&seen.reason));
    }
    if !seen.models.iter().any(|m| m.id == model) {
        return Err(ApiError::model_not_found(&model, &state.local_models()));
    }
    let metrics = Arc::clone(&state.metrics);
    let in_flight = upstream.begin().on_done(move |usage| {
        metrics.prompt_tokens.inc_by(usage.prompt);
        metrics.generated_tokens.inc_by(usage.completion);
    });
    let started = std::time::Instant::now();
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
    let headers = upstream_headers(&parts.headers, upstream.config().api_key.as_deref());
    let response = upstream
        .relay(parts.method, &path, headers, bytes)
        .await
        .map_err(|reason| ApiError::upstream_unavailable(&reason.to_string()))?;
    // `relay` returns once the first chunk is in: for a stream, the engine's first token.
    let streamed = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streamed && response.status().is_success() {
        state
            .metrics
            .time_to_first_token
            .observe(started.elapsed().as_secs_f64());
    }
    let (parts, body) = response.into_parts();
    let counted = in_flight.watch(
        body.into_data_stream()
            .map(|chunk| chunk.map_err(std::io::Error::other))
            .boxed(),
        streamed,
    );
    Ok(Response::from_parts(parts, Body::from_stream(counted)))
}
