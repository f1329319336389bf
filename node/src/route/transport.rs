//! How a forwarded request travels: HTTP/1.1 over a swarm stream ([`HTTP_PROTOCOL`]), kept
//! alive between exchanges. Opening a stream costs a multistream-select round trip through
//! both nodes' swarm tasks (about a millisecond on two cores), so a forward reuses an idle
//! exchange of the [`Pool`] when there is one, and the serving side keeps streams open
//! until the forwarder closes them or the node drains.
//!
//! Why not the peer's HTTP endpoint: a heartbeat's endpoint URL is only the peer's claim, so
//! dialling it would send clients' prompts, in clear text, wherever a stranger points, and
//! make every node a relay to any URL. A swarm stream instead rides the connection whose
//! Noise handshake proved the peer id that signs the heartbeats: the forwarder knows exactly
//! who answers, the traffic is encrypted, and no second port or certificate is needed. The
//! client's credentials stay at the entry node: only the headers in [`FORWARDED_HEADERS`]
//! travel, and the serving node trusts the forwarder's identity ([`PeerTrust`]) instead of a
//! key.
//!
//! The serving side ([`serve_peers`]) runs the node's own axum app on each inbound stream,
//! with the caller's peer id as a [`ForwardedBy`] request extension: that is what marks a
//! request as forwarded (one hop at most) and lets it skip the API key. Nothing a client
//! sends can set an extension.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use libp2p::PeerId;
use tokio::sync::Semaphore;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::swarm::{HTTP_PROTOCOL, SwarmError, SwarmHandle};

/// The peer a request came from, set on requests that arrived over a swarm stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedBy(pub PeerId);

/// The only client headers a forward carries (plus the internal ones routing adds). No
/// `Authorization`, cookies or proxy headers ever leave the entry node.
pub const FORWARDED_HEADERS: [&str; 4] = ["content-type", "accept", "user-agent", "x-request-id"];

/// Paths peers may forward to: the OpenAI generation routes, nothing else.
pub const FORWARDABLE_PATHS: [&str; 3] =
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// Inbound exchanges served at once over all peers; past it new streams are refused at once
/// (the forwarder tries its next candidate).
const MAX_INBOUND: usize = 512;

/// Inbound exchanges served at once for one peer.
const MAX_INBOUND_PER_PEER: usize = 128;

/// Longest a peer may take to send a request's head once its stream is open, or once the
/// previous answer on it is done: an idle exchange is closed after this long (hyper's
/// header-read timer runs while it waits for the next request).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may forward requests to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerTrust {
    /// Every peer that can connect: the swarm is private (a pre-shared key keeps everyone
    /// else out), or the node has no API key to protect anyway.
    Members,
    /// Only these peers (a node with an API key in a public swarm: strangers could join
    /// and use it without the key otherwise).
    Only(HashSet<PeerId>),
}

impl PeerTrust {
    /// The rule for a node: members when the swarm is private or nothing needs a key,
    /// otherwise only the listed peers.
    pub fn for_node(private_swarm: bool, has_api_key: bool, trusted: &[PeerId]) -> Self {
        if private_swarm || !has_api_key {
            PeerTrust::Members
        } else {
            PeerTrust::Only(trusted.iter().copied().collect())
        }
    }

    pub fn allows(&self, peer: &PeerId) -> bool {
        match self {
            PeerTrust::Members => true,
            PeerTrust::Only(peers) => peers.contains(peer),
        }
    }
}

/// Why a request never reached a peer, or its answer never started.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Open(#[from] SwarmError),
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    #[error("the peer did not answer: {0}")]
    Request(hyper::Error),
}

