//! The operator's swarm peer receives a node's signed heartbeats over real libp2p on
//! loopback and records them under the InferenceNode and pod they name.

use std::time::{Duration, Instant};

use llamanet_node::swarm::{self, InferenceNodeRef, NodeStatus, SwarmConfig};
use llamanet_operator::heartbeat::HeartbeatTable;
use llamanet_operator::swarm_peer::{self, SwarmPeerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_replicas_reach_the_table() {
    let table = HeartbeatTable::default();
    let operator = swarm_peer::start(
        SwarmPeerConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![],
            identity: None,
            swarm_key: None,
        },
        table.clone(),
    )
    .await
    .unwrap();
    let bootstrap = operator
        .dialable_addrs()
        .into_iter()
        .next()
        .expect("the operator listens");

    let status = |pod: Option<&str>| NodeStatus {
        slots_total: 4,
        slots_busy: 1,
        tokens_per_second: 42.5,
        inference_node: pod.map(|_| InferenceNodeRef {
            namespace: "ml".into(),
            name: "gemma".into(),
        }),
        pod: pod.map(str::to_string),
        healthy: true,
        ..Default::default()
    };
    let node_config = |status| SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![bootstrap.clone()],
        heartbeat_interval: Duration::from_millis(300),
        initial_status: status,
        ..SwarmConfig::default()
    };
    let replica = swarm::start(
        swarm::Keypair::generate_ed25519(),
        node_config(status(Some("gemma-0"))),
    )
    .await
    .unwrap();
    // A node run by hand names no InferenceNode: not the operator's business.
    let _stray = swarm::start(
        swarm::Keypair::generate_ed25519(),
        node_config(status(None)),
    )
    .await
    .unwrap();

    let started = Instant::now();
    let seen = loop {
        let beats = table.for_resource("ml", "gemma");
        if let Some(b) = beats.first() {
            break b.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no heartbeat recorded within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "first replica heartbeat recorded after {:?}",
        started.elapsed()
    );
    assert_eq!(seen.pod, "gemma-0");
    assert_eq!(seen.peer_id, replica.peer_id().to_string());
    assert_eq!((seen.slots_busy, seen.slots_total), (1, 4));
    assert_eq!(seen.tokens_per_second, 42.5);
    assert_eq!(
        table.oldest_heartbeats().len(),
        1,
        "the stray node is not recorded"
    );
}
