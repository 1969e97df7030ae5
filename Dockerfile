# fleetgate container image: build in a Rust image, run in a small Debian image as non-root.
# Matches helm/fleetgate: ports 4443 (vehicles), 8081 (admin), 9273 (metrics); config at
# /etc/fleetgate/config/config.json; data under /var/lib/fleetgate; read-only root fs works.
FROM rust:1.85-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY benches benches
COPY testdata testdata
RUN cargo build --release --locked --bin fleetgate && strip target/release/fleetgate

FROM debian:bookworm-slim
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
