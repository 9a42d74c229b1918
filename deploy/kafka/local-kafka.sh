#!/usr/bin/env bash
# Runs a single-node Apache Kafka (KRaft, combined broker + controller) for development, tests and
# the quickstart. The jars come from Maven Central once (pom.xml pins the version) into a cache.
#
#   deploy/kafka/local-kafka.sh start|stop|status|restart|clean
#
# Settings (environment):
#   FRESHREC_KAFKA_PORT             client port (default 9092)
#   FRESHREC_KAFKA_CONTROLLER_PORT  KRaft controller port (default: client port + 1)
#   FRESHREC_KAFKA_DIR              data + log directory (default ~/.cache/freshrec/kafka/<port>)
#   FRESHREC_KAFKA_JARS             jar cache (default ~/.cache/freshrec/kafka-jars/<pom hash>)
#   FRESHREC_KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 120)
#   FRESHREC_KAFKA_HEAP             JVM heap (default 768m)
#   JAVA                            java binary (default: java on PATH; needs 17+)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PORT="${FRESHREC_KAFKA_PORT:-9092}"
CPORT="${FRESHREC_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/freshrec"
DIR="${FRESHREC_KAFKA_DIR:-$CACHE/kafka/$PORT}"
POM_HASH="$(sha256sum "$HERE/pom.xml" | cut -c1-12)"
JARS="${FRESHREC_KAFKA_JARS:-$CACHE/kafka-jars/$POM_HASH}"
TIMEOUT="${FRESHREC_KAFKA_START_TIMEOUT:-120}"
HEAP="${FRESHREC_KAFKA_HEAP:-768m}"
JAVA="${JAVA:-java}"
PIDFILE="$DIR/kafka.pid"
LOG="$DIR/kafka.log"

say() { echo "local-kafka: $*" >&2; }

fetch_jars() {
  if [[ -f "$JARS/.complete" ]]; then return; fi
  say "fetching Kafka jars from Maven Central into $JARS (once)"
  rm -rf "$JARS.tmp" && mkdir -p "$JARS.tmp"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$JARS.tmp" >&2
  rm -rf "$JARS" && mv "$JARS.tmp" "$JARS" && touch "$JARS/.complete"
}

java_major() {
  "$JAVA" -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

running_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  if kill -0 "$pid" 2>/dev/null && grep -q "kafka.Kafka" "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"
    return 0
  fi
  return 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

answers() {
  # The broker answers once its client port accepts connections and it logged that it started.
  port_open "$PORT" && grep -q "Kafka Server started" "$LOG" 2>/dev/null
}

write_config() {
  cat > "$DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CPORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CPORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.backoff.ms=1000
EOF
}

classpath() { echo "$JARS/*:$HERE"; }

start() {
  if pid="$(running_pid)"; then
    if answers; then say "already running (pid $pid) on 127.0.0.1:$PORT"; return 0; fi
    say "pid $pid exists but does not answer; waiting for it"
  else
    local major
    major="$(java_major)"
    if [[ -z "$major" || "$major" -lt 17 ]]; then
      say "Java 17+ is required (found '${major:-none}' from $JAVA)"; exit 1
    fi
    if port_open "$PORT"; then say "port $PORT is taken by another process"; exit 1; fi
    fetch_jars
    mkdir -p "$DIR"
    write_config
    local jvm=(-Xms256m "-Xmx$HEAP" -XX:+UseG1GC -Djava.awt.headless=true
      "-Dlog4j2.configurationFile=$HERE/log4j2.properties")
    if [[ ! -f "$DIR/data/meta.properties" ]]; then
      local cluster_id
      cluster_id="$("$JAVA" -cp "$(classpath)" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
      say "formatting KRaft storage in $DIR/data (cluster $cluster_id)"
      "$JAVA" -cp "$(classpath)" "${jvm[@]}" kafka.tools.StorageTool format \
        --config "$DIR/server.properties" --cluster-id "$cluster_id" --standalone \
        --ignore-formatted > "$DIR/format.log" 2>&1 || { cat "$DIR/format.log" >&2; exit 1; }
    fi
    : > "$LOG"
    say "starting broker on 127.0.0.1:$PORT (controller $CPORT, data $DIR)"
    nohup "$JAVA" -cp "$(classpath)" "${jvm[@]}" kafka.Kafka "$DIR/server.properties" \
      >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
  fi
  local deadline=$((SECONDS + TIMEOUT))
  while ! answers; do
    if ! running_pid > /dev/null; then
      say "broker exited during start-up; log tail:"; tail -n 40 "$LOG" >&2; rm -f "$PIDFILE"; exit 1
    fi
    if ((SECONDS >= deadline)); then
      say "broker did not answer within ${TIMEOUT}s; log tail:"; tail -n 40 "$LOG" >&2
      stop; exit 1
    fi
    sleep 0.5
  done
  say "ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  say "stopping pid $pid"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then say "still alive after 30s; killing"; kill -KILL "$pid" || true; fi
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  rm -f "$PIDFILE"
  say "stopped"
}

status() {
  local pid
  if pid="$(running_pid)" && answers; then
    say "running (pid $pid) on 127.0.0.1:$PORT"; return 0
  fi
  say "not running"; return 3
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  restart) stop; start ;;
  clean) stop; rm -rf "$DIR"; say "removed $DIR" ;;
  *) echo "usage: $0 start|stop|status|restart|clean" >&2; exit 2 ;;
esac
