#!/usr/bin/env bash
# Runs every test of fleetgate: starts a real Kafka broker (scripts/kafka.sh), runs all test
# targets and doc tests, stops the broker. The one command for developers and CI.
#   scripts/test.sh              # everything
#   scripts/test.sh NAME         # extra arguments go to cargo test (e.g. a test filter)
# Set FLEETGATE_TEST_KAFKA=host:port to use a broker you run yourself (then none is started;
# the SASL_SSL tests then need FLEETGATE_TEST_KAFKA_SASL=host:port and FLEETGATE_TEST_KAFKA_CA,
# with the users and ACLs scripts/kafka.sh makes).
# The CloudEvents SDK tests read events with the Python SDK from target/venv (made here).
# The MQTT tests need Mosquitto (installed here from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

started_broker=0
cleanup() {
  if [ "$started_broker" = 1 ]; then scripts/kafka.sh stop || true; fi
  KAFKA_PORT=19092 scripts/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ -z "${FLEETGATE_TEST_KAFKA:-}" ]; then
  if ! scripts/kafka.sh status >/dev/null 2>&1; then
    echo "== starting the test Kafka broker"
    scripts/kafka.sh start
    started_broker=1
  else
    echo "== using the running test Kafka broker"
  fi
fi

# The MQTT tests start their own Mosquitto brokers (one per test, on free loopback ports) and
# read them with mosquitto_sub: both come from Debian's packages.
if ! { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null; then
  echo "== installing Mosquitto (broker and clients, Debian packages) for the MQTT tests"
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
  if ! { $sudo_ apt-get install -y -qq mosquitto mosquitto-clients >/dev/null 2>&1 \
       || { $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq mosquitto mosquitto-clients; }; }; then
    echo "test.sh: cannot install Mosquitto: run \`apt-get install mosquitto mosquitto-clients\` as root, then rerun" >&2
    exit 1
  fi
fi

venv=target/venv
if ! "$venv/bin/python" -c "import cloudevents.core.bindings.kafka, standardwebhooks" 2>/dev/null; then
  echo "== installing the CloudEvents Python SDK into $venv (tests/sdk/requirements.txt)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/sdk/requirements.txt
fi
export FLEETGATE_TEST_PYTHON="$PWD/$venv/bin/python"

echo "== building tests"
cargo test --all-targets --no-run "$@"
mkdir -p target
log=target/test-output.log
echo "== cargo test (all targets)"
# --no-fail-fast: every failing test binary is reported, not only the first
status=0
cargo test --all-targets --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
echo "== doc tests"
cargo test --doc "$@" 2>&1 | tee -a "$log" || status=$?
# One closing line with the totals of every test binary.
count() { awk -v word="$1" '/test result:/ { for (i = 2; i <= NF; i++) if ($i ~ "^" word) n += $(i-1) } END { print n + 0 }' "$log"; }
passed=$(count passed)
failed=$(count failed)
echo "tests: ${passed:-0} passed, ${failed:-0} failed" | tee target/test-summary.txt
exit "$status"
