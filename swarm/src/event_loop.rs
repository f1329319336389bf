//! The one task that owns the libp2p `Swarm`. Its bookkeeping lives beside it as state
//! machines tested without a Swarm: provider lookups (`lookups.rs`), bootstrap targets and
//! their backoff (`bootstrap.rs`).
//!
//! It reacts to four things: network events (connections, identify, gossip, DHT query
//! progress), commands from [`SwarmHandle`](super::SwarmHandle)s, its own timers (publish a
//! heartbeat, sweep the peer table, retry bootstrap dials) and changes of the node status.
//! Nothing else touches the swarm, so none of this needs locks beyond the peer table, which
//! readers share.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use super::behaviour::{self, Behaviour, BehaviourEvent, HEARTBEAT_TOPIC, KAD_PROTOCOL};
use super::bootstrap::{Bootstrapper, DialFailure, News, Step};
use super::heartbeat::{self, Heartbeat, NodeStatus, RejectReason, SignedHeartbeat, unix_ms};
use super::lookups::{AfterAnswer, ProviderLookups};
use super::metrics::SwarmMetrics;
use super::peer_table::{SharedPeerTable, Update};
use super::{Command, PeerEvent, SwarmConfig, SwarmError, providers, read, write};

/// The channels and shared state the loop works with.
pub(crate) struct Channels {
    pub commands: mpsc::Receiver<Command>,
    pub status: watch::Receiver<NodeStatus>,
    pub events: broadcast::Sender<PeerEvent>,
    pub table: SharedPeerTable,
    pub metrics: Arc<SwarmMetrics>,
    pub listen_addrs: Arc<RwLock<Vec<Multiaddr>>>,
    /// Peers with streams open (never pruned by the connection budget).
    pub in_use: super::InUse,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    key: Keypair,
    config: SwarmConfig,
    channels: Channels,
    topic: gossipsub::IdentTopic,
    /// This run's heartbeat counter and start, stamped into every heartbeat.
    seq: u64,
    started: Instant,
    started_at_ms: u64,
    last_published: Option<Instant>,
    bootstrap: Bootstrapper<ConnectionId>,
    /// Provider keys this node announces, by unsharded prefix.
    provided: HashMap<String, kad::RecordKey>,
    /// SHA-256s of the model files this node shares (`llamanet_node::weights`).
    weights: HashSet<String>,
    lookups: ProviderLookups<QueryId, oneshot::Sender<Vec<PeerId>>>,
    /// DHT lookups of where a peer is, by query: the peer and who waits for the answer.
    locates: HashMap<QueryId, (PeerId, Vec<oneshot::Sender<bool>>)>,
    /// Dials at a peer's signed addresses under way (see [`EventLoop::reach`]), one per peer.
    reaching: HashMap<PeerId, ConnectionId>,
    /// Whether the DHT routing table has had anyone in it yet.
    reached_dht: bool,
    /// Peers this node dialed and is connected to, since when (the connection budget).
    dialed: HashMap<PeerId, Instant>,
    /// Bootstrap names resolved off the event loop: `(target index, addresses or error)`.
    resolved_tx: mpsc::UnboundedSender<(usize, Result<Vec<Multiaddr>, String>)>,
    resolved_rx: mpsc::UnboundedReceiver<(usize, Result<Vec<Multiaddr>, String>)>,
    /// Rate of log lines about rejected heartbeats.
    quiet: super::log_limit::LogLimit,
}

impl EventLoop {
    pub fn new(key: Keypair, config: SwarmConfig, channels: Channels) -> Result<Self, SwarmError> {
        let mut swarm = behaviour::build(&key, &config)?;
        let topic = gossipsub::IdentTopic::new(HEARTBEAT_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .map_err(|err| SwarmError::Publish(err.to_string()))?;
        let now = Instant::now();
        let bootstrap = Bootstrapper::new(&config.bootstrap, config.bootstrap_backoff, now);
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        Ok(EventLoop {
            swarm,
            key,
            config,
            channels,
            topic,
            seq: 0,
            started: now,
            started_at_ms: unix_ms(SystemTime::now()),
            last_published: None,
            bootstrap,
            provided: HashMap::new(),
            weights: HashSet::new(),
            lookups: ProviderLookups::default(),
            locates: HashMap::new(),
            reaching: HashMap::new(),
            reached_dht: false,
            dialed: HashMap::new(),
            resolved_tx,
            resolved_rx,
            quiet: super::log_limit::LogLimit::default(),
        })
    }

    /// A control for opening and accepting streams on this swarm's connections.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().stream.new_control()
    }

