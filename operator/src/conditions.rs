//! Conditions of an InferenceNode and the helpers that set them.
//!
//! A [`ConditionSet`] starts from the conditions a resource had and is marked with the ones just
//! computed; only a change of `status` moves `lastTransitionTime`, so a reason or message that
//! changes while the status holds keeps the time the status was first reached (the
//! `metav1.Condition` contract that `kubectl wait` and alerting rely on). What each condition
//! means and how they are computed lives in `status.rs`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{Condition, ConditionStatus, ConditionType};

/// The conditions of one resource while a new status is computed.
#[derive(Clone, Debug)]
pub struct ConditionSet {
    conditions: Vec<Condition>,
    now: Time,
    generation: Option<i64>,
}

impl ConditionSet {
    /// Starts from `previous` (the resource's current conditions); `now` becomes the transition
    /// time of every condition whose status changes, `generation` their observedGeneration.
    pub fn new(previous: &[Condition], now: Time, generation: Option<i64>) -> Self {
        Self {
            conditions: previous.to_vec(),
            now,
            generation,
        }
    }

    pub fn mark_true(&mut self, type_: ConditionType, reason: &str, message: impl Into<String>) {
        self.mark(type_, ConditionStatus::True, reason, message.into());
    }

    pub fn mark_false(&mut self, type_: ConditionType, reason: &str, message: impl Into<String>) {
        self.mark(type_, ConditionStatus::False, reason, message.into());
    }

    pub fn mark_unknown(&mut self, type_: ConditionType, reason: &str, message: impl Into<String>) {
        self.mark(type_, ConditionStatus::Unknown, reason, message.into());
    }

    fn mark(
        &mut self,
        type_: ConditionType,
        status: ConditionStatus,
        reason: &str,
        message: String,
    ) {
        let generation = self.generation;
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => {
                if existing.status != status {
                    existing.last_transition_time = self.now.clone();
                }
                existing.status = status;
                existing.reason = reason.to_owned();
                existing.message = message;
                existing.observed_generation = generation;
            }
            None => self.conditions.push(Condition {
                type_,
                status,
                reason: reason.to_owned(),
                message,
                last_transition_time: self.now.clone(),
                observed_generation: generation,
            }),
        }
    }

    /// Drops the condition (one that no longer applies, like `Scaling` without autoscaling).
    pub fn remove(&mut self, type_: ConditionType) {
        self.conditions.retain(|c| c.type_ != type_);
    }

    pub fn get(&self, type_: ConditionType) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition is set with this status and one of these reasons (any reason when
    /// `reasons` is empty).
    pub fn is(&self, type_: ConditionType, status: ConditionStatus, reasons: &[&str]) -> bool {
        self.get(type_).is_some_and(|c| {
            c.status == status && (reasons.is_empty() || reasons.contains(&c.reason.as_str()))
        })
    }

    /// The conditions in a fixed order (Ready first), so an unchanged status serializes
    /// identically and is not patched again.
    pub fn into_vec(mut self) -> Vec<Condition> {
        self.conditions.sort_by_key(|c| c.type_);
        self.conditions
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn a_new_condition_takes_now_and_the_generation() {
        let mut set = ConditionSet::new(&[], at(10), Some(3));
        set.mark_true(ConditionType::Ready, "Ready", "all good");
        let c = set.get(ConditionType::Ready).unwrap();
        assert_eq!(c.status, ConditionStatus::True);
        assert_eq!(c.last_transition_time, at(10));
        assert_eq!(c.observed_generation, Some(3));
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut first = ConditionSet::new(&[], at(10), Some(1));
        first.mark_false(ConditionType::Ready, "Loading", "loading the model");
        let previous = first.into_vec();

        let mut same_status = ConditionSet::new(&previous, at(20), Some(2));
        same_status.mark_false(ConditionType::Ready, "HeartbeatLost", "x-0 went silent");
        let c = same_status.get(ConditionType::Ready).unwrap();
        assert_eq!(
            c.last_transition_time,
            at(10),
            "reason change keeps the time"
        );
        assert_eq!(c.reason, "HeartbeatLost");
        assert_eq!(c.message, "x-0 went silent");
        assert_eq!(c.observed_generation, Some(2));

        let mut flipped = ConditionSet::new(&previous, at(30), Some(2));
        flipped.mark_true(ConditionType::Ready, "Ready", "");
        assert_eq!(
            flipped
                .get(ConditionType::Ready)
                .unwrap()
                .last_transition_time,
            at(30)
        );
    }

    #[test]
    fn conditions_come_out_in_a_fixed_order() {
        let mut set = ConditionSet::new(&[], at(1), None);
        set.mark_unknown(ConditionType::HeartbeatFresh, "AwaitingHeartbeat", "");
        set.mark_true(ConditionType::SwarmJoined, "Joined", "");
        set.mark_false(ConditionType::Ready, "Loading", "");
        set.mark_false(ConditionType::ModelLoaded, "Fetching", "");
        assert!(set.is(ConditionType::Ready, ConditionStatus::False, &[]));
        assert!(set.is(
            ConditionType::ModelLoaded,
            ConditionStatus::False,
            &["Loading", "Fetching"]
        ));
        assert!(!set.is(
            ConditionType::ModelLoaded,
            ConditionStatus::False,
            &["Loading"]
        ));
        let types: Vec<_> = set.into_vec().into_iter().map(|c| c.type_).collect();
        assert_eq!(
            types,
            [
                ConditionType::Ready,
                ConditionType::ModelLoaded,
                ConditionType::SwarmJoined,
                ConditionType::HeartbeatFresh
            ]
        );
    }
}
