//! Choosing where a request runs: here, or on which peer, and in which order to try peers
//! if the first fails. Pure: the peer table comes in through [`PeerSource`], randomness
//! through an `Rng`, so every decision is reproducible in tests.
//!
//! The rules, in order:
//! 1. Candidates are live, healthy peers that serve the model, this node excluded, and not
//!    suspect (a peer that just failed an attempt, see `breaker.rs`).
//! 2. The preferred candidate is the less loaded of two picked at random (power of two
//!    choices: close to always taking the least loaded, without every router stampeding the
//!    same idle peer between two heartbeats). With prompt-prefix affinity, the peer that
//!    rendezvous hashing assigns to the prefix is preferred instead while its load is not
//!    clearly worse, so repeated prefixes meet a warm KV cache.
//! 3. A node that serves the model itself goes first unless that candidate is clearly less
//!    loaded, or it is saturated and the candidate is less loaded: a hop costs a stream and
//!    a copy, so near-ties stay local.
//! 4. The plan lists every candidate worth an attempt, in order: the chosen one, the other
//!    peers least loaded first (at most `max_attempts` peers), this node whenever it serves
//!    the model (first or as the last resort), and suspects at the very end. A request
//!    fails only when every one of them failed before answering.
//!
//! Load is `(slots_busy + queue_depth) / slots_total` as the heartbeats report it.

use libp2p::PeerId;
use rand::Rng;

use super::breaker::Order;
use crate::swarm::{ColdModel, Heartbeat, SwarmHandle};

/// Where peers and their load come from: the swarm's peer table in a node, a fixed list in
/// tests.
pub trait PeerSource: Send + Sync {
    /// Latest heartbeats of live, healthy peers serving `model` (any order).
    fn peers_serving(&self, model: &str) -> Vec<Heartbeat>;
    /// Every model served in the swarm, sorted.
    fn models(&self) -> Vec<String>;
    /// The order of `peer`'s latest heartbeat, if it is live.
    fn order_of(&self, peer: &PeerId) -> Option<Order>;
    /// Live operators that can wake `model`, which nobody serves now.
    fn cold(&self, _model: &str) -> Vec<(PeerId, ColdModel)> {
        Vec::new()
    }
}

impl PeerSource for SwarmHandle {
    fn peers_serving(&self, model: &str) -> Vec<Heartbeat> {
        SwarmHandle::peers_serving(self, model)
    }

    fn order_of(&self, peer: &PeerId) -> Option<Order> {
        self.heartbeat_of(peer).map(|h| h.order())
    }

    fn models(&self) -> Vec<String> {
        SwarmHandle::models(self).into_keys().collect()
    }

    fn cold(&self, model: &str) -> Vec<(PeerId, ColdModel)> {
        SwarmHandle::cold(self, model)
    }
}

/// A fixed set of heartbeats (tests, benchmarks). Unhealthy ones are skipped, as the peer
/// table skips them.
impl PeerSource for Vec<Heartbeat> {
    fn peers_serving(&self, model: &str) -> Vec<Heartbeat> {
        self.iter()
            .filter(|h| h.status.healthy && h.status.serves(model))
            .cloned()
            .collect()
    }

    fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .iter()
            .filter(|h| h.status.healthy)
            .flat_map(|h| h.status.models.iter().map(|m| m.id.clone()))
            .collect();
        models.sort();
        models.dedup();
        models
    }

    fn order_of(&self, peer: &PeerId) -> Option<Order> {
        self.iter().find(|h| h.peer_id == *peer).map(|h| h.order())
    }
}

/// The knobs of [`pick`]. `Default` is what a node uses.
#[derive(Debug, Clone, PartialEq)]
pub struct PickPolicy {
    /// A peer is "clearly less loaded" when our load exceeds its load by at least this much.
    pub clearly_less: f64,
    /// At or above this load we count as saturated (every slot busy): then any less loaded
    /// peer is worth a hop.
    pub saturated: f64,
    /// The affine peer is kept unless its load exceeds the best random choice's by this
    /// much.
    pub affinity_slack: f64,
    /// Characters of the prompt that make the affinity key; 0 turns affinity off.
    pub affinity_chars: usize,
    /// Peers tried per request: the chosen one plus failovers.
    pub max_attempts: usize,
}

