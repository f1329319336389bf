//! Routing between nodes: any node accepts any OpenAI request, and this module decides
//! whether to serve it here or send it to a peer, then carries it there.
//!
//! - [`pick`](mod@pick) chooses: the candidates are the live peers serving the model (from a
//!   [`PeerSource`], the swarm's peer table in a node); the less loaded of two random ones
//!   wins, unless prompt-prefix affinity names a peer that is not clearly busier. A node
//!   that serves the model itself forwards only when a peer is clearly less loaded.
//! - [`forward`] carries a request to the chosen peer with `reqwest` and streams the answer
//!   back unbuffered, failing over to the next candidate before the first byte and ending a
//!   broken stream with an SSE error event. It marks the request with
//!   [`FORWARDED_HEADER`]; a request that carries it is never forwarded again (one hop).
//! - [`error`] is the OpenAI-shaped error answers of routing (no peer serves the model,
//!   no peer answered); [`metrics`] the forward counters the Prometheus registry reads.
//!
//! Not here: the swarm itself (`crate::swarm`), serving a request locally (`crate::api`).
//!
//! # Wiring into `serve`
//!
//! [`layer::route_or_serve`] is the whole routing step as axum middleware; the handlers
//! stay as they are. In `api::router`, when the node runs a swarm:
//!
//! ```ignore
//! use llamanet_node::route::{self, ForwarderConfig, PickPolicy, RouteLayer};
//!
//! let gate = RouteLayer {
//!     router: route::Router::for_swarm(swarm.clone(), PickPolicy::default(), ForwarderConfig::default()),
//!     // Whether we serve `model` and our load; infinite while loading (see `LocalView`).
//!     local: Arc::new(move |model: &str| state.local_view(model)),
//!     body_limit: state.config.body_limit,
//! };
//! let routed = |handler| {
//!     handler.layer(middleware::from_fn_with_state(gate.clone(), route::route_or_serve))
//! };
//! Router::new()
//!     .route("/v1/chat/completions", routed(post(chat::create)))
//!     .route("/v1/completions", routed(post(completions::create)))
//!     // ... authentication stays the outer `route_layer`, so it runs before routing.
//! ```
//!
//! Written out, the middleware does what a handler would do before enqueueing locally:
//! `if !is_forwarded(&headers) && let Route::Forward(targets) = router.decide(..) { return
//! router.forward(&targets, request).await }`, plus the 404 of [`RouteError::NotServed`].
//! `GET /v1/models` lists `router.models()` (every model in the swarm) and `GET /v1/swarm`
//! returns `Json(swarm.snapshot())`; [`RouteMetrics`] feeds the forward counters.

pub mod error;
pub mod forward;
pub mod inflight;
pub mod layer;
pub mod metrics;
pub mod pick;

use std::sync::Arc;

use axum::response::Response;
use libp2p::PeerId;
use rand::Rng;

use crate::swarm::SwarmHandle;

pub use error::RouteError;
pub use forward::{
    FORWARDED_HEADER, ForwardRequest, Forwarder, ForwarderConfig, NODE_HEADER, is_forwarded,
};
pub use inflight::InFlight;
pub use layer::{LocalView, RouteLayer, route_or_serve};
pub use metrics::{ForwardOutcome, RouteMetrics, RouteMetricsSnapshot};
pub use pick::{
    LocalState, PeerSource, PickPolicy, Route, RouteRequest, Target, affinity_of, pick,
};

/// Everything a node needs to route: where peers come from, the policy, the HTTP client.
/// Clone it freely (it is a few `Arc`s).
#[derive(Clone)]
pub struct Router {
    peers: Arc<dyn PeerSource>,
    policy: PickPolicy,
    forwarder: Forwarder,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("policy", &self.policy)
            .field("forwarder", &self.forwarder)
            .finish_non_exhaustive()
    }
}

/// A peer source whose loads include this node's forwards in flight.
struct WithInFlight<'a> {
    peers: &'a dyn PeerSource,
    inflight: &'a InFlight,
}

impl PeerSource for WithInFlight<'_> {
    fn peers_serving(&self, model: &str) -> Vec<crate::swarm::Heartbeat> {
        let mut heartbeats = self.peers.peers_serving(model);
        self.inflight.adjust(&mut heartbeats);
        heartbeats
    }

    fn models(&self) -> Vec<String> {
        self.peers.models()
    }
}

impl Router {
    /// A router over a running swarm: this node's peer id marks what it forwards.
    pub fn for_swarm(swarm: SwarmHandle, policy: PickPolicy, config: ForwarderConfig) -> Self {
        let me = swarm.peer_id();
        Self::new(Arc::new(swarm), me, policy, config)
    }

    pub fn new(
        peers: Arc<dyn PeerSource>,
        me: PeerId,
        policy: PickPolicy,
        config: ForwarderConfig,
    ) -> Self {
        Router {
            peers,
            policy,
            forwarder: Forwarder::new(me, config),
        }
    }

    /// This node's peer id, which marks what it forwards and names what it serves.
    pub fn me(&self) -> PeerId {
        self.forwarder.me()
    }

    pub fn policy(&self) -> &PickPolicy {
        &self.policy
    }

    pub fn metrics(&self) -> Arc<RouteMetrics> {
        self.forwarder.metrics()
    }

    /// Forwards in flight, by peer (counted into peers' loads when choosing).
    pub fn forwarder_inflight(&self) -> &InFlight {
        self.forwarder.inflight()
    }

    /// Every model in the swarm, by id.
    pub fn models(&self) -> Vec<String> {
        self.peers.models()
    }

    /// This node's side of the decision.
    pub fn local(&self, serves: bool, load: f64) -> LocalState {
        LocalState {
            peer_id: self.me(),
            serves,
            load,
        }
    }

    /// Where `request` should go ([`pick()`] with a thread-local random source).
    pub fn decide(&self, request: &RouteRequest<'_>, local: &LocalState) -> Route {
        self.decide_with(request, local, &mut rand::thread_rng())
    }

    /// [`Router::decide`] with a given random source (tests use a seeded one). Peers'
    /// announced loads count the forwards this node has in flight to them.
    pub fn decide_with(
        &self,
        request: &RouteRequest<'_>,
        local: &LocalState,
        rng: &mut impl Rng,
    ) -> Route {
        let peers = WithInFlight {
            peers: self.peers.as_ref(),
            inflight: self.forwarder.inflight(),
        };
        pick(&peers, local, request, &self.policy, rng)
    }

    /// Sends `request` to `targets` in order (see [`Forwarder::forward`]).
    pub async fn forward(&self, targets: &[Target], request: ForwardRequest) -> Response {
        self.forwarder.forward(targets, request).await
    }
}
