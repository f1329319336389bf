//! An InferenceNode's status from what the operator observed: its pods and the heartbeats
//! its replicas sent through the swarm.
//!
//! Everything here is pure: [`PodSummary::from_pod`] boils a Pod down to the stage its replica
//! is in, and [`compute`] turns an [`Observation`] (pod summaries, heartbeat table, clock) and
//! the previous status into the new one. The controller gathers the inputs and patches the
//! result; tests build the inputs by hand.
//!
//! # Conditions
//! Only replicas the spec wants count (pods `<name>-0` .. `<name>-<replicas-1>`; a pod being
//! scaled away does not).
//! - **ModelLoaded**: True (`Loaded`) when every replica serves (answers /health). Otherwise
//!   False with the most serious reason of any replica: `ChecksumMismatch` (the fetch init
//!   container found a file with another SHA-256), `FetchFailed`, `OOMKilled` (a container
//!   was killed for going over its memory limit, and has not served since), `ServerFailing`
//!   (crashing, image or config errors), `Fetching`, `Loading`, `Unschedulable`, `Pending`.
//! - **SwarmJoined**: True when every replica has sent a heartbeat. False `AwaitingHeartbeat`
//!   while a serving replica has not been heard from yet, `NotJoined` once it has served for
//!   three heartbeat intervals without one.
//! - **HeartbeatFresh**: False `HeartbeatLost` naming the pods whose newest heartbeat is older
//!   than three intervals; True when every replica's heartbeat is fresh; Unknown
//!   `AwaitingHeartbeat` while some have none yet.
//! - **Ready**: True when readyReplicas equals replicas and every replica's heartbeat is fresh;
//!   otherwise False with the reason of the condition that blocks it, most serious first
//!   (a `ChecksumMismatch` or `OOMKilled` model, then stale heartbeats, then the rest).
//!
//! With zero replicas nothing is wrong and nothing serves: ModelLoaded, SwarmJoined and
//! HeartbeatFresh are True and Ready is False, all with reason `ScaledToZero`; the phase is
//! **ScaledToZero**.
//!
//! # Phase
//! The phase mirrors the conditions; the first rule that matches wins:
//! 1. ModelLoaded False `ChecksumMismatch` → **Failed** (only a spec change can fix it);
//! 2. Ready True → **Ready**;
//! 3. HeartbeatFresh False `HeartbeatLost` → **Degraded**;
//! 4. ModelLoaded False `FetchFailed`, `OOMKilled` or `ServerFailing`, or SwarmJoined False
//!    `NotJoined`
//!    → **Degraded**;
//! 5. ModelLoaded False `Pending` or `Unschedulable` (pods not created, not scheduled)
//!    → **Pending**;
//! 6. otherwise (ModelLoaded False `Fetching` or `Loading`, or SwarmJoined False
//!    `AwaitingHeartbeat`) → **Loading**.

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::children::{FETCH_CONTAINER, SERVER_CONTAINER, pod_name};
use crate::conditions::ConditionSet;
use crate::crd::{ConditionStatus, ConditionType, InferenceNodeStatus, PeerStatus, Phase};

/// Heartbeats a replica may miss before it counts as lost.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Exit status of `llamanet fetch` when the file it got has another SHA-256 than the spec's.
/// A process exit status is all a pod reliably reports about an init container (termination
/// messages are optional), so the node and the operator agree on this number.
pub const FETCH_EXIT_CHECKSUM_MISMATCH: i32 = 3;

/// Exit status of `llamanet fetch` when no peer of the swarm and no source has the model.
pub const FETCH_EXIT_MODEL_UNAVAILABLE: i32 = 4;

/// Why a fetch init container failed, as far as the operator can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchFailure {
    /// The file it got has another SHA-256 than the spec's.
    ChecksumMismatch,
    /// Neither a peer nor the source has the model.
    Unavailable,
    /// Anything else (a network error, a full disk...): the message says.
    Other,
}

/// Where one replica's pod is on its way to serving.
#[derive(Clone, Debug, PartialEq)]
pub enum PodStage {
    /// Not scheduled yet (or not created).
    Pending,
    /// The scheduler found no node for it; the message says why.
    Unschedulable { message: String },
    /// The fetch init container is getting and verifying the model.
    Fetching,
    /// The fetch init container failed.
    FetchFailed {
        failure: FetchFailure,
        message: String,
    },
    /// The server runs and loads the model (not ready yet).
    Loading,
    /// The server answers /health; `since` is when the pod became ready.
    Serving { since: Option<Timestamp> },
    /// The server cannot run: it crashes, or its image or configuration is wrong.
    Failing { message: String },
    /// A container was killed by the kernel's OOM killer for going over its memory limit
    /// (now, or on its last run while it waits to restart or loads again).
    OutOfMemory {
        container: String,
        /// Its memory limit as the pod spec gives it (`None`: no limit, the node ran out).
        limit: Option<String>,
        restarts: i32,
    },
}

/// What the status computation needs to know about one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSummary {
    pub name: String,
    pub stage: PodStage,
}

impl PodSummary {
    /// Reads the stage of a replica from its Pod's status.
    pub fn from_pod(pod: &Pod) -> Self {
        let name = pod.metadata.name.clone().unwrap_or_default();
        Self {
            name,
            stage: stage_of(pod),
        }
    }
}

