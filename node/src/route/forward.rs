//! Carrying a request to a peer and its answer back.
//!
//! The request goes out as it came in (method, path, headers including `Authorization`,
//! body bytes), minus hop-by-hop headers and plus [`FORWARDED_HEADER`] naming this node, so
//! the peer serves it itself: one hop at most. The answer streams back chunk by chunk as it
//! arrives; nothing is buffered beyond the first chunk.
//!
//! Failover: a peer that cannot be reached, answers 5xx, or fails before the first body
//! byte is given up on and the next target tried; only before the first byte, since after
//! it the client already holds part of an answer. A stream that breaks (or stalls) later
//! ends with one SSE `data: {"error":...}` event, or for a plain body an aborted
//! connection, so the client never waits forever.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, BoxStream, StreamExt};
use libp2p::PeerId;
use tracing::{debug, warn};

use super::error::RouteError;
use super::inflight::{InFlight, InFlightGuard};
use super::metrics::{ForwardOutcome, RouteMetrics};
use super::pick::Target;

/// Marks a forwarded request; its value is the forwarding node's peer id. A request that
/// carries it is served where it lands, never forwarded again.
pub const FORWARDED_HEADER: &str = "x-llamanet-forwarded";

/// Names the node that served a response (its peer id).
pub const NODE_HEADER: &str = "x-llamanet-node";

/// Whether a request was already forwarded once.
pub fn is_forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED_HEADER)
}

/// Timeouts of forwarding. `Default` is what a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Connecting to a peer; past it the next peer is tried. Short: on a LAN a live peer
    /// accepts within milliseconds.
    pub connect_timeout: Duration,
    /// Until the response headers. Long: a non-streamed answer's headers come only when
    /// generation is done.
    pub response_timeout: Duration,
    /// Longest silence between two body chunks (and before the first) before the stream
    /// counts as broken.
    pub stall_timeout: Duration,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(120),
        }
    }
}

/// A request to forward, as the handler received it.
#[derive(Debug, Clone)]
pub struct ForwardRequest {
    pub method: Method,
    /// Path and query, e.g. `/v1/chat/completions`.
    pub path: String,
    pub headers: HeaderMap,
    /// The body; `Bytes` so failover resends it without copying.
    pub body: Bytes,
}

impl ForwardRequest {
    pub fn new(method: Method, path: impl Into<String>, headers: HeaderMap, body: Bytes) -> Self {
        ForwardRequest {
            method,
            path: path.into(),
            headers,
            body,
        }
    }

