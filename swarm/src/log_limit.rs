//! Logging about peers without letting peers decide how much is logged: at most one line
//! per peer per [`LogLimit::EVERY`], and nothing for peers beyond [`LogLimit::KEPT`]
//! distinct ones a minute (a flood of fresh identities is counted in metrics, not logged).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// When each peer was last logged about.
#[derive(Debug, Default)]
pub struct LogLimit {
    last: HashMap<PeerId, Instant>,
}

impl LogLimit {
    pub const EVERY: Duration = Duration::from_secs(60);
    pub const KEPT: usize = 4096;

    /// Whether a line about `peer` may be logged now (and, if so, notes that it was).
    pub fn allow(&mut self, peer: PeerId) -> bool {
        self.allow_at(peer, Instant::now())
    }

    fn allow_at(&mut self, peer: PeerId, now: Instant) -> bool {
        if self
            .last
            .get(&peer)
            .is_some_and(|at| now.duration_since(*at) < Self::EVERY)
        {
            return false;
        }
        if self.last.len() >= Self::KEPT {
            self.last
                .retain(|_, at| now.duration_since(*at) < Self::EVERY);
        }
        if self.last.len() >= Self::KEPT {
            return false;
        }
        self.last.insert(peer, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_peer_a_minute_and_floods_not_at_all() {
        let mut limit = LogLimit::default();
        let t0 = Instant::now();
        let peer = PeerId::random();
        assert!(limit.allow_at(peer, t0));
        assert!(!limit.allow_at(peer, t0 + Duration::from_secs(59)));
        assert!(limit.allow_at(peer, t0 + LogLimit::EVERY));
        for _ in 1..LogLimit::KEPT {
            assert!(limit.allow_at(PeerId::random(), t0 + LogLimit::EVERY));
        }
        let now = t0 + LogLimit::EVERY;
        assert!(
            !limit.allow_at(PeerId::random(), now),
            "a flood stops logging"
        );
        assert_eq!(limit.last.len(), LogLimit::KEPT);
        // A minute on, room again.
        assert!(limit.allow_at(PeerId::random(), now + LogLimit::EVERY));
    }
}
