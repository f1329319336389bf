//! Trying a plan's candidates in order until one answers, and continuing broken streams.
//!
//! An attempt fails (and the next candidate gets the request) when, before the first byte
//! reached the client:
//! - the peer cannot be reached, resets, or does not answer in time;
//! - it answers 429, 502, 503 or 504 (loading, draining, queue full), or refuses this node
//!   (401/403), or cannot continue a stream (409);
//! - its answer's body fails before its first chunk.
//!
//! This node's own handler is a candidate like any peer (see `pick.rs`): first when it is
//! not busier, always the last resort. A peer that failed is suspected at once
//! (`breaker.rs`), except for a full queue, which only says "busy". Nothing is retried
//! once bytes reached the client, except a broken stream, which continues on another node
//! from where the client is (`relay.rs`, `resume.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http_body_util::{BodyDataStream, BodyExt, Full};
use libp2p::PeerId;
use tracing::{debug, warn};

use super::Router;
use super::error::RouteError;
use super::inflight::InFlightGuard;
use super::layer::LocalView;
use super::metrics::ForwardOutcome;
use super::pick::{Candidate, Route, RouteRequest, Target};
use super::relay::{self, BoxBody, BoxError, Continued, Continuer};
use super::resume::{ANNOTATE_HEADER, RESUME_HEADER, Resume};
use super::transport;
use crate::swarm::error_text;

/// Names the node that served a response (its peer id).
pub const NODE_HEADER: &str = "x-llamanet-node";

/// Timeouts of forwarding. `Default` is what a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Opening a stream to a peer (dialing it first if needed); past it the next candidate
    /// is tried. Short: a live peer answers within milliseconds.
    pub connect_timeout: Duration,
    /// Until the response head. Long: a non-streamed answer's head comes only when
    /// generation is done.
    pub response_timeout: Duration,
    /// Longest silence between two body chunks (and before the first) before the answer
    /// counts as broken.
    pub stall_timeout: Duration,
    /// No new attempt starts this long after the request arrived (the total budget).
    pub retry_window: Duration,
    /// Requests for models scaled to zero.
    pub hold: super::HoldPolicy,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(120),
            retry_window: Duration::from_secs(120),
            hold: super::HoldPolicy::default(),
        }
    }
}

/// A request to serve somewhere, as the entry node received it.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The client's headers (only [`transport::FORWARDED_HEADERS`] of them leave this node).
    pub headers: HeaderMap,
    /// The body; `Bytes` so every attempt resends it without copying.
    pub body: Bytes,
    /// The body's `model`.
    pub model: String,
    /// Whether the client asked for a stream (peers are then asked to annotate it).
    pub stream: bool,
}

impl ForwardRequest {
    pub fn new(
        method: Method,
        path: impl Into<String>,
        headers: HeaderMap,
        body: Bytes,
        model: impl Into<String>,
    ) -> Self {
        let stream = asks_for_stream(&body);
        ForwardRequest {
            method,
            path: path.into(),
            headers,
            body,
            model: model.into(),
            stream,
        }
    }
}

/// Whether a request body asks for a streamed answer (`"stream": true`).
pub(crate) fn asks_for_stream(body: &[u8]) -> bool {
    serde_json::from_slice::<StreamField>(body).is_ok_and(|f| f.stream)
}

#[derive(serde::Deserialize)]
struct StreamField {
    #[serde(default)]
    stream: bool,
}

/// This node's own handler, for requests it serves itself: the rest of the middleware
/// stack and what it says about its load.
#[derive(Clone)]
pub struct Here {
    pub next: Next,
    pub view: LocalView,
}

/// An answer whose head (and, from a peer, first body chunk) arrived.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: BoxBody,
    /// `None` when this node answered.
    from: Option<PeerId>,
    inflight: Option<InFlightGuard>,
}

impl Answer {
    fn sse(&self) -> bool {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }
}

