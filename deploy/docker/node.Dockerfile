# LlamaNet inference node, CPU build.
#   docker build -f deploy/docker/node.Dockerfile -t ghcr.io/llamanet/llamanet-node:0.1.0 .
# llama.cpp is compiled for a portable x86-64-v3 baseline here, not this CPU:
# an image runs on machines other than the one that built it.
#
# With the binary built already, skip the Rust stage: a context folder holding `llamanet`
# and BINARIES=prebuilt, which is how scripts/build-images.sh builds and tests this image
# here (the runtime stage is the same either way).
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native; llama-cpp-sys-2 follows
# target-cpu, so llama.cpp gets the same portable baseline.
ENV RUSTFLAGS="-C target-cpu=x86-64-v3"
RUN cargo build --release -p llamanet-node --bin llamanet \
    && mkdir /out && cp target/release/llamanet /out/llamanet && strip /out/llamanet

FROM scratch AS prebuilt
COPY llamanet /out/llamanet

FROM ${BINARIES} AS binaries

# llama.cpp is linked in statically; the binary needs glibc, libstdc++, libgcc and libgomp
# (see `ldd`), all in distroless/cc, and CA certificates for model downloads.
FROM ${BASE}
COPY --from=binaries /out/llamanet /usr/local/bin/llamanet
# The uid the operator's pod specs and the local test bed run as.
USER 65532:65532
ENTRYPOINT ["llamanet"]
CMD ["serve", "--help"]
