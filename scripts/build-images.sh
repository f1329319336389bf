#!/usr/bin/env bash
# Builds the project's container images from deploy/docker/ without a registry or a Docker
# engine, and checks that each one runs:
#   - a Debian bookworm base made with mmdebstrap from Debian's mirror, standing in for the
#     Dockerfile's registry base (gcr.io/distroless/cc-debian12:nonroot): the same packages;
#   - ghcr.io/llamanet/llamanet-{node,operator,router}:<version> from deploy/docker/, their
#     runtime stages fed the release binaries scripts/setup.sh builds (BINARIES=prebuilt;
#     the router gets the engine-less one);
#   - ghcr.io/ggml-org/llama.cpp:server (the sidecar example's engine) from
#     deploy/docker/llama-server.Dockerfile, fed scripts/build-llama-cpp.sh's llama-server
#     (skipped until that is built);
#   - for the test bed's real node: localhost/llamanet/pause:1 (the pod sandbox),
#     localhost/llamanet/coredns:<version> (cluster DNS) and localhost/llamanet/curl:bookworm
#     (a client inside the cluster, with busybox for a shell).
# Images go to podman's local storage under the chart's default names, and each to a
# docker-archive under $CACHE/images/archives/ that the real node's containerd imports. Each is rebuilt only
# when its inputs changed (cache keys: the base's recipe; the Dockerfile, the binary and
# the base); the base's tarball is kept in $CACHE/images. Each image is then run the way
# the operator's pod specs run it: as 65532, read-only root, no capabilities, no network.
#
#   scripts/build-images.sh          # after scripts/setup.sh
source "$(dirname "$0")/common.sh"

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
IMAGES_DIR=$CACHE/images
LIGHT_BIN=$CARGO_TARGET_DIR/light/llamanet
RELEASE=$CARGO_TARGET_DIR/release

step "image tools (Debian packages)"
ensure_packages mmdebstrap buildah podman runc uidmap
[ "$(id -u)" -eq 0 ] || die "building images needs root (mmdebstrap, buildah's storage)"
for bin in "$LIGHT_BIN" "$RELEASE/llamanet" "$RELEASE/llamanet-operator"; do
  [ -x "$bin" ] || die "$bin missing: run scripts/setup.sh first"
done
[ -f "$DEFAULT_MODEL" ] || die "$DEFAULT_MODEL missing: run scripts/fetch-model.sh first"
mkdir -p "$IMAGES_DIR"

# The label every image here carries with the hash of its inputs.
label_of() { podman image inspect --format '{{index .Labels "llamanet.inputs"}}' "$1" 2>/dev/null || true; }
size_mb() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.1f", $1 / 1e6 }'; }

