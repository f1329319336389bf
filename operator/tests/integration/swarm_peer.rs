//! The operator's swarm peer receives a node's signed heartbeats over real libp2p on
//! loopback and records them under the InferenceNode and pod they name, if and only if the
//! signer is that pod's identity key; a stranger's heartbeats claiming the same replicas
//! change nothing and are counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use llamanet_operator::heartbeat::{HeartbeatTable, Rejection};
use llamanet_operator::swarm_peer::{self, SwarmPeerConfig};
use llamanet_swarm::{self as swarm, InferenceNodeRef, NodeStatus, SwarmConfig};

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
    // The identity Secret as the reconciler wrote it: keys for gemma-0 and gemma-1.
    let key0 = swarm::Keypair::generate_ed25519();
    let key1 = swarm::Keypair::generate_ed25519();
    let secret = BTreeMap::from([
        (
            "gemma-0".to_owned(),
            ByteString(key0.to_protobuf_encoding().unwrap()),
        ),
        (
            "gemma-1".to_owned(),
            ByteString(key1.to_protobuf_encoding().unwrap()),
        ),
    ]);
    table.set_owners("ml", "gemma", &secret);
    let replica = swarm::start(key0, node_config(status(Some("gemma-0"))))
        .await
        .unwrap();
    // A stranger with its own key claims gemma-1 (not running) with huge figures.
    let mut forged = status(Some("gemma-1"));
    forged.tokens_per_second = 9999.0;
    let stranger = swarm::start(swarm::Keypair::generate_ed25519(), node_config(forged))
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
    // The stranger's claims were heard, refused and counted, never recorded.
    let started = Instant::now();
    while table.rejected(Rejection::IdentityMismatch) < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the stranger's heartbeats were not counted as refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let beats = table.for_resource("ml", "gemma");
    assert_eq!(beats.len(), 1, "{beats:?}");
    assert_eq!(beats[0].pod, "gemma-0");
    assert!(table.is_impostor(&stranger.peer_id()));
    assert!(!table.is_impostor(&replica.peer_id()));
}
