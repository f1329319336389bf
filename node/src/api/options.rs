//! The generation fields of a request, checked and turned into what the engine needs:
//! sampling settings, stop strings, a JSON schema to constrain the output, choices and
//! log-probabilities. Every refusal is a 400 that names its field and limit.

use serde_json::Value;

use super::error::ApiError;
use super::generation::Kind;
use super::types::{GenerationFields, ResponseFormat, StopField};
use crate::engine::{MAX_TOP_LOGPROBS, SamplingParams};

/// What the engine needs from the shared fields, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOptions {
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub sampling: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
    /// A JSON schema the output must follow (`response_format`, or a required tool call),
    /// as JSON text, still to be turned into a grammar.
    pub json_schema: Option<String>,
    /// Choices per prompt (`n`).
    pub n: usize,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

/// Most choices one request may ask for; the node's slot count may allow fewer.
pub const MAX_CHOICES: i64 = 16;

/// Most alternatives per token a text completion's `logprobs` may ask for (OpenAI's limit;
/// chat's `top_logprobs` goes to [`MAX_TOP_LOGPROBS`]).
pub const MAX_COMPLETION_LOGPROBS: i64 = 5;

/// Most stop strings accepted (OpenAI allows 4; a few more cost nothing).
const MAX_STOP_STRINGS: usize = 16;

/// Longest stop string, in bytes: the generated text's tail is matched against each one
/// on every token.
pub const MAX_STOP_BYTES: usize = 256;

/// Largest `response_format` JSON schema, in bytes of JSON.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

