"""Two nodes in one swarm on loopback, serving the default GGUF under two model ids: the
official openai client pointed at either node gets answers for both models, and each
response names (x-llamanet-node) the node that really serves its model."""

import json
import time
import urllib.request

import pytest

from conftest import API_KEY, Server, free_port


def swarm_view(node):
    """GET /v1/swarm (behind the API key, like every /v1 route)."""
    request = urllib.request.Request(node.base + "/v1/swarm",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def pair():
    seed_port = free_port()
    common = ["--parallel", "2", "--ctx-size", "2048", "--heartbeat-interval", "0.5"]
    a = Server(extra_args=["--model-id", "gemma-a",
                           "--swarm-listen", f"/ip4/127.0.0.1/tcp/{seed_port}", *common])
    b = Server(extra_args=["--model-id", "gemma-b",
                           "--swarm-listen", f"/ip4/127.0.0.1/tcp/{free_port()}",
                           "--bootstrap", f"/ip4/127.0.0.1/tcp/{seed_port}", *common])
    try:
        a.wait_ready()
        b.wait_ready()
        deadline = time.monotonic() + 30
        while True:
            views = [swarm_view(n) for n in (a, b)]
            # Healthy too: a peer still loading its model is listed in /v1/swarm but not
            # yet in /v1/models, nor chosen by routing.
            if all(len(v["peers"]) == 2 and all(p["healthy"] for p in v["peers"])
                   for v in views):
                break
            assert time.monotonic() < deadline, f"the nodes did not meet within 30 s: {views}"
            time.sleep(0.2)
        yield a, b
    finally:
        a.stop()
        b.stop()


def test_openai_client_reaches_every_model_through_any_node(pair):
    from openai import OpenAI

    server_of = {}
    for peer in swarm_view(pair[0])["peers"]:
        for model in peer["models"]:
            server_of[model["id"]] = peer["peer_id"]
    assert set(server_of) == {"gemma-a", "gemma-b"}, server_of
    for node in pair:
        client = OpenAI(base_url=node.base + "/v1", api_key=API_KEY, timeout=120, max_retries=0)
        listed = {m.id for m in client.models.list().data}
        assert {"gemma-a", "gemma-b"} <= listed, listed
        for model in ("gemma-a", "gemma-b"):
            raw = client.chat.completions.with_raw_response.create(
                model=model, max_tokens=8, temperature=0,
                messages=[{"role": "user", "content": "Say hello"}])
            completion = raw.parse()
            assert completion.model == model
            assert completion.usage.completion_tokens > 0
            assert raw.headers["x-llamanet-node"] == server_of[model], (node.base, model)
