//! Carrying an answer's body back to the client once its first byte has arrived.
//!
//! - [`plain`]: chunk by chunk, as it comes. A body that breaks (or stalls) ends with one
//!   SSE `data: {"error":...}` event if it is a stream, or an aborted body otherwise, so the
//!   client never waits forever and never takes a short answer for a whole one. The
//!   sidecar's proxy to its engine uses it too.
//! - [`resumable`]: an annotated stream from a peer (see `resume.rs`), parsed event by
//!   event. Annotations stay here; OpenAI chunks go on as `data:` lines. When the stream
//!   breaks before its end, a [`Continuer`] gets the [`Resume`] and tries to start the rest
//!   on another node; the client sees one unbroken stream. Only when nobody can continue
//!   does it end with the error event.
//!
//! Not here: choosing the node that continues (`failover.rs`).

use std::io;
use std::time::Duration;

use axum::body::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::future::BoxFuture;
use futures::stream::{self, BoxStream, Stream, StreamExt};
use tracing::warn;

use crate::swarm::error_text;

use super::resume::{Relay, Resume, StreamProgress};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body as relays read it.
pub type BoxBody = BoxStream<'static, Result<Bytes, BoxError>>;

/// Longest SSE line a relayed stream may carry; a peer sending more is treated as broken.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Counts what happens to relayed bodies (the route metrics).
pub trait RelayEvents: Send + Sync + 'static {
    /// A body broke after its first byte and was ended with an error.
    fn broken(&self);
    /// A broken stream was continued on another node.
    fn continued(&self);
}

/// The rest of an answer continued elsewhere: its body (annotated) and who writes it.
pub struct Continued {
    pub body: BoxBody,
    pub from: String,
}

/// Starts the rest of a broken stream somewhere else, given the resume point and why the
/// stream broke; `None` when nobody can.
pub type Continuer = Box<dyn FnMut(Resume, String) -> BoxFuture<'static, Option<Continued>> + Send>;

/// Relays `body` chunk by chunk (see the module docs). `from` names the writer in errors.
pub fn plain(
    body: BoxBody,
    sse: bool,
    stall: Duration,
    from: String,
    events: std::sync::Arc<dyn RelayEvents>,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    struct State {
        body: BoxBody,
        sse: bool,
        /// Whether what was sent so far ends at an event boundary (`\n\n`).
        ends_event: bool,
        done: bool,
    }
    let state = State {
        body,
        sse,
        ends_event: true,
        done: false,
    };
    stream::unfold(state, move |mut state| {
        let from = from.clone();
        let events = events.clone();
        async move {
            if state.done {
                return None;
            }
            let reason = match tokio::time::timeout(stall, state.body.next()).await {
                Ok(Some(Ok(chunk))) => {
                    if !chunk.is_empty() {
                        state.ends_event = ends_event(&chunk);
                    }
                    return Some((Ok(chunk), state));
                }
                Ok(None) => return None,
                Ok(Some(Err(err))) => error_text::chain(err.as_ref()),
                Err(_) => format!("no data for {stall:?}"),
            };
            state.done = true;
            events.broken();
            warn!(%from, %reason, "relayed answer broke");
            let message = format!("the serving node {from} failed mid-stream: {reason}");
            if state.sse {
                Some((Ok(error_event(&message, !state.ends_event)), state))
            } else {
                // A plain body cannot carry an error after its start: abort the connection
                // so the client sees a truncated answer rather than a short "complete" one.
                Some((Err(io::Error::other(message)), state))
            }
        }
    })
}

/// Relays an annotated SSE stream, continuing it elsewhere when it breaks (see the module
/// docs).
pub fn resumable(
    body: BoxBody,
    from: String,
    stall: Duration,
    events: std::sync::Arc<dyn RelayEvents>,
    continuer: Continuer,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
    struct State {
        upstream: BoxStream<'static, Result<(String, String), Broken>>,
        from: String,
        progress: StreamProgress,
        continuer: Continuer,
        over: bool,
    }
    let state = State {
        upstream: parsed(body),
        from,
        progress: StreamProgress::default(),
        continuer,
        over: false,
    };
    stream::unfold(state, move |mut state| {
        let events = events.clone();
        async move {
            if state.over {
                return None;
            }
            loop {
                let reason = match tokio::time::timeout(stall, state.upstream.next()).await {
                    Ok(Some(Ok((event, data)))) => match state.progress.on_event(&event, &data) {
                        Relay::Keep => continue,
                        Relay::Forward(data) => {
                            if state.progress.done() {
                                state.over = true;
                            }
                            return Some((Ok(Bytes::from(format!("data: {data}\n\n"))), state));
                        }
                    },
                    Ok(None) if state.progress.done() => return None,
                    Ok(None) => "the stream ended before [DONE]".to_string(),
                    Ok(Some(Err(broken))) => broken.to_string(),
                    Err(_) => format!("no data for {stall:?}"),
                };
                warn!(from = %state.from, %reason, "relayed stream broke");
                if state.progress.finished() {
                    // Only the usage chunk could be missing; the answer itself is whole.
                    state.over = true;
                    return Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), state));
                }
                if let Some(resume) = state.progress.resume()
                    && let Some(next) = (state.continuer)(resume, reason.clone()).await
                {
                    events.continued();
                    tracing::info!(from = %state.from, to = %next.from, "stream continued on another node");
                    state.upstream = parsed(next.body);
                    state.from = next.from;
                    continue;
                }
                state.over = true;
                events.broken();
                let message = format!(
                    "the serving node {} failed mid-stream and no other node could continue: {reason}",
                    state.from
                );
                return Some((Ok(error_event(&message, false)), state));
            }
        }
    })
}

