#!/usr/bin/env bash
# Builds the container image from the real Dockerfile with podman and runs it as its non-root
# user: `fleetgate --version`, `fleetgate demo`, and `check-config` of a config mounted where
# the Helm chart mounts it. What CI runs (.ci/run).
#
# No container registry can be reached here, so the two base images the Dockerfile names are
# made locally and tagged with those names:
#   debian:bookworm-slim  debootstrap --variant=minbase bookworm (Debian's packages)
#   rust:1.89-bookworm    the same rootfs plus Debian's rustc-web / cargo-web (bookworm-security,
#                         a newer Rust than 1.89: the build proves the Dockerfile and the crate,
#                         not the official image's exact toolchain; scripts/toolchain-check.sh
#                         --build covers the declared version)
# What this proves: the Dockerfile builds (cargo-chef layers, the locked dependencies, the
# strip), the binary runs in a bookworm-slim userland as uid 10001 with a read-only root, the
# demo passes and the config paths of the chart work. What it cannot: the official base
# images' exact contents, and pushing to a registry.
#   scripts/image.sh            # build and run (~18 min on 2 cores: base images ~2 min, cargo-chef
#                               # ~2 min, dependencies ~8 min, the crate ~4 min)
# Set FLEETGATE_IMAGE_KEEP=1 to keep the work folder (target/image) for the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$PWD/target/image"
mkdir -p "$work"
log() { echo "== image: $*"; }

need=()
for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} (Debian packages)"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  $sudo_ apt-get install -y -qq podman buildah runc debootstrap >/dev/null 2>&1 \
    || { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq podman buildah runc debootstrap; }
fi

# runc (crun fails on hybrid cgroups here); limits a build of this size needs
hard_nofile=$(ulimit -Hn)
[ "$hard_nofile" = unlimited ] && hard_nofile=1048576
cat >"$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$hard_nofile:$hard_nofile", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$work/containers.conf"

image_exists() { podman image exists "$1" 2>/dev/null; }

if ! image_exists docker.io/library/debian:bookworm-slim || ! image_exists docker.io/library/rust:1.89-bookworm; then
  rootfs="$work/rootfs"
  if [ ! -x "$rootfs/bin/sh" ]; then
    log "debootstrap --variant=minbase bookworm (the stand-in base images)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
      || { tail -20 "$work/debootstrap.log" >&2; echo "image: debootstrap failed (log above)" >&2; exit 1; }
  fi
  log "debian:bookworm-slim from the rootfs"
  tar -C "$rootfs" -c . | podman import --quiet - docker.io/library/debian:bookworm-slim >/dev/null
  log "rust:1.89-bookworm: the rootfs + Debian's rustc-web/cargo-web and a C toolchain"
  rust="$work/rust-rootfs"
  rm -rf "$rust" && cp -a "$rootfs" "$rust"
  echo "deb http://deb.debian.org/debian-security bookworm-security main" >"$rust/etc/apt/sources.list.d/security.list"
  # the registries are reached through this host's trust store: its local CAs go into the
  # build image's bundle (mounting the host bundle would break a stage that installs
  # ca-certificates)
  mkdir -p "$rust/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$rust/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$rust" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates rustc-web cargo-web gcc g++ make perl pkg-config git curl libc6-dev >/dev/null && update-ca-certificates >/dev/null' \
    || { echo "image: installing the Rust stand-in's packages failed" >&2; exit 1; }
  tar -C "$rust" -c . | podman import --quiet \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - docker.io/library/rust:1.89-bookworm >/dev/null
  rm -rf "$rust"
fi

log "podman build (the real Dockerfile; progress below)"
started=$(date +%s)
podman build --pull=never --network=host -t localhost/fleetgate:ci -f Dockerfile . 2>&1 \
  | grep --line-buffered -E 'STEP [0-9]+/[0-9]+|^COMMIT|Error|error(\[|:)|Compiling fleetgate|Finished|Installed' || true
image_exists localhost/fleetgate:ci || { echo "image: the build failed (run podman build by hand to see all of it)" >&2; exit 1; }
log "built in $(( $(date +%s) - started )) s: $(podman image inspect localhost/fleetgate:ci --format '{{.Size}}') bytes"

run() { podman run --rm --read-only --network=host "$@"; }
user=$(podman image inspect localhost/fleetgate:ci --format '{{.Config.User}}')
[ "$user" = "10001:10001" ] || { echo "image: runs as '$user', not 10001:10001" >&2; exit 1; }
log "fleetgate --version (as $user, read-only root)"
run localhost/fleetgate:ci --version
log "fleetgate demo"
run --tmpfs /tmp localhost/fleetgate:ci demo >"$work/demo.log" 2>&1 \
  || { tail -30 "$work/demo.log" >&2; echo "image: the demo failed in the image" >&2; exit 1; }
tail -3 "$work/demo.log"
log "check-config of a config mounted where the chart mounts it"
conf="$work/conf"
rm -rf "$conf" && mkdir -p "$conf"
target/debug/fleetgate certs dev --out "$conf/certs" --no-negative >/dev/null 2>&1 \
  || cargo run -q --bin fleetgate -- certs dev --out "$conf/certs" --no-negative >/dev/null
cat >"$conf/config.json" <<JSON
{"host": "0.0.0.0", "port": 4443, "log_level": "info",
 "tls": {"ca_file": "certs/ca.pem", "server_cert": "certs/server.pem", "server_key": "certs/server.key"},
 "records": {"V": ["logger"]},
 "fleetgate": {"admin": {"listen": "0.0.0.0:8081", "token": "image-check-token-0123"}, "data_dir": "/var/lib/fleetgate"}}
JSON
chmod -R a+rX "$conf"
run -v "$conf:/etc/fleetgate/config:ro" localhost/fleetgate:ci check-config /etc/fleetgate/config/config.json
# and a broken one is refused with the key named
echo '{"port": "4443"}' >"$conf/bad.json"
if run -v "$conf:/etc/fleetgate/config:ro" localhost/fleetgate:ci check-config /etc/fleetgate/config/bad.json 2>"$work/bad.log"; then
  echo "image: check-config accepted a string port" >&2; exit 1
fi
grep -q 'port' "$work/bad.log" || { cat "$work/bad.log" >&2; exit 1; }
log "ok: the image builds, runs as 10001:10001 on a read-only root, passes the demo and check-config"
