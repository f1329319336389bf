//! The routing step as axum middleware, so the serving handlers stay as they are: put
//! [`route_or_serve`] in front of `/v1/chat/completions` and `/v1/completions` (inside
//! authentication). It reads the body once, decides with [`Router::decide`], and either
//! hands the untouched request on to the local handler, runs the plan through
//! [`Router::serve`] (peers and this node in order, see `failover.rs`), or answers 404 for
//! a model nobody serves. Every response names the node that served it ([`NODE_HEADER`]).
//! A request a peer forwarded here ([`ForwardedBy`]) is always served here: one hop.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;

use super::Router;
use super::error::RouteError;
use super::failover::{ForwardRequest, Here, NODE_HEADER, asks_for_stream};
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
    /// Longest pause while the body arrives (the API's own body timeout).
    pub body_timeout: std::time::Duration,
    /// Cancelled when this node's shutdown grace period is over: answers it relays from
    /// peers end then, with an error a client can tell from a whole answer.
    pub grace_over: tokio_util::sync::CancellationToken,
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
    let arrived = Instant::now();
    let me = layer.router.me();
    if request.extensions().get::<ForwardedBy>().is_some() {
        return named(next.run(request).await, &me.to_string());
    }
    let (parts, body) = request.into_parts();
    let bytes = match crate::api::body::read(body, layer.body_limit, layer.body_timeout).await {
        Ok(bytes) => bytes,
        Err(err) => return err.into_response(),
    };
    // No readable model: the handler owns the precise 400.
    let Some(model) = serde_json::from_slice::<ModelField>(&bytes)
        .ok()
        .map(|m| m.model)
    else {
        let request = Request::from_parts(parts, Body::from(bytes));
        return named(next.run(request).await, &me.to_string());
    };
    let request = Pending {
        parts,
        bytes,
        model,
        next,
    };
    match request.route(&layer).await {
        Ok(response) => response,
        Err(request) if layer.router.can_wake(&request.model) => {
            hold(layer, request, arrived).await
        }
        Err(request) => {
            RouteError::not_served(&request.model, layer.router.models()).into_response()
        }
    }
}

/// A request read and ready to route.
struct Pending {
    parts: axum::http::request::Parts,
    bytes: Bytes,
    model: String,
    next: Next,
}

impl Pending {
    /// Serves the request here or on peers; gives it back when nobody serves its model.
    async fn route(self, layer: &RouteLayer) -> Result<Response, Pending> {
        let me = layer.router.me();
        let (serves, load) = (layer.local)(&self.model);
        let ask = RouteRequest {
            model: &self.model,
            affinity: affinity_of(&self.bytes, layer.router.policy().affinity_chars),
        };
        match layer.router.decide(&ask, &layer.router.local(serves, load)) {
            Route::Serve(plan) if plan == [Candidate::Local] => {
                let request = Request::from_parts(self.parts, Body::from(self.bytes));
                Ok(named(self.next.run(request).await, &me.to_string()))
            }
            Route::Serve(plan) => {
                let parts = self.parts;
                let path = parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string());
                let request =
                    ForwardRequest::new(parts.method, path, parts.headers, self.bytes, self.model);
                let here = Here {
                    next: self.next,
                    view: layer.local.clone(),
                };
                let response = layer.router.serve(plan, request, Some(here)).await;
                let from_peer = response
                    .headers()
                    .get(NODE_HEADER)
                    .is_some_and(|node| node.as_bytes() != me.to_string().as_bytes());
                Ok(if from_peer {
                    ending_with_grace(response, layer.grace_over.clone())
                } else {
                    response
                })
            }
            Route::NotServed => Err(self),
        }
    }
}

