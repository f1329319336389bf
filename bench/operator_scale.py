#!/usr/bin/env python3
"""The operator at scale: N InferenceNodes reconciled to a steady state on the local
control plane, with the real `llamanet-operator` binary.

    python3 bench/operator_scale.py --resources 1000 --heartbeat-peers 50

1. Starts `llamanet-cluster up --nodes 0` (etcd, kube-apiserver, controller-manager,
   scheduler; no kubelet, so every pod stays Pending/Unschedulable, as on a cluster out of
   GPUs) and the operator (no leader election, metrics on loopback).
2. Creates N InferenceNodes and times until every one has a status computed for its
   generation (four conditions, observedGeneration = generation).
3. Reports the operator's resident memory (now and peak), and the API requests the run
   cost per resource, from the API server's own `apiserver_request_total` (WATCH excluded;
   the bench's own creates subtracted).
4. With --heartbeat-peers K: K swarm peers (node/examples/heartbeat_load.rs) act as replica
   0 of the first K resources and beat every 2 s; after a settling period the operator's
   `heartbeat_to_status_seconds` histogram gives p50/p99 from a heartbeat's arrival to the
   status write showing it, and the API requests per heartbeat.

Every wait is bounded. Needs scripts/build-tools.sh and a release build (scripts/setup.sh).
"""

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("LLAMANET_CACHE", Path.home() / ".cache/llamanet"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", CACHE / "target")) / "release"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Kubectl:
    def __init__(self, kubeconfig):
        self.base = ["kubectl", "--kubeconfig", str(kubeconfig)]

    def run(self, *args, stdin=None, check=True):
        out = subprocess.run(self.base + list(args), input=stdin, capture_output=True, text=True,
                             timeout=300)
        if check and out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr}")
        return out.stdout

    def json(self, *args):
        return json.loads(self.run(*args, "-o", "json"))


def request_counts(kubectl):
    """apiserver_request_total summed by (group, resource, verb), WATCH excluded."""
    counts = {}
    for line in kubectl.run("get", "--raw", "/metrics").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, value = line.rsplit(" ", 1)
        labels = {}
        for part in labels_text[len("apiserver_request_total{"):-1].split('",'):
            key, _, val = part.partition("=")
            labels[key] = val.strip('"')
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = (labels.get("group", ""), resource, labels.get("verb", ""))
        counts[key] = counts.get(key, 0) + float(value)
    return counts


