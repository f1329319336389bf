//! [`Engine`]: the cheap, cloneable handle that request handlers use to reach the engine
//! thread. It starts the thread (which loads the model and owns every llama.cpp object),
//! checks and tokenizes requests on the caller's thread, and enforces the bounded queue.
//!
//! Admission is a semaphore with `slots + queue` places: a request holds one from submission
//! until it ends (finished, failed or cancelled), so when every place is taken the next
//! request is refused at once with "queue full". The requests holding a place but no slot
//! are the queue.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llama_cpp_2::token::LlamaToken;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::EngineError;
use super::batcher;
use super::model::Model;
use super::request::{
    Choice, EmbeddingJob, GenerationEvent, GenerationRequest, Job, MAX_TOP_LOGPROBS, SubmitError,
    TestHook, Work,
};
use super::sampling;
use super::scheduler::generation_room;
use super::settings::EngineSettings;

/// Embeddings requests that may wait besides the generation places.
const EMBEDDING_BACKLOG: usize = 16;

/// Load figures the engine thread publishes after every step, read by metrics and (later)
/// heartbeats without asking the thread.
#[derive(Debug, Default)]
pub struct EngineLoad {
    pub busy_slots: AtomicUsize,
    /// KV cells holding a token of some slot (cached prefixes included).
    pub kv_cells_used: AtomicUsize,
    /// Generated tokens per second over recent steps (an `f64` as bits).
    tokens_per_second_bits: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub prompt_tokens_evaluated: AtomicU64,
    /// Turns of the engine loop (one per step, and one before each idle wait): the
    /// watchdog's evidence of progress.
    pub(crate) steps: AtomicU64,
    /// Generation requests on their way to the engine (see [`Arriving`]).
    pub(crate) arriving: AtomicUsize,
}

impl EngineLoad {
    pub fn steps(&self) -> u64 {
        self.steps.load(Ordering::Relaxed)
    }

    pub fn tokens_per_second(&self) -> f64 {
        f64::from_bits(self.tokens_per_second_bits.load(Ordering::Relaxed))
    }

    pub(crate) fn set_tokens_per_second(&self, value: f64) {
        self.tokens_per_second_bits
            .store(value.to_bits(), Ordering::Relaxed);
    }
}

/// A generation request on its way to the engine: its handler is checking it, tokenizing
/// and building samplers. An idle engine that wakes for one request gives the others of a
/// burst a moment to arrive, so they start in one batch instead of one step apart (see
/// [`EngineSettings::arrival_window`](super::EngineSettings::arrival_window)). Drop it once the request is submitted or refused.
#[derive(Debug)]
pub struct Arriving {
    load: Arc<EngineLoad>,
}

impl Drop for Arriving {
    fn drop(&mut self) {
        self.load.arriving.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Facts about the loaded model and how it is served.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub path: PathBuf,
    pub description: String,
    pub architecture: String,
    pub slots: usize,
    pub queue: usize,
    pub slot_context: usize,
    pub threads: NonZeroU32,
    pub chat_template: Option<String>,
    pub bos_text: String,
    pub eos_text: String,
    pub embeddings: bool,
    pub load_time: Duration,
    /// The model file's [`crate::model::fingerprint`]; empty if it could not be read.
    pub fingerprint: String,
}

#[derive(Debug)]
struct Shared {
    /// The engine thread, to tell whether it is still running.
    thread: std::thread::JoinHandle<()>,
    work: mpsc::Sender<Work>,
    places: Arc<Semaphore>,
    model: Arc<Model>,
    info: EngineInfo,
    load: Arc<EngineLoad>,
}

/// Handle on a running engine. Dropping the last handle stops the thread once the requests
/// in flight have finished.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// Starts the engine thread, loads the model there and waits until it serves.
    pub async fn start(path: &Path, settings: EngineSettings) -> Result<Engine, EngineError> {
        let places = settings.parallel.get() as usize + settings.queue;
        // Every admitted request fits in the channel; embeddings requests get the rest.
        let (work_tx, work_rx) = mpsc::channel(places + EMBEDDING_BACKLOG);
        let (ready_tx, ready_rx) = oneshot::channel();
        let load = Arc::new(EngineLoad::default());
        let thread_load = Arc::clone(&load);
        let path_owned = path.to_path_buf();
        let queue = settings.queue;
        let thread = std::thread::Builder::new()
            .name("llamanet-engine".into())
            .spawn(move || batcher::run(&path_owned, &settings, work_rx, thread_load, ready_tx))
            .map_err(|err| EngineError::Thread(err.to_string()))?;
        let batcher::Ready {
            model,
            load_time,
            embeddings,
        } = ready_rx
            .await
            .map_err(|_| EngineError::Thread("the engine thread ended while loading".into()))??;
        let info = EngineInfo {
            path: path.to_path_buf(),
            description: model.description(),
            architecture: model.architecture(),
            slots: model.parallel().get() as usize,
            queue,
            slot_context: model.slot_context_size() as usize,
            threads: model.threads(),
            chat_template: model.chat_template(),
            bos_text: model.bos_text(),
            eos_text: model.eos_text(),
            embeddings,
            load_time,
            fingerprint: crate::model::fingerprint(path).unwrap_or_default(),
        };
        Ok(Engine {
            shared: Arc::new(Shared {
                thread,
                work: work_tx,
                places: Arc::new(Semaphore::new(places)),
                model,
                info,
                load,
            }),
        })
    }

    pub fn info(&self) -> &EngineInfo {
        &self.shared.info
    }

    /// Marks a generation request as on its way, until the guard is dropped.
    pub fn arriving(&self) -> Arriving {
        self.shared.load.arriving.fetch_add(1, Ordering::Relaxed);
        Arriving {
            load: Arc::clone(&self.shared.load),
        }
    }