fn stage_of(pod: &Pod) -> PodStage {
    let Some(status) = &pod.status else {
        return PodStage::Pending;
    };
    let conditions = status.conditions.as_deref().unwrap_or_default();
    if let Some(unschedulable) = conditions.iter().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    }) {
        return PodStage::Unschedulable {
            message: unschedulable.message.clone().unwrap_or_default(),
        };
    }

    let inits = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default();
    if let Some(fetch) = inits.iter().find(|c| c.name == FETCH_CONTAINER) {
        if let Some(oom) = out_of_memory(pod, fetch) {
            return oom;
        }
        if let Some(failure) = fetch_failure(fetch) {
            return failure;
        }
        if let Some(message) = blocked(fetch) {
            return PodStage::Failing { message };
        }
        let done = fetch
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0);
        if !done {
            return PodStage::Fetching;
        }
    }

    let servers = status.container_statuses.as_deref().unwrap_or_default();
    let Some(server) = servers.iter().find(|c| c.name == SERVER_CONTAINER) else {
        return if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some()
        {
            PodStage::Loading
        } else {
            PodStage::Pending
        };
    };
    if server.ready {
        let since = conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0);
        return PodStage::Serving { since };
    }
    if let Some(oom) = out_of_memory(pod, server) {
        return oom;
    }
    if let Some(message) = blocked(server) {
        return PodStage::Failing { message };
    }
    if let Some(terminated) = server.state.as_ref().and_then(|s| s.terminated.as_ref())
        && terminated.exit_code != 0
    {
        return PodStage::Failing {
            message: format!("server exited with status {}", terminated.exit_code),
        };
    }
    PodStage::Loading
}

/// A container (not ready) whose current or last run the OOM killer ended: restarting it
/// will most likely end the same way, so it counts until the container serves again.
fn out_of_memory(pod: &Pod, container: &ContainerStatus) -> Option<PodStage> {
    let state = container.state.as_ref();
    let current = state.and_then(|s| s.terminated.as_ref());
    let last = container
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let killed = current
        .or(last)
        .is_some_and(|t| t.reason.as_deref() == Some("OOMKilled"));
    if !killed || container.ready {
        return None;
    }
    let spec = pod.spec.as_ref()?;
    let limit = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == container.name)
        .and_then(|c| c.resources.as_ref()?.limits.as_ref()?.get("memory"))
        .map(|q| q.0.clone());
    Some(PodStage::OutOfMemory {
        container: container.name.clone(),
        limit,
        restarts: container.restart_count,
    })
}

/// Why a container waits, when someone has to act: every waiting reason but the ordinary
/// ones of a starting pod (CrashLoopBackOff, ErrImagePull, CreateContainerConfigError for a
/// missing Secret or host path, ...).
fn blocked(container: &ContainerStatus) -> Option<String> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().unwrap_or_default();
    if matches!(reason, "" | "ContainerCreating" | "PodInitializing") {
        return None;
    }
    let message = waiting.message.as_deref().unwrap_or_default();
    Some(join_nonempty(reason, message))
}

/// A failed fetch, from the current state or (while the kubelet backs off before the next
/// try) from the last one.
fn fetch_failure(fetch: &ContainerStatus) -> Option<PodStage> {
    let current = fetch.state.as_ref().and_then(|s| s.terminated.as_ref());
    let backing_off = fetch
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .is_some();
    let last = fetch
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref());
    let terminated = match (current, last) {
        (Some(t), _) => t,
        (None, Some(t)) if backing_off => t,
        _ => return None,
    };
    if terminated.exit_code == 0 {
        return None;
    }
    // With FallbackToLogsOnError the message is the log's tail: progress lines, then the
    // error the fetch exits with. The last line is the one that says why.
    let message = terminated
        .message
        .as_deref()
        .and_then(|m| m.lines().map(str::trim).rfind(|l| !l.is_empty()))
        .unwrap_or_default();
    let failure = if terminated.exit_code == FETCH_EXIT_CHECKSUM_MISMATCH
        || message.contains("has sha256")
        || message.contains("is corrupt: sha256")
    {
        FetchFailure::ChecksumMismatch
    } else if terminated.exit_code == FETCH_EXIT_MODEL_UNAVAILABLE {
        FetchFailure::Unavailable
    } else {
        FetchFailure::Other
    };
    let message = if message.is_empty() {
        format!("model fetch exited with status {}", terminated.exit_code)
    } else {
        message.to_owned()
    };
    Some(PodStage::FetchFailed { failure, message })
}

/// The newest heartbeat the operator received from one replica.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaHeartbeat {
    pub pod: String,
    pub peer_id: String,
    /// When the operator received it (its own clock, so node clock skew does not matter).
    pub received_at: Timestamp,
    pub tokens_per_second: f64,
    pub slots_busy: u32,
    pub slots_total: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
}

/// Everything the status of one InferenceNode is computed from.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// metadata.name of the InferenceNode (its pods are `<name>-<ordinal>`).
    pub name: &'a str,
    pub generation: Option<i64>,
    /// spec.replicas.
    pub replicas: i32,
    pub pods: &'a [PodSummary],
    pub heartbeats: &'a [ReplicaHeartbeat],
    /// How often replicas send heartbeats.
    pub heartbeat_interval: Duration,
    pub now: Timestamp,
    /// Display name of the model.
    pub model: String,
    pub endpoint: String,
    pub selector: String,
    /// Healthy nodes serving the model anywhere in the swarm (`None`: no swarm view).
    pub swarm_nodes: Option<i32>,
    /// The autoscaler's state, for the `Scaling` condition (`None`: no autoscaling).
    pub scaling: Option<crate::autoscale::ScalingCondition>,
    /// Whether a request can wake the resource from zero (`autoscaling.minReplicas: 0`).
    pub wakeable: bool,
}

/// One replica the spec wants, with what is known about it.
struct Replica<'a> {
    pod: String,
    stage: PodStage,
    heartbeat: Option<&'a ReplicaHeartbeat>,
}

