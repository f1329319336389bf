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

# Two builds go to the background at the lowest priority: the Go tools (control plane, helm,
# Prometheus...) and llama.cpp's own llama-server (for the sidecar tests). Only the tests
# need them, so the Rust chain (set-up build, clippy, test build: the longest path of a cold
# run) keeps both cores and they take what it leaves idle (its serial steps, links,
# downloads) instead of a third of the machine each.
step "llama.cpp's build tools"
ensure_packages cmake g++
bg_start --low llama-server "$ROOT/scripts/build-llama-cpp.sh"
bg_start --low go-tools "$ROOT/scripts/build-tools.sh"
LLAMANET_GO_TOOLS=elsewhere timed "setup (packages, model, build)" "$ROOT/scripts/setup.sh"
cd "$ROOT"

step "cargo fmt --check"
timed "fmt" cargo fmt --all -- --check
step "cargo clippy (all targets, warnings are errors)"
timed "clippy" cargo clippy --release --workspace --all-targets -- -D warnings
timed "clippy (node without engine)" \
  cargo clippy --release --workspace --no-default-features --all-targets -- -D warnings

# The node without the engine (the router and sidecar binary): its API limits over a socket
# (the lib's unit tests run in the full build; clippy checks that they build without the
# engine: compiling the lib's tests again costs 2 minutes).
run_light_tests() {
  cargo test --release --workspace --no-default-features --test http_limits 2>&1 \
    | tee -a "$results"
  return "${PIPESTATUS[0]}"
}
timed "cargo test (node without engine)" run_light_tests

step "cargo test --no-run (the test build, while the Go tools and llama-server finish)"
artifacts="$CACHE/logs/cargo-test-artifacts.json"
mkdir -p "$CACHE/logs"
timed "test build" \
  cargo test --release --workspace --no-run --message-format=json-render-diagnostics >"$artifacts"
# The full `llamanet` back in release/ (the engine-less tests above built theirs there).
cargo build --release --workspace --bins

bg_wait go-tools
timings+=("$(printf '%-34s %5ss' "Go tools (in the background)" "$BG_SECONDS")")
bg_wait llama-server
timings+=("$(printf '%-34s %5ss' "llama-server (in the background)" "$BG_SECONDS")")
# The project's images from deploy/docker (rebuilt only when their inputs change).
timed "images (mmdebstrap, buildah)" "$ROOT/scripts/build-images.sh"
cd "$ROOT"

step "cargo test (unit and end-to-end)"
# Two tests at a time (scripts/run-tests.py): each module of a crate's integration test
# binary and each unit test binary is a job with one test thread, so no one-test binary
# leaves a core idle while it waits. A third lane, or the pytest suite as a job beside
# them, gained nothing: the suite is mostly CPU (the chaos test took twice as long beside
# the pytest suite). The two timing-sensitive modules run alone at the end.
run_cargo_tests() {
  local rc=0
  python3 "$ROOT/scripts/run-tests.py" --artifacts "$artifacts" \
    --durations "$CACHE/test-durations.json" --alone engine_batching --alone swarm_budget \
    2>&1 | tee -a "$results" || rc=$?
  cargo test --release --workspace --doc 2>&1 | tee -a "$results" || rc=$?
  return "$rc"
}
timed "cargo test" run_cargo_tests

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

step "timings"
printf '  %s\n' "${timings[@]}"
# One closing line over both runners. set -e has already stopped us on any failure.
awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^=+ .* in [0-9.]+s/ || /^[0-9]+ passed/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { printf "\nall tests: %d passed, %d failed\n", p, f }
' "$results"
