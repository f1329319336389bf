# LlamaNet inference node, CPU build.
#   docker build -f deploy/docker/node.Dockerfile -t ghcr.io/llamanet/llamanet-node:0.1.0 .
# llama.cpp is compiled for a portable x86-64-v3 baseline here, not this CPU:
# an image runs on machines other than the one that built it.
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native; llama-cpp-sys-2 follows
# target-cpu, so llama.cpp gets the same portable baseline.
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN cargo build --release -p llamanet-node --bin llamanet \
    && cp target/release/llamanet /llamanet

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /llamanet /usr/local/bin/llamanet
# The uid the operator's pod specs and the local test bed run as.
USER 65532:65532
ENTRYPOINT ["llamanet"]
CMD ["serve", "--help"]
