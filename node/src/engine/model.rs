//! A GGUF model loaded into llama.cpp, with the settings it runs under.
//!
//! Loading only maps the weights; the KV cache and compute buffers belong to a context,
//! created per [`Session`]. Checking the file's checksum beforehand is `crate::model`'s job.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use super::EngineError;
use super::backend::backend;
use super::session::Session;
use super::settings::{EngineSettings, FlashAttention};

/// A loaded model. `Sync`: sessions on several threads may share it, each with its own
/// context.
#[derive(Debug)]
pub struct Model {
    inner: LlamaModel,
    path: PathBuf,
    threads: NonZeroU32,
    context_size: NonZeroU32,
    batch_size: NonZeroU32,
    parallel: NonZeroU32,
    flash_attention: FlashAttention,
}

impl Model {
    /// Loads the GGUF file at `path`, initialising the llama.cpp backend on first use.
    pub fn load(path: &Path, settings: &EngineSettings) -> Result<Model, EngineError> {
        // llama.cpp answers a missing file with a null pointer; say what is wrong instead.
        if !path.is_file() {
            return Err(EngineError::ModelNotFound {
                path: path.to_path_buf(),
            });
        }
        let backend = backend()?;
        let gpu_layers = settings
            .gpu_layers
            .unwrap_or(if backend.supports_gpu_offload() {
                // More layers than any model has: llama.cpp offloads all of them.
                u32::MAX
            } else {
                0
            });
        let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers);

        let started = Instant::now();
        let inner = LlamaModel::load_from_file(backend, path, &params).map_err(|cause| {
            EngineError::ModelLoad {
                path: path.to_path_buf(),
                cause,
            }
        })?;

        // A sequence beyond the trained length only produces garbage, so cap each slot's
        // share of the context there.
        let trained = inner.n_ctx_train().saturating_mul(settings.parallel.get());
        let context_size = match NonZeroU32::new(trained) {
            Some(trained) if trained < settings.context_size => {
                tracing::warn!(
                    requested = settings.context_size.get(),
                    trained = trained.get(),
                    "context size capped at the model's training length"
                );
                trained
            }
            _ => settings.context_size,
        };
        let threads = settings.resolved_threads();
        let model = Model {
            inner,
            path: path.to_path_buf(),
            threads,
            context_size,
            batch_size: settings.batch_size.min(context_size),
            parallel: settings.parallel,
            flash_attention: settings.flash_attention,
        };
        tracing::info!(
            path = %path.display(),
            description = %model.description(),
            parameters = model.inner.n_params(),
            bytes = model.inner.size(),
            threads = threads.get(),
            context_size = context_size.get(),
            gpu_layers = gpu_layers.min(model.inner.n_layer()),
            load_ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        Ok(model)
    }

    /// What every context of this model shares: threads and the flash attention policy.
    fn context_params(&self) -> LlamaContextParams {
        let threads = i32::try_from(self.threads.get()).unwrap_or(i32::MAX);
        let flash_attention = match self.flash_attention {
            FlashAttention::Auto => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            FlashAttention::On => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            FlashAttention::Off => llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        };
        LlamaContextParams::default()
            .with_n_threads(threads)
            .with_n_threads_batch(threads)
            .with_flash_attention_policy(flash_attention)
    }

