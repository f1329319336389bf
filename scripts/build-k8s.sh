#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kube-scheduler from
# the Go module proxy (tests/cluster/k8s pins every k8s.io staging module) and
# caches them per version. A second run is a no-op.
source "$(dirname "$0")/common.sh"

want=(etcd kube-apiserver kube-controller-manager kube-scheduler)
missing=()
for b in "${want[@]}"; do [ -x "$K8S_BIN/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  info "control plane $K8S_VERSION cached in $K8S_BIN"
  exit 0
fi

step "building ${missing[*]} ($K8S_VERSION) from the Go module proxy"
info "cold builds take 10-20 minutes on two cores; they are cached afterwards"
mkdir -p "$K8S_BIN"
cd "$ROOT/tests/cluster/k8s"
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for b in "${missing[@]}"; do
  t0=$(date +%s)
  if [ "$b" = etcd ]; then pkg=./cmd/etcd; else pkg=k8s.io/kubernetes/cmd/$b; fi
  go build -trimpath -ldflags "$ldflags" -o "$K8S_BIN/$b.tmp" "$pkg"
  mv "$K8S_BIN/$b.tmp" "$K8S_BIN/$b"
  info "$b built in $(( $(date +%s) - t0 ))s"
done
