//! The libp2p parts of a node and how they are put together: the transport (TCP or, for
//! in-process simulations, memory; optionally behind a pre-shared key; then Noise and Yamux;
//! DNS on top) and one `NetworkBehaviour` combining Kademlia, identify, ping, gossipsub and
//! generic streams.
//!
//! Only construction lives here. What happens with the events is `event_loop.rs`.

use std::io;
use std::path::Path;
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, MemoryTransport};
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::identity::Keypair;
use libp2p::kad::store::{MemoryStore, MemoryStoreConfig};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    PeerId, StreamProtocol, Swarm, Transport, gossipsub, identify, kad, noise, ping, tcp, yamux,
};

use sha2::{Digest, Sha256};

use super::SwarmConfig;
use super::signed_addresses::SignedAddresses;

/// The Kademlia protocol name. Our own, not `/ipfs/kad/1.0.0`, so a LlamaNet DHT never
/// merges with the IPFS one (or any other) through a misconfigured bootstrap address.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/llamanet/kad/1.0.0");

/// Identify's protocol version string; peers announcing another one are still talked to
/// (identify does not filter), it is informational.
pub const PROTOCOL_VERSION: &str = "/llamanet/1.0.0";

/// The gossipsub topic heartbeats travel on.
pub const HEARTBEAT_TOPIC: &str = "/llamanet/heartbeat/1";

/// Providers kept per key by our DHT stores. Model keys are sharded (see `providers.rs`) so
/// the default of 20 would already do for most swarms; a larger cap gives headroom for
/// uneven shards. Kept well under what fits one Kademlia response (16 KiB default packet).
const MAX_PROVIDERS_PER_KEY: usize = 64;

/// Everything the swarm speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// The addresses peers sign into their heartbeats, offered to every dial (first, so a
    /// peer that moved is dialed at its new address before the DHT's old ones; see
    /// `signed_addresses.rs`).
    pub addresses: SignedAddresses,
    pub kad: kad::Behaviour<MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    /// Streams for forwarded requests (see `streams.rs`).
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    fn new(key: &Keypair, config: &SwarmConfig) -> io::Result<Self> {
        let peer_id = key.public().to_peer_id();

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_query_timeout(config.query_timeout)
            // Liveness comes from heartbeats; provider records only help a newcomer find
            // candidates before gossip arrives, so they may be short-lived.
            .set_provider_record_ttl(Some(config.provider_ttl))
            .set_provider_publication_interval(Some(config.provider_ttl / 2));
        let store = MemoryStore::with_config(
            peer_id,
            MemoryStoreConfig {
                max_providers_per_key: MAX_PROVIDERS_PER_KEY,
                ..MemoryStoreConfig::default()
            },
        );
        let mut kad = kad::Behaviour::with_config(peer_id, store, kad_config);
        // Server mode unconditionally: nodes in pods have no "confirmed external address" for
        // libp2p to switch on automatically, yet they must answer DHT queries. Light peers
        // (tools, the operator) stay clients so they never appear in anyone's routing table.
        kad.set_mode(Some(if config.dht_server {
            kad::Mode::Server
        } else {
            kad::Mode::Client
        }));

        let identify = identify::Behaviour::new(
            identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                .with_agent_version(format!("llamanet/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );

        let gossipsub_config = gossipsub::ConfigBuilder::default()
            // Heartbeats carry their own signature, which `event_loop.rs` checks once per
            // message, after deduplication. Gossipsub's own signature would be checked on
            // every copy a peer receives, before deduplication: with mesh degree 6 that
            // was six ed25519 checks per heartbeat per peer, the swarm's dominant CPU cost.
            // So messages name their author unsigned (compared with the heartbeat's signer
            // as a sanity check) and are identified by a hash of their content, which a
            // sender cannot make collide with someone else's heartbeat.
            .validation_mode(gossipsub::ValidationMode::Permissive)
            .message_id_fn(|message: &gossipsub::Message| {
                let digest = Sha256::digest(&message.data);
                gossipsub::MessageId::from(&digest[..20])
            })
            // Messages wait for our verdict before being forwarded: a forged heartbeat stops
            // at the first honest peer instead of flooding the swarm.
            .validate_messages()
            .heartbeat_interval(config.gossip_heartbeat)
            // Publish to the mesh only, not to every subscribed peer we are connected to:
            // with hundreds of nodes, flooding multiplies the copies every peer handles.
            .flood_publish(false)
            // Lazy gossip (IHAVE) repairs lost messages by advertising recent message ids
            // to peers outside the mesh. A heartbeat needs little repair: the next one
            // replaces it an interval later. With the defaults (ids of the last 3 gossip
            // heartbeats, to max(6, a quarter of the other peers)), every peer processed
            // ids of every heartbeat many times over, a cost growing with N³ that
            // dominated the simulation's profile (hash lookups and compares).
            .history_gossip(1)
            .gossip_lazy(3)
            .gossip_factor(0.1)
            // A heartbeat envelope is at most 8 KiB (`heartbeat::MAX_ENVELOPE_BYTES`).
            .max_transmit_size(16 * 1024)
            .build()
            .map_err(|err| io::Error::other(format!("gossipsub config: {err}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Author(peer_id),
            gossipsub_config,
        )
        .map_err(|err| io::Error::other(format!("gossipsub: {err}")))?;
        let (params, thresholds) = peer_scoring();
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|err| io::Error::other(format!("gossipsub peer scoring: {err}")))?;

        Ok(Behaviour {
            addresses: SignedAddresses::default(),
            kad,
            identify,
            ping: ping::Behaviour::new(ping::Config::new()),
            gossipsub,
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}

/// Gossipsub peer scoring for the heartbeat topic: what makes a peer's messages ignored.
///
/// Every message this node rejects (a bad signature, out-of-bounds figures, a peer
/// heartbeating far faster than its interval; see `event_loop.rs`) counts as an invalid
/// delivery against the peer that sent it. The penalty grows with the square of recent
/// invalid deliveries (weight -10, decaying by a tenth a second), so a few honest mistakes
/// fade but three in a burst pass the graylist threshold of -80: from then on everything
/// the peer sends is dropped unread until its score recovers. Honest peers earn a little
/// for delivering heartbeats first and for time in the mesh.
///
/// Left at zero on purpose: IP colocation (pods behind one node address, every peer of a
/// test on 127.0.0.1) and mesh delivery rates (heartbeats are sparse: an honest peer in a
/// small swarm would look like a slacker).
pub fn peer_scoring() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 300.0,
        first_message_deliveries_weight: 0.5,
        first_message_deliveries_decay: 0.9,
        first_message_deliveries_cap: 20.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    let mut params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        ..gossipsub::PeerScoreParams::default()
    };
    params
        .topics
        .insert(gossipsub::IdentTopic::new(HEARTBEAT_TOPIC).hash(), topic);
    (params, gossipsub::PeerScoreThresholds::default())
}

/// Which wire the swarm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportKind {
    /// TCP (with DNS resolution of `/dns*` addresses): what nodes use.
    #[default]
    Tcp,
    /// libp2p's in-process memory transport (`/memory/<n>` addresses), for simulations of
    /// many peers in one process without sockets.
    Memory,
}

/// Reads a pre-shared key file in the standard `/key/swarm/psk/1.0.0/` format (the one
/// IPFS private networks use: three lines, the last 64 hex digits).
pub fn load_psk(path: &Path) -> io::Result<PreSharedKey> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot read swarm key {}: {err}", path.display()),
        )
    })?;
    text.parse().map_err(|err| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "swarm key {} is not a /key/swarm/psk/1.0.0/ file: {err}",
                path.display()
            ),
        )
    })
}

