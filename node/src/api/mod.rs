//! The OpenAI-compatible HTTP API on axum.
//!
//! Where a request goes, by file:
//! - routes and the shared [`AppState`]: here ([`router`]), plus authentication, request
//!   metrics and the JSON body extractor; `server.rs` the server's life cycle ([`serve`]:
//!   bind first, load the model in the background (`loading.rs`), drain on SIGTERM);
//! - `chat.rs` `/v1/chat/completions`, `completions.rs` `/v1/completions`, both through
//!   `generation.rs` (engine submission, JSON or SSE answers), and `embeddings.rs`: the
//!   built-in engine's routes (cargo feature `engine`, with `options.rs` turning request
//!   fields into sampling settings and `template.rs` rendering chat templates);
//! - `proxy.rs` the same three routes for a sidecar: passed on to its engine;
//! - `models.rs`, `health.rs` (`/health`, `/metrics`), `swarm.rs` (`/v1/swarm`, heartbeat
//!   load), `watchdog.rs` (a dead engine or swarm makes the node unhealthy);
//! - `types.rs` request bodies, `tools.rs` tool calling, `openapi.rs` the API's contract,
//!   `error.rs` the one error type and its OpenAI error object.
//!
//! Without the `engine` feature the same API serves `llamanet router` and `llamanet sidecar`
//! and links no llama.cpp.

pub mod body;
#[cfg(feature = "engine")]
pub mod chat;
#[cfg(feature = "engine")]
pub mod completions;
#[cfg(feature = "engine")]
pub mod embeddings;
pub mod error;
#[cfg(feature = "engine")]
pub mod generation;
pub mod health;
mod hooks;
#[cfg(feature = "engine")]
mod loading;
pub mod models;
pub mod openapi;
#[cfg(feature = "engine")]
pub mod options;
pub mod proxy;
mod server;
pub mod swarm;
#[cfg(feature = "engine")]
pub mod template;
#[cfg(feature = "engine")]
pub mod tools;
pub mod types;
pub mod watchdog;

#[cfg(feature = "engine")]
pub use loading::EngineOptions;
pub use server::{Backend, ServeOptions, serve};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::de::DeserializeOwned;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

#[cfg(feature = "engine")]
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::sidecar::Upstream;
use crate::swarm::SwarmHandle;
use error::ApiError;
#[cfg(feature = "engine")]
use template::ChatTemplate;

/// How the API behaves, fixed at start-up.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The built-in engine's model name, which clients send and `/v1/models` lists
    /// (`llamanet serve` only; a router and a sidecar leave it empty).
    pub model_id: String,
    /// When set, `/v1/*` requests need `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// Longest a generation request may take, queueing included.
    pub request_timeout: Duration,
    /// Longest a client may pause while sending a request body.
    pub body_timeout: Duration,
    /// `/v1` requests read and prepared at once (see `--max-concurrent-requests`).
    pub max_concurrent_requests: usize,
    /// Unix time the server started (the model's `created`).
    pub started_unix: u64,
    /// How requests for a model scaled to zero are held while it wakes.
    pub hold: crate::route::HoldPolicy,
}

/// What exists once the model has loaded.
#[cfg(feature = "engine")]
#[derive(Debug)]
pub struct Loaded {
    pub engine: Engine,
    pub template: ChatTemplate,
}

/// What serves the requests this node keeps for itself.
#[derive(Debug, Clone)]
pub enum Local {
    /// The built-in llama.cpp engine (`llamanet serve`), set once loaded.
    #[cfg(feature = "engine")]
    Engine(Arc<OnceLock<Loaded>>),
    /// Nothing: every request goes to a peer (`llamanet router`).
    Router,
    /// An engine beside this process (`llamanet sidecar`).
    Upstream(Arc<Upstream>),
}

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<ApiConfig>,
    pub local: Local,
    pub metrics: Arc<Metrics>,
    pub shutting_down: Arc<AtomicBool>,
    /// Cancelled when the shutdown grace period is over: answers still being generated end
    /// at once, streams with an error event (see `generation.rs`), so that no client takes
    /// a cut answer for a whole one.
    pub grace_over: tokio_util::sync::CancellationToken,
    /// This node's swarm membership, once joined (never with `--no-swarm`).
    pub swarm: Arc<OnceLock<SwarmHandle>>,
    /// Why the node is unhealthy, once the watchdog found it so (see `watchdog.rs`).
    pub failure: Arc<OnceLock<String>>,
    /// Turns of [`AppState::prepare`].
    preparing: Arc<tokio::sync::Semaphore>,
}

/// Requests prepared at once (see [`AppState::prepare`]); more wait for a turn.
const PREPARING: usize = 4;

