//! Tool calling, as OpenAI specifies it: `tools`, `tool_choice`, `parallel_tool_calls` in,
//! `message.tool_calls` and `finish_reason: "tool_calls"` out, streamed as `delta.tool_calls`.
//!
//! The model is told about the tools through its chat template: a template that renders
//! `tools` itself (Hugging Face templates of tool-trained models do) gets them as OpenAI
//! sends them; any other template (the default Gemma file's built-in one among them) gets
//! the **generic format** instead, a system instruction that lists the functions and asks
//! for one JSON object as the whole answer:
//!
//! ```json
//! {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
//! ```
//!
//! With `tool_choice: "required"` or a named function, generation is constrained by a
//! grammar built from that envelope and the functions' own JSON schemas, so the answer is a
//! call and its arguments always parse and follow their schema. With `"auto"` the model
//! chooses; its answer is read as calls when it is the generic envelope, Hermes-style
//! `<tool_call>{…}</tool_call>` blocks, or a bare `{"name": …, "arguments": …}` naming a
//! declared function, and as text otherwise.
//!
//! Streams: under a grammar the envelope is read as it grows, so a call's id and name go out
//! as soon as the name is complete and its arguments follow fragment by fragment, as OpenAI
//! streams them. Under `"auto"`, an answer whose first character could open a call (`{`,
//! `<`, a code fence) is held until it ends and then sent as calls or as text; any other
//! answer streams as text from its first token.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::error::ApiError;
use super::types::{ToolChoiceField, ToolField};

/// OpenAI's own limit on functions per request.
pub const MAX_TOOLS: usize = 128;
/// The tools' JSON, which becomes prompt text and a grammar: a bound on both.
pub const MAX_TOOLS_BYTES: usize = 64 * 1024;
/// Most calls in one constrained answer. Small models, held to the envelope, tend to
/// repeat calls until `max_tokens`; the grammar closes the list after this many.
pub const MAX_PARALLEL_CALLS: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    Required,
    Named(String),
}

/// A declared function, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

/// The tools of a request that may call them (`tool_choice` is not `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
    pub parallel: bool,
}

/// A call the model made, ready for `message.tool_calls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

