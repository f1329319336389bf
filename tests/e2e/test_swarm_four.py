"""Four model nodes and one router in one swarm on loopback.

    node1 (seed)  <- node2, node3, node4, router   (all bootstrap to node1's swarm address)
    node1..node4: `llamanet serve`, all serving the same model id `gemma-swarm`
    router:       `llamanet router`, no model: forwards every request to a model node

Checks, in this order (the last one kills a node, so it must stay last):
1. the five processes discover each other quickly (every /v1/swarm lists all five, healthy),
2. a chat completion sent to the router is served by a model node (x-llamanet-node),
3. concurrent requests through the router all succeed and are spread over several nodes,
4. `llamanet check` and `llamanet monitor --once --json` read the live swarm correctly,
5. a model node killed with SIGKILL costs no request through the router and leaves every
   remaining node's peer table within 10 s.

The nodes require the suite's API key. `check --url` and `monitor --url` read
`GET /v1/swarm`, which sits behind it like every /v1 route: they send `--api-key` (or
`$LLAMANET_API_KEY`); without it a keyed node answers 401 and `check` exits 2.

Every wait is bounded; every process is stopped in teardown, also on failure.
"""

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import API_KEY, BIN, Process, Server, free_port, http_get

MODEL_ID = "gemma-swarm"
MODEL_NODES = 4
HEARTBEAT_S = 0.5
START_TIMEOUT_S = 60       # every /health 200 (model loads on a 2-core machine)
MEET_TIMEOUT_S = 30        # fixture gives up on the swarm meeting after this long
MEET_LIMIT_S = 5.0         # test 1: all /health 200 -> every /v1/swarm complete
GONE_LIMIT_S = 10.0        # test 5: SIGKILL -> killed peer gone everywhere
TOOL_TIMEOUT_S = 20        # hard cap on one check/monitor process
COMMON = ["--heartbeat-interval", str(HEARTBEAT_S), "--shutdown-grace", "5",
          "--api-key", API_KEY]
MODEL_ARGS = ["--model-id", MODEL_ID, "--parallel", "2", "--ctx-size", "2048",
              "--threads", "1", *COMMON]


class Router(Process):
    """`llamanet router` on a free loopback port: no model flags."""

    def __init__(self, extra_args=()):
        assert BIN.is_file(), f"{BIN} missing: build with `cargo build --release -p llamanet-node`"
        self.port = free_port()
        args = [BIN, "router", "--host", "127.0.0.1", "--port", self.port, *extra_args]
        super().__init__(f"router-{self.port}", f"http://127.0.0.1:{self.port}", args)