impl Default for PickPolicy {
    fn default() -> Self {
        PickPolicy {
            clearly_less: 0.5,
            saturated: 1.0,
            affinity_slack: 0.5,
            // About a system prompt's worth: long enough to tell conversations apart, short
            // enough that requests sharing a system prompt land together.
            affinity_chars: 512,
            max_attempts: 3,
        }
    }
}

/// What is being routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRequest<'a> {
    pub model: &'a str,
    /// Hash of the prompt prefix ([`affinity_of`]); `None` for no affinity.
    pub affinity: Option<u64>,
}

/// This node's side of a decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalState {
    pub peer_id: PeerId,
    /// Whether this node serves the model (loaded and healthy).
    pub serves: bool,
    /// This node's load, same formula as the heartbeats'.
    pub load: f64,
}

/// A peer to send to.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub peer_id: PeerId,
    pub load: f64,
    /// The heartbeat it was chosen on (for the breaker: evidence must be newer).
    pub order: Order,
    /// Its model file's fingerprint (a broken stream continues only on an equal one).
    pub fingerprint: String,
}

impl Target {
    fn from_heartbeat(heartbeat: &Heartbeat, model: &str) -> Self {
        Target {
            peer_id: heartbeat.peer_id,
            load: heartbeat.status.load(),
            order: heartbeat.order(),
            fingerprint: heartbeat
                .status
                .models
                .iter()
                .find(|m| m.id == model)
                .map(|m| m.fingerprint.clone())
                .unwrap_or_default(),
        }
    }
}

/// Where an attempt goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidate {
    /// This node's own handler.
    Local,
    Peer(Target),
}

impl Candidate {
    pub fn peer(&self) -> Option<&Target> {
        match self {
            Candidate::Local => None,
            Candidate::Peer(target) => Some(target),
        }
    }
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// Try these in order until one answers.
    Serve(Vec<Candidate>),
    /// Nobody, this node included, serves the model.
    NotServed,
}

impl Route {
    /// Whether the first attempt stays on this node.
    pub fn is_local_first(&self) -> bool {
        matches!(self, Route::Serve(plan) if plan.first() == Some(&Candidate::Local))
    }
}

/// Decides where a request for `request.model` runs (see the module docs for the rules).
/// `suspect` says which peers just failed (the breakers).
pub fn pick(
    peers: &dyn PeerSource,
    local: &LocalState,
    request: &RouteRequest<'_>,
    policy: &PickPolicy,
    rng: &mut impl Rng,
    suspect: &mut dyn FnMut(&PeerId) -> bool,
) -> Route {
    let (mut candidates, mut suspects): (Vec<Target>, Vec<Target>) = peers
        .peers_serving(request.model)
        .iter()
        .filter(|h| h.peer_id != local.peer_id)
        .map(|h| Target::from_heartbeat(h, request.model))
        .partition(|t| !suspect(&t.peer_id));
    // Least loaded first (ties by peer id) so failover order does not depend on the source.
    let by_load = |a: &Target, b: &Target| {
        a.load
            .total_cmp(&b.load)
            .then_with(|| a.peer_id.cmp(&b.peer_id))
    };
    candidates.sort_by(by_load);
    suspects.sort_by(by_load);
    let max_peers = policy.max_attempts.max(1);

    let mut plan = Vec::new();
    if candidates.is_empty() {
        if local.serves {
            plan.push(Candidate::Local);
        }
    } else {
        let chosen = choose(&candidates, request.affinity, policy, rng);
        let local_first = local.serves && {
            let peer_load = candidates[chosen].load;
            let clearly_less = local.load - peer_load >= policy.clearly_less;
            let saturated = local.load >= policy.saturated && peer_load < local.load;
            !(clearly_less || saturated)
        };
        if local_first {
            plan.push(Candidate::Local);
        }
        let first = candidates.remove(chosen);
        plan.extend(
            std::iter::once(first)
                .chain(candidates)
                .take(max_peers)
                .map(Candidate::Peer),
        );
        if local.serves && !local_first {
            plan.push(Candidate::Local);
        }
    }
    let peers_planned = plan.iter().filter(|c| c.peer().is_some()).count();
    plan.extend(
        suspects
            .into_iter()
            .take(max_peers.saturating_sub(peers_planned))
            .map(Candidate::Peer),
    );
    if plan.is_empty() {
        Route::NotServed
    } else {
        Route::Serve(plan)
    }
}

