//! The operator's Prometheus metrics: one registry, every metric name defined here and nowhere
//! else. The reconciler records into [`Metrics`]; `server.rs` serves [`Metrics::encode`] on
//! `/metrics`.
//!
//! Heartbeat ages are not stored: they grow with time alone, so a value set at the last
//! reconcile would be wrong by the time it is scraped. A collector reads the heartbeat table at
//! scrape time instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::crd::{InferenceNodeStatus, Phase};
use crate::error::Error;
use crate::heartbeat::{HeartbeatTable, Rejection};

/// Prefix of every metric name.
pub const PREFIX: &str = "llamanet_operator";

/// Every metric the operator exports, as scraped (counters carry `_total`). Dashboards and
/// alerts may name only these; a test checks the list against the encoded registry.
pub const METRIC_NAMES: &[&str] = &[
    "llamanet_operator_reconciles_total",
    "llamanet_operator_reconcile_errors_total",
    "llamanet_operator_reconcile_duration_seconds",
    "llamanet_operator_inference_nodes",
    "llamanet_operator_heartbeat_age_seconds",
    "llamanet_operator_status_patches_total",
    "llamanet_operator_inference_node_replicas",
    "llamanet_operator_heartbeat_to_status_seconds",
    "llamanet_operator_heartbeats_rejected_total",
    "llamanet_operator_autoscaler_decisions_total",
    "llamanet_operator_wake_requests_total",
];

/// Outcomes of wake requests (scale from zero), as the counter labels them.
pub const WAKE_OUTCOMES: [&str; 4] = ["woken", "repeated", "not_cold", "failed"];

/// Every phase, so the phase gauge shows zeros instead of missing series.
const PHASES: [Phase; 6] = [
    Phase::Pending,
    Phase::Loading,
    Phase::Ready,
    Phase::Degraded,
    Phase::Failed,
    Phase::ScaledToZero,
];

/// Namespace and name of an InferenceNode.
type ResourceKey = (String, String);

/// The metrics registry and handles to its metrics. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<[(&'static str, &'static str); 1], Counter>,
    reconcile_duration: Histogram,
    inference_nodes: Family<[(&'static str, &'static str); 1], Gauge>,
    status_patches: Counter,
    autoscaled: Family<[(&'static str, &'static str); 1], Counter>,
    wakes: Family<[(&'static str, &'static str); 1], Counter>,
    replicas: Family<ReplicaLabels, Gauge>,
    heartbeat_to_status: Histogram,
    /// The phase of every resource the operator knows, from which the phase gauge is counted.
    phases: Mutex<HashMap<ResourceKey, Phase>>,
}

