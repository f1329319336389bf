//! The controller loop: for each InferenceNode, apply its children (server-side apply, owner
//! references, so deleting the resource removes them; a PodMonitor too where the Prometheus
//! Operator's CRDs exist) and write the status computed from its pods and the heartbeat
//! table, with an Event for every condition transition.
//!
//! What is built and what is observed are decided elsewhere (`children.rs`, `status.rs`,
//! `events.rs`); this file only talks to the API server. It is safe to restart at any point:
//! every step is an idempotent apply of the full desired object under one field manager, so a
//! restarted operator converges on the same objects without duplicates.
//!
//! # When a resource is reconciled
//! On any change of it or of its children and pods (watches), on every heartbeat of one of its
//! replicas (the heartbeat table's update stream), and otherwise when its status could next
//! change with time alone: the moment its first fresh heartbeat would go stale
//! ([`status::next_change`]), within [`MIN_REQUEUE`]..[`MAX_REQUEUE`]. Status is written only
//! when it changed, and at most once per [`MIN_PATCH_GAP`] per resource.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use llamanet_swarm::discovery::Discovery;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::autoscale::{self, Decision, Load, ScalingCondition, Stabilizer, recommend};
use crate::children::{self, MANAGER};
use crate::config::OperatorConfig;
use crate::crd::{Autoscaling, InferenceNode, InferenceNodeStatus};
use crate::error::{Error, Result};
use crate::events;
use crate::heartbeat::HeartbeatTable;
use crate::identity;
use crate::metrics::Metrics;
use crate::monitoring::{self, PodMonitorSupport};
use crate::server::Readiness;
use crate::status::{self, Observation, PodSummary};
use crate::wake::{self as scale_from_zero, Waker};

/// Soonest time-driven reconcile of a resource: heartbeats and watches wake it sooner anyway.
pub const MIN_REQUEUE: Duration = Duration::from_secs(1);
/// Latest one: a periodic look even when nothing depends on the clock. Watches on the
/// resource, its children and pods bring every change sooner; this is a safety net, kept
/// long because each look costs about six API requests per resource (at 60 s, 1000 idle
/// resources cost the API server 120 requests/s: bench/RESULTS.md).
pub const MAX_REQUEUE: Duration = Duration::from_secs(300);
/// Past the moment a heartbeat goes stale, so the reconcile then sees it stale (a heartbeat
/// exactly three intervals old is still fresh).
const STALE_MARGIN: Duration = Duration::from_millis(100);
/// Least time between two status writes of one resource: replicas heartbeat every few
/// seconds each, and a large InferenceNode must not turn that into a write storm.
pub const MIN_PATCH_GAP: Duration = Duration::from_secs(1);
/// Retry delay after a failed reconcile.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// What every reconcile of one controller run shares.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub heartbeats: HeartbeatTable,
    pub metrics: Arc<Metrics>,
    /// The operator's view of the whole swarm (its swarm peer): how many nodes serve each
    /// resource's model anywhere, for `status.swarmNodes`.
    pub discovery: Option<Arc<dyn Discovery>>,
    recorder: Recorder,
    pod_monitors: PodMonitorSupport,
    /// The status this run last wrote per resource. The watch cache lags behind our own
    /// writes; comparing against it would write (and announce) the same transition twice.
    written: Mutex<HashMap<ResourceKey, Written>>,
    /// Recent autoscaler recommendations per resource with `spec.autoscaling`.
    stabilizers: Mutex<HashMap<ResourceKey, Stabilizer>>,
    /// Advertises cold models in the swarm and wakes them (scale from zero); `None` when
    /// the operator has no swarm peer.
    pub waker: Option<Arc<Waker>>,
}

/// Namespace and name of an InferenceNode.
pub type ResourceKey = (String, String);

#[derive(Clone, Debug)]
struct Written {
    /// The resource it was written to (a deleted and recreated one is another).
    uid: String,
    status: InferenceNodeStatus,
    at: Instant,
}

