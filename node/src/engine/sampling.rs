//! Turning a request's [`SamplingParams`] into a llama.cpp sampler chain, one per slot.
//!
//! Order follows llama.cpp's own default chain: logit bias and penalties change logits
//! first, the grammar removes tokens that cannot continue valid output, the truncating
//! samplers (top-k, top-p, min-p) narrow the candidates, and temperature plus a seeded
//! random draw pick one. Temperature 0 is a plain arg-max instead, which is what OpenAI
//! clients expect from it. The chain also remembers the generated tokens (for penalties
//! and the grammar state), so it lives as long as the request does.

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::model::Model;
use super::request::SamplingParams;

/// A sampler chain for one request on `model`. `penalty_window` is how many of the latest
/// generated tokens the presence/frequency penalties look at (the slot's context, so that
/// they cover the whole answer). `Err` says why a grammar was rejected.
pub fn build(
    model: &Model,
    params: &SamplingParams,
    penalty_window: usize,
) -> Result<LlamaSampler, String> {
    let mut chain = Vec::new();
    if !params.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = params
            .logit_bias
            .iter()
            .map(|&(token, bias)| LlamaLogitBias::new(token, bias))
            .collect();
        chain.push(LlamaSampler::logit_bias(model.n_vocab(), &biases));
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        chain.push(LlamaSampler::penalties(
            model.n_vocab(),
            i32::try_from(penalty_window).unwrap_or(i32::MAX),
            1.0,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    if let Some(grammar) = &params.grammar {
        let sampler = LlamaSampler::grammar(model.llama(), grammar, "root")
            .map_err(|err| format!("the grammar was rejected by llama.cpp: {err}"))?;
        chain.push(sampler);
    }
    if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if params.top_k > 0 {
            chain.push(LlamaSampler::top_k(params.top_k));
        }
        if params.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(params.top_p, 1));
        }
        if params.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(params.min_p, 1));
        }
        chain.push(LlamaSampler::temp(params.temperature));
        chain.push(LlamaSampler::dist(params.seed.unwrap_or_else(fresh_seed)));
    }
    Ok(LlamaSampler::chain(chain, true))
}

/// A seed for requests that gave none: different per request, no reproducibility promised.
fn fresh_seed() -> u32 {
    rand::random()
}
