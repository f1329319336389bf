//! Forwarding between nodes over real swarms on loopback: every test node is a libp2p swarm
//! (TCP on 127.0.0.1) plus an axum app wired the way `serve` wires it (the routing
//! middleware in front of a handler, peers' requests served over swarm streams), and a
//! reqwest client plays the user. The handlers stand in for engines: they stream, fail,
//! stall, refuse, or continue annotated streams the way the real engine does. Every test
//! runs under a time limit.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router as App;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use libp2p::PeerId;
use llamanet_node::route::resume::{
    ANNOTATE_HEADER, ANNOTATION_EVENT, Annotation, RESUME_HEADER, Resume,
};
use llamanet_node::route::{
    ForwardedBy, ForwarderConfig, NODE_HEADER, PeerTrust, PickPolicy, RouteLayer, Router,
    route_or_serve,
};
use llamanet_node::swarm::SwarmHandle;
use llamanet_swarm::testing::{addr_of, bounded, init_logs, start_node, wait_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const MODEL: &str = "qwen2.5-0.5b";
const CHAT: &str =
    r#"{"model":"qwen2.5-0.5b","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const PLAIN_CHAT: &str = r#"{"model":"qwen2.5-0.5b","messages":[{"role":"user","content":"hi"}]}"#;

fn fast_config() -> ForwarderConfig {
    ForwarderConfig {
        connect_timeout: Duration::from_millis(1500),
        response_timeout: Duration::from_secs(5),
        stall_timeout: Duration::from_millis(800),
        retry_window: Duration::from_secs(10),
        ..ForwarderConfig::default()
    }
}

/// The Authorization header and the forwarder of each request a handler served.
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, Option<PeerId>)>>>;

/// What a test node's handler sees and does.
#[derive(Clone)]
struct Engine {
    name: &'static str,
    served: Arc<AtomicUsize>,
    /// Authorization headers and forwarders of the requests it served.
    seen: Seen,
    behaviour: Behaviour,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// JSON naming who served and who forwarded.
    Answer,
    /// `events` plain SSE events, `gap` apart, then `[DONE]` if `done`.
    Stream {
        events: usize,
        gap: Duration,
        done: bool,
    },
    /// An annotated stream of `words` tokens (`w0 w1 ...`), each its own chunk, `gap`
    /// apart, that breaks after `break_after` tokens (if set); honours a resume header the
    /// way the engine does (continues after the resumed tokens, with the same id).
    Words {
        words: usize,
        gap: Duration,
        break_after: Option<usize>,
    },
    /// One event, then silence.
    Stall,
    /// 503 `model_loading`, as a node whose model loads.
    Loading,
    /// Answers, except the `n`th request it serves: that one hangs up without a word (the
    /// handler panics, which drops the stream), as an exchange closing under a request.
    HangUpOn(usize),
}

/// A node: its swarm, its HTTP address, and what its handler saw.
struct Node {
    swarm: SwarmHandle,
    url: String,
    engine: Engine,
    router: Router,
    /// What the node's shutdown does when its grace period is over.
    grace_over: CancellationToken,
}

impl Node {
    fn id(&self) -> PeerId {
        self.swarm.peer_id()
    }

    fn served(&self) -> usize {
        self.engine.served.load(Ordering::SeqCst)
    }
}

/// Starts a node that joins through `bootstrap`, announces `MODEL` when `serves` (healthy),
/// believes its own load is `load`, and trusts forwarders by `trust`.
async fn node(
    name: &'static str,
    serves: bool,
    load: f64,
    behaviour: Behaviour,
    bootstrap: Option<&Node>,
    trust: PeerTrust,
) -> Node {
    let bootstrap = bootstrap
        .map(|b| vec![addr_of(&b.swarm)])
        .unwrap_or_default();
    node_via(name, serves, load, behaviour, bootstrap, trust).await
}

