//! The `llamanet` command line ([`Cli`]) and its subcommands' flags, as library types: the
//! binary parses them, and the operator checks every container command it generates against
//! them ([`Command::parse_args`]), so
//! that a pod never gets a flag the node does not know (see `operator/src/children.rs`).
//! Every flag can also come from its `LLAMANET_*` environment variable.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::engine::settings::{
    DEFAULT_BATCH_SIZE, DEFAULT_CONTEXT_SIZE, DEFAULT_PARALLEL, DEFAULT_QUEUE,
    DEFAULT_SERVE_BATCH_SIZE, DEFAULT_SERVE_CONTEXT_SIZE, FlashAttention,
};
use crate::logging::LogFormat;
use crate::swarm::membership::MembershipArgs;

/// `llamanet serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Path of the GGUF model.
    #[arg(long, env = "LLAMANET_MODEL")]
    pub model: PathBuf,

    /// Verify the model's SHA-256 before loading it.
    #[arg(long, env = "LLAMANET_SHA256")]
    pub sha256: Option<String>,

    /// Requests decoded together (slots); the context is split evenly between them.
    #[arg(long, env = "LLAMANET_PARALLEL", default_value_t = non_zero(DEFAULT_PARALLEL))]
    pub parallel: NonZeroU32,

    /// Requests that may wait for a slot; beyond that, 503 queue full.
    #[arg(long, env = "LLAMANET_QUEUE", default_value_t = DEFAULT_QUEUE)]
    pub queue: usize,

    /// Total context in tokens, shared out evenly between the slots.
    #[arg(long, env = "LLAMANET_CTX_SIZE", default_value_t = non_zero(DEFAULT_SERVE_CONTEXT_SIZE))]
    pub ctx_size: NonZeroU32,

    /// CPU threads [default: physical cores available to this process].
    #[arg(long, env = "LLAMANET_THREADS")]
    pub threads: Option<NonZeroU32>,

    /// Most tokens per decode step; a long prompt is evaluated in chunks of this size so
    /// that generating slots are delayed by at most one chunk.
    #[arg(long, env = "LLAMANET_BATCH_SIZE", default_value_t = non_zero(DEFAULT_SERVE_BATCH_SIZE))]
    pub batch_size: NonZeroU32,

    /// Layers to offload to the GPU [default: all when built with a GPU backend].
    #[arg(long, env = "LLAMANET_GPU_LAYERS")]
    pub gpu_layers: Option<u32>,

    /// Flash attention.
    #[arg(long, env = "LLAMANET_FLASH_ATTENTION", value_enum, default_value_t)]
    pub flash_attention: FlashAttention,

    /// Serve /v1/embeddings (mean-pooled hidden states) from the same model.
    #[arg(long, env = "LLAMANET_EMBEDDINGS")]
    pub embeddings: bool,

    /// CPU threads of an embeddings worker of its own, beside the --threads that decode
    /// [default: none; embeddings take turns with decoding on its threads]. With
    /// --threads + this within the cores, large embeddings requests leave streams alone.
    #[arg(long, env = "LLAMANET_EMBEDDING_THREADS", requires = "embeddings")]
    pub embedding_threads: Option<NonZeroU32>,

    /// The model name clients use [default: the model file name without extension].
    #[arg(long, env = "LLAMANET_MODEL_ID")]
    pub model_id: Option<String>,

    /// A Jinja chat template file replacing the one in the model's metadata.
    #[arg(long, env = "LLAMANET_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,

    /// Chunks of the model file sent to peers at once (with --sha256 in a private swarm,
    /// the node shares the verified file with replicas that fetch it); 0 shares nothing.
    #[arg(long, env = "LLAMANET_WEIGHTS_UPLOADS", default_value_t = 4)]
    pub weights_uploads: usize,

    /// All uploads of the model file together, in MiB/s; 0 is unpaced.
    #[arg(
        long,
        env = "LLAMANET_WEIGHTS_UPLOAD_RATE",
        default_value_t = crate::weights::seed::DEFAULT_UPLOAD_MIB_PER_SECOND
    )]
    pub weights_upload_rate: u64,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub swarm: MembershipArgs,
}

