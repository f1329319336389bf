//! The `llamanet` command line: parses arguments (every flag can also come from a
//! `LLAMANET_*` environment variable, which is how pods configure it), sets up logging and
//! calls into the library. Errors are printed on stderr and exit with status 1.

#[cfg(feature = "engine")]
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use llamanet_node::logging::{self, LogFormat};
use llamanet_node::model;

#[derive(Debug, Parser)]
#[command(name = "llamanet", version, about = "LlamaNet inference node")]
struct Cli {
    /// Log line format on stderr.
    #[arg(
        long,
        global = true,
        env = "LLAMANET_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax (e.g. `info,llamanet_node=debug`).
    #[arg(long, global = true, env = "LLAMANET_LOG", default_value = logging::DEFAULT_FILTER)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Put a model with a known SHA-256 at a path, from a URL or a local file; a valid
    /// file already there is reused.
    Fetch(FetchArgs),
    /// Generate text from a prompt once (greedy) and print tokens/s.
    #[cfg(feature = "engine")]
    Generate(GenerateArgs),
    /// Serve the OpenAI-compatible API, `/health` and `/metrics` for one model.
    #[cfg(feature = "engine")]
    Serve(Box<ServeArgs>),
    /// A live view of the swarm (`--once --json` prints one snapshot for scripts).
    Monitor(llamanet_node::tools::MonitorOptions),
    /// A quick health check of the swarm: exit 0 healthy, 1 unhealthy, 2 unreachable.
    Check(llamanet_node::tools::CheckOptions),
}

/// `llamanet fetch` exits with this when the model's checksum is wrong, so the operator can
/// tell ChecksumMismatch from other failures by the init container's exit code alone.
const EXIT_CHECKSUM_MISMATCH: u8 = 3;

#[cfg(feature = "engine")]
#[derive(Debug, Args)]
struct ServeArgs {
    /// Path of the GGUF model.
    #[arg(long, env = "LLAMANET_MODEL")]
    model: PathBuf,

    /// Verify the model's SHA-256 before loading it.
    #[arg(long, env = "LLAMANET_SHA256")]
    sha256: Option<String>,

    /// Address to listen on.
    #[arg(long, env = "LLAMANET_HOST", default_value = "0.0.0.0")]
    host: std::net::IpAddr,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "LLAMANET_PORT", default_value_t = 8080)]
    port: u16,

    /// Requests decoded together (slots); the context is split evenly between them.
    #[arg(long, env = "LLAMANET_PARALLEL",
          default_value_t = NonZeroU32::new(llamanet_node::engine::settings::DEFAULT_PARALLEL).expect("non-zero"))]
    parallel: NonZeroU32,

    /// Requests that may wait for a slot; beyond that, 503 queue full.
    #[arg(long, env = "LLAMANET_QUEUE", default_value_t = llamanet_node::engine::settings::DEFAULT_QUEUE)]
    queue: usize,

    /// Total context in tokens, shared out evenly between the slots.
    #[arg(long, env = "LLAMANET_CTX_SIZE", default_value_t = NonZeroU32::new(8192).expect("non-zero"))]
    ctx_size: NonZeroU32,

    /// CPU threads [default: physical cores available to this process].
    #[arg(long, env = "LLAMANET_THREADS")]
    threads: Option<NonZeroU32>,

    /// Most tokens per decode step; a long prompt is evaluated in chunks of this size so
    /// that generating slots are delayed by at most one chunk.
    #[arg(long, env = "LLAMANET_BATCH_SIZE", default_value_t = NonZeroU32::new(512).expect("non-zero"))]
    batch_size: NonZeroU32,

    /// Layers to offload to the GPU [default: all when built with a GPU backend].
    #[arg(long, env = "LLAMANET_GPU_LAYERS")]
    gpu_layers: Option<u32>,

    /// Require `Authorization: Bearer <key>` on /v1 routes.
    #[arg(long, env = "LLAMANET_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Serve /v1/embeddings (mean-pooled hidden states) from the same model.
    #[arg(long, env = "LLAMANET_EMBEDDINGS")]
    embeddings: bool,

    /// The model name clients use [default: the model file name without extension].
    #[arg(long, env = "LLAMANET_MODEL_ID")]
    model_id: Option<String>,

    /// A Jinja chat template file replacing the one in the model's metadata.
    #[arg(long, env = "LLAMANET_CHAT_TEMPLATE")]
    chat_template: Option<PathBuf>,

    /// Largest request body in bytes.
    #[arg(long, env = "LLAMANET_BODY_LIMIT", default_value_t = 4 * 1024 * 1024)]
    body_limit: usize,

    /// Longest a generation request may take in seconds, queueing included.
    #[arg(long, env = "LLAMANET_REQUEST_TIMEOUT", default_value_t = 600)]
    request_timeout: u64,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "LLAMANET_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,

    #[command(flatten)]
    swarm: llamanet_node::swarm::membership::MembershipArgs,
}

