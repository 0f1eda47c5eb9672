# hello-app, as the tutorial's gcr.io/google-samples/hello-app:1.0 image (native server).
#
# With Docker:   docker build -t hello-app:1.0 .
# Offline (no base image can be pulled), from a static binary built on this machine:
#   cargo build --release --locked -p hello-app --no-default-features --features server \
#       --target x86_64-unknown-linux-musl
#   podman build --build-arg BINARY_FROM=prebuilt --target runtime -t hello-app:1.0 .
# Run:           docker run --rm -p 127.0.0.1:8080:8080 hello-app:1.0
# Version 2.0:   docker run --rm -e HELLO_APP_VERSION=2.0 -p 127.0.0.1:8080:8080 hello-app:1.0

# Which stage supplies /out/hello-app: `builder` compiles it, `prebuilt` copies it from the
# build context.
ARG BINARY_FROM=builder

FROM docker.io/library/rust:1.95-bookworm AS builder
# The repository's rust-toolchain.toml asks for "stable"; use the image's toolchain instead of
# downloading another.
ENV RUSTUP_TOOLCHAIN=1.95.0
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p hello-app --no-default-features --features server \
        --target x86_64-unknown-linux-musl \
    && mkdir -p /out \
    && cp target/x86_64-unknown-linux-musl/release/hello-app /out/hello-app

FROM scratch AS prebuilt
# Lets a test remove this intermediate stage's unnamed image, and nothing else.
LABEL org.services-lab.stage=prebuilt
COPY target/x86_64-unknown-linux-musl/release/hello-app /out/hello-app

FROM ${BINARY_FROM} AS binary

FROM scratch AS runtime
COPY --from=binary /out/hello-app /hello-app
# The distroless "nonroot" user, as the original image runs.
USER 65532:65532
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/hello-app"]
