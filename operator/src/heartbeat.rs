//! The heartbeat table: the newest heartbeat of every replica, by InferenceNode and pod, as
//! the operator received it. The swarm peer writes it, the reconciler reads it into status.
//! Shared between tasks, cheap to clone.
//!
//! Ownership is proven, not claimed: a heartbeat says which InferenceNode and pod sent it,
//! but any peer of the swarm can say that. The table keeps a heartbeat only when its signer
//! is the peer id of that pod's identity key, the one the operator itself wrote into
//! `<name>-identity` ([`HeartbeatTable::set_owners`], called by the reconciler). Everything
//! else is refused and counted by [`Rejection`], and the refused signers are remembered
//! (bounded) so the swarm-wide node count can leave impostors out. The table therefore holds
//! entries only for replicas of resources that exist.
//!
//! A recorded heartbeat also wakes the reconciler of its InferenceNode ([`HeartbeatTable::
//! updates`]), so a heartbeat reaches the status within one reconcile instead of waiting for
//! a poll.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::ByteString;
use llamanet_swarm::{Keypair, PeerId};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use crate::crd::InferenceNode;
use crate::status::ReplicaHeartbeat;

/// Namespace and name of an InferenceNode.
type ResourceKey = (String, String);

/// Wake-ups waiting for the reconciler. The reconciler drains them at once (its scheduler
/// merges repeated ones), so the bound is only reached when it is not running; then dropping
/// wake-ups loses nothing, as a starting reconciler reconciles everything anyway.
const UPDATE_QUEUE: usize = 4096;

/// Signers refused for a false claim that are remembered (the oldest is forgotten first).
const IMPOSTORS_KEPT: usize = 1024;

/// Why a heartbeat was not recorded; the label doubles as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// It names an InferenceNode this operator does not know (none by that name, or not
    /// reconciled yet).
    UnknownResource,
    /// It names a pod that is not a replica of that InferenceNode.
    UnknownReplica,
    /// It names a replica but is signed by another key than the replica's identity.
    IdentityMismatch,
}

