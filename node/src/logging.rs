//! Process-wide logging setup: `tracing` events to stderr as text or JSON lines, filtered
//! by an `EnvFilter` directive string. stdout stays free for command output.

use tracing_subscriber::EnvFilter;

/// Default filter: our info lines; llama.cpp's own log (routed into `tracing` under the
/// target `llama-cpp-2`, a few hundred lines per model load) only from warnings up; and not
/// the `llama_cpp_2::log` complaints about llama.cpp's progress dots.
pub const DEFAULT_FILTER: &str = "info,llama-cpp-2=warn,llama_cpp_2::log=error";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber. `filter` uses `EnvFilter` syntax, e.g.
/// `info,llamanet_swarm=debug`.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|err| anyhow::anyhow!("invalid log filter '{filter}': {err}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|err| anyhow::anyhow!("cannot install the logger: {err}"))
}