impl GenerationFields {
    /// Checks every field and converts it for the engine; `kind` decides what `logprobs`
    /// means (chat: a flag plus `top_logprobs`; text completions: the number of
    /// alternatives).
    pub fn validate(&self, kind: Kind) -> Result<GenerationOptions, ApiError> {
        let n = match self.n {
            None => 1,
            Some(n) if (1..=MAX_CHOICES).contains(&n) => n as usize,
            Some(n) => {
                return Err(ApiError::invalid_param(
                    "n",
                    format!("n must be between 1 and {MAX_CHOICES}, got {n}"),
                ));
            }
        };
        let logprobs = self.logprobs_for(kind)?;
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(value), _) => Some(positive("max_completion_tokens", value)?),
            (None, Some(value)) => Some(positive("max_tokens", value)?),
            (None, None) => None,
        };
        let temperature = within("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = within("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        let min_p = within("min_p", self.min_p, 0.0, 1.0, 0.0)?;
        let presence_penalty = within("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?;
        let frequency_penalty =
            within("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?;
        let top_k = match self.top_k {
            None => 0,
            Some(k) if (0..=i64::from(i32::MAX)).contains(&k) => k as i32,
            Some(k) => {
                return Err(ApiError::invalid_param(
                    "top_k",
                    format!("top_k must be 0 (off) or positive, got {k}"),
                ));
            }
        };
        // Any integer is a valid seed; only its low 32 bits reach llama.cpp.
        let seed = self.seed.map(|seed| seed as u32);
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopField::One(stop)) => vec![stop.clone()],
            Some(StopField::Many(stops)) => stops.clone(),
        };
        if stop.len() > MAX_STOP_STRINGS {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "at most {MAX_STOP_STRINGS} stop strings are allowed, got {}",
                    stop.len()
                ),
            ));
        }
        if let Some(long) = stop.iter().find(|stop| stop.len() > MAX_STOP_BYTES) {
            return Err(ApiError::invalid_param(
                "stop",
                format!(
                    "a stop string may have at most {MAX_STOP_BYTES} bytes, got one of {}",
                    long.len()
                ),
            ));
        }
        let mut logit_bias = Vec::new();
        for (key, &bias) in self.logit_bias.iter().flatten() {
            let token: i32 = key.trim().parse().map_err(|_| {
                ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias keys are token ids, got `{key}`"),
                )
            })?;
            if !(-100.0..=100.0).contains(&bias) {
                return Err(ApiError::invalid_param(
                    "logit_bias",
                    format!("logit_bias values must be between -100 and 100, got {bias}"),
                ));
            }
            // -100 bans a token outright, as OpenAI documents.
            let bias = if bias <= -100.0 {
                f32::NEG_INFINITY
            } else {
                bias as f32
            };
            logit_bias.push((llama_cpp_2::token::LlamaToken::new(token), bias));
        }
        let json_schema = match &self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(r#"{"type":"object"}"#.to_string()),
            Some(ResponseFormat::JsonSchema { json_schema }) => Some(
                json_schema
                    .schema
                    .as_ref()
                    .map_or_else(|| "{}".to_string(), Value::to_string),
            ),
        };
        if let Some(schema) = json_schema.as_ref().filter(|s| s.len() > MAX_SCHEMA_BYTES) {
            return Err(ApiError::invalid_param(
                "response_format",
                format!(
                    "the JSON schema may have at most {MAX_SCHEMA_BYTES} bytes, got {}",
                    schema.len()
                ),
            ));
        }
        Ok(GenerationOptions {
            max_tokens,
            stop,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k,
                min_p,
                seed,
                presence_penalty,
                frequency_penalty,
                logit_bias,
                grammar: None,
            },
            stream: self.stream,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|options| options.include_usage),
            json_schema,
            n,
            logprobs,
        })
    }

    /// `logprobs` and `top_logprobs` as the engine's number of alternatives per token.
    fn logprobs_for(&self, kind: Kind) -> Result<Option<usize>, ApiError> {
        let logprobs = self.logprobs.as_ref().filter(|value| !value.is_null());
        match kind {
            Kind::Chat => {
                let wanted = match logprobs {
                    None => false,
                    Some(Value::Bool(wanted)) => *wanted,
                    Some(other) => {
                        return Err(ApiError::invalid_param(
                            "logprobs",
                            format!(
                                "logprobs must be true or false in chat completions, got {other}; \
                                 ask for alternatives with top_logprobs"
                            ),
                        ));
                    }
                };
                let top = match self.top_logprobs {
                    None => 0,
                    Some(top) if (0..=MAX_TOP_LOGPROBS as i64).contains(&top) => top as usize,
                    Some(top) => {
                        return Err(ApiError::invalid_param(
                            "top_logprobs",
                            format!(
                                "top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {top}"
                            ),
                        ));
                    }
                };
                if self.top_logprobs.is_some() && !wanted {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        "top_logprobs needs logprobs: true",
                    ));
                }
                Ok(wanted.then_some(top))
            }
            Kind::Completion => {
                if self.top_logprobs.is_some() {
                    return Err(ApiError::invalid_param(
                        "top_logprobs",
                        "text completions take the number of alternatives in logprobs \
                         (an integer), not top_logprobs",
                    ));
                }
                match logprobs {
                    None => Ok(None),
                    Some(value) => match value.as_i64() {
                        Some(top) if (0..=MAX_COMPLETION_LOGPROBS).contains(&top) => {
                            Ok(Some(top as usize))
                        }
                        _ => Err(ApiError::invalid_param(
                            "logprobs",
                            format!(
                                "logprobs must be an integer between 0 and \
                                 {MAX_COMPLETION_LOGPROBS} in text completions, got {value}"
                            ),
                        )),
                    },
                }
            }
        }
    }
}

fn positive(param: &str, value: i64) -> Result<usize, ApiError> {
    usize::try_from(value)
        .ok()
        .filter(|&value| value >= 1)
        .ok_or_else(|| {
            ApiError::invalid_param(param, format!("{param} must be at least 1, got {value}"))
        })
}

