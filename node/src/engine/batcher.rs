//! The engine thread: it loads the model, owns the llama.cpp context and every sampler,
//! and runs continuous batching over a fixed set of slots (KV-cache sequences).
//!
//! Each step:
//! 1. takes waiting requests off the channel while a slot is free, placing each in the free
//!    slot whose cached tokens share the longest prefix with its prompt (only the rest of
//!    the prompt is evaluated);
//! 2. frees the slots of requests whose client went away (their receiver was dropped);
//! 3. fills ONE batch with the next token of every generating slot plus as many pending
//!    prompt tokens as fit, and calls `decode` once;
//! 4. samples a token for every slot that got logits, turns it into text, applies stop
//!    strings and limits, and sends the text on the request's channel.
//!
//! A slot keeps its tokens in the KV cache after its request ends, so a follow-up request
//! (the same conversation plus one more turn) reuses them.
//!
//! A request with several choices (OpenAI's `n`) takes a slot per choice at once. Only the
//! first evaluates the prompt; the others wait as its forks, and in the step that decodes
//! the prompt's last token they get a copy of its KV sequence and sample from the same
//! logits, each with its own seed.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};

use super::EngineError;
use super::embedder;
use super::handle::EngineLoad;
use super::model::Model;
use super::request::{
    Choice, EmbeddingJob, FinishReason, GenerationEvent, Job, TestHook, TokenLogprob, TopLogprob,
    Usage, Work,
};
use super::sampling;
use super::scheduler::{self, FreeSlot};
use super::settings::{EngineSettings, FlashAttention};
use super::stop::{StopMatcher, StopOutcome};

/// What the thread reports once the model is loaded and the context exists.
#[derive(Debug)]
pub(crate) struct Ready {
    pub model: Arc<Model>,
    pub load_time: Duration,
    pub embeddings: bool,
}

