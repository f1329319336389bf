//! Bootstrap targets and their retry schedule.
//!
//! A node joins the swarm by dialing the `--bootstrap` multiaddrs it was given: `/ip4`,
//! `/ip6`, `/dns4`, `/dns6` or `/dns` addresses, with or without a trailing `/p2p/<peer id>`.
//! Without a peer id the dial learns it from the connection (and identify then tells
//! Kademlia the peer's listen addresses). A target is retried with exponential backoff
//! (capped) until it has answered once; in Kubernetes the bootstrap peer is often a Service
//! whose pods start after this one, so giving up would split the swarm.
//!
//! This file holds the schedule and the state of every target and its dials
//! ([`Bootstrapper`], unit-tested without a Swarm); the event loop does the dialing.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// Backoff settings.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// One bootstrap address and where it stands.
#[derive(Debug, Clone)]
pub struct BootstrapTarget {
    /// The address as given (used in logs).
    pub addr: Multiaddr,
    /// The address without `/p2p/...`, what is dialed.
    pub dial_addr: Multiaddr,
    /// The expected peer, when the address named one.
    pub peer: Option<PeerId>,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// When to try next; `None` while a dial is in flight or after success.
    pub next_attempt: Option<Instant>,
    /// Whether it has answered at least once.
    pub answered: bool,
    /// Whether it turned out to be this node itself (never dialed again).
    pub is_self: bool,
    /// The peer that answered last.
    pub reached: Option<PeerId>,
}

impl BootstrapTarget {
    pub fn new(addr: Multiaddr, now: Instant) -> Self {
        let (dial_addr, peer) = split_peer_id(&addr);
        BootstrapTarget {
            addr,
            dial_addr,
            peer,
            failures: 0,
            next_attempt: Some(now),
            answered: false,
            is_self: false,
            reached: None,
        }
    }

    /// Whether a dial is due.
    pub fn due(&self, now: Instant) -> bool {
        self.next_attempt.is_some_and(|at| at <= now)
    }

    /// A dial was started.
    pub fn dialing(&mut self) {
        self.next_attempt = None;
    }

    /// The dial failed: schedule the next one and return the delay.
    pub fn failed(&mut self, now: Instant, backoff: Backoff) -> Duration {
        let delay = backoff_delay(self.failures, backoff);
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = Some(now + delay);
        delay
    }

    /// The target answered (as `peer`): stop retrying it.
    pub fn connected(&mut self, peer: Option<PeerId>) {
        self.reached = peer;
        self.failures = 0;
        self.next_attempt = None;
        self.answered = true;
    }
}

/// The delay after `failures` earlier failures: `initial * 2^failures`, capped at `max`.
pub fn backoff_delay(failures: u32, backoff: Backoff) -> Duration {
    let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
    backoff
        .initial
        .checked_mul(factor)
        .map_or(backoff.max, |d| d.min(backoff.max))
}

/// Which addresses a `/dns*` name may resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Any,
    V4,
    V6,
}

/// `(name, family, the protocols after the name)` of an address that starts with `/dns`,
/// `/dns4` or `/dns6` (`/dnsaddr` is left to libp2p).
pub fn dns_name(addr: &Multiaddr) -> Option<(String, Family, Vec<Protocol<'static>>)> {
    let mut parts = addr.iter();
    let (name, family) = match parts.next()? {
        Protocol::Dns(name) => (name.to_string(), Family::Any),
        Protocol::Dns4(name) => (name.to_string(), Family::V4),
        Protocol::Dns6(name) => (name.to_string(), Family::V6),
        _ => return None,
    };
    Some((name, family, parts.map(|p| p.acquire()).collect()))
}

