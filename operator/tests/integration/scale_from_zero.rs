//! Scale from zero through the swarm, end to end: the CPU example InferenceNode with
//! `autoscaling: {minReplicas: 0, maxReplicas: 1, scaleDownAfter: 8s}` on the test bed's
//! real node, its pods the node image serving in containers, the operator in this process with its
//! swarm peer, and `llamanet router` processes as the entry nodes clients talk to.
//!
//! In order: the idle resource goes to zero replicas after `scaleDownAfter` and shows
//! `READY False`, `0/0`, phase and reason `ScaledToZero`; its model stays listed by the
//! router (advertised cold by the operator). Wake requests the operator must not act on
//! (another model, another resource, not JSON, too long) are refused and change nothing.
//! Then a streamed and a non-streamed chat completion at the router are held, not refused:
//! the stream gets SSE comments until the replica serves, then its answer; a third request
//! beyond the hold queue gets 503 with `Retry-After` at once; the operator scaled the
//! resource to one replica and says who woke it in an Event. Idle again, it goes back to
//! zero; a router that holds for 1 s answers 503 `model_wake_timed_out` with `Retry-After`
//! (and a held stream ends with that error event), and a model nobody has is still 404.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt};
use kube::{Api, Client};
use llamanet_cluster::testing::{RouterProcess, default_model, eventually, get_json};
use llamanet_cluster::{Cluster, ClusterConfig};
use llamanet_operator::crd::{ConditionStatus, ConditionType, InferenceNode, Phase};
use llamanet_swarm::wake::{self, WAKE_PROTOCOL, WakeAnswer, WakeOutcome, WakeRequest};
use llamanet_swarm::{self as swarm, InferenceNodeRef, PeerId, SwarmConfig, SwarmHandle};

use crate::common::Operator;

const NAMESPACE: &str = "default";
const NAME: &str = "gemma-cpu";
const MODEL: &str = "gemma-3-270m";
const WINDOW: Duration = Duration::from_secs(8);

async fn inode(client: &Client) -> InferenceNode {
    Api::<InferenceNode>::namespaced(client.clone(), NAMESPACE)
        .get(NAME)
        .await
        .unwrap()
}

async fn replicas_become(client: &Client, replicas: i32, limit: Duration, what: &str) {
    eventually(limit, what, || async {
        (inode(client).await.spec.replicas == replicas).then_some(())
    })
    .await;
}

/// Sends `bytes` on a fresh wake stream to `operator` and reads the answer line.
async fn raw_wake(peer: &SwarmHandle, operator: PeerId, bytes: &[u8]) -> WakeAnswer {
    let mut stream = peer
        .open_stream(operator, WAKE_PROTOCOL, Duration::from_secs(5))
        .await
        .unwrap();
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let line = answer.split(|&b| b == b'\n').next().unwrap();
    serde_json::from_slice(line).unwrap_or_else(|err| {
        panic!("{err}: {}", String::from_utf8_lossy(&answer));
    })
}

/// Waits until the node at `base` lists [`MODEL`] in `/v1/models`.
async fn lists_the_model(http: &reqwest::Client, base: &str) {
    eventually(Duration::from_secs(30), "the model listed", || async {
        let models = get_json(http, &format!("{base}/v1/models")).await?;
        models["data"]
            .as_array()?
            .iter()
            .any(|m| m["id"] == MODEL)
            .then_some(())
    })
    .await;
}

fn chat(stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello in three words."}],
        "max_tokens": 12,
        "temperature": 0,
        "stream": stream,
    })
}

/// A streamed chat completion: the whole text, and when the first SSE comment and the
/// first data event arrived (from the request's start).
async fn streamed(base: &str) -> (String, Option<Duration>, Option<Duration>) {
    let start = Instant::now();
    let mut response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat(true))
        .timeout(Duration::from_secs(240))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (mut text, mut comment, mut data) = (String::new(), None, None);
    while let Some(chunk) = response.chunk().await.unwrap() {
        let chunk = String::from_utf8_lossy(&chunk).into_owned();
        if comment.is_none() && chunk.lines().any(|l| l.starts_with(':')) {
            comment = Some(start.elapsed());
        }
        if data.is_none() && chunk.lines().any(|l| l.starts_with("data:")) {
            data = Some(start.elapsed());
        }
        text.push_str(&chunk);
    }
    (text, comment, data)
}