/// The HTTP side every serving subcommand (`serve`, `router`, `sidecar`) shares.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long, env = "LLAMANET_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "LLAMANET_PORT", default_value_t = 8080)]
    pub port: u16,

    /// Require `Authorization: Bearer <key>` on /v1 routes.
    #[arg(long, env = "LLAMANET_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Largest request body in bytes.
    #[arg(long, env = "LLAMANET_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    pub body_limit: usize,

    /// Longest a generation request may take in seconds, queueing included.
    #[arg(long, env = "LLAMANET_REQUEST_TIMEOUT", default_value_t = 600)]
    pub request_timeout: u64,

    /// Seconds a client may pause while sending a request body; then 408.
    #[arg(long, env = "LLAMANET_BODY_TIMEOUT", default_value_t = 30)]
    pub body_timeout: u64,

    /// `/v1` requests read and prepared at once (until their answer starts); more get 503
    /// `overloaded` with Retry-After. Bounds the memory request bodies can take to this
    /// many times `--body-limit`. `/health` and `/metrics` are not counted.
    #[arg(long, env = "LLAMANET_MAX_CONCURRENT_REQUESTS", default_value_t = 256)]
    pub max_concurrent_requests: usize,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "LLAMANET_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,

    /// Seconds the engine (with requests waiting) or the swarm task may go without
    /// progress before the node reports unhealthy and exits non-zero. A dead engine
    /// thread or swarm task does so at once.
    #[arg(long, env = "LLAMANET_STALL_TIMEOUT", default_value_t = 120)]
    pub stall_timeout: u64,

    /// Seconds a request for a model scaled to zero is held while its operator wakes it;
    /// then 503 with Retry-After.
    #[arg(long, env = "LLAMANET_WAKE_HOLD_TIMEOUT", default_value_t = 300)]
    pub wake_hold_timeout: u64,

    /// Requests held at once per model scaled to zero; more get 503 with Retry-After.
    #[arg(long, env = "LLAMANET_WAKE_HOLD_QUEUE", default_value_t = 64)]
    pub wake_hold_queue: usize,

    /// Serve POST /debug/inject/{failure} to break the node on purpose (tests only).
    #[arg(long, hide = true)]
    pub test_hooks: bool,
}

/// `llamanet router`: a node without a model. It joins the swarm and forwards every
/// request to a peer that serves the model, so clients can point at it like any node.
#[derive(Debug, Args)]
pub struct RouterArgs {
    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub swarm: MembershipArgs,
}

/// Which kind of engine a sidecar sits beside: where its load figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum UpstreamKind {
    /// llama.cpp's `llama-server` (run it with `--metrics`): `/metrics` and `/slots`.
    #[default]
    LlamaServer,
    /// vLLM's OpenAI server: its `vllm:` metrics.
    Vllm,
    /// Any other OpenAI-compatible server: the sidecar counts requests and tokens itself.
    Openai,
}

/// `llamanet sidecar`: puts an OpenAI-compatible engine running beside it (same pod) into
/// the swarm. Requests for the engine's models are proxied to it; others are routed.
#[derive(Debug, Args)]
pub struct SidecarArgs {
    /// Base URL of the engine, e.g. `http://127.0.0.1:8000`.
    #[arg(long, env = "LLAMANET_UPSTREAM")]
    pub upstream: String,

    /// Which engine it is.
    #[arg(long, env = "LLAMANET_ENGINE", value_enum, default_value_t)]
    pub engine: UpstreamKind,

    /// Advertise only this model id [default: every model the engine lists in /v1/models].
    #[arg(long, env = "LLAMANET_MODEL_ID")]
    pub model_id: Option<String>,

