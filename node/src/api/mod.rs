//! The OpenAI-compatible HTTP API on axum (cargo feature `engine`).
//!
//! Where a request goes, by file:
//! - routes and the shared [`AppState`]: here ([`router`]), plus authentication, request
//!   metrics, the JSON body extractor and the server's life cycle ([`serve`]: bind first,
//!   load the model in the background, drain on SIGTERM);
//! - `chat.rs` `/v1/chat/completions`, `completions.rs` `/v1/completions`, both through
//!   `generation.rs` (engine submission, JSON or SSE answers);
//! - `embeddings.rs`, `models.rs`, `health.rs` (`/health`, `/metrics`);
//! - `proxy.rs` the same three routes for a sidecar: passed on to its engine;
//! - `types.rs` request bodies and their validation, `template.rs` chat templates,
//!   `error.rs` the one error type and its OpenAI error object.

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod error;
pub mod generation;
pub mod health;
mod hooks;
pub mod models;
pub mod openapi;
pub mod proxy;
pub mod swarm;
pub mod template;
pub mod tools;
pub mod types;
pub mod watchdog;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;

use crate::engine::{Engine, EngineSettings};
use crate::metrics::Metrics;
use crate::sidecar::{Upstream, UpstreamConfig};
use crate::swarm::SwarmHandle;
use crate::swarm::membership::{Advertised, MembershipArgs};
use error::ApiError;
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
    /// Unix time the server started (the model's `created`).
    pub started_unix: u64,
    /// How requests for a model scaled to zero are held while it wakes.
    pub hold: crate::route::HoldPolicy,
}

/// What exists once the model has loaded.
#[derive(Debug)]
pub struct Loaded {
    pub engine: Engine,
    pub template: ChatTemplate,
}

/// What serves the requests this node keeps for itself.
#[derive(Debug, Clone)]
pub enum Local {
    /// The built-in llama.cpp engine (`llamanet serve`), in [`AppState::loaded`] once
    /// loaded.
    Engine,
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
    /// The built-in engine once loaded (never set for a router or a sidecar).
    pub loaded: Arc<OnceLock<Loaded>>,
    pub metrics: Arc<Metrics>,
    pub shutting_down: Arc<AtomicBool>,
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
    pub fn new(config: ApiConfig) -> Self {
        Self::with_local(config, Local::Engine)
    }

    pub fn with_local(config: ApiConfig, local: Local) -> Self {
        AppState {
            config: Arc::new(config),
            local,
            loaded: Arc::new(OnceLock::new()),
            metrics: Arc::new(Metrics::new()),
            shutting_down: Arc::new(AtomicBool::new(false)),
            swarm: Arc::new(OnceLock::new()),
            failure: Arc::new(OnceLock::new()),
            preparing: Arc::new(tokio::sync::Semaphore::new(PREPARING)),
        }
    }

    /// Tokenizes `texts` (each with BOS where the model wants one) on the preparation pool.
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
    pub fn ready(&self) -> Result<&Loaded, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::shutting_down());
        }
        self.loaded.get().ok_or_else(ApiError::loading)
    }

    /// The models this node serves itself (the engine's while it loads too; a sidecar's
    /// engine's as last seen, also while it is down).
    pub fn local_models(&self) -> Vec<String> {
        match &self.local {
            Local::Engine => vec![self.config.model_id.clone()],
            Local::Router => Vec::new(),
            Local::Upstream(upstream) => upstream.model_ids(),
        }
    }

    /// Whether this node serves `model`, and its load (busy slots plus queue over slots;
    /// infinite while loading or draining, so peers go first) for the routing layer.
    pub fn local_view(&self, model: &str) -> (bool, f64) {
        match &self.local {
            Local::Engine if model == self.config.model_id => {}
            Local::Upstream(upstream) if !self.shutting_down.load(Ordering::Relaxed) => {
                return upstream.view(model);
            }
            _ => return (false, f64::INFINITY),
        }
        match self.loaded.get() {
            Some(loaded) if !self.shutting_down.load(Ordering::Relaxed) => {
                let engine = &loaded.engine;
                let busy = engine.load().busy_slots.load(Ordering::Relaxed) as f64;
                let slots = engine.info().slots.max(1) as f64;
                (true, (busy + engine.queue_depth() as f64) / slots)
            }
            _ => (true, f64::INFINITY),
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
        self.metrics.model_loaded.set(1);
        self.loaded
            .set(Loaded { engine, template })
            .map_err(|_| anyhow::anyhow!("a model is already installed"))
    }
}