/// [`node`] joining through explicit addresses.
async fn node_via(
    name: &'static str,
    serves: bool,
    load: f64,
    behaviour: Behaviour,
    bootstrap: Vec<libp2p::Multiaddr>,
    trust: PeerTrust,
) -> Node {
    let swarm = start_node(bootstrap, serves.then_some(MODEL)).await;
    // Every test model file is the same one: streams may continue between any two nodes.
    swarm.update_status(|s| {
        for model in &mut s.models {
            model.fingerprint = "fp".into();
        }
    });
    let router = Router::for_swarm(swarm.clone(), PickPolicy::default(), fast_config());
    let grace_over = CancellationToken::new();
    let gate = RouteLayer {
        router: router.clone(),
        local: Arc::new(move |model: &str| (serves && model == MODEL, load)),
        body_limit: 1 << 20,
        body_timeout: Duration::from_secs(30),
        grace_over: grace_over.clone(),
    };
    let engine = Engine {
        name,
        served: Arc::new(AtomicUsize::new(0)),
        seen: Arc::default(),
        behaviour,
    };
    let app = App::new()
        .route(
            "/v1/chat/completions",
            post(handle).layer(middleware::from_fn_with_state(gate, route_or_serve)),
        )
        .with_state(engine.clone());
    llamanet_node::route::transport::serve_peers(
        &swarm,
        app.clone(),
        trust,
        TaskTracker::new(),
        CancellationToken::new(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Node {
        swarm,
        url,
        engine,
        router,
        grace_over,
    }
}

/// Waits until every node of `nodes` has a heartbeat of every other.
async fn meet(nodes: &[&Node]) {
    wait_until(
        "every node sees every other",
        Duration::from_secs(15),
        || {
            nodes.iter().all(|a| {
                nodes
                    .iter()
                    .all(|b| a.id() == b.id() || a.swarm.heartbeat_of(&b.id()).is_some())
            })
        },
    )
    .await;
}

/// Connects `a` to `b` directly. A heartbeat can arrive through gossip before the DHT has
/// given its sender's address, and a forward to it would then fail to dial and fall over.
async fn connect(a: &Node, b: &Node) {
    // Refused when already connected or dialing: either is what we want.
    let _ = a.swarm.dial(addr_of(&b.swarm)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.swarm.connected_peers().await.unwrap().contains(&b.id()) {
        assert!(
            Instant::now() < deadline,
            "{} did not connect",
            b.engine.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes `node` report `busy` slots and waits until `observer` has seen it.
async fn make_busy(node: &Node, busy: u32, observer: &Node) {
    node.swarm.update_status(|s| s.slots_busy = busy);
    node.swarm.publish_heartbeat().await.unwrap();
    let id = node.id();
    wait_until("the busier load is seen", Duration::from_secs(5), || {
        observer
            .swarm
            .heartbeat_of(&id)
            .is_some_and(|h| h.status.slots_busy == busy)
    })
    .await;
}

async fn handle(State(engine): State<Engine>, request: axum::extract::Request) -> Response {
    let nth = engine.served.fetch_add(1, Ordering::SeqCst) + 1;
    let forwarded_by = request.extensions().get::<ForwardedBy>().map(|f| f.0);
    let headers = request.headers().clone();
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_string());
    engine.seen.lock().unwrap().push((auth, forwarded_by));
    if let Behaviour::HangUpOn(n) = engine.behaviour {
        assert_ne!(
            n, nth,
            "{} hangs up on request {nth} (expected)",
            engine.name
        );
    }
    match engine.behaviour {
        Behaviour::Answer | Behaviour::HangUpOn(_) => axum::Json(serde_json::json!({
            "served_by": engine.name,
            "forwarded_by": forwarded_by.map(|p| p.to_string()),
        }))
        .into_response(),
        Behaviour::Stream { events, gap, done } => sse((0..events)
            .map(move |i| {
                let event = format!("data: {{\"i\":{i},\"node\":\"{}\"}}\n\n", engine.name);
                (if i == 0 { Duration::ZERO } else { gap }, Ok(event))
            })
            .chain(done.then(|| (Duration::ZERO, Ok("data: [DONE]\n\n".to_string()))))),
        Behaviour::Words {
            words,
            gap,
            break_after,
        } => words_stream(&engine, &headers, words, gap, break_after),
        Behaviour::Stall => {
            let events = futures::stream::once(async {
                Ok::<_, Infallible>(Bytes::from_static(b"data: {\"i\":0}\n\n"))
            })
            .chain(futures::stream::pending());
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(events))
                .unwrap()
        }
        Behaviour::Loading => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": {
                "message": "the model is still loading", "type": "server_error",
                "param": null, "code": "model_loading"}})),
        )
            .into_response(),
    }
}