    /// Starts every listener and waits until each has an address (bounded), so callers get
    /// real ports from `listen_addrs` as soon as `start` returns.
    pub async fn listen(&mut self) -> Result<(), SwarmError> {
        let mut waiting = HashSet::new();
        for addr in self.config.listen.clone() {
            let id = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|err| SwarmError::Listen {
                    addr: addr.clone(),
                    reason: err.to_string(),
                })?;
            waiting.insert(id);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !waiting.is_empty() {
            let event = tokio::time::timeout_at(deadline, self.swarm.select_next_some())
                .await
                .map_err(|_| SwarmError::Timeout(Duration::from_secs(10)))?;
            match event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    waiting.remove(&listener_id);
                    self.on_swarm_event(event);
                }
                SwarmEvent::ListenerClosed {
                    addresses, reason, ..
                } => {
                    return Err(SwarmError::Listen {
                        addr: addresses.first().cloned().unwrap_or_else(Multiaddr::empty),
                        reason: format!("{reason:?}"),
                    });
                }
                other => self.on_swarm_event(other),
            }
        }
        Ok(())
    }

    pub async fn run(mut self) {
        info!(
            peer_id = %self.swarm.local_peer_id(),
            listen = ?self.channels.listen_addrs.read().map(|a| a.clone()).unwrap_or_default(),
            bootstrap = ?self.config.bootstrap,
            private = self.config.psk.is_some(),
            "swarm started"
        );
        let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Sweeps often relative to the interval so a dead peer leaves the table close to its
        // deadline; queries hide expired entries anyway, this is for the events and gauges.
        let sweep_every = (self.config.heartbeat_interval / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut maintenance = tokio::time::interval(sweep_every);
        maintenance.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.announce_models();
        self.dial_due_bootstrap();

        loop {
            self.channels
                .metrics
                .loop_turns
                .fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.channels.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.leave();
                        let _ = done.send(());
                        break;
                    }
                    // A test stands in for a handler that awaits what never comes.
                    Some(Command::Hang(time)) => tokio::time::sleep(time).await,
                    Some(command) => self.on_command(command),
                    // Every handle is gone: nobody can use the swarm any more.
                    None => break,
                },
                _ = heartbeat.tick(), if self.publishes() => {
                    if let Err(err) = self.publish_heartbeat() {
                        debug!(%err, "heartbeat not published");
                    }
                }
                _ = maintenance.tick() => self.maintain(),
                Some((index, resolved)) = self.resolved_rx.recv() => {
                    self.on_resolved(index, resolved);
                }
                changed = self.channels.status.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.announce_models();
                }
            }
        }
        debug!("swarm task stopped");
    }

    fn emit(&self, event: PeerEvent) {
        // No subscribers is normal.
        let _ = self.channels.events.send(event);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::PublishHeartbeat(reply) => {
                let _ = reply.send(self.publish_heartbeat());
            }
            Command::PublishEnvelope(bytes, reply) => {
                let result = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(self.topic.clone(), bytes)
                    .map(|_| ())
                    .map_err(|err| SwarmError::Publish(err.to_string()));
                let _ = reply.send(result);
            }
            Command::Bootstrap(addrs) => {
                self.bootstrap.add(addrs, Instant::now());
                self.dial_due_bootstrap();
            }
            Command::Dial(addr, reply) => {
                let (dial_addr, peer) = super::bootstrap::split_peer_id(&addr);
                let opts = match peer {
                    Some(peer) => DialOpts::peer_id(peer).addresses(vec![dial_addr]).build(),
                    None => DialOpts::unknown_peer_id().address(dial_addr).build(),
                };
                let result = self.swarm.dial(opts).map_err(|err| SwarmError::Dial {
                    addr,
                    reason: err.to_string(),
                });
                let _ = reply.send(result);
            }
            Command::FindProviders(prefix, reply) => self.find_providers(&prefix, reply),
            Command::ProvideWeights(sha256) => {
                self.weights.insert(sha256);
                self.announce_models();
            }
            Command::Locate(peer, reply) => self.locate(peer, reply),
            Command::Reach(peer) => self.reach(peer),
            Command::ConnectedPeers(reply) => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Shutdown(_) | Command::Hang(_) => unreachable!("handled in run"),
        }
    }

    /// Signs and publishes the current status, and records it in our own table so that this
    /// node is part of its own view (the router and `/v1/models` count local models too).
    /// Whether heartbeats go out: a peer that publishes none (an operator, a tool) still
    /// does while it advertises cold models, so that nodes know whom to wake them through.
    fn publishes(&self) -> bool {
        self.config.publish_heartbeats || !self.channels.status.borrow().cold.is_empty()
    }

    fn publish_heartbeat(&mut self) -> Result<(), SwarmError> {
        self.seq += 1;
        let heartbeat = Heartbeat {
            peer_id: *self.swarm.local_peer_id(),
            seq: self.seq,
            started_at_ms: self.started_at_ms,
            timestamp_ms: unix_ms(SystemTime::now()),
            interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            uptime_s: self.started.elapsed().as_secs(),
            swarm_addrs: self.own_swarm_addrs(),
            status: self.channels.status.borrow().clone(),
        };
        let envelope = SignedHeartbeat::sign(&heartbeat, &self.key);
        self.insert_heartbeat(heartbeat);
        self.last_published = Some(Instant::now());
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), envelope.to_bytes())
        {
            Ok(_) => {
                self.channels
                    .metrics
                    .heartbeats_published
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // Alone in the swarm (or before the first peer subscribed): nothing to do.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
            Err(err) => Err(SwarmError::Publish(err.to_string())),
        }
    }

    fn insert_heartbeat(&mut self, heartbeat: Heartbeat) -> Update {
        let peer = heartbeat.peer_id;
        let accepted = (peer != *self.swarm.local_peer_id()).then(|| heartbeat.clone());
        let update = write(&self.channels.table).insert(heartbeat);
        if update == Update::Joined {
            if peer != *self.swarm.local_peer_id() {
                info!(%peer, "peer joined");
            }
            self.emit(PeerEvent::PeerJoined(peer));
        }
        if matches!(update, Update::Joined | Update::Refreshed)
            && let Some(heartbeat) = accepted
        {
            self.learn_addresses(&heartbeat);
            self.emit(PeerEvent::Heartbeat(Box::new(heartbeat)));
        }
        update
    }

    /// What this node signs into its heartbeats as where its swarm listens: loopback only
    /// when that is all it has (a swarm on one machine), nothing else no one could reach.
    fn own_swarm_addrs(&self) -> Vec<String> {
        let listening = read(&self.channels.listen_addrs).clone();
        let local_only = listening.iter().all(super::addresses::is_local);
        super::addresses::usable(listening, local_only)
            .iter()
            .map(Multiaddr::to_string)
            .collect()
    }

    /// Takes the swarm addresses a peer signed (bounds already checked) for its next dials:
    /// the ones that could reach it from here, none naming another peer.
    fn learn_addresses(&mut self, heartbeat: &Heartbeat) {
        let local = read(&self.channels.listen_addrs)
            .iter()
            .any(super::addresses::is_local);
        let signed = heartbeat
            .swarm_addrs
            .iter()
            .filter_map(|addr| addr.parse::<Multiaddr>().ok())
            .filter(|addr| !addr.iter().any(|p| matches!(p, Protocol::P2p(_))))
            .collect();
        self.swarm
            .behaviour_mut()
            .addresses
            .set(heartbeat.peer_id, super::addresses::usable(signed, local));
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(event)) => self.on_gossip(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            // Only DHT servers belong in the routing table; a light peer (tool, operator) in
            // it would be handed out to others as a place to store records.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&KAD_PROTOCOL) => {
                let local = read(&self.channels.listen_addrs)
                    .iter()
                    .any(super::addresses::is_local);
                for addr in super::addresses::usable(info.listen_addrs, local) {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                write(&self.channels.listen_addrs).push(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                write(&self.channels.listen_addrs).retain(|a| *a != address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                if let Some(news) = self.bootstrap.connected(&connection_id, peer_id) {
                    self.bootstrap_reached(news);
                }
                if endpoint.is_dialer() {
                    self.dialed.entry(peer_id).or_insert_with(Instant::now);
                }
                self.reaching.remove(&peer_id);
                if num_established.get() == 1 {
                    debug!(peer = %peer_id, "connected");
                    self.emit(PeerEvent::Connected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.dialed.remove(&peer_id);
                debug!(peer = %peer_id, "disconnected");
                self.emit(PeerEvent::Disconnected(peer_id));
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                self.reaching.retain(|_, dial| *dial != connection_id);
                let failure = dial_failure(&error);
                if let Some(news) =
                    self.bootstrap
                        .dial_failed(&connection_id, failure, Instant::now())
                {
                    self.tell(news);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                // With a pre-shared key this is where outsiders end up.
                debug!(from = %send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        let gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        } = event
        else {
            if let gossipsub::Event::Subscribed { topic, .. } = event {
                // A newcomer subscribed: answer with a heartbeat now rather than at the next
                // tick, so it sees us quickly. At most every quarter interval, because a
                // crowd joining at once must not turn into a heartbeat storm.
                let quiet = self.config.heartbeat_interval / 4;
                let recent = self.last_published.is_some_and(|t| t.elapsed() < quiet);
                if topic == self.topic.hash() && self.publishes() && !recent {
                    let _ = self.publish_heartbeat();
                }
            }
            return;
        };
        let verdict = match message.source {
            Some(source) => heartbeat::verify_bytes(&message.data, Some(&source)),
            // Every LlamaNet peer names itself as the author (see `behaviour.rs`); a message
            // without one comes from something else.
            None => Err(RejectReason::SourceMismatch),
        };
        let verdict = verdict.and_then(|heartbeat| {
            self.channels
                .metrics
                .heartbeats_received
                .fetch_add(1, Ordering::Relaxed);
            match self.insert_heartbeat(heartbeat) {
                // A replay (same or older sequence) is not forwarded, but its relayer did
                // nothing wrong by gossip rules.
                Update::Stale => Ok(gossipsub::MessageAcceptance::Ignore),
                Update::Joined | Update::Refreshed => Ok(gossipsub::MessageAcceptance::Accept),
                Update::TooFrequent => Err(RejectReason::TooFrequent),
                // Not the sender's fault: dropped here, not held against it.
                Update::Full => {
                    self.channels
                        .metrics
                        .record_rejected(RejectReason::TableFull);
                    Ok(gossipsub::MessageAcceptance::Ignore)
                }
            }
        });
        let acceptance = match verdict {
            Ok(acceptance) => acceptance,
            Err(reason) => {
                // Counted always, logged at most once a minute per peer: a flood must not
                // turn into a flood of log lines. Rejected messages also lower the relaying
                // peer's gossipsub score until it is graylisted (see `behaviour.rs`).
                if self
                    .quiet
                    .allow(message.source.unwrap_or(propagation_source))
                {
                    warn!(
                        source = ?message.source,
                        via = %propagation_source,
                        %reason,
                        "heartbeat rejected (further rejections from this peer are counted, not logged, for a minute)"
                    );
                }
                self.channels.metrics.record_rejected(reason);
                self.emit(PeerEvent::HeartbeatRejected {
                    source: message.source,
                    reason,
                });
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&message_id, &propagation_source, acceptance);
    }

    fn on_kad(&mut self, event: kad::Event) {
        let (id, result, step) = match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => (id, result, step),
            kad::Event::RoutingUpdated { .. } if !self.reached_dht => {
                // Provider records announced before we knew any DHT peer were stored only
                // locally; push them out as soon as there is someone to hold them.
                self.reached_dht = true;
                self.reannounce();
                return;
            }
            _ => return,
        };
        match result {
            QueryResult::GetProviders(result) => {
                match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        if self.lookups.answered(id, providers) == AfterAnswer::Finish
                            && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
                        {
                            // Ends with one more event, `step.last`, handled below.
                            query.finish();
                        }
                    }
                    Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                    Err(err) => debug!(%err, "provider query of one shard failed"),
                }
                if step.last
                    && let Some((reply, found)) = self.lookups.ended(id)
                {
                    let _ = reply.send(found);
                }
            }
            QueryResult::Bootstrap(result) => {
                if let Err(err) = result {
                    debug!(%err, "DHT bootstrap incomplete");
                }
                if step.last {
                    // The routing table now knows (many) more peers than when we first
                    // announced: announce again so the records reach the peers closest to
                    // each key, which is where lookups ask.
                    self.reannounce();
                }
            }
            QueryResult::StartProviding(Err(err)) => debug!(%err, "provider announcement failed"),
            QueryResult::GetClosestPeers(result) if step.last => {
                let Some((peer, replies)) = self.locates.remove(&id) else {
                    return;
                };
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                // Addresses other peers give for it: dialling checks they lead to that key.
                let local = read(&self.channels.listen_addrs)
                    .iter()
                    .any(super::addresses::is_local);
                let addrs: Vec<Multiaddr> = peers
                    .into_iter()
                    .filter(|info| info.peer_id == peer)
                    .flat_map(|info| super::addresses::usable(info.addrs, local))
                    .collect();
                let found = self.swarm.is_connected(&peer) || !addrs.is_empty();
                if !addrs.is_empty() {
                    for addr in &addrs {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer, addr.clone());
                    }
                    // The stream opener waits for this connection rather than dial again.
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(err) = self.swarm.dial(opts) {
                        debug!(%peer, %err, "dial of a located peer not started");
                    }
                }
                debug!(%peer, found, "DHT lookup of a peer's address finished");
                for reply in replies {
                    let _ = reply.send(found);
                }
            }
            _ => {}
        }
    }

    /// Dials `peer` at the addresses it signed last, beside any dial of it already under
    /// way: that one may be stuck at an address the peer has left (where a dial gets no
    /// answer, not a refusal), and a stream about to open takes whichever connection comes
    /// first. Nothing to do when connected, when such a dial is under way, or without signed
    /// addresses.
    fn reach(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) || self.reaching.contains_key(&peer) {
            return;
        }
        let addrs = self.swarm.behaviour().addresses.get(&peer).to_vec();
        if addrs.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(addrs)
            .condition(PeerCondition::Disconnected)
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.reaching.insert(peer, connection);
            }
            Err(err) => debug!(%peer, %err, "dial at signed addresses not started"),
        }
    }

    /// Looks `peer` up in the DHT (one query per peer however many ask) unless it is
    /// connected already.
    fn locate(&mut self, peer: PeerId, reply: oneshot::Sender<bool>) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(true);
            return;
        }
        if let Some((_, replies)) = self.locates.values_mut().find(|(p, _)| *p == peer) {
            replies.push(reply);
            return;
        }
        let query = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
        self.locates.insert(query, (peer, vec![reply]));
    }

    fn find_providers(&mut self, prefix: &str, reply: oneshot::Sender<Vec<PeerId>>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let queries: Vec<QueryId> = providers::lookup_keys(prefix, self.config.provider_shards)
            .into_iter()
            .map(|key| kad.get_providers(key))
            .collect();
        if let Some(reply) = self.lookups.start(queries, reply) {
            let _ = reply.send(Vec::new());
        }
    }

    /// Brings the provider records in line with the models in the current status and the
    /// model files this node shares.
    fn announce_models(&mut self) {
        if !self.config.dht_server {
            return;
        }
        let me = *self.swarm.local_peer_id();
        let wanted: HashSet<String> = self
            .channels
            .status
            .borrow()
            .models
            .iter()
            .map(|m| providers::model_key_prefix(&m.id))
            .chain(
                self.weights
                    .iter()
                    .map(|s| providers::weights_key_prefix(s)),
            )
            .collect();
        let gone: Vec<String> = self
            .provided
            .keys()
            .filter(|p| !wanted.contains(*p))
            .cloned()
            .collect();
        for prefix in gone {
            if let Some(key) = self.provided.remove(&prefix) {
                self.swarm.behaviour_mut().kad.stop_providing(&key);
            }
        }
        for prefix in wanted {
            if self.provided.contains_key(&prefix) {
                continue;
            }
            let key = providers::provider_key(&prefix, &me, self.config.provider_shards);
            match self.swarm.behaviour_mut().kad.start_providing(key.clone()) {
                Ok(_) => {
                    debug!(%prefix, "announced as provider");
                    self.provided.insert(prefix, key);
                }
                Err(err) => warn!(%prefix, %err, "cannot announce in the DHT"),
            }
        }
    }

    fn reannounce(&mut self) {
        let keys: Vec<kad::RecordKey> = self.provided.values().cloned().collect();
        for key in keys {
            let _ = self.swarm.behaviour_mut().kad.start_providing(key);
        }
    }

    /// Periodic work: expire peers, retry bootstrap, refresh gauges.
    fn maintain(&mut self) {
        let gone = write(&self.channels.table).expire();
        for peer in gone {
            info!(%peer, "peer left (heartbeats stopped)");
            // Its addresses go too: a peer that comes back (a pod restarted under the same
            // identity) usually has a new one, and the old address of a pod can swallow
            // dials without an answer. Handed out by the DHT, it would stall whoever dials
            // the peer next; the peer is added again when it reconnects.
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
            self.swarm.behaviour_mut().addresses.forget(&peer);
            self.emit(PeerEvent::PeerLeft(peer));
        }
        self.rearm_lost_bootstrap();
        self.dial_due_bootstrap();
        // Connections being closed still count until they are gone.
        let connected = self.swarm.connected_peers().count();
        self.prune_connections(connected);

        let metrics = &self.channels.metrics;
        metrics
            .connected_peers
            .store(connected as u64, Ordering::Relaxed);
        let routing: usize = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum();
        metrics
            .routing_table_size
            .store(routing as u64, Ordering::Relaxed);
        let live = self.channels.table.read().map(|t| t.len()).unwrap_or(0);
        metrics
            .peer_table_size
            .store(live as u64, Ordering::Relaxed);
    }

    fn dial_due_bootstrap(&mut self) {
        for step in self.bootstrap.due(Instant::now()) {
            match step {
                Step::Resolve {
                    index,
                    name,
                    family,
                    rest,
                } => {
                    let reply = self.resolved_tx.clone();
                    tokio::spawn(async move {
                        let resolved = super::bootstrap::resolve(&name, family, &rest).await;
                        let _ = reply.send((index, resolved));
                    });
                }
                Step::Dial { index, addr, peer } => {
                    let opts = match peer {
                        Some(peer) => {
                            // Known id: Kademlia can use the address right away.
                            self.swarm
                                .behaviour_mut()
                                .kad
                                .add_address(&peer, addr.clone());
                            DialOpts::peer_id(peer)
                                .addresses(vec![addr.clone()])
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build()
                        }
                        None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                    };
                    let connection = opts.connection_id();
                    match self.swarm.dial(opts) {
                        Ok(()) => {
                            debug!(%addr, "dialing bootstrap peer");
                            self.bootstrap.dial_started(index, connection);
                        }
                        Err(DialError::DialPeerConditionFalse(_)) => {
                            // Already connected (or connecting) to that peer: it has answered.
                            let news = self.bootstrap.already_connected(index);
                            self.bootstrap_reached(news);
                        }
                        Err(err) => {
                            let news = self.bootstrap.dial_refused(
                                index,
                                dial_failure(&err),
                                Instant::now(),
                            );
                            self.tell(news);
                        }
                    }
                }
            }
        }
    }

    /// Dials every address a bootstrap name resolved to (but our own).
    fn on_resolved(&mut self, index: usize, resolved: Result<Vec<Multiaddr>, String>) {
        let own: Vec<Multiaddr> = read(&self.channels.listen_addrs).clone();
        let addrs = match self
            .bootstrap
            .resolved(index, resolved, &own, Instant::now())
        {
            Ok(addrs) => addrs,
            Err(news) => return self.tell(news),
        };
        debug!(addr = %self.bootstrap.targets()[index].addr, resolved = ?addrs, "dialing every address of a bootstrap name");
        for addr in addrs {
            let opts = DialOpts::unknown_peer_id().address(addr).build();
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstrap.dial_started(index, connection),
                Err(err) => debug!(%err, "dial not started"),
            }
        }
        if let Some(news) = self.bootstrap.no_dial_started(index, Instant::now()) {
            self.tell(news);
        }
    }

    /// A bootstrap target answered: tell it when it is news, and fill the routing table
    /// from the peer reached (a no-op error while it is empty).
    fn bootstrap_reached(&mut self, news: Option<News>) {
        if let Some(news) = news {
            self.tell(news);
        }
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    /// Logs, counts and emits what happened to a bootstrap target.
    fn tell(&mut self, news: News) {
        match news {
            News::Answered { addr, peer } => {
                info!(%addr, %peer, "bootstrap peer answered");
                self.emit(PeerEvent::BootstrapConnected { addr, peer });
            }
            News::Unreachable {
                addr,
                error,
                retry_in,
            } => {
                self.channels
                    .metrics
                    .bootstrap_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(%addr, %error, ?retry_in, "bootstrap peer unreachable, will retry");
                self.emit(PeerEvent::BootstrapFailed {
                    addr,
                    error,
                    retry_in,
                });
            }
            News::IsSelf { addr } => debug!(%addr, "bootstrap address is this node"),
            News::OneAddressFailed { addr, error } => {
                debug!(%addr, %error, "one address of a bootstrap name failed");
            }
        }
    }

    /// Dials bootstrap peers whose connection is gone again (see
    /// [`Bootstrapper::rearm_lost`]).
    fn rearm_lost_bootstrap(&mut self) {
        let swarm = &self.swarm;
        let rearmed = self
            .bootstrap
            .rearm_lost(Instant::now(), |peer| swarm.is_connected(peer));
        for addr in rearmed {
            debug!(%addr, "bootstrap peer lost, dialing it again");
        }
    }

    /// Keeps the connection count near the budget (see [`super::connections`]).
    fn prune_connections(&mut self, connected: usize) {
        if connected <= self.config.connection_target {
            return;
        }
        let mut keep: HashSet<PeerId> = self
            .swarm
            .behaviour()
            .gossipsub
            .all_mesh_peers()
            .copied()
            .collect();
        keep.extend(
            self.bootstrap
                .targets()
                .iter()
                .filter_map(|target| target.reached),
        );
        // Connections carrying forwarded requests, or that did a moment ago.
        keep.extend(self.channels.in_use.peers(Instant::now()));
        let prune = super::connections::to_prune(
            connected,
            self.config.connection_target,
            &self.dialed,
            &keep,
            Instant::now(),
            // By then the query that opened the connection is over.
            self.config.query_timeout,
        );
        if !prune.is_empty() {
            debug!(
                connected,
                closing = prune.len(),
                "over the connection budget"
            );
        }
        for peer in prune {
            self.dialed.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// A polite exit: withdraw provider records and our own entry before closing.
    fn leave(&mut self) {
        let keys: Vec<kad::RecordKey> = self.provided.drain().map(|(_, k)| k).collect();
        for key in keys {
            self.swarm.behaviour_mut().kad.stop_providing(&key);
        }
        let me = *self.swarm.local_peer_id();
        write(&self.channels.table).remove(&me);
    }
}

/// What the bootstrap state machine needs to know of a failed dial.
fn dial_failure(error: &DialError) -> DialFailure {
    match error {
        DialError::LocalPeerId { .. } => DialFailure::ToSelf,
        other => DialFailure::Other(describe_dial_error(other)),
    }
}

/// A dial error as one short line. libp2p nests the cause several wrappers deep ("Failed to
/// negotiate transport protocol(s): ... Multiple dial errors occurred: ..."); what an operator
/// needs is the address and the innermost cause, e.g. "Connection refused (os error 111)".
fn describe_dial_error(error: &DialError) -> String {
    match error {
        DialError::Transport(attempts) => attempts
            .iter()
            .map(|(addr, err)| format!("{addr}: {}", crate::error_text::root_cause(err)))
            .collect::<Vec<_>>()
            .join("; "),
        other => crate::error_text::root_cause(other),
    }
}
