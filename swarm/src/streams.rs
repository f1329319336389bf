//! Streams to and from peers over the swarm's own connections (libp2p-stream).
//!
//! A stream rides the connection the swarm already has to a peer: Noise-encrypted and bound
//! to the peer id that signs the peer's heartbeats, so whoever opens one knows exactly who
//! answers, and whoever accepts one knows exactly who asked. Routing carries forwarded
//! requests on them (HTTP/1.1 over [`HTTP_PROTOCOL`], see `llamanet_node::route::transport`).
//!
//! Every stream, either way, is counted per peer while it is open ([`InUse`]): the
//! connection budget never closes a connection that carries one, and keeps a peer it used a
//! moment ago (a follow-up forward is likely).
//!
//! Not here: what travels on a stream (the router's business).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use libp2p::{PeerId, StreamProtocol};

/// Forwarded OpenAI requests: one HTTP/1.1 exchange per stream.
pub const HTTP_PROTOCOL: StreamProtocol = StreamProtocol::new("/llamanet/http/1");

/// How long a peer stays "in use" after its last stream closed.
const RECENT: Duration = Duration::from_secs(30);

/// Open streams per peer, and when each peer's last one closed. Clone it freely.
#[derive(Debug, Clone, Default)]
pub struct InUse {
    peers: Arc<Mutex<HashMap<PeerId, Usage>>>,
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    open: usize,
    last: Instant,
}

impl InUse {
    /// Counts one stream with `peer` until the guard drops.
    pub fn begin(&self, peer: PeerId) -> InUseGuard {
        let mut peers = self.lock();
        let usage = peers.entry(peer).or_insert(Usage {
            open: 0,
            last: Instant::now(),
        });
        usage.open += 1;
        InUseGuard {
            owner: self.clone(),
            peer,
        }
    }

    /// Peers with an open stream, or one that closed less than [`RECENT`] ago; forgets the
    /// others.
    pub fn peers(&self, now: Instant) -> Vec<PeerId> {
        let mut peers = self.lock();
        peers.retain(|_, usage| usage.open > 0 || now.duration_since(usage.last) < RECENT);
        peers.keys().copied().collect()
    }

