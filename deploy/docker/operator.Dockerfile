# LlamaNet operator: no llama.cpp, a small static-ish image.
#   docker build -f deploy/docker/operator.Dockerfile -t ghcr.io/llamanet/llamanet-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# RUSTFLAGS replaces .cargo/config.toml's target-cpu=native; llama-cpp-sys-2 follows
# target-cpu, so llama.cpp gets the same portable baseline.
ENV RUSTFLAGS="-C target-cpu=x86-64-v2"
RUN cargo build --release -p llamanet-operator --bin llamanet-operator \
    && cp target/release/llamanet-operator /llamanet-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /llamanet-operator /usr/local/bin/llamanet-operator
USER 65532:65532
ENTRYPOINT ["llamanet-operator"]
