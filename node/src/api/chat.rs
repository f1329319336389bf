//! `POST /v1/chat/completions`: messages rendered through the chat template, then
//! generated like any other prompt (see `generation.rs`).

use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::error::ApiError;
use super::generation::{self, Kind, Relayed, Shape};
use super::template::TemplateMessage;
use super::types::ChatCompletionRequest;
use super::{AppState, OpenAiJson};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let loaded = state.ready()?;
    state.check_model(&request.model)?;
    let options = request.fields.validate()?;
    let relayed = Relayed::from_headers(&headers)?;
    let resume = relayed.check_resume(&options, 1, &loaded.engine.info().fingerprint)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(request.messages.len());
    for message in &request.messages {
        if !ROLES.contains(&message.role.as_str()) {
            return Err(ApiError::invalid_param(
                "messages",
                format!(
                    "unknown message role `{}`; expected one of {}",
                    message.role,
                    ROLES.join(", ")
                ),
            ));
        }
        let content = match &message.content {
            Some(content) => content.text()?,
            None => String::new(),
        };
        // `developer` is OpenAI's newer name for `system`; templates know only the latter.
        let role = if message.role == "developer" {
            "system".to_string()
        } else {
            message.role.clone()
        };
        messages.push(TemplateMessage { role, content });
    }
    let prompt_text = loaded
        .template
        .render(&messages, true)
        .map_err(|message| ApiError::invalid_param("messages", message))?;
    // A template that writes the BOS token itself must not get a second one.
    let bos = loaded.template.bos_token();
    let add_bos = bos.is_empty() || !prompt_text.starts_with(bos);
    let prompt = loaded.engine.tokenize(&prompt_text, add_bos);
    let requests = generation::requests(vec![prompt], &options, resume)?;
    let shape =
        Shape::new(Kind::Chat, &state.config.model_id, "/v1/chat/completions").resumed(resume);
    generation::respond(
        &state,
        &loaded.engine,
        shape,
        requests,
        &options,
        &relayed,
        received,
    )
    .await
}
