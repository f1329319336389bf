"""Two clusters as two Linux network namespaces joined by one veth pair: the swarm spans
them and requests cross from one cluster to the other.

    namespace lln-a-<pid> ("east")              namespace lln-b-<pid> ("west")
      A1 10.231.0.1  model-a   (seed)  ---veth---  B 10.231.0.2  model-b
      A2 10.231.0.3  model-a2  bootstraps to A1      bootstraps to A1 only

Each node runs under `ip netns exec` and binds its API and swarm address to its own
namespace address. The test checks, within bounded times, that every node's /v1/swarm
lists all three peers and both clusters, that /v1/models on either side lists the other
side's models, and that the official openai client pointed at B gets model-a answered by
A1 (x-llamanet-node) and pointed at A2 gets model-b answered by B (A2 never bootstrapped
to B). The client calls run in this process with the calling thread switched into the
namespace (setns); nothing is added to the host's own network namespace.

Needs root (CAP_SYS_ADMIN) and iproute2; skipped when `ip netns add` fails. Everything is
torn down at the end, also on failure. Namespaces with the `lln-` prefix left by a killed
run (its pid no longer alive) are removed at start; by hand:

    python3 tests/e2e/test_netns.py --cleanup
"""

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import API_KEY, BIN, LOAD_TIMEOUT_S, MODEL, Process  # noqa: E402

PREFIX = "lln-"
CLONE_NEWNET = 0x40000000
SUBNET = "10.231.0"
API_PORT = 8080
SWARM_PORT = 4001
MEET_TIMEOUT_S = 30
NODE_ARGS = ["--parallel", "1", "--ctx-size", "1024", "--threads", "1", "--queue", "8",
             "--heartbeat-interval", "0.5", "--api-key", API_KEY]


# --------------------------------------------------------------------------------------
# namespaces


def ip(*args, check=True, timeout=10):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=timeout)


def netns_list():
    out = ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_netns(name: str) -> None:
    """Kill every process left in namespace `name` (TERM, then KILL), then delete it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in ip("netns", "pids", name, check=False).stdout.split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _pid_alive(p)]
            time.sleep(0.1)
        if not pids:
            break
    ip("netns", "del", name, check=False)


def cleanup_stale(prefix: str = PREFIX) -> list:
    """Remove `<prefix><x>-<pid>` namespaces whose creating process is gone (a killed
    earlier run); those of a live run are left alone. Returns the names removed."""
    removed = []
    for name in netns_list():
        match = re.fullmatch(re.escape(prefix) + r"[a-z0-9]+-(\d+)", name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and _pid_alive(pid):
            continue
        delete_netns(name)
        removed.append(name)
    return removed


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextlib.contextmanager
def in_netns(name: str):
    """Run the block with the calling thread in network namespace `name`: sockets made
    inside stay in it. The thread's own namespace is restored on exit."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


# --------------------------------------------------------------------------------------
# nodes


def http_json(url: str, timeout: float = 5.0):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, json.loads(response.read())


class NsNode(Process):
    """`llamanet serve` inside a network namespace, API on http://<addr>:8080 and swarm on
    /ip4/<addr>/tcp/<swarm_port>."""

    def __init__(self, name, netns, addr, model_id, cluster, swarm_port, bootstrap=()):
        assert BIN.is_file(), f"{BIN} missing"
        assert MODEL.is_file(), f"{MODEL} missing"
        self.netns, self.addr, self.model_id = netns, addr, model_id
        self.swarm_addr = f"/ip4/{addr}/tcp/{swarm_port}"
        # `ip netns exec` execs the binary: the pid is the node's own.
        args = ["ip", "netns", "exec", netns, str(BIN), "serve", "--model", str(MODEL),
                "--model-id", model_id, "--host", addr, "--port", str(API_PORT),
                "--swarm-listen", self.swarm_addr, "--cluster", cluster, *NODE_ARGS]
        for peer in bootstrap:
            args += ["--bootstrap", peer]
        super().__init__(name, f"http://{addr}:{API_PORT}", args,
                         log_name=f"netns-{netns}-{name}")

    def healthy(self) -> bool:
        with in_netns(self.netns):
            return super().healthy()

    def get(self, path):
        with in_netns(self.netns):
            return http_json(self.base + path)

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base + "/v1", api_key=API_KEY, timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def clusters():
    cleanup_stale()
    pid = os.getpid()
    ns_a, ns_b = f"{PREFIX}a-{pid}", f"{PREFIX}b-{pid}"
    try:
        ip("netns", "add", ns_a)
    except (OSError, subprocess.SubprocessError) as err:
        detail = (getattr(err, "stderr", "") or str(err)).strip()
        pytest.skip(f"cannot create a network namespace (`ip netns add` failed: {detail!s})")
    created, nodes = [ns_a], []
    try:
        ip("netns", "add", ns_b)
        created.append(ns_b)
        # The pair is created straight inside the two namespaces: the host's own
        # namespace never holds either end. Names: at most 15 characters.
        veth_a, veth_b = f"lln{pid}a", f"lln{pid}b"
        ip("link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b,
           "netns", ns_b)
        for ns, veth, addrs in ((ns_a, veth_a, (f"{SUBNET}.1", f"{SUBNET}.3")),
                                (ns_b, veth_b, (f"{SUBNET}.2",))):
            ip("-n", ns, "link", "set", "lo", "up")
            for addr in addrs:
                ip("-n", ns, "addr", "add", f"{addr}/24", "dev", veth)
            ip("-n", ns, "link", "set", veth, "up")
        # A1 and A2 share namespace A, so they need different swarm ports even on
        # different addresses: libp2p-tcp dials from 0.0.0.0:<own listen port> (port
        # reuse), so A2 on 10.231.0.3:4001 dialling A1 at 10.231.0.1:4001 would get the
        # source 10.231.0.1:4001 (the local route) and connect to itself ("input error").
        a1 = NsNode("A1", ns_a, f"{SUBNET}.1", "model-a", "east", SWARM_PORT)
        nodes.append(a1)
        nodes.append(NsNode("A2", ns_a, f"{SUBNET}.3", "model-a2", "east", SWARM_PORT + 1,
                            bootstrap=[a1.swarm_addr]))
        nodes.append(NsNode("B", ns_b, f"{SUBNET}.2", "model-b", "west", SWARM_PORT,
                            bootstrap=[a1.swarm_addr]))
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        for node in nodes:
            node.wait_ready(deadline=deadline)
        yield {node.name: node for node in nodes}
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()
        for ns in created:
            delete_netns(ns)


