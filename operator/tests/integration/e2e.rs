//! The operator against a real control plane (`llamanet_cluster`): two operator replicas with
//! leader election run in this process (see `common`), and one can be killed outright.
//!
//! The InferenceNode here points at a file that is not a model, so its pods never become
//! Ready, and heartbeats are fed into the operator's table by hand: what is checked is the
//! operator's own side: children with owner references, status conditions, events,
//! heartbeat-to-status latency, scaling, leader election and failover, garbage collection on
//! delete, and the API server's validation of `deploy/examples/invalid/`. Real node pods
//! with real heartbeats are `real_nodes.rs`.
//!
//! Needs the control plane binaries (`scripts/build-k8s.sh`) and `kubectl` on PATH.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use llamanet_cluster::testing::eventually;
use llamanet_cluster::{Cluster, ClusterConfig};
use llamanet_operator::crd::{ConditionStatus, ConditionType, InferenceNode};
use llamanet_operator::status::ReplicaHeartbeat;

use crate::common::{Operator, repo_root};

const NAMESPACE: &str = "default";
const NAME: &str = "e2e";
const LEASE: &str = "llamanet-operator";

async fn lease_holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), NAMESPACE)
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn inference_node(client: &Client) -> InferenceNode {
    Api::<InferenceNode>::namespaced(client.clone(), NAMESPACE)
        .get(NAME)
        .await
        .unwrap()
}

async fn operator_events(client: &Client) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(NAME)
                && e.reporting_controller.as_deref() == Some("llamanet-operator")
        })
        .collect()
}

fn inference_node_yaml(model: &Path) -> String {
    format!(
        r#"
apiVersion: llamanet.io/v1alpha1
kind: InferenceNode
metadata:
  name: {NAME}
  namespace: {NAMESPACE}
spec:
  replicas: 1
  model:
    path: {}
"#,
        model.display()
    )
}

/// `deploy/examples/invalid/*.yaml` with the message of each one's `# expect:` line.
fn invalid_examples() -> Vec<(PathBuf, String)> {
    let dir = repo_root().join("deploy/examples/invalid");
    let mut found: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()))
                .trim()
                .to_owned();
            (path, expect)
        })
        .collect();
    found.sort();
    found
}

