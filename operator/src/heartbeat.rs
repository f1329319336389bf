//! The heartbeat table: the newest heartbeat of every replica, by InferenceNode and pod, as
//! the operator received it. The swarm peer writes it, the reconciler reads it into status.
//! Shared between tasks, cheap to clone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::status::ReplicaHeartbeat;

/// Namespace and name of an InferenceNode.
type ResourceKey = (String, String);

#[derive(Clone, Debug, Default)]
pub struct HeartbeatTable {
    replicas: Arc<RwLock<HashMap<ResourceKey, BTreeMap<String, ReplicaHeartbeat>>>>,
}

impl HeartbeatTable {
    /// Keeps `heartbeat` as the newest of its pod (an older one arriving late is dropped).
    pub fn record(&self, namespace: &str, inference_node: &str, heartbeat: ReplicaHeartbeat) {
        let mut replicas = self
            .replicas
            .write()
            .expect("heartbeat table lock poisoned");
        let pods = replicas
            .entry((namespace.to_owned(), inference_node.to_owned()))
            .or_default();
        match pods.get(&heartbeat.pod) {
            Some(newer) if newer.received_at > heartbeat.received_at => {}
            _ => {
                pods.insert(heartbeat.pod.clone(), heartbeat);
            }
        }
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
    use k8s_openapi::jiff::Timestamp;

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
}