    /// The body's `model`, for error messages.
    fn model(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("model")?.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Sends requests to peers. Clone it freely: the HTTP client's connection pool and the
/// metrics are shared.
#[derive(Debug, Clone)]
pub struct Forwarder {
    client: reqwest::Client,
    me: PeerId,
    config: ForwarderConfig,
    metrics: Arc<RouteMetrics>,
    inflight: InFlight,
}

impl Forwarder {
    pub fn new(me: PeerId, config: ForwarderConfig) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .tcp_nodelay(true)
            // Peer-to-peer traffic stays inside the swarm's network: a proxy configured for
            // the outside world must not see it.
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        Forwarder {
            client,
            me,
            config,
            metrics: Arc::new(RouteMetrics::default()),
            inflight: InFlight::default(),
        }
    }

    /// Forwards in flight, by peer.
    pub fn inflight(&self) -> &InFlight {
        &self.inflight
    }

    pub fn me(&self) -> PeerId {
        self.me
    }

    pub fn metrics(&self) -> Arc<RouteMetrics> {
        self.metrics.clone()
    }

    /// Sends `request` to `targets` in order until one answers, and streams that answer
    /// back. Never fails: when no peer answers, the response is a 502 OpenAI error (or the
    /// last peer's own 5xx answer, passed through).
    pub async fn forward(&self, targets: &[Target], request: ForwardRequest) -> Response {
        let headers = outgoing_headers(&request.headers, self.me);
        let mut attempts = Vec::new();
        for (index, target) in targets.iter().enumerate() {
            let last = index + 1 == targets.len();
            match self.try_peer(target, &request, headers.clone(), last).await {
                Ok(response) => {
                    let outcome = match index {
                        _ if response.status().is_server_error() => ForwardOutcome::Failed,
                        0 => ForwardOutcome::Ok,
                        _ => ForwardOutcome::Failover,
                    };
                    self.metrics.record(outcome);
                    return response;
                }
                Err(reason) => {
                    warn!(peer = %target.peer_id, endpoint = %target.endpoint, %reason, "forward failed before the first byte");
                    attempts.push(format!("{}: {reason}", target.peer_id));
                    if !last {
                        self.metrics.record_failover();
                    }
                }
            }
        }
        self.metrics.record(ForwardOutcome::Failed);
        RouteError::NoPeerAnswered {
            model: request.model(),
            attempts,
        }
        .into_response()
    }

    /// Sends `request` to one endpoint with `headers` as they are and streams the answer
    /// back, like a forward without failover (the sidecar's way to its engine). `Err`
    /// with the reason when it fails before the first byte.
    pub async fn relay(
        &self,
        target: &Target,
        request: &ForwardRequest,
        headers: HeaderMap,
    ) -> Result<Response, String> {
        self.try_peer(target, request, headers, true).await
    }

    /// One peer: `Ok` once it answered and its first body chunk (if any) arrived; `Err`
    /// with the reason to fail over. The last target's 5xx comes back as `Ok`, since
    /// its own error says more than ours would.
    async fn try_peer(
        &self,
        target: &Target,
        request: &ForwardRequest,
        headers: HeaderMap,
        last: bool,
    ) -> Result<Response, String> {
        let url = format!("{}{}", target.endpoint.trim_end_matches('/'), request.path);
        // Counted until the answer has been relayed (the guard travels with the body).
        let inflight = self.inflight.begin(target.peer_id);
        let sent = self
            .client
            .request(request.method.clone(), &url)
            .headers(headers)
            .body(request.body.clone())
            .send();
        let upstream = match tokio::time::timeout(self.config.response_timeout, sent).await {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(err)) => return Err(describe(&err)),
            Err(_) => {
                return Err(format!(
                    "no answer within {:?}",
                    self.config.response_timeout
                ));
            }
        };
        let status = upstream.status();
        if status.is_server_error() && !last {
            return Err(format!("answered {status}"));
        }
        let sse = upstream
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut response_headers = incoming_headers(upstream.headers());
        if !response_headers.contains_key(NODE_HEADER) {
            // An older peer that does not name itself: we know who it is.
            if let Ok(value) = HeaderValue::from_str(&target.peer_id.to_string()) {
                response_headers.insert(NODE_HEADER, value);
            }
        }

        let mut chunks = upstream.bytes_stream().boxed();
        let first = match tokio::time::timeout(self.config.stall_timeout, chunks.next()).await {
            Ok(Some(Ok(chunk))) => Some(chunk),
            Ok(None) => None,
            Ok(Some(Err(err))) => return Err(format!("body failed: {}", describe(&err))),
            Err(_) => {
                return Err(format!("no body within {:?}", self.config.stall_timeout));
            }
        };
        debug!(peer = %target.peer_id, %status, "forwarding answer");
        let relay = Relay {
            chunks,
            sse,
            ends_event: first.as_ref().is_none_or(|c| ends_event(c)),
            done: first.is_none(),
            peer: target.peer_id,
            stall: self.config.stall_timeout,
            metrics: self.metrics.clone(),
            _inflight: inflight,
        };
        let body = stream::iter(first.map(Ok::<_, std::io::Error>)).chain(relay.into_stream());
        let mut response = Response::new(Body::from_stream(body));
        *response.status_mut() = status;
        *response.headers_mut() = response_headers;
        Ok(response)
    }
}

/// The rest of an upstream body after the first chunk.
struct Relay {
    chunks: BoxStream<'static, reqwest::Result<Bytes>>,
    sse: bool,
    /// Whether what was sent so far ends at an event boundary (`\n\n`).
    ends_event: bool,
    done: bool,
    peer: PeerId,
    stall: Duration,
    metrics: Arc<RouteMetrics>,
    _inflight: InFlightGuard,
}