def test_swarm_spans_two_namespaces(clusters):
    a1, a2, b = clusters["A1"], clusters["A2"], clusters["B"]
    nodes = (a1, a2, b)

    # Every node sees the three peers healthy (/v1/models and routing skip unhealthy
    # ones, e.g. while their model loads), both clusters, every model.
    deadline = time.monotonic() + MEET_TIMEOUT_S
    while True:
        views = {n.name: n.get("/v1/swarm")[1]["peers"] for n in nodes}
        met = all(
            len(peers) == 3
            and all(p["healthy"] for p in peers)
            and {p["cluster"] for p in peers} == {"east", "west"}
            and {m["id"] for p in peers for m in p["models"]} == {"model-a", "model-a2", "model-b"}
            for peers in views.values())
        if met:
            break
        assert time.monotonic() < deadline, \
            f"the swarm did not span both namespaces within {MEET_TIMEOUT_S} s: {views}"
        time.sleep(0.2)

    # Who serves what, by advertised endpoint; the same in every view.
    peer_of_node, server_of = {}, {}
    for peer in views["B"]:
        for node in nodes:
            if node.base in peer["endpoints"]:
                peer_of_node[node.name] = peer["peer_id"]
        for model in peer["models"]:
            server_of[model["id"]] = peer["peer_id"]
    assert set(peer_of_node) == {"A1", "A2", "B"}, views["B"]
    assert server_of == {"model-a": peer_of_node["A1"], "model-a2": peer_of_node["A2"],
                         "model-b": peer_of_node["B"]}, views["B"]
    for name, peers in views.items():
        clusters_seen = {p["peer_id"]: p["cluster"] for p in peers}
        assert clusters_seen == {peer_of_node["A1"]: "east", peer_of_node["A2"]: "east",
                                 peer_of_node["B"]: "west"}, (name, peers)

    # /v1/models on each side lists the other side's models.
    for node in nodes:
        _, listing = node.get("/v1/models")
        ids = {m["id"] for m in listing["data"]}
        assert {"model-a", "model-a2", "model-b"} <= ids, (node.name, ids)

    # Across the veth both ways, through the official client: model-a sent to B is answered
    # by A1; model-b sent to A2 (which only ever bootstrapped to A1) is answered by B.
    for entry, model, expected in ((b, "model-a", a1), (a2, "model-b", b)):
        with in_netns(entry.netns):
            raw = entry.client().chat.completions.with_raw_response.create(
                model=model, max_tokens=4, temperature=0,
                messages=[{"role": "user", "content": "Say hello"}])
            completion = raw.parse()
        assert completion.model == model
        assert completion.usage.completion_tokens > 0
        assert raw.headers["x-llamanet-node"] == peer_of_node[expected.name], \
            (entry.name, model, dict(raw.headers))


if __name__ == "__main__":
    if sys.argv[1:] == ["--cleanup"]:
        print("removed:", cleanup_stale() or "nothing")
    else:
        sys.exit(f"usage: {sys.argv[0]} --cleanup   (the test itself runs under pytest)")
