//! Swarm membership: how nodes find each other and know what each serves.
//!
//! Every node runs one libp2p swarm (TCP + Noise + Yamux, optionally behind a pre-shared key)
//! with Kademlia in server mode, identify, ping and gossipsub ([`behaviour`]). One task owns
//! the libp2p `Swarm` ([`event_loop`]); everything else talks to it through a clonable
//! [`SwarmHandle`]: commands go in over a channel, [`PeerEvent`]s come out over a broadcast.
//!
//! Each node publishes a signed [`Heartbeat`] every `heartbeat_interval` built from the
//! latest [`NodeStatus`] the serving code handed to [`SwarmHandle::update_status`]. Verified
//! heartbeats fill the [`PeerTable`], which expires peers that stop sending: that table is
//! what the router and `/v1/models` read. Kademlia provider records (sharded per model,
//! [`providers`]) let a newcomer find the nodes serving a model before gossip reaches it.
//!
//! Not here: choosing a peer for a request and forwarding (the router), and turning
//! [`SwarmMetrics`] into Prometheus series (the metrics module).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use llamanet_swarm::{self as swarm, ModelInfo, NodeStatus, SwarmConfig};
//! let (key, _) = swarm::identity::load_or_create("/var/lib/llamanet/identity.key".as_ref())?;
//! let config = SwarmConfig {
//!     bootstrap: vec!["/dns4/llamanet-operator.llamanet/tcp/4001".parse()?],
//!     ..SwarmConfig::default()
//! };
//! let swarm = swarm::start(key, config).await?;
//! swarm.update_status(|s| {
//!     s.models = vec![ModelInfo { id: "qwen2.5-0.5b".into(), context_size: 4096, quantization: "Q4_K_M".into(), ..ModelInfo::default() }];
//!     s.slots_total = 4;
//!     s.healthy = true;
//! });
//! let candidates = swarm.peers_serving("qwen2.5-0.5b");
//! # Ok(()) }
//! ```

pub mod addresses;
pub mod behaviour;
pub mod bootstrap;
mod connections;
pub mod discovery;
pub mod error_text;
mod event_loop;
pub mod heartbeat;
pub mod identity;
pub mod log_limit;
mod lookups;
pub mod membership;
pub mod metrics;
pub mod peer_table;
pub mod providers;
pub mod signed_addresses;
pub mod streams;
// Test helpers (sample heartbeats, loopback swarms) for this crate's and other crates' tests.
// Always compiled, not behind a feature: a feature only tests enable would give the test
// build a second copy of this library and of everything above it (the node, the operator),
// a few minutes of a cold CI run on two cores.
pub mod testing;
pub mod wake;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The libp2p this crate is built on, for users that need more of its types.
pub use libp2p;
pub use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
pub use libp2p::{Multiaddr, PeerId};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::AbortHandle;

pub use behaviour::{HEARTBEAT_TOPIC, TransportKind, load_psk};
pub use bootstrap::Backoff;
pub use heartbeat::{
    ColdModel, Heartbeat, InferenceNodeRef, ModelInfo, NodeStatus, RejectReason, SignedHeartbeat,
};
pub use metrics::{SwarmMetrics, SwarmMetricsSnapshot};
pub use peer_table::{
    ExpiryPolicy, ModelSummary, PeerSnapshot, PeerTable, PeerTableSnapshot, SharedPeerTable,
};
pub use streams::{HTTP_PROTOCOL, InUse, PeerStream};

/// Default heartbeat interval; with the default expiry of three intervals a dead node leaves
/// every view within 6 s (the mission asks for "within seconds", the issue for 10 s).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);

/// Connections kept before unneeded ones are closed: room for a full gossip mesh (12 at
/// most), the bootstrap peers, and the queries under way.
pub const DEFAULT_CONNECTION_TARGET: usize = 32;

/// Default TCP listen address (all interfaces, the port the operator's Services expose).
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/4001";

