//! The operator's own autoscaler (`spec.autoscaling`): replicas from the load the replicas
//! report in their heartbeats.
//!
//! Two pure steps, so both are unit-tested without a cluster:
//!
//! 1. [`recommend`]: the replicas the load asks for right now. As Kubernetes' HPA does, the
//!    observed figure per replica is compared with the target and the replicas reporting are
//!    scaled by that ratio (`ceil(reporting × observed / target)`), within a tolerance of
//!    10 % so that load near the target changes nothing, then bounded by `minReplicas` and
//!    `maxReplicas`. Only replicas with a fresh heartbeat report; with none, nothing is
//!    decided (a replica still loading its model says nothing about load).
//! 2. [`Stabilizer::decide`]: scale up at once (a heartbeat that shows the load wakes the
//!    reconciler, so that is within one heartbeat interval), scale down only to the highest
//!    recommendation of the last `scaleDownAfter`, so a short lull or a noisy figure does
//!    not remove a replica that the next burst needs again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::crd::{Autoscaling, AutoscalingTarget};
use crate::status::ReplicaHeartbeat;

/// `scaleDownAfter` when the spec names none.
pub const DEFAULT_SCALE_DOWN_AFTER: Duration = Duration::from_secs(300);

/// Load within this fraction of the target keeps the replicas as they are.
pub const TOLERANCE: f64 = 0.1;

/// What the replicas with fresh heartbeats report, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    pub reporting: u32,
    pub slots_busy: u64,
    pub slots_total: u64,
    pub queued: u64,
    /// Some replica generated tokens recently: a request may have come and gone between
    /// two heartbeats, so the load is not zero, whatever the slots said.
    pub generating: bool,
}

impl Load {
    pub fn of<'a>(fresh: impl IntoIterator<Item = &'a ReplicaHeartbeat>) -> Load {
        fresh.into_iter().fold(Load::default(), |load, h| Load {
            reporting: load.reporting + 1,
            slots_busy: load.slots_busy + u64::from(h.slots_busy.min(h.slots_total)),
            slots_total: load.slots_total + u64::from(h.slots_total),
            queued: load.queued + u64::from(h.queued),
            generating: load.generating || h.tokens_per_second > 0.0,
        })
    }
}

/// The load figure the policy compares with its target, per replica.
fn observed(target: AutoscalingTarget, load: &Load) -> (f64, f64) {
    match target {
        AutoscalingTarget::SlotsBusy(target) => {
            // Waiting requests count as busy slots: they are load a slot would take.
            let demand = (load.slots_busy + load.queued) as f64;
            (demand / load.slots_total.max(1) as f64, target)
        }
        AutoscalingTarget::QueuePerReplica(target) => (
            load.queued as f64 / f64::from(load.reporting.max(1)),
            f64::from(target),
        ),
    }
}

/// Why the autoscaler recommends what it does, for the `Scaling` condition and events.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub replicas: i32,
    /// What the replicas reported against the target, in words.
    pub reason: String,
    /// The load asked for more than `maxReplicas`.
    pub capped: bool,
}

/// The replicas `load` asks for under `policy`, `current` being `spec.replicas`. `None`
/// when no replica reports.
pub fn recommend(policy: &Autoscaling, current: i32, load: &Load) -> Option<Recommendation> {
    if load.reporting == 0 {
        return None;
    }
    let target = policy.target()?;
    let (observed, wanted) = observed(target, load);
    let ratio = observed / wanted;
    let reporting = i32::try_from(load.reporting).unwrap_or(i32::MAX);
    let raw = if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        // At most a few hundred replicas: the float is exact enough, and saturates.
        (f64::from(reporting) * ratio).ceil() as i32
    };
    // Zero only for a resource that is truly idle.
    let raw = if raw == 0 && (load.generating || load.slots_busy + load.queued > 0) {
        1
    } else {
        raw
    };
    let replicas = raw.clamp(policy.min_replicas, policy.max_replicas);
    let what = match target {
        AutoscalingTarget::SlotsBusy(_) => "of the slots busy or asked for",
        AutoscalingTarget::QueuePerReplica(_) => "requests waiting per replica",
    };
    let shown = |x: f64| match target {
        AutoscalingTarget::SlotsBusy(_) => format!("{:.0} %", x * 100.0),
        AutoscalingTarget::QueuePerReplica(_) => format!("{x:.1}"),
    };
    Some(Recommendation {
        replicas,
        reason: format!(
            "{} {what} on {reporting} reporting replica(s), target {}",
            shown(observed),
            shown(wanted)
        ),
        capped: raw > policy.max_replicas,
    })
}

