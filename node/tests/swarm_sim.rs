//! In-process swarm simulation over libp2p's memory transport (a benchmark, not a test:
//! `#[ignore]`d, run by hand). Measures, for N peers: time until every peer sees a newly
//! joined node, time until a killed node leaves every view, provider lookup latency, and
//! memory per peer. Results go to `bench/swarm_RESULTS.md` by hand.
//!
//! ```text
//! LLAMANET_SIM_PEERS=200 LLAMANET_SIM_INTERVAL_MS=2000 \
//!   cargo test --release -p llamanet-node --no-default-features --test swarm_sim -- --ignored --nocapture
//! ```
//!
//! Every peer verifies every heartbeat (the gossipsub message signature and ours), so the
//! CPU cost grows with N² / interval; on two cores that, not memory, bounds N.

mod swarm_support;

use std::time::{Duration, Instant};

use llamanet_node::swarm::{self, SwarmConfig, SwarmHandle, TransportKind};
use rand::Rng;
use swarm_support::*;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn sim_config(bootstrap: Vec<libp2p::Multiaddr>, interval: Duration) -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/memory/0".parse().unwrap()],
        transport: TransportKind::Memory,
        heartbeat_interval: interval,
        initial_status: status(Some("sim-model")),
        ..node_config(bootstrap)
    }
}

async fn start_sim_peer(
    peers: &[SwarmHandle],
    interval: Duration,
    rng: &mut impl Rng,
) -> SwarmHandle {
    // Join through a random earlier peer, as pods joining through a Service would.
    let bootstrap = if peers.is_empty() {
        Vec::new()
    } else {
        vec![addr_of(&peers[rng.gen_range(0..peers.len())])]
    };
    swarm::start(
        swarm::identity::ephemeral(),
        sim_config(bootstrap, interval),
    )
    .await
    .expect("peer starts")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; run by hand with --ignored --nocapture"]
async fn simulate_swarm() {
    let n = env_or("LLAMANET_SIM_PEERS", 100) as usize;
    let interval = Duration::from_millis(env_or("LLAMANET_SIM_INTERVAL_MS", 2000));
    let mut rng = rand::thread_rng();
    let rss_before = rss_kib();
    let mut peers = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let peer = start_sim_peer(&peers, interval, &mut rng).await;
        peers.push(peer);
    }
    println!(
        "sim: {n} peers started in {:?} (interval {interval:?})",
        start.elapsed()
    );
    let settle = wait_until_quiet(&peers, n, Duration::from_secs(120)).await;
    println!("sim: every peer sees all {n} after {settle:?}");
    let rss_after = rss_kib();
    println!(
        "sim: memory {} KiB for {n} peers = {} KiB per peer",
        rss_after.saturating_sub(rss_before),
        rss_after.saturating_sub(rss_before) / n as u64
    );

    // A newcomer: how long until every peer sees it.
    let joined_at = Instant::now();
    let newcomer = start_sim_peer(&peers, interval, &mut rng).await;
    let id = newcomer.peer_id();
    let seen = wait_until(
        "every peer to see the newcomer",
        Duration::from_secs(60),
        || peers.iter().all(|p| p.heartbeat_of(&id).is_some()),
    )
    .await;
    println!(
        "sim: newcomer seen by all {n} after {:?} ({seen:?} after start returned)",
        joined_at.elapsed()
    );

    // Kill it: how long until it leaves every view.
    newcomer.abort();
    let killed = Instant::now();
    wait_until(
        "the killed peer to leave every view",
        Duration::from_secs(60),
        || peers.iter().all(|p| p.heartbeat_of(&id).is_none()),
    )
    .await;
    println!(
        "sim: killed peer gone from all {n} views after {:?}",
        killed.elapsed()
    );

    // Provider lookups from random peers.
    let mut lookups = Vec::new();
    let mut found_min = usize::MAX;
    for _ in 0..20 {
        let peer = &peers[rng.gen_range(0..n)];
        let t = Instant::now();
        let found = peer.find_providers("sim-model").await.unwrap();
        lookups.push(t.elapsed());
        found_min = found_min.min(found.len());
    }
    lookups.sort();
    println!(
        "sim: provider lookup p50 {:?} p99 {:?} (fewest providers found: {found_min} of {n})",
        percentile(&lookups, 0.5),
        percentile(&lookups, 0.99)
    );
    for p in &peers {
        p.abort();
    }
}

/// Waits until every peer's table holds `n` peers, reporting progress every 5 s; returns the
/// time taken.
async fn wait_until_quiet(peers: &[SwarmHandle], n: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let sizes: Vec<usize> = peers.iter().map(|p| p.snapshot().peers.len()).collect();
        let min = sizes.iter().copied().min().unwrap_or(0);
        if min >= n {
            return start.elapsed();
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            let done = sizes.iter().filter(|&&s| s >= n).count();
            let connected: Vec<u64> = peers
                .iter()
                .map(|p| p.metrics().snapshot().connected_peers)
                .collect();
            println!(
                "sim: after {:?}: {done}/{n} peers complete, smallest table {min}, connections min {} max {}",
                start.elapsed(),
                connected.iter().min().unwrap(),
                connected.iter().max().unwrap()
            );
            last_report = Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "the swarm did not converge within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
