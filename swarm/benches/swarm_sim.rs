//! In-process swarm simulation over libp2p's memory transport (a benchmark, run by hand).
//! Measures, for N peers: time until every peer sees a newly joined node, time until a
//! killed node leaves every view, provider lookup latency, and memory per peer. Results go
//! to `bench/swarm_RESULTS.md` by hand.
//!
//! ```text
//! LLAMANET_SIM_PEERS=200 LLAMANET_SIM_INTERVAL_MS=2000 cargo bench -p llamanet-swarm --bench swarm_sim
//! ```
//!
//! Every peer verifies every heartbeat (LlamaNet's signature, once per message), so the
//! CPU cost grows with N² / interval; on two cores that, not memory, bounds N. The run
//! prints that cost per heartbeat received, to size a real swarm whose nodes each have
//! their own CPU.

use std::time::{Duration, Instant};

use llamanet_swarm::testing::*;
use llamanet_swarm::{self as swarm, SwarmConfig, SwarmHandle, TransportKind};
use rand::Rng;

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

/// CPU time this process has used (user + system), from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state; utime and
    // stime are the 14th and 15th fields overall, in clock ticks (100 per second).
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Open connections per peer: (min, mean, max).
fn connections(peers: &[SwarmHandle]) -> (u64, u64, u64) {
    let counts: Vec<u64> = peers
        .iter()
        .map(|p| p.metrics().snapshot().connected_peers)
        .collect();
    let sum: u64 = counts.iter().sum();
    (
        counts.iter().copied().min().unwrap_or(0),
        sum / counts.len().max(1) as u64,
        counts.iter().copied().max().unwrap_or(0),
    )
}

/// A node as deployed (production gossip heartbeat, query timeout and idle timeout), on
/// the memory transport, announcing `sim-model`.
fn sim_config(bootstrap: Vec<libp2p::Multiaddr>, interval: Duration) -> SwarmConfig {
    let defaults = SwarmConfig::default();
    SwarmConfig {
        listen: vec!["/memory/0".parse().unwrap()],
        transport: TransportKind::Memory,
        heartbeat_interval: interval,
        initial_status: status(Some("sim-model")),
        gossip_heartbeat: defaults.gossip_heartbeat,
        query_timeout: defaults.query_timeout,
        idle_connection_timeout: defaults.idle_connection_timeout,
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

#[tokio::main]
async fn main() {
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
    let report_memory = |when: &str| {
        let rss = rss_kib().saturating_sub(rss_before);
        let (min, mean, max) = connections(&peers);
        println!(
            "sim: {when}: memory {rss} KiB for {n} peers = {} KiB per peer; connections per peer min {min} mean {mean} max {max}",
            rss / n as u64
        );
    };
    report_memory("settled");
    // Connections the joins' DHT queries opened are closed once older than the query
    // timeout (the connection budget); measure the steady state after that.
    tokio::time::sleep(SwarmConfig::default().query_timeout + Duration::from_secs(5)).await;
    report_memory("budget applied");

    // Steady state: what heartbeats cost. Every peer receives every heartbeat, so the swarm
    // handles n * n / interval of them per second, in this one process.
    let window = Duration::from_secs(10);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    let cores = (cpu_time() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();
    let received_per_s = (n * n) as f64 / interval.as_secs_f64();
    println!(
        "sim: steady state: {cores:.2} cores busy; {:.1} ms of CPU per peer per second; \
         {:.0} us per heartbeat received ({received_per_s:.0}/s swarm-wide)",
        cores * 1000.0 / n as f64,
        cores * 1e6 / received_per_s
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
    tokio::time::sleep(SwarmConfig::default().query_timeout + Duration::from_secs(5)).await;
    report_memory("after the lookups, budget applied");
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
        // The gauge each peer keeps (refreshed every quarter interval): cloning 100 tables
        // of 100 entries 20 times a second took a tenth of the CPU in a profile.
        let sizes: Vec<usize> = peers
            .iter()
            .map(|p| p.metrics().snapshot().peer_table_size as usize)
            .collect();
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
