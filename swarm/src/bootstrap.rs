//! Bootstrap targets and their retry schedule.
//!
//! A node joins the swarm by dialing the `--bootstrap` multiaddrs it was given: `/ip4`,
//! `/ip6`, `/dns4`, `/dns6` or `/dns` addresses, with or without a trailing `/p2p/<peer id>`.
//! Without a peer id the dial learns it from the connection (and identify then tells
//! Kademlia the peer's listen addresses). A target is retried with exponential backoff
//! (capped) until it has answered once; in Kubernetes the bootstrap peer is often a Service
//! whose pods start after this one, so giving up would split the swarm.
//!
//! This file holds only the schedule (pure, unit-tested); the event loop does the dialing.

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