    pub fn load(&self) -> &EngineLoad {
        &self.shared.load
    }

    /// Whether the engine thread is still running (it ends only when the last handle is
    /// dropped, or on a crash).
    pub fn is_running(&self) -> bool {
        !self.shared.thread.is_finished()
    }

    /// Injects a failure into the engine thread; only `serve --test-hooks` exposes this.
    pub fn inject(&self, hook: TestHook) -> Result<(), SubmitError> {
        self.enqueue(Work::Hook(hook))
    }

    /// Requests waiting for a slot.
    pub fn queue_depth(&self) -> usize {
        let info = &self.shared.info;
        let taken = info.slots + info.queue - self.shared.places.available_permits();
        taken.saturating_sub(self.shared.load.busy_slots.load(Ordering::Relaxed))
    }

    /// Tokenizes `text`; `add_bos` adds the model's BOS token where it wants one.
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Vec<LlamaToken> {
        self.shared.model.tokenize(text, add_bos)
    }

    /// Valid token ids are `0..n_vocab`.
    pub fn n_vocab(&self) -> i32 {
        self.shared.model.n_vocab()
    }

    /// Queues a generation. Events arrive on the returned channel; dropping the receiver
    /// cancels the request (its slot is freed at the next step).
    pub fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<mpsc::UnboundedReceiver<GenerationEvent>, SubmitError> {
        let mut receivers = self.submit_choices(request, 1)?;
        Ok(receivers.pop().expect("one choice"))
    }

    /// Queues `choices` generations of one prompt (OpenAI's `n`): the prompt is evaluated
    /// once and its KV entries copied to the other choices' slots, each of which then
    /// samples with its own seed. They start together, so they need as many free slots;
    /// each takes a place of the queue. One receiver per choice, in order.
    pub fn submit_choices(
        &self,
        request: GenerationRequest,
        choices: usize,
    ) -> Result<Vec<mpsc::UnboundedReceiver<GenerationEvent>>, SubmitError> {
        self.check(&request)?;
        let info = &self.shared.info;
        if choices > info.slots {
            return Err(SubmitError::TooManyChoices {
                choices,
                slots: info.slots,
            });
        }
        if choices > 1 && !request.resume.is_empty() {
            return Err(SubmitError::ResumedChoices(choices));
        }
        let choices = choices.max(1);
        // Built here, on the caller's thread: compiling a grammar can take a while, and the
        // engine thread must not spend a step on it.
        let samplers = (0..choices)
            .map(|choice| {
                let mut params = request.sampling.clone();
                params.seed = params.seed.map(|seed| sampling::choice_seed(seed, choice));
                sampling::build(&self.shared.model, &params, info.slot_context)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let full = || SubmitError::QueueFull {
            slots: info.slots,
            queue: info.queue,
        };
        let mut places = Arc::clone(&self.shared.places)
            .try_acquire_many_owned(u32::try_from(choices).map_err(|_| full())?)
            .map_err(|_| full())?;
        let mut senders = Vec::with_capacity(choices);
        let mut receivers = Vec::with_capacity(choices);
        for _ in 0..choices {
            let (events_tx, events_rx) = mpsc::unbounded_channel();
            let place = places.split(1).expect("one place per choice");
            senders.push(Choice {
                events: events_tx,
                place,
            });
            receivers.push(events_rx);
        }
        let job = Job {
            request,
            choices: senders,
            samplers,
            submitted: Instant::now(),
        };
        self.enqueue(Work::Generate(Box::new(job)))?;
        Ok(receivers)
    }

    /// Mean-pooled embeddings of each input, computed between generation steps. Fails
    /// where the engine was started without embeddings.
    pub async fn embed(&self, inputs: Vec<Vec<LlamaToken>>) -> Result<Vec<Vec<f32>>, String> {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Work::Embed(EmbeddingJob { inputs, reply }))
            .map_err(|err| err.to_string())?;
        answer
            .await
            .map_err(|_| "the engine stopped before answering".to_string())?
    }

    fn check(&self, request: &GenerationRequest) -> Result<(), SubmitError> {
        if request.prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let slot_context = self.shared.info.slot_context;
        generation_room(request.prompt.len(), request.max_tokens, slot_context).map_err(
            |asked| match asked {
                Some(max_tokens) => SubmitError::ContextExceeded {
                    prompt_tokens: request.prompt.len(),
                    max_tokens,
                    slot_context,
                },
                None => SubmitError::PromptTooLong {
                    prompt_tokens: request.prompt.len(),
                    slot_context,
                },
            },
        )?;
        let n_vocab = self.n_vocab();
        if let Some(&(token, _)) = request
            .sampling
            .logit_bias
            .iter()
            .find(|(token, _)| !(0..n_vocab).contains(&token.0))
        {
            return Err(SubmitError::UnknownToken(token.0));
        }
        if let Some(top) = request.logprobs.filter(|&top| top > MAX_TOP_LOGPROBS) {
            return Err(SubmitError::TooManyLogprobs(top));
        }
        if let Some(token) = request
            .resume
            .iter()
            .find(|token| !(0..n_vocab).contains(&token.0))
        {
            return Err(SubmitError::UnknownResumeToken(token.0));
        }
        let room =
            generation_room(request.prompt.len(), request.max_tokens, slot_context).unwrap_or(0);
        if request.resume.len() > room {
            return Err(SubmitError::ResumeTooLong {
                resumed: request.resume.len(),
                room,
            });
        }
        Ok(())
    }

    fn enqueue(&self, work: Work) -> Result<(), SubmitError> {
        let info = &self.shared.info;
        self.shared.work.try_send(work).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => SubmitError::QueueFull {
                slots: info.slots,
                queue: info.queue,
            },
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })
    }
}
