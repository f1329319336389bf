//! What travels on a [`WEIGHTS_PROTOCOL`] stream: one request line, one answer line, then
//! the bytes the answer announced. One request per stream.
//!
//! Both sides bound everything: lines are at most [`MAX_LINE`] bytes read within
//! [`LINE_TIMEOUT`]; a fetcher reads no more bytes than it asked for (a chunk's length is
//! known from the manifest, a manifest is at most `MAX_MANIFEST_BYTES`) and gives a body
//! [`BODY_TIMEOUT`] to arrive.

use std::time::Duration;

use futures::AsyncReadExt;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use crate::swarm::PeerStream;
use crate::swarm::streams::{self, LineError};

/// Model files between peers.
pub const WEIGHTS_PROTOCOL: StreamProtocol = StreamProtocol::new("/llamanet/weights/1");

/// Longest request or answer line, newline included.
pub const MAX_LINE: usize = 1024;

/// Upper bound of reading or writing one line.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound of one body (a 4 MiB chunk at 70 KB/s, a manifest): a peer slower than that
/// is better replaced.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// "Send me the manifest (no `chunk`) or chunk `chunk` of the file with this SHA-256."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<usize>,
}

/// The answer line: `len` bytes follow, or nothing does and `refused` says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Sending { len: u64 },
    Refused { reason: Refusal, message: String },
}

/// Why a peer sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// It does not share that file (or that chunk does not exist).
    NotFound,
    /// All its upload slots are taken: try another peer, or this one later.
    Busy,
    /// The request was not one valid line.
    Malformed,
    /// Its own copy could not be read.
    Unreadable,
}

impl Answer {
    pub fn refused(reason: Refusal, message: impl Into<String>) -> Answer {
        // Room for the JSON around it within one line.
        let message = crate::swarm::streams::truncate_message(message.into(), MAX_LINE / 2);
        Answer::Refused { reason, message }
    }
}

/// What went wrong talking to a peer; every one makes the fetcher try elsewhere.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("broke the protocol: {0}")]
    Protocol(String),
    #[error("refused ({reason:?}): {message}")]
    Refused { reason: Refusal, message: String },
    /// The stream ended before a line began.
    #[error("the stream ended before an answer")]
    Closed,
    /// The request was not taken: the peer dropped the stream as it arrived, before it sent a
    /// byte back. libp2p-stream drops an inbound stream when its acceptor has not taken the
    /// previous one yet, so this is how a burst of requests looks to some of them.
    #[error("the request was not taken: {0}")]
    Unanswered(Box<WireError>),
}

impl From<LineError> for WireError {
    fn from(err: LineError) -> Self {
        match err {
            LineError::Io(err) => WireError::Io(err),
            LineError::Timeout(after) => WireError::Timeout(after),
            LineError::Closed => WireError::Closed,
            other => WireError::Protocol(other.to_string()),
        }
    }
}

/// Writes one JSON line.
pub async fn write_line(
    stream: &mut PeerStream,
    message: &impl Serialize,
) -> Result<(), WireError> {
    Ok(streams::write_json_line(stream, message, MAX_LINE, LINE_TIMEOUT).await?)
}

/// Reads one line and parses it, leaving the body after it in the stream.
pub async fn read_line<T: for<'de> Deserialize<'de>>(
    stream: &mut PeerStream,
) -> Result<T, WireError> {
    Ok(streams::read_json_line(stream, MAX_LINE, LINE_TIMEOUT).await?)
}

/// Sends `request` to the peer at the other end of `stream` and reads the body it answers
/// with, which must be exactly `expected` bytes long (a chunk) or at most `limit` bytes (a
/// manifest, `expected` None).
pub async fn ask(
    stream: &mut PeerStream,
    request: &Request,
    expected: Option<u64>,
    limit: u64,
) -> Result<Vec<u8>, WireError> {
    write_line(stream, request)
        .await
        .map_err(|err| WireError::Unanswered(Box::new(err)))?;
    let answer = match read_line::<Answer>(stream).await {
        Err(WireError::Closed) => return Err(WireError::Unanswered(Box::new(WireError::Closed))),
        other => other?,
    };
    let len = match answer {
        Answer::Sending { len } => len,
        Answer::Refused { reason, message } => return Err(WireError::Refused { reason, message }),
    };
    match expected {
        Some(expected) if len != expected => {
            return Err(WireError::Protocol(format!(
                "announced {len} bytes where the chunk has {expected}"
            )));
        }
        None if len > limit => {
            return Err(WireError::Protocol(format!(
                "announced {len} bytes, more than the {limit} allowed"
            )));
        }
        _ => {}
    }
    let mut body = vec![0u8; len as usize];
    tokio::time::timeout(BODY_TIMEOUT, stream.read_exact(&mut body))
        .await
        .map_err(|_| WireError::Timeout(BODY_TIMEOUT))?
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::UnexpectedEof => {
                WireError::Protocol(format!("the stream ended before {len} bytes"))
            }
            _ => WireError::Io(err),
        })?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_have_a_stable_shape() {
        let manifest = Request {
            sha256: "ab".into(),
            chunk: None,
        };
        assert_eq!(
            serde_json::to_string(&manifest).unwrap(),
            r#"{"sha256":"ab"}"#
        );
        assert_eq!(
            serde_json::to_string(&Answer::Sending { len: 7 }).unwrap(),
            r#"{"sending":{"len":7}}"#
        );
        let busy = Answer::refused(Refusal::Busy, "é".repeat(2000));
        let line = serde_json::to_vec(&busy).unwrap();
        assert!(line.len() < MAX_LINE, "{}", line.len());
        assert!(line.starts_with(br#"{"refused":{"reason":"busy""#));
    }
}
