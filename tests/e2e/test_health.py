"""Health that tells the truth: when the engine thread or the swarm task dies, or stops making
progress, `/health` turns 503 with the reason and the process exits non-zero, so Kubernetes
restarts it. The failures are injected through `serve --test-hooks` (a hidden flag that only
tests set); detection and exit are the node's own.
"""

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import API_KEY, MODEL_ID, Server, http_get

STALL_S = 2
CASES = [
    # failure, what /health says, whether a request must be waiting (a stall needs work)
    ("engine-crash", "the engine thread has stopped", False),
    ("engine-hang", "the engine has made no progress", True),
    ("swarm-stop", "the swarm task has stopped", False),
    ("swarm-hang", "the swarm event loop has made no progress", False),
]


def post(url, body=b"", headers=None, timeout=10.0):
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return None


def waiting_request(server):
    body = json.dumps({"model": MODEL_ID, "max_tokens": 4,
                       "messages": [{"role": "user", "content": "Hi"}]}).encode()
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    thread = threading.Thread(
        target=post, args=(server.base + "/v1/chat/completions", body, headers, 30.0), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("failure, reason, needs_work", CASES)
def test_a_dead_or_stuck_part_turns_health_503_and_exits_non_zero(failure, reason, needs_work):
    server = Server(extra_args=["--test-hooks", "--stall-timeout", str(STALL_S),
                                "--parallel", "1", "--ctx-size", "1024"])
    try:
        server.wait_ready()
        assert http_get(server.base + "/health")[0] == 200
        assert post(server.base + f"/debug/inject/{failure}") == 202
        if needs_work:
            waiting_request(server)
        deadline = time.monotonic() + STALL_S + 10
        seen = None
        while time.monotonic() < deadline and server.proc.poll() is None:
            try:
                status, body = http_get(server.base + "/health", timeout=2)
            except OSError:
                break
            if status == 503:
                seen = json.loads(body)
                break
            time.sleep(0.1)
        assert seen is not None, f"/health never turned 503 after {failure}"
        assert seen["status"] == "unhealthy"
        assert seen["reason"].startswith(reason), seen
        code = server.proc.wait(timeout=30)
        assert code != 0, f"exited with {code} after {failure}"
    finally:
        server.stop()


def test_without_the_flag_there_are_no_hooks(server):
    assert post(server.base + "/debug/inject/engine-crash") == 404
    assert http_get(server.base + "/health")[0] == 200
