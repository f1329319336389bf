#!/usr/bin/env python3
"""Zero lost requests, measured: the main job's InferenceNode under load while one replica
dies, dies again while it loads, and is then deleted (graceful drain).

Needs the main job running (scripts/up.sh: two replicas of gemma-cpu). Clients send
greedy chat completions (temperature 0, --max-tokens) in a loop, half of them streamed,
through replica 0 and (with --router) through a `llamanet router` started outside the
cluster with the swarm's key. Meanwhile:

  t = --kill-at:    kill -9 of replica 1's node process (its container id is process://PID
                    in the local test bed); the kubelet restarts it;
  as it restarts:   kill -9 again while it loads its model (/health 503);
  once it serves:   kubectl delete pod (SIGTERM: it drains, the StatefulSet replaces it).

Printed: requests (streamed and plain), failed requests, broken streams (an error event or
no [DONE]), answers that differ from a reference run (sequential, before the chaos), the
nodes' own counters (llamanet_route_continuations_total, _failovers_total,
_broken_streams_total), and for streams the longest pause between two chunks: p50/p99 over
streams that were running while a replica died, and over the others. The difference is
the latency a continuation adds.

Only the Python standard library. Loopback only; every wait bounded; the router is stopped
at the end, also on an error.

  scripts/up.sh
  python3 bench/chaos.py --router --clients 6 --duration 60
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("LLAMANET_CACHE", Path.home() / ".cache" / "llamanet"))
BIN = Path(os.environ.get("LLAMANET_BIN", CACHE / "target" / "release" / "llamanet"))
KUBECONFIG = os.environ.get("KUBECONFIG", "/var/tmp/llamanet/cluster/control-plane/kubeconfig")
PROMPTS = [
    "Explain in two sentences why the sky is blue.",
    "Write a short poem about the sea.",
    "List five fruits and their colours.",
    "Describe a cat to someone who has never seen one.",
]


def kubectl(*args: str) -> str:
    return subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def pod(name: str) -> dict | None:
    try:
        return json.loads(kubectl("get", "pod", name, "-o", "json"))
    except subprocess.CalledProcessError:
        return None


def node_pid(name: str) -> tuple[int, int] | None:
    """(pid, restarts) of a pod's running node container."""
    p = pod(name)
    for c in (p or {}).get("status", {}).get("containerStatuses", []):
        if c["name"] == "llamanet" and "running" in c.get("state", {}):
            cid = c.get("containerID", "")
            if cid.startswith("process://"):
                return int(cid.removeprefix("process://")), c.get("restartCount", 0)
    return None


