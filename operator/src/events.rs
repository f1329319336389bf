//! Kubernetes Events about an InferenceNode: one per condition transition (a change of a
//! condition's status or reason, with the phase it led to) and one per failed write of a child.
//!
//! [`transitions`] is the pure part: it compares the status before and after a reconcile, so
//! an unchanged status makes no event however often it is reconciled. Publishing (through
//! kube's [`Recorder`], which folds repeats into an event series) is the reconciler's job.

use kube::runtime::events::{Event, EventType};

use crate::crd::{ConditionStatus, ConditionType, InferenceNodeStatus};

/// Condition reasons that need someone's attention; every other transition is Normal.
const WARNING_REASONS: &[&str] = &[
    "ChecksumMismatch",
    "FetchFailed",
    "OOMKilled",
    "ServerFailing",
    "Unschedulable",
    "HeartbeatLost",
    "NotJoined",
];

/// Reason of the event about a child the API server would not take.
pub const APPLY_FAILED: &str = "ApplyFailed";

/// The events for going from `old` to `new`: one per condition whose status or reason
/// changed (a changed message alone is not a transition), Ready first.
pub fn transitions(old: Option<&InferenceNodeStatus>, new: &InferenceNodeStatus) -> Vec<Event> {
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let old_phase = old.and_then(|s| s.phase);
    let phase_note = match (old_phase, new.phase) {
        (Some(before), Some(after)) if before != after => {
            format!(" (phase {before:?} -> {after:?})")
        }
        (None, Some(after)) => format!(" (phase {after:?})"),
        _ => String::new(),
    };
    new.conditions
        .iter()
        .filter(|c| {
            !old_conditions
                .iter()
                .any(|o| o.type_ == c.type_ && o.status == c.status && o.reason == c.reason)
        })
        .map(|c| {
            let warning =
                c.status != ConditionStatus::True && WARNING_REASONS.contains(&c.reason.as_str());
            let mut note = format!("{:?} is {:?}{phase_note}", c.type_, c.status);
            if !c.message.is_empty() {
                note.push_str(": ");
                note.push_str(&c.message);
            }
            Event {
                type_: if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: c.reason.clone(),
                note: Some(truncate(note)),
                // Distinct per condition, so Ready=False/HeartbeatLost and
                // HeartbeatFresh=False/HeartbeatLost are two events, not one series.
                action: action(c.type_).to_owned(),
                secondary: None,
            }
        })
        .collect()
}

/// The event about a child (`kind`/`name`) that could not be created or updated.
pub fn apply_failed(kind: &str, name: &str, error: &dyn std::fmt::Display) -> Event {
    Event {
        type_: EventType::Warning,
        reason: APPLY_FAILED.to_owned(),
        note: Some(truncate(format!("applying {kind} {name}: {error}"))),
        action: format!("Apply{kind}"),
        secondary: None,
    }
}

fn action(type_: ConditionType) -> &'static str {
    match type_ {
        ConditionType::Ready => "UpdateReady",
        ConditionType::ModelLoaded => "UpdateModelLoaded",
        ConditionType::SwarmJoined => "UpdateSwarmJoined",
        ConditionType::HeartbeatFresh => "UpdateHeartbeatFresh",
        ConditionType::Scaling => "Scale",
    }
}

/// The Events API takes notes up to 1 kB.
fn truncate(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut cut = MAX - 3;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
        note.push_str("...");
    }
    note
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{Condition, Phase};

    fn condition(type_: ConditionType, status: ConditionStatus, reason: &str) -> Condition {
        Condition {
            type_,
            status,
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: Time(Timestamp::from_second(1).unwrap()),
            observed_generation: Some(1),
        }
    }

    fn status(phase: Phase, conditions: Vec<Condition>) -> InferenceNodeStatus {
        InferenceNodeStatus {
            phase: Some(phase),
            conditions,
            ..InferenceNodeStatus::default()
        }
    }

    #[test]
    fn a_first_status_announces_every_condition() {
        let new = status(
            Phase::Loading,
            vec![
                condition(ConditionType::Ready, ConditionStatus::False, "Loading"),
                condition(
                    ConditionType::ModelLoaded,
                    ConditionStatus::False,
                    "Loading",
                ),
            ],
        );
        let events = transitions(None, &new);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].reason, "Loading");
        assert_eq!(events[0].type_, EventType::Normal);
        assert_eq!(
            events[0].note.as_deref(),
            Some("Ready is False (phase Loading): Loading message")
        );
    }

    #[test]
    fn an_unchanged_status_or_a_new_message_makes_no_event() {
        let old = status(
            Phase::Degraded,
            vec![condition(
                ConditionType::HeartbeatFresh,
                ConditionStatus::False,
                "HeartbeatLost",
            )],
        );
        assert!(transitions(Some(&old), &old).is_empty());
        let mut other_message = old.clone();
        other_message.conditions[0].message = "x-1 went silent too".into();
        assert!(transitions(Some(&old), &other_message).is_empty());
    }

    #[test]
    fn a_lost_heartbeat_is_a_warning_and_recovery_is_normal() {
        let ready = status(
            Phase::Ready,
            vec![
                condition(ConditionType::Ready, ConditionStatus::True, "Ready"),
                condition(
                    ConditionType::HeartbeatFresh,
                    ConditionStatus::True,
                    "Fresh",
                ),
            ],
        );
        let degraded = status(
            Phase::Degraded,
            vec![
                condition(
                    ConditionType::Ready,
                    ConditionStatus::False,
                    "HeartbeatLost",
                ),
                condition(
                    ConditionType::HeartbeatFresh,
                    ConditionStatus::False,
                    "HeartbeatLost",
                ),
            ],
        );
        let down = transitions(Some(&ready), &degraded);
        assert_eq!(down.len(), 2);
        assert!(down.iter().all(|e| e.reason == "HeartbeatLost"));
        assert!(down.iter().all(|e| e.type_ == EventType::Warning));
        assert_ne!(down[0].action, down[1].action);
        assert!(
            down[0]
                .note
                .as_deref()
                .unwrap()
                .contains("phase Ready -> Degraded")
        );

        let up = transitions(Some(&degraded), &ready);
        assert_eq!(
            up.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
            ["Ready", "Fresh"]
        );
        assert!(up.iter().all(|e| e.type_ == EventType::Normal));
    }

    #[test]
    fn notes_fit_the_events_api() {
        let long = apply_failed("StatefulSet", "gemma", &"é".repeat(2000));
        assert!(long.note.unwrap().len() <= 1024);
    }
}