impl Context {
    /// `identity` names this operator replica in the Events it publishes.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        heartbeats: HeartbeatTable,
        metrics: Arc<Metrics>,
        identity: &str,
    ) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: MANAGER.to_owned(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            heartbeats,
            metrics,
            discovery: None,
            pod_monitors: PodMonitorSupport::default(),
            written: Mutex::default(),
            stabilizers: Mutex::default(),
            waker: None,
        }
    }

    /// Advertises cold models and serves wake requests through `waker`.
    pub fn with_waker(mut self, waker: Option<Arc<Waker>>) -> Self {
        self.waker = waker;
        self
    }

    /// A request woke `key` from zero to `to` replicas (see [`Stabilizer::woken`]).
    pub fn woken(&self, key: &ResourceKey, generation: Option<i64>, to: i32, message: String) {
        self.stabilizer(key, |s| s.woken(Instant::now(), generation, to, message));
    }

    /// Counts each resource's model across the swarm through `discovery`.
    pub fn with_discovery(mut self, discovery: Option<Arc<dyn Discovery>>) -> Self {
        self.discovery = discovery;
        self
    }

    /// Runs `f` on the autoscaler state of `key`.
    fn stabilizer<T>(&self, key: &ResourceKey, f: impl FnOnce(&mut Stabilizer) -> T) -> T {
        let mut stabilizers = self.stabilizers.lock().expect("stabilizers lock poisoned");
        f(stabilizers.entry(key.clone()).or_default())
    }

    fn last_written(&self, key: &ResourceKey, uid: &str) -> Option<Written> {
        let written = self.written.lock().expect("written statuses lock poisoned");
        written.get(key).filter(|w| w.uid == uid).cloned()
    }

    fn remember(&self, key: ResourceKey, written: Written) {
        let mut map = self.written.lock().expect("written statuses lock poisoned");
        map.insert(key, written);
    }

    /// Forgets what this operator holds about a deleted resource.
    fn forget(&self, namespace: &str, name: &str) {
        self.heartbeats.forget(namespace, name);
        self.metrics.forget(namespace, name);
        let key = (namespace.to_owned(), name.to_owned());
        let mut map = self.written.lock().expect("written statuses lock poisoned");
        map.remove(&key);
        let mut stabilizers = self.stabilizers.lock().expect("stabilizers lock poisoned");
        stabilizers.remove(&key);
        if let Some(waker) = &self.waker {
            waker.set(namespace, name, None);
        }
    }

    /// Publishes an Event about `node`; a failure is logged, never fails the reconcile.
    pub async fn publish_event(&self, node: &InferenceNode, event: Event) {
        self.publish(node, event).await;
    }

    async fn publish(&self, node: &InferenceNode, event: Event) {
        if let Err(err) = self.recorder.publish(&event, &node.object_ref(&())).await {
            tracing::warn!(error = %err, reason = %event.reason, "publishing an event failed");
        }
    }
}

/// How long running reconciles may take to finish once the controller is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs the controller until `stop` is cancelled, then lets running reconciles finish
/// (for at most [`SHUTDOWN_GRACE`]).
/// `readiness` learns when its watches have synced.
pub async fn run(context: Arc<Context>, readiness: Arc<Readiness>, stop: CancellationToken) {
    let client = context.client.clone();
    // Only objects this operator manages wake it up.
    let managed =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let mut heartbeat_updates = context.heartbeats.updates();
    let controller = Controller::new(
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
    .reconcile_on(futures::stream::poll_fn(move |cx| {
        heartbeat_updates.poll_recv(cx)
    }))
    .graceful_shutdown_on(stop.clone().cancelled_owned());

    let store = controller.store();
    let synced = tokio::spawn({
        let readiness = readiness.clone();
        async move {
            // Asked again and again rather than awaited once: kube-runtime 5's readiness signal
            // wakes only the last task that polled it, and the controller itself polls it too.
            loop {
                let wait = store.wait_until_ready();
                match tokio::time::timeout(Duration::from_millis(250), wait).await {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
            }
            tracing::info!("watches synced");
            readiness.set_watches_synced(true);
        }
    });
    // Wake requests are this term's business: only the leader advertises cold models.
    let waking = context.waker.clone().map(|waker| {
        let serving = tokio::spawn(scale_from_zero::serve(context.clone(), waker.clone()));
        (serving, waker)
    });
    let ctx = context.clone();
    let running = controller
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                // A deleted resource (its children go with the owner references): only our own
                // memory of it needs clearing.
                Err(controller::Error::ObjectNotFound(object)) => {
                    if let Some(namespace) = &object.namespace {
                        ctx.forget(namespace, &object.name);
                    }
                    tracing::debug!(%object, "deleted");
                }
                Err(err) => tracing::warn!(error = %err, "reconcile failed"),
            }
            futures::future::ready(())
        });
    // Running reconciles get SHUTDOWN_GRACE to finish after a stop; then they are dropped,
    // so a replica told to stop always releases its Lease and exits within its pod's
    // termination grace period. (Once, in the operator's end-to-end test under load, a
    // replica stopped a moment after it started leading had not stopped 30 s later.)
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = running => {}
        () = deadline => tracing::warn!(
            grace = ?SHUTDOWN_GRACE,
            "reconciles still running after the stop's grace: dropped"
        ),
    }
    synced.abort();
    if let Some((serving, waker)) = waking {
        serving.abort();
        let _ = serving.await;
        waker.clear();
    }
    readiness.set_watches_synced(false);
}