/// A JSON body parsed into `T`, with every failure (bad JSON, wrong types, over the body
/// limit) turned into the OpenAI error object instead of axum's plain-text rejections.
#[derive(Debug)]
pub struct OpenAiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::body_too_large(state.config.body_limit)
                } else {
                    ApiError::invalid(rejection.body_text())
                }
            })?;
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
        Local::Engine => (
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
    Router::new()
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get))
        .route("/v1/chat/completions", routed(chat))
        .route("/v1/completions", routed(completions))
        // A built-in node embeds only where it was asked to (`--embeddings` is per node).
        .route(
            "/v1/embeddings",
            match state.local {
                Local::Engine => embeddings,
                _ => routed(embeddings),
            },
        )
        .route("/v1/swarm", get(swarm::peers))
        // Only the routes above need the key; probes and scrapers below do not.
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .route("/health", get(health::health))
        .route("/openapi.json", get(openapi::serve))
        .route("/metrics", get(health::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Drops the headers only nodes may set (see `route::resume`) from what clients send, so
/// no client can pose as a forwarder asking for annotations or a resumed stream.
async fn strip_internal_headers(mut request: Request, next: Next) -> Response {
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

/// What a serving process runs behind its API.
#[derive(Debug, Clone)]
pub enum Backend {
    /// `llamanet serve`: a GGUF in the built-in engine.
    Engine(EngineOptions),
    /// `llamanet router`: no model; needs the swarm.
    Router,
    /// `llamanet sidecar`: an engine beside this process.
    Upstream(UpstreamConfig),
}

/// The built-in engine's model and settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model: PathBuf,
    /// Checked before loading when set.
    pub sha256: Option<String>,
    pub settings: EngineSettings,
    /// A Jinja file that replaces the model's own chat template.
    pub chat_template: Option<PathBuf>,
    /// How the verified model file is shared with peers (only with `sha256`, only in a
    /// private swarm).
    pub share: crate::weights::SeedPolicy,
}

/// Everything `llamanet serve`, `router` and `sidecar` need.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub address: SocketAddr,
    pub backend: Backend,
    pub api: ApiConfig,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How to join the swarm; `None` serves alone.
    pub membership: Option<MembershipArgs>,
    /// When a dead or stuck engine or swarm makes the node unhealthy.
    pub watchdog: watchdog::WatchdogConfig,
    /// Serve `POST /debug/inject/{failure}` to break the node on purpose (tests only).
    pub test_hooks: bool,
}

/// Binds, answers `/health` with 503 while the model loads in the background (or the
/// sidecar's engine is not answering), serves until SIGTERM or Ctrl-C, then stops
/// admitting and lets in-flight requests finish within the grace period. Returns an error
/// when the model cannot be loaded, or a router is asked to run without a swarm.
pub async fn serve(options: ServeOptions) -> anyhow::Result<()> {
    let joins_swarm = options.membership.as_ref().is_some_and(|m| !m.no_swarm);
    if matches!(options.backend, Backend::Router) && !joins_swarm {
        anyhow::bail!("a router serves nothing itself: it needs the swarm (drop --no-swarm)");
    }
    let listener = TcpListener::bind(options.address)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", options.address))?;
    let address = listener.local_addr()?;
    let (failed_tx, mut failed_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    let mut seeder = None;
    let (state, models, slots_total) = match &options.backend {
        Backend::Engine(engine) => {
            let state = AppState::new(options.api.clone());
            tracing::info!(%address, model = %engine.model.display(), "listening; loading the model");
            seeder = shares_weights(engine, options.membership.as_ref()).then(|| {
                crate::weights::Seeder::with_stats(engine.share, state.metrics.weights.clone())
            });
            start_loading(&state, engine.clone(), seeder.clone(), failed_tx)?;
            let model = crate::swarm::ModelInfo {
                id: options.api.model_id.clone(),
                context_size: engine.settings.context_size.get()
                    / engine.settings.parallel.get().max(1),
                quantization: quantization_of(&engine.model),
                fingerprint: crate::model::fingerprint(&engine.model).unwrap_or_default(),
            };
            (state, vec![model], engine.settings.parallel.get())
        }
        Backend::Router => {
            tracing::info!(%address, "listening as a router: every request goes to a peer");
            (
                AppState::with_local(options.api.clone(), Local::Router),
                Vec::new(),
                0,
            )
        }
        Backend::Upstream(config) => {
            let upstream = Upstream::new(config.clone());
            // A first look, so the first heartbeat already names the engine's models.
            upstream.poll().await;
            let seen = upstream.snapshot();
            tracing::info!(%address, upstream = %config.base, healthy = seen.healthy, "listening as a sidecar");
            let state = AppState::with_local(options.api.clone(), Local::Upstream(upstream));
            let models = swarm::advertised_models(&seen);
            (state, models, seen.figures.slots_total)
        }
    };

    let mut trust = None;
    if let Some(membership) = &options.membership {
        let advertised = Advertised {
            http_host: address.ip().to_string(),
            http_port: address.port(),
            models,
            slots_total,
        };
        if let Some(handle) = membership.join(&advertised).await? {
            trust = Some(crate::route::PeerTrust::for_node(
                membership.swarm_key.is_some(),
                options.api.api_key.is_some(),
                &membership.trusted_peers().map_err(anyhow::Error::msg)?,
            ));
            if let Some(seeder) = &seeder {
                seeder.attach(&handle)?;
            }
            let _ = state.swarm.set(handle);
        }
    }
    tokio::spawn(swarm::report_load(state.clone()));

    let mut app = router(state.clone());
    if options.test_hooks {
        tracing::warn!("test hooks are on: POST /debug/inject/{{failure}} breaks this node");
        app = app.merge(hooks::routes(state.clone()));
    }
    let (unhealthy_tx, mut unhealthy_rx) = tokio::sync::mpsc::channel::<String>(1);
    watchdog::spawn(state.clone(), options.watchdog, unhealthy_tx)?;
    // Requests peers forward arrive over swarm streams; each is a task of `peer_tasks`, so
    // draining can wait for them like for HTTP connections.
    let peer_tasks = tokio_util::task::TaskTracker::new();
    let peers_draining = tokio_util::sync::CancellationToken::new();
    if let (Some(swarm), Some(trust)) = (state.swarm.get(), trust) {
        crate::route::transport::serve_peers(
            swarm,
            app.clone(),
            trust,
            peer_tasks.clone(),
            peers_draining.clone(),
        )?;
    }
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let public = app.layer(middleware::from_fn(strip_internal_headers));
    let server_shutdown = Arc::clone(&shutdown);
    let server = axum::serve(listener, public).with_graceful_shutdown(async move {
        server_shutdown.notified().await;
    });
    let server = tokio::spawn(async move { server.await });

    tokio::select! {
        // A loader that succeeded drops its sender; only a real error ends the server.
        Some(err) = failed_rx.recv() => {
            shutdown.notify_one();
            return Err(err);
        }
        // Dead or stuck inside: /health says so already; tell the swarm (if it still
        // listens), linger a moment so probes and forwarders see the 503, then exit
        // non-zero so Kubernetes restarts the pod.
        Some(reason) = unhealthy_rx.recv() => {
            tracing::error!(%reason, "unhealthy; exiting so that the node is restarted");
            let _ = tokio::time::timeout(
                options.watchdog.exit_after,
                swarm::announce_leaving(&state),
            )
            .await;
            tokio::time::sleep(options.watchdog.exit_after).await;
            shutdown.notify_one();
            anyhow::bail!("unhealthy: {reason}");
        }
        () = termination() => {}
    }
    tracing::info!(
        grace_seconds = options.shutdown_grace.as_secs(),
        "shutting down: no new requests, finishing those in flight"
    );
    // New requests get 503 `shutting_down` from here on (forwarders try elsewhere), and the
    // swarm hears at once that this node is leaving. The swarm itself stays up until the
    // requests peers forwarded here are done: their answers travel on its streams.
    state.shutting_down.store(true, Ordering::Relaxed);
    swarm::announce_leaving(&state).await;
    shutdown.notify_one();
    peers_draining.cancel();
    peer_tasks.close();
    let drained = async {
        let served = server.await;
        peer_tasks.wait().await;
        served
    };
    let result = match tokio::time::timeout(options.shutdown_grace, drained).await {
        Ok(Ok(Ok(()))) => {
            tracing::info!("all requests finished");
            Ok(())
        }
        Ok(Ok(Err(err))) => Err(err.into()),
        Ok(Err(err)) => Err(anyhow::anyhow!("the server task failed: {err}")),
        Err(_) => {
            tracing::warn!("grace period over; dropping the requests still running");
            Ok(())
        }
    };
    swarm::leave(&state).await;
    result
}

/// Whether a node shares its model file with peers: only a file it verifies (`--sha256`),
/// only inside a private swarm (peers outside the pre-shared key could be anyone), and not
/// when told to share nothing.
fn shares_weights(engine: &EngineOptions, membership: Option<&MembershipArgs>) -> bool {
    let private = membership.is_some_and(|m| !m.no_swarm && m.swarm_key.is_some());
    let share = engine.sha256.is_some() && engine.share.max_uploads > 0;
    if share && !private {
        tracing::info!("the model file is not shared: the swarm is not private (no --swarm-key)");
    }
    share && private
}

/// Loads the model in the background and installs it; a failure goes to `failed`.
fn start_loading(
    state: &AppState,
    options: EngineOptions,
    seeder: Option<crate::weights::Seeder>,
    failed: tokio::sync::mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<()> {
    let chat_template = match &options.chat_template {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|err| {
            anyhow::anyhow!("cannot read the chat template {}: {err}", path.display())
        })?),
        None => None,
    };
    let state = state.clone();
    tokio::spawn(async move {
        let result = load(&options, seeder)
            .await
            .and_then(|engine| state.install(engine, chat_template));
        match result {
            Ok(()) => tracing::info!(model_id = %state.config.model_id, "model loaded; serving"),
            Err(err) => {
                let _ = failed.send(err).await;
            }
        }
    });
    Ok(())
}

/// `Q4_K_M` from `gemma-3-270m-q4_k_m.gguf`: the usual file naming, or empty.
fn quantization_of(model: &std::path::Path) -> String {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_uppercase())
        .unwrap_or_default();
    stem.rsplit(['-', '.'])
        .find(|part| part.starts_with('Q') || part.starts_with("F16") || part.starts_with("BF16"))
        .unwrap_or_default()
        .to_string()
}

async fn load(
    options: &EngineOptions,
    seeder: Option<crate::weights::Seeder>,
) -> anyhow::Result<Engine> {
    if let Some(sha256) = options.sha256.clone() {
        let path = options.model.clone();
        match seeder {
            // One read both checks the file and makes the manifest peers fetch it by.
            Some(seeder) => {
                let expected = crate::model::normalize_sha256(&sha256)?;
                let manifest = tokio::task::spawn_blocking(move || {
                    crate::weights::Manifest::of_file(&path)
                        .map_err(|cause| crate::model::ModelError::Io {
                            action: "cannot read model file",
                            path: path.clone(),
                            cause,
                        })
                        .and_then(|manifest| {
                            if manifest.sha256 == expected {
                                Ok(manifest)
                            } else {
                                Err(crate::model::ModelError::ChecksumMismatch {
                                    path,
                                    expected,
                                    actual: manifest.sha256,
                                })
                            }
                        })
                })
                .await??;
                seeder.add(&options.model, manifest);
            }
            None => {
                tokio::task::spawn_blocking(move || crate::model::verify_sha256(&path, &sha256))
                    .await??;
            }
        }
    }
    Ok(Engine::start(&options.model, options.settings.clone()).await?)
}

/// SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
async fn termination() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