/// Body of the engine thread. Returns when every [`super::Engine`] handle is gone and the
/// requests in flight have finished.
pub(crate) fn run(
    path: &Path,
    settings: &EngineSettings,
    work: mpsc::Receiver<Work>,
    load: Arc<EngineLoad>,
    ready: oneshot::Sender<Result<Ready, EngineError>>,
) {
    let started = Instant::now();
    let model = match Model::load(path, settings) {
        Ok(model) => Arc::new(model),
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let context = match model.serving_context() {
        Ok(context) => context,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    // Embeddings take turns with decoding in a context of this thread, or run on a worker
    // of their own with threads of their own.
    let (embedding, embedder) = match (settings.embeddings, settings.embedding_threads) {
        (false, _) => (None, None),
        (true, None) => match model.embedding_context(None) {
            Ok(context) => (Some(context), None),
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        },
        (true, Some(threads)) => match embedder::spawn(Arc::clone(&model), threads) {
            Ok(worker) => (None, Some(worker)),
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        },
    };
    let announced = ready.send(Ok(Ready {
        model: Arc::clone(&model),
        load_time: started.elapsed(),
        embeddings: settings.embeddings,
    }));
    if announced.is_err() {
        // Nobody waits for this engine any more.
        return;
    }
    tracing::info!(
        slots = model.parallel().get(),
        slot_context = model.slot_context_size(),
        batch_size = model.batch_size().get(),
        embeddings = settings.embeddings,
        embedding_threads = settings.embedding_threads.map(NonZeroU32::get),
        "engine ready"
    );
    Batcher::new(
        &model,
        context,
        embedding,
        embedder,
        load,
        settings.arrival_window,
    )
    .run(work);
    tracing::info!("engine stopped");
}

/// One KV-cache sequence and the request using it, if any.
struct Slot {
    seq: i32,
    /// Tokens whose KV entries are in this sequence, in position order.
    cached: Vec<LlamaToken>,
    last_used: u64,
    active: Option<Active>,
}

/// A request being served by a slot.
struct Active {
    events: mpsc::UnboundedSender<GenerationEvent>,
    /// Held while the request runs: its admission place.
    _place: tokio::sync::OwnedSemaphorePermit,
    prompt: Vec<LlamaToken>,
    /// Tokens another node generated (and delivered) for this request, still to be fed
    /// back one per step, exactly as if this slot had sampled them (see [`Batcher::start`]).
    forced: std::collections::VecDeque<LlamaToken>,
    /// How the answer ends once `forced` is fed, when the other node delivered all of it
    /// and failed before saying it was over: every token `max_tokens` allows, or a stop
    /// string completed by the last one.
    ends_after_forced: Option<FinishReason>,
    /// Prompt tokens in the cache (reused ones included); the prompt is done when this
    /// reaches its length.
    evaluated: usize,
    cached_tokens: usize,
    max_tokens: usize,
    sampler: sampling::Sampler,
    /// Greedy without bias, penalties or grammar: the argmax of the logits, no sampler chain.
    plain_greedy: bool,
    stop: StopMatcher,
    /// Bytes of a character that the next token completes.
    pending_bytes: Vec<u8>,
    /// Tokens sampled since the last text went out (their text is held back).
    unannounced: Vec<LlamaToken>,
    /// Alternatives to report per token, when the request asked for log-probabilities.
    logprobs: Option<usize>,
    /// The log-probabilities of `unannounced`.
    unannounced_logprobs: Vec<TokenLogprob>,
    /// A later choice of a request whose first choice, admitted as (slot index, order),
    /// evaluates the prompt for both; cleared once its copy of that KV sequence is taken.
    fork_of: Option<(usize, u64)>,
    /// The prompt's KV entries were copied from the first choice, not evaluated here.
    shared_prompt: bool,
    /// Tokens generated, resumed ones included; also the answer position of the next one.
    generated: usize,
    /// Sampled and sent, to be decoded next step.
    next_token: Option<LlamaToken>,
    /// Where this slot's logits are in the current batch.
    logits_at: Option<i32>,
    order: u64,
    admitted: Instant,
    queued: Duration,
    first_token: Option<Duration>,
}

struct Batcher<'m> {
    model: &'m Model,
    context: LlamaContext<'m>,
    embedding: Option<LlamaContext<'m>>,
    /// The embeddings worker, when embeddings have threads of their own.
    embedder: Option<std::sync::mpsc::Sender<EmbeddingJob>>,
    batch: LlamaBatch<'static>,
    slots: Vec<Slot>,
    slot_context: usize,
    batch_size: usize,
    /// Fewest rows of a prompt chunk and fewest prompt tokens evaluated again after a cache
    /// hit ([`scheduler::min_prompt_rows`]); more than one with flash attention off, so that
    /// a prompt's logits do not depend on the batch.
    min_prompt_rows: usize,
    load: Arc<EngineLoad>,
    /// Monotonic counter for "last used" and admission order.
    clock: u64,
    rate: TokenRate,
    /// A request taken off the channel that waits for as many free slots as it has
    /// choices. Requests behind it wait too: admission stays first come, first served.
    held: Option<Job>,
    /// Embeddings requests, oldest first, served one input per step.
    embeddings: std::collections::VecDeque<PendingEmbedding>,
    /// Generation time still owed before the next embedding input (see `embed_one`).
    embedding_owed: Duration,
    /// Until when the first step after waking waits for requests on their way.
    gathering: Option<Instant>,
    arrival_window: Duration,
}

/// Most of the engine's time embeddings take while requests generate.
const EMBEDDING_SHARE: f64 = 0.2;

impl<'m> Batcher<'m> {
    fn new(
        model: &'m Model,
        context: LlamaContext<'m>,
        embedding: Option<LlamaContext<'m>>,
        embedder: Option<std::sync::mpsc::Sender<EmbeddingJob>>,
        load: Arc<EngineLoad>,
        arrival_window: Duration,
    ) -> Self {
        let batch_size = usize::try_from(context.n_batch()).unwrap_or(usize::MAX);
        let invariant = model.flash_attention() == FlashAttention::Off;
        let min_prompt_rows = scheduler::min_prompt_rows(
            batch_size,
            model.parallel().get() as usize,
            if invariant {
                scheduler::INVARIANT_PROMPT_ROWS
            } else {
                1
            },
        );
        let slots = (0..model.parallel().get())
            .map(|seq| Slot {
                seq: i32::try_from(seq).expect("slot count fits i32"),
                cached: Vec::new(),
                last_used: 0,
                active: None,
            })
            .collect();
        Batcher {
            model,
            context,
            embedding,
            embedder,
            batch: LlamaBatch::new(batch_size, 1),
            slots,
            slot_context: model.slot_context_size() as usize,
            batch_size,
            min_prompt_rows,
            load,
            clock: 0,
            rate: TokenRate::default(),
            held: None,
            embeddings: std::collections::VecDeque::new(),
            embedding_owed: Duration::ZERO,
            gathering: None,
            arrival_window,
        }
    }

    fn run(mut self, mut work: mpsc::Receiver<Work>) {
        while self.admit(&mut work) {
            self.drop_cancelled();
            self.embed_one();
            self.step();
            self.publish();
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Whether the first step after waking should wait a little longer: other requests are
    /// on their way and the arrival window is still open.
    fn more_arriving(&self) -> bool {
        self.gathering.is_some_and(|until| Instant::now() < until)
            && self.load.arriving.load(Ordering::Relaxed) > 0
    }

    fn busy(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.active.is_some())
            .count()
    }

    /// Takes requests while slots are free. Blocks only when nothing is being generated.
    /// `false` once the channel is closed and every request has finished.
    fn admit(&mut self, work: &mut mpsc::Receiver<Work>) -> bool {
        loop {
            let free = self.slots.len() - self.busy();
            if let Some(job) = self.held.take() {
                // With every slot free a job always fits: `Engine::submit_choices` refuses
                // more choices than slots.
                if job.choices.len() <= free || free == self.slots.len() {
                    self.start(job);
                    continue;
                }
                self.held = Some(job);
                return true;
            }
            if free == 0 {
                return true;
            }
            let item = if self.busy() > 0 || !self.embeddings.is_empty() {
                match work.try_recv() {
                    Ok(item) => item,
                    Err(mpsc::error::TryRecvError::Empty) if self.more_arriving() => {
                        std::thread::sleep(Duration::from_micros(100));
                        continue;
                    }
                    // Closed: finish what runs, then the blocking branch sees the end.
                    Err(_) => {
                        self.gathering = None;
                        return true;
                    }
                }
            } else {
                self.rate.idle();
                self.publish();
                match work.blocking_recv() {
                    Some(item) => {
                        self.gathering = Some(Instant::now() + self.arrival_window);
                        item
                    }
                    None => return false,
                }
            };
            match item {
                Work::Generate(job) => self.held = Some(*job),
                Work::Embed(job) => match &self.embedder {
                    Some(worker) => {
                        if let Err(std::sync::mpsc::SendError(job)) = worker.send(job) {
                            let stopped = "the embeddings worker has stopped".to_string();
                            let _ = job.reply.send(Err(stopped));
                        }
                    }
                    None => self.embeddings.push_back(PendingEmbedding {
                        vectors: Vec::with_capacity(job.inputs.len()),
                        job,
                    }),
                },
                Work::Hook(TestHook::Crash) => {
                    panic!("the engine thread was stopped by a test hook")
                }
                Work::Hook(TestHook::Hang(time)) => std::thread::sleep(time),
            }
        }
    }

    /// Puts a request's first choice into the best free slot and prepares its sampler; its
    /// other choices take the least recently used free slots as forks.
    fn start(&mut self, job: Job) {
        let Job {
            request,
            choices,
            samplers,
            submitted,
        } = job;
        // Choices whose client left while the request waited in the queue are dropped,
        // with their samplers.
        let (mut choices, samplers): (Vec<(usize, Choice)>, Vec<sampling::Sampler>) = choices
            .into_iter()
            .enumerate()
            .zip(samplers)
            .filter(|((_, choice), _)| !choice.events.is_closed())
            .unzip();
        if choices.is_empty() {
            return;
        }
        let queued = submitted.elapsed();
        let fail_all = |choices: Vec<(usize, Choice)>, message: &str| {
            for (_, choice) in choices {
                let _ = choice
                    .events
                    .send(GenerationEvent::Failed(message.to_string()));
            }
        };
        let resume = request.resume;
        let prompt = request.prompt;
        let Some(placement) = scheduler::place(&self.free_slots(), &prompt, self.min_prompt_rows)
        else {
            // admit() only calls this with enough free slots.
            fail_all(choices, "no free slot");
            return;
        };
        let max_tokens = match scheduler::generation_room(
            prompt.len(),
            request.max_tokens,
            self.slot_context,
        ) {
            Ok(room) => room,
            Err(_) => {
                // Handle::submit checked this already; kept for direct callers.
                let message = format!(
                    "the prompt ({} tokens) and max_tokens do not fit the slot context of {} tokens",
                    prompt.len(),
                    self.slot_context
                );
                fail_all(choices, &message);
                return;
            }
        };
        if resume.len() > max_tokens {
            // Handle::submit checked this already; kept for direct callers.
            let message = format!(
                "{} resumed tokens are more than this request may generate ({max_tokens})",
                resume.len()
            );
            fail_all(choices, &message);
            return;
        }
        let plain_greedy = sampling::is_plain_greedy(&request.sampling);
        let mut samplers = samplers;
        // Bring the first choice's state to where the other node left it: the sampler's
        // grammar and penalties, the stop-string matcher and a half-finished character.
        // Their text was delivered already, so what the replay releases is dropped.
        // (A resumed request has one choice.)
        samplers[0].replay(&resume);
        let mut lead_stop = StopMatcher::new(request.stop.clone());
        let mut pending_bytes = Vec::new();
        let vocab = self.model.llama().vocab();
        let mut replay_stopped = false;
        for &token in &resume {
            vocab.token_to_piece_into(token, &mut pending_bytes, false, None);
            replay_stopped |= matches!(
                lead_stop.push(&take_utf8(&mut pending_bytes)),
                StopOutcome::Stopped(_)
            );
        }
        let ends_after_forced = if replay_stopped {
            Some(FinishReason::Stop)
        } else {
            (!resume.is_empty() && resume.len() == max_tokens).then_some(FinishReason::Length)
        };
        let order = self.tick();
        let reused = self.claim(placement.slot, placement.reused);
        tracing::debug!(
            slot = self.slots[placement.slot].seq,
            prompt_tokens = prompt.len(),
            reused,
            max_tokens,
            choices = choices.len(),
            "request admitted"
        );
        let forks = choices.split_off(1);
        let mut samplers = samplers.into_iter();
        let (_, lead) = choices.pop().expect("one choice at least");
        let active = |choice: Choice, sampler, stop, evaluated| Active {
            events: choice.events,
            _place: choice.place,
            prompt: prompt.clone(),
            forced: std::collections::VecDeque::new(),
            ends_after_forced: None,
            evaluated,
            cached_tokens: evaluated,
            max_tokens,
            sampler,
            plain_greedy,
            stop,
            pending_bytes: Vec::new(),
            unannounced: Vec::new(),
            logprobs: request.logprobs,
            unannounced_logprobs: Vec::new(),
            fork_of: None,
            shared_prompt: false,
            generated: 0,
            next_token: None,
            logits_at: None,
            order,
            admitted: Instant::now(),
            queued,
            first_token: None,
        };
        let mut first = active(
            lead,
            samplers.next().expect("a sampler per choice"),
            lead_stop,
            reused,
        );
        first.forced = resume.into_iter().collect();
        first.ends_after_forced = ends_after_forced;
        first.pending_bytes = pending_bytes;
        self.slots[placement.slot].active = Some(first);
        for ((_, choice), sampler) in forks.into_iter().zip(samplers) {
            // Nothing of a fork's own cache is kept: the first choice's sequence replaces it.
            let Some(slot) = scheduler::place::<LlamaToken>(&self.free_slots(), &[], 1) else {
                let _ = choice
                    .events
                    .send(GenerationEvent::Failed("no free slot".into()));
                continue;
            };
            self.claim(slot.slot, 0);
            let mut fork = active(
                choice,
                sampler,
                StopMatcher::new(request.stop.clone()),
                prompt.len(),
            );
            fork.cached_tokens = 0;
            fork.fork_of = Some((placement.slot, order));
            fork.shared_prompt = true;
            self.slots[slot.slot].active = Some(fork);
        }
    }

    /// The slots no request is using.
    fn free_slots(&self) -> Vec<FreeSlot<'_, LlamaToken>> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| slot.active.is_none())
            .map(|(index, slot)| FreeSlot {
                index,
                cached: &slot.cached,
                last_used: slot.last_used,
            })
            .collect()
    }

    /// Keeps the first `keep` cached tokens of the slot at `index` and drops the rest of
    /// its sequence; returns how many were kept.
    fn claim(&mut self, index: usize, keep: usize) -> usize {
        let slot = &mut self.slots[index];
        slot.cached.truncate(keep);
        let position = u32::try_from(keep).unwrap_or(u32::MAX);
        let seq = u32::try_from(slot.seq).unwrap_or(0);
        if let Err(err) = self
            .context
            .clear_kv_cache_seq(Some(seq), Some(position), None)
        {
            tracing::warn!(%err, seq, "could not trim a slot's cache; evaluating the whole prompt");
            let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
            slot.cached.clear();
        }
        slot.cached.len()
    }

    /// After a decode: forks whose first choice has just evaluated the last prompt token
    /// take a copy of its KV sequence and the same logits to sample from, and join
    /// `in_batch`. A fork whose first choice is gone (cancelled, failed) evaluates the
    /// prompt on its own from the next step.
    fn join_forks(&mut self, in_batch: &mut Vec<usize>) {
        for index in 0..self.slots.len() {
            let Some((lead, order)) = self.slots[index].active.as_ref().and_then(|a| a.fork_of)
            else {
                continue;
            };
            let lead_state = self.slots[lead]
                .active
                .as_ref()
                .filter(|active| active.order == order)
                .map(|active| (active.logits_at, active.first_token.is_some()));
            match lead_state {
                // Still evaluating the prompt.
                Some((None, false)) => {}
                // The prompt's last token was in this step's batch.
                Some((Some(at), false)) => {
                    let (src, dst) = (self.slots[lead].seq, self.slots[index].seq);
                    if let Err(err) = self.context.copy_kv_cache_seq(src, dst, None, None) {
                        tracing::warn!(%err, src, dst, "could not copy a sequence; the choice evaluates the prompt itself");
                        self.unfork(index);
                        continue;
                    }
                    self.slots[index].cached = self.slots[lead].cached.clone();
                    let fork = self.slots[index].active.as_mut().expect("checked above");
                    fork.fork_of = None;
                    fork.logits_at = Some(at);
                    in_batch.push(index);
                }
                // Gone, or past its first token without this fork (cannot happen: both
                // are decided in the same step).
                _ => self.unfork(index),
            }
        }
    }

    /// Forks whose first choice is gone (cancelled, failed) evaluate the prompt themselves:
    /// nothing else would ever start them.
    fn release_orphans(&mut self) {
        for index in 0..self.slots.len() {
            let Some((lead, order)) = self.slots[index].active.as_ref().and_then(|a| a.fork_of)
            else {
                continue;
            };
            let lead_alive = self.slots[lead]
                .active
                .as_ref()
                .is_some_and(|active| active.order == order);
            if !lead_alive {
                self.unfork(index);
            }
        }
    }

    /// Turns a fork into a request of its own, which evaluates its prompt itself.
    fn unfork(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if let Some(active) = slot.active.as_mut() {
            active.fork_of = None;
            active.shared_prompt = false;
            active.evaluated = 0;
        }
        slot.cached.clear();
        let seq = u32::try_from(slot.seq).unwrap_or(0);
        let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
    }

    /// Frees the slots whose client dropped its receiver. What the slot decoded stays in
    /// its cache for reuse.
    fn drop_cancelled(&mut self) {
        let now = self.clock + 1;
        let mut freed = false;
        for slot in &mut self.slots {
            if slot
                .active
                .as_ref()
                .is_some_and(|active| active.events.is_closed())
            {
                tracing::debug!(slot = slot.seq, "client went away; slot freed");
                slot.active = None;
                slot.last_used = now;
                freed = true;
            }
        }
        if freed {
            self.clock = now;
        }
    }

    /// One batch, one decode, one round of sampling.
    fn step(&mut self) {
        self.release_orphans();
        self.batch.clear();
        let mut in_batch: Vec<usize> = Vec::new();
        let mut failure: Option<String> = None;

        // The next token of every generating slot.
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let Some(active) = slot.active.as_mut() else {
                continue;
            };
            let Some(token) = active.next_token.take() else {
                continue;
            };
            let position = position(slot.cached.len());
            if let Err(err) = self.batch.add(token, position, &[slot.seq], true) {
                failure = Some(err.to_string());
                break;
            }
            slot.cached.push(token);
            active.logits_at = Some(self.batch.n_tokens() - 1);
            in_batch.push(index);
        }

        // Then prompt tokens, oldest request first, as far as the batch allows.
        let mut prefilling: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| {
                let active = slot.active.as_ref()?;
                (active.evaluated < active.prompt.len()).then_some((active.order, index))
            })
            .collect();
        prefilling.sort_unstable();
        let wants: Vec<usize> = prefilling
            .iter()
            .map(|&(_, index)| {
                let active = self.slots[index].active.as_ref().expect("filtered above");
                active.prompt.len() - active.evaluated
            })
            .collect();
        let used = usize::try_from(self.batch.n_tokens()).unwrap_or(0);
        let shares = scheduler::share_prompt_budget(
            self.batch_size.saturating_sub(used),
            &wants,
            self.min_prompt_rows,
        );
        let mut prompt_tokens = 0u64;
        for (&(_, index), &take) in prefilling.iter().zip(&shares) {
            if take == 0 || failure.is_some() {
                continue;
            }
            let slot = &mut self.slots[index];
            let active = slot.active.as_mut().expect("filtered above");
            let last = active.prompt.len() - 1;
            for offset in active.evaluated..active.evaluated + take {
                let wants_logits = offset == last;
                let position = position(slot.cached.len());
                let token = active.prompt[offset];
                if let Err(err) = self.batch.add(token, position, &[slot.seq], wants_logits) {
                    failure = Some(err.to_string());
                    break;
                }
                slot.cached.push(token);
                if wants_logits {
                    active.logits_at = Some(self.batch.n_tokens() - 1);
                }
            }
            active.evaluated += take;
            prompt_tokens += take as u64;
            in_batch.push(index);
        }

        if self.batch.n_tokens() == 0 && failure.is_none() {
            return;
        }
        let started = Instant::now();
        if failure.is_none()
            && let Err(err) = self.context.decode(&mut self.batch)
        {
            failure = Some(format!("llama.cpp decode failed: {err}"));
        }
        if let Some(message) = failure {
            tracing::error!(%message, slots = in_batch.len(), "step failed");
            for index in in_batch {
                self.fail(index, &message);
            }
            return;
        }
        self.load
            .prompt_tokens_evaluated
            .fetch_add(prompt_tokens, Ordering::Relaxed);
        self.join_forks(&mut in_batch);

        let mut generated = 0u64;
        for index in in_batch {
            if self.sample(index) {
                generated += 1;
            }
        }
        self.load
            .generated_tokens
            .fetch_add(generated, Ordering::Relaxed);
        let elapsed = started.elapsed();
        self.rate.record(generated, elapsed);
        self.embedding_owed = self.embedding_owed.saturating_sub(elapsed);
    }

    /// Samples the next token of the slot at `index` if it has logits in this batch.
    /// `true` when a token was generated (an end-of-generation token is not counted).
    fn sample(&mut self, index: usize) -> bool {
        let model = self.model;
        let vocab = model.llama().vocab();
        let context = &self.context;
        let Some(active) = self.slots[index].active.as_mut() else {
            return false;
        };
        let Some(at) = active.logits_at.take() else {
            return false;
        };
        // A resumed token: decoded where this slot would have sampled it, so its step has
        // the same shape as on the node that generated it (one row for this sequence).
        // Evaluating them all in one prompt-like pass would be faster, but llama.cpp's
        // kernels do not give a row the same result in every batch shape, and greedy output
        // drifted at near-ties (bench/RESULTS.md).
        if let Some(token) = active.forced.pop_front() {
            active.generated += 1;
            if active.forced.is_empty()
                && let Some(reason) = active.ends_after_forced
            {
                // Only the end of the answer was lost: say it, without decoding further.
                // Text a stop string holds back is part of the stop; at the length limit it
                // is the answer's last piece, as the other node would have sent it.
                self.finish(index, reason, reason == FinishReason::Length);
                return false;
            }
            active.next_token = Some(token);
            return false;
        }
        let token = if active.plain_greedy {
            sampling::argmax(context.get_logits_ith(at))
        } else {
            active.sampler.sample(context, at, active.generated)
        };
        if active.first_token.is_none() {
            active.first_token = Some(active.admitted.elapsed());
        }
        if vocab.is_eog(token) {
            self.finish(index, FinishReason::Stop, true);
            return false;
        }
        if let Some(top) = active.logprobs {
            let (logprob, best) = sampling::logprobs(context.get_logits_ith(at), token, top);
            let bytes = |token| {
                let mut bytes = Vec::new();
                vocab.token_to_piece_into(token, &mut bytes, true, None);
                bytes
            };
            active.unannounced_logprobs.push(TokenLogprob {
                token,
                bytes: bytes(token),
                logprob,
                top: best
                    .into_iter()
                    .map(|(token, logprob)| TopLogprob {
                        token,
                        bytes: bytes(token),
                        logprob,
                    })
                    .collect(),
            });
        }
        active.generated += 1;
        active.unannounced.push(token);
        vocab.token_to_piece_into(token, &mut active.pending_bytes, false, None);
        let text = take_utf8(&mut active.pending_bytes);
        let (text, stopped) = match active.stop.push(&text) {
            StopOutcome::Continue(text) => (text, false),
            StopOutcome::Stopped(text) => (text, true),
        };
        if !text.is_empty() {
            let _ = active.events.send(GenerationEvent::Text {
                text,
                tokens: std::mem::take(&mut active.unannounced),
                logprobs: std::mem::take(&mut active.unannounced_logprobs),
            });
        }
        if stopped {
            self.finish(index, FinishReason::Stop, false);
        } else if active.generated >= active.max_tokens {
            self.finish(index, FinishReason::Length, true);
        } else {
            active.next_token = Some(token);
        }
        true
    }

    /// Ends the request in slot `index`; `flush` sends text still held back (not after a
    /// stop string, whose candidates are part of the stop).
    fn finish(&mut self, index: usize, finish_reason: FinishReason, flush: bool) {
        let now = self.tick();
        let slot = &mut self.slots[index];
        let Some(mut active) = slot.active.take() else {
            return;
        };
        slot.last_used = now;
        if flush {
            let mut text = String::from_utf8_lossy(&active.pending_bytes).into_owned();
            text.push_str(&active.stop.finish());
            if !text.is_empty() {
                let _ = active.events.send(GenerationEvent::Text {
                    text,
                    tokens: std::mem::take(&mut active.unannounced),
                    logprobs: std::mem::take(&mut active.unannounced_logprobs),
                });
            }
        }
        let usage = Usage {
            prompt_tokens: active.prompt.len(),
            cached_tokens: active.cached_tokens,
            shared_prompt: active.shared_prompt,
            completion_tokens: active.generated,
            time_to_first_token: active.first_token.unwrap_or_default(),
            queued: active.queued,
        };
        tracing::debug!(slot = slot.seq, ?finish_reason, ?usage, "request finished");
        let _ = active.events.send(GenerationEvent::Done {
            finish_reason,
            usage,
        });
    }

    /// Ends the request in slot `index` with an error and forgets the slot's cache, whose
    /// state after a failed decode is unknown.
    fn fail(&mut self, index: usize, message: &str) {
        let now = self.tick();
        let slot = &mut self.slots[index];
        if let Some(active) = slot.active.take() {
            let _ = active
                .events
                .send(GenerationEvent::Failed(message.to_string()));
        }
        slot.last_used = now;
        slot.cached.clear();
        let seq = u32::try_from(slot.seq).unwrap_or(0);
        let _ = self.context.clear_kv_cache_seq(Some(seq), None, None);
    }

    /// Embeds the next input of the oldest embeddings request, if any: one input per
    /// step, between decodes, so a request of many inputs delays a decode step by one
    /// input's evaluation at most instead of all of them. While requests generate,
    /// embeddings also get at most [`EMBEDDING_SHARE`] of the engine's time: after an
    /// input, the next waits until generation has had its share, so most steps of a
    /// stream see no embedding at all.
    fn embed_one(&mut self) {
        if self.busy() == 0 {
            self.embedding_owed = Duration::ZERO;
        } else if !self.embedding_owed.is_zero() {
            return;
        }
        let generating = self.busy() > 0;
        let Some(pending) = self.embeddings.front_mut() else {
            return;
        };
        let started = Instant::now();
        if pending.job.reply.is_closed() {
            // The client went away.
            self.embeddings.pop_front();
            return;
        }
        let index = pending.vectors.len();
        let outcome = match self.embedding.as_mut() {
            None => Err("model does not support embeddings".to_string()),
            Some(context) => embedder::embed_input(context, &pending.job.inputs[index], index),
        };
        if generating {
            self.embedding_owed = started
                .elapsed()
                .mul_f64((1.0 - EMBEDDING_SHARE) / EMBEDDING_SHARE);
        }
        match outcome {
            Ok(vector) => {
                pending.vectors.push(vector);
                if pending.vectors.len() == pending.job.inputs.len() {
                    let done = self.embeddings.pop_front().expect("the front exists");
                    let _ = done.job.reply.send(Ok(done.vectors));
                }
            }
            Err(message) => {
                let failed = self.embeddings.pop_front().expect("the front exists");
                let _ = failed.job.reply.send(Err(message));
            }
        }
    }

    /// Publishes the load figures for metrics and heartbeats.
    fn publish(&self) {
        self.load.steps.fetch_add(1, Ordering::Relaxed);
        self.load.busy_slots.store(self.busy(), Ordering::Relaxed);
        let cells = self.slots.iter().map(|slot| slot.cached.len()).sum();
        self.load.kv_cells_used.store(cells, Ordering::Relaxed);
        self.load.set_tokens_per_second(self.rate.per_second());
    }
}

