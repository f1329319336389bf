//! One pod's life on the local node: IP and volumes, init containers in
//! order, then every container supervised (probes, restarts with back-off by
//! the pod's restartPolicy), status written back, and a graceful stop
//! (preStop hook, SIGTERM, grace period, SIGKILL) when the pod is deleted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::NodeContext;
use super::container::{ProcessSpec, spawn};
use super::env::{PodFacts, container_argv, container_env};
use super::probe::{Timing, run_exec, run_once};
use super::volumes;

/// Back-off between restarts: 1 s doubling to 60 s (the kubelet uses 10 s to
/// 5 min; a local test bed wants crashes to come back quickly).
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the pod worker and its container supervisors share.
struct Shared {
    ctx: Arc<NodeContext>,
    pod: Pod,
    ns: String,
    name: String,
    uid: String,
    pod_ip: String,
    status: Mutex<PodStatusState>,
    changed: Notify,
    /// Grace period for stopping, set when the deletion is seen.
    grace_ms: AtomicU64,
}

#[derive(Default)]
struct PodStatusState {
    phase: &'static str,
    start_time: Option<Time>,
    ready_to_start: bool,
    initialized: bool,
    init: Vec<ContainerStatus>,
    main: Vec<ContainerStatus>,
    conditions: BTreeMap<&'static str, PodCondition>,
    message: Option<String>,
}

/// Runs the pod until it is deleted (`updates` shows a deletion timestamp) or
/// `gone` fires (the object vanished from the API: stop at once).
pub(crate) async fn run(
    ctx: Arc<NodeContext>,
    mut updates: watch::Receiver<Pod>,
    gone: CancellationToken,
) {
    let pod = updates.borrow().clone();
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        // Finished before this node (re)started: nothing to run, but a
        // deletion must still be confirmed.
        wait_for_deletion(&mut updates, &gone).await;
        finalize(&ctx, &ns, &name, &uid).await;
        return;
    }
    let Some(ip) = ctx.ips.allocate(&uid) else {
        warn!(pod = %name, "no free loopback address for the pod");
        return;
    };
    let shared = Arc::new(Shared {
        pod_ip: ip.to_string(),
        ctx: ctx.clone(),
        ns: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        status: Mutex::new(PodStatusState {
            phase: "Pending",
            start_time: Some(Time(Timestamp::now())),
            ..Default::default()
        }),
        changed: Notify::new(),
        grace_ms: AtomicU64::new(grace_of(&pod).as_millis() as u64),
        pod,
    });
    info!(pod = %format!("{ns}/{name}"), ip = %shared.pod_ip, "starting pod");
    shared.init_statuses();

    let writer = tokio::spawn(write_status_loop(shared.clone()));
    let stop = CancellationToken::new();
    let life = tokio::spawn(live(shared.clone(), stop.clone()));

    // Watch for the deletion while the pod lives.
    tokio::select! {
        _ = wait_for_deletion(&mut updates, &gone) => {}
        _ = gone.cancelled() => {}
    }
    let grace = if gone.is_cancelled() {
        Duration::ZERO
    } else {
        grace_of(&updates.borrow())
    };
    shared
        .grace_ms
        .store(grace.as_millis() as u64, Ordering::SeqCst);
    stop.cancel();
    let _ = life.await;
    writer.abort();
    write_status(&shared).await;
    finalize(&ctx, &ns, &name, &uid).await;
}

async fn wait_for_deletion(updates: &mut watch::Receiver<Pod>, gone: &CancellationToken) {
    loop {
        if updates.borrow().metadata.deletion_timestamp.is_some() || gone.is_cancelled() {
            return;
        }
        tokio::select! {
            r = updates.changed() => if r.is_err() { return },
            _ = gone.cancelled() => return,
        }
    }
}

