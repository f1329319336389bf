//! `POST /v1/embeddings`: mean-pooled, L2-normalised hidden states of the model, served
//! when the node runs with `--embeddings`; otherwise a 400 saying the model does not
//! support embeddings.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::error::ApiError;
use super::types::{EmbeddingInput, EmbeddingRequest};
use super::{AppState, OpenAiJson};

/// Most inputs in one request. The engine embeds one input per decode step, so a large
/// request delays no stream by more than one input, but it holds the embeddings queue.
pub const MAX_INPUTS: usize = 256;

/// Embeddings (a node started with `--embeddings`): mean-pooled, L2-normalised.
pub async fn create(
    State(state): State<AppState>,
    OpenAiJson(request): OpenAiJson<EmbeddingRequest>,
) -> Result<Json<Value>, ApiError> {
    let loaded = state.ready()?;
    state.check_model(&request.model)?;
    if !loaded.engine.info().embeddings {
        return Err(ApiError::invalid_param(
            "model",
            "model does not support embeddings (start the node with --embeddings)",
        ));
    }
    // The official Python client asks for base64 (little-endian f32s) by default.
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid_param(
                "encoding_format",
                format!("encoding_format `{other}` is not supported; use `float` or `base64`"),
            ));
        }
    };
    let texts = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
    };
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "input",
            "input must be non-empty text",
        ));
    }
    if texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid_param(
            "input",
            format!(
                "at most {MAX_INPUTS} inputs per request, got {}",
                texts.len()
            ),
        ));
    }
    let inputs = state.tokenize_all(&loaded.engine, texts).await?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = loaded
        .engine
        .embed(inputs)
        .await
        .map_err(|message| ApiError::invalid_param("input", message))?;
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            let embedding = if base64 {
                Value::from(base64_f32(&embedding))
            } else {
                Value::from(embedding)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": state.config.model_id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

/// Standard base64 (with padding) of the vector's little-endian `f32` bytes.
fn base64_f32(vector: &[f32]) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_floats_matches_the_standard_alphabet() {
        // 1.0f32 is 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, 1.0]), "AACAPwAAgD8=");
        assert_eq!(base64_f32(&[]), "");
    }
}
