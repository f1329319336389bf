//! Fetching a model file from the peers that share it, the origin only for what they lack.
//!
//! 1. Find the peers that announced the file's SHA-256 in the DHT.
//! 2. Take the first valid manifest a peer sends.
//! 3. Fetch the chunks the destination's partial file lacks (a partial file left by an
//!    interrupted fetch is checked chunk by chunk and its good chunks kept), several at a
//!    time from several peers, each checked against the manifest on arrival. A peer that
//!    sends a wrong chunk is dropped at once and the chunk fetched elsewhere; one that fails
//!    three times in a row is dropped too; a busy one is asked again a moment later; one
//!    that lacks a chunk (its copy is short) is asked for the others. Chunks no peer can
//!    give come from the origin URL (HTTP range requests), if there is one.
//! 4. Hash the whole file. Only if it is the SHA-256 asked for is it renamed into place; if
//!    not, the manifest lied: the partial file is deleted and another peer's manifest tried.
//!
//! With no peer to ask (no swarm, none sharing the file, no valid manifest) the whole file
//! comes from the origin through [`crate::model::fetch`]; with no origin either, the fetch
//! fails with [`ModelError::Unavailable`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use tokio::time::Instant;

use super::manifest::{MAX_MANIFEST_BYTES, Manifest};
use super::wire::{self, Refusal, Request, WEIGHTS_PROTOCOL, WireError};
use crate::model::{self, FetchOutcome, ModelError};
use crate::swarm::SwarmHandle;

/// How a fetch goes about it.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Chunks in flight at once, over all peers.
    pub parallel: usize,
    /// Chunks in flight at once from one peer.
    pub per_peer: usize,
    /// Failures in a row (a good chunk starts the count over; requests that fail together
    /// count once; a wrong chunk drops a peer at once) before a peer is dropped.
    pub peer_failures: u32,
    /// How long to wait for a first connection to the swarm and for providers to be found.
    pub find_peers_for: Duration,
    /// Opening a stream to a peer, at most.
    pub open_timeout: Duration,
    /// Peer manifests tried when a finished file's SHA-256 is wrong.
    pub manifest_attempts: usize,
    /// How often progress is logged.
    pub progress_every: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            parallel: 8,
            per_peer: 4,
            peer_failures: 3,
            find_peers_for: Duration::from_secs(15),
            open_timeout: Duration::from_secs(10),
            manifest_attempts: 3,
            progress_every: Duration::from_secs(2),
        }
    }
}

/// Where the bytes of a fetch came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// The destination held the right file already.
    pub reused: bool,
    pub from_peers: u64,
    pub from_origin: u64,
    /// Bytes of a previous, interrupted fetch that were kept.
    pub resumed: u64,
    /// Peers that sent at least one good chunk.
    pub peers_used: usize,
    /// Peers dropped, with why.
    pub dropped: Vec<(PeerId, String)>,
}

