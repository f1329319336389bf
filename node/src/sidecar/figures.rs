//! Reading an engine's own load figures: Prometheus text from `/metrics`, llama-server's
//! `/slots`, and the model list of `/v1/models`. Pure functions over the bodies, so every
//! engine's quirks are unit-tested without the engine.

use serde_json::Value;

use crate::cli::UpstreamKind;

/// An engine's load, as a heartbeat carries it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    pub slots_busy: u32,
    pub slots_total: u32,
    /// Requests waiting for a slot.
    pub queue_depth: u32,
    /// Generation throughput over all requests.
    pub tokens_per_second: f64,
    /// Share of the KV cache in use (0 to 1), where the engine says.
    pub kv_cache_usage: Option<f64>,
}

/// The metric names each engine exports for the figures a heartbeat needs.
#[derive(Debug, Clone, Copy)]
pub struct MetricNames {
    pub busy: &'static str,
    pub waiting: &'static str,
    /// A counter of generated tokens, turned into a rate between polls.
    pub tokens_total: &'static str,
    /// Gauges of KV cache usage, 0 to 1, in order of preference.
    pub kv_usage: &'static [&'static str],
}

impl UpstreamKind {
    /// Where this engine publishes its load; `None` for a plain OpenAI server, whose load
    /// the sidecar counts itself.
    pub fn metric_names(self) -> Option<MetricNames> {
        match self {
            UpstreamKind::LlamaServer => Some(MetricNames {
                busy: "llamacpp:requests_processing",
                waiting: "llamacpp:requests_deferred",
                tokens_total: "llamacpp:tokens_predicted_total",
                kv_usage: &["llamacpp:kv_cache_usage_ratio"],
            }),
            UpstreamKind::Vllm => Some(MetricNames {
                busy: "vllm:num_requests_running",
                waiting: "vllm:num_requests_waiting",
                tokens_total: "vllm:generation_tokens_total",
                // vLLM v1 renamed the gauge; older servers export the first.
                kv_usage: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
            }),
            UpstreamKind::Openai => None,
        }
    }
}

/// The sum of every sample of `name` (all label sets; vLLM labels by model) in Prometheus
/// text, or `None` when the metric is absent.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        // The name must end here: `foo_total` is not a sample of `foo`.
        let rest = match rest.chars().next() {
            Some('{') => match after_labels(rest) {
                Some(rest) => rest,
                None => continue,
            },
            Some(' ' | '\t') => rest,
            _ => continue,
        };
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// The text after a sample's label set (`rest` starts at its `{`), or `None` when the set
/// does not close. Label values are quoted and may hold `}`, `,` and escaped quotes (`\"`,
/// `\\`), so the closing brace is the first one outside a value.
///
/// (Written here rather than taken from a crate: `prometheus-parse` ends the set at the first
/// `}`, the bug this replaces, and `openmetrics-parser` refuses a family whose samples carry
/// different label names, which Prometheus accepts and an engine may send.)
fn after_labels(rest: &str) -> Option<&str> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in rest.char_indices().skip(1) {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(&rest[at + 1..]),
            _ => {}
        }
    }
    None
}

/// What one `/metrics` scrape says, before the token counter becomes a rate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub busy: Option<f64>,
    pub waiting: Option<f64>,
    pub tokens_total: Option<f64>,
    pub kv_usage: Option<f64>,
}

pub fn scrape(text: &str, names: &MetricNames) -> Scrape {
    Scrape {
        busy: metric(text, names.busy),
        waiting: metric(text, names.waiting),
        tokens_total: metric(text, names.tokens_total),
        kv_usage: names.kv_usage.iter().find_map(|name| metric(text, name)),
    }
}

/// What llama-server's `GET /slots` tells.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slots {
    pub total: u32,
    pub processing: u32,
    /// Context per slot.
    pub n_ctx: u32,
    /// Share of the KV cache holding tokens (0 to 1): each slot's cached tokens
    /// (`n_prompt_tokens`, the prompt and what was generated after it, kept for the next
    /// request's prefix) over its context. llama-server no longer exports a KV cache gauge
    /// on `/metrics`, so this is where the inference extension's utilisation comes from.
    pub kv_usage: f64,
}

/// Reads llama-server's `GET /slots`; `None` for any other body (slots disabled).
pub fn slots(body: &Value) -> Option<Slots> {
    let slots = body.as_array()?;
    let busy = slots
        .iter()
        .filter(|slot| slot["is_processing"].as_bool().unwrap_or(false))
        .count();
    let n_ctx = |slot: &Value| slot["n_ctx"].as_u64().unwrap_or(0);
    let (mut cached, mut capacity) = (0u64, 0u64);
    for slot in slots {
        let context = n_ctx(slot);
        // A slot never holds more than its context, whatever the body says.
        cached += slot["n_prompt_tokens"].as_u64().unwrap_or(0).min(context);
        capacity += context;
    }
    Some(Slots {
        total: slots.len() as u32,
        processing: busy as u32,
        n_ctx: u32::try_from(slots.first().map(n_ctx).unwrap_or(0)).unwrap_or(u32::MAX),
        kv_usage: if capacity == 0 {
            0.0
        } else {
            cached as f64 / capacity as f64
        },
    })
}

/// A model an engine lists: its id and context size where it tells (vLLM's
/// `max_model_len`; llama-server's context comes from `/slots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedModel {
    pub id: String,
    pub context_size: u32,
}