// The woken replica comes back under the same peer id at a new pod IP, and the router
// outside the cluster may still know the old one (from the DHT): a pod IP nobody holds
// swallows a dial without an answer. The replica's heartbeats sign where its swarm listens
// now, and every stream open dials there beside any dial stuck at the old address
// (`swarm/src/signed_addresses.rs`), so the first held request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_at_any_node_wakes_a_model_scaled_to_zero() {
    default_model();
    let cluster = Cluster::start(ClusterConfig::default())
        .await
        .expect("the cluster starts (scripts/build-tools.sh and scripts/build-images.sh first)");
    let client = cluster.client();
    cluster.install_crd();
    let (_operator, operator_addr) = Operator::meeting_point(&cluster, "operator-a", None);

    // Bounds that contradict each other, refused by the API server with what to fix.
    let resource = cluster
        .cpu_example()
        .replace(
            "  replicas: 1\n",
            "  replicas: 1\n  autoscaling:\n    minReplicas: 0\n    maxReplicas: 1\n    targetSlotsBusy: 0.5\n    scaleDownAfter: 8s\n",
        )
        .replace("contextSize: 4096", "contextSize: 1024")
        .replace("parallel: 4", "parallel: 2");
    assert!(resource.contains("minReplicas: 0"));
    for (bad, says) in [
        ("maxReplicas: 1", "maxReplicas: 0", "maxReplicas"),
        ("minReplicas: 0", "minReplicas: -1", "minReplicas"),
    ]
    .map(|(from, to, says)| (resource.replace(from, to), says))
    {
        let out = cluster.kubectl_run(&["apply", "--dry-run=server", "-f", "-"], Some(&bad));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{stderr}");
    }

    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&resource));
    let applied = Instant::now();
    cluster.wait_inference_node_ready(NAME);
    let ready = applied.elapsed();
    replicas_become(
        &client,
        0,
        Duration::from_secs(90),
        "scaled to zero when idle",
    )
    .await;
    // The window counts from the replica's first load report, which comes before Ready.
    let idle_to_zero = applied.elapsed();
    assert!(
        idle_to_zero >= WINDOW,
        "{idle_to_zero:?}: before scaleDownAfter"
    );
    // What `kubectl get inode` shows.
    eventually(Duration::from_secs(30), "status ScaledToZero", || async {
        let status = inode(&client).await.status?;
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready)?;
        (status.phase == Some(Phase::ScaledToZero)
            && ready.status == ConditionStatus::False
            && ready.reason == "ScaledToZero"
            && status.replicas_ready.as_deref() == Some("0/0"))
        .then_some(())
    })
    .await;
    // The replica's pod is gone (until then it serves, and routers use it).
    cluster.wait_for("delete", &["pod/gemma-cpu-0"], Duration::from_secs(90));
    let table = cluster.kubectl_ok(&["get", "inode", NAME], None);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], [NAME, "False", "0/0"], "{table}");

    // A peer of the swarm sees the operator advertise the model as cold.
    let peer = swarm::start(
        swarm::Keypair::generate_ed25519(),
        SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![operator_addr.parse().unwrap()],
            publish_heartbeats: false,
            ..SwarmConfig::default()
        },
    )
    .await
    .unwrap();
    let (operator, cold) = eventually(Duration::from_secs(30), "a cold advertisement", || async {
        peer.cold(MODEL).into_iter().next()
    })
    .await;
    assert_eq!(
        cold.inference_node,
        InferenceNodeRef {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
        }
    );

    // What the operator must not act on.
    let ask = |model: &str, name: &str| WakeRequest {
        model: model.into(),
        inference_node: InferenceNodeRef {
            namespace: NAMESPACE.into(),
            name: name.into(),
        },
    };
    let timeout = Duration::from_secs(10);
    for (request, what) in [
        (ask("gpt-4", NAME), "a model nobody owns"),
        (ask(MODEL, "someone-else"), "another resource"),
    ] {
        let answer = wake::ask(&peer, operator, &request, timeout).await.unwrap();
        assert_eq!(answer.outcome, WakeOutcome::NotCold, "{what}: {answer:?}");
    }
    let answer = raw_wake(&peer, operator, b"wake up!\n").await;
    assert_eq!(answer.outcome, WakeOutcome::Malformed, "{answer:?}");
    let answer = raw_wake(&peer, operator, &[b'{'; 4096]).await;
    assert_eq!(answer.outcome, WakeOutcome::Malformed, "{answer:?}");
    assert!(answer.message.contains("1024"), "{answer:?}");
    assert_eq!(inode(&client).await.spec.replicas, 0, "nothing woke it");

    // The entry node: a router that knows the model only as cold.
    let router = RouterProcess::start(&operator_addr, &["--wake-hold-queue", "2"]);
    let http = reqwest::Client::new();
    lists_the_model(&http, &router.base).await;

    let woken = Instant::now();
    let stream = tokio::spawn({
        let base = router.base.clone();
        async move { streamed(&base).await }
    });
    let whole = tokio::spawn({
        let (http, base) = (http.clone(), router.base.clone());
        async move {
            let response = http
                .post(format!("{base}/v1/chat/completions"))
                .json(&chat(false))
                .timeout(Duration::from_secs(240))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, body)
        }
    });
    // Both wait; a third finds the queue full.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = http
        .post(format!("{}/v1/chat/completions", router.base))
        .json(&chat(false))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), 503);
    assert!(held.headers().contains_key("retry-after"));
    let body: serde_json::Value = held.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_wake_queue_full", "{body}");

    let (text, comment, first_data) = stream.await.unwrap();
    let (status, body) = whole.await.unwrap();
    let first_token = first_data.expect("the stream answered");
    eprintln!(
        "Ready {ready:?} and scaled to zero {idle_to_zero:?} after apply; woken: first comment {comment:?}, first token {first_token:?}"
    );
    assert!(comment.is_some_and(|c| c < first_token), "{text}");
    assert!(
        text.contains("\"content\"") && text.contains("data: [DONE]"),
        "{text}"
    );
    assert!(!text.contains("\"error\""), "{text}");
    assert_eq!(status, 200, "{body}");
    assert!(
        !body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
    assert_eq!(inode(&client).await.spec.replicas, 1);
    let events = cluster.kubectl_ok(
        &[
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            "reason=Woken",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        None,
    );
    assert!(
        events.contains("woken by a request for `gemma-3-270m`"),
        "{events:?}"
    );
    eprintln!("wake to answer: {:?}", woken.elapsed());

    // Idle again: back to zero. A router that holds for 1 s gives up with a clear answer
    // while the replica starts.
    replicas_become(&client, 0, Duration::from_secs(90), "back to zero").await;
    cluster.wait_for("delete", &["pod/gemma-cpu-0"], Duration::from_secs(90));
    eventually(Duration::from_secs(30), "advertised cold again", || async {
        (!peer.cold(MODEL).is_empty()).then_some(())
    })
    .await;
    let impatient = RouterProcess::start(&operator_addr, &["--wake-hold-timeout", "1"]);
    lists_the_model(&http, &impatient.base).await;
    // A replica takes longer than a second to start (the model alone takes that to copy and load): both give up.
    let held_stream = tokio::spawn({
        let base = impatient.base.clone();
        async move { streamed(&base).await }
    });
    let response = http
        .post(format!("{}/v1/chat/completions", impatient.base))
        .json(&chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "30");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_wake_timed_out", "{body}");
    let (text, comment, _) = held_stream.await.unwrap();
    assert!(comment.is_some(), "{text}");
    assert!(
        text.contains("\"code\":\"model_wake_timed_out\"") && !text.contains("[DONE]"),
        "{text}"
    );

    // A model nobody has, nor can wake, is still a 404.
    let response = http
        .post(format!("{}/v1/chat/completions", router.base))
        .json(
            &serde_json::json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    peer.shutdown().await;
}
