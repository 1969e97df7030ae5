#!/usr/bin/env bash
# Cluster mode vs embedded mode, same load, one run each (docs/benchmarks.md): a fresh
# fleetgate with V and events on Kafka and reliable acks, 100,000 sites, VEHICLES mTLS
# vehicles at 1 Hz (`fleetgate bench load`), and beside it `fleetgate bench events`, which reads
# {ns}_V and {ns}_events (read_committed) and reports events/s and frame → event latency as a
# downstream consumer sees it. Embedded mode runs the rules inline; cluster mode (one
# instance) hands them to the partitioned rules processor (consumer group, changelog,
# transactions). Starts the test broker when none answers on 127.0.0.1:9092.
#   benches/cluster.sh [VEHICLES] [SECONDS]      # defaults: 10000 vehicles, 30 s
#   MODES=cluster benches/cluster.sh             # one mode only
#   COMMIT_INTERVAL_MS=50 MODES=cluster benches/cluster.sh   # the rules' commit interval
#   FLEETGATE_BIN=/tmp/fleetgate-old MODES=cluster benches/cluster.sh  # another build (A/B)
#   KAFKA_PROPERTIES='{"debug": "eos"}' MODES=cluster benches/cluster.sh  # more librdkafka properties
set -euo pipefail
cd "$(dirname "$0")/.."
vehicles="${1:-10000}"
seconds="${2:-30}"
work=target/bench/cluster
mkdir -p "$work" target/bench/results
started=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  echo "== starting a Kafka broker (scripts/kafka.sh start)"
  scripts/kafka.sh start
  started=1
fi
server_pid=""
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  [ "$started" = 1 ] && scripts/kafka.sh stop || true
}
trap cleanup EXIT

if [ -n "${FLEETGATE_BIN:-}" ]; then
  bin="$FLEETGATE_BIN"
  echo "== using $bin (FLEETGATE_BIN)"
else
  echo "== building fleetgate (release)"
  cargo build --release --bin fleetgate
  bin=target/release/fleetgate
fi
[ -f "$work/pki/ca.pem" ] || "$bin" certs dev --out "$work/pki" >/dev/null
if [ ! -f "$work/sites.geojson" ]; then
  echo "== writing 100,000 sites over the bench area"
  python3 - "$work/sites.geojson" <<'PY'
import json, sys
south, west, north, east = 37.0, -122.6, 38.0, -121.6
features = []
for i in range(100_000):
    fx = (i * 0.569840290998) % 1.0
    fy = (i * 0.7548776662 + 0.1) % 1.0
    features.append({"type": "Feature", "id": f"bench-site-{i}",
        "properties": {"kind": "charger" if i % 10 == 0 else "merchant", "radius_m": 150 + (i % 5) * 50},
        "geometry": {"type": "Point", "coordinates": [west + (east - west) * fx, south + (north - south) * fy]}})
json.dump({"type": "FeatureCollection", "features": features}, open(sys.argv[1], "w"))
PY
fi

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
for mode in ${MODES:-embedded cluster}; do
  ns="benchc_${mode}_${stamp}"
  config="$work/$mode.json"
  python3 - "$config" "$mode" "$ns" "$PWD/$work" "${COMMIT_INTERVAL_MS:-}" "${KAFKA_PROPERTIES:-}" <<'PY'
import json, sys
path, mode, ns, work, commit_ms, kafka_extra = sys.argv[1:]
c = {
  "host": "127.0.0.1", "port": 0, "log_level": "info", "namespace": ns,
  "tls": {"ca_file": f"{work}/pki/ca.pem", "server_cert": f"{work}/pki/server.pem", "server_key": f"{work}/pki/server.key"},
  "records": {"V": ["kafka"]}, "reliable_ack_sources": {"V": "kafka"},
  "kafka": {"bootstrap.servers": "127.0.0.1:9092"},
  "monitoring": {"prometheus_metrics_host": "127.0.0.1", "prometheus_metrics_port": 0},
  "fleetgate": {"limits": {"max_connections": 19900, "handshakes_per_ip_per_s": 0},
                "sites_file": f"{work}/sites.geojson", "events": {"sinks": ["kafka"]},
                "data_dir": f"{work}/data-{ns}"},
}
if mode == "cluster":
    c["fleetgate"]["cluster"] = {"name": "bench", "instance_id": "bench-1"}
    if commit_ms:
        c["fleetgate"]["cluster"]["commit_interval_ms"] = int(commit_ms)
if kafka_extra:
    c["kafka"].update(json.loads(kafka_extra))
json.dump(c, open(path, "w"), indent=1)
PY
  rm -f "$work/addrs.json"
  echo "== $mode: starting fleetgate (log: $work/$mode-server.log)"
  "$bin" serve --config "$config" --addrs-file "$work/addrs.json" >"$work/$mode-server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do [ -s "$work/addrs.json" ] && break; sleep 0.1; done
  [ -s "$work/addrs.json" ] || { echo "fleetgate did not start: see $work/$mode-server.log" >&2; exit 1; }
  addr="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vehicles"])' "$work/addrs.json")"
  # the load connects and warms up first; events are measured over its measured window
  "$bin" bench load --target "$addr" --pki "$work/pki" --vehicles "$vehicles" --rate 1 \
    --warmup 20 --duration "$seconds" --server-pid "$server_pid" \
    --json "target/bench/results/cluster-$mode-load-$stamp.json" >"$work/$mode-load.txt" 2>&1 &
  load_pid=$!
  # wait for the ramp (every vehicle connected), then the warm-up
  while kill -0 "$load_pid" 2>/dev/null && ! grep -q "bench: streaming" "$work/$mode-load.txt"; do sleep 0.5; done
  sleep 20
  "$bin" bench events --namespace "$ns" --duration "$seconds" \
    --json "target/bench/results/cluster-$mode-events-$stamp.json" | tee "$work/$mode-events.txt"
  wait "$load_pid" || true
  cat "$work/$mode-load.txt" | tail -25
  if [ "$mode" = cluster ]; then
    # where a rules transaction's time goes (fleetgate_cluster_rules_commit_seconds)
    metrics="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metrics"])' "$work/addrs.json")"
    curl -s "http://$metrics/metrics" >"$work/$mode-metrics.txt" || true
    python3 - "$work/$mode-metrics.txt" <<'PY'
import re, sys
buckets, sums, counts = {}, {}, {}
for line in open(sys.argv[1]):
    m = re.match(r'fleetgate_cluster_rules_commit_seconds_(bucket|sum|count)\{(.*)\} (\S+)', line)
    if not m:
        continue
    kind, labels, value = m.groups()
    step = re.search(r'step="([^"]+)"', labels).group(1)
    if kind == "bucket":
        le = re.search(r'le="([^"]+)"', labels).group(1)
        buckets.setdefault(step, []).append((float("inf") if le == "+Inf" else float(le), float(value)))
    elif kind == "sum":
        sums[step] = float(value)
    else:
        counts[step] = float(value)
def quantile(step, q):
    total = counts[step]
    for le, c in sorted(buckets[step]):
        if c >= q * total:
            return le
for step in ("apply", "offsets", "commit"):
    if counts.get(step):
        print(f"rules transaction step {step:<8} mean {1000 * sums[step] / counts[step]:7.1f} ms"
              f"  p50 <= {1000 * quantile(step, 0.5):g} ms  p99 <= {1000 * quantile(step, 0.99):g} ms"
              f"  ({int(counts[step])} transactions)")
PY
  fi
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=""
done
echo "== reports: target/bench/results/cluster-*-$stamp.json"
