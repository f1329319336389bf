//! Model files through the swarm over loopback: real swarms (TCP on 127.0.0.1, one private
//! key), real seeders sharing files from disk, and `weights::fetch` as `llamanet fetch` runs
//! it. Peers that lie are real peers whose copy went bad after they verified it, or that
//! answer the protocol themselves with a forged manifest. Every test runs under a time
//! limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libp2p::pnet::PreSharedKey;
use llamanet_node::model::ModelError;
use llamanet_node::swarm::{self, SwarmConfig, SwarmHandle};
use llamanet_node::weights::wire::{self, Answer, Request};
use llamanet_node::weights::{
    self, CHUNK_BYTES, FetchOptions, Manifest, SeedPolicy, Seeder, WEIGHTS_PROTOCOL,
};
use llamanet_swarm::testing::{addr_of, bounded, init_logs, node_config};
use sha2::{Digest, Sha256};

const PSK: [u8; 32] = [42; 32];

/// A file of `chunks` whole chunks plus a short tail, with bytes derived from `seed`.
fn model_bytes(chunks: u64, seed: u8) -> Vec<u8> {
    let len = (chunks * CHUNK_BYTES + 12_345) as usize;
    (0..len)
        .map(|i| {
            (i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed as u64) as u8
                ^ (i >> 13) as u8
        })
        .collect()
}

fn sha_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

async fn full_node(bootstrap: Vec<libp2p::Multiaddr>) -> SwarmHandle {
    let config = SwarmConfig {
        psk: Some(PreSharedKey::new(PSK)),
        publish_heartbeats: false,
        ..node_config(bootstrap)
    };
    swarm::start(swarm::identity::ephemeral(), config)
        .await
        .unwrap()
}

/// A node sharing `bytes` from a file in `dir`, with the manifest made from the file.
async fn seeder(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    policy: SeedPolicy,
    bootstrap: Vec<libp2p::Multiaddr>,
) -> (SwarmHandle, Seeder, PathBuf) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let node = full_node(bootstrap).await;
    let seeder = Seeder::new(policy);
    seeder.add(&path, Manifest::of_file(&path).unwrap());
    seeder.attach(&node).unwrap();
    (node, seeder, path)
}

async fn fetcher(bootstrap: &SwarmHandle) -> SwarmHandle {
    let config = SwarmConfig {
        psk: Some(PreSharedKey::new(PSK)),
        query_timeout: Duration::from_secs(5),
        ..SwarmConfig::light(vec![addr_of(bootstrap)])
    };
    swarm::start(swarm::identity::ephemeral(), config)
        .await
        .unwrap()
}

fn options() -> FetchOptions {
    FetchOptions {
        find_peers_for: Duration::from_secs(20),
        open_timeout: Duration::from_secs(5),
        progress_every: Duration::from_millis(500),
        ..FetchOptions::default()
    }
}

fn unpaced() -> SeedPolicy {
    SeedPolicy {
        max_uploads: 4,
        bytes_per_second: None,
    }
}

/// Files in `dir` other than `keep`: what a failed fetch left behind.
fn leftovers(dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !keep.contains(&p.as_path()))
        .collect()
}

