//! Turning a request's [`SamplingParams`] into a llama.cpp sampler chain, one per slot.
//!
//! Order follows llama.cpp's own default chain: logit bias and penalties change logits
//! first, the grammar removes tokens that cannot continue valid output, the truncating
//! samplers (top-k, top-p, min-p) narrow the candidates, and temperature plus a seeded
//! random draw pick one. Temperature 0 is a plain arg-max instead, which is what OpenAI
//! clients expect from it. The chain also remembers the generated tokens (for penalties
//! and the grammar state), so it lives as long as the request does.
//!
//! The random draw is not part of the chain: each position of the answer draws with its
//! own generator, seeded from the request's seed and the position ([`position_seed`]). A
//! single generator would make the draw at position n depend on the n draws before it,
//! which a node continuing someone else's stream cannot replay; this way it only needs
//! the seed and the position.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::model::Model;
use super::request::SamplingParams;

/// Whether `params` ask for plain greedy decoding: the most likely token, with no bias,
/// penalty or grammar that would need llama.cpp's sampler chain. Such requests skip the
/// chain, which copies all logits into a candidate array on every token (262 144 entries
/// for Gemma 3, a few percent of a decode step on a small model).
pub fn is_plain_greedy(params: &SamplingParams) -> bool {
    params.temperature <= 0.0
        && params.logit_bias.is_empty()
        && params.presence_penalty == 0.0
        && params.frequency_penalty == 0.0
        && params.grammar.is_none()
}

/// The most likely token: the first of the highest logits, as llama.cpp's greedy sampler
/// chooses.
pub fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0usize;
    let mut best_logit = f32::NEG_INFINITY;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > best_logit {
            best = index;
            best_logit = logit;
        }
    }
    LlamaToken(i32::try_from(best).unwrap_or(i32::MAX))
}

/// How one request picks its tokens: a llama.cpp chain, and for sampled (temperature > 0)
/// requests the seed of the per-position draws.
pub struct Sampler {
    chain: LlamaSampler,
    seed: Option<u32>,
}

impl Sampler {
    /// The token for the logits at batch index `at`, for answer position `position`.
    pub fn sample(&mut self, context: &LlamaContext<'_>, at: i32, position: usize) -> LlamaToken {
        let Some(seed) = self.seed else {
            // Greedy with bias, penalties or a grammar: the chain ends in `greedy`.
            return self.chain.sample(context, at);
        };
        let mut candidates = context.token_data_array_ith(at);
        self.chain.apply(&mut candidates);
        let token = candidates.sample_token(position_seed(seed, position));
        self.chain.accept(token);
        token
    }

    /// Feeds tokens generated elsewhere through the chain's state (grammar, penalties), as
    /// if they had been sampled here.
    pub fn replay(&mut self, tokens: &[LlamaToken]) {
        self.chain.accept_many(tokens);
    }
}

/// The seed of the draw at answer position `position`: the request's seed mixed with the
/// position (splitmix64), so neighbouring positions get unrelated generators.
pub fn position_seed(seed: u32, position: usize) -> u32 {
    let mut x = (u64::from(seed) << 32) ^ position as u64;
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) as u32
}

/// A sampler for one request on `model`. `penalty_window` is how many of the latest
/// generated tokens the presence/frequency penalties look at (the slot's context, so that
/// they cover the whole answer). `Err` says why a grammar was rejected.
pub fn build(
    model: &Model,
    params: &SamplingParams,
    penalty_window: usize,
) -> Result<Sampler, String> {
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
    let seed = if params.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
        None
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
        Some(params.seed.unwrap_or_else(fresh_seed))
    };
    Ok(Sampler {
        chain: LlamaSampler::chain(chain, true),
        seed,
    })
}

/// A seed for requests that gave none: different per request, no reproducibility promised.
fn fresh_seed() -> u32 {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_the_highest_logits() {
        assert_eq!(argmax(&[0.1, 2.0, -1.0, 2.0]), LlamaToken(1));
        assert_eq!(argmax(&[-5.0, -3.0]), LlamaToken(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY, 0.0]), LlamaToken(1));
    }

    #[test]
    fn position_seeds_are_stable_and_differ_by_position_and_seed() {
        assert_eq!(position_seed(42, 7), position_seed(42, 7));
        let seeds: std::collections::HashSet<u32> =
            (0..1000).map(|p| position_seed(42, p)).collect();
        assert_eq!(seeds.len(), 1000, "no two positions share a generator");
        assert_ne!(position_seed(1, 0), position_seed(2, 0));
    }

    #[test]
    fn only_unbiased_greedy_requests_skip_the_chain() {
        let greedy = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        assert!(is_plain_greedy(&greedy));
        for other in [
            SamplingParams {
                temperature: 0.7,
                ..greedy.clone()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..greedy.clone()
            },
            SamplingParams {
                logit_bias: vec![(LlamaToken(3), -100.0)],
                ..greedy.clone()
            },
            SamplingParams {
                grammar: Some("root ::= \"a\"".into()),
                ..greedy.clone()
            },
        ] {
            assert!(!is_plain_greedy(&other), "{other:?}");
        }
    }
}
