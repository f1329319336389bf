//! Requests for a model that is scaled to zero: held, not refused, while its operator
//! wakes it.
//!
//! When no node serves a model but a live operator advertises it as cold (see
//! `crate::swarm::wake`), the entry node:
//! 1. takes a place in the model's hold queue ([`HoldPolicy::queue`] places; a full queue
//!    answers 503 `model_wake_queue_full` with `Retry-After` at once);
//! 2. asks an advertiser to wake it (one wake per model per [`HoldPolicy::rewake`],
//!    however many requests wait);
//! 3. waits until a healthy node serves the model (every heartbeat is a chance to look),
//!    then routes the request as if it had just arrived.
//!
//! A streamed request gets its response head at once and an SSE comment every
//! [`HoldPolicy::keepalive`] (so no proxy or client times the connection out), then the
//! answer's events; a hold that ends without a replica ends the stream with an error event.
//! A non-streamed request simply waits. Either way the hold is bounded by
//! [`HoldPolicy::timeout`], after which the answer is 503 `model_wake_timed_out` with
//! `Retry-After`: never a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use super::Router;
use super::error::RouteError;
use crate::swarm::wake::{self, WakeOutcome, WakeRequest};

/// How requests for a cold model are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldPolicy {
    /// Longest a request waits for the model to wake.
    pub timeout: Duration,
    /// Most requests held per model at once.
    pub queue: usize,
    /// SSE comment interval of a held stream.
    pub keepalive: Duration,
    /// How often the wake request is repeated while requests wait (a lost or refused wake,
    /// an operator that restarted).
    pub rewake: Duration,
}

impl Default for HoldPolicy {
    fn default() -> Self {
        HoldPolicy {
            timeout: Duration::from_secs(300),
            queue: 64,
            keepalive: Duration::from_secs(5),
            rewake: Duration::from_secs(15),
        }
    }
}

/// Per model: requests held and the last wake request sent.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    models: Mutex<HashMap<String, ModelHold>>,
}

#[derive(Debug, Default)]
struct ModelHold {
    waiting: usize,
    last_wake: Option<Instant>,
}

/// A place in a model's hold queue, given back on drop.
#[derive(Debug)]
pub(crate) struct Place {
    holds: Arc<Holds>,
    model: String,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut models = self.holds.lock();
        if let Some(hold) = models.get_mut(&self.model) {
            hold.waiting = hold.waiting.saturating_sub(1);
            if hold.waiting == 0 {
                models.remove(&self.model);
            }
        }
    }
}

impl Holds {
    /// A place for a request for `model`, if fewer than `limit` wait.
    pub(crate) fn enter(self: &Arc<Self>, model: &str, limit: usize) -> Option<Place> {
        let mut models = self.lock();
        let hold = models.entry(model.to_string()).or_default();
        if hold.waiting >= limit {
            return None;
        }
        hold.waiting += 1;
        Some(Place {
            holds: Arc::clone(self),
            model: model.to_string(),
        })
    }

    /// Requests held for `model` now.
    #[cfg(test)]
    fn waiting(&self, model: &str) -> usize {
        self.lock().get(model).map_or(0, |h| h.waiting)
    }

    /// Whether it is this caller's turn to send a wake for `model` (none sent within
    /// `every`); if so, marks it sent.
    fn wake_due(&self, model: &str, now: Instant, every: Duration) -> bool {
        let mut models = self.lock();
        let hold = models.entry(model.to_string()).or_default();
        let due = hold
            .last_wake
            .is_none_or(|last| now.duration_since(last) >= every);
        if due {
            hold.last_wake = Some(now);
        }
        due
    }