def diff(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


def operators_share(counts):
    """The requests only the operator makes: the other components (StatefulSet controller,
    scheduler, garbage collector) create pods, write pod and StatefulSet status and core
    Events, and read through watches; the operator applies its children, lists pods, writes
    InferenceNode status and events.k8s.io Events. The bench's own InferenceNode creates are
    left out."""
    mine, others = {}, {}
    for (group, resource, verb), n in counts.items():
        ours = (
            (group == "llamanet.io" and not (resource == "inferencenodes" and verb == "POST"))
            or (group == "apps" and resource == "statefulsets" and verb in ("APPLY", "PATCH", "GET", "LIST"))
            or (group == "" and resource in ("services", "secrets"))
            or (group == "" and resource == "pods" and verb == "LIST")
            or (group == "events.k8s.io")
            or (group == "monitoring.coreos.com")
        )
        (mine if ours else others)[f"{group or 'core'}/{resource} {verb}"] = int(n)
    return mine, others


def rss_kib(pid):
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def histogram(text, name):
    """Cumulative buckets [(le, count)] of a histogram in a scrape."""
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(buckets)


def quantile(q, buckets):
    """histogram_quantile's linear interpolation inside the bucket."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return float("nan")
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def manifest(namespace, name):
    return f"""apiVersion: llamanet.io/v1alpha1
kind: InferenceNode
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: 1
  model:
    url: https://models.example.com/gemma-3-270m-q4_k_m.gguf
    sha256: a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--resources", type=int, default=1000)
    ap.add_argument("--heartbeat-peers", type=int, default=50)
    ap.add_argument("--settle", type=int, default=30, help="seconds of steady state measured")
    ap.add_argument("--timeout", type=int, default=600)
    args = ap.parse_args()

    for binary in ("llamanet-cluster", "llamanet-operator"):
        if not (TARGET / binary).is_file():
            sys.exit(f"{TARGET / binary} missing: run scripts/setup.sh")
    load = None
    if args.heartbeat_peers:
        log("building the heartbeat load generator (node/examples/heartbeat_load.rs)")
        subprocess.run(["cargo", "build", "--release", "-q", "--workspace",
                        "--example", "heartbeat_load"], cwd=ROOT, check=True, timeout=1800,
                       env=dict(os.environ, CARGO_TARGET_DIR=str(TARGET.parent)))
        load = TARGET / "examples/heartbeat_load"

    work = Path(tempfile.mkdtemp(prefix="llamanet-scale-", dir="/var/tmp"))
    procs = []
    try:
        log(f"local control plane in {work} (no kubelet)")
        cluster = subprocess.Popen([TARGET / "llamanet-cluster", "up", "--dir", work / "cluster",
                                    "--nodes", "0"], stdout=subprocess.DEVNULL,
                                   stderr=open(work / "cluster.log", "w"))
        procs.append(cluster)
        deadline = time.time() + 120
        while not (work / "cluster/ready").exists():
            if cluster.poll() is not None or time.time() > deadline:
                sys.exit(f"the cluster did not start: see {work / 'cluster.log'}")
            time.sleep(0.5)
        kubeconfig = (work / "cluster/env").read_text().strip().split("=", 1)[1]
        kubectl = Kubectl(kubeconfig)
        kubectl.run("apply", "--server-side", "-f", str(ROOT / "crds/inferencenode.yaml"))
        # kubectl wait gives up at once while the new CRD's conditions are still null.
        established = time.time() + 60
        while kubectl.run("get", "crd", "inferencenodes.llamanet.io", "-o",
                          "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                          check=False).strip() != "True":
            if time.time() > established:
                sys.exit("the InferenceNode CRD was not established within 60 s")
            time.sleep(0.2)
        kubectl.run("create", "namespace", "bench")

        metrics_port, swarm_port = free_port(), free_port()
        env = dict(os.environ, KUBECONFIG=kubeconfig, LLAMANET_LOG="warn")
        operator = subprocess.Popen(
            [TARGET / "llamanet-operator", "--leader-election=false",
             "--metrics-addr", f"127.0.0.1:{metrics_port}",
             "--swarm-listen", f"/ip4/127.0.0.1/tcp/{swarm_port}",
             "--bootstrap-peer", f"/ip4/127.0.0.1/tcp/{swarm_port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(work / "operator.log", "w"))
        procs.append(operator)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if operator.poll() is not None or time.time() > deadline:
                sys.exit(f"the operator did not become ready: see {work / 'operator.log'}")
            time.sleep(0.2)
        rss_idle, _ = rss_kib(operator.pid)
        log(f"operator ready, {rss_idle / 1024:.1f} MiB resident")

        before = request_counts(kubectl)
        names = [f"inode-{i}" for i in range(args.resources)]
        log(f"creating {args.resources} InferenceNodes")
        started = time.time()
        for chunk in range(0, len(names), 250):
            docs = "---\n".join(manifest("bench", n) for n in names[chunk:chunk + 250])
            kubectl.run("create", "-f", "-", stdin=docs)
        created = time.time() - started
        log(f"created in {created:.1f}s; waiting for every status")
        reconciled = 0
        while True:
            items = kubectl.json("get", "inferencenodes", "-n", "bench")["items"]
            reconciled = sum(
                1 for it in items
                if len(it.get("status", {}).get("conditions", [])) == 4
                and it["status"].get("observedGeneration") == it["metadata"]["generation"])
            if reconciled == args.resources:
                break
            if time.time() - started > args.timeout:
                sys.exit(f"only {reconciled}/{args.resources} reconciled after {args.timeout}s")
            time.sleep(1)
        all_reconciled = time.time() - started
        rss_now, rss_peak = rss_kib(operator.pid)
        after_reconcile = request_counts(kubectl)
        log(f"all {args.resources} reconciled after {all_reconciled:.1f}s; "
            f"operator {rss_now / 1024:.1f} MiB (peak {rss_peak / 1024:.1f} MiB)")

        time.sleep(args.settle)
        steady = request_counts(kubectl)
        steady_diff = diff(steady, after_reconcile)

        beats = None
        if load:
            log(f"{args.heartbeat_peers} heartbeat peers for {args.settle + 30}s")
            scrape0 = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            hb0 = histogram(scrape0, "llamanet_operator_heartbeat_to_status_seconds")
            # Each peer signs with the key the operator wrote for pod `inode-<i>-0`, as
            # that pod would (it mounts the Secret): heartbeats from other keys are refused.
            keys = work / "identity"
            keys.mkdir()
            for name in names[:args.heartbeat_peers]:
                secret = kubectl.json("get", "secret", "-n", "bench", f"{name}-identity")
                (keys / f"{name}-0").write_bytes(base64.b64decode(secret["data"][f"{name}-0"]))
            gen = subprocess.Popen([load, "--bootstrap", f"/ip4/127.0.0.1/tcp/{swarm_port}",
                                    "--namespace", "bench", "--prefix", "inode",
                                    "--identity-dir", keys,
                                    "--count", str(args.heartbeat_peers),
                                    "--seconds", str(args.settle + 40)],
                                   stdout=subprocess.DEVNULL, stderr=open(work / "load.log", "w"))
            procs.append(gen)
            time.sleep(10)  # joining and first heartbeats
            hb_before = request_counts(kubectl)
            scrape1 = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            time.sleep(args.settle)
            scrape2 = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            hb_diff, _ = operators_share(diff(request_counts(kubectl), hb_before))
            h1 = dict(histogram(scrape1, "llamanet_operator_heartbeat_to_status_seconds"))
            h2 = histogram(scrape2, "llamanet_operator_heartbeat_to_status_seconds")
            window = [(le, c - h1.get(le, 0)) for le, c in h2]
            shown = window[-1][1] if window else 0
            heartbeats_sent = args.heartbeat_peers * args.settle / 2.0
            beats = {
                "p50_s": quantile(0.5, window), "p99_s": quantile(0.99, window),
                "status_writes_showing_a_new_heartbeat": shown,
                "heartbeats_sent": heartbeats_sent,
                "requests": hb_diff,
                "requests_per_heartbeat": sum(hb_diff.values()) / max(heartbeats_sent, 1),
                "all_time_p50_s": quantile(0.5, h2), "before_load": hb0,
            }
            gen.wait(timeout=120)
            rss_now, rss_peak = rss_kib(operator.pid)

        mine, others = operators_share(diff(after_reconcile, before))
        steady_mine, _ = operators_share(steady_diff)
        result = {
            "resources": args.resources,
            "created_in_s": round(created, 2),
            "all_reconciled_after_s": round(all_reconciled, 2),
            "operator_rss_mib": {"idle_before": round(rss_idle / 1024, 1), "end": round(rss_now / 1024, 1),
                                 "peak": round(rss_peak / 1024, 1)},
            "operator_api_requests_until_reconciled": dict(sorted(mine.items())),
            "operator_api_requests_per_resource": round(sum(mine.values()) / args.resources, 2),
            "other_components_api_requests": sum(others.values()),
            "operator_steady_requests_per_resource_per_minute": round(
                sum(steady_mine.values()) / args.resources * 60 / args.settle, 3),
            "heartbeats": beats and {
                "peers": args.heartbeat_peers,
                "to_status_p50_ms": round(beats["p50_s"] * 1000, 1),
                "to_status_p99_ms": round(beats["p99_s"] * 1000, 1),
                "status_writes": int(beats["status_writes_showing_a_new_heartbeat"]),
                "heartbeats_sent": int(beats["heartbeats_sent"]),
                "api_requests_per_heartbeat": round(beats["requests_per_heartbeat"], 2),
                "api_requests": dict(sorted(beats["requests"].items())),
            },
        }
        print(json.dumps(result, indent=2))
        out = ROOT / "bench" / "out"
        out.mkdir(exist_ok=True)
        (out / f"operator-scale-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