impl Metrics {
    /// A registry with every metric, heartbeat ages read from `heartbeats` at scrape time.
    pub fn new(heartbeats: HeartbeatTable) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let reconciles = Counter::default();
        registry.register(
            "reconciles",
            "Reconciles of InferenceNodes started",
            reconciles.clone(),
        );
        let reconcile_errors: Family<[(&'static str, &'static str); 1], Counter> =
            Family::default();
        for reason in Error::METRIC_LABELS {
            // Created at zero; the returned guard only reads.
            let _ = reconcile_errors.get_or_create(&[("reason", reason)]);
        }
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by reason",
            reconcile_errors.clone(),
        );
        // 5 ms .. ~10 s: a reconcile is a handful of API calls.
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile of one InferenceNode took",
            reconcile_duration.clone(),
        );
        let inference_nodes: Family<[(&'static str, &'static str); 1], Gauge> = Family::default();
        for phase in PHASES {
            inference_nodes
                .get_or_create(&[("phase", phase_label(phase))])
                .set(0);
        }
        registry.register(
            "inference_nodes",
            "InferenceNodes by the phase their status shows",
            inference_nodes.clone(),
        );
        let status_patches = Counter::default();
        registry.register(
            "status_patches",
            "Status writes of InferenceNodes (only changed statuses are written)",
            status_patches.clone(),
        );
        let autoscaled: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
        for direction in ["up", "down"] {
            let _ = autoscaled.get_or_create(&[("direction", direction)]);
        }
        registry.register(
            "autoscaler_decisions",
            "Replica changes the autoscaler wrote into spec.replicas, by direction",
            autoscaled.clone(),
        );
        let wakes: Family<[(&'static str, &'static str); 1], Counter> = Family::default();
        for outcome in WAKE_OUTCOMES {
            let _ = wakes.get_or_create(&[("outcome", outcome)]);
        }
        registry.register(
            "wake_requests",
            "Wake requests from swarm peers for models scaled to zero, by outcome (woken: \
             scaled from zero; repeated: already waking; not_cold: not advertised here; \
             failed: the API server refused)",
            wakes.clone(),
        );
        let replicas = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "inference_node_replicas",
            "Replicas of each InferenceNode: desired, ready (serving) and heartbeating (fresh \
             heartbeat), as its status shows",
            replicas.clone(),
        );
        let heartbeat_to_status = Histogram::new([
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
        ]);
        registry.register(
            "heartbeat_to_status_seconds",
            "Time from a heartbeat's arrival at the operator to the status write that shows it",
            heartbeat_to_status.clone(),
        );
        registry.register_collector(Box::new(HeartbeatAges(heartbeats)));
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            inference_nodes,
            status_patches,
            autoscaled,
            wakes,
            replicas,
            heartbeat_to_status,
            phases: Mutex::default(),
        }
    }

    /// Counts a reconcile and, when it ends, its duration.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciles.inc();
        ReconcileTimer {
            histogram: &self.reconcile_duration,
            start: std::time::Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, error: &Error) {
        self.reconcile_errors
            .get_or_create(&[("reason", error.metric_label())])
            .inc();
    }

    pub fn status_patched(&self) {
        self.status_patches.inc();
    }

    /// A wake request ended with `outcome` (one of [`WAKE_OUTCOMES`]).
    pub fn wake_request(&self, outcome: &'static str) {
        self.wakes.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// The autoscaler changed a resource's replicas (`up` or down).
    pub fn autoscaled(&self, up: bool) {
        let direction = if up { "up" } else { "down" };
        self.autoscaled
            .get_or_create(&[("direction", direction)])
            .inc();
    }

    /// A status write showed a heartbeat that arrived `seconds` earlier.
    pub fn heartbeat_shown(&self, seconds: f64) {
        self.heartbeat_to_status.observe(seconds);
    }

    /// Records what a resource's status now shows: its phase and replica counts.
    pub fn record_status(&self, namespace: &str, name: &str, status: &InferenceNodeStatus) {
        let mut phases = self.phases.lock().expect("phase map lock poisoned");
        if let Some(phase) = status.phase {
            phases.insert((namespace.to_owned(), name.to_owned()), phase);
            self.count_phases(&phases);
        }
        for (state, count) in [
            ("desired", status.replicas),
            ("ready", status.ready_replicas),
            ("heartbeating", status.peer_count),
        ] {
            self.replicas
                .get_or_create(&ReplicaLabels::new(namespace, name, state))
                .set(i64::from(count));
        }
    }

    /// Forgets a deleted resource.
    pub fn forget(&self, namespace: &str, name: &str) {
        let mut phases = self.phases.lock().expect("phase map lock poisoned");
        phases.remove(&(namespace.to_owned(), name.to_owned()));
        self.count_phases(&phases);
        for state in ReplicaLabels::STATES {
            self.replicas
                .remove(&ReplicaLabels::new(namespace, name, state));
        }
    }

    fn count_phases(&self, phases: &HashMap<ResourceKey, Phase>) {
        for phase in PHASES {
            let count = phases.values().filter(|p| **p == phase).count();
            self.inference_nodes
                .get_or_create(&[("phase", phase_label(phase))])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Observes a reconcile's duration when dropped, so failed reconciles count too.
pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    start: std::time::Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

/// Labels of `inference_node_replicas`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    namespace: String,
    name: String,
    state: &'static str,
}

impl ReplicaLabels {
    const STATES: [&'static str; 3] = ["desired", "ready", "heartbeating"];

    fn new(namespace: &str, name: &str, state: &'static str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            state,
        }
    }
}

fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "Pending",
        Phase::Loading => "Loading",
        Phase::Ready => "Ready",
        Phase::Degraded => "Degraded",
        Phase::Failed => "Failed",
        Phase::ScaledToZero => "ScaledToZero",
    }
}

/// `heartbeat_age_seconds{namespace, name}`: per InferenceNode, the age of its stalest
/// replica's newest heartbeat (the one an alert on lost replicas wants).
#[derive(Debug)]
struct HeartbeatAges(HeartbeatTable);

