"""What the benchmarks that run against the main job (scripts/up.sh) share: kubectl on its
kubeconfig, bounded waits, an extra InferenceNode serving the default model under another id,
and reading streamed answers. Only the Python standard library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

KUBECONFIG = os.environ.get("KUBECONFIG", "/var/tmp/llamanet/cluster/control-plane/kubeconfig")


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, *args], input=stdin,
                         capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out.stdout


def get_json(*args: str) -> dict | None:
    """`kubectl get ... -o json`, or None when it is not there."""
    out = kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out) if out else None


def wait(what: str, limit: float, check):
    """`check()`'s first truthy value, polled every 0.2 s; exits after `limit` seconds."""
    deadline = time.time() + limit
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    sys.exit(f"timed out after {limit:.0f} s waiting for {what}")


def inference_node(name: str, model_id: str, spec: dict) -> str:
    """An InferenceNode `name` serving the main job's model (gemma-cpu's file) as `model_id`,
    with `spec` on top, as JSON for `kubectl apply -f -`."""
    cpu = get_json("inferencenode", "gemma-cpu")
    if not cpu:
        sys.exit("gemma-cpu is not there: run scripts/up.sh first")
    model = cpu["spec"]["model"]
    return json.dumps({
        "apiVersion": "llamanet.io/v1alpha1",
        "kind": "InferenceNode",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": model_id, "path": model["path"], "sha256": model["sha256"]},
            **spec,
        },
    })


def has_text(line: str) -> bool:
    """Whether an SSE data line carries generated text (the first chunk only names the role)."""
    try:
        chunk = json.loads(line.removeprefix("data:").strip())
        return bool(chunk["choices"][0]["delta"].get("content"))
    except (ValueError, KeyError, IndexError, TypeError):
        return False
