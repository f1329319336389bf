"""Can one client stall the others? Inter-token latency of streaming chats, quiet and under load.

Usage: bench/stall.py [--bin PATH] [--model PATH] [--seconds S] [--streams N]
                      [--threads T] [--embedding-threads E]
Runs `llamanet serve --embeddings` (8 slots, context 8192, T threads, default 2; with E,
embeddings on a worker of their own with E threads) on a free loopback port.
N clients (default 4) stream chat completions of 64 tokens back to back and time the gap
between consecutive content chunks. First for S seconds alone, then for S seconds while one
more client loops, one after the other: an embeddings request of 64 inputs (about 40 tokens
each), and a chat request whose response_format is a 10 KB JSON schema (16 tokens). Prints
p50 / p99 inter-token latency of each phase and the ratio, and how long the extra client's
requests took (what its share of the machine cost it).
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

from local_node import LocalNode, add_node_arguments
SCHEMA = {"type": "object", "properties": {
    f"field_{i:03d}": {"type": "string", "maxLength": 20, "description": f"The value number {i}."}
    for i in range(130)}}
INPUTS = [f"Sentence {i}: the quick brown fox jumps over the lazy dog near the river bank "
          f"while the sun sets slowly behind the distant hills." for i in range(64)]


def post(base, path, body, timeout=300):
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def stream_gaps(base, stop_at, gaps, seed):
    """Streams chats until stop_at, appending the gaps between content chunks (seconds)."""
    while time.monotonic() < stop_at:
        body = {"model": "bench", "stream": True, "max_tokens": 64, "temperature": 0.8,
                "seed": seed, "messages": [{"role": "user", "content": "Tell me a story."}]}
        last = None
        with post(base, "/v1/chat/completions", body) as response:
            for line in response:
                if not line.startswith(b"data: {"):
                    continue
                chunk = json.loads(line[6:])
                if not chunk["choices"] or not chunk["choices"][0]["delta"].get("content"):
                    continue
                now = time.monotonic()
                if last is not None:
                    gaps.append(now - last)
                last = now
        seed += 1


def adversary(base, stop_at, counts, kinds):
    while time.monotonic() < stop_at:
        if "embeddings" in kinds:
            started = time.monotonic()
            with post(base, "/v1/embeddings", {"model": "bench", "input": INPUTS,
                                               "encoding_format": "float"}) as response:
                response.read()
            counts["embeddings"] += 1
            counts["embeddings_s"].append(time.monotonic() - started)
        if "schemas" not in kinds and "chats" not in kinds:
            continue
        # "chats" is the same request without its schema: what a fifth client costs anyway.
        body = {"model": "bench", "max_tokens": 16, "temperature": 0,
                "messages": [{"role": "user", "content": "Fill the form."}]}
        if "schemas" in kinds:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "form", "schema": SCHEMA}}
        started = time.monotonic()
        with post(base, "/v1/chat/completions", body) as response:
            response.read()
        counts["schemas"] += 1
        counts["schemas_s"].append(time.monotonic() - started)


def phase(base, streams, seconds, hostile, kinds):
    stop_at = time.monotonic() + seconds
    gaps = [[] for _ in range(streams)]
    counts = {"embeddings": 0, "schemas": 0, "embeddings_s": [], "schemas_s": []}
    threads = [threading.Thread(target=stream_gaps, args=(base, stop_at, gaps[i], 100 * i))
               for i in range(streams)]
    if hostile:
        threads.append(threading.Thread(target=adversary, args=(base, stop_at, counts, kinds)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 300)
    merged = sorted(g for per in gaps for g in per)
    return merged, counts


def percentile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="the node's decode threads")
    parser.add_argument("--embedding-threads", type=int, default=0,
                        help="threads of an embeddings worker of its own (0: none, the default)")
    parser.add_argument("--adversary", default="embeddings,schemas",
                        help="what the extra client sends: embeddings, schemas or both; "
                             "chats: the schema requests without their schema")
    args = parser.parse_args()
    print(f"schema {len(json.dumps(SCHEMA))} bytes, {len(INPUTS)} embedding inputs")
    node_args = ["--parallel", "8", "--ctx-size", "8192", "--threads", str(args.threads), "--embeddings"]
    if args.embedding_threads:
        node_args += ["--embedding-threads", str(args.embedding_threads)]
    print("llamanet serve " + " ".join(node_args))
    with LocalNode(args.bin, args.model, node_args) as base:
        results = {}
        for name, hostile in (("quiet", False), ("under load", True)):
            gaps, counts = phase(base, args.streams, args.seconds, hostile, args.adversary.split(","))
            results[name] = gaps
            extra = ""
            if hostile:
                took = {kind: statistics.median(counts[f"{kind}_s"]) if counts[f"{kind}_s"] else float("nan")
                        for kind in ("embeddings", "schemas")}
                extra = (f", {counts['embeddings']} embeddings requests (median {took['embeddings']:.1f} s) "
                         f"and {counts['schemas']} schema requests (median {took['schemas']:.2f} s)")
            print(f"{name:>10}: {len(gaps)} gaps, inter-token p50 {1000 * percentile(gaps, 0.5):.1f} ms, "
                  f"p99 {1000 * percentile(gaps, 0.99):.1f} ms, max {1000 * gaps[-1]:.1f} ms{extra}",
                  flush=True)
        for q in (0.5, 0.99):
            ratio = percentile(results["under load"], q) / percentile(results["quiet"], q)
            print(f"p{int(q * 100)} ratio under load / quiet: {ratio:.2f}")


if __name__ == "__main__":
    main()
