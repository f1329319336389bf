//! Hostile peers on loopback: real libp2p peers built from the crate's own types that join
//! a swarm and misbehave, each with the outcome that matters asserted.
//!
//! - a replayed heartbeat of a dead node does not bring it back;
//! - absurd load figures (`u32::MAX`) never make a peer look idle to routing;
//! - fake models by the thousand leave the peer table, the model list and the metric
//!   labels bounded;
//! - a peer flooding heartbeats is cut off (rejected, then graylisted by gossipsub) while
//!   honest peers are still heard, and the node's API (its `/v1/swarm`, which reads the
//!   table the flood writes to) and swarm task keep answering promptly.
//!
//! Every test runs under a time limit; every peer listens on 127.0.0.1 only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use llamanet_node::route::{PickPolicy, Route, RouteRequest, Router};
use llamanet_node::swarm::heartbeat::{MAX_ENVELOPE_BYTES, MAX_MODELS};
use llamanet_node::swarm::{
    self, ExpiryPolicy, Heartbeat, ModelInfo, NodeStatus, RejectReason, SignedHeartbeat,
    SwarmConfig, SwarmHandle,
};
use llamanet_swarm::testing::*;

/// A peer with a key the test holds, so it can sign whatever it likes as itself.
async fn hostile(bootstrap: &SwarmHandle, status: NodeStatus) -> (SwarmHandle, Keypair) {
    let key = Keypair::generate_ed25519();
    let config = SwarmConfig {
        initial_status: status,
        ..node_config(vec![addr_of(bootstrap)])
    };
    (swarm::start(key.clone(), config).await.unwrap(), key)
}

/// A heartbeat of `key`'s peer with sequence `seq`, of a run that started after the peer's
/// own (so it is newer than anything the peer's swarm published itself).
fn signed(key: &Keypair, seq: u64, status: NodeStatus) -> Vec<u8> {
    let heartbeat = Heartbeat {
        peer_id: key.public().to_peer_id(),
        seq,
        started_at_ms: 4_000_000_000_000,
        timestamp_ms: seq,
        interval_ms: INTERVAL.as_millis() as u64,
        uptime_s: 0,
        swarm_addrs: Vec::new(),
        status,
    };
    SignedHeartbeat::sign(&heartbeat, key).to_bytes()
}