/// Fetches the file with SHA-256 `sha256` to `dest`: from the swarm's peers first (when
/// `swarm` is given and `origin` is not a local path), from `origin` for the rest.
pub async fn fetch(
    swarm: Option<&SwarmHandle>,
    origin: Option<&str>,
    dest: &Path,
    sha256: &str,
    options: &FetchOptions,
) -> Result<FetchReport, ModelError> {
    let sha256 = model::normalize_sha256(sha256)?;
    if dest.exists()
        && model::verify_blocking(dest.to_path_buf(), sha256.clone())
            .await
            .is_ok()
    {
        return Ok(FetchReport {
            reused: true,
            ..FetchReport::default()
        });
    }
    let url = origin.filter(|o| o.starts_with("http://") || o.starts_with("https://"));
    let from_swarm = match (swarm, origin) {
        // A local copy is faster than any peer.
        (Some(_), Some(_)) if url.is_none() => None,
        (swarm, _) => swarm,
    };
    let mut tried = HashSet::new();
    let mut dropped = Vec::new();
    if let Some(swarm) = from_swarm {
        let mut providers = find_providers(swarm, &sha256, options).await;
        for _ in 0..options.manifest_attempts {
            providers.retain(|p| !tried.contains(p));
            let Some((author, manifest)) =
                first_manifest(swarm, &providers, &sha256, options).await
            else {
                break;
            };
            tried.insert(author);
            let mut job = Job::new(swarm, url, dest, manifest, &providers, options)?;
            match job.run().await {
                Ok(mut report) => {
                    report.dropped.splice(0..0, dropped);
                    return Ok(report);
                }
                Err(JobError::ManifestLied { actual }) => {
                    tracing::warn!(peer = %author, %actual, "a peer's manifest does not describe the file asked for; trying another");
                    dropped.push((
                        author,
                        format!("its manifest made a file with sha256 {actual}"),
                    ));
                }
                Err(JobError::Model(err)) => return Err(err),
            }
        }
    }
    match origin {
        Some(origin) => match model::fetch(origin, dest, &sha256).await? {
            FetchOutcome::Reused => Ok(FetchReport {
                reused: true,
                dropped,
                ..FetchReport::default()
            }),
            FetchOutcome::Downloaded { bytes } | FetchOutcome::Copied { bytes } => {
                Ok(FetchReport {
                    from_origin: bytes,
                    dropped,
                    ..FetchReport::default()
                })
            }
        },
        None => Err(ModelError::Unavailable {
            sha256,
            detail: match (from_swarm, tried.is_empty()) {
                (None, _) => "there is no source and no swarm to ask".into(),
                (Some(_), true) => "no peer of the swarm shares it and there is no source".into(),
                (Some(_), false) => {
                    "no peer of the swarm sent a manifest that describes it and there is no source"
                        .into()
                }
            },
        }),
    }
}

