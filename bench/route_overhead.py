#!/usr/bin/env python3
"""Routing overhead: the latency one forwarding hop adds to a request.

Two nodes on loopback in one swarm:

  A  `llamanet serve --model MODEL --model-id gemma-bench`   serves the model
  B  `llamanet router ...` when the binary has that subcommand (`llamanet router --help`
     exits 0), else `llamanet serve --model MODEL --model-id other-model`: either way B
     does not serve gemma-bench, so it forwards every gemma-bench request to A.
     --router-cmd replaces the command B runs (the swarm and HTTP flags are appended).

Once B's /v1/swarm lists A as healthy with gemma-bench, the same short non-streamed
request (POST /v1/completions, prompt "Hi", max_tokens 1, temperature 0) is sent
alternately straight to A and through B, interleaved (which one goes first alternates
too) so both see the same machine state: --warmup pairs first, untimed, then --requests
pairs, sequentially, over one keep-alive HTTP connection per target. Wall latency comes
from time.perf_counter around request + full response read. Every answer must carry
`x-llamanet-node: <A's peer id>` (direct and forwarded alike), or the run fails.

Printed: p50, p90, p99 and mean for direct and via-router, the added latency
(via - direct) at p50 and p99, in ms with 3 decimals, plus the command line, the binary,
`nproc`, B's llamanet_route_* metrics, and for information the p50/p90/mean of the
per-pair differences (i-th via minus i-th direct), steadier than a difference of tails. --json-out writes the raw latencies and the summary.

Only the Python standard library. Loopback only. Every wait is bounded (--deadline caps
the whole measuring phase); both nodes are stopped at the end, also on an error, Ctrl-C
or SIGTERM. Their logs go to a temporary directory, printed on failure.

  python3 bench/route_overhead.py                                   # 300 pairs, 20 warm-up
  python3 bench/route_overhead.py --requests 100 --threads 2 --json-out bench/out/route.json
  python3 bench/route_overhead.py --router-cmd "llamanet router"    # B's command, by hand
  python3 bench/route_overhead.py --no-router                       # B = serve other-model
  LLAMANET_BIN=/path/to/llamanet python3 bench/route_overhead.py --model /path/to/x.gguf

For the final figures run it on an otherwise idle machine (2 cores here: A decodes on
--threads threads, B and this client share what is left).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CACHE = Path(os.environ.get("LLAMANET_CACHE", Path.home() / ".cache" / "llamanet"))
DEFAULT_BIN = Path(os.environ.get(
    "LLAMANET_BIN",
    Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / "release" / "llamanet"))
DEFAULT_MODEL = Path(os.environ.get("LLAMANET_MODEL",
                                    CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"))
MODEL_ID = "gemma-bench"
OTHER_ID = "other-model"
BODY = json.dumps({"model": MODEL_ID, "prompt": "Hi", "max_tokens": 1,
                   "temperature": 0}).encode()

CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nproc() -> int:
    try:
        return int(subprocess.run(["nproc"], capture_output=True, text=True,
                                  timeout=5).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return len(os.sched_getaffinity(0))


# --------------------------------------------------------------------------------------
# nodes


class Node:
    def __init__(self, name: str, cmd: list[str], port: int, logdir: Path):
        self.name, self.cmd, self.port = name, cmd, port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log(f"starting {self.name}: {shlex.join(self.cmd)}")
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        CHILDREN.append(self.proc)

    def get_json(self, path: str, timeout: float = 5.0):
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return json.loads(response.read())

    def wait_ready(self, deadline: float) -> None:
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}\n"
                                   f"{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.HTTPError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready in time\n{self.tail()}")
            time.sleep(0.1)

    def metrics(self, prefix: str) -> list[str]:
        try:
            with urllib.request.urlopen(self.base + "/metrics", timeout=5) as r:
                text = r.read().decode()
        except (OSError, urllib.error.HTTPError) as err:
            return [f"(metrics unavailable: {err})"]
        return [line for line in text.splitlines() if line.startswith(prefix)]

    def tail(self, n: int = 25) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(lines)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def kill_children() -> None:
    while CHILDREN:
        proc = CHILDREN.pop()
        if proc.poll() is None:
            proc.kill()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def on_signal(signum, _frame):
    kill_children()
    sys.exit(128 + signum)


def has_router(binary: Path) -> bool:
    try:
        return subprocess.run([str(binary), "router", "--help"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# --------------------------------------------------------------------------------------
# measuring


class Target:
    """One keep-alive connection to one node."""

    def __init__(self, name: str, port: int, timeout: float):
        self.name, self.port, self.timeout = name, port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.reconnects = -1  # the first connect is not a reconnect
        self.latencies_ms: list[float] = []

    def connect(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        self.conn.connect()
        self.reconnects += 1

    def once(self) -> tuple[float, int, str, bytes]:
        """(ms, status, x-llamanet-node, body) of one request; a connection the server
        closed is reopened (counted) and the request sent again, timed from the retry."""
        for attempt in (0, 1):
            if self.conn is None or self.conn.sock is None:
                self.connect()
            try:
                start = time.perf_counter()
                self.conn.request("POST", "/v1/completions", body=BODY,
                                  headers={"Content-Type": "application/json"})
                response = self.conn.getresponse()
                body = response.read()
                elapsed = (time.perf_counter() - start) * 1000.0
            except (http.client.RemoteDisconnected, ConnectionError,
                    http.client.CannotSendRequest, http.client.BadStatusLine):
                if attempt:
                    raise
                self.conn.close()
                self.conn = None
                continue
            if response.will_close:
                self.conn.close()
                self.conn = None
            return elapsed, response.status, response.getheader("x-llamanet-node", ""), body
        raise AssertionError("unreachable")


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(values: list[float]) -> dict:
    s = sorted(values)
    return {"n": len(s), "p50": percentile(s, 50), "p90": percentile(s, 90),
            "p99": percentile(s, 99), "mean": statistics.fmean(s) if s else float("nan"),
            "min": s[0] if s else float("nan"), "max": s[-1] if s else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", type=Path, default=DEFAULT_BIN,
                        help="llamanet binary (default: $LLAMANET_BIN, else "
                             "$CARGO_TARGET_DIR/release/llamanet; now %(default)s)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF for A")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per target")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per target")
    parser.add_argument("--threads", type=int, default=1, help="--threads of each serve")
    parser.add_argument("--router-cmd", default=None,
                        help="command for B (shlex-split, e.g. 'llamanet router'); the "
                             "--host/--port/--swarm-listen/--bootstrap/--heartbeat-interval "
                             "flags are appended")
    parser.add_argument("--no-router", action="store_true",
                        help="B is `serve --model-id other-model` even if `router` exists")
    parser.add_argument("--heartbeat-interval", type=float, default=0.5)
    parser.add_argument("--load-timeout", type=float, default=120, help="seconds per node")
    parser.add_argument("--meet-timeout", type=float, default=30,
                        help="seconds for B to see A healthy")
    parser.add_argument("--request-timeout", type=float, default=30, help="seconds per request")
    parser.add_argument("--deadline", type=float, default=900,
                        help="seconds the measuring phase may take in all")
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    binary = args.bin.expanduser().resolve()
    model = args.model.expanduser().resolve()
    if not binary.is_file():
        sys.exit(f"{binary} missing (build it, or set LLAMANET_BIN / --bin)")
    if not model.is_file():
        sys.exit(f"{model} missing (scripts/fetch-model.sh, or --model)")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logdir = Path(tempfile.mkdtemp(prefix="llamanet-route-overhead-"))

    port_a, port_b, swarm_a, swarm_b = (free_port() for _ in range(4))
    swarm_addr_a = f"/ip4/127.0.0.1/tcp/{swarm_a}"
    hb = ["--heartbeat-interval", str(args.heartbeat_interval)]
    model_flags = ["--parallel", "1", "--ctx-size", "1024", "--threads", str(args.threads)]
    cmd_a = [str(binary), "serve", "--model", str(model), "--model-id", MODEL_ID,
             "--host", "127.0.0.1", "--port", str(port_a),
             "--swarm-listen", swarm_addr_a, *hb, *model_flags]
    b_net = ["--host", "127.0.0.1", "--port", str(port_b),
             "--swarm-listen", f"/ip4/127.0.0.1/tcp/{swarm_b}", "--bootstrap", swarm_addr_a, *hb]
    if args.router_cmd:
        b_mode = "router (--router-cmd)"
        cmd_b = [*shlex.split(args.router_cmd), *b_net]
    elif not args.no_router and has_router(binary):
        b_mode = "router (llamanet router)"
        cmd_b = [str(binary), "router", *b_net]
    else:
        b_mode = f"serve --model-id {OTHER_ID}"
        cmd_b = [str(binary), "serve", "--model", str(model), "--model-id", OTHER_ID,
                 *b_net, *model_flags]

    a, b = Node("A", cmd_a, port_a, logdir), Node("B", cmd_b, port_b, logdir)
    try:
        a.start()
        b.start()
        a.wait_ready(time.monotonic() + args.load_timeout)
        b.wait_ready(time.monotonic() + args.load_timeout)

        # A's own peer id, from its own /v1/swarm entry (the one advertising its URL).
        deadline = time.monotonic() + args.meet_timeout
        peer_a = None
        while peer_a is None:
            for peer in a.get_json("/v1/swarm")["peers"]:
                if a.base in peer.get("endpoints", []):
                    peer_a = peer["peer_id"]
            if peer_a is None:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"A does not list itself in /v1/swarm\n{a.tail()}")
                time.sleep(0.1)
        # B sees A healthy, serving gemma-bench.
        while True:
            view = b.get_json("/v1/swarm")["peers"]
            if any(p["peer_id"] == peer_a and p.get("healthy")
                   and any(m["id"] == MODEL_ID for m in p["models"]) for p in view):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"B did not see A within {args.meet_timeout} s: {view}\n"
                                   f"{b.tail()}")
            time.sleep(0.1)
        log(f"B sees A ({peer_a}); B is {b_mode}")

        direct = Target("direct", port_a, args.request_timeout)
        via = Target("via-router", port_b, args.request_timeout)
        end = time.monotonic() + args.deadline
        for phase, count in (("warm-up", args.warmup), ("timed", args.requests)):
            log(f"{phase}: {count} requests per target, interleaved")
            for i in range(count):
                if time.monotonic() > end:
                    raise TimeoutError(f"--deadline {args.deadline} s reached in {phase} at {i}")
                for target in ((direct, via) if i % 2 == 0 else (via, direct)):
                    ms, status, node, body = target.once()
                    if status != 200:
                        raise RuntimeError(f"{target.name}: HTTP {status}: {body[:300]!r}")
                    if node != peer_a:
                        raise RuntimeError(f"{target.name}: x-llamanet-node {node!r}, "
                                           f"expected A {peer_a}")
                    if phase == "timed":
                        target.latencies_ms.append(ms)
        route_metrics = b.metrics("llamanet_route_")
    except BaseException:
        for node in (a, b):
            print(node.tail(), file=sys.stderr)
        raise
    finally:
        for node in (a, b):
            node.stop()
        kill_children()

    s_direct, s_via = summary(direct.latencies_ms), summary(via.latencies_ms)
    added = {"p50": s_via["p50"] - s_direct["p50"], "p99": s_via["p99"] - s_direct["p99"]}
    # Per interleaved pair (i-th via minus i-th direct): less noisy than a difference of
    # two tails, shown for information.
    paired = summary([v - d for v, d in zip(via.latencies_ms, direct.latencies_ms)])
    cpus = nproc()
    print()
    print(f"command:  {shlex.join([sys.executable, *sys.argv])}")
    print(f"binary:   {binary}")
    print(f"model:    {model}")
    print(f"nproc:    {cpus}   threads per node: {args.threads}   B: {b_mode}")
    print(f"requests: {args.requests} per target after {args.warmup} warm-up, interleaved, "
          f"keep-alive (reconnects: direct {direct.reconnects}, via {via.reconnects})")
    print()
    print(f"| {'latency (ms)':<14} | {'p50':>9} | {'p90':>9} | {'p99':>9} | {'mean':>9} |")
    print(f"|{'-' * 16}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 11}|")
    for name, s in (("direct", s_direct), ("via router", s_via)):
        print(f"| {name:<14} | {s['p50']:9.3f} | {s['p90']:9.3f} | {s['p99']:9.3f} | "
              f"{s['mean']:9.3f} |")
    print()
    print(f"added by the hop (via - direct): p50 {added['p50']:.3f} ms, "
          f"p99 {added['p99']:.3f} ms")
    print(f"paired differences (via_i - direct_i): p50 {paired['p50']:.3f} ms, "
          f"p90 {paired['p90']:.3f} ms, mean {paired['mean']:.3f} ms")
    if route_metrics:
        print("B's route metrics:")
        for line in route_metrics:
            print(f"  {line}")

    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({
            "command": [sys.executable, *sys.argv], "binary": str(binary),
            "model": str(model), "nproc": cpus, "threads": args.threads, "b_mode": b_mode,
            "requests": args.requests, "warmup": args.warmup, "peer_a": peer_a,
            "direct": s_direct, "via_router": s_via, "added_ms": added,
            "paired_diff_ms": paired,
            "reconnects": {"direct": direct.reconnects, "via_router": via.reconnects},
            "route_metrics": route_metrics,
            "latencies_ms": {"direct": direct.latencies_ms, "via_router": via.latencies_ms},
        }, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
