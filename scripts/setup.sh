#!/usr/bin/env bash
# Installs and builds everything the main job and the tests need, reusing
# every cache: Debian packages (cmake, clang, libclang-dev for llama.cpp and
# bindgen; python3-venv), the Go tools (control plane, helm, promtool), the
# default model, and the workspace in release mode (llama.cpp built with the
# CPU's native instruction set).
source "$(dirname "$0")/common.sh"

step "disk space"
ensure_disk_space
info "$(free_gib "$CARGO_TARGET_DIR") GiB free"

step "system packages"
ensure_packages cmake clang libclang-dev python3-venv pkg-config git util-linux iproute2
# The test bed's real node: containerd (1.6) with runc, the CNI plugins, what kube-proxy
# programs Services with.
ensure_packages containerd runc containernetworking-plugins iptables conntrack
for tool in go cargo kubectl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (this machine kind ships it; see README)"
done

# The Go tools build beside the model's download and the cargo build (seconds when cached),
# unless the caller builds them (scripts/test.sh: LLAMANET_GO_TOOLS=elsewhere).
trap bg_stop_all EXIT
[ "${LLAMANET_GO_TOOLS:-}" = elsewhere ] || bg_start go-tools "$ROOT/scripts/build-tools.sh"
"$ROOT/scripts/fetch-model.sh"

step "cargo build --release (first build compiles llama.cpp: about 6-9 minutes on two cores)"
cd "$ROOT"
# llama-cpp-sys-2 never reconfigures an existing cmake build, and cargo reruns its build
# script only for variables it already watched, so a llama.cpp built before
# .cargo/config.toml asked for Release (-O3) and batch-invariant kernels would keep its old
# options: rebuild such a llama.cpp once (a build without its cmake cache counts as one).
for out in "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out; do
  [ -d "$out/lib" ] || continue
  cache=$out/build/CMakeCache.txt
  if [ ! -f "$cache" ] || ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$cache" \
    || ! grep -q '^GGML_CPU_REPACK:[A-Z]*=OFF$' "$cache"; then
    info "llama.cpp in ${out%/out} predates .cargo/config.toml's options: rebuilding it"
    cargo clean --release -p llama-cpp-sys-2 >/dev/null
    break
  fi
done
# llama.cpp first (inside llama-cpp-sys-2, minutes of C++ on both cores): in the workspace
# build cargo starts it late (26 minutes into a cold run of 984374b) and the node waits for
# it at the end. Alone it resolves the same features, so the workspace build finds it fresh.
# Then the full build, and the router and sidecar binary without llama.cpp (what their
# image ships): `--workspace` resolves features as the full build does, so only the node
# compiles again (`-p llamanet-node` recompiled 115 shared crates). That build leaves the
# engine-less `llamanet` in release/; the last one, which compiles nothing, puts the full
# one back.
cargo build --release -p llama-cpp-sys-2
cargo build --release --workspace --bins
cargo build --release --workspace --no-default-features --bin llamanet
mkdir -p "$CARGO_TARGET_DIR/light"
cp "$CARGO_TARGET_DIR/release/llamanet" "$CARGO_TARGET_DIR/light/llamanet"
cargo build --release --workspace --bins
info "binaries in $CARGO_TARGET_DIR/release (without llama.cpp: $CARGO_TARGET_DIR/light/llamanet)"
if [ "${LLAMANET_GO_TOOLS:-}" != elsewhere ]; then
  bg_wait go-tools
  info "Go tools: ${BG_SECONDS}s beside the cargo build"
fi