def swarm_view(node, timeout=3.0):
    """GET /v1/swarm (behind the API key, like every /v1 route)."""
    request = urllib.request.Request(node.base + "/v1/swarm",
                                     headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def summary(view):
    """Compact `peer endpoint healthy models` lines for failure messages."""
    return [f"{p['peer_id'][-8:]} {p.get('endpoints')} healthy={p.get('healthy')} "
            f"models={[m['id'] for m in p.get('models', [])]}" for p in view.get("peers", [])]


def complete_view(view, bases) -> bool:
    """Whether a view lists exactly the nodes at `bases`, every one healthy."""
    peers = view.get("peers", [])
    endpoints = {e for p in peers for e in p.get("endpoints", [])}
    return (len(peers) == len(bases) and all(p.get("healthy") for p in peers)
            and set(bases) <= endpoints)


class Swarm:
    def __init__(self):
        self.models: list[Server] = []
        self.router: Router | None = None
        self.swarm_ports: list[int] = []
        self.router_swarm = ""                # the router's swarm multiaddr
        self.peer_of: dict[str, str] = {}     # base URL -> peer id
        self.t_spawn = self.t_health = self.t_met = None
        self.last_views = {}

    @property
    def nodes(self):
        return [*self.models, *([self.router] if self.router else [])]

    def swarm_port(self) -> int:
        while True:
            port = free_port()
            if port not in self.swarm_ports:
                self.swarm_ports.append(port)
                return port

    def model_ids(self):
        return {self.peer_of[n.base] for n in self.models}

    def client(self, timeout=60):
        from openai import OpenAI

        return OpenAI(base_url=self.router.base + "/v1", api_key=API_KEY, timeout=timeout,
                      max_retries=0)

    def stop(self):
        for node in self.nodes:  # SIGTERM everyone first, then wait for each
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes:
            try:
                node.stop()
            except Exception as err:  # keep stopping the others
                print(f"stopping {node.base}: {err!r}")


@pytest.fixture(scope="module")
def swarm():
    sw = Swarm()
    try:
        sw.t_spawn = time.monotonic()
        seed_port = sw.swarm_port()
        seed = f"/ip4/127.0.0.1/tcp/{seed_port}"
        sw.models.append(Server(extra_args=[*MODEL_ARGS, "--swarm-listen", seed]))
        for _ in range(MODEL_NODES - 1):
            sw.models.append(Server(extra_args=[
                *MODEL_ARGS, "--swarm-listen", f"/ip4/127.0.0.1/tcp/{sw.swarm_port()}",
                "--bootstrap", seed]))
        sw.router_swarm = f"/ip4/127.0.0.1/tcp/{sw.swarm_port()}"
        sw.router = Router(extra_args=[*COMMON, "--swarm-listen", sw.router_swarm,
                                       "--bootstrap", seed])

        # Every /health 200.
        pending = list(sw.nodes)
        deadline = sw.t_spawn + START_TIMEOUT_S
        while pending:
            for node in sw.nodes:
                assert node.proc.poll() is None, \
                    f"{node.base} exited with {node.proc.returncode}; see {node.log.name}"
            pending = [n for n in pending if not n.healthy()]
            if pending:
                assert time.monotonic() < deadline, \
                    f"not healthy within {START_TIMEOUT_S} s: {[n.log.name for n in pending]}"
                time.sleep(0.05)
        sw.t_health = time.monotonic()

        # Every /v1/swarm lists all five nodes, healthy.
        bases = [n.base for n in sw.nodes]
        deadline = sw.t_health + MEET_TIMEOUT_S
        while True:
            views = {}
            for node in sw.nodes:
                try:
                    views[node.base] = swarm_view(node)
                except OSError as err:
                    views[node.base] = {"error": repr(err)}
            sw.last_views = views
            if all(complete_view(v, bases) for v in views.values()):
                sw.t_met = time.monotonic()
                break
            assert time.monotonic() < deadline, (
                f"the 5 nodes did not all list each other within {MEET_TIMEOUT_S} s of "
                f"being healthy: " + json.dumps({b: summary(v) if "peers" in v else v
                                                 for b, v in views.items()}, indent=1))
            time.sleep(0.05)
        for peer in views[sw.router.base]["peers"]:
            for endpoint in peer["endpoints"]:
                sw.peer_of[endpoint] = peer["peer_id"]
        yield sw
    finally:
        sw.stop()


def test_1_five_nodes_discover_each_other_quickly(swarm):
    meet = swarm.t_met - swarm.t_health
    print(f"\n[discovery] all /health 200 after {swarm.t_health - swarm.t_spawn:.2f} s from "
          f"spawn; every /v1/swarm complete {meet:.2f} s later "
          f"({swarm.t_met - swarm.t_spawn:.2f} s from spawn)")
    assert meet <= MEET_LIMIT_S, (
        f"every node was healthy, but the swarm took {meet:.2f} s (> {MEET_LIMIT_S} s) "
        f"until all 5 /v1/swarm listed all 5 peers healthy")
    # Every view agrees on who serves what: the 4 model nodes serve gemma-swarm, the
    # router serves nothing, and peer ids are distinct.
    assert len(set(swarm.peer_of.values())) == 5, swarm.peer_of
    for base, view in swarm.last_views.items():
        models_of = {p["peer_id"]: {m["id"] for m in p["models"]} for p in view["peers"]}
        for node in swarm.models:
            assert models_of.get(swarm.peer_of[node.base]) == {MODEL_ID}, \
                f"{base}'s view: model node {node.base} should serve {MODEL_ID}: {summary(view)}"
        assert models_of.get(swarm.peer_of[swarm.router.base]) == set(), \
            f"{base}'s view: the router should serve no model: {summary(view)}"
    status, body = http_get(swarm.router.base + "/health")
    health = json.loads(body)
    assert status == 200 and health.get("role") == "router" and health.get("peers") == 5, \
        f"router /health: {status} {body}"


def test_2_router_forwards_to_a_model_node(swarm):
    client = swarm.client()
    t0 = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL_ID, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "Say hello"}])
    elapsed = time.monotonic() - t0
    completion = raw.parse()
    served_by = raw.headers.get("x-llamanet-node")
    print(f"\n[router] served by …{(served_by or '?')[-8:]} in {elapsed:.2f} s")
    assert completion.model == MODEL_ID
    assert completion.usage.completion_tokens > 0
    assert served_by != swarm.peer_of[swarm.router.base], \
        "x-llamanet-node names the router itself, which has no model"
    assert served_by in swarm.model_ids(), \
        f"x-llamanet-node {served_by!r} is none of the model nodes {sorted(swarm.model_ids())}"


