#!/usr/bin/env bash
# Builds the Go tools the project runs, from the Go module proxy, and caches
# them per version outside the clone (a second run is a no-op):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler  (tests/cluster/k8s)
#   helm                                                           (tests/cluster/tools/helm)
#   promtool, prometheus                                           (tests/cluster/tools/promtool)
#   epp, the inference extension's endpoint picker                 (tests/cluster/tools/epp)
# and fetches the Prometheus Operator's and the inference extension's CRDs (their modules
# hold them as YAML).
source "$(dirname "$0")/common.sh"

# build OUT_DIR NAME MODULE_DIR PACKAGE LDFLAGS
build() {
  local out=$1 name=$2 mod=$3 pkg=$4 ldflags=$5
  if [ -x "$out/$name" ]; then
    info "$name cached ($out)"
    return
  fi
  mkdir -p "$out"
  local t0; t0=$(date +%s)
  info "building $name (cold: minutes; cached afterwards)..."
  (cd "$ROOT/$mod" && go build -trimpath -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  info "$name built in $(( $(date +%s) - t0 ))s"
}

step "Go tools: Kubernetes $K8S_VERSION control plane, etcd $ETCD_VERSION, helm $HELM_VERSION, Prometheus $PROMTOOL_VERSION, endpoint picker $EPP_VERSION"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  # Without these the binaries call themselves v0.0.0, which breaks the
  # apiserver's compatibility-version logic and kubectl's skew checks.
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
build "$K8S_BIN" etcd tests/cluster/k8s ./cmd/etcd "-s -w"
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  build "$K8S_BIN" "$b" tests/cluster/k8s "k8s.io/kubernetes/cmd/$b" "$k8s_ldflags"
done
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
build "$HELM_BIN" helm tests/cluster/tools/helm helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
prom_ldflags="-s -w -X github.com/prometheus/common/version.Version=${PROMTOOL_VERSION#v0.}"
build "$PROMTOOL_BIN" promtool tests/cluster/tools/promtool github.com/prometheus/prometheus/cmd/promtool \
  "$prom_ldflags"
# The same module's server: most of its packages are compiled for promtool already.
build "$PROMETHEUS_BIN" prometheus tests/cluster/tools/promtool \
  github.com/prometheus/prometheus/cmd/prometheus "$prom_ldflags"
build "$EPP_BIN" epp tests/cluster/tools/epp sigs.k8s.io/gateway-api-inference-extension/cmd/epp "-s -w"

if [ -f "$MONITORING_CRDS/monitoring.coreos.com_podmonitors.yaml" ]; then
  info "monitoring.coreos.com CRDs cached ($MONITORING_CRDS)"
else
  info "fetching the Prometheus Operator $PROMETHEUS_OPERATOR_VERSION CRDs from the Go module proxy"
  dir=$(cd "$ROOT/tests/cluster/tools/promtool" && \
    go mod download -json "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || die "go mod download of prometheus-operator $PROMETHEUS_OPERATOR_VERSION failed"
  mkdir -p "$MONITORING_CRDS.tmp"
  for kind in podmonitors servicemonitors prometheusrules; do
    cp "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$kind.yaml" "$MONITORING_CRDS.tmp/"
  done
  chmod 644 "$MONITORING_CRDS.tmp"/*
  rm -rf "$MONITORING_CRDS" && mv "$MONITORING_CRDS.tmp" "$MONITORING_CRDS"
fi

if [ -f "$INFERENCE_CRDS/inference.networking.k8s.io_inferencepools.yaml" ]; then
  info "inference.networking.k8s.io CRDs cached ($INFERENCE_CRDS)"
else
  info "fetching the inference extension $EPP_VERSION CRDs from the Go module proxy"
  dir=$(cd "$ROOT/tests/cluster/tools/epp" && \
    go mod download -json "sigs.k8s.io/gateway-api-inference-extension@$EPP_VERSION" \
    | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || die "go mod download of gateway-api-inference-extension $EPP_VERSION failed"
  mkdir -p "$INFERENCE_CRDS.tmp"
  cp "$dir/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$INFERENCE_CRDS.tmp/"
  chmod 644 "$INFERENCE_CRDS.tmp"/*
  rm -rf "$INFERENCE_CRDS" && mv "$INFERENCE_CRDS.tmp" "$INFERENCE_CRDS"
fi
