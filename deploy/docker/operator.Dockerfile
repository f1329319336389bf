# LlamaNet operator: no llama.cpp, a small image.
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/llamanet/llamanet-operator:0.1.0 .
#
# With the binary built already, skip the Rust stage: a context folder holding
# `llamanet-operator` and BINARIES=prebuilt (how scripts/build-images.sh builds it here).
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native.
ENV RUSTFLAGS="-C target-cpu=x86-64-v2"
RUN cargo build --release -p llamanet-operator --bin llamanet-operator \
    && mkdir /out && cp target/release/llamanet-operator /out/llamanet-operator \
    && strip /out/llamanet-operator

FROM scratch AS prebuilt
COPY llamanet-operator /out/llamanet-operator

FROM ${BINARIES} AS binaries

FROM ${BASE}
COPY --from=binaries /out/llamanet-operator /usr/local/bin/llamanet-operator
USER 65532:65532
ENTRYPOINT ["llamanet-operator"]
