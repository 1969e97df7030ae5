#!/usr/bin/env bash
# Runs every test of fleetgate. The one command for developers and CI (.ci/run calls it).
#   scripts/test.sh            # all tests
#   scripts/test.sh -- NAME    # pass a filter through to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test (all targets)"
cargo test --all-targets "$@"
echo "== doc tests"
cargo test --doc "$@"
