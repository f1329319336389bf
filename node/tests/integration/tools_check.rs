//! `check` and `monitor --once` against a fake `/v1/swarm` server and against a real
//! two-node swarm on loopback (light peer via `--bootstrap`): exit codes, the printed table,
//! and that each answer comes in under three seconds.

use std::time::{Duration, Instant};

use axum::Router as App;
use axum::http::StatusCode;
use axum::routing::get;
use libp2p::{Multiaddr, PeerId};
use llamanet_node::swarm::{Heartbeat, NodeStatus};
use llamanet_node::tools::monitor::{self, render_once};
use llamanet_node::tools::{
    self, CheckOptions, CheckOutcome, MonitorOptions, PeerSnapshot, PeerTableSnapshot, SwarmSource,
};
use llamanet_swarm::testing::*;

/// A peer as `/v1/swarm` would list it.
fn listed(model: Option<&str>, healthy: bool) -> PeerSnapshot {
    PeerSnapshot {
        heartbeat: Heartbeat {
            peer_id: PeerId::random(),
            seq: 1,
            started_at_ms: 0,
            timestamp_ms: 0,
            interval_ms: 2000,
            uptime_s: 10,
            swarm_addrs: Vec::new(),
            status: NodeStatus {
                healthy,
                ..status(model)
            },
        },
        age_ms: 300,
        expires_in_ms: 5700,
    }
}

