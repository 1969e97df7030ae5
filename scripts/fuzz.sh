#!/usr/bin/env bash
# Runs the cargo-fuzz (libFuzzer) targets. CI runs each briefly; run long by hand:
#   scripts/fuzz.sh            # every target for 30 s
#   scripts/fuzz.sh 3600       # every target for an hour
#   scripts/fuzz.sh 600 payload envelope
# Seeds live in fuzz/corpus/TARGET (committed); new inputs found are kept there (ignored by git).
# Crashes are saved under fuzz/artifacts/TARGET: add each as a regression test, fix it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(envelope payload config geojson_sites admin_bodies)

if ! command -v cargo-fuzz >/dev/null; then
  echo "== installing cargo-fuzz (crates.io)"
  cargo install cargo-fuzz --locked
fi
# libFuzzer needs nightly flags (-Zsanitizer); use the nightly toolchain when there is one,
# otherwise let the stable compiler accept them (its sanitizer runtimes are shipped).
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
summary=()
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${seconds}s"
  log="$(mktemp)"
  if ! "${fuzz[@]}" build "$t" >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: target $t does not BUILD (a compile error, not a crash): fix fuzz/fuzz_targets/$t.rs against the library" >&2
    exit 1
  fi
  if ! "${fuzz[@]}" run "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: target $t FAILED: the crashing input is in fuzz/artifacts/$t; add it as a regression test" >&2
    exit 1
  fi
  runs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+')
  summary+=("$t: ${runs:-?} executions, coverage ${cov:-?}, 0 crashes")
  rm -f "$log"
done
echo "== fuzz summary (${seconds}s each)"
printf '  %s\n' "${summary[@]}"
