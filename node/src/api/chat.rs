//! `POST /v1/chat/completions`: messages rendered through the chat template, then
//! generated like any other prompt (see `generation.rs`). Tools are declared to the model
//! and its calls read back as `tool_calls` (see `tools.rs`).

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::json;

use super::error::ApiError;
use super::generation::{self, Arrival, Kind, Relayed, Shape};
use super::template::{ChatTemplate, TemplateMessage};
use super::tools::Tools;
use super::types::{ChatCompletionRequest, ChatMessage};
use super::{AppState, OpenAiJson};

const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Chat completions: messages through the model's chat template, with tools, JSON output,
/// several choices and log-probabilities.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    OpenAiJson(request): OpenAiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let loaded = state.ready()?;
    let arrival = Arrival {
        received,
        on_its_way: loaded.engine.arriving(),
    };
    state.check_model(&request.model)?;
    let mut options = request.fields.validate(Kind::Chat)?;
    let tools = Tools::from_request(
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
        request.parallel_tool_calls,
    )?;
    if let Some(schema) = tools.as_ref().and_then(Tools::required_schema) {
        if options.json_schema.is_some() {
            return Err(ApiError::invalid_param(
                "response_format",
                "a JSON response_format cannot be combined with a required tool call",
            ));
        }
        options.json_schema = Some(schema);
    }
    if tools.is_some() && options.stream && options.n > 1 {
        return Err(ApiError::invalid_param(
            "n",
            "streamed answers that may call tools have one choice; ask for n > 1 without \
             streaming",
        ));
    }
    let relayed = Relayed::from_headers(&headers)?;
    if tools.is_some() && relayed.resume.is_some() {
        return Err(ApiError::resume_rejected(
            "streams that may call tools are not continued",
        ));
    }
    let resume = relayed.check_resume(&options, options.n, &loaded.engine.info().fingerprint)?;
    let rendering = (state.clone(), request.messages, tools.clone());
    let prompt = state
        .prepare(move || {
            let (state, history, tools) = rendering;
            let loaded = state.ready()?;
            let messages = template_messages(&history, &loaded.template, tools.as_ref())?;
            let tool_values = tools
                .as_ref()
                .filter(|_| loaded.template.supports_tools())
                .map(Tools::template_value);
            let prompt_text = loaded
                .template
                .render_with_tools(&messages, tool_values.as_deref(), true)
                .map_err(|err| ApiError::invalid_param("messages", err.to_string()))?;
            // A template that writes the BOS token itself must not get a second one.
            let bos = loaded.template.bos_token();
            let add_bos = bos.is_empty() || !prompt_text.starts_with(bos);
            Ok(loaded.engine.tokenize(&prompt_text, add_bos))
        })
        .await?;
    let shape = Shape::new(Kind::Chat, &state.config.model_id, "/v1/chat/completions")
        .resumed(resume)
        .with_tools(tools);
    generation::run(
        &state,
        &loaded.engine,
        shape,
        vec![prompt],
        &options,
        &relayed,
        arrival,
    )
    .await
}