/// The new status from what was observed and the previous status (whose condition transition
/// times are kept where the status did not change).
pub fn compute(previous: Option<&InferenceNodeStatus>, obs: &Observation) -> InferenceNodeStatus {
    let replicas: Vec<Replica> = (0..obs.replicas.max(0))
        .map(|ordinal| {
            let pod = pod_name(obs.name, ordinal);
            let stage = obs
                .pods
                .iter()
                .find(|p| p.name == pod)
                .map_or(PodStage::Pending, |p| p.stage.clone());
            let heartbeat = obs.heartbeats.iter().find(|h| h.pod == pod);
            Replica {
                pod,
                stage,
                heartbeat,
            }
        })
        .collect();

    let lost_after = obs.heartbeat_interval * MISSED_HEARTBEATS;
    let age = |t: Timestamp| obs.now.duration_since(t);
    let is_fresh = |h: &ReplicaHeartbeat| age(h.received_at) <= signed(lost_after);

    let previous_conditions = previous
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let mut set = ConditionSet::new(previous_conditions, Time(obs.now), obs.generation);

    if replicas.is_empty() {
        for type_ in [
            ConditionType::ModelLoaded,
            ConditionType::SwarmJoined,
            ConditionType::HeartbeatFresh,
        ] {
            set.mark_true(type_, "ScaledToZero", "spec.replicas is 0");
        }
        let how = if obs.wakeable {
            "no replica runs; the first request for the model, at any node of the swarm, wakes it"
        } else {
            "spec.replicas is 0"
        };
        set.mark_false(ConditionType::Ready, "ScaledToZero", how);
    } else {
        mark_model_loaded(&mut set, &replicas);
        mark_swarm_joined(&mut set, &replicas, |since| age(since) > signed(lost_after));
        mark_heartbeat_fresh(&mut set, &replicas, &is_fresh, lost_after);
        mark_ready(&mut set, &replicas, &is_fresh);
    }
    match &obs.scaling {
        Some(scaling) if scaling.active => set.mark_true(
            ConditionType::Scaling,
            scaling.reason,
            scaling.message.clone(),
        ),
        Some(scaling) => set.mark_false(
            ConditionType::Scaling,
            scaling.reason,
            scaling.message.clone(),
        ),
        None => set.remove(ConditionType::Scaling),
    }
    let phase = if replicas.is_empty() {
        Phase::ScaledToZero
    } else {
        phase_of(&set)
    };

    let ready_replicas = replicas
        .iter()
        .filter(|r| matches!(r.stage, PodStage::Serving { .. }))
        .count() as i32;
    let peers: Vec<PeerStatus> = replicas
        .iter()
        .filter_map(|r| r.heartbeat)
        .map(|h| PeerStatus {
            pod: h.pod.clone(),
            peer_id: h.peer_id.clone(),
            last_heartbeat_time: Time(h.received_at),
            tokens_per_second: round_tenth(h.tokens_per_second),
            slots_busy: clamp_i32(h.slots_busy),
            slots_total: clamp_i32(h.slots_total),
        })
        .collect();
    let fresh: Vec<&ReplicaHeartbeat> = replicas
        .iter()
        .filter_map(|r| r.heartbeat)
        .filter(|h| is_fresh(h))
        .collect();

    InferenceNodeStatus {
        phase: Some(phase),
        conditions: set.into_vec(),
        replicas: obs.replicas,
        ready_replicas,
        replicas_ready: Some(format!("{ready_replicas}/{}", obs.replicas)),
        model: Some(obs.model.clone()),
        endpoint: Some(obs.endpoint.clone()),
        peer_count: fresh.len() as i32,
        last_heartbeat_time: peers.iter().map(|p| p.last_heartbeat_time.clone()).max(),
        peers,
        tokens_per_second: round_tenth(fresh.iter().map(|h| h.tokens_per_second).sum()),
        swarm_nodes: obs.swarm_nodes,
        observed_generation: obs.generation,
        selector: Some(obs.selector.clone()),
    }
}

/// How long until a status computed from `obs` could change with nothing new observed: when
/// the first fresh heartbeat goes stale, or a serving replica that was never heard from turns
/// `NotJoined`. `None` when nothing depends on the clock.
pub fn next_change(obs: &Observation) -> Option<Duration> {
    let lost_after = signed(obs.heartbeat_interval * MISSED_HEARTBEATS);
    let until = |t: Timestamp| {
        let left = lost_after - obs.now.duration_since(t);
        // Already past: that change has been computed, it is not a future one.
        (left >= SignedDuration::ZERO).then(|| Duration::try_from(left).unwrap_or(Duration::MAX))
    };
    (0..obs.replicas.max(0))
        .filter_map(|ordinal| {
            let pod = pod_name(obs.name, ordinal);
            match obs.heartbeats.iter().find(|h| h.pod == pod) {
                Some(heartbeat) => until(heartbeat.received_at),
                None => obs
                    .pods
                    .iter()
                    .find(|p| p.name == pod)
                    .and_then(|p| match p.stage {
                        PodStage::Serving { since: Some(t) } => until(t),
                        _ => None,
                    }),
            }
        })
        .min()
}