/// Confirms the deletion to the API server (the kubelet's last word on a
/// pod) and frees the pod's address.
async fn finalize(ctx: &NodeContext, ns: &str, name: &str, uid: &str) {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    if let Err(e) = api.delete(name, &dp).await {
        debug!(pod = name, "final delete: {e}");
    }
    ctx.ips.release(uid);
    info!(pod = %format!("{ns}/{name}"), "pod stopped");
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

/// Everything from volumes to the last container's exit.
async fn live(shared: Arc<Shared>, stop: CancellationToken) {
    let spec = shared.pod.spec.clone().unwrap_or_default();
    let pod_dir = shared
        .ctx
        .dir
        .join("pods")
        .join(format!("{}_{}_{}", shared.ns, shared.name, shared.uid));
    let facts = PodFacts {
        pod_ip: shared.pod_ip.clone(),
        host_ip: "127.0.0.1".into(),
    };

    // Volumes and images: retried until they work, like the kubelet does.
    let mut delay = BACKOFF_START;
    let prepared = loop {
        match prepare(&shared, &pod_dir, &facts).await {
            Ok(p) => break p,
            Err((reason, message)) => {
                warn!(pod = %shared.name, %reason, "{message}");
                shared.set_all_waiting(reason, &message);
                if sleep_or_stop(&stop, delay).await {
                    return;
                }
                delay = (delay * 2).min(BACKOFF_MAX);
            }
        }
    };
    {
        let mut st = shared.status.lock().unwrap();
        st.ready_to_start = true;
    }
    shared.changed.notify_one();

    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        let pspec = prepared.init[i].clone();
        let native_sidecar = c.restart_policy.as_deref() == Some("Always");
        if native_sidecar {
            tokio::spawn(supervise(
                shared.clone(),
                Slot::Init(i),
                c.clone(),
                pspec,
                "Always".into(),
                stop.clone(),
            ));
            continue;
        }
        let rule = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        match supervise(
            shared.clone(),
            Slot::Init(i),
            c.clone(),
            pspec,
            rule.into(),
            stop.clone(),
        )
        .await
        {
            Some(0) => {}
            _ if stop.is_cancelled() => return,
            _ => {
                shared.set_phase("Failed", Some(format!("init container {} failed", c.name)));
                return;
            }
        }
    }
    {
        let mut st = shared.status.lock().unwrap();
        st.initialized = true;
        st.phase = "Running";
    }
    shared.changed.notify_one();

    let mut set = tokio::task::JoinSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        set.spawn(supervise(
            shared.clone(),
            Slot::Main(i),
            c.clone(),
            prepared.main[i].clone(),
            policy.clone(),
            stop.clone(),
        ));
    }
    let mut all_ok = true;
    while let Some(res) = set.join_next().await {
        all_ok &= matches!(res, Ok(Some(0)));
    }
    if !stop.is_cancelled() {
        shared.set_phase(if all_ok { "Succeeded" } else { "Failed" }, None);
    }
}

struct Prepared {
    init: Vec<ProcessSpec>,
    main: Vec<ProcessSpec>,
}

/// Volumes, images and process specs of every container, or why not
/// (`(reason, message)` as the container statuses should show it).
async fn prepare(
    shared: &Shared,
    pod_dir: &std::path::Path,
    facts: &PodFacts,
) -> Result<Prepared, (&'static str, String)> {
    let ctx = &shared.ctx;
    let pod = &shared.pod;
    let spec = pod.spec.clone().unwrap_or_default();
    let config_err = |e: anyhow::Error| ("CreateContainerConfigError", format!("{e:#}"));
    for d in ["logs", "home"] {
        std::fs::create_dir_all(pod_dir.join(d)).map_err(|e| config_err(e.into()))?;
    }
    set_mode(&pod_dir.join("home"), 0o777).map_err(config_err)?;
    let vols = volumes::prepare(&ctx.client, pod, pod_dir, facts)
        .await
        .map_err(config_err)?;
    let hosts = super::hosts::for_pod(&ctx.client, pod, &facts.pod_ip)
        .await
        .map_err(config_err)?;
    std::fs::write(pod_dir.join("hosts"), hosts).map_err(|e| config_err(e.into()))?;
    set_mode(&pod_dir.join("hosts"), 0o644).map_err(config_err)?;

    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let mut init = Vec::new();
    for c in spec.init_containers.iter().flatten() {
        init.push(container_spec(shared, c, &vols, &pod_sc, pod_dir, facts).await?);
    }
    let mut main = Vec::new();
    for c in &spec.containers {
        main.push(container_spec(shared, c, &vols, &pod_sc, pod_dir, facts).await?);
    }
    Ok(Prepared { init, main })
}

