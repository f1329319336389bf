"""The node through the official `openai` Python client, as users will drive it.

Run: tests/e2e/run.sh (creates the venv, builds the release binary, runs pytest).
"""

import json
import threading
import time
import urllib.error
import urllib.request

import jsonschema
import openai
import pytest

from conftest import API_KEY, MODEL_ID, SLOTS, Server, gauge, health_json, http_get

MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def chat(client, content, **kwargs):
    return client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": content}], **kwargs
    )


def test_models_lists_the_served_model(client):
    ids = [model.id for model in client.models.list().data]
    assert ids == [MODEL_ID]


def test_chat_not_streamed(client):
    response = chat(client, "What is the capital of France?", max_tokens=16, temperature=0)
    choice = response.choices[0]
    assert response.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_streamed_has_role_first_finish_last_and_usage(client):
    stream = chat(
        client, "Name three colors.", max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert chunks[-1].choices == []
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens <= 12


def test_streamed_and_plain_greedy_text_agree(client):
    plain = chat(client, "Say something about cats.", max_tokens=20, temperature=0)
    stream = chat(client, "Say something about cats.", max_tokens=20, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plain.choices[0].message.content


def test_completions_plain_and_streamed(client):
    response = client.completions.create(model=MODEL_ID, prompt="The sky is", max_tokens=8, temperature=0)
    assert response.object == "text_completion"
    assert response.choices[0].text
    stream = client.completions.create(
        model=MODEL_ID, prompt="The sky is", max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == response.choices[0].text
    assert chunks[-1].usage.completion_tokens == response.usage.completion_tokens


def test_completions_with_several_prompts(client):
    response = client.completions.create(
        model=MODEL_ID, prompt=["One, two,", "A, B,"], max_tokens=4, temperature=0
    )
    assert sorted(c.index for c in response.choices) == [0, 1]
    assert response.usage.completion_tokens == 8


def test_max_tokens_gives_length(client):
    response = client.completions.create(
        model=MODEL_ID, prompt="Once upon a time", max_tokens=5, temperature=0
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 5


def test_stop_sequences_end_output_and_are_excluded(client):
    base = client.completions.create(
        model=MODEL_ID, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0
    ).choices[0].text
    assert len(base) > 4, base
    # Stop on a piece of the greedy continuation, several strings at once, streamed too.
    stop = base[2:4]
    for stream in (False, True):
        kwargs = dict(model=MODEL_ID, prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0,
                      stop=["NEVER-THERE", stop], stream=stream)
        if stream:
            text = "".join(c.choices[0].text for c in client.completions.create(**kwargs) if c.choices)
        else:
            response = client.completions.create(**kwargs)
            assert response.choices[0].finish_reason == "stop"
            text = response.choices[0].text
        assert stop not in text
        assert text == base[: base.index(stop)]


def test_seed_reproduces_sampled_output(client):
    # llama.cpp's CPU kernels are not batch-invariant: the prompt's last token decoded as
    # part of a long prompt batch or alone (after a prefix-cache hit) gives slightly
    # different logits. Warm the slot first so both runs take the same path.
    kwargs = dict(max_tokens=24, temperature=0.9, top_p=0.95, seed=4242)
    chat(client, "Write a line of poetry.", max_tokens=1, temperature=0)
    first = chat(client, "Write a line of poetry.", **kwargs).choices[0].message.content
    second = chat(client, "Write a line of poetry.", **kwargs).choices[0].message.content
    assert first == second


def test_json_schema_output_parses_and_validates(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": False,
    }
    response = chat(
        client, "Describe a person as JSON.", max_tokens=120, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    value = json.loads(response.choices[0].message.content)
    jsonschema.validate(value, schema)


def test_json_object_output_is_an_object(client):
    # The default model is a base model that tends to repeat itself, so a free-form object
    # may run into max_tokens; finished output must parse, cut output must still be JSON so far.
    response = chat(client, "Give me a JSON object.", max_tokens=120, temperature=0,
                    response_format={"type": "json_object"})
    choice = response.choices[0]
    text = choice.message.content
    assert text.lstrip().startswith("{"), text
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_eight_concurrent_streams_complete_with_usage(client):
    results = [None] * 8
    errors = []

    def run(index):
        try:
            stream = chat(client, f"Tell me fact number {index} about space.", max_tokens=24,
                          temperature=0.7, seed=index, stream=True,
                          stream_options={"include_usage": True})
            chunks = list(stream)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            results[index] = (text, chunks[-1].usage)
        except Exception as err:  # reported below with the index
            errors.append((index, err))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    elapsed = time.monotonic() - started
    assert not errors, errors
    total = 0
    for text, usage in results:
        assert usage.completion_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        total += usage.completion_tokens
    print(f"8 streams: {total} tokens in {elapsed:.2f} s = {total / elapsed:.1f} tokens/s aggregate")


def test_cancelled_stream_frees_its_slot(client, server):
    stream = client.completions.create(model=MODEL_ID, prompt="Tell a very long story:",
                                       max_tokens=900, temperature=0.8, seed=1, stream=True)
    received = 0
    for chunk in stream:
        received += 1
        if received >= 3:
            break
    assert gauge(server, "llamanet_slots_busy") >= 1
    stream.close()
    deadline = time.monotonic() + 10
    while gauge(server, "llamanet_slots_busy") > 0:
        assert time.monotonic() < deadline, "slot not freed after the client left"
        time.sleep(0.05)


def test_prefix_cache_is_reported(client):
    messages = [{"role": "system", "content": "You are a terse assistant. " * 20},
                {"role": "user", "content": "Hi"}]
    client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=2, temperature=0)
    again = client.chat.completions.create(model=MODEL_ID, messages=messages, max_tokens=2, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens - 1


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "user", "content": "x"}], max_tokens=-1), "max_tokens"),
        (dict(messages=[{"role": "user", "content": "x"}], temperature=2.5), "temperature"),
        (dict(messages=[{"role": "user", "content": "x"}], n=SLOTS + 1), "n"),
        (dict(messages=[{"role": "user", "content": "x"}], n=0), "n"),
        (dict(messages=[{"role": "user", "content": "x"}], logprobs=3), "logprobs"),
        (dict(messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=21),
         "top_logprobs"),
        (dict(messages=[{"role": "user", "content": "x"}], top_logprobs=2), "top_logprobs"),
        (dict(messages=[{"role": "user", "content": "x"}], max_tokens=100000), "messages"),
        (dict(messages=[{"role": "user", "content": "x"}], logit_bias={"abc": 1}), "logit_bias"),
        (dict(messages=[{"role": "wizard", "content": "x"}]), "messages"),
    ],
)
def test_bad_values_are_400_with_the_error_object(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL_ID, **kwargs)
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == param
    assert error["message"] and error["type"] == "invalid_request_error"


