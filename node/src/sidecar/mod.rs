//! Sidecar mode (`llamanet sidecar --upstream URL`): an OpenAI-compatible engine running
//! beside this process (llama.cpp's `llama-server`, vLLM, or any OpenAI server) joins the
//! swarm as if it were a built-in node.
//!
//! [`Upstream`] is the engine as the sidecar sees it: polled every half heartbeat interval
//! for health (`/health`, `/v1/models`) and load ([`figures`]: the engine's own metrics, or
//! the sidecar's counts for a plain OpenAI server). The HTTP side (`crate::api`) proxies
//! requests for the engine's models to it and routes the rest like any node; the heartbeat
//! carries [`Upstream::snapshot`].

pub mod figures;
pub mod usage;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::cli::UpstreamKind;
use crate::route::relay::{self, BoxError, RelayEvents};
use figures::{Figures, ListedModel};
pub use usage::{TokenCount, Usage};

/// Longest silence of a proxied answer's body before it counts as broken.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// How the sidecar reaches its engine.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Base URL, e.g. `http://127.0.0.1:8000` (no trailing slash).
    pub base: String,
    pub kind: UpstreamKind,
    /// Advertise only this model (the engine may list several, or a file name).
    pub model_id: Option<String>,
    /// Bearer key the engine requires.
    pub api_key: Option<String>,
    /// Slots when the engine does not say.
    pub slots: u32,
    /// How often the engine is checked (half the heartbeat interval).
    pub check_every: Duration,
    /// Longest a health check may take: a slower engine counts as down.
    pub probe_timeout: Duration,
    /// Longest a proxied request may take until its answer starts.
    pub request_timeout: Duration,
}

/// The engine's state at the last poll.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamState {
    pub healthy: bool,
    /// Why it is not healthy (empty when it is).
    pub reason: String,
    pub models: Vec<ListedModel>,
    pub figures: Figures,
}

/// The engine beside this sidecar. Shared by the poller, the proxy and the heartbeat.
#[derive(Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    client: reqwest::Client,
    /// Proxied answers that broke after their first byte.
    broken: AtomicU64,
    state: RwLock<UpstreamState>,
    /// Requests being proxied now.
    in_flight: AtomicU32,
    /// Completion tokens the proxy has seen pass (counts a plain OpenAI server's work).
    proxied_tokens: AtomicU64,
    /// (when, token counter) of recent polls, for the throughput over [`RATE_WINDOW`].
    samples: std::sync::Mutex<VecDeque<(Instant, f64)>>,
}

/// Longest wait for `/metrics` or `/slots`, which llama-server answers between decode
/// steps.
const FIGURES_TIMEOUT: Duration = Duration::from_secs(2);