async fn reconcile(node: Arc<InferenceNode>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = node
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let uid = node.uid().ok_or(Error::MissingObjectKey(".metadata.uid"))?;
    let name = node.name_any();
    if node.meta().deletion_timestamp.is_some() {
        // Being deleted (by someone's finalizer): nothing to build any more.
        return Ok(Action::await_change());
    }

    // The autoscaler first: what follows builds the replicas it decides on.
    let (node, decision) = match &node.spec.autoscaling {
        Some(policy) => {
            let (replicas, decision) = autoscale(&ctx, &node, policy, &namespace, &name).await?;
            let mut scaled = (*node).clone();
            scaled.spec.replicas = replicas;
            (Arc::new(scaled), Some(decision))
        }
        None => (node, None),
    };

    // The identity keys first: pods of new replicas mount them at start.
    ensure_identity_keys(&ctx, &node, &namespace, &name).await?;
    let children = children::desired(&node, &ctx.config)?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    for service in [&children.api_service, &children.swarm_service] {
        apply_child(&ctx, &node, &services, service).await?;
    }
    if let Some(swarm_key) = &children.swarm_key {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        apply_child(&ctx, &node, &secrets, swarm_key).await?;
    }
    let stateful_sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    apply_child(&ctx, &node, &stateful_sets, &children.stateful_set).await?;
    if ctx.pod_monitors.available(&ctx.client).await {
        apply_pod_monitor(&ctx, &node, &namespace).await?;
    }

    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&children::selector_string(&name)))
        .await?;
    let summaries: Vec<PodSummary> = pods.items.iter().map(PodSummary::from_pod).collect();
    let replicas = node.spec.replicas;
    ctx.heartbeats
        .retain_pods(&namespace, &name, |pod| is_wanted_pod(&name, replicas, pod));
    let heartbeats = ctx.heartbeats.for_resource(&namespace, &name);
    let model = children::model_name(&node.spec.model);
    // Peers that claimed one of our replicas without its key are not counted.
    let swarm_nodes = ctx.discovery.as_ref().map(|swarm| {
        swarm
            .nodes(Some(&model))
            .iter()
            .filter(|node| !node.peer_id.is_some_and(|p| ctx.heartbeats.is_impostor(&p)))
            .count() as i32
    });
    let key = (namespace.clone(), name.clone());
    let last_written = ctx.last_written(&key, &uid);
    let previous = last_written
        .as_ref()
        .map(|w| &w.status)
        .or(node.status.as_ref());
    let scaling = decision.as_ref().map(|decision| {
        let serving = summaries
            .iter()
            .filter(|p| {
                is_wanted_pod(&name, replicas, &p.name)
                    && matches!(p.stage, status::PodStage::Serving { .. })
            })
            .count() as i32;
        let last = ctx.stabilizer(&key, |s| s.last_scale().cloned());
        ScalingCondition::of(decision, last.as_ref(), serving, replicas)
    });
    let observation = Observation {
        name: &name,
        generation: node.metadata.generation,
        replicas,
        pods: &summaries,
        heartbeats: &heartbeats,
        heartbeat_interval: ctx.config.heartbeat_interval,
        now: Timestamp::now(),
        model,
        endpoint: children::endpoint(&node),
        selector: children::selector_string(&name),
        swarm_nodes,
        scaling,
        wakeable: node
            .spec
            .autoscaling
            .as_ref()
            .is_some_and(|a| a.min_replicas == 0),
    };
    let status = status::compute(previous, &observation);
    if let Some(waker) = &ctx.waker {
        // Cold while nothing serves: scaled to zero, or woken and still starting (requests
        // that arrive meanwhile are held too, rather than refused).
        let cold = observation.wakeable && status.ready_replicas == 0;
        waker.set(
            &namespace,
            &name,
            cold.then(|| status.model.clone()).flatten(),
        );
    }
    let mut requeue = requeue_after(status::next_change(&observation));

    if previous == Some(&status) {
        ctx.metrics.record_status(&namespace, &name, &status);
        return Ok(Action::requeue(requeue));
    }
    if let Some(wait) = patch_wait(last_written.as_ref().map(|w| w.at), Instant::now()) {
        // Written less than MIN_PATCH_GAP ago: write the newest status once the gap is over.
        requeue = requeue.min(wait);
        return Ok(Action::requeue(requeue));
    }
    let patch = json!({
        "apiVersion": InferenceNode::api_version(&()),
        "kind": InferenceNode::kind(&()),
        "status": status,
    });
    Api::<InferenceNode>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.metrics.status_patched();
    ctx.metrics.record_status(&namespace, &name, &status);
    observe_new_heartbeats(&ctx.metrics, previous, &status);
    for event in events::transitions(previous, &status) {
        ctx.publish(&node, event).await;
    }
    ctx.remember(
        key,
        Written {
            uid,
            status,
            at: Instant::now(),
        },
    );
    Ok(Action::requeue(requeue))
}

