#!/usr/bin/env bash
# Runs one load-bench scenario: builds fleetgate (release), then `fleetgate bench scenario NAME`
# starts a fresh bare ack server and a fresh fleetgate on loopback, drives the same load at
# both, prints the side-by-side table and the goal verdicts, and keeps the JSON report in
# target/bench/results/. Extra arguments go to `fleetgate bench scenario` (--vehicles, --window,
# --only bare|fleetgate, --sources, …).
#   benches/scenario.sh steady
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:?usage: benches/scenario.sh idle-max|steady|saturate|storm|kafka-reliable [options]}"
shift
echo "== building fleetgate (release)"
cargo build --release --bin fleetgate
mkdir -p target/bench/results
out="target/bench/results/$name-$(date -u +%Y%m%dT%H%M%SZ).json"
target/release/fleetgate bench scenario "$name" --json "$out" "$@"
