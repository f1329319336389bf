//! The llama.cpp engine (cargo feature `engine`; without it only [`settings`]): backend start-up, model loading, and
//! serving many requests at once with continuous batching.
//!
//! - [`backend`]: the process-wide llama.cpp backend (initialised once) and the CPU/GPU
//!   features the linked build uses.
//! - [`settings`]: threads, context size, batch size, slots, queue, with the defaults in one
//!   place.
//! - [`model`]: a GGUF model loaded into llama.cpp ([`Model`]).
//! - [`Engine`] (`handle.rs`): the handle request handlers use; it checks and queues
//!   requests (bounded) and hands back a per-request event channel.
//! - `batcher.rs`: the engine thread, which owns the context and the samplers and runs one
//!   `decode` per step over all slots; [`scheduler`] holds its model-free decisions (slot
//!   choice by longest cached prefix, prompt chunking) and [`stop`] the stop-string matcher.
//! - `embedder.rs`: one embeddings input through a mean-pooling context, and the worker
//!   that serves embeddings on threads of their own when the settings give it some.
//! - [`request`]: what goes in and comes out, free of llama.cpp objects.
//! - [`session`]: a one-sequence greedy loop for the `generate` command and smoke tests.
//!
//! llama.cpp contexts, batches and samplers are not `Send`, which is why one thread owns
//! them all. Verifying and downloading model files is `crate::model`, which needs no
//! llama.cpp.

// Only `settings` is built without the `engine` feature: the command line's defaults.
pub mod settings;
pub use settings::{EngineSettings, FlashAttention};

#[cfg(feature = "engine")]
pub mod backend;
#[cfg(feature = "engine")]
mod batcher;
#[cfg(feature = "engine")]
mod embedder;
#[cfg(feature = "engine")]
mod handle;
#[cfg(feature = "engine")]
pub mod model;
#[cfg(feature = "engine")]
pub mod request;
#[cfg(feature = "engine")]
pub(crate) mod sampling;
#[cfg(feature = "engine")]
pub mod scheduler;
#[cfg(feature = "engine")]
pub mod session;
#[cfg(feature = "engine")]
pub mod stop;

#[cfg(feature = "engine")]
pub use handle::{Arriving, Engine, EngineInfo, EngineLoad};
#[cfg(feature = "engine")]
pub use model::Model;
#[cfg(feature = "engine")]
pub use request::{
    FinishReason, GenerationEvent, GenerationRequest, MAX_TOP_LOGPROBS, SamplingParams,
    SubmitError, TestHook, TokenLogprob, TopLogprob, Usage,
};
#[cfg(feature = "engine")]
pub use session::{Generation, GenerationStats, Session};

#[cfg(feature = "engine")]
use std::path::PathBuf;

#[cfg(feature = "engine")]
/// Failures of the engine. llama.cpp reports most failures as a bare null pointer and writes
/// the cause to its log, so messages here say what was attempted and point there.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("llama.cpp backend failed to initialise: {0}")]
    Backend(String),

    #[error("model file {} does not exist", path.display())]
    ModelNotFound { path: PathBuf },

    #[error("llama.cpp could not load model {} ({cause}); its log above says why", path.display())]
    ModelLoad {
        path: PathBuf,
        cause: llama_cpp_2::LlamaModelLoadError,
    },

    #[error(
        "llama.cpp could not create a context of {context_size} tokens ({cause}); \
         try a smaller context size"
    )]
    Context {
        context_size: u32,
        cause: llama_cpp_2::LlamaContextLoadError,
    },

    #[error("the prompt is empty: nothing to generate from")]
    EmptyPrompt,

    #[error(
        "the prompt has {prompt_tokens} tokens but the context holds {context_size}; \
         shorten the prompt or raise the context size"
    )]
    PromptTooLong {
        prompt_tokens: usize,
        context_size: u32,
    },

    #[error("the engine thread failed: {0}")]
    Thread(String),

    #[error("llama.cpp decode failed: {0}")]
    Decode(llama_cpp_2::DecodeError),

    #[error("could not fill the decode batch: {0}")]
    Batch(llama_cpp_2::llama_batch::BatchAddError),
}

// Written out instead of `#[from]`, which would also make the cause the `source()` and
// print it twice in `{:#}` chains: messages here already include their cause.
#[cfg(feature = "engine")]
impl From<llama_cpp_2::DecodeError> for EngineError {
    fn from(err: llama_cpp_2::DecodeError) -> Self {
        EngineError::Decode(err)
    }
}

#[cfg(feature = "engine")]
impl From<llama_cpp_2::llama_batch::BatchAddError> for EngineError {
    fn from(err: llama_cpp_2::llama_batch::BatchAddError) -> Self {
        EngineError::Batch(err)
    }
}