@pytest.mark.parametrize("same_prompt", [False, True], ids=["distinct", "identical"])
def test_3_concurrent_requests_spread_over_nodes(swarm, same_prompt):
    client = swarm.client()
    n = 8

    def ask(i):
        # Identical prompts share an affinity key (the router prefers the peer rendezvous
        # hashing picks for a prefix, for its KV cache); they spread only because the
        # router counts its own forwards in flight into each peer's load.
        content = "Name a colour and a fruit." if same_prompt else \
            f"Request {i}: name a colour and a fruit."
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL_ID, max_tokens=24, temperature=0,
            messages=[{"role": "user", "content": content}])
        completion = raw.parse()
        return raw.http_response.status_code, raw.headers.get("x-llamanet-node"), \
            completion.usage.completion_tokens

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=n) as pool:
        futures = [pool.submit(ask, i) for i in range(n)]
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=max(1, 90 - (time.monotonic() - t0))))
            except Exception as err:
                results.append((None, None, repr(err)))
    elapsed = time.monotonic() - t0
    distribution = Counter(node for _, node, _ in results)
    short = {f"…{(k or 'none')[-8:]}": v for k, v in distribution.items()}
    print(f"\n[spread] {n} concurrent requests in {elapsed:.2f} s; per node: {short}")
    failed = [(i, r) for i, r in enumerate(results) if r[0] != 200]
    assert not failed, f"requests failed through the router: {failed}"
    assert all(tokens > 0 for _, _, tokens in results), results
    unknown = set(distribution) - swarm.model_ids()
    assert not unknown, f"responses name nodes that are not model nodes: {unknown}"
    assert len(distribution) > 1, \
        f"all {n} concurrent requests went to one node: {short}"


