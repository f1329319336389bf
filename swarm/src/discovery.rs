//! Finding nodes from a client's side: the [`Discovery`] trait, its two implementations (a
//! running swarm peer, a static list of endpoints), candidate filters, and the selection
//! strategies round robin, random and least loaded (power of two choices).
//!
//! Other Rust programs pick a node with these; `llamanet check` counts the nodes a client
//! could use through the same trait (a `/v1/swarm` snapshot is a [`Discovery`] too), and
//! the in-node router applies the same power-of-two-choices rule to its peer table. The
//! operator counts, through its swarm peer as a [`Discovery`], the nodes anywhere in the
//! swarm that serve each InferenceNode's model (`status.swarmNodes`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use llamanet_swarm::{self as swarm, SwarmConfig};
//! use llamanet_swarm::discovery::{wait_for_nodes, Filter, Selector, Strategy};
//!
//! // A light peer: joins through one node, listens to heartbeats, serves nothing.
//! let bootstrap = vec!["/dns4/llamanet.example.org/tcp/4001".parse()?];
//! let peer = swarm::start(swarm::identity::ephemeral(), SwarmConfig::light(bootstrap)).await?;
//! let nodes = wait_for_nodes(&peer, Some("qwen2.5-0.5b"), 2, Duration::from_secs(10)).await?;
//! let nodes = Filter { max_load: Some(1.0), ..Filter::default() }.apply(nodes);
//! let chosen = Selector::new(Strategy::LeastLoaded).pick(&nodes).expect("two nodes");
//! println!("send to {}", chosen.endpoint);
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use rand::Rng;

use super::SwarmHandle;
use super::heartbeat::Heartbeat;
use super::peer_table::PeerTableSnapshot;

/// A node a client could send a request to.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Base URL of the node's OpenAI API.
    pub endpoint: String,
    /// Known when the candidate came from the swarm.
    pub peer_id: Option<PeerId>,
    /// Models it serves; empty when unknown (a static list).
    pub models: Vec<String>,
    /// Busy slots plus queue over total slots; `None` when unknown.
    pub load: Option<f64>,
    pub tokens_per_second: Option<f64>,
}

impl Candidate {
    /// A node known only by its URL.
    pub fn from_endpoint(endpoint: impl Into<String>) -> Self {
        Candidate {
            endpoint: endpoint.into(),
            peer_id: None,
            models: Vec::new(),
            load: None,
            tokens_per_second: None,
        }
    }

    /// A node as its latest heartbeat describes it; `None` if it announced no endpoint.
    pub fn from_heartbeat(heartbeat: &Heartbeat) -> Option<Self> {
        let status = &heartbeat.status;
        Some(Candidate {
            endpoint: status.endpoints.first()?.clone(),
            peer_id: Some(heartbeat.peer_id),
            models: status.models.iter().map(|m| m.id.clone()).collect(),
            load: Some(status.load()),
            tokens_per_second: Some(status.tokens_per_second),
        })
    }

    /// Whether the candidate may serve `model` (unknown models count as yes: a static
    /// node forwards what it does not serve itself).
    pub fn may_serve(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model)
    }
}

/// A source of candidate nodes.
pub trait Discovery: Send + Sync {
    /// Nodes that are alive (as far as this source knows) and may serve `model` (any model
    /// when `None`).
    fn nodes(&self, model: Option<&str>) -> Vec<Candidate>;
}

/// A fixed list of endpoints, e.g. from `--url` or a config file. Knows nothing about load
/// or models, so least-loaded selection degrades to random among them.
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    endpoints: Vec<String>,
}

impl StaticDiscovery {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        StaticDiscovery {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

impl Discovery for StaticDiscovery {
    fn nodes(&self, _model: Option<&str>) -> Vec<Candidate> {
        self.endpoints
            .iter()
            .map(Candidate::from_endpoint)
            .collect()
    }
}

/// A swarm peer (usually a light one) discovers from its peer table: live, healthy nodes
/// with an endpoint.
impl Discovery for SwarmHandle {
    fn nodes(&self, model: Option<&str>) -> Vec<Candidate> {
        let table = self.peer_table();
        let table = super::read(&table);
        healthy_nodes(table.live().map(|e| &e.heartbeat), model)
    }
}

/// A snapshot (a node's `GET /v1/swarm`) discovers like a live peer table.
impl Discovery for PeerTableSnapshot {
    fn nodes(&self, model: Option<&str>) -> Vec<Candidate> {
        healthy_nodes(self.peers.iter().map(|p| &p.heartbeat), model)
    }
}

/// The healthy peers serving `model` (any model: `None`) that have an endpoint, in peer id
/// order so that round robin walks the same sequence on every call.
fn healthy_nodes<'a>(
    heartbeats: impl Iterator<Item = &'a Heartbeat>,
    model: Option<&str>,
) -> Vec<Candidate> {
    let mut nodes: Vec<Candidate> = heartbeats
        .filter(|h| h.status.healthy && model.is_none_or(|m| h.status.serves(m)))
        .filter_map(Candidate::from_heartbeat)
        .collect();
    nodes.sort_by_key(|c| c.peer_id);
    nodes
}

/// Why discovery gave up.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("found {found} of {wanted} nodes within {waited:?}")]
    NotEnough {
        found: usize,
        wanted: usize,
        waited: Duration,
    },
}