/// The headers a forward carries: [`FORWARDED_HEADERS`] of the client's, plus `extra`.
pub fn outgoing_headers(incoming: &HeaderMap, extra: &[(HeaderName, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in FORWARDED_HEADERS {
        for value in incoming.get_all(name) {
            headers.append(HeaderName::from_static(name), value.clone());
        }
    }
    for (name, value) in extra {
        if let Ok(value) = value.parse() {
            headers.insert(name.clone(), value);
        }
    }
    headers
}

/// Exchanges kept per peer (busy ones included); more are closed after their answer.
const POOL_PER_PEER: usize = 16;

/// How long an exchange may sit unused in the pool: well under the [`HEAD_TIMEOUT`] after
/// which the serving side closes it, so a forward rarely meets an exchange closing under it
/// (and [`send`] retries on a new stream when one does).
const POOL_IDLE: Duration = Duration::from_secs(4);
const _: () = assert!(POOL_IDLE.as_secs() * 2 <= HEAD_TIMEOUT.as_secs());

/// Open HTTP/1.1 exchanges to peers, each on a stream of its own. One is taken when it is
/// ready for a request (its previous answer read to the end) and put back as soon as its
/// answer's head is in, so a long stream never blocks the next forward: that one takes
/// another exchange or opens one.
#[derive(Debug, Default)]
pub struct Pool {
    exchanges: Mutex<HashMap<PeerId, Vec<Pooled>>>,
}

/// An exchange and when it was last put back.
type Pooled = (SendRequest<Full<Bytes>>, Instant);

impl Pool {
    fn take(&self, peer: &PeerId) -> Option<SendRequest<Full<Bytes>>> {
        let mut exchanges = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        let list = exchanges.get_mut(peer)?;
        list.retain(|(sender, since)| !sender.is_closed() && since.elapsed() < POOL_IDLE);
        let ready = list.iter().position(|(sender, _)| sender.is_ready())?;
        Some(list.swap_remove(ready).0)
    }

    fn put(&self, peer: PeerId, sender: SendRequest<Full<Bytes>>) {
        let mut exchanges = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        let list = exchanges.entry(peer).or_default();
        list.retain(|(sender, _)| !sender.is_closed());
        if list.len() < POOL_PER_PEER {
            list.push((sender, Instant::now()));
        }
    }

    /// Drops every exchange with `peer` (it left the swarm).
    pub fn forget(&self, peer: &PeerId) {
        let mut exchanges = self.exchanges.lock().unwrap_or_else(|e| e.into_inner());
        exchanges.remove(peer);
    }
}

/// Sends one request to `peer` and returns its answer once the response head is in; the
/// body streams as the peer writes it. An idle exchange from `pool` is reused when there is
/// one. A reused exchange can close under the request: the peer's idle timer ran out, or
/// it began to drain, just as the request went out. That costs nothing but a new stream:
/// the request is sent again on one (a peer that is really gone fails there, at once).
pub async fn send(
    swarm: &SwarmHandle,
    pool: &Pool,
    peer: PeerId,
    request: Request<Full<Bytes>>,
    open_timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    let mut request = request;
    if let Some(mut sender) = pool.take(&peer) {
        // Kept for a second try: the request itself is gone once it is written.
        let copy = copy_of(&request);
        match sender.try_send_request(request).await {
            Ok(response) => {
                pool.put(peer, sender);
                return Ok(response);
            }
            Err(mut err) => {
                request = match err.take_message() {
                    Some(unsent) => unsent,
                    None => {
                        debug!(%peer, err = %err.error(), "a reused exchange closed under a request; sending it on a new stream");
                        copy
                    }
                }
            }
        }
    }
    // A new stream can be dropped by the peer before it reads a byte: libp2p-stream hands
    // inbound streams to the serving loop through a channel with room for one and drops
    // those that arrive while it is full (under load, when the loop is slow to run). Such
    // a request was never seen, so it goes out again on another new stream.
    let mut tries = 1;
    loop {
        let copy = copy_of(&request);
        match exchange_on_new_stream(swarm, pool, peer, request, open_timeout).await {
            Err(SendError::Request(err))
                if tries < NEW_STREAM_TRIES
                    && (err.is_canceled() || err.is_incomplete_message()) =>
            {
                debug!(%peer, %err, tries, "a new stream closed before its answer began; opening another");
                tokio::time::sleep(Duration::from_millis(10 * tries as u64)).await;
                tries += 1;
                request = copy;
            }
            answer => return answer,
        }
    }
}

/// Tries on new streams for one forward (see [`send`]).
const NEW_STREAM_TRIES: u32 = 4;

/// Opens a stream to `peer`, sends `request` on it, and keeps the exchange in `pool`.
async fn exchange_on_new_stream(
    swarm: &SwarmHandle,
    pool: &Pool,
    peer: PeerId,
    request: Request<Full<Bytes>>,
    open_timeout: Duration,
) -> Result<Response<Incoming>, SendError> {
    let stream = swarm.open_stream(peer, HTTP_PROTOCOL, open_timeout).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream.compat()))
            .await
            .map_err(SendError::Handshake)?;
    // Drives the exchanges until the stream closes: when the pool drops the sender, or the
    // peer closes it.
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(%peer, %err, "forwarded exchange ended with an error");
        }
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(SendError::Request)?;
    pool.put(peer, sender);
    Ok(response)
}

