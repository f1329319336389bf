"""Starts `llamanet serve` on a free loopback port for the OpenAI-client suite.

The binary comes from LLAMANET_BIN (default: $CARGO_TARGET_DIR/release/llamanet, with
CARGO_TARGET_DIR defaulting to ~/.cache/llamanet/target), the router and sidecar binary
without llama.cpp from LLAMANET_LIGHT_BIN (default: $CARGO_TARGET_DIR/light/llamanet),
the model from LLAMANET_MODEL
(default: the shared Gemma 3 270M file). Every wait is bounded in time.
"""

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

HOME = Path.home()
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", HOME / ".cache/llamanet/target"))
BIN = Path(os.environ.get("LLAMANET_BIN", TARGET / "release/llamanet"))
# The same binary built without the engine (`--no-default-features`: no llama.cpp), as the
# router and sidecar image ships it; scripts/setup.sh builds it.
LIGHT_BIN = Path(os.environ.get("LLAMANET_LIGHT_BIN", TARGET / "light/llamanet"))
MODEL = Path(os.environ.get("LLAMANET_MODEL", HOME / ".cache/llamanet/models/gemma-3-270m-q4_k_m.gguf"))
MODEL_ID = "gemma-test"
API_KEY = "e2e-key"
SLOTS = 8
LOAD_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5.0):
    """(status, parsed JSON or text) of a GET, without raising on HTTP errors."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode()
            return response.status, body
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


LOG_DIR = Path(os.environ.get("TMPDIR", "/tmp"))

# Every swarm of the suite is private, as the chart makes them: one pre-shared key for the
# session, handed to every process (nodes, routers, sidecars, tools) through the variable
# their --swarm-key flag reads. Keyed nodes in a public swarm would refuse each other's
# forwards (strangers could join and bypass the key).
SWARM_KEY = LOG_DIR / f"llamanet-e2e-swarm-{os.getpid()}.key"
SWARM_KEY.write_text(f"/key/swarm/psk/1.0.0/\n/base16/\n{secrets.token_hex(32)}\n")
os.environ["LLAMANET_SWARM_KEY"] = str(SWARM_KEY)


class Process:
    """A child process serving HTTP (a node, a router, a sidecar, llama-server) with its log
    file: waits for `GET /health` 200 and stops within bounds, whatever happens."""

    def __init__(self, name, base, args, env=None, log_name=None):
        self.name = name
        self.base = base
        self.log = open(LOG_DIR / f"llamanet-e2e-{log_name or name}.log", "w")
        self.proc = subprocess.Popen([str(a) for a in args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def healthy(self) -> bool:
        try:
            status, _ = http_get(self.base + "/health", timeout=2)
            return status == 200
        except OSError:
            return False

    def wait_ready(self, timeout=LOAD_TIMEOUT_S, deadline=None):
        """Until /health answers 200, for `timeout` s or until `deadline` (monotonic)."""
        deadline = deadline or time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, \
                f"{self.name} exited with {self.proc.returncode}; see {self.log.name}"
            if self.healthy():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready in time; see {self.log.name}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


class Server(Process):
    """`llamanet serve` of the default model on a free loopback port."""

    def __init__(self, extra_args=(), env=None):
        assert BIN.is_file(), f"{BIN} missing: build with `cargo build --release -p llamanet-node`"
        assert MODEL.is_file(), f"{MODEL} missing"
        self.port = free_port()
        options = {
            "--model": str(MODEL), "--host": "127.0.0.1", "--port": str(self.port),
            "--model-id": MODEL_ID, "--api-key": API_KEY, "--parallel": str(SLOTS),
            "--ctx-size": str(SLOTS * 1024), "--queue": "16", "--body-limit": str(256 * 1024),
        }
        # extra_args are flags and "--name value" pairs that replace the defaults above.
        flags = []
        extra = list(extra_args)
        while extra:
            name = extra.pop(0)
            if extra and not extra[0].startswith("--"):
                options[name] = extra.pop(0)
            else:
                flags.append(name)
        args = [str(BIN), "serve", *flags]
        for name, value in options.items():
            args += [name, value]
        super().__init__(f"serve-{self.port}", f"http://127.0.0.1:{self.port}", args, env=env)


@pytest.fixture(scope="session")
def server():
    srv = Server()
    srv.wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base + "/v1", api_key=API_KEY, timeout=120, max_retries=0)


def metrics(server) -> str:
    status, body = http_get(server.base + "/metrics")
    assert status == 200
    return body


def gauge(server, name: str) -> float:
    for line in metrics(server).splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def health_json(server):
    status, body = http_get(server.base + "/health")
    return status, json.loads(body)
