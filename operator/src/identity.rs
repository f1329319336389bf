//! Swarm identities of the replicas: one Ed25519 key per pod name, kept in the Secret
//! `<name>-identity` that the pods mount (see `children.rs` for why per pod name).
//!
//! Keys are stored in libp2p's protobuf encoding of a private key (what
//! `libp2p::identity::Keypair::from_protobuf_encoding` reads), so the node loads them without
//! knowing who made them. Existing keys are never replaced: a replica's peer id is stable for
//! the life of its InferenceNode, scaled away and back included.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::children::pod_name;

/// A new Ed25519 key in libp2p's protobuf encoding: field 1 (key type) = 1 (Ed25519), field 2
/// (data) = the 32-byte secret followed by the 32-byte public key.
pub fn new_key() -> Vec<u8> {
    let mut secret = [0u8; 32];
    SystemRandom::new()
        .fill(&mut secret)
        .expect("the operating system's random number generator works");
    let pair = Ed25519KeyPair::from_seed_unchecked(&secret)
        .expect("any 32 bytes are an Ed25519 secret key");
    let mut encoded = Vec::with_capacity(68);
    encoded.extend_from_slice(&[0x08, 0x01, 0x12, 0x40]);
    encoded.extend_from_slice(&secret);
    encoded.extend_from_slice(pair.public_key().as_ref());
    encoded
}

/// The identity Secret's data for `replicas` replicas: the existing keys, plus a new key for
/// every replica without one. `None` when nothing is missing (no write needed).
pub fn with_missing_keys(
    name: &str,
    replicas: i32,
    existing: &BTreeMap<String, ByteString>,
) -> Option<BTreeMap<String, ByteString>> {
    let missing: Vec<String> = (0..replicas.max(0))
        .map(|ordinal| pod_name(name, ordinal))
        .filter(|pod| !existing.contains_key(pod))
        .collect();
    if missing.is_empty() {
        return None;
    }
    let mut data = existing.clone();
    for pod in missing {
        data.insert(pod, ByteString(new_key()));
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_the_libp2p_protobuf_encoding() {
        let key = new_key();
        assert_eq!(key.len(), 68);
        assert_eq!(&key[..4], &[0x08, 0x01, 0x12, 0x40]);
        let pair = Ed25519KeyPair::from_seed_and_public_key(&key[4..36], &key[36..]);
        assert!(pair.is_ok(), "public key must belong to the secret");
        assert_ne!(new_key(), key, "every key is new");
    }

    #[test]
    fn only_missing_keys_are_added_and_old_ones_kept() {
        let existing = BTreeMap::from([
            ("gemma-0".to_owned(), ByteString(vec![1])),
            ("gemma-5".to_owned(), ByteString(vec![5])),
        ]);
        assert_eq!(with_missing_keys("gemma", 1, &existing), None);
        let data = with_missing_keys("gemma", 3, &existing).unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["gemma-0", "gemma-1", "gemma-2", "gemma-5"]
        );
        assert_eq!(data["gemma-0"], ByteString(vec![1]));
        assert_eq!(data["gemma-1"].0.len(), 68);
    }
}
