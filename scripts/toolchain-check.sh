#!/usr/bin/env bash
# The toolchain the project claims is the one it needs: the newest `rust_version` among the
# locked dependencies built for Linux (cargo metadata) must not exceed Cargo.toml's
# `rust-version`, which must not exceed the Dockerfile's `rust:X.Y` build image.
#   scripts/toolchain-check.sh            # compare the three versions
#   scripts/toolchain-check.sh --build    # and build the binary with that toolchain (rustup)
set -euo pipefail
cd "$(dirname "$0")/.."

needed=$(cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu |
  python3 -c '
import json, sys
m = json.load(sys.stdin)
built = {n["id"] for n in m["resolve"]["nodes"]}
best = max(
    (tuple(int(x) for x in p["rust_version"].split(".")), p["name"], p["version"])
    for p in m["packages"] if p.get("rust_version") and p["id"] in built
)
print("%s %s@%s" % (".".join(map(str, best[0][:2])), best[1], best[2]))
')
needed_version=${needed%% *}
needed_by=${needed#* }
declared=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
docker=$(sed -n 's/^FROM rust:\([0-9][0-9.]*\)[-a-z]* .*/\1/p' Dockerfile | head -1)
echo "toolchain-check: dependencies need Rust $needed_version ($needed_by); Cargo.toml says $declared; the Dockerfile builds with $docker"

older() { # older A B: A < B as versions
  [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]
}
fail=0
if [ -z "$declared" ]; then echo "toolchain-check: Cargo.toml has no rust-version" >&2; fail=1
elif older "$declared" "$needed_version"; then
  echo "toolchain-check: Cargo.toml's rust-version $declared is older than $needed_version, which $needed_by needs: raise it" >&2; fail=1
fi
if [ -z "$docker" ]; then echo "toolchain-check: no 'FROM rust:X.Y' line in the Dockerfile" >&2; fail=1
elif older "$docker" "$needed_version" || { [ -n "$declared" ] && older "$docker" "$declared"; }; then
  echo "toolchain-check: the Dockerfile's rust:$docker is older than what the build needs ($needed_version, rust-version $declared): raise it" >&2; fail=1
fi
[ "$fail" = 0 ] || exit 1

if [ "${1:-}" = "--build" ]; then
  echo "== building fleetgate with Rust $docker (the Dockerfile's toolchain)"
  rustup toolchain install "$docker" --profile minimal >/dev/null
  cargo "+$docker" check --locked --lib --bins --target-dir target/toolchain-check
fi
echo "toolchain-check: ok"