def test_wrong_types_and_invalid_json_are_400(server):
    for body in (b"{not json", json.dumps({"model": MODEL_ID, "messages": "hi"}).encode(),
                 json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": "x"}],
                             "temperature": "hot"}).encode()):
        status, answer = post(server, "/v1/chat/completions", body)
        assert status == 400, answer
        assert set(answer["error"]) == {"message", "type", "param", "code"}


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "model_not_found"


def test_bad_key_is_401(server):
    from openai import OpenAI

    bad = OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401


def test_body_over_limit_is_413(server):
    body = json.dumps({"model": MODEL_ID, "prompt": "x" * (300 * 1024)}).encode()
    status, answer = post(server, "/v1/completions", body)
    assert status == 413
    assert "limit" in answer["error"]["message"]


def test_embeddings_without_flag_is_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL_ID, input="hello")
    assert "model does not support embeddings" in caught.value.body["message"]


def test_metrics_have_the_inference_families(server):
    status, text = http_get(server.base + "/metrics")
    assert status == 200
    for name in ("llamanet_requests_total", "llamanet_prompt_tokens_total",
                 "llamanet_generated_tokens_total", "llamanet_time_to_first_token_seconds_bucket",
                 "llamanet_request_duration_seconds_bucket", "llamanet_tokens_per_second",
                 "llamanet_slots_busy", f"llamanet_slots_capacity {SLOTS}", "llamanet_queue_depth",
                 "llamanet_kv_cache_cells_used", "llamanet_model_load_seconds",
                 "llamanet_process_resident_memory_bytes", "llamanet_system_cpu_usage_ratio"):
        assert name in text, name


def test_health_is_503_while_loading_then_200():
    # The checksum check before loading keeps the node in "loading" long enough to see it.
    srv = Server(extra_args=("--sha256", MODEL_SHA256, "--parallel", "1", "--ctx-size", "1024"))
    try:
        seen = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status, body = health_json(srv)
            except OSError:
                time.sleep(0.02)
                continue
            seen.append((status, body))
            if status == 200:
                break
            time.sleep(0.02)
        assert seen and seen[0] == (503, {"status": "loading"}), seen[:3]
        assert seen[-1][0] == 200 and seen[-1][1]["status"] == "ok"
    finally:
        srv.stop()


def test_embeddings_with_flag():
    srv = Server(extra_args=("--embeddings", "--parallel", "1", "--ctx-size", "1024"))
    try:
        srv.wait_ready()
        from openai import OpenAI

        client = OpenAI(base_url=srv.base + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
        response = client.embeddings.create(model=MODEL_ID, input=["hello world", "goodbye"])
        assert len(response.data) == 2
        vector = response.data[0].embedding
        assert len(vector) > 100
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-3
    finally:
        srv.stop()


def post(server, path, body: bytes):
    request = urllib.request.Request(
        server.base + path, data=body, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