/// Every address `name` resolves to through the system resolver (`/etc/hosts`, then DNS),
/// as `/ip4|ip6/<address>` followed by `rest`.
pub async fn resolve(
    name: &str,
    family: Family,
    rest: &[Protocol<'static>],
) -> Result<Vec<Multiaddr>, String> {
    let found = tokio::net::lookup_host((name, 0))
        .await
        .map_err(|err| format!("cannot resolve {name}: {err}"))?;
    let mut addrs = Vec::new();
    for socket in found {
        let ip = socket.ip();
        let wanted = match family {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        };
        let mut addr = Multiaddr::empty().with(Protocol::from(ip));
        for p in rest {
            addr.push(p.clone());
        }
        if wanted && !addrs.contains(&addr) {
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(format!("{name} resolves to no usable address"));
    }
    Ok(addrs)
}

/// Splits a trailing `/p2p/<id>` off an address.
pub fn split_peer_id(addr: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut dial = addr.clone();
    match dial.pop() {
        Some(Protocol::P2p(peer)) => (dial, Some(peer)),
        _ => (addr.clone(), None),
    }
}

/// A bootstrap address that cannot be used, with a message fit for a command-line error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadAddress {
    #[error("bad bootstrap address {text:?}: {reason}")]
    Unparsable { text: String, reason: String },
    #[error("bad bootstrap address {0:?}: must start with /ip4, /ip6, /dns4, /dns6 or /dns")]
    NotDialable(String),
}

/// Parses a bootstrap address.
pub fn parse_addr(text: &str) -> Result<Multiaddr, BadAddress> {
    let addr: Multiaddr = text
        .trim()
        .parse()
        .map_err(|err: libp2p::multiaddr::Error| BadAddress::Unparsable {
            text: text.into(),
            reason: err.to_string(),
        })?;
    let reachable = addr.iter().next().is_some_and(|p| {
        matches!(
            p,
            Protocol::Ip4(_)
                | Protocol::Ip6(_)
                | Protocol::Dns(_)
                | Protocol::Dns4(_)
                | Protocol::Dns6(_)
                | Protocol::Memory(_)
        )
    });
    if !reachable {
        return Err(BadAddress::NotDialable(text.into()));
    }
    Ok(addr)
}

/// Every bootstrap target and the dials in flight for it, as a state machine the event loop
/// drives: it asks what to do ([`Bootstrapper::due`]), reports what the network did (a name
/// resolved, a dial started, answered or failed), and gets back what happened to tell (a
/// target answered for the first time, one is unreachable until its retry). `C` names a
/// dial (`ConnectionId` in the event loop).
#[derive(Debug)]
pub struct Bootstrapper<C> {
    targets: Vec<BootstrapTarget>,
    /// Dials in flight, to the target index.
    dials: HashMap<C, usize>,
    backoff: Backoff,
}

/// What the event loop does for a due target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Resolve a `/dns*` name off the event loop, then report it with
    /// [`Bootstrapper::resolved`]: it may stand for several peers (a headless Service of
    /// operator replicas), and each is dialed.
    Resolve {
        index: usize,
        name: String,
        family: Family,
        rest: Vec<Protocol<'static>>,
    },
    /// Dial `addr`, expecting `peer` when the address named one; then report the dial
    /// ([`Bootstrapper::dial_started`], or [`Bootstrapper::dial_refused`]).
    Dial {
        index: usize,
        addr: Multiaddr,
        peer: Option<PeerId>,
    },
}

/// News about a target, for logs, metrics and [`crate::PeerEvent`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum News {
    /// It answered for the first time since it was last lost.
    Answered { addr: Multiaddr, peer: PeerId },
    /// Nothing answered there: it is retried after `retry_in`.
    Unreachable {
        addr: Multiaddr,
        error: String,
        retry_in: Duration,
    },
    /// It leads back to this node: part of the swarm it names already, never dialed again.
    IsSelf { addr: Multiaddr },
    /// One address of a name failed while others may still answer.
    OneAddressFailed { addr: Multiaddr, error: String },
}

/// Why a dial of a bootstrap address did not connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialFailure {
    /// The address is this node's own.
    ToSelf,
    /// Anything else, as one line.
    Other(String),
}

impl<C: Hash + Eq> Bootstrapper<C> {
    /// Targets for `addrs`, all due at `now`.
    pub fn new(addrs: &[Multiaddr], backoff: Backoff, now: Instant) -> Self {
        Bootstrapper {
            targets: addrs
                .iter()
                .map(|addr| BootstrapTarget::new(addr.clone(), now))
                .collect(),
            dials: HashMap::new(),
            backoff,
        }
    }

    /// More targets, due at `now`.
    pub fn add(&mut self, addrs: impl IntoIterator<Item = Multiaddr>, now: Instant) {
        self.targets.extend(
            addrs
                .into_iter()
                .map(|addr| BootstrapTarget::new(addr, now)),
        );
    }

    pub fn targets(&self) -> &[BootstrapTarget] {
        &self.targets
    }

