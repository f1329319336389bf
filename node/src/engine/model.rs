//! A GGUF model loaded into llama.cpp, with the settings it runs under.
//!
//! Loading only maps the weights; the KV cache and compute buffers belong to a context,
//! created per [`Session`]. Checking the file's checksum beforehand is `crate::model`'s job.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;

use super::EngineError;
use super::backend::backend;
use super::session::Session;
use super::settings::EngineSettings;

/// A loaded model. `Sync`: sessions on several threads may share it, each with its own
/// context.
#[derive(Debug)]
pub struct Model {
    inner: LlamaModel,
    path: PathBuf,
    threads: NonZeroU32,
    context_size: NonZeroU32,
    batch_size: NonZeroU32,
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

        // A context beyond the trained length only produces garbage, so cap it there.
        let trained = inner.n_ctx_train();
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

    /// Creates a session (a llama.cpp context with its own KV cache) on this model.
    pub fn session(&self) -> Result<Session<'_>, EngineError> {
        let threads = i32::try_from(self.threads.get()).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_n_ctx(Some(self.context_size))
            .with_n_batch(self.batch_size.get())
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let context = self
            .inner
            .new_context(backend()?, params)
            .map_err(|cause| EngineError::Context {
                context_size: self.context_size.get(),
                cause,
            })?;
        Ok(Session::new(self, context))
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