    /// Bearer key the engine itself requires, sent instead of the client's.
    #[arg(long, env = "LLAMANET_UPSTREAM_API_KEY", hide_env_values = true)]
    pub upstream_api_key: Option<String>,

    /// Requests the engine takes at once, when it does not say itself (vLLM, plain OpenAI
    /// servers); llama-server's `/slots` tells.
    #[arg(long, env = "LLAMANET_UPSTREAM_SLOTS", default_value_t = non_zero(DEFAULT_PARALLEL))]
    pub slots: NonZeroU32,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub swarm: MembershipArgs,
}

/// `llamanet fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// http(s):// URL, file:// URL or local path of the GGUF model. Optional with
    /// --bootstrap: then only peers are asked.
    #[arg(long, env = "LLAMANET_SOURCE")]
    pub source: Option<String>,

    /// Where the verified model ends up.
    #[arg(long, env = "LLAMANET_DEST")]
    pub dest: PathBuf,

    /// Expected SHA-256 of the model (64 hex digits).
    #[arg(long, env = "LLAMANET_SHA256")]
    pub sha256: String,

    /// Swarm peer to join through (repeatable): the file is fetched from the peers that
    /// share it, and the source serves only what they cannot. None: the source only.
    #[arg(long = "bootstrap", env = "LLAMANET_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,

    /// Pre-shared key file of the private swarm (peers share weights only inside one).
    #[arg(long, env = "LLAMANET_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,

    /// Seconds to look for peers that share the file before using the source alone.
    #[arg(long, env = "LLAMANET_FIND_PEERS_FOR", default_value_t = 15)]
    pub find_peers_for: u64,

    /// The pod this fetch runs in (set by the operator). A replica other than the first
    /// (a StatefulSet pod whose name does not end in `-0`) looks for peers for
    /// --wait-for-peers instead: replicas that start together then take one copy from the
    /// source (the first replica's) and the rest from it.
    #[arg(long, env = "LLAMANET_POD")]
    pub pod: Option<String>,

    /// Seconds a replica other than the first waits for a peer to share the file.
    #[arg(long, env = "LLAMANET_WAIT_FOR_PEERS", default_value_t = 0)]
    pub wait_for_peers: u64,
}

impl FetchArgs {
    /// How long to look for peers before using the source.
    pub fn find_peers_for(&self) -> std::time::Duration {
        let first = self.pod.as_deref().is_none_or(|pod| {
            pod.rsplit_once('-')
                .is_none_or(|(_, ordinal)| ordinal == "0")
        });
        let seconds = match first {
            true => self.find_peers_for,
            false => self.find_peers_for.max(self.wait_for_peers),
        };
        std::time::Duration::from_secs(seconds)
    }
}

/// `llamanet generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Path of the GGUF model.
    #[arg(long, env = "LLAMANET_MODEL")]
    pub model: PathBuf,

    /// Verify the model's SHA-256 before loading it.
    #[arg(long, env = "LLAMANET_SHA256")]
    pub sha256: Option<String>,

    /// Prompt text, used as is (no chat template).
    #[arg(long, env = "LLAMANET_PROMPT")]
    pub prompt: String,

    /// Most tokens to generate.
    #[arg(long, env = "LLAMANET_MAX_TOKENS", default_value_t = 128)]
    pub max_tokens: usize,

    /// CPU threads [default: physical cores available to this process].
    #[arg(long, env = "LLAMANET_THREADS")]
    pub threads: Option<NonZeroU32>,

    /// Context size in tokens.
    #[arg(long, env = "LLAMANET_CTX_SIZE", default_value_t = non_zero(DEFAULT_CONTEXT_SIZE))]
    pub ctx_size: NonZeroU32,

    /// Layers to offload to the GPU [default: all when built with a GPU backend].
    #[arg(long, env = "LLAMANET_GPU_LAYERS")]
    pub gpu_layers: Option<u32>,
}

