//! A PodMonitor per InferenceNode, so that a Prometheus Operator scrapes every replica's
//! `/metrics`, where the `monitoring.coreos.com` CRDs exist. Where they do not, nothing is
//! created and nothing fails: the operator looks again every [`RECHECK`], so installing the
//! Prometheus Operator later is noticed without a restart.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::children::{identity, labels, selector_labels};
use crate::crd::InferenceNode;
use crate::error::Result;

/// How long a look at the API server's discovery is trusted.
pub const RECHECK: Duration = Duration::from_secs(60);

/// The PodMonitor kind of the Prometheus Operator.
pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// The PodMonitor of `node`: its replicas' `http` port, path `/metrics`, owned by the
/// resource so that it goes when the resource does.
pub fn desired_pod_monitor(node: &InferenceNode) -> Result<DynamicObject> {
    let (name, namespace, owner) = identity(node)?;
    let mut monitor = DynamicObject::new(&name, &pod_monitor_resource()).within(&namespace);
    monitor.metadata.labels = Some(labels(&name, "metrics"));
    monitor.metadata.owner_references = Some(vec![owner]);
    monitor.data = json!({
        "spec": {
            "selector": {"matchLabels": selector_labels(&name)},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics"}],
        }
    });
    Ok(monitor)
}

/// Whether the API server serves PodMonitors, looked up at most once per [`RECHECK`].
#[derive(Debug, Default)]
pub struct PodMonitorSupport {
    last: Mutex<Option<(Instant, bool)>>,
}

impl PodMonitorSupport {
    pub async fn available(&self, client: &Client) -> bool {
        if let Some((at, known)) = *self.last.lock().expect("lock poisoned")
            && at.elapsed() < RECHECK
        {
            return known;
        }
        let known = match client
            .list_api_group_resources("monitoring.coreos.com/v1")
            .await
        {
            Ok(list) => list.resources.iter().any(|r| r.name == "podmonitors"),
            // 404: the group does not exist. Other errors: try again at the next reconcile.
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(err) => {
                tracing::debug!(%err, "API discovery of monitoring.coreos.com failed");
                return false;
            }
        };
        *self.last.lock().expect("lock poisoned") = Some((Instant::now(), known));
        known
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_monitor_scrapes_the_replicas_and_is_owned() {
        let node = InferenceNode::test();
        let monitor = desired_pod_monitor(&node).unwrap();
        let value = serde_json::to_value(&monitor).unwrap();
        assert_eq!(value["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(value["kind"], "PodMonitor");
        assert_eq!(value["metadata"]["name"], "gemma");
        assert_eq!(value["metadata"]["namespace"], "ai");
        let owner = &value["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "InferenceNode");
        assert_eq!(owner["controller"], true);
        assert_eq!(
            value["spec"]["selector"]["matchLabels"],
            json!({"app.kubernetes.io/name": "llamanet-node", "app.kubernetes.io/instance": "gemma"})
        );
        assert_eq!(
            value["spec"]["podMetricsEndpoints"],
            json!([{"port": "http", "path": "/metrics"}])
        );
    }
}
