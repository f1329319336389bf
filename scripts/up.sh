#!/usr/bin/env bash
# The main job on its embedded default: a local Kubernetes control plane
# with a real node (containerd, the kubelet, kube-proxy, CoreDNS), the operator
# installed with helm from its image, and an InferenceNode of two replicas
# serving the default model in containers of the node image, with an
# OpenAI-compatible endpoint to try. Runs in the background; stop it with
# scripts/down.sh.
source "$(dirname "$0")/common.sh"

RUN_DIR=${LLAMANET_RUN_DIR:-/var/tmp/llamanet}
"$ROOT/scripts/setup.sh"
# The images from deploy/docker/ the node runs (cached by their inputs).
"$ROOT/scripts/build-images.sh"

"$ROOT/scripts/down.sh" --quiet
step "starting the local cluster in $RUN_DIR (a real node in a machine of its own)"
mkdir -p "$RUN_DIR"
nohup "$CARGO_TARGET_DIR/release/llamanet-cluster" up --dir "$RUN_DIR/cluster" \
  >"$RUN_DIR/cluster.log" 2>&1 &
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

step "installing the operator: helm install llamanet charts/llamanet"
"$HELM_BIN/helm" upgrade --install llamanet "$ROOT/charts/llamanet" \
  --namespace llamanet-system --create-namespace --wait --timeout 180s
kubectl get pods -n llamanet-system -o wide

step "applying deploy/examples/cpu-node.yaml with 2 replicas (default model from $RUN_DIR/models)"
sed -e "s|/var/lib/llamanet/models|$RUN_DIR/models|" -e "s|replicas: 1|replicas: 2|" \
  "$ROOT/deploy/examples/cpu-node.yaml" | kubectl apply -f -
info "waiting for the InferenceNode to be Ready (model verified and loaded, heartbeats in)"
kubectl wait --for=condition=Ready --timeout=300s inferencenode/gemma-cpu \
  || { kubectl describe inferencenode gemma-cpu; die "gemma-cpu did not become Ready"; }
kubectl get inferencenodes

kubectl get pods -A -o wide
step "the node's containers (crictl ps)"
crictl=("$CRICTL_BIN/crictl" --config "$RUN_DIR/cluster/nodes/local-node-0/crictl.yaml")
"${crictl[@]}" ps
pods=($(kubectl get pods -l app.kubernetes.io/instance=gemma-cpu -o jsonpath='{.items[*].metadata.name}'))
ips=($(kubectl get pods -l app.kubernetes.io/instance=gemma-cpu -o jsonpath='{.items[*].status.podIP}'))
base="http://${ips[0]}:8080/v1"
step "kubectl logs ${pods[0]}: the model load"
logs=$(kubectl logs "${pods[0]}" -c llamanet) || die "kubectl logs ${pods[0]} failed"
grep -E "model loaded" <<<"$logs" | cut -c1-240 || die "kubectl logs ${pods[0]} shows no model load"

step "one chat completion from inside the cluster, through the Service's ClusterIP (kube-proxy) by its DNS name (CoreDNS)"
kubectl delete pod curl --ignore-not-found --wait >/dev/null
kubectl run curl --rm -i --restart=Never --quiet --image=localhost/llamanet/curl:bookworm \
  --image-pull-policy=Never -- -sf --max-time 60 \
  http://gemma-cpu.default.svc.cluster.local:8080/v1/chat/completions -H 'content-type: application/json' \
  -d '{"model":"gemma-3-270m","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":24}' \
  | python3 -c 'import json,sys; r=json.load(sys.stdin); print("    " + r["choices"][0]["message"]["content"].strip()); print("    usage:", r["usage"])' \
  || die "no answer through the Service gemma-cpu"

step "LlamaNet is up"
cat <<TXT

  export KUBECONFIG=$KUBECONFIG
  kubectl get inferencenodes          # Ready, replicas, tok/s, last heartbeat
  OpenAI base URL: $base   (every node serves it: ${ips[*]})
  curl $base/chat/completions -H 'content-type: application/json' \\
    -d '{"model":"gemma-3-270m","messages":[{"role":"user","content":"Say hello"}],"max_tokens":32}'
  python3 -c "import openai; c = openai.OpenAI(base_url='$base', api_key='none'); print(c.chat.completions.create(model='gemma-3-270m', messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)"
  $CARGO_TARGET_DIR/release/llamanet monitor --url http://${ips[0]}:8080
  kubectl logs ${pods[0]} -c llamanet; kubectl exec ${pods[0]} -c llamanet -- llamanet --version
  ${crictl[*]} ps
  logs: $RUN_DIR/cluster.log, $RUN_DIR/cluster/nodes/*/logs/ (containerd, kubelet)
  stop: scripts/down.sh
TXT
