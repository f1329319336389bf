//! The routing step as axum middleware, so the serving handlers stay as they are: put
//! [`route_or_serve`] in front of `/v1/chat/completions` and `/v1/completions` (inside
//! authentication). It reads the body once, decides with [`Router::decide`], and either
//! hands the untouched request on to the local handler, runs the plan through
//! [`Router::serve`] (peers and this node in order, see `failover.rs`), or answers 404 for
//! a model nobody serves. Every response names the node that served it ([`NODE_HEADER`]).
//! A request a peer forwarded here ([`ForwardedBy`]) is always served here: one hop.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::Router;
use super::error::RouteError;
use super::failover::{ForwardRequest, Here, NODE_HEADER};
use super::pick::{Candidate, Route, RouteRequest, affinity_of};
use super::transport::ForwardedBy;

/// This node's side of a decision for `model`: whether it serves it, and its load (the
/// heartbeat formula). A node that serves the model but cannot take requests yet (still
/// loading) should say `(true, f64::INFINITY)`: peers then go first, and with no peer the
/// local handler answers (503 while loading) rather than a misleading 404.
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

/// Serves here or elsewhere (see the module docs).
pub async fn route_or_serve(
    State(layer): State<RouteLayer>,
    request: Request,
    next: Next,
) -> Response {
    let me = layer.router.me();
    if request.extensions().get::<ForwardedBy>().is_some() {
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
    let Some(model) = serde_json::from_slice::<ModelField>(&bytes)
        .ok()
        .map(|m| m.model)
    else {
        let request = Request::from_parts(parts, Body::from(bytes));
        return named(next.run(request).await, &me.to_string());
    };
    let (serves, load) = (layer.local)(&model);
    let ask = RouteRequest {
        model: &model,
        affinity: affinity_of(&bytes, layer.router.policy().affinity_chars),
    };
    match layer.router.decide(&ask, &layer.router.local(serves, load)) {
        Route::Serve(plan) if plan == [Candidate::Local] => {
            let request = Request::from_parts(parts, Body::from(bytes));
            named(next.run(request).await, &me.to_string())
        }
        Route::Serve(plan) => {
            let path = parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
            let request = ForwardRequest::new(parts.method, path, parts.headers, bytes, model);
            let here = Here {
                next,
                view: layer.local.clone(),
            };
            layer.router.serve(plan, request, Some(here)).await
        }
        Route::NotServed => RouteError::not_served(&model, layer.router.models()).into_response(),
    }
}

fn named(mut response: Response, node: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(node) {
        response.headers_mut().insert(NODE_HEADER, value);
    }
    response
}
