//! OpenAI request bodies, parsed leniently (unknown fields are ignored, as OpenAI does)
//! and then validated strictly (`options.rs`): every field this server reads is
//! range-checked, and a field it cannot honour (image parts, `echo`) is refused with a 400
//! rather than silently ignored. Numbers are parsed wide (`i64`, `f64`) so that a negative
//! or huge value gets a clear message instead of a serde type error.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::error::ApiError;

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

/// The sampling and limit fields shared by chat and text completions.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct GenerationFields {
    /// Most tokens to generate per choice (default: what the slot's context leaves).
    #[schema(minimum = 1)]
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens`; wins when both are given.
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<i64>,
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// 0 disables it.
    #[schema(minimum = 0)]
    pub top_k: Option<i64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_p: Option<f64>,
    /// Makes sampled output reproducible (its low 32 bits count).
    pub seed: Option<i64>,
    /// Up to 16 strings of up to 256 bytes.
    pub stop: Option<StopField>,
    /// Choices per prompt, at most the node's slot count.
    #[schema(minimum = 1, maximum = 16)]
    pub n: Option<i64>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f64>,
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f64>,
    /// Token id to a bias from -100 (banned) to 100.
    pub logit_bias: Option<HashMap<String, f64>>,
    /// Chat: `true` or `false`. Text completions: alternatives per token, 0 to 5.
    pub logprobs: Option<Value>,
    /// Chat only, with `logprobs: true`: alternatives per token.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// One chat message. `content` may be a string or an array of parts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessage {
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant's calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A tool message's answer is to this call.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ContentPart {
    /// Only `text` parts are read.
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub tools: Option<Vec<ToolField>>,
    #[serde(default)]
    pub tool_choice: Option<ToolChoiceField>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(flatten)]
    pub fields: GenerationFields,
}

/// `prompt`: a string or an array of strings (one choice each).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub fields: GenerationFields,
}

/// `input` of an embeddings request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    /// One text, or up to 256.
    pub input: EmbeddingInput,
    /// `float` (the default) or `base64`.
    #[serde(default)]
    #[schema(pattern = "^(float|base64)$")]
    pub encoding_format: Option<String>,
}

impl MessageContent {
    /// The message text: a string as is, text parts joined. Other parts are refused.
    pub fn text(&self) -> Result<String, ApiError> {
        match self {
            MessageContent::Text(text) => Ok(text.clone()),
            MessageContent::Parts(parts) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(piece)) => text.push_str(piece),
                        ("text", None) => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                "a text content part has no `text`",
                            ));
                        }
                        (other, _) => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                format!(
                                    "content parts of type `{other}` are not supported; only `text`"
                                ),
                            ));
                        }
                    }
                }
                Ok(text)
            }
        }
    }
}

// Tool calling's request fields (`tools.rs` reads them).

/// One entry of `tools`, as sent.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ToolField {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub function: Option<FunctionField>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct FunctionField {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub parameters: Option<Value>,
}

/// `tool_choice`: a mode, or one named function.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ToolChoiceField {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NamedFunction {
    pub name: String,
}

/// A call in an assistant message of the history.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub function: CalledFunction,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CalledFunction {
    pub name: String,
    /// A JSON text, as OpenAI sends it (an object is accepted too).
    #[serde(default)]
    pub arguments: Value,
}

impl CalledFunction {
    /// The arguments as a JSON value, for templates that print them: the text parsed when
    /// it is JSON, else the text itself.
    pub fn arguments_value(&self) -> Value {
        match &self.arguments {
            Value::String(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
            }
            Value::Null => json!({}),
            other => other.clone(),
        }
    }

    /// The arguments as the JSON text OpenAI's `arguments` field carries.
    pub fn arguments_text(&self) -> String {
        match &self.arguments {
            Value::String(text) => text.clone(),
            Value::Null => "{}".to_string(),
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_are_joined_and_images_refused() {
        let content: MessageContent = serde_json::from_value(serde_json::json!([
            {"type": "text", "text": "a"}, {"type": "text", "text": "b"}
        ]))
        .unwrap();
        assert_eq!(content.text().unwrap(), "ab");
        let content: MessageContent = serde_json::from_value(serde_json::json!([
            {"type": "image_url", "image_url": {"url": "x"}}
        ]))
        .unwrap();
        assert!(content.text().is_err());
    }
}
