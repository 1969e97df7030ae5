#!/usr/bin/env bash
# The instruction-count regression gate: runs benches/instructions.rs under valgrind's callgrind
# (instructions executed inside the measured functions only: the same number every run, unlike
# time on a shared machine) and compares instructions per frame with the committed baseline,
# benches/instructions-baseline.tsv. A scenario more than TOLERANCE_PCT (default 3) % above
# its baseline fails, with the numbers; one more than 5 % below says to update the baseline.
#   scripts/instructions.sh            # check
#   scripts/instructions.sh --update   # measure and write the baseline (commit it with the change)
set -euo pipefail
cd "$(dirname "$0")/.."
tolerance=${TOLERANCE_PCT:-3}
baseline=benches/instructions-baseline.tsv
update=false
[ "${1:-}" = "--update" ] && update=true

command -v valgrind >/dev/null || {
  echo "instructions.sh: valgrind is not installed (Debian: apt-get install valgrind)" >&2
  exit 1
}
echo "instructions.sh: building benches/instructions.rs (bench profile)"
bin=$(cargo bench --bench instructions --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "instructions" and m.get("executable"):
        print(m["executable"])')
[ -x "$bin" ] || { echo "instructions.sh: the bench binary was not built (run: cargo bench --bench instructions --no-run)" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
results="$out/results.tsv"
for scenario in pipeline-quiet pipeline-eventful cluster-quiet cluster-eventful socket-quiet pipeline-steady; do
  echo "instructions.sh: $scenario under callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$out/$scenario.out" --collect-atstart=no \
    --toggle-collect='*measured_*' "$bin" "$scenario" >"$out/$scenario.log" 2>&1 \
    || { cat "$out/$scenario.log" >&2; echo "instructions.sh: $scenario failed under valgrind" >&2; exit 1; }
  frames=$(sed -n "s/^$scenario: \([0-9]*\) frames measured.*/\1/p" "$out/$scenario.log")
  total=$(sed -n 's/^totals: \([0-9]*\).*/\1/p' "$out/$scenario.out" | head -1)
  [ -n "$frames" ] && [ -n "$total" ] || { cat "$out/$scenario.log" >&2; exit 1; }
  echo -e "$scenario\t$((total / frames))\t$(sed -n "s/^$scenario: .*, \([0-9]*\) events$/\1/p" "$out/$scenario.log")" >>"$results"
done

if $update; then
  { echo -e "# scenario\tinstructions_per_frame\tevents (scripts/instructions.sh --update; $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"; cat "$results"; } >"$baseline"
  echo "instructions.sh: baseline written to $baseline:"
  cat "$baseline"
  exit 0
fi
[ -f "$baseline" ] || { echo "instructions.sh: no $baseline: run scripts/instructions.sh --update and commit it" >&2; exit 1; }
python3 - "$baseline" "$results" "$tolerance" <<'PY'
import sys
base = {}
for line in open(sys.argv[1]):
    if line.startswith("#") or not line.strip():
        continue
    name, per_frame, *_ = line.rstrip("\n").split("\t")
    base[name] = int(per_frame)
tolerance = float(sys.argv[3])
failed, improved = [], []
print(f"{'scenario':<20} {'baseline':>10} {'now':>10} {'change':>8}   events")
for line in open(sys.argv[2]):
    name, per_frame, events = line.rstrip("\n").split("\t")
    now = int(per_frame)
    if name not in base:
        print(f"{name:<20} {'-':>10} {now:>10,} {'new':>8}   {events}")
        failed.append(f"{name}: not in the baseline (run --update)")
        continue
    change = 100.0 * (now - base[name]) / base[name]
    print(f"{name:<20} {base[name]:>10,} {now:>10,} {change:>+7.1f}%   {events}")
    if change > tolerance:
        failed.append(f"{name}: {now:,} instructions per frame, {change:+.1f}% over the baseline {base[name]:,} (tolerance {tolerance}%)")
    elif change < -5:
        improved.append(name)
if improved:
    print(f"instructions.sh: {', '.join(improved)} need(s) fewer instructions than the baseline: run scripts/instructions.sh --update and commit the new baseline to keep the gain")
if failed:
    print("instructions.sh: FAILED — more work per frame than the baseline:\n  " + "\n  ".join(failed)
          + "\n  Find where with: valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_*' <bench binary> SCENARIO; callgrind_annotate --inclusive=yes callgrind.out.*"
          + "\n  If the extra work is intended, run scripts/instructions.sh --update and say why in the commit.", file=sys.stderr)
    sys.exit(1)
print("instructions.sh: ok (every scenario within the tolerance)")
PY