const fn non_zero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => panic!("default must be non-zero"),
    }
}

/// The `llamanet` command line: logging flags for every subcommand, and the subcommand.
#[derive(Debug, Parser)]
// Flags may repeat and the last one wins, so that extra arguments appended to a generated
// command line (an InferenceNode's `extraArgs`) override what comes before them.
#[command(
    name = "llamanet",
    version,
    about = "LlamaNet inference node",
    args_override_self = true
)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        env = "LLAMANET_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax (e.g. `info,llamanet_swarm=debug`).
    #[arg(long, global = true, env = "LLAMANET_LOG", default_value = crate::logging::DEFAULT_FILTER)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. `serve` and `generate` need the engine (cargo feature `engine`): a build
/// without llama.cpp hides them and refuses them with a message saying so.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Put a model with a known SHA-256 at a path, from a URL or a local file; a valid
    /// file already there is reused.
    Fetch(FetchArgs),
    /// Generate text from a prompt once (greedy) and print tokens/s.
    #[cfg_attr(not(feature = "engine"), command(hide = true))]
    Generate(GenerateArgs),
    /// Serve the OpenAI-compatible API, `/health` and `/metrics` for one model.
    #[cfg_attr(not(feature = "engine"), command(hide = true))]
    Serve(Box<ServeArgs>),
    /// Join the swarm without a model and route every request to a peer that serves it.
    Router(Box<RouterArgs>),
    /// Put an OpenAI-compatible engine running beside this process (llama-server, vLLM)
    /// into the swarm.
    Sidecar(Box<SidecarArgs>),
    /// A live view of the swarm (`--once --json` prints one snapshot for scripts).
    Monitor(crate::tools::MonitorOptions),
    /// A quick health check of the swarm: exit 0 healthy, 1 unhealthy, 2 unreachable.
    Check(crate::tools::CheckOptions),
}

impl Command {
    /// Parses a command line as a container runs it (`argv[1..]`, subcommand first) the way
    /// the `llamanet` binary parses it.
    pub fn parse_args<I, T>(args: I) -> Result<Command, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("llamanet"))
            .chain(args.into_iter().map(Into::into));
        Ok(Cli::try_parse_from(argv)?.command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_flags_parse_and_unknown_ones_are_refused() {
        let Command::Serve(args) = Command::parse_args([
            "serve",
            "--model",
            "/m.gguf",
            "--parallel",
            "2",
            "--flash-attention",
            "off",
        ])
        .expect("valid serve flags") else {
            panic!("not serve")
        };
        assert_eq!(args.parallel.get(), 2);
        assert_eq!(args.flash_attention, FlashAttention::Off);
        let err = Command::parse_args(["serve", "--model", "/m.gguf", "--model-name", "x"])
            .expect_err("unknown flag");
        assert!(err.to_string().contains("--model-name"), "{err}");
        let err = Command::parse_args(["serve", "--model", "/m.gguf", "--parallel", "0"])
            .expect_err("zero slots");
        assert!(err.to_string().contains("--parallel"), "{err}");
    }

    #[test]
    fn replicas_after_the_first_wait_longer_for_peers() {
        let wait = |pod: Option<&str>| {
            let mut args = vec![
                "fetch",
                "--dest",
                "/m",
                "--sha256",
                "ab",
                "--wait-for-peers",
                "600",
            ];
            if let Some(pod) = pod {
                args.extend(["--pod", pod]);
            }
            let Command::Fetch(fetch) = Command::parse_args(args).unwrap() else {
                panic!("not fetch")
            };
            fetch.find_peers_for().as_secs()
        };
        assert_eq!(wait(Some("gemma-0")), 15);
        assert_eq!(wait(None), 15);
        assert_eq!(wait(Some("gemma-3")), 600);
        assert_eq!(wait(Some("my-gemma-12")), 600);
    }
}
