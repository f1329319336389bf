#!/usr/bin/env bash
# The main job on its embedded default: a local Kubernetes control plane
# with a local node, and the default model served by a LlamaNet node pod,
# with an OpenAI-compatible endpoint to try. Runs in the background; stop it
# with scripts/down.sh.
source "$(dirname "$0")/common.sh"

RUN_DIR=${LLAMANET_RUN_DIR:-/var/tmp/llamanet}
"$ROOT/scripts/setup.sh"

"$ROOT/scripts/down.sh" --quiet
step "starting the local cluster in $RUN_DIR"
mkdir -p "$RUN_DIR"
nohup "$CARGO_TARGET_DIR/release/llamanet-cluster" up --dir "$RUN_DIR/cluster" \
  --bin-dir "$CARGO_TARGET_DIR/release" >"$RUN_DIR/cluster.log" 2>&1 &
echo $! >"$RUN_DIR/cluster.pid"
for _ in $(seq 120); do
  [ -f "$RUN_DIR/cluster/ready" ] && break
  kill -0 "$(cat "$RUN_DIR/cluster.pid")" 2>/dev/null || { tail -20 "$RUN_DIR/cluster.log"; die "the cluster did not start"; }
  sleep 1
done
[ -f "$RUN_DIR/cluster/ready" ] || die "the cluster did not become ready in 120 s (log: $RUN_DIR/cluster.log)"
export KUBECONFIG=$RUN_DIR/cluster/control-plane/kubeconfig
kubectl get nodes -o wide

# Pods run as the image's non-root user: give them a world-readable copy
# (a hard link where possible) of the cached model.
mkdir -p "$RUN_DIR/models"
ln -f "$DEFAULT_MODEL" "$RUN_DIR/models/" 2>/dev/null || cp "$DEFAULT_MODEL" "$RUN_DIR/models/"
chmod 0755 "$RUN_DIR" "$RUN_DIR/models"

if "$CARGO_TARGET_DIR/release/llamanet" serve --help >/dev/null 2>&1; then
  step "serving the default model"
  sed -e "s|@MODEL_DIR@|$RUN_DIR/models|g" -e "s|@SHA256@|$DEFAULT_MODEL_SHA256|g" \
    "$ROOT/deploy/quickstart/node.yaml" | kubectl apply -f -
  kubectl rollout status deployment/llamanet-default --timeout=300s
  ip=$(kubectl get pods -l app.kubernetes.io/name=llamanet-default -o jsonpath='{.items[0].status.podIP}')
  base="http://$ip:8080/v1"
  curl -sf "$base/models" >/dev/null || die "the node does not answer at $base"
else
  info "this build has no 'llamanet serve' yet: the cluster is up without a node"
  base=""
fi

step "LlamaNet is up"
kubectl get nodes,pods -A -o wide
cat <<TXT

  export KUBECONFIG=$KUBECONFIG
TXT
if [ -n "$base" ]; then
  cat <<TXT
  OpenAI base URL: $base
  curl $base/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"gemma-3-270m","messages":[{"role":"user","content":"Say hello"}],"max_tokens":32}'
TXT
fi
cat <<TXT
  logs: $RUN_DIR/cluster.log, $RUN_DIR/cluster/nodes/*/pods/*/logs/
  stop: scripts/down.sh
TXT
