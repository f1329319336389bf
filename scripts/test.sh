#!/usr/bin/env bash
# Runs every test: formatting and lints, unit tests, and the end-to-end tests
# (the real local control plane, the real model, the official openai client).
# Everything builds in the release profile so llama.cpp is compiled once.
source "$(dirname "$0")/common.sh"

timings=()
timed() {
  local label=$1; shift
  local t0; t0=$(date +%s)
  "$@"
  timings+=("$(printf '%-34s %5ss' "$label" $(( $(date +%s) - t0 )))")
}
results=$(mktemp)
trap 'bg_stop_all; rm -f "$results"' EXIT

# The sidecar tests run llama.cpp's own llama-server (cached after the first build): it
# builds beside the set-up's builds, which leave one of two cores idle for minutes.
step "llama.cpp's build tools"
ensure_packages cmake g++
bg_start llama-server "$ROOT/scripts/build-llama-cpp.sh"
timed "setup (packages, Go tools, model, build)" "$ROOT/scripts/setup.sh"
bg_wait llama-server
timings+=("$(printf '%-34s %5ss' "llama-server (beside the setup)" "$BG_SECONDS")")
# The router image from deploy/docker (podman storage; rebuilt only when its inputs change).
timed "images (mmdebstrap, buildah)" "$ROOT/scripts/build-images.sh"
cd "$ROOT"

step "cargo fmt --check"
timed "fmt" cargo fmt --all -- --check
step "cargo clippy (all targets, warnings are errors)"
timed "clippy" cargo clippy --release --workspace --all-targets -- -D warnings
timed "clippy (node without engine)" \
  cargo clippy --release --workspace --no-default-features --all-targets -- -D warnings

step "cargo test (unit and end-to-end)"
# Two tests at a time, as two lanes of test binaries with one test thread each: the
# end-to-end tests start control planes and model servers that would fight over more, and
# cargo's one binary at a time left a core idle through every one-test binary
# (scripts/run-tests.py). The two timing-sensitive binaries run alone at the end.
run_cargo_tests() {
  local artifacts="$CACHE/logs/cargo-test-artifacts.json" rc=0
  mkdir -p "$CACHE/logs"
  cargo test --release --workspace --no-run --message-format=json-render-diagnostics >"$artifacts"
  python3 "$ROOT/scripts/run-tests.py" --artifacts "$artifacts" \
    --durations "$CACHE/test-durations.json" --alone engine_batching --alone swarm_budget \
    2>&1 | tee -a "$results" || rc=$?
  cargo test --release --workspace --doc 2>&1 | tee -a "$results" || rc=$?
  return "$rc"
}
# The node without the engine (the router and sidecar binary) first: its build puts the
# engine-less `llamanet` in release/, and the workspace's tests and build put the full one
# back before pytest runs it.
# Its API limits over a socket (the lib's unit tests run in the full build; clippy checks
# that they build without the engine): compiling the lib's tests again costs 2 minutes.
run_light_tests() {
  cargo test --release --workspace --no-default-features --test http_limits 2>&1 \
    | tee -a "$results"
  return "${PIPESTATUS[0]}"
}
timed "cargo test (node without engine)" run_light_tests
timed "cargo test" run_cargo_tests
cargo build --release --workspace --bins

if [ -d "$ROOT/tests/e2e" ]; then
  step "end-to-end tests with the official openai client (pytest)"
  venv=$CACHE/venv-test
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$ROOT/tests/e2e/requirements.txt"
  run_pytest() {
    LLAMANET_BIN="$CARGO_TARGET_DIR/release/llamanet" LLAMANET_MODEL="$DEFAULT_MODEL" \
      LLAMANET_LIGHT_BIN="$CARGO_TARGET_DIR/light/llamanet" \
      LLAMA_SERVER="$LLAMA_SERVER_DIR/llama-server" \
      "$venv/bin/python" -m pytest -q "$ROOT/tests/e2e" 2>&1 | tee -a "$results"
    return "${PIPESTATUS[0]}"
  }
  timed "pytest (openai client)" run_pytest
fi

step "timings"
printf '  %s\n' "${timings[@]}"
# One closing line over both runners. set -e has already stopped us on any failure.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^=+ .* in [0-9.]+s/ || /^[0-9]+ passed/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { printf "\nall tests: %d passed, %d failed\n", p, f }
' "$results"
