#!/usr/bin/env python3
"""Runs the workspace's test binaries in two lanes instead of one after another.

`cargo test` runs its test binaries one at a time, each with `--test-threads` threads. Most
of the suite's time is end-to-end binaries of one test each (a control plane, a cluster, the
model), which leave the second core idle for minutes. Here two binaries run at once, each
with one test thread, so at most two tests run at any moment, as before, but a one-test
binary no longer holds the machine alone. The longest binaries (by the durations of the
last run, kept in a file) start first, so the two lanes end close together.

Binaries named with --alone (timing-sensitive ones) run with nothing beside them.

    scripts/run-tests.py --artifacts cargo-test-no-run.json --durations FILE \
        [--lanes 2] [--timeout 1800] [--alone NAME]...

The artifacts file holds the JSON messages of `cargo test --no-run --message-format=json`.
Each binary runs in its package's folder with CARGO_MANIFEST_DIR set, as cargo runs it.
Its output is shown whole when it ends, with its duration; the exit status is 1 when any
binary failed or ran past --timeout (it is then killed with its process group).
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def test_binaries(artifacts: Path) -> list[dict]:
    """Every test executable cargo built, named `package/target (kind)`."""
    found = {}
    for line in artifacts.read_text().splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            continue
        if message.get("reason") != "compiler-artifact":
            continue
        if not message.get("profile", {}).get("test") or not message.get("executable"):
            continue
        package_dir = Path(message["manifest_path"]).parent
        target = message["target"]
        kind = target["kind"][0]
        name = f"{package_dir.name}/{target['name']} ({kind})"
        found[name] = {"name": name, "target": target["name"], "exe": message["executable"],
                       "dir": str(package_dir)}
    return list(found.values())


class Runner:
    def __init__(self, args):
        self.args = args
        self.print_lock = threading.Lock()
        self.failed: list[str] = []
        self.durations: dict[str, float] = {}

    def run(self, binary: dict) -> None:
        env = dict(os.environ, CARGO_MANIFEST_DIR=binary["dir"])
        command = [binary["exe"], "--test-threads", "1", *self.args.libtest_args]
        started = time.monotonic()
        with tempfile.TemporaryFile(mode="w+b") as log:
            process = subprocess.Popen(
                command, cwd=binary["dir"], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                status = process.wait(timeout=self.args.timeout)
                outcome = "ok" if status == 0 else f"FAILED (exit {status})"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                outcome = f"FAILED (killed after {self.args.timeout} s)"
            elapsed = time.monotonic() - started
            log.seek(0)
            output = log.read().decode(errors="replace")
        with self.print_lock:
            self.durations[binary["name"]] = round(elapsed, 1)
            if not outcome.startswith("ok"):
                self.failed.append(binary["name"])
            print(f"\n---- {binary['name']}: {outcome} in {elapsed:.1f} s", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()

    def lane(self, queue: list[dict], queue_lock: threading.Lock) -> None:
        while True:
            with queue_lock:
                if not queue:
                    return
                binary = queue.pop(0)
            self.run(binary)


def first_guess(name: str) -> float:
    """Seconds a binary never timed before is guessed to take, from its display name
    (`cluster/chaos (test)`, `node/llamanet_node (lib)`)."""
    crate, _, kind = name.partition(" ")
    if kind != "(test)":
        return 20.0
    return {"cluster": 120.0, "operator": 90.0}.get(crate.split("/")[0], 30.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=Path, required=True)
    parser.add_argument("--durations", type=Path, required=True)
    parser.add_argument("--lanes", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--alone", action="append", default=[],
                        help="a target name whose binary runs with nothing beside it")
    parser.add_argument("libtest_args", nargs="*")
    args = parser.parse_args()

    binaries = test_binaries(args.artifacts)
    if not binaries:
        print("error: no test binaries in", args.artifacts, file=sys.stderr)
        return 1
    try:
        previous = json.loads(args.durations.read_text())
    except (OSError, ValueError):
        previous = {}
    # Longest first. A binary never timed before (every one on a first run) is guessed by
    # what it is: the test bed's and the operator's end-to-end tests start control planes and
    # take minutes, so they go first and the short ones fill the lanes' ends.
    binaries.sort(key=lambda b: previous.get(b["name"], first_guess(b["name"])), reverse=True)
    alone = [b for b in binaries if b["target"] in args.alone]
    shared = [b for b in binaries if b not in alone]
    print(f"{len(binaries)} test binaries: {len(shared)} in {args.lanes} lanes, "
          f"then {len(alone)} alone", flush=True)

    runner = Runner(args)
    queue_lock = threading.Lock()
    lanes = [threading.Thread(target=runner.lane, args=(shared, queue_lock))
             for _ in range(max(1, args.lanes))]
    for thread in lanes:
        thread.start()
    for thread in lanes:
        thread.join()
    runner.lane(alone, queue_lock)

    args.durations.parent.mkdir(parents=True, exist_ok=True)
    args.durations.write_text(json.dumps({**previous, **runner.durations}, indent=1,
                                         sort_keys=True))
    slowest = sorted(runner.durations.items(), key=lambda kv: kv[1], reverse=True)[:10]
    print("\nslowest test binaries:")
    for name, seconds in slowest:
        print(f"  {seconds:7.1f} s  {name}")
    if runner.failed:
        print("\nfailed: " + ", ".join(runner.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