    /// What to do for every target whose dial is due at `now`; each is marked in flight.
    pub fn due(&mut self, now: Instant) -> Vec<Step> {
        let mut steps = Vec::new();
        for (index, target) in self.targets.iter_mut().enumerate() {
            if !target.due(now) {
                continue;
            }
            target.dialing();
            match dns_name(&target.dial_addr).filter(|_| target.peer.is_none()) {
                Some((name, family, rest)) => steps.push(Step::Resolve {
                    index,
                    name,
                    family,
                    rest,
                }),
                None => steps.push(Step::Dial {
                    index,
                    addr: target.dial_addr.clone(),
                    peer: target.peer,
                }),
            }
        }
        steps
    }

    /// The addresses to dial for target `index` now that its name resolved: all but this
    /// node's own (`own`). An error, or nothing left, is news.
    pub fn resolved(
        &mut self,
        index: usize,
        resolved: Result<Vec<Multiaddr>, String>,
        own: &[Multiaddr],
        now: Instant,
    ) -> Result<Vec<Multiaddr>, News> {
        let addrs: Vec<Multiaddr> = match resolved {
            Ok(addrs) => addrs.into_iter().filter(|a| !own.contains(a)).collect(),
            Err(error) => return Err(self.unreachable(index, error, now)),
        };
        if addrs.is_empty() {
            return Err(self.is_self(index));
        }
        Ok(addrs)
    }

    /// A dial for target `index` started as `dial`.
    pub fn dial_started(&mut self, index: usize, dial: C) {
        self.dials.insert(dial, index);
    }

    /// None of the resolved addresses of target `index` could even be dialed.
    pub fn no_dial_started(&mut self, index: usize, now: Instant) -> Option<News> {
        let dialing = self.dials.values().any(|&i| i == index);
        (!dialing).then(|| self.unreachable(index, "no dial could be started".into(), now))
    }

    /// The dial of a known peer was not started because that peer is connected (or being
    /// dialed) already: it has answered.
    pub fn already_connected(&mut self, index: usize) -> Option<News> {
        let peer = self.targets[index].peer?;
        self.answered(index, peer)
    }

    /// A dial for target `index` could not start.
    pub fn dial_refused(&mut self, index: usize, failure: DialFailure, now: Instant) -> News {
        self.failed(index, failure, now)
    }

    /// A connection came up. News when it was a bootstrap dial whose target answered for
    /// the first time; `None` for other connections, or a target that had answered.
    pub fn connected(&mut self, dial: &C, peer: PeerId) -> Option<Option<News>> {
        let index = self.dials.remove(dial)?;
        Some(self.answered(index, peer))
    }

    /// A dial failed. `None` when it was no bootstrap dial.
    pub fn dial_failed(&mut self, dial: &C, failure: DialFailure, now: Instant) -> Option<News> {
        let index = self.dials.remove(dial)?;
        Some(self.failed(index, failure, now))
    }

    fn failed(&mut self, index: usize, failure: DialFailure, now: Instant) -> News {
        match failure {
            // The address leads back to us (e.g. a Service that includes this pod).
            DialFailure::ToSelf => self.is_self(index),
            // Other addresses of the same name still being dialed, or one answered: not a
            // failure of the target.
            DialFailure::Other(error)
                if self.targets[index].answered || self.dials.values().any(|&i| i == index) =>
            {
                News::OneAddressFailed {
                    addr: self.targets[index].addr.clone(),
                    error,
                }
            }
            DialFailure::Other(error) => self.unreachable(index, error, now),
        }
    }

