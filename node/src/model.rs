//! Model files on disk: checksum verification and fetching.
//!
//! A node only ever loads a GGUF file whose SHA-256 matches the checksum it was given (the
//! `InferenceNode` spec carries one), so a truncated download or a swapped file is caught
//! before llama.cpp sees it. [`fetch`] brings a model from an `http(s)://` URL or a local
//! path to a destination path, hashing while it streams and publishing the file with an
//! atomic rename only once the checksum matches: a reader of the destination path sees
//! either nothing or a verified model, never a partial one.
//!
//! Loading the verified file into llama.cpp lives in `engine`, not here; this module has no
//! llama.cpp dependency so the operator and tools can use it too.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Read and write in 1 MiB pieces: large enough to keep syscalls cheap, small enough that
/// hashing a multi-gigabyte model never holds much memory.
const CHUNK_BYTES: usize = 1 << 20;

/// A download that stops sending data for this long fails instead of hanging an init
/// container forever.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client model downloads use (whole files and ranges): bounded connect and read.
pub(crate) fn http_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
}

/// Everything that can go wrong with a model file. Messages name the path (or URL) and the
/// checksums involved, because the reader of the message is usually an operator looking at
/// a pod log or a status condition.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("'{given}' is not a SHA-256 checksum (expected 64 hex digits)")]
    InvalidChecksum { given: String },

    #[error("model file {} does not exist (expected sha256 {expected})", path.display())]
    Missing { path: PathBuf, expected: String },

    #[error(
        "model file {} is corrupt: sha256 is {actual}, expected {expected}",
        path.display()
    )]
    ChecksumMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error(
        "model source {source_name} has sha256 {actual}, expected {expected}; nothing was written to {}",
        dest.display()
    )]
    SourceChecksumMismatch {
        source_name: String,
        dest: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("model source {} does not exist", path.display())]
    SourceMissing { path: PathBuf },

    #[error("model source '{source_name}' is neither an http(s) URL nor a local path")]
    UnsupportedSource { source_name: String },

    #[error("download of {url} failed: {}", crate::swarm::error_text::chain(cause))]
    Download { url: String, cause: reqwest::Error },

    #[error("download of {url} failed: server answered {status}")]
    HttpStatus {
        url: String,
        status: reqwest::StatusCode,
    },

    #[error("model with sha256 {sha256} is unavailable: {detail}")]
    Unavailable { sha256: String, detail: String },

    #[error("{action} {}: {cause}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        cause: io::Error,
    },
}

impl ModelError {
    /// A short CamelCase reason, stable across releases: the `reason` of a status condition
    /// and a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::InvalidChecksum { .. } => "InvalidChecksum",
            ModelError::Missing { .. } | ModelError::SourceMissing { .. } => "ModelMissing",
            ModelError::ChecksumMismatch { .. } | ModelError::SourceChecksumMismatch { .. } => {
                "ChecksumMismatch"
            }
            ModelError::UnsupportedSource { .. } => "UnsupportedSource",
            ModelError::Download { .. } | ModelError::HttpStatus { .. } => "DownloadFailed",
            ModelError::Unavailable { .. } => "ModelUnavailable",
            ModelError::Io { .. } => "IoError",
        }
    }

    fn io(action: &'static str, path: &Path, cause: io::Error) -> Self {
        ModelError::Io {
            action,
            path: path.to_path_buf(),
            cause,
        }
    }
}

/// What [`fetch`] did to put a verified model at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The destination already held the right file; nothing was transferred.
    Reused,
    /// Downloaded over HTTP(S).
    Downloaded { bytes: u64 },
    /// Copied from a local path.
    Copied { bytes: u64 },
}

/// Checks that `expected` looks like a SHA-256 checksum and returns it in lower case, so
/// that comparisons and messages use one spelling.
pub fn normalize_sha256(expected: &str) -> Result<String, ModelError> {
    let trimmed = expected.trim();
    if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(trimmed.to_ascii_lowercase())
    } else {
        Err(ModelError::InvalidChecksum {
            given: expected.to_string(),
        })
    }
}

