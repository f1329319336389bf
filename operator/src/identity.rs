//! Swarm identities of the replicas: one Ed25519 key per pod name, kept in the Secret
//! `<name>-identity` that the pods mount (see `children.rs` for why per pod name).
//!
//! Keys are made by libp2p and stored in its protobuf encoding of a private key (what
//! `libp2p::identity::Keypair::from_protobuf_encoding` reads), so the node loads them without
//! knowing who made them. Existing keys are never replaced: a replica's peer id is stable for
//! the life of its InferenceNode, scaled away and back included.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;

use crate::children::pod_name;

/// A new Ed25519 key in libp2p's protobuf encoding, made by libp2p itself.
pub fn new_key() -> Vec<u8> {
    llamanet_swarm::Keypair::generate_ed25519()
        .to_protobuf_encoding()
        .expect("ed25519 key pairs always encode")
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
    fn keys_are_libp2p_ed25519_keys_in_the_format_secrets_already_hold() {
        use llamanet_swarm::Keypair;
        use llamanet_swarm::libp2p::identity::ed25519;

        let key = new_key();
        let pair = Keypair::from_protobuf_encoding(&key).expect("libp2p reads it");
        assert!(pair.clone().try_into_ed25519().is_ok(), "an Ed25519 key");
        assert_ne!(new_key(), key, "every key is new");
        // Secrets written before this encoding came from libp2p hold field 1 (key type) = 1
        // (Ed25519) and field 2 = the 32-byte secret then the 32-byte public key: the same
        // 68 bytes, so those identities (and their peer ids) load unchanged.
        assert_eq!(key.len(), 68);
        assert_eq!(&key[..4], &[0x08, 0x01, 0x12, 0x40]);
        let seed = [7u8; 32];
        let secret = ed25519::SecretKey::try_from_bytes(seed).unwrap();
        let public = ed25519::Keypair::from(secret).public().to_bytes();
        let mut old = vec![0x08, 0x01, 0x12, 0x40];
        old.extend_from_slice(&seed);
        old.extend_from_slice(&public);
        let loaded = Keypair::from_protobuf_encoding(&old).expect("an old secret loads");
        assert_eq!(loaded.to_protobuf_encoding().unwrap(), old);
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