/// ModelLoaded from the most serious stage of any replica.
fn mark_model_loaded(set: &mut ConditionSet, replicas: &[Replica]) {
    let named = |pred: &dyn Fn(&PodStage) -> bool| -> Vec<&str> {
        replicas
            .iter()
            .filter(|r| pred(&r.stage))
            .map(|r| r.pod.as_str())
            .collect()
    };
    let first_message = |pred: &dyn Fn(&PodStage) -> Option<String>| -> String {
        replicas
            .iter()
            .find_map(|r| pred(&r.stage).map(|m| format!("{}: {m}", r.pod)))
            .unwrap_or_default()
    };
    let loaded = ConditionType::ModelLoaded;

    let mismatch = first_message(&|s| match s {
        PodStage::FetchFailed {
            failure: FetchFailure::ChecksumMismatch,
            message,
        } => Some(format!(
            "the model's SHA-256 is not spec.model.sha256 ({message})"
        )),
        _ => None,
    });
    if !mismatch.is_empty() {
        return set.mark_false(loaded, "ChecksumMismatch", mismatch);
    }
    let unavailable = first_message(&|s| match s {
        PodStage::FetchFailed {
            failure: FetchFailure::Unavailable,
            message,
        } => Some(message.clone()),
        _ => None,
    });
    if !unavailable.is_empty() {
        return set.mark_false(loaded, "ModelUnavailable", unavailable);
    }
    let fetch_failed = first_message(&|s| match s {
        PodStage::FetchFailed { message, .. } => Some(message.clone()),
        _ => None,
    });
    if !fetch_failed.is_empty() {
        return set.mark_false(loaded, "FetchFailed", fetch_failed);
    }
    let oom = first_message(&|s| match s {
        PodStage::OutOfMemory {
            container,
            limit,
            restarts,
        } => {
            let limit = limit.as_deref().map_or_else(
                || "no memory limit: the Kubernetes node ran out".to_owned(),
                |l| format!("memory limit {l}"),
            );
            Some(format!(
                "container {container} was OOMKilled ({limit}, {restarts} restarts); \
                 raise spec.resources.memory or use a smaller model or context"
            ))
        }
        _ => None,
    });
    if !oom.is_empty() {
        return set.mark_false(loaded, "OOMKilled", oom);
    }
    let failing = first_message(&|s| match s {
        PodStage::Failing { message } => Some(message.clone()),
        _ => None,
    });
    if !failing.is_empty() {
        return set.mark_false(loaded, "ServerFailing", failing);
    }
    let serving = named(&|s| matches!(s, PodStage::Serving { .. }));
    if serving.len() == replicas.len() {
        return set.mark_true(
            loaded,
            "Loaded",
            format!("all {} replicas serve the model", replicas.len()),
        );
    }
    let fetching = named(&|s| *s == PodStage::Fetching);
    if !fetching.is_empty() {
        return set.mark_false(
            loaded,
            "Fetching",
            format!("fetching and verifying the model: {}", fetching.join(", ")),
        );
    }
    let loading = named(&|s| *s == PodStage::Loading);
    if !loading.is_empty() {
        return set.mark_false(
            loaded,
            "Loading",
            format!("loading the model: {}", loading.join(", ")),
        );
    }
    let unschedulable = first_message(&|s| match s {
        PodStage::Unschedulable { message } => Some(message.clone()),
        _ => None,
    });
    if !unschedulable.is_empty() {
        return set.mark_false(loaded, "Unschedulable", unschedulable);
    }
    let pending = named(&|s| *s == PodStage::Pending);
    set.mark_false(
        loaded,
        "Pending",
        format!("waiting for pods: {}", pending.join(", ")),
    );
}

fn mark_swarm_joined(
    set: &mut ConditionSet,
    replicas: &[Replica],
    served_long: impl Fn(Timestamp) -> bool,
) {
    let silent: Vec<&Replica> = replicas.iter().filter(|r| r.heartbeat.is_none()).collect();
    if silent.is_empty() {
        return set.mark_true(
            ConditionType::SwarmJoined,
            "Joined",
            format!("all {} replicas sent heartbeats", replicas.len()),
        );
    }
    let not_joined: Vec<&str> = silent
        .iter()
        .filter(|r| matches!(r.stage, PodStage::Serving { since: Some(t) } if served_long(t)))
        .map(|r| r.pod.as_str())
        .collect();
    if !not_joined.is_empty() {
        return set.mark_false(
            ConditionType::SwarmJoined,
            "NotJoined",
            format!(
                "serving but no heartbeat reached the operator: {}",
                not_joined.join(", ")
            ),
        );
    }
    let names: Vec<&str> = silent.iter().map(|r| r.pod.as_str()).collect();
    set.mark_false(
        ConditionType::SwarmJoined,
        "AwaitingHeartbeat",
        format!("no heartbeat yet from {}", names.join(", ")),
    );
}

fn mark_heartbeat_fresh(
    set: &mut ConditionSet,
    replicas: &[Replica],
    is_fresh: &impl Fn(&ReplicaHeartbeat) -> bool,
    lost_after: Duration,
) {
    let lost: Vec<String> = replicas
        .iter()
        .filter_map(|r| r.heartbeat)
        .filter(|h| !is_fresh(h))
        // The time rather than the age, so a situation that does not change does not change
        // the status (and is not patched again).
        .map(|h| format!("{} (last heartbeat at {})", h.pod, h.received_at))
        .collect();
    if !lost.is_empty() {
        return set.mark_false(
            ConditionType::HeartbeatFresh,
            "HeartbeatLost",
            format!(
                "no heartbeat for more than {}s from {}",
                lost_after.as_secs(),
                lost.join(", ")
            ),
        );
    }
    if replicas.iter().all(|r| r.heartbeat.is_some()) {
        set.mark_true(
            ConditionType::HeartbeatFresh,
            "Fresh",
            format!(
                "every replica sent a heartbeat within {}s",
                lost_after.as_secs()
            ),
        );
    } else {
        set.mark_unknown(
            ConditionType::HeartbeatFresh,
            "AwaitingHeartbeat",
            "not every replica has sent a heartbeat yet",
        );
    }
}