def run_tool(*args, timeout=TOOL_TIMEOUT_S, key=True):
    """Runs a tool with the API key in its environment (unless `key` is false)."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMANET_API_KEY"}
    if key:
        env["LLAMANET_API_KEY"] = API_KEY
    t0 = time.monotonic()
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    return proc, time.monotonic() - t0


def test_4_check_and_monitor_read_the_live_swarm(swarm):
    router = swarm.router.base
    timings = {}

    def check(label, *args):
        proc, took = run_tool("check", *args)
        timings[label] = (proc.returncode, round(took, 2))
        return proc, took

    proc, took = check("url min4", "--url", router, "--model", MODEL_ID, "--min-nodes", "4")
    assert proc.returncode == 0, f"check --min-nodes 4 → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert took < 3, f"check took {took:.2f} s (≥ 3 s)"
    assert "healthy" in proc.stdout.splitlines()[-1], proc.stdout

    proc, _ = check("url min5", "--url", router, "--model", MODEL_ID, "--min-nodes", "5")
    assert proc.returncode == 1, f"check --min-nodes 5 → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "unhealthy:" in proc.stdout and "5" in proc.stdout.split("unhealthy:", 1)[1], \
        f"no reason naming the 5 required nodes:\n{proc.stdout}"

    proc, _ = check("url nonexistent", "--url", router, "--model", "nonexistent")
    assert proc.returncode == 1, f"check --model nonexistent → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "unhealthy:" in proc.stdout and "nonexistent" in proc.stdout, proc.stdout

    # The key as a flag works like the environment; without any, the node refuses: exit 2.
    proc, _ = check("url --api-key", "--url", router, "--api-key", API_KEY, "--min-nodes", "4")
    assert proc.returncode == 0, f"check --api-key → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    proc, _ = run_tool("check", "--url", router, key=False)
    timings["url no key"] = (proc.returncode, None)
    assert proc.returncode == 2 and "401" in proc.stdout, \
        f"check without the key → {proc.returncode}:\n{proc.stdout}{proc.stderr}"

    closed = f"http://127.0.0.1:{free_port()}"
    proc, _ = check("url closed port", "--url", closed)
    assert proc.returncode == 2, f"check of a closed port → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "unreachable" in proc.stdout, proc.stdout

    proc, took = check("bootstrap min4", "--bootstrap", swarm.router_swarm, "--model", MODEL_ID,
                       "--min-nodes", "4")
    assert proc.returncode == 0, \
        f"check --bootstrap {swarm.router_swarm} → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert took < 3, f"check --bootstrap took {took:.2f} s (≥ 3 s)"

    proc, took = run_tool("monitor", "--once", "--json", "--bootstrap", swarm.router_swarm)
    timings["monitor bootstrap"] = (proc.returncode, round(took, 2))
    print(f"\n[tools] (exit code, seconds): {timings}")
    assert proc.returncode == 0, f"monitor → {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    try:
        snapshot = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        pytest.fail(f"monitor --once --json printed no JSON ({err}):\n{proc.stdout}")
    listed = {p["peer_id"]: p for p in snapshot.get("peers", [])}
    missing = swarm.model_ids() - set(listed)
    assert not missing, f"monitor's snapshot lacks model nodes {missing}: {summary(snapshot)}"
    for peer_id in swarm.model_ids():
        peer = listed[peer_id]
        assert peer["healthy"] and MODEL_ID in {m["id"] for m in peer["models"]}, peer


def test_5_sigkill_of_a_model_node_costs_no_request(swarm):
    victim = swarm.models[2]  # not node 1 (the seed everyone bootstrapped to)
    victim_id = swarm.peer_of[victim.base]
    survivors = [n for n in swarm.nodes if n is not victim]
    client = swarm.client(timeout=30)
    log = []            # (t_sent, t_done, status or error, x-llamanet-node)
    stop = threading.Event()

    def loop():
        i = 0
        while not stop.is_set():
            i += 1
            t_sent = time.monotonic()
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL_ID, max_tokens=4, temperature=0,
                    messages=[{"role": "user", "content": f"Ping {i}: say ok"}])
                log.append((t_sent, time.monotonic(), raw.http_response.status_code,
                            raw.headers.get("x-llamanet-node")))
            except Exception as err:
                log.append((t_sent, time.monotonic(), repr(err), None))

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while len(log) < 3:
            assert time.monotonic() < deadline, f"the request loop did not get going: {log}"
            time.sleep(0.02)

        t_kill = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(timeout=5)

        t_gone = None
        views = {}
        while time.monotonic() < t_kill + GONE_LIMIT_S:
            views = {}
            for node in survivors:
                try:
                    views[node.base] = swarm_view(node)
                except OSError as err:
                    views[node.base] = {"error": repr(err)}
            if all("peers" in v and victim_id not in {p["peer_id"] for p in v["peers"]}
                   for v in views.values()):
                t_gone = time.monotonic()
                break
            time.sleep(0.05)
        # Keep the loop going a little after the swarm forgot the victim.
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle or len([e for e in log if e[0] > (t_gone or t_kill)]) < 2:
            if time.monotonic() > t_kill + GONE_LIMIT_S + 10:
                break
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=35)
    assert not worker.is_alive(), "the request loop did not stop within 35 s"

    after_kill = [e for e in log if e[0] >= t_kill]
    # How often the router hit the dead node and failed over (informative: timing-dependent).
    router_log = Path(swarm.router.log.name).read_text(errors="replace")
    failovers = sum(1 for line in router_log.splitlines()
                    if "forward failed" in line and victim_id in line)
    ok = [e for e in log if e[2] == 200]
    failed = [e for e in log if e[2] != 200]
    gone_s = None if t_gone is None else t_gone - t_kill
    print(f"\n[failover] killed …{victim_id[-8:]} ({victim.base}); gone from every view after "
          f"{'never' if gone_s is None else f'{gone_s:.2f} s'}; {len(ok)}/{len(log)} requests "
          f"succeeded, {len(after_kill)} sent after the kill, {failovers} failover(s) off the "
          f"dead node in the router's log; per node after the kill: "
          f"{ {f'…{(k or chr(63))[-8:]}': v for k, v in Counter(e[3] for e in after_kill).items()} }")
    assert not failed, (
        f"{len(failed)} request(s) through the router failed after a model node was killed: "
        + "; ".join(f"sent {e[0] - t_kill:+.2f} s from kill: {e[2]}" for e in failed[:5]))
    assert after_kill, "no request was sent after the kill"
    assert t_gone is not None, (
        f"killed peer …{victim_id[-8:]} still listed {GONE_LIMIT_S} s after SIGKILL: "
        + json.dumps({b: summary(v) if "peers" in v else v for b, v in views.items()}, indent=1))
    from_victim = [e for e in after_kill if e[3] == victim_id]
    assert not from_victim, f"responses sent after the kill claim the killed node served them: {from_victim}"
    # The survivors still agree on the other four nodes, all healthy.
    for base, view in views.items():
        assert complete_view(view, [n.base for n in survivors]), \
            f"{base}'s view after the kill: {summary(view)}"