    /// Lets the next caller send a wake at once (the last one did not get through).
    fn forget_wake(&self, model: &str) {
        if let Some(hold) = self.lock().get_mut(model) {
            hold.last_wake = None;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ModelHold>> {
        self.models.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Router {
    /// Whether a request for `model`, which nobody serves, can be held: some live
    /// operator advertises it as cold and this node can reach the swarm.
    pub fn can_wake(&self, model: &str) -> bool {
        self.swarm().is_some() && !self.inner.peers.cold(model).is_empty()
    }

    /// Waits until a healthy node serves `model`, asking its advertisers to wake it,
    /// within the hold timeout counted from `since`. `local` says whether this node
    /// serves it itself.
    pub async fn wait_for_model(
        &self,
        model: &str,
        since: Instant,
        local: &(dyn Fn(&str) -> bool + Send + Sync),
    ) -> Result<(), RouteError> {
        let policy = self.config().hold;
        let deadline = since + policy.timeout;
        let timed_out = || RouteError::WakeTimedOut {
            model: model.to_string(),
            waited_s: policy.timeout.as_secs(),
        };
        let Some(swarm) = self.swarm().cloned() else {
            return Err(RouteError::not_served(model, self.models()));
        };
        let mut events = swarm.subscribe();
        let mut tried = 0usize;
        loop {
            if local(model) || !self.inner.peers.peers_serving(model).is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out());
            }
            if self.inner.holds.wake_due(model, now, policy.rewake) {
                let advertisers = self.inner.peers.cold(model);
                if advertisers.is_empty() {
                    // Nobody serves it and nobody can wake it any more (the resource
                    // was deleted, its operator left).
                    return Err(RouteError::not_served(model, self.models()));
                }
                // Each round asks the next advertiser, so one that cannot be reached
                // does not stall the wake.
                let (operator, cold) = &advertisers[tried % advertisers.len()];
                tried += 1;
                let left = deadline.saturating_duration_since(now);
                match wake::ask(
                    &swarm,
                    *operator,
                    &WakeRequest::from(cold),
                    left.min(wake::IO_TIMEOUT * 2),
                )
                .await
                {
                    Ok(answer) => {
                        tracing::info!(
                            model,
                            operator = %operator,
                            outcome = answer.outcome.as_str(),
                            message = %answer.message,
                            "asked to wake a cold model"
                        );
                        self.inner.metrics.record_wake(answer.outcome.as_str());
                        if matches!(answer.outcome, WakeOutcome::Failed | WakeOutcome::Malformed) {
                            return Err(RouteError::WakeFailed {
                                model: model.to_string(),
                                reason: answer.message,
                            });
                        }
                    }
                    Err(err) => {
                        tracing::warn!(model, operator = %operator, error = %err, "a wake request failed");
                        self.inner.metrics.record_wake("unreachable");
                        // The next waiting request (or the next round) tries another.
                        self.inner.holds.forget_wake(model);
                    }
                }
            }
            // Every heartbeat may be the first replica's; the tick bounds the wait when
            // heartbeats are lost, and re-checks the deadline.
            let tick = tokio::time::sleep(Duration::from_millis(500));
            tokio::select! {
                event = events.recv() => {
                    if let Err(RecvError::Closed) = event {
                        return Err(timed_out());
                    }
                }
                () = tick => {}
                () = tokio::time::sleep_until(deadline.into()) => return Err(timed_out()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_queue_is_bounded_per_model_and_places_come_back() {
        let holds = Arc::new(Holds::default());
        let first = holds.enter("m", 2).unwrap();
        let second = holds.enter("m", 2).unwrap();
        assert!(holds.enter("m", 2).is_none(), "a third waits nowhere");
        assert!(
            holds.enter("other", 2).is_some(),
            "other models have their own"
        );
        assert_eq!(holds.waiting("m"), 2);
        drop(first);
        assert_eq!(holds.waiting("m"), 1);
        assert!(holds.enter("m", 2).is_some());
        drop(second);
        assert_eq!(holds.waiting("m"), 0);
    }

    #[test]
    fn one_wake_per_model_per_interval_however_many_wait() {
        let holds = Holds::default();
        let every = Duration::from_secs(15);
        let now = Instant::now();
        assert!(holds.wake_due("m", now, every));
        assert!(!holds.wake_due("m", now + Duration::from_secs(1), every));
        assert!(holds.wake_due("other", now, every));
        assert!(
            holds.wake_due("m", now + every, every),
            "repeated after the interval"
        );
        holds.forget_wake("m");
        assert!(
            holds.wake_due("m", now + every + Duration::from_secs(1), every),
            "at once after a wake that did not get through"
        );
    }
}