/// What the autoscaler does about a recommendation.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No replica reports load (none runs yet, or all are loading).
    NoReports,
    /// Keep `spec.replicas`.
    Hold {
        recommendation: Recommendation,
        /// A lower recommendation waits for the scale-down window.
        delayed: bool,
    },
    /// Write `replicas` into `spec.replicas`.
    Scale {
        from: i32,
        to: i32,
        recommendation: Recommendation,
    },
}

/// The autoscaler's memory of one resource: recent recommendations (the scale-down window),
/// what it last wrote, and its last change.
#[derive(Debug, Default)]
pub struct Stabilizer {
    recent: VecDeque<(Instant, i32)>,
    /// Replicas written into the spec and the generation the resource had before: until the
    /// watch delivers a newer generation, the cached resource still has the old replicas,
    /// and acting on them would undo the change.
    written: Option<(i64, i32)>,
    /// The last change, for the condition while its replicas start or stop.
    last_scale: Option<LastScale>,
}

/// A change the autoscaler made.
#[derive(Debug, Clone, PartialEq)]
pub struct LastScale {
    pub to: i32,
    pub up: bool,
    pub message: String,
}

impl Stabilizer {
    /// The replicas the spec has: `spec` from a resource at `generation`, unless this
    /// autoscaler wrote others that the resource it was given does not show yet.
    pub fn current(&mut self, generation: Option<i64>, spec: i32) -> i32 {
        match (self.written, generation) {
            (Some((before, replicas)), Some(seen)) if seen <= before => replicas,
            _ => {
                self.written = None;
                spec
            }
        }
    }

    /// Remembers that `decision` was written to a resource that had `generation`.
    pub fn wrote(&mut self, generation: Option<i64>, decision: &Decision) {
        if let (
            Decision::Scale {
                from,
                to,
                recommendation,
            },
            Some(generation),
        ) = (decision, generation)
        {
            self.written = Some((generation, *to));
            self.last_scale = Some(LastScale {
                to: *to,
                up: to > from,
                message: format!("{from} -> {to} replicas: {}", recommendation.reason),
            });
        }
    }

    /// Remembers that a request woke the resource from zero to `to` replicas (written to a
    /// resource that had `generation`): the scale-down window starts now, so the replica
    /// stays at least `scaleDownAfter` however idle it is once the waiting requests are
    /// served.
    pub fn woken(&mut self, now: Instant, generation: Option<i64>, to: i32, message: String) {
        self.recent.clear();
        self.recent.push_back((now, to));
        if let Some(generation) = generation {
            self.written = Some((generation, to));
        }
        self.last_scale = Some(LastScale {
            to,
            up: true,
            message,
        });
    }

    pub fn last_scale(&self) -> Option<&LastScale> {
        self.last_scale.as_ref()
    }

    /// Decides from this reconcile's recommendation; `window` is `scaleDownAfter`.
    pub fn decide(
        &mut self,
        now: Instant,
        current: i32,
        recommendation: Option<Recommendation>,
        window: Duration,
    ) -> Decision {
        let Some(recommendation) = recommendation else {
            return Decision::NoReports;
        };
        if self.recent.is_empty() {
            // No history (a new resource, a restarted operator): as if the current replicas
            // had been recommended for the whole window, so nothing is removed at once.
            self.recent.push_back((now, current));
        }
        self.recent.push_back((now, recommendation.replicas));
        while self
            .recent
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > window)
            && self.recent.len() > 1
        {
            self.recent.pop_front();
        }
        let highest = self.recent.iter().map(|&(_, r)| r).max().unwrap_or(current);
        let to = if recommendation.replicas > current {
            recommendation.replicas
        } else {
            highest.min(current)
        };
        if to == current {
            return Decision::Hold {
                delayed: recommendation.replicas < current,
                recommendation,
            };
        }
        if to < current {
            // The window starts over from the new size.
            self.recent.clear();
            self.recent.push_back((now, to));
        }
        Decision::Scale {
            from: current,
            to,
            recommendation,
        }
    }
}

/// The `Scaling` condition the autoscaler's state makes.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingCondition {
    /// True while replicas the autoscaler added or removed are still on their way.
    pub active: bool,
    pub reason: &'static str,
    pub message: String,
}

