"""What `logprobs` and `n` > 1 cost: generated tokens/s of `llamanet serve` per request shape.

Usage: bench/choices_logprobs.py [--bin PATH] [--model PATH] [--tokens N] [--rounds R]
Runs the server on a free loopback port (8 slots, context 8192, 2 threads) and times, in
alternating rounds, one text completion of a ~400-token prompt generating N sampled tokens:
  plain          n=1
  logprobs=5     n=1 with the chosen token's and the 5 best log-probabilities per token
  n=2            two choices in one request (the prompt is evaluated once)
  2 requests     two n=1 requests at once (each evaluates the prompt)
Each figure is the median over rounds of completion tokens / wall time, and the prompt tokens
the server evaluated for it (from /metrics, llamanet_prompt_tokens_total minus cached).
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

from local_node import LocalNode, add_node_arguments
PROMPT = "Here is a list of animals and what they eat. " + " ".join(
    f"Animal {i} eats plants and seeds." for i in range(50)) + " Now a story about a dragon:"


def post(base, body):
    request = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def counter(base, name):
    with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.split()[-1])
    return 0.0


def evaluated(base):
    return counter(base, "llamanet_prompt_tokens_total") - counter(base, "llamanet_cached_prompt_tokens_total")


def main():
    parser = argparse.ArgumentParser()
    add_node_arguments(parser)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seed = iter(range(1, 10_000))

    def body(**extra):
        # A fresh seed and a prompt no slot holds whole: every request evaluates the prompt.
        return {"model": "bench", "prompt": f"[{next(seed)}] " + PROMPT, "max_tokens": args.tokens,
                "temperature": 0.8, "seed": 7, **extra}

    def one(**extra):
        answer = post(base, body(**extra))
        return answer["usage"]["completion_tokens"]

    def two_requests():
        counts = [0, 0]
        def run(i):
            counts[i] = one()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        return sum(counts)

    shapes = {
        "plain": lambda: one(),
        "logprobs=5": lambda: one(logprobs=5),
        "n=2": lambda: one(n=2),
        "2 requests": two_requests,
    }
    node_args = ["--parallel", "8", "--ctx-size", "8192", "--threads", "2"]
    with LocalNode(args.bin, args.model, node_args) as base:
        one()  # warm-up
        rates = {name: [] for name in shapes}
        prompts = {name: [] for name in shapes}
        for _ in range(args.rounds):
            for name, run in shapes.items():
                before = evaluated(base)
                started = time.monotonic()
                tokens = run()
                elapsed = time.monotonic() - started
                rates[name].append(tokens / elapsed)
                prompts[name].append(evaluated(base) - before)
        print(f"{args.tokens} tokens per choice, prompt of about {len(PROMPT) // 4} tokens, "
              f"median of {args.rounds} rounds")
        base_rate = statistics.median(rates["plain"])
        for name in shapes:
            rate = statistics.median(rates[name])
            print(f"{name:>11}: {rate:6.1f} tokens/s ({rate / base_rate:.2f}x plain), "
                  f"prompt tokens evaluated {statistics.median(prompts[name]):.0f}", flush=True)


if __name__ == "__main__":
    main()
