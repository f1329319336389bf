//! The connection budget.
//!
//! Gossipsub holds a stream open on every connection to a peer of the heartbeat topic, so
//! libp2p's idle timeout never closes one: every peer a DHT query ever reached stayed
//! connected, and in a swarm of N nodes each held nearly N connections (memory, yamux
//! pings and polling that grow with N). Above [`SwarmConfig::connection_target`]
//! connections, a node now closes the ones it dialed itself that nothing needs: not a
//! gossip mesh peer, not a bootstrap peer, and older than the query timeout so a query's
//! fresh connections live through the query. Connections others dialed are theirs to close,
//! so a bootstrap peer (the operator) never drops the nodes that keep it as their meeting
//! point.
//!
//! [`SwarmConfig::connection_target`]: super::SwarmConfig::connection_target

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// Peers to disconnect so that `connected` comes down towards `target`: among the peers
/// this node dialed (`dialed`, with when), those not in `keep` and connected for at least
/// `min_age`, oldest first.
pub(crate) fn to_prune(
    connected: usize,
    target: usize,
    dialed: &HashMap<PeerId, Instant>,
    keep: &HashSet<PeerId>,
    now: Instant,
    min_age: Duration,
) -> Vec<PeerId> {
    let excess = connected.saturating_sub(target);
    if excess == 0 {
        return Vec::new();
    }
    let mut spare: Vec<(Instant, PeerId)> = dialed
        .iter()
        .filter(|(peer, since)| !keep.contains(*peer) && now.duration_since(**since) >= min_age)
        .map(|(peer, since)| (*since, *peer))
        .collect();
    spare.sort();
    spare
        .into_iter()
        .take(excess)
        .map(|(_, peer)| peer)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE: Duration = Duration::from_secs(30);

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn nothing_goes_while_within_the_target() {
        let now = Instant::now();
        let old = now - AGE * 2;
        let dialed: HashMap<PeerId, Instant> = peers(5).into_iter().map(|p| (p, old)).collect();
        assert!(to_prune(5, 5, &dialed, &HashSet::new(), now, AGE).is_empty());
        assert!(to_prune(3, 8, &dialed, &HashSet::new(), now, AGE).is_empty());
    }

    #[test]
    fn the_oldest_spare_dialed_connections_go_first_and_only_the_excess() {
        let now = Instant::now();
        let ids = peers(4);
        let dialed: HashMap<PeerId, Instant> = ids
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, now - AGE - Duration::from_secs(10 * (4 - i as u64))))
            .collect();
        // 10 connections, target 8: the two oldest of the spare ones.
        assert_eq!(
            to_prune(10, 8, &dialed, &HashSet::new(), now, AGE),
            vec![ids[0], ids[1]]
        );
    }

    #[test]
    fn mesh_and_bootstrap_peers_and_young_connections_stay() {
        let now = Instant::now();
        let ids = peers(4);
        let mut dialed: HashMap<PeerId, Instant> =
            ids.iter().map(|p| (*p, now - AGE * 3)).collect();
        // A connection a query opened a moment ago.
        dialed.insert(ids[3], now - Duration::from_secs(1));
        let keep: HashSet<PeerId> = [ids[0], ids[1]].into();
        assert_eq!(to_prune(40, 8, &dialed, &keep, now, AGE), vec![ids[2]]);
    }
}