/// An HTTP origin that serves `bytes` whole or by range, and counts what it sent.
async fn origin(bytes: Vec<u8>) -> (String, Arc<AtomicU64>) {
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    let sent = Arc::new(AtomicU64::new(0));
    let body = Arc::new(bytes);
    let counter = sent.clone();
    let app = axum::Router::new().route(
        "/model.gguf",
        axum::routing::get(move |headers: HeaderMap| {
            let body = body.clone();
            let counter = counter.clone();
            async move {
                let range = headers
                    .get(header::RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes="))
                    .and_then(|v| v.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
                match range {
                    Some((start, end)) if end < body.len() && start <= end => {
                        let part = body[start..=end].to_vec();
                        counter.fetch_add(part.len() as u64, Ordering::Relaxed);
                        (StatusCode::PARTIAL_CONTENT, part).into_response()
                    }
                    _ => {
                        counter.fetch_add(body.len() as u64, Ordering::Relaxed);
                        (StatusCode::OK, body.to_vec()).into_response()
                    }
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/model.gguf", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_fetches_from_several_peers_without_the_origin() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(6, 1);
        let sha = sha_of(&bytes);
        let (first, first_seeder, _) =
            seeder(dir.path(), "a.gguf", &bytes, unpaced(), vec![]).await;
        let (_second, second_seeder, _) = seeder(
            dir.path(),
            "b.gguf",
            &bytes,
            unpaced(),
            vec![addr_of(&first)],
        )
        .await;
        let me = fetcher(&first).await;
        let dest = dir.path().join("fetched.gguf");

        let report = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap();

        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert_eq!(report.from_peers, bytes.len() as u64);
        assert_eq!(report.from_origin, 0);
        assert_eq!(
            report.peers_used, 2,
            "chunks spread over both peers: {report:?}"
        );
        let sent = first_seeder.stats().bytes_sent.get() + second_seeder.stats().bytes_sent.get();
        // Chunks plus the one manifest.
        assert!(
            sent >= bytes.len() as u64 && sent < bytes.len() as u64 + 4096,
            "{sent}"
        );
        assert!(
            leftovers(dir.path(), &[&dest])
                .iter()
                .all(|p| !p.to_string_lossy().contains("partial"))
        );

        // Asked again, the verified file is reused without a byte from anyone.
        let again = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap();
        assert!(again.reused);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_wrong_bytes_is_dropped_and_its_chunks_come_from_another() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(6, 2);
        let sha = sha_of(&bytes);
        let (honest, _, _) = seeder(dir.path(), "a.gguf", &bytes, unpaced(), vec![]).await;
        let (liar, _, liar_path) = seeder(
            dir.path(),
            "b.gguf",
            &bytes,
            unpaced(),
            vec![addr_of(&honest)],
        )
        .await;
        // The liar's copy rots after it was verified: every chunk it sends is wrong.
        let mut rotten = bytes.clone();
        for b in rotten.iter_mut().step_by(4096) {
            *b ^= 0xff;
        }
        std::fs::write(&liar_path, &rotten).unwrap();
        let me = fetcher(&honest).await;
        let dest = dir.path().join("fetched.gguf");

        let report = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap();

        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        let dropped: Vec<_> = report.dropped.iter().map(|(p, _)| *p).collect();
        assert_eq!(dropped, vec![liar.peer_id()], "{report:?}");
        assert!(report.dropped[0].1.contains("wrong bytes"), "{report:?}");
        assert_eq!(report.from_peers, bytes.len() as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_a_truncated_peer_cannot_give_come_from_the_origin_by_range() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(5, 3);
        let sha = sha_of(&bytes);
        let (only, _, path) = seeder(dir.path(), "a.gguf", &bytes, unpaced(), vec![]).await;
        // Its copy lost the last two chunks after it was verified.
        let cut = 3 * CHUNK_BYTES;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (url, origin_sent) = origin(bytes.clone()).await;
        let me = fetcher(&only).await;
        let dest = dir.path().join("fetched.gguf");

        let report = weights::fetch(Some(&me), Some(&url), &dest, &sha, &options())
            .await
            .unwrap();

        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert_eq!(report.from_peers, cut, "{report:?}");
        assert_eq!(report.from_origin, bytes.len() as u64 - cut, "{report:?}");
        assert_eq!(
            origin_sent.load(Ordering::Relaxed),
            bytes.len() as u64 - cut
        );
        // It lacks two chunks, but gave the others: not dropped.
        assert!(report.dropped.is_empty(), "{report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_origin_a_file_no_peer_can_give_is_unavailable_and_nothing_is_left() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(3, 4);
        let sha = sha_of(&bytes);
        let (only, _, path) = seeder(dir.path(), "a.gguf", &bytes, unpaced(), vec![]).await;
        let me = fetcher(&only).await;
        let dest = dir.path().join("fetched.gguf");

        // Nobody shares this one.
        let nobody = sha_of(b"some other model");
        let err = weights::fetch(
            Some(&me),
            None,
            &dest,
            &nobody,
            &FetchOptions {
                find_peers_for: Duration::from_secs(2),
                ..options()
            },
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ModelError::Unavailable { .. }), "{err}");
        assert_eq!(err.reason(), "ModelUnavailable");
        assert!(
            err.to_string().contains("no peer of the swarm shares it"),
            "{err}"
        );

        // The only peer's copy is truncated: some chunks exist nowhere.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(CHUNK_BYTES)
            .unwrap();
        let err = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ModelUnavailable", "{err}");
        assert!(
            err.to_string()
                .contains("no peer sharing it could give chunk"),
            "{err}"
        );
        assert!(!dest.exists(), "no file at the destination");
    })
    .await;
}

/// A peer that answers the weights protocol itself: a manifest that claims `claimed` but
/// describes `bytes`, and `bytes`' chunks, which match that manifest.
async fn forger(bootstrap: &SwarmHandle, claimed: &str, bytes: Vec<u8>, dir: &Path) -> SwarmHandle {
    let node = full_node(vec![addr_of(bootstrap)]).await;
    let path = dir.join("forged.gguf");
    std::fs::write(&path, &bytes).unwrap();
    let mut manifest = Manifest::of_file(&path).unwrap();
    manifest.sha256 = claimed.to_owned();
    let manifest = Arc::new(manifest);
    let mut incoming = node.accept_streams(WEIGHTS_PROTOCOL).unwrap();
    let bytes = Arc::new(bytes);
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.next().await {
            let manifest = manifest.clone();
            let bytes = bytes.clone();
            tokio::spawn(async move {
                use futures::AsyncWriteExt;
                let request: Request = wire::read_line(&mut stream).await.unwrap();
                let body = match request.chunk {
                    None => serde_json::to_vec(&*manifest).unwrap(),
                    Some(i) => {
                        let (start, len) = manifest.range(i);
                        bytes[start as usize..(start + len) as usize].to_vec()
                    }
                };
                let len = body.len() as u64;
                wire::write_line(&mut stream, &Answer::Sending { len })
                    .await
                    .unwrap();
                stream.write_all(&body).await.unwrap();
                stream.close().await.unwrap();
            });
        }
    });
    node.provide_weights(claimed).await.unwrap();
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_manifest_ends_in_no_file_and_another_peers_manifest_is_tried() {
    init_logs();
    bounded(Duration::from_secs(120), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(2, 5);
        let sha = sha_of(&bytes);
        let hub = full_node(vec![]).await;
        let forged = forger(&hub, &sha, model_bytes(2, 99), dir.path()).await;
        let me = fetcher(&hub).await;
        let dest = dir.path().join("fetched.gguf");

        // Only the forger has it: its chunks match its manifest, the whole file does not.
        let err = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ModelUnavailable", "{err}");
        assert!(err.to_string().contains("manifest"), "{err}");
        assert!(!dest.exists());
        assert!(
            leftovers(dir.path(), &[&dir.path().join("forged.gguf")]).is_empty(),
            "the forged file's partial copy is deleted"
        );

        // With an honest peer too, the fetch ends with the right file whoever was asked
        // first, and the forger is named if its manifest was used.
        let (_honest, _, _) = seeder(
            dir.path(),
            "honest.gguf",
            &bytes,
            unpaced(),
            vec![addr_of(&hub)],
        )
        .await;
        let report = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert!(
            report.dropped.iter().all(|(p, _)| *p == forged.peer_id()),
            "{report:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_fetch_resumes_with_the_chunks_it_has() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(4, 6);
        let sha = sha_of(&bytes);
        let (only, _, _) = seeder(dir.path(), "a.gguf", &bytes, unpaced(), vec![]).await;
        let me = fetcher(&only).await;
        let dest = dir.path().join("fetched.gguf");
        // What an interrupted fetch leaves: the right size, two good chunks, zeros.
        let partial = dir
            .path()
            .join(format!(".fetched.gguf.{}.partial", &sha[..16]));
        let mut left = vec![0u8; bytes.len()];
        let kept = 2 * CHUNK_BYTES as usize;
        left[..kept].copy_from_slice(&bytes[..kept]);
        std::fs::write(&partial, &left).unwrap();

        let report = weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap();

        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        assert_eq!(report.resumed, kept as u64);
        assert_eq!(report.from_peers, (bytes.len() - kept) as u64);
        assert!(!partial.exists());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_paced_and_capped() {
    init_logs();
    bounded(Duration::from_secs(90), async {
        let dir = tempfile::tempdir().unwrap();
        let bytes = model_bytes(3, 7);
        let sha = sha_of(&bytes);
        let policy = SeedPolicy {
            max_uploads: 1,
            bytes_per_second: Some(8 << 20),
        };
        let (only, seeder, _) = seeder(dir.path(), "a.gguf", &bytes, policy, vec![]).await;
        let me = fetcher(&only).await;
        let dest = dir.path().join("fetched.gguf");

        let started = std::time::Instant::now();
        weights::fetch(Some(&me), None, &dest, &sha, &options())
            .await
            .unwrap();
        let took = started.elapsed();

        assert_eq!(std::fs::read(&dest).unwrap(), bytes);
        // 12 MiB at 8 MiB/s cannot take less than 1.5 s (a lower bound: the pace holds).
        assert!(took >= Duration::from_millis(1400), "{took:?}");
        // Eight chunks in flight met one upload slot: the rest were told to come back.
        assert!(seeder.stats().busy.get() > 0);
        assert_eq!(seeder.stats().chunks_sent.get(), 4);
    })
    .await;
}
