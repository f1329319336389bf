#!/usr/bin/env python3
"""The operator's autoscaler under a load step: from 1 to --clients concurrent clients on a
one-replica InferenceNode with `maxReplicas: 2`.

Needs the main job running (scripts/up.sh). Applies `gemma-step` (the default model under
the id `gemma-3-270m-step`, 4 slots, `autoscaling: {minReplicas: 1, maxReplicas: 2,
targetSlotsBusy: 0.5, scaleDownAfter: 60s}`), waits until it is Ready, then:

  --before s with one client streaming chat completions (the baseline);
  a step to --clients clients at replica 0 (the entry node, which forwards to the second
  replica once it serves), until the second replica has served for --after s.

Printed: the time from the step to the autoscaler's `spec.replicas: 2`, to the second
replica Ready (`status.readyReplicas` 2), and the time to first token (p50, p90) of the
requests started before the step, after it while one replica served, and after the second
was Ready. On one machine both replicas share its cores: the second replica adds slots,
not compute, so what it shows is how fast the autoscaler reacts, not a faster answer.

Only the Python standard library. Loopback only; every wait bounded; the resource is
deleted at the end, also on an error.

  scripts/up.sh
  python3 bench/autoscale_step.py --clients 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.request

from mainjob import get_json, has_text, inference_node, kubectl, wait

NAME = "gemma-step"
MODEL = "gemma-3-270m-step"


def ttft(base: str) -> float | None:
    """Seconds to the first content chunk of one streamed completion; None if it failed."""
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "Tell me about lighthouses."}]})
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body.encode(),
                                     headers={"content-type": "application/json"})
    start = time.time()
    first = None
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            for raw in response:
                line = raw.decode(errors="replace")
                if '"error"' in line:
                    return None
                if first is None and line.startswith("data:") and has_text(line):
                    first = time.time() - start
    except OSError:
        return None
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--before", type=float, default=20)
    parser.add_argument("--after", type=float, default=30)
    args = parser.parse_args()

    # A previous run's replicas must be gone, or their status passes for this run's.
    wait("a previous run's pods gone", 120, lambda: not get_json("pod", f"{NAME}-0")
         and not get_json("inferencenode", NAME))
    kubectl("apply", "-f", "-", stdin=inference_node(NAME, MODEL, {
        "replicas": 1,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 2, "targetSlotsBusy": 0.5,
                        "scaleDownAfter": "60s"},
        # Small requests, so both replicas fit next to the main job's on the local node
        # (they share its cores anyway).
        "resources": {"cpu": "200m", "memory": "1Gi"},
        "engine": {"contextSize": 2048, "parallel": 4},
    }))
    results: list[tuple[float, float | None]] = []  # (start, ttft)
    lock = threading.Lock()
    stop = threading.Event()

    def client(base: str, starts_at: float):
        while time.time() < starts_at and not stop.is_set():
            time.sleep(0.05)
        while not stop.is_set():
            start = time.time()
            result = ttft(base)
            with lock:
                results.append((start, result))
            if result is None:
                time.sleep(0.2)  # A failing node is not hammered.

    try:
        wait("gemma-step Ready", 300, lambda: (get_json("inferencenode", NAME) or {})
             .get("status", {}).get("readyReplicas") == 1)
        base = f"http://{get_json('pod', f'{NAME}-0')['status']['podIP']}:8080"
        t0 = time.time()
        step = t0 + args.before
        threads = [threading.Thread(target=client, args=(base, t0 if i == 0 else step),
                                    daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        scaled = wait("spec.replicas 2", args.before + 120,
                      lambda: get_json("inferencenode", NAME)["spec"]["replicas"] == 2
                      and time.time())
        ready = wait("the second replica Ready", 300,
                     lambda: get_json("inferencenode", NAME)["status"].get("readyReplicas") == 2
                     and time.time())
        time.sleep(args.after)
        stop.set()
        for t in threads:
            t.join(timeout=130)
    finally:
        stop.set()
        kubectl("delete", "inferencenode", NAME, "--wait=false", check=False)

    def figures(lo: float, hi: float) -> str:
        done = [r for s, r in results if lo <= s < hi]
        ok = sorted(r for r in done if r is not None)
        if not ok:
            return f"{len(done)} requests, none answered"
        p90 = ok[min(len(ok) - 1, int(len(ok) * 0.9))]
        return (f"{len(done)} requests, {len(done) - len(ok)} failed, TTFT p50 "
                f"{statistics.median(ok) * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms")

    print(f"step to {args.clients} clients at t = {args.before:.0f} s")
    print(f"  spec.replicas 2 after     {scaled - step:6.1f} s")
    print(f"  second replica Ready after {ready - step:6.1f} s")
    print(f"  before the step (1 client):          {figures(t0, step)}")
    print(f"  after the step, one replica serving: {figures(step, ready)}")
    print(f"  after the second replica was Ready:  {figures(ready, float('inf'))}")


if __name__ == "__main__":
    main()
