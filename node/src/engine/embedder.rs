//! Embeddings: one input through a mean-pooling context, and the worker that serves them
//! on threads of their own (`--embedding-threads`).
//!
//! Without a worker the engine thread embeds one input between two decode steps. On a
//! machine whose cores all decode, every input then lengthens one step by its whole
//! evaluation (llama.cpp computes the vocabulary-wide output projection for every token of
//! an embeddings batch), which is what the streams' p99 sees. A worker with its own context
//! and threads runs beside the decode instead; given cores that decoding does not use, it
//! leaves the streams' steps alone.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::mpsc;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::EngineError;
use super::model::Model;
use super::request::EmbeddingJob;

/// Starts the worker thread with an embeddings context of `threads` threads; returns once
/// the context exists (or could not be made). The worker ends when the sender is dropped.
pub(super) fn spawn(
    model: Arc<Model>,
    threads: NonZeroU32,
) -> Result<mpsc::Sender<EmbeddingJob>, EngineError> {
    let (jobs, queue) = mpsc::channel::<EmbeddingJob>();
    let (ready, started) = mpsc::sync_channel::<Result<(), EngineError>>(1);
    std::thread::Builder::new()
        .name("llamanet-embeddings".into())
        .spawn(move || {
            let mut context = match model.embedding_context(Some(threads)) {
                Ok(context) => context,
                Err(err) => {
                    let _ = ready.send(Err(err));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            tracing::info!(threads = threads.get(), "embeddings worker ready");
            while let Ok(job) = queue.recv() {
                serve(&mut context, job);
            }
        })
        .map_err(|err| EngineError::Thread(err.to_string()))?;
    started.recv().map_err(|_| {
        EngineError::Thread("the embeddings worker stopped while starting".into())
    })??;
    Ok(jobs)
}

/// Embeds every input of `job` in order and answers it, or answers the first failure.
/// A client that went away stops its request between two inputs.
fn serve(context: &mut LlamaContext<'_>, job: EmbeddingJob) {
    let mut vectors = Vec::with_capacity(job.inputs.len());
    for (index, input) in job.inputs.iter().enumerate() {
        if job.reply.is_closed() {
            return;
        }
        match embed_input(context, input, index) {
            Ok(vector) => vectors.push(vector),
            Err(message) => {
                let _ = job.reply.send(Err(message));
                return;
            }
        }
    }
    let _ = job.reply.send(Ok(vectors));
}

/// The normalised mean-pooled embedding of one input (`index` names it in errors).
pub(super) fn embed_input(
    context: &mut LlamaContext<'_>,
    tokens: &[LlamaToken],
    index: usize,
) -> Result<Vec<f32>, String> {
    let capacity = usize::try_from(context.n_batch()).unwrap_or(usize::MAX);
    if tokens.is_empty() {
        return Err(format!("input {index} is empty"));
    }
    if tokens.len() > capacity {
        return Err(format!(
            "input {index} has {} tokens; at most {capacity} fit",
            tokens.len()
        ));
    }
    context.clear_kv_cache();
    let mut batch = LlamaBatch::new(tokens.len(), 1);
    batch
        .add_sequence(tokens, 0, true)
        .map_err(|err| err.to_string())?;
    context
        .decode(&mut batch)
        .map_err(|err| format!("llama.cpp decode failed: {err}"))?;
    context
        .embeddings_seq_ith(0)
        .map(normalized)
        .map_err(|err| err.to_string())
}

fn normalized(vector: &[f32]) -> Vec<f32> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter().map(|x| x / norm).collect()
    } else {
        vector.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_vectors_have_unit_length() {
        let v = normalized(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalized(&[0.0]), vec![0.0]);
    }
}
