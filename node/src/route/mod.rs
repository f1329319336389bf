//! Routing between nodes: any node accepts any OpenAI request, and this module decides
//! where it runs, carries it there, and makes a node's death invisible to the client.
//!
//! By file, in the order a request meets them:
//! - [`layer`]: the axum middleware in front of the generation routes; it reads the body
//!   once and hands the request to the [`Router`].
//! - [`pick`](mod@pick): the plan, pure: this node and the live peers serving the model,
//!   in the order to try them (less loaded of two random peers, prefix affinity, this
//!   node first when it is not busier and always as the last resort), suspects last.
//! - [`breaker`]: which peers are suspect since they failed an attempt, and the evidence
//!   that readmits them (a healthy heartbeat sent after the failure).
//! - [`failover`]: the attempts, in plan order, until one answers before its first byte;
//!   what counts as a failed attempt; continuing a stream that breaks later.
//! - [`transport`]: how an attempt reaches a peer: HTTP/1.1 over a swarm stream (Noise,
//!   bound to the peer id), never to a URL a heartbeat names; and serving what peers
//!   forward here. A forwarded request is served where it lands (one hop at most).
//! - [`relay`] and [`resume`]: carrying an answer's body back, and the annotations that
//!   let another node continue a broken stream exactly where the client is.
//! - [`inflight`], [`metrics`], [`error`]: forwards in flight per peer (counted into
//!   their load), counters, and routing's own OpenAI error answers.
//!
//! Not here: the swarm itself (`crate::swarm`), serving a request locally (`crate::api`).

pub mod breaker;
pub mod error;
pub mod failover;
pub mod hold;
pub mod inflight;
pub mod layer;
pub mod metrics;
pub mod pick;
pub mod relay;
pub mod resume;
pub mod transport;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use libp2p::PeerId;
use rand::Rng;

use crate::swarm::{PeerEvent, SwarmHandle};

pub use breaker::{BreakerPolicy, Breakers};
pub use error::RouteError;
pub use failover::{ForwardRequest, ForwarderConfig, Here, NODE_HEADER};
pub use hold::HoldPolicy;
pub use inflight::InFlight;
pub use layer::{LocalView, RouteLayer, route_or_serve};
pub use metrics::{ForwardOutcome, RouteMetrics, RouteMetricsSnapshot};
pub use pick::{
    Candidate, LocalState, PeerSource, PickPolicy, Route, RouteRequest, Target, affinity_of, pick,
};
pub use transport::{ForwardedBy, PeerTrust};

/// Everything a node needs to route: where peers come from, the policy, the way to reach
/// them, and what it has learned about them. Clone it freely (one `Arc`).
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    peers: Arc<dyn PeerSource>,
    me: PeerId,
    policy: PickPolicy,
    config: ForwarderConfig,
    /// How peers are reached; `None` in tests of the decisions alone.
    swarm: Option<SwarmHandle>,
    metrics: Arc<RouteMetrics>,
    inflight: InFlight,
    breakers: Mutex<Breakers>,
    /// Open exchanges to peers, reused by later forwards.
    pool: transport::Pool,
    /// Requests waiting for cold models to wake.
    holds: Arc<hold::Holds>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("me", &self.inner.me)
            .field("policy", &self.inner.policy)
            .field("config", &self.inner.config)
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

    fn order_of(&self, peer: &PeerId) -> Option<breaker::Order> {
        self.peers.order_of(peer)
    }

    fn cold(&self, model: &str) -> Vec<(PeerId, crate::swarm::ColdModel)> {
        self.peers.cold(model)
    }
}