impl ToolCall {
    fn new(name: String, arguments: String) -> Self {
        ToolCall {
            id: call_id(),
            name,
            arguments,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

/// `call_` and 24 random letters and digits, like OpenAI's ids.
fn call_id() -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    let suffix: String = rand::thread_rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{suffix}")
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Tools {
    /// Checks `tools`, `tool_choice` and `parallel_tool_calls`. `Ok(None)` when the model
    /// may not call anything: no tools, or `tool_choice: "none"`.
    pub fn from_request(
        tools: Option<&[ToolField]>,
        choice: Option<&ToolChoiceField>,
        parallel: Option<bool>,
    ) -> Result<Option<Tools>, ApiError> {
        let declared = tools.unwrap_or_default();
        if declared.len() > MAX_TOOLS {
            return Err(ApiError::invalid_param(
                "tools",
                format!(
                    "at most {MAX_TOOLS} tools per request, got {}",
                    declared.len()
                ),
            ));
        }
        let mut functions = Vec::with_capacity(declared.len());
        let mut names = HashSet::new();
        let mut bytes = 0;
        for (index, tool) in declared.iter().enumerate() {
            let param = format!("tools[{index}]");
            if tool.kind != "function" {
                return Err(ApiError::invalid_param(
                    &param,
                    format!(
                        "tool type `{}` is not supported; the only type is `function`",
                        tool.kind
                    ),
                ));
            }
            let Some(function) = &tool.function else {
                return Err(ApiError::invalid_param(
                    &param,
                    "a tool of type `function` needs its `function` object",
                ));
            };
            if !valid_name(&function.name) {
                return Err(ApiError::invalid_param(
                    &format!("{param}.function.name"),
                    format!(
                        "function name {:?} must be 1 to 64 letters, digits, `_` or `-`",
                        function.name
                    ),
                ));
            }
            if !names.insert(function.name.as_str()) {
                return Err(ApiError::invalid_param(
                    &format!("{param}.function.name"),
                    format!("function `{}` is declared twice", function.name),
                ));
            }
            let parameters = match &function.parameters {
                None => json!({"type": "object", "properties": {}}),
                Some(Value::Object(schema)) => {
                    match schema.get("type") {
                        None => {}
                        Some(Value::String(kind)) if kind == "object" => {}
                        Some(other) => {
                            return Err(ApiError::invalid_param(
                                &format!("{param}.function.parameters"),
                                format!(
                                    "the parameters of `{}` must be a JSON schema of type \
                                     `object`, not {other}",
                                    function.name
                                ),
                            ));
                        }
                    }
                    Value::Object(schema.clone())
                }
                Some(other) => {
                    return Err(ApiError::invalid_param(
                        &format!("{param}.function.parameters"),
                        format!(
                            "the parameters of `{}` must be a JSON schema object, not {other}",
                            function.name
                        ),
                    ));
                }
            };
            bytes += function.name.len()
                + function.description.as_ref().map_or(0, String::len)
                + parameters.to_string().len();
            if bytes > MAX_TOOLS_BYTES {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!(
                        "the tools' names, descriptions and schemas exceed {MAX_TOOLS_BYTES} bytes"
                    ),
                ));
            }
            functions.push(Function {
                name: function.name.clone(),
                description: function.description.clone(),
                parameters,
            });
        }
        let choice = match choice {
            None => ToolChoice::Auto,
            Some(ToolChoiceField::Mode(mode)) => match mode.as_str() {
                "none" => return Ok(None),
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!(
                            "tool_choice must be `none`, `auto`, `required` or a named \
                             function, not {other:?}"
                        ),
                    ));
                }
            },
            Some(ToolChoiceField::Named { kind, function }) => {
                if kind != "function" {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!("tool_choice type must be `function`, not {kind:?}"),
                    ));
                }
                if !names.contains(function.name.as_str()) {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!(
                            "tool_choice names function `{}`, which is not among the tools",
                            function.name
                        ),
                    ));
                }
                ToolChoice::Named(function.name.clone())
            }
        };
        if functions.is_empty() {
            return match choice {
                ToolChoice::Auto => Ok(None),
                _ => Err(ApiError::invalid_param(
                    "tool_choice",
                    "tool_choice asks for a call, but the request declares no tools",
                )),
            };
        }
        Ok(Some(Tools {
            functions,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }

    /// The tools as OpenAI sent them, for templates that render `tools` themselves.
    pub fn template_value(&self) -> Vec<Value> {
        self.functions
            .iter()
            .map(|f| {
                let mut function = json!({"name": f.name, "parameters": f.parameters});
                if let Some(description) = &f.description {
                    function["description"] = Value::from(description.as_str());
                }
                json!({"type": "function", "function": function})
            })
            .collect()
    }

    /// The generic format's system instruction, for templates without tool support.
    pub fn instructions(&self) -> String {
        let mut text = String::from(
            "You can call functions. To call, answer with only this JSON object and \
             nothing else:\n{\"tool_calls\": [{\"name\": \"<function name>\", \"arguments\": \
             {<arguments>}}]}\n",
        );
        match &self.choice {
            ToolChoice::Auto => {
                text.push_str("Call a function only when it helps; otherwise answer in text.\n")
            }
            ToolChoice::Required => text.push_str("You must call at least one function.\n"),
            ToolChoice::Named(name) => {
                text.push_str(&format!("You must call the function `{name}`.\n"))
            }
        }
        if !self.parallel {
            text.push_str("Call at most one function.\n");
        }
        text.push_str("Functions:\n");
        for f in &self.functions {
            text.push_str(&format!("- {}", f.name));
            if let Some(description) = &f.description {
                text.push_str(&format!(": {description}"));
            }
            text.push_str(&format!("\n  arguments (JSON schema): {}\n", f.parameters));
        }
        text
    }

    /// The JSON schema the answer must follow when a call is required: the generic envelope
    /// with one branch per callable function. Written out by hand so that `name` comes
    /// before `arguments` (llama.cpp keeps the schema's property order; serde_json's map
    /// would sort them), which lets a stream announce a call before its arguments.
    pub fn required_schema(&self) -> Option<String> {
        let callable: Vec<&Function> = match &self.choice {
            ToolChoice::Auto => return None,
            ToolChoice::Required => self.functions.iter().collect(),
            ToolChoice::Named(name) => self.functions.iter().filter(|f| &f.name == name).collect(),
        };
        let branches: Vec<String> = callable
            .iter()
            .map(|f| {
                format!(
                    r#"{{"type":"object","properties":{{"name":{{"const":{}}},"arguments":{}}},"required":["name","arguments"],"additionalProperties":false}}"#,
                    Value::from(f.name.as_str()),
                    f.parameters
                )
            })
            .collect();
        let most = if self.parallel { MAX_PARALLEL_CALLS } else { 1 };
        Some(format!(
            r#"{{"type":"object","properties":{{"tool_calls":{{"type":"array","minItems":1,"maxItems":{most},"items":{{"anyOf":[{}]}}}}}},"required":["tool_calls"],"additionalProperties":false}}"#,
            branches.join(",")
        ))
    }

    fn declares(&self, name: &str) -> bool {
        match &self.choice {
            ToolChoice::Named(only) => only == name,
            _ => self.functions.iter().any(|f| f.name == name),
        }
    }

    /// The calls in a finished answer, or `None` when it is text. Calls must name declared
    /// functions and carry object arguments; with `parallel_tool_calls: false` only the
    /// first is kept.
    pub fn parse(&self, text: &str) -> Option<Vec<ToolCall>> {
        let mut found = envelope_calls(text)
            .or_else(|| tagged_calls(text))
            .or_else(|| bare_calls(text))?;
        if found.is_empty()
            || !found.iter().all(|(name, arguments)| {
                self.declares(name)
                    && serde_json::from_str::<Value>(arguments).is_ok_and(|v| v.is_object())
            })
        {
            return None;
        }
        if !self.parallel {
            found.truncate(1);
        }
        Some(
            found
                .into_iter()
                .map(|(name, arguments)| ToolCall::new(name, arguments))
                .collect(),
        )
    }
}

/// The text between a leading code fence (```json) and its end, or the text itself.
fn unfenced(text: &str) -> &str {
    let trimmed = text.trim();
    let Some(rest) = trimmed.strip_prefix("```") else {
        return trimmed;
    };
    let body = rest.split_once('\n').map_or("", |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

/// The generic envelope, read with [`scan_envelope`] so the arguments are the model's own
/// text, exactly what a stream of the same answer sends.
fn envelope_calls(text: &str) -> Option<Vec<(String, String)>> {
    let body = unfenced(text);
    let whole: Value = serde_json::from_str(body).ok()?;
    whole.get("tool_calls")?.as_array()?;
    scan_envelope(body)
        .into_iter()
        .map(|call| match call {
            PartialCall {
                name: Some(name),
                arguments,
                complete: true,
            } => Some((name, arguments)),
            _ => None,
        })
        .collect()
}

/// Hermes-style `<tool_call>{"name": …, "arguments": …}</tool_call>` blocks.
fn tagged_calls(text: &str) -> Option<Vec<(String, String)>> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(OPEN) {
        let after = &rest[start + OPEN.len()..];
        let end = after.find(CLOSE)?;
        calls.push(named_call(
            &serde_json::from_str(after[..end].trim()).ok()?,
        )?);
        rest = &after[end + CLOSE.len()..];
    }
    (!calls.is_empty()).then_some(calls)
}

/// A bare `{"name": …, "arguments": …}` (or `parameters`, as Llama 3.1 writes), or an
/// array of them.
fn bare_calls(text: &str) -> Option<Vec<(String, String)>> {
    match serde_json::from_str(unfenced(text)).ok()? {
        Value::Array(items) => items.iter().map(named_call).collect(),
        object @ Value::Object(_) => Some(vec![named_call(&object)?]),
        _ => None,
    }
}

fn named_call(value: &Value) -> Option<(String, String)> {
    let name = value.get("name")?.as_str()?.to_string();
    let arguments = value.get("arguments").or_else(|| value.get("parameters"))?;
    let arguments = match arguments {
        // Some models write the arguments as a JSON string, as OpenAI's field holds them.
        Value::String(text) => serde_json::from_str::<Value>(text).ok()?,
        other => other.clone(),
    };
    Some((name, arguments.to_string()))
}

/// One call of the envelope as far as it has been written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PartialCall {
    /// Known once its string is complete.
    name: Option<String>,
    /// The arguments' text so far, exactly as written.
    arguments: String,
    /// The arguments' value has ended.
    complete: bool,
}

/// Reads `{"tool_calls": [{"name": …, "arguments": {…}}, …]}` however far it has been
/// written: the calls begun, each one's name once complete and its arguments' text so far.
/// Strings are followed with their escapes, so braces inside them do not count.
fn scan_envelope(text: &str) -> Vec<PartialCall> {
    // Depths: 1 inside the envelope, 2 inside the array, 3 inside a call, 4+ inside the
    // arguments.
    const CALL: usize = 3;
    let mut calls: Vec<PartialCall> = Vec::new();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut string_start = 0;
    let mut key: Option<&str> = None;
    let mut expecting_value = false;
    let mut arguments_start: Option<usize> = None;
    for (at, c) in text.char_indices() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                if depth == CALL && arguments_start.is_none() {
                    let raw = &text[string_start..at];
                    if expecting_value {
                        if key == Some("name")
                            && let Some(call) = calls.last_mut()
                        {
                            call.name = serde_json::from_str(&format!("\"{raw}\"")).ok();
                        }
                        expecting_value = false;
                    } else {
                        key = Some(raw);
                    }
                }
            }
            continue;
        }
        let value_starts = depth == CALL
            && expecting_value
            && key == Some("arguments")
            && arguments_start.is_none()
            && !c.is_whitespace();
        if value_starts {
            arguments_start = Some(at);
        }
        match c {
            '"' => {
                in_string = true;
                string_start = at + 1;
            }
            '{' | '[' => {
                if depth == CALL - 1 && c == '{' {
                    calls.push(PartialCall::default());
                    key = None;
                    expecting_value = false;
                }
                depth += 1;
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                if depth == CALL
                    && let Some(start) = arguments_start.take()
                    && let Some(call) = calls.last_mut()
                {
                    call.arguments = text[start..=at].to_string();
                    call.complete = true;
                    expecting_value = false;
                    key = None;
                }
            }
            ':' if depth == CALL && arguments_start.is_none() => expecting_value = true,
            ',' if depth == CALL => {
                expecting_value = false;
                key = None;
            }
            _ => {}
        }
    }
    if let Some(start) = arguments_start
        && let Some(call) = calls.last_mut()
    {
        call.arguments = text[start..].to_string();
    }
    calls
}

