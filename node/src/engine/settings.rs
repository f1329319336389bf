//! Engine settings and their defaults, in one place for the CLI, the server and tests. (No
//! llama.cpp here: the command line of a build without the engine reads the defaults too.)

use std::num::{NonZeroU32, NonZeroUsize};

use clap::ValueEnum;

/// Context size used when none is given: room for a long chat while keeping the KV cache
/// of small models in the tens of megabytes. Clamped to what the model was trained for.
pub const DEFAULT_CONTEXT_SIZE: u32 = 4096;

/// Tokens handed to one `llama_decode` call at most (llama.cpp's own default).
pub const DEFAULT_BATCH_SIZE: u32 = 2048;

/// Sequence slots served at once when none is given.
pub const DEFAULT_PARALLEL: u32 = 4;

/// Requests that may wait for a free slot when none is given; more get "queue full".
pub const DEFAULT_QUEUE: usize = 64;

/// Total context of `llamanet serve` when none is given (split between the slots).
pub const DEFAULT_SERVE_CONTEXT_SIZE: u32 = 8192;

/// Tokens per decode step of `llamanet serve` when none is given.
pub const DEFAULT_SERVE_BATCH_SIZE: u32 = 512;

/// Whether llama.cpp uses flash attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum FlashAttention {
    /// llama.cpp decides per model and backend.
    #[default]
    Auto,
    On,
    Off,
}

/// How the engine runs a model. `None` fields are resolved at load time from the machine
/// and the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// CPU threads for decoding and prompt processing; `None` means [`default_threads`].
    pub threads: Option<NonZeroU32>,
    /// Context size in tokens (KV cache capacity).
    pub context_size: NonZeroU32,
    /// Largest number of tokens per decode call; longer prompts are decoded in pieces.
    pub batch_size: NonZeroU32,
    /// Layers offloaded to the GPU; `None` means all of them when the build has a GPU
    /// backend and none otherwise.
    pub gpu_layers: Option<u32>,
    /// Sequences decoded together (slots). The context is split evenly between them: each
    /// slot holds `context_size / parallel` tokens.
    pub parallel: NonZeroU32,
    /// Requests that may wait for a slot; zero means none wait.
    pub queue: usize,
    /// Flash attention policy of every context.
    pub flash_attention: FlashAttention,
    /// Also create an embeddings context (mean-pooled hidden states) for `/v1/embeddings`.
    pub embeddings: bool,
    /// CPU threads of a worker of its own for embeddings, beside the engine thread; `None`
    /// shares the engine thread (one input between two decode steps, at most a fifth of its
    /// time while requests generate). A worker of its own leaves the streams alone only
    /// when `threads` plus these fit in the CPUs: it is how cores are set aside for them.
    pub embedding_threads: Option<NonZeroU32>,
    /// How long an engine that wakes for a request waits for others already on their way
    /// (see [`super::Arriving`]) before its first step, so a burst starts in one batch.
    pub arrival_window: std::time::Duration,
}

/// Preparing a request takes well under a millisecond on an idle CPU; this bounds the wait
/// when one takes longer (a long prompt to tokenize, a grammar to compile).
pub const DEFAULT_ARRIVAL_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            threads: None,
            context_size: NonZeroU32::new(DEFAULT_CONTEXT_SIZE).expect("non-zero constant"),
            batch_size: NonZeroU32::new(DEFAULT_BATCH_SIZE).expect("non-zero constant"),
            gpu_layers: None,
            parallel: NonZeroU32::new(DEFAULT_PARALLEL).expect("non-zero constant"),
            queue: DEFAULT_QUEUE,
            flash_attention: FlashAttention::Auto,
            embeddings: false,
            embedding_threads: None,
            arrival_window: DEFAULT_ARRIVAL_WINDOW,
        }
    }
}

impl EngineSettings {
    /// The thread count to use: the configured one, else [`default_threads`].
    pub fn resolved_threads(&self) -> NonZeroU32 {
        self.threads.unwrap_or_else(default_threads)
    }
}

/// One thread per physical core, capped by the CPUs this process may use.
///
/// llama.cpp's decode is memory-bound and its threads spin-wait for each other, so a second
/// thread on a hyper-thread sibling, or more threads than the cgroup quota allows, slows
/// decoding down (measured on 2-core machines: 4 threads gave half the tokens/s of 2).
/// `available_parallelism` honours cgroup CPU limits, which matters inside a pod; the
/// physical core count does not.
pub fn default_threads() -> NonZeroU32 {
    let allowed = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let physical = sysinfo::System::physical_core_count().unwrap_or(allowed);
    let threads = physical.min(allowed).max(1);
    NonZeroU32::new(u32::try_from(threads).unwrap_or(u32::MAX)).expect("at least one thread")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_threads_is_within_the_allowed_cpus() {
        let allowed = std::thread::available_parallelism().unwrap().get();
        let threads = default_threads().get() as usize;
        assert!((1..=allowed).contains(&threads), "{threads} of {allowed}");
    }

    #[test]
    fn configured_threads_win() {
        let settings = EngineSettings {
            threads: NonZeroU32::new(3),
            ..EngineSettings::default()
        };
        assert_eq!(settings.resolved_threads().get(), 3);
    }
}
