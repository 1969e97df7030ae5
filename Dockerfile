# fleetgate container image: build in a Rust image, run in a small Debian image as non-root.
# Matches helm/fleetgate: ports 4443 (vehicles), 8081 (admin), 9273 (metrics); config at
# /etc/fleetgate/config/config.json; data under /var/lib/fleetgate; read-only root fs works.
# The build image's Rust is Cargo.toml's rust-version (scripts/toolchain-check.sh checks both
# against what the locked dependencies need).
FROM rust:1.89-bookworm AS build
# cmake builds librdkafka (with its vendored OpenSSL, libcurl, zstd and zlib: no system libs)
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when Cargo.toml or Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > build.rs \
    && for b in decode rules; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin fleetgate \
    && rm -rf src benches build.rs target/release/fleetgate* target/release/deps/fleetgate-* \
       target/release/deps/libfleetgate-* target/release/.fingerprint/fleetgate-* \
       target/release/build/fleetgate-*

# Then the crate itself.
COPY build.rs ./
COPY proto proto
COPY certs/tesla certs/tesla
COPY src src
COPY benches benches
COPY testdata testdata
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
