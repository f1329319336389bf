//! Continuing a stream on another node when its node dies mid-answer.
//!
//! A node that serves a streamed request for a forwarder (never for a client) interleaves
//! its SSE answer with `event: llamanet` annotations ([`Annotation`]): first the seed, the
//! model's fingerprint and the response's id, then before each content chunk the token ids
//! whose text that chunk completes. The forwarder strips them ([`StreamProgress`]) and so
//! always knows exactly which tokens the client has seen as text. When the stream breaks,
//! it sends the same request to the next candidate with a [`Resume`]: the serving node puts
//! those tokens after the prompt (prefilled, never re-emitted), replays them through its
//! stop-string matcher and sampler state, and carries on at the next position with the
//! same id and seed. At temperature 0 the continuation is the text the dead node would have
//! written; with a seed, each position draws from its own seeded generator, so sampling
//! stays reproducible across the hand-over too.
//!
//! Token ids only mean the same text under the same model file, hence the fingerprint: a
//! stream continues only on a node that announces the same one. Requests with several
//! choices are not annotated and end with an error event when their node dies.
//!
//! Not here: choosing the next node and relaying bytes (`relay.rs`); generating (the engine).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde::{Deserialize, Serialize};

/// Asks the serving node to annotate its stream (set by forwarders only; the public
/// listener strips it from client requests).
pub const ANNOTATE_HEADER: &str = "x-llamanet-annotate";

/// Carries a [`Resume`] (JSON) to the node that continues a stream (forwarders only, like
/// [`ANNOTATE_HEADER`]).
pub const RESUME_HEADER: &str = "x-llamanet-resume";

/// The SSE event name of annotations.
pub const ANNOTATION_EVENT: &str = "llamanet";

/// Most tokens a resume may carry: well above any context this engine serves, and small
/// enough for one header (4 bytes a token, base64).
pub const MAX_RESUME_TOKENS: usize = 65_536;

/// Headers only nodes may set: stripped from what clients send.
pub const INTERNAL_HEADERS: [&str; 2] = [ANNOTATE_HEADER, RESUME_HEADER];

/// One `event: llamanet` annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Annotation {
    /// Sent first: what a continuation must reuse.
    Start {
        id: String,
        created: u64,
        /// The seed of sampled requests; absent for greedy ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seed: Option<u32>,
        /// The serving model's fingerprint (`ModelInfo::fingerprint`).
        fingerprint: String,
    },
    /// The token ids whose text the next content chunk completes.
    Tokens { t: Vec<i32> },
}

impl Annotation {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("annotations always serialize")
    }
}

/// What a node needs to continue a stream another node began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub id: String,
    pub created: u64,
    pub seed: Option<u32>,
    pub fingerprint: String,
    /// Generated tokens the client has already received as text, in order.
    pub tokens: Vec<i32>,
}

/// The header's wire form: tokens as little-endian i32s in base64, the rest as is.
#[derive(Serialize, Deserialize)]
struct ResumeWire {
    id: String,
    created: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<u32>,
    fingerprint: String,
    tokens: String,
}

/// Why a resume header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("the resume header is not valid: {0}")]
    Malformed(String),
    #[error("the resume header carries {0} tokens; at most {MAX_RESUME_TOKENS}")]
    TooLong(usize),
}

impl Resume {
    pub fn to_header(&self) -> String {
        let bytes: Vec<u8> = self.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        let wire = ResumeWire {
            id: self.id.clone(),
            created: self.created,
            seed: self.seed,
            fingerprint: self.fingerprint.clone(),
            tokens: STANDARD_NO_PAD.encode(bytes),
        };
        serde_json::to_string(&wire).expect("resumes always serialize")
    }

    pub fn from_header(value: &str) -> Result<Self, ResumeError> {
        let wire: ResumeWire =
            serde_json::from_str(value).map_err(|err| ResumeError::Malformed(err.to_string()))?;
        let bytes = STANDARD_NO_PAD
            .decode(wire.tokens.as_bytes())
            .map_err(|err| ResumeError::Malformed(format!("tokens: {err}")))?;
        if bytes.len() % 4 != 0 {
            return Err(ResumeError::Malformed(
                "tokens: not a whole number of 4-byte ids".into(),
            ));
        }
        let count = bytes.len() / 4;
        if count > MAX_RESUME_TOKENS {
            return Err(ResumeError::TooLong(count));
        }
        let tokens = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(Resume {
            id: wire.id,
            created: wire.created,
            seed: wire.seed,
            fingerprint: wire.fingerprint,
            tokens,
        })
    }
}

/// What a forwarder learns from an annotated stream as it relays it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamProgress {
    start: Option<(String, u64, Option<u32>, String)>,
    tokens: Vec<i32>,
    /// Tokens announced for the next content chunk, not yet delivered.
    pending: Vec<i32>,
    /// A chunk with a `finish_reason` passed: generation is over, only usage and `[DONE]`
    /// may follow.
    finished: bool,
    /// `data: [DONE]` passed.
    done: bool,
}

/// What to do with one SSE event of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relay {
    /// Send this data line on to the client.
    Forward(String),
    /// An annotation: keep it to ourselves.
    Keep,
}

