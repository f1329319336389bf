#!/usr/bin/env bash
# Builds the Go tools the project runs, from the Go module proxy, and caches
# them per version outside the clone (a second run is a no-op):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler  (tests/cluster/k8s)
#   kubelet, kube-proxy, gpu-plugin-double (the test bed's real node) (tests/cluster/k8s)
#   helm, promtool, prometheus, epp (the inference extension's endpoint picker),
#   coredns (the real node's cluster DNS), crictl (its CRI client)  (tests/cluster/tools)
# and fetches the Prometheus Operator's and the inference extension's CRDs (their modules
# hold them as YAML).
source "$(dirname "$0")/common.sh"

# build OUT_DIR NAME MODULE_DIR PACKAGE LDFLAGS [TAGS]
build() {
  local out=$1 name=$2 mod=$3 pkg=$4 ldflags=$5 tags=${6:-}
  if [ -x "$out/$name" ]; then
    info "$name cached ($out)"
    return
  fi
  mkdir -p "$out"
  local t0; t0=$(date +%s)
  info "building $name (cold: minutes; cached afterwards)..."
  # No DWARF from the compiler: -ldflags -w strips it from the binaries anyway, and making
  # it is a part of every package's compile.
  (cd "$ROOT/$mod" && go build -trimpath -tags "$tags" -gcflags=all=-dwarf=false \
    -ldflags "$ldflags" -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  info "$name built in $(( $(date +%s) - t0 ))s"
}

step "Go tools: Kubernetes $K8S_VERSION control plane and node, etcd $ETCD_VERSION, helm $HELM_VERSION, Prometheus $PROMTOOL_VERSION, endpoint picker $EPP_VERSION, CoreDNS $COREDNS_VERSION, crictl $CRICTL_VERSION"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  # Without these the binaries call themselves v0.0.0, which breaks the
  # apiserver's compatibility-version logic and kubectl's skew checks.
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
build "$K8S_BIN" etcd tests/cluster/k8s ./cmd/etcd "-s -w"
# A test double of a GPU device plugin: the real node advertises nvidia.com/gpu through it.
build "$K8S_BIN" gpu-plugin-double tests/cluster/k8s ./cmd/gpu-plugin-double "-s -w"
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  build "$K8S_BIN" "$b" tests/cluster/k8s "k8s.io/kubernetes/cmd/$b" "$k8s_ldflags"
done
k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
build "$HELM_BIN" helm tests/cluster/tools helm.sh/helm/v3/cmd/helm \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
# Prometheus v3.10.0 is the Go module version v0.310.0: the binaries say the former.
prom_version=$(sed -E 's/^v0\.([0-9])([0-9][0-9])\.([0-9]+)$/\1.\2.\3/; s/\.0([0-9])\./.\1./' <<<"$PROMTOOL_VERSION")
prom_ldflags="-s -w -X github.com/prometheus/common/version.Version=$prom_version"
# Only the service discovery the tests use ($PROMETHEUS_SD_TAGS, part of the cache key): the
# others are most of the cloud SDKs (AWS, Azure, GCE, OpenStack...) a full build compiles.
build "$PROMTOOL_BIN" promtool tests/cluster/tools github.com/prometheus/prometheus/cmd/promtool \
  "$prom_ldflags" "$PROMETHEUS_SD_TAGS"
# The same module's server: most of its packages are compiled for promtool already.
build "$PROMETHEUS_BIN" prometheus tests/cluster/tools \
  github.com/prometheus/prometheus/cmd/prometheus "$prom_ldflags" "$PROMETHEUS_SD_TAGS"
build "$EPP_BIN" epp tests/cluster/tools sigs.k8s.io/gateway-api-inference-extension/cmd/epp "-s -w"
build "$COREDNS_BIN" coredns tests/cluster/tools ./coredns "-s -w"
build "$CRICTL_BIN" crictl tests/cluster/tools sigs.k8s.io/cri-tools/cmd/crictl \
  "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION"

# `crds DEST MODULE_DIR MODULE@VERSION FOLDER FILE...`: copies CRD files out of a module
# (downloaded through MODULE_DIR's go.mod) into DEST, unless DEST has them all.
crds() {
  local dest=$1 mod=$2 module=$3 folder=$4; shift 4
  local file missing=0
  for file in "$@"; do [ -f "$dest/$file" ] || missing=1; done
  if [ $missing = 0 ]; then
    info "CRDs of $module cached ($dest)"
    return
  fi
  info "fetching the CRDs of $module from the Go module proxy"
  local dir
  dir=$(cd "$ROOT/$mod" && go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir" ] || die "go mod download of $module failed"
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  for file in "$@"; do cp "$dir/$folder/$file" "$dest.tmp/"; done
  chmod 644 "$dest.tmp"/*
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
}
crds "$MONITORING_CRDS" tests/cluster/tools \
  "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" \
  example/prometheus-operator-crd monitoring.coreos.com_podmonitors.yaml \
  monitoring.coreos.com_servicemonitors.yaml monitoring.coreos.com_prometheusrules.yaml
crds "$INFERENCE_CRDS" tests/cluster/tools \
  "sigs.k8s.io/gateway-api-inference-extension@$EPP_VERSION" \
  config/crd/bases inference.networking.k8s.io_inferencepools.yaml
