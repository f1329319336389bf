//! Model discovery through Kademlia provider records over loopback: a model served by more
//! peers than one Kademlia key can hold (20) is found with every one of its providers,
//! because provider keys are sharded.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use llamanet_swarm::testing::*;
use llamanet_swarm::{self as swarm, SwarmConfig};

const PROVIDERS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_finds_more_than_twenty_providers_of_one_model() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        // Heartbeats off: this test is about the DHT alone (a newcomer that has not yet heard
        // any gossip), and 25 peers on two cores are cheaper without them.
        let provider_config = |bootstrap| SwarmConfig {
            publish_heartbeats: false,
            initial_status: status(Some("big-model")),
            ..node_config(bootstrap)
        };
        let first = swarm::start(swarm::identity::ephemeral(), provider_config(Vec::new()))
            .await
            .unwrap();
        let seed = vec![addr_of(&first)];
        let mut providers = vec![first];
        for _ in 1..PROVIDERS {
            providers.push(
                swarm::start(swarm::identity::ephemeral(), provider_config(seed.clone()))
                    .await
                    .unwrap(),
            );
        }
        let expected: HashSet<_> = providers.iter().map(|p| p.peer_id()).collect();

        // A light peer (tool, operator) joining through another provider than the seed.
        let newcomer = swarm::start(
            swarm::identity::ephemeral(),
            SwarmConfig {
                query_timeout: Duration::from_secs(5),
                ..SwarmConfig::light(vec![addr_of(&providers[PROVIDERS / 2])])
            },
        )
        .await
        .unwrap();

        let started = Instant::now();
        let mut best = 0;
        let mut lookups = Vec::new();
        loop {
            let lookup = Instant::now();
            let found: HashSet<_> = newcomer
                .find_providers("big-model")
                .await
                .unwrap()
                .into_iter()
                .collect();
            lookups.push(lookup.elapsed());
            println!("lookup {}: {} found in {:?}", lookups.len(), found.len(), lookup.elapsed());
            assert!(found.is_subset(&expected), "only real providers are listed");
            best = best.max(found.len());
            if found.len() == PROVIDERS {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(40),
                "found at best {best} of {PROVIDERS} providers"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        println!(
            "providers: all {PROVIDERS} found {:?} after the newcomer started, {} lookups, last took {:?}",
            started.elapsed(),
            lookups.len(),
            lookups.last().unwrap()
        );
        assert!(newcomer.find_providers("no-such-model").await.unwrap().is_empty());

        newcomer.shutdown().await;
        for p in providers {
            p.shutdown().await;
        }
    })
    .await;
}