impl ScalingCondition {
    /// From this reconcile's decision and the autoscaler's last change; `serving` is the
    /// replicas that serve and `replicas` the spec's (after the decision). A change stays
    /// `True` until the replicas serving match it.
    pub fn of(
        decision: &Decision,
        last: Option<&LastScale>,
        serving: i32,
        replicas: i32,
    ) -> ScalingCondition {
        let reason = |up: bool| if up { "ScaledUp" } else { "ScaledDown" };
        let starting = last.filter(|l| l.to == replicas && serving != replicas);
        match decision {
            Decision::Scale {
                from,
                to,
                recommendation,
            } => ScalingCondition {
                active: true,
                reason: reason(to > from),
                message: format!("{from} -> {to} replicas: {}", recommendation.reason),
            },
            _ if starting.is_some() => {
                let last = starting.expect("checked in the guard");
                ScalingCondition {
                    active: true,
                    reason: reason(last.up),
                    message: last.message.clone(),
                }
            }
            Decision::NoReports => ScalingCondition {
                active: false,
                reason: "NoLoadReports",
                message: format!(
                    "no replica has a fresh heartbeat to report its load; {replicas} replica(s) kept"
                ),
            },
            Decision::Hold {
                recommendation,
                delayed: true,
            } => ScalingCondition {
                active: false,
                reason: "ScaleDownDelayed",
                message: format!(
                    "{}: {} replica(s) would do, removed once the load has stayed low for scaleDownAfter",
                    recommendation.reason, recommendation.replicas
                ),
            },
            Decision::Hold { recommendation, .. } if recommendation.capped => ScalingCondition {
                active: false,
                reason: "AtMaxReplicas",
                message: format!(
                    "{}: more replicas would help, but maxReplicas is {replicas}",
                    recommendation.reason
                ),
            },
            Decision::Hold { recommendation, .. } => ScalingCondition {
                active: false,
                reason: "WithinTarget",
                message: recommendation.reason.clone(),
            },
        }
    }
}