def get_json(url: str, timeout: float = 2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (OSError, ValueError):
        return None, {}


def wait(what: str, timeout: float, check):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(what)


def chat(base: str, prompt: str, stream: bool, max_tokens: int):
    """(text, pauses between chunks in s) or raises with the reason."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    body = json.dumps({"model": "gemma-3-270m", "messages": [{"role": "user", "content": prompt}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": stream})
    conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {response.read()[:300]!r}")
    if not stream:
        return json.loads(response.read())["choices"][0]["message"]["content"], []
    text, pauses, last, done = "", [], time.perf_counter(), False
    for line in response:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        now = time.perf_counter()
        pauses.append(now - last)
        last = now
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(f"error event: {chunk['error']['message']}")
        text += chunk["choices"][0]["delta"].get("content") or ""
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return text, pauses[1:]


def metric(base: str, name: str) -> float:
    try:
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name) and not l.startswith("#"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resource", default="gemma-cpu")
    ap.add_argument("--clients", type=int, default=6, help="per entry point")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--kill-at", type=float, default=10)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--router", action="store_true", help="also send through a router")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    entry_ip = pod(f"{args.resource}-0")["status"]["podIP"]
    victim = f"{args.resource}-1"
    victim_ip = pod(victim)["status"]["podIP"]
    entry = f"http://{entry_ip}:8080"
    bases = [entry]
    router = None
    tmp = tempfile.mkdtemp(prefix="llamanet-chaos-")
    try:
        if args.router:
            key = Path(tmp) / "swarm.key"
            encoded = kubectl("get", "secret", "-n", "llamanet-system", "llamanet-swarm-key",
                              "-o", "jsonpath={.data.psk}")
            key.write_bytes(base64.b64decode(encoded))
            port = free_port()
            router = subprocess.Popen(
                [str(BIN), "router", "--host", "127.0.0.1", "--port", str(port),
                 "--swarm-listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap",
                 f"/ip4/{entry_ip}/tcp/4001", "--swarm-key", str(key)],
                stdout=open(Path(tmp) / "router.log", "w"), stderr=subprocess.STDOUT)
            base = f"http://127.0.0.1:{port}"
            wait("the router sees both replicas", 60, lambda: sum(
                1 for p in get_json(f"{base}/v1/swarm")[1].get("peers", [])
                if p.get("healthy") and p.get("models")) >= 2)
            bases.append(base)

        reference = {p: chat(entry, p, False, args.max_tokens)[0] for p in PROMPTS}
        results, lock, stop = [], threading.Lock(), threading.Event()
        kills: list[float] = []

        def client(base: str, i: int):
            n = i
            while not stop.is_set():
                prompt, stream = PROMPTS[n % len(PROMPTS)], n % 2 == 0
                n += 1
                started = time.monotonic()
                try:
                    text, pauses = chat(base, prompt, stream, args.max_tokens)
                    error = None
                except Exception as e:  # every failure counts, whatever it is
                    text, pauses, error = "", [], str(e)
                with lock:
                    results.append({"base": base, "stream": stream, "start": started,
                                    "end": time.monotonic(), "error": error,
                                    "same": error is None and text == reference[prompt],
                                    "max_pause": max(pauses, default=0.0)})

        threads = [threading.Thread(target=client, args=(b, i), daemon=True)
                   for b in bases for i in range(args.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.kill_at)
        pid, restarts = node_pid(victim)
        os.kill(pid, signal.SIGKILL)
        kills.append(time.monotonic())
        print(f"{kills[-1] - t0:6.2f}s kill -9 {victim} (pid {pid})")
        reborn = wait("restart", 60, lambda: (lambda p: p and p[1] > restarts and p[0] != pid
                                               and p[0])(node_pid(victim)))
        status = get_json(f"http://{victim_ip}:8080/health")[0]
        os.kill(reborn, signal.SIGKILL)
        kills.append(time.monotonic())
        print(f"{kills[-1] - t0:6.2f}s kill -9 again while it loads (pid {reborn}, /health {status})")
        wait("serving again", 120, lambda: get_json(f"http://{victim_ip}:8080/health")[0] == 200)
        time.sleep(3)
        kubectl("delete", "pod", victim, "--wait=false")
        kills.append(time.monotonic())
        print(f"{kills[-1] - t0:6.2f}s kubectl delete pod {victim} (graceful)")
        remaining = args.duration - (time.monotonic() - t0)
        time.sleep(max(remaining, 5))
        stop.set()
        for t in threads:
            t.join(timeout=150)

        def spans_kill(r):
            return any(r["start"] <= k <= r["end"] for k in kills)

        def pct(values, q):
            values = sorted(values)
            return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else 0.0

        streams = [r for r in results if r["stream"] and r["error"] is None]
        hit = [r["max_pause"] for r in streams if spans_kill(r)]
        calm = [r["max_pause"] for r in streams if not spans_kill(r)]
        failed = [r for r in results if r["error"]]
        counters = {name: sum(metric(b, f"llamanet_route_{name}_total") for b in bases)
                    for name in ("continuations", "failovers", "broken_streams")}
        summary = {
            "requests": len(results), "streamed": sum(r["stream"] for r in results),
            "failed": len(failed), "differ_from_reference": sum(not r["same"] for r in results if not r["error"]),
            **counters,
            "streams_spanning_a_kill": len(hit),
            "max_pause_p50_ms_spanning": round(1000 * pct(hit, 0.5), 1),
            "max_pause_p99_ms_spanning": round(1000 * pct(hit, 0.99), 1),
            "max_pause_p50_ms_other": round(1000 * pct(calm, 0.5), 1),
            "max_pause_p99_ms_other": round(1000 * pct(calm, 0.99), 1),
        }
        summary["added_p99_ms"] = round(summary["max_pause_p99_ms_spanning"] - summary["max_pause_p99_ms_other"], 1)
        print(f"command: {' '.join(sys.argv)}; entry points: {bases}; nproc {os.cpu_count()}")
        for key, value in summary.items():
            print(f"  {key:32s} {value}")
        for r in failed[:10]:
            print(f"  FAILED {r['base']} stream={r['stream']}: {r['error']}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"summary": summary, "results": results}, indent=1))
        return 1 if failed else 0
    finally:
        if router:
            router.terminate()
            router.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
