//! The continuous-batching engine on the real default model (Gemma 3 270M Q4_K_M): several
//! requests at once all finish with the right counts, a seed reproduces its output, a
//! dropped receiver frees its slot, prompt prefixes are reused, stop strings cut output,
//! a JSON grammar holds, oversized requests are refused before they are queued, and a
//! request resumed from any point of another's answer (as a node continuing a dead node's
//! stream does) writes exactly the rest of that answer, greedy and seeded, several choices
//! of one prompt evaluate it once, and log-probabilities are the model's.
//!
//! One engine serves every check (loading per test would dominate the run time), so the
//! checks run in sequence inside one test. Speed is printed, never asserted.

#![cfg(feature = "engine")]

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use llama_cpp_2::token::LlamaToken;
use llamanet_node::engine::{
    Engine, EngineSettings, FinishReason, FlashAttention, GenerationEvent, GenerationRequest,
    SamplingParams, SubmitError, TokenLogprob, Usage,
};
use tokio::sync::mpsc::UnboundedReceiver;

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("LLAMANET_MODEL") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/llamanet/models/gemma-3-270m-q4_k_m.gguf")
}

struct Outcome {
    text: String,
    finish: FinishReason,
    usage: Usage,
    /// Each text event with the tokens it announced.
    pieces: Vec<(String, Vec<LlamaToken>)>,
    /// Log-probabilities of the tokens, when asked for.
    logprobs: Vec<TokenLogprob>,
}

async fn collect(mut events: UnboundedReceiver<GenerationEvent>) -> Outcome {
    let mut text = String::new();
    let mut pieces = Vec::new();
    let mut logprobs = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("generation finishes in time")
            .expect("engine answers");
        match event {
            GenerationEvent::Text {
                text: piece,
                tokens,
                logprobs: entries,
            } => {
                text.push_str(&piece);
                pieces.push((piece, tokens));
                logprobs.extend(entries);
            }
            GenerationEvent::Done {
                finish_reason,
                usage,
            } => {
                return Outcome {
                    text,
                    finish: finish_reason,
                    usage,
                    pieces,
                    logprobs,
                };
            }
            GenerationEvent::Failed(message) => panic!("generation failed: {message}"),
        }
    }
}

fn request(
    engine: &Engine,
    prompt: &str,
    max_tokens: usize,
    sampling: SamplingParams,
) -> GenerationRequest {
    GenerationRequest {
        prompt: engine.tokenize(prompt, true),
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        sampling,
        ..GenerationRequest::default()
    }
}