/// Seconds of a `scaleDownAfter` such as `30s`, `5m` or `1h` (the schema's pattern).
pub fn parse_window(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let number: u64 = text[..text.len() - 1].parse().ok()?;
    let seconds = match unit {
        's' => number,
        'm' => number.checked_mul(60)?,
        'h' => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: i32, max: i32, target: AutoscalingTarget) -> Autoscaling {
        let (slots, queue) = match target {
            AutoscalingTarget::SlotsBusy(t) => (Some(t), None),
            AutoscalingTarget::QueuePerReplica(q) => (None, Some(q)),
        };
        Autoscaling {
            min_replicas: min,
            max_replicas: max,
            target_slots_busy: slots,
            target_queue_per_replica: queue,
            scale_down_after: "1m".into(),
        }
    }

    fn load(reporting: u32, busy: u64, total: u64, queued: u64) -> Load {
        Load {
            reporting,
            slots_busy: busy,
            slots_total: total,
            queued,
            generating: false,
        }
    }

    #[test]
    fn only_a_truly_idle_resource_goes_to_zero() {
        let p = policy(0, 2, AutoscalingTarget::SlotsBusy(0.8));
        assert_eq!(recommend(&p, 1, &load(1, 0, 8, 0)).unwrap().replicas, 0);
        // One busy slot of eight is far under the target, but it is a request.
        assert_eq!(recommend(&p, 1, &load(1, 1, 8, 0)).unwrap().replicas, 1);
        // Slots idle at the heartbeat, tokens generated since the last one.
        let between = Load {
            generating: true,
            ..load(1, 0, 8, 0)
        };
        assert_eq!(recommend(&p, 1, &between).unwrap().replicas, 1);
        // A queue target with nothing waiting still keeps the replica that is busy.
        let q = policy(0, 2, AutoscalingTarget::QueuePerReplica(4));
        assert_eq!(recommend(&q, 1, &load(1, 3, 8, 0)).unwrap().replicas, 1);
        assert_eq!(recommend(&q, 1, &load(1, 0, 8, 0)).unwrap().replicas, 0);
    }

    #[test]
    fn a_woken_resource_keeps_its_replica_for_the_whole_window() {
        let p = policy(0, 2, AutoscalingTarget::SlotsBusy(0.8));
        let window = Duration::from_secs(60);
        let mut s = Stabilizer::default();
        let t0 = Instant::now();
        // Idle for the window at one replica: to zero.
        s.decide(t0, 1, recommend(&p, 1, &load(1, 0, 8, 0)), window);
        let later = t0 + window + Duration::from_secs(1);
        let to_zero = s.decide(later, 1, recommend(&p, 1, &load(1, 0, 8, 0)), window);
        assert!(
            matches!(to_zero, Decision::Scale { from: 1, to: 0, .. }),
            "{to_zero:?}"
        );
        // A request wakes it; the held requests are served at once and it is idle again.
        let woke = later + Duration::from_secs(30);
        s.woken(woke, Some(7), 1, "0 -> 1 replicas: woken".into());
        assert_eq!(
            s.current(Some(7), 0),
            1,
            "the write is not undone by a stale cache"
        );
        let idle = recommend(&p, 1, &load(1, 0, 8, 0));
        let soon = s.decide(woke + Duration::from_secs(10), 1, idle.clone(), window);
        assert!(
            matches!(soon, Decision::Hold { delayed: true, .. }),
            "{soon:?}"
        );
        let after = s.decide(woke + window + Duration::from_secs(1), 1, idle, window);
        assert!(
            matches!(after, Decision::Scale { from: 1, to: 0, .. }),
            "{after:?}"
        );
        s.wrote(Some(8), &after);
        assert!(s.last_scale().is_some_and(|l| !l.up && l.to == 0));
    }

    #[test]
    fn busy_slots_over_the_target_add_replicas_up_to_the_maximum() {
        let p = policy(1, 4, AutoscalingTarget::SlotsBusy(0.5));
        // 1 replica of 8 slots, all busy: 100 % against 50 % wants 2.
        let r = recommend(&p, 1, &load(1, 8, 8, 0)).unwrap();
        assert_eq!((r.replicas, r.capped), (2, false));
        assert!(
            r.reason.contains("100 %") && r.reason.contains("50 %"),
            "{}",
            r.reason
        );
        // And 8 more waiting: 200 % wants 4.
        assert_eq!(recommend(&p, 1, &load(1, 8, 8, 8)).unwrap().replicas, 4);
        // 400 % would want 8: capped at 4, and says so.
        let r = recommend(&p, 1, &load(1, 8, 8, 24)).unwrap();
        assert_eq!((r.replicas, r.capped), (4, true));
    }

    #[test]
    fn load_near_the_target_changes_nothing_and_idle_goes_to_the_minimum() {
        let p = policy(1, 8, AutoscalingTarget::SlotsBusy(0.5));
        // 4 replicas, 17 of 32 busy: 53 % is within 10 % of 50 %; 19 of 32 (59 %) is not.
        assert_eq!(recommend(&p, 4, &load(4, 17, 32, 0)).unwrap().replicas, 4);
        assert_eq!(recommend(&p, 4, &load(4, 19, 32, 0)).unwrap().replicas, 5);
        assert_eq!(recommend(&p, 3, &load(3, 0, 24, 0)).unwrap().replicas, 1);
    }

    #[test]
    fn queue_targets_count_waiting_requests_per_replica() {
        let p = policy(2, 10, AutoscalingTarget::QueuePerReplica(2));
        // 2 replicas with 12 waiting: 6 per replica against 2 wants 6 replicas.
        assert_eq!(recommend(&p, 2, &load(2, 16, 16, 12)).unwrap().replicas, 6);
        // Nothing waiting: the minimum.
        assert_eq!(recommend(&p, 4, &load(4, 30, 32, 0)).unwrap().replicas, 2);
    }

    #[test]
    fn without_reports_nothing_is_decided() {
        let p = policy(1, 4, AutoscalingTarget::SlotsBusy(0.5));
        assert_eq!(recommend(&p, 3, &Load::default()), None);
        let mut s = Stabilizer::default();
        assert_eq!(
            s.decide(Instant::now(), 3, None, Duration::from_secs(60)),
            Decision::NoReports
        );
    }

    #[test]
    fn lying_figures_are_bounded() {
        // Busy above total (a broken or hostile peer) counts as full, and the replicas stay
        // within the bounds whatever the queue says.
        let hb = ReplicaHeartbeat {
            pod: "a-0".into(),
            peer_id: "p".into(),
            received_at: k8s_openapi::jiff::Timestamp::now(),
            tokens_per_second: 0.0,
            slots_busy: u32::MAX,
            slots_total: 8,
            queued: u32::MAX,
        };
        let l = Load::of([&hb, &hb]);
        assert_eq!((l.slots_busy, l.slots_total), (16, 16));
        let p = policy(1, 3, AutoscalingTarget::SlotsBusy(0.5));
        assert_eq!(recommend(&p, 2, &l).unwrap().replicas, 3);
    }

    fn rec(replicas: i32) -> Option<Recommendation> {
        Some(Recommendation {
            replicas,
            reason: String::new(),
            capped: false,
        })
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut s = Stabilizer::default();
        assert!(matches!(
            s.decide(t0, 1, rec(3), window),
            Decision::Scale { from: 1, to: 3, .. }
        ));
        // The load drops at once: held for the window.
        let at = |secs| t0 + Duration::from_secs(secs);
        assert!(matches!(
            s.decide(at(10), 3, rec(1), window),
            Decision::Hold { delayed: true, .. }
        ));
        assert!(matches!(
            s.decide(at(50), 3, rec(1), window),
            Decision::Hold { delayed: true, .. }
        ));
        // Once the 3 is older than the window, down to the highest recent one.
        assert!(matches!(
            s.decide(at(65), 3, rec(1), window),
            Decision::Scale { from: 3, to: 1, .. }
        ));
    }

    #[test]
    fn a_burst_inside_the_window_keeps_the_replicas() {
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut s = Stabilizer::default();
        // A fresh stabilizer (operator restart) does not scale down at once.
        assert!(matches!(
            s.decide(t0, 2, rec(1), window),
            Decision::Hold { delayed: true, .. }
        ));
        assert!(matches!(
            s.decide(at(40), 2, rec(2), window),
            Decision::Hold { delayed: false, .. }
        ));
        // 70 s after the start, but the 2 of 40 s is recent: still held.
        assert!(matches!(
            s.decide(at(70), 2, rec(1), window),
            Decision::Hold { delayed: true, .. }
        ));
        assert!(matches!(
            s.decide(at(101), 2, rec(1), window),
            Decision::Scale { from: 2, to: 1, .. }
        ));
    }

    #[test]
    fn the_condition_stays_true_until_the_new_replicas_serve() {
        let scaled = Decision::Scale {
            from: 1,
            to: 2,
            recommendation: rec(2).unwrap(),
        };
        let now = ScalingCondition::of(&scaled, None, 1, 2);
        assert_eq!((now.active, now.reason), (true, "ScaledUp"));
        assert!(
            now.message.starts_with("1 -> 2 replicas"),
            "{}",
            now.message
        );
        let mut stabilizer = Stabilizer::default();
        stabilizer.wrote(Some(1), &scaled);
        let previous = stabilizer.last_scale();
        let hold = Decision::Hold {
            recommendation: rec(2).unwrap(),
            delayed: false,
        };
        // The second replica still loads: still scaling, same message.
        let loading = ScalingCondition::of(&hold, previous, 1, 2);
        assert_eq!(
            (loading.active, loading.reason, &loading.message),
            (true, "ScaledUp", &now.message)
        );
        // It serves: done.
        let done = ScalingCondition::of(&hold, previous, 2, 2);
        assert_eq!((done.active, done.reason), (false, "WithinTarget"));
        let waiting = ScalingCondition::of(&Decision::NoReports, None, 0, 2);
        assert_eq!((waiting.active, waiting.reason), (false, "NoLoadReports"));
    }

    #[test]
    fn a_stale_resource_does_not_undo_what_was_written() {
        let mut stabilizer = Stabilizer::default();
        assert_eq!(stabilizer.current(Some(4), 1), 1);
        let scaled = Decision::Scale {
            from: 1,
            to: 2,
            recommendation: rec(2).unwrap(),
        };
        stabilizer.wrote(Some(4), &scaled);
        // The watch cache still has generation 4 with one replica.
        assert_eq!(stabilizer.current(Some(4), 1), 2);
        // Generation 5 is the write (or a later change by someone else): the spec is right.
        assert_eq!(stabilizer.current(Some(5), 2), 2);
        assert_eq!(stabilizer.current(Some(6), 3), 3);
        assert_eq!(stabilizer.current(Some(4), 1), 1, "forgotten once seen");
    }

    #[test]
    fn windows_parse_seconds_minutes_and_hours_only() {
        assert_eq!(parse_window("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_window("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_window("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "s", "5", "5d", "-5m", "1.5m", "99999999999999999999h"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }
}