fn fake_models(prefix: &str, n: usize) -> Vec<ModelInfo> {
    (0..n)
        .map(|i| ModelInfo {
            id: format!("{prefix}-{i}"),
            ..ModelInfo::default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_heartbeat_of_a_dead_node_does_not_bring_it_back() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let observer = start_node(Vec::new(), None).await;
        let victim_key = Keypair::generate_ed25519();
        let victim = swarm::start(
            victim_key.clone(),
            SwarmConfig {
                initial_status: status(Some("model-0")),
                ..node_config(vec![addr_of(&observer)])
            },
        )
        .await
        .unwrap();
        let (attacker, _) = hostile(&observer, status(None)).await;
        let id = victim.peer_id();
        wait_until(
            "the observer sees the victim",
            Duration::from_secs(5),
            || observer.heartbeat_of(&id).is_some(),
        )
        .await;
        let last = observer.heartbeat_of(&id).unwrap().seq;
        victim.abort();
        wait_until("the dead victim leaves", Duration::from_secs(5), || {
            observer.heartbeat_of(&id).is_none()
        })
        .await;
        // The victim's own signature, replayed by another peer: its last heartbeat again,
        // and one with a newer sequence that the victim signed earlier (a stolen future).
        wait_until(
            "the attacker hears the observer",
            Duration::from_secs(5),
            || attacker.heartbeat_of(&observer.peer_id()).is_some(),
        )
        .await;
        for seq in [last, last + 1, last + 100] {
            attacker
                .publish_envelope(signed(&victim_key, seq, status(Some("model-0"))))
                .await
                .unwrap();
        }
        let metrics = observer.metrics();
        wait_until("three replays refused", Duration::from_secs(5), || {
            metrics.rejected(RejectReason::SourceMismatch) >= 3
        })
        .await;
        tokio::time::sleep(INTERVAL).await;
        assert!(
            observer.heartbeat_of(&id).is_none(),
            "the dead node came back"
        );
        assert!(observer.peers_serving("model-0").is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_load_figures_never_make_a_peer_look_idle() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let observer = start_node(Vec::new(), None).await;
        let mut busy = status(Some("m"));
        busy.slots_busy = 3; // load 0.75
        let honest = start_node(vec![addr_of(&observer)], None).await;
        honest.set_status(busy);
        honest.publish_heartbeat().await.unwrap();
        // In u32, u32::MAX + 1 is 0: a peer that "wraps" would look idle and win every
        // request. Summed as f64 it looks as busy as it claims.
        let mut lying = status(Some("m"));
        lying.slots_busy = u32::MAX;
        lying.queue_depth = 1;
        let (liar, _) = hostile(&observer, lying).await;
        wait_until("the observer sees both", Duration::from_secs(5), || {
            observer.peers_serving("m").len() == 2
        })
        .await;
        let router = Router::new(
            Arc::new(observer.clone()),
            observer.peer_id(),
            PickPolicy::default(),
            Default::default(),
            None,
        );
        let local = router.local(false, f64::INFINITY);
        for _ in 0..200 {
            let Route::Serve(plan) = router.decide(
                &RouteRequest {
                    model: "m",
                    affinity: None,
                },
                &local,
            ) else {
                panic!("both serve the model");
            };
            assert_eq!(plan[0].peer().unwrap().peer_id, honest.peer_id());
        }
        let liar_load = observer
            .heartbeat_of(&liar.peer_id())
            .unwrap()
            .status
            .load();
        assert!(liar_load > 1e9, "{liar_load}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_models_by_the_thousand_leave_tables_and_metrics_bounded() {
    init_logs();
    bounded(Duration::from_secs(60), async {
        // A victim whose table holds at most 8 peers (4096 in production).
        let victim = swarm::start(
            swarm::identity::ephemeral(),
            SwarmConfig {
                expiry: ExpiryPolicy {
                    max_peers: 8,
                    ..ExpiryPolicy::default()
                },
                initial_status: status(Some("real-model")),
                ..node_config(Vec::new())
            },
        )
        .await
        .unwrap();
        // A greedy peer joins first, while the table has room: its own heartbeats are
        // accepted, so only its forgeries below count against its gossipsub score (three
        // rejections in quick succession graylist a peer, and its messages go unread).
        let (greedy, greedy_key) = hostile(&victim, status(None)).await;
        wait_until("the greedy peer and the victim meet", Duration::from_secs(10), || {
            greedy.heartbeat_of(&victim.peer_id()).is_some()
                && victim.heartbeat_of(&greedy.peer_id()).is_some()
        })
        .await;
        // Twelve identities with 16 fake models each: 192 model ids.
        let mut fakes = Vec::new();
        for i in 0..12 {
            let mut claims = status(None);
            claims.models = fake_models(&format!("fake{i}"), MAX_MODELS);
            fakes.push(hostile(&victim, claims).await.0);
        }
        // Then it sends one heartbeat with 17 models and one with 10,000: out of bounds,
        // and too large to even publish (gossipsub's own limit); one just over the envelope
        // limit.
        let mut seventeen = status(None);
        seventeen.models = fake_models("too-many", MAX_MODELS + 1);
        greedy
            .publish_envelope(signed(&greedy_key, 1_000, seventeen))
            .await
            .unwrap();
        let mut ten_thousand = status(None);
        ten_thousand.models = fake_models("huge", 10_000);
        assert!(
            greedy
                .publish_envelope(signed(&greedy_key, 1_001, ten_thousand))
                .await
                .is_err(),
            "a 10,000-model heartbeat leaves no node"
        );
        let mut padded = status(None);
        padded.version = "v".repeat(MAX_ENVELOPE_BYTES);
        greedy
            .publish_envelope(signed(&greedy_key, 1_002, padded))
            .await
            .unwrap();

        let metrics = victim.metrics();
        wait_until(
            "the table to fill and the rest to be refused",
            Duration::from_secs(20),
            || {
                metrics.rejected(RejectReason::TableFull) >= 1
                    && metrics.rejected(RejectReason::OutOfBounds) >= 1
                    && metrics.rejected(RejectReason::TooLarge) >= 1
            },
        )
        .await;
        let table = victim.snapshot();
        assert!(table.peers.len() <= 8, "{} peers", table.peers.len());
        let models = victim.models();
        assert!(models.len() <= 8 * MAX_MODELS, "{} models", models.len());
        assert!(!models.keys().any(|m| m.starts_with("too-many") || m.starts_with("huge")));

        // What the node exports stays bounded too: at most 64 model labels and one
        // "_other", whatever peers announce.
        let exported = llamanet_node::metrics::Metrics::new();
        exported.attach_swarm(
            victim.metrics(),
            victim.peer_table(),
            Arc::new(Default::default()),
        );
        let text = exported.render(None);
        let labels = text
            .lines()
            .filter(|l| l.starts_with("llamanet_swarm_model_peers{"))
            .count();
        assert!(labels <= 65, "{labels} label values");
        if models.len() > 64 {
            assert!(text.contains("model=\"_other\""), "{text}");
        }
        println!(
            "{} peers, {} models, {labels} metric labels; refused: {} table full, {} out of bounds, {} too large",
            table.peers.len(),
            models.len(),
            metrics.rejected(RejectReason::TableFull),
            metrics.rejected(RejectReason::OutOfBounds),
            metrics.rejected(RejectReason::TooLarge)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_cut_off_while_honest_peers_are_heard() {
    init_logs();
    bounded(Duration::from_secs(60), async {
        let observer = start_node(Vec::new(), None).await;
        let honest = start_node(vec![addr_of(&observer)], Some("honest-model")).await;
        let (flooder, key) = hostile(&observer, status(Some("flood-model"))).await;
        wait_until("the observer sees both", Duration::from_secs(5), || {
            observer.heartbeat_of(&honest.peer_id()).is_some()
                && observer.heartbeat_of(&flooder.peer_id()).is_some()
        })
        .await;
        // The node's API as `serve` has it: `/v1/swarm` reads the peer table the flood
        // writes to.
        let table = observer.clone();
        let app = axum::Router::new().route(
            "/v1/swarm",
            axum::routing::get(move || {
                let table = table.clone();
                async move { axum::Json(serde_json::to_value(table.snapshot()).unwrap()) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = format!("http://{}/v1/swarm", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let http = reqwest::Client::new();
        let baseline = round_trips(&observer, 50).await;
        let api_before = api_latency(&http, &api, 50).await;

        // 1,000 new, validly signed heartbeats a second for three seconds.
        let metrics = observer.metrics();
        let started = Instant::now();
        let flood = tokio::spawn({
            let flooder = flooder.clone();
            async move {
                let mut sent = 0u64;
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                while started.elapsed() < Duration::from_secs(3) {
                    tick.tick().await;
                    for _ in 0..10 {
                        sent += 1;
                        let bytes = signed(&key, 10 + sent, status(Some("flood-model")));
                        let _ = flooder.publish_envelope(bytes).await;
                    }
                }
                sent
            }
        });
        let during = round_trips(&observer, 50).await;
        let api_during = api_latency(&http, &api, 50).await;
        let sent = flood.await.unwrap();
        let refused = metrics.rejected(RejectReason::TooFrequent);
        let received = metrics.snapshot().heartbeats_received;
        println!(
            "flood: {sent} heartbeats sent, {refused} refused as too frequent, {received} \
             verified in all; swarm task round trip p50/max {:?}/{:?} before, {:?}/{:?} during; \
             GET /v1/swarm p50/max {:?}/{:?} before, {:?}/{:?} during",
            baseline.0,
            baseline.1,
            during.0,
            during.1,
            api_before.0,
            api_before.1,
            api_during.0,
            api_during.1
        );
        assert!(refused >= 1, "the flood was never refused");
        // Graylisted after a few refusals: most of the flood never reaches validation.
        assert!(
            received < sent / 4,
            "{received} of {sent} flood heartbeats were still verified: not graylisted"
        );
        // Honest peers are still heard, and the swarm task still answers promptly.
        tokio::time::sleep(INTERVAL * 4).await;
        assert!(observer.heartbeat_of(&honest.peer_id()).is_some());
        // Generous bounds on a shared 2-core machine; the figures above are what matter.
        assert!(
            during.0 < Duration::from_millis(100),
            "the swarm task slowed to {:?}",
            during.0
        );
        assert!(
            api_during.0 < (api_before.0 * 5).max(Duration::from_millis(50)),
            "the API slowed from {:?} to {:?}",
            api_before.0,
            api_during.0
        );
    })
    .await;
}

/// Median and worst time of `n` GETs of `url`.
async fn api_latency(http: &reqwest::Client, url: &str, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let response = http.get(url).send().await.unwrap();
        assert!(response.status().is_success());
        response.bytes().await.unwrap();
        times.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    times.sort();
    (times[n / 2], times[n - 1])
}

/// Median and worst time of `n` commands through the swarm task.
async fn round_trips(node: &SwarmHandle, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        node.connected_peers().await.unwrap();
        times.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    times.sort();
    (times[n / 2], times[n - 1])
}