fn mark_ready(
    set: &mut ConditionSet,
    replicas: &[Replica],
    is_fresh: &impl Fn(&ReplicaHeartbeat) -> bool,
) {
    let serving = replicas
        .iter()
        .filter(|r| matches!(r.stage, PodStage::Serving { .. }))
        .count();
    let all_fresh = replicas.iter().all(|r| r.heartbeat.is_some_and(is_fresh));
    if serving == replicas.len() && all_fresh {
        return set.mark_true(
            ConditionType::Ready,
            "Ready",
            format!(
                "{serving}/{} replicas serve with fresh heartbeats",
                replicas.len()
            ),
        );
    }
    // The reason is taken from the condition that blocks readiness, most serious first.
    let blocking = [
        (
            ConditionType::ModelLoaded,
            &["ChecksumMismatch", "OOMKilled"][..],
        ),
        (ConditionType::HeartbeatFresh, &[][..]),
        (ConditionType::ModelLoaded, &[][..]),
        (ConditionType::SwarmJoined, &[][..]),
    ]
    .into_iter()
    .find_map(|(type_, reasons)| {
        let c = set.get(type_)?;
        let blocks = c.status != ConditionStatus::True
            && (reasons.is_empty() || reasons.contains(&c.reason.as_str()));
        blocks.then(|| (c.reason.clone(), c.message.clone()))
    });
    let (reason, message) = blocking.unwrap_or_else(|| {
        (
            "ReplicasNotReady".to_owned(),
            format!("{serving}/{} replicas ready", replicas.len()),
        )
    });
    set.mark_false(ConditionType::Ready, &reason, message);
}