impl AppState {
    /// The state of a node with the built-in engine.
    #[cfg(feature = "engine")]
    pub fn new(config: ApiConfig) -> Self {
        Self::with_local(config, Local::Engine(Arc::new(OnceLock::new())))
    }

    pub fn with_local(config: ApiConfig, local: Local) -> Self {
        AppState {
            config: Arc::new(config),
            local,
            metrics: Arc::new(Metrics::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
            grace_over: tokio_util::sync::CancellationToken::new(),
            swarm: Arc::new(OnceLock::new()),
            failure: Arc::new(OnceLock::new()),
            preparing: Arc::new(tokio::sync::Semaphore::new(PREPARING)),
        }
    }

    /// The built-in engine once loaded (never for a router or a sidecar).
    #[cfg(feature = "engine")]
    pub fn loaded(&self) -> Option<&Loaded> {
        match &self.local {
            Local::Engine(loaded) => loaded.get(),
            _ => None,
        }
    }

    /// Tokenizes `texts` (each with BOS where the model wants one) on the preparation pool.
    #[cfg(feature = "engine")]
    pub async fn tokenize_all(
        &self,
        engine: &Engine,
        texts: Vec<String>,
    ) -> Result<Vec<Vec<llama_cpp_2::token::LlamaToken>>, ApiError> {
        let engine = engine.clone();
        self.prepare(move || {
            Ok(texts
                .iter()
                .map(|text| engine.tokenize(text, true))
                .collect())
        })
        .await
    }

    /// Runs the CPU-heavy part of preparing a request (rendering the chat template,
    /// tokenizing, turning a JSON schema into a grammar and compiling it) on tokio's
    /// blocking pool, at most [`PREPARING`] at once: a 4 MiB prompt or a large schema then
    /// delays neither the runtime's core threads (other clients' streams, health, the
    /// swarm) nor the engine thread.
    pub async fn prepare<T, F>(&self, work: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> Result<T, ApiError> + Send + 'static,
        T: Send + 'static,
    {
        let _turn = Arc::clone(&self.preparing)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::shutting_down())?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|err| ApiError::internal(format!("preparing the request failed: {err}")))?
    }

    /// The engine, or 503 while loading or shutting down.
    #[cfg(feature = "engine")]
    pub fn ready(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::shutting_down());
        }
        self.loaded().ok_or_else(ApiError::loading)
    }

    /// The models this node serves itself (the engine's while it loads too; a sidecar's
    /// engine's as last seen, also while it is down).
    pub fn local_models(&self) -> Vec<String> {
        match &self.local {
            #[cfg(feature = "engine")]
            Local::Engine(_) => vec![self.config.model_id.clone()],
            Local::Router => Vec::new(),
            Local::Upstream(upstream) => upstream.model_ids(),
        }
    }

    /// Whether this node serves `model`, and its load (busy slots plus queue over slots;
    /// infinite while loading or draining, so peers go first) for the routing layer.
    pub fn local_view(&self, model: &str) -> (bool, f64) {
        let draining = self.shutting_down.load(Ordering::Relaxed);
        match &self.local {
            #[cfg(feature = "engine")]
            Local::Engine(loaded) if model == self.config.model_id => match loaded.get() {
                Some(loaded) if !draining => {
                    let engine = &loaded.engine;
                    let busy = engine.load().busy_slots.load(Ordering::Relaxed) as f64;
                    let slots = engine.info().slots.max(1) as f64;
                    (true, (busy + engine.queue_depth() as f64) / slots)
                }
                _ => (true, f64::INFINITY),
            },
            Local::Upstream(upstream) if !draining => upstream.view(model),
            _ => (false, f64::INFINITY),
        }
    }

    /// 404 unless this node serves `model` itself.
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        let served = self.local_models();
        if served.iter().any(|id| id == model) {
            Ok(())
        } else {
            Err(ApiError::model_not_found(model, &served))
        }
    }

    /// Makes a loaded engine serve: compiles the chat template and publishes both.
    #[cfg(feature = "engine")]
    pub fn install(&self, engine: Engine, chat_template: Option<String>) -> anyhow::Result<()> {
        let info = engine.info();
        let source = chat_template
            .or_else(|| info.chat_template.clone())
            .unwrap_or_else(|| {
                tracing::info!(
                    architecture = %info.architecture,
                    "the model has no chat template in its metadata; using the built-in one for its architecture"
                );
                template::builtin_for(&info.architecture).to_string()
            });
        let template = ChatTemplate::new(&source, &info.bos_text, &info.eos_text)
            .map_err(|err| anyhow::anyhow!("the chat template does not compile: {err}"))?;
        self.metrics
            .model_load_seconds
            .set(info.load_time.as_secs_f64());
        let Local::Engine(loaded) = &self.local else {
            anyhow::bail!("only a node with the built-in engine loads a model");
        };
        loaded
            .set(Loaded { engine, template })
            .map_err(|_| anyhow::anyhow!("a model is already installed"))?;
        self.metrics.model_loaded.set(1);
        Ok(())
    }
}

