//! Turning a request's [`SamplingParams`] into a llama.cpp sampler chain, one per slot.
//!
//! Order follows llama.cpp's own default chain: logit bias and penalties change logits
//! first, the grammar removes tokens that cannot continue valid output, the truncating
//! samplers (top-k, top-p, min-p) narrow the candidates, and temperature plus a seeded
//! random draw pick one. Temperature 0 is a plain arg-max instead, which is what OpenAI
//! clients expect from it. The chain also remembers the generated tokens (for penalties
//! and the grammar state), so it lives as long as the request does.
//!
//! A grammar is not part of the chain either. Checking every token of a 262 144-entry
//! vocabulary against a large grammar costs more than the decode step itself, so the token
//! is first picked without the grammar and then checked alone; only when the grammar
//! rejects it are all candidates filtered and the pick made again (llama.cpp's own
//! sampler does the same). Greedy output is the same either way; a sampled pick follows
//! the grammar too, from a slightly different distribution.
//!
//! The random draw is not part of the chain: each position of the answer draws with its
//! own generator, seeded from the request's seed and the position ([`position_seed`]). A
//! single generator would make the draw at position n depend on the n draws before it,
//! which a node continuing someone else's stream cannot replay; this way it only needs
//! the seed and the position.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use super::model::Model;
use super::request::{SamplingParams, SubmitError};

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

/// How one request picks its tokens: the samplers that change logits (bias, penalties),
/// an optional grammar, the samplers that choose (truncation and temperature, or greedy),
/// and for sampled (temperature > 0) requests the seed of the per-position draws.
pub struct Sampler {
    adjust: Option<LlamaSampler>,
    grammar: Option<LlamaSampler>,
    choose: LlamaSampler,
    seed: Option<u32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("grammar", &self.grammar.is_some())
            .field("seed", &self.seed)
            .finish()
    }
}

/// Candidates checked against a grammar at once when the unconstrained pick is rejected:
/// the most likely ones (one grammar pass over them instead of the whole vocabulary). Only
/// when none of them fits is the whole vocabulary checked.
const GRAMMAR_SHORTLIST: usize = 512;

impl Sampler {
    /// The token for the logits at batch index `at`, for answer position `position`.
    pub fn sample(&mut self, context: &LlamaContext<'_>, at: i32, position: usize) -> LlamaToken {
        let mut candidates = context.token_data_array_ith(at);
        if let Some(adjust) = self.adjust.as_mut() {
            adjust.apply(&mut candidates);
        }
        let token = match self.grammar.as_mut() {
            None => self.pick(candidates, position),
            Some(_) => self.pick_within_grammar(candidates, position),
        };
        if let Some(adjust) = self.adjust.as_mut() {
            adjust.accept(token);
        }
        if let Some(grammar) = self.grammar.as_mut() {
            grammar.accept(token);
        }
        token
    }

    /// The pick without the grammar if the grammar allows it; otherwise the pick among
    /// the most likely tokens the grammar allows; otherwise among all it allows.
    fn pick_within_grammar(
        &mut self,
        candidates: LlamaTokenDataArray,
        position: usize,
    ) -> LlamaToken {
        let mut all = candidates.data;
        let unconstrained = self.pick(LlamaTokenDataArray::new(all.clone(), false), position);
        let grammar = self.grammar.as_mut().expect("called with a grammar");
        if allows(grammar, unconstrained) {
            return unconstrained;
        }
        let keep = GRAMMAR_SHORTLIST.min(all.len());
        if keep < all.len() {
            all.select_nth_unstable_by(keep, |a, b| b.logit().total_cmp(&a.logit()));
        }
        let mut shortlist = LlamaTokenDataArray::new(all[..keep].to_vec(), false);
        grammar.apply(&mut shortlist);
        shortlist
            .data
            .retain(|data| data.logit() != f32::NEG_INFINITY);
        if !shortlist.data.is_empty() {
            return self.pick(shortlist, position);
        }
        let mut everything = LlamaTokenDataArray::new(all, false);
        grammar.apply(&mut everything);
        self.pick(everything, position)
    }

    /// The choosing samplers' pick: the greedy one, or the draw of `position`.
    fn pick(&mut self, mut candidates: LlamaTokenDataArray, position: usize) -> LlamaToken {
        self.choose.apply(&mut candidates);
        match self.seed {
            Some(seed) => candidates.sample_token(position_seed(seed, position)),
            None => candidates
                .selected_token()
                .unwrap_or_else(|| candidates.sample_token_greedy()),
        }
    }

    /// Feeds tokens generated elsewhere through the sampler's state (grammar, penalties),
    /// as if they had been sampled here.
    pub fn replay(&mut self, tokens: &[LlamaToken]) {
        if let Some(adjust) = self.adjust.as_mut() {
            adjust.accept_many(tokens);
        }
        if let Some(grammar) = self.grammar.as_mut() {
            grammar.accept_many(tokens);
        }
    }
}