impl Relay {
    fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> + Send {
        stream::unfold(self, |mut relay| async move {
            if relay.done {
                return None;
            }
            let reason = match tokio::time::timeout(relay.stall, relay.chunks.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if !chunk.is_empty() {
                        relay.ends_event = ends_event(&chunk);
                    }
                    return Some((Ok(chunk), relay));
                }
                Ok(None) => return None,
                Ok(Some(Err(err))) => describe(&err),
                Err(_) => format!("no data for {:?}", relay.stall),
            };
            relay.done = true;
            relay.metrics.record_broken_stream();
            warn!(peer = %relay.peer, %reason, "forwarded stream broke");
            let message = format!(
                "the serving node {} failed mid-stream: {reason}",
                relay.peer
            );
            if relay.sse {
                Some((Ok(error_event(&message, !relay.ends_event)), relay))
            } else {
                // A plain body cannot carry an error after its start: abort the connection
                // so the client sees a truncated answer rather than a short "complete" one.
                Some((Err(std::io::Error::other(message)), relay))
            }
        })
    }
}

/// Whether a chunk ends an SSE event.
fn ends_event(chunk: &[u8]) -> bool {
    chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n")
}

/// The SSE event that ends a broken stream: an OpenAI error object, which the OpenAI
/// clients raise as an error. `terminate` first closes a half-sent event.
fn error_event(message: &str, terminate: bool) -> Bytes {
    let error = serde_json::json!({
        "error": {
            "message": message,
            "type": "api_error",
            "param": null,
            "code": "peer_stream_broken",
        }
    });
    let prefix = if terminate { "\n\n" } else { "" };
    Bytes::from(format!("{prefix}data: {error}\n\n"))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those the
/// HTTP client recomputes (`host`, `content-length`).
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

fn outgoing_headers(incoming: &HeaderMap, me: PeerId) -> HeaderMap {
    let mut headers: HeaderMap = incoming
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    headers.insert(
        FORWARDED_HEADER,
        HeaderValue::from_str(&me.to_string()).expect("peer ids are ASCII"),
    );
    headers
}

/// Headers for an engine behind a sidecar: the client's minus hop-by-hop ones, with the
/// client's `Authorization` (meant for LlamaNet) replaced by the engine's own key, if any.
pub fn upstream_headers(incoming: &HeaderMap, api_key: Option<&str>) -> HeaderMap {
    let mut headers: HeaderMap = incoming
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name) && *name != header::AUTHORIZATION)
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    if let Some(value) =
        api_key.and_then(|key| HeaderValue::from_str(&format!("Bearer {key}")).ok())
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

/// The peer's response headers minus hop-by-hop ones; `content-length` goes too because a
/// broken stream may end shorter or longer than announced.
fn incoming_headers(upstream: &HeaderMap) -> HeaderMap {
    upstream
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// A reqwest error with its cause ("connection refused"), which its Display omits.
pub fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_connect() {
        "connect failed".to_string()
    } else if err.is_timeout() {
        "timed out".to_string()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_requests_keep_auth_drop_hop_by_hop_and_gain_the_mark() {
        let me = PeerId::random();
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, "Bearer k".parse().unwrap());
        incoming.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        incoming.insert(header::HOST, "router:8080".parse().unwrap());
        incoming.insert(header::CONTENT_LENGTH, "12".parse().unwrap());
        let out = outgoing_headers(&incoming, me);
        assert_eq!(out[header::AUTHORIZATION], "Bearer k");
        assert_eq!(out[FORWARDED_HEADER], me.to_string().as_str());
        assert!(!out.contains_key(header::CONNECTION) && !out.contains_key(header::HOST));
        assert!(!out.contains_key(header::CONTENT_LENGTH));
        assert!(is_forwarded(&out) && !is_forwarded(&incoming));
    }

    #[test]
    fn engine_requests_swap_the_client_key_for_the_engine_key() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, "Bearer client".parse().unwrap());
        incoming.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        incoming.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        let out = upstream_headers(&incoming, Some("engine"));
        assert_eq!(out[header::AUTHORIZATION], "Bearer engine");
        assert_eq!(out[header::CONTENT_TYPE], "application/json");
        assert!(!out.contains_key(header::CONNECTION) && !is_forwarded(&out));
        assert!(!upstream_headers(&incoming, None).contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn error_event_closes_a_half_sent_event_first() {
        let whole = error_event("boom", false);
        assert!(whole.starts_with(b"data: {") && whole.ends_with(b"\n\n"));
        assert!(error_event("boom", true).starts_with(b"\n\ndata: "));
        let json: serde_json::Value =
            serde_json::from_slice(&whole[b"data: ".len()..whole.len() - 2]).unwrap();
        assert_eq!(json["error"]["code"], "peer_stream_broken");
        assert!(ends_event(b"data: x\n\n") && !ends_event(b"data: x"));
    }
}
