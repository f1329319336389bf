"""Aggregate generated tokens/s of `llamanet serve` with 1, 2, 4 and 8 concurrent clients.

A quick measurement, not the full comparison with llama.cpp's llama-server (see issue 3).
Usage: bench/serve_throughput.py [--bin PATH] [--model PATH] [--tokens N]
Runs the server on a free loopback port with 8 slots; every client streams one completion
of up to N sampled tokens from a fixed prompt (EOS may end one early), and the figure is the sum of
completion tokens over the wall time of the round.
"""

import argparse
import json
import threading
import time
import urllib.request

from local_node import LocalNode, add_node_arguments


def complete(base, tokens, seed):
    body = json.dumps({"model": "bench", "prompt": "Write a long story about a dragon:",
                       "max_tokens": tokens, "temperature": 0.8, "seed": seed}).encode()
    request = urllib.request.Request(base + "/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())["usage"]["completion_tokens"]


def main():
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--clients", default="1,2,4,8")
    args = parser.parse_args()
    with LocalNode(args.bin, args.model, ["--parallel", "8", "--ctx-size", "8192"]) as base:
        complete(base, 8, 0)  # warm-up
        for clients in [int(c) for c in args.clients.split(",")]:
            counts = [0] * clients
            def run(i):
                counts[i] = complete(base, args.tokens, i + 1)
            threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
            elapsed = time.monotonic() - started
            print(f"{clients} client(s): {sum(counts)} tokens in {elapsed:.2f} s = "
                  f"{sum(counts) / elapsed:.1f} tokens/s aggregate", flush=True)


if __name__ == "__main__":
    main()
