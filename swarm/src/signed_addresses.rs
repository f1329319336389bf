//! Where peers say, in their own signed heartbeats, that their swarm listens.
//!
//! The DHT remembers the addresses it learnt a peer by, and a peer that comes back under the
//! same identity somewhere else (a pod rescheduled, a replica scaled to zero and woken) keeps
//! being handed out at its old one until the DHT learns better. Dialing a pod IP nobody holds
//! gets no answer at all, so a request would wait its whole connect timeout there. Every
//! heartbeat carries the sender's current swarm addresses instead ([`Heartbeat::swarm_addrs`],
//! signed like the rest of it), and this behaviour offers the latest ones for every dial of
//! that peer: the swarm dials them together with whatever the DHT knows, so the fresh
//! address answers while the stale one is still waiting.
//!
//! A peer's word on its addresses is trusted no further than identify's: each dial still
//! proves the peer's key (Noise), only [`addresses::usable`] ones are kept, at most
//! [`addresses::MAX_ADDRESSES`], and only for peers in the (bounded) peer table: the event
//! loop sets them for accepted heartbeats and forgets them when the peer expires.
//!
//! [`Heartbeat::swarm_addrs`]: crate::Heartbeat::swarm_addrs
//! [`addresses::usable`]: crate::addresses::usable
//! [`addresses::MAX_ADDRESSES`]: crate::addresses::MAX_ADDRESSES

use std::collections::HashMap;
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// The addresses each peer last signed; offered to every outbound dial of that peer.
#[derive(Debug, Default)]
pub struct SignedAddresses {
    peers: HashMap<PeerId, Vec<Multiaddr>>,
}

impl SignedAddresses {
    /// Records what `peer` signed last (already filtered); an empty list forgets it.
    pub fn set(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if addrs.is_empty() {
            self.peers.remove(&peer);
        } else {
            self.peers.insert(peer, addrs);
        }
    }

    pub fn forget(&mut self, peer: &PeerId) {
        self.peers.remove(peer);
    }

    pub fn get(&self, peer: &PeerId) -> &[Multiaddr] {
        self.peers.get(peer).map_or(&[], Vec::as_slice)
    }
}

impl NetworkBehaviour for SignedAddresses {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        maybe_peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(maybe_peer.map_or_else(Vec::new, |peer| self.get(&peer).to_vec()))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dial_gets_the_addresses_the_peer_signed_last() {
        let mut book = SignedAddresses::default();
        let peer = PeerId::random();
        let addr = |a: &str| -> Multiaddr { a.parse().unwrap() };
        let offered = |book: &mut SignedAddresses, who| {
            book.handle_pending_outbound_connection(
                ConnectionId::new_unchecked(0),
                who,
                &[],
                Endpoint::Dialer,
            )
            .unwrap()
        };
        assert!(offered(&mut book, Some(peer)).is_empty());
        book.set(peer, vec![addr("/ip4/10.0.0.7/tcp/4001")]);
        book.set(peer, vec![addr("/ip4/10.0.0.9/tcp/4001")]);
        assert_eq!(
            offered(&mut book, Some(peer)),
            [addr("/ip4/10.0.0.9/tcp/4001")]
        );
        // Nothing for other peers, nor for dials of an unknown peer id.
        assert!(offered(&mut book, Some(PeerId::random())).is_empty());
        assert!(offered(&mut book, None).is_empty());
        book.forget(&peer);
        assert!(offered(&mut book, Some(peer)).is_empty());
        book.set(peer, vec![addr("/ip4/10.0.0.9/tcp/4001")]);
        book.set(peer, Vec::new());
        assert!(book.get(&peer).is_empty());
    }
}