fn within(
    param: &str,
    value: Option<f64>,
    min: f64,
    max: f64,
    default: f64,
) -> Result<f32, ApiError> {
    match value {
        None => Ok(default as f32),
        Some(value) if value.is_finite() && (min..=max).contains(&value) => Ok(value as f32),
        Some(value) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be between {min} and {max}, got {value}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: Value) -> GenerationFields {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_follow_openai() {
        let options = fields(serde_json::json!({})).validate(Kind::Chat).unwrap();
        assert_eq!(options.max_tokens, None);
        assert_eq!(options.sampling.temperature, 1.0);
        assert!(!options.stream);
    }

    #[test]
    fn bad_values_are_refused_with_their_param() {
        for (json, param) in [
            (serde_json::json!({"max_tokens": -1}), "max_tokens"),
            (serde_json::json!({"max_tokens": 0}), "max_tokens"),
            (serde_json::json!({"temperature": 2.5}), "temperature"),
            (serde_json::json!({"top_p": 1.5}), "top_p"),
            (serde_json::json!({"n": 0}), "n"),
            (serde_json::json!({"n": 17}), "n"),
            (serde_json::json!({"logprobs": 3}), "logprobs"),
            (serde_json::json!({"top_logprobs": 2}), "top_logprobs"),
            (
                serde_json::json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (serde_json::json!({"logit_bias": {"abc": 1}}), "logit_bias"),
            (serde_json::json!({"stop": "x".repeat(257)}), "stop"),
            (serde_json::json!({"stop": vec!["a"; 17]}), "stop"),
            (
                serde_json::json!({"response_format": {"type": "json_schema", "json_schema": {
                    "name": "big", "schema": {"description": "x".repeat(MAX_SCHEMA_BYTES)}}}}),
                "response_format",
            ),
            (serde_json::json!({"logit_bias": {"5": 200}}), "logit_bias"),
            (
                serde_json::json!({"presence_penalty": 3}),
                "presence_penalty",
            ),
        ] {
            let err = fields(json.clone()).validate(Kind::Chat).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
            assert_eq!(err.status, 400);
        }
    }

    #[test]
    fn logprobs_mean_a_flag_in_chat_and_a_count_in_completions() {
        let chat = |json| fields(json).validate(Kind::Chat);
        let completion = |json| fields(json).validate(Kind::Completion);
        let top = |json| chat(json).unwrap().logprobs;
        assert_eq!(top(serde_json::json!({})), None);
        assert_eq!(top(serde_json::json!({"logprobs": false})), None);
        assert_eq!(top(serde_json::json!({"logprobs": true})), Some(0));
        assert_eq!(
            top(serde_json::json!({"logprobs": true, "top_logprobs": 20})),
            Some(20)
        );
        let n = chat(serde_json::json!({"n": 3})).unwrap().n;
        assert_eq!(n, 3);
        let completion_top = completion(serde_json::json!({"logprobs": 5}))
            .unwrap()
            .logprobs;
        assert_eq!(completion_top, Some(5));
        for (json, param) in [
            (serde_json::json!({"logprobs": 6}), "logprobs"),
            (serde_json::json!({"logprobs": true}), "logprobs"),
            (serde_json::json!({"logprobs": -1}), "logprobs"),
            (serde_json::json!({"top_logprobs": 1}), "top_logprobs"),
        ] {
            let err = completion(json.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(param), "{json}");
        }
    }

    #[test]
    fn max_completion_tokens_wins_and_stop_accepts_both_shapes() {
        let options = fields(serde_json::json!({
            "max_tokens": 5, "max_completion_tokens": 7, "stop": "x"
        }))
        .validate(Kind::Chat)
        .unwrap();
        assert_eq!(options.max_tokens, Some(7));
        assert_eq!(options.stop, vec!["x".to_string()]);
        let options = fields(serde_json::json!({"stop": ["a", "b"]}))
            .validate(Kind::Chat)
            .unwrap();
        assert_eq!(options.stop.len(), 2);
    }

    #[test]
    fn response_formats_become_schemas() {
        let options = fields(serde_json::json!({"response_format": {"type": "json_object"}}))
            .validate(Kind::Chat)
            .unwrap();
        assert_eq!(options.json_schema.as_deref(), Some(r#"{"type":"object"}"#));
        let options = fields(serde_json::json!({"response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "integer"}}
        }}))
        .validate(Kind::Chat)
        .unwrap();
        assert_eq!(
            options.json_schema.as_deref(),
            Some(r#"{"type":"integer"}"#)
        );
    }
}
