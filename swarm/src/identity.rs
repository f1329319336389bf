//! The node's persistent swarm identity: an ed25519 key pair kept in a file.
//!
//! The peer id is derived from the public key, so keeping the key across restarts keeps the
//! peer id: other peers, the operator's status and the routing tables all see the same node
//! come back instead of a stranger. In Kubernetes the file comes from a mounted Secret; on a
//! laptop it is created on first start.
//!
//! The file holds the libp2p protobuf encoding of the key pair (the same bytes
//! `Keypair::to_protobuf_encoding` writes), readable only by its owner (mode 0600) because the
//! key signs heartbeats and authenticates connections.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use libp2p::identity::Keypair;

/// Why an identity file could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read identity file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot create identity file {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "identity file {path} is not a libp2p protobuf-encoded key pair ({reason}); \
         remove it to generate a new identity (the peer id will change)"
    )]
    Corrupt { path: PathBuf, reason: String },
}

/// Loads the key pair at `path`, or creates a new ed25519 one there (mode 0600) when the
/// file does not exist. Parent directories are created as needed.
///
/// Returns the key pair and whether it was newly created, so the caller can log which.
pub fn load_or_create(path: &Path) -> Result<(Keypair, bool), IdentityError> {
    match fs::read(path) {
        Ok(bytes) => decode(path, &bytes).map(|key| (key, false)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => create(path).map(|key| (key, true)),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads an existing key pair; a missing file is an error (for tools that must not invent a
/// new identity).
pub fn load(path: &Path) -> Result<Keypair, IdentityError> {
    let bytes = fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        source,
    })?;
    decode(path, &bytes)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Keypair, IdentityError> {
    Keypair::from_protobuf_encoding(bytes).map_err(|err| IdentityError::Corrupt {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

fn create(path: &Path) -> Result<Keypair, IdentityError> {
    let write_err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(write_err)?;
    }
    let key = Keypair::generate_ed25519();
    let bytes = key
        .to_protobuf_encoding()
        .expect("ed25519 key pairs always encode");
    // `create_new` so that two processes racing on the same path cannot both win and end up
    // with different identities; the mode is set at creation so the secret is never readable
    // by others, not even briefly.
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = match options.open(path) {
        Ok(file) => file,
        // Lost the race: use the winner's key.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return load(path),
        Err(source) => return Err(write_err(source)),
    };
    file.write_all(&bytes).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    Ok(key)
}

/// A fresh in-memory identity, for light peers (tools, tests) that need no stable id.
pub fn ephemeral() -> Keypair {
    Keypair::generate_ed25519()
}

/// The peer id of a key pair (a convenience that saves callers an import).
pub fn peer_id(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_the_same_peer_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/identity.key");
        let (first, created) = load_or_create(&path).unwrap();
        assert!(created);
        let (second, created) = load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(peer_id(&first), peer_id(&second));
        assert_eq!(peer_id(&load(&path).unwrap()), peer_id(&first));
    }

    #[cfg(unix)]
    #[test]
    fn created_readable_by_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn corrupt_file_is_a_clear_error_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fs::write(&path, b"not a key").unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("identity.key"));
        // Never overwrite what might be someone's real key.
        assert_eq!(fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where a file is expected cannot be read as one.
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
        let err = load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    }
}
