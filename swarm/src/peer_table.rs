//! The peer table: every node's latest verified heartbeat, as this node has seen it.
//!
//! It is the swarm's view of "who serves what, and how busy": the router picks peers from it,
//! `GET /v1/models` lists its models, `GET /v1/swarm` returns its snapshot, the operator
//! mirrors it into status. Only heartbeats that passed verification get here; this module
//! does no cryptography.
//!
//! Liveness comes only from heartbeats (never from DHT records, whose TTLs are hours): an
//! entry not refreshed within `expiry_intervals` of its sender's announced heartbeat interval
//! is gone. Queries never return an expired entry, even between two [`PeerTable::expire`]
//! sweeps. Time comes from a [`Clock`] so tests can move it by hand.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use super::heartbeat::{ColdModel, Heartbeat, ModelInfo};

/// A source of monotonic time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock(Mutex<Instant>);

impl ManualClock {
    pub fn new() -> Self {
        ManualClock(Mutex::new(Instant::now()))
    }

    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

/// How the table ages entries, and what it holds at most.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryPolicy {
    /// An entry lives this many of its sender's heartbeat intervals after its last heartbeat.
    pub intervals: u32,
    /// Bounds on the announced interval, so a peer cannot pin its entry for hours (or make it
    /// flap) by announcing an absurd interval.
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// Most peers in the table; a new peer beyond it is refused (with a pre-shared key no
    /// stranger gets this far; in a public swarm it bounds what fake identities cost).
    pub max_peers: usize,
    /// Most new heartbeats a peer may send within one of its (clamped) intervals. Honest
    /// nodes send one per interval plus a few on news (model loaded, a newcomer joined).
    pub max_per_interval: u32,
}

impl Default for ExpiryPolicy {
    fn default() -> Self {
        ExpiryPolicy {
            intervals: 3,
            min_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(60),
            max_peers: 4096,
            max_per_interval: 8,
        }
    }
}

impl ExpiryPolicy {
    /// The heartbeat's announced interval within the bounds.
    pub fn interval(&self, heartbeat: &Heartbeat) -> Duration {
        Duration::from_millis(heartbeat.interval_ms).clamp(self.min_interval, self.max_interval)
    }

    /// How long an entry with this heartbeat stays.
    pub fn ttl(&self, heartbeat: &Heartbeat) -> Duration {
        self.interval(heartbeat) * self.intervals
    }
}

/// One peer's entry.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub heartbeat: Heartbeat,
    /// When the latest heartbeat arrived here (local clock).
    pub received_at: Instant,
    /// When the entry expires unless refreshed.
    pub expires_at: Instant,
    /// When this peer first appeared in the table (since its last absence).
    pub first_seen: Instant,
    /// Start of the current rate window and the heartbeats accepted in it.
    window: (Instant, u32),
}

/// What an insert did, so the caller can log joins and count stale replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// A peer the table did not have.
    Joined,
    /// A newer heartbeat of a known peer.
    Refreshed,
    /// Not newer than what the table holds (a duplicate or replay); ignored.
    Stale,
    /// More new heartbeats within one interval than the policy allows; dropped.
    TooFrequent,
    /// A new peer, but the table is full; dropped.
    Full,
}

/// The peer table. Share it as [`SharedPeerTable`].
#[derive(Debug)]
pub struct PeerTable {
    entries: HashMap<PeerId, PeerEntry>,
    policy: ExpiryPolicy,
    clock: Arc<dyn Clock>,
}

/// How the table is shared between the swarm task (writer) and everyone else (readers).
pub type SharedPeerTable = Arc<std::sync::RwLock<PeerTable>>;

impl Default for PeerTable {
    fn default() -> Self {
        Self::new(ExpiryPolicy::default())
    }
}

impl PeerTable {
    pub fn new(policy: ExpiryPolicy) -> Self {
        Self::with_clock(policy, Arc::new(SystemClock))
    }

    pub fn with_clock(policy: ExpiryPolicy, clock: Arc<dyn Clock>) -> Self {
        PeerTable {
            entries: HashMap::new(),
            policy,
            clock,
        }
    }

    pub fn policy(&self) -> ExpiryPolicy {
        self.policy
    }

