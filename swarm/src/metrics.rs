//! Swarm figures for the metrics exporter, as plain atomics.
//!
//! The swarm task writes them; the `/metrics` code reads them when scraped and turns them
//! into Prometheus series. Keeping them as atomics here (instead of registering
//! `prometheus-client` metrics from inside the swarm) leaves one registry, owned by the
//! metrics module, and lets light users of the swarm (operator, tools) skip Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};

use super::heartbeat::RejectReason;

/// Counters and gauges of one swarm instance.
#[derive(Debug, Default)]
pub struct SwarmMetrics {
    /// Heartbeats that passed verification (including stale duplicates).
    pub heartbeats_received: AtomicU64,
    /// Heartbeats rejected, per [`RejectReason::index`].
    heartbeats_rejected: [AtomicU64; RejectReason::ALL.len()],
    /// Heartbeats this node published.
    pub heartbeats_published: AtomicU64,
    /// Peers with at least one open connection (gauge).
    pub connected_peers: AtomicU64,
    /// Peers in the Kademlia routing table (gauge).
    pub routing_table_size: AtomicU64,
    /// Live entries in the peer table, this node included (gauge).
    pub peer_table_size: AtomicU64,
    /// Bootstrap dials that failed.
    pub bootstrap_failures: AtomicU64,
    /// Turns of the event loop (see `SwarmHandle::loop_turns`).
    pub loop_turns: AtomicU64,
}

impl SwarmMetrics {
    pub fn record_rejected(&self, reason: RejectReason) {
        self.heartbeats_rejected[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejected heartbeats for one reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.heartbeats_rejected[reason.index()].load(Ordering::Relaxed)
    }

    /// Rejected heartbeats over all reasons.
    pub fn rejected_total(&self) -> u64 {
        RejectReason::ALL.iter().map(|r| self.rejected(*r)).sum()
    }

    /// A consistent-enough copy for exporting or JSON (each field read once).
    pub fn snapshot(&self) -> SwarmMetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SwarmMetricsSnapshot {
            heartbeats_received: load(&self.heartbeats_received),
            heartbeats_rejected: RejectReason::ALL
                .iter()
                .map(|r| (r.as_str(), self.rejected(*r)))
                .collect(),
            heartbeats_published: load(&self.heartbeats_published),
            connected_peers: load(&self.connected_peers),
            routing_table_size: load(&self.routing_table_size),
            peer_table_size: load(&self.peer_table_size),
            bootstrap_failures: load(&self.bootstrap_failures),
        }
    }
}

/// Plain values of [`SwarmMetrics`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwarmMetricsSnapshot {
    pub heartbeats_received: u64,
    /// `(reason label, count)` for every reason, zeros included.
    pub heartbeats_rejected: Vec<(&'static str, u64)>,
    pub heartbeats_published: u64,
    pub connected_peers: u64,
    pub routing_table_size: u64,
    pub peer_table_size: u64,
    pub bootstrap_failures: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_counted_per_reason() {
        let m = SwarmMetrics::default();
        m.record_rejected(RejectReason::BadSignature);
        m.record_rejected(RejectReason::BadSignature);
        m.record_rejected(RejectReason::PeerIdMismatch);
        assert_eq!(m.rejected(RejectReason::BadSignature), 2);
        assert_eq!(m.rejected_total(), 3);
        let snap = m.snapshot();
        assert!(snap.heartbeats_rejected.contains(&("peer_id_mismatch", 1)));
        assert!(snap.heartbeats_rejected.contains(&("malformed", 0)));
    }
}
