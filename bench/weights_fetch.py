#!/usr/bin/env python3
"""Model weights through the swarm, measured: 4 replicas of a `url` model start at once,
the model behind an origin limited to --rate MB/s (a stand-in for a rate-limited hub).

Needs the main job running (scripts/up.sh: a private swarm). Serves gemma-cpu's model file
from an HTTP server on 127.0.0.1 that paces every response to --rate MB/s in all and counts
the bytes it sends, then per variant applies an InferenceNode `gemma-weights` (the default
model under the id `gemma-3-270m-weights`, `replicas: 4`, `url:` the origin):

  url-only  `model.sharing.enabled: false`: every replica downloads the model itself
  swarm     the default: the first replica downloads it, the others fetch it from peers

and prints, per variant, the bytes the origin served (in model copies) and the seconds from
`kubectl apply` until 4/4 replicas are ready; the resource is deleted between variants and
at the end, also on an error.

Only the Python standard library. Loopback only; every wait bounded.

  scripts/up.sh
  python3 bench/weights_fetch.py --rate 20
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mainjob import get_json, kubectl, wait  # noqa: E402

NAME = "gemma-weights"
MODEL_ID = "gemma-3-270m-weights"


class Origin(http.server.ThreadingHTTPServer):
    """Serves one file to every GET, all responses together paced to `rate` bytes/s."""

    daemon_threads = True

    def __init__(self, path: Path, rate: float):
        self.path = path
        self.rate = rate
        self.sent = 0
        self.lock = threading.Lock()
        self.next_free = time.monotonic()
        super().__init__(("127.0.0.1", 0), Handler)

    def take(self, n: int):
        with self.lock:
            now = time.monotonic()
            start = max(self.next_free, now)
            self.next_free = start + n / self.rate
        time.sleep(max(0.0, start - time.monotonic()))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        server: Origin = self.server
        size = server.path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(server.path, "rb") as f:
            while piece := f.read(64 * 1024):
                server.take(len(piece))
                try:
                    self.wfile.write(piece)
                except OSError:
                    return
                with server.lock:
                    server.sent += len(piece)

    def log_message(self, *args):
        pass


def resource(url: str, sha256: str, share: bool) -> str:
    return json.dumps({
        "apiVersion": "llamanet.io/v1alpha1",
        "kind": "InferenceNode",
        "metadata": {"name": NAME},
        "spec": {
            "replicas": 4,
            "model": {"name": MODEL_ID, "url": url, "sha256": sha256,
                      "sharing": {"enabled": share}},
            "resources": {"cpu": "100m", "memory": "1Gi"},
            "engine": {"contextSize": 512, "parallel": 1},
        },
    })


def ready() -> bool:
    node = get_json("inferencenode", NAME) or {}
    return (node.get("status") or {}).get("replicasReady") == "4/4"


def gone():
    pods = get_json("pods", "-l", f"app.kubernetes.io/instance={NAME}") or {}
    return not pods.get("items") and not get_json("inferencenode", NAME)


def run(origin: Origin, url: str, sha256: str, share: bool, limit: float) -> tuple[float, int]:
    with origin.lock:
        origin.sent = 0
    started = time.monotonic()
    kubectl("apply", "-f", "-", stdin=resource(url, sha256, share))
    wait("4/4 replicas ready", limit, ready)
    took = time.monotonic() - started
    with origin.lock:
        sent = origin.sent
    kubectl("delete", "inferencenode", NAME, "--wait=false")
    wait(f"{NAME}'s pods to go", 180, gone)
    return took, sent


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=20, help="origin MB/s (default 20)")
    parser.add_argument("--limit", type=float, default=600, help="seconds per variant")
    args = parser.parse_args()

    cpu = get_json("inferencenode", "gemma-cpu")
    if not cpu:
        sys.exit("gemma-cpu is not there: run scripts/up.sh first")
    model = Path(cpu["spec"]["model"]["path"])
    sha256 = cpu["spec"]["model"]["sha256"]
    if get_json("inferencenode", NAME):
        sys.exit(f"{NAME} exists (a previous run?): kubectl delete inferencenode {NAME}")
    origin = Origin(model, args.rate * 1e6)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{origin.server_address[1]}/{model.name}"
    size = model.stat().st_size
    print(f"model {model.name}: {size / 1e6:.0f} MB; origin {url} at {args.rate:g} MB/s")
    results = {}
    try:
        for variant, share in (("url-only", False), ("swarm", True)):
            took, sent = run(origin, url, sha256, share, args.limit)
            results[variant] = (took, sent)
            print(f"{variant:9s} 4/4 ready in {took:6.1f} s; origin served "
                  f"{sent / 1e6:6.0f} MB = {sent / size:.2f} copies", flush=True)
    finally:
        kubectl("delete", "inferencenode", NAME, "--ignore-not-found", "--wait=false", check=False)
        origin.shutdown()
    if len(results) == 2:
        (t_url, s_url), (t_swarm, s_swarm) = results["url-only"], results["swarm"]
        print(f"swarm vs url-only: {t_swarm / t_url:.2f}x the time, "
              f"{s_swarm / max(s_url, 1):.2f}x the origin bytes")


if __name__ == "__main__":
    if os.environ.get("KUBECONFIG") is None and not Path(
            "/var/tmp/llamanet/cluster/control-plane/kubeconfig").exists():
        sys.exit("no cluster: run scripts/up.sh first")
    main()