impl Rejection {
    pub const ALL: [Rejection; 3] = [
        Rejection::UnknownResource,
        Rejection::UnknownReplica,
        Rejection::IdentityMismatch,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::UnknownResource => "unknown_resource",
            Rejection::UnknownReplica => "unknown_replica",
            Rejection::IdentityMismatch => "identity_mismatch",
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeartbeatTable {
    replicas: Arc<RwLock<HashMap<ResourceKey, BTreeMap<String, ReplicaHeartbeat>>>>,
    /// The peer id each replica must sign with, by resource and pod.
    owners: Arc<RwLock<HashMap<ResourceKey, BTreeMap<String, PeerId>>>>,
    /// Signers refused for a false claim, oldest first.
    impostors: Arc<Mutex<(HashSet<PeerId>, VecDeque<PeerId>)>>,
    rejected: Arc<[AtomicU64; 3]>,
    /// Where to send the resource of each new heartbeat; `None` while no reconciler listens.
    updates: Arc<Mutex<Option<mpsc::Sender<ObjectRef<InferenceNode>>>>>,
}

impl HeartbeatTable {
    /// Sets the replicas of an InferenceNode and their peer ids from its identity Secret's
    /// data (one libp2p key per pod name). Keys that do not decode are left out: their pod's
    /// heartbeats will be refused until the key is fixed.
    pub fn set_owners(
        &self,
        namespace: &str,
        inference_node: &str,
        keys: &BTreeMap<String, ByteString>,
    ) {
        let peers: BTreeMap<String, PeerId> = keys
            .iter()
            .filter_map(|(pod, key)| {
                let key = Keypair::from_protobuf_encoding(&key.0).ok()?;
                Some((pod.clone(), key.public().to_peer_id()))
            })
            .collect();
        self.owners
            .write()
            .expect("heartbeat table lock poisoned")
            .insert((namespace.to_owned(), inference_node.to_owned()), peers);
    }

    /// Checks that `signer` may speak for `pod` of the InferenceNode.
    pub fn verify(
        &self,
        namespace: &str,
        inference_node: &str,
        pod: &str,
        signer: &PeerId,
    ) -> Result<(), Rejection> {
        let owners = self.owners.read().expect("heartbeat table lock poisoned");
        let pods = owners
            .get(&(namespace.to_owned(), inference_node.to_owned()))
            .ok_or(Rejection::UnknownResource)?;
        match pods.get(pod) {
            None => Err(Rejection::UnknownReplica),
            Some(owner) if owner != signer => Err(Rejection::IdentityMismatch),
            Some(_) => Ok(()),
        }
    }

    /// Records a verified heartbeat that claims `pod` of an InferenceNode, if `signer` is that
    /// pod's identity (see the module docs); otherwise counts and returns why not.
    pub fn accept(
        &self,
        namespace: &str,
        inference_node: &str,
        signer: &PeerId,
        heartbeat: ReplicaHeartbeat,
    ) -> Result<(), Rejection> {
        if let Err(rejection) = self.verify(namespace, inference_node, &heartbeat.pod, signer) {
            self.rejected[rejection as usize].fetch_add(1, Ordering::Relaxed);
            if rejection == Rejection::IdentityMismatch {
                self.remember_impostor(*signer);
            }
            return Err(rejection);
        }
        self.record(namespace, inference_node, heartbeat);
        Ok(())
    }

    /// Heartbeats refused for one reason so far.
    pub fn rejected(&self, rejection: Rejection) -> u64 {
        self.rejected[rejection as usize].load(Ordering::Relaxed)
    }

    /// Whether `peer` claimed a replica it could not prove (recently).
    pub fn is_impostor(&self, peer: &PeerId) -> bool {
        let impostors = self
            .impostors
            .lock()
            .expect("heartbeat table lock poisoned");
        impostors.0.contains(peer)
    }

    fn remember_impostor(&self, peer: PeerId) {
        let mut impostors = self
            .impostors
            .lock()
            .expect("heartbeat table lock poisoned");
        let (set, order) = &mut *impostors;
        if set.insert(peer) {
            order.push_back(peer);
            if order.len() > IMPOSTORS_KEPT
                && let Some(oldest) = order.pop_front()
            {
                set.remove(&oldest);
            }
        }
    }

    /// Keeps `heartbeat` as the newest of its pod (an older one arriving late is dropped) and
    /// wakes the reconciler of its InferenceNode. Callers outside tests go through
    /// [`HeartbeatTable::accept`].
    pub fn record(&self, namespace: &str, inference_node: &str, heartbeat: ReplicaHeartbeat) {
        {
            let mut replicas = self
                .replicas
                .write()
                .expect("heartbeat table lock poisoned");
            let pods = replicas
                .entry((namespace.to_owned(), inference_node.to_owned()))
                .or_default();
            match pods.get(&heartbeat.pod) {
                Some(newer) if newer.received_at > heartbeat.received_at => return,
                _ => {
                    pods.insert(heartbeat.pod.clone(), heartbeat);
                }
            }
        }
        let updates = self.updates.lock().expect("heartbeat table lock poisoned");
        if let Some(sender) = updates.as_ref() {
            // Full or closed: see UPDATE_QUEUE for why dropping is safe.
            let _ = sender.try_send(ObjectRef::new(inference_node).within(namespace));
        }
    }

    /// The InferenceNodes of heartbeats recorded from now on, one item per heartbeat, for the
    /// reconciler's trigger stream. A new call replaces the previous listener (one reconciler
    /// runs at a time; a new one starts after leadership is regained).
    pub fn updates(&self) -> mpsc::Receiver<ObjectRef<InferenceNode>> {
        let (sender, receiver) = mpsc::channel(UPDATE_QUEUE);
        *self.updates.lock().expect("heartbeat table lock poisoned") = Some(sender);
        receiver
    }

    /// Drops the heartbeats of pods `keep` rejects (replicas scaled away), so they neither
    /// show in status nor age in the metrics.
    pub fn retain_pods(&self, namespace: &str, inference_node: &str, keep: impl Fn(&str) -> bool) {
        let mut replicas = self
            .replicas
            .write()
            .expect("heartbeat table lock poisoned");
        if let Some(pods) = replicas.get_mut(&(namespace.to_owned(), inference_node.to_owned())) {
            pods.retain(|pod, _| keep(pod));
        }
    }

    /// Per InferenceNode with heartbeats, when its stalest replica was last heard from.
    pub fn oldest_heartbeats(&self) -> Vec<(ResourceKey, Timestamp)> {
        let replicas = self.replicas.read().expect("heartbeat table lock poisoned");
        replicas
            .iter()
            .filter_map(|(key, pods)| {
                let oldest = pods.values().map(|h| h.received_at).min()?;
                Some((key.clone(), oldest))
            })
            .collect()
    }

    /// The newest heartbeat of each pod of one InferenceNode, by pod name.
    pub fn for_resource(&self, namespace: &str, inference_node: &str) -> Vec<ReplicaHeartbeat> {
        let replicas = self.replicas.read().expect("heartbeat table lock poisoned");
        replicas
            .get(&(namespace.to_owned(), inference_node.to_owned()))
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Drops what is known about a deleted InferenceNode, its owners included: its
    /// replicas' heartbeats are refused from now on.
    pub fn forget(&self, namespace: &str, inference_node: &str) {
        let key = (namespace.to_owned(), inference_node.to_owned());
        self.replicas
            .write()
            .expect("heartbeat table lock poisoned")
            .remove(&key);
        self.owners
            .write()
            .expect("heartbeat table lock poisoned")
            .remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(pod: &str, second: i64) -> ReplicaHeartbeat {
        ReplicaHeartbeat {
            pod: pod.into(),
            peer_id: "12D3KooW".into(),
            received_at: Timestamp::from_second(second).unwrap(),
            tokens_per_second: 1.0,
            slots_busy: 0,
            slots_total: 4,
            queued: 0,
        }
    }

    fn key_of(seed: u8) -> (ByteString, PeerId) {
        let key = Keypair::ed25519_from_bytes([seed; 32]).unwrap();
        let peer = key.public().to_peer_id();
        (ByteString(key.to_protobuf_encoding().unwrap()), peer)
    }

    #[test]
    fn only_the_replicas_own_keys_may_speak_for_them() {
        let table = HeartbeatTable::default();
        let (key0, peer0) = key_of(1);
        let (key1, peer1) = key_of(2);
        let (_, stranger) = key_of(3);
        table.set_owners(
            "ai",
            "gemma",
            &BTreeMap::from([("gemma-0".to_owned(), key0), ("gemma-1".to_owned(), key1)]),
        );
        let claim = |pod: &str| ReplicaHeartbeat {
            peer_id: String::new(),
            ..beat(pod, 10)
        };
        assert_eq!(
            table.accept("ai", "gemma", &peer0, claim("gemma-0")),
            Ok(())
        );
        // Another replica's key, a stranger's, a pod that is not a replica, a resource that
        // does not exist: each refused with its reason, nothing recorded.
        assert_eq!(
            table.accept("ai", "gemma", &peer1, claim("gemma-0")),
            Err(Rejection::IdentityMismatch)
        );
        assert_eq!(
            table.accept("ai", "gemma", &stranger, claim("gemma-1")),
            Err(Rejection::IdentityMismatch)
        );
        assert_eq!(
            table.accept("ai", "gemma", &stranger, claim("gemma-7")),
            Err(Rejection::UnknownReplica)
        );
        assert_eq!(
            table.accept("ai", "qwen", &stranger, claim("qwen-0")),
            Err(Rejection::UnknownResource)
        );
        assert_eq!(table.for_resource("ai", "gemma").len(), 1);
        assert!(table.for_resource("ai", "qwen").is_empty());
        assert_eq!(table.rejected(Rejection::IdentityMismatch), 2);
        assert_eq!(table.rejected(Rejection::UnknownReplica), 1);
        assert_eq!(table.rejected(Rejection::UnknownResource), 1);
        assert!(table.is_impostor(&stranger) && table.is_impostor(&peer1));
        assert!(!table.is_impostor(&peer0));
        // A deleted resource's replicas are refused from then on.
        table.forget("ai", "gemma");
        assert_eq!(
            table.accept("ai", "gemma", &peer0, claim("gemma-0")),
            Err(Rejection::UnknownResource)
        );
    }

    #[test]
    fn impostors_are_remembered_within_a_bound() {
        let table = HeartbeatTable::default();
        table.set_owners(
            "ai",
            "gemma",
            &BTreeMap::from([("gemma-0".to_owned(), key_of(1).0)]),
        );
        let first = PeerId::random();
        let _ = table.accept("ai", "gemma", &first, beat("gemma-0", 1));
        for _ in 0..IMPOSTORS_KEPT {
            let _ = table.accept("ai", "gemma", &PeerId::random(), beat("gemma-0", 1));
        }
        assert!(!table.is_impostor(&first), "the oldest is forgotten");
        assert_eq!(table.impostors.lock().unwrap().1.len(), IMPOSTORS_KEPT);
    }

    #[test]
    fn keeps_the_newest_heartbeat_per_pod() {
        let table = HeartbeatTable::default();
        table.record("ai", "gemma", beat("gemma-0", 10));
        table.record("ai", "gemma", beat("gemma-0", 5));
        table.record("ai", "gemma", beat("gemma-1", 7));
        table.record("other", "gemma", beat("gemma-0", 99));
        let beats = table.for_resource("ai", "gemma");
        assert_eq!(beats.len(), 2);
        assert_eq!(beats[0].received_at, Timestamp::from_second(10).unwrap());
        table.forget("ai", "gemma");
        assert!(table.for_resource("ai", "gemma").is_empty());
        assert_eq!(table.for_resource("other", "gemma").len(), 1);
    }

    #[test]
    fn new_heartbeats_name_their_resource_to_the_listener() {
        let table = HeartbeatTable::default();
        table.record("ai", "gemma", beat("gemma-0", 1));
        let mut updates = table.updates();
        table.record("ai", "gemma", beat("gemma-0", 10));
        // A late, older heartbeat changes nothing and wakes nobody.
        table.record("ai", "gemma", beat("gemma-0", 5));
        table.record("ai", "qwen", beat("qwen-1", 11));
        let woken: Vec<_> = std::iter::from_fn(|| updates.try_recv().ok()).collect();
        assert_eq!(
            woken,
            [
                ObjectRef::new("gemma").within("ai"),
                ObjectRef::new("qwen").within("ai")
            ]
        );
    }

    #[test]
    fn scaled_away_pods_are_dropped_and_ages_report_the_stalest() {
        let table = HeartbeatTable::default();
        table.record("ai", "gemma", beat("gemma-0", 10));
        table.record("ai", "gemma", beat("gemma-1", 4));
        assert_eq!(
            table.oldest_heartbeats(),
            [(
                ("ai".to_owned(), "gemma".to_owned()),
                Timestamp::from_second(4).unwrap()
            )]
        );
        table.retain_pods("ai", "gemma", |pod| pod == "gemma-0");
        assert_eq!(table.for_resource("ai", "gemma").len(), 1);
        assert_eq!(
            table.oldest_heartbeats()[0].1,
            Timestamp::from_second(10).unwrap()
        );
    }
}
