//! What a caller hands the engine (a tokenized prompt, limits, sampling settings) and what
//! comes back on the request's own channel (text pieces, then one final summary).
//!
//! These types carry no llama.cpp objects apart from token ids, so the API layer builds
//! and reads them on any thread; samplers are built from [`SamplingParams`] on the engine
//! thread, which owns everything llama.cpp.

use std::time::Duration;

use llama_cpp_2::token::LlamaToken;
use tokio::sync::mpsc;

/// How the next token is chosen. Defaults follow the OpenAI API.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token every time (greedy).
    pub temperature: f32,
    /// Nucleus sampling; 1 disables it.
    pub top_p: f32,
    /// Only the `top_k` most likely tokens; 0 disables it.
    pub top_k: i32,
    /// Tokens below `min_p` times the best token's probability are dropped; 0 disables it.
    pub min_p: f32,
    /// Seed of the random choices; `None` picks a fresh one per request. Each position of
    /// the answer draws from its own generator seeded from this and the position, so a
    /// continuation on another node draws what this node would have.
    pub seed: Option<u32>,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Added to the logits of the given token ids.
    pub logit_bias: Vec<(LlamaToken, f32)>,
    /// A GBNF grammar (root rule `root`) the output must follow.
    pub grammar: Option<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            grammar: None,
        }
    }
}

/// One generation to run.
#[derive(Debug, Clone, Default)]
pub struct GenerationRequest {
    /// The prompt, already tokenized (with BOS where the model wants it).
    pub prompt: Vec<LlamaToken>,
    /// Most tokens to generate; `None` means until the slot's context is full.
    pub max_tokens: Option<usize>,
    /// Strings that end generation; they and what follows are not returned.
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    /// Tokens already generated (and delivered) by another node: evaluated after the
    /// prompt, never sent again, and counted as generated. Empty for a fresh request.
    pub resume: Vec<LlamaToken>,
    /// Report each generated token's log-probability and this many of the most likely
    /// alternatives at its position (`None`: no log-probabilities).
    pub logprobs: Option<usize>,
}

/// Most alternatives per token [`GenerationRequest::logprobs`] may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A token's log-probability under the model (the softmax of its raw logits, before any
/// sampling setting changes them), with the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: LlamaToken,
    /// The token's text as bytes (special tokens spelled out); one token can be part of a
    /// multi-byte character.
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<TopLogprob>,
}

/// One alternative of a [`TokenLogprob`].
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token: LlamaToken,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// Why a generation ended (the OpenAI `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token or a stop string.
    Stop,
    /// `max_tokens` reached, or the slot's context is full.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts and timings of a finished generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were reused from the slot's earlier request.
    pub cached_tokens: usize,
    /// The prompt was not evaluated for this choice: its KV entries were copied from the
    /// first choice of the same request (`n` > 1), so usage counts the prompt once.
    pub shared_prompt: bool,
    /// Sampled tokens, including those that formed a stop string; an end-of-generation
    /// token is not counted.
    pub completion_tokens: usize,
    /// From admission to a slot until the first sampled token.
    pub time_to_first_token: Duration,
    /// Time spent waiting for a slot.
    pub queued: Duration,
}

/// What the engine sends back for one request, in order: any number of `Text`, then
/// exactly one `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// Output text (complete UTF-8, stop-string candidates held back) and the tokens
    /// sampled since the previous `Text`, whose text this completes.
    Text {
        text: String,
        tokens: Vec<LlamaToken>,
        /// One per token of `tokens` when the request asked for log-probabilities.
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish_reason: FinishReason,
        usage: Usage,
    },
    /// The request could not be served; the message says why.
    Failed(String),
}

/// Why a request was not accepted. Checked before it is queued, so the client gets a
/// clear answer at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the prompt is empty: nothing to generate from")]
    EmptyPrompt,
    #[error(
        "this model's context per request is {slot_context} tokens, but the prompt has \
         {prompt_tokens} tokens and max_tokens asks for {max_tokens} more; shorten the prompt \
         or lower max_tokens"
    )]
    ContextExceeded {
        prompt_tokens: usize,
        max_tokens: usize,
        slot_context: usize,
    },
    #[error(
        "this model's context per request is {slot_context} tokens, but the prompt has \
         {prompt_tokens} tokens, which leaves no room to generate; shorten the prompt"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        slot_context: usize,
    },
    #[error("token id {0} in logit_bias is not in the model's vocabulary")]
    UnknownToken(i32),
    #[error("the server is busy: all {slots} slots are in use and {queue} requests are waiting")]
    QueueFull { slots: usize, queue: usize },
    #[error("the engine has stopped")]
    Stopped,
    #[error("token id {0} to resume from is not in the model's vocabulary")]
    UnknownResumeToken(i32),
    #[error("{resumed} tokens to resume from are more than this request may generate ({room})")]
    ResumeTooLong { resumed: usize, room: usize },
    #[error(
        "{choices} choices need {choices} slots at once, and this node has {slots}; ask for \
         at most {slots}"
    )]
    TooManyChoices { choices: usize, slots: usize },
    #[error("at most {MAX_TOP_LOGPROBS} alternatives per token can be asked for, got {0}")]
    TooManyLogprobs(usize),
    #[error("a resumed request has one choice; it cannot ask for {0}")]
    ResumedChoices(usize),
    /// The grammar (from a JSON schema or a tool's parameters) does not compile.
    #[error("{0}")]
    Grammar(String),
}

/// A request on its way to the engine thread with the channels its answers go to: one
/// per choice, all generated from one evaluation of the prompt.
#[derive(Debug)]
pub(crate) struct Job {
    pub request: GenerationRequest,
    pub choices: Vec<Choice>,
    /// One per choice, built by the submitting thread (a grammar's compilation included),
    /// so the engine thread never spends a step on it.
    pub samplers: Vec<super::sampling::Sampler>,
    pub submitted: std::time::Instant,
}

/// Where one choice of a [`Job`] goes.
#[derive(Debug)]
pub(crate) struct Choice {
    pub events: mpsc::UnboundedSender<GenerationEvent>,
    /// One of the `slots + queue` places; dropped (freeing the place) when the choice
    /// ends, however it ends.
    pub place: tokio::sync::OwnedSemaphorePermit,
}

/// An embeddings request: texts in, one vector each out.
#[derive(Debug)]
pub(crate) struct EmbeddingJob {
    pub inputs: Vec<Vec<LlamaToken>>,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Work for the engine thread.
#[derive(Debug)]
pub(crate) enum Work {
    Generate(Box<Job>),
    Embed(EmbeddingJob),
    Hook(TestHook),
}

/// Failures a test can inject into the engine thread (`llamanet serve --test-hooks`), to
/// check that health tells the truth when the engine dies or hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestHook {
    /// The thread panics, as on a crash in llama.cpp's bindings.
    Crash,
    /// The thread blocks for this long, as in a hung decode.
    Hang(std::time::Duration),
}