/// How to start one container: its image pulled, environment and argv
/// resolved, volumes mapped, user chosen.
async fn container_spec(
    shared: &Shared,
    c: &Container,
    vols: &BTreeMap<String, PathBuf>,
    pod_sc: &k8s_openapi::api::core::v1::PodSecurityContext,
    pod_dir: &std::path::Path,
    facts: &PodFacts,
) -> Result<ProcessSpec, (&'static str, String)> {
    let ctx = &shared.ctx;
    let config_err = |e: anyhow::Error| ("CreateContainerConfigError", format!("{e:#}"));
    let image_name = c.image.clone().unwrap_or_default();
    let image = ctx
        .images
        .resolve(&image_name)
        .map_err(|e| ("ErrImagePull", e.to_string()))?;
    let image_dir = ctx
        .images
        .pull(image, &ctx.dir.join("images"))
        .map_err(|e| ("ErrImagePull", e.to_string()))?;
    let path = format!("{}:{}", image_dir.display(), ctx.host_path);
    let mut base = ctx.base_env.clone();
    base.push(("PATH".into(), path.clone()));
    base.push(("HOSTNAME".into(), shared.name.clone()));
    base.push(("HOME".into(), pod_dir.join("home").display().to_string()));
    let env = container_env(&ctx.client, &shared.pod, c, facts, &base)
        .await
        .map_err(config_err)?;
    let argv = container_argv(c, &image.entrypoint, &env);
    let sc = c.security_context.clone().unwrap_or_default();
    let uid = sc
        .run_as_user
        .or(pod_sc.run_as_user)
        .map(|u| u as u32)
        .unwrap_or(image.user);
    let gid = sc
        .run_as_group
        .or(pod_sc.run_as_group)
        .map(|g| g as u32)
        .unwrap_or(uid);
    if uid == 0
        && sc
            .run_as_non_root
            .or(pod_sc.run_as_non_root)
            .unwrap_or(false)
    {
        return Err((
            "CreateContainerConfigError",
            "container has runAsNonRoot and would run as root (uid 0)".into(),
        ));
    }
    let mut groups: Vec<u32> = pod_sc
        .supplemental_groups
        .iter()
        .flatten()
        .map(|g| *g as u32)
        .collect();
    groups.extend(pod_sc.fs_group.map(|g| g as u32));
    groups.push(gid);
    let mut mounts = volumes::mounts(c, vols).map_err(config_err)?;
    // No cluster DNS here: names resolve through the hosts file `prepare` wrote.
    mounts.push(volumes::Mount {
        source: pod_dir.join("hosts"),
        target: "/etc/hosts".into(),
        read_only: true,
    });
    Ok(ProcessSpec {
        argv,
        env,
        mounts,
        working_dir: c.working_dir.clone().map(PathBuf::from),
        uid,
        gid,
        groups,
        path,
        log: pod_dir.join("logs").join(format!("{}.log", c.name)),
    })
}

