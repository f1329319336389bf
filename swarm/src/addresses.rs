//! Which addresses a remote peer may hand us for the DHT.
//!
//! Identify tells us the addresses a peer listens on, in its own words. Taken as they come,
//! a stranger could fill our routing table (and everyone's it is copied to) with addresses
//! that are not its own: our loopback, link-local neighbours, the unspecified address, or
//! hundreds of entries. So a peer's addresses are kept only if they could reach that peer
//! from another machine: no loopback (unless this swarm itself runs on loopback, as tests
//! and single-machine setups do), no link-local, no unspecified, at most
//! [`MAX_ADDRESSES`] of them.

use std::net::IpAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Addresses kept per peer.
pub const MAX_ADDRESSES: usize = 8;

/// Whether `addr` only works on this machine (loopback, or the in-process memory
/// transport).
pub fn is_local(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Memory(_)) => true,
        _ => false,
    }
}

/// The addresses of `addrs` worth keeping (see the module docs); `local_swarm` when this
/// node itself listens on loopback, where loopback addresses of peers are real.
pub fn usable(addrs: Vec<Multiaddr>, local_swarm: bool) -> Vec<Multiaddr> {
    addrs
        .into_iter()
        .filter(|addr| {
            let ip: Option<IpAddr> = match addr.iter().next() {
                Some(Protocol::Ip4(ip)) => Some(ip.into()),
                Some(Protocol::Ip6(ip)) => Some(ip.into()),
                _ => None,
            };
            match ip {
                Some(ip) if ip.is_unspecified() => false,
                Some(IpAddr::V4(v4)) if v4.is_link_local() => false,
                Some(IpAddr::V6(v6)) if (v6.segments()[0] & 0xffc0) == 0xfe80 => false,
                Some(ip) if ip.is_loopback() => local_swarm,
                _ => !is_local(addr) || local_swarm,
            }
        })
        .take(MAX_ADDRESSES)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn only_addresses_that_reach_the_peer_are_kept_and_only_a_few() {
        let offered = addrs(&[
            "/ip4/10.0.0.7/tcp/4001",
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/169.254.1.1/tcp/4001",
            "/ip6/fe80::1/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/dns4/node.example.org/tcp/4001",
            "/memory/42",
        ]);
        assert_eq!(
            usable(offered.clone(), false),
            addrs(&["/ip4/10.0.0.7/tcp/4001", "/dns4/node.example.org/tcp/4001"])
        );
        // On a loopback swarm, loopback (and memory) addresses are the real ones.
        assert_eq!(
            usable(offered, true),
            addrs(&[
                "/ip4/10.0.0.7/tcp/4001",
                "/ip4/127.0.0.1/tcp/4001",
                "/ip6/::1/tcp/4001",
                "/dns4/node.example.org/tcp/4001",
                "/memory/42",
            ])
        );
        let many: Vec<Multiaddr> = (0..100)
            .map(|i| format!("/ip4/10.0.0.{i}/tcp/4001").parse().unwrap())
            .collect();
        assert_eq!(usable(many, false).len(), MAX_ADDRESSES);
        assert!(is_local(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()));
        assert!(!is_local(&"/ip4/10.0.0.1/tcp/1".parse().unwrap()));
    }
}
