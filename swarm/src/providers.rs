//! Kademlia provider keys, sharded so that every provider of a thing is found.
//!
//! Two kinds of things are provided: models a node serves (`/llamanet/model/<id>`) and
//! verified model files a node shares by their SHA-256 (`/llamanet/weights/<sha256>`, see
//! `llamanet_node::weights`). A node that provides prefix `p` announces itself under `p/<s>` where
//! `s = hash(own peer id) % shards`; a lookup queries all `shards` keys and merges.
//!
//! Why shards: libp2p's Kademlia `MemoryStore` keeps at most `max_providers_per_key`
//! providers per key (20 by default) and silently drops the rest, so with one key per model
//! a model served by 100 nodes would show only 20 of them, and which 20 depends on who
//! announced first. Spreading providers over `shards` keys divides the load per key: with the
//! default 16 shards a model's providers stay far below the cap per key up to a few hundred
//! nodes (the swarm additionally raises its own stores' cap, see `behaviour.rs`, for
//! headroom), while a lookup costs 16 parallel DHT queries, which is cheap next to the
//! requests it routes. Sharding by a hash of the peer id keeps a node on the same key
//! across restarts, so re-announcing does not leave a second record behind.

use std::hash::{Hash, Hasher};

use libp2p::PeerId;
use libp2p::kad::RecordKey;

/// Default number of provider keys per model.
pub const DEFAULT_SHARDS: u16 = 16;

/// The unsharded key of a model, the name the mission gives it (`/llamanet/model/<id>`).
pub fn model_key_prefix(model: &str) -> String {
    format!("/llamanet/model/{model}")
}

/// The unsharded key of a shared model file, named by its SHA-256 (lower-case hex).
pub fn weights_key_prefix(sha256: &str) -> String {
    format!("/llamanet/weights/{sha256}")
}

/// Which shard a provider announces itself in.
pub fn shard_of(peer: &PeerId, shards: u16) -> u16 {
    // FNV-1a over the peer id bytes: stable across processes and versions, unlike std's
    // randomly seeded hasher. Lookups query every shard, so only the provider itself needs
    // stability: it must land on the same shard after a restart.
    let mut hasher = Fnv1a::default();
    peer.to_bytes().hash(&mut hasher);
    (hasher.finish() % u64::from(shards.max(1))) as u16
}

/// The key `peer` announces for `prefix`.
pub fn provider_key(prefix: &str, peer: &PeerId, shards: u16) -> RecordKey {
    shard_key(prefix, shard_of(peer, shards))
}

/// The key of one shard of `prefix`.
pub fn shard_key(prefix: &str, shard: u16) -> RecordKey {
    RecordKey::new(&format!("{prefix}/{shard}"))
}

/// All keys a lookup of `prefix` must query.
pub fn lookup_keys(prefix: &str, shards: u16) -> Vec<RecordKey> {
    (0..shards.max(1)).map(|s| shard_key(prefix, s)).collect()
}

#[derive(Debug)]
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_named_after_the_model_and_shard() {
        let qwen = model_key_prefix("qwen");
        assert_eq!(
            shard_key(&qwen, 3).as_ref(),
            b"/llamanet/model/qwen/3".as_slice()
        );
        assert_eq!(lookup_keys(&qwen, 16).len(), 16);
        let peer = PeerId::random();
        assert!(lookup_keys(&qwen, 16).contains(&provider_key(&qwen, &peer, 16)));
        assert_eq!(
            shard_key(&weights_key_prefix("ab12"), 0).as_ref(),
            b"/llamanet/weights/ab12/0".as_slice()
        );
    }

    #[test]
    fn a_peer_always_lands_on_the_same_shard() {
        let peer = PeerId::random();
        assert_eq!(shard_of(&peer, 16), shard_of(&peer, 16));
        assert_eq!(shard_of(&peer, 1), 0);
        assert_eq!(shard_of(&peer, 0), 0);
    }

    #[test]
    fn a_hundred_providers_spread_below_the_per_key_cap() {
        let mut counts = [0u32; DEFAULT_SHARDS as usize];
        for _ in 0..100 {
            counts[shard_of(&PeerId::random(), DEFAULT_SHARDS) as usize] += 1;
        }
        // Expected 6.25 per shard; 20 would need a wildly skewed hash.
        assert!(counts.iter().all(|&c| c < 20), "{counts:?}");
        assert!(
            counts.iter().filter(|&&c| c > 0).count() >= 10,
            "{counts:?}"
        );
    }
}
