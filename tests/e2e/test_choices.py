"""Several choices per request (`n`) and log-probabilities, through the official client.

The node evaluates a prompt once for all its choices (the other slots copy its KV cache), so
`usage.prompt_tokens` counts the prompt once, as OpenAI does; log-probabilities are the model's
own distribution over its vocabulary, the same whether streamed or not.
"""

import math

import openai
import pytest

from conftest import MODEL_ID, SLOTS

ASK = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_n_choices_are_indexed_sampled_apart_and_count_the_prompt_once(client):
    single = client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=16, temperature=0)
    response = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=16, temperature=1.0, seed=11, n=3)
    assert [c.index for c in response.choices] == [0, 1, 2]
    texts = [c.message.content for c in response.choices]
    assert len(set(texts)) > 1, texts
    assert response.usage.prompt_tokens == single.usage.prompt_tokens
    assert 3 <= response.usage.completion_tokens <= 48
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    # The seed repeats every choice.
    again = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=16, temperature=1.0, seed=11, n=3)
    assert [c.message.content for c in again.choices] == texts


def test_greedy_choices_equal_the_single_answer(client):
    single = client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=16, temperature=0)
    response = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=16, temperature=0, n=2)
    assert [c.message.content for c in response.choices] == [single.choices[0].message.content] * 2
    assert response.usage.completion_tokens == 2 * single.usage.completion_tokens


def test_streamed_choices_interleave_each_with_role_and_finish(client):
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=12, temperature=0, n=2, stream=True,
        stream_options={"include_usage": True})
    texts, roles, finishes, usage = {0: "", 1: ""}, set(), {}, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.add(choice.index)
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert roles == {0, 1} and set(finishes) == {0, 1}
    assert texts[0] == texts[1] and texts[0]
    single = client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=12, temperature=0)
    assert usage.prompt_tokens == single.usage.prompt_tokens
    assert usage.completion_tokens == 2 * single.usage.completion_tokens


def test_completions_take_n_per_prompt_in_prompt_order(client):
    prompts = ["One, two,", "A, B,"]
    response = client.completions.create(
        model=MODEL_ID, prompt=prompts, max_tokens=4, temperature=0, n=2)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    alone = [client.completions.create(model=MODEL_ID, prompt=p, max_tokens=4, temperature=0)
             for p in prompts]
    assert [c.text for c in response.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert response.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)


def check_chat_logprobs(content, text, top):
    assert "".join(entry.token for entry in content) == text
    for entry in content:
        assert entry.logprob <= 0 and math.isfinite(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
        assert len(entry.top_logprobs) == top
        if top:
            # Greedy: the chosen token is the most likely one.
            assert entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
            values = [alt.logprob for alt in entry.top_logprobs]
            assert values == sorted(values, reverse=True)
            assert sum(math.exp(v) for v in values) <= 1 + 1e-4


def test_chat_logprobs_plain_and_streamed_agree(client):
    response = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3)
    choice = response.choices[0]
    content = choice.logprobs.content
    assert len(content) == response.usage.completion_tokens
    check_chat_logprobs(content, choice.message.content, 3)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3,
        stream=True)
    streamed = [entry for chunk in stream for c in chunk.choices if c.logprobs and c.logprobs.content
                for entry in c.logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-5)
    # Without top_logprobs: the chosen tokens only.
    bare = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=10, temperature=0, logprobs=True)
    check_chat_logprobs(bare.choices[0].logprobs.content, bare.choices[0].message.content, 0)
    # Not asked for: null, as OpenAI answers.
    plain = client.chat.completions.create(model=MODEL_ID, messages=ASK, max_tokens=10, temperature=0)
    assert plain.choices[0].logprobs is None
    assert plain.choices[0].message.content == choice.message.content


def test_sampled_logprobs_are_the_models_not_the_samplers(client):
    # At temperature 2 the chosen token is often not the most likely one; its reported
    # log-probability is still under the model's distribution, at most the best one's.
    response = client.chat.completions.create(
        model=MODEL_ID, messages=ASK, max_tokens=16, temperature=2.0, seed=5, logprobs=True,
        top_logprobs=20)
    for entry in response.choices[0].logprobs.content:
        assert entry.logprob <= entry.top_logprobs[0].logprob + 1e-6
        assert math.exp(entry.top_logprobs[0].logprob) <= 1


def test_completion_logprobs_in_the_legacy_shape(client):
    response = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2)
    choice = response.choices[0]
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == response.usage.completion_tokens
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens)
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    for token, lp, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert 1 <= len(top) <= 2
        assert max(top.values()) == pytest.approx(lp, abs=1e-6)
        assert token in top
    offsets = logprobs.text_offset
    assert offsets[0] == 0
    assert offsets == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(offsets))]
    stream = client.completions.create(
        model=MODEL_ID, prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=2,
        stream=True)
    chunks = [c.choices[0].logprobs for c in stream if c.choices and c.choices[0].logprobs]
    assert [t for c in chunks for t in c.tokens] == logprobs.tokens
    assert [o for c in chunks for o in c.text_offset] == offsets


@pytest.mark.parametrize("kwargs, param", [
    (dict(logprobs=6), "logprobs"),
    (dict(logprobs=True), "logprobs"),
    (dict(n=SLOTS + 1), "n"),
    (dict(n=17), "n"),
])
def test_bad_completion_choices_and_logprobs_are_400(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL_ID, prompt="x", max_tokens=2, **kwargs)
    assert caught.value.body["param"] == param, caught.value.body


def test_streamed_tool_answers_have_one_choice(client):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL_ID, messages=ASK, tools=tools, n=2, stream=True, max_tokens=4)
    assert caught.value.body["param"] == "n"