/// Whether `grammar`, in its current state, allows `token` next.
fn allows(grammar: &mut LlamaSampler, token: LlamaToken) -> bool {
    let mut single = LlamaTokenDataArray::new(vec![LlamaTokenData::new(token, 0.0, 0.0)], false);
    grammar.apply(&mut single);
    single
        .data
        .first()
        .is_some_and(|data| data.logit() != f32::NEG_INFINITY)
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

/// The seed of choice `choice` of a request with several (OpenAI's `n`): the first keeps
/// the request's seed, the others get their own, so their answers differ when sampled.
pub fn choice_seed(seed: u32, choice: usize) -> u32 {
    // The golden-ratio step spreads consecutive choices; `position_seed` mixes it further.
    seed.wrapping_add((choice as u32).wrapping_mul(0x9e37_79b9))
}

/// The log-probability of `token` under `logits` (log-softmax over the whole vocabulary)
/// and the `top` most likely tokens with theirs, most likely first (the lower id first on
/// a tie).
pub fn logprobs(logits: &[f32], token: LlamaToken, top: usize) -> (f32, Vec<(LlamaToken, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits
        .iter()
        .map(|&logit| f64::from((logit - max).exp()))
        .sum();
    let log_z = max + sum.ln() as f32;
    let of = |logit: f32| (logit - log_z).min(0.0);
    let chosen = usize::try_from(token.0)
        .ok()
        .and_then(|index| logits.get(index))
        .map_or(f32::NEG_INFINITY, |&logit| of(logit));
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(top + 1);
    if top > 0 {
        for (index, &logit) in logits.iter().enumerate() {
            if best.len() == top && best.last().is_some_and(|&(_, worst)| logit <= worst) {
                continue;
            }
            let at = best.partition_point(|&(_, better)| better >= logit);
            best.insert(at, (index, logit));
            best.truncate(top);
        }
    }
    let best = best
        .into_iter()
        .map(|(index, logit)| {
            (
                LlamaToken(i32::try_from(index).unwrap_or(i32::MAX)),
                of(logit),
            )
        })
        .collect();
    (chosen, best)
}

/// A sampler for one request on `model`. `penalty_window` is how many of the latest
/// generated tokens the presence/frequency penalties look at (the slot's context, so that
/// they cover the whole answer). Fails when llama.cpp rejects the grammar.
pub fn build(
    model: &Model,
    params: &SamplingParams,
    penalty_window: usize,
) -> Result<Sampler, SubmitError> {
    let mut adjust = Vec::new();
    if !params.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = params
            .logit_bias
            .iter()
            .map(|&(token, bias)| LlamaLogitBias::new(token, bias))
            .collect();
        adjust.push(LlamaSampler::logit_bias(model.n_vocab(), &biases));
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        adjust.push(LlamaSampler::penalties(
            model.n_vocab(),
            i32::try_from(penalty_window).unwrap_or(i32::MAX),
            1.0,
            params.frequency_penalty,
            params.presence_penalty,
        ));
    }
    let grammar = match &params.grammar {
        Some(grammar) => Some(
            LlamaSampler::grammar(model.llama(), grammar, "root").map_err(|err| {
                SubmitError::Grammar(format!("the grammar was rejected by llama.cpp: {err}"))
            })?,
        ),
        None => None,
    };
    let mut choose = Vec::new();
    let seed = if params.temperature <= 0.0 {
        choose.push(LlamaSampler::greedy());
        None
    } else {
        if params.top_k > 0 {
            choose.push(LlamaSampler::top_k(params.top_k));
        }
        if params.top_p < 1.0 {
            choose.push(LlamaSampler::top_p(params.top_p, 1));
        }
        if params.min_p > 0.0 {
            choose.push(LlamaSampler::min_p(params.min_p, 1));
        }
        choose.push(LlamaSampler::temp(params.temperature));
        Some(params.seed.unwrap_or_else(fresh_seed))
    };
    Ok(Sampler {
        adjust: (!adjust.is_empty()).then(|| LlamaSampler::chain(adjust, true)),
        grammar,
        choose: LlamaSampler::chain(choose, true),
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
    fn logprobs_are_the_log_softmax_and_top_is_ordered() {
        let logits = [0.0f32, 2.0_f32.ln(), 0.0, 3.0_f32.ln()];
        // Probabilities 1/7, 2/7, 1/7, 3/7.
        let (chosen, top) = logprobs(&logits, LlamaToken(1), 3);
        assert!((chosen - (2.0f32 / 7.0).ln()).abs() < 1e-5, "{chosen}");
        let ids: Vec<i32> = top.iter().map(|(t, _)| t.0).collect();
        assert_eq!(ids, [3, 1, 0], "ties go to the lower id");
        assert!((top[0].1 - (3.0f32 / 7.0).ln()).abs() < 1e-5);
        let total: f32 = logits
            .iter()
            .map(|&l| logprobs(&logits, LlamaToken(0), 0).0 - logits[0] + l)
            .map(f32::exp)
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        assert!(logprobs(&logits, LlamaToken(2), 0).1.is_empty());
        // A token outside the vocabulary has no probability at all.
        assert_eq!(logprobs(&logits, LlamaToken(9), 0).0, f32::NEG_INFINITY);
        // A banned token (-inf logit) is -inf, not NaN.
        let banned = [f32::NEG_INFINITY, 0.0];
        assert_eq!(logprobs(&banned, LlamaToken(0), 2).0, f32::NEG_INFINITY);
        assert_eq!(logprobs(&banned, LlamaToken(1), 2).0, 0.0);
    }

    #[test]
    fn choices_get_their_own_seeds() {
        assert_eq!(choice_seed(42, 0), 42);
        let seeds: std::collections::HashSet<u32> = (0..16).map(|c| choice_seed(42, c)).collect();
        assert_eq!(seeds.len(), 16);
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
