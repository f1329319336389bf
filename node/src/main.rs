//! The `llamanet` command line: parses arguments (every flag can also come from a
//! `LLAMANET_*` environment variable, which is how pods configure it), sets up logging and
//! calls into the library. Errors are printed on stderr and exit with status 1.

use std::process::ExitCode;

use clap::Parser;
use llamanet_node::cli::{Cli, Command, FetchArgs, HttpArgs, RouterArgs, SidecarArgs};
#[cfg(feature = "engine")]
use llamanet_node::cli::{GenerateArgs, ServeArgs};
use llamanet_node::logging;
use llamanet_node::model;

/// `llamanet fetch` exits with this when the model's checksum is wrong, so the operator can
/// tell ChecksumMismatch from other failures by the init container's exit code alone.
const EXIT_CHECKSUM_MISMATCH: u8 = 3;

/// `llamanet fetch` exits with this when neither a peer nor the source has the model.
const EXIT_MODEL_UNAVAILABLE: u8 = 4;

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
            Err(err) => {
                eprintln!("error: {err:#}");
                let reason = err.downcast_ref::<model::ModelError>().map(|e| e.reason());
                return match reason {
                    Some("ChecksumMismatch") => ExitCode::from(EXIT_CHECKSUM_MISMATCH),
                    Some("ModelUnavailable") => ExitCode::from(EXIT_MODEL_UNAVAILABLE),
                    _ => ExitCode::FAILURE,
                };
            }
            ok => ok,
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
        #[cfg(not(feature = "engine"))]
        Command::Generate(_) | Command::Serve(_) => Err(anyhow::anyhow!(
            "this llamanet was built without the engine (the router and sidecar image): \
             `serve` and `generate` need the node image"
        )),
        Command::Router(args) => router(*args),
        Command::Sidecar(args) => sidecar(*args),
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
    use llamanet_node::swarm::{self, SwarmConfig, bootstrap};
    use llamanet_node::weights::{self, FetchOptions};

    if args.source.is_none() && args.bootstrap.is_empty() {
        anyhow::bail!("nothing to fetch from: give --source, --bootstrap or both");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let swarm = if args.bootstrap.is_empty() {
            None
        } else {
            let addrs = args
                .bootstrap
                .iter()
                .map(|a| bootstrap::parse_addr(a).map_err(|e| anyhow::anyhow!("--bootstrap: {e}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut config = SwarmConfig::light(addrs);
            if let Some(path) = &args.swarm_key {
                config.psk =
                    Some(swarm::load_psk(path).map_err(|e| anyhow::anyhow!("--swarm-key: {e}"))?);
            }
            Some(swarm::start(swarm::Keypair::generate_ed25519(), config).await?)
        };
        let options = FetchOptions {
            find_peers_for: args.find_peers_for(),
            ..FetchOptions::default()
        };
        let report = weights::fetch(
            swarm.as_ref(),
            args.source.as_deref(),
            &args.dest,
            &args.sha256,
            &options,
        )
        .await;
        if let Some(swarm) = &swarm {
            swarm.shutdown().await;
        }
        let report = report?;
        tracing::info!(
            dest = %args.dest.display(),
            reused = report.reused,
            from_peers = report.from_peers,
            from_origin = report.from_origin,
            resumed = report.resumed,
            peers_used = report.peers_used,
            dropped = ?report.dropped,
            "model ready"
        );
        Ok(())
    })
}

#[cfg(feature = "engine")]
fn serve(args: ServeArgs) -> anyhow::Result<()> {
    use llamanet_node::api::{Backend, EngineOptions};
    use llamanet_node::engine::EngineSettings;

    let model_id = args.model_id.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_string())
    });
    let backend = Backend::Engine(EngineOptions {
        model: args.model,
        sha256: args.sha256,
        settings: EngineSettings {
            threads: args.threads,
            context_size: args.ctx_size,
            batch_size: args.batch_size,
            gpu_layers: args.gpu_layers,
            parallel: args.parallel,
            queue: args.queue,
            flash_attention: args.flash_attention,
            embeddings: args.embeddings,
            embedding_threads: args.embedding_threads,
            ..EngineSettings::default()
        },
        chat_template: args.chat_template,
        share: llamanet_node::weights::SeedPolicy {
            max_uploads: args.weights_uploads,
            bytes_per_second: (args.weights_upload_rate > 0)
                .then(|| args.weights_upload_rate.saturating_mul(1 << 20)),
        },
    });
    run_server(args.http, args.swarm, backend, model_id)
}

fn router(args: RouterArgs) -> anyhow::Result<()> {
    use llamanet_node::api::Backend;

    run_server(args.http, args.swarm, Backend::Router, String::new())
}

fn sidecar(args: SidecarArgs) -> anyhow::Result<()> {
    use std::time::Duration;

    use llamanet_node::api::Backend;
    use llamanet_node::sidecar::UpstreamConfig;

    let upstream: reqwest::Url = args
        .upstream
        .parse()
        .map_err(|err| anyhow::anyhow!("--upstream {:?} is not a URL: {err}", args.upstream))?;
    if !matches!(upstream.scheme(), "http" | "https") {
        anyhow::bail!(
            "--upstream {:?} must be an http:// or https:// URL",
            args.upstream
        );
    }
    // Every half heartbeat interval: a dead engine shows in the next heartbeat.
    let check_every = args.swarm.interval()? / 2;
    let backend = Backend::Upstream(UpstreamConfig {
        base: args.upstream,
        kind: args.engine,
        model_id: args.model_id,
        api_key: args.upstream_api_key.filter(|key| !key.is_empty()),
        slots: args.slots.get(),
        check_every,
        probe_timeout: check_every.clamp(Duration::from_millis(100), Duration::from_secs(5)),
        request_timeout: Duration::from_secs(args.http.request_timeout.max(1)),
    });
    run_server(args.http, args.swarm, backend, String::new())
}

fn run_server(
    http: HttpArgs,
    swarm: llamanet_node::swarm::membership::MembershipArgs,
    backend: llamanet_node::api::Backend,
    model_id: String,
) -> anyhow::Result<()> {
    use std::time::Duration;

    use llamanet_node::api::{self, ApiConfig, ServeOptions};

    let options = ServeOptions {
        address: std::net::SocketAddr::new(http.host, http.port),
        backend,
        api: ApiConfig {
            model_id,
            api_key: http.api_key.filter(|key| !key.is_empty()),
            body_limit: http.body_limit,
            request_timeout: Duration::from_secs(http.request_timeout.max(1)),
            body_timeout: Duration::from_secs(http.body_timeout.max(1)),
            max_concurrent_requests: http.max_concurrent_requests.max(1),
            started_unix: api::unix_now(),
            hold: llamanet_node::route::HoldPolicy {
                timeout: Duration::from_secs(http.wake_hold_timeout.max(1)),
                queue: http.wake_hold_queue,
                ..llamanet_node::route::HoldPolicy::default()
            },
        },
        shutdown_grace: Duration::from_secs(http.shutdown_grace),
        membership: Some(swarm),
        watchdog: api::watchdog::WatchdogConfig {
            stall_limit: Duration::from_secs(http.stall_timeout.max(1)),
            ..api::watchdog::WatchdogConfig::default()
        },
        test_hooks: http.test_hooks,
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