/// Providers of the file, retried until some are found or the time is up (a fresh peer
/// may not be connected to the swarm yet).
async fn find_providers(swarm: &SwarmHandle, sha256: &str, options: &FetchOptions) -> Vec<PeerId> {
    let deadline = Instant::now() + options.find_peers_for;
    let me = swarm.peer_id();
    loop {
        let connected = swarm.connected_peers().await.unwrap_or_default();
        if !connected.is_empty() {
            match swarm.find_weights(sha256).await {
                Ok(mut found) => {
                    found.retain(|p| *p != me);
                    if !found.is_empty() {
                        tracing::info!(providers = found.len(), "peers share the model file");
                        return found;
                    }
                }
                Err(err) => tracing::debug!(%err, "provider lookup failed"),
            }
        }
        if Instant::now() >= deadline {
            tracing::info!(connected = connected.len(), "no peer shares the model file");
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The first valid manifest any of `providers` sends, with who sent it.
async fn first_manifest(
    swarm: &SwarmHandle,
    providers: &[PeerId],
    sha256: &str,
    options: &FetchOptions,
) -> Option<(PeerId, Manifest)> {
    let request = Request {
        sha256: sha256.into(),
        chunk: None,
    };
    for &peer in providers {
        // A request the peer did not take (a burst at its acceptor) is asked again.
        for _ in 0..3 {
            let answer = async {
                let mut stream = swarm
                    .open_stream(peer, WEIGHTS_PROTOCOL, options.open_timeout)
                    .await
                    .map_err(|err| (false, err.to_string()))?;
                let body = wire::ask(&mut stream, &request, None, MAX_MANIFEST_BYTES)
                    .await
                    .map_err(|err| (matches!(err, WireError::Unanswered(_)), err.to_string()))?;
                let manifest: Manifest = serde_json::from_slice(&body)
                    .map_err(|err| (false, format!("not a manifest: {err}")))?;
                manifest
                    .check(sha256)
                    .map_err(|err| (false, format!("its manifest: {err}")))?;
                Ok::<_, (bool, String)>(manifest)
            };
            match answer.await {
                Ok(manifest) => return Some((peer, manifest)),
                Err((true, _)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err((false, err)) => {
                    tracing::info!(%peer, %err, "no manifest from this peer");
                    break;
                }
            }
        }
    }
    None
}

enum JobError {
    ManifestLied { actual: String },
    Model(ModelError),
}

impl From<ModelError> for JobError {
    fn from(err: ModelError) -> Self {
        JobError::Model(err)
    }
}

/// One peer as the fetch sees it.
#[derive(Debug, Default)]
struct Peer {
    in_flight: usize,
    /// Failures since its last good chunk.
    failures: u32,
    last_failure: Option<Instant>,
    /// Busy answers since its last good chunk.
    busy_streak: u32,
    /// Chunks it said it cannot give (its copy is short or unreadable there).
    lacks: HashSet<usize>,
    dropped: Option<String>,
    busy_until: Option<Instant>,
    bytes: u64,
}

/// Where the next chunk comes from.
enum Pick {
    Peer(PeerId),
    /// Every usable peer is busy or at its limit: wait for a chunk in flight or a moment.
    Wait,
    /// No peer is left.
    Origin,
}

/// One manifest's worth of fetching into a partial file.
struct Job<'a> {
    swarm: &'a SwarmHandle,
    /// The URL, and one client for all its range requests (its connections are reused).
    origin: Option<(&'a str, reqwest::Client)>,
    dest: PathBuf,
    partial: PathBuf,
    manifest: Arc<Manifest>,
    options: &'a FetchOptions,
    peers: HashMap<PeerId, Peer>,
    /// Peers in the order they are tried: spreads chunks over all of them.
    order: Vec<PeerId>,
    next_peer: usize,
    report: FetchReport,
}

/// A finished chunk request: the chunk, its peer (none: the origin), when it was sent,
/// and what came back.
type ChunkResult = (usize, Option<PeerId>, Instant, Result<Vec<u8>, ChunkError>);

/// Why a chunk did not come.
#[derive(Debug)]
enum ChunkError {
    /// The peer said it is busy, or dropped the stream before it read the request: ask it
    /// again a moment later.
    Busy,
    /// The peer cannot give this chunk (it said so): ask another one for it.
    Lacking(String),
    /// Anything else: counts against the source.
    Failed(String),
}

impl<'a> Job<'a> {
    fn new(
        swarm: &'a SwarmHandle,
        origin: Option<&'a str>,
        dest: &Path,
        manifest: Manifest,
        providers: &[PeerId],
        options: &'a FetchOptions,
    ) -> Result<Self, ModelError> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let partial = dest.with_file_name(format!(".{name}.{}.partial", &manifest.sha256[..16]));
        let origin = match origin {
            Some(url) => Some((
                url,
                model::http_client().map_err(|cause| ModelError::Download {
                    url: url.to_string(),
                    cause,
                })?,
            )),
            None => None,
        };
        Ok(Job {
            swarm,
            origin,
            dest: dest.to_path_buf(),
            partial,
            manifest: Arc::new(manifest),
            options,
            peers: providers.iter().map(|p| (*p, Peer::default())).collect(),
            order: providers.to_vec(),
            next_peer: 0,
            report: FetchReport::default(),
        })
    }

    async fn run(&mut self) -> Result<FetchReport, JobError> {
        let (file, earlier) = self.open_partial()?;
        let file = Arc::new(file);
        let mut pending: VecDeque<usize> = if earlier {
            self.missing_chunks(&file).await?.into()
        } else {
            (0..self.manifest.chunks.len()).collect()
        };
        let mut origin_failures: HashMap<usize, u32> = HashMap::new();
        let mut running: FuturesUnordered<BoxFuture<'static, ChunkResult>> =
            FuturesUnordered::new();
        let started = Instant::now();
        let mut progress = tokio::time::interval(self.options.progress_every);
        progress.tick().await;
        tracing::info!(
            chunks = pending.len(),
            peers = self.order.len(),
            size = self.manifest.size,
            "fetching the model file from the swarm"
        );
        loop {
            let mut waiting = false;
            while running.len() < self.options.parallel {
                let Some(index) = pending.pop_front() else {
                    break;
                };
                match self.pick(index) {
                    Pick::Peer(peer) => {
                        self.peers.get_mut(&peer).expect("known peer").in_flight += 1;
                        running.push(
                            chunk_from_peer(
                                self.swarm.clone(),
                                peer,
                                self.manifest.clone(),
                                index,
                                self.options.open_timeout,
                            )
                            .boxed(),
                        );
                    }
                    Pick::Wait => {
                        pending.push_front(index);
                        waiting = true;
                        break;
                    }
                    Pick::Origin => match &self.origin {
                        Some((url, client)) => running.push(
                            chunk_from_origin(
                                client.clone(),
                                url.to_string(),
                                self.manifest.clone(),
                                index,
                            )
                            .boxed(),
                        ),
                        None => {
                            return Err(JobError::Model(ModelError::Unavailable {
                                sha256: self.manifest.sha256.clone(),
                                detail: format!(
                                    "no peer sharing it could give chunk {index} of {} ({}) \
                                     and there is no source",
                                    self.manifest.chunks.len(),
                                    self.dropped_summary()
                                ),
                            }));
                        }
                    },
                }
            }
            if running.is_empty() && pending.is_empty() {
                break;
            }
            let done = tokio::select! {
                done = running.next(), if !running.is_empty() => done,
                _ = tokio::time::sleep(Duration::from_millis(200)), if waiting || running.is_empty() => None,
                _ = progress.tick() => {
                    self.log_progress(started);
                    None
                }
            };
            let Some((index, peer, sent, result)) = done else {
                continue;
            };
            match self.settle(&file, index, peer, result).await {
                Ok(()) => {}
                Err(Some(reason)) => {
                    match peer {
                        Some(peer) => self.fail(peer, sent, &reason),
                        None => {
                            let failures = origin_failures.entry(index).or_default();
                            *failures += 1;
                            if *failures >= 3 {
                                return Err(JobError::Model(ModelError::Unavailable {
                                    sha256: self.manifest.sha256.clone(),
                                    detail: format!("chunk {index} from the source: {reason}"),
                                }));
                            }
                        }
                    }
                    pending.push_back(index);
                }
                Err(None) => pending.push_back(index),
            }
        }
        drop(file);
        self.log_progress(started);
        self.finish().await?;
        self.report.peers_used = self.peers.values().filter(|p| p.bytes > 0).count();
        for (peer, state) in &self.peers {
            if let Some(reason) = &state.dropped {
                self.report.dropped.push((*peer, reason.clone()));
            }
        }
        Ok(std::mem::take(&mut self.report))
    }

    /// Handles one finished chunk: `Ok` if it was good and is written, `Err(Some(why))` if
    /// its source failed, `Err(None)` if the source was only busy.
    async fn settle(
        &mut self,
        file: &Arc<std::fs::File>,
        index: usize,
        peer: Option<PeerId>,
        result: Result<Vec<u8>, ChunkError>,
    ) -> Result<(), Option<String>> {
        if let Some(peer) = peer {
            self.peers.get_mut(&peer).expect("known peer").in_flight -= 1;
        }
        let bytes = match result {
            Ok(bytes) => bytes,
            Err(ChunkError::Busy) => {
                if let Some(peer) = peer {
                    let state = self.peers.get_mut(&peer).expect("known peer");
                    state.busy_until = Some(Instant::now() + Duration::from_millis(300));
                    state.busy_streak += 1;
                    if state.busy_streak >= BUSY_STREAK && state.dropped.is_none() {
                        state.dropped = Some(format!("busy {BUSY_STREAK} times in a row"));
                    }
                }
                return Err(None);
            }
            Err(ChunkError::Lacking(reason)) => {
                if let Some(peer) = peer {
                    tracing::info!(%peer, index, %reason, "a peer cannot give a chunk");
                    self.peers
                        .get_mut(&peer)
                        .expect("known peer")
                        .lacks
                        .insert(index);
                }
                return Err(None);
            }
            Err(ChunkError::Failed(reason)) => return Err(Some(reason)),
        };
        if !self.manifest.chunk_matches(index, &bytes) {
            let why = format!("sent chunk {index} with the wrong bytes");
            if let Some(peer) = peer {
                // One wrong chunk is enough: a peer that lies once is not asked again.
                let state = self.peers.get_mut(&peer).expect("known peer");
                state.dropped = Some(why.clone());
                tracing::warn!(%peer, index, "a peer sent a wrong chunk; dropped");
            }
            return Err(Some(why));
        }
        let (start, _) = self.manifest.range(index);
        let len = bytes.len() as u64;
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            file.write_all_at(&bytes, start)
        })
        .await
        .map_err(|err| Some(err.to_string()))?;
        if let Err(err) = written {
            // The disk, not the source: nothing another peer could fix.
            return Err(Some(format!("writing {}: {err}", self.partial.display())));
        }
        match peer {
            Some(peer) => {
                let state = self.peers.get_mut(&peer).expect("known peer");
                state.bytes += len;
                state.failures = 0;
                state.busy_streak = 0;
                self.report.from_peers += len;
            }
            None => self.report.from_origin += len,
        }
        Ok(())
    }

    /// Counts a failure against `peer`, unless the request was sent before the peer's last
    /// counted failure: requests in flight together fail together when their connection
    /// breaks, and that is one failure, not one per request.
    fn fail(&mut self, peer: PeerId, sent: Instant, reason: &str) {
        let limit = self.options.peer_failures;
        let state = self.peers.get_mut(&peer).expect("known peer");
        if state.dropped.is_some() || state.last_failure.is_some_and(|at| sent < at) {
            return;
        }
        state.last_failure = Some(Instant::now());
        state.failures += 1;
        tracing::info!(%peer, %reason, failures = state.failures, "a chunk from a peer failed");
        if state.failures >= limit {
            state.dropped = Some(format!("failed {limit} times in a row, last: {reason}"));
        }
    }

    /// A peer for chunk `index`: the next one, in turn, that is not dropped, busy, at its
    /// limit, or known to lack that chunk.
    fn pick(&mut self, index: usize) -> Pick {
        let now = Instant::now();
        let mut any_left = false;
        for step in 0..self.order.len() {
            let peer = self.order[(self.next_peer + step) % self.order.len()];
            let state = &self.peers[&peer];
            if state.dropped.is_some() || state.lacks.contains(&index) {
                continue;
            }
            any_left = true;
            if state.in_flight >= self.options.per_peer || state.busy_until.is_some_and(|t| t > now)
            {
                continue;
            }
            self.next_peer = (self.next_peer + step + 1) % self.order.len();
            return Pick::Peer(peer);
        }
        if any_left { Pick::Wait } else { Pick::Origin }
    }

    /// The partial file, sized; and whether an earlier fetch left it (so some chunks may be
    /// there already).
    fn open_partial(&self) -> Result<(std::fs::File, bool), ModelError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&self.partial)
            .map_err(|err| io_error("cannot create", &self.partial, err))?;
        let len = file
            .metadata()
            .map_err(|err| io_error("cannot read", &self.partial, err))?
            .len();
        if len == self.manifest.size {
            return Ok((file, true));
        }
        file.set_len(0)
            .and_then(|()| file.set_len(self.manifest.size))
            .map_err(|err| io_error("cannot size", &self.partial, err))?;
        Ok((file, false))
    }

    /// Chunks the partial file does not hold yet: all of them for a new file; for one an
    /// interrupted fetch left, those whose bytes do not match the manifest.
    async fn missing_chunks(
        &mut self,
        file: &Arc<std::fs::File>,
    ) -> Result<Vec<usize>, ModelError> {
        let file = file.clone();
        let manifest = self.manifest.clone();
        let (missing, kept) = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let mut missing = Vec::new();
            let mut kept = 0u64;
            let mut buf = Vec::new();
            for index in 0..manifest.chunks.len() {
                let (start, len) = manifest.range(index);
                buf.resize(len as usize, 0);
                let good = file.read_exact_at(&mut buf, start).is_ok()
                    && manifest.chunk_matches(index, &buf);
                if good {
                    kept += len;
                } else {
                    missing.push(index);
                }
            }
            (missing, kept)
        })
        .await
        .map_err(|err| io_error("cannot check", &self.partial, std::io::Error::other(err)))?;
        if kept > 0 {
            tracing::info!(bytes = kept, "resuming an interrupted fetch");
        }
        self.report.resumed = kept;
        Ok(missing)
    }

    /// Checks the whole file and renames it into place, or deletes it.
    async fn finish(&self) -> Result<(), JobError> {
        let actual = {
            let path = self.partial.clone();
            tokio::task::spawn_blocking(move || model::sha256_file(&path))
                .await
                .map_err(|err| ModelError::Io {
                    action: "cannot hash",
                    path: self.partial.clone(),
                    cause: std::io::Error::other(err),
                })?
                .map_err(|err| io_error("cannot hash", &self.partial, err))?
        };
        if actual != self.manifest.sha256 {
            let _ = std::fs::remove_file(&self.partial);
            return Err(JobError::ManifestLied { actual });
        }
        std::fs::rename(&self.partial, &self.dest)
            .map_err(|err| io_error("cannot rename into place", &self.dest, err))?;
        Ok(())
    }

    fn log_progress(&self, started: Instant) {
        let bytes = self.report.from_peers + self.report.from_origin;
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            bytes,
            of = self.manifest.size - self.report.resumed,
            mib_per_second = format!("{:.1}", bytes as f64 / seconds / (1 << 20) as f64),
            peers = self.peers.values().filter(|p| p.dropped.is_none()).count(),
            from_origin = self.report.from_origin,
            "fetch progress"
        );
    }

    /// What became of each peer, for an error message.
    fn dropped_summary(&self) -> String {
        self.peers
            .iter()
            .map(|(peer, state)| match &state.dropped {
                Some(why) => format!("{peer}: {why}"),
                None => format!("{peer}: lacks {} chunks", state.lacks.len()),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Busy answers in a row (about a minute of asking) before a peer is given up on.
const BUSY_STREAK: u32 = 200;

async fn chunk_from_peer(
    swarm: SwarmHandle,
    peer: PeerId,
    manifest: Arc<Manifest>,
    index: usize,
    open_timeout: Duration,
) -> ChunkResult {
    let sent = Instant::now();
    let result = async {
        let mut stream = swarm
            .open_stream(peer, WEIGHTS_PROTOCOL, open_timeout)
            .await
            .map_err(|err| ChunkError::Failed(err.to_string()))?;
        let request = Request {
            sha256: manifest.sha256.clone(),
            chunk: Some(index),
        };
        let (_, len) = manifest.range(index);
        wire::ask(&mut stream, &request, Some(len), len)
            .await
            .map_err(|err| match err {
                WireError::Refused {
                    reason: Refusal::Busy,
                    ..
                }
                | WireError::Unanswered(_) => ChunkError::Busy,
                err @ WireError::Refused {
                    reason: Refusal::NotFound | Refusal::Unreadable,
                    ..
                } => ChunkError::Lacking(err.to_string()),
                other => ChunkError::Failed(other.to_string()),
            })
    }
    .await;
    (index, Some(peer), sent, result)
}

async fn chunk_from_origin(
    client: reqwest::Client,
    url: String,
    manifest: Arc<Manifest>,
    index: usize,
) -> ChunkResult {
    let (start, len) = manifest.range(index);
    let sent = Instant::now();
    let result: Result<Vec<u8>, String> = async {
        let response = client
            .get(&url)
            .header(
                reqwest::header::RANGE,
                format!("bytes={start}-{}", start + len - 1),
            )
            .send()
            .await
            .map_err(|err| crate::swarm::error_text::chain(&err))?;
        if response.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            return Err(format!(
                "{url} answered {} to a range request (it must answer 206)",
                response.status()
            ));
        }
        let mut body = Vec::with_capacity(len as usize);
        let mut stream = response.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|err| crate::swarm::error_text::chain(&err))?;
            if body.len() + piece.len() > len as usize {
                return Err(format!("{url} sent more than the {len} bytes asked for"));
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
    .await;
    (index, None, sent, result.map_err(ChunkError::Failed))
}

fn io_error(action: &'static str, path: &Path, cause: std::io::Error) -> ModelError {
    ModelError::Io {
        action,
        path: path.to_path_buf(),
        cause,
    }
}