    /// Records a verified heartbeat. Older or repeated heartbeats of a peer are ignored, so a
    /// replayed heartbeat of a dead node cannot keep it alive.
    pub fn insert(&mut self, heartbeat: Heartbeat) -> Update {
        let now = self.clock.now();
        let expires_at = now + self.policy.ttl(&heartbeat);
        let interval = self.policy.interval(&heartbeat);
        let max_per_interval = self.policy.max_per_interval;
        match self.entries.get_mut(&heartbeat.peer_id) {
            Some(entry) if entry.expires_at > now => {
                // Every distinct message counts, stale ones too: gossip delivers each
                // message once, so only the author can send many, and each costs a check.
                let (start, count) = &mut entry.window;
                if now.duration_since(*start) >= interval {
                    (*start, *count) = (now, 0);
                }
                if *count >= max_per_interval {
                    return Update::TooFrequent;
                }
                *count += 1;
                if heartbeat.order() <= entry.heartbeat.order() {
                    return Update::Stale;
                }
                entry.heartbeat = heartbeat;
                entry.received_at = now;
                entry.expires_at = expires_at;
                Update::Refreshed
            }
            existing => {
                if existing.is_none() && self.entries.len() >= self.policy.max_peers {
                    self.expire();
                    if self.entries.len() >= self.policy.max_peers {
                        return Update::Full;
                    }
                }
                // Either unknown, or expired but not yet swept: both are a (re)join. An
                // expired entry's order is not trusted any more, which lets a peer whose
                // clock went backwards come back after a restart.
                self.entries.insert(
                    heartbeat.peer_id,
                    PeerEntry {
                        heartbeat,
                        received_at: now,
                        expires_at,
                        first_seen: now,
                        window: (now, 1),
                    },
                );
                Update::Joined
            }
        }
    }

    /// Drops expired entries and returns their peer ids.
    pub fn expire(&mut self) -> Vec<PeerId> {
        let now = self.clock.now();
        let gone: Vec<PeerId> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.expires_at <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &gone {
            self.entries.remove(peer);
        }
        gone
    }

    /// Removes a peer at once (e.g. the local node on shutdown).
    pub fn remove(&mut self, peer: &PeerId) -> Option<PeerEntry> {
        self.entries.remove(peer)
    }

    /// A live peer's entry.
    pub fn get(&self, peer: &PeerId) -> Option<&PeerEntry> {
        let now = self.clock.now();
        self.entries.get(peer).filter(|e| e.expires_at > now)
    }

    /// All live entries.
    pub fn live(&self) -> impl Iterator<Item = &PeerEntry> {
        let now = self.clock.now();
        self.entries.values().filter(move |e| e.expires_at > now)
    }