/// Resumes `original` (an answer to `base`) after its first `events` text events: the
/// rest must be exactly the text of the events after those, with the same counts.
async fn check_resume(
    engine: &Engine,
    base: &GenerationRequest,
    original: &Outcome,
    events: usize,
) {
    let resume: Vec<LlamaToken> = original.pieces[..events]
        .iter()
        .flat_map(|(_, tokens)| tokens.iter().copied())
        .collect();
    let expected: String = original.pieces[events..]
        .iter()
        .map(|(text, _)| text.as_str())
        .collect();
    let mut resumed = base.clone();
    resumed.resume = resume.clone();
    let rest = collect(engine.submit(resumed).unwrap()).await;
    assert_eq!(
        rest.text,
        expected,
        "resumed after {} tokens ({events} events)",
        resume.len()
    );
    assert_eq!(rest.finish, original.finish);
    assert_eq!(
        rest.usage.completion_tokens,
        original.usage.completion_tokens
    );
    assert_eq!(rest.usage.prompt_tokens, original.usage.prompt_tokens);
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

async fn wait_until_idle(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine
        .load()
        .busy_slots
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        assert!(Instant::now() < deadline, "slots were not freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_batching_on_the_default_model() {
    let path = model_path();
    assert!(
        path.is_file(),
        "model file {} is missing; see engine_smoke.rs",
        path.display()
    );
    let settings = EngineSettings {
        parallel: NonZeroU32::new(4).unwrap(),
        context_size: NonZeroU32::new(4096).unwrap(),
        batch_size: NonZeroU32::new(256).unwrap(),
        queue: 4,
        // Long, so that the arrival check below does not depend on this machine's speed.
        arrival_window: ARRIVAL_WINDOW,
        ..EngineSettings::default()
    };
    let engine = Engine::start(&path, settings).await.expect("engine starts");
    assert_eq!(engine.info().slots, 4);
    assert_eq!(engine.info().slot_context, 1024);

    // Greedy is deterministic: alone and batched with others, the same text.
    let alone = collect(
        engine
            .submit(request(&engine, "The capital of France is", 32, greedy()))
            .unwrap(),
    )
    .await;
    assert_eq!(alone.usage.completion_tokens, 32);
    assert_eq!(alone.finish, FinishReason::Length);

    // Six requests on four slots and a queue of four: all finish, counts are exact.
    let started = Instant::now();
    let prompts = [
        "The capital of France is",
        "Once upon a time",
        "List three fruits:",
        "The sun rises in the",
        "Water boils at",
        "My favourite colour is",
    ];
    let receivers: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            engine
                .submit(request(&engine, prompt, 32, greedy()))
                .unwrap()
        })
        .collect();
    let mut outcomes = Vec::new();
    for receiver in receivers {
        outcomes.push(collect(receiver).await);
    }
    let elapsed = started.elapsed();
    let generated: usize = outcomes.iter().map(|o| o.usage.completion_tokens).sum();
    println!(
        "6 requests on 4 slots: {generated} tokens in {:.2} s, {:.1} tokens/s aggregate",
        elapsed.as_secs_f64(),
        generated as f64 / elapsed.as_secs_f64()
    );
    for outcome in &outcomes {
        assert!(outcome.usage.completion_tokens <= 32);
        if outcome.finish == FinishReason::Length {
            assert_eq!(outcome.usage.completion_tokens, 32);
        }
    }
    // Built without repacked weights (.cargo/config.toml), a row's result does not depend
    // on its batch: batched greedy output is the same text as alone, not just its start.
    assert_eq!(
        outcomes[0].text, alone.text,
        "batched greedy output differs from the same prompt alone"
    );

    // Prefix reuse: the same prompt again reuses all but its last token (flash attention
    // is on here, so no minimum of rows is kept; the test below has it off). Run it once
    // first: which slot still holds it after the six batched requests depends on timing.
    collect(
        engine
            .submit(request(&engine, "The capital of France is", 4, greedy()))
            .unwrap(),
    )
    .await;
    let again = collect(
        engine
            .submit(request(&engine, "The capital of France is", 4, greedy()))
            .unwrap(),
    )
    .await;
    assert_eq!(again.usage.cached_tokens, again.usage.prompt_tokens - 1);

    // A seed reproduces sampled output.
    let seeded = || SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: Some(1234),
        ..SamplingParams::default()
    };
    let first = collect(
        engine
            .submit(request(
                &engine,
                "Write a poem about the sea:",
                24,
                seeded(),
            ))
            .unwrap(),
    )
    .await;
    let second = collect(
        engine
            .submit(request(
                &engine,
                "Write a poem about the sea:",
                24,
                seeded(),
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(first.text, second.text, "same seed, same text");

    // Stop strings end the output and are not part of it.
    let mut stopping = request(&engine, "Count: 1, 2, 3, 4, 5, 6,", 40, greedy());
    stopping.stop = vec![" 9".into()];
    let stopped = collect(engine.submit(stopping).unwrap()).await;
    assert_eq!(
        stopped.finish,
        FinishReason::Stop,
        "text: {:?}",
        stopped.text
    );
    assert!(!stopped.text.contains(" 9"), "{:?}", stopped.text);

    // A grammar forces JSON.
    let grammar = llama_cpp_2::json_schema_to_grammar(
        r#"{"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name","age"]}"#,
    )
    .unwrap();
    let mut json_request = request(&engine, "A person as JSON:", 64, greedy());
    json_request.sampling.grammar = Some(grammar);
    let json = collect(engine.submit(json_request).unwrap()).await;
    let value: serde_json::Value = serde_json::from_str(&json.text).expect("grammar gives JSON");
    assert!(value["age"].is_i64(), "{value}");

    // Resuming another node's answer, at the start, in the middle, near the end and after
    // its last token, greedy
    // and seeded (each position draws from its own seeded generator), also with a stop
    // string in play: the rest is exactly what the first run wrote after that point.
    let mut cases = vec![
        request(&engine, "Explain why the sky is blue:", 48, greedy()),
        request(&engine, "Write a poem about the sea:", 48, seeded()),
    ];
    let mut stopping = request(&engine, "Count: 1, 2, 3, 4, 5, 6,", 40, greedy());
    stopping.stop = vec![" 12".into()];
    cases.push(stopping);
    for base in &cases {
        let original = collect(engine.submit(base.clone()).unwrap()).await;
        let n = original.pieces.len();
        assert!(n >= 4, "too short to resume: {:?}", original.text);
        // All of it (`n`): the node failed after the last token, before the answer's end.
        for events in [0, 1, n / 2, n - 1, n] {
            check_resume(&engine, base, &original, events).await;
        }
    }
    // Bad resumes are refused before queueing, each with its reason.
    let mut unknown = request(&engine, "Hello", 8, greedy());
    unknown.resume = vec![LlamaToken(engine.n_vocab())];
    assert_eq!(
        engine.submit(unknown).unwrap_err(),
        SubmitError::UnknownResumeToken(engine.n_vocab())
    );
    let mut overlong = request(&engine, "Hello", 8, greedy());
    overlong.resume = vec![LlamaToken(1); 9];
    assert!(matches!(
        engine.submit(overlong),
        Err(SubmitError::ResumeTooLong {
            resumed: 9,
            room: 8
        })
    ));

    check_choices_and_logprobs(&engine, &alone, seeded()).await;
    check_arrivals(&engine).await;

    // Cancellation: dropping the receiver frees the slot within a step or two.
    let long = engine
        .submit(request(&engine, "Tell me a long story:", 500, greedy()))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(long);
    wait_until_idle(&engine).await;

    // Requests that cannot fit are refused before queueing.
    let too_long = request(&engine, "Hello", 2000, greedy());
    assert!(matches!(
        engine.submit(too_long),
        Err(SubmitError::ContextExceeded { .. })
    ));
    let empty = GenerationRequest {
        max_tokens: Some(1),
        sampling: greedy(),
        ..GenerationRequest::default()
    };
    assert_eq!(engine.submit(empty).unwrap_err(), SubmitError::EmptyPrompt);

    // A full queue is refused at once: 4 slots busy + 4 waiting, the ninth is turned away.
    let mut held = Vec::new();
    let mut refused = false;
    for _ in 0..12 {
        match engine.submit(request(&engine, "Tell me a long story:", 200, greedy())) {
            Ok(receiver) => held.push(receiver),
            Err(SubmitError::QueueFull { .. }) => {
                refused = true;
                break;
            }
            Err(other) => panic!("unexpected refusal: {other}"),
        }
    }
    assert!(refused, "the queue never filled");
    drop(held);
    wait_until_idle(&engine).await;
}

const ARRIVAL_WINDOW: Duration = Duration::from_secs(1);

/// An engine that wakes for a request while another is on its way (its handler still
/// preparing it) starts both in one step; one that never arrives holds the first back no
/// longer than the arrival window.
async fn check_arrivals(engine: &Engine) {
    wait_until_idle(engine).await;
    let on_its_way = engine.arriving();
    let first = engine
        .submit(request(engine, "One, two,", 1, greedy()))
        .unwrap();
    // Far longer than a step of a short prompt: without the wait, the first request would
    // be done before the second is even submitted.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = engine
        .submit(request(engine, "Red, green,", 1, greedy()))
        .unwrap();
    drop(on_its_way);
    let (first, second) = tokio::join!(collect(first), collect(second));
    assert!(
        first.usage.time_to_first_token >= Duration::from_millis(200),
        "the first request did not wait for the second: {:?}",
        first.usage
    );
    assert!(
        first.usage.time_to_first_token < ARRIVAL_WINDOW,
        "the wait should end when the second arrives: {:?}",
        first.usage
    );
    assert_eq!(
        (
            first.usage.completion_tokens,
            second.usage.completion_tokens
        ),
        (1, 1)
    );

    // Announced but never submitted (a handler that is slow, or refuses it later): the
    // request that woke the engine waits out the window, then goes on alone.
    wait_until_idle(engine).await;
    let never = engine.arriving();
    let started = Instant::now();
    let lonely = collect(
        engine
            .submit(request(engine, "One, two,", 1, greedy()))
            .unwrap(),
    )
    .await;
    drop(never);
    assert!(
        lonely.usage.time_to_first_token >= ARRIVAL_WINDOW - Duration::from_millis(50),
        "{:?}",
        lonely.usage
    );
    assert!(
        started.elapsed() < ARRIVAL_WINDOW * 10,
        "{:?}",
        started.elapsed()
    );

    // Nothing on its way: no wait at all.
    wait_until_idle(engine).await;
    let alone = collect(
        engine
            .submit(request(engine, "Red, green,", 1, greedy()))
            .unwrap(),
    )
    .await;
    assert!(
        alone.usage.time_to_first_token < Duration::from_millis(500),
        "{:?}",
        alone.usage
    );
}

/// `n` > 1: the prompt is evaluated once for all choices (the others copy its KV
/// sequence), greedy choices all equal the answer alone, seeded ones differ from each
/// other and repeat with the seed; log-probabilities are the model's distribution.
async fn check_choices_and_logprobs(engine: &Engine, alone: &Outcome, seeded: SamplingParams) {
    wait_until_idle(engine).await;
    let evaluated = || {
        engine
            .load()
            .prompt_tokens_evaluated
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // A prompt no slot holds, so that all of it is evaluated.
    let prompt = "Three facts about the planet Jupiter, one per line:";
    let before = evaluated();
    let receivers = engine
        .submit_choices(request(engine, prompt, 16, greedy()), 3)
        .unwrap();
    assert_eq!(receivers.len(), 3);
    let mut outcomes = Vec::new();
    for receiver in receivers {
        outcomes.push(collect(receiver).await);
    }
    let prompt_tokens = outcomes[0].usage.prompt_tokens;
    assert_eq!(
        evaluated() - before,
        (prompt_tokens - outcomes[0].usage.cached_tokens) as u64,
        "the prompt was evaluated once for three choices"
    );
    assert!(!outcomes[0].usage.shared_prompt);
    for outcome in &outcomes[1..] {
        assert!(outcome.usage.shared_prompt);
        assert_eq!(outcome.usage.prompt_tokens, prompt_tokens);
        assert_eq!(outcome.text, outcomes[0].text, "greedy choices agree");
    }
    // The same holds for a prompt the slots did cache: three greedy choices of the
    // earlier prompt are the answer it got alone.
    let receivers = engine
        .submit_choices(request(engine, "The capital of France is", 32, greedy()), 3)
        .unwrap();
    for receiver in receivers {
        assert_eq!(collect(receiver).await.text, alone.text);
    }

    // Sampled choices differ, and the seed repeats all of them.
    let sample = || async {
        let receivers = engine
            .submit_choices(
                request(engine, "Write a poem about the sea:", 24, seeded.clone()),
                2,
            )
            .unwrap();
        let mut texts = Vec::new();
        for receiver in receivers {
            texts.push(collect(receiver).await.text);
        }
        texts
    };
    let first = sample().await;
    assert_ne!(first[0], first[1], "two seeded choices wrote the same text");
    assert_eq!(sample().await, first, "the seed repeats every choice");

    // The first choice's client leaves at once (before or while the prompt is evaluated):
    // the other choices still answer, all alike.
    let mut receivers = engine
        .submit_choices(
            request(
                engine,
                "A long list of the rivers of Europe, with their lengths:",
                8,
                greedy(),
            ),
            3,
        )
        .unwrap();
    drop(receivers.remove(0));
    let mut texts = Vec::new();
    for receiver in receivers {
        texts.push(collect(receiver).await.text);
    }
    assert_eq!(texts[0], texts[1]);
    assert!(!texts[0].is_empty());

    // More choices than slots can never run together: refused before queueing.
    assert_eq!(
        engine
            .submit_choices(request(engine, "Hello", 4, greedy()), 5)
            .unwrap_err(),
        SubmitError::TooManyChoices {
            choices: 5,
            slots: 4
        }
    );

    // Log-probabilities: one per token; under greedy the chosen token is the most likely
    // alternative, alternatives come most likely first, and their probabilities sum to at
    // most one.
    let mut asking = request(engine, "The capital of France is", 12, greedy());
    asking.logprobs = Some(5);
    let answer = collect(engine.submit(asking).unwrap()).await;
    assert_eq!(answer.logprobs.len(), answer.usage.completion_tokens);
    let tokens: Vec<LlamaToken> = answer.pieces.iter().flat_map(|(_, t)| t.clone()).collect();
    for (entry, token) in answer.logprobs.iter().zip(&tokens) {
        assert_eq!(entry.token, *token);
        assert_eq!(entry.top.len(), 5);
        assert_eq!(entry.top[0].token, entry.token, "{entry:?}");
        assert!((entry.top[0].logprob - entry.logprob).abs() < 1e-6);
        assert!(entry.logprob <= 0.0 && entry.logprob.is_finite());
        assert!(entry.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        let mass: f32 = entry.top.iter().map(|alt| alt.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "{mass}");
    }
    let bytes: Vec<u8> = answer
        .logprobs
        .iter()
        .flat_map(|e| e.bytes.clone())
        .collect();
    assert_eq!(String::from_utf8_lossy(&bytes), answer.text);
    // The same text as without them: asking does not change what is generated.
    let plain = collect(
        engine
            .submit(request(engine, "The capital of France is", 12, greedy()))
            .unwrap(),
    )
    .await;
    assert_eq!(plain.text, answer.text);
    assert!(plain.logprobs.is_empty());
    let mut greedy_many = request(engine, "Hello", 4, greedy());
    greedy_many.logprobs = Some(21);
    assert_eq!(
        engine.submit(greedy_many).unwrap_err(),
        SubmitError::TooManyLogprobs(21)
    );
}

/// Without flash attention, decoding on the CPU is batch-invariant: a token's logits are
/// the same bits whatever shares its step and however full the cache is (prompt chunks
/// and cache hits keep at least 8 rows, see engine/scheduler.rs). With flash attention
/// llama.cpp picks one of three kernels per step (a lone query row over 512 or more cached
/// cells takes its split-KV kernel, 64 or more rows its tiled one, the rest the plain one),
/// each summing in its own order, so the same prompt's logits move in their last bits with
/// the batch, and a greedy answer whose two best tokens are close changes.
/// A ~700-token prompt (long enough for every kernel) gives the same tokens with the same
/// log-probabilities alone, beside three other requests, again from its cached prefix and
/// resumed at any point: what a stream continued on another node needs to be exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_decode_the_same_in_any_batch_without_flash_attention() {
    let settings = EngineSettings {
        parallel: NonZeroU32::new(4).unwrap(),
        context_size: NonZeroU32::new(4096).unwrap(),
        batch_size: NonZeroU32::new(256).unwrap(),
        queue: 4,
        flash_attention: FlashAttention::Off,
        ..EngineSettings::default()
    };
    let engine = Engine::start(&model_path(), settings)
        .await
        .expect("engine starts");
    let log: String = (1..=40)
        .map(|day| {
            format!(
                "Day {day}: the wind was {} knots and the lamp burned {} hours. ",
                10 + day * 3 % 17,
                8 + day % 5
            )
        })
        .collect();
    let prompt = format!("A lighthouse keeper's log.\n{log}\nSummary of the storm season:");
    let mut base = request(&engine, &prompt, 32, greedy());
    base.logprobs = Some(1);
    assert!(
        base.prompt.len() > 512,
        "the prompt must reach the split-KV kernel: {} tokens",
        base.prompt.len()
    );
    // Each generated token with the exact bits of its log-probability.
    let bits = |outcome: &Outcome| -> Vec<(LlamaToken, u32)> {
        outcome
            .logprobs
            .iter()
            .map(|entry| (entry.token, entry.logprob.to_bits()))
            .collect()
    };

    let alone = collect(engine.submit(base.clone()).unwrap()).await;
    assert_eq!(alone.usage.completion_tokens, 32);
    let expected = bits(&alone);
    assert_eq!(expected.len(), 32);

    // Beside three others, one of them as long: the same bits.
    let others: Vec<_> = [
        prompt.replace("lighthouse", "harbour"),
        "Once upon a time".to_string(),
        "List three fruits:".to_string(),
    ]
    .iter()
    .map(|p| engine.submit(request(&engine, p, 32, greedy())).unwrap())
    .collect();
    let batched = collect(engine.submit(base.clone()).unwrap()).await;
    for receiver in others {
        collect(receiver).await;
    }
    assert_eq!(bits(&batched), expected, "batched beside three others");

    // From its cached prefix, the last prompt token decoded alone: the same bits.
    wait_until_idle(&engine).await;
    let again = collect(engine.submit(base.clone()).unwrap()).await;
    assert_eq!(
        again.usage.cached_tokens,
        again.usage.prompt_tokens - 8,
        "all but the last 8 prompt tokens come from the cache"
    );
    assert_eq!(bits(&again), expected, "again from the cached prefix");

    // Resumed after 1, 16 and 31 of its tokens: the rest, bit for bit.
    for done in [1, 16, 31] {
        let mut resumed = base.clone();
        resumed.resume = expected[..done].iter().map(|(token, _)| *token).collect();
        let rest = collect(engine.submit(resumed).unwrap()).await;
        assert_eq!(bits(&rest), expected[done..], "resumed after {done} tokens");
    }
}
