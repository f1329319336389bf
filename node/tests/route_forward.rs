//! Forwarding between nodes over loopback: small axum servers stand in for peers, a test
//! node wires `route::pick` and `route::forward` the way `serve` does, and a reqwest client
//! plays the user. Every server binds 127.0.0.1 and every test runs under a time limit.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router as App;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use libp2p::PeerId;
use llamanet_node::route::{
    FORWARDED_HEADER, ForwardRequest, Forwarder, ForwarderConfig, NODE_HEADER, PickPolicy,
    RouteLayer, Router, Target, route_or_serve,
};
use llamanet_node::swarm::{Heartbeat, ModelInfo, NodeStatus};

const MODEL: &str = "qwen2.5-0.5b";
const CHAT: &str =
    r#"{"model":"qwen2.5-0.5b","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

async fn bounded<F: Future>(limit: Duration, body: F) -> F::Output {
    tokio::time::timeout(limit, body)
        .await
        .unwrap_or_else(|_| panic!("test exceeded its {limit:?} budget"))
}

/// Serves `app` on a loopback port; returns its base URL.
async fn spawn(app: App) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A loopback URL where nothing listens (the port was bound once, then released).
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

fn target(endpoint: &str) -> Target {
    Target {
        peer_id: PeerId::random(),
        endpoint: endpoint.to_string(),
        load: 0.0,
    }
}

fn fast_config() -> ForwarderConfig {
    ForwarderConfig {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_millis(800),
    }
}

fn heartbeat(peer_id: PeerId, endpoint: &str, model: Option<&str>) -> Heartbeat {
    Heartbeat {
        peer_id,
        seq: 1,
        started_at_ms: 0,
        timestamp_ms: 0,
        interval_ms: 2000,
        uptime_s: 0,
        status: NodeStatus {
            endpoints: vec![endpoint.to_string()],
            models: model
                .map(|id| ModelInfo {
                    id: id.into(),
                    context_size: 2048,
                    quantization: String::new(),
                })
                .into_iter()
                .collect(),
            slots_total: 4,
            healthy: true,
            ..NodeStatus::default()
        },
    }
}

