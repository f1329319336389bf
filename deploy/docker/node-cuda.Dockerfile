# LlamaNet inference node with CUDA offload (the crate's `cuda` feature).
#   docker build -f deploy/docker/node-cuda.Dockerfile -t ghcr.io/llamanet/llamanet-node:0.1.0-cuda .
FROM nvidia/cuda:12.6.3-devel-ubuntu24.04 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      curl ca-certificates build-essential cmake clang libclang-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native; llama-cpp-sys-2 follows
# target-cpu, so llama.cpp gets the same portable baseline.
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN cargo build --release -p llamanet-node --bin llamanet --features cuda \
    && cp target/release/llamanet /llamanet

FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /llamanet /usr/local/bin/llamanet
USER 65532:65532
ENTRYPOINT ["llamanet"]
CMD ["serve", "--help"]