/// Waits until `source` lists at least `n` nodes for `model`, polling every 100 ms.
pub async fn wait_for_nodes(
    source: &dyn Discovery,
    model: Option<&str>,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Candidate>, DiscoveryError> {
    let start = Instant::now();
    loop {
        let nodes = source.nodes(model);
        if nodes.len() >= n {
            return Ok(nodes);
        }
        if start.elapsed() >= timeout {
            return Err(DiscoveryError::NotEnough {
                found: nodes.len(),
                wanted: n,
                waited: start.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drops candidates that are too slow or too busy. Candidates whose figures are unknown
/// pass: a static list must stay usable.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter {
    pub min_tokens_per_second: Option<f64>,
    pub max_load: Option<f64>,
}

impl Filter {
    pub fn accepts(&self, c: &Candidate) -> bool {
        let fast = match (self.min_tokens_per_second, c.tokens_per_second) {
            (Some(min), Some(tps)) => tps >= min,
            _ => true,
        };
        let free = match (self.max_load, c.load) {
            (Some(max), Some(load)) => load <= max,
            _ => true,
        };
        fast && free
    }

    pub fn apply(&self, candidates: Vec<Candidate>) -> Vec<Candidate> {
        candidates.into_iter().filter(|c| self.accepts(c)).collect()
    }
}

/// How to pick one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Each in turn.
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The less loaded of two picked at random ("power of two choices"): nearly as good as
    /// always taking the least loaded, without every client stampeding the same node between
    /// two heartbeats.
    #[default]
    LeastLoaded,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "round_robin" | "round-robin" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            "least_loaded" | "least-loaded" => Ok(Strategy::LeastLoaded),
            other => Err(format!(
                "unknown strategy {other:?} (round_robin, random, least_loaded)"
            )),
        }
    }
}

/// Picks candidates with one strategy; keeps the round-robin position between calls.
#[derive(Debug, Default)]
pub struct Selector {
    strategy: Strategy,
    next: AtomicUsize,
}

impl Selector {
    pub fn new(strategy: Strategy) -> Self {
        Selector {
            strategy,
            next: AtomicUsize::new(0),
        }
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn pick<'a>(&self, candidates: &'a [Candidate]) -> Option<&'a Candidate> {
        self.pick_with(candidates, &mut rand::thread_rng())
    }

    /// [`Selector::pick`] with a given random source (tests use a seeded one).
    pub fn pick_with<'a>(
        &self,
        candidates: &'a [Candidate],
        rng: &mut impl Rng,
    ) -> Option<&'a Candidate> {
        if candidates.is_empty() {
            return None;
        }
        let n = candidates.len();
        let index = match self.strategy {
            Strategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            Strategy::Random => rng.gen_range(0..n),
            Strategy::LeastLoaded => {
                less_loaded_of_two(candidates, |c| c.load.unwrap_or(f64::MAX), rng)?
            }
        };
        Some(&candidates[index])
    }
}

