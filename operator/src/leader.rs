//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one acts while the others stand by (kube-rs has no Lease helper).
//!
//! [`decide`] is the pure rule; [`Elector`] applies it in a loop against the API server and
//! publishes the replica's [`Role`]. Writes are optimistic: the Lease is replaced with the
//! resourceVersion it was read at, so of two candidates racing for a free Lease one gets a
//! conflict and stays a follower.
//!
//! Expiry is judged on this replica's clock, like client-go: a holder's Lease counts as expired
//! once this replica has seen it unchanged for a whole lease duration, whatever `renewTime`
//! says, so clock skew between replicas cannot make two of them leaders. A leader that cannot
//! renew for `renew_deadline` (shorter than the lease duration) steps down before anyone may
//! take over; on shutdown it clears `holderIdentity` so a standby takes over at its next look.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderElection;

/// What this replica currently is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Has not reached the API server (yet, or lately).
    Candidate,
    /// Another replica holds the Lease.
    Follower,
    /// Holds the Lease: the only replica that acts.
    Leader,
}

/// What to do with the Lease as last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Free, released or expired: take it.
    Acquire,
    /// Ours: renew it.
    Renew,
    /// Another replica holds it and has renewed within the lease duration.
    Follow { holder: String },
}

/// The rule: `lease` is the Lease's spec (`None` when there is none), `unchanged_for` how long
/// this replica has seen its holder and renew time unchanged, `default_duration` the lease
/// duration when the Lease names none.
pub fn decide(
    lease: Option<&LeaseSpec>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default_duration, Duration::from_secs);
    if unchanged_for >= duration {
        Decision::Acquire
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
        }
    }
}

/// The Lease as last seen: its holder and renew time, and since when (this replica's clock).
#[derive(Debug)]
struct Observed {
    record: Option<(Option<String>, Option<MicroTime>)>,
    since: Instant,
}

/// Competes for the Lease on behalf of one replica.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaderElection,
    identity: String,
    observed: Observed,
}

impl Elector {
    pub fn new(client: Client, settings: LeaderElection, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            identity,
            observed: Observed {
                record: None,
                since: Instant::now(),
            },
        }
    }

    /// Tries to acquire or renew until `shutdown`, publishing the role after every try. Does
    /// not release the Lease: the caller does that once the controller has stopped.
    pub async fn run(&mut self, role: &watch::Sender<Role>, shutdown: &CancellationToken) {
        let mut renewed_at: Option<Instant> = None;
        loop {
            // A hanging request must not keep a leader that cannot renew in office.
            let attempt = tokio::time::timeout(self.settings.retry_period * 2, self.attempt());
            let now = match attempt.await {
                Ok(Ok(Role::Leader)) => {
                    renewed_at = Some(Instant::now());
                    Role::Leader
                }
                Ok(Ok(other)) => other,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, lease = %self.settings.lease_name, "leader election: Lease not readable or writable");
                    Role::Candidate
                }
                Err(_) => {
                    tracing::warn!(lease = %self.settings.lease_name, "leader election: Lease request timed out");
                    Role::Candidate
                }
            };
            // A leader whose renewals fail stays one until the renew deadline, then stops.
            let now = match (now, renewed_at) {
                (Role::Candidate, Some(at)) if at.elapsed() < self.settings.renew_deadline => {
                    Role::Leader
                }
                (Role::Leader, _) => Role::Leader,
                (other, _) => {
                    renewed_at = None;
                    other
                }
            };
            let before = role.send_replace(now);
            if before != now {
                tracing::info!(identity = %self.identity, role = ?now, "leader election: role changed");
            }
            let wait = if now == Role::Leader {
                self.settings.renew_period
            } else {
                self.settings.retry_period
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One look at the Lease: acquires or renews it when [`decide`] says so.
    async fn attempt(&mut self) -> Result<Role, kube::Error> {
        let current = self.api.get_opt(&self.settings.lease_name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        let record = spec.map(|s| (s.holder_identity.clone(), s.renew_time.clone()));
        if record != self.observed.record {
            self.observed = Observed {
                record,
                since: Instant::now(),
            };
        }
        let decision = decide(
            spec,
            &self.identity,
            self.observed.since.elapsed(),
            self.settings.lease_duration,
        );
        if let Decision::Follow { holder } = &decision {
            tracing::debug!(%holder, "leader election: following");
            return Ok(Role::Follower);
        }

        let now = MicroTime(Timestamp::now());
        let previous_holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        let new_spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: match decision {
                Decision::Renew => spec.and_then(|s| s.acquire_time.clone()),
                _ => Some(now.clone()),
            },
            renew_time: Some(now),
            lease_transitions: Some(match (&decision, previous_holder) {
                (Decision::Acquire, Some(_)) => transitions.saturating_add(1),
                _ => transitions,
            }),
            ..LeaseSpec::default()
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.lease_name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // Keeps metadata.resourceVersion: a concurrent write makes this a conflict.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.settings.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Role::Leader),
            // Another candidate wrote first (409 on create and on a stale resourceVersion).
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Role::Follower),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up if this replica holds it, so a standby takes over at its next look
    /// instead of after a whole lease duration.
    pub async fn release(&self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.settings.lease_name).await? else {
                return Ok(false);
            };
            let Some(spec) = lease.spec.as_mut() else {
                return Ok(false);
            };
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api
                .replace(&self.settings.lease_name, &PostParams::default(), &lease)
                .await?;
            Ok::<_, kube::Error>(true)
        };
        match result.await {
            Ok(true) => {
                tracing::info!(identity = %self.identity, "leader election: Lease released")
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(error = %err, "leader election: releasing the Lease failed; a standby takes over when it expires")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DURATION: Duration = Duration::from_secs(15);

    fn held_by(holder: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_missing_or_released_lease_is_acquired() {
        assert_eq!(
            decide(None, "a", Duration::ZERO, DURATION),
            Decision::Acquire
        );
        let released = LeaseSpec {
            holder_identity: None,
            ..held_by("")
        };
        assert_eq!(
            decide(Some(&released), "a", Duration::ZERO, DURATION),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&held_by("")), "a", Duration::ZERO, DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_old() {
        assert_eq!(
            decide(Some(&held_by("a")), "a", Duration::from_secs(60), DURATION),
            Decision::Renew
        );
    }

    #[test]
    fn another_holder_is_followed_until_its_lease_expires() {
        let lease = held_by("b");
        assert_eq!(
            decide(Some(&lease), "a", Duration::from_secs(14), DURATION),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease), "a", Duration::from_secs(15), DURATION),
            Decision::Acquire
        );
    }

    #[test]
    fn the_lease_names_its_own_duration() {
        let short = LeaseSpec {
            lease_duration_seconds: Some(1),
            ..held_by("b")
        };
        assert_eq!(
            decide(Some(&short), "a", Duration::from_secs(2), DURATION),
            Decision::Acquire
        );
        let unnamed = LeaseSpec {
            lease_duration_seconds: None,
            ..held_by("b")
        };
        assert_eq!(
            decide(Some(&unnamed), "a", Duration::from_secs(2), DURATION),
            Decision::Follow { holder: "b".into() }
        );
    }
}
