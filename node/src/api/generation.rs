//! The part of chat and text completions that is the same for both: submitting prompts to
//! the engine, then either collecting the answers (one JSON response) or relaying them as
//! Server-Sent Events (`data: {chunk}` lines, then `data: [DONE]`). The two endpoints only
//! differ in how a choice looks, which [`Shape`] captures.
//!
//! Dropping the engine's receiver is how a request is cancelled: when the client
//! disconnects, axum drops the response stream, the receivers go with it, and the engine
//! frees the slots at its next step.

use std::convert::Infallible;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant as TokioInstant;

use super::AppState;
use super::error::ApiError;
use super::types::GenerationOptions;
use crate::engine::{Engine, FinishReason, GenerationEvent, GenerationRequest, Usage};

/// Which OpenAI object the choices belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Completion,
}

/// Response identity and the choice format.
#[derive(Debug, Clone)]
pub struct Shape {
    pub kind: Kind,
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: &'static str,
}

impl Shape {
    pub fn new(kind: Kind, model: &str, endpoint: &'static str) -> Self {
        let prefix = match kind {
            Kind::Chat => "chatcmpl",
            Kind::Completion => "cmpl",
        };
        Shape {
            kind,
            id: format!("{prefix}-{:032x}", rand::random::<u128>()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
            endpoint,
        }
    }

    fn object(&self, streamed: bool) -> &'static str {
        match (self.kind, streamed) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        }
    }

    fn envelope(&self, streamed: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(streamed),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": choices,
        })
    }

    fn full_choice(&self, index: usize, text: String, finish: FinishReason) -> Value {
        match self.kind {
            Kind::Chat => json!({
                "index": index,
                "message": {"role": "assistant", "content": text},
                "logprobs": Value::Null,
                "finish_reason": finish.as_str(),
            }),
            Kind::Completion => json!({
                "index": index,
                "text": text,
                "logprobs": Value::Null,
                "finish_reason": finish.as_str(),
            }),
        }
    }

    fn delta_choice(
        &self,
        index: usize,
        text: Option<&str>,
        finish: Option<FinishReason>,
    ) -> Value {
        let finish_reason = finish.map_or(Value::Null, |f| Value::from(f.as_str()));
        match self.kind {
            Kind::Chat => {
                let delta = match text {
                    Some(text) => json!({"content": text}),
                    None => json!({}),
                };
                json!({"index": index, "delta": delta, "logprobs": Value::Null, "finish_reason": finish_reason})
            }
            Kind::Completion => json!({
                "index": index,
                "text": text.unwrap_or(""),
                "logprobs": Value::Null,
                "finish_reason": finish_reason,
            }),
        }
    }

    fn role_chunk(&self, index: usize) -> Value {
        self.envelope(
            true,
            vec![json!({
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": Value::Null,
                "finish_reason": Value::Null,
            })],
        )
    }
}

/// Usage summed over choices, in OpenAI's shape.
fn usage_json(usage: &[Usage]) -> Value {
    let prompt: usize = usage.iter().map(|u| u.prompt_tokens).sum();
    let completion: usize = usage.iter().map(|u| u.completion_tokens).sum();
    let cached: usize = usage.iter().map(|u| u.cached_tokens).sum();
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Builds the engine requests (one per prompt) from checked options, turning a JSON
/// schema into a grammar.
pub fn requests(
    prompts: Vec<Vec<llama_cpp_2::token::LlamaToken>>,
    options: &GenerationOptions,
) -> Result<Vec<GenerationRequest>, ApiError> {
    let mut sampling = options.sampling.clone();
    if let Some(schema) = &options.json_schema {
        let grammar = llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|err| {
            ApiError::invalid_param(
                "response_format",
                format!("the JSON schema cannot be turned into a grammar: {err}"),
            )
        })?;
        sampling.grammar = Some(grammar);
    }
    Ok(prompts
        .into_iter()
        .map(|prompt| GenerationRequest {
            prompt,
            max_tokens: options.max_tokens,
            stop: options.stop.clone(),
            sampling: sampling.clone(),
        })
        .collect())
}

/// Submits every request; if one is refused, the ones already queued are cancelled (their
/// receivers dropped) and the refusal is the answer.
fn submit(
    engine: &Engine,
    requests: Vec<GenerationRequest>,
) -> Result<Vec<UnboundedReceiver<GenerationEvent>>, ApiError> {
    requests
        .into_iter()
        .map(|request| engine.submit(request).map_err(ApiError::from))
        .collect()
}