/// Power of two choices: the index of the less loaded of two different items picked at
/// random (the first on a tie; the only one of one; `None` of none). Clients picking a node
/// and the in-node router picking a peer both use it.
pub fn less_loaded_of_two<T>(
    items: &[T],
    load: impl Fn(&T) -> f64,
    rng: &mut impl Rng,
) -> Option<usize> {
    match items.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = rng.gen_range(0..n);
            // A second, different index: draw from n-1 and skip over `a`.
            let b = (a + 1 + rng.gen_range(0..n - 1)) % n;
            Some(if load(&items[b]) < load(&items[a]) {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn loaded(name: &str, load: f64) -> Candidate {
        Candidate {
            load: Some(load),
            tokens_per_second: Some(10.0 / (load + 0.1)),
            ..Candidate::from_endpoint(name)
        }
    }

    #[test]
    fn two_choices_never_take_the_busiest_and_reach_the_rest() {
        let loads = [0.0, 0.5, 1.0];
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = [0; 3];
        for _ in 0..300 {
            seen[less_loaded_of_two(&loads, |l| *l, &mut rng).unwrap()] += 1;
        }
        assert_eq!(seen[2], 0, "the busiest loses every pair it is in");
        // The idlest wins both pairs it is in (2 of 3), the middle one the third.
        assert!(seen[0] > seen[1] && seen[1] > 0, "{seen:?}");
        assert_eq!(less_loaded_of_two(&[5.0], |l| *l, &mut rng), Some(0));
        assert_eq!(less_loaded_of_two(&[] as &[f64], |l| *l, &mut rng), None);
    }

    #[test]
    fn round_robin_cycles_in_order() {
        let nodes = StaticDiscovery::new(["http://a", "http://b", "http://c"]).nodes(None);
        let selector = Selector::new(Strategy::RoundRobin);
        let picked: Vec<&str> = (0..5)
            .map(|_| selector.pick(&nodes).unwrap().endpoint.as_str())
            .collect();
        assert_eq!(
            picked,
            vec!["http://a", "http://b", "http://c", "http://a", "http://b"]
        );
    }

    #[test]
    fn random_reaches_every_candidate() {
        let nodes = StaticDiscovery::new(["a", "b", "c", "d"]).nodes(None);
        let selector = Selector::new(Strategy::Random);
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(
                selector
                    .pick_with(&nodes, &mut rng)
                    .unwrap()
                    .endpoint
                    .clone(),
            );
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn least_loaded_never_picks_the_busiest_and_favours_the_idle() {
        let nodes = vec![
            loaded("idle", 0.0),
            loaded("half", 0.5),
            loaded("busy", 1.0),
            loaded("full", 2.0),
        ];
        let selector = Selector::new(Strategy::LeastLoaded);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..1000 {
            let c = selector.pick_with(&nodes, &mut rng).unwrap();
            *counts.entry(c.endpoint.clone()).or_insert(0) += 1;
        }
        // Two distinct draws: the most loaded can never win, the least loaded wins whenever
        // drawn (half of all pairs).
        assert_eq!(counts.get("full"), None);
        assert!(counts["idle"] > 400, "{counts:?}");
        assert!(counts["idle"] > counts["half"] && counts["half"] > counts["busy"]);
    }

    #[test]
    fn single_and_empty_lists() {
        let selector = Selector::new(Strategy::LeastLoaded);
        assert!(selector.pick(&[]).is_none());
        let one = [Candidate::from_endpoint("only")];
        assert_eq!(selector.pick(&one).unwrap().endpoint, "only");
    }

    #[test]
    fn filters_drop_slow_and_busy_but_keep_unknown() {
        let filter = Filter {
            min_tokens_per_second: Some(5.0),
            max_load: Some(1.0),
        };
        let kept = filter.apply(vec![
            loaded("idle", 0.0),
            loaded("overloaded", 1.5),
            Candidate {
                tokens_per_second: Some(1.0),
                load: Some(0.0),
                ..Candidate::from_endpoint("slow")
            },
            Candidate::from_endpoint("unknown"),
        ]);
        let names: Vec<&str> = kept.iter().map(|c| c.endpoint.as_str()).collect();
        assert_eq!(names, vec!["idle", "unknown"]);
    }

    #[test]
    fn strategies_parse_from_their_names() {
        assert_eq!("round_robin".parse(), Ok(Strategy::RoundRobin));
        assert_eq!("least-loaded".parse(), Ok(Strategy::LeastLoaded));
        assert!("fastest".parse::<Strategy>().is_err());
    }

    #[test]
    fn candidates_from_heartbeats_carry_load_and_models() {
        let hb = crate::heartbeat::samples::sample(PeerId::random(), 1);
        let c = Candidate::from_heartbeat(&hb).unwrap();
        assert_eq!(c.endpoint, "http://127.0.0.1:8080");
        assert_eq!(c.load, Some(0.25));
        assert!(c.may_serve("qwen2.5-0.5b") && !c.may_serve("other"));
        assert!(Candidate::from_endpoint("x").may_serve("anything"));
    }

    #[tokio::test]
    async fn waiting_for_more_nodes_than_exist_times_out_with_the_count() {
        let source = StaticDiscovery::new(["a"]);
        let err = wait_for_nodes(&source, None, 2, Duration::from_millis(150))
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            DiscoveryError::NotEnough {
                found: 1,
                wanted: 2,
                ..
            }
        ));
        assert_eq!(
            wait_for_nodes(&source, None, 1, Duration::ZERO)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
