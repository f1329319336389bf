#!/usr/bin/env python3
"""What sharing the model costs inference: tokens/s of a node while 3 peers fetch its model
file from it, next to the same node idle.

Starts `llamanet serve` (the default model, --sha256, a private swarm key, 1 slot) on
loopback. Per upload pace (--rates, MiB/s, 0 = unpaced) the node restarts with
`--weights-upload-rate <pace>`, then: --rounds streamed chat completions of --tokens tokens
(temperature 0) with nobody fetching, and as many while 3 `llamanet fetch` processes pull the
file from it over and over (each into its own directory, deleted after every fetch). Tokens/s
is the decode rate the client sees: tokens after the first, over the time from the first to
the last. Prints the medians, the ratio under fetch to idle, and the MB/s the fetchers got.

On one machine the fetchers' own work (decryption, hashing every chunk and the whole file)
competes with the node for the same cores; on separate machines only the node's share
(reading, encrypting and sending) would. Loopback only; every process is stopped at the end.

  cargo build --release -p llamanet-node
  python3 bench/weights_seeding.py --rates 64,0 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HOME = Path.home()
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", HOME / ".cache/llamanet/target"))
BIN = Path(os.environ.get("LLAMANET_BIN", TARGET / "release/llamanet"))
MODEL = Path(os.environ.get("LLAMANET_MODEL",
                            HOME / ".cache/llamanet/models/gemma-3-270m-q4_k_m.gguf"))
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_node(work: Path, key: Path, rate: int) -> tuple[subprocess.Popen, str, int]:
    port, swarm = free_port(), free_port()
    log = open(work / f"serve-{rate}.log", "w")
    proc = subprocess.Popen([
        str(BIN), "serve", "--model", str(MODEL), "--sha256", SHA256, "--host", "127.0.0.1",
        "--port", str(port), "--swarm-port", str(swarm), "--swarm-key", str(key),
        "--parallel", "1", "--ctx-size", "1024", "--weights-upload-rate", str(rate),
    ], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, base, swarm
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"serve exited; see {log.name}")
        time.sleep(0.2)
    proc.kill()
    sys.exit("serve not ready in 120 s")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def decode_rate(base: str, tokens: int) -> float:
    body = json.dumps({
        "model": "gemma-3-270m-q4_k_m", "stream": True, "temperature": 0, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
    }).encode()
    request = urllib.request.Request(base + "/v1/chat/completions", body,
                                     {"Content-Type": "application/json"})
    times = []
    with urllib.request.urlopen(request, timeout=120) as response:
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            try:
                delta = json.loads(line[5:])["choices"][0]["delta"]
            except (ValueError, KeyError, IndexError):
                continue
            if delta.get("content"):
                times.append(time.monotonic())
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def sent(base: str) -> float:
    """llamanet_weights_sent_bytes_total of the node."""
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("llamanet_weights_sent_bytes_total "):
                return float(line.split()[1])
    return 0.0


class Fetchers:
    """3 processes fetching the node's model file in a loop until stopped."""

    def __init__(self, work: Path, key: Path, swarm_port: int):
        self.stop = threading.Event()
        self.bytes = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.loop, args=(work / f"fetch-{i}", key,
                                                                 swarm_port), daemon=True)
                        for i in range(3)]

    def loop(self, folder: Path, key: Path, swarm_port: int):
        while not self.stop.is_set():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done = subprocess.run([
                str(BIN), "fetch", "--sha256", SHA256, "--dest", str(folder / MODEL.name),
                "--bootstrap", f"/ip4/127.0.0.1/tcp/{swarm_port}", "--swarm-key", str(key),
            ], capture_output=True, timeout=300)
            if done.returncode == 0:
                with self.lock:
                    self.bytes += MODEL.stat().st_size

    def __enter__(self):
        self.started = time.monotonic()
        for t in self.threads:
            t.start()
        time.sleep(2)  # under way before the first measured request
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=320)
        # Fetches under way when the measurement ended count with the time they took.
        self.elapsed = time.monotonic() - self.started


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="64,0", help="upload paces in MiB/s (0 = unpaced)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    for path in (BIN, MODEL):
        if not path.is_file():
            sys.exit(f"{path} missing")
    work = Path(tempfile.mkdtemp(prefix="llamanet-seeding-"))
    key = work / "swarm.key"
    key.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{secrets.token_hex(32)}\n")
    print(f"{MODEL.name}, 1 slot, {args.tokens} tokens per request, {args.rounds} rounds; "
          f"median decode tokens/s")
    try:
        for rate in (int(r) for r in args.rates.split(",")):
            node, base, swarm = start_node(work, key, rate)
            try:
                decode_rate(base, 16)  # warm-up
                idle = [decode_rate(base, args.tokens) for _ in range(args.rounds)]
                # The node's own CPU for uploading: its CPU time while fetchers pull and it
                # serves nothing, per MB sent.
                before, sent_before = cpu_seconds(node.pid), sent(base)
                with Fetchers(work, key, swarm) as fetchers:
                    time.sleep(8)
                upload_cpu = (cpu_seconds(node.pid) - before) / max(
                    (sent(base) - sent_before) / 1e6, 1e-9)
                with Fetchers(work, key, swarm) as fetchers:
                    busy = [decode_rate(base, args.tokens) for _ in range(args.rounds)]
                got = fetchers.bytes / fetchers.elapsed / 1e6
            finally:
                node.terminate()
                node.wait(timeout=60)
            pace = f"{rate} MiB/s" if rate else "unpaced"
            i, b = statistics.median(idle), statistics.median(busy)
            print(f"upload {pace:>10s}: idle {i:5.1f}  while 3 peers fetch {b:5.1f}  "
                  f"= {b / i:.2f}x; fetchers got {got:5.1f} MB/s; the node spent "
                  f"{upload_cpu * 1000:.1f} ms of CPU per MB sent", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