/// One autoscaler decision for `node`: from the fresh heartbeats of its replicas, through
/// the scale-down window, written into `spec.replicas` through the scale subresource (as an
/// HPA would) when it changes. Returns the replicas the spec has now, and the decision.
async fn autoscale(
    ctx: &Context,
    node: &InferenceNode,
    policy: &Autoscaling,
    namespace: &str,
    name: &str,
) -> Result<(i32, Decision)> {
    let key = (namespace.to_owned(), name.to_owned());
    let current = ctx.stabilizer(&key, |s| {
        s.current(node.metadata.generation, node.spec.replicas)
    });
    let lost_after = ctx.config.heartbeat_interval * status::MISSED_HEARTBEATS;
    let now = Timestamp::now();
    let heartbeats = ctx.heartbeats.for_resource(namespace, name);
    let fresh = heartbeats.iter().filter(|h| {
        is_wanted_pod(name, current, &h.pod)
            && now.duration_since(h.received_at).as_secs_f64() <= lost_after.as_secs_f64()
    });
    let recommendation = recommend(policy, current, &Load::of(fresh));
    // The schema's pattern admits only what parses.
    let window = autoscale::parse_window(&policy.scale_down_after)
        .unwrap_or(autoscale::DEFAULT_SCALE_DOWN_AFTER);
    let decision = ctx.stabilizer(&key, |s| {
        s.decide(Instant::now(), current, recommendation, window)
    });
    let Decision::Scale {
        from,
        to,
        recommendation,
    } = &decision
    else {
        return Ok((current, decision));
    };
    tracing::info!(%namespace, %name, from, to, reason = %recommendation.reason, "autoscaling");
    Api::<InferenceNode>::namespaced(ctx.client.clone(), namespace)
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": to } })),
        )
        .await?;
    ctx.metrics.autoscaled(to > from);
    ctx.stabilizer(&key, |s| s.wrote(node.metadata.generation, &decision));
    Ok((*to, decision))
}

/// Server-side applies one child; a refusal becomes a Warning event on `node` and an error.
async fn apply_child<K>(ctx: &Context, node: &InferenceNode, api: &Api<K>, child: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = child.name_any();
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(child),
        )
        .await;
    if let Err(source) = applied {
        let kind = K::kind(&()).into_owned();
        ctx.publish(node, events::apply_failed(&kind, &name, &source))
            .await;
        return Err(Error::Apply { kind, name, source });
    }
    Ok(())
}

/// Records, for every replica whose heartbeat this status write is the first to show, how
/// long after its arrival the write happened.
fn observe_new_heartbeats(
    metrics: &Metrics,
    previous: Option<&InferenceNodeStatus>,
    status: &InferenceNodeStatus,
) {
    let now = Timestamp::now();
    for peer in &status.peers {
        let shown_before = previous.is_some_and(|p| {
            p.peers.iter().any(|old| {
                old.pod == peer.pod && old.last_heartbeat_time == peer.last_heartbeat_time
            })
        });
        if !shown_before {
            let age = now.duration_since(peer.last_heartbeat_time.0);
            metrics.heartbeat_shown(age.as_secs_f64().max(0.0));
        }
    }
}