/// A JSON body parsed into `T`, with every failure (bad JSON, wrong types, over the body
/// limit) turned into the OpenAI error object instead of axum's plain-text rejections.
#[derive(Debug)]
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let config = &state.config;
        let bytes = body::read(request.into_body(), config.body_limit, config.body_timeout).await?;
        serde_json::from_slice(&bytes)
            .map(OpenAiJson)
            .map_err(|err| ApiError::invalid(format!("invalid request body: {err}")))
    }
}

/// Every route of the node. In a swarm, chat and completion requests first pass the
/// routing layer: served here, forwarded to a better peer (one hop at most), or 404 when
/// nobody serves the model.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.body_limit;
    let gate = state.swarm.get().map(|swarm| {
        let view = state.clone();
        let router = crate::route::Router::for_swarm(
            swarm.clone(),
            crate::route::PickPolicy::default(),
            crate::route::ForwarderConfig {
                hold: state.config.hold,
                ..crate::route::ForwarderConfig::default()
            },
        );
        state
            .metrics
            .attach_swarm(swarm.metrics(), swarm.peer_table(), router.metrics());
        crate::route::RouteLayer {
            router,
            local: Arc::new(move |model: &str| view.local_view(model)),
            body_limit,
            body_timeout: state.config.body_timeout,
            grace_over: state.grace_over.clone(),
        }
    });
    let routed = |handler: MethodRouter<AppState>| match gate.clone() {
        Some(gate) => handler.layer(middleware::from_fn_with_state(
            gate,
            crate::route::route_or_serve,
        )),
        None => handler,
    };
    let (chat, completions, embeddings) = match &state.local {
        #[cfg(feature = "engine")]
        Local::Engine(_) => (
            post(chat::create),
            post(completions::create),
            post(embeddings::create),
        ),
        // A router's handlers see only what routing did not send on (no swarm, or a
        // request forwarded here by mistake): a sidecar's pass it to the engine.
        Local::Router | Local::Upstream(_) => {
            (post(proxy::pass), post(proxy::pass), post(proxy::pass))
        }
    };
    // At most `max_concurrent_requests` requests from the moment they are admitted until
    // their answer starts (a stream's tokens are the engine's to bound): the time a request
    // holds its body in memory and is prepared. One more is refused at once with 503
    // `overloaded` rather than queued, so a flood cannot pile up bodies.
    let limit = state.config.max_concurrent_requests;
    let admission = tower::ServiceBuilder::new()
        .layer(HandleErrorLayer::new(
            move |_: tower::BoxError| async move { ApiError::overloaded(limit) },
        ))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(limit));
    // A span per request (method and path) around everything logged while serving it;
    // responses and failures are logged at debug level only (`/metrics` counts them).
    let spans = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
        })
        .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG));
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/chat/completions", routed(chat))
        .route("/v1/completions", routed(completions))
        // A built-in node embeds only where it was asked to (`--embeddings` is per node).
        .route(
            "/v1/embeddings",
            match state.local {
                #[cfg(feature = "engine")]
                Local::Engine(_) => embeddings,
                _ => routed(embeddings),
            },
        )
        .route("/v1/swarm", get(swarm::peers))
        // The routes above take turns once their key is checked; probes and scrapers below
        // neither wait nor need the key.
        .route_layer(admission)
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/health", get(health::health))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyTimeoutLayer::new(state.config.body_timeout))
        .layer(spans)
        .with_state(state)
}

/// Drops the headers only nodes may set (see `route::resume`) from what clients send, so
/// no client can pose as a forwarder asking for annotations or a resumed stream.
pub(crate) async fn strip_internal_headers(mut request: Request, next: Next) -> Response {
    for name in crate::route::resume::INTERNAL_HEADERS {
        request.headers_mut().remove(name);
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(request.uri().path())
}

/// A known path asked with the wrong method: a 405 in OpenAI's error shape, not axum's
/// empty one.
async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path())
}

/// Checks the bearer key in constant time when one is configured. Requests a peer
/// forwarded over the swarm carry no client key: the entry node checked it, and the peer
/// is trusted by identity (see `route::transport::PeerTrust`).
async fn authenticate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let forwarded = request
        .extensions()
        .get::<crate::route::ForwardedBy>()
        .is_some();
    if !forwarded && let Some(expected) = &state.config.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every request by route and status, and times those that are not streams
/// (a stream's duration is recorded when it ends, in `generation.rs`).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .count_request(&endpoint, response.status().as_u16());
    let streamed = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"));
    if !streamed {
        state
            .metrics
            .observe_duration(&endpoint, started.elapsed().as_secs_f64());
    }
    response
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
