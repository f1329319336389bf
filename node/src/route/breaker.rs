//! Suspect at once, trust on evidence: a local circuit breaker per peer.
//!
//! A peer that fails an attempt (cannot be reached, resets, answers 502/503/504, refuses
//! us) leaves the candidate set at once, well before its heartbeats stop and the peer table
//! drops it. It comes back only when both
//! - its back-off has passed (250 ms after the first failure, doubling with each failure in
//!   a row, at most 30 s), and
//! - a heartbeat says it is healthy and was sent after the failure: one of a new run of the
//!   process (a restarted node announces a new start time), or at least two heartbeats
//!   newer than the one the failed attempt was chosen on (one more could have been on its
//!   way when the attempt failed).
//!
//! So the old heartbeat of a node killed a moment ago cannot vouch for the process that
//! replaced it, and a restarted node that still loads (it announces itself unhealthy) is
//! never chosen. A success closes the breaker at once.
//!
//! Pure: time comes in as arguments, heartbeats through [`Breakers::heard`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::swarm::Heartbeat;

/// How long a suspect stays out at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            first_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// The heartbeat order a peer was chosen on: (start of its run, sequence number).
pub type Order = (u64, u64);

#[derive(Debug, Clone)]
struct Suspect {
    failures: u32,
    until: Instant,
    /// The newest heartbeat known when it failed.
    order: Option<Order>,
    /// A heartbeat sent after the failure said it is healthy.
    vouched: bool,
}

/// Every suspect peer of one node.
#[derive(Debug, Default)]
pub struct Breakers {
    policy: BreakerPolicy,
    suspects: HashMap<PeerId, Suspect>,
}

impl Breakers {
    pub fn new(policy: BreakerPolicy) -> Self {
        Breakers {
            policy,
            suspects: HashMap::new(),
        }
    }

    /// `peer` failed an attempt chosen on its heartbeat of `order` (`None` if unknown).
    pub fn failed(&mut self, peer: PeerId, order: Option<Order>, now: Instant) {
        let policy = self.policy;
        let suspect = self.suspects.entry(peer).or_insert(Suspect {
            failures: 0,
            until: now,
            order,
            vouched: false,
        });
        suspect.failures = suspect.failures.saturating_add(1);
        let doublings = suspect.failures.saturating_sub(1).min(16);
        let backoff = policy
            .first_backoff
            .saturating_mul(1u32 << doublings)
            .min(policy.max_backoff);
        suspect.until = now + backoff;
        // Evidence must be newer than anything known at this failure.
        suspect.order = suspect.order.max(order);
        suspect.vouched = false;
    }

    /// A verified heartbeat arrived: evidence for a suspect if it is healthy and sent after
    /// the failure (see the module docs).
    pub fn heard(&mut self, heartbeat: &Heartbeat) {
        let Some(suspect) = self.suspects.get_mut(&heartbeat.peer_id) else {
            return;
        };
        if !heartbeat.status.healthy {
            suspect.vouched = false;
            return;
        }
        let after = match suspect.order {
            None => true,
            Some((started, seq)) => {
                heartbeat.started_at_ms > started
                    || (heartbeat.started_at_ms == started
                        && heartbeat.seq >= seq.saturating_add(2))
            }
        };
        if after {
            suspect.vouched = true;
        }
    }

    /// A request to `peer` succeeded: it is trusted again.
    pub fn succeeded(&mut self, peer: &PeerId) {
        self.suspects.remove(peer);
    }

    /// Whether `peer` is out of the candidate set now. Readmits (forgets) a suspect whose
    /// back-off has passed and that has evidence.
    pub fn is_suspect(&mut self, peer: &PeerId, now: Instant) -> bool {
        match self.suspects.get(peer) {
            None => false,
            Some(suspect) if suspect.vouched && now >= suspect.until => {
                self.suspects.remove(peer);
                false
            }
            Some(_) => true,
        }
    }

    /// Suspects now (for metrics and `/v1/swarm`).
    pub fn count(&self) -> usize {
        self.suspects.len()
    }