/// Index of the preferred candidate among `candidates` (non-empty, sorted by load).
fn choose(
    candidates: &[Target],
    affinity: Option<u64>,
    policy: &PickPolicy,
    rng: &mut impl Rng,
) -> usize {
    let random = crate::swarm::discovery::less_loaded_of_two(candidates, |c| c.load, rng)
        .expect("candidates is not empty");
    let Some(key) = affinity.filter(|_| policy.affinity_chars > 0) else {
        return random;
    };
    let affine = candidates
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| rendezvous_score(key, &c.peer_id))
        .map(|(i, _)| i)
        .expect("candidates is not empty");
    if candidates[affine].load - candidates[random].load < policy.affinity_slack {
        affine
    } else {
        random
    }
}

/// Rendezvous (highest random weight) hashing: every router ranks peers for a key the same
/// way, and removing a peer moves only the keys it owned.
fn rendezvous_score(key: u64, peer: &PeerId) -> u64 {
    mix(key ^ fnv1a(&peer.to_bytes()))
}

/// The affinity key of a request body: a hash of the first `chars` characters of its
/// prompt (`prompt` of a completion, or the roles and text of a chat's `messages`). `None`
/// when affinity is off (`chars == 0`) or the body has no prompt.
pub fn affinity_of(body: &[u8], chars: usize) -> Option<u64> {
    if chars == 0 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut prefix = String::new();
    if let Some(messages) = value.get("messages").and_then(|m| m.as_array()) {
        for message in messages {
            if prefix.chars().count() >= chars {
                break;
            }
            if let Some(role) = message.get("role").and_then(|r| r.as_str()) {
                prefix.push_str(role);
                prefix.push('\n');
            }
            push_text(&mut prefix, message.get("content"));
            prefix.push('\n');
        }
    } else {
        push_text(&mut prefix, value.get("prompt"));
    }
    if prefix.is_empty() {
        return None;
    }
    let cut = prefix
        .char_indices()
        .nth(chars)
        .map_or(prefix.len(), |(i, _)| i);
    Some(fnv1a(&prefix.as_bytes()[..cut]))
}

/// Appends the text of an OpenAI content value: a string, an array of strings (a batch
/// prompt: the first counts) or of `{"type":"text","text":...}` parts.
fn push_text(out: &mut String, content: Option<&serde_json::Value>) {
    match content {
        Some(serde_json::Value::String(text)) => out.push_str(text),
        Some(serde_json::Value::Array(parts)) => {
            for part in parts {
                if let Some(text) = part.as_str() {
                    out.push_str(text);
                    return;
                }
                if let Some(text) = part.get("text").and_then(|t| t.as_str()) {
                    out.push_str(text);
                }
            }
        }
        _ => {}
    }
}

