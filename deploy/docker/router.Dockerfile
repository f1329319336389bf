# LlamaNet router and sidecar: the `llamanet` binary built without the engine, so the image
# carries no llama.cpp. `router`, `sidecar`, `monitor`, `check` and `fetch` work; `serve` is
# the node image's. The operator runs it beside external engines (`--router-image`).
#   docker build -f deploy/docker/router.Dockerfile -t ghcr.io/llamanet/llamanet-router:0.1.0 .
#
# With the binary built already (scripts/setup.sh puts it in $CARGO_TARGET_DIR/light), skip
# the Rust stage: a context folder holding `llamanet` and BINARIES=prebuilt, which is how
# scripts/build-images.sh builds and tests this image here.
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARIES=build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Plain x86-64-v2 like the operator: nothing here is vectorised maths.
ENV RUSTFLAGS="-C target-cpu=x86-64-v2"
RUN cargo build --release -p llamanet-node --no-default-features --bin llamanet \
    && mkdir /out && cp target/release/llamanet /out/llamanet && strip /out/llamanet

FROM scratch AS prebuilt
COPY llamanet /out/llamanet

FROM ${BINARIES} AS binaries

# Needs only glibc and libgcc (see `ldd`), and CA certificates for https upstreams.
FROM ${BASE}
COPY --from=binaries /out/llamanet /usr/local/bin/llamanet
USER 65532:65532
ENTRYPOINT ["llamanet"]
CMD ["router", "--help"]