/// The SHA-256 of a file as lower-case hex, read in bounded chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Bytes read from each end of a model file for its [`fingerprint`].
const FINGERPRINT_SPAN: u64 = 1 << 20;

/// A cheap identity of a model file: SHA-256 over its size, first MiB and last MiB, as 32
/// hex digits. Two nodes whose fingerprints match serve the same weights and vocabulary
/// for any practical purpose (GGUF puts its metadata and vocabulary first and tensors
/// after), which is what continuing another node's stream by token ids needs. It costs two
/// reads instead of hashing gigabytes at every start.
pub fn fingerprint(path: &Path) -> io::Result<String> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = Sha256::new();
    hasher.update(size.to_le_bytes());
    let mut buf = Vec::new();
    (&mut file).take(FINGERPRINT_SPAN).read_to_end(&mut buf)?;
    hasher.update(&buf);
    if size > FINGERPRINT_SPAN {
        file.seek(SeekFrom::Start(
            size.saturating_sub(FINGERPRINT_SPAN).max(FINGERPRINT_SPAN),
        ))?;
        buf.clear();
        file.take(FINGERPRINT_SPAN).read_to_end(&mut buf)?;
        hasher.update(&buf);
    }
    Ok(hex::encode(&hasher.finalize()[..16]))
}

/// Verifies that the file at `path` exists and has the SHA-256 `expected` (hex, any case).
///
/// This reads the whole file and blocks; call it from `spawn_blocking` in async code.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), ModelError> {
    let expected = normalize_sha256(expected)?;
    let actual = match sha256_file(path) {
        Ok(actual) => actual,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ModelError::Missing {
                path: path.to_path_buf(),
                expected,
            });
        }
        Err(err) => return Err(ModelError::io("cannot read model file", path, err)),
    };
    if actual == expected {
        Ok(())
    } else {
        Err(ModelError::ChecksumMismatch {
            path: path.to_path_buf(),
            expected,
            actual,
        })
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Url(String),
    Path(PathBuf),
}

impl Source {
    fn parse(source: &str) -> Result<Self, ModelError> {
        let lower = source.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            Ok(Source::Url(source.to_string()))
        } else if let Some(path) = source.strip_prefix("file://") {
            Ok(Source::Path(PathBuf::from(path)))
        } else if source.contains("://") || source.is_empty() {
            Err(ModelError::UnsupportedSource {
                source_name: source.to_string(),
            })
        } else {
            Ok(Source::Path(PathBuf::from(source)))
        }
    }
}