/// Builds the swarm: transport, behaviour, connection settings.
pub(crate) fn build(key: &Keypair, config: &SwarmConfig) -> io::Result<Swarm<Behaviour>> {
    let transport = match config.transport {
        TransportKind::Tcp => secure(
            tcp::tokio::Transport::new(tcp::Config::new().nodelay(true)),
            key,
            config,
        ),
        TransportKind::Memory => secure(MemoryTransport::default(), key, config),
    }?;
    let behaviour = Behaviour::new(key, config)?;
    let idle = config.idle_connection_timeout;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|err| io::Error::other(err.to_string()))?
        .with_dns()?
        .with_behaviour(|_| behaviour)
        .map_err(|err| io::Error::other(err.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok(swarm)
}

/// Adds the optional pre-shared-key layer, then Noise and Yamux, to a raw transport.
fn secure<T>(
    base: T,
    key: &Keypair,
    config: &SwarmConfig,
) -> io::Result<Boxed<(PeerId, StreamMuxerBox)>>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let timeout = config.handshake_timeout;
    match config.psk {
        // The pnet handshake runs before anything else on the socket: a peer without the key
        // fails there, before Noise, so outsiders learn nothing and cannot even identify us.
        Some(psk) => authenticate(
            base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
            key,
            timeout,
        ),
        None => authenticate(base, key, timeout),
    }
}

fn authenticate<T>(
    base: T,
    key: &Keypair,
    timeout: Duration,
) -> io::Result<Boxed<(PeerId, StreamMuxerBox)>>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    let noise = noise::Config::new(key).map_err(|err| io::Error::other(err.to_string()))?;
    Ok(base
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(timeout)
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_invalid_heartbeats_in_a_burst_graylist_a_peer_one_does_not() {
        let (params, thresholds) = peer_scoring();
        assert!(params.validate().is_ok() && thresholds.validate().is_ok());
        let topic = &params.topics[&gossipsub::IdentTopic::new(HEARTBEAT_TOPIC).hash()];
        let penalty = |invalid: f64| {
            topic.topic_weight * topic.invalid_message_deliveries_weight * invalid * invalid
        };
        assert!(penalty(1.0) > thresholds.graylist_threshold);
        assert!(penalty(1.0) > thresholds.gossip_threshold - 0.1);
        assert!(penalty(3.0) < thresholds.graylist_threshold);
    }

    #[test]
    fn psk_file_in_the_standard_format_loads_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("swarm.key");
        std::fs::write(
            &good,
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "ab".repeat(32)),
        )
        .unwrap();
        let psk = load_psk(&good).unwrap();
        assert_eq!(psk.to_key_file().lines().last().unwrap(), "ab".repeat(32));

        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "hello").unwrap();
        let err = load_psk(&bad).unwrap_err();
        assert!(err.to_string().contains("bad.key"), "{err}");
        let missing = load_psk(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("missing"), "{missing}");
    }
}