/// Runs the requests and answers with one JSON response or an SSE stream.
pub async fn respond(
    state: &AppState,
    engine: &Engine,
    shape: Shape,
    requests: Vec<GenerationRequest>,
    options: &GenerationOptions,
    received: Instant,
) -> Result<Response, ApiError> {
    let receivers = submit(engine, requests)?;
    let deadline = TokioInstant::from_std(received + state.config.request_timeout);
    if options.stream {
        let events = stream_events(
            state.clone(),
            shape,
            receivers,
            options.include_usage,
            received,
            deadline,
        );
        return Ok(Sse::new(events).into_response());
    }
    let mut choices = Vec::new();
    let mut usages = Vec::new();
    let mut first_seen = false;
    for (index, mut receiver) in receivers.into_iter().enumerate() {
        let mut text = String::new();
        loop {
            let event = tokio::time::timeout_at(deadline, receiver.recv())
                .await
                .map_err(|_| ApiError::timeout(state.config.request_timeout.as_secs()))?;
            match event {
                Some(GenerationEvent::Text(piece)) => {
                    if !first_seen {
                        first_seen = true;
                        state
                            .metrics
                            .time_to_first_token
                            .observe(received.elapsed().as_secs_f64());
                    }
                    text.push_str(&piece);
                }
                Some(GenerationEvent::Done {
                    finish_reason,
                    usage,
                }) => {
                    record_usage(state, &usage);
                    choices.push(shape.full_choice(
                        index,
                        std::mem::take(&mut text),
                        finish_reason,
                    ));
                    usages.push(usage);
                    break;
                }
                Some(GenerationEvent::Failed(message)) => return Err(ApiError::internal(message)),
                None => return Err(ApiError::internal("the engine dropped the request")),
            }
        }
    }
    let mut body = shape.envelope(false, choices);
    body["usage"] = usage_json(&usages);
    Ok(Json(body).into_response())
}

fn record_usage(state: &AppState, usage: &Usage) {
    let metrics = &state.metrics;
    metrics.prompt_tokens.inc_by(usage.prompt_tokens as u64);
    metrics
        .cached_prompt_tokens
        .inc_by(usage.cached_tokens as u64);
    metrics
        .generated_tokens
        .inc_by(usage.completion_tokens as u64);
}

/// The SSE stream: a role chunk per choice (chat), text chunks as they come, a final chunk
/// with each choice's finish_reason, the usage chunk if asked for, then `[DONE]`.
fn stream_events(
    state: AppState,
    shape: Shape,
    receivers: Vec<UnboundedReceiver<GenerationEvent>>,
    include_usage: bool,
    received: Instant,
    deadline: TokioInstant,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let choices = receivers.len();
    let merged = stream::select_all(receivers.into_iter().enumerate().map(|(index, receiver)| {
        stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|event| (event, receiver))
        })
        .map(move |event| (index, event))
        .boxed()
    }));
    let opening: Vec<Value> = match shape.kind {
        Kind::Chat => (0..choices).map(|index| shape.role_chunk(index)).collect(),
        Kind::Completion => Vec::new(),
    };
    struct Relay<S> {
        merged: S,
        state: AppState,
        shape: Shape,
        usages: Vec<Usage>,
        finished: usize,
        choices: usize,
        first_seen: bool,
        done: bool,
    }
    let relay = Relay {
        merged,
        state,
        shape,
        usages: Vec::new(),
        finished: 0,
        choices,
        first_seen: false,
        done: false,
    };
    let body = stream::unfold(relay, move |mut relay| async move {
        if relay.done {
            return None;
        }
        if relay.finished == relay.choices {
            relay.done = true;
            let metrics = &relay.state.metrics;
            metrics.observe_duration(relay.shape.endpoint, received.elapsed().as_secs_f64());
            let mut events = Vec::new();
            if include_usage {
                let mut chunk = relay.shape.envelope(true, Vec::new());
                chunk["usage"] = usage_json(&relay.usages);
                events.push(chunk.to_string());
            }
            events.push("[DONE]".to_string());
            return Some((events, relay));
        }
        let next = tokio::time::timeout_at(deadline, relay.merged.next()).await;
        let (index, event) = match next {
            Ok(Some(item)) => item,
            Ok(None) => {
                relay.done = true;
                let err = ApiError::internal("the engine dropped the request");
                return Some((vec![err.body().to_string(), "[DONE]".to_string()], relay));
            }
            Err(_) => {
                relay.done = true;
                let err = ApiError::timeout(relay.state.config.request_timeout.as_secs());
                return Some((vec![err.body().to_string(), "[DONE]".to_string()], relay));
            }
        };
        let chunk = match event {
            GenerationEvent::Text(text) => {
                if !relay.first_seen {
                    relay.first_seen = true;
                    relay
                        .state
                        .metrics
                        .time_to_first_token
                        .observe(received.elapsed().as_secs_f64());
                }
                let choice = relay.shape.delta_choice(index, Some(&text), None);
                relay.shape.envelope(true, vec![choice])
            }
            GenerationEvent::Done {
                finish_reason,
                usage,
            } => {
                record_usage(&relay.state, &usage);
                relay.usages.push(usage);
                relay.finished += 1;
                let choice = relay.shape.delta_choice(index, None, Some(finish_reason));
                relay.shape.envelope(true, vec![choice])
            }
            GenerationEvent::Failed(message) => {
                relay.done = true;
                let err = ApiError::internal(message);
                return Some((vec![err.body().to_string(), "[DONE]".to_string()], relay));
            }
        };
        Some((vec![chunk.to_string()], relay))
    });
    stream::iter(opening.into_iter().map(|chunk| vec![chunk.to_string()]))
        .chain(body)
        .flat_map(|lines| {
            stream::iter(
                lines
                    .into_iter()
                    .map(|line| Ok(Event::default().data(line))),
            )
        })
}
