//! Scale from zero: the operator advertises the models it can start, and starts them when
//! a node of the swarm asks.
//!
//! A resource with `autoscaling.minReplicas: 0` and no ready replica (scaled to zero, or
//! waking) is *cold*. The leading operator lists its cold models in its swarm heartbeats
//! ([`Waker::set`]), so every node of the swarm, in any cluster, knows that the model exists
//! and whom to ask. A node holding a request for one sends a wake request
//! (`llamanet_swarm::wake`) on an authenticated stream to this operator's peer id;
//! [`answer`] scales the resource from zero to one replica through the scale subresource,
//! starts the autoscaler's scale-down window over (so the replica is not removed as soon as
//! the held requests are served), and records an Event naming the peer that asked.
//!
//! Only what this operator advertises is acted on: a wake for any other model or resource
//! is answered `not_cold` and changes nothing. Repeated wakes of one resource within
//! [`REPEAT_WINDOW`] cost no API call.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use llamanet_swarm::wake::{self, WakeAnswer, WakeOutcome, WakeRequest};
use llamanet_swarm::{ColdModel, InferenceNodeRef, PeerId, SwarmHandle};
use serde_json::json;

use crate::crd::InferenceNode;
use crate::reconcile::Context;

/// Wakes of one resource closer together than this are answered from memory.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(5);

type ResourceKey = (String, String);

/// The cold models this operator advertises, and the swarm it advertises them on.
#[derive(Debug)]
pub struct Waker {
    swarm: SwarmHandle,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Model id per cold resource.
    cold: BTreeMap<ResourceKey, String>,
    /// When each resource was last woken.
    woken: HashMap<ResourceKey, Instant>,
}

impl Waker {
    pub fn new(swarm: SwarmHandle) -> Arc<Self> {
        Arc::new(Waker {
            swarm,
            state: Mutex::default(),
        })
    }

    /// Says whether `namespace/name` is cold (`Some(model)`) or not; when that changes the
    /// list the heartbeats carry, a heartbeat goes out at once.
    pub fn set(&self, namespace: &str, name: &str, model: Option<String>) {
        let key = (namespace.to_owned(), name.to_owned());
        let changed = {
            let mut state = self.lock();
            let before = state.cold.get(&key).cloned();
            match &model {
                Some(model) => state.cold.insert(key, model.clone()),
                None => state.cold.remove(&key),
            };
            before != model
        };
        if changed {
            self.publish();
        }
    }

    /// Advertises nothing (the end of a term of leadership: another replica leads now).
    pub fn clear(&self) {
        let had = {
            let mut state = self.lock();
            let had = !state.cold.is_empty();
            *state = State::default();
            had
        };
        if had {
            self.publish();
        }
    }

