//! The controller loop: for each InferenceNode, apply its children (server-side apply, owner
//! references, so deleting the resource removes them) and write the status computed from its
//! pods and the heartbeat table.
//!
//! What is built and what is observed are decided elsewhere (`children.rs`, `status.rs`); this
//! file only talks to the API server. It is safe to restart at any point: every step is an
//! idempotent apply of the full desired object under one field manager, so a restarted
//! operator converges on the same objects without duplicates.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::children::{self, MANAGER};
use crate::config::OperatorConfig;
use crate::crd::InferenceNode;
use crate::error::{Error, Result};
use crate::heartbeat::HeartbeatTable;
use crate::identity;
use crate::status::{self, Observation, PodSummary};

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub heartbeats: HeartbeatTable,
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(context: Context) {
    let client = context.client.clone();
    let heartbeats = context.heartbeats.clone();
    // Only objects this operator manages wake it up.
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    Controller::new(
        Api::<InferenceNode>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::all(client.clone()), managed.clone())
    .owns(Api::<Service>::all(client.clone()), managed.clone())
    // Pods are owned by the StatefulSet, not the resource: map them back by their label.
    .watches(Api::<Pod>::all(client), managed, |pod: Pod| {
        let instance = pod.labels().get("app.kubernetes.io/instance")?.clone();
        Some(ObjectRef::<InferenceNode>::new(&instance).within(&pod.namespace()?))
    })
    .shutdown_on_signal()
    .run(reconcile, error_policy, Arc::new(context))
    .for_each(|result| {
        match result {
            Ok((object, _)) => tracing::debug!(%object, "reconciled"),
            // A deleted resource (its children go with the owner references): only our own
            // memory of it needs clearing.
            Err(controller::Error::ObjectNotFound(object)) => {
                if let Some(namespace) = &object.namespace {
                    heartbeats.forget(namespace, &object.name);
                }
                tracing::debug!(%object, "deleted");
            }
            Err(err) => tracing::warn!(error = %err, "reconcile failed"),
        }
        futures::future::ready(())
    })
    .await;
}

async fn reconcile(node: Arc<InferenceNode>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = node
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let name = node.name_any();
    if node.meta().deletion_timestamp.is_some() {
        // Being deleted (by someone's finalizer): nothing to build any more.
        return Ok(Action::await_change());
    }
    let apply = PatchParams::apply(MANAGER).force();

    // The identity keys first: pods of new replicas mount them at start.
    ensure_identity_keys(&ctx.client, &node, &namespace, &name, &apply).await?;
    let children = children::desired(&node, &ctx.config)?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    for service in [&children.api_service, &children.swarm_service] {
        services
            .patch(&service.name_any(), &apply, &Patch::Apply(service))
            .await?;
    }
    Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace)
        .patch(&name, &apply, &Patch::Apply(&children.stateful_set))
        .await?;

    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&children::selector_string(&name)))
        .await?;
    let summaries: Vec<PodSummary> = pods.items.iter().map(PodSummary::from_pod).collect();
    let heartbeats = ctx.heartbeats.for_resource(&namespace, &name);
    let status = status::compute(
        node.status.as_ref(),
        &Observation {
            name: &name,
            generation: node.metadata.generation,
            replicas: node.spec.replicas,
            pods: &summaries,
            heartbeats: &heartbeats,
            heartbeat_interval: ctx.config.heartbeat_interval,
            now: Timestamp::now(),
            model: children::model_name(&node.spec.model),
            endpoint: children::endpoint(&node),
            selector: children::selector_string(&name),
        },
    );
    if node.status.as_ref() != Some(&status) {
        let patch = json!({
            "apiVersion": InferenceNode::api_version(&()),
            "kind": InferenceNode::kind(&()),
            "status": status,
        });
        Api::<InferenceNode>::namespaced(ctx.client.clone(), &namespace)
            .patch_status(&name, &apply, &Patch::Apply(&patch))
            .await?;
    }
    // Heartbeat freshness changes with time alone: look again within one interval.
    Ok(Action::requeue(ctx.config.heartbeat_interval))
}

/// Adds a key for every replica without one to the Secret `<name>-identity`.
async fn ensure_identity_keys(
    client: &Client,
    node: &InferenceNode,
    namespace: &str,
    name: &str,
    apply: &PatchParams,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret_name = children::identity_secret_name(name);
    let existing = secrets
        .get_opt(&secret_name)
        .await?
        .and_then(|s| s.data)
        .unwrap_or_default();
    let Some(data) = identity::with_missing_keys(name, node.spec.replicas, &existing) else {
        return Ok(());
    };
    let owner = node
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey(".metadata.uid"))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(children::labels(name, "identity")),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    secrets
        .patch(&secret_name, apply, &Patch::Apply(&secret))
        .await?;
    Ok(())
}

fn error_policy(_node: Arc<InferenceNode>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(reason = error.metric_label(), %error, "reconcile error, retrying");
    Action::requeue(Duration::from_secs(5))
}
