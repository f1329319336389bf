//! Requests this node has forwarded and not yet seen finish, per peer.
//!
//! A peer's heartbeat tells its load at most one interval ago: a burst of requests arriving
//! within one interval would all see the same figures and land on the same peer. The
//! router therefore counts its own forwards in flight and adds them to each peer's
//! announced queue when choosing ([`InFlight::adjust`]). This counts a long request twice
//! once the peer's heartbeat includes it, which only makes the router spread more eagerly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

use crate::swarm::Heartbeat;

/// Forwards in flight, by peer. Clone it freely (shared counts).
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    counts: Arc<Mutex<HashMap<PeerId, u32>>>,
}

impl InFlight {
    /// Counts one forward to `peer` until the guard drops.
    pub fn begin(&self, peer: PeerId) -> InFlightGuard {
        *self.lock().entry(peer).or_default() += 1;
        InFlightGuard {
            owner: self.clone(),
            peer,
        }
    }

    /// Forwards in flight to `peer`.
    pub fn get(&self, peer: &PeerId) -> u32 {
        self.lock().get(peer).copied().unwrap_or(0)
    }

    /// Adds each peer's forwards in flight to its announced queue.
    pub fn adjust(&self, heartbeats: &mut [Heartbeat]) {
        let counts = self.lock();
        for heartbeat in heartbeats {
            if let Some(n) = counts.get(&heartbeat.peer_id) {
                heartbeat.status.queue_depth = heartbeat.status.queue_depth.saturating_add(*n);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, u32>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One forward in flight; dropping it (the answer ended, or the attempt failed) ends it.
#[derive(Debug)]
pub struct InFlightGuard {
    owner: InFlight,
    peer: PeerId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.owner.lock();
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::heartbeat::samples::sample;

    #[test]
    fn guards_count_per_peer_and_adjust_the_announced_queue() {
        let inflight = InFlight::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = inflight.begin(a);
        let second = inflight.begin(a);
        assert_eq!((inflight.get(&a), inflight.get(&b)), (2, 0));

        let beat = |peer| {
            let mut heartbeat = sample(peer, 1);
            heartbeat.status.queue_depth = 1;
            heartbeat.status.slots_busy = 0;
            heartbeat
        };
        let mut beats = vec![beat(a), beat(b)];
        inflight.adjust(&mut beats);
        assert_eq!(beats[0].status.queue_depth, 3);
        assert_eq!(beats[1].status.queue_depth, 1);
        assert_eq!(beats[0].status.load(), 0.75);

        drop(first);
        drop(second);
        assert_eq!(inflight.get(&a), 0);
        assert!(inflight.lock().is_empty(), "finished peers leave no entry");
    }
}
