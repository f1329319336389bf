//! Forwarding counters, as plain atomics: the router bumps them on the request path without
//! locks, and the Prometheus registry (`crate::metrics`) reads them at scrape time. The
//! outcome names double as metric label values.

use std::sync::atomic::{AtomicU64, Ordering};

/// How one forwarded request ended, as seen before its body streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardOutcome {
    /// The first peer tried answered.
    Ok,
    /// A later peer answered after at least one failover.
    Failover,
    /// No peer answered.
    Failed,
    /// Peers failed first and this node served the request itself (its last resort).
    Local,
}

impl ForwardOutcome {
    pub const ALL: [ForwardOutcome; 4] = [
        ForwardOutcome::Ok,
        ForwardOutcome::Failover,
        ForwardOutcome::Failed,
        ForwardOutcome::Local,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardOutcome::Ok => "ok",
            ForwardOutcome::Failover => "failover",
            ForwardOutcome::Failed => "failed",
            ForwardOutcome::Local => "local",
        }
    }
}

/// Label values of wake requests' outcomes (the operator's answers, and `unreachable`).
pub const WAKE_OUTCOMES: [&str; 5] = ["waking", "not_cold", "malformed", "failed", "unreachable"];

/// How a held request's hold ended.
pub const HOLD_OUTCOMES: [&str; 4] = ["served", "timed_out", "queue_full", "wake_failed"];

/// Counters of the router. Shared as `Arc<RouteMetrics>`.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    forwards: [AtomicU64; 4],
    /// Individual failovers: one per candidate given up on before the first byte.
    failovers: AtomicU64,
    /// Answers that broke after the first byte and could not be continued (ended with an
    /// error event or an aborted body).
    broken_streams: AtomicU64,
    /// Streams that broke and were continued on another node.
    continuations: AtomicU64,
    /// Peers put under suspicion by a failed attempt.
    suspected: AtomicU64,
    /// Wake requests sent, by [`WAKE_OUTCOMES`].
    wakes: [AtomicU64; 5],
    /// Requests for cold models, by [`HOLD_OUTCOMES`].
    holds: [AtomicU64; 4],
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteMetricsSnapshot {
    pub forwards_ok: u64,
    pub forwards_failover: u64,
    pub forwards_failed: u64,
    pub forwards_local: u64,
    pub failovers: u64,
    pub broken_streams: u64,
    pub continuations: u64,
    pub suspected: u64,
}

impl RouteMetrics {
    pub fn record(&self, outcome: ForwardOutcome) {
        self.forwards[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failover(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_broken_stream(&self) {
        self.broken_streams.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wake request by its outcome label ([`WAKE_OUTCOMES`]).
    pub fn record_wake(&self, outcome: &str) {
        if let Some(i) = WAKE_OUTCOMES.iter().position(|o| *o == outcome) {
            self.wakes[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts how a hold ended ([`HOLD_OUTCOMES`]).
    pub fn record_hold(&self, outcome: &str) {
        if let Some(i) = HOLD_OUTCOMES.iter().position(|o| *o == outcome) {
            self.holds[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wake requests per outcome, in [`WAKE_OUTCOMES`] order.
    pub fn wakes(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.wakes[i].load(Ordering::Relaxed))
    }

    /// Holds per outcome, in [`HOLD_OUTCOMES`] order.
    pub fn holds(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.holds[i].load(Ordering::Relaxed))
    }

    pub fn record_suspected(&self) {
        self.suspected.fetch_add(1, Ordering::Relaxed);
    }

    /// Forwards that ended with `outcome`.
    pub fn forwards(&self, outcome: ForwardOutcome) -> u64 {
        self.forwards[outcome as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> RouteMetricsSnapshot {
        RouteMetricsSnapshot {
            forwards_ok: self.forwards(ForwardOutcome::Ok),
            forwards_failover: self.forwards(ForwardOutcome::Failover),
            forwards_failed: self.forwards(ForwardOutcome::Failed),
            forwards_local: self.forwards(ForwardOutcome::Local),
            failovers: self.failovers.load(Ordering::Relaxed),
            broken_streams: self.broken_streams.load(Ordering::Relaxed),
            continuations: self.continuations.load(Ordering::Relaxed),
            suspected: self.suspected.load(Ordering::Relaxed),
        }
    }
}

impl super::relay::RelayEvents for RouteMetrics {
    fn broken(&self) {
        self.record_broken_stream();
    }

    fn continued(&self) {
        self.continuations.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_count_separately() {
        let metrics = RouteMetrics::default();
        metrics.record(ForwardOutcome::Ok);
        metrics.record(ForwardOutcome::Ok);
        metrics.record(ForwardOutcome::Failed);
        metrics.record_failover();
        let snap = metrics.snapshot();
        assert_eq!(
            (
                snap.forwards_ok,
                snap.forwards_failover,
                snap.forwards_failed
            ),
            (2, 0, 1)
        );
        assert_eq!(snap.failovers, 1);
        let labels: Vec<&str> = ForwardOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(labels, ["ok", "failover", "failed", "local"]);
    }
}
