"""A stream whose node dies mid-answer, as the official openai client sees it.

Two `llamanet serve` nodes of the default model and a `llamanet router`, in one private
swarm on loopback. The client streams a greedy (then a seeded) chat completion through the
router; after a few chunks the node serving it (named by x-llamanet-node) is killed with
SIGKILL. The stream goes on from the other node: no error, no repeated or missing text,
the same response id throughout. With flash attention off (decoding batch-invariant, see
node/src/engine/scheduler.rs) the whole text equals what the surviving node answers to the
same request when nothing fails, although that answer comes partly from its cache; with
llama.cpp's default (flash attention on, whose CPU kernels sum differently for one
sequence than for several) the text before the kill is kept and the stream completes.
With no node left to continue, the stream ends with an error event, which the client
raises.

Every process is stopped in teardown, also on failure; every wait is bounded.
"""

import time
import urllib.request

import pytest

from conftest import API_KEY, BIN, Process, Server, free_port

MODEL_ID = "gemma-cont"
MAX_TOKENS = 64
PROMPT = "Write a long story about a lighthouse keeper and a storm."
COMMON = ["--model-id", MODEL_ID, "--parallel", "2", "--ctx-size", "2048",
          "--heartbeat-interval", "0.5", "--shutdown-grace", "5"]


class Router(Process):
    def __init__(self, bootstrap):
        self.port = free_port()
        args = [BIN, "router", "--host", "127.0.0.1", "--port", self.port, "--api-key", API_KEY,
                "--swarm-listen", f"/ip4/127.0.0.1/tcp/{free_port()}", "--bootstrap", bootstrap,
                "--heartbeat-interval", "0.5"]
        super().__init__(f"router-{self.port}", f"http://127.0.0.1:{self.port}", args)


def get(url):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read().decode()


def metric(node, name):
    return sum(float(line.rsplit(" ", 1)[1]) for line in get(node.base + "/metrics").splitlines()
               if line.startswith(name) and not line.startswith("#"))


def healthy_peers(node):
    import json
    return {p["peer_id"] for p in json.loads(get(node.base + "/v1/swarm"))["peers"]
            if p.get("healthy") and p.get("models")}


@pytest.fixture(params=["off"], ids=["flash-attention-off"])
def trio(request):
    seed = free_port()
    common = [*COMMON, "--flash-attention", request.param]
    a = Server(extra_args=[*common, "--swarm-listen", f"/ip4/127.0.0.1/tcp/{seed}"])
    b = Server(extra_args=[*common, "--swarm-listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
                           "--bootstrap", f"/ip4/127.0.0.1/tcp/{seed}"])
    router = Router(f"/ip4/127.0.0.1/tcp/{seed}")
    nodes = [a, b, router]
    try:
        for node in nodes:
            node.wait_ready()
        deadline = time.monotonic() + 30
        while len(healthy_peers(router)) < 2:
            assert time.monotonic() < deadline, "the router did not see both nodes"
            time.sleep(0.2)
        peer_of = {}
        for node in (a, b):
            peer_of[json_id(node)] = node
        yield a, b, router, peer_of
    finally:
        for node in nodes:
            node.stop()


def json_id(node):
    """A node's own peer id, from its /v1/swarm entry with its endpoint."""
    import json
    for peer in json.loads(get(node.base + "/v1/swarm"))["peers"]:
        if node.base in peer.get("endpoints", []):
            return peer["peer_id"]
    raise AssertionError(f"{node.base} is not in its own table")


def client_for(node):
    from openai import OpenAI
    return OpenAI(base_url=node.base + "/v1", api_key=API_KEY, timeout=120, max_retries=0)


def stream_and_kill(router, peer_of, sampling, kill_after=6):
    """Streams through the router, kills the serving node after `kill_after` content chunks;
    returns (text, ids seen, the killed node, the survivor, the text before the kill)."""
    raw = client_for(router).chat.completions.with_raw_response.create(
        model=MODEL_ID, max_tokens=MAX_TOKENS, stream=True,
        messages=[{"role": "user", "content": PROMPT}], **sampling)
    serving = raw.headers["x-llamanet-node"]
    victim = peer_of[serving]
    text, ids, chunks, before = "", set(), 0, None
    for chunk in raw.parse():
        ids.add(chunk.id)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            chunks += 1
            if chunks == kill_after:
                before = text
                victim.proc.kill()
                victim.proc.wait(timeout=10)
    survivor = next(node for peer, node in peer_of.items() if peer != serving)
    return text, ids, victim, survivor, before


@pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 7}],
                         ids=["greedy", "seeded"])
def test_a_stream_continues_on_another_node_when_its_node_dies(trio, sampling):
    a, b, router, peer_of = trio
    text, ids, victim, survivor, before = stream_and_kill(router, peer_of, sampling)
    assert len(ids) == 1, f"the stream changed its id: {ids}"
    assert before is not None, f"the stream ended before the kill: {text!r}"
    assert metric(router, "llamanet_route_continuations_total") == 1
    assert metric(router, "llamanet_route_broken_streams_total") == 0
    # What the survivor answers when nothing fails: the continued stream is exactly that,
    # although the survivor now answers from the prompt it cached while continuing.
    reference = client_for(survivor).chat.completions.create(
        model=MODEL_ID, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}],
        **sampling).choices[0].message.content
    assert text == reference, f"\ncontinued: {text!r}\nreference: {reference!r}"


@pytest.mark.parametrize("trio", ["auto"], ids=["flash-attention-auto"], indirect=True)
def test_with_llama_cpp_default_attention_the_stream_still_completes(trio):
    a, b, router, peer_of = trio
    text, ids, victim, survivor, before = stream_and_kill(router, peer_of, {"temperature": 0})
    assert len(ids) == 1, f"the stream changed its id: {ids}"
    assert before is not None, f"the stream ended before the kill: {text!r}"
    assert len(text) > len(before), f"nothing came after the kill: {text!r}"
    assert metric(router, "llamanet_route_continuations_total") == 1
    assert metric(router, "llamanet_route_broken_streams_total") == 0


def test_with_no_node_left_the_stream_ends_with_an_error_event(trio):
    from openai import APIError

    a, b, router, peer_of = trio
    b.proc.kill()  # one node left: nobody can continue its streams
    b.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while len(healthy_peers(router)) > 1:
        assert time.monotonic() < deadline, "the dead node stayed in the router's table"
        time.sleep(0.2)
    with pytest.raises(APIError) as raised:
        stream_and_kill(router, peer_of, {"temperature": 0})
    assert "no other node could continue" in str(raised.value), raised.value
    assert metric(router, "llamanet_route_broken_streams_total") == 1
