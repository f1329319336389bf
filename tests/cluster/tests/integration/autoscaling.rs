//! The operator's autoscaler on the main job's setup: the chart installed with helm and the
//! CPU example InferenceNode with two slots per replica and
//! `autoscaling: {minReplicas: 1, maxReplicas: 2, targetSlotsBusy: 0.5, scaleDownAfter: 20s}`.
//!
//! Asserted: specs the autoscaler cannot follow are refused by the API server with a message
//! that says what to fix; at rest it keeps one replica; four clients streaming long answers
//! make it write `spec.replicas: 2` (condition `Scaling=True/ScaledUp`, an event), the second
//! replica comes up Ready; when the load ends it waits for `scaleDownAfter` and goes back to
//! one (`ScaledDown`); and a manual `kubectl scale` is overwritten by the next decision.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llamanet_cluster::testing::eventually;
use llamanet_cluster::{Cluster, ClusterConfig};

const AUTOSCALING: &str = "  autoscaling:
    minReplicas: 1
    maxReplicas: 2
    targetSlotsBusy: 0.5
    scaleDownAfter: 20s
";
const WINDOW: Duration = Duration::from_secs(20);

/// The CPU example with two slots per replica and `autoscaling` (as given) under `spec`.
fn resource(cluster: &Cluster, autoscaling: &str) -> String {
    let example = cluster.cpu_example();
    assert!(example.contains("  replicas: 1\n") && example.contains("parallel: 4"));
    example
        .replace("  replicas: 1\n", &format!("  replicas: 1\n{autoscaling}"))
        .replace("contextSize: 4096", "contextSize: 1024")
        .replace("parallel: 4", "parallel: 2")
}

/// The resource as the API server has it.
fn get(cluster: &Cluster) -> serde_json::Value {
    cluster.inference_node("gemma-cpu")
}

fn spec_replicas(cluster: &Cluster) -> i64 {
    get(cluster)["spec"]["replicas"].as_i64().unwrap()
}

/// Waits until `spec.replicas` is `replicas`.
async fn spec_replicas_become(cluster: &Cluster, replicas: i64, limit: Duration, what: &str) {
    eventually(limit, what, || async {
        (spec_replicas(cluster) == replicas).then_some(())
    })
    .await;
}

/// `(status, reason, message)` of the `Scaling` condition.
fn scaling(cluster: &Cluster) -> Option<(String, String, String)> {
    let node = get(cluster);
    let condition = node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Scaling")?
        .clone();
    let text = |key: &str| condition[key].as_str().unwrap_or_default().to_string();
    Some((text("status"), text("reason"), text("message")))
}

