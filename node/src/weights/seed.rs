//! Sharing verified model files with peers: the serving side of [`WEIGHTS_PROTOCOL`].
//!
//! A [`Seeder`] shares only files it was handed together with a manifest computed from the
//! file itself after its SHA-256 matched ([`Seeder::add`]); it announces each in the DHT
//! under its SHA-256 and answers manifest and chunk requests for it. Who may ask is settled
//! by the swarm: streams ride connections inside the private swarm's pre-shared key, and
//! a node shares nothing in a public swarm (see `crate::api`).
//!
//! Uploads are bounded so that they never crowd out inference: at most
//! [`SeedPolicy::max_uploads`] chunks are sent at once (further requests are answered
//! [`Refusal::Busy`] at once, and the fetcher asks another peer), and all uploads together
//! are paced to [`SeedPolicy::bytes_per_second`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::AsyncWriteExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::manifest::Manifest;
use super::wire::{self, Answer, Refusal, Request, WEIGHTS_PROTOCOL, WireError};
use crate::swarm::{PeerStream, SwarmError, SwarmHandle};

/// Bytes written to a stream at a time, and the unit of pacing.
const PIECE: usize = 64 << 10;

/// Streams waiting for their request line at once; more wait for a turn.
const OPEN_REQUESTS: usize = 64;

/// How much a node uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedPolicy {
    /// Chunks sent at once; 0 shares nothing.
    pub max_uploads: usize,
    /// All uploads together, in bytes per second; `None` is unpaced.
    pub bytes_per_second: Option<u64>,
}

impl Default for SeedPolicy {
    fn default() -> Self {
        SeedPolicy {
            max_uploads: 4,
            bytes_per_second: Some(DEFAULT_UPLOAD_MIB_PER_SECOND << 20),
        }
    }
}

/// Default upload pace: several times a rate-limited hub, far below what would take a
/// core's worth of encryption away from inference.
pub const DEFAULT_UPLOAD_MIB_PER_SECOND: u64 = 64;

/// Counters of a seeder; `/metrics` exports them (they are the registry's own counters,
/// shared by cloning).
#[derive(Debug, Clone, Default)]
pub struct SeedStats {
    /// Bytes of model files sent to peers (manifests included).
    pub bytes_sent: Counter,
    /// Chunks sent whole.
    pub chunks_sent: Counter,
    /// Chunk requests answered "busy".
    pub busy: Counter,
}

struct Shared {
    path: PathBuf,
    manifest: Manifest,
    manifest_json: Vec<u8>,
}

/// The files this node shares, and the limits on sharing them. Clone it freely.
#[derive(Clone)]
pub struct Seeder {
    inner: Arc<Inner>,
}

