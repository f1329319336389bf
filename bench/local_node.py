"""A `llamanet serve` on a free loopback port for the single-node benchmarks.

    with LocalNode(args.bin, args.model, ["--parallel", "8", "--ctx-size", "8192"]) as base:
        ...  # base is "http://127.0.0.1:PORT", healthy

The node's stderr is dropped; it is stopped (SIGTERM, then waited for) on leaving the block.
"""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

HOME = Path.home()
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", HOME / ".cache/llamanet/target"))
DEFAULT_BIN = str(TARGET / "release/llamanet")
DEFAULT_MODEL = str(HOME / ".cache/llamanet/models/gemma-3-270m-q4_k_m.gguf")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def add_node_arguments(parser):
    """--bin and --model, with the defaults every benchmark uses."""
    parser.add_argument("--bin", default=DEFAULT_BIN)
    parser.add_argument("--model", default=DEFAULT_MODEL)


class LocalNode:
    def __init__(self, binary, model, extra_args=(), ready_timeout=120):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.args = [binary, "serve", "--model", model, "--host", "127.0.0.1",
                     "--port", str(self.port), "--model-id", "bench", *extra_args]
        self.ready_timeout = ready_timeout
        self.process = None

    def __enter__(self):
        self.process = subprocess.Popen(self.args, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self.base
            except OSError:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError("the node was not ready in time")
            time.sleep(0.1)

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait(timeout=40)