    /// The cold models, as heartbeats list them (at most the heartbeat's model bound; the
    /// rest wait their turn as others wake or are deleted).
    pub fn advertised(&self) -> Vec<ColdModel> {
        self.lock()
            .cold
            .iter()
            .take(llamanet_swarm::heartbeat::MAX_MODELS)
            .map(|((namespace, name), model)| ColdModel {
                id: model.clone(),
                inference_node: InferenceNodeRef {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
            })
            .collect()
    }

    /// Whether this operator advertises what `request` names.
    pub fn advertises(&self, request: &WakeRequest) -> bool {
        let key = (
            request.inference_node.namespace.clone(),
            request.inference_node.name.clone(),
        );
        self.lock().cold.get(&key) == Some(&request.model)
    }

    /// Whether `key` was woken within [`REPEAT_WINDOW`] of `now`; if not, marks it woken.
    fn first_wake(&self, key: &ResourceKey, now: Instant) -> bool {
        let mut state = self.lock();
        state
            .woken
            .retain(|_, at| now.duration_since(*at) < REPEAT_WINDOW);
        if state.woken.contains_key(key) {
            return false;
        }
        state.woken.insert(key.clone(), now);
        true
    }

    fn publish(&self) {
        let cold = self.advertised();
        self.swarm.update_status(|status| status.cold = cold);
        let swarm = self.swarm.clone();
        tokio::spawn(async move {
            // No peer to publish to yet is fine: the next heartbeat carries it.
            let _ = swarm.publish_heartbeat().await;
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves wake requests for `ctx`'s term of leadership (until the task is aborted).
pub async fn serve(ctx: Arc<Context>, waker: Arc<Waker>) {
    let swarm = waker.swarm.clone();
    let decide = move |peer: PeerId, request: WakeRequest| {
        let ctx = ctx.clone();
        let waker = waker.clone();
        async move { answer(&ctx, &waker, peer, request).await }
    };
    if let Err(err) = wake::serve(&swarm, decide).await {
        tracing::error!(error = %err, "cannot serve wake requests");
    }
}

/// What the operator does about one wake request from `peer`.
pub async fn answer(
    ctx: &Context,
    waker: &Waker,
    peer: PeerId,
    request: WakeRequest,
) -> WakeAnswer {
    let WakeRequest {
        model,
        inference_node: InferenceNodeRef { namespace, name },
    } = &request;
    if !waker.advertises(&request) {
        ctx.metrics.wake_request("not_cold");
        return WakeAnswer::new(
            WakeOutcome::NotCold,
            format!(
                "this operator does not advertise model `{model}` of {namespace}/{name} as cold"
            ),
        );
    }
    let key = (namespace.clone(), name.clone());
    if !waker.first_wake(&key, Instant::now()) {
        ctx.metrics.wake_request("repeated");
        return WakeAnswer::new(WakeOutcome::Waking, format!("{namespace}/{name} is waking"));
    }
    let api = Api::<InferenceNode>::namespaced(ctx.client.clone(), namespace);
    let node = match api.get(name).await {
        Ok(node) => node,
        Err(err) => {
            ctx.metrics.wake_request("failed");
            return WakeAnswer::new(
                WakeOutcome::Failed,
                format!("reading {namespace}/{name}: {err}"),
            );
        }
    };
    if node.spec.replicas > 0 {
        ctx.metrics.wake_request("repeated");
        return WakeAnswer::new(
            WakeOutcome::Waking,
            format!(
                "{namespace}/{name} has {} replica(s) starting",
                node.spec.replicas
            ),
        );
    }
    let to = node
        .spec
        .autoscaling
        .as_ref()
        .map_or(1, |a| a.min_replicas.max(1));
    let patched = api
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": to } })),
        )
        .await;
    if let Err(err) = patched {
        ctx.metrics.wake_request("failed");
        return WakeAnswer::new(
            WakeOutcome::Failed,
            format!("scaling {namespace}/{name}: {err}"),
        );
    }
    let message = format!("0 -> {to} replicas: woken by a request for `{model}` at peer {peer}");
    tracing::info!(%namespace, %name, %peer, %model, "woken from zero");
    ctx.woken(&key, node.metadata.generation, to, message.clone());
    ctx.metrics.wake_request("woken");
    ctx.metrics.autoscaled(true);
    ctx.publish_event(
        &node,
        Event {
            type_: EventType::Normal,
            reason: "Woken".into(),
            note: Some(message.clone()),
            action: "Scale".into(),
            secondary: None,
        },
    )
    .await;
    WakeAnswer::new(WakeOutcome::Waking, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(model: &str, namespace: &str, name: &str) -> WakeRequest {
        WakeRequest {
            model: model.into(),
            inference_node: InferenceNodeRef {
                namespace: namespace.into(),
                name: name.into(),
            },
        }
    }

    #[tokio::test]
    async fn only_what_is_advertised_can_be_woken_and_repeats_cost_nothing() {
        let swarm = llamanet_swarm::start(
            llamanet_swarm::Keypair::generate_ed25519(),
            llamanet_swarm::SwarmConfig::light(Vec::new()),
        )
        .await
        .unwrap();
        let waker = Waker::new(swarm.clone());
        waker.set("ai", "gemma", Some("gemma-3".into()));
        assert!(waker.advertises(&request("gemma-3", "ai", "gemma")));
        // Another model, another resource, another namespace: nobody's to wake here.
        assert!(!waker.advertises(&request("gpt-4", "ai", "gemma")));
        assert!(!waker.advertises(&request("gemma-3", "ai", "other")));
        assert!(!waker.advertises(&request("gemma-3", "default", "gemma")));
        assert_eq!(
            swarm.status().cold,
            waker.advertised(),
            "heartbeats carry it"
        );

        let key = ("ai".to_owned(), "gemma".to_owned());
        let now = Instant::now();
        assert!(waker.first_wake(&key, now));
        assert!(!waker.first_wake(&key, now + Duration::from_secs(1)));
        assert!(waker.first_wake(&key, now + REPEAT_WINDOW));

        waker.set("ai", "gemma", None);
        assert!(!waker.advertises(&request("gemma-3", "ai", "gemma")));
        assert!(swarm.status().cold.is_empty());
        waker.set("ai", "gemma", Some("gemma-3".into()));
        waker.clear();
        assert!(
            swarm.status().cold.is_empty(),
            "a follower advertises nothing"
        );
    }
}
