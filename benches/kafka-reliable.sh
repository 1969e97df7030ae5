#!/usr/bin/env bash
# Load-bench scenario `kafka-reliable` (see docs/benchmarks.md): fleetgate with reliable acks on a
# real Kafka broker (started here with scripts/kafka.sh unless one answers on 127.0.0.1:9092,
# stopped again at the end), side by side with the bare ack server.
set -euo pipefail
cd "$(dirname "$0")/.."
started=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  echo "== starting a Kafka broker (scripts/kafka.sh start)"
  scripts/kafka.sh start
  started=1
fi
trap '[ "$started" = 1 ] && scripts/kafka.sh stop || true' EXIT
benches/scenario.sh kafka-reliable "$@"
