"""No request stalls the others: embeddings go one input per engine step (and take at most a
share of its time while streams generate) or, with --embedding-threads, run on a worker of
their own; JSON schemas are compiled off the engine thread and checked lazily, and the inputs
that could still cost too much are capped with a 400.

The timing figures are in bench/stall.py; these tests check the order of events instead.
"""

import re
import subprocess
import threading

import openai
import pytest
from openai import OpenAI

from conftest import API_KEY, BIN, MODEL, MODEL_ID, Server


@pytest.fixture(scope="module")
def embedder():
    srv = Server(extra_args=("--embeddings", "--parallel", "4", "--ctx-size", "4096"))
    srv.wait_ready()
    yield OpenAI(base_url=srv.base + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
    srv.stop()


@pytest.fixture(scope="module")
def worker_embedder():
    """Embeddings on a worker of their own: one thread each for decoding and embeddings."""
    srv = Server(extra_args=("--embeddings", "--embedding-threads", "1", "--threads", "1",
                             "--parallel", "4", "--ctx-size", "4096"))
    srv.wait_ready()
    yield OpenAI(base_url=srv.base + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
    srv.stop()


@pytest.mark.parametrize("node", ["embedder", "worker_embedder"])
def test_a_stream_finishes_while_a_large_embeddings_request_is_still_served(request, node):
    embedder = request.getfixturevalue(node)
    inputs = [f"Sentence number {i} about rivers, hills and the evening sun." for i in range(128)]
    done = {}

    def embed():
        done["vectors"] = len(embedder.embeddings.create(model=MODEL_ID, input=inputs).data)

    worker = threading.Thread(target=embed, daemon=True)
    worker.start()
    stream = embedder.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Count to ten."}], max_tokens=24,
        temperature=0, stream=True, stream_options={"include_usage": True})
    usage = [chunk.usage for chunk in stream if chunk.usage][0]
    # The 128 inputs were queued first; served inline they would all come before the stream.
    assert usage.completion_tokens > 0
    assert worker.is_alive(), "the embeddings request finished before the stream"
    worker.join(300)
    assert done["vectors"] == len(inputs)


def test_embeddings_agree_however_they_are_interleaved(embedder):
    alone = embedder.embeddings.create(model=MODEL_ID, input=["the evening sun"]).data[0].embedding
    batch = embedder.embeddings.create(
        model=MODEL_ID, input=["a river", "the evening sun", "hills"]).data[1].embedding
    assert max(abs(a - b) for a, b in zip(alone, batch)) < 1e-4


def test_the_embeddings_worker_gives_the_engine_threads_vectors(embedder, worker_embedder):
    texts = ["a river", "the evening sun over the hills", "hills"]
    shared = embedder.embeddings.create(model=MODEL_ID, input=texts).data
    own = worker_embedder.embeddings.create(model=MODEL_ID, input=texts).data
    assert [d.index for d in own] == [0, 1, 2]
    for a, b in zip(shared, own):
        # One thread instead of two sums in another order: equal up to float rounding.
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding)) < 1e-3
    assert max(abs(x - y) for x, y in zip(own[0].embedding, own[1].embedding)) > 1e-2


def test_the_embeddings_worker_refuses_what_the_engine_thread_refuses(worker_embedder):
    with pytest.raises(openai.BadRequestError) as caught:
        worker_embedder.embeddings.create(model=MODEL_ID, input=["word " * 1500])
    assert caught.value.body["param"] == "input", caught.value.body
    assert "at most 1024" in caught.value.body["message"], caught.value.body
    # The worker serves the next request as if nothing happened.
    assert len(worker_embedder.embeddings.create(model=MODEL_ID, input=["ok"]).data) == 1


def test_embedding_threads_without_embeddings_is_refused_at_start():
    started = subprocess.run([str(BIN), "serve", "--model", str(MODEL), "--embedding-threads", "1"],
                             capture_output=True, text=True, timeout=60)
    assert started.returncode == 2, started
    assert "--embeddings" in started.stderr, started.stderr


@pytest.mark.parametrize("make, param", [
    (lambda c: c.embeddings.create(model=MODEL_ID, input=["x"] * 257), "input"),
    (lambda c: c.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "x"}], max_tokens=2,
        stop=["y" * 257]), "stop"),
    (lambda c: c.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "x"}], max_tokens=2,
        response_format={"type": "json_schema", "json_schema": {
            "name": "big", "schema": {"type": "object", "description": "d" * 70_000}}}),
     "response_format"),
])
def test_what_could_still_cost_too_much_is_capped(embedder, make, param):
    with pytest.raises(openai.BadRequestError) as caught:
        make(embedder)
    body = caught.value.body
    assert body["param"] == param, body
    assert "at most" in body["message"], body


def test_a_large_schema_constrains_output_without_stalling(embedder):
    schema = {"type": "object", "properties": {
        f"field_{i:03d}": {"type": "string", "maxLength": 8} for i in range(120)},
        "required": ["field_000", "field_001"], "additionalProperties": False}
    response = embedder.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Fill the form."}], max_tokens=48,
        temperature=0, response_format={"type": "json_schema",
                                        "json_schema": {"name": "form", "schema": schema}})
    text = response.choices[0].message.content
    # Cut at max_tokens perhaps, but what there is follows the schema: its required
    # fields first, in order, each a string of at most 8 characters.
    assert re.match(r'\{\s*"field_000"\s*:\s*"[^"]{0,8}"\s*,\s*"field_001"\s*:', text), text
