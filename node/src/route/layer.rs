//! The routing step as axum middleware, so the serving handlers stay as they are: put
//! [`route_or_serve`] in front of `/v1/chat/completions` and `/v1/completions` (inside
//! authentication). It reads the body once, decides with [`Router::decide`], and either
//! forwards, answers 404 for a model nobody serves, or hands the untouched request on to
//! the local handler. Every response that passes through names its node
//! ([`NODE_HEADER`]), forwarded ones with the peer's own header.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Router;
use super::error::RouteError;
use super::forward::{ForwardRequest, NODE_HEADER, is_forwarded};
use super::pick::{Route, RouteRequest, affinity_of};

/// This node's side of a decision for `model`: whether it serves it, and its load (the
/// heartbeat formula). A node that serves the model but cannot take requests yet (still
/// loading) should say `(true, f64::INFINITY)`: peers then take the request, and with no
/// peer the local handler answers (503 while loading) rather than a misleading 404.
pub type LocalView = Arc<dyn Fn(&str) -> (bool, f64) + Send + Sync>;

/// The middleware's state.
#[derive(Clone)]
pub struct RouteLayer {
    pub router: Router,
    pub local: LocalView,
    /// Largest body read (the API's own body limit).
    pub body_limit: usize,
}

impl std::fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLayer")
            .field("router", &self.router)
            .field("body_limit", &self.body_limit)
            .finish_non_exhaustive()
    }
}

/// Only the field routing needs; the handler parses (and validates) the whole body.
#[derive(Deserialize)]
pub(crate) struct ModelField {
    pub(crate) model: String,
}

/// Serves here or forwards (see the module docs).
pub async fn route_or_serve(
    State(layer): State<RouteLayer>,
    request: Request,
    next: Next,
) -> Response {
    let me = layer.router.me();
    if is_forwarded(request.headers()) {
        return named(next.run(request).await, &me.to_string());
    }
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, layer.body_limit).await else {
        return RouteError::BodyTooLarge {
            limit: layer.body_limit,
        }
        .into_response();
    };
    // No readable model: the handler owns the precise 400.
    let model = serde_json::from_slice::<ModelField>(&bytes)
        .ok()
        .map(|m| m.model);
    let route = match &model {
        None => Route::Local,
        Some(model) => {
            let (serves, load) = (layer.local)(model);
            let ask = RouteRequest {
                model,
                affinity: affinity_of(&bytes, layer.router.policy().affinity_chars),
            };
            layer.router.decide(&ask, &layer.router.local(serves, load))
        }
    };
    match route {
        Route::Local => {
            let request = Request::from_parts(parts, Body::from(bytes));
            named(next.run(request).await, &me.to_string())
        }
        Route::Forward(targets) => {
            let path = parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
            let outgoing = ForwardRequest::new(parts.method, path, parts.headers, bytes);
            layer.router.forward(&targets, outgoing).await
        }
        Route::NotServed => {
            RouteError::not_served(model.as_deref().unwrap_or_default(), layer.router.models())
                .into_response()
        }
    }
}

fn named(mut response: Response, node: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(node) {
        response.headers_mut().insert(NODE_HEADER, value);
    }
    response
}