impl StreamProgress {
    /// Takes one event (`event` is its name, empty for plain data events).
    pub fn on_event(&mut self, event: &str, data: &str) -> Relay {
        if event == ANNOTATION_EVENT {
            match serde_json::from_str::<Annotation>(data) {
                Ok(Annotation::Start {
                    id,
                    created,
                    seed,
                    fingerprint,
                }) => self.start = Some((id, created, seed, fingerprint)),
                Ok(Annotation::Tokens { t }) => self.pending.extend(t),
                // An annotation we cannot read makes the stream unresumable, nothing worse.
                Err(_) => self.start = None,
            }
            return Relay::Keep;
        }
        if data == "[DONE]" {
            self.done = true;
        } else {
            // The announced tokens are the client's once this chunk goes out.
            self.tokens.append(&mut self.pending);
            if !self.finished && has_finish_reason(data) {
                self.finished = true;
            }
        }
        Relay::Forward(data.to_string())
    }

    /// Whether the upstream sent `[DONE]`.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Whether generation finished (a `finish_reason` went out).
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// Tokens the client has received as text.
    pub fn tokens(&self) -> &[i32] {
        &self.tokens
    }

    /// The fingerprint a continuing node must have; `None` for an unannotated stream.
    pub fn fingerprint(&self) -> Option<&str> {
        self.start.as_ref().map(|(_, _, _, f)| f.as_str())
    }

    /// What the next node needs, or `None` when the stream cannot be continued (it was
    /// not annotated, or it is already over).
    pub fn resume(&self) -> Option<Resume> {
        if self.finished || self.done {
            return None;
        }
        let (id, created, seed, fingerprint) = self.start.clone()?;
        Some(Resume {
            id,
            created,
            seed,
            fingerprint,
            tokens: self.tokens.clone(),
        })
    }
}

/// Whether a chunk's JSON has a non-null `finish_reason` in some choice.
fn has_finish_reason(data: &str) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        #[serde(default)]
        choices: Vec<Choice>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        finish_reason: Option<String>,
    }
    serde_json::from_str::<Chunk>(data)
        .map(|chunk| chunk.choices.iter().any(|c| c.finish_reason.is_some()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> String {
        Annotation::Start {
            id: "chatcmpl-1".into(),
            created: 7,
            seed: Some(42),
            fingerprint: "f00d".into(),
        }
        .to_json()
    }

    fn tokens(t: &[i32]) -> String {
        Annotation::Tokens { t: t.to_vec() }.to_json()
    }

    const CONTENT: &str =
        r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
    const FINISH: &str = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;

    #[test]
    fn resume_headers_round_trip_and_bad_ones_are_named() {
        let resume = Resume {
            id: "cmpl-9".into(),
            created: 1_700_000_000,
            seed: None,
            fingerprint: "abc".into(),
            tokens: vec![0, 1, 262_143, -1],
        };
        let header = resume.to_header();
        assert!(header.is_ascii());
        assert_eq!(Resume::from_header(&header).unwrap(), resume);
        assert!(matches!(
            Resume::from_header("{"),
            Err(ResumeError::Malformed(_))
        ));
        let odd = r#"{"id":"x","created":1,"fingerprint":"f","tokens":"AAE"}"#;
        let err = Resume::from_header(odd).unwrap_err();
        assert!(err.to_string().contains("4-byte"), "{err}");
        let many = Resume {
            tokens: vec![1; MAX_RESUME_TOKENS + 1],
            ..resume
        };
        assert_eq!(
            Resume::from_header(&many.to_header()),
            Err(ResumeError::TooLong(MAX_RESUME_TOKENS + 1))
        );
    }

    #[test]
    fn annotations_are_kept_and_tokens_count_once_their_chunk_is_sent() {
        let mut progress = StreamProgress::default();
        assert_eq!(progress.on_event(ANNOTATION_EVENT, &start()), Relay::Keep);
        assert_eq!(
            progress.on_event(ANNOTATION_EVENT, &tokens(&[5, 6])),
            Relay::Keep
        );
        // Announced but not yet delivered: a break now resumes without them.
        assert_eq!(progress.resume().unwrap().tokens, Vec::<i32>::new());
        assert_eq!(
            progress.on_event("", CONTENT),
            Relay::Forward(CONTENT.into())
        );
        progress.on_event(ANNOTATION_EVENT, &tokens(&[7]));
        progress.on_event("", CONTENT);
        let resume = progress.resume().unwrap();
        assert_eq!(resume.tokens, vec![5, 6, 7]);
        assert_eq!(
            (resume.id.as_str(), resume.created, resume.seed),
            ("chatcmpl-1", 7, Some(42))
        );
        assert_eq!(progress.fingerprint(), Some("f00d"));
    }

    #[test]
    fn finished_or_unannotated_streams_cannot_resume() {
        let mut plain = StreamProgress::default();
        plain.on_event("", CONTENT);
        assert_eq!(
            plain.resume(),
            None,
            "no annotations: nothing to resume with"
        );

        let mut over = StreamProgress::default();
        over.on_event(ANNOTATION_EVENT, &start());
        over.on_event("", FINISH);
        assert!(over.finished() && !over.done());
        assert_eq!(over.resume(), None, "generation is over");
        over.on_event("", "[DONE]");
        assert!(over.done());

        let mut garbled = StreamProgress::default();
        garbled.on_event(ANNOTATION_EVENT, &start());
        garbled.on_event(ANNOTATION_EVENT, "not json");
        assert_eq!(garbled.resume(), None);
    }
}