/// FNV-1a, 64 bit: stable across builds and machines (std's hasher promises neither), so
/// every router in a mixed-version swarm maps a prefix to the same peer.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// splitmix64's finalizer: spreads FNV's weak low bits before comparing scores.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::swarm::{ModelInfo, NodeStatus};

    const MODEL: &str = "qwen2.5-0.5b";

    fn peer(busy: u32, queue: u32) -> Heartbeat {
        let peer_id = PeerId::random();
        Heartbeat {
            peer_id,
            seq: 1,
            started_at_ms: 0,
            timestamp_ms: 0,
            interval_ms: 2000,
            uptime_s: 0,
            swarm_addrs: Vec::new(),
            status: NodeStatus {
                endpoints: vec![format!("http://{peer_id}")],
                models: vec![ModelInfo {
                    id: MODEL.into(),
                    context_size: 4096,
                    quantization: String::new(),
                    fingerprint: String::new(),
                }],
                slots_busy: busy,
                slots_total: 4,
                queue_depth: queue,
                healthy: true,
                ..NodeStatus::default()
            },
        }
    }

    fn router_only() -> LocalState {
        LocalState {
            peer_id: PeerId::random(),
            serves: false,
            load: f64::INFINITY,
        }
    }

    fn serving(load: f64) -> LocalState {
        LocalState {
            serves: true,
            load,
            ..router_only()
        }
    }

    fn ask(affinity: Option<u64>) -> RouteRequest<'static> {
        RouteRequest {
            model: MODEL,
            affinity,
        }
    }

    /// The plan in order: `None` for this node, `Some(peer)` for a peer.
    fn plan(route: &Route) -> Vec<Option<PeerId>> {
        match route {
            Route::Serve(plan) => plan.iter().map(|c| c.peer().map(|t| t.peer_id)).collect(),
            Route::NotServed => panic!("expected a plan, got NotServed"),
        }
    }

    /// The peers of a plan that starts with a peer.
    fn forwarded_to(route: Route) -> Vec<PeerId> {
        let plan = plan(&route);
        assert!(plan[0].is_some(), "expected a forward first, got {route:?}");
        plan.into_iter().flatten().collect()
    }

    #[test]
    fn nobody_serving_is_not_served_unless_we_do() {
        let peers: Vec<Heartbeat> = Vec::new();
        let mut rng = StdRng::seed_from_u64(1);
        let policy = PickPolicy::default();
        assert_eq!(
            pick(
                &peers,
                &router_only(),
                &ask(None),
                &policy,
                &mut rng,
                &mut |_| false
            ),
            Route::NotServed
        );
        assert_eq!(
            pick(
                &peers,
                &serving(3.0),
                &ask(None),
                &policy,
                &mut rng,
                &mut |_| false
            ),
            Route::Serve(vec![Candidate::Local])
        );
    }

    #[test]
    fn self_and_unhealthy_peers_are_never_candidates_endpoints_do_not_matter() {
        // Forwards travel over swarm streams: an HTTP endpoint is not needed.
        let local = serving(2.0);
        let mut me = peer(0, 0);
        me.peer_id = local.peer_id;
        let mut sick = peer(0, 0);
        sick.status.healthy = false;
        let mut silent = peer(4, 0);
        silent.status.endpoints.clear();
        let silent_id = silent.peer_id;
        let peers = vec![me, sick, silent];
        let mut rng = StdRng::seed_from_u64(2);
        let route = pick(
            &peers,
            &local,
            &ask(None),
            &PickPolicy::default(),
            &mut rng,
            &mut |_| false,
        );
        assert_eq!(plan(&route), vec![Some(silent_id), None]);
    }

    #[test]
    fn power_of_two_never_picks_the_busiest_and_favours_the_idle() {
        let peers = vec![peer(0, 0), peer(2, 0), peer(4, 0), peer(4, 4)];
        let names: HashMap<PeerId, &str> = peers
            .iter()
            .map(|h| h.peer_id)
            .zip(["idle", "half", "busy", "full"])
            .collect();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for _ in 0..1000 {
            let route = pick(
                &peers,
                &router_only(),
                &ask(None),
                &PickPolicy::default(),
                &mut rng,
                &mut |_| false,
            );
            *counts.entry(names[&forwarded_to(route)[0]]).or_default() += 1;
        }
        assert_eq!(counts.get("full"), None, "{counts:?}");
        assert!(counts["idle"] > 400, "{counts:?}");
        assert!(counts["idle"] > counts["half"] && counts["half"] > counts["busy"]);
    }

    #[test]
    fn failover_order_is_chosen_then_least_loaded_capped_at_three() {
        let peers = vec![peer(3, 0), peer(0, 0), peer(1, 0), peer(2, 0), peer(4, 0)];
        let by_load: Vec<PeerId> = [1, 2, 3, 0, 4].iter().map(|&i| peers[i].peer_id).collect();
        let mut rng = StdRng::seed_from_u64(3);
        let targets = forwarded_to(pick(
            &peers,
            &router_only(),
            &ask(None),
            &PickPolicy::default(),
            &mut rng,
            &mut |_| false,
        ));
        assert_eq!(targets.len(), 3);
        let rest: Vec<PeerId> = by_load
            .iter()
            .copied()
            .filter(|p| *p != targets[0])
            .take(2)
            .collect();
        assert_eq!(targets[1..], rest[..]);
    }

    #[test]
    fn a_serving_node_forwards_only_to_a_clearly_less_loaded_peer() {
        let policy = PickPolicy::default();
        let mut rng = StdRng::seed_from_u64(4);
        // One peer at 0.25: we at 0.5 keep it (the peer backs us up), at 0.75 forward (we
        // back it up).
        let peers = vec![peer(1, 0)];
        let id = Some(peers[0].peer_id);
        let route = pick(
            &peers,
            &serving(0.5),
            &ask(None),
            &policy,
            &mut rng,
            &mut |_| false,
        );
        assert!(route.is_local_first());
        assert_eq!(plan(&route), vec![None, id]);
        let route = pick(
            &peers,
            &serving(0.75),
            &ask(None),
            &policy,
            &mut rng,
            &mut |_| false,
        );
        assert_eq!(plan(&route), vec![id, None]);
    }

    #[test]
    fn a_saturated_node_forwards_to_any_less_loaded_peer() {
        let policy = PickPolicy::default();
        let mut rng = StdRng::seed_from_u64(5);
        let peers = vec![peer(4, 0)];
        // Peer at 1.0: not less loaded than our 1.0; at 1.25 (queue) we hand it over.
        assert!(
            pick(
                &peers,
                &serving(1.0),
                &ask(None),
                &policy,
                &mut rng,
                &mut |_| false
            )
            .is_local_first()
        );
        assert_eq!(
            forwarded_to(pick(
                &peers,
                &serving(1.25),
                &ask(None),
                &policy,
                &mut rng,
                &mut |_| false
            ))
            .len(),
            1
        );
    }

    #[test]
    fn same_prefix_goes_to_the_same_peer_while_it_is_not_clearly_busier() {
        let peers: Vec<Heartbeat> = (0..5).map(|_| peer(1, 0)).collect();
        let key = affinity_of(br#"{"prompt":"You are a helpful assistant. Hi"}"#, 512);
        let policy = PickPolicy::default();
        let mut rng = StdRng::seed_from_u64(6);
        let first = forwarded_to(pick(
            &peers,
            &router_only(),
            &ask(key),
            &policy,
            &mut rng,
            &mut |_| false,
        ))[0];
        for _ in 0..50 {
            let again = forwarded_to(pick(
                &peers,
                &router_only(),
                &ask(key),
                &policy,
                &mut rng,
                &mut |_| false,
            ));
            assert_eq!(again[0], first);
        }
        // The affine peer fills up: now clearly busier than the others, affinity yields.
        let peers: Vec<Heartbeat> = peers
            .into_iter()
            .map(|mut h| {
                if h.peer_id == first {
                    h.status.slots_busy = 4;
                }
                h
            })
            .collect();
        for _ in 0..50 {
            let route = pick(
                &peers,
                &router_only(),
                &ask(key),
                &policy,
                &mut rng,
                &mut |_| false,
            );
            assert_ne!(forwarded_to(route)[0], first);
        }
    }

    #[test]
    fn different_prefixes_spread_over_peers() {
        let peers: Vec<Heartbeat> = (0..4).map(|_| peer(0, 0)).collect();
        let mut rng = StdRng::seed_from_u64(8);
        let mut owners = std::collections::HashSet::new();
        for i in 0..64 {
            let body = format!(r#"{{"prompt":"conversation {i}"}}"#);
            let key = affinity_of(body.as_bytes(), 512);
            let route = pick(
                &peers,
                &router_only(),
                &ask(key),
                &PickPolicy::default(),
                &mut rng,
                &mut |_| false,
            );
            owners.insert(forwarded_to(route)[0]);
        }
        assert_eq!(owners.len(), 4);
    }

    #[test]
    fn affinity_key_reads_chat_messages_and_prompts_up_to_the_prefix() {
        let chat = |user: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"system","content":"Be brief."}},{{"role":"user","content":[{{"type":"text","text":"{user}"}}]}}]}}"#
            )
        };
        let a = affinity_of(chat("hello").as_bytes(), 512);
        assert!(a.is_some());
        assert_eq!(a, affinity_of(chat("hello").as_bytes(), 512));
        assert_ne!(a, affinity_of(chat("goodbye").as_bytes(), 512));
        // Only the first 10 characters count: "system\nBe " is all the same.
        assert_eq!(
            affinity_of(chat("hello").as_bytes(), 10),
            affinity_of(chat("goodbye").as_bytes(), 10)
        );
        assert_eq!(
            affinity_of(br#"{"prompt":["abc","zzz"]}"#, 512),
            affinity_of(br#"{"prompt":"abc"}"#, 512)
        );
        assert_eq!(affinity_of(br#"{"prompt":"abc"}"#, 0), None);
        assert_eq!(affinity_of(br#"{"input":"abc"}"#, 512), None);
        assert_eq!(affinity_of(b"not json", 512), None);
    }

    #[test]
    fn the_heartbeat_list_source_lists_healthy_models_once() {
        let mut other = peer(0, 0);
        other.status.models[0].id = "llama-3.2-1b".into();
        let mut sick = peer(0, 0);
        sick.status.healthy = false;
        sick.status.models[0].id = "only-sick".into();
        let peers = vec![peer(0, 0), peer(1, 0), other, sick];
        assert_eq!(peers.models(), vec!["llama-3.2-1b", MODEL]);
        assert_eq!(PeerSource::peers_serving(&peers, MODEL).len(), 2);
    }

    #[test]
    fn a_burst_through_a_router_spreads_once_its_own_forwards_count() {
        // Two idle peers with the same figures: affinity alone sends every request of a
        // burst to one of them, until the forwards in flight make it look busier.
        let peers = vec![peer(0, 0), peer(0, 0)];
        let router = super::super::Router::new(
            std::sync::Arc::new(peers),
            PeerId::random(),
            PickPolicy::default(),
            super::super::ForwarderConfig::default(),
            None,
        );
        let request = RouteRequest {
            model: MODEL,
            affinity: Some(42),
        };
        let local = router_only();
        let mut rng = StdRng::seed_from_u64(7);
        let mut chosen = Vec::new();
        let mut guards = Vec::new();
        for _ in 0..4 {
            let first = forwarded_to(router.decide_with(&request, &local, &mut rng))[0];
            chosen.push(first);
            guards.push(router.inflight().begin(first));
        }
        let mut counts: HashMap<PeerId, usize> = HashMap::new();
        for peer in &chosen {
            *counts.entry(*peer).or_default() += 1;
        }
        // The affine peer keeps requests until it looks `affinity_slack` busier (2 of its
        // 4 slots), then shares: 3 and 1.
        assert_eq!(
            counts.len(),
            2,
            "both peers got part of the burst: {counts:?}"
        );
        assert_eq!(counts[&chosen[0]], 3, "{counts:?}");
        drop(guards);
        // With nothing in flight the affine peer is the choice again.
        let first = forwarded_to(router.decide_with(&request, &local, &mut rng))[0];
        assert_eq!(first, chosen[0]);
    }

    #[test]
    fn suspects_come_after_everyone_else_and_this_node_is_the_last_resort() {
        let peers = vec![peer(0, 0), peer(1, 0), peer(2, 0)];
        let bad = peers[0].peer_id;
        let policy = PickPolicy::default();
        let mut rng = StdRng::seed_from_u64(9);
        let mut suspect = |p: &PeerId| *p == bad;
        // We are saturated: peers first, then us, then the suspect.
        let route = pick(
            &peers,
            &serving(2.0),
            &ask(None),
            &policy,
            &mut rng,
            &mut suspect,
        );
        let order = plan(&route);
        assert_eq!(order.len(), 4, "{order:?}");
        assert!(order[0].is_some() && order[1].is_some());
        assert!(!order[..2].contains(&Some(bad)), "{order:?}");
        assert_eq!(&order[2..], [None, Some(bad)]);
        // A router with only a suspect left still tries it rather than answer 404.
        let only = vec![peers[0].clone()];
        let route = pick(
            &only,
            &router_only(),
            &ask(None),
            &policy,
            &mut rng,
            &mut suspect,
        );
        assert_eq!(plan(&route), vec![Some(bad)]);
    }

    #[test]
    fn plans_try_at_most_max_attempts_peers_but_always_this_node() {
        let peers: Vec<Heartbeat> = (0..6).map(|_| peer(0, 0)).collect();
        let policy = PickPolicy::default();
        let mut rng = StdRng::seed_from_u64(10);
        let route = pick(
            &peers,
            &serving(4.0),
            &ask(None),
            &policy,
            &mut rng,
            &mut |_| false,
        );
        let order = plan(&route);
        assert_eq!(order.len(), policy.max_attempts + 1);
        assert_eq!(order.last(), Some(&None));
    }
}
