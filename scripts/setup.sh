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
need=()
for pkg in cmake clang libclang-dev python3-venv pkg-config git util-linux iproute2; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  info "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
else
  info "all present"
fi
for tool in go cargo kubectl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed (this machine kind ships it; see README)"
done

"$ROOT/scripts/build-tools.sh"
"$ROOT/scripts/fetch-model.sh"

step "cargo build --release (first build compiles llama.cpp: about 6-9 minutes on two cores)"
cd "$ROOT"
# llama-cpp-sys-2 never reconfigures an existing cmake build, so a cache
# configured before .cargo/config.toml asked for Release (-O3) would keep
# its old build type; drop such a build folder once.
for cache in "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
  [ -f "$cache" ] || continue
  if ! grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$cache"; then
    info "llama.cpp build in ${cache%/CMakeCache.txt} is not Release: rebuilding it"
    rm -rf "${cache%/CMakeCache.txt}"
  fi
done
cargo build --release --workspace --bins
info "binaries in $CARGO_TARGET_DIR/release"