/// The termination message `FallbackToLogsOnError` gives a failed container, as the
/// kubelet does: the end of its log, at most 80 lines and 2048 bytes. (Containers here
/// have no termination-log file, so the log is the only source.)
fn log_tail(log: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const MAX_LINES: usize = 80;
    const MAX_BYTES: u64 = 2048;
    // Only the end is read: a crash-looping container's log grows with every restart.
    let mut text = Vec::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(MAX_BYTES)));
        let _ = file.take(MAX_BYTES).read_to_end(&mut text);
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(MAX_LINES)..].join("\n")
}

fn set_mode(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Sleeps, or returns `true` early when `stop` fires.
async fn sleep_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Init(usize),
    Main(usize),
}

enum Outcome {
    Exited(i32),
    Unhealthy(String),
    Stop,
}

/// Runs one container until it will not be restarted again (by `policy`:
/// Always, OnFailure, Never) or `stop` fires. Returns the last exit code.
async fn supervise(
    shared: Arc<Shared>,
    slot: Slot,
    container: Container,
    spec: ProcessSpec,
    policy: String,
    stop: CancellationToken,
) -> Option<i32> {
    let mut delay = BACKOFF_START;
    loop {
        let mut child = match spawn(&spec) {
            Ok(c) => c,
            Err(e) => {
                shared.update(slot, |s| {
                    s.state = Some(waiting("RunContainerError", &format!("{e:#}")));
                });
                if sleep_or_stop(&stop, delay).await {
                    return None;
                }
                delay = (delay * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let pid = child.id().unwrap_or(0);
        shared.ctx.processes.lock().unwrap().insert(pid);
        let started_at = Time(Timestamp::now());
        shared.update(slot, |s| {
            s.state = Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started_at.clone()),
                }),
                ..Default::default()
            });
            s.container_id = Some(format!("process://{pid}"));
            s.started = Some(container.startup_probe.is_none());
            s.ready = false;
        });

        let outcome = tokio::select! {
            status = child.wait() => {
                let status = status.ok();
                let code = status.and_then(|s| s.code()).unwrap_or_else(|| {
                    128 + status
                        .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s))
                        .unwrap_or(9)
                });
                Outcome::Exited(code)
            }
            why = probes(&shared, slot, &container, &spec) => Outcome::Unhealthy(why),
            _ = stop.cancelled() => Outcome::Stop,
        };
        let code = match outcome {
            Outcome::Exited(code) => code,
            Outcome::Unhealthy(why) => {
                info!(pod = %shared.name, container = %container.name, "{why}; restarting");
                terminate(
                    &shared,
                    &container,
                    &spec,
                    &mut child,
                    Duration::from_secs(2),
                )
                .await
            }
            Outcome::Stop => {
                let grace = Duration::from_millis(shared.grace_ms.load(Ordering::SeqCst));
                terminate(&shared, &container, &spec, &mut child, grace).await
            }
        };
        shared.ctx.processes.lock().unwrap().remove(&pid);
        let finished_at = Time(Timestamp::now());
        let message = (code != 0
            && container.termination_message_policy.as_deref() == Some("FallbackToLogsOnError"))
        .then(|| log_tail(&spec.log))
        .filter(|tail| !tail.is_empty());
        shared.update(slot, |s| {
            s.state = Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                    started_at: Some(started_at.clone()),
                    finished_at: Some(finished_at.clone()),
                    container_id: Some(format!("process://{pid}")),
                    message: message.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            s.ready = false;
            s.started = Some(false);
        });
        if stop.is_cancelled() {
            return Some(code);
        }
        let restart = match policy.as_str() {
            "Always" => true,
            "OnFailure" => code != 0,
            _ => false,
        };
        if !restart {
            return Some(code);
        }
        // Ran long enough to count as healthy: start the back-off over.
        if Timestamp::now().duration_since(started_at.0).as_secs() > 60 {
            delay = BACKOFF_START;
        }
        shared.update(slot, |s| {
            s.last_state = s.state.take();
            s.state = Some(waiting(
                "CrashLoopBackOff",
                &format!(
                    "back-off {delay:?} restarting failed container {}",
                    container.name
                ),
            ));
            s.restart_count += 1;
        });
        if sleep_or_stop(&stop, delay).await {
            return Some(code);
        }
        delay = (delay * 2).min(BACKOFF_MAX);
    }
}