/// Why a relayed event stream broke.
#[derive(Debug, thiserror::Error)]
enum Broken {
    #[error("{0}")]
    Transport(String),
    #[error("an SSE line over {MAX_EVENT_BYTES} bytes")]
    LineTooLong,
    #[error("{0}")]
    Malformed(String),
}

/// A body as SSE `(event, data)` pairs, or why it broke (transport, over-long lines,
/// not UTF-8).
fn parsed(body: BoxBody) -> BoxStream<'static, Result<(String, String), Broken>> {
    let mut line = 0usize;
    let guarded = body.map(move |chunk| {
        let chunk = chunk.map_err(|err| Broken::Transport(error_text::chain(err.as_ref())))?;
        for &byte in chunk.iter() {
            line = if byte == b'\n' { 0 } else { line + 1 };
            if line > MAX_EVENT_BYTES {
                return Err(Broken::LineTooLong);
            }
        }
        Ok(chunk)
    });
    guarded
        .eventsource()
        .map(|event| {
            event.map(|e| (e.event, e.data)).map_err(|err| match err {
                EventStreamError::Transport(broken) => broken,
                other => Broken::Malformed(other.to_string()),
            })
        })
        .boxed()
}

/// Whether a chunk ends an SSE event.
pub fn ends_event(chunk: &[u8]) -> bool {
    chunk.ends_with(b"\n\n") || chunk.ends_with(b"\r\n\r\n")
}

/// The SSE event that ends a broken stream: an OpenAI error object, which the OpenAI
/// clients raise as an error. `terminate` first closes a half-sent event.
pub fn error_event(message: &str, terminate: bool) -> Bytes {
    let error = serde_json::json!({
        "error": {
            "message": message,
            "type": "api_error",
            "param": null,
            "code": "peer_stream_broken",
        }
    });
    let prefix = if terminate { "\n\n" } else { "" };
    Bytes::from(format!("{prefix}data: {error}\n\n"))
}

