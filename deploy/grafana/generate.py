#!/usr/bin/env python3
"""Writes LlamaNet's Grafana dashboards (deploy/grafana/*.json and the chart's copies).

The JSON files are committed and importable as they are (Dashboards > Import, or the Grafana
sidecar through the chart's ConfigMaps); this script is how they are edited, so that every
panel follows the same conventions: a `datasource` variable, a `namespace` variable, units,
and PromQL over metrics the node and operator really export (a test scrapes both and checks
every name used here).

    python3 deploy/grafana/generate.py           # write
    python3 deploy/grafana/generate.py --check   # exit 1 if a committed file differs
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUTPUTS = [ROOT / "deploy/grafana", ROOT / "charts/llamanet/files/dashboards"]
DS = {"type": "prometheus", "uid": "${datasource}"}
NODE = 'namespace=~"$namespace"'


def target(expr, legend="", ref="A"):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}


def panel(title, kind, targets, unit="short", w=12, h=8, description="", **extra):
    refs = "ABCDEFGH"
    defaults = {"unit": unit}
    defaults.update(extra.pop("defaults", {}))
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [dict(t, refId=refs[i]) for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
        "options": {},
    }
    if kind == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"}}
    p.update(extra)
    return p


def stat(title, expr, unit="short", description=""):
    return panel(title, "stat", [target(expr)], unit=unit, w=6, h=4, description=description,
                 options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"})


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0}}


def layout(panels):
    """Places panels left to right, wrapping at 24 columns; rows start a new line."""
    x = y = line_h = 0
    for p in panels:
        g = p["gridPos"]
        if p["type"] == "row" or x + g["w"] > 24:
            y += line_h
            x = line_h = 0
        g["x"], g["y"] = x, y
        if p["type"] == "row":
            y += 1
            continue
        x += g["w"]
        line_h = max(line_h, g["h"])
    for i, p in enumerate(panels, start=1):
        p["id"] = i
    return panels


def variables(namespace_metric):
    return {"list": [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "current": {}, "hide": 0},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
         "query": {"query": f"label_values({namespace_metric}, namespace)", "refId": "ns"},
         "definition": f"label_values({namespace_metric}, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2,
         "sort": 1, "hide": 0},
    ]}


def dashboard(uid, title, description, panels, namespace_metric):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["llamanet"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": variables(namespace_metric),
        "annotations": {"list": []},
        "links": [],
        "panels": layout(panels),
    }


def swarm_overview():
    panels = [
        stat("Nodes", f"count(llamanet_model_loaded{{{NODE}}} == 1)",
             description="Nodes with their model loaded"),
        stat("Models", f"count(count by (model) (llamanet_swarm_model_peers{{{NODE}}}))",
             description="Distinct models served in the swarm"),
        stat("Generated tokens/s", f"sum(llamanet_tokens_per_second{{{NODE}}})"),
        stat("InferenceNodes not Ready", 'sum(llamanet_operator_inference_nodes{phase!="Ready"})'),
        row("Membership"),
        panel("Peers each node sees", "timeseries", [
            target(f"llamanet_swarm_peers{{{NODE}}}", "{{pod}} peer table"),
            target(f"llamanet_swarm_connected_peers{{{NODE}}}", "{{pod}} connected"),
        ]),
        panel("Nodes per model", "timeseries", [
            target(f"max by (model) (llamanet_swarm_model_peers{{{NODE}}})", "{{model}}"),
        ]),
        panel("Heartbeats", "timeseries", [
            target(f"sum(rate(llamanet_swarm_heartbeats_received_total{{{NODE}}}[$__rate_interval]))",
                   "received"),
            target(f"sum(rate(llamanet_swarm_heartbeats_published_total{{{NODE}}}[$__rate_interval]))",
                   "published"),
            target(f"sum by (reason) (rate(llamanet_swarm_heartbeats_rejected_total{{{NODE}}}[$__rate_interval]))",
                   "rejected: {{reason}}"),
        ], unit="ops"),
        panel("Heartbeat age per InferenceNode", "timeseries", [
            target('llamanet_operator_heartbeat_age_seconds{namespace=~"$namespace"}',
                   "{{namespace}}/{{name}}"),
        ], unit="s", description="Age of the stalest replica's newest heartbeat, as the operator sees it"),
        row("Routing"),
        panel("Forwards", "timeseries", [
            target(f"sum by (outcome) (rate(llamanet_route_forwards_total{{{NODE}}}[$__rate_interval]))",
                   "{{outcome}}"),
        ], unit="reqps"),
        panel("Failovers", "timeseries", [
            target(f"sum by (pod) (rate(llamanet_route_failovers_total{{{NODE}}}[$__rate_interval]))",
                   "{{pod}}"),
        ], unit="ops"),
        panel("Generated tokens/s by node", "timeseries", [
            target(f"llamanet_tokens_per_second{{{NODE}}}", "{{pod}}"),
        ], w=24),
    ]
    return dashboard("llamanet-swarm", "LlamaNet / Swarm overview",
                     "Nodes, models, heartbeats, forwards and failovers, tokens/s by node",
                     panels, "llamanet_model_loaded")


def node_inference():
    sel = f'{NODE}, pod=~"$pod"'
    panels = [
        stat("Requests/s", f"sum(rate(llamanet_requests_total{{{sel}}}[$__rate_interval]))", "reqps"),
        stat("Generated tokens/s", f"sum(llamanet_tokens_per_second{{{sel}}})"),
        stat("Busy slots", f"sum(llamanet_slots_busy{{{sel}}}) / sum(llamanet_slots_capacity{{{sel}}})",
             "percentunit"),
        stat("Queued requests", f"sum(llamanet_queue_depth{{{sel}}})"),
        row("Latency"),
        panel("Time to first token", "timeseries", [
            target(f"histogram_quantile({q}, sum by (le) (rate(llamanet_time_to_first_token_seconds_bucket{{{sel}}}[$__rate_interval])))",
                   f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)
        ], unit="s"),
        panel("Request duration", "timeseries", [
            target(f"histogram_quantile({q}, sum by (le, endpoint) (rate(llamanet_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))",
                   f"p{int(q * 100)} {{{{endpoint}}}}") for q in (0.5, 0.95)
        ], unit="s"),
        row("Throughput"),
        panel("Tokens/s", "timeseries", [
            target(f"sum by (pod) (rate(llamanet_generated_tokens_total{{{sel}}}[$__rate_interval]))",
                   "generated {{pod}}"),
            target(f"sum by (pod) (rate(llamanet_prompt_tokens_total{{{sel}}}[$__rate_interval]))",
                   "prompt {{pod}}"),
            target(f"sum by (pod) (rate(llamanet_cached_prompt_tokens_total{{{sel}}}[$__rate_interval]))",
                   "prompt from cache {{pod}}"),
        ]),
        panel("Requests by status", "timeseries", [
            target(f"sum by (endpoint, status) (rate(llamanet_requests_total{{{sel}}}[$__rate_interval]))",
                   "{{endpoint}} {{status}}"),
        ], unit="reqps"),
        row("Capacity"),
        panel("Slots", "timeseries", [
            target(f"sum by (pod) (llamanet_slots_busy{{{sel}}})", "busy {{pod}}"),
            target(f"sum by (pod) (llamanet_slots_capacity{{{sel}}})", "total {{pod}}"),
        ]),
        panel("Queue", "timeseries", [
            target(f"sum by (pod) (llamanet_queue_depth{{{sel}}})", "waiting {{pod}}"),
            target(f"sum by (pod) (llamanet_queue_capacity{{{sel}}})", "capacity {{pod}}"),
        ]),
        panel("KV cache", "timeseries", [
            target(f"sum by (pod) (llamanet_kv_cache_cells_used{{{sel}}}) / sum by (pod) (llamanet_kv_cache_cells_capacity{{{sel}}})",
                   "{{pod}}"),
        ], unit="percentunit", description="Share of the KV cache cells holding a token (cached prefixes included)"),
        panel("Model load time", "timeseries", [
            target(f"llamanet_model_load_seconds{{{sel}}}", "{{pod}}"),
        ], unit="s"),
        panel("Model file sent to peers", "timeseries", [
            target(f"sum by (pod) (rate(llamanet_weights_sent_bytes_total{{{sel}}}[$__rate_interval]))",
                   "{{pod}}"),
        ], unit="Bps", description="Replicas that fetch the model from this node instead of its URL"),
        row("Resources"),
        panel("CPU", "timeseries", [
            target(f"llamanet_process_cpu_cores{{{sel}}}", "process {{pod}}"),
        ], unit="short", description="CPU cores the node process uses"),
        panel("Memory", "timeseries", [
            target(f"llamanet_process_resident_memory_bytes{{{sel}}}", "resident {{pod}}"),
            target(f"llamanet_system_memory_used_bytes{{{sel}}}", "machine used {{pod}}"),
        ], unit="bytes"),
        panel("GPU utilisation", "timeseries", [
            target(f"llamanet_gpu_utilization_ratio{{{sel}}}", "{{pod}} GPU {{gpu}}"),
        ], unit="percentunit", description="Only nodes with an NVIDIA driver export GPU series"),
        panel("GPU memory", "timeseries", [
            target(f"llamanet_gpu_memory_used_bytes{{{sel}}}", "used {{pod}} GPU {{gpu}}"),
            target(f"llamanet_gpu_memory_total_bytes{{{sel}}}", "total {{pod}} GPU {{gpu}}"),
        ], unit="bytes"),
        panel("GPU temperature and power", "timeseries", [
            target(f"llamanet_gpu_temperature_celsius{{{sel}}}", "°C {{pod}} GPU {{gpu}}"),
            target(f"llamanet_gpu_power_watts{{{sel}}}", "W {{pod}} GPU {{gpu}}"),
        ], w=24),
    ]
    d = dashboard("llamanet-node", "LlamaNet / Node inference",
                  "Latency quantiles, tokens/s, slots, queue, KV cache, CPU, memory and GPU of inference nodes",
                  panels, "llamanet_model_loaded")
    d["templating"]["list"].append(
        {"name": "pod", "label": "Pod", "type": "query", "datasource": DS,
         "query": {"query": 'label_values(llamanet_model_loaded{namespace=~"$namespace"}, pod)',
                   "refId": "pod"},
         "definition": 'label_values(llamanet_model_loaded{namespace=~"$namespace"}, pod)',
         "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2,
         "sort": 1, "hide": 0})
    return d


def operator():
    op = 'namespace=~"$namespace"'
    panels = [
        stat("Reconciles/s", "sum(rate(llamanet_operator_reconciles_total[$__rate_interval]))", "ops"),
        stat("Reconcile errors/s", "sum(rate(llamanet_operator_reconcile_errors_total[$__rate_interval]))", "ops"),
        stat("InferenceNodes", "sum(llamanet_operator_inference_nodes)"),
        stat("Status writes/s", "sum(rate(llamanet_operator_status_patches_total[$__rate_interval]))", "ops"),
        row("Reconciles"),
        panel("Reconciles and errors", "timeseries", [
            target("sum(rate(llamanet_operator_reconciles_total[$__rate_interval]))", "reconciles"),
            target("sum by (reason) (rate(llamanet_operator_reconcile_errors_total[$__rate_interval]))",
                   "errors: {{reason}}"),
        ], unit="ops"),
        panel("Reconcile duration", "timeseries", [
            target(f"histogram_quantile({q}, sum by (le) (rate(llamanet_operator_reconcile_duration_seconds_bucket[$__rate_interval])))",
                   f"p{int(q * 100)}") for q in (0.5, 0.95, 0.99)
        ], unit="s"),
        row("Resources"),
        panel("InferenceNodes by phase", "timeseries", [
            target("sum by (phase) (llamanet_operator_inference_nodes)", "{{phase}}"),
        ], defaults={"custom": {"stacking": {"mode": "normal"}, "fillOpacity": 30}}),
        panel("Replicas per InferenceNode", "timeseries", [
            target(f"llamanet_operator_inference_node_replicas{{{op}}}",
                   "{{namespace}}/{{name}} {{state}}"),
        ]),
        panel("Heartbeat age per InferenceNode", "timeseries", [
            target(f"llamanet_operator_heartbeat_age_seconds{{{op}}}", "{{namespace}}/{{name}}"),
        ], unit="s", w=24),
    ]
    return dashboard("llamanet-operator", "LlamaNet / Operator",
                     "Reconciles, errors, durations, InferenceNodes by phase and their replicas",
                     panels, "llamanet_operator_inference_node_replicas")


def main():
    boards = {"swarm-overview.json": swarm_overview(), "node-inference.json": node_inference(),
              "operator.json": operator()}
    check = "--check" in sys.argv[1:]
    stale = []
    for out in OUTPUTS:
        if not check:
            out.mkdir(parents=True, exist_ok=True)
        for name, board in boards.items():
            path = out / name
            text = json.dumps(board, indent=2, ensure_ascii=False) + "\n"
            if check:
                if not path.is_file() or path.read_text() != text:
                    stale.append(str(path.relative_to(ROOT)))
            else:
                path.write_text(text)
        if check:
            extra = {p.name for p in out.glob("*.json")} - set(boards)
            stale += [str((out / e).relative_to(ROOT)) + " (not generated)" for e in sorted(extra)]
    if stale:
        print("out of date, run python3 deploy/grafana/generate.py: " + ", ".join(stale))
        sys.exit(1)
    verb = "checked" if check else "wrote"
    print(f"{verb} {len(boards)} dashboards in " + ", ".join(str(o.relative_to(ROOT)) for o in OUTPUTS))


if __name__ == "__main__":
    main()