/// Streams long chat completions to `base` until aborted; counts the ones that failed.
async fn load(base: String, failed: Arc<AtomicUsize>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    loop {
        let body = serde_json::json!({
            "model": "gemma-3-270m",
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
            "max_tokens": 400,
            "stream": true,
        });
        let ok = match client
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => response.text().await.is_ok(),
            _ => false,
        };
        if !ok {
            failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_adds_a_replica_and_its_end_removes_it() {
    let cluster = Cluster::start(ClusterConfig::default()).await.unwrap();
    cluster.install_chart();

    // What the API server refuses, and says why.
    for (bad, says) in [
        (
            AUTOSCALING.replace("maxReplicas: 2", "maxReplicas: 0"),
            "maxReplicas",
        ),
        (
            AUTOSCALING.replace("minReplicas: 1", "minReplicas: 3"),
            "minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            AUTOSCALING.replace("    targetSlotsBusy: 0.5\n", ""),
            "set exactly one autoscaling target",
        ),
        (
            AUTOSCALING.replace(
                "targetSlotsBusy: 0.5",
                "targetSlotsBusy: 0.5\n    targetQueuePerReplica: 2",
            ),
            "set exactly one autoscaling target",
        ),
        (
            AUTOSCALING.replace("targetSlotsBusy: 0.5", "targetSlotsBusy: 1.5"),
            "targetSlotsBusy",
        ),
        (AUTOSCALING.replace("20s", "2d"), "scaleDownAfter"),
    ] {
        let out = cluster.kubectl_run(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&resource(&cluster, &bad)),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{bad}\nwas not refused with {says:?}: {stderr}"
        );
    }

    cluster.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&resource(&cluster, AUTOSCALING)),
    );
    cluster.wait_inference_node_ready("gemma-cpu");
    // At rest: one replica, within target (no load on it).
    eventually(Duration::from_secs(30), "Scaling=False at rest", || async {
        let (status, reason, _) = scaling(&cluster)?;
        (status == "False" && reason == "WithinTarget").then_some(())
    })
    .await;
    assert_eq!(spec_replicas(&cluster), 1);

    let pod_ip = {
        let json = cluster.kubectl_ok(&["get", "pod", "gemma-cpu-0", "-o", "json"], None);
        let pod: serde_json::Value = serde_json::from_str(&json).unwrap();
        pod["status"]["podIP"].as_str().unwrap().to_string()
    };
    let entry = format!("http://{pod_ip}:8080");
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| tokio::spawn(load(entry.clone(), failed.clone())))
        .collect();
    let loaded = Instant::now();

    spec_replicas_become(
        &cluster,
        2,
        Duration::from_secs(60),
        "the autoscaler asking for a second replica",
    )
    .await;
    let decided = loaded.elapsed();
    // The status shows the change (status writes are at least a second apart).
    let message = eventually(Duration::from_secs(10), "Scaling=True/ScaledUp", || async {
        let (status, reason, message) = scaling(&cluster)?;
        (status == "True" && reason == "ScaledUp").then_some(message)
    })
    .await;
    assert!(message.starts_with("1 -> 2 replicas"), "{message}");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed before the scale-up"
    );
    cluster.wait_for(
        "jsonpath={.status.replicasReady}=2/2",
        &["inferencenode/gemma-cpu"],
        Duration::from_secs(240),
    );
    let second_ready = loaded.elapsed();
    // Scaling ends once the new replica serves; under load it stays at the maximum.
    eventually(
        Duration::from_secs(30),
        "Scaling=False once both serve",
        || async {
            let (status, reason, _) = scaling(&cluster)?;
            (status == "False" && reason == "AtMaxReplicas").then_some(())
        },
    )
    .await;
    let events = cluster.kubectl_ok(
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=gemma-cpu,reason=ScaledUp",
            "-o",
            "name",
        ],
        None,
    );
    assert!(!events.trim().is_empty(), "no ScaledUp event");

    // The load ends at once: the clients go away mid-answer, which frees their slots (a
    // client finishing its answer first would end the load one client at a time).
    for client in &clients {
        client.abort();
    }
    let quiet = Instant::now();
    spec_replicas_become(
        &cluster,
        1,
        Duration::from_secs(120),
        "the autoscaler going back to one replica",
    )
    .await;
    let scaled_down = quiet.elapsed();
    // The last high recommendation came with a heartbeat (every 2 s) before the end.
    assert!(
        scaled_down >= WINDOW - Duration::from_secs(3),
        "removed a replica {scaled_down:?} after the load ended, before scaleDownAfter"
    );
    // The status written with the scale may still be the one before it (ScaleDownDelayed).
    eventually(
        Duration::from_secs(30),
        "Scaling=ScaledDown or False/WithinTarget",
        || async {
            let (status, reason, _) = scaling(&cluster)?;
            (reason == "ScaledDown" || (status == "False" && reason == "WithinTarget"))
                .then_some(())
        },
    )
    .await;

    // A manual change is overwritten by the next decision (the load asks for one).
    cluster.kubectl_ok(&["scale", "inferencenode/gemma-cpu", "--replicas=2"], None);
    spec_replicas_become(
        &cluster,
        1,
        Duration::from_secs(90),
        "the autoscaler overwriting a manual scale",
    )
    .await;

    eprintln!(
        "load to spec.replicas=2: {decided:?}; to the second replica Ready: {second_ready:?}; \
         end of load to spec.replicas=1: {scaled_down:?} (scaleDownAfter {WINDOW:?}); \
         {} requests failed meanwhile",
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed under autoscaling"
    );
    cluster.shutdown().await;
}