impl Router {
    /// A router over a running swarm: peers from its table, reached over its streams, and
    /// its heartbeats as the evidence that readmits suspects.
    pub fn for_swarm(swarm: SwarmHandle, policy: PickPolicy, config: ForwarderConfig) -> Self {
        let router = Self::new(
            Arc::new(swarm.clone()),
            swarm.peer_id(),
            policy,
            config,
            Some(swarm.clone()),
        );
        let weak = Arc::downgrade(&router.inner);
        let mut events = swarm.subscribe();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let event = match events.recv().await {
                    Ok(event) => event,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                };
                let Some(inner) = weak.upgrade() else { return };
                match event {
                    PeerEvent::Heartbeat(heartbeat) => lock(&inner.breakers).heard(&heartbeat),
                    PeerEvent::PeerLeft(peer) => {
                        lock(&inner.breakers).retain(|p| *p != peer);
                        inner.pool.forget(&peer);
                    }
                    _ => {}
                }
            }
        });
        router
    }

    pub fn new(
        peers: Arc<dyn PeerSource>,
        me: PeerId,
        policy: PickPolicy,
        config: ForwarderConfig,
        swarm: Option<SwarmHandle>,
    ) -> Self {
        Router {
            inner: Arc::new(Inner {
                peers,
                me,
                policy,
                config,
                swarm,
                metrics: Arc::new(RouteMetrics::default()),
                inflight: InFlight::default(),
                breakers: Mutex::new(Breakers::new(BreakerPolicy::default())),
                pool: transport::Pool::default(),
                holds: Arc::default(),
            }),
        }
    }

    /// This node's peer id, which names what it serves.
    pub fn me(&self) -> PeerId {
        self.inner.me
    }

    pub fn policy(&self) -> &PickPolicy {
        &self.inner.policy
    }

    pub fn config(&self) -> &ForwarderConfig {
        &self.inner.config
    }

    pub fn metrics(&self) -> Arc<RouteMetrics> {
        Arc::clone(&self.inner.metrics)
    }

    pub(crate) fn swarm(&self) -> Option<&SwarmHandle> {
        self.inner.swarm.as_ref()
    }

    pub(crate) fn pool(&self) -> &transport::Pool {
        &self.inner.pool
    }

    /// Forwards in flight, by peer (counted into peers' loads when choosing).
    pub fn inflight(&self) -> &InFlight {
        &self.inner.inflight
    }

    pub(crate) fn holds(&self) -> &Arc<hold::Holds> {
        &self.inner.holds
    }

    /// Every model in the swarm, by id.
    pub fn models(&self) -> Vec<String> {
        self.inner.peers.models()
    }

    /// Peers suspect right now.
    pub fn suspects(&self) -> usize {
        lock(&self.inner.breakers).count()
    }

    /// Whether `peer` is out of the candidate set now.
    pub fn is_suspect(&self, peer: &PeerId) -> bool {
        lock(&self.inner.breakers).is_suspect(peer, Instant::now())
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
    /// announced loads count the forwards this node has in flight to them; suspects go
    /// last.
    pub fn decide_with(
        &self,
        request: &RouteRequest<'_>,
        local: &LocalState,
        rng: &mut impl Rng,
    ) -> Route {
        let peers = WithInFlight {
            peers: self.inner.peers.as_ref(),
            inflight: &self.inner.inflight,
        };
        let now = Instant::now();
        let mut breakers = lock(&self.inner.breakers);
        pick(
            &peers,
            local,
            request,
            &self.inner.policy,
            rng,
            &mut |peer| breakers.is_suspect(peer, now),
        )
    }

    /// Records a failed attempt at `target`: suspect from now on.
    pub(crate) fn peer_failed(&self, target: &Target) {
        self.inner.metrics.record_suspected();
        lock(&self.inner.breakers).failed(target.peer_id, Some(target.order), Instant::now());
    }

    /// Like [`Router::peer_failed`] when only the id is at hand (a stream that broke).
    pub(crate) fn peer_failed_by_id(&self, peer: &PeerId) {
        self.inner.metrics.record_suspected();
        let order = self.inner.peers.order_of(peer);
        lock(&self.inner.breakers).failed(*peer, order, Instant::now());
    }

    pub(crate) fn peer_succeeded(&self, peer: &PeerId) {
        lock(&self.inner.breakers).succeeded(peer);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
