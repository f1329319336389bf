//! Health that tells the truth: a node whose engine thread or swarm task has died, or has
//! stopped making progress, must not keep answering `/health` with 200 while every
//! request fails. The watchdog looks once a second; on a failure it marks the node
//! unhealthy (`/health` 503 with the reason, `healthy: false` in the next heartbeat) and
//! `serve` exits non-zero shortly after, so Kubernetes restarts the pod. It runs on a
//! thread of its own, so a wedged async runtime cannot silence it.
//!
//! "No progress" is measured from the watchdog's own observations, never from a clock
//! the watched thread keeps: the engine is stalled when it has had work (busy slots or
//! queued requests) on every look for `stall_limit` and its step counter has not moved;
//! the swarm is stalled when its event loop, which turns at least every second on its own
//! timers, has not turned for `stall_limit`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::AppState;

/// How the watchdog looks and how long an unhealthy node lingers before it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// How long the engine (with work) or the swarm loop may go without progress.
    pub stall_limit: Duration,
    /// Between looks.
    pub check_every: Duration,
    /// From the failure to the exit: `/health` answers 503 meanwhile, and the swarm (when
    /// alive) hears that this node is leaving.
    pub exit_after: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            stall_limit: Duration::from_secs(120),
            check_every: Duration::from_secs(1),
            exit_after: Duration::from_secs(2),
        }
    }
}

/// Time without progress of something that counts its turns.
#[derive(Debug, Default, Clone)]
pub struct StallClock {
    turns: u64,
    since: Option<Instant>,
}

impl StallClock {
    /// How long `turns` has stood still while `working`, as observed at `now`. Any change
    /// of `turns`, or a look without work, starts the clock again.
    pub fn observe(&mut self, working: bool, turns: u64, now: Instant) -> Duration {
        if !working || turns != self.turns {
            self.turns = turns;
            self.since = working.then_some(now);
            return Duration::ZERO;
        }
        now.saturating_duration_since(*self.since.get_or_insert(now))
    }
}

/// The watchdog's memory between looks.
#[derive(Debug, Default)]
pub struct Watchdog {
    stall_limit: Duration,
    #[cfg(feature = "engine")]
    engine: StallClock,
    swarm: StallClock,
}

impl Watchdog {
    pub fn new(stall_limit: Duration) -> Self {
        Watchdog {
            stall_limit,
            ..Watchdog::default()
        }
    }

    /// One look: why the node is unhealthy, if it is.
    pub fn check(&mut self, state: &AppState, now: Instant) -> Option<String> {
        #[cfg(feature = "engine")]
        if let Some(loaded) = state.loaded() {
            let engine = &loaded.engine;
            if !engine.is_running() {
                return Some("the engine thread has stopped".into());
            }
            let load = engine.load();
            let working = load.busy_slots.load(Ordering::Relaxed) > 0 || engine.queue_depth() > 0;
            let stalled = self.engine.observe(working, load.steps(), now);
            if stalled >= self.stall_limit {
                return Some(format!(
                    "the engine has made no progress for {} s with requests waiting",
                    stalled.as_secs()
                ));
            }
        }
        if let Some(swarm) = state.swarm.get() {
            if !swarm.is_running() {
                return Some("the swarm task has stopped".into());
            }
            let stalled = self.swarm.observe(true, swarm.loop_turns(), now);
            if stalled >= self.stall_limit {
                return Some(format!(
                    "the swarm event loop has made no progress for {} s",
                    stalled.as_secs()
                ));
            }
        }
        None
    }
}

/// Starts the watchdog on a thread of its own: it must see a stuck async runtime too. It
/// looks every `check_every` until the node is found unhealthy; then it records the reason
/// in `state.failure` (for `/health` and heartbeats) and sends it to `serve`, which exits
/// after `exit_after`. Should the runtime be too stuck for that, the watchdog exits the
/// process itself a few seconds later.
pub fn spawn(
    state: AppState,
    config: WatchdogConfig,
    unhealthy: tokio::sync::mpsc::Sender<String>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("llamanet-watchdog".into())
        .spawn(move || {
            let mut watchdog = Watchdog::new(config.stall_limit);
            loop {
                std::thread::sleep(config.check_every);
                if state.shutting_down.load(Ordering::Relaxed) {
                    return;
                }
                let Some(reason) = watchdog.check(&state, Instant::now()) else {
                    continue;
                };
                let _ = state.failure.set(reason.clone());
                let _ = unhealthy.try_send(reason.clone());
                std::thread::sleep(config.exit_after * 2 + Duration::from_secs(5));
                tracing::error!(%reason, "the server did not stop in time; exiting");
                std::process::exit(70);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_time_with_work_and_without_a_turn() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut clock = StallClock::default();
        assert_eq!(clock.observe(false, 0, at(0)), Duration::ZERO);
        // Work arrives: the clock starts at the first look that sees it.
        assert_eq!(clock.observe(true, 0, at(10)), Duration::ZERO);
        assert_eq!(clock.observe(true, 0, at(13)), Duration::from_secs(3));
        // A turn restarts it.
        assert_eq!(clock.observe(true, 1, at(14)), Duration::ZERO);
        assert_eq!(clock.observe(true, 1, at(20)), Duration::from_secs(6));
        // Idle, however long, is no stall; nor is the first look after it.
        assert_eq!(clock.observe(false, 1, at(500)), Duration::ZERO);
        assert_eq!(clock.observe(true, 1, at(501)), Duration::ZERO);
        assert_eq!(clock.observe(true, 1, at(502)), Duration::from_secs(1));
    }
}