/// An HTTP client error as one line, starting with what kind of failure it was ("connect
/// failed: ... Connection refused").
pub fn describe_http(err: &reqwest::Error) -> String {
    let kind = if err.is_connect() {
        "connect failed: "
    } else if err.is_timeout() {
        "timed out: "
    } else {
        ""
    };
    format!("{kind}{}", error_text::chain(err))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::route::resume::{ANNOTATION_EVENT, Annotation};

    #[derive(Default)]
    struct Counts {
        broken: AtomicUsize,
        continued: AtomicUsize,
    }

    impl RelayEvents for Counts {
        fn broken(&self) {
            self.broken.fetch_add(1, Ordering::Relaxed);
        }
        fn continued(&self) {
            self.continued.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn body(chunks: Vec<Result<&'static str, &'static str>>) -> BoxBody {
        stream::iter(chunks.into_iter().map(|c| {
            c.map(|text| Bytes::from_static(text.as_bytes()))
                .map_err(|e| -> BoxError { e.to_string().into() })
        }))
        .boxed()
    }

    fn annotation(a: Annotation) -> String {
        format!("event: {ANNOTATION_EVENT}\ndata: {}\n\n", a.to_json())
    }

    fn content(text: &str) -> String {
        format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{text}\"}},\"finish_reason\":null}}]}}\n\n"
        )
    }

    async fn collect(s: impl Stream<Item = Result<Bytes, io::Error>>) -> (String, bool) {
        let parts: Vec<Result<Bytes, io::Error>> = s.collect().await;
        let failed = parts.iter().any(|p| p.is_err());
        let text = parts
            .into_iter()
            .filter_map(Result::ok)
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
            .collect();
        (text, failed)
    }

    #[test]
    fn error_event_closes_a_half_sent_event_first() {
        let whole = error_event("boom", false);
        assert!(whole.starts_with(b"data: {") && whole.ends_with(b"\n\n"));
        assert!(error_event("boom", true).starts_with(b"\n\ndata: "));
        let json: serde_json::Value =
            serde_json::from_slice(&whole[b"data: ".len()..whole.len() - 2]).unwrap();
        assert_eq!(json["error"]["code"], "peer_stream_broken");
        assert!(ends_event(b"data: x\n\n") && !ends_event(b"data: x"));
    }

    #[tokio::test]
    async fn a_plain_stream_that_breaks_ends_with_one_error_event() {
        let counts = Arc::new(Counts::default());
        let relay = plain(
            body(vec![Ok("data: 1\n\ndata: half"), Err("connection reset")]),
            true,
            Duration::from_secs(1),
            "peer-a".into(),
            counts.clone(),
        );
        let (text, failed) = collect(relay).await;
        assert!(!failed);
        assert!(
            text.starts_with("data: 1\n\ndata: half\n\ndata: {\"error\""),
            "{text}"
        );
        assert!(text.contains("connection reset") && text.contains("peer-a"));
        assert_eq!(counts.broken.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_plain_json_body_that_breaks_is_aborted() {
        let relay = plain(
            body(vec![Ok("{\"par"), Err("reset")]),
            false,
            Duration::from_secs(1),
            "peer".into(),
            Arc::new(Counts::default()),
        );
        let (text, failed) = collect(relay).await;
        assert_eq!(text, "{\"par");
        assert!(
            failed,
            "the client must see a truncated body, not a short whole one"
        );
    }

    #[tokio::test]
    async fn a_broken_annotated_stream_continues_from_what_the_client_saw() {
        let start = annotation(Annotation::Start {
            id: "chatcmpl-1".into(),
            created: 1,
            seed: None,
            fingerprint: "fp".into(),
        });
        let first = format!(
            "{start}{}{}{}",
            annotation(Annotation::Tokens { t: vec![10, 11] }),
            content("Hel"),
            annotation(Annotation::Tokens { t: vec![12] }),
        );
        let first: &'static str = Box::leak(first.into_boxed_str());
        let rest = format!(
            "{}{}data: [DONE]\n\n",
            annotation(Annotation::Tokens { t: vec![12] }),
            content("lo"),
        );
        let rest: &'static str = Box::leak(rest.into_boxed_str());
        let counts = Arc::new(Counts::default());
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = asked.clone();
        let continuer: Continuer = Box::new(move |resume, reason| {
            seen.lock().unwrap().push((resume, reason));
            Box::pin(async move {
                Some(Continued {
                    body: body(vec![Ok(rest)]),
                    from: "peer-b".into(),
                })
            })
        });
        let relay = resumable(
            body(vec![Ok(first), Err("reset by peer")]),
            "peer-a".into(),
            Duration::from_secs(1),
            counts.clone(),
            continuer,
        );
        let (text, failed) = collect(relay).await;
        assert!(!failed);
        assert_eq!(
            text,
            format!("{}{}data: [DONE]\n\n", content("Hel"), content("lo"))
        );
        let asked = asked.lock().unwrap();
        assert_eq!(asked.len(), 1);
        // Token 12 was announced but its chunk never came: the next node makes it again.
        assert_eq!(asked[0].0.tokens, vec![10, 11]);
        assert_eq!(asked[0].0.fingerprint, "fp");
        assert!(asked[0].1.contains("reset by peer"), "{}", asked[0].1);
        assert_eq!(counts.continued.load(Ordering::Relaxed), 1);
        assert_eq!(counts.broken.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn when_nobody_can_continue_the_stream_ends_with_the_error_event() {
        let start = annotation(Annotation::Start {
            id: "c".into(),
            created: 1,
            seed: Some(3),
            fingerprint: "fp".into(),
        });
        let first: &'static str = Box::leak(format!("{start}{}", content("a")).into_boxed_str());
        let counts = Arc::new(Counts::default());
        let relay = resumable(
            body(vec![Ok(first)]),
            "peer-a".into(),
            Duration::from_secs(1),
            counts.clone(),
            Box::new(|_, _| Box::pin(async { None })),
        );
        let (text, _) = collect(relay).await;
        assert!(text.starts_with(&content("a")), "{text}");
        assert!(text.contains("peer_stream_broken") && text.contains("ended before [DONE]"));
        assert_eq!(counts.broken.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_stream_that_breaks_after_its_finish_chunk_just_ends() {
        let finish =
            "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";
        let relay = resumable(
            body(vec![Ok(finish), Err("reset")]),
            "peer".into(),
            Duration::from_secs(1),
            Arc::new(Counts::default()),
            Box::new(|_, _| Box::pin(async { None })),
        );
        let (text, _) = collect(relay).await;
        assert_eq!(text, format!("{finish}data: [DONE]\n\n"));
    }

    #[tokio::test]
    async fn a_stall_breaks_the_stream_and_overlong_lines_are_refused() {
        let relay = resumable(
            stream::pending().boxed(),
            "peer".into(),
            Duration::from_millis(50),
            Arc::new(Counts::default()),
            Box::new(|_, _| Box::pin(async { None })),
        );
        let (text, _) = collect(relay).await;
        assert!(text.contains("no data for"), "{text}");

        let long: &'static str = Box::leak("x".repeat(MAX_EVENT_BYTES + 1).into_boxed_str());
        let relay = resumable(
            body(vec![Ok("data: "), Ok(long)]),
            "peer".into(),
            Duration::from_secs(1),
            Arc::new(Counts::default()),
            Box::new(|_, _| Box::pin(async { None })),
        );
        let (text, _) = collect(relay).await;
        assert!(text.contains("SSE line over"), "{text}");
    }
}