/// The resource's PodMonitor (only called where the API server serves PodMonitors).
async fn apply_pod_monitor(ctx: &Context, node: &InferenceNode, namespace: &str) -> Result<()> {
    let monitor = monitoring::desired_pod_monitor(node)?;
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &monitoring::pod_monitor_resource(),
    );
    let name = monitor.name_any();
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&monitor),
        )
        .await;
    if let Err(source) = applied {
        let kind = "PodMonitor".to_owned();
        ctx.publish(node, events::apply_failed(&kind, &name, &source))
            .await;
        return Err(Error::Apply { kind, name, source });
    }
    Ok(())
}

/// Adds a key for every replica without one to the Secret `<name>-identity`.
async fn ensure_identity_keys(
    ctx: &Context,
    node: &InferenceNode,
    namespace: &str,
    name: &str,
) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret_name = children::identity_secret_name(name);
    let existing = secrets
        .get_opt(&secret_name)
        .await?
        .and_then(|s| s.data)
        .unwrap_or_default();
    let Some(data) = identity::with_missing_keys(name, node.spec.replicas, &existing) else {
        // Heartbeats count only when signed by these keys (see `heartbeat.rs`).
        ctx.heartbeats.set_owners(namespace, name, &existing);
        return Ok(());
    };
    ctx.heartbeats.set_owners(namespace, name, &data);
    let owner = node
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey(".metadata.uid"))?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(secret_name),
            namespace: Some(namespace.to_owned()),
            labels: Some(children::labels(name, "identity")),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: Some(data),
        ..Secret::default()
    };
    apply_child(ctx, node, &secrets, &secret).await
}

fn error_policy(_node: Arc<InferenceNode>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed(error);
    tracing::warn!(reason = error.metric_label(), %error, "reconcile error, retrying");
    Action::requeue(ERROR_REQUEUE)
}

/// When to look again with nothing else happening: just after the status could next change
/// on its own (`next_change`), bounded by [`MIN_REQUEUE`] and [`MAX_REQUEUE`].
pub fn requeue_after(next_change: Option<Duration>) -> Duration {
    next_change
        .map_or(MAX_REQUEUE, |d| d.saturating_add(STALE_MARGIN))
        .clamp(MIN_REQUEUE, MAX_REQUEUE)
}

/// How long a status write must wait when the last one was at `last` (`None`: write now).
pub fn patch_wait(last: Option<Instant>, now: Instant) -> Option<Duration> {
    let since = now.saturating_duration_since(last?);
    MIN_PATCH_GAP.checked_sub(since).filter(|d| !d.is_zero())
}

/// Whether `pod` is one of the `replicas` pods `<name>-<ordinal>` the spec wants.
fn is_wanted_pod(name: &str, replicas: i32, pod: &str) -> bool {
    pod.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|ordinal| ordinal.parse::<i32>().ok())
        .is_some_and(|ordinal| (0..replicas).contains(&ordinal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeue_follows_the_next_change_within_bounds() {
        assert_eq!(requeue_after(None), MAX_REQUEUE);
        assert_eq!(requeue_after(Some(Duration::ZERO)), MIN_REQUEUE);
        assert_eq!(
            requeue_after(Some(Duration::from_secs(5))),
            Duration::from_millis(5100)
        );
        assert_eq!(requeue_after(Some(Duration::from_secs(3600))), MAX_REQUEUE);
        assert_eq!(requeue_after(Some(Duration::MAX)), MAX_REQUEUE);
    }

    #[test]
    fn status_writes_keep_a_gap() {
        let now = Instant::now();
        assert_eq!(patch_wait(None, now), None);
        assert_eq!(
            patch_wait(Some(now - Duration::from_millis(300)), now),
            Some(Duration::from_millis(700))
        );
        assert_eq!(patch_wait(Some(now - MIN_PATCH_GAP), now), None);
        assert_eq!(patch_wait(Some(now - Duration::from_secs(9)), now), None);
    }

    #[test]
    fn only_the_wanted_ordinals_are_replicas() {
        assert!(is_wanted_pod("gemma", 2, "gemma-0"));
        assert!(is_wanted_pod("gemma", 2, "gemma-1"));
        assert!(!is_wanted_pod("gemma", 2, "gemma-2"));
        assert!(!is_wanted_pod("gemma", 2, "gemma-x-0"));
        assert!(!is_wanted_pod("gemma", 0, "gemma-0"));
    }
}
