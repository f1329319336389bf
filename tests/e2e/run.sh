#!/usr/bin/env bash
# The OpenAI-client suite: makes the venv (requirements.txt), builds the release
# binary, and runs pytest against `llamanet serve` on loopback.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/llamanet/target}"
venv="$HOME/.cache/llamanet/venv-test"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"
if [ -z "${LLAMANET_BIN:-}" ]; then
  (cd "$here/../.." && cargo build --release -p llamanet-node --bin llamanet)
fi
cd "$here"
exec timeout 900 "$venv/bin/pytest" -v -s "$@"
