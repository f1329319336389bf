//! Trust over loopback: forged heartbeats are dropped and counted by reason, and a private
//! swarm (pre-shared key) admits no peer without the key.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use llamanet_swarm::testing::*;
use llamanet_swarm::{
    self as swarm, Heartbeat, PeerEvent, RejectReason, SignedHeartbeat, SwarmConfig,
};

fn heartbeat_claiming(peer: libp2p::PeerId, seq: u64) -> Heartbeat {
    Heartbeat {
        peer_id: peer,
        seq,
        started_at_ms: 1,
        timestamp_ms: 1,
        interval_ms: INTERVAL.as_millis() as u64,
        uptime_s: 0,
        swarm_addrs: Vec::new(),
        status: status(Some("stolen-model")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_are_rejected_and_counted() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let observer = start_node(Vec::new(), None).await;
        let seed = vec![addr_of(&observer)];
        let victim = start_node(seed.clone(), Some("model-0")).await;
        // Two attackers, two forgeries each: gossipsub's peer scoring graylists a peer
        // after three invalid messages in quick succession (swarm_hostile.rs floods), and a
        // graylisted peer's messages are not even read.
        let attacker = start_node(seed.clone(), None).await;
        let accomplice = start_node(seed, None).await;
        let mut events = observer.subscribe();
        wait_until(
            "the observer to see all three",
            Duration::from_secs(5),
            || {
                observer.heartbeat_of(&victim.peer_id()).is_some()
                    && observer.heartbeat_of(&attacker.peer_id()).is_some()
                    && observer.heartbeat_of(&accomplice.peer_id()).is_some()
            },
        )
        .await;
        let attacker_key = Keypair::generate_ed25519();
        let outsider_key = Keypair::generate_ed25519();
        let outsider = outsider_key.public().to_peer_id();

        // 1. Claims the victim's id, signed with another key.
        let claim =
            SignedHeartbeat::sign(&heartbeat_claiming(victim.peer_id(), 1_000), &attacker_key);
        // 2. Properly signed by a key that is not the gossip author's.
        let relayed = SignedHeartbeat::sign(&heartbeat_claiming(outsider, 1), &outsider_key);
        // 3. A validly signed envelope whose figures were altered afterwards.
        let mut tampered = SignedHeartbeat::sign(&heartbeat_claiming(outsider, 2), &outsider_key);
        tampered.payload = tampered.payload.replace("stolen-model", "other-model");
        // 4. Not even JSON.
        for (sender, bytes) in [
            (&attacker, claim.to_bytes()),
            (&attacker, relayed.to_bytes()),
            (&accomplice, tampered.to_bytes()),
            (&accomplice, b"garbage".to_vec()),
        ] {
            sender.publish_envelope(bytes).await.unwrap();
        }

        let metrics = observer.metrics();
        wait_until("four rejections", Duration::from_secs(5), || {
            metrics.rejected_total() >= 4
        })
        .await;
        assert_eq!(metrics.rejected(RejectReason::PeerIdMismatch), 1);
        assert_eq!(metrics.rejected(RejectReason::SourceMismatch), 1);
        assert_eq!(metrics.rejected(RejectReason::BadSignature), 1);
        assert_eq!(metrics.rejected(RejectReason::Malformed), 1);

        let mut seen = Vec::new();
        while let Ok(event) = events.try_recv() {
            if let PeerEvent::HeartbeatRejected { source, reason } = event {
                let authors = [Some(attacker.peer_id()), Some(accomplice.peer_id())];
                assert!(authors.contains(&source), "the author is named: {source:?}");
                seen.push(reason);
            }
        }
        assert_eq!(seen.len(), 4, "{seen:?}");

        // Nothing forged made it into the table.
        assert!(observer.heartbeat_of(&outsider).is_none());
        assert!(observer.peers_serving("stolen-model").is_empty());
        assert!(observer.peers_serving("other-model").is_empty());
        let victim_entry = observer.heartbeat_of(&victim.peer_id()).unwrap();
        assert!(victim_entry.status.serves("model-0"));
        for node in [observer, victim, attacker, accomplice] {
            node.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_swarm_rejects_peers_without_the_key() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let psk = PreSharedKey::new([7; 32]);
        let private = |bootstrap| SwarmConfig {
            psk: Some(psk),
            // A wrong key can leave the handshake waiting for bytes; fail it fast here.
            handshake_timeout: Duration::from_secs(2),
            initial_status: status(Some("model-0")),
            ..node_config(bootstrap)
        };
        let seed = swarm::start(swarm::identity::ephemeral(), private(Vec::new()))
            .await
            .unwrap();
        let seed_addr = vec![addr_of(&seed)];
        let member = swarm::start(swarm::identity::ephemeral(), private(seed_addr.clone()))
            .await
            .unwrap();
        let wrong_key = swarm::start(
            swarm::identity::ephemeral(),
            SwarmConfig {
                psk: Some(PreSharedKey::new([8; 32])),
                ..private(seed_addr.clone())
            },
        )
        .await
        .unwrap();
        let no_key = swarm::start(
            swarm::identity::ephemeral(),
            SwarmConfig {
                psk: None,
                ..private(seed_addr)
            },
        )
        .await
        .unwrap();

        wait_until("the member to join", Duration::from_secs(5), || {
            seed.heartbeat_of(&member.peer_id()).is_some()
        })
        .await;
        wait_until(
            "both outsiders to fail bootstrap",
            Duration::from_secs(10),
            || {
                wrong_key.metrics().snapshot().bootstrap_failures >= 1
                    && no_key.metrics().snapshot().bootstrap_failures >= 1
            },
        )
        .await;
        // Give gossip a few more intervals: still nothing crosses the boundary.
        tokio::time::sleep(INTERVAL * 3).await;
        for outsider in [&wrong_key, &no_key] {
            assert!(seed.heartbeat_of(&outsider.peer_id()).is_none());
            assert!(member.heartbeat_of(&outsider.peer_id()).is_none());
            assert!(outsider.heartbeat_of(&seed.peer_id()).is_none());
            assert!(outsider.connected_peers().await.unwrap().is_empty());
        }
        let seed_peers = seed.connected_peers().await.unwrap();
        assert_eq!(seed_peers, vec![member.peer_id()]);
        for node in [seed, member, wrong_key, no_key] {
            node.shutdown().await;
        }
    })
    .await;
}
