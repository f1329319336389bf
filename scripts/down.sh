#!/usr/bin/env bash
# Stops what scripts/up.sh started: every pod process, the local node and
# the control plane (llamanet-cluster does that in order on SIGTERM).
source "$(dirname "$0")/common.sh"
RUN_DIR=${LLAMANET_RUN_DIR:-/var/tmp/llamanet}
pidfile=$RUN_DIR/cluster.pid
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL "$pid" 2>/dev/null || true
  [ "${1:-}" = --quiet ] || info "stopped"
else
  [ "${1:-}" = --quiet ] || info "nothing running"
fi
rm -f "$pidfile"