/// The phase as a mirror of the conditions (the rule is in the module docs).
fn phase_of(set: &ConditionSet) -> Phase {
    use ConditionStatus::{False, True};
    use ConditionType::{HeartbeatFresh, ModelLoaded, Ready, SwarmJoined};
    if set.is(ModelLoaded, False, &["ChecksumMismatch"]) {
        Phase::Failed
    } else if set.is(Ready, True, &[]) {
        Phase::Ready
    } else if set.is(HeartbeatFresh, False, &["HeartbeatLost"])
        || set.is(
            ModelLoaded,
            False,
            &["FetchFailed", "OOMKilled", "ServerFailing"],
        )
        || set.is(SwarmJoined, False, &["NotJoined"])
    {
        Phase::Degraded
    } else if set.is(ModelLoaded, False, &["Pending", "Unschedulable"]) {
        Phase::Pending
    } else {
        Phase::Loading
    }
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn round_tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn clamp_i32(x: u32) -> i32 {
    i32::try_from(x).unwrap_or(i32::MAX)
}

fn join_nonempty(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (false, false) => format!("{a}: {b}"),
        (false, true) => a.to_owned(),
        _ => b.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::Condition;

    const INTERVAL: Duration = Duration::from_secs(2);

    fn t(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn serving(name: &str) -> PodSummary {
        PodSummary {
            name: name.into(),
            stage: PodStage::Serving { since: Some(t(0)) },
        }
    }

    fn pod(name: &str, stage: PodStage) -> PodSummary {
        PodSummary {
            name: name.into(),
            stage,
        }
    }

    fn beat(pod: &str, at: Timestamp, tokens_per_second: f64) -> ReplicaHeartbeat {
        ReplicaHeartbeat {
            pod: pod.into(),
            peer_id: format!("12D3KooW{pod}"),
            received_at: at,
            tokens_per_second,
            slots_busy: 1,
            slots_total: 4,
            queued: 0,
        }
    }

    fn observe(
        replicas: i32,
        pods: &[PodSummary],
        heartbeats: &[ReplicaHeartbeat],
        now: Timestamp,
        previous: Option<&InferenceNodeStatus>,
    ) -> InferenceNodeStatus {
        compute(
            previous,
            &Observation {
                name: "gemma",
                generation: Some(4),
                replicas,
                pods,
                heartbeats,
                heartbeat_interval: INTERVAL,
                now,
                model: "gemma-3-270m".into(),
                endpoint: "http://gemma.ai.svc:8080/v1".into(),
                selector: "app.kubernetes.io/instance=gemma".into(),
                swarm_nodes: Some(5),
                scaling: None,
                wakeable: false,
            },
        )
    }

    fn condition(status: &InferenceNodeStatus, type_: ConditionType) -> &Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn serving_replicas_with_fresh_heartbeats_are_ready() {
        let pods = [serving("gemma-0"), serving("gemma-1")];
        let beats = [beat("gemma-0", t(9), 30.04), beat("gemma-1", t(10), 27.5)];
        let status = observe(2, &pods, &beats, t(10), None);
        assert_eq!(status.phase, Some(Phase::Ready));
        for type_ in [
            ConditionType::Ready,
            ConditionType::ModelLoaded,
            ConditionType::SwarmJoined,
            ConditionType::HeartbeatFresh,
        ] {
            let c = condition(&status, type_);
            assert_eq!(c.status, ConditionStatus::True, "{type_:?}: {c:?}");
            assert_eq!(c.observed_generation, Some(4));
        }
        assert_eq!(status.replicas, 2);
        assert_eq!(status.ready_replicas, 2);
        assert_eq!(status.replicas_ready.as_deref(), Some("2/2"));
        assert_eq!(status.peer_count, 2);
        assert_eq!(status.tokens_per_second, 57.5);
        // Nodes anywhere in the swarm, as the operator's swarm peer counted them.
        assert_eq!(status.swarm_nodes, Some(5));
        assert_eq!(status.last_heartbeat_time, Some(Time(t(10))));
        assert_eq!(status.observed_generation, Some(4));
        assert_eq!(status.peers.len(), 2);
        assert_eq!(status.peers[0].pod, "gemma-0");
        assert_eq!(status.peers[0].peer_id, "12D3KooWgemma-0");
        assert_eq!(status.peers[0].tokens_per_second, 30.0);
        assert_eq!(status.peers[0].slots_total, 4);
        assert_eq!(status.model.as_deref(), Some("gemma-3-270m"));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=gemma")
        );
    }

    #[test]
    fn a_heartbeat_older_than_three_intervals_degrades_naming_the_pod() {
        let pods = [serving("gemma-0"), serving("gemma-1")];
        // Exactly three intervals old is still fresh; one second more is lost.
        let beats = [beat("gemma-0", t(14), 30.0), beat("gemma-1", t(13), 20.0)];
        let fresh = observe(2, &pods, &beats, t(19), None);
        assert_eq!(fresh.phase, Some(Phase::Ready));
        let status = observe(2, &pods, &beats, t(20), Some(&fresh));
        assert_eq!(status.phase, Some(Phase::Degraded));
        let hb = condition(&status, ConditionType::HeartbeatFresh);
        assert_eq!(hb.status, ConditionStatus::False);
        assert_eq!(hb.reason, "HeartbeatLost");
        assert!(
            hb.message
                .contains(&format!("gemma-1 (last heartbeat at {})", t(13))),
            "{}",
            hb.message
        );
        assert!(!hb.message.contains("gemma-0"), "{}", hb.message);
        let ready = condition(&status, ConditionType::Ready);
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason, "HeartbeatLost");
        // The lost replica no longer counts as a peer nor towards tokens/s, but stays listed.
        assert_eq!(status.peer_count, 1);
        assert_eq!(status.tokens_per_second, 30.0);
        assert_eq!(status.peers.len(), 2);
    }

    #[test]
    fn a_restarted_replica_is_degraded_until_it_sends_heartbeats_again() {
        let beats = [beat("gemma-0", t(0), 30.0)];
        let restarting = [pod("gemma-0", PodStage::Loading)];
        let status = observe(1, &restarting, &beats, t(8), None);
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(
            condition(&status, ConditionType::Ready).reason,
            "HeartbeatLost"
        );

        let back = [beat("gemma-0", t(20), 30.0)];
        let status = observe(1, &[serving("gemma-0")], &back, t(21), Some(&status));
        assert_eq!(status.phase, Some(Phase::Ready));
    }

    #[test]
    fn checksum_mismatch_fails_the_model() {
        let pods = [pod(
            "gemma-0",
            PodStage::FetchFailed {
                failure: FetchFailure::ChecksumMismatch,
                message: "model fetch exited with status 3".into(),
            },
        )];
        let status = observe(1, &pods, &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Failed));
        let loaded = condition(&status, ConditionType::ModelLoaded);
        assert_eq!(loaded.status, ConditionStatus::False);
        assert_eq!(loaded.reason, "ChecksumMismatch");
        assert!(
            loaded.message.starts_with("gemma-0: "),
            "{}",
            loaded.message
        );
        assert_eq!(
            condition(&status, ConditionType::Ready).reason,
            "ChecksumMismatch"
        );
    }

    #[test]
    fn other_fetch_and_server_failures_degrade() {
        let fetch = [pod(
            "gemma-0",
            PodStage::FetchFailed {
                failure: FetchFailure::Other,
                message: "download failed: server answered 404".into(),
            },
        )];
        let status = observe(1, &fetch, &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(
            condition(&status, ConditionType::ModelLoaded).reason,
            "FetchFailed"
        );

        let nobody = [pod(
            "gemma-0",
            PodStage::FetchFailed {
                failure: FetchFailure::Unavailable,
                message: "model with sha256 ab is unavailable: no peer of the swarm shares it"
                    .into(),
            },
        )];
        let status = observe(1, &nobody, &[], t(0), None);
        let loaded = condition(&status, ConditionType::ModelLoaded);
        assert_eq!(loaded.reason, "ModelUnavailable");
        assert!(loaded.message.contains("no peer"), "{}", loaded.message);

        let crash = [
            serving("gemma-0"),
            pod(
                "gemma-1",
                PodStage::Failing {
                    message: "CrashLoopBackOff".into(),
                },
            ),
        ];
        let status = observe(2, &crash, &[beat("gemma-0", t(0), 1.0)], t(1), None);
        assert_eq!(status.phase, Some(Phase::Degraded));
        let loaded = condition(&status, ConditionType::ModelLoaded);
        assert_eq!(loaded.reason, "ServerFailing");
        assert_eq!(loaded.message, "gemma-1: CrashLoopBackOff");
    }

    #[test]
    fn fetching_and_loading_replicas_are_loading() {
        let status = observe(1, &[pod("gemma-0", PodStage::Fetching)], &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Loading));
        assert_eq!(
            condition(&status, ConditionType::ModelLoaded).reason,
            "Fetching"
        );

        let status = observe(1, &[pod("gemma-0", PodStage::Loading)], &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Loading));
        assert_eq!(
            condition(&status, ConditionType::ModelLoaded).reason,
            "Loading"
        );
        assert_eq!(
            condition(&status, ConditionType::HeartbeatFresh).status,
            ConditionStatus::Unknown
        );
    }

    #[test]
    fn missing_or_unschedulable_pods_are_pending() {
        let status = observe(2, &[], &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Pending));
        let loaded = condition(&status, ConditionType::ModelLoaded);
        assert_eq!(loaded.reason, "Pending");
        assert_eq!(loaded.message, "waiting for pods: gemma-0, gemma-1");
        assert_eq!(status.replicas_ready.as_deref(), Some("0/2"));

        let stuck = [pod(
            "gemma-0",
            PodStage::Unschedulable {
                message: "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.".into(),
            },
        )];
        let status = observe(1, &stuck, &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Pending));
        let loaded = condition(&status, ConditionType::ModelLoaded);
        assert_eq!(loaded.reason, "Unschedulable");
        assert!(loaded.message.contains("Insufficient nvidia.com/gpu"));
    }

    #[test]
    fn a_serving_replica_that_never_joins_degrades_after_three_intervals() {
        let pods = [PodSummary {
            name: "gemma-0".into(),
            stage: PodStage::Serving { since: Some(t(0)) },
        }];
        let status = observe(1, &pods, &[], t(5), None);
        assert_eq!(status.phase, Some(Phase::Loading));
        let joined = condition(&status, ConditionType::SwarmJoined);
        assert_eq!(joined.reason, "AwaitingHeartbeat");
        assert!(joined.message.contains("gemma-0"));

        let status = observe(1, &pods, &[], t(7), None);
        assert_eq!(status.phase, Some(Phase::Degraded));
        let joined = condition(&status, ConditionType::SwarmJoined);
        assert_eq!(joined.reason, "NotJoined");
        assert_eq!(
            condition(&status, ConditionType::Ready).status,
            ConditionStatus::False
        );
    }

    #[test]
    fn zero_replicas_are_scaled_to_zero_not_ready_and_nothing_is_wrong() {
        let status = observe(0, &[], &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::ScaledToZero));
        for c in &status.conditions {
            assert_eq!(c.reason, "ScaledToZero", "{:?}", c.type_);
            let expected = if c.type_ == ConditionType::Ready {
                ConditionStatus::False
            } else {
                ConditionStatus::True
            };
            assert_eq!(c.status, expected, "{:?}", c.type_);
        }
        assert_eq!(status.replicas_ready.as_deref(), Some("0/0"));
    }

    #[test]
    fn pods_and_heartbeats_beyond_the_replicas_are_ignored() {
        let pods = [serving("gemma-0"), pod("gemma-1", PodStage::Loading)];
        let beats = [beat("gemma-0", t(0), 10.0), beat("gemma-1", t(-60), 10.0)];
        let status = observe(1, &pods, &beats, t(1), None);
        assert_eq!(status.phase, Some(Phase::Ready));
        assert_eq!(status.peers.len(), 1);
        assert_eq!(status.replicas_ready.as_deref(), Some("1/1"));
    }

    #[test]
    fn transition_times_survive_recomputation() {
        let pods = [serving("gemma-0")];
        let first = observe(1, &pods, &[beat("gemma-0", t(0), 1.0)], t(1), None);
        let second = observe(
            1,
            &pods,
            &[beat("gemma-0", t(30), 2.0)],
            t(31),
            Some(&first),
        );
        assert_eq!(
            condition(&second, ConditionType::Ready).last_transition_time,
            Time(t(1))
        );
        let lost = observe(
            1,
            &pods,
            &[beat("gemma-0", t(30), 2.0)],
            t(40),
            Some(&second),
        );
        assert_eq!(
            condition(&lost, ConditionType::Ready).last_transition_time,
            Time(t(40))
        );
        assert_eq!(
            condition(&lost, ConditionType::ModelLoaded).last_transition_time,
            Time(t(1)),
            "unchanged conditions keep their time"
        );
    }

    fn pod_from(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "gemma-0"},
            "spec": {"nodeName": "node-0", "containers": [{"name": "llamanet"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn pod_stage_from_the_fetch_init_container() {
        let running = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"running": {}}}],
        }));
        assert_eq!(PodSummary::from_pod(&running).stage, PodStage::Fetching);

        let mismatch = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 1,
                "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 3}}}],
        }));
        assert_eq!(
            PodSummary::from_pod(&mismatch).stage,
            PodStage::FetchFailed {
                failure: FetchFailure::ChecksumMismatch,
                message: "model fetch exited with status 3".into()
            }
        );

        // No peer and no source had it.
        let unavailable = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 4, "message":
                    "error: model with sha256 ab is unavailable: no peer of the swarm shares it and there is no source\n"}}}],
        }));
        assert!(matches!(
            PodSummary::from_pod(&unavailable).stage,
            PodStage::FetchFailed { failure: FetchFailure::Unavailable, ref message } if message.contains("no peer")
        ));

        // Real clusters also carry the log tail (FallbackToLogsOnError).
        let by_message = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 1, "message":
                    "error: model source /model-source/m.gguf has sha256 00, expected ab\n"}}}],
        }));
        let PodStage::FetchFailed { failure, message } = PodSummary::from_pod(&by_message).stage
        else {
            panic!("not a fetch failure");
        };
        assert_eq!(failure, FetchFailure::ChecksumMismatch);
        assert!(message.ends_with("expected ab"), "{message}");

        // A full disk: the log tail ends with the error, and only that line is kept.
        let full_disk = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 2,
                "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message": concat!(
                    r#"{"level":"INFO","fields":{"message":"copying model"}}"#, "\n",
                    "error: cannot write /models/.m.gguf.part: No space left on device (os error 28)\n\n")}}}],
        }));
        assert_eq!(
            PodSummary::from_pod(&full_disk).stage,
            PodStage::FetchFailed {
                failure: FetchFailure::Other,
                message: "error: cannot write /models/.m.gguf.part: No space left on device (os error 28)"
                    .into()
            }
        );

        let no_model = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": "hostPath /models/m.gguf is not a file"}}}],
        }));
        assert_eq!(
            PodSummary::from_pod(&no_model).stage,
            PodStage::Failing {
                message: "CreateContainerConfigError: hostPath /models/m.gguf is not a file".into()
            }
        );

        let other = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 1}}}],
        }));
        assert!(matches!(
            PodSummary::from_pod(&other).stage,
            PodStage::FetchFailed {
                failure: FetchFailure::Other,
                ..
            }
        ));
    }

    #[test]
    fn pod_stage_from_the_server_container() {
        let ready = pod_from(json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True",
                "lastTransitionTime": "2027-01-15T08:00:00Z"}],
            "initContainerStatuses": [{"name": "fetch-model", "ready": true, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [{"name": "llamanet", "ready": true, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"running": {}}}],
        }));
        assert_eq!(
            PodSummary::from_pod(&ready).stage,
            PodStage::Serving {
                since: Some("2027-01-15T08:00:00Z".parse().unwrap())
            }
        );

        let loading = pod_from(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "llamanet", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "", "state": {"running": {}}}],
        }));
        assert_eq!(PodSummary::from_pod(&loading).stage, PodStage::Loading);

        let crashing = pod_from(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "llamanet", "ready": false, "restartCount": 4,
                "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}}}],
        }));
        assert_eq!(
            PodSummary::from_pod(&crashing).stage,
            PodStage::Failing {
                message: "CrashLoopBackOff: back-off 40s".into()
            }
        );

        let unschedulable: Pod = serde_json::from_value(json!({
            "metadata": {"name": "gemma-0"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]},
        }))
        .unwrap();
        assert!(matches!(
            PodSummary::from_pod(&unschedulable).stage,
            PodStage::Unschedulable { .. }
        ));
    }

    #[test]
    fn an_oom_killed_container_counts_until_it_serves_again() {
        let oom_pod = |status: serde_json::Value| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "gemma-0"},
                "spec": {"nodeName": "node-0", "containers": [{"name": "llamanet",
                    "resources": {"limits": {"memory": "48Mi"}}}]},
                "status": status,
            }))
            .unwrap()
        };
        let oom = PodStage::OutOfMemory {
            container: "llamanet".into(),
            limit: Some("48Mi".into()),
            restarts: 2,
        };
        // Just killed; backing off before the next run; running (loading) again: all OOM.
        for state in [
            json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}),
            json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}),
            json!({"running": {}}),
        ] {
            let killed = oom_pod(json!({
                "phase": "Running",
                "containerStatuses": [{"name": "llamanet", "ready": false, "restartCount": 2,
                    "image": "i", "imageID": "", "state": state,
                    "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
            }));
            assert_eq!(PodSummary::from_pod(&killed).stage, oom, "{state}");
        }
        // Serving again after an OOM kill: it serves.
        let recovered = oom_pod(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "llamanet", "ready": true, "restartCount": 2,
                "image": "i", "imageID": "", "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
        }));
        assert!(matches!(
            PodSummary::from_pod(&recovered).stage,
            PodStage::Serving { .. }
        ));
        // Another crash than an OOM kill is not one.
        let crashed = oom_pod(json!({
            "phase": "Running",
            "containerStatuses": [{"name": "llamanet", "ready": false, "restartCount": 1,
                "image": "i", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
        }));
        assert!(matches!(
            PodSummary::from_pod(&crashed).stage,
            PodStage::Failing { .. }
        ));
        // The fetch init container killed too (no limit of its own: the node's memory).
        let fetch_killed = pod_from(json!({
            "phase": "Pending",
            "initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 0,
                "image": "i", "imageID": "",
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
        }));
        assert_eq!(
            PodSummary::from_pod(&fetch_killed).stage,
            PodStage::OutOfMemory {
                container: "fetch-model".into(),
                limit: None,
                restarts: 0
            }
        );

        // The condition names the pod, the container, the limit and what to change; the
        // resource is Degraded, and an OOM kill outranks another replica's crash loop.
        let pods = [
            pod("gemma-0", oom.clone()),
            pod(
                "gemma-1",
                PodStage::Failing {
                    message: "CrashLoopBackOff".into(),
                },
            ),
        ];
        let status = observe(2, &pods, &[], t(0), None);
        assert_eq!(status.phase, Some(Phase::Degraded));
        let loaded = condition(&status, ConditionType::ModelLoaded);
        assert_eq!(loaded.status, ConditionStatus::False);
        assert_eq!(loaded.reason, "OOMKilled");
        assert_eq!(
            loaded.message,
            "gemma-0: container llamanet was OOMKilled (memory limit 48Mi, 2 restarts); \
             raise spec.resources.memory or use a smaller model or context"
        );
        assert_eq!(condition(&status, ConditionType::Ready).reason, "OOMKilled");
    }

    #[test]
    fn the_next_change_is_when_the_first_fresh_heartbeat_goes_stale() {
        fn obs(
            pods: &[PodSummary],
            heartbeats: &[ReplicaHeartbeat],
            now: Timestamp,
        ) -> Option<Duration> {
            next_change(&Observation {
                name: "gemma",
                generation: Some(1),
                replicas: 3,
                pods,
                heartbeats,
                heartbeat_interval: INTERVAL,
                now,
                model: String::new(),
                endpoint: String::new(),
                selector: String::new(),
                swarm_nodes: None,
                scaling: None,
                wakeable: false,
            })
        }
        // Lost after 6 s: gemma-1 (heard at 4) goes stale first, at 10.
        let beats = [
            beat("gemma-0", t(8), 1.0),
            beat("gemma-1", t(4), 1.0),
            // Scaled away: not a replica the spec wants.
            beat("gemma-7", t(1), 1.0),
        ];
        assert_eq!(obs(&[], &beats, t(7)), Some(Duration::from_secs(3)));
        // gemma-1 already stale: the next change is gemma-0's, at 14.
        assert_eq!(obs(&[], &beats, t(11)), Some(Duration::from_secs(3)));
        assert_eq!(obs(&[], &beats, t(15)), None);
        // A replica serving since 5 without a heartbeat turns NotJoined at 11.
        let pods = [PodSummary {
            name: "gemma-2".into(),
            stage: PodStage::Serving { since: Some(t(5)) },
        }];
        assert_eq!(obs(&pods, &beats[..1], t(9)), Some(Duration::from_secs(2)));
        assert_eq!(obs(&[], &[], t(9)), None);
    }
}
