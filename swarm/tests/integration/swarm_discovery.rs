//! Discovery and liveness over loopback TCP: four model nodes and one router-only node find
//! each other and see each other's heartbeats; a killed node leaves every view within three
//! heartbeat intervals; a restarted node comes back with the same peer id.

use std::time::{Duration, Instant};

use llamanet_swarm::discovery::Discovery;
use llamanet_swarm::testing::*;
use llamanet_swarm::{self as swarm, PeerEvent, SwarmConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_peers_discover_each_other_and_forget_the_dead() {
    init_logs();
    bounded(Duration::from_secs(60), async {
        // The router-only node plays the operator's part: everyone bootstraps from it.
        let router = start_node(Vec::new(), None).await;
        let seed = vec![addr_of(&router)];
        let started = Instant::now();
        let mut nodes = vec![router];
        for i in 0..4 {
            let model = format!("model-{}", i % 2);
            nodes.push(start_node(seed.clone(), Some(&model)).await);
        }
        let ids: Vec<_> = nodes.iter().map(|n| n.peer_id()).collect();

        let discovery = wait_until("every node to see all five", Duration::from_secs(5), || {
            nodes
                .iter()
                .all(|n| ids.iter().all(|id| n.heartbeat_of(id).is_some()))
        })
        .await;
        println!(
            "discovery: all 5 peers see all 5 heartbeats {:?} after the last start, {:?} after the first",
            discovery,
            started.elapsed()
        );

        // What the router answers for /v1/models and for picking a peer.
        let models = nodes[0].models();
        assert_eq!(models.keys().collect::<Vec<_>>(), vec!["model-0", "model-1"]);
        assert_eq!(models["model-0"].peers.len(), 2);
        assert_eq!(nodes[0].peers_serving("model-1").len(), 2);
        let snapshot = serde_json::to_value(nodes[0].snapshot()).unwrap();
        assert_eq!(snapshot["peers"].as_array().unwrap().len(), 5);
        // The client-side view of the same table.
        let candidates = Discovery::nodes(&nodes[0], Some("model-0"));
        assert_eq!(candidates.len(), 2);
        assert!(candidates.iter().all(|c| c.endpoint == "http://127.0.0.1:8080"));
        assert_eq!(Discovery::nodes(&nodes[0], None).len(), 5);
        // Gauges are refreshed by the swarm's periodic sweep, so they may lag a moment.
        wait_until("the gauges to catch up", Duration::from_secs(2), || {
            nodes[0].metrics().snapshot().peer_table_size == 5
        })
        .await;
        let metrics = nodes[0].metrics().snapshot();
        assert!(metrics.heartbeats_received > 0);
        assert!(metrics.connected_peers >= 4, "{metrics:?}");
        assert!(metrics.routing_table_size >= 4, "{metrics:?}");

        // kill -9 equivalent: the task is gone, no goodbye.
        let victim = nodes.remove(2);
        let victim_id = victim.peer_id();
        let mut left_events = nodes[0].subscribe();
        victim.abort();
        let killed_at = Instant::now();
        let limit = INTERVAL * 3 + Duration::from_millis(500);
        let removal = wait_until("the dead node to leave every table", limit, || {
            nodes.iter().all(|n| n.heartbeat_of(&victim_id).is_none())
        })
        .await;
        println!("dead-peer removal: gone from all 4 tables {removal:?} after the kill (interval {INTERVAL:?})");
        // The sweep also announces it.
        let left = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Ok(PeerEvent::PeerLeft(peer)) = left_events.recv().await
                    && peer == victim_id
                {
                    return killed_at.elapsed();
                }
            }
        })
        .await
        .expect("PeerLeft event");
        println!("dead-peer removal: PeerLeft event after {left:?}");
        // The others are still all there.
        for n in &nodes {
            assert_eq!(n.snapshot().peers.len(), 4);
        }
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_keeps_its_peer_id_and_rejoins() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity.key");
        let seed_node = start_node(Vec::new(), None).await;
        let seed = vec![addr_of(&seed_node)];

        let start_with_identity = || async {
            let (key, _) = swarm::identity::load_or_create(&identity).unwrap();
            let config = SwarmConfig {
                initial_status: status(Some("model-0")),
                ..node_config(seed.clone())
            };
            swarm::start(key, config).await.unwrap()
        };
        let first = start_with_identity().await;
        let id = first.peer_id();
        wait_until("the seed to see the node", Duration::from_secs(5), || {
            seed_node.heartbeat_of(&id).is_some()
        })
        .await;
        let first_run = seed_node.heartbeat_of(&id).unwrap().started_at_ms;
        first.abort();
        wait_until("the node to expire", Duration::from_secs(3), || {
            seed_node.heartbeat_of(&id).is_none()
        })
        .await;

        // Let the clock move so the new run has a later start stamp.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let second = start_with_identity().await;
        assert_eq!(second.peer_id(), id, "same identity file, same peer id");
        let rejoin = wait_until(
            "the restarted node to be seen again",
            Duration::from_secs(5),
            || {
                seed_node
                    .heartbeat_of(&id)
                    .is_some_and(|hb| hb.started_at_ms > first_run)
            },
        )
        .await;
        println!("restart: same peer id {id}, seen again after {rejoin:?}");
        second.shutdown().await;
        seed_node.shutdown().await;
    })
    .await;
}

/// An entry node that is a DHT client, bootstrapped from `seed`: the seed never hands its
/// address to others, so nobody dials it.
async fn start_dht_client(seed: &swarm::SwarmHandle) -> swarm::SwarmHandle {
    swarm::start(
        swarm::identity::ephemeral(),
        SwarmConfig {
            dht_server: false,
            initial_status: status(None),
            ..node_config(vec![addr_of(seed)])
        },
    )
    .await
    .unwrap()
}