/// How to run the swarm. `Default` is a full node listening on [`DEFAULT_LISTEN`].
#[derive(Clone)]
pub struct SwarmConfig {
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/4001`, `/ip6/::/tcp/4001`, `/memory/0`...).
    /// Empty for a peer that only dials out (tools).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; none starts a new swarm.
    pub bootstrap: Vec<Multiaddr>,
    /// Retry schedule of unanswered bootstrap addresses.
    pub bootstrap_backoff: Backoff,
    pub heartbeat_interval: Duration,
    /// Whether this peer publishes heartbeats (nodes do; tools and the operator only listen,
    /// except while their status advertises cold models: then they publish too).
    pub publish_heartbeats: bool,
    /// Whether this peer answers DHT queries (Kademlia server mode). Nodes do; light peers
    /// stay clients so nobody routes through a short-lived process.
    pub dht_server: bool,
    /// How peer table entries age.
    pub expiry: ExpiryPolicy,
    /// Private swarm key; peers without the same key cannot connect.
    pub psk: Option<PreSharedKey>,
    pub transport: TransportKind,
    /// Provider keys per model (see [`providers`]).
    pub provider_shards: u16,
    /// Lifetime of provider records in the DHT (re-published at half of it).
    pub provider_ttl: Duration,
    /// Upper bound of a DHT query.
    pub query_timeout: Duration,
    /// Gossipsub's own heartbeat (mesh maintenance), not ours.
    pub gossip_heartbeat: Duration,
    /// Connections without an open stream are closed after this long. Gossipsub keeps a
    /// stream open to every peer of the topic, so between full peers the connection
    /// budget does that work.
    pub idle_connection_timeout: Duration,
    /// Connections a node keeps before it closes those it dialed, that are older than
    /// the query timeout and that it no longer needs (see [`connections`]). Mesh and
    /// bootstrap peers are never closed for it.
    pub connection_target: usize,
    /// Upper bound of a connection's handshake (pre-shared key, Noise, Yamux). A peer with
    /// the wrong swarm key may make the other side wait for bytes that never make sense.
    pub handshake_timeout: Duration,
    /// The status to publish until the first `update_status`.
    pub initial_status: NodeStatus,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            listen: vec![DEFAULT_LISTEN.parse().expect("valid default address")],
            bootstrap: Vec::new(),
            bootstrap_backoff: Backoff::default(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            publish_heartbeats: true,
            dht_server: true,
            expiry: ExpiryPolicy::default(),
            psk: None,
            transport: TransportKind::Tcp,
            provider_shards: providers::DEFAULT_SHARDS,
            provider_ttl: Duration::from_secs(600),
            query_timeout: Duration::from_secs(10),
            gossip_heartbeat: Duration::from_secs(1),
            idle_connection_timeout: Duration::from_secs(30),
            connection_target: DEFAULT_CONNECTION_TARGET,
            handshake_timeout: Duration::from_secs(20),
            initial_status: NodeStatus::default(),
        }
    }
}

impl SwarmConfig {
    /// A light peer (monitor, check, operator): listens nowhere, publishes nothing, DHT
    /// client; it still receives every heartbeat and can look up providers.
    pub fn light(bootstrap: Vec<Multiaddr>) -> Self {
        SwarmConfig {
            listen: Vec::new(),
            bootstrap,
            publish_heartbeats: false,
            dht_server: false,
            ..SwarmConfig::default()
        }
    }
}

impl std::fmt::Debug for SwarmConfig {
    // Hand-written so the pre-shared key never reaches a log; its fingerprint is enough to
    // compare configurations.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmConfig")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("publish_heartbeats", &self.publish_heartbeats)
            .field("dht_server", &self.dht_server)
            .field(
                "psk_fingerprint",
                &self.psk.map(|psk| psk.fingerprint().to_string()),
            )
            .field("transport", &self.transport)
            .field("provider_shards", &self.provider_shards)
            .finish_non_exhaustive()
    }
}

/// What the swarm reports as it happens (subscribe with [`SwarmHandle::subscribe`]).
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A peer's first heartbeat (or first after it had expired).
    PeerJoined(PeerId),
    /// A peer's entry expired: it stopped sending heartbeats.
    PeerLeft(PeerId),
    /// A verified heartbeat of another peer, newer than the one the table held (for
    /// consumers that act on each one, such as the operator mirroring them into status).
    Heartbeat(Box<Heartbeat>),
    /// A heartbeat failed verification; `source` is the gossipsub author.
    HeartbeatRejected {
        source: Option<PeerId>,
        reason: RejectReason,
    },
    /// First connection to a peer opened.
    Connected(PeerId),
    /// Last connection to a peer closed.
    Disconnected(PeerId),
    /// A bootstrap address answered.
    BootstrapConnected { addr: Multiaddr, peer: PeerId },
    /// A bootstrap dial failed; it is retried after `retry_in`.
    BootstrapFailed {
        addr: Multiaddr,
        error: String,
        retry_in: Duration,
    },
}

/// Why a swarm call failed.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("swarm transport: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("dial {addr} failed: {reason}")]
    Dial { addr: Multiaddr, reason: String },
    #[error("gossipsub: {0}")]
    Publish(String),
    #[error("the swarm task has stopped")]
    Stopped,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot open a stream to {peer}: {reason}")]
    OpenStream { peer: PeerId, reason: String },
    #[error("streams of {0} are already accepted elsewhere in this process")]
    AlreadyAccepted(libp2p::StreamProtocol),
}

/// Requests to the swarm task.
pub(crate) enum Command {
    PublishHeartbeat(oneshot::Sender<Result<(), SwarmError>>),
    PublishEnvelope(Vec<u8>, oneshot::Sender<Result<(), SwarmError>>),
    Bootstrap(Vec<Multiaddr>),
    Dial(Multiaddr, oneshot::Sender<Result<(), SwarmError>>),
    /// Providers of an unsharded key prefix (see [`providers`]).
    FindProviders(String, oneshot::Sender<Vec<PeerId>>),
    /// Announce in the DHT, from now until the swarm stops, that this peer shares the
    /// verified model file with this SHA-256.
    ProvideWeights(String),
    /// Finds where a peer listens through the DHT; answers whether it is connected or has
    /// addresses to dial now.
    Locate(PeerId, oneshot::Sender<bool>),
    /// Dials a peer that is not connected at the addresses its heartbeats signed, even
    /// while another dial of it is under way.
    Reach(PeerId),
    ConnectedPeers(oneshot::Sender<Vec<PeerId>>),
    Shutdown(oneshot::Sender<()>),
    /// Blocks the event loop for this long (`serve --test-hooks`): what a hung swarm task
    /// looks like.
    Hang(Duration),
}

/// The parts of a running swarm that callers share.
struct Shared {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    status: watch::Sender<NodeStatus>,
    table: SharedPeerTable,
    metrics: Arc<SwarmMetrics>,
    events: broadcast::Sender<PeerEvent>,
    listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    task: AbortHandle,
    query_timeout: Duration,
    /// Opens and accepts streams on the swarm's connections.
    streams: libp2p_stream::Control,
    in_use: InUse,
}

/// A clonable handle to a running swarm. The swarm stops when the last handle is dropped,
/// on [`SwarmHandle::shutdown`], or at once on [`SwarmHandle::abort`].
#[derive(Clone)]
pub struct SwarmHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SwarmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmHandle")
            .field("peer_id", &self.shared.peer_id)
            .finish_non_exhaustive()
    }
}

/// Starts a swarm on the current tokio runtime: listens, starts dialing the bootstrap
/// addresses, and returns once every listen address is bound (so [`SwarmHandle::listen_addrs`]
/// has the real ports).
pub async fn start(key: Keypair, config: SwarmConfig) -> Result<SwarmHandle, SwarmError> {
    let peer_id = key.public().to_peer_id();
    let table: SharedPeerTable = Arc::new(RwLock::new(PeerTable::new(config.expiry)));
    let metrics = Arc::new(SwarmMetrics::default());
    let (events, _) = broadcast::channel(1024);
    let (commands_tx, commands_rx) = mpsc::channel(256);
    let (status_tx, status_rx) = watch::channel(config.initial_status.clone());
    let listen_addrs = Arc::new(RwLock::new(Vec::new()));
    let query_timeout = config.query_timeout;
    let in_use = InUse::default();

    let mut event_loop = event_loop::EventLoop::new(
        key,
        config,
        event_loop::Channels {
            commands: commands_rx,
            status: status_rx,
            events: events.clone(),
            table: table.clone(),
            metrics: metrics.clone(),
            listen_addrs: listen_addrs.clone(),
            in_use: in_use.clone(),
        },
    )?;
    let streams = event_loop.stream_control();
    event_loop.listen().await?;
    let task = tokio::spawn(event_loop.run()).abort_handle();

    Ok(SwarmHandle {
        shared: Arc::new(Shared {
            peer_id,
            commands: commands_tx,
            status: status_tx,
            table,
            metrics,
            events,
            listen_addrs,
            task,
            query_timeout,
            streams,
            in_use,
        }),
    })
}

impl SwarmHandle {
    pub fn peer_id(&self) -> PeerId {
        self.shared.peer_id
    }

    /// The addresses the swarm listens on, with real ports (without `/p2p/<id>`).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        read(&self.shared.listen_addrs).clone()
    }

    /// Listen addresses with `/p2p/<id>` appended: what other peers can bootstrap from.
    pub fn dialable_addrs(&self) -> Vec<Multiaddr> {
        self.listen_addrs()
            .into_iter()
            .map(|a| a.with(libp2p::multiaddr::Protocol::P2p(self.shared.peer_id)))
            .collect()
    }

    /// The shared peer table (hold its lock briefly: the swarm task writes it).
    pub fn peer_table(&self) -> SharedPeerTable {
        self.shared.table.clone()
    }

    /// The live peer table as JSON-ready data (`GET /v1/swarm`).
    pub fn snapshot(&self) -> PeerTableSnapshot {
        read(&self.shared.table).snapshot()
    }

    /// Latest heartbeats of live, healthy peers serving `model`, least loaded first; this
    /// node included when it serves the model.
    pub fn peers_serving(&self, model: &str) -> Vec<Heartbeat> {
        read(&self.shared.table)
            .peers_serving(model)
            .into_iter()
            .map(|e| e.heartbeat.clone())
            .collect()
    }

    /// Every model in the swarm (`GET /v1/models` on any node).
    pub fn models(&self) -> BTreeMap<String, ModelSummary> {
        read(&self.shared.table).models()
    }

    /// Live operators that can wake `model` ([`PeerTable::cold`]).
    pub fn cold(&self, model: &str) -> Vec<(PeerId, ColdModel)> {
        read(&self.shared.table).cold(model)
    }

    /// Every model some live operator can wake.
    pub fn cold_models(&self) -> Vec<String> {
        read(&self.shared.table).cold_models()
    }

    /// A live peer's latest heartbeat.
    pub fn heartbeat_of(&self, peer: &PeerId) -> Option<Heartbeat> {
        read(&self.shared.table)
            .get(peer)
            .map(|e| e.heartbeat.clone())
    }

    pub fn metrics(&self) -> Arc<SwarmMetrics> {
        self.shared.metrics.clone()
    }

    /// Events from now on. A slow receiver loses the oldest ones (and is told so).
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared.events.subscribe()
    }

    /// Replaces what the next heartbeats report.
    pub fn set_status(&self, status: NodeStatus) {
        self.shared.status.send_replace(status);
    }

    /// Changes what the next heartbeats report in place (e.g. only the load figures).
    pub fn update_status(&self, change: impl FnOnce(&mut NodeStatus)) {
        self.shared.status.send_modify(change);
    }

    /// What the next heartbeat will report.
    pub fn status(&self) -> NodeStatus {
        self.shared.status.borrow().clone()
    }

    /// Publishes a heartbeat now instead of at the next tick (e.g. right after the model
    /// loaded, so routers learn of it at once).
    pub async fn publish_heartbeat(&self) -> Result<(), SwarmError> {
        self.request(Command::PublishHeartbeat).await?
    }

    /// Publishes an already signed envelope verbatim on the heartbeat topic. Receivers verify
    /// it like any other; this exists for relaying and for testing that forgeries are caught.
    pub async fn publish_envelope(&self, bytes: Vec<u8>) -> Result<(), SwarmError> {
        self.request(|reply| Command::PublishEnvelope(bytes, reply))
            .await?
    }

    /// Adds bootstrap addresses at run time; they are dialed with the usual retries.
    pub async fn bootstrap(&self, addrs: Vec<Multiaddr>) -> Result<(), SwarmError> {
        self.shared
            .commands
            .send(Command::Bootstrap(addrs))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    /// Dials one address once (no retries); resolves when the dial has started.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), SwarmError> {
        self.request(|reply| Command::Dial(addr, reply)).await?
    }

    /// Peers that announced `model` in the DHT, over all its provider shards. Dead providers
    /// may still be listed until their records expire; check the peer table for liveness.
    pub async fn find_providers(&self, model: &str) -> Result<Vec<PeerId>, SwarmError> {
        self.find_providers_of(providers::model_key_prefix(model))
            .await
    }

    /// Peers that announced sharing the model file with this SHA-256 (lower-case hex).
    pub async fn find_weights(&self, sha256: &str) -> Result<Vec<PeerId>, SwarmError> {
        self.find_providers_of(providers::weights_key_prefix(sha256))
            .await
    }

    /// Announces in the DHT that this peer shares the verified model file with this
    /// SHA-256, until the swarm stops. A DHT client (a light peer) announces nothing.
    pub async fn provide_weights(&self, sha256: &str) -> Result<(), SwarmError> {
        self.shared
            .commands
            .send(Command::ProvideWeights(sha256.to_owned()))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    async fn find_providers_of(&self, prefix: String) -> Result<Vec<PeerId>, SwarmError> {
        // Each shard query is bounded by the query timeout and they run in parallel; the
        // margin covers queueing in the swarm task.
        let limit = self.shared.query_timeout + Duration::from_secs(2);
        tokio::time::timeout(
            limit,
            self.request(|reply| Command::FindProviders(prefix, reply)),
        )
        .await
        .map_err(|_| SwarmError::Timeout(limit))?
    }

    /// Peers with an open connection right now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, SwarmError> {
        self.request(Command::ConnectedPeers).await
    }

    /// Opens a stream to `peer` for `protocol`, dialing the peer first if it is not
    /// connected. When that fails other than by running out of time, the peer is looked up
    /// in the DHT and tried once more: a peer known only from gossip (its heartbeat arrived
    /// through others before anyone gave its address) or one that restarted on a new address
    /// is reached that way. Bounded by `timeout` in all.
    pub async fn open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
        timeout: Duration,
    ) -> Result<PeerStream, SwarmError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let first = match self.try_open_stream(peer, protocol.clone(), deadline).await {
            Err(err @ SwarmError::OpenStream { .. }) if tokio::time::Instant::now() < deadline => {
                err
            }
            other => return other,
        };
        // libp2p-stream reports a dial without addresses either as such or, when the failure
        // overtakes the request, as a closed channel; either way the DHT may know better.
        let located =
            tokio::time::timeout_at(deadline, self.request(|r| Command::Locate(peer, r))).await;
        match located {
            Ok(Ok(true)) => self.try_open_stream(peer, protocol, deadline).await,
            Ok(Err(err)) => Err(err),
            Ok(Ok(false)) | Err(_) => Err(first),
        }
    }

    async fn try_open_stream(
        &self,
        peer: PeerId,
        protocol: libp2p::StreamProtocol,
        deadline: tokio::time::Instant,
    ) -> Result<PeerStream, SwarmError> {
        // A dial of the peer may be under way at an address it has left; this one goes where
        // its heartbeats say it is. Not while a stream with the peer is open (it is
        // connected: the hot path of a busy forwarder sends nothing). Best effort: a full
        // command queue only means no extra dial.
        if self.shared.in_use.open(&peer) == 0 {
            let _ = self.shared.commands.try_send(Command::Reach(peer));
        }
        // Each control has one slot for opening streams; a clone per call lets forwards to
        // different peers open concurrently.
        let mut control = self.shared.streams.clone();
        let stream = tokio::time::timeout_at(deadline, control.open_stream(peer, protocol))
            .await
            .map_err(|_| SwarmError::OpenStream {
                peer,
                reason: "no stream within the time allowed".into(),
            })?
            .map_err(|err| SwarmError::OpenStream {
                peer,
                reason: err.to_string(),
            })?;
        Ok(PeerStream::new(peer, stream, &self.shared.in_use))
    }

    /// Inbound streams of `protocol` from now on, each with the peer that opened it. One
    /// acceptor per protocol; dropping it stops accepting.
    pub fn accept_streams(
        &self,
        protocol: libp2p::StreamProtocol,
    ) -> Result<impl futures::Stream<Item = PeerStream> + Send + use<>, SwarmError> {
        use futures::StreamExt;
        let incoming = self
            .shared
            .streams
            .clone()
            .accept(protocol.clone())
            .map_err(|_| SwarmError::AlreadyAccepted(protocol))?;
        let in_use = self.shared.in_use.clone();
        Ok(incoming.map(move |(peer, stream)| PeerStream::new(peer, stream, &in_use)))
    }

    /// Streams open with `peer` right now, either way.
    pub fn open_streams(&self, peer: &PeerId) -> usize {
        self.shared.in_use.open(peer)
    }

    /// Stops the swarm, closing its connections, and waits until it has.
    pub async fn shutdown(&self) {
        let _ = self.request(Command::Shutdown).await;
    }

    /// Kills the swarm task at once, without closing anything politely (what a crash looks
    /// like to the other peers).
    pub fn abort(&self) {
        self.shared.task.abort();
    }

    /// Whether the swarm task is still running.
    pub fn is_running(&self) -> bool {
        !self.shared.task.is_finished()
    }

    /// Turns of the event loop so far; it turns at least every second on its own timers,
    /// so a count that stands still means a stuck task (the watchdog's evidence).
    pub fn loop_turns(&self) -> u64 {
        self.shared.metrics.loop_turns.load(Ordering::Relaxed)
    }

    /// Blocks the event loop for `time`, for tests of the watchdog (`serve --test-hooks`).
    pub async fn inject_hang(&self, time: Duration) -> Result<(), SwarmError> {
        self.shared
            .commands
            .send(Command::Hang(time))
            .await
            .map_err(|_| SwarmError::Stopped)
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, SwarmError> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .commands
            .send(command(reply))
            .await
            .map_err(|_| SwarmError::Stopped)?;
        answer.await.map_err(|_| SwarmError::Stopped)
    }
}

/// Reads a lock, ignoring poisoning: the writers only replace whole values, so a panic while
/// holding the lock cannot leave a half-updated table behind.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