/// An SSE response from `(delay, event)` pairs; an `Err` event breaks the body.
fn sse(
    events: impl Iterator<Item = (Duration, Result<String, &'static str>)> + Send + 'static,
) -> Response {
    let body = futures::stream::iter(events).then(|(delay, event)| async move {
        tokio::time::sleep(delay).await;
        event.map(Bytes::from).map_err(std::io::Error::other)
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

/// The engine's way with annotations and resumes, on words instead of a model: token `k`
/// is the text `wk `.
fn words_stream(
    engine: &Engine,
    headers: &HeaderMap,
    words: usize,
    gap: Duration,
    break_after: Option<usize>,
) -> Response {
    let resume = headers
        .get(RESUME_HEADER)
        .map(|v| Resume::from_header(v.to_str().unwrap()).unwrap());
    let annotate = headers.contains_key(ANNOTATE_HEADER);
    let from = resume.as_ref().map_or(0, |r| r.tokens.len());
    let id = resume
        .as_ref()
        .map_or_else(|| format!("chatcmpl-{}", engine.name), |r| r.id.clone());
    let mut events: Vec<(Duration, Result<String, &'static str>)> = Vec::new();
    if annotate {
        let start = Annotation::Start {
            id: id.clone(),
            created: 1,
            seed: None,
            fingerprint: "fp".into(),
        };
        events.push((
            Duration::ZERO,
            Ok(format!(
                "event: {ANNOTATION_EVENT}\ndata: {}\n\n",
                start.to_json()
            )),
        ));
    }
    for k in from..words {
        if break_after == Some(k) {
            events.push((gap, Err("engine crashed")));
            return sse(events.into_iter());
        }
        let mut event = String::new();
        if annotate {
            let tokens = Annotation::Tokens { t: vec![k as i32] };
            event.push_str(&format!(
                "event: {ANNOTATION_EVENT}\ndata: {}\n\n",
                tokens.to_json()
            ));
        }
        event.push_str(&format!(
            "data: {{\"id\":\"{id}\",\"node\":\"{}\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{k} \"}},\"finish_reason\":null}}]}}\n\n",
            engine.name
        ));
        events.push((if k == from { Duration::ZERO } else { gap }, Ok(event)));
    }
    events.push((
        Duration::ZERO,
        Ok(format!("data: {{\"id\":\"{id}\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}\n\ndata: [DONE]\n\n")),
    ));
    sse(events.into_iter())
}

/// Sends `body` with a client key and collects the answer's chunks with arrival times.
async fn send(
    url: &str,
    body: &'static str,
) -> (reqwest::StatusCode, HeaderMap, Vec<(Duration, Bytes)>) {
    let start = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .header(header::AUTHORIZATION, "Bearer client-secret")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let mut headers = HeaderMap::new();
    for (name, value) in response.headers() {
        headers.insert(name.clone(), value.clone());
    }
    let mut chunks = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => chunks.push((start.elapsed(), chunk)),
            Err(_) => break,
        }
    }
    (status, headers, chunks)
}

fn text(chunks: &[(Duration, Bytes)]) -> String {
    chunks
        .iter()
        .map(|(_, c)| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// The text content of an OpenAI stream, in order.
fn content(body: &str) -> String {
    body.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .filter_map(|chunk| {
            chunk["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_pass_through_unbuffered_and_the_client_key_never_leaves_the_entry() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let gap = Duration::from_millis(200);
        let peer = node(
            "peer-a",
            true,
            0.0,
            Behaviour::Stream {
                events: 5,
                gap,
                done: true,
            },
            None,
            PeerTrust::Members,
        )
        .await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&peer),
            PeerTrust::Members,
        )
        .await;
        meet(&[&peer, &router]).await;

        let (status, headers, chunks) = send(&router.url, CHAT).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_eq!(headers[NODE_HEADER], peer.id().to_string().as_str());
        assert_eq!(headers[header::CONTENT_TYPE], "text/event-stream");
        let body = text(&chunks);
        assert_eq!(
            body.matches("data: ").count(),
            6,
            "5 events and [DONE]: {body}"
        );
        // The peer served it, knew who forwarded it, and never saw the client's key.
        let seen = peer.engine.seen.lock().unwrap().clone();
        assert_eq!(seen, vec![(None, Some(router.id()))]);
        // Unbuffered: events arrive about one gap apart, the first at once.
        let first = chunks.first().unwrap().0;
        let last = chunks.last().unwrap().0;
        println!(
            "first event after {first:?}, last after {last:?}, {} chunks",
            chunks.len()
        );
        assert!(last - first >= gap * 3, "first {first:?} last {last:?}");
        assert!(chunks.len() >= 4, "events were merged: {chunks:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_attempts_fall_over_to_the_next_peer_then_to_the_entry_itself() {
    init_logs();
    bounded(Duration::from_secs(40), async {
        let sick = node(
            "sick",
            true,
            0.0,
            Behaviour::Loading,
            None,
            PeerTrust::Members,
        )
        .await;
        let good = node(
            "good",
            true,
            0.0,
            Behaviour::Answer,
            Some(&sick),
            PeerTrust::Members,
        )
        .await;
        let doomed = node(
            "doomed",
            true,
            0.0,
            Behaviour::Answer,
            Some(&sick),
            PeerTrust::Members,
        )
        .await;
        // The entry serves the model too but is busy: peers first, itself last.
        let entry = node(
            "entry",
            true,
            3.0,
            Behaviour::Answer,
            Some(&sick),
            PeerTrust::Members,
        )
        .await;
        meet(&[&sick, &good, &doomed, &entry]).await;
        // The good peer is busier, so power of two choices always prefers a bad one first.
        make_busy(&good, 2, &entry).await;
        // A crash: the swarm task dies, the heartbeat lingers in everyone's table.
        doomed.swarm.abort();

        let mut served_by = Vec::new();
        for _ in 0..6 {
            let (status, _, chunks) = send(&entry.url, PLAIN_CHAT).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{}", text(&chunks));
            let answer: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
            served_by.push(answer["served_by"].as_str().unwrap().to_string());
        }
        assert!(served_by.iter().all(|s| s == "good"), "{served_by:?}");
        // The first request tried both bad peers (their 503 and a dead connection), and
        // from then on both were suspect: never tried again.
        assert_eq!(sick.served(), 1, "the loading peer is tried once");
        assert!(entry.router.is_suspect(&sick.id()));
        assert!(entry.router.is_suspect(&doomed.id()));
        let metrics = entry.router.metrics().snapshot();
        assert_eq!(
            (metrics.suspected, metrics.failovers),
            (2, 2),
            "{metrics:?}"
        );
        assert_eq!(metrics.forwards_failover, 1, "{metrics:?}");

        // The good peer goes too: the entry serves it itself, its last resort.
        good.swarm.abort();
        let (status, headers, chunks) = send(&entry.url, PLAIN_CHAT).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{}", text(&chunks));
        let answer: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
        assert_eq!(answer["served_by"], "entry");
        assert_eq!(headers[NODE_HEADER], entry.id().to_string().as_str());
        assert!(entry.router.metrics().snapshot().forwards_local >= 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_nobody_answers_the_error_names_every_attempt() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let a = node("a", true, 0.0, Behaviour::Loading, None, PeerTrust::Members).await;
        let b = node(
            "b",
            true,
            0.0,
            Behaviour::Loading,
            Some(&a),
            PeerTrust::Members,
        )
        .await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&a),
            PeerTrust::Members,
        )
        .await;
        meet(&[&a, &b, &router]).await;
        let (status, _, chunks) = send(&router.url, PLAIN_CHAT).await;
        // The last candidate's own error is passed through: it says most.
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
        let error: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
        assert_eq!(error["error"]["code"], "model_loading");
        assert_eq!(a.served() + b.served(), 2);

        // Both are suspect now and also gone: 502 naming each attempt.
        a.swarm.abort();
        b.swarm.abort();
        let (status, _, chunks) = send(&router.url, PLAIN_CHAT).await;
        assert_eq!(
            status,
            reqwest::StatusCode::BAD_GATEWAY,
            "{}",
            text(&chunks)
        );
        let error: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
        assert_eq!(error["error"]["code"], "no_peer_answered");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&a.id().to_string()) && message.contains(&b.id().to_string()),
            "{message}"
        );
        assert!(message.contains(MODEL), "{message}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_stream_continues_on_another_node_where_the_client_is() {
    init_logs();
    bounded(Duration::from_secs(40), async {
        let gap = Duration::from_millis(30);
        // The first peer breaks after 4 of 10 words; the second continues from there.
        let breaking = node(
            "breaking",
            true,
            0.0,
            Behaviour::Words {
                words: 10,
                gap,
                break_after: Some(4),
            },
            None,
            PeerTrust::Members,
        )
        .await;
        // Busier, so the router picks the breaking one first.
        let steady = node(
            "steady",
            true,
            0.0,
            Behaviour::Words {
                words: 10,
                gap,
                break_after: None,
            },
            Some(&breaking),
            PeerTrust::Members,
        )
        .await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&breaking),
            PeerTrust::Members,
        )
        .await;
        meet(&[&breaking, &steady, &router]).await;
        make_busy(&steady, 3, &router).await;

        let (status, _, chunks) = send(&router.url, CHAT).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let body = text(&chunks);
        // One unbroken stream: every word once, in order, no error, no annotation.
        let words: String = (0..10).map(|k| format!("w{k} ")).collect();
        assert_eq!(content(&body), words, "{body}");
        assert!(
            !body.contains("error") && !body.contains(ANNOTATION_EVENT),
            "{body}"
        );
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        // Both halves carry the first node's response id.
        assert!(!body.contains("chatcmpl-steady"), "{body}");
        assert!(
            body.contains("\"node\":\"steady\""),
            "the rest came from steady: {body}"
        );
        let metrics = router.router.metrics().snapshot();
        assert_eq!(
            (metrics.continuations, metrics.broken_streams),
            (1, 0),
            "{metrics:?}"
        );
        assert_eq!(steady.served(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_never_see_annotations_local_or_relayed() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let words = Behaviour::Words {
            words: 4,
            gap: Duration::ZERO,
            break_after: None,
        };
        // Serves the model and is idle: its own handler answers first, with a peer behind it.
        let entry = node("entry", true, 0.0, words, None, PeerTrust::Members).await;
        let peer = node("peer", true, 0.0, words, Some(&entry), PeerTrust::Members).await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&entry),
            PeerTrust::Members,
        )
        .await;
        meet(&[&entry, &peer, &router]).await;
        for url in [&entry.url, &router.url] {
            let (status, _, chunks) = send(url, CHAT).await;
            assert_eq!(status, reqwest::StatusCode::OK);
            let body = text(&chunks);
            assert_eq!(content(&body), "w0 w1 w2 w3 ", "{body}");
            assert!(!body.contains(ANNOTATION_EVENT), "{url}: {body}");
        }
        assert!(entry.served() >= 1, "the entry answered itself");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_can_continue_ends_with_an_error_event() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let gap = Duration::from_millis(30);
        // Unannotated events cannot be continued.
        let plain = node(
            "plain",
            true,
            0.0,
            Behaviour::Stream {
                events: 2,
                gap,
                done: false,
            },
            None,
            PeerTrust::Members,
        )
        .await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&plain),
            PeerTrust::Members,
        )
        .await;
        meet(&[&plain, &router]).await;
        let (_, _, chunks) = send(&router.url, CHAT).await;
        let body = text(&chunks);
        assert!(body.contains("\"i\":1"), "{body}");
        assert!(
            body.contains("peer_stream_broken"),
            "a stream without [DONE] is broken: {body}"
        );

        // A peer that goes silent: the stall timeout ends the stream, promptly.
        let silent = node(
            "silent",
            true,
            0.0,
            Behaviour::Stall,
            Some(&plain),
            PeerTrust::Members,
        )
        .await;
        meet(&[&plain, &silent, &router]).await;
        plain.swarm.abort();
        wait_until("the dead peer leaves", Duration::from_secs(10), || {
            router.swarm.heartbeat_of(&plain.id()).is_none()
        })
        .await;
        let started = Instant::now();
        let (_, _, chunks) = send(&router.url, CHAT).await;
        assert!(
            text(&chunks).contains("peer_stream_broken"),
            "{}",
            text(&chunks)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_stream_outlasting_the_entrys_grace_period_ends_with_an_error_event() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let peer = node(
            "peer-a",
            true,
            0.0,
            Behaviour::Stream {
                events: 100,
                gap: Duration::from_millis(100),
                done: true,
            },
            None,
            PeerTrust::Members,
        )
        .await;
        let entry = node(
            "entry",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&peer),
            PeerTrust::Members,
        )
        .await;
        meet(&[&peer, &entry]).await;

        // The entry stops while it relays the peer's long stream: its client's connection
        // ends with it, so the stream's last events say why.
        let grace_over = entry.grace_over.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(650)).await;
            grace_over.cancel();
        });
        let started = Instant::now();
        let (status, headers, chunks) = send(&entry.url, CHAT).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        assert_eq!(headers[NODE_HEADER], peer.id().to_string().as_str());
        assert!(started.elapsed() < Duration::from_secs(5), "not cut short");
        let body = text(&chunks);
        let events: Vec<&str> = body
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .collect();
        assert!(events.len() > 3, "events before the end: {body}");
        assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
        let error: serde_json::Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(error["error"]["code"], "shutting_down", "{body}");
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("shutdown grace period"),
            "{body}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_request_is_served_where_it_lands() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        // B does not serve the model; C does. A forwards to B only if it thinks B serves it:
        // make A's view say so by having B announce the model while its handler answers.
        let c = node("c", true, 0.0, Behaviour::Answer, None, PeerTrust::Members).await;
        let b = node(
            "b",
            true,
            5.0,
            Behaviour::Answer,
            Some(&c),
            PeerTrust::Members,
        )
        .await;
        let a = node(
            "a",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&c),
            PeerTrust::Members,
        )
        .await;
        meet(&[&a, &b, &c]).await;
        connect(&a, &b).await;
        // A prefers the idle B? Make C busy so A picks B.
        make_busy(&c, 4, &a).await;
        let (_, headers, chunks) = send(&a.url, PLAIN_CHAT).await;
        let answer: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
        // B's own view (load 5) would send it on to C; forwarded, it serves it itself.
        assert_eq!(answer["served_by"], "b");
        assert_eq!(answer["forwarded_by"], a.id().to_string());
        assert_eq!(headers[NODE_HEADER], b.id().to_string().as_str());
        assert_eq!(c.served(), 0);
        // Sent to B directly, B does hand it to C.
        let (_, _, chunks) = send(&b.url, PLAIN_CHAT).await;
        let answer: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
        assert_eq!(answer["served_by"], "c");
        assert_eq!(answer["forwarded_by"], b.id().to_string());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_that_closes_under_a_request_is_replaced_by_a_new_stream() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        // B alone serves the model; A cannot fall over to anyone. B's second request comes
        // on the exchange the first one left in A's pool, and B hangs up on it unanswered:
        // the request goes out again on a new stream, to B, and the client never knows.
        let b = node(
            "b",
            true,
            0.0,
            Behaviour::HangUpOn(2),
            None,
            PeerTrust::Members,
        )
        .await;
        let a = node(
            "a",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&b),
            PeerTrust::Members,
        )
        .await;
        meet(&[&a, &b]).await;
        connect(&a, &b).await;
        for attempt in 1..=3 {
            let (status, headers, chunks) = send(&a.url, PLAIN_CHAT).await;
            let body = text(&chunks);
            assert_eq!(status, 200, "request {attempt}: {body}");
            assert_eq!(headers[NODE_HEADER], b.id().to_string().as_str());
            let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(answer["served_by"], "b", "request {attempt}: {body}");
        }
        // Three answers, four requests served: the second was sent twice.
        assert_eq!(b.served(), 4);
        assert_eq!(a.served(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_forwards_opening_new_streams_all_arrive() {
    init_logs();
    bounded(Duration::from_secs(60), async {
        // B alone serves the model. 24 requests at once through A need 24 new streams
        // to B; the peer's stream acceptor hands them over one at a time and drops those
        // that arrive while it is busy. None may be lost.
        let b = node("b", true, 0.0, Behaviour::Answer, None, PeerTrust::Members).await;
        let a = node(
            "a",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&b),
            PeerTrust::Members,
        )
        .await;
        meet(&[&a, &b]).await;
        connect(&a, &b).await;
        let answers = futures::future::join_all((0..24).map(|_| send(&a.url, PLAIN_CHAT))).await;
        for (status, _, chunks) in &answers {
            assert_eq!(*status, 200, "{}", text(chunks));
        }
        assert_eq!(b.served(), 24);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_trust_the_forwarder_refuses_and_the_next_answers() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let strict = node(
            "strict",
            true,
            0.0,
            Behaviour::Answer,
            None,
            PeerTrust::Only(HashSet::new()),
        )
        .await;
        let open = node(
            "open",
            true,
            0.0,
            Behaviour::Answer,
            Some(&strict),
            PeerTrust::Members,
        )
        .await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&strict),
            PeerTrust::Members,
        )
        .await;
        meet(&[&strict, &open, &router]).await;
        // Open is busier, so the router tries strict first.
        make_busy(&open, 3, &router).await;
        let (status, _, chunks) = send(&router.url, PLAIN_CHAT).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let answer: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
        assert_eq!(answer["served_by"], "open");
        assert_eq!(
            strict.served(),
            0,
            "an untrusted forward never reaches the handler"
        );
        assert!(router.router.is_suspect(&strict.id()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_nobody_serves_is_a_404_listing_the_swarm_models() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let peer = node(
            "peer",
            true,
            0.0,
            Behaviour::Answer,
            None,
            PeerTrust::Members,
        )
        .await;
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&peer),
            PeerTrust::Members,
        )
        .await;
        meet(&[&peer, &router]).await;
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", router.url))
            .body(r#"{"model":"gpt-4","messages":[]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            error["error"]["message"],
            "no peer serves model `gpt-4`; models in the swarm: [qwen2.5-0.5b]"
        );
        assert_eq!(error["error"]["code"], "model_not_found");

        // No readable model: routing steps aside and the handler gives its own answer.
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", router.url))
            .body(r#"{"messages":[]}"#)
            .send()
            .await
            .unwrap();
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["served_by"], "router");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_urls_in_heartbeats_are_never_dialled() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        // A trap where a liar's heartbeat says its API is: it counts connections.
        let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let trap_url = format!("http://{}", trap.local_addr().unwrap());
        let dialled = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let dialled = dialled.clone();
            async move {
                while trap.accept().await.is_ok() {
                    dialled.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let honest = node(
            "honest",
            true,
            0.0,
            Behaviour::Answer,
            None,
            PeerTrust::Members,
        )
        .await;
        // Busier, so the idle liar is always the first choice.
        honest.swarm.update_status(|s| s.slots_busy = 3);
        honest.swarm.publish_heartbeat().await.unwrap();
        let liar = start_node(vec![addr_of(&honest.swarm)], Some(MODEL)).await;
        liar.update_status(|s| s.endpoints = vec![trap_url.clone()]);
        liar.publish_heartbeat().await.unwrap();
        let router = node(
            "router",
            false,
            f64::INFINITY,
            Behaviour::Answer,
            Some(&honest),
            PeerTrust::Members,
        )
        .await;
        wait_until(
            "the router sees both, the liar with its trap",
            Duration::from_secs(10),
            || {
                router
                    .swarm
                    .heartbeat_of(&honest.id())
                    .is_some_and(|h| h.status.slots_busy == 3)
                    && router
                        .swarm
                        .heartbeat_of(&liar.peer_id())
                        .is_some_and(|h| h.status.endpoints == [trap_url.clone()])
            },
        )
        .await;
        for _ in 0..5 {
            let (status, _, chunks) = send(&router.url, PLAIN_CHAT).await;
            assert_eq!(status, reqwest::StatusCode::OK, "{}", text(&chunks));
            let answer: serde_json::Value = serde_json::from_slice(&chunks.concat_bytes()).unwrap();
            assert_eq!(answer["served_by"], "honest");
        }
        assert_eq!(
            dialled.load(Ordering::SeqCst),
            0,
            "a URL from a heartbeat was dialled"
        );
        assert!(
            router.router.is_suspect(&liar.peer_id()),
            "the liar answers no forwards"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_cross_the_network_encrypted() {
    init_logs();
    bounded(Duration::from_secs(30), async {
        let peer = node("peer", true, 0.0, Behaviour::Answer, None, PeerTrust::Members).await;
        // A tap between the router and the peer: every byte of the connection, both ways.
        let peer_port = addr_of(&peer.swarm)
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        let (tap_port, captured) = tap(peer_port).await;
        let via_tap: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{tap_port}/p2p/{}", peer.id()).parse().unwrap();
        let router = node_via("router", false, f64::INFINITY, Behaviour::Answer, vec![via_tap], PeerTrust::Members).await;
        meet(&[&peer, &router]).await;

        let before = captured.lock().unwrap().len();
        let secret_prompt = "zebra-secret-prompt-7731";
        let response = reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", router.url))
            .header(header::AUTHORIZATION, "Bearer client-secret-key-4242")
            .body(format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"{secret_prompt}"}}]}}"#))
            .send()
            .await
            .unwrap();
        let answer: serde_json::Value = response.json().await.unwrap();
        assert_eq!(answer["served_by"], "peer");
        let captured = captured.lock().unwrap().clone();
        println!("{} bytes crossed the tap, {} during the request", captured.len(), captured.len() - before);
        assert!(captured.len() - before >= 200, "the request did not cross the tap");
        let text = String::from_utf8_lossy(&captured);
        for plain in [secret_prompt, "client-secret-key-4242", "served_by", MODEL, "chat/completions"] {
            assert!(!text.contains(plain), "{plain:?} crossed the network in clear text");
        }
    })
    .await;
}

/// A TCP relay on loopback in front of `target`: returns its port and every byte that
/// crossed it, both ways.
async fn tap(target: u16) -> (u16, Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    async fn pipe(
        mut from: impl AsyncRead + Unpin,
        mut to: impl AsyncWrite + Unpin,
        captured: Arc<std::sync::Mutex<Vec<u8>>>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                break;
            }
            captured.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let captured = Arc::new(std::sync::Mutex::new(Vec::new()));
    let shared = captured.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pipe(in_read, out_write, shared.clone()));
            tokio::spawn(pipe(out_read, in_write, shared.clone()));
        }
    });
    (port, captured)
}

trait ConcatBytes {
    fn concat_bytes(&self) -> Vec<u8>;
}

impl ConcatBytes for Vec<(Duration, Bytes)> {
    fn concat_bytes(&self) -> Vec<u8> {
        self.iter().flat_map(|(_, c)| c.iter().copied()).collect()
    }
}