impl Collector for HeartbeatAges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut family = encoder.encode_descriptor(
                "heartbeats_rejected",
                "Heartbeats that claimed an InferenceNode replica they could not prove (signed by another key than the replica's identity, or naming a replica or resource that does not exist), by reason",
                None,
                MetricType::Counter,
            )?;
            for rejection in Rejection::ALL {
                let labels = [("reason", rejection.as_str())];
                prometheus_client::metrics::counter::ConstCounter::new(self.0.rejected(rejection))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let ages = self.0.oldest_heartbeats();
        let mut metric = encoder.encode_descriptor(
            "heartbeat_age_seconds",
            "Age of the oldest newest heartbeat among an InferenceNode's replicas",
            None,
            MetricType::Gauge,
        )?;
        let now = Timestamp::now();
        for ((namespace, name), oldest) in ages {
            let age = now.duration_since(oldest);
            let seconds = Duration::try_from(age).map_or(0.0, |d| d.as_secs_f64());
            let labels = [("namespace", namespace), ("name", name)];
            let gauge = prometheus_client::metrics::gauge::ConstGauge::new(seconds);
            gauge.encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ReplicaHeartbeat;

    #[test]
    fn every_listed_metric_is_exported_and_no_other() {
        let heartbeats = HeartbeatTable::default();
        heartbeats.record(
            "ai",
            "gemma",
            ReplicaHeartbeat {
                pod: "gemma-0".into(),
                peer_id: "12D3KooW".into(),
                received_at: Timestamp::now(),
                tokens_per_second: 1.0,
                slots_busy: 0,
                slots_total: 1,
                queued: 0,
            },
        );
        let metrics = Metrics::new(heartbeats);
        metrics.reconcile_failed(&Error::MissingObjectKey(".metadata.uid"));
        drop(metrics.reconcile_started());
        // Per-resource families only appear once a resource is known.
        metrics.record_status(
            "ai",
            "gemma",
            &InferenceNodeStatus {
                phase: Some(Phase::Ready),
                replicas: 1,
                ..InferenceNodeStatus::default()
            },
        );
        let text = metrics.encode();
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        // OpenMetrics names counter families without `_total`.
        let listed: Vec<String> = METRIC_NAMES
            .iter()
            .map(|n| n.trim_end_matches("_total").to_owned())
            .collect();
        let mut exported_sorted: Vec<String> = exported.iter().map(|s| s.to_string()).collect();
        exported_sorted.sort();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(exported_sorted, listed_sorted, "{text}");
        for name in METRIC_NAMES {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(r#"reconcile_errors_total{reason="missing_object_key"} 1"#));
        assert!(text.contains(r#"heartbeat_age_seconds{namespace="ai",name="gemma"}"#));
    }

    #[test]
    fn phases_and_replicas_follow_the_recorded_statuses() {
        let metrics = Metrics::new(HeartbeatTable::default());
        let status = |phase, ready| InferenceNodeStatus {
            phase: Some(phase),
            replicas: 2,
            ready_replicas: ready,
            peer_count: ready,
            ..InferenceNodeStatus::default()
        };
        metrics.record_status("ai", "a", &status(Phase::Loading, 0));
        metrics.record_status("ai", "b", &status(Phase::Loading, 1));
        metrics.record_status("ai", "a", &status(Phase::Ready, 2));
        let text = metrics.encode();
        assert!(
            text.contains(r#"inference_nodes{phase="Ready"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"inference_nodes{phase="Loading"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"inference_nodes{phase="Failed"} 0"#),
            "{text}"
        );
        for line in [
            r#"inference_node_replicas{namespace="ai",name="a",state="desired"} 2"#,
            r#"inference_node_replicas{namespace="ai",name="a",state="ready"} 2"#,
            r#"inference_node_replicas{namespace="ai",name="b",state="ready"} 1"#,
            r#"inference_node_replicas{namespace="ai",name="b",state="heartbeating"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        metrics.forget("ai", "a");
        let text = metrics.encode();
        assert!(text.contains(r#"inference_nodes{phase="Ready"} 0"#));
        assert!(
            !text.contains(r#"name="a""#),
            "forgotten series remain:\n{text}"
        );
    }
}
