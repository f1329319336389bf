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
    if let Err(err) = logging::init(cli.log_format, &cli.log) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Fetch(args) => fetch(args),
        #[cfg(feature = "engine")]
        Command::Generate(args) => generate(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
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