    /// Bootstrap peers are the swarm's meeting points (the operator's swarm Service in a
    /// cluster), so a node stays connected to each: one that answered once and whose
    /// connection is gone (it restarted, the network split) is dialed again with back-off,
    /// whether or not this node still has other peers. Returns the addresses rearmed.
    pub fn rearm_lost(
        &mut self,
        now: Instant,
        is_connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<Multiaddr> {
        let mut rearmed = Vec::new();
        for (index, target) in self.targets.iter_mut().enumerate() {
            let lost = target.answered
                && !target.is_self
                && target.next_attempt.is_none()
                && !self.dials.values().any(|&i| i == index)
                && target.reached.is_none_or(|peer| !is_connected(&peer));
            if lost {
                target.answered = false;
                target.failed(now, self.backoff);
                rearmed.push(target.addr.clone());
            }
        }
        rearmed
    }

    fn answered(&mut self, index: usize, peer: PeerId) -> Option<News> {
        let target = &mut self.targets[index];
        let first = !target.answered;
        target.connected(Some(peer));
        first.then(|| News::Answered {
            addr: target.addr.clone(),
            peer,
        })
    }

    fn is_self(&mut self, index: usize) -> News {
        let target = &mut self.targets[index];
        if !target.answered {
            target.connected(None);
            target.is_self = true;
        }
        News::IsSelf {
            addr: target.addr.clone(),
        }
    }

    fn unreachable(&mut self, index: usize, error: String, now: Instant) -> News {
        let target = &mut self.targets[index];
        target.is_self = false;
        let retry_in = target.failed(now, self.backoff);
        News::Unreachable {
            addr: target.addr.clone(),
            error,
            retry_in,
        }
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;

    #[test]
    fn dns_names_split_into_name_family_and_the_rest() {
        let addr: Multiaddr = "/dns4/llamanet-swarm.ml.svc/tcp/4001".parse().unwrap();
        let (name, family, rest) = dns_name(&addr).unwrap();
        assert_eq!(name, "llamanet-swarm.ml.svc");
        assert_eq!(family, Family::V4);
        assert_eq!(rest, vec![Protocol::Tcp(4001)]);
        let ip: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        assert!(dns_name(&ip).is_none());
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_system_resolver() {
        let addrs = resolve("localhost", Family::V4, &[Protocol::Tcp(4001)])
            .await
            .unwrap();
        assert_eq!(
            addrs,
            vec!["/ip4/127.0.0.1/tcp/4001".parse::<Multiaddr>().unwrap()]
        );
        let err = resolve("no-such-host.invalid", Family::Any, &[])
            .await
            .unwrap_err();
        assert!(err.contains("no-such-host.invalid"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..10)
            .map(|f| backoff_delay(f, b).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            vec![
                500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000
            ]
        );
        assert_eq!(backoff_delay(u32::MAX, b), b.max);
    }

    #[test]
    fn target_schedule_follows_failures_and_stops_on_success() {
        let now = Instant::now();
        let mut t = BootstrapTarget::new("/ip4/127.0.0.1/tcp/1".parse().unwrap(), now);
        assert!(t.due(now));
        t.dialing();
        assert!(!t.due(now + Duration::from_secs(100)));
        assert_eq!(
            t.failed(now, Backoff::default()),
            Duration::from_millis(500)
        );
        assert!(!t.due(now + Duration::from_millis(499)));
        assert!(t.due(now + Duration::from_millis(500)));
        t.dialing();
        assert_eq!(t.failed(now, Backoff::default()), Duration::from_secs(1));
        t.connected(None);
        assert!(t.answered && t.failures == 0 && !t.due(now + Duration::from_secs(100)));
    }

    #[test]
    fn peer_id_is_split_off_when_present() {
        let peer = PeerId::random();
        let with: Multiaddr = format!("/dns4/llamanet-0.llamanet/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let t = BootstrapTarget::new(with, Instant::now());
        assert_eq!(t.peer, Some(peer));
        assert_eq!(
            t.dial_addr.to_string(),
            "/dns4/llamanet-0.llamanet/tcp/4001"
        );
        let without: Multiaddr = "/ip6/::1/tcp/4001".parse().unwrap();
        assert_eq!(split_peer_id(&without), (without.clone(), None));
    }

    #[test]
    fn parse_accepts_ip_and_dns_and_names_bad_input() {
        for ok in [
            "/ip4/10.0.0.1/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/dns4/llamanet.default.svc/tcp/4001",
            "/dns/example.org/tcp/4001",
        ] {
            assert!(parse_addr(ok).is_ok(), "{ok}");
        }
        let err = parse_addr("10.0.0.1:4001").unwrap_err().to_string();
        assert!(err.contains("10.0.0.1:4001"), "{err}");
        assert!(parse_addr("/tcp/4001").is_err());
    }
}

#[cfg(test)]
mod bootstrapper_tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };

    fn addr(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_name_is_resolved_and_every_address_dialed_until_one_answers() {
        let now = Instant::now();
        let name = addr("/dns4/operator.svc/tcp/4001");
        let mut boot = Bootstrapper::<u32>::new(std::slice::from_ref(&name), BACKOFF, now);
        let steps = boot.due(now);
        let [
            Step::Resolve {
                index: 0,
                name: host,
                family: Family::V4,
                ..
            },
        ] = steps.as_slice()
        else {
            panic!("{steps:?}")
        };
        assert_eq!(host, "operator.svc");
        assert!(boot.due(now).is_empty(), "in flight until resolved");

        let (a, b, own) = (
            addr("/ip4/10.0.0.1/tcp/4001"),
            addr("/ip4/10.0.0.2/tcp/4001"),
            addr("/ip4/10.0.0.3/tcp/4001"),
        );
        let dial = boot.resolved(0, Ok(vec![a.clone(), b.clone(), own.clone()]), &[own], now);
        assert_eq!(dial, Ok(vec![a, b]));
        boot.dial_started(0, 1);
        boot.dial_started(0, 2);
        assert_eq!(boot.no_dial_started(0, now), None);
        // One address fails while the other is still being dialed: no failure of the name.
        let failed = boot.dial_failed(&1, DialFailure::Other("refused".into()), now);
        assert!(
            matches!(failed, Some(News::OneAddressFailed { .. })),
            "{failed:?}"
        );
        let peer = PeerId::random();
        assert_eq!(
            boot.connected(&2, peer),
            Some(Some(News::Answered { addr: name, peer }))
        );
        assert_eq!(boot.targets()[0].reached, Some(peer));
        // Connections that are not bootstrap dials are none of its business.
        assert_eq!(boot.connected(&9, peer), None);
    }

    #[test]
    fn an_unreachable_target_backs_off_and_is_dialed_again() {
        let now = Instant::now();
        let target = addr("/ip4/10.0.0.1/tcp/4001");
        let mut boot = Bootstrapper::<u32>::new(std::slice::from_ref(&target), BACKOFF, now);
        assert_eq!(
            boot.due(now),
            [Step::Dial {
                index: 0,
                addr: target.clone(),
                peer: None
            }]
        );
        boot.dial_started(0, 1);
        let news = boot.dial_failed(&1, DialFailure::Other("refused".into()), now);
        assert_eq!(
            news,
            Some(News::Unreachable {
                addr: target.clone(),
                error: "refused".into(),
                retry_in: BACKOFF.initial,
            })
        );
        assert!(boot.due(now).is_empty());
        assert_eq!(boot.due(now + BACKOFF.initial).len(), 1);
        let news = boot.dial_refused(0, DialFailure::Other("no route".into()), now);
        assert!(
            matches!(news, News::Unreachable { retry_in, .. } if retry_in == 2 * BACKOFF.initial),
            "{news:?}"
        );
        // A name that does not resolve is unreachable too.
        let mut boot = Bootstrapper::<u32>::new(&[addr("/dns/nowhere/tcp/1")], BACKOFF, now);
        boot.due(now);
        let news = boot.resolved(0, Err("cannot resolve nowhere".into()), &[], now);
        assert!(matches!(news, Err(News::Unreachable { .. })), "{news:?}");
    }

    #[test]
    fn a_target_that_is_this_node_is_never_dialed_again() {
        let now = Instant::now();
        let own = addr("/ip4/10.0.0.3/tcp/4001");
        let mut boot =
            Bootstrapper::<u32>::new(&[addr("/dns/ops/tcp/4001"), own.clone()], BACKOFF, now);
        boot.due(now);
        let news = boot.resolved(0, Ok(vec![own.clone()]), std::slice::from_ref(&own), now);
        assert!(matches!(news, Err(News::IsSelf { .. })), "{news:?}");
        boot.dial_started(1, 7);
        let news = boot.dial_failed(&7, DialFailure::ToSelf, now);
        assert!(matches!(news, Some(News::IsSelf { .. })), "{news:?}");
        assert!(boot.targets().iter().all(|t| t.is_self));
        assert!(boot.rearm_lost(now, |_| false).is_empty());
        assert!(boot.due(now + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_known_peer_already_connected_has_answered_and_is_rearmed_once_lost() {
        let now = Instant::now();
        let peer = PeerId::random();
        let target = addr(&format!("/ip4/10.0.0.1/tcp/4001/p2p/{peer}"));
        let mut boot = Bootstrapper::<u32>::new(std::slice::from_ref(&target), BACKOFF, now);
        let steps = boot.due(now);
        assert!(
            matches!(steps.as_slice(), [Step::Dial { peer: Some(p), .. }] if *p == peer),
            "{steps:?}"
        );
        assert_eq!(
            boot.already_connected(0),
            Some(News::Answered {
                addr: target.clone(),
                peer
            })
        );
        // Connected still: nothing to do. Gone: dialed again after the first backoff, once.
        assert!(boot.rearm_lost(now, |_| true).is_empty());
        assert_eq!(boot.rearm_lost(now, |_| false), [target]);
        assert!(boot.rearm_lost(now, |_| false).is_empty());
        assert!(boot.due(now).is_empty());
        assert_eq!(boot.due(now + BACKOFF.initial).len(), 1);
    }
}
