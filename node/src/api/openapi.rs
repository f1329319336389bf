//! `GET /openapi.json`: the node's API as an OpenAPI 3.1 document, derived by `utoipa` from
//! the request types the handlers parse (`types.rs`, `tools.rs`) and the response types
//! below. The error body and the model list are built from these types; chat, completion
//! and embedding answers are assembled in `generation.rs` and `embeddings.rs`, and the
//! API fuzz test (tests/e2e/test_openapi.py, schemathesis) checks every answer against the
//! schemas here, so the document cannot drift from what the node sends.

use std::collections::HashMap;

use axum::Json;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::types::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, ContentPart, EmbeddingInput,
    EmbeddingRequest, GenerationFields, JsonSchemaFormat, MessageContent, PromptField,
    ResponseFormat, StopField, StreamOptions,
};

/// Every error: OpenAI's error object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `api_error`, `server_error`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    /// A machine-readable reason, e.g. `model_not_found`, `context_length_exceeded`.
    pub code: Option<String>,
}

/// The errors of the generation routes, each an [`ErrorBody`].
#[derive(utoipa::IntoResponses)]
pub enum GenerationErrors {
    /// A field is invalid; `param` names it
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// The node has an API key and the request's bearer key is not it
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No node of the swarm serves the model
    #[response(status = 404)]
    UnknownModel(ErrorBody),
    /// The body is over the node's limit
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Every node that serves the model failed to answer
    #[response(status = 502)]
    NoPeerAnswered(ErrorBody),
    /// The model loads, the node shuts down, or every slot and queue place is taken
    /// (`Retry-After`)
    #[response(status = 503)]
    Unavailable(ErrorBody),
    /// The answer took longer than the node's request timeout
    #[response(status = 504)]
    Timeout(ErrorBody),
}

/// `GET /v1/models`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: String,
    pub data: Vec<ModelObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// When this node started (Unix seconds).
    pub created: u64,
    pub owned_by: String,
}

/// A chat completion that was not streamed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<ChatChoice>,
    pub usage: UsageObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length` or `tool_calls`.
    pub finish_reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// `assistant`.
    pub role: String,
    /// Null when the answer is tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallObject>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallObject {
    /// `call_` and 24 characters.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: String,
    pub function: CalledFunctionObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CalledFunctionObject {
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// `logprobs` of a chat choice (or of a streamed chunk's choice).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<TokenLogprobObject>,
    pub refusal: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenLogprobObject {
    pub token: String,
    /// -9999 for a token the model rules out.
    pub logprob: f64,
    /// The token's UTF-8 bytes.
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobObject>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TopLogprobObject {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

/// A text completion that was not streamed.
#[derive(Debug, Serialize, ToSchema)]
pub struct Completion {
    pub id: String,
    /// `text_completion`.
    pub object: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: Option<String>,
    pub choices: Vec<CompletionChoice>,
    pub usage: UsageObject,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: String,
}

/// OpenAI's legacy log-probabilities of a text completion.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f64>,
    pub top_logprobs: Vec<HashMap<String, f64>>,
    pub text_offset: Vec<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageObject {
    /// A prompt shared by several choices (`n`) counts once.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from a slot's cache.
    pub cached_tokens: u64,
}

/// `POST /v1/embeddings`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingList {
    /// `list`.
    pub object: String,
    pub data: Vec<EmbeddingObject>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingObject {
    /// `embedding`.
    pub object: String,
    pub index: u32,
    pub embedding: EmbeddingVector,
}

/// The vector: floats, or their little-endian bytes in base64 (`encoding_format`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
}

/// One Server-Sent Event of a streamed answer: `data` is a chunk object as JSON (the
/// choices' deltas), an error object, or `[DONE]` at the end.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEvent {
    pub data: String,
    /// Absent (a plain `message`) for everything clients are sent.
    pub event: Option<String>,
}

/// `GET /health`: `status` is `ok`, `loading`, `shutting_down` or `unhealthy`; the rest
/// depends on the node's role.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    pub status: String,
}

// The routes' contract is written here rather than on the handlers: a router and a sidecar
// (built without the engine) serve the same routes through `proxy.rs` and the same
// document. These functions exist only to carry it.

/// Chat completions: messages through the model's chat template, with tools, JSON output,
/// several choices and log-probabilities.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "OpenAI",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The answer; with `stream: true`, Server-Sent Events of `chat.completion.chunk` objects, then `data: [DONE]`", content(
            (ChatCompletion = "application/json"),
            (StreamEvent = "text/event-stream"),
        )),
        GenerationErrors,
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn chat_completions() {}

/// Text completions: prompts as they are, without a chat template.
#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "OpenAI",
    request_body = CompletionRequest,
    responses(
        (status = 200, description = "The answer; with `stream: true`, Server-Sent Events of `text_completion` objects, then `data: [DONE]`", content(
            (Completion = "application/json"),
            (StreamEvent = "text/event-stream"),
        )),
        GenerationErrors,
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn completions() {}

/// Embeddings (a node started with `--embeddings`): mean-pooled, L2-normalised.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "OpenAI",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, description = "One vector per input, in order", body = EmbeddingList),
        GenerationErrors,
    ),
    security((), ("api_key" = []))
)]
#[allow(dead_code)]
fn embeddings() {}

/// The bearer key scheme (used when the node runs with `--api-key`).
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "LlamaNet node",
        description = "OpenAI-compatible inference API of a LlamaNet node (docs/api.md)."
    ),
    paths(
        chat_completions,
        completions,
        embeddings,
        super::models::list,
        super::models::get,
        super::health::health,
    ),
    components(schemas(
        ChatCompletionRequest,
        ChatMessage,
        MessageContent,
        ContentPart,
        CompletionRequest,
        PromptField,
        EmbeddingRequest,
        EmbeddingInput,
        GenerationFields,
        StopField,
        StreamOptions,
        ResponseFormat,
        JsonSchemaFormat,
        ErrorBody,
    )),
    modifiers(&BearerKey)
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serializes")
}

pub async fn serve() -> impl IntoResponse {
    static DOCUMENT: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    Json(
        DOCUMENT
            .get_or_init(|| serde_json::from_str(&document()).expect("valid JSON"))
            .clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_every_route_and_its_errors() {
        let doc: serde_json::Value = serde_json::from_str(&document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/models",
            "/v1/models/{id}",
            "/health",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let chat = &doc["paths"]["/v1/chat/completions"]["post"];
        assert_eq!(
            chat["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ChatCompletionRequest"
        );
        for status in ["200", "400", "401", "404", "413", "503"] {
            assert!(chat["responses"][status].is_object(), "chat {status}");
        }
        let request = &doc["components"]["schemas"]["ChatCompletionRequest"];
        assert!(
            request.to_string().contains("tool_choice"),
            "the request schema lists its fields"
        );
    }
}
