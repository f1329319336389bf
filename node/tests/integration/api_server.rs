//! The HTTP API over a real socket on 127.0.0.1 with the real default model: `/health`
//! before and after loading, `/v1/models`, chat and text completions (JSON and SSE), the
//! error object and status of each kind of bad request, the API key, the body limit and
//! `/metrics`. The Python suite in `tests/e2e` drives the same server with the official
//! `openai` client.

#![cfg(feature = "engine")]

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use llamanet_node::api::{self, ApiConfig, AppState};
use llamanet_node::engine::{Engine, EngineSettings};
use serde_json::{Value, json};

const MODEL_ID: &str = "test-model";
const KEY: &str = "secret-key";

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LLAMANET_MODEL") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/llamanet/models/gemma-3-270m-q4_k_m.gguf")
}

struct Server {
    base: String,
    client: reqwest::Client,
}

impl Server {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

fn assert_error_shape(body: &Value) {
    let error = &body["error"];
    assert!(error["message"].is_string(), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_api_over_loopback() {
    let state = AppState::new(ApiConfig {
        model_id: MODEL_ID.into(),
        api_key: Some(KEY.into()),
        body_limit: 64 * 1024,
        request_timeout: Duration::from_secs(120),
        body_timeout: Duration::from_secs(30),
        max_concurrent_requests: 64,
        started_unix: api::unix_now(),
        hold: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(axum::serve(listener, api::router(state.clone())).into_future());
    let server = Server {
        base,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
    };

    // Loading: health says so, generation is refused with 503 and Retry-After.
    let (status, body) = server.get("/health").await;
    assert_eq!((status, body.as_str()), (503, r#"{"status":"loading"}"#));
    let (status, body) = server
        .post("/v1/completions", json!({"model": MODEL_ID, "prompt": "x"}))
        .await;
    assert_eq!(status, 503);
    assert_error_shape(&body);

    let engine = Engine::start(
        &model_path(),
        EngineSettings {
            parallel: NonZeroU32::new(2).unwrap(),
            context_size: NonZeroU32::new(2048).unwrap(),
            batch_size: NonZeroU32::new(256).unwrap(),
            ..EngineSettings::default()
        },
    )
    .await
    .expect("engine starts");
    state.install(engine, None).unwrap();
    let (status, body) = server.get("/health").await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = server.get("/v1/models").await;
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(models["data"][0]["id"], MODEL_ID);

    // Chat, not streamed.
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}],
                "max_tokens": 8,
                "temperature": 0
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(usage["completion_tokens"].as_u64().unwrap() <= 8);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    // Completions with two prompts: one choice each.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"model": MODEL_ID, "prompt": ["One, two,", "Red, green,"], "max_tokens": 5, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(body["choices"][1]["index"], 1);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 10);

    // Streamed chat: role first, finish_reason last, usage, then [DONE].
    let response = server
        .client
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth(KEY)
        .json(&json!({
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Count to five."}],
            "max_tokens": 6,
            "temperature": 0,
            "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|chunk| serde_json::from_str(chunk).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"].as_array().unwrap().len(), 0);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let streamed_tokens = usage_chunk["usage"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(streamed_tokens, 6);

    // Bad requests: status and error object.
    for (body, expected) in [
        (json!({"model": MODEL_ID, "messages": []}), 400),
        (json!({"model": MODEL_ID, "messages": "hi"}), 400),
        (
            json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
            400,
        ),
        (
            json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "temperature": 3}),
            400,
        ),
        (
            json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "n": 17}),
            400,
        ),
        (
            json!({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}),
            400,
        ),
        (
            json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
            404,
        ),
    ] {
        let (status, answer) = server.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(status, expected, "{body} -> {answer}");
        assert_error_shape(&answer);
    }
    let (status, answer) = server.post_raw("/v1/chat/completions", "{not json").await;
    assert_eq!(status, 400);
    assert_error_shape(&answer);
    let (status, answer) = server
        .post("/v1/embeddings", json!({"model": MODEL_ID, "input": "x"}))
        .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model does not support embeddings")
    );
    let big = "x".repeat(100 * 1024);
    let (status, answer) = server
        .post("/v1/completions", json!({"model": MODEL_ID, "prompt": big}))
        .await;
    assert_eq!(status, 413);
    assert_error_shape(&answer);

    // The key: missing or wrong is 401; /health and /metrics stay open.
    let response = server
        .client
        .get(format!("{}/v1/models", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = server
        .client
        .get(format!("{}/v1/models", server.base))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_error_shape(&response.json().await.unwrap());

    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "llamanet_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}",
        "llamanet_generated_tokens_total",
        "llamanet_time_to_first_token_seconds_bucket",
        "llamanet_slots_capacity 2",
        "llamanet_kv_cache_cells_used",
        "llamanet_model_loaded 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    promtool_accepts(&metrics);
}

/// `promtool check metrics` finds nothing to complain about in a real scrape.
fn promtool_accepts(scrape: &str) {
    use std::io::Write;
    let promtool = std::env::var_os("LLAMANET_PROMTOOL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            // Where scripts/build-tools.sh put it: the folder named once, in common.sh.
            let out = std::process::Command::new("bash")
                .args([
                    "-c",
                    r#"source scripts/common.sh && printf %s "$PROMTOOL_BIN""#,
                ])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .output()
                .expect("bash");
            std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).into_owned())
                .join("promtool")
        });
    assert!(
        promtool.is_file(),
        "{} missing: run scripts/build-tools.sh",
        promtool.display()
    );
    let mut child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