// Multi-threaded: kubectl calls block this thread while the local node's tasks keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_reconciles_on_a_real_control_plane() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("LLAMANET_TEST_LOG")
                .unwrap_or_else(|_| "info,kube=warn,llamanet_cluster=warn".into()),
        )
        .with_test_writer()
        .try_init();
    let started = Instant::now();
    let cluster = Cluster::start(ClusterConfig::default())
        .await
        .expect("the cluster starts (scripts/build-tools.sh and scripts/build-images.sh first)");
    let client = cluster.client();
    eprintln!("cluster up after {:?}", started.elapsed());

    cluster.install_crd();

    // The API server rejects every invalid example with the message its file promises.
    let invalid = invalid_examples();
    assert!(!invalid.is_empty());
    for (path, expect) in &invalid {
        let out = cluster.kubectl_run(
            &["apply", "--dry-run=server", "-f", path.to_str().unwrap()],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{} was accepted", path.display());
        assert!(
            stderr.contains(expect.as_str()),
            "{}: expected {expect:?} in: {stderr}",
            path.display()
        );
        eprintln!(
            "rejected {}: {}",
            path.file_name().unwrap().to_string_lossy(),
            stderr.trim()
        );
    }

    // Every valid example applies cleanly (server-side dry run; the namespace the two-cluster
    // example's Service lives in exists first).
    cluster.kubectl_ok(&["create", "namespace", "llamanet-system"], None);
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    examples.sort();
    assert!(examples.len() >= 5, "{examples:?}");
    for path in &examples {
        let out = cluster.kubectl_ok(
            &["apply", "--dry-run=server", "-f", path.to_str().unwrap()],
            None,
        );
        eprintln!("accepted {}: {}", path.display(), out.trim());
    }

    // Two replicas: exactly one takes the Lease and acts; the other stands by, Ready too.
    let mut operators = [
        Operator::start(&cluster, "operator-a", NAMESPACE),
        Operator::start(&cluster, "operator-b", NAMESPACE),
    ];
    let leader = eventually(Duration::from_secs(30), "a replica takes the Lease", || {
        lease_holder(&client)
    })
    .await;
    eprintln!("{leader} leads");
    let (leading, standby) = if leader == operators[0].identity {
        (0, 1)
    } else {
        (1, 0)
    };
    for operator in &operators {
        assert_eq!(operator.get("/healthz").await.0, 200);
        let identity = operator.identity.clone();
        eventually(Duration::from_secs(20), "both replicas Ready", || async {
            (operator.get("/readyz").await.0 == 200).then_some(())
        })
        .await;
        eprintln!("{identity} ready");
    }

    // The model: any file will do, the pods are not expected to load it.
    let model_dir = tempfile::Builder::new()
        .prefix("llamanet-e2e-model-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let model = model_dir.path().join("tiny.gguf");
    std::fs::write(&model, b"GGUF not really").unwrap();
    cluster.kubectl_ok(&["apply", "-f", "-"], Some(&inference_node_yaml(&model)));
    let node = inference_node(&client).await;
    let uid = node.uid().unwrap();

    // Children, each owned (controller reference) by the InferenceNode.
    let owned_by_node = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.owner_references.as_ref().is_some_and(|refs| {
            refs.iter()
                .any(|r| r.uid == uid && r.controller == Some(true) && r.kind == "InferenceNode")
        })
    };
    let stateful_sets = Api::<StatefulSet>::namespaced(client.clone(), NAMESPACE);
    let services = Api::<Service>::namespaced(client.clone(), NAMESPACE);
    let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
    let sts = eventually(Duration::from_secs(30), "StatefulSet created", || async {
        stateful_sets.get_opt(NAME).await.unwrap()
    })
    .await;
    assert!(owned_by_node(&sts.metadata));
    for service in [NAME.to_owned(), format!("{NAME}-swarm")] {
        let svc = eventually(Duration::from_secs(10), "Services created", || async {
            services.get_opt(&service).await.unwrap()
        })
        .await;
        assert!(owned_by_node(&svc.metadata), "{service} not owned");
    }
    let identity = secrets.get(&format!("{NAME}-identity")).await.unwrap();
    assert!(owned_by_node(&identity.metadata));
    assert!(identity.data.unwrap().contains_key("e2e-0"));

    // Status: every condition, computed for the current generation.
    let generation = node.metadata.generation;
    let status = eventually(
        Duration::from_secs(30),
        "status with conditions",
        || async {
            let status = inference_node(&client).await.status?;
            (status.conditions.len() == 4).then_some(status)
        },
    )
    .await;
    assert_eq!(status.observed_generation, generation);
    for condition in &status.conditions {
        assert_eq!(condition.observed_generation, generation, "{condition:?}");
    }
    eprintln!(
        "status: phase {:?}, conditions {:?}",
        status.phase,
        status
            .conditions
            .iter()
            .map(|c| format!("{:?}={:?}/{}", c.type_, c.status, c.reason))
            .collect::<Vec<_>>()
    );

    // Events for the transitions, with the conditions' reasons.
    let ready_reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready)
        .unwrap()
        .reason
        .clone();
    let events = eventually(Duration::from_secs(20), "transition events", || async {
        let events = operator_events(&client).await;
        events
            .iter()
            .any(|e| e.reason.as_deref() == Some(ready_reason.as_str()))
            .then_some(events)
    })
    .await;
    for event in &events {
        eprintln!(
            "event {} {}: {}",
            event.type_.as_deref().unwrap_or_default(),
            event.reason.as_deref().unwrap_or_default(),
            event.note.as_deref().unwrap_or_default()
        );
        assert_eq!(
            event.reporting_instance.as_deref(),
            Some(leader.as_str()),
            "only the leader acts"
        );
    }

    // A heartbeat reaches the status without polling: the table wakes the reconciler.
    let beat_at = Timestamp::now();
    let sent = Instant::now();
    operators[leading].heartbeats.record(
        NAMESPACE,
        NAME,
        ReplicaHeartbeat {
            pod: format!("{NAME}-0"),
            peer_id: "12D3KooWE2eTestPeer".into(),
            received_at: beat_at,
            tokens_per_second: 12.5,
            slots_busy: 0,
            slots_total: 2,
            queued: 0,
        },
    );
    eventually(Duration::from_secs(15), "heartbeat in status", || async {
        let status = inference_node(&client).await.status?;
        status.peers.iter().any(|p| p.pod == "e2e-0").then_some(())
    })
    .await;
    let heartbeat_to_status = sent.elapsed();
    eprintln!("heartbeat to status: {heartbeat_to_status:?}");
    // The deadline above is not a speed target: bench/ measures heartbeat-to-status.

    // No further heartbeat: lost after three intervals (6 s), seen without any poll loop
    // thanks to the requeue at the staleness deadline.
    let lost = eventually(Duration::from_secs(30), "HeartbeatLost", || async {
        let status = inference_node(&client).await.status?;
        status
            .conditions
            .iter()
            .any(|c| {
                c.type_ == ConditionType::HeartbeatFresh
                    && c.status == ConditionStatus::False
                    && c.reason == "HeartbeatLost"
            })
            .then(Instant::now)
    })
    .await;
    let stale_at = sent + Duration::from_secs(6);
    eprintln!(
        "HeartbeatLost in status {:?} after the heartbeat went stale",
        lost.saturating_duration_since(stale_at)
    );
    assert!(lost >= stale_at, "lost before three intervals passed");
    assert!(lost - stale_at < Duration::from_secs(15));
    eventually(Duration::from_secs(10), "HeartbeatLost event", || async {
        operator_events(&client)
            .await
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("HeartbeatLost")
                    && e.type_.as_deref() == Some("Warning")
            })
            .then_some(())
    })
    .await;

    // kubectl scale goes through the scale subresource to the StatefulSet.
    cluster.kubectl_ok(&["scale", "inferencenode", NAME, "--replicas=2"], None);
    eventually(
        Duration::from_secs(15),
        "StatefulSet scaled to 2",
        || async {
            let sts = stateful_sets.get(NAME).await.unwrap();
            (sts.spec?.replicas == Some(2)).then_some(())
        },
    )
    .await;
    let scaled = eventually(Duration::from_secs(15), "status of 2 replicas", || async {
        let node = inference_node(&client).await;
        let status = node.status.clone()?;
        (status.replicas == 2 && status.observed_generation == node.metadata.generation)
            .then_some(status)
    })
    .await;
    assert_eq!(scaled.replicas_ready.as_deref(), Some("0/2"));

    // Once more in a steadier state (the first heartbeat may have waited out the one-second
    // gap between status writes).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = Instant::now();
    operators[leading].heartbeats.record(
        NAMESPACE,
        NAME,
        ReplicaHeartbeat {
            pod: format!("{NAME}-1"),
            peer_id: "12D3KooWE2eTestPeer1".into(),
            received_at: Timestamp::now(),
            tokens_per_second: 3.0,
            slots_busy: 1,
            slots_total: 2,
            queued: 0,
        },
    );
    eventually(
        Duration::from_secs(5),
        "second heartbeat in status",
        || async {
            let status = inference_node(&client).await.status?;
            status.peers.iter().any(|p| p.pod == "e2e-1").then_some(())
        },
    )
    .await;
    eprintln!("heartbeat to status (second): {:?}", sent.elapsed());

    // Only the leader reconciled.
    let reconciles = "llamanet_operator_reconciles_total";
    assert!(operators[leading].metric(reconciles).await > 0.0);
    assert_eq!(operators[standby].metric(reconciles).await, 0.0);
    let (_, body) = operators[leading].get("/metrics").await;
    for name in llamanet_operator::metrics::METRIC_NAMES {
        assert!(body.contains(name), "{name} missing from /metrics:\n{body}");
    }
    assert!(
        operators[leading]
            .metric(r#"llamanet_operator_status_patches_total"#)
            .await
            >= 2.0
    );

    // The leader crashes (no release): the standby takes over once the Lease expires.
    let crashed = Instant::now();
    operators[leading].kill();
    let new_leader = eventually(
        Duration::from_secs(25),
        "the standby takes over",
        || async {
            lease_holder(&client)
                .await
                .filter(|h| *h == operators[standby].identity)
        },
    )
    .await;
    let failover = crashed.elapsed();
    eprintln!("failover after a crash: {failover:?} ({new_leader} leads)");
    assert!(failover < Duration::from_secs(20));
    // It acts: a spec change reaches the StatefulSet.
    cluster.kubectl_ok(&["scale", "inferencenode", NAME, "--replicas=1"], None);
    eventually(
        Duration::from_secs(15),
        "the new leader reconciles",
        || async {
            let sts = stateful_sets.get(NAME).await.unwrap();
            (sts.spec?.replicas == Some(1)).then_some(())
        },
    )
    .await;
    assert!(operators[standby].metric(reconciles).await > 0.0);

    // Delete: the garbage collector removes every child through the owner references.
    cluster.kubectl_ok(&["delete", "inferencenode", NAME, "--wait=false"], None);
    let deleted = Instant::now();
    eventually(
        Duration::from_secs(60),
        "children garbage-collected",
        || async {
            let sts = stateful_sets.get_opt(NAME).await.unwrap();
            let api = services.get_opt(NAME).await.unwrap();
            let swarm = services.get_opt(&format!("{NAME}-swarm")).await.unwrap();
            let secret = secrets.get_opt(&format!("{NAME}-identity")).await.unwrap();
            (sts.is_none() && api.is_none() && swarm.is_none() && secret.is_none()).then_some(())
        },
    )
    .await;
    eprintln!("children gone {:?} after delete", deleted.elapsed());

    // A graceful stop releases the Lease: a standby takes over at its next look.
    let mut third = Operator::start(&cluster, "operator-c", NAMESPACE);
    eventually(
        Duration::from_secs(20),
        "the third replica stands by",
        || async { (third.get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    let stopping = Instant::now();
    operators[standby].stop().await;
    eventually(
        Duration::from_secs(10),
        "handover after a release",
        || async { lease_holder(&client).await.filter(|h| *h == third.identity) },
    )
    .await;
    eprintln!("failover after a graceful stop: {:?}", stopping.elapsed());
    third.stop().await;
    assert_eq!(
        lease_holder(&client).await,
        None,
        "the Lease is released on shutdown"
    );
    eprintln!("test took {:?}", started.elapsed());
    drop(operators);
    cluster.shutdown().await;
}
