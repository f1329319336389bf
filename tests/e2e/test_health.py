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


def test_sigterm_drains_and_ends_what_outlasts_the_grace_period_with_an_error():
    """SIGTERM: a short answer already running finishes; answers still running when the grace
    period ends get a clear error instead of being cut (a stream: an error event and
    [DONE]; a plain answer: 503 `shutting_down`, which clients retry elsewhere); the process
    then exits 0, well before a kubelet would kill it."""
    import signal

    from openai import APIError, OpenAI

    grace = 3
    server = Server(extra_args=["--shutdown-grace", str(grace), "--parallel", "3",
                                "--ctx-size", str(3 * 2048)])
    try:
        server.wait_ready()
        client = OpenAI(base_url=server.base + "/v1", api_key=API_KEY, timeout=60, max_retries=0)
        long_prompt = [{"role": "user", "content": "Count from 1 to 2000, one number per line."}]
        stream = client.chat.completions.create(
            model=MODEL_ID, messages=long_prompt, max_tokens=1900, temperature=0, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        body = json.dumps({"model": MODEL_ID, "max_tokens": 1900, "temperature": 0,
                           "messages": long_prompt}).encode()
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        plain = {}

        def plain_request():
            request = urllib.request.Request(server.base + "/v1/chat/completions", data=body,
                                             method="POST", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    plain["status"], plain["body"] = response.status, json.load(response)
            except urllib.error.HTTPError as err:
                plain["status"], plain["body"] = err.code, json.load(err)

        plain_thread = threading.Thread(target=plain_request, daemon=True)
        plain_thread.start()
        short = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": "Say hi"}], max_tokens=8,
            temperature=0, stream=True)
        next(iter(short))
        time.sleep(0.3)

        server.proc.send_signal(signal.SIGTERM)
        terminated = time.monotonic()
        # The short answer started before SIGTERM finishes as usual.
        finishes = [c.choices[0].finish_reason for c in short if c.choices]
        assert finishes[-1] in ("stop", "length"), finishes
        # The long stream goes on during the grace period, then ends with the error event.
        text = ""
        with pytest.raises(APIError) as raised:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
        ended = time.monotonic() - terminated
        assert "shutdown grace period" in str(raised.value), raised.value
        assert grace - 0.5 < ended < grace + 3, ended
        assert text, "no text arrived during the grace period"
        plain_thread.join(timeout=10)
        assert plain.get("status") == 503, plain
        assert plain["body"]["error"]["code"] == "shutting_down", plain
        assert "shutdown grace period" in plain["body"]["error"]["message"], plain
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - terminated < grace + 5
    finally:
        server.stop()