    /// Forgets suspects not in `live` (peers that left the table), so the map stays as small
    /// as the swarm.
    pub fn retain(&mut self, live: impl Fn(&PeerId) -> bool) {
        self.suspects.retain(|peer, _| live(peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::heartbeat::samples::sample;

    fn beat(peer: PeerId, started: u64, seq: u64, healthy: bool) -> Heartbeat {
        let mut heartbeat = sample(peer, seq);
        heartbeat.started_at_ms = started;
        heartbeat.status.healthy = healthy;
        heartbeat
    }

    #[test]
    fn a_failed_peer_is_out_until_backoff_and_a_later_healthy_heartbeat() {
        let mut breakers = Breakers::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        assert!(!breakers.is_suspect(&peer, t0));
        breakers.failed(peer, Some((100, 7)), t0);
        assert!(breakers.is_suspect(&peer, t0));
        // The heartbeat that may have been on its way: not evidence.
        breakers.heard(&beat(peer, 100, 8, true));
        assert!(breakers.is_suspect(&peer, t0 + Duration::from_secs(5)));
        // Two newer: sent after the failure.
        breakers.heard(&beat(peer, 100, 9, true));
        assert!(
            breakers.is_suspect(&peer, t0 + Duration::from_millis(100)),
            "back-off first"
        );
        assert!(!breakers.is_suspect(&peer, t0 + Duration::from_millis(250)));
        assert_eq!(breakers.count(), 0, "readmitted peers are forgotten");
    }

    #[test]
    fn a_restarted_process_vouches_only_once_it_is_healthy() {
        let mut breakers = Breakers::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        breakers.failed(peer, Some((100, 50)), t0);
        let later = t0 + Duration::from_secs(1);
        // The new run loads: unhealthy, stays out.
        breakers.heard(&beat(peer, 200, 1, false));
        assert!(breakers.is_suspect(&peer, later));
        // Loaded.
        breakers.heard(&beat(peer, 200, 2, true));
        assert!(!breakers.is_suspect(&peer, later));
    }

    #[test]
    fn repeated_failures_back_off_longer_and_success_closes_at_once() {
        let mut breakers = Breakers::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        for _ in 0..3 {
            breakers.failed(peer, Some((1, 1)), t0);
        }
        breakers.heard(&beat(peer, 1, 10, true));
        // 250 ms doubled twice.
        assert!(breakers.is_suspect(&peer, t0 + Duration::from_millis(999)));
        assert!(!breakers.is_suspect(&peer, t0 + Duration::from_millis(1000)));

        for _ in 0..40 {
            breakers.failed(peer, None, t0);
        }
        breakers.heard(&beat(peer, 1, 99, true));
        assert!(breakers.is_suspect(&peer, t0 + Duration::from_secs(29)));
        assert!(
            !breakers.is_suspect(&peer, t0 + Duration::from_secs(30)),
            "capped"
        );

        breakers.failed(peer, None, t0);
        breakers.succeeded(&peer);
        assert!(!breakers.is_suspect(&peer, t0));
    }

    #[test]
    fn a_failure_after_evidence_needs_new_evidence() {
        let mut breakers = Breakers::default();
        let peer = PeerId::random();
        let t0 = Instant::now();
        breakers.failed(peer, Some((1, 1)), t0);
        breakers.heard(&beat(peer, 1, 5, true));
        breakers.failed(peer, Some((1, 5)), t0 + Duration::from_secs(1));
        assert!(breakers.is_suspect(&peer, t0 + Duration::from_secs(10)));
        breakers.heard(&beat(peer, 1, 7, true));
        assert!(!breakers.is_suspect(&peer, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn peers_that_left_are_forgotten() {
        let mut breakers = Breakers::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        breakers.failed(a, None, Instant::now());
        breakers.failed(b, None, Instant::now());
        breakers.retain(|p| *p == b);
        assert_eq!(breakers.count(), 1);
    }
}