/// A peer whose heartbeat came through gossip, but whose address nobody handed over yet (it
/// joined after this node's DHT bootstrap, through another peer), is found through the DHT
/// when a stream is opened to it: a forward to it does not fail to dial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_known_only_from_gossip_is_located_through_the_dht() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    init_logs();
    bounded(Duration::from_secs(60), async {
        let protocol = libp2p::StreamProtocol::new("/llamanet-test/echo/1");
        let seed = start_node(Vec::new(), None).await;
        let entry = start_dht_client(&seed).await;
        wait_until("the entry to see the seed", Duration::from_secs(10), || {
            entry.heartbeat_of(&seed.peer_id()).is_some()
        })
        .await;
        // Long enough for the entry's own DHT bootstrap to have finished without the late
        // peer in it.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let late = start_node(vec![addr_of(&seed)], Some("m")).await;
        let mut incoming = late.accept_streams(protocol.clone()).unwrap();
        let echo = tokio::spawn(async move {
            let mut stream = incoming.next().await.expect("a stream arrives");
            let mut word = [0u8; 5];
            stream.read_exact(&mut word).await.unwrap();
            stream.write_all(&word).await.unwrap();
            stream.close().await.unwrap();
            stream.peer()
        });
        wait_until(
            "the entry to hear the late peer",
            Duration::from_secs(10),
            || entry.heartbeat_of(&late.peer_id()).is_some(),
        )
        .await;
        assert!(
            !entry
                .connected_peers()
                .await
                .unwrap()
                .contains(&late.peer_id()),
            "precondition: the entry must know the late peer from gossip only"
        );

        let mut stream = entry
            .open_stream(late.peer_id(), protocol, Duration::from_secs(5))
            .await
            .expect("the DHT gives the late peer's address");
        stream.write_all(b"hello").await.unwrap();
        let mut back = Vec::new();
        stream.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
        assert_eq!(echo.await.unwrap(), entry.peer_id());
    })
    .await;
}

/// A peer that comes back under the same identity at another address, while the old one
/// now swallows dials (a pod IP taken by something that never answers), is reached at once:
/// its heartbeats sign where it listens now, and dials try that next to what the DHT
/// remembers. Without them the stream open waits out its timeout at the old address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_moved_is_dialed_where_its_heartbeats_say() {
    use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
    init_logs();
    bounded(Duration::from_secs(60), async {
        let protocol = libp2p::StreamProtocol::new("/llamanet-test/echo/1");
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity.key");
        let seed = start_node(Vec::new(), None).await;
        // The moved peer cannot come to it.
        let entry = start_dht_client(&seed).await;
        let start_moving = || async {
            let (key, _) = swarm::identity::load_or_create(&identity).unwrap();
            let config = SwarmConfig {
                initial_status: status(Some("m")),
                ..node_config(vec![addr_of(&seed)])
            };
            let node = swarm::start(key, config).await.unwrap();
            let mut incoming = node.accept_streams(protocol.clone()).unwrap();
            let echo = tokio::spawn(async move {
                while let Some(mut stream) = incoming.next().await {
                    let mut word = [0u8; 5];
                    if stream.read_exact(&mut word).await.is_ok() {
                        let _ = stream.write_all(&word).await;
                        let _ = stream.close().await;
                    }
                }
            });
            (node, echo)
        };
        let echo_once = |peer| {
            let entry = &entry;
            let protocol = protocol.clone();
            async move {
                let started = Instant::now();
                let mut stream = entry
                    .open_stream(peer, protocol, Duration::from_secs(2))
                    .await?;
                stream.write_all(b"hello").await.unwrap();
                let mut back = Vec::new();
                stream.read_to_end(&mut back).await.unwrap();
                assert_eq!(back, b"hello");
                Ok::<_, swarm::SwarmError>(started.elapsed())
            }
        };

        let (first, first_echo) = start_moving().await;
        let id = first.peer_id();
        let old: std::net::SocketAddr = match addr_of(&first).iter().nth(1) {
            Some(libp2p::multiaddr::Protocol::Tcp(port)) => ([127, 0, 0, 1], port).into(),
            other => panic!("not a TCP address: {other:?}"),
        };
        wait_until(
            "the entry to hear the peer",
            Duration::from_secs(10),
            || entry.heartbeat_of(&id).is_some(),
        )
        .await;
        // The entry has talked to it at its first address (the DHT keeps that one).
        echo_once(id).await.expect("the first run answers");

        first.abort();
        first_echo.abort();
        // Its old address now takes connections and never says a word.
        let silent = bounded(Duration::from_secs(5), async {
            loop {
                match tokio::net::TcpListener::bind(old).await {
                    Ok(listener) => return listener,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        let swallower = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let (second, _second_echo) = start_moving().await;
        assert_ne!(addr_of(&second), addr_of(&first), "a new address");
        wait_until(
            "the new run's own heartbeat",
            Duration::from_secs(5),
            || second.heartbeat_of(&id).is_some(),
        )
        .await;
        let run = second.heartbeat_of(&id).unwrap().started_at_ms;
        wait_until(
            "the entry to hear the new run",
            Duration::from_secs(10),
            || {
                entry
                    .heartbeat_of(&id)
                    .is_some_and(|hb| hb.started_at_ms == run)
            },
        )
        .await;
        assert!(
            !entry.connected_peers().await.unwrap().contains(&id),
            "precondition: the entry is not connected to the moved peer"
        );
        let took = echo_once(id)
            .await
            .expect("the moved peer answers within the connect timeout");
        println!("moved peer: stream opened and echoed in {took:?}");
        swallower.abort();
    })
    .await;
}