/// Why an attempt failed, and whether that makes the peer suspect.
struct Failure {
    reason: String,
    suspect: bool,
}

impl Failure {
    fn suspect(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            suspect: true,
        }
    }
}

/// Statuses that say "try someone else" rather than "your request is wrong".
fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 401 | 403 | 409 | 429 | 502 | 503 | 504)
}

impl Router {
    /// Serves `request` by `plan`: the first candidate that answers does. Never fails:
    /// when nobody answers, the response is a 502 listing every attempt (or the last
    /// candidate's own error, passed through).
    pub async fn serve(
        &self,
        plan: Vec<Candidate>,
        request: ForwardRequest,
        here: Option<Here>,
    ) -> Response {
        let started = Instant::now();
        // Only a peer's stream needs annotations: this node's own answer cannot break apart
        // from the entry, and goes to the client as it is.
        let extra = annotate_headers(&request);
        let mut attempts: Vec<String> = Vec::new();
        let mut tried: HashSet<PeerId> = HashSet::new();
        let count = plan.len();
        for (index, candidate) in plan.into_iter().enumerate() {
            if index > 0 && started.elapsed() >= self.config().retry_window {
                attempts.push(format!(
                    "gave up after {:?} (the retry window)",
                    self.config().retry_window
                ));
                break;
            }
            let last = index + 1 == count;
            match self
                .attempt(&candidate, &request, &extra, here.as_ref(), last)
                .await
            {
                Ok(answer) => {
                    let outcome = match (&candidate, index) {
                        (Candidate::Local, 0) => None,
                        (Candidate::Local, _) => Some(ForwardOutcome::Local),
                        (Candidate::Peer(_), _) if answer.status.is_server_error() => {
                            Some(ForwardOutcome::Failed)
                        }
                        (Candidate::Peer(_), 0) => Some(ForwardOutcome::Ok),
                        (Candidate::Peer(_), _) => Some(ForwardOutcome::Failover),
                    };
                    if let Some(outcome) = outcome {
                        self.metrics().record(outcome);
                    }
                    if let Some(target) = candidate.peer() {
                        self.peer_succeeded(&target.peer_id);
                        tried.insert(target.peer_id);
                    }
                    return self.respond(answer, request, here, tried);
                }
                Err(failure) => {
                    let who = match &candidate {
                        Candidate::Local => "this node".to_string(),
                        Candidate::Peer(target) => target.peer_id.to_string(),
                    };
                    warn!(%who, reason = %failure.reason, "attempt failed before the first byte; trying the next candidate");
                    attempts.push(format!("{who}: {}", failure.reason));
                    if let Some(target) = candidate.peer() {
                        tried.insert(target.peer_id);
                        if failure.suspect {
                            self.peer_failed(target);
                        }
                    }
                    if !last {
                        self.metrics().record_failover();
                    }
                }
            }
        }
        self.metrics().record(ForwardOutcome::Failed);
        RouteError::NoPeerAnswered {
            model: request.model.clone(),
            attempts,
        }
        .into_response()
    }

    /// One attempt at `candidate`. The last candidate's refusals come back as answers:
    /// its own error says more than ours would.
    async fn attempt(
        &self,
        candidate: &Candidate,
        request: &ForwardRequest,
        extra: &[(HeaderName, String)],
        here: Option<&Here>,
        last: bool,
    ) -> Result<Answer, Failure> {
        match candidate {
            Candidate::Local => {
                let Some(here) = here else {
                    return Err(Failure::suspect("this node serves nothing itself"));
                };
                // Annotations only where the answer will be relayed (a continuation): a
                // first answer of this node goes to the client untouched.
                let resuming = extra.iter().any(|(name, _)| name == RESUME_HEADER);
                let extra = if resuming { extra } else { &[] };
                self.attempt_here(here, request, extra, last).await
            }
            Candidate::Peer(target) => self.attempt_peer(target, request, extra, last).await,
        }
    }

