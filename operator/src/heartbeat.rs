//! The heartbeat table: the newest heartbeat of every replica, by InferenceNode and pod, as
//! the operator received it. The swarm peer writes it, the reconciler reads it into status.
//! Shared between tasks, cheap to clone.
//!
//! A recorded heartbeat also wakes the reconciler of its InferenceNode ([`HeartbeatTable::
//! updates`]), so a heartbeat reaches the status within one reconcile instead of waiting for
//! a poll.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

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

#[derive(Clone, Debug, Default)]
pub struct HeartbeatTable {
    replicas: Arc<RwLock<HashMap<ResourceKey, BTreeMap<String, ReplicaHeartbeat>>>>,
    /// Where to send the resource of each new heartbeat; `None` while no reconciler listens.
    updates: Arc<Mutex<Option<mpsc::Sender<ObjectRef<InferenceNode>>>>>,
}

impl HeartbeatTable {
    /// Keeps `heartbeat` as the newest of its pod (an older one arriving late is dropped) and
    /// wakes the reconciler of its InferenceNode.
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

    /// Drops what is known about a deleted InferenceNode.
    pub fn forget(&self, namespace: &str, inference_node: &str) {
        let mut replicas = self
            .replicas
            .write()
            .expect("heartbeat table lock poisoned");
        replicas.remove(&(namespace.to_owned(), inference_node.to_owned()));
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
        }
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
