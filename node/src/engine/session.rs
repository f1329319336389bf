//! A session: one llama.cpp context (KV cache, compute buffers) on a loaded [`Model`], and
//! the greedy decode loop that turns a prompt into text.
//!
//! A session runs one sequence at a time and starts every [`Session::generate`] from an
//! empty KV cache. The serving scheduler keeps the same shape but gives the context several
//! sequence ids (slots), fills one batch per step with the next token of every active slot,
//! and keeps each slot's cache for prompt-prefix reuse; sampling per slot will use a
//! configured `LlamaSampler` chain instead of greedy.

use std::time::{Duration, Instant};

use super::sampling;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;

use super::EngineError;
use super::model::Model;
pub use super::request::FinishReason;

/// The KV-cache sequence id this single-sequence session writes to.
const SEQUENCE: i32 = 0;

/// Token counts and timings of one generation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerationStats {
    /// Tokens in the prompt after tokenisation (including the BOS token the model adds).
    pub prompt_tokens: usize,
    /// Tokens of output text (an end-of-generation token is not counted).
    pub generated_tokens: usize,
    /// Prompt processing up to the first sampled token: the time to first token.
    pub prompt_ms: f64,
    /// The one-token decode steps after the first token.
    pub decode_ms: f64,
    /// Decode speed: one-token decode steps per second over `decode_ms` (0 when there
    /// were none). The first token comes out of the prompt pass and is timed there.
    pub tokens_per_second: f64,
}

/// The text a prompt produced, why it ended, and how long it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    pub finish_reason: FinishReason,
    pub stats: GenerationStats,
}

/// A context on a [`Model`] plus a reusable batch.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Model,
    context: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
}

impl<'m> Session<'m> {
    pub(super) fn new(model: &'m Model, context: LlamaContext<'m>) -> Self {
        let capacity = usize::try_from(context.n_batch()).unwrap_or(usize::MAX);
        Session {
            model,
            context,
            batch: LlamaBatch::new(capacity, 1),
        }
    }

    /// Tokens the KV cache holds: prompt plus generated tokens cannot exceed this.
    pub fn context_size(&self) -> usize {
        usize::try_from(self.context.n_ctx()).unwrap_or(usize::MAX)
    }

    /// Generates up to `max_tokens` tokens after `prompt` by always taking the most likely
    /// token, so the same prompt gives the same text on the same build. The prompt is used
    /// as is (special tokens such as `<start_of_turn>` in it are honoured); no chat template
    /// is applied.
    pub fn generate(&mut self, prompt: &str, max_tokens: usize) -> Result<Generation, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let model = self.model;
        let vocab = model.llama().vocab();
        let prompt_tokens = vocab.tokenize(prompt.as_bytes(), true, true);
        if prompt_tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        let context_size = self.context_size();
        // One free cell at least, for the first generated token.
        if prompt_tokens.len() >= context_size {
            return Err(EngineError::PromptTooLong {
                prompt_tokens: prompt_tokens.len(),
                context_size: self.context.n_ctx(),
            });
        }

        self.context.clear_kv_cache();
        let started = Instant::now();

        // The prompt goes in as few decode calls as the batch allows; only its last token
        // needs logits, the rest only fill the KV cache.
        let last = prompt_tokens.len() - 1;
        let chunk_len = usize::try_from(self.context.n_batch()).unwrap_or(usize::MAX);
        for (chunk_index, chunk) in prompt_tokens.chunks(chunk_len).enumerate() {
            self.batch.clear();
            for (offset, &token) in chunk.iter().enumerate() {
                let pos = chunk_index * chunk_len + offset;
                self.batch
                    .add(token, position(pos), &[SEQUENCE], pos == last)?;
            }
            self.context.decode(&mut self.batch)?;
        }
        let mut token = sampling::argmax(self.context.get_logits_ith(self.batch.n_tokens() - 1));
        let prompt_elapsed = started.elapsed();

        // Pieces are collected as bytes: one token can end in the middle of a multi-byte
        // character that the next token completes.
        let mut text = Vec::new();
        let mut generated = 0usize;
        let mut decode_steps = 0usize;
        let mut pos = prompt_tokens.len();
        let decode_started = Instant::now();
        let finish_reason = loop {
            if generated == max_tokens {
                break FinishReason::Length;
            }
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            vocab.token_to_piece_into(token, &mut text, false, None);
            generated += 1;
            // Stop before a decode whose result would not be used.
            if generated == max_tokens || pos >= context_size {
                break FinishReason::Length;
            }
            self.batch.clear();
            self.batch.add(token, position(pos), &[SEQUENCE], true)?;
            self.context.decode(&mut self.batch)?;
            decode_steps += 1;
            pos += 1;
            token = sampling::argmax(self.context.get_logits_ith(0));
        };
        let decode_elapsed = if decode_steps == 0 {
            Duration::ZERO
        } else {
            decode_started.elapsed()
        };

        let stats = GenerationStats {
            prompt_tokens: prompt_tokens.len(),
            generated_tokens: generated,
            prompt_ms: millis(prompt_elapsed),
            decode_ms: millis(decode_elapsed),
            tokens_per_second: if decode_elapsed.is_zero() {
                0.0
            } else {
                decode_steps as f64 / decode_elapsed.as_secs_f64()
            },
        };
        tracing::debug!(?stats, ?finish_reason, "generation finished");
        Ok(Generation {
            text: String::from_utf8_lossy(&text).into_owned(),
            finish_reason,
            stats,
        })
    }
}

/// KV-cache position of the `index`-th token; the context size (a `u32` well below
/// `i32::MAX` in practice) bounds it.
fn position(index: usize) -> i32 {
    i32::try_from(index).expect("token position fits the context size")
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
