//! The connection budget on real TCP connections: DHT queries connect a node to many
//! peers, and gossipsub would keep every one of those connections open. Above its target a
//! node closes the connections it dialed and no longer needs, yet heartbeats still reach
//! everyone, a newcomer is still seen by all, and nobody drops its bootstrap peer.

use std::time::Duration;

use llamanet_swarm::testing::*;
use llamanet_swarm::{self as swarm, SwarmConfig, SwarmHandle};

const NODES: usize = 14;
const TARGET: usize = 4;
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

fn budget_config(bootstrap: Vec<libp2p::Multiaddr>) -> SwarmConfig {
    SwarmConfig {
        connection_target: TARGET,
        query_timeout: QUERY_TIMEOUT,
        initial_status: status(Some("budget-model")),
        ..node_config(bootstrap)
    }
}

fn connections(nodes: &[SwarmHandle]) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| n.metrics().snapshot().connected_peers)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_close_connections_they_no_longer_need_and_still_hear_everyone() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        // Everyone joins through the first node, as pods join through the operator.
        let seed = swarm::start(swarm::identity::ephemeral(), budget_config(Vec::new()))
            .await
            .unwrap();
        let seed_addr = vec![addr_of(&seed)];
        let mut nodes = vec![seed];
        for _ in 1..NODES {
            let node = swarm::start(
                swarm::identity::ephemeral(),
                budget_config(seed_addr.clone()),
            )
            .await
            .unwrap();
            nodes.push(node);
        }
        let all_seen = |nodes: &[SwarmHandle], n: usize| {
            nodes.iter().all(|node| node.snapshot().peers.len() >= n)
        };
        // The most connections each node held while the swarm formed: pruning may begin
        // before the last node is seen by all, so one sample at the end can miss the peak.
        let mut joined = vec![0u64; NODES];
        wait_until("every node to see all", Duration::from_secs(20), || {
            for (peak, now) in joined.iter_mut().zip(connections(&nodes)) {
                *peak = (*peak).max(now);
            }
            all_seen(&nodes, NODES)
        })
        .await;
        println!("most connections per node while joining: {joined:?}");

        // Once the joins' queries are over, the budget applies. A node keeps its gossip mesh
        // (up to 12 peers) and its bootstrap peer, so it may stay above the target, but the
        // spare connections it dialed go: no node keeps one to every other.
        let pruned = wait_until(
            "spare connections to close",
            Duration::from_secs(20),
            || {
                connections(&nodes)
                    .iter()
                    .skip(1)
                    .all(|&c| c < NODES as u64 - 1)
            },
        )
        .await;
        let after = connections(&nodes);
        println!("connections per node {pruned:?} later: {after:?}");
        // The seed is everyone's bootstrap peer: the others keep their connection to it,
        // and it never closes connections others dialed.
        assert_eq!(
            after[0],
            NODES as u64 - 1,
            "the bootstrap peer kept everyone"
        );
        let total_after: u64 = after.iter().sum();
        let total_joined: u64 = joined.iter().sum();
        assert!(
            total_after < total_joined,
            "connections went down: {total_joined} -> {total_after}"
        );

        // Heartbeats still reach everyone through the mesh, over several expiry periods.
        tokio::time::sleep(INTERVAL * 8).await;
        assert!(all_seen(&nodes, NODES), "a peer table lost someone");

        // A newcomer is still seen by every node, and sees them all.
        let newcomer = swarm::start(swarm::identity::ephemeral(), budget_config(seed_addr))
            .await
            .unwrap();
        let id = newcomer.peer_id();
        let seen = wait_until(
            "everyone to see the newcomer",
            Duration::from_secs(10),
            || {
                nodes.iter().all(|n| n.heartbeat_of(&id).is_some())
                    && newcomer.snapshot().peers.len() > NODES
            },
        )
        .await;
        println!("newcomer seen by all {seen:?} after it started");

        newcomer.shutdown().await;
        for node in nodes {
            node.shutdown().await;
        }
    })
    .await;
}