    async fn attempt_here(
        &self,
        here: &Here,
        request: &ForwardRequest,
        extra: &[(HeaderName, String)],
        last: bool,
    ) -> Result<Answer, Failure> {
        let mut headers = request.headers.clone();
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name.clone(), value);
            }
        }
        let mut local = Request::new(Body::from(request.body.clone()));
        *local.method_mut() = request.method.clone();
        *local.uri_mut() = request
            .path
            .parse()
            .map_err(|_| Failure::suspect("unparseable path"))?;
        *local.headers_mut() = headers;
        let response = here.next.clone().run(local).await;
        let status = response.status();
        if retryable(status) && !last {
            return Err(Failure {
                reason: format!("this node answered {status}"),
                suspect: false,
            });
        }
        let (parts, body) = response.into_parts();
        Ok(Answer {
            status,
            headers: parts.headers,
            body: body
                .into_data_stream()
                .map(|chunk| chunk.map_err(|err| -> BoxError { Box::new(err) }))
                .boxed(),
            from: None,
            inflight: None,
        })
    }

    async fn attempt_peer(
        &self,
        target: &Target,
        request: &ForwardRequest,
        extra: &[(HeaderName, String)],
        last: bool,
    ) -> Result<Answer, Failure> {
        let Some(swarm) = self.swarm() else {
            return Err(Failure::suspect(
                "this node has no swarm to reach peers through",
            ));
        };
        let config = self.config();
        let peer = target.peer_id;
        // Counted until the answer has been relayed (the guard travels with the body).
        let inflight = self.inflight().begin(peer);
        let mut outgoing = axum::http::Request::new(Full::new(request.body.clone()));
        *outgoing.method_mut() = request.method.clone();
        *outgoing.uri_mut() = request
            .path
            .parse()
            .map_err(|_| Failure::suspect("unparseable path"))?;
        *outgoing.headers_mut() = transport::outgoing_headers(&request.headers, extra);
        outgoing
            .headers_mut()
            .insert(header::HOST, HeaderValue::from_static("llamanet"));
        let sent = transport::send(swarm, self.pool(), peer, outgoing, config.connect_timeout);
        let response = match tokio::time::timeout(config.response_timeout, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(Failure::suspect(error_text::chain(&err))),
            Err(_) => {
                return Err(Failure::suspect(format!(
                    "no answer within {:?}",
                    config.response_timeout
                )));
            }
        };
        let status = response.status();
        let (parts, incoming) = response.into_parts();
        if retryable(status) && !last {
            let (code, message) = error_of(incoming).await;
            return Err(Failure {
                reason: format!("answered {status}: {message}"),
                // Busy is not broken.
                suspect: code.as_deref() != Some("queue_full"),
            });
        }
        let mut body: BoxBody = BodyDataStream::new(incoming)
            .map(|chunk| chunk.map_err(|err| -> BoxError { Box::new(err) }))
            .boxed();
        // A peer that dies right after its head is still a failure before the first byte.
        let first = match tokio::time::timeout(config.stall_timeout, body.next()).await {
            Ok(Some(Ok(chunk))) => Some(chunk),
            Ok(None) => None,
            Ok(Some(Err(err))) => {
                return Err(Failure::suspect(format!(
                    "body failed: {}",
                    error_text::chain(err.as_ref())
                )));
            }
            Err(_) => {
                return Err(Failure::suspect(format!(
                    "no body within {:?}",
                    config.stall_timeout
                )));
            }
        };
        debug!(%peer, %status, "forwarding answer");
        Ok(Answer {
            status,
            headers: parts.headers,
            body: futures::stream::iter(first.map(Ok)).chain(body).boxed(),
            from: Some(peer),
            inflight: Some(inflight),
        })
    }

    /// The client's response for an answer: its head, and its body relayed (continued
    /// elsewhere if it is an annotated stream that breaks).
    fn respond(
        &self,
        answer: Answer,
        request: ForwardRequest,
        here: Option<Here>,
        tried: HashSet<PeerId>,
    ) -> Response {
        let from = answer.from.unwrap_or(self.me());
        let mut headers = incoming_headers(&answer.headers);
        if let Ok(value) = HeaderValue::from_str(&from.to_string()) {
            headers.insert(NODE_HEADER, value);
        }
        let status = answer.status;
        let sse = answer.sse();
        let body = match answer.from {
            // Our own handler: nothing between it and the client can break.
            None => Body::from_stream(answer.body),
            Some(peer) if sse && request.stream && status.is_success() => {
                let guard = answer.inflight;
                let continuer = self.continuer(request, here, tried, peer, guard);
                Body::from_stream(relay::resumable(
                    answer.body,
                    peer.to_string(),
                    self.config().stall_timeout,
                    self.metrics(),
                    continuer,
                ))
            }
            Some(peer) => {
                let guard = answer.inflight;
                let relayed = relay::plain(
                    answer.body,
                    sse,
                    self.config().stall_timeout,
                    peer.to_string(),
                    self.metrics(),
                );
                // The in-flight count ends with the body.
                Body::from_stream(relayed.map(move |chunk| {
                    let _ = &guard;
                    chunk
                }))
            }
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }

    /// What continues a broken stream: a fresh plan for the model, without the peers this
    /// request already failed on, each tried with the resume point until one answers with
    /// a stream.
    fn continuer(
        &self,
        request: ForwardRequest,
        here: Option<Here>,
        tried: HashSet<PeerId>,
        first: PeerId,
        first_guard: Option<InFlightGuard>,
    ) -> Continuer {
        /// Who writes the stream now, and who failed it before.
        struct Writer {
            tried: HashSet<PeerId>,
            current: Option<PeerId>,
            inflight: Option<InFlightGuard>,
        }
        let writer = Arc::new(std::sync::Mutex::new(Writer {
            tried,
            current: Some(first),
            inflight: first_guard,
        }));
        let router = self.clone();
        Box::new(move |resume: Resume, reason: String| {
            let router = router.clone();
            let request = request.clone();
            let here = here.clone();
            let writer = Arc::clone(&writer);
            Box::pin(async move {
                let tried = {
                    let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                    // The broken attempt is over: it no longer counts as in flight.
                    w.inflight = None;
                    if let Some(peer) = w.current.take() {
                        w.tried.insert(peer);
                        router.peer_failed_by_id(&peer);
                        debug!(%peer, %reason, "stream broke; looking for a node to continue it");
                    }
                    w.tried.clone()
                };
                let extra = [
                    (HeaderName::from_static(ANNOTATE_HEADER), "1".to_string()),
                    (HeaderName::from_static(RESUME_HEADER), resume.to_header()),
                ];
                let plan = router.replan(&request.model, here.as_ref(), &tried, &resume);
                for candidate in plan {
                    match router
                        .attempt(&candidate, &request, &extra, here.as_ref(), false)
                        .await
                    {
                        Ok(answer) if answer.status.is_success() && answer.sse() => {
                            if let Some(peer) = answer.from {
                                router.peer_succeeded(&peer);
                            }
                            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                            w.current = answer.from;
                            w.inflight = answer.inflight;
                            let from = answer.from.unwrap_or(router.me()).to_string();
                            return Some(Continued {
                                body: answer.body,
                                from,
                            });
                        }
                        Ok(answer) => {
                            warn!(status = %answer.status, "a node answered a continuation with no stream");
                        }
                        Err(failure) => {
                            warn!(reason = %failure.reason, "a continuation attempt failed");
                            if let Some(target) = candidate.peer() {
                                writer
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .tried
                                    .insert(target.peer_id);
                                if failure.suspect {
                                    router.peer_failed(target);
                                }
                            }
                        }
                    }
                }
                None
            })
        })
    }

    /// Candidates to continue a stream: a fresh decision for the model (breakers and all),
    /// without the peers already tried, and only peers whose model file matches.
    fn replan(
        &self,
        model: &str,
        here: Option<&Here>,
        tried: &HashSet<PeerId>,
        resume: &Resume,
    ) -> Vec<Candidate> {
        let (serves, load) = here.map_or((false, f64::INFINITY), |h| (h.view)(model));
        let ask = RouteRequest {
            model,
            affinity: None,
        };
        match self.decide(&ask, &self.local(serves, load)) {
            Route::Serve(plan) => plan
                .into_iter()
                .filter(|c| match c.peer() {
                    None => true,
                    Some(target) => {
                        !tried.contains(&target.peer_id) && target.fingerprint == resume.fingerprint
                    }
                })
                .collect(),
            Route::NotServed => Vec::new(),
        }
    }
}

