#!/usr/bin/env python3
"""Runs the workspace's tests in lanes, each module of an integration test binary in a
process of its own, instead of one binary after another.

`cargo test` runs its test binaries one at a time, each with `--test-threads` threads. Most
of the suite's time is end-to-end tests (a control plane, a cluster, the model) that also
wait (for pods, alert windows), leaving a core idle while they do. Here each crate's one
integration test binary is split by module (one module per subject: `chaos`, `e2e`, ...),
each module runs in its own process with one test thread, as the separate binaries did, and
`--lanes` of them run at once. Unit test binaries run whole. The longest jobs (by the
durations of the last run, kept in a file) start first, so the lanes end close together.

Jobs named with --alone (timing-sensitive modules) run with nothing beside them.

    scripts/run-tests.py --artifacts cargo-test-no-run.json --durations FILE \
        [--lanes 2] [--timeout 1800] [--alone MODULE]...

The artifacts file holds the JSON messages of `cargo test --no-run --message-format=json`.
Each binary runs in its package's folder with CARGO_MANIFEST_DIR set, as cargo runs it.
Each job's output is shown whole when it ends, with its duration; the exit status is 1 when
any job failed or ran past --timeout (it is then killed with its process group).
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
        found[name] = {"name": name, "target": target["name"], "kind": kind,
                       "exe": message["executable"], "dir": str(package_dir)}
    return list(found.values())


def listed_tests(exe: str, cwd: str) -> list[str]:
    """The tests a libtest binary holds (`module::test`), ignored ones included."""
    out = subprocess.run([exe, "--list", "--format", "terse"], cwd=cwd, capture_output=True,
                         text=True, timeout=60, check=True,
                         env=dict(os.environ, CARGO_MANIFEST_DIR=cwd)).stdout
    return [line[: -len(": test")] for line in out.splitlines() if line.endswith(": test")]


def jobs_of(binary: dict, libtest_args: list[str]) -> list[dict]:
    """One job per module of an integration test binary, named as the binary of its own it
    once was (`cluster/chaos (test)`, so recorded durations still apply); one job for any
    other test binary (unit tests: many short tests in one process)."""
    env = {"CARGO_MANIFEST_DIR": binary["dir"]}
    base = [binary["exe"], "--test-threads", "1", *libtest_args]
    if binary["kind"] != "test":
        return [dict(binary, command=base, env=env)]
    modules: dict[str, list[str]] = {}
    for test in listed_tests(binary["exe"], binary["dir"]):
        module = test.split("::")[0] if "::" in test else binary["target"]
        modules.setdefault(module, []).append(test)
    crate = Path(binary["dir"]).name
    return [{"name": f"{crate}/{module} (test)", "target": module, "dir": binary["dir"],
             "env": env, "command": [*base, "--exact", *tests]}
            for module, tests in modules.items()]


class Runner:
    def __init__(self, args):
        self.args = args
        self.print_lock = threading.Lock()
        self.failed: list[str] = []
        self.durations: dict[str, float] = {}

    def run(self, job: dict) -> None:
        started = time.monotonic()
        with tempfile.TemporaryFile(mode="w+b") as log:
            process = subprocess.Popen(
                job["command"], cwd=job["dir"], env=dict(os.environ, **job["env"]),
                stdout=log, stderr=subprocess.STDOUT,
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
            self.durations[job["name"]] = round(elapsed, 1)
            if not outcome.startswith("ok"):
                self.failed.append(job["name"])
            print(f"\n---- {job['name']}: {outcome} in {elapsed:.1f} s", flush=True)
            sys.stdout.write(output)
            sys.stdout.flush()

    def lane(self, queue: list[dict], queue_lock: threading.Lock) -> None:
        while True:
            with queue_lock:
                if not queue:
                    return
                job = queue.pop(0)
            self.run(job)


def first_guess(name: str) -> float:
    """Seconds a job never timed before is guessed to take, from its display name
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
                        help="a module (or unit test target) that runs with nothing beside it")
    parser.add_argument("libtest_args", nargs="*")
    args = parser.parse_args()

    binaries = test_binaries(args.artifacts)
    if not binaries:
        print("error: no test binaries in", args.artifacts, file=sys.stderr)
        return 1
    jobs = [job for binary in binaries for job in jobs_of(binary, args.libtest_args)]
    unknown = set(args.alone) - {job["target"] for job in jobs}
    if unknown:
        print("error: --alone names no test module:", ", ".join(sorted(unknown)),
              file=sys.stderr)
        return 1
    try:
        previous = json.loads(args.durations.read_text())
    except (OSError, ValueError):
        previous = {}
    # Longest first. A job never timed before (every one on a first run) is guessed by what
    # it is: the test bed's and the operator's end-to-end tests start control planes and take
    # minutes, so they go first and the short ones fill the lanes' ends.
    jobs.sort(key=lambda j: previous.get(j["name"], first_guess(j["name"])), reverse=True)
    alone = [j for j in jobs if j["target"] in args.alone]
    shared = [j for j in jobs if j not in alone]
    print(f"{len(jobs)} test jobs from {len(binaries)} binaries: {len(shared)} in "
          f"{args.lanes} lanes, then {len(alone)} alone", flush=True)

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
    print("\nslowest test jobs:")
    for name, seconds in slowest:
        print(f"  {seconds:7.1f} s  {name}")
    if runner.failed:
        print("\nfailed: " + ", ".join(runner.failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