/// An upstream "node" that streams `chunks` SSE events, `gap` apart, naming itself.
fn sse_upstream(node: &'static str, chunks: usize, gap: Duration, break_after: bool) -> App {
    let handler = move |headers: HeaderMap| async move {
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let marked = headers.contains_key(FORWARDED_HEADER);
        let events = futures::stream::iter(0..chunks).then(move |i| {
            let auth = auth.clone();
            async move {
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Ok::<_, std::io::Error>(Bytes::from(format!(
                    "data: {{\"i\":{i},\"auth\":\"{auth}\",\"marked\":{marked}}}\n\n"
                )))
            }
        });
        // The crash comes a moment after the last event, so that event is surely flushed.
        let tail = futures::stream::iter(break_after.then_some(())).then(move |()| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err::<Bytes, _>(std::io::Error::other("engine crashed"))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(NODE_HEADER, node)
            .body(Body::from_stream(events.chain(tail)))
            .unwrap()
    };
    App::new().route("/v1/chat/completions", post(handler))
}

/// The local "engine" of a test node: answers who served and who forwarded.
#[derive(Clone)]
struct LocalEngine {
    name: &'static str,
    served: Arc<AtomicUsize>,
}

async fn serve_locally(State(engine): State<LocalEngine>, headers: HeaderMap) -> Response {
    engine.served.fetch_add(1, Ordering::SeqCst);
    let forwarded_by = headers
        .get(FORWARDED_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    axum::Json(serde_json::json!({ "served_by": engine.name, "forwarded_by": forwarded_by }))
        .into_response()
}

/// Starts a test node wired the way `serve` wires routing (the `route_or_serve` middleware
/// in front of the handler) that knows `peers`; returns its URL, peer id and how many
/// requests it served itself.
async fn test_node(
    name: &'static str,
    serves: bool,
    peers: Vec<Heartbeat>,
) -> (String, PeerId, Arc<AtomicUsize>) {
    let me = PeerId::random();
    let gate = RouteLayer {
        router: Router::new(Arc::new(peers), me, PickPolicy::default(), fast_config()),
        local: Arc::new(move |model: &str| (serves && model == MODEL, 0.0)),
        body_limit: 1 << 20,
    };
    let engine = LocalEngine {
        name,
        served: Arc::new(AtomicUsize::new(0)),
    };
    let served = engine.served.clone();
    let app = App::new()
        .route(
            "/v1/chat/completions",
            post(serve_locally).layer(middleware::from_fn_with_state(gate, route_or_serve)),
        )
        .with_state(engine);
    (spawn(app).await, me, served)
}

/// Sends `body` and collects the answer's chunks with their arrival times.
async fn stream_chunks(url: &str, body: &'static str) -> (Response<()>, Vec<(Duration, Bytes)>) {
    let start = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header(header::AUTHORIZATION, "Bearer secret")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let mut head = Response::builder().status(response.status());
    for (name, value) in response.headers() {
        head = head.header(name, value);
    }
    let head = head.body(()).unwrap();
    let mut chunks = Vec::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        match chunk {
            Ok(chunk) => chunks.push((start.elapsed(), chunk)),
            Err(_) => break,
        }
    }
    (head, chunks)
}

fn text(chunks: &[(Duration, Bytes)]) -> String {
    chunks
        .iter()
        .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// A router-only node in front of `upstream`.
async fn router_in_front_of(upstream: &str) -> String {
    let peer = heartbeat(PeerId::random(), upstream, Some(MODEL));
    test_node("router", false, vec![peer]).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_chunk_by_chunk_with_auth_mark_and_node_name() {
    bounded(Duration::from_secs(20), async {
        let gap = Duration::from_millis(200);
        let upstream = spawn(sse_upstream("peer-a", 5, gap, false)).await;
        let router = router_in_front_of(&upstream).await;
        let (head, chunks) = stream_chunks(&router, CHAT).await;
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(head.headers()[NODE_HEADER], "peer-a");
        assert_eq!(head.headers()[header::CONTENT_TYPE], "text/event-stream");
        let body = text(&chunks);
        assert_eq!(body.matches("data: ").count(), 5, "{body}");
        assert!(
            body.contains(r#""auth":"Bearer secret","marked":true"#),
            "{body}"
        );
        // Unbuffered: the first event arrives about 4 gaps before the last one, and events
        // keep arriving about one gap apart.
        let first = chunks.first().unwrap().0;
        let last = chunks.last().unwrap().0;
        println!(
            "first event after {first:?}, last after {last:?}, {} chunks",
            chunks.len()
        );
        assert!(last - first >= gap * 3, "first {first:?} last {last:?}");
        assert!(first < gap * 2, "first event held back: {first:?}");
        assert!(chunks.len() >= 4, "events were merged: {chunks:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_peer_fails_over_to_the_next_and_is_counted() {
    bounded(Duration::from_secs(20), async {
        let live = spawn(sse_upstream("peer-b", 2, Duration::ZERO, false)).await;
        let forwarder = Forwarder::new(PeerId::random(), fast_config());
        let request = || {
            ForwardRequest::new(
                Method::POST,
                "/v1/chat/completions",
                HeaderMap::new(),
                Bytes::from_static(CHAT.as_bytes()),
            )
        };

        let targets = [target(&dead_endpoint()), target(&live)];
        let response = forwarder.forward(&targets, request()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[NODE_HEADER], "peer-b");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&body).matches("data: ").count(), 2);
        let metrics = forwarder.metrics().snapshot();
        assert_eq!((metrics.failovers, metrics.forwards_failover), (1, 1));

        // A peer answering 503 is also passed over before any byte reaches the client.
        let sick = spawn(App::new().route(
            "/v1/chat/completions",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "loading") }),
        ))
        .await;
        let response = forwarder
            .forward(&[target(&sick), target(&live)], request())
            .await;
        assert_eq!(response.status(), StatusCode::OK);

        // Nobody answers: a 502 OpenAI error naming each attempt.
        let targets = [target(&dead_endpoint()), target(&dead_endpoint())];
        let response = forwarder.forward(&targets, request()).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["code"], "no_peer_answered");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&targets[1].peer_id.to_string()),
            "{message}"
        );
        assert!(message.contains("qwen2.5-0.5b"), "{message}");
        let metrics = forwarder.metrics().snapshot();
        assert_eq!(metrics.forwards_failover, 2);
        assert_eq!(metrics.forwards_failed, 1);
        assert_eq!(metrics.failovers, 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_broken_midway_ends_with_an_error_event() {
    bounded(Duration::from_secs(20), async {
        let upstream = spawn(sse_upstream("peer-c", 2, Duration::from_millis(50), true)).await;
        let router = router_in_front_of(&upstream).await;
        let (head, chunks) = stream_chunks(&router, CHAT).await;
        assert_eq!(head.status(), StatusCode::OK);
        let body = text(&chunks);
        let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{body}");
        let last: serde_json::Value =
            serde_json::from_str(events[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "peer_stream_broken");

        // A peer that goes silent instead of closing: the stall timeout ends the stream.
        let silent = App::new().route(
            "/v1/chat/completions",
            post(|| async {
                let events = futures::stream::once(async {
                    Ok::<_, Infallible>(Bytes::from_static(b"data: {\"i\":0}\n\n"))
                })
                .chain(futures::stream::pending());
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from_stream(events))
                    .unwrap()
            }),
        );
        let router = router_in_front_of(&spawn(silent).await).await;
        let started = Instant::now();
        let (_, chunks) = stream_chunks(&router, CHAT).await;
        assert!(text(&chunks).contains("peer_stream_broken"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_never_forwarded_again() {
    bounded(Duration::from_secs(20), async {
        // C serves the model; B does not and knows C; A does not and knows only B.
        let (c_url, c_id, c_count) = test_node("c", true, vec![]).await;
        let c = heartbeat(c_id, &c_url, Some(MODEL));
        let (b_url, b_id, b_count) = test_node("b", false, vec![c]).await;
        // A believes B serves the model (a stale heartbeat, say).
        let b = heartbeat(b_id, &b_url, Some(MODEL));
        let (a_url, a_id, _) = test_node("a", false, vec![b]).await;

        let client = reqwest::Client::new();
        let response = client
            .post(format!("{a_url}/v1/chat/completions"))
            .body(CHAT)
            .send()
            .await
            .unwrap();
        // The node that served names itself, through the forwarding node.
        assert_eq!(response.headers()[NODE_HEADER], b_id.to_string().as_str());
        let answer: serde_json::Value = response.json().await.unwrap();
        // B saw A's mark and answered itself instead of hopping on to C.
        assert_eq!(answer["served_by"], "b");
        assert_eq!(answer["forwarded_by"], a_id.to_string());
        assert_eq!(b_count.load(Ordering::SeqCst), 1);
        assert_eq!(c_count.load(Ordering::SeqCst), 0);

        // Without the mark, B does forward to C: the mark is what stopped it.
        let answer: serde_json::Value = client
            .post(format!("{b_url}/v1/chat/completions"))
            .body(CHAT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["served_by"], "c");
        assert_eq!(answer["forwarded_by"], b_id.to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_nobody_serves_is_a_404_listing_the_swarm_models() {
    bounded(Duration::from_secs(20), async {
        let peers = vec![
            heartbeat(PeerId::random(), "http://127.0.0.1:9", Some(MODEL)),
            heartbeat(PeerId::random(), "http://127.0.0.1:9", Some("llama-3.2-1b")),
        ];
        let (url, _, _) = test_node("router", false, peers).await;
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .body(r#"{"model":"gpt-4","messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            error["error"]["message"],
            "no peer serves model `gpt-4`; models in the swarm: [llama-3.2-1b, qwen2.5-0.5b]"
        );
        assert_eq!(error["error"]["code"], "model_not_found");
        assert_eq!(error["error"]["param"], "model");

        // No readable model: routing steps aside and the handler gives its own answer.
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .body(r#"{"messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["served_by"], "router");
    })
    .await;
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_overhead_on_loopback_is_small() {
    bounded(Duration::from_secs(60), async {
        let upstream = spawn(App::new().route(
            "/v1/chat/completions",
            post(|| async {
                (
                    [(NODE_HEADER, "peer")],
                    axum::Json(serde_json::json!({"choices":[{"message":{"content":"ok"}}]})),
                )
            }),
        ))
        .await;
        let router = router_in_front_of(&upstream).await;
        let client = reqwest::Client::new();
        let body = r#"{"model":"qwen2.5-0.5b","messages":[{"role":"user","content":"hi"}]}"#;
        let time = |url: String| {
            let client = client.clone();
            async move {
                let start = Instant::now();
                let response = client
                    .post(format!("{url}/v1/chat/completions"))
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
                response.bytes().await.unwrap();
                start.elapsed()
            }
        };
        // Warm both connection pools, then alternate so both see the same machine load.
        for _ in 0..20 {
            time(upstream.clone()).await;
            time(router.clone()).await;
        }
        let (mut direct, mut routed) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            direct.push(time(upstream.clone()).await);
            routed.push(time(router.clone()).await);
        }
        direct.sort();
        routed.sort();
        let (d50, d99) = (percentile(&direct, 0.5), percentile(&direct, 0.99));
        let (r50, r99) = (percentile(&routed, 0.5), percentile(&routed, 0.99));
        println!(
            "loopback, 300 requests each: direct p50 {d50:?} p99 {d99:?}; \
             through a router p50 {r50:?} p99 {r99:?}; added p50 {:?} p99 {:?}",
            r50.saturating_sub(d50),
            r99.saturating_sub(d99)
        );
        // Generous bound for debug builds on a shared machine; the figure is what matters.
        assert!(r50.saturating_sub(d50) < Duration::from_millis(10));
    })
    .await;
}
