//! `llamanet serve`'s model: checked (and made shareable with peers) and loaded into the
//! engine in the background while the server already answers `/health` with 503.

use std::path::PathBuf;

use super::{ApiConfig, AppState};
use crate::engine::{Engine, EngineSettings};
use crate::swarm::membership::MembershipArgs;

/// The built-in engine's model and settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub model: PathBuf,
    /// Checked before loading when set.
    pub sha256: Option<String>,
    pub settings: EngineSettings,
    /// A Jinja file that replaces the model's own chat template.
    pub chat_template: Option<PathBuf>,
    /// How the verified model file is shared with peers (only with `sha256`, only in a
    /// private swarm).
    pub share: crate::weights::SeedPolicy,
}

/// Whether a node shares its model file with peers: only a file it verifies (`--sha256`),
/// only inside a private swarm (peers outside the pre-shared key could be anyone), and not
/// when told to share nothing.
fn shares_weights(engine: &EngineOptions, membership: Option<&MembershipArgs>) -> bool {
    let private = membership.is_some_and(|m| !m.no_swarm && m.swarm_key.is_some());
    let share = engine.sha256.is_some() && engine.share.max_uploads > 0;
    if share && !private {
        tracing::info!("the model file is not shared: the swarm is not private (no --swarm-key)");
    }
    share && private
}

/// Loads the model in the background and installs it; a failure goes to `failed`.
fn start_loading(
    state: &AppState,
    options: EngineOptions,
    seeder: Option<crate::weights::Seeder>,
    failed: tokio::sync::mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<()> {
    let chat_template = match &options.chat_template {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|err| {
            anyhow::anyhow!("cannot read the chat template {}: {err}", path.display())
        })?),
        None => None,
    };
    let state = state.clone();
    tokio::spawn(async move {
        let result = load(&options, seeder)
            .await
            .and_then(|engine| state.install(engine, chat_template));
        match result {
            Ok(()) => tracing::info!(model_id = %state.config.model_id, "model loaded; serving"),
            Err(err) => {
                let _ = failed.send(err).await;
            }
        }
    });
    Ok(())
}

/// `Q4_K_M` from `gemma-3-270m-q4_k_m.gguf`: the usual file naming, or empty.
fn quantization_of(model: &std::path::Path) -> String {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_uppercase())
        .unwrap_or_default();
    stem.rsplit(['-', '.'])
        .find(|part| part.starts_with('Q') || part.starts_with("F16") || part.starts_with("BF16"))
        .unwrap_or_default()
        .to_string()
}

async fn load(
    options: &EngineOptions,
    seeder: Option<crate::weights::Seeder>,
) -> anyhow::Result<Engine> {
    if let Some(sha256) = options.sha256.clone() {
        let path = options.model.clone();
        match seeder {
            // One read both checks the file and makes the manifest peers fetch it by.
            Some(seeder) => {
                let expected = crate::model::normalize_sha256(&sha256)?;
                let manifest = tokio::task::spawn_blocking(move || {
                    crate::weights::Manifest::of_file(&path)
                        .map_err(|cause| crate::model::ModelError::Io {
                            action: "cannot read model file",
                            path: path.clone(),
                            cause,
                        })
                        .and_then(|manifest| {
                            if manifest.sha256 == expected {
                                Ok(manifest)
                            } else {
                                Err(crate::model::ModelError::ChecksumMismatch {
                                    path,
                                    expected,
                                    actual: manifest.sha256,
                                })
                            }
                        })
                })
                .await??;
                seeder.add(&options.model, manifest);
            }
            None => {
                tokio::task::spawn_blocking(move || crate::model::verify_sha256(&path, &sha256))
                    .await??;
            }
        }
    }
    Ok(Engine::start(&options.model, options.settings.clone()).await?)
}

/// What [`start`] set going.
pub(super) struct Started {
    pub state: AppState,
    /// The model as the heartbeat advertises it.
    pub model: crate::swarm::ModelInfo,
    pub slots: u32,
    /// Shares the model file with peers once it is verified (see [`shares_weights`]).
    pub seeder: Option<crate::weights::Seeder>,
}

/// The state of a node with the built-in engine, its model loading in the background.
pub(super) fn start(
    engine: &EngineOptions,
    api: &ApiConfig,
    membership: Option<&MembershipArgs>,
    failed: tokio::sync::mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<Started> {
    let state = AppState::new(api.clone());
    let seeder = shares_weights(engine, membership)
        .then(|| crate::weights::Seeder::with_stats(engine.share, state.metrics.weights.clone()));
    start_loading(&state, engine.clone(), seeder.clone(), failed)?;
    let model = crate::swarm::ModelInfo {
        id: api.model_id.clone(),
        context_size: engine.settings.context_size.get() / engine.settings.parallel.get().max(1),
        quantization: quantization_of(&engine.model),
        fingerprint: crate::model::fingerprint(&engine.model).unwrap_or_default(),
    };
    Ok(Started {
        state,
        model,
        slots: engine.settings.parallel.get(),
        seeder,
    })
}