/// Internal headers every attempt of `request` carries.
fn annotate_headers(request: &ForwardRequest) -> Vec<(HeaderName, String)> {
    if request.stream {
        vec![(HeaderName::from_static(ANNOTATE_HEADER), "1".to_string())]
    } else {
        Vec::new()
    }
}

/// An error answer's `code` and message, read within bounds (2 KiB, one second).
async fn error_of(body: hyper::body::Incoming) -> (Option<String>, String) {
    let limited = http_body_util::Limited::new(body, 2048);
    let bytes = match tokio::time::timeout(Duration::from_secs(1), limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => return (None, "(no readable error body)".into()),
    };
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let code = value["error"]["code"].as_str().map(str::to_string);
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    (code, message)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// `content-length`, since a relayed body may end shorter than announced.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// An answer's headers minus hop-by-hop ones.
pub fn incoming_headers(upstream: &HeaderMap) -> HeaderMap {
    upstream
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// Headers for an engine behind a sidecar: the client's minus hop-by-hop ones, with the
/// client's `Authorization` (meant for LlamaNet) replaced by the engine's own key, if any.
pub fn upstream_headers(incoming: &HeaderMap, api_key: Option<&str>) -> HeaderMap {
    let mut headers: HeaderMap = incoming
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name) && *name != header::AUTHORIZATION)
        .filter(|(name, _)| !super::resume::INTERNAL_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(value) =
        api_key.and_then(|key| HeaderValue::from_str(&format!("Bearer {key}")).ok())
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_requests_swap_the_client_key_for_the_engine_key() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, "Bearer client".parse().unwrap());
        incoming.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        incoming.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        incoming.insert(RESUME_HEADER, "{}".parse().unwrap());
        let out = upstream_headers(&incoming, Some("engine"));
        assert_eq!(out[header::AUTHORIZATION], "Bearer engine");
        assert_eq!(out[header::CONTENT_TYPE], "application/json");
        assert!(!out.contains_key(header::CONNECTION) && !out.contains_key(RESUME_HEADER));
        assert!(!upstream_headers(&incoming, None).contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn only_statuses_that_mean_try_elsewhere_fail_over() {
        for code in [401, 403, 409, 429, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
        for code in [200, 400, 404, 413, 422, 500] {
            assert!(!retryable(StatusCode::from_u16(code).unwrap()), "{code}");
        }
    }

    #[test]
    fn requests_know_whether_they_stream() {
        let r = |body: &'static str| {
            ForwardRequest::new(
                Method::POST,
                "/v1/completions",
                HeaderMap::new(),
                Bytes::from_static(body.as_bytes()),
                "m",
            )
        };
        assert!(r(r#"{"model":"m","stream":true}"#).stream);
        assert!(!r(r#"{"model":"m"}"#).stream);
        assert!(!r("not json").stream);
        assert_eq!(annotate_headers(&r(r#"{"stream":true}"#)).len(), 1);
        assert!(annotate_headers(&r("{}")).is_empty());
    }
}