step "base image (Debian bookworm, distroless-like)"
# What gcr.io/distroless/cc-debian12:nonroot holds, from Debian's own packages: glibc,
# libgcc, libstdc++, libgomp, OpenSSL's libraries, CA certificates, a `nonroot` user
# (65532), a /tmp; no shell, no package manager. The packages are only extracted (none of their scripts run), so the
# hook below writes what their scripts would have: the CA bundle, the users.
BASE_PACKAGES=base-files,netbase,libc6,libgcc-s1,libstdc++6,libgomp1,libssl3,ca-certificates
BASE_HOOK='
  cat "$1"/usr/share/ca-certificates/mozilla/*.crt > "$1"/etc/ssl/certs/ca-certificates.crt
  printf "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n" > "$1"/etc/passwd
  printf "root:x:0:\nnonroot:x:65532:\n" > "$1"/etc/group
  mkdir -p "$1"/home/nonroot "$1"/tmp
  chown 65532:65532 "$1"/home/nonroot
  chmod 1777 "$1"/tmp
  rm -rf "$1"/usr/share/doc "$1"/usr/share/man "$1"/usr/share/locale "$1"/usr/share/info'
BASE_KEY=$(printf '%s\n' bookworm "$BASE_PACKAGES" "$BASE_HOOK" | sha256sum | cut -c1-12)
BASE_IMAGE=localhost/llamanet/base:bookworm-cc-$BASE_KEY
BASE_TAR=$IMAGES_DIR/base-cc-$BASE_KEY.tar
if [ "$(label_of "$BASE_IMAGE")" = "$BASE_KEY" ]; then
  info "cached: $BASE_IMAGE"
else
  if [ ! -s "$BASE_TAR" ]; then
    info "mmdebstrap from Debian's mirror (about 10-30 s)"
    mmdebstrap --quiet --format=tar --variant=extract --include="$BASE_PACKAGES" \
      --extract-hook="$BASE_HOOK" bookworm "$BASE_TAR.tmp"
    mv "$BASE_TAR.tmp" "$BASE_TAR"
  fi
  podman import --quiet --change "LABEL llamanet.inputs=$BASE_KEY" "$BASE_TAR" "$BASE_IMAGE" >/dev/null
  info "imported $BASE_IMAGE"
fi
info "$BASE_IMAGE: $(size_mb "$BASE_IMAGE") MB"

# `run_in IMAGE [podman options] -- [args]`: runs the image with no network, as its own
# user. (Root here may not raise rlimits, so the container's are set below ours.)
run_in() {
  local image=$1; shift
  local options=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do options+=("$1"); shift; done
  shift
  timeout 120 podman run --rm --runtime runc --network none --read-only --cap-drop ALL \
    --security-opt no-new-privileges \
    --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "${options[@]}" "$image" "$@"
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT

# `image TAG DOCKERFILE SOURCE_BINARY`: builds TAG from the Dockerfile's runtime stage with
# SOURCE_BINARY (stripped, as the image ships it), unless an image of the same inputs is
# there; checks that it runs as 65532.
image() {
  local tag=$1 dockerfile=$ROOT/deploy/docker/$2 source=$3
  local name=${2%.Dockerfile}
  local dir=$context/$name
  step "$name image ($tag)"
  mkdir -p "$dir"
  strip -o "$dir/$(basename "$source")" "$source"
  local key
  key=$(cat "$dockerfile" "$dir/$(basename "$source")" | sha256sum | cut -c1-16)-$BASE_KEY
  if [ "$(label_of "$tag")" = "$key" ]; then
    info "cached: inputs unchanged ($key)"
  else
    buildah bud --quiet --pull=never --layers=false \
      --build-arg BINARIES=prebuilt --build-arg BASE="$BASE_IMAGE" \
      --label "llamanet.inputs=$key" -f "$dockerfile" -t "$tag" "$dir" >/dev/null
    # buildah keeps a working container of the stage picked by ARG (the binary alone):
    # drop it, its image and the image this one replaced.
    buildah rm --all >/dev/null
    podman image prune --force >/dev/null
    info "built"
  fi
  # No shell in the image to ask `id`: its config says.
  local user
  user=$(podman image inspect --format '{{.Config.User}}' "$tag")
  [ "$user" = 65532:65532 ] || die "$tag runs as ${user:-root}, not 65532"
  local binary_mb
  binary_mb=$(stat -c %s "$dir/$(basename "$source")" | awk '{ printf "%.1f", $1 / 1e6 }')
  info "$tag: $(size_mb "$tag") MB (the binary: $binary_mb MB)"
}

ROUTER_IMAGE=ghcr.io/llamanet/llamanet-router:$VERSION
image "$ROUTER_IMAGE" router.Dockerfile "$LIGHT_BIN"
run_in "$ROUTER_IMAGE" -- --version
if out=$(run_in "$ROUTER_IMAGE" -- serve --model x.gguf 2>&1); then
  die "$ROUTER_IMAGE ran \`serve\`: it has the engine"
fi
grep -q "built without the engine" <<<"$out" || die "unexpected: $out"

OPERATOR_IMAGE=ghcr.io/llamanet/llamanet-operator:$VERSION
image "$OPERATOR_IMAGE" operator.Dockerfile "$RELEASE/llamanet-operator"
run_in "$OPERATOR_IMAGE" -- --version

NODE_IMAGE=ghcr.io/llamanet/llamanet-node:$VERSION
image "$NODE_IMAGE" node.Dockerfile "$RELEASE/llamanet"
# The engine in the image: the default model, mounted read-only, loads and generates.
out=$(run_in "$NODE_IMAGE" \
  -v "$DEFAULT_MODEL:/models/model.gguf:ro" -- \
  generate --model /models/model.gguf --prompt "The capital of France is" --max-tokens 8 \
  --threads 2 --ctx-size 512 2>&1) || die "the node image did not generate: $out"
info "the node image generated: $(tail -1 <<<"$out")"

LLAMA_SERVER_IMAGE=ghcr.io/ggml-org/llama.cpp:server
if [ -x "$LLAMA_SERVER_DIR/llama-server" ]; then
  image "$LLAMA_SERVER_IMAGE" llama-server.Dockerfile "$LLAMA_SERVER_DIR/llama-server"
  # (Read whole before matching: `grep -q` closing the pipe early would fail it under pipefail.)
  out=$(run_in "$LLAMA_SERVER_IMAGE" -- --version 2>&1) && grep -q "^version:" <<<"$out" \
    || die "$LLAMA_SERVER_IMAGE does not run: $out"
else
  # The main job does not need it; scripts/test.sh builds llama-server first.
  info "skipped $LLAMA_SERVER_IMAGE: no llama-server yet (scripts/build-llama-cpp.sh builds it)"
fi

step "pause image (the pod sandbox of the test bed's real node)"
# registry.k8s.io/pause is out of reach: the same few lines of C, static, in an empty image.
# The binary is also each test bed machine's PID 1 (tests/cluster/src/machine.rs).
PAUSE_SRC=$ROOT/tests/cluster/pause/pause.c
PAUSE_KEY=$(sha256sum "$PAUSE_SRC" | cut -c1-16)
PAUSE_DIR=$IMAGES_DIR/pause
PAUSE_IMAGE=localhost/llamanet/pause:1
if [ "$(cat "$PAUSE_DIR/key" 2>/dev/null)" != "$PAUSE_KEY" ]; then
  mkdir -p "$PAUSE_DIR"
  gcc -Os -static -Wall -Werror -o "$PAUSE_DIR/pause.tmp" "$PAUSE_SRC"
  strip "$PAUSE_DIR/pause.tmp"
  mv "$PAUSE_DIR/pause.tmp" "$PAUSE_DIR/pause"
  echo "$PAUSE_KEY" > "$PAUSE_DIR/key"
fi
# `binary_image TAG KEY FROM BINARY PATH USER`: TAG holds BINARY at PATH on FROM, runs it as
# USER; built unless an image of the same KEY is there.
binary_image() {
  local tag=$1 key=$2 from=$3 binary=$4 path=$5 user=$6
  if [ "$(label_of "$tag")" = "$key" ]; then
    info "cached: $tag"
    return
  fi
  local dir=$context/$(basename "$binary")
  mkdir -p "$dir"
  cp "$binary" "$dir/"
  printf 'FROM %s\nCOPY %s %s\nUSER %s\nENTRYPOINT ["%s"]\n' \
    "$from" "$(basename "$binary")" "$path" "$user" "$path" > "$dir/Dockerfile"
  buildah bud --quiet --pull=never --layers=false --label "llamanet.inputs=$key" \
    -t "$tag" "$dir" >/dev/null
  podman image prune --force >/dev/null
  info "built $tag"
}
binary_image "$PAUSE_IMAGE" "$PAUSE_KEY" scratch "$PAUSE_DIR/pause" /pause 65535:65535

step "CoreDNS image (the real node's cluster DNS)"
COREDNS_IMAGE=localhost/llamanet/coredns:${COREDNS_VERSION#v}
[ -x "$COREDNS_BIN/coredns" ] || die "$COREDNS_BIN/coredns missing: run scripts/build-tools.sh first"
binary_image "$COREDNS_IMAGE" "$(sha256sum "$COREDNS_BIN/coredns" | cut -c1-16)-$BASE_KEY" \
  "$BASE_IMAGE" "$COREDNS_BIN/coredns" /usr/local/bin/coredns 65532:65532
out=$(run_in "$COREDNS_IMAGE" -- -version 2>&1) || die "$COREDNS_IMAGE does not run: $out"
info "$COREDNS_IMAGE runs: ${out%%$'\n'*}"

step "curl image (a client and a shell inside the cluster)"
# The base's packages, curl with what it links and busybox, in one more mmdebstrap: for
# requests from inside a pod (`kubectl run --image=localhost/llamanet/curl:bookworm -- curl
# ...`) and for looking into containers without a shell (`kubectl debug --image=... --
# busybox sh`).
CURL_KEY=$(printf '%s\n' "$BASE_KEY" curl busybox | sha256sum | cut -c1-12)
CURL_IMAGE=localhost/llamanet/curl:bookworm
CURL_TAR=$IMAGES_DIR/curl-$CURL_KEY.tar
if [ "$(label_of "$CURL_IMAGE")" = "$CURL_KEY" ]; then
  info "cached: $CURL_IMAGE"
else
  if [ ! -s "$CURL_TAR" ]; then
    mmdebstrap --quiet --format=tar --variant=extract --include="$BASE_PACKAGES,curl,busybox" \
      --extract-hook="$BASE_HOOK" bookworm "$CURL_TAR.tmp"
    mv "$CURL_TAR.tmp" "$CURL_TAR"
  fi
  podman import --quiet --change "LABEL llamanet.inputs=$CURL_KEY" --change "USER 65532:65532" \
    --change 'ENTRYPOINT ["curl"]' "$CURL_TAR" "$CURL_IMAGE" >/dev/null
  info "imported $CURL_IMAGE"
fi
out=$(run_in "$CURL_IMAGE" -- --version 2>&1) && grep -q "^curl " <<<"$out" \
  || die "$CURL_IMAGE does not run: $out"
out=$(run_in "$CURL_IMAGE" --entrypoint busybox -- sh -c 'busybox id -u' 2>&1) \
  && [ "$out" = 65532 ] || die "$CURL_IMAGE has no working busybox shell: $out"

step "image archives (what the real node's containerd loads)"
# One docker-archive per image, rewritten only when its image's inputs changed; archives of
# images no longer built (an older version's tags) are removed.
ARCHIVES=$IMAGES_DIR/archives
mkdir -p "$ARCHIVES"
keep=()
for tag in "$ROUTER_IMAGE" "$OPERATOR_IMAGE" "$NODE_IMAGE" "$LLAMA_SERVER_IMAGE" "$PAUSE_IMAGE" \
  "$COREDNS_IMAGE" "$CURL_IMAGE"; do
  file=$(tr '/:' '__' <<<"$tag").tar
  keep+=("$file")
  key=$(label_of "$tag")
  [ -n "$key" ] || continue   # not built here (llama-server before its build)
  if [ -s "$ARCHIVES/$file" ] && [ "$(cat "$ARCHIVES/$file.key" 2>/dev/null)" = "$key" ]; then
    info "cached: $file"
    continue
  fi
  rm -f "$ARCHIVES/$file"
  podman save --quiet --format docker-archive -o "$ARCHIVES/$file.tmp" "$tag"
  mv "$ARCHIVES/$file.tmp" "$ARCHIVES/$file"
  echo "$key" > "$ARCHIVES/$file.key"
  info "saved $file"
done
for file in "$ARCHIVES"/*.tar; do
  [ -e "$file" ] || continue
  [[ " ${keep[*]} " == *" $(basename "$file") "* ]] || rm -f "$file" "$file.key"
done