/// Throughput is measured over this much recent time.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl Upstream {
    pub fn new(mut config: UpstreamConfig) -> Arc<Self> {
        config.base = config.base.trim_end_matches('/').to_string();
        let client = reqwest::Client::builder()
            .connect_timeout(config.probe_timeout)
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        Arc::new(Upstream {
            config,
            client,
            broken: AtomicU64::new(0),
            state: RwLock::new(UpstreamState {
                reason: "not checked yet".into(),
                ..UpstreamState::default()
            }),
            in_flight: AtomicU32::new(0),
            proxied_tokens: AtomicU64::new(0),
            samples: std::sync::Mutex::new(VecDeque::new()),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Sends a request to the engine as it is (`path` and `body`, with `headers`) and
    /// streams the answer back once its first chunk is in; `Err` with the reason when it
    /// fails before that. A body that breaks later ends as `relay::plain` ends it.
    pub async fn relay(
        self: &Arc<Self>,
        method: axum::http::Method,
        path: &str,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> Result<axum::response::Response, UpstreamError> {
        let url = format!("{}{path}", self.config.base);
        let sent = self
            .client
            .request(method, &url)
            .headers(headers)
            .body(body)
            .send();
        let upstream = match tokio::time::timeout(self.config.request_timeout, sent).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(err)) => {
                return Err(UpstreamError::Request {
                    path: path.into(),
                    reason: relay::describe_http(&err),
                });
            }
            Err(_) => return Err(UpstreamError::NoAnswer(self.config.request_timeout)),
        };
        let status = upstream.status();
        let headers = crate::route::failover::incoming_headers(upstream.headers());
        let sse = headers
            .get(axum::http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let mut chunks = upstream.bytes_stream();
        let first = match tokio::time::timeout(STALL_TIMEOUT, chunks.next()).await {
            Ok(Some(Ok(chunk))) => Some(chunk),
            Ok(None) => None,
            Ok(Some(Err(err))) => return Err(UpstreamError::Body(relay::describe_http(&err))),
            Err(_) => return Err(UpstreamError::NoBody(STALL_TIMEOUT)),
        };
        let rest = chunks.map(|chunk| chunk.map_err(|err| -> BoxError { Box::new(err) }));
        let body = futures::stream::iter(first.map(Ok)).chain(rest).boxed();
        let events: Arc<dyn RelayEvents> = Arc::clone(self) as Arc<dyn RelayEvents>;
        let relayed = relay::plain(body, sse, STALL_TIMEOUT, self.config.base.clone(), events);
        let mut response = axum::response::Response::new(axum::body::Body::from_stream(relayed));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Proxied answers that broke after their first byte.
    pub fn broken_answers(&self) -> u64 {
        self.broken.load(Ordering::Relaxed)
    }

    /// The state at the last poll.
    pub fn snapshot(&self) -> UpstreamState {
        self.state.read().expect("upstream state lock").clone()
    }

    /// Ids of the models advertised for this engine (the last known while it is down).
    pub fn model_ids(&self) -> Vec<String> {
        let state = self.state.read().expect("upstream state lock");
        state.models.iter().map(|m| m.id.clone()).collect()
    }

    /// Whether the engine serves `model` and its load (busy plus waiting over slots). A
    /// down engine still serves its models but at infinite load: peers that serve them
    /// take the requests, and with none the client hears 503 rather than "no such model".
    pub fn view(&self, model: &str) -> (bool, f64) {
        let state = self.state.read().expect("upstream state lock");
        if !state.models.iter().any(|m| m.id == model) {
            return (false, f64::INFINITY);
        }
        if !state.healthy {
            return (true, f64::INFINITY);
        }
        let f = &state.figures;
        let slots = f.slots_total.max(1) as f64;
        (true, (f.slots_busy + f.queue_depth) as f64 / slots)
    }

    /// Checks the engine once and stores what it found. Returns whether health changed.
    pub async fn poll(&self) -> bool {
        let probed = self.probe().await;
        let mut state = self.state.write().expect("upstream state lock");
        let next = match probed {
            Ok(next) => next,
            Err(reason) => UpstreamState {
                healthy: false,
                reason: reason.to_string(),
                models: state.models.clone(),
                ..UpstreamState::default()
            },
        };
        let changed = state.healthy != next.healthy;
        if changed {
            if next.healthy {
                tracing::info!(upstream = %self.config.base, models = ?next.models.iter().map(|m| &m.id).collect::<Vec<_>>(), "upstream engine is healthy");
            } else {
                tracing::warn!(upstream = %self.config.base, reason = %next.reason, "upstream engine is unhealthy");
            }
        }
        *state = next;
        changed
    }

    async fn probe(&self) -> Result<UpstreamState, UpstreamError> {
        if self.config.kind != UpstreamKind::Openai {
            // llama-server answers 503 while it loads; vLLM's /health is 200 once serving.
            let (status, _) = self.get("/health").await?;
            if status != 200 {
                return Err(UpstreamError::Status {
                    path: "/health",
                    status,
                });
            }
        }
        let (status, body) = self.get("/v1/models").await?;
        if status != 200 {
            return Err(UpstreamError::Status {
                path: "/v1/models",
                status,
            });
        }
        let listed = figures::models(&parse_json(&body, "/v1/models")?)?;
        let mut models = match &self.config.model_id {
            // A single-model engine under another name (llama-server lists its file name).
            Some(id) if listed.len() <= 1 => vec![ListedModel {
                id: id.clone(),
                context_size: listed.first().map_or(0, |m| m.context_size),
            }],
            Some(id) => listed.into_iter().filter(|m| &m.id == id).collect(),
            None => listed,
        };
        if models.is_empty() {
            return Err(UpstreamError::NoModel);
        }
        let figures = self.figures(&mut models).await;
        Ok(UpstreamState {
            healthy: true,
            reason: String::new(),
            models,
            figures,
        })
    }

    /// The load figures; what the engine does not tell comes from the sidecar's counts.
    async fn figures(&self, models: &mut [ListedModel]) -> Figures {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let mut slots_total = self.config.slots;
        let mut busy = None;
        let mut slots_kv_usage = None;
        if self.config.kind == UpstreamKind::LlamaServer
            && let Ok((200, body)) = self.get("/slots").await
            && let Some(seen) = parse_json(&body, "/slots")
                .ok()
                .as_ref()
                .and_then(figures::slots)
        {
            slots_total = seen.total.max(1);
            busy = Some(seen.processing);
            slots_kv_usage = Some(seen.kv_usage);
            for model in models.iter_mut().filter(|m| m.context_size == 0) {
                model.context_size = seen.n_ctx;
            }
        }
        let scrape = match self.config.kind.metric_names() {
            Some(names) => match self.get("/metrics").await {
                Ok((200, text)) => figures::scrape(&text, &names),
                Ok((status, _)) => {
                    tracing::debug!(
                        status,
                        "the engine's /metrics is not available (llama-server needs --metrics)"
                    );
                    figures::Scrape::default()
                }
                Err(reason) => {
                    // Busy engines answer metrics late; that is no reason to drop figures.
                    tracing::debug!(%reason, "no metrics from the engine this time");
                    return self.snapshot().figures;
                }
            },
            None => figures::Scrape::default(),
        };
        let busy = busy
            .or(scrape.busy.map(|b| b as u32))
            .unwrap_or(in_flight.min(slots_total));
        let queue_depth = scrape
            .waiting
            .map(|w| w as u32)
            .unwrap_or(in_flight.saturating_sub(slots_total));
        let tokens_total = scrape
            .tokens_total
            .unwrap_or(self.proxied_tokens.load(Ordering::Relaxed) as f64);
        Figures {
            slots_busy: busy,
            slots_total,
            queue_depth,
            tokens_per_second: self.rate(tokens_total),
            // The engine's own gauge where it has one (vLLM, older llama-servers).
            kv_cache_usage: scrape.kv_usage.or(slots_kv_usage),
        }
    }

    /// Tokens per second over the last [`RATE_WINDOW`], from a counter's samples.
    fn rate(&self, total: f64) -> f64 {
        let now = Instant::now();
        let mut samples = self.samples.lock().expect("rate samples lock");
        // A restarted engine starts its counter again.
        if samples.back().is_some_and(|&(_, last)| total < last) {
            samples.clear();
        }
        samples.push_back((now, total));
        while samples.len() > 2 && now - samples[1].0 >= RATE_WINDOW {
            samples.pop_front();
        }
        let &(since, first) = samples.front().expect("just pushed");
        let seconds = (now - since).as_secs_f64();
        if seconds < 0.1 {
            0.0
        } else {
            (total - first).max(0.0) / seconds
        }
    }

    async fn get(&self, path: &'static str) -> Result<(u16, String), UpstreamError> {
        // Health answers at once; figures may wait for the engine's current decode step.
        let timeout = match path {
            "/health" | "/v1/models" => self.config.probe_timeout,
            _ => self.config.probe_timeout.max(FIGURES_TIMEOUT),
        };
        let mut request = self
            .client
            .get(format!("{}{path}", self.config.base))
            .timeout(timeout);
        if let Some(key) = &self.config.api_key {
            request = request.bearer_auth(key);
        }
        let failed = |err: reqwest::Error| UpstreamError::Request {
            path: path.into(),
            reason: relay::describe_http(&err),
        };
        let response = request.send().await.map_err(failed)?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(failed)?;
        Ok((status, body))
    }

    /// Counts one proxied request until the guard drops (when its answer has been sent).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            upstream: Arc::clone(self),
            tokens: None,
            on_done: None,
        }
    }

    /// Requests being proxied now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

fn parse_json(body: &str, path: &'static str) -> Result<Value, UpstreamError> {
    serde_json::from_str(body).map_err(|err| UpstreamError::NotJson {
        path,
        reason: err.to_string(),
    })
}

/// Why the engine beside the sidecar could not be used, as `/health` and 503s say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("{path}: {reason}")]
    Request { path: String, reason: String },
    #[error("{path} answered {status}")]
    Status { path: &'static str, status: u16 },
    #[error("{path} is not JSON: {reason}")]
    NotJson { path: &'static str, reason: String },
    #[error("/v1/models answered without a `data` list")]
    NoModelList,
    #[error("the engine lists no model to advertise")]
    NoModel,
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    #[error("body failed: {0}")]
    Body(String),
    #[error("no body within {0:?}")]
    NoBody(Duration),
}

/// One proxied request in flight; reads the token counts of its answer and, when dropped,
/// adds them, tells [`InFlight::on_done`]'s callback and ends the request.
impl RelayEvents for Upstream {
    fn broken(&self) {
        self.broken.fetch_add(1, Ordering::Relaxed);
    }

    /// A sidecar's engine streams are never continued elsewhere.
    fn continued(&self) {}
}

pub struct InFlight {
    upstream: Arc<Upstream>,
    /// Set once the answer's body is watched.
    tokens: Option<TokenCount>,
    on_done: Option<Box<dyn FnOnce(Usage) + Send>>,
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl InFlight {
    /// Calls `done` with the answer's token counts when the request ends (the node's
    /// `llamanet_prompt_tokens_total` and `llamanet_generated_tokens_total`).
    pub fn on_done(mut self, done: impl FnOnce(Usage) + Send + 'static) -> Self {
        self.on_done = Some(Box::new(done));
        self
    }

    /// Passes `body` (server-sent events when `streamed`, else one JSON object) through
    /// unchanged, counting tokens on the way.
    pub fn watch<S>(
        mut self,
        body: S,
        streamed: bool,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + Unpin,
    {
        self.tokens = Some(TokenCount::new(streamed));
        body.map(move |chunk| {
            if let (Ok(bytes), Some(tokens)) = (&chunk, &mut self.tokens) {
                tokens.feed(bytes);
            }
            chunk
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let usage = self
            .tokens
            .take()
            .map(TokenCount::finish)
            .unwrap_or_default();
        self.upstream
            .proxied_tokens
            .fetch_add(usage.completion, Ordering::Relaxed);
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(done) = self.on_done.take() {
            done(usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Arc<Upstream> {
        Upstream::new(UpstreamConfig {
            base: "http://127.0.0.1:9/".into(),
            kind: UpstreamKind::Openai,
            model_id: None,
            api_key: None,
            slots: 2,
            check_every: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(200),
            request_timeout: Duration::from_secs(5),
        })
    }

    #[tokio::test]
    async fn an_engine_that_does_not_answer_is_unhealthy_and_serves_nothing() {
        let upstream = upstream();
        assert_eq!(upstream.config().base, "http://127.0.0.1:9");
        upstream.poll().await;
        let state = upstream.snapshot();
        assert!(!state.healthy);
        assert!(state.reason.contains("/v1/models"), "{}", state.reason);
        assert_eq!(upstream.view("anything"), (false, f64::INFINITY));

        // Once it served a model, a dead engine keeps it at infinite load.
        upstream.state.write().unwrap().models = vec![ListedModel {
            id: "m".into(),
            context_size: 0,
        }];
        upstream.poll().await;
        assert!(!upstream.snapshot().healthy);
        assert_eq!(upstream.model_ids(), ["m"]);
        assert_eq!(upstream.view("m"), (true, f64::INFINITY));
        assert_eq!(upstream.view("other"), (false, f64::INFINITY));
    }

    #[test]
    fn in_flight_guards_count_requests_and_add_their_tokens() {
        let upstream = upstream();
        let told = Arc::new(std::sync::Mutex::new(None));
        let a = upstream.begin();
        let mut b = upstream.begin().on_done({
            let told = Arc::clone(&told);
            move |usage| *told.lock().unwrap() = Some(usage)
        });
        assert_eq!(upstream.in_flight(), 2);
        let mut tokens = TokenCount::new(false);
        tokens.feed(&Bytes::from_static(
            b"{\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":9}}",
        ));
        b.tokens = Some(tokens);
        drop(b);
        assert_eq!(
            *told.lock().unwrap(),
            Some(Usage {
                prompt: 4,
                completion: 9
            }),
            "the callback hears the tokens"
        );
        drop(a);
        assert_eq!(upstream.in_flight(), 0);
        assert_eq!(upstream.proxied_tokens.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn the_rate_is_the_counter_slope_and_restarts_with_the_engine() {
        let upstream = upstream();
        assert_eq!(upstream.rate(100.0), 0.0);
        std::thread::sleep(Duration::from_millis(200));
        let rate = upstream.rate(140.0);
        assert!((100.0..=210.0).contains(&rate), "{rate}");
        assert_eq!(upstream.rate(3.0), 0.0, "a counter that went back restarts");
    }
}
