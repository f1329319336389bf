//! Chat templates: turning OpenAI `messages` into the prompt text a model was trained on.
//!
//! The template is the model's own Jinja `tokenizer.chat_template` from its GGUF metadata,
//! rendered with minijinja and the variables Hugging Face templates expect (`messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`). GGUF files
//! converted without one (the default Gemma 3 270M file among them) get a built-in
//! template for their architecture's known turn format, or ChatML, or an explicit
//! `--chat-template` file. A few Python string methods that templates call
//! (`strip`, `startswith`, …) are provided because minijinja has no Python compatibility
//! layer of its own.

use minijinja::value::{Serde, Value, ValueKind, from_args};
use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

/// Gemma's turn format: system text is folded into the first user turn, the assistant
/// role is called `model`, and every turn ends with `<end_of_turn>`.
pub const GEMMA_TEMPLATE: &str = r#"{{- bos_token -}}
{%- set ns = namespace(system='', first=true) -%}
{%- for m in messages if m.role == 'system' -%}
{%- set ns.system = ns.system ~ (m.content | trim) ~ '\n\n' -%}
{%- endfor -%}
{%- for m in messages if m.role != 'system' -%}
{%- set role = 'model' if m.role == 'assistant' else 'user' -%}
{{- '<start_of_turn>' ~ role ~ '\n' -}}
{%- if ns.first and role == 'user' -%}{{- ns.system -}}{%- endif -%}
{{- (m.content | trim) ~ '<end_of_turn>\n' -}}
{%- set ns.first = false -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\n' -}}{%- endif -%}"#;

/// ChatML (`<|im_start|>role … <|im_end|>`), the most common format, for models whose
/// metadata names no template and whose architecture has no known one.
pub const CHATML_TEMPLATE: &str = r#"{%- for m in messages -%}
{{- '<|im_start|>' ~ m.role ~ '\n' ~ m.content ~ '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"#;

/// The built-in template for a GGUF `general.architecture` with no template of its own.
pub fn builtin_for(architecture: &str) -> &'static str {
    if architecture.starts_with("gemma") {
        GEMMA_TEMPLATE
    } else {
        CHATML_TEMPLATE
    }
}

/// One message as the template sees it: Hugging Face's message shape, with the tool
/// fields only where a message has them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
    /// An assistant's calls: `{id, type, function: {name, arguments}}`, the arguments as
    /// a JSON value (templates print them with `tojson`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A tool message's call, and the function it answers for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl TemplateMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
            ..TemplateMessage::default()
        }
    }
}

/// A compiled chat template with the model's special tokens.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template renders `tools` itself (tool-trained models' templates do).
    supports_tools: bool,
}

const NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported here, at start-up, not per request.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> Result<Value, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.set_unknown_method_callback(python_string_methods);
        env.add_template_owned(NAME, source.to_string())?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            supports_tools: source.contains("tools"),
        })
    }

    /// Whether the template renders `tools` and tool messages itself; if not, the chat
    /// endpoint uses the generic format (see `tools.rs`).
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// The prompt text for `messages`, ending with the assistant's turn opening when
    /// `add_generation_prompt` is set. Template errors (`raise_exception` included) are the
    /// request's fault: a 400.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String, RenderError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`render`](Self::render) with OpenAI's `tools` for templates that render them
    /// (`none` when there are none, as Hugging Face passes it).
    pub fn render_with_tools(
        &self,
        messages: &[TemplateMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, RenderError> {
        let template = self.env.get_template(NAME)?;
        template
            .render(minijinja::context! {
                messages => Value::from(Serde(messages)),
                tools => tools.map(|tools| Value::from(Serde(tools))),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(RenderError)
    }

    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
}

/// A chat template that failed on a request's messages.
#[derive(Debug, thiserror::Error)]
#[error("the chat template failed: {0}")]
pub struct RenderError(#[from] minijinja::Error);

/// `str.strip()` and friends, which Hugging Face templates use freely.
fn python_string_methods(
    _state: &mut minijinja::State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    let unknown = || Error::from(ErrorKind::UnknownMethod);
    if value.kind() == ValueKind::Map && method == "items" {
        let _: () = from_args(args)?;
        let pairs: Vec<Value> = value
            .try_iter()?
            .map(|key| {
                let item = value.get_item(&key).unwrap_or(Value::UNDEFINED);
                Value::from(vec![key, item])
            })
            .collect();
        return Ok(Value::from(pairs));
    }
    let Some(text) = value.as_str() else {
        return Err(unknown());
    };
    let result = match method {
        "strip" | "lstrip" | "rstrip" => {
            let (chars,): (Option<String>,) = from_args(args)?;
            let set: Vec<char> = chars.map_or_else(Vec::new, |c| c.chars().collect());
            let pattern = |c: char| {
                if set.is_empty() {
                    c.is_whitespace()
                } else {
                    set.contains(&c)
                }
            };
            let out = match method {
                "strip" => text.trim_matches(pattern),
                "lstrip" => text.trim_start_matches(pattern),
                _ => text.trim_end_matches(pattern),
            };
            Value::from(out)
        }
        "startswith" => {
            let (prefix,): (String,) = from_args(args)?;
            Value::from(text.starts_with(&prefix))
        }
        "endswith" => {
            let (suffix,): (String,) = from_args(args)?;
            Value::from(text.ends_with(&suffix))
        }
        "upper" => Value::from(text.to_uppercase()),
        "lower" => Value::from(text.to_lowercase()),
        "split" => {
            let (separator,): (Option<String>,) = from_args(args)?;
            let parts: Vec<Value> = match separator {
                Some(separator) => text.split(separator.as_str()).map(Value::from).collect(),
                None => text.split_whitespace().map(Value::from).collect(),
            };
            Value::from(parts)
        }
        "replace" => {
            let (from, to): (String, String) = from_args(args)?;
            Value::from(text.replace(&from, &to))
        }
        _ => return Err(unknown()),
    };
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage::new(role, content)
    }

    /// A tool-trained model's template (the shape of Qwen's) gets OpenAI's tools and the
    /// calls and results of the history as it expects them.
    #[test]
    fn tool_templates_get_tools_calls_and_results() {
        let source = "{% if tools %}{% for t in tools %}<tool>{{ t.function.name }}</tool>{% endfor %}{% endif %}\
                      {% for m in messages %}{% if m.tool_calls %}{% for c in m.tool_calls %}\
                      <call>{{ c.function.name }} {{ c.function.arguments | tojson }}</call>{% endfor %}\
                      {% elif m.role == 'tool' %}<result id={{ m.tool_call_id }}>{{ m.content }}</result>\
                      {% else %}[{{ m.role }}]{{ m.content }}{% endif %}{% endfor %}";
        let template = ChatTemplate::new(source, "", "").unwrap();
        assert!(template.supports_tools());
        assert!(
            !ChatTemplate::new(GEMMA_TEMPLATE, "", "")
                .unwrap()
                .supports_tools()
        );
        let tools = [serde_json::json!({"type": "function", "function": {"name": "get_time"}})];
        let messages = [
            msg("user", "Time?"),
            TemplateMessage {
                tool_calls: Some(vec![serde_json::json!({
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_time", "arguments": {"tz": "UTC"}}
                })]),
                ..msg("assistant", "")
            },
            TemplateMessage {
                tool_call_id: Some("call_1".into()),
                name: Some("get_time".into()),
                ..msg("tool", "12:00")
            },
        ];
        assert_eq!(
            template
                .render_with_tools(&messages, Some(&tools), false)
                .unwrap(),
            "<tool>get_time</tool>[user]Time?<call>get_time {\"tz\": \"UTC\"}</call>\
             <result id=call_1>12:00</result>"
        );
        // Without tools the template sees `none`.
        assert_eq!(
            template.render(&messages[..1], false).unwrap(),
            "[user]Time?"
        );
    }

    #[test]
    fn gemma_turns_with_system_folded_into_the_first_user_turn() {
        let template = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let text = template
            .render(
                &[
                    msg("system", "Be brief."),
                    msg("user", "Hi"),
                    msg("assistant", "Hello!"),
                    msg("user", "Bye "),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            text,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n\
             <start_of_turn>model\nHello!<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n\
             <start_of_turn>model\n"
        );
    }

    #[test]
    fn chatml_without_generation_prompt() {
        let template = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let text = template.render(&[msg("user", "Hi")], false).unwrap();
        assert_eq!(text, "<|im_start|>user\nHi<|im_end|>\n");
    }

    #[test]
    fn hugging_face_style_template_with_python_methods_and_exceptions() {
        let source = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}\
                      {% for m in messages %}[{{ m.role.upper() }}]{{ m.content.strip() }}\
                      {% if m.content.startswith(' ') %}!{% endif %}{% endfor %}{{ eos_token }}";
        let template = ChatTemplate::new(source, "<s>", "</s>").unwrap();
        assert_eq!(
            template.render(&[msg("user", " x ")], false).unwrap(),
            "[USER]x!</s>"
        );
        let err = template.render(&[msg("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("first must be user"), "{err}");
    }

    #[test]
    fn syntax_errors_are_found_at_start_up() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
