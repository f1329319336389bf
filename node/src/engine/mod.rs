//! The llama.cpp engine (cargo feature `engine`): backend start-up, model loading and
//! token generation on top of the `llama-cpp-2` crate.
//!
//! - [`backend`]: the process-wide llama.cpp backend (initialised once) and the CPU/GPU
//!   features the linked build uses.
//! - [`settings`]: thread count, context size, GPU offload, with the defaults in one place.
//! - [`model`]: a GGUF model loaded into llama.cpp ([`Model`]).
//! - [`session`]: a context on a loaded model and the decode loop ([`Session::generate`]).
//!
//! llama.cpp contexts, batches and samplers are not `Sync`, so the serving path will give
//! one engine thread the [`Model`] and its context and let request handlers talk to it over
//! channels; a continuous-batching scheduler over several sequence slots grows from
//! [`Session`]. Verifying and downloading model files is `crate::model`, which needs no
//! llama.cpp.

pub mod backend;
pub mod model;
pub mod session;
pub mod settings;

pub use model::Model;
pub use session::{FinishReason, Generation, GenerationStats, Session};
pub use settings::EngineSettings;

use std::path::PathBuf;

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

    #[error("llama.cpp decode failed: {0}")]
    Decode(llama_cpp_2::DecodeError),

    #[error("could not fill the decode batch: {0}")]
    Batch(llama_cpp_2::llama_batch::BatchAddError),
}

// Written out instead of `#[from]`, which would also make the cause the `source()` and
// print it twice in `{:#}` chains: messages here already include their cause.
impl From<llama_cpp_2::DecodeError> for EngineError {
    fn from(err: llama_cpp_2::DecodeError) -> Self {
        EngineError::Decode(err)
    }
}

impl From<llama_cpp_2::llama_batch::BatchAddError> for EngineError {
    fn from(err: llama_cpp_2::llama_batch::BatchAddError) -> Self {
        EngineError::Batch(err)
    }
}