/// Puts a model with checksum `sha256` at `dest`, from `source`: an `http://` or `https://`
/// URL, a `file://` URL, or a local path.
///
/// If `dest` already holds a file with the right checksum it is reused and nothing is
/// transferred. Otherwise the data is streamed into a temporary file next to `dest`, hashed
/// on the way, and renamed onto `dest` only when the checksum matches; on any failure the
/// temporary file is removed and `dest` is left as it was.
pub async fn fetch(source: &str, dest: &Path, sha256: &str) -> Result<FetchOutcome, ModelError> {
    let expected = normalize_sha256(sha256)?;
    let source = Source::parse(source)?;

    match verify_blocking(dest.to_path_buf(), expected.clone()).await {
        Ok(()) => {
            tracing::info!(dest = %dest.display(), "model already present and verified, reusing it");
            return Ok(FetchOutcome::Reused);
        }
        Err(ModelError::Missing { .. }) => {}
        Err(err @ ModelError::ChecksumMismatch { .. }) => {
            tracing::warn!(%err, "replacing the model file at the destination");
        }
        Err(err) => return Err(err),
    }

    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|err| ModelError::io("cannot create directory", &dir, err))?;

    // The temporary file lives in the destination's directory so the final rename stays on
    // one filesystem (and is therefore atomic); its guard deletes it on every early return.
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_string());
    let prefix = format!(".{file_name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".part");
    // Temporary files are private (0600) by default; the published model must stay readable
    // by a node container that may run as another user than the one that fetched it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let part = builder
        .tempfile_in(&dir)
        .map_err(|err| ModelError::io("cannot create a temporary file in", &dir, err))?;
    let writer = part
        .reopen()
        .map_err(|err| ModelError::io("cannot open", part.path(), err))?;
    let mut writer = tokio::fs::File::from_std(writer);

    let started = Instant::now();
    let (source_name, streamed) = match &source {
        Source::Url(url) => {
            tracing::info!(%url, dest = %dest.display(), "downloading model");
            (url.clone(), download(url, &mut writer, part.path()).await?)
        }
        Source::Path(path) => {
            tracing::info!(source = %path.display(), dest = %dest.display(), "copying model");
            (
                path.display().to_string(),
                copy_local(path, &mut writer, part.path()).await?,
            )
        }
    };
    writer
        .sync_all()
        .await
        .map_err(|err| ModelError::io("cannot flush", part.path(), err))?;
    drop(writer);

    if streamed.sha256 != expected {
        return Err(ModelError::SourceChecksumMismatch {
            source_name,
            dest: dest.to_path_buf(),
            expected,
            actual: streamed.sha256,
        });
    }
    part.persist(dest)
        .map_err(|err| ModelError::io("cannot move the verified model to", dest, err.error))?;

    let secs = started.elapsed().as_secs_f64();
    tracing::info!(
        dest = %dest.display(),
        bytes = streamed.bytes,
        seconds = format!("{secs:.1}"),
        "model fetched and verified"
    );
    Ok(match source {
        Source::Url(_) => FetchOutcome::Downloaded {
            bytes: streamed.bytes,
        },
        Source::Path(_) => FetchOutcome::Copied {
            bytes: streamed.bytes,
        },
    })
}

pub(crate) async fn verify_blocking(path: PathBuf, expected: String) -> Result<(), ModelError> {
    let joined = tokio::task::spawn_blocking({
        let path = path.clone();
        move || verify_sha256(&path, &expected)
    })
    .await;
    joined.unwrap_or_else(|err| {
        Err(ModelError::io(
            "checksum task failed for",
            &path,
            io::Error::other(err.to_string()),
        ))
    })
}

/// Bytes written and their SHA-256.
struct Streamed {
    bytes: u64,
    sha256: String,
}

