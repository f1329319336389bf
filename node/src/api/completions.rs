//! `POST /v1/completions`: raw text prompts (one string, or several with one choice each),
//! generated as they are, without a chat template.

use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::error::ApiError;
use super::generation::{self, Arrival, Kind, Relayed, Shape};
use super::types::{CompletionRequest, PromptField};
use super::{AppState, OpenAiJson};

/// Most choices (prompts times `n`) in one request: each takes a slot or a queue place.
const MAX_PROMPTS: usize = 64;

/// Text completions: prompts as they are, without a chat template.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let loaded = state.ready()?;
    let arrival = Arrival {
        received,
        on_its_way: loaded.engine.arriving(),
    };
    state.check_model(&request.model)?;
    let options = request.fields.validate(Kind::Completion)?;
    let relayed = Relayed::from_headers(&headers)?;
    if request.echo == Some(true) {
        return Err(ApiError::invalid_param(
            "echo",
            "echo is not supported by this server",
        ));
    }
    if request
        .suffix
        .as_deref()
        .is_some_and(|suffix| !suffix.is_empty())
    {
        return Err(ApiError::invalid_param(
            "suffix",
            "suffix is not supported by this server",
        ));
    }
    let texts = match request.prompt {
        PromptField::One(text) => vec![text],
        PromptField::Many(texts) => texts,
    };
    if texts.is_empty() || texts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "prompt must be a string or 1 to {MAX_PROMPTS} strings, got {}",
                texts.len()
            ),
        ));
    }
    if let Some(index) = texts.iter().position(String::is_empty) {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("prompt {index} is empty: nothing to complete"),
        ));
    }
    if texts.len() * options.n > MAX_PROMPTS {
        return Err(ApiError::invalid_param(
            "n",
            format!(
                "{} prompts with n = {} make {} choices; at most {MAX_PROMPTS} are allowed",
                texts.len(),
                options.n,
                texts.len() * options.n
            ),
        ));
    }
    let prompts = state.tokenize_all(&loaded.engine, texts).await?;
    let resume = relayed.check_resume(
        &options,
        prompts.len() * options.n,
        &loaded.engine.info().fingerprint,
    )?;
    let shape =
        Shape::new(Kind::Completion, &state.config.model_id, "/v1/completions").resumed(resume);
    generation::run(
        &state,
        &loaded.engine,
        shape,
        prompts,
        &options,
        &relayed,
        arrival,
    )
    .await
}