    /// Creates a session (a llama.cpp context with its own KV cache) on this model.
    pub fn session(&self) -> Result<Session<'_>, EngineError> {
        let params = self
            .context_params()
            .with_n_ctx(Some(self.context_size))
            .with_n_batch(self.batch_size.get());
        let context = self
            .inner
            .new_context(backend()?, params)
            .map_err(|cause| EngineError::Context {
                context_size: self.context_size.get(),
                cause,
            })?;
        Ok(Session::new(self, context))
    }

    /// The context the serving engine decodes in: `parallel` sequences, each with its own
    /// `context_size / parallel` cells (llama.cpp's non-unified KV cache). Split rather than
    /// shared, so that a slot's capacity is known when a request is admitted and one long
    /// conversation cannot evict the others; attention also only spans a sequence's own
    /// cells, which keeps batched decode cheaper than a unified cache. The sliding-window
    /// cache is kept full size (`swa_full`) so that a slot's prefix can be cut at any
    /// position for prompt reuse.
    pub(crate) fn serving_context(&self) -> Result<LlamaContext<'_>, EngineError> {
        let params = self
            .context_params()
            .with_n_ctx(Some(self.context_size))
            .with_n_batch(self.batch_size.get())
            .with_n_ubatch(self.batch_size.get())
            .with_n_seq_max(self.parallel.get())
            .with_kv_unified(false)
            .with_swa_full(true);
        self.inner
            .new_context(backend()?, params)
            .map_err(|cause| EngineError::Context {
                context_size: self.context_size.get(),
                cause,
            })
    }

    /// A one-sequence context that returns mean-pooled hidden states instead of logits,
    /// for `/v1/embeddings`. Each slot's share of the context bounds the input length.
    /// `threads` replaces the model's thread count (for a worker of its own).
    pub(crate) fn embedding_context(
        &self,
        threads: Option<NonZeroU32>,
    ) -> Result<LlamaContext<'_>, EngineError> {
        let size = self.slot_context_size();
        let mut params = self.context_params();
        if let Some(threads) = threads {
            let threads = i32::try_from(threads.get()).unwrap_or(i32::MAX);
            params = params.with_n_threads(threads).with_n_threads_batch(threads);
        }
        let params = params
            .with_n_ctx(NonZeroU32::new(size))
            .with_n_batch(size)
            .with_n_ubatch(size)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean);
        self.inner
            .new_context(backend()?, params)
            .map_err(|cause| EngineError::Context {
                context_size: size,
                cause,
            })
    }

    /// Tokens one slot holds: prompt plus generated tokens of a request fit in this.
    pub fn slot_context_size(&self) -> u32 {
        self.context_size.get() / self.parallel.get()
    }

    /// Slots (sequences decoded together).
    pub fn parallel(&self) -> NonZeroU32 {
        self.parallel
    }

    /// The flash attention policy contexts of this model are made with.
    pub fn flash_attention(&self) -> FlashAttention {
        self.flash_attention
    }

    /// Tokenizes `text`; special tokens written in it (`<start_of_turn>`) are honoured.
    /// `add_bos` prepends the model's BOS token where its vocabulary asks for one.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Vec<LlamaToken> {
        self.inner.vocab().tokenize(text.as_bytes(), add_bos, true)
    }

    /// The text of a special token such as BOS (`<bos>`), empty where the model has none.
    pub fn token_text(&self, token: LlamaToken) -> String {
        String::from_utf8_lossy(&self.inner.vocab().token_to_piece(token, true, None)).into_owned()
    }

    pub fn bos_text(&self) -> String {
        self.token_text(self.inner.vocab().bos())
    }

    pub fn eos_text(&self) -> String {
        self.token_text(self.inner.vocab().eos())
    }

    /// Size of the vocabulary: valid token ids are `0..n_vocab`.
    pub fn n_vocab(&self) -> i32 {
        self.inner.n_vocab()
    }

    /// Width of an embedding vector.
    pub fn embedding_size(&self) -> usize {
        usize::try_from(self.inner.n_embd()).unwrap_or(0)
    }

    /// The Jinja chat template from the GGUF metadata (`tokenizer.chat_template`), if any.
    pub fn chat_template(&self) -> Option<String> {
        self.inner
            .meta_val_str("tokenizer.chat_template")
            .ok()
            .filter(|template| !template.trim().is_empty())
    }

    /// The model architecture from the GGUF metadata (`general.architecture`).
    pub fn architecture(&self) -> String {
        self.inner
            .meta_val_str("general.architecture")
            .unwrap_or_default()
    }

    /// The model's name from its GGUF metadata (`general.name`), else the file name.
    pub fn description(&self) -> String {
        self.inner
            .meta_val_str("general.name")
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| {
                self.path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn threads(&self) -> NonZeroU32 {
        self.threads
    }

    /// The context size sessions ask for; llama.cpp may round it up (to a multiple of 256),
    /// [`Session::context_size`] is the real capacity.
    pub fn context_size(&self) -> NonZeroU32 {
        self.context_size
    }

    pub fn batch_size(&self) -> NonZeroU32 {
        self.batch_size
    }

    pub(crate) fn llama(&self) -> &LlamaModel {
        &self.inner
    }
}
