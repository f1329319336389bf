#!/usr/bin/env python3
"""Cold start, measured: the first request for a model scaled to zero, until its first token.

Needs the main job running (scripts/up.sh). Applies a second InferenceNode, `gemma-cold`
(the default model under the id `gemma-3-270m-cold`, `autoscaling: {minReplicas: 0,
maxReplicas: 1, scaleDownAfter: <--idle>s}`, `replicas: 0`), waits until the operator
advertises it cold and replica 0 of gemma-cpu lists it, then per round:

  a streamed chat completion for it at gemma-cpu's replica 0 (the entry node holds it);
  the split, from the logs' millisecond timestamps (one machine, one clock):
    wake     the entry node logged the operator's answer to its wake request
    scaled   the operator wrote replicas 0 -> 1 ("woken from zero")
    started  the pod's first process (the fetch init container) logged its first line
    verified the init container verified the model's SHA-256
    loaded   the node logged "model loaded; serving"
    token    the client got the first content chunk
  then waits until the resource is back at zero (idle for --idle s) and its pod is gone.

The wake path is what LlamaNet adds to the pod's own start: request -> scaled (the wake
message and the scale write) plus loaded -> token (the first heartbeat that says the replica
serves, the forward, prefill). Printed per round and as medians.

Only the Python standard library. Loopback only; every wait bounded; the resource is
deleted at the end, also on an error.

  scripts/up.sh
  python3 bench/cold_start.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from mainjob import get_json, has_text, inference_node, kubectl, wait

RUN_DIR = Path(os.environ.get("LLAMANET_RUN_DIR", "/var/tmp/llamanet"))
NAME = "gemma-cold"
MODEL = "gemma-3-270m-cold"


def log_time(line: str) -> float | None:
    try:
        stamp = json.loads(line)["timestamp"]
    except (ValueError, KeyError, TypeError):
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def first_after(paths, since: float, needle: str) -> float | None:
    """The earliest timestamp after `since` of a log line containing `needle`."""
    found = []
    for path in paths:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            if needle in line:
                t = log_time(line)
                if t is not None and t >= since:
                    found.append(t)
    return min(found) if found else None


def pod_logs(pattern: str, file: str = "*.log"):
    return list(RUN_DIR.glob(f"cluster/nodes/*/pods/{pattern}/logs/{file}"))


def first_token(base: str) -> tuple[float, float | None]:
    """Sends the streamed request; returns (time of the first content chunk, first comment)."""
    body = json.dumps({"model": MODEL, "stream": True, "max_tokens": 8, "temperature": 0,
                       "messages": [{"role": "user", "content": "Say hello."}]}).encode()
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
    comment = None
    with urllib.request.urlopen(request, timeout=300) as response:
        for raw in response:
            line = raw.decode(errors="replace")
            if line.startswith(":") and comment is None:
                comment = time.time()
            if line.startswith("data:") and has_text(line):
                token = time.time()
                response.read()
                return token, comment
            if '"error"' in line:
                sys.exit(f"the held stream failed: {line}")
    sys.exit("the stream ended without a token")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=15, help="scaleDownAfter, seconds")
    args = parser.parse_args()

    entry_pod = get_json("pod", "gemma-cpu-0")
    if not entry_pod:
        sys.exit("gemma-cpu-0 is not there: run scripts/up.sh first")
    base = f"http://{entry_pod['status']['podIP']}:8080"
    kubectl("apply", "-f", "-", stdin=inference_node(NAME, MODEL, {
        "replicas": 0,
        "autoscaling": {"minReplicas": 0, "maxReplicas": 1, "targetSlotsBusy": 0.5,
                        "scaleDownAfter": f"{args.idle}s"},
        "resources": get_json("inferencenode", "gemma-cpu")["spec"].get("resources", {}),
        "engine": {"contextSize": 1024, "parallel": 2},
    }))
    rows = []
    try:
        for round_ in range(1, args.rounds + 1):
            wait("the resource at zero, its pod gone", 180, lambda: (
                (get_json("inferencenode", NAME) or {}).get("status", {}).get("phase")
                == "ScaledToZero" and not get_json("pod", f"{NAME}-0")))

            def listed():
                with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as r:
                    return any(m["id"] == MODEL for m in json.load(r)["data"])
            wait("the entry node to list the cold model", 60, listed)
            start = time.time()
            token, comment = first_token(base)
            entry_logs = pod_logs("*_gemma-cpu-0_*", "llamanet.log")
            operator_logs = pod_logs("llamanet-system_llamanet-*")
            cold_logs = pod_logs(f"*_{NAME}-0_*")
            marks = {
                "wake": first_after(entry_logs, start, "asked to wake a cold model"),
                "scaled": first_after(operator_logs, start, "woken from zero"),
                "started": first_after(cold_logs, start, '"level"'),
                "verified": first_after(cold_logs, start, "model fetched and verified"),
                "loaded": first_after(cold_logs, start, "model loaded; serving"),
                "token": token,
            }
            row = {k: (None if v is None else (v - start) * 1000) for k, v in marks.items()}
            row["comment"] = None if comment is None else (comment - start) * 1000
            rows.append(row)
            shown = "  ".join(f"{k} {v:7.0f}" if v is not None else f"{k}       -"
                              for k, v in row.items())
            print(f"round {round_}: ms after the request:  {shown}", flush=True)
    finally:
        kubectl("delete", "inferencenode", NAME, "--wait=false", check=False)

    def median(key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else float("nan")
    print(f"\nmedians over {len(rows)} rounds (ms after the request):")
    for key in ["comment", "wake", "scaled", "started", "verified", "loaded", "token"]:
        print(f"  {key:9} {median(key):8.0f}")
    added = median("scaled") + (median("token") - median("loaded"))
    print(f"\nthe wake path (request -> scaled, loaded -> first token): {added:.0f} ms; "
          f"the pod's own start (scaled -> loaded): {median('loaded') - median('scaled'):.0f} ms")


if __name__ == "__main__":
    main()