/// What a stream sends for the text the engine produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Content(String),
    /// A call begins: its index, id and name, with empty arguments.
    CallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More of a call's arguments.
    Arguments {
        index: usize,
        fragment: String,
    },
}

impl Delta {
    /// The chat chunk's `delta` object.
    pub fn to_json(&self) -> Value {
        match self {
            Delta::Content(text) => json!({"content": text}),
            Delta::CallStart { index, id, name } => json!({"tool_calls": [{
                "index": index,
                "id": id,
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}),
            Delta::Arguments { index, fragment } => json!({"tool_calls": [{
                "index": index,
                "function": {"arguments": fragment},
            }]}),
        }
    }
}

#[derive(Debug)]
enum Mode {
    /// Nothing but whitespace yet (`auto`).
    Undecided,
    /// Text: streamed as content.
    Prose,
    /// Might be a call (`auto`): held until the end.
    Held,
    /// Constrained to the envelope: calls streamed as they are written.
    Envelope { sent: Vec<(String, usize)> },
}

/// Turns a growing answer into stream deltas (see the module's documentation).
#[derive(Debug)]
pub struct CallStream {
    tools: Tools,
    text: String,
    mode: Mode,
}

impl CallStream {
    pub fn new(tools: Tools) -> Self {
        let mode = match tools.choice {
            ToolChoice::Auto => Mode::Undecided,
            _ => Mode::Envelope { sent: Vec::new() },
        };
        CallStream {
            tools,
            text: String::new(),
            mode,
        }
    }

    /// The deltas that `piece`, the next text of the answer, lets out.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        self.text.push_str(piece);
        if let Mode::Undecided = self.mode {
            match self.text.trim_start().chars().next() {
                None => return Vec::new(),
                Some('{' | '<' | '`' | '[') => self.mode = Mode::Held,
                Some(_) => {
                    self.mode = Mode::Prose;
                    return vec![Delta::Content(self.text.clone())];
                }
            }
        }
        match &mut self.mode {
            Mode::Prose => vec![Delta::Content(piece.to_string())],
            Mode::Envelope { sent } => envelope_deltas(&self.text, sent),
            Mode::Undecided | Mode::Held => Vec::new(),
        }
    }

    /// The last deltas once the answer is complete, and whether it was calls.
    pub fn finish(&mut self) -> (Vec<Delta>, bool) {
        match &mut self.mode {
            Mode::Undecided => (Vec::new(), false),
            Mode::Prose => (Vec::new(), false),
            Mode::Envelope { sent } => {
                let deltas = envelope_deltas(&self.text, sent);
                let called = self.tools.parse(&self.text).is_some();
                (deltas, called)
            }
            Mode::Held => match self.tools.parse(&self.text) {
                Some(calls) => {
                    let mut deltas = Vec::with_capacity(calls.len() * 2);
                    for (index, call) in calls.into_iter().enumerate() {
                        deltas.push(Delta::CallStart {
                            index,
                            id: call.id,
                            name: call.name,
                        });
                        deltas.push(Delta::Arguments {
                            index,
                            fragment: call.arguments,
                        });
                    }
                    (deltas, true)
                }
                None => (vec![Delta::Content(self.text.clone())], false),
            },
        }
    }
}

/// The deltas for what the envelope gained since `sent` (per call: id and arguments' bytes
/// already sent). A call is announced once its name is complete.
fn envelope_deltas(text: &str, sent: &mut Vec<(String, usize)>) -> Vec<Delta> {
    let mut deltas = Vec::new();
    for (index, call) in scan_envelope(text).into_iter().enumerate() {
        let Some(name) = call.name else { break };
        if index == sent.len() {
            let id = call_id();
            deltas.push(Delta::CallStart {
                index,
                id: id.clone(),
                name,
            });
            sent.push((id, 0));
        }
        let already = &mut sent[index].1;
        if call.arguments.len() > *already {
            deltas.push(Delta::Arguments {
                index,
                fragment: call.arguments[*already..].to_string(),
            });
            *already = call.arguments.len();
        }
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(choice: Option<Value>, parallel: Option<bool>) -> Result<Option<Tools>, ApiError> {
        let declared: Vec<ToolField> = serde_json::from_value(json!([
            {"type": "function", "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            }},
            {"type": "function", "function": {"name": "get_time"}}
        ]))
        .unwrap();
        let choice: Option<ToolChoiceField> = choice.map(|c| serde_json::from_value(c).unwrap());
        Tools::from_request(Some(&declared), choice.as_ref(), parallel)
    }

    fn message(err: ApiError) -> String {
        err.body()["error"]["message"].as_str().unwrap().to_string()
    }

    #[test]
    fn choices_are_read_and_none_turns_tools_off() {
        assert_eq!(tools(None, None).unwrap().unwrap().choice, ToolChoice::Auto);
        assert!(tools(Some(json!("none")), None).unwrap().is_none());
        assert_eq!(
            tools(Some(json!("required")), None)
                .unwrap()
                .unwrap()
                .choice,
            ToolChoice::Required
        );
        let named = json!({"type": "function", "function": {"name": "get_time"}});
        assert_eq!(
            tools(Some(named), Some(false)).unwrap().unwrap(),
            Tools {
                choice: ToolChoice::Named("get_time".into()),
                parallel: false,
                ..tools(None, None).unwrap().unwrap()
            }
        );
    }

    #[test]
    fn bad_tools_and_choices_are_400_naming_the_problem() {
        let unknown = json!({"type": "function", "function": {"name": "launch"}});
        let err = message(tools(Some(unknown), None).unwrap_err());
        assert!(
            err.contains("`launch`, which is not among the tools"),
            "{err}"
        );
        let err = message(tools(Some(json!("sometimes")), None).unwrap_err());
        assert!(err.contains("\"sometimes\""), "{err}");

        let check = |declared: Value| {
            let declared: Vec<ToolField> = serde_json::from_value(declared).unwrap();
            message(Tools::from_request(Some(&declared), None, None).unwrap_err())
        };
        let err =
            check(json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}]));
        assert!(err.contains("must be a JSON schema object"), "{err}");
        let err = check(
            json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]),
        );
        assert!(err.contains("of type `object`"), "{err}");
        let err = check(json!([{"type": "function", "function": {"name": "two words"}}]));
        assert!(err.contains("letters, digits"), "{err}");
        let err = check(json!([{"type": "retrieval"}]));
        assert!(err.contains("only type is `function`"), "{err}");
        let err = check(json!([{"type": "function", "function": {"name": "f"}},
                               {"type": "function", "function": {"name": "f"}}]));
        assert!(err.contains("declared twice"), "{err}");
        let huge = "x".repeat(MAX_TOOLS_BYTES);
        let err =
            check(json!([{"type": "function", "function": {"name": "f", "description": huge}}]));
        assert!(err.contains("exceed"), "{err}");

        let required: ToolChoiceField = serde_json::from_value(json!("required")).unwrap();
        let err = message(Tools::from_request(None, Some(&required), None).unwrap_err());
        assert!(err.contains("declares no tools"), "{err}");
        assert!(Tools::from_request(None, None, None).unwrap().is_none());
    }

    #[test]
    fn the_required_schema_names_before_arguments_and_parses() {
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let schema = tools(Some(named), Some(false))
            .unwrap()
            .unwrap()
            .required_schema()
            .unwrap();
        let value: Value = serde_json::from_str(&schema).unwrap();
        let branches = value["properties"]["tool_calls"]["items"]["anyOf"]
            .as_array()
            .unwrap();
        assert_eq!(branches.len(), 1, "only the named function");
        assert_eq!(value["properties"]["tool_calls"]["maxItems"], 1);
        assert!(schema.find("\"name\"").unwrap() < schema.find("\"arguments\"").unwrap());
        assert!(
            tools(None, None)
                .unwrap()
                .unwrap()
                .required_schema()
                .is_none()
        );
        let parallel = tools(Some(json!("required")), None).unwrap().unwrap();
        let value: Value = serde_json::from_str(&parallel.required_schema().unwrap()).unwrap();
        assert_eq!(
            value["properties"]["tool_calls"]["maxItems"],
            MAX_PARALLEL_CALLS
        );
        let branches = &value["properties"]["tool_calls"]["items"]["anyOf"];
        assert_eq!(branches.as_array().unwrap().len(), 2);
    }

    #[test]
    fn answers_are_read_as_calls_in_every_known_format() {
        let tools = tools(None, None).unwrap().unwrap();
        let names = |text: &str| {
            tools.parse(text).map(|calls| {
                calls
                    .into_iter()
                    .map(|c| (c.name, c.arguments))
                    .collect::<Vec<_>>()
            })
        };
        let envelope = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                           {"name": "get_time", "arguments": {}}]}"#;
        assert_eq!(
            names(envelope).unwrap(),
            [
                (
                    "get_weather".to_string(),
                    r#"{"city": "Paris"}"#.to_string()
                ),
                ("get_time".to_string(), "{}".to_string())
            ]
        );
        let fenced = format!("```json\n{envelope}\n```");
        assert_eq!(names(&fenced), names(envelope));
        let tagged = "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(names(tagged).unwrap()[0].0, "get_time");
        let llama = r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#;
        assert_eq!(names(llama).unwrap()[0].1, r#"{"city":"Oslo"}"#);
        // Not calls: prose, an undeclared function, arguments that are not an object,
        // a truncated envelope.
        assert_eq!(names("The weather is nice."), None);
        assert_eq!(names(r#"{"name": "rm_rf", "arguments": {}}"#), None);
        assert_eq!(names(r#"{"name": "get_time", "arguments": 3}"#), None);
        assert_eq!(names(&envelope[..40]), None);
    }

    #[test]
    fn without_parallel_calls_only_the_first_is_kept() {
        let single = tools(None, Some(false)).unwrap().unwrap();
        let text =
            r#"[{"name": "get_time", "arguments": {}}, {"name": "get_time", "arguments": {}}]"#;
        assert_eq!(single.parse(text).unwrap().len(), 1);
    }

    #[test]
    fn call_ids_are_unique_and_openai_shaped() {
        let (a, b) = (call_id(), call_id());
        assert_ne!(a, b);
        assert!(a.starts_with("call_") && a.len() == 29);
    }

    #[test]
    fn the_envelope_scanner_follows_strings_and_nesting() {
        let text = r#"{"tool_calls":[{"name":"a\"b","arguments":{"s":"}{","n":[1,{"x":2}]}},{"name":"c","argu"#;
        let calls = scan_envelope(text);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].name.as_deref(), Some("a\"b"));
        assert_eq!(calls[0].arguments, r#"{"s":"}{","n":[1,{"x":2}]}"#);
        assert!(calls[0].complete);
        assert_eq!(calls[1].name.as_deref(), Some("c"));
        assert!(!calls[1].complete && calls[1].arguments.is_empty());
    }

    /// A streamed envelope, token by token: one start per call, then argument fragments
    /// that add up to the arguments of the whole answer.
    #[test]
    fn a_constrained_stream_announces_each_call_then_its_arguments() {
        let required = json!("required");
        let mut stream = CallStream::new(tools(Some(required), None).unwrap().unwrap());
        let answer = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Par is"}}, {"name": "get_time", "arguments": {}}]}"#;
        let mut deltas = Vec::new();
        for piece in answer.as_bytes().chunks(3) {
            deltas.extend(stream.push(std::str::from_utf8(piece).unwrap()));
        }
        let (last, called) = stream.finish();
        deltas.extend(last);
        assert!(called);
        let starts: Vec<_> = deltas
            .iter()
            .filter_map(|d| match d {
                Delta::CallStart { index, name, .. } => Some((*index, name.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, [(0, "get_weather".into()), (1, "get_time".into())]);
        let arguments = |i: usize| -> String {
            deltas
                .iter()
                .filter_map(|d| match d {
                    Delta::Arguments { index, fragment } if *index == i => Some(fragment.as_str()),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(arguments(0), r#"{"city": "Par is"}"#);
        assert_eq!(arguments(1), "{}");
        assert!(
            deltas
                .iter()
                .filter(|d| matches!(d, Delta::Arguments { index: 0, .. }))
                .count()
                > 2,
            "arguments arrive in fragments, not at the end"
        );
        assert!(!deltas.iter().any(|d| matches!(d, Delta::Content(_))));
    }

    #[test]
    fn under_auto_prose_streams_and_a_possible_call_is_held() {
        let auto = || CallStream::new(tools(None, None).unwrap().unwrap());
        let mut prose = auto();
        assert_eq!(prose.push("  "), []);
        assert_eq!(prose.push("It is"), [Delta::Content("  It is".into())]);
        assert_eq!(prose.push(" sunny."), [Delta::Content(" sunny.".into())]);
        assert_eq!(prose.finish(), (vec![], false));

        let mut call = auto();
        assert_eq!(call.push("{\"name\": \"get_time\", "), []);
        assert_eq!(call.push("\"arguments\": {}}"), []);
        let (deltas, called) = call.finish();
        assert!(called);
        assert!(
            matches!(&deltas[0], Delta::CallStart { index: 0, name, .. } if name == "get_time")
        );
        assert_eq!(
            deltas[1],
            Delta::Arguments {
                index: 0,
                fragment: "{}".into()
            }
        );

        let mut braces = auto();
        braces.push("{not a call}");
        assert_eq!(
            braces.finish(),
            (vec![Delta::Content("{not a call}".into())], false)
        );
    }
}