struct Inner {
    policy: SeedPolicy,
    files: Mutex<HashMap<String, Arc<Shared>>>,
    uploads: Arc<Semaphore>,
    pace: Option<Pace>,
    swarm: OnceLock<SwarmHandle>,
    stats: SeedStats,
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeder")
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Seeder {
    pub fn new(policy: SeedPolicy) -> Seeder {
        Seeder::with_stats(policy, SeedStats::default())
    }

    /// A seeder that counts into `stats` (the node's metrics).
    pub fn with_stats(policy: SeedPolicy, stats: SeedStats) -> Seeder {
        Seeder {
            inner: Arc::new(Inner {
                policy,
                files: Mutex::new(HashMap::new()),
                uploads: Arc::new(Semaphore::new(policy.max_uploads)),
                pace: policy.bytes_per_second.filter(|&r| r > 0).map(Pace::new),
                swarm: OnceLock::new(),
                stats,
            }),
        }
    }

    pub fn policy(&self) -> SeedPolicy {
        self.inner.policy
    }

    pub fn stats(&self) -> &SeedStats {
        &self.inner.stats
    }

    /// Shares `path`, whose `manifest` was computed from the file after its SHA-256 was
    /// checked against the one it was given ([`Manifest::of_file`] does both in one read).
    /// Announced in the DHT at once if the swarm is attached, else when it is.
    pub fn add(&self, path: &Path, manifest: Manifest) {
        if self.inner.policy.max_uploads == 0 {
            return;
        }
        let sha256 = manifest.sha256.clone();
        let manifest_json = serde_json::to_vec(&manifest).expect("manifests serialize");
        self.lock().insert(
            sha256.clone(),
            Arc::new(Shared {
                path: path.to_path_buf(),
                manifest,
                manifest_json,
            }),
        );
        tracing::info!(path = %path.display(), %sha256, "sharing the model file with the swarm");
        if let Some(swarm) = self.inner.swarm.get() {
            announce(swarm.clone(), sha256);
        }
    }

    /// SHA-256s of the files shared.
    pub fn shared(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Starts answering peers on `swarm` and announces every file shared so far. Once per
    /// seeder; later calls do nothing.
    pub fn attach(&self, swarm: &SwarmHandle) -> Result<(), SwarmError> {
        if self.inner.policy.max_uploads == 0 || self.inner.swarm.set(swarm.clone()).is_err() {
            return Ok(());
        }
        let incoming = swarm.accept_streams(WEIGHTS_PROTOCOL)?;
        for sha256 in self.shared() {
            announce(swarm.clone(), sha256);
        }
        let seeder = self.clone();
        tokio::spawn(async move { seeder.serve(incoming).await });
        Ok(())
    }

    async fn serve(self, incoming: impl futures::Stream<Item = PeerStream> + Unpin) {
        crate::swarm::streams::serve_each(incoming, OPEN_REQUESTS, move |stream| {
            let seeder = self.clone();
            async move {
                let peer = stream.peer();
                if let Err(err) = seeder.answer(stream).await {
                    tracing::debug!(%peer, %err, "a weights request ended badly");
                }
            }
        })
        .await;
    }

    async fn answer(&self, mut stream: PeerStream) -> Result<(), WireError> {
        let request: Request = match wire::read_line(&mut stream).await {
            Ok(request) => request,
            Err(err) => {
                let refusal = Answer::refused(Refusal::Malformed, err.to_string());
                return wire::write_line(&mut stream, &refusal).await;
            }
        };
        let Some(file) = self.lock().get(&request.sha256).cloned() else {
            let refusal = Answer::refused(Refusal::NotFound, "this peer does not share that file");
            return wire::write_line(&mut stream, &refusal).await;
        };
        let Some(index) = request.chunk else {
            let len = file.manifest_json.len() as u64;
            wire::write_line(&mut stream, &Answer::Sending { len }).await?;
            return self.send(&mut stream, &file.manifest_json).await;
        };
        if index >= file.manifest.chunks.len() {
            let refusal = Answer::refused(
                Refusal::NotFound,
                format!("the file has {} chunks", file.manifest.chunks.len()),
            );
            return wire::write_line(&mut stream, &refusal).await;
        }
        let Ok(_upload) = self.inner.uploads.clone().try_acquire_owned() else {
            self.inner.stats.busy.inc();
            let refusal = Answer::refused(
                Refusal::Busy,
                format!("{} uploads under way", self.inner.policy.max_uploads),
            );
            return wire::write_line(&mut stream, &refusal).await;
        };
        let (start, len) = file.manifest.range(index);
        let path = file.path.clone();
        let read = tokio::task::spawn_blocking(move || read_at(&path, start, len)).await;
        let bytes = match read {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(err)) => {
                let refusal = Answer::refused(Refusal::Unreadable, err.to_string());
                return wire::write_line(&mut stream, &refusal).await;
            }
            Err(err) => return Err(WireError::Protocol(format!("reading task: {err}"))),
        };
        wire::write_line(&mut stream, &Answer::Sending { len }).await?;
        self.send(&mut stream, &bytes).await?;
        self.inner.stats.chunks_sent.inc();
        Ok(())
    }

    /// Writes `bytes` in paced pieces, then closes the stream.
    async fn send(&self, stream: &mut PeerStream, bytes: &[u8]) -> Result<(), WireError> {
        let whole = async {
            for piece in bytes.chunks(PIECE) {
                if let Some(pace) = &self.inner.pace {
                    pace.take(piece.len()).await;
                }
                stream.write_all(piece).await?;
                self.inner.stats.bytes_sent.inc_by(piece.len() as u64);
            }
            stream.close().await
        };
        tokio::time::timeout(wire::BODY_TIMEOUT, whole)
            .await
            .map_err(|_| WireError::Timeout(wire::BODY_TIMEOUT))??;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Shared>>> {
        self.inner.files.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn announce(swarm: SwarmHandle, sha256: String) {
    tokio::spawn(async move {
        if let Err(err) = swarm.provide_weights(&sha256).await {
            tracing::warn!(%sha256, %err, "cannot announce the shared model file");
        }
    });
}

/// `len` bytes of `path` from `start`; a file that got shorter is an error, not a short
/// chunk.
fn read_at(path: &Path, start: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path)?;
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, start)?;
    Ok(bytes)
}

/// Paces all uploads together to a byte rate: each piece is sent at the earliest time
/// that keeps the total within the rate (a virtual clock that advances by each piece's
/// share of a second).
struct Pace {
    bytes_per_second: u64,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    fn new(bytes_per_second: u64) -> Pace {
        Pace {
            bytes_per_second,
            next: Mutex::new(None),
        }
    }

    async fn take(&self, bytes: usize) {
        let start = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = next.map_or(now, |at| at.max(now));
            let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
            *next = Some(start + cost);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pacing_holds_all_uploads_together_to_the_rate() {
        let pace = Arc::new(Pace::new(16 << 20));
        let began = Instant::now();
        // Four uploaders of 1 MiB each in 64 KiB pieces: 4 MiB at 16 MiB/s is 250 ms
        // however they interleave (paced one by one, they would take 62 ms).
        let uploads: Vec<_> = (0..4)
            .map(|_| {
                let pace = pace.clone();
                tokio::spawn(async move {
                    for _ in 0..16 {
                        pace.take(PIECE).await;
                    }
                })
            })
            .collect();
        for upload in uploads {
            upload.await.unwrap();
        }
        let took = began.elapsed();
        // The last piece starts when 63 of 64 are paid for.
        assert!(took >= Duration::from_millis(240), "{took:?}");
    }
}
