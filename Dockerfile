# fleetgate container image: build in a Rust image, run in a small Debian image as non-root.
# Matches helm/fleetgate: ports 4443 (vehicles), 8081 (admin), 9273 (metrics); config at
# /etc/fleetgate/config/config.json; data under /var/lib/fleetgate; read-only root fs works.
# The build image's Rust is Cargo.toml's rust-version (scripts/toolchain-check.sh checks both
# against what the locked dependencies need). CI builds this file and runs the image
# (scripts/image.sh).
FROM rust:1.89-bookworm AS chef
# the official image's cargo home (set again: a stand-in base image may lack it)
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
# cmake builds librdkafka (with its vendored OpenSSL, libcurl, zstd and zlib: no system libs)
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
# cargo-chef: the dependencies in a layer of their own, rebuilt only when they change
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The recipe: Cargo.toml, Cargo.lock and the targets' layout, without the code.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --bin fleetgate --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin fleetgate && strip target/release/fleetgate

FROM debian:bookworm-slim
# ca-certificates: the system CA bundle for TLS to managed Kafka (ssl.ca.location=probe finds it)
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 fleetgate \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fleetgate \
    && mkdir -p /var/lib/fleetgate && chown 10001:10001 /var/lib/fleetgate
COPY --from=build /src/target/release/fleetgate /usr/local/bin/fleetgate
USER 10001:10001
EXPOSE 4443 8081 9273
VOLUME ["/var/lib/fleetgate"]
ENTRYPOINT ["/usr/local/bin/fleetgate"]
CMD ["serve", "--config", "/etc/fleetgate/config/config.json"]
