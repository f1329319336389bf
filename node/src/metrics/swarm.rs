//! Swarm and routing series, read on each scrape from the swarm's atomics and peer table
//! (which the swarm task keeps without knowing about Prometheus).
//!
//! A node outside any swarm (`--no-swarm`) exports none of them.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::route::metrics::{HOLD_OUTCOMES, WAKE_OUTCOMES};
use crate::route::{ForwardOutcome, RouteMetrics};
use crate::swarm::SharedPeerTable;
use crate::swarm::metrics::SwarmMetrics;

/// Where the swarm series come from, once the node has joined.
#[derive(Debug, Default)]
pub struct SwarmSource {
    attached: OnceLock<Attached>,
}

#[derive(Debug)]
struct Attached {
    swarm: Arc<SwarmMetrics>,
    peers: SharedPeerTable,
    route: Arc<RouteMetrics>,
}

impl SwarmSource {
    /// Starts exporting this swarm's figures (the first call wins).
    pub fn attach(
        &self,
        swarm: Arc<SwarmMetrics>,
        peers: SharedPeerTable,
        route: Arc<RouteMetrics>,
    ) {
        let _ = self.attached.set(Attached {
            swarm,
            peers,
            route,
        });
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

/// Series names (with the registry's `llamanet_` prefix), for tests and dashboards.
pub const SWARM_METRIC_NAMES: &[&str] = &[
    "llamanet_swarm_peers",
    "llamanet_swarm_connected_peers",
    "llamanet_swarm_routing_table_peers",
    "llamanet_swarm_model_peers",
    "llamanet_swarm_heartbeats_received_total",
    "llamanet_swarm_heartbeats_published_total",
    "llamanet_swarm_heartbeats_rejected_total",
    "llamanet_swarm_bootstrap_failures_total",
    "llamanet_route_forwards_total",
    "llamanet_route_failovers_total",
    "llamanet_route_continuations_total",
    "llamanet_route_broken_streams_total",
    "llamanet_route_peers_suspected_total",
    "llamanet_route_wakes_total",
    "llamanet_route_holds_total",
];

/// Distinct `model` label values of `llamanet_swarm_model_peers`: peers choose model ids,
/// and a series per id would let any peer grow every node's metrics without bound.
pub const MAX_MODEL_LABELS: usize = 64;

/// The label of models beyond [`MAX_MODEL_LABELS`].
pub const OTHER_MODELS: &str = "_other";

/// `(model, nodes)` for the `limit` most served models (ties by name), then the rest summed
/// under [`OTHER_MODELS`].
fn top_models(counts: impl Iterator<Item = (String, usize)>, limit: usize) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = counts.collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if counts.len() > limit {
        let rest: usize = counts.drain(limit..).map(|(_, n)| n).sum();
        counts.push((OTHER_MODELS.to_string(), rest));
    }
    counts
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    ConstCounter::new(value).encode(encoder.encode_descriptor(
        name,
        help,
        None,
        MetricType::Counter,
    )?)
}

impl Collector for SwarmSource {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(source) = self.attached.get() else {
            return Ok(());
        };
        let swarm = source.swarm.snapshot();
        gauge(
            &mut encoder,
            "swarm_peers",
            "Live nodes in this node's peer table (itself included)",
            swarm.peer_table_size,
        )?;
        gauge(
            &mut encoder,
            "swarm_connected_peers",
            "Peers with an open connection",
            swarm.connected_peers,
        )?;
        gauge(
            &mut encoder,
            "swarm_routing_table_peers",
            "Peers in the Kademlia routing table",
            swarm.routing_table_size,
        )?;
        let models = match source.peers.read() {
            Ok(table) => table.models(),
            Err(poisoned) => poisoned.into_inner().models(),
        };
        {
            let mut family = encoder.encode_descriptor(
                "swarm_model_peers",
                "Live nodes serving each model (the most served models by name, the rest summed under model=\"_other\")",
                None,
                MetricType::Gauge,
            )?;
            let counts = models
                .into_iter()
                .map(|(model, summary)| (model, summary.peers.len()));
            for (model, nodes) in top_models(counts, MAX_MODEL_LABELS) {
                let labels = ModelLabels { model };
                ConstGauge::new(nodes as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut encoder,
            "swarm_heartbeats_received",
            "Heartbeats that passed signature and freshness checks",
            swarm.heartbeats_received,
        )?;
        counter(
            &mut encoder,
            "swarm_heartbeats_published",
            "Heartbeats this node published",
            swarm.heartbeats_published,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "swarm_heartbeats_rejected",
                "Heartbeats dropped, by reason",
                None,
                MetricType::Counter,
            )?;
            for (reason, count) in swarm.heartbeats_rejected {
                ConstCounter::new(count).encode(family.encode_family(&ReasonLabels { reason })?)?;
            }
        }
        counter(
            &mut encoder,
            "swarm_bootstrap_failures",
            "Bootstrap dials that failed",
            swarm.bootstrap_failures,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "route_forwards",
                "Requests routed past their first candidate or to a peer, by how they ended (ok: the first peer answered; failover: a later peer did; local: this node did after peers failed; failed: nobody did)",
                None,
                MetricType::Counter,
            )?;
            for outcome in ForwardOutcome::ALL {
                let labels = OutcomeLabels {
                    outcome: outcome.as_str(),
                };
                ConstCounter::new(source.route.forwards(outcome))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let route = source.route.snapshot();
        counter(
            &mut encoder,
            "route_failovers",
            "Candidates given up on before their first byte",
            route.failovers,
        )?;
        counter(
            &mut encoder,
            "route_continuations",
            "Streams whose node failed mid-answer, continued on another node",
            route.continuations,
        )?;
        counter(
            &mut encoder,
            "route_broken_streams",
            "Relayed answers that broke after their first byte and could not be continued",
            route.broken_streams,
        )?;
        counter(
            &mut encoder,
            "route_peers_suspected",
            "Times a peer was suspected after a failed attempt (out of the candidates until a newer healthy heartbeat)",
            route.suspected,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "route_wakes",
                "Wake requests sent to operators for models scaled to zero, by outcome (waking, not_cold, malformed, failed: the operator's answer; unreachable: no answer)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, count) in WAKE_OUTCOMES.iter().zip(source.route.wakes()) {
                ConstCounter::new(count)
                    .encode(family.encode_family(&OutcomeLabels { outcome })?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "route_holds",
                "Requests held for a model scaled to zero, by how the hold ended",
                None,
                MetricType::Counter,
            )?;
            for (outcome, count) in HOLD_OUTCOMES.iter().zip(source.route.holds()) {
                ConstCounter::new(count)
                    .encode(family.encode_family(&OutcomeLabels { outcome })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_capped_and_the_rest_summed() {
        let counts = (0..100)
            .map(|i| (format!("fake-{i:03}"), 1))
            .chain([("gemma".to_string(), 5), ("qwen".to_string(), 3)]);
        let top = top_models(counts, MAX_MODEL_LABELS);
        assert_eq!(top.len(), MAX_MODEL_LABELS + 1);
        assert_eq!(top[0], ("gemma".to_string(), 5));
        assert_eq!(top[1], ("qwen".to_string(), 3));
        assert_eq!(top.last().unwrap(), &(OTHER_MODELS.to_string(), 38));
        let few = top_models([("a".to_string(), 2)].into_iter(), MAX_MODEL_LABELS);
        assert_eq!(few, vec![("a".to_string(), 2)]);
    }
}