    /// Number of live peers.
    pub fn len(&self) -> usize {
        self.live().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live peers that serve `model`, healthy ones only, least loaded first.
    pub fn peers_serving(&self, model: &str) -> Vec<&PeerEntry> {
        let mut peers: Vec<&PeerEntry> = self
            .live()
            .filter(|e| e.heartbeat.status.healthy && e.heartbeat.status.serves(model))
            .collect();
        peers.sort_by(|a, b| {
            a.heartbeat
                .status
                .load()
                .total_cmp(&b.heartbeat.status.load())
                .then_with(|| a.heartbeat.peer_id.cmp(&b.heartbeat.peer_id))
        });
        peers
    }

    /// Every model served by a live, healthy peer, by id, with the peers serving it.
    pub fn models(&self) -> BTreeMap<String, ModelSummary> {
        let mut models: BTreeMap<String, ModelSummary> = BTreeMap::new();
        for entry in self.live().filter(|e| e.heartbeat.status.healthy) {
            for model in &entry.heartbeat.status.models {
                let summary = models
                    .entry(model.id.clone())
                    .or_insert_with(|| ModelSummary {
                        info: model.clone(),
                        peers: Vec::new(),
                    });
                summary.peers.push(entry.heartbeat.peer_id);
            }
        }
        for summary in models.values_mut() {
            summary.peers.sort();
        }
        models
    }

    /// Live peers that can wake `model` (operators advertising it as cold), by peer id.
    pub fn cold(&self, model: &str) -> Vec<(PeerId, ColdModel)> {
        let mut cold: Vec<(PeerId, ColdModel)> = self
            .live()
            .flat_map(|e| {
                e.heartbeat
                    .status
                    .cold
                    .iter()
                    .filter(|c| c.id == model)
                    .map(|c| (e.heartbeat.peer_id, c.clone()))
            })
            .collect();
        cold.sort_by_key(|(peer, _)| *peer);
        cold
    }

    /// Ids of every model a live peer advertises as cold.
    pub fn cold_models(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .live()
            .flat_map(|e| e.heartbeat.status.cold.iter().map(|c| c.id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// A serializable copy of the live table (what `GET /v1/swarm` returns), sorted by peer id.
    pub fn snapshot(&self) -> PeerTableSnapshot {
        let now = self.clock.now();
        let mut peers: Vec<PeerSnapshot> = self
            .live()
            .map(|entry| PeerSnapshot {
                heartbeat: entry.heartbeat.clone(),
                age_ms: now.saturating_duration_since(entry.received_at).as_millis() as u64,
                expires_in_ms: entry.expires_at.saturating_duration_since(now).as_millis() as u64,
            })
            .collect();
        peers.sort_by_key(|p| p.heartbeat.peer_id);
        PeerTableSnapshot { peers }
    }
}

/// A model and who serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    /// The model as the first peer listed it (context size and quantization may differ
    /// between peers; the router only needs the id).
    pub info: ModelInfo,
    pub peers: Vec<PeerId>,
}

/// The live table as JSON-ready data: what a node's `GET /v1/swarm` returns, and what
/// `llamanet monitor` and `check` read back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerTableSnapshot {
    pub peers: Vec<PeerSnapshot>,
}

impl PeerTableSnapshot {
    /// Every model served by a healthy peer, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.heartbeat.status.healthy)
            .flat_map(|p| p.heartbeat.status.models.iter().map(|m| m.id.clone()))
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// The longest heartbeat interval announced: after that long every live peer has
    /// spoken at least once.
    pub fn longest_interval(&self) -> Duration {
        let ms = self
            .peers
            .iter()
            .map(|p| p.heartbeat.interval_ms)
            .max()
            .unwrap_or(0);
        Duration::from_millis(ms)
    }
}

/// One peer in a snapshot: its latest heartbeat and how fresh it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerSnapshot {
    #[serde(flatten)]
    pub heartbeat: Heartbeat,
    /// Time since its latest heartbeat arrived at the node that made the snapshot.
    #[serde(default)]
    pub age_ms: u64,
    /// Time until the entry expires unless refreshed.
    #[serde(default)]
    pub expires_in_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::samples::sample;

    fn table() -> (PeerTable, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (
            PeerTable::with_clock(ExpiryPolicy::default(), clock.clone()),
            clock,
        )
    }

    #[test]
    fn entries_expire_after_three_of_the_senders_intervals() {
        let (mut table, clock) = table();
        let peer = PeerId::random();
        assert_eq!(table.insert(sample(peer, 1)), Update::Joined);
        // sample() announces a 2 s interval: alive until 6 s.
        clock.advance(Duration::from_millis(5_900));
        assert!(table.get(&peer).is_some());
        assert!(table.expire().is_empty());
        clock.advance(Duration::from_millis(200));
        // Invisible to queries before any sweep, then swept.
        assert!(table.get(&peer).is_none());
        assert_eq!(table.len(), 0);
        assert_eq!(table.expire(), vec![peer]);
    }

    #[test]
    fn refresh_extends_life_and_replays_are_stale() {
        let (mut table, clock) = table();
        let peer = PeerId::random();
        table.insert(sample(peer, 1));
        clock.advance(Duration::from_secs(4));
        assert_eq!(table.insert(sample(peer, 2)), Update::Refreshed);
        assert_eq!(table.insert(sample(peer, 2)), Update::Stale);
        assert_eq!(table.insert(sample(peer, 1)), Update::Stale);
        clock.advance(Duration::from_secs(4));
        assert!(
            table.get(&peer).is_some(),
            "refreshed at 4 s, lives to 10 s"
        );
        assert_eq!(table.get(&peer).unwrap().heartbeat.seq, 2);
    }

    #[test]
    fn restarted_peer_with_new_run_replaces_old_sequence() {
        let (mut table, _clock) = table();
        let peer = PeerId::random();
        table.insert(sample(peer, 50));
        let mut restarted = sample(peer, 1);
        restarted.started_at_ms += 60_000;
        assert_eq!(table.insert(restarted), Update::Refreshed);
    }

    #[test]
    fn a_peer_flooding_new_heartbeats_is_cut_off_within_its_interval() {
        let (mut table, clock) = table();
        let peer = PeerId::random();
        assert_eq!(table.insert(sample(peer, 1)), Update::Joined);
        // sample() announces 2 s: 8 heartbeats a window (the first counted), then refused.
        let mut seq = 2;
        for _ in 1..8 {
            assert_eq!(table.insert(sample(peer, seq)), Update::Refreshed);
            seq += 1;
        }
        assert_eq!(table.insert(sample(peer, seq)), Update::TooFrequent);
        assert_eq!(table.get(&peer).unwrap().heartbeat.seq, seq - 1);
        // The next interval opens a new window.
        clock.advance(Duration::from_secs(2));
        assert_eq!(table.insert(sample(peer, seq + 1)), Update::Refreshed);
    }

    #[test]
    fn a_full_table_refuses_newcomers_until_someone_expires() {
        let clock = Arc::new(ManualClock::new());
        let policy = ExpiryPolicy {
            max_peers: 3,
            ..ExpiryPolicy::default()
        };
        let mut table = PeerTable::with_clock(policy, clock.clone());
        for _ in 0..3 {
            assert_eq!(table.insert(sample(PeerId::random(), 1)), Update::Joined);
        }
        let late = PeerId::random();
        assert_eq!(table.insert(sample(late, 1)), Update::Full);
        assert!(table.get(&late).is_none());
        // Known peers still refresh; once the others expire the newcomer gets in.
        clock.advance(Duration::from_secs(7));
        assert_eq!(table.insert(sample(late, 1)), Update::Joined);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn announced_interval_is_clamped() {
        let (mut table, clock) = table();
        let peer = PeerId::random();
        let mut hb = sample(peer, 1);
        hb.interval_ms = 86_400_000;
        table.insert(hb);
        clock.advance(Duration::from_secs(181));
        assert!(table.get(&peer).is_none(), "capped at 3 x 60 s");
    }

    #[test]
    fn model_queries_skip_unhealthy_and_sort_by_load() {
        let (mut table, _clock) = table();
        let (a, b, c, d) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut busy = sample(a, 1);
        busy.status.slots_busy = 4;
        let idle = {
            let mut hb = sample(b, 1);
            hb.status.slots_busy = 0;
            hb
        };
        let mut sick = sample(c, 1);
        sick.status.healthy = false;
        let mut other = sample(d, 1);
        other.status.models[0].id = "llama-3.2-1b".into();
        for hb in [busy, idle, sick, other] {
            table.insert(hb);
        }
        let serving: Vec<PeerId> = table
            .peers_serving("qwen2.5-0.5b")
            .iter()
            .map(|e| e.heartbeat.peer_id)
            .collect();
        assert_eq!(serving, vec![b, a]);
        let models = table.models();
        assert_eq!(
            models.keys().collect::<Vec<_>>(),
            vec!["llama-3.2-1b", "qwen2.5-0.5b"]
        );
        assert_eq!(models["qwen2.5-0.5b"].peers.len(), 2);
        assert!(table.peers_serving("missing").is_empty());
    }

    #[test]
    fn snapshot_serializes_flat_with_ages() {
        let (mut table, clock) = table();
        let peer = PeerId::random();
        table.insert(sample(peer, 3));
        clock.advance(Duration::from_millis(1500));
        let json = serde_json::to_value(table.snapshot()).unwrap();
        let first = &json["peers"][0];
        assert_eq!(first["peer_id"], peer.to_string());
        assert_eq!(first["seq"], 3);
        assert_eq!(first["age_ms"], 1500);
        assert_eq!(first["expires_in_ms"], 4500);
        assert_eq!(first["models"][0]["quantization"], "Q4_K_M");
    }
}