/// Checks the history and turns it into the template's messages. A template without tool
/// support gets the generic format: the tools' instructions as a system message, calls as
/// the envelope text, results as user turns.
fn template_messages(
    history: &[ChatMessage],
    template: &ChatTemplate,
    tools: Option<&Tools>,
) -> Result<Vec<TemplateMessage>, ApiError> {
    if history.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must hold at least one message",
        ));
    }
    let native = template.supports_tools();
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(tools) = tools.filter(|_| !native) {
        messages.push(TemplateMessage::new("system", tools.instructions()));
    }
    // Every call made so far: its id and function, which a tool message must answer.
    let mut calls: HashMap<&str, &str> = HashMap::new();
    for (index, message) in history.iter().enumerate() {
        let bad = |message: String| {
            ApiError::invalid_param("messages", format!("messages[{index}]: {message}"))
        };
        if !ROLES.contains(&message.role.as_str()) {
            return Err(bad(format!(
                "unknown message role `{}`; expected one of {}",
                message.role,
                ROLES.join(", ")
            )));
        }
        let mut content = match &message.content {
            Some(content) => content.text()?,
            None => String::new(),
        };
        // `developer` is OpenAI's newer name for `system`; templates know only the latter.
        let mut rendered = TemplateMessage::new(
            if message.role == "developer" {
                "system"
            } else {
                &message.role
            },
            "",
        );
        if let Some(made) = &message.tool_calls {
            if message.role != "assistant" {
                return Err(bad("only assistant messages carry tool_calls".into()));
            }
            for call in made {
                if call.id.is_empty() || call.kind.as_deref().is_some_and(|k| k != "function") {
                    return Err(bad("each tool call needs an id and type `function`".into()));
                }
                calls.insert(&call.id, &call.function.name);
            }
            if native {
                rendered.tool_calls = Some(
                    made.iter()
                        .map(|call| {
                            json!({
                                "id": call.id,
                                "type": "function",
                                "function": {
                                    "name": call.function.name,
                                    "arguments": call.function.arguments_value(),
                                },
                            })
                        })
                        .collect(),
                );
            } else {
                // Written by hand to keep `name` first, as the model is asked to write it.
                let envelope: Vec<String> = made
                    .iter()
                    .map(|call| {
                        format!(
                            r#"{{"name":{},"arguments":{}}}"#,
                            serde_json::Value::from(call.function.name.as_str()),
                            call.function.arguments_value()
                        )
                    })
                    .collect();
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&format!(r#"{{"tool_calls":[{}]}}"#, envelope.join(",")));
            }
        }
        if message.role == "tool" {
            let Some(id) = message.tool_call_id.as_deref() else {
                return Err(bad(
                    "a tool message needs the tool_call_id of the call it answers".into(),
                ));
            };
            let Some(&function) = calls.get(id) else {
                return Err(bad(format!(
                    "tool_call_id `{id}` answers no call made by an earlier assistant message"
                )));
            };
            if native {
                rendered.tool_call_id = Some(id.to_string());
                rendered.name = Some(function.to_string());
            } else {
                rendered.role = "user".to_string();
                content = format!("Result of {function} (call {id}):\n{content}");
            }
        }
        rendered.content = content;
        messages.push(rendered);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::template::GEMMA_TEMPLATE;
    use crate::api::types::ToolField;

    fn history(value: serde_json::Value) -> Vec<ChatMessage> {
        serde_json::from_value(value).unwrap()
    }

    fn error(result: Result<Vec<TemplateMessage>, ApiError>) -> String {
        result.unwrap_err().body()["error"]["message"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_generic_format_renders_tools_calls_and_results_for_gemma() {
        let template = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let declared: Vec<ToolField> = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "get_time", "description": "Now"}}
        ]))
        .unwrap();
        let tools = Tools::from_request(Some(&declared), None, None)
            .unwrap()
            .unwrap();
        let messages = template_messages(
            &history(json!([
                {"role": "user", "content": "Time?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_time", "arguments": "{\"tz\":\"UTC\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}
            ])),
            &template,
            Some(&tools),
        )
        .unwrap();
        let text = template.render(&messages, true).unwrap();
        assert!(text.contains("- get_time: Now"), "{text}");
        assert!(
            text.contains(
                "<start_of_turn>model\n{\"tool_calls\":[{\"name\":\"get_time\",\"arguments\":{\"tz\":\"UTC\"}}]}<end_of_turn>"
            ),
            "{text}"
        );
        assert!(
            text.contains("<start_of_turn>user\nResult of get_time (call call_1):\n12:00"),
            "{text}"
        );
    }

    #[test]
    fn tool_messages_must_answer_an_earlier_call() {
        let template = ChatTemplate::new(GEMMA_TEMPLATE, "", "").unwrap();
        let err = error(template_messages(
            &history(json!([
                {"role": "user", "content": "Hi"},
                {"role": "tool", "tool_call_id": "call_9", "content": "x"}
            ])),
            &template,
            None,
        ));
        assert!(err.contains("`call_9` answers no call"), "{err}");
        let err = error(template_messages(
            &history(json!([{"role": "tool", "content": "x"}])),
            &template,
            None,
        ));
        assert!(err.contains("needs the tool_call_id"), "{err}");
        let err = error(template_messages(
            &history(json!([{"role": "user", "content": "x", "tool_calls": [
                {"id": "c", "function": {"name": "f", "arguments": "{}"}}
            ]}])),
            &template,
            None,
        ));
        assert!(err.contains("only assistant messages"), "{err}");
        let err = error(template_messages(&[], &template, None));
        assert!(err.contains("at least one message"), "{err}");
    }
}