#[derive(Debug, Args)]
struct FetchArgs {
    /// http(s):// URL, file:// URL or local path of the GGUF model.
    #[arg(long, env = "LLAMANET_SOURCE")]
    source: String,

    /// Where the verified model ends up.
    #[arg(long, env = "LLAMANET_DEST")]
    dest: PathBuf,

    /// Expected SHA-256 of the model (64 hex digits).
    #[arg(long, env = "LLAMANET_SHA256")]
    sha256: String,
}

#[cfg(feature = "engine")]
#[derive(Debug, Args)]
struct GenerateArgs {
    /// Path of the GGUF model.
    #[arg(long, env = "LLAMANET_MODEL")]
    model: PathBuf,

    /// Verify the model's SHA-256 before loading it.
    #[arg(long, env = "LLAMANET_SHA256")]
    sha256: Option<String>,

    /// Prompt text, used as is (no chat template).
    #[arg(long, env = "LLAMANET_PROMPT")]
    prompt: String,

    /// Most tokens to generate.
    #[arg(long, env = "LLAMANET_MAX_TOKENS", default_value_t = 128)]
    max_tokens: usize,

    /// CPU threads [default: physical cores available to this process].
    #[arg(long, env = "LLAMANET_THREADS")]
    threads: Option<NonZeroU32>,

    /// Context size in tokens.
    #[arg(long, env = "LLAMANET_CTX_SIZE",
          default_value_t = NonZeroU32::new(llamanet_node::engine::settings::DEFAULT_CONTEXT_SIZE).expect("non-zero"))]
    ctx_size: NonZeroU32,

    /// Layers to offload to the GPU [default: all when built with a GPU backend].
    #[arg(long, env = "LLAMANET_GPU_LAYERS")]
    gpu_layers: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The live monitor owns the terminal: log lines would garble it.
    let log = match &cli.command {
        Command::Monitor(options) if !options.once => "off".to_string(),
        _ => cli.log.clone(),
    };
    if let Err(err) = logging::init(cli.log_format, &log) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Fetch(args) => match fetch(args) {
            Err(err)
                if err
                    .downcast_ref::<model::ModelError>()
                    .is_some_and(|e| e.reason() == "ChecksumMismatch") =>
            {
                eprintln!("error: {err:#}");
                return ExitCode::from(EXIT_CHECKSUM_MISMATCH);
            }
            other => other,
        },
        Command::Monitor(options) => {
            tools_runtime().and_then(|rt| rt.block_on(llamanet_node::tools::monitor(options)))
        }
        Command::Check(options) => {
            return match tools_runtime()
                .and_then(|rt| rt.block_on(llamanet_node::tools::check(options)))
            {
                Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(2)
                }
            };
        }
        #[cfg(feature = "engine")]
        Command::Generate(args) => generate(args),
        #[cfg(feature = "engine")]
        Command::Serve(args) => serve(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn tools_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn fetch(args: FetchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(model::fetch(&args.source, &args.dest, &args.sha256))?;
    tracing::info!(dest = %args.dest.display(), ?outcome, "model ready");
    Ok(())
}

#[cfg(feature = "engine")]
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use std::time::Duration;

    use llamanet_node::api::{self, ApiConfig, ServeOptions};
    use llamanet_node::engine::EngineSettings;

    let model_id = args.model_id.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string())
    });
    let options = ServeOptions {
        address: std::net::SocketAddr::new(args.host, args.port),
        model: args.model,
        sha256: args.sha256,
        engine: EngineSettings {
            threads: args.threads,
            context_size: args.ctx_size,
            batch_size: args.batch_size,
            gpu_layers: args.gpu_layers,
            parallel: args.parallel,
            queue: args.queue,
            embeddings: args.embeddings,
        },
        api: ApiConfig {
            model_id,
            api_key: args.api_key.filter(|key| !key.is_empty()),
            body_limit: args.body_limit,
            request_timeout: Duration::from_secs(args.request_timeout.max(1)),
            started_unix: api::unix_now(),
        },
        chat_template: args.chat_template,
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        membership: Some(args.swarm),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(api::serve(options))
}

#[cfg(feature = "engine")]
fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use llamanet_node::engine::{EngineSettings, Model};

    if let Some(sha256) = &args.sha256 {
        model::verify_sha256(&args.model, sha256)?;
    }
    let settings = EngineSettings {
        threads: args.threads,
        context_size: args.ctx_size,
        gpu_layers: args.gpu_layers,
        ..EngineSettings::default()
    };
    let model = Model::load(&args.model, &settings)?;
    let mut session = model.session()?;
    let generation = session.generate(&args.prompt, args.max_tokens)?;
    println!("{}", generation.text);
    let stats = generation.stats;
    eprintln!(
        "prompt: {} tokens in {:.1} ms | generated: {} tokens, decode {:.1} ms, {:.1} tokens/s \
         | finish: {:?} | threads: {}",
        stats.prompt_tokens,
        stats.prompt_ms,
        stats.generated_tokens,
        stats.decode_ms,
        stats.tokens_per_second,
        generation.finish_reason,
        model.threads(),
    );
    Ok(())
}
