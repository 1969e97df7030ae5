#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) for tests.
#   scripts/kafka.sh start|stop|status|restart|kill   (kill = SIGKILL, for fault tests)
# Jars come from Maven Central via `mvn dependency:copy-dependencies` (cached in ~/.m2), Java 17+.
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_HOME
# (target/kafka, or target/kafka-PORT for other ports). Data and logs live under KAFKA_HOME.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
if [ "$port" = 9092 ]; then default_home="$root/target/kafka"; else default_home="$root/target/kafka-$port"; fi
home="${KAFKA_HOME:-$default_home}"
libs="$root/target/kafka-libs"
pidfile="$home/broker.pid"
log="$home/logs/server.log"

say() { echo "kafka.sh: $*" >&2; }

fetch_jars() {
  if [ -f "$libs/.complete" ]; then return; fi
  command -v mvn >/dev/null || { say "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  command -v java >/dev/null || { say "java not found: install a JDK 17+"; exit 1; }
  say "resolving Kafka jars from Maven Central into $libs (first run only; cached in ~/.m2)"
  mkdir -p "$libs"
  mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$libs/.complete"
  say "$(ls "$libs"/*.jar | wc -l) jars ready"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  if running; then say "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
  fetch_jars
  mkdir -p "$home/data" "$home/logs"
  cat > "$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$home/data
num.partitions=3
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.flush.interval.messages=1
PROPS
  local cp="$libs/*"
  if [ ! -f "$home/data/meta.properties" ]; then
    local id
    id=$(java -cp "$cp" kafka.tools.StorageTool random-uuid)
    say "formatting $home/data (cluster $id)"
    java -cp "$cp" -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.properties" \
      -Dkafka.logs.dir="$home/logs" \
      kafka.tools.StorageTool format --standalone -t "$id" -c "$home/server.properties" >"$home/logs/format.log" 2>&1 \
      || { say "storage format failed: see $home/logs/format.log"; exit 1; }
  fi
  if port_open "$port"; then say "port $port is taken by another process: stop it or set KAFKA_PORT"; exit 1; fi
  say "starting broker on 127.0.0.1:$port (log: $log)"
  nohup java -Xms256m -Xmx512m -cp "$cp" \
    -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$home/logs" \
    kafka.Kafka "$home/server.properties" >"$home/logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for i in $(seq 1 120); do
    if ! running; then say "broker exited during start-up: see $log and $home/logs/stdout.log"; tail -20 "$home/logs/stdout.log" >&2 || true; exit 1; fi
    if port_open "$port" && grep -q "Kafka Server started" "$log" 2>/dev/null; then
      say "broker ready on 127.0.0.1:$port after ${i}s (pid $(cat "$pidfile"))"
      return
    fi
    sleep 1
  done
  say "broker not ready after 120 s: see $log"; exit 1
}

stop() {
  if ! running; then say "not running"; rm -f "$pidfile"; return; fi
  local pid; pid=$(cat "$pidfile")
  say "stopping broker (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; say "stopped"; return; }; sleep 0.5; done
  say "broker did not stop in 30 s: killing"; kill -9 "$pid" 2>/dev/null || true; rm -f "$pidfile"
}

kill9() {
  if ! running; then say "not running"; rm -f "$pidfile"; return; fi
  local pid; pid=$(cat "$pidfile")
  say "killing broker (kill -9, pid $pid)"
  kill -9 "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  rm -f "$pidfile"
}

status() {
  if running && port_open "$port"; then say "running (pid $(cat "$pidfile")) on 127.0.0.1:$port, log: $log"; else say "not running"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  kill) kill9 ;;
  status) status ;;
  *) echo "usage: scripts/kafka.sh start|stop|status|restart|kill" >&2; exit 2 ;;
esac