/// A fake node answering `/v1/swarm` with `view` and `/health` with `health`.
async fn fake_node(view: PeerTableSnapshot, health: StatusCode) -> String {
    let app = App::new()
        .route("/v1/swarm", get(move || async move { axum::Json(view) }))
        .route("/health", get(move || async move { health }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn by_url(url: &str) -> CheckOptions {
    CheckOptions {
        url: Some(url.to_string()),
        ..CheckOptions::default()
    }
}

/// A check gives up after its timeout (2 s by default); one that answers within this did
/// not hang. Generous on purpose: how fast a check answers is not what these tests measure.
const GAVE_UP_WITHIN: Duration = Duration::from_secs(10);

/// Runs a check, prints its report (shown on failure) and times it.
async fn timed_check(options: &CheckOptions) -> (CheckOutcome, String, Duration) {
    let start = Instant::now();
    let report = tools::check::inspect(options).await.unwrap();
    let elapsed = start.elapsed();
    let text = report.render();
    println!("{text}({elapsed:?})");
    (report.outcome, text, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_over_http_answers_each_exit_code() {
    bounded(Duration::from_secs(30), async {
        let view = PeerTableSnapshot {
            peers: vec![listed(Some("qwen"), true), listed(None, true)],
        };
        let url = fake_node(view.clone(), StatusCode::OK).await;

        let (outcome, text, elapsed) = timed_check(&by_url(&url)).await;
        assert_eq!(outcome.exit_code(), 0, "{text}");
        assert!(text.starts_with("PEER"), "{text}");
        assert!(text.contains("qwen") && text.contains("(router)"), "{text}");
        assert!(elapsed < GAVE_UP_WITHIN);

        let wants_llama = CheckOptions {
            model: Some("llama".into()),
            ..by_url(&url)
        };
        let (outcome, text, _) = timed_check(&wants_llama).await;
        assert_eq!(outcome.exit_code(), 1);
        assert!(text.contains("model `llama` is not served"), "{text}");

        let wants_three = CheckOptions {
            min_nodes: 3,
            ..by_url(&url)
        };
        assert_eq!(timed_check(&wants_three).await.0.exit_code(), 1);

        let all_sick = PeerTableSnapshot {
            peers: vec![listed(Some("qwen"), false)],
        };
        let sick_url = fake_node(all_sick, StatusCode::OK).await;
        let (outcome, text, _) = timed_check(&by_url(&sick_url)).await;
        assert_eq!(outcome.exit_code(), 1);
        assert!(text.contains("all 1 nodes are unhealthy"), "{text}");

        let loading = fake_node(view, StatusCode::SERVICE_UNAVAILABLE).await;
        let (outcome, text, _) = timed_check(&by_url(&loading)).await;
        assert_eq!(outcome.exit_code(), 1);
        assert!(text.contains("/health answered 503"), "{text}");

        // Nothing listening: unreachable, promptly.
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let (outcome, text, elapsed) = timed_check(&by_url(&dead_url)).await;
        assert_eq!(outcome.exit_code(), 2, "{text}");
        assert!(elapsed < GAVE_UP_WITHIN);

        // Something that is not a LlamaNet node.
        let not_a_node = fake_node_without_swarm().await;
        assert_eq!(timed_check(&by_url(&not_a_node)).await.0.exit_code(), 2);
    })
    .await;
}

async fn fake_node_without_swarm() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, App::new()).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_once_json_over_http_prints_the_peer_table() {
    bounded(Duration::from_secs(30), async {
        let view = PeerTableSnapshot {
            peers: vec![listed(Some("qwen"), true)],
        };
        let url = fake_node(view.clone(), StatusCode::OK).await;
        let source = SwarmSource::open(None, Some(&url), None, None, Duration::from_secs(2))
            .await
            .unwrap();
        let seen = monitor::snapshot(&source, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(seen, view);
        let json: PeerTableSnapshot = serde_json::from_str(&render_once(&seen, true)).unwrap();
        assert_eq!(json, view);
        // The whole command path, which prints to stdout and needs no terminal.
        tools::monitor(MonitorOptions {
            url: Some(url),
            once: true,
            json: true,
            ..MonitorOptions::default()
        })
        .await
        .unwrap();
        let bad = tools::monitor(MonitorOptions {
            once: true,
            ..MonitorOptions::default()
        })
        .await;
        assert!(bad.unwrap_err().to_string().contains("--bootstrap"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_monitor_through_a_real_swarm_via_bootstrap() {
    init_logs();
    bounded(Duration::from_secs(60), async {
        let seed = start_node(vec![], Some("model-0")).await;
        let other = start_node(vec![addr_of(&seed)], Some("model-0")).await;
        wait_until(
            "the two nodes to see each other",
            Duration::from_secs(10),
            || {
                seed.peers_serving("model-0").len() == 2
                    && other.peers_serving("model-0").len() == 2
            },
        )
        .await;
        let via_seed = |model: Option<&str>, min_nodes: usize| CheckOptions {
            bootstrap: Some(addr_of(&seed)),
            model: model.map(str::to_string),
            min_nodes,
            timeout: Duration::from_secs(2),
            ..CheckOptions::default()
        };

        let (outcome, text, elapsed) = timed_check(&via_seed(Some("model-0"), 2)).await;
        assert_eq!(outcome, CheckOutcome::Healthy, "{text}");
        assert!(elapsed < GAVE_UP_WITHIN, "{elapsed:?}");
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with('…') && l.contains("model-0"))
                .count(),
            2,
            "{text}"
        );

        let (outcome, _, elapsed) = timed_check(&via_seed(Some("absent"), 1)).await;
        assert_eq!(outcome.exit_code(), 1);
        assert!(elapsed < GAVE_UP_WITHIN, "{elapsed:?}");

        let (outcome, text, elapsed) = timed_check(&via_seed(None, 3)).await;
        assert_eq!(outcome.exit_code(), 1);
        assert!(
            text.contains("2 healthy nodes, fewer than the 3 required"),
            "{text}"
        );
        assert!(elapsed < GAVE_UP_WITHIN, "{elapsed:?}");

        // monitor --once --json through the same kind of light peer.
        let source = SwarmSource::open(
            Some(&addr_of(&other)),
            None,
            None,
            None,
            Duration::from_secs(3),
        )
        .await
        .unwrap();
        let start = Instant::now();
        let view = monitor::snapshot(&source, Duration::from_secs(3))
            .await
            .unwrap();
        println!("monitor snapshot after {:?}", start.elapsed());
        source.close().await;
        let json: serde_json::Value = serde_json::from_str(&render_once(&view, true)).unwrap();
        let mut ids: Vec<String> = json["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        let mut expected = vec![seed.peer_id().to_string(), other.peer_id().to_string()];
        expected.sort();
        assert_eq!(ids, expected);

        seed.shutdown().await;
        other.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_via_a_bootstrap_address_nobody_answers_is_unreachable() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", dead.local_addr().unwrap().port())
            .parse()
            .unwrap();
        drop(dead);
        let options = CheckOptions {
            bootstrap: Some(addr),
            ..CheckOptions::default()
        };
        let (outcome, text, elapsed) = timed_check(&options).await;
        assert_eq!(outcome.exit_code(), 2, "{text}");
        assert!(text.contains("no swarm peer answered"), "{text}");
        assert!(elapsed < GAVE_UP_WITHIN, "{elapsed:?}");
    })
    .await;
}