/// An embeddings request in progress: the vectors of its first inputs.
struct PendingEmbedding {
    job: EmbeddingJob,
    vectors: Vec<Vec<f32>>,
}

/// Generated tokens per second over roughly the last few seconds of work: both the token
/// count and the time decay exponentially, so old steps fade out.
#[derive(Debug, Default)]
struct TokenRate {
    tokens: f64,
    seconds: f64,
}

impl TokenRate {
    const HALF_LIFE_SECONDS: f64 = 3.0;

    fn record(&mut self, tokens: u64, elapsed: Duration) {
        let dt = elapsed.as_secs_f64();
        let decay = (-dt * std::f64::consts::LN_2 / Self::HALF_LIFE_SECONDS).exp();
        self.tokens = self.tokens * decay + tokens as f64;
        self.seconds = self.seconds * decay + dt;
    }

    fn idle(&mut self) {
        *self = TokenRate::default();
    }

    fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.tokens / self.seconds
        } else {
            0.0
        }
    }
}

/// Moves the complete UTF-8 text at the front of `bytes` out; an incomplete character at
/// the end stays for the next token, invalid bytes become U+FFFD.
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let mut text = String::new();
    let mut rest: &[u8] = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(valid) => {
                text.push_str(valid);
                rest = &[];
                break;
            }
            Err(err) => {
                let (valid, after) = rest.split_at(err.valid_up_to());
                text.push_str(std::str::from_utf8(valid).expect("checked valid"));
                match err.error_len() {
                    Some(bad) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = &after[bad..];
                    }
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    bytes.drain(..bytes.len() - keep);
    text
}

/// KV position of the `index`-th token of a sequence; bounded by the slot context.
fn position(index: usize) -> i32 {
    i32::try_from(index).expect("token position fits the context size")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_over_tokens_is_joined() {
        let mut bytes = "é".as_bytes()[..1].to_vec();
        assert_eq!(take_utf8(&mut bytes), "");
        assert_eq!(bytes.len(), 1);
        bytes.extend_from_slice(&"é".as_bytes()[1..]);
        bytes.extend_from_slice(b"x");
        assert_eq!(take_utf8(&mut bytes), "éx");
        assert!(bytes.is_empty());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_held() {
        let mut bytes = vec![b'a', 0xff, b'b'];
        assert_eq!(take_utf8(&mut bytes), "a\u{fffd}b");
        assert!(bytes.is_empty());
    }

    #[test]
    fn token_rate_tracks_recent_steps() {
        let mut rate = TokenRate::default();
        assert_eq!(rate.per_second(), 0.0);
        for _ in 0..10 {
            rate.record(4, Duration::from_millis(100));
        }
        assert!((rate.per_second() - 40.0).abs() < 1e-6);
        rate.idle();
        assert_eq!(rate.per_second(), 0.0);
    }
}