/// Holds a request for a model scaled to zero until it wakes (see `hold.rs`).
async fn hold(layer: RouteLayer, request: Pending, arrived: Instant) -> Response {
    let router = layer.router.clone();
    let me = router.me().to_string();
    let policy = router.config().hold;
    let Some(place) = router.holds().enter(&request.model, policy.queue) else {
        router.metrics().record_hold("queue_full");
        return RouteError::HoldQueueFull {
            model: request.model,
            limit: policy.queue,
        }
        .into_response();
    };
    let streamed = asks_for_stream(&request.bytes);
    let woken = async move {
        let _place = place;
        let local = layer.local.clone();
        let serves = move |model: &str| (local)(model).0;
        let result = match router
            .wait_for_model(&request.model, arrived, &serves)
            .await
        {
            Ok(()) => match request.route(&layer).await {
                Ok(response) => Ok(response),
                // Served a moment ago, gone again: as if the hold had run out.
                Err(request) => Err(RouteError::WakeTimedOut {
                    model: request.model,
                    waited_s: arrived.elapsed().as_secs(),
                }),
            },
            Err(err) => Err(err),
        };
        router.metrics().record_hold(match &result {
            Ok(_) => "served",
            Err(RouteError::WakeFailed { .. }) => "wake_failed",
            Err(_) => "timed_out",
        });
        result
    };
    if !streamed {
        return woken.await.unwrap_or_else(IntoResponse::into_response);
    }
    // A stream starts now and stays alive with SSE comments until the answer comes.
    let keepalive = policy.keepalive;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        tokio::pin!(woken);
        let mut ticks = tokio::time::interval(keepalive);
        let result = loop {
            tokio::select! {
                result = &mut woken => break result,
                _ = ticks.tick() => {
                    let comment = Bytes::from_static(b": waiting for the model to wake\n\n");
                    if tx.send(Ok(comment)).await.is_err() {
                        return; // The client left; dropping `woken` gives its place back.
                    }
                }
            }
        };
        match result {
            Ok(response) if response.status().is_success() => {
                let mut body = response.into_body().into_data_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(std::io::Error::other);
                    if tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
            Ok(response) => {
                // An error answer after the head went out: its OpenAI error object as the
                // stream's last event.
                let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
                    .await
                    .unwrap_or_default();
                let _ = tx.send(Ok(error_data(&body))).await;
            }
            Err(err) => {
                let _ = tx
                    .send(Ok(error_data(err.body().to_string().as_bytes())))
                    .await;
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    named(response, &me)
}

/// A relayed answer that ends when `grace_over` is cancelled (this node stops; the client's
/// connection ends with it): a stream with the OpenAI error event that says so and
/// `[DONE]`, a plain body aborted so that it cannot pass for a whole one.
fn ending_with_grace(
    response: Response,
    grace_over: tokio_util::sync::CancellationToken,
) -> Response {
    let sse = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let (parts, body) = response.into_parts();
    let body = body.into_data_stream();
    let ended = futures::stream::unfold(
        (body, grace_over, false),
        move |(mut body, grace_over, over)| async move {
            if over {
                return None;
            }
            tokio::select! {
                chunk = body.next() => {
                    let chunk = chunk?.map_err(std::io::Error::other);
                    Some((chunk, (body, grace_over, false)))
                }
                () = grace_over.cancelled() => {
                    let ending = if sse {
                        let error = crate::api::error::ApiError::grace_over().body();
                        let mut event = error_data(error.to_string().as_bytes()).to_vec();
                        event.extend_from_slice(b"data: [DONE]\n\n");
                        Ok(Bytes::from(event))
                    } else {
                        Err(std::io::Error::other("this node's shutdown grace period ended"))
                    };
                    Some((ending, (body, grace_over, true)))
                }
            }
        },
    );
    Response::from_parts(parts, Body::from_stream(ended))
}

/// An OpenAI error object (JSON bytes) as the SSE event that ends a stream.
fn error_data(error: &[u8]) -> Bytes {
    let mut event = b"data: ".to_vec();
    event.extend_from_slice(error);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

fn named(mut response: Response, node: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(node) {
        response.headers_mut().insert(NODE_HEADER, value);
    }
    response
}