/// The models of an OpenAI `GET /v1/models` body; an error when it is not one.
pub fn models(body: &Value) -> Result<Vec<ListedModel>, super::UpstreamError> {
    let data = body["data"]
        .as_array()
        .ok_or(super::UpstreamError::NoModelList)?;
    Ok(data
        .iter()
        .filter_map(|model| {
            Some(ListedModel {
                id: model["id"].as_str()?.to_string(),
                context_size: model["max_model_len"]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Lines as llama-server (b6xxx) and vLLM 0.10 print them.
    const LLAMA: &str = "\
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 1234
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s.
llamacpp:predicted_tokens_seconds 81.5
llamacpp:requests_processing 3
llamacpp:requests_deferred 2
";
    const VLLM: &str = "\
vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 5.0
vllm:num_requests_waiting{engine=\"0\",model_name=\"m\"} 1.0
vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.25
vllm:generation_tokens_total{engine=\"0\",model_name=\"m\"} 900.0
vllm:generation_tokens_created{engine=\"0\",model_name=\"m\"} 1.7e9
";

    #[test]
    fn llama_server_metrics_give_busy_waiting_and_the_token_counter() {
        let names = UpstreamKind::LlamaServer.metric_names().unwrap();
        let got = scrape(LLAMA, &names);
        assert_eq!(got.busy, Some(3.0));
        assert_eq!(got.waiting, Some(2.0));
        assert_eq!(got.tokens_total, Some(1234.0));
        assert_eq!(got.kv_usage, None);
    }

    #[test]
    fn vllm_metrics_with_labels_and_the_renamed_cache_gauge() {
        let names = UpstreamKind::Vllm.metric_names().unwrap();
        let got = scrape(VLLM, &names);
        assert_eq!(
            got,
            Scrape {
                busy: Some(5.0),
                waiting: Some(1.0),
                tokens_total: Some(900.0),
                kv_usage: Some(0.25),
            }
        );
        let old = VLLM.replace("kv_cache_usage_perc", "gpu_cache_usage_perc");
        assert_eq!(scrape(&old, &names).kv_usage, Some(0.25));
        assert!(UpstreamKind::Openai.metric_names().is_none());
    }

    #[test]
    fn a_name_matches_only_itself_and_samples_of_several_labels_add_up() {
        let text = "foo_total 7\nfoo{a=\"1\"} 2\nfoo{a=\"2\"} 3 1700000000\nfoo NaN\n";
        assert_eq!(metric(text, "foo"), Some(5.0));
        assert_eq!(metric(text, "foo_total"), Some(7.0));
        assert_eq!(metric(text, "fo"), None);
        assert_eq!(metric("# foo 3\n", "foo"), None);
        assert_eq!(metric("foo{broken 3\n", "foo"), None);
    }

    #[test]
    fn label_values_may_hold_braces_commas_and_escaped_quotes() {
        let text = concat!(
            "vllm:num_requests_running{model_name=\"a}b\"} 2\n",
            "vllm:num_requests_running{model_name=\"q\\\"}\\\"\",x=\"1,2\"} 3\n",
            "vllm:num_requests_running{path=\"C:\\\\\"} 4\n",
            "vllm:num_requests_running{model_name=\"never closed} 100\n",
        );
        // Before: the first sample read `b"} 2` as its value and was lost.
        assert_eq!(metric(text, "vllm:num_requests_running"), Some(9.0));
    }

    #[test]
    fn slots_count_the_processing_ones() {
        let body = json!([
            {"id": 0, "n_ctx": 1024, "is_processing": true},
            {"id": 1, "n_ctx": 1024, "is_processing": false},
            {"id": 2, "n_ctx": 1024, "is_processing": true},
        ]);
        let seen = slots(&body).unwrap();
        assert_eq!((seen.total, seen.processing, seen.n_ctx), (3, 2, 1024));
        // No slot has served yet: an empty cache.
        assert_eq!(seen.kv_usage, 0.0);
        assert_eq!(slots(&json!({"error": "disabled"})), None);
    }

    #[test]
    fn slots_give_the_kv_cache_in_use_from_each_slots_cached_tokens() {
        // As llama-server answers: a slot that served keeps its tokens cached after the
        // request (`is_processing` false, `n_prompt_tokens` from the previous task).
        let body = json!([
            {"id": 0, "n_ctx": 1000, "is_processing": true, "n_prompt_tokens": 300,
             "n_prompt_tokens_cache": 0, "next_token": [{"n_decoded": 12}]},
            {"id": 1, "n_ctx": 1000, "is_processing": false, "n_prompt_tokens": 100},
            {"id": 2, "n_ctx": 1000, "is_processing": false},
            // A body claiming more than the slot's context counts as a full slot.
            {"id": 3, "n_ctx": 1000, "is_processing": true, "n_prompt_tokens": 999999},
        ]);
        let seen = slots(&body).unwrap();
        assert_eq!(seen.processing, 2);
        assert_eq!(seen.kv_usage, (300.0 + 100.0 + 1000.0) / 4000.0);
    }

    #[test]
    fn model_lists_take_ids_and_vllm_context_and_refuse_other_bodies() {
        let body = json!({"object": "list", "data": [
            {"id": "gemma", "object": "model"},
            {"id": "qwen", "max_model_len": 32768},
            {"object": "model"},
        ]});
        assert_eq!(
            models(&body).unwrap(),
            vec![
                ListedModel {
                    id: "gemma".into(),
                    context_size: 0
                },
                ListedModel {
                    id: "qwen".into(),
                    context_size: 32768
                },
            ]
        );
        assert!(models(&json!({"detail": "Not Found"})).is_err());
    }
}