/// Startup probe first; then liveness (returns on failure) and readiness
/// (updates `ready`) side by side. Never returns while the container is healthy.
async fn probes(shared: &Shared, slot: Slot, c: &Container, spec: &ProcessSpec) -> String {
    let http = &shared.ctx.http;
    let ip = &shared.pod_ip;
    if let Some(p) = &c.startup_probe {
        let t = Timing::of(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut failures = 0;
        loop {
            match run_once(p, c, ip, spec, http).await {
                Ok(()) => break,
                Err(e) => {
                    failures += 1;
                    if failures >= t.failure_threshold {
                        return format!("startup probe failed {failures} times: {e}");
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
        shared.update(slot, |s| s.started = Some(true));
    }
    let readiness = async {
        let Some(p) = &c.readiness_probe else {
            shared.update(slot, |s| s.ready = true);
            return std::future::pending::<String>().await;
        };
        let t = Timing::of(p);
        tokio::time::sleep(t.initial_delay).await;
        let (mut ok, mut bad) = (0, 0);
        loop {
            match run_once(p, c, ip, spec, http).await {
                Ok(()) => {
                    ok += 1;
                    bad = 0;
                    if ok >= t.success_threshold {
                        shared.update(slot, |s| s.ready = true);
                    }
                }
                Err(e) => {
                    bad += 1;
                    ok = 0;
                    if bad >= t.failure_threshold {
                        debug!(container = %c.name, "readiness: {e}");
                        shared.update(slot, |s| s.ready = false);
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
    };
    let liveness = async {
        let Some(p) = &c.liveness_probe else {
            return std::future::pending::<String>().await;
        };
        let t = Timing::of(p);
        tokio::time::sleep(t.initial_delay).await;
        let mut bad = 0;
        loop {
            match run_once(p, c, ip, spec, http).await {
                Ok(()) => bad = 0,
                Err(e) => {
                    bad += 1;
                    if bad >= t.failure_threshold {
                        return format!("liveness probe failed {bad} times: {e}");
                    }
                }
            }
            tokio::time::sleep(t.period).await;
        }
    };
    tokio::select! {
        why = readiness => why,
        why = liveness => why,
    }
}

/// preStop hook, SIGTERM to the container's process group, then SIGKILL
/// after `grace`. Returns the exit code.
async fn terminate(
    shared: &Shared,
    c: &Container,
    spec: &ProcessSpec,
    child: &mut tokio::process::Child,
    grace: Duration,
) -> i32 {
    let deadline = tokio::time::Instant::now() + grace;
    if let Some(pre_stop) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()) {
        let hook = async {
            if let Some(exec) = &pre_stop.exec {
                let _ = run_exec(exec.command.as_deref().unwrap_or_default(), spec, grace).await;
            } else if let Some(get) = &pre_stop.http_get {
                let probe = k8s_openapi::api::core::v1::Probe {
                    http_get: Some(get.clone()),
                    timeout_seconds: Some(grace.as_secs().max(1) as i32),
                    ..Default::default()
                };
                let _ = run_once(&probe, c, &shared.pod_ip, spec, &shared.ctx.http).await;
            } else if let Some(sleep) = &pre_stop.sleep {
                tokio::time::sleep(Duration::from_secs(sleep.seconds.max(0) as u64)).await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, hook).await;
    }
    if let Some(pid) = child.id() {
        crate::process::signal_group(pid, libc::SIGTERM);
    }
    let status = match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            if let Some(pid) = child.id() {
                crate::process::signal_group(pid, libc::SIGKILL);
            }
            child.wait().await.ok()
        }
    };
    if let Some(pid) = child.id() {
        // Whatever the container forked goes with it.
        crate::process::signal_group(pid, libc::SIGKILL);
    }
    status
        .and_then(|s| {
            s.code()
                .or_else(|| std::os::unix::process::ExitStatusExt::signal(&s).map(|sig| 128 + sig))
        })
        .unwrap_or(137)
}

fn waiting(reason: &str, message: &str) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message: Some(message.into()),
        }),
        ..Default::default()
    }
}

impl Shared {
    fn init_statuses(&self) {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let fresh = |c: &Container| ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(waiting("ContainerCreating", "")),
            ..Default::default()
        };
        let mut st = self.status.lock().unwrap();
        st.init = spec.init_containers.iter().flatten().map(fresh).collect();
        st.main = spec.containers.iter().map(fresh).collect();
        drop(st);
        self.changed.notify_one();
    }

    fn update(&self, slot: Slot, f: impl FnOnce(&mut ContainerStatus)) {
        let mut st = self.status.lock().unwrap();
        let s = match slot {
            Slot::Init(i) => &mut st.init[i],
            Slot::Main(i) => &mut st.main[i],
        };
        f(s);
        drop(st);
        self.changed.notify_one();
    }

    fn set_all_waiting(&self, reason: &str, message: &str) {
        let mut guard = self.status.lock().unwrap();
        let st = &mut *guard;
        for s in st.init.iter_mut().chain(st.main.iter_mut()) {
            s.state = Some(waiting(reason, message));
        }
        drop(guard);
        self.changed.notify_one();
    }

    fn set_phase(&self, phase: &'static str, message: Option<String>) {
        let mut st = self.status.lock().unwrap();
        st.phase = phase;
        st.message = message;
        drop(st);
        self.changed.notify_one();
    }

    /// The pod's status as JSON for a strategic merge patch (conditions merge
    /// by type, so the scheduler's PodScheduled stays).
    fn status_json(&self) -> serde_json::Value {
        let mut st = self.status.lock().unwrap();
        let containers_ready = !st.main.is_empty() && st.main.iter().all(|c| c.ready);
        let wanted = [
            ("PodReadyToStartContainers", st.ready_to_start),
            ("Initialized", st.initialized),
            ("ContainersReady", containers_ready && st.phase == "Running"),
            ("Ready", containers_ready && st.phase == "Running"),
        ];
        for (ty, ok) in wanted {
            let status = if ok { "True" } else { "False" };
            let changed = st.conditions.get(ty).is_none_or(|c| c.status != status);
            if changed {
                st.conditions.insert(
                    ty,
                    PodCondition {
                        type_: ty.into(),
                        status: status.into(),
                        last_transition_time: Some(Time(Timestamp::now())),
                        ..Default::default()
                    },
                );
            }
        }
        serde_json::json!({
            "status": {
                "phase": st.phase,
                "message": st.message,
                "hostIP": "127.0.0.1",
                "hostIPs": [HostIP { ip: "127.0.0.1".into() }],
                "podIP": self.pod_ip,
                "podIPs": [PodIP { ip: self.pod_ip.clone() }],
                "startTime": st.start_time,
                "conditions": st.conditions.values().collect::<Vec<_>>(),
                "initContainerStatuses": st.init,
                "containerStatuses": st.main,
            }
        })
    }
}

/// Writes the status whenever something changed, coalescing bursts.
async fn write_status_loop(shared: Arc<Shared>) {
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        write_status(&shared).await;
    }
}

async fn write_status(shared: &Shared) {
    let api = Api::<Pod>::namespaced(shared.ctx.client.clone(), &shared.ns);
    let body = shared.status_json();
    if let Err(e) = api
        .patch_status(
            &shared.name,
            &PatchParams::default(),
            &Patch::Strategic(body),
        )
        .await
    {
        debug!(pod = %shared.name, "status patch: {e}");
    }
}