async fn download(
    url: &str,
    writer: &mut tokio::fs::File,
    part: &Path,
) -> Result<Streamed, ModelError> {
    let download_err = |cause| ModelError::Download {
        url: url.to_string(),
        cause,
    };
    let client = http_client().map_err(download_err)?;
    let mut response = client.get(url).send().await.map_err(download_err)?;
    if !response.status().is_success() {
        return Err(ModelError::HttpStatus {
            url: url.to_string(),
            status: response.status(),
        });
    }
    if let Some(len) = response.content_length() {
        tracing::debug!(%url, bytes = len, "download started");
    }
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    while let Some(chunk) = response.chunk().await.map_err(download_err)? {
        hasher.update(&chunk);
        writer
            .write_all(&chunk)
            .await
            .map_err(|err| ModelError::io("cannot write", part, err))?;
        bytes += chunk.len() as u64;
    }
    Ok(Streamed {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

async fn copy_local(
    source: &Path,
    writer: &mut tokio::fs::File,
    part: &Path,
) -> Result<Streamed, ModelError> {
    let mut reader = match tokio::fs::File::open(source).await {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(ModelError::SourceMissing {
                path: source.to_path_buf(),
            });
        }
        Err(err) => return Err(ModelError::io("cannot open model source", source, err)),
    };
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|err| ModelError::io("cannot read model source", source, err))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer
            .write_all(&buf[..n])
            .await
            .map_err(|err| ModelError::io("cannot write", part, err))?;
        bytes += n as u64;
    }
    Ok(Streamed {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const PAYLOAD: &[u8] = b"GGUF pretend model weights for the checksum tests";

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn fingerprints_tell_files_apart_by_size_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let big = 3 * FINGERPRINT_SPAN as usize;
        let mut bytes = vec![7u8; big];
        let a = write(dir.path(), "a.gguf", &bytes);
        let same = write(dir.path(), "same.gguf", &bytes);
        assert_eq!(fingerprint(&a).unwrap(), fingerprint(&same).unwrap());
        assert_eq!(fingerprint(&a).unwrap().len(), 32);
        bytes[big - 1] = 8;
        let tail = write(dir.path(), "tail.gguf", &bytes);
        assert_ne!(fingerprint(&a).unwrap(), fingerprint(&tail).unwrap());
        let short = write(dir.path(), "short.gguf", &bytes[..100]);
        let shorter = write(dir.path(), "shorter.gguf", &bytes[..99]);
        assert_ne!(fingerprint(&short).unwrap(), fingerprint(&shorter).unwrap());
        assert!(fingerprint(&dir.path().join("missing")).is_err());
    }

    /// Files in `dir` other than `keep`: a failed fetch must leave no temporary files.
    fn leftovers(dir: &Path, keep: &[&Path]) -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !keep.contains(&p.as_path()))
            .collect()
    }

    #[test]
    fn valid_file_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.gguf", PAYLOAD);
        verify_sha256(&path, &sha(PAYLOAD)).unwrap();
        // Checksums are accepted in upper case and with surrounding whitespace.
        verify_sha256(&path, &format!(" {} ", sha(PAYLOAD).to_uppercase())).unwrap();
    }

    #[test]
    fn corrupt_file_names_path_and_both_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "m.gguf", b"truncated");
        let expected = sha(PAYLOAD);
        let err = verify_sha256(&path, &expected).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::ChecksumMismatch { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&expected), "{msg}");
        assert!(msg.contains(&sha(b"truncated")), "{msg}");
        assert_eq!(err.reason(), "ChecksumMismatch");
    }

    #[test]
    fn missing_file_names_path_and_expected_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.gguf");
        let expected = sha(PAYLOAD);
        let err = verify_sha256(&path, &expected).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Missing { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&expected), "{msg}");
        assert_eq!(err.reason(), "ModelMissing");
    }

    #[test]
    fn malformed_checksum_is_rejected_before_reading() {
        let err = verify_sha256(Path::new("/nonexistent"), "abc123").unwrap_err();
        assert!(matches!(err, ModelError::InvalidChecksum { .. }));
        assert!(err.to_string().contains("abc123"));
    }

    #[test]
    fn sources_are_classified() {
        assert_eq!(
            Source::parse("https://example.org/m.gguf").unwrap(),
            Source::Url("https://example.org/m.gguf".into())
        );
        assert_eq!(
            Source::parse("file:///models/m.gguf").unwrap(),
            Source::Path("/models/m.gguf".into())
        );
        assert_eq!(
            Source::parse("models/m.gguf").unwrap(),
            Source::Path("models/m.gguf".into())
        );
        assert!(matches!(
            Source::parse("s3://bucket/m.gguf"),
            Err(ModelError::UnsupportedSource { .. })
        ));
    }

    #[tokio::test]
    async fn local_path_is_copied_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let src = write(dir.path(), "src.gguf", PAYLOAD);
        let dest = dir.path().join("cache/sub/m.gguf");
        let outcome = fetch(src.to_str().unwrap(), &dest, &sha(PAYLOAD))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            FetchOutcome::Copied {
                bytes: PAYLOAD.len() as u64
            }
        );
        assert_eq!(std::fs::read(&dest).unwrap(), PAYLOAD);
        assert!(leftovers(dest.parent().unwrap(), &[&dest]).is_empty());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o044,
                0o044,
                "model must be readable by others: {mode:o}"
            );
        }
    }

    #[tokio::test]
    async fn local_copy_with_wrong_checksum_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = write(dir.path(), "src.gguf", b"other bytes");
        let dest = dir.path().join("m.gguf");
        let err = fetch(src.to_str().unwrap(), &dest, &sha(PAYLOAD))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ModelError::SourceChecksumMismatch { .. }),
            "{err}"
        );
        assert!(!dest.exists());
        assert!(leftovers(dir.path(), &[&src]).is_empty());
    }

    #[tokio::test]
    async fn missing_local_source_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("nowhere.gguf");
        let err = fetch(
            src.to_str().unwrap(),
            &dir.path().join("m.gguf"),
            &sha(PAYLOAD),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, ModelError::SourceMissing { .. }), "{err}");
        assert!(err.to_string().contains(&src.display().to_string()));
    }

    #[tokio::test]
    async fn valid_destination_is_reused_without_reading_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let dest = write(dir.path(), "m.gguf", PAYLOAD);
        // The source does not exist: reuse must not touch it.
        let outcome = fetch("/definitely/not/here.gguf", &dest, &sha(PAYLOAD))
            .await
            .unwrap();
        assert_eq!(outcome, FetchOutcome::Reused);
    }

    #[tokio::test]
    async fn corrupt_destination_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let src = write(dir.path(), "src.gguf", PAYLOAD);
        let dest = write(dir.path(), "m.gguf", b"half a model");
        let outcome = fetch(src.to_str().unwrap(), &dest, &sha(PAYLOAD))
            .await
            .unwrap();
        assert!(matches!(outcome, FetchOutcome::Copied { .. }));
        verify_sha256(&dest, &sha(PAYLOAD)).unwrap();
    }

    /// A loopback HTTP server: `/model.gguf` serves `body`, anything else is 404. Returns
    /// its address and a counter of requests served.
    async fn serve(body: &'static [u8]) -> (SocketAddr, Arc<AtomicUsize>) {
        use axum::routing::get;
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().route(
            "/model.gguf",
            get(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, hits)
    }

    #[tokio::test]
    async fn http_download_is_verified_and_renamed_into_place() {
        let (addr, hits) = serve(PAYLOAD).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let url = format!("http://{addr}/model.gguf");

        let outcome = fetch(&url, &dest, &sha(PAYLOAD)).await.unwrap();
        assert_eq!(
            outcome,
            FetchOutcome::Downloaded {
                bytes: PAYLOAD.len() as u64
            }
        );
        assert_eq!(std::fs::read(&dest).unwrap(), PAYLOAD);
        assert!(leftovers(dir.path(), &[&dest]).is_empty());

        // A second fetch finds the verified file and does not download again.
        assert_eq!(
            fetch(&url, &dest, &sha(PAYLOAD)).await.unwrap(),
            FetchOutcome::Reused
        );
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn http_download_with_wrong_checksum_leaves_no_file() {
        let (addr, _) = serve(b"a different model").await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let url = format!("http://{addr}/model.gguf");
        let expected = sha(PAYLOAD);

        let err = fetch(&url, &dest, &expected).await.unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, ModelError::SourceChecksumMismatch { .. }),
            "{msg}"
        );
        assert!(msg.contains(&url), "{msg}");
        assert!(msg.contains(&expected), "{msg}");
        assert!(msg.contains(&sha(b"a different model")), "{msg}");
        assert!(!dest.exists());
        assert!(leftovers(dir.path(), &[]).is_empty());
    }

    #[tokio::test]
    async fn unreachable_server_is_reported_with_its_cause() {
        // A port that was just free: nothing listens there any more.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("http://{addr}/model.gguf");
        let err = fetch(&url, &dir.path().join("m.gguf"), &sha(PAYLOAD))
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Download { .. }), "{msg}");
        assert!(msg.contains(&url), "{msg}");
        // The innermost cause (the refused connection) is part of the message itself.
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
        assert!(leftovers(dir.path(), &[]).is_empty());
    }

    #[tokio::test]
    async fn http_error_status_is_reported() {
        let (addr, _) = serve(PAYLOAD).await;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("m.gguf");
        let url = format!("http://{addr}/missing.gguf");
        let err = fetch(&url, &dest, &sha(PAYLOAD)).await.unwrap_err();
        assert!(
            matches!(err, ModelError::HttpStatus { status, .. } if status == 404),
            "{err}"
        );
        assert_eq!(err.reason(), "DownloadFailed");
        assert!(!dest.exists());
        assert!(leftovers(dir.path(), &[]).is_empty());
    }
}