    /// Streams open with `peer` right now.
    pub fn open(&self, peer: &PeerId) -> usize {
        self.lock().get(peer).map_or(0, |usage| usage.open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, Usage>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open stream, counted in [`InUse`] until dropped.
#[derive(Debug)]
pub struct InUseGuard {
    owner: InUse,
    peer: PeerId,
}

impl Drop for InUseGuard {
    fn drop(&mut self) {
        let mut peers = self.owner.lock();
        if let Some(usage) = peers.get_mut(&self.peer) {
            usage.open = usage.open.saturating_sub(1);
            usage.last = Instant::now();
        }
    }
}

/// A stream with a peer: a libp2p stream that counts itself in [`InUse`] while open.
/// Reads and writes go straight to the libp2p stream (futures' `AsyncRead`/`AsyncWrite`;
/// `tokio_util::compat` adapts it for tokio and hyper).
#[derive(Debug)]
pub struct PeerStream {
    peer: PeerId,
    stream: libp2p::Stream,
    _use: InUseGuard,
}

impl PeerStream {
    pub(crate) fn new(peer: PeerId, stream: libp2p::Stream, in_use: &InUse) -> Self {
        PeerStream {
            peer,
            stream,
            _use: in_use.begin(peer),
        }
    }

    /// The peer at the other end, as the connection's Noise handshake proved it.
    pub fn peer(&self) -> PeerId {
        self.peer
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

/// Handles every stream of `incoming` in its own task, at most `concurrent` at once (more
/// wait for a turn, and while they wait libp2p-stream drops further inbound streams), until
/// `incoming` ends.
pub async fn serve_each<F, Fut>(
    mut incoming: impl futures::Stream<Item = PeerStream> + Unpin,
    concurrent: usize,
    handle: F,
) where
    F: Fn(PeerStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let turns = Arc::new(tokio::sync::Semaphore::new(concurrent));
    while let Some(stream) = incoming.next().await {
        let Ok(turn) = turns.clone().acquire_owned().await else {
            break;
        };
        let work = handle(stream);
        tokio::spawn(async move {
            let _turn = turn;
            work.await;
        });
    }
}

/// Why a line of a line-framed exchange (wake, weights) could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("no line within {0:?}")]
    Timeout(Duration),
    /// The stream ended before the first byte of the line.
    #[error("the stream ended before a line")]
    Closed,
    #[error("the stream ended mid-line")]
    EndedMidLine,
    #[error("no line within {0} bytes")]
    TooLong(usize),
    #[error("a {len} byte line is over the limit of {max}")]
    Oversized { len: usize, max: usize },
    #[error("a bad line: {0}")]
    Malformed(String),
}

/// Writes `message` as one JSON line of at most `max` bytes (newline included), within
/// `timeout`.
pub async fn write_json_line<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &impl serde::Serialize,
    max: usize,
    timeout: Duration,
) -> Result<(), LineError> {
    use futures::AsyncWriteExt;
    let mut line = serde_json::to_vec(message).expect("protocol messages serialize");
    line.push(b'\n');
    if line.len() > max {
        return Err(LineError::Oversized {
            len: line.len(),
            max,
        });
    }
    tokio::time::timeout(timeout, async {
        stream.write_all(&line).await?;
        stream.flush().await
    })
    .await
    .map_err(|_| LineError::Timeout(timeout))??;
    Ok(())
}

/// Reads one JSON line of at most `max` bytes (newline included) within `timeout` and
/// parses it. Reads byte by byte, so nothing after the newline (a body) is consumed.
pub async fn read_json_line<T, S>(
    stream: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<T, LineError>
where
    T: serde::de::DeserializeOwned,
    S: AsyncRead + Unpin,
{
    use futures::AsyncReadExt;
    let line = tokio::time::timeout(timeout, async {
        let mut line = Vec::with_capacity(128);
        let mut byte = [0u8; 1];
        loop {
            if stream.read(&mut byte).await? == 0 {
                return Err(match line.is_empty() {
                    true => LineError::Closed,
                    false => LineError::EndedMidLine,
                });
            }
            if byte[0] == b'\n' {
                return Ok(line);
            }
            line.push(byte[0]);
            if line.len() >= max {
                return Err(LineError::TooLong(max));
            }
        }
    })
    .await
    .map_err(|_| LineError::Timeout(timeout))??;
    serde_json::from_slice(&line).map_err(|err| LineError::Malformed(err.to_string()))
}

/// `message` cut to at most `max` bytes on a character boundary: room for the JSON around a
/// message within one bounded line.
pub fn truncate_message(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut end = max;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_bounded_both_ways_and_leave_what_follows_unread() {
        use futures::AsyncReadExt;
        const T: Duration = Duration::from_secs(1);
        let mut out = futures::io::Cursor::new(Vec::new());
        write_json_line(&mut out, &serde_json::json!({"a": 1}), 16, T)
            .await
            .unwrap();
        assert_eq!(out.get_ref().as_slice(), b"{\"a\":1}\n");
        let long = "x".repeat(20);
        assert!(matches!(
            write_json_line(&mut out, &long, 16, T).await,
            Err(LineError::Oversized { len: 23, max: 16 })
        ));

        // A line, then a body that must stay in the stream.
        let mut input = futures::io::Cursor::new(b"{\"a\":1}\nBODY".to_vec());
        let value: serde_json::Value = read_json_line(&mut input, 16, T).await.unwrap();
        assert_eq!(value["a"], 1);
        let mut rest = String::new();
        input.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "BODY");

        let read = |bytes: &[u8]| {
            let mut input = futures::io::Cursor::new(bytes.to_vec());
            async move { read_json_line::<serde_json::Value, _>(&mut input, 16, T).await }
        };
        assert!(matches!(read(b"").await, Err(LineError::Closed)));
        assert!(matches!(
            read(b"{\"a\"").await,
            Err(LineError::EndedMidLine)
        ));
        assert!(matches!(
            read(&[b'x'; 40]).await,
            Err(LineError::TooLong(16))
        ));
        assert!(matches!(
            read(b"{oops}\n").await,
            Err(LineError::Malformed(_))
        ));
    }

    #[test]
    fn a_peer_is_in_use_while_a_stream_is_open_and_a_while_after() {
        let in_use = InUse::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = in_use.begin(a);
        let second = in_use.begin(a);
        assert_eq!(in_use.open(&a), 2);
        assert_eq!(in_use.open(&b), 0);
        let now = Instant::now();
        assert_eq!(in_use.peers(now), vec![a]);
        drop(first);
        drop(second);
        assert_eq!(in_use.open(&a), 0);
        assert_eq!(in_use.peers(Instant::now()), vec![a], "recently used");
        assert!(
            in_use.peers(Instant::now() + RECENT).is_empty(),
            "forgotten once idle for long"
        );
    }
}
