//! The manifest of a shared model file: its size and the SHA-256 of every fixed-size chunk.
//!
//! A fetcher asks a peer for the manifest of the file with SHA-256 `s`, then fetches chunks
//! from any peer and checks each against the manifest as it arrives, so a peer that sends a
//! wrong chunk is caught after one chunk, not after the whole file. The manifest itself
//! cannot be checked on arrival (only the whole file can be), so a fetcher that ends with a
//! file whose SHA-256 is not `s` knows the manifest lied: it throws the file away and tries
//! another peer's manifest. Two honest peers always send the same manifest: it is a pure
//! function of the file and [`CHUNK_BYTES`].

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Chunk size of every manifest this version writes: a unit of work small enough to refetch
/// cheaply from another peer, large enough that a 2 GB file is 500 requests, not 500 000.
pub const CHUNK_BYTES: u64 = 4 << 20;

/// The largest file shared: 256 GiB, 65 536 chunks, a manifest of about 4.3 MB.
pub const MAX_FILE_BYTES: u64 = 256 << 30;

/// The longest manifest accepted from a peer, in bytes of JSON.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// Size and chunk hashes of one file, named by the SHA-256 of the whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    pub size: u64,
    pub chunk_bytes: u64,
    /// SHA-256 of every chunk in order, lower-case hex; the last one may be short.
    pub chunks: Vec<String>,
}

/// Why a manifest from a peer is refused before any chunk is fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("it is for sha256 {got}, not {wanted}")]
    OtherFile { wanted: String, got: String },
    #[error("its chunk size {0} is not the {CHUNK_BYTES} bytes of this version")]
    ChunkSize(u64),
    #[error("its size {0} is not between 1 byte and {MAX_FILE_BYTES} bytes")]
    Size(u64),
    #[error("it lists {got} chunks where {size} bytes make {wanted}")]
    ChunkCount { size: u64, wanted: u64, got: usize },
    #[error("chunk {0}'s hash is not 64 lower-case hex digits")]
    ChunkHash(usize),
}

impl Manifest {
    /// Reads `path` once, hashing the whole file and every chunk. Blocking: call it from a
    /// blocking thread.
    pub fn of_file(path: &Path) -> io::Result<Manifest> {
        let mut file = File::open(path)?;
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let mut chunk = Sha256::new();
            let mut in_chunk = 0u64;
            while in_chunk < CHUNK_BYTES {
                let want = buf.len().min((CHUNK_BYTES - in_chunk) as usize);
                let n = file.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                whole.update(&buf[..n]);
                chunk.update(&buf[..n]);
                in_chunk += n as u64;
            }
            if in_chunk == 0 {
                break;
            }
            size += in_chunk;
            chunks.push(hex::encode(chunk.finalize()));
            if in_chunk < CHUNK_BYTES {
                break;
            }
        }
        Ok(Manifest {
            sha256: hex::encode(whole.finalize()),
            size,
            chunk_bytes: CHUNK_BYTES,
            chunks,
        })
    }

    /// Checks a manifest a peer sent for the file with SHA-256 `wanted` (lower-case hex):
    /// everything that can be checked without the file itself.
    pub fn check(&self, wanted: &str) -> Result<(), ManifestError> {
        if self.sha256 != wanted {
            return Err(ManifestError::OtherFile {
                wanted: wanted.into(),
                got: self.sha256.chars().take(64).collect(),
            });
        }
        if self.chunk_bytes != CHUNK_BYTES {
            return Err(ManifestError::ChunkSize(self.chunk_bytes));
        }
        if self.size == 0 || self.size > MAX_FILE_BYTES {
            return Err(ManifestError::Size(self.size));
        }
        let wanted_chunks = self.size.div_ceil(CHUNK_BYTES);
        if self.chunks.len() as u64 != wanted_chunks {
            return Err(ManifestError::ChunkCount {
                size: self.size,
                wanted: wanted_chunks,
                got: self.chunks.len(),
            });
        }
        if let Some(bad) = self.chunks.iter().position(|c| !is_sha256_hex(c)) {
            return Err(ManifestError::ChunkHash(bad));
        }
        Ok(())
    }

    /// Byte offset and length of chunk `index` (which must exist).
    pub fn range(&self, index: usize) -> (u64, u64) {
        let start = index as u64 * self.chunk_bytes;
        (start, self.chunk_bytes.min(self.size - start))
    }

    /// Whether `bytes` are chunk `index` of this file.
    pub fn chunk_matches(&self, index: usize, bytes: &[u8]) -> bool {
        self.chunks
            .get(index)
            .is_some_and(|hash| *hash == hex::encode(Sha256::digest(bytes)))
    }
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, &bytes).unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn a_file_is_cut_into_fixed_chunks_with_a_short_last_one() {
        let len = 2 * CHUNK_BYTES as usize + 1000;
        let (_dir, path, bytes) = file_of(len);
        let manifest = Manifest::of_file(&path).unwrap();
        assert_eq!(manifest.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(manifest.size, len as u64);
        assert_eq!(manifest.chunks.len(), 3);
        assert_eq!(manifest.range(2), (2 * CHUNK_BYTES, 1000));
        let (start, n) = manifest.range(1);
        assert!(manifest.chunk_matches(1, &bytes[start as usize..(start + n) as usize]));
        assert!(!manifest.chunk_matches(0, &bytes[start as usize..(start + n) as usize]));
        assert!(!manifest.chunk_matches(3, b"no such chunk"));
        manifest.check(&manifest.sha256).unwrap();
    }

    #[test]
    fn a_file_of_whole_chunks_has_no_empty_last_chunk() {
        let (_dir, path, _) = file_of(CHUNK_BYTES as usize);
        let manifest = Manifest::of_file(&path).unwrap();
        assert_eq!(manifest.chunks.len(), 1);
        manifest.check(&manifest.sha256).unwrap();
    }

    #[test]
    fn manifests_that_cannot_be_right_are_refused_with_the_reason() {
        let (_dir, path, _) = file_of(5000);
        let good = Manifest::of_file(&path).unwrap();
        let sha = good.sha256.clone();
        let other = "0".repeat(64);
        assert!(matches!(
            good.check(&other),
            Err(ManifestError::OtherFile { .. })
        ));
        let mut bad = good.clone();
        bad.chunk_bytes = 1;
        assert_eq!(bad.check(&sha), Err(ManifestError::ChunkSize(1)));
        let mut bad = good.clone();
        bad.size = MAX_FILE_BYTES + 1;
        assert_eq!(
            bad.check(&sha),
            Err(ManifestError::Size(MAX_FILE_BYTES + 1))
        );
        let mut bad = good.clone();
        bad.chunks.push(other.clone());
        assert!(matches!(
            bad.check(&sha),
            Err(ManifestError::ChunkCount { got: 2, .. })
        ));
        let mut bad = good;
        bad.chunks[0] = "ZZ".into();
        assert_eq!(bad.check(&sha), Err(ManifestError::ChunkHash(0)));
    }
}