/// A copy of a forward (its body is one buffer, so this is cheap).
fn copy_of(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut copy = Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Serves `app` to peers over inbound streams until the swarm stops. Each stream runs as a
/// task of `tracker`, so a draining node can wait for the forwards it is serving; once
/// `draining` is cancelled, each stream closes after the exchange in progress. Requests
/// from peers `trust` does not allow get 403; paths other than [`FORWARDABLE_PATHS`] 404.
pub fn serve_peers(
    swarm: &SwarmHandle,
    app: axum::Router,
    trust: PeerTrust,
    tracker: TaskTracker,
    draining: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, SwarmError> {
    let mut incoming = swarm.accept_streams(HTTP_PROTOCOL)?;
    let trust = Arc::new(trust);
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    let swarm = swarm.clone();
    Ok(tokio::spawn(async move {
        while let Some(stream) = incoming.next().await {
            let peer = stream.peer();
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                warn!(%peer, "too many forwarded requests in progress; refusing a stream");
                continue;
            };
            // The stream itself counts as one.
            if swarm.open_streams(&peer) > MAX_INBOUND_PER_PEER {
                warn!(%peer, "peer has too many forwarded requests in progress; refusing a stream");
                continue;
            }
            let app = app.clone();
            let trust = Arc::clone(&trust);
            let draining = draining.clone();
            tracker.spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(move |request| {
                    serve_one(app.clone(), Arc::clone(&trust), peer, request)
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .serve_connection(TokioIo::new(stream.compat()), service);
                tokio::pin!(connection);
                let served = tokio::select! {
                    served = connection.as_mut() => served,
                    () = draining.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(err) = served {
                    debug!(%peer, %err, "inbound forwarded exchange ended with an error");
                }
            });
        }
    }))
}

async fn serve_one(
    app: axum::Router,
    trust: Arc<PeerTrust>,
    peer: PeerId,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if !trust.allows(&peer) {
        warn!(%peer, "refused a forwarded request from a peer this node does not trust");
        return Ok(refusal(
            StatusCode::FORBIDDEN,
            "peer_not_trusted",
            &format!(
                "peer {peer} may not forward requests to this node: it has an API key and the \
                 swarm is public; use a swarm key (--swarm-key) or --trusted-peer"
            ),
        ));
    }
    if !FORWARDABLE_PATHS.contains(&request.uri().path()) {
        return Ok(refusal(
            StatusCode::NOT_FOUND,
            "not_forwardable",
            &format!("{} cannot be forwarded", request.uri().path()),
        ));
    }
    request.extensions_mut().insert(ForwardedBy(peer));
    Ok(app
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {}))
}

fn refusal(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header;

    #[test]
    fn forwards_carry_no_credentials_and_only_listed_headers() {
        let mut incoming = HeaderMap::new();
        incoming.insert(header::AUTHORIZATION, "Bearer secret".parse().unwrap());
        incoming.insert(header::COOKIE, "session=1".parse().unwrap());
        incoming.insert("x-api-key", "secret".parse().unwrap());
        incoming.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        incoming.insert("x-request-id", "r1".parse().unwrap());
        incoming.insert(header::HOST, "node:8080".parse().unwrap());
        let extra = [(
            HeaderName::from_static("x-llamanet-annotate"),
            "1".to_string(),
        )];
        let out = outgoing_headers(&incoming, &extra);
        let names: Vec<&str> = out.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "x-request-id", "x-llamanet-annotate"],
            "{out:?}"
        );
    }

    #[test]
    fn keyed_nodes_in_public_swarms_trust_only_listed_peers() {
        let (friend, stranger) = (PeerId::random(), PeerId::random());
        assert_eq!(PeerTrust::for_node(true, true, &[]), PeerTrust::Members);
        assert_eq!(PeerTrust::for_node(false, false, &[]), PeerTrust::Members);
        let only = PeerTrust::for_node(false, true, &[friend]);
        assert!(only.allows(&friend));
        assert!(!only.allows(&stranger));
        assert!(PeerTrust::Members.allows(&stranger));
    }
}
