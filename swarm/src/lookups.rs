//! Provider lookups as a state machine the event loop drives. A lookup asks one DHT query
//! per shard of a key (`providers::lookup_keys`); the event loop reports what each query
//! found and when it ended, and gets back what to do: finish a query early (enough record
//! holders answered), or answer the caller with every provider found once the last shard
//! query ended. No `Swarm` here, so the bookkeeping is tested on its own.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use libp2p::PeerId;

/// Peers that must have answered a shard query with providers before it stops early. The
/// records of a shard live on the peers closest to its key, and every provider announces
/// to the closest it finds, so these peers hold (nearly) the same set; asking further only
/// costs time. Three answers cover announcers that saw slightly different closest peers.
pub const HOLDERS_ENOUGH: usize = 3;

/// Every provider lookup in flight. `Q` names a DHT query (`kad::QueryId` in the event
/// loop), `R` whoever waits for the answer.
#[derive(Debug)]
pub struct ProviderLookups<Q, R> {
    lookups: HashMap<u64, Lookup<R>>,
    queries: HashMap<Q, Shard>,
    next: u64,
}

#[derive(Debug)]
struct Lookup<R> {
    /// Shard queries not finished yet.
    pending: usize,
    found: HashSet<PeerId>,
    reply: R,
}

/// One shard query of a lookup.
#[derive(Debug)]
struct Shard {
    lookup: u64,
    /// Answers that carried providers (our own store counts as one).
    answers: usize,
}

/// What the event loop does after a query reported providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAnswer {
    /// Keep asking.
    Continue,
    /// Enough holders answered: finish the query (its last step follows).
    Finish,
}

impl<Q: Hash + Eq + Copy, R> Default for ProviderLookups<Q, R> {
    fn default() -> Self {
        ProviderLookups {
            lookups: HashMap::new(),
            queries: HashMap::new(),
            next: 0,
        }
    }
}

impl<Q: Hash + Eq + Copy, R> ProviderLookups<Q, R> {
    /// Tracks a lookup made of `queries` (one per shard). Without any query there is
    /// nothing to wait for: the reply comes back at once, to be answered with no provider.
    pub fn start(&mut self, queries: impl IntoIterator<Item = Q>, reply: R) -> Option<R> {
        let id = self.next;
        self.next += 1;
        let mut pending = 0;
        for query in queries {
            self.queries.insert(
                query,
                Shard {
                    lookup: id,
                    answers: 0,
                },
            );
            pending += 1;
        }
        if pending == 0 {
            return Some(reply);
        }
        self.lookups.insert(
            id,
            Lookup {
                pending,
                found: HashSet::new(),
                reply,
            },
        );
        None
    }

    /// `query` found `providers`. Queries of no lookup (finished, or not ours) are ignored.
    pub fn answered(
        &mut self,
        query: Q,
        providers: impl IntoIterator<Item = PeerId>,
    ) -> AfterAnswer {
        let Some(shard) = self.queries.get_mut(&query) else {
            return AfterAnswer::Continue;
        };
        let lookup = self
            .lookups
            .get_mut(&shard.lookup)
            .expect("a tracked query belongs to a tracked lookup");
        lookup.found.extend(providers);
        shard.answers += 1;
        if shard.answers >= HOLDERS_ENOUGH {
            AfterAnswer::Finish
        } else {
            AfterAnswer::Continue
        }
    }

    /// `query` ended. When it was its lookup's last, the caller to answer and every
    /// provider found, sorted.
    pub fn ended(&mut self, query: Q) -> Option<(R, Vec<PeerId>)> {
        let shard = self.queries.remove(&query)?;
        let lookup = self
            .lookups
            .get_mut(&shard.lookup)
            .expect("a tracked query belongs to a tracked lookup");
        lookup.pending -= 1;
        if lookup.pending > 0 {
            return None;
        }
        let lookup = self.lookups.remove(&shard.lookup).expect("present");
        let mut found: Vec<PeerId> = lookup.found.into_iter().collect();
        found.sort();
        Some((lookup.reply, found))
    }

    /// Lookups still waiting for a query.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lookups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_comes_once_every_shard_ended_with_all_providers_once() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut lookups = ProviderLookups::<u32, &str>::default();
        assert_eq!(lookups.start([1, 2, 3], "caller"), None);
        assert_eq!(lookups.answered(1, [a, b]), AfterAnswer::Continue);
        assert_eq!(lookups.answered(2, [b, c]), AfterAnswer::Continue);
        assert_eq!(lookups.ended(1), None);
        assert_eq!(lookups.ended(2), None);
        // A shard whose query found nothing still has to end.
        let (reply, found) = lookups.ended(3).expect("the last shard ended");
        assert_eq!(reply, "caller");
        let mut expected = vec![a, b, c];
        expected.sort();
        assert_eq!(found, expected);
        assert_eq!(lookups.in_flight(), 0);
        // Late events of finished queries change nothing.
        assert_eq!(lookups.answered(1, [a]), AfterAnswer::Continue);
        assert_eq!(lookups.ended(1), None);
    }

    #[test]
    fn a_shard_stops_once_enough_holders_answered() {
        let mut lookups = ProviderLookups::<u32, ()>::default();
        lookups.start([7], ());
        let peer = PeerId::random();
        for _ in 1..HOLDERS_ENOUGH {
            assert_eq!(lookups.answered(7, [peer]), AfterAnswer::Continue);
        }
        assert_eq!(lookups.answered(7, [peer]), AfterAnswer::Finish);
        assert_eq!(lookups.ended(7), Some(((), vec![peer])));
    }

    #[test]
    fn lookups_in_flight_together_keep_their_own_providers() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut lookups = ProviderLookups::<u32, char>::default();
        lookups.start([1], 'x');
        lookups.start([2], 'y');
        lookups.answered(1, [a]);
        lookups.answered(2, [b]);
        assert_eq!(lookups.ended(2), Some(('y', vec![b])));
        assert_eq!(lookups.ended(1), Some(('x', vec![a])));
    }

    #[test]
    fn a_lookup_without_shards_is_answered_at_once() {
        let mut lookups = ProviderLookups::<u32, u8>::default();
        assert_eq!(lookups.start([], 9), Some(9));
        assert_eq!(lookups.in_flight(), 0);
    }
}
