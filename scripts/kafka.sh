#!/usr/bin/env bash
# A real single-node Apache Kafka broker (KRaft, combined broker+controller) for tests.
#   scripts/kafka.sh start|stop|status|restart|kill   (kill = SIGKILL, for fault tests)
# Jars come from Maven Central via `mvn dependency:copy-dependencies` (cached in ~/.m2), Java 17+.
# Environment: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_SASL_PORT
# (KAFKA_PORT+2), KAFKA_HOME (target/kafka, or target/kafka-PORT for other ports). Data, logs
# and the listener's TLS files live under KAFKA_HOME.
#
# Listeners: PLAINTEXT on KAFKA_PORT (trusted loopback: its principal is a super user) and
# SASL_SSL on KAFKA_SASL_PORT, like a managed cluster: a CA and broker certificate made at the
# first start (KAFKA_HOME/tls/ca.pem is the CA clients trust), SCRAM-SHA-512 and -256 user
# `fleetgate` (password `fleetgate-secret`, created with Kafka's ConfigCommand), PLAIN user
# `fgplain` (password `fgplain-secret`), and the authorizer on: both users may only create,
# write and describe topics whose names start with `fgsasl` (ACLs made with AclCommand).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-$((port + 1))}"
sport="${KAFKA_SASL_PORT:-$((port + 2))}"
if [ "$port" = 9092 ]; then default_home="$root/target/kafka"; else default_home="$root/target/kafka-$port"; fi
home="${KAFKA_HOME:-$default_home}"
libs="$root/target/kafka-libs"
pidfile="$home/broker.pid"
log="$home/logs/server.log"

say() { echo "kafka.sh: $*" >&2; }

fetch_jars() {
  # the marker names the pom's hash: a changed dependency list resolves again
  local marker
  marker="$libs/.complete-$(sha1sum "$root/scripts/kafka/pom.xml" | cut -c1-12)"
  if [ -f "$marker" ]; then return; fi
  command -v mvn >/dev/null || { say "mvn not found: install Maven (apt-get install maven)"; exit 1; }
  command -v java >/dev/null || { say "java not found: install a JDK 17+"; exit 1; }
  say "resolving Kafka jars from Maven Central into $libs (first run only; cached in ~/.m2)"
  mkdir -p "$libs"
  mvn -q -B -f "$root/scripts/kafka/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$libs" -DincludeScope=runtime
  touch "$marker"
  say "$(ls "$libs"/*.jar | wc -l) jars ready"
}

# The SASL_SSL listener's TLS files: a CA and a broker certificate for 127.0.0.1 / localhost.
make_tls() {
  local dir="$home/tls"
  if [ -f "$dir/broker-keystore.pem" ]; then return; fi
  command -v openssl >/dev/null || { say "openssl not found: install it (apt-get install openssl)"; exit 1; }
  say "making the SASL_SSL listener's CA and broker certificate in $dir"
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fleetgate test Kafka CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/broker.key" -out "$dir/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/broker.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 3650 -extfile "$dir/ext.cnf" -out "$dir/broker.pem" 2>/dev/null
  # PKCS#8 key, then the chain: the PEM keystore Kafka reads
  openssl pkcs8 -topk8 -nocrypt -in "$dir/broker.key" -out "$dir/broker.pk8"
  cat "$dir/broker.pk8" "$dir/broker.pem" "$dir/ca.pem" >"$dir/broker-keystore.pem"
  chmod 600 "$dir"/*.key "$dir/broker.pk8" "$dir/broker-keystore.pem"
}

# Users and ACLs of the SASL_SSL listener, made with Kafka's own tools (idempotent).
make_users() {
  local cp="$libs/*" log="$home/logs/security.log"
  local tool=(java -cp "$cp" -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$home/logs")
  : >"$log"
  for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
    "${tool[@]}" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$port" --alter \
      --add-config "$mechanism=[password=fleetgate-secret]" \
      --entity-type users --entity-name fleetgate >>"$log" 2>&1 \
      || { say "creating the $mechanism user failed: see $log"; tail -5 "$log" >&2; exit 1; }
  done
  "${tool[@]}" org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$port" --add \
    --allow-principal User:fleetgate --allow-principal User:fgplain \
    --operation Write --operation Describe --operation Create \
    --topic fgsasl --resource-pattern-type prefixed >>"$log" 2>&1 \
    || { say "creating the ACLs failed: see $log"; tail -5 "$log" >&2; exit 1; }
  say "SASL_SSL on 127.0.0.1:$sport: users fleetgate (SCRAM-SHA-512/256) and fgplain (PLAIN) may write topics fgsasl*"
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  if running; then
    if port_open "$sport"; then say "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return; fi
    say "running without its SASL_SSL listener (an older start): restarting"; stop
  fi
  fetch_jars
  mkdir -p "$home/data" "$home/logs"
  make_tls
  cat > "$home/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$sport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sport
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_fgplain="fgplain-secret";
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$home/tls/broker-keystore.pem
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
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
  for p in "$port" "$sport"; do
    if port_open "$p"; then say "port $p is taken by another process: stop it or set KAFKA_PORT"; exit 1; fi
  done
  say "starting broker on 127.0.0.1:$port (log: $log)"
  nohup java -Xms256m -Xmx512m -cp "$cp" \
    -Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.properties" -Dkafka.logs.dir="$home/logs" \
    kafka.Kafka "$home/server.properties" >"$home/logs/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  for i in $(seq 1 120); do
    if ! running; then say "broker exited during start-up: see $log and $home/logs/stdout.log"; tail -20 "$home/logs/stdout.log" >&2 || true; exit 1; fi
    if port_open "$port" && port_open "$sport" && grep -q "Kafka Server started" "$log" 2>/dev/null; then
      say "broker ready on 127.0.0.1:$port after ${i}s (pid $(cat "$pidfile"))"
      make_users
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
  if running && port_open "$port" && port_open "$sport"; then
    say "running (pid $(cat "$pidfile")) on 127.0.0.1:$port, SASL_SSL on 127.0.0.1:$sport, log: $log"
  elif running; then
    say "running without its SASL_SSL listener on $sport (an older start): run scripts/kafka.sh restart"; return 1
  else say "not running"; return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  kill) kill9 ;;
  status) status ;;
  *) echo "usage: scripts/kafka.sh start|stop|status|restart|kill" >&2; exit 2 ;;
esac
