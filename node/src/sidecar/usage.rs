//! Token counts of an OpenAI answer, read as it passes through the sidecar: its `usage` (a
//! JSON answer's, or a stream's last chunk with `include_usage`), else, for completion
//! tokens, one per streamed event (servers send one token per event).
//!
//! Streams are parsed by `eventsource-stream` as their chunks arrive (an event may be split
//! over any number of chunks, lines may end in CRLF, comments are skipped), each event's data
//! by serde; a JSON answer is parsed once whole.

use std::convert::Infallible;

use axum::body::Bytes;
use eventsource_stream::{EventStream, Eventsource};
use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{FutureExt, StreamExt};
use serde::Deserialize;

/// The largest JSON answer whose `usage` is read; a larger one (many choices with
/// log-probabilities) passes through uncounted rather than held in memory twice.
pub const MAX_JSON_BYTES: usize = 8 << 20;

/// The token counts of one answer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`; 0 when the answer did not say (a stream without
    /// `include_usage`): a proxy cannot count a prompt it never tokenized.
    pub prompt: u64,
    pub completion: u64,
}

/// Reads the counts of one answer, fed its body chunk by chunk.
pub struct TokenCount {
    body: Body,
    /// Events with data other than `[DONE]`.
    events: u64,
    reported: Option<Reported>,
}

enum Body {
    Json(Vec<u8>),
    TooLarge,
    Events {
        feed: UnboundedSender<Result<Bytes, Infallible>>,
        parsed: EventStream<UnboundedReceiver<Result<Bytes, Infallible>>>,
    },
}

/// OpenAI's `usage` object, where an answer carries one.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Reported {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Deserialize)]
struct WithUsage {
    usage: Option<Reported>,
}

impl std::fmt::Debug for TokenCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCount")
            .field("events", &self.events)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

impl TokenCount {
    /// For an answer of server-sent events (`text/event-stream`) or of one JSON object.
    pub fn new(streamed: bool) -> Self {
        let body = if streamed {
            let (feed, chunks) = unbounded();
            Body::Events {
                feed,
                parsed: chunks.eventsource(),
            }
        } else {
            Body::Json(Vec::new())
        };
        TokenCount {
            body,
            events: 0,
            reported: None,
        }
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        match &mut self.body {
            Body::Json(buffer) if buffer.len() + chunk.len() > MAX_JSON_BYTES => {
                self.body = Body::TooLarge;
            }
            Body::Json(buffer) => buffer.extend_from_slice(chunk),
            Body::TooLarge => {}
            Body::Events { feed, .. } => {
                // The receiver lives as long as the sender: this cannot fail.
                let _ = feed.unbounded_send(Ok(chunk.clone()));
                self.take_events();
            }
        }
    }

    /// The counts once the whole answer went past.
    pub fn finish(mut self) -> Usage {
        match &mut self.body {
            Body::Json(buffer) => {
                self.reported = serde_json::from_slice::<WithUsage>(buffer)
                    .ok()
                    .and_then(|answer| answer.usage);
            }
            Body::TooLarge => {}
            Body::Events { feed, .. } => {
                // Events complete at the end are counted; one cut off is dropped.
                feed.close_channel();
                self.take_events();
            }
        }
        match self.reported {
            Some(reported) => Usage {
                prompt: reported.prompt_tokens,
                completion: reported.completion_tokens,
            },
            None => Usage {
                prompt: 0,
                completion: self.events,
            },
        }
    }

    /// Counts the events parsed so far. Every chunk fed is already in the channel, so the
    /// parser never waits: it yields what is complete and then reports pending.
    fn take_events(&mut self) {
        let Body::Events { parsed, .. } = &mut self.body else {
            return;
        };
        while let Some(Some(event)) = parsed.next().now_or_never() {
            let Ok(event) = event else {
                // Not UTF-8 or not SSE: nothing more to read from this answer.
                self.body = Body::TooLarge;
                return;
            };
            let data = event.data.trim();
            if data.is_empty() || data == "[DONE]" {
                continue;
            }
            self.events += 1;
            if let Ok(WithUsage { usage: Some(usage) }) = serde_json::from_str(data) {
                self.reported = Some(usage);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(streamed: bool, chunks: &[&[u8]]) -> Usage {
        let mut count = TokenCount::new(streamed);
        for chunk in chunks {
            count.feed(&Bytes::copy_from_slice(chunk));
        }
        count.finish()
    }

    #[test]
    fn a_json_answers_usage_is_read_even_when_split_between_chunks() {
        let usage = count(
            false,
            &[
                b"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":5,\"completion_tok",
                b"ens\": 17,\"total_tokens\":22}}",
            ],
        );
        assert_eq!(
            usage,
            Usage {
                prompt: 5,
                completion: 17
            }
        );
        // Not JSON, or no usage: nothing is guessed.
        assert_eq!(count(false, &[b"<html>"]), Usage::default());
    }

    #[test]
    fn streams_count_one_token_per_event_without_done() {
        let mut chunks: Vec<&[u8]> =
            vec![b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"; 5];
        chunks.push(b"data: [DONE]\n\n");
        // No usage chunk: the prompt is unknown, not guessed.
        assert_eq!(
            count(true, &chunks),
            Usage {
                prompt: 0,
                completion: 5
            }
        );
    }

    #[test]
    fn a_streams_usage_chunk_gives_both_counts_and_quoted_keys_do_not_confuse_it() {
        let usage = count(
            true,
            &[
                b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": 99}\"}}]}\n\n",
                b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,",
                b"\"prompt_tokens_details\":{\"cached_tokens\":8},\"completion_tokens\":1}}\n\n",
                b"data: [DONE]\n\n",
            ],
        );
        assert_eq!(
            usage,
            Usage {
                prompt: 12,
                completion: 1
            }
        );
    }

    #[test]
    fn events_split_anywhere_with_crlf_and_comments_are_counted_once() {
        let stream = b": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\ndata: {}\r\n\r\ndata: {\"a\":2}\r\n\r\ndata: [DONE]\r\n\r\n";
        // Every split point, including inside `data:` and between CR and LF.
        for at in 0..stream.len() {
            let usage = count(true, &[&stream[..at], &stream[at..]]);
            assert_eq!(usage.completion, 3, "split at {at}");
        }
        // One byte per chunk.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(count(true, &bytes).completion, 3);
        // An event the stream ended in the middle of is dropped, as the SSE spec says.
        assert_eq!(count(true, &[b"data: {}\n\ndata: {}"]).completion, 1);
    }

    #[test]
    fn a_json_answer_over_the_limit_passes_uncounted() {
        let big = vec![b' '; MAX_JSON_BYTES + 1];
        let usage = count(
            false,
            &[
                &big,
                b"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}",
            ],
        );
        assert_eq!(usage, Usage::default());
    }
}
