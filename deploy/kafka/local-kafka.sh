#!/usr/bin/env bash
# Runs a single-node Apache Kafka (KRaft, combined broker + controller) for development, tests and
# the quickstart. The jars come from Maven Central once (pom.xml pins the version) into a cache.
#
#   deploy/kafka/local-kafka.sh start|stop|status|restart|clean|ca-file
#
# Secured mode (opt-in, FRESHREC_KAFKA_SECURE=1): the same node also gets a SASL_SSL listener
# (SCRAM-SHA-512 over TLS) on FRESHREC_KAFKA_SECURE_PORT; the PLAINTEXT listener stays for the
# controller and inter-broker traffic (and for tools). On first start it makes a throwaway CA and
# a broker certificate for 127.0.0.1/localhost under <data dir>/tls (`ca-file` prints the CA's
# path, which clients pass as --ssl-cafile), and creates the SCRAM user when it formats storage.
# Credentials are fixed at format time: `clean` before starting with other ones. Needs openssl
# and python3. These are test credentials: the plain password never appears on a command line,
# but the format step gets its salted hash there, which is enough to log in as that user.
#
#   FRESHREC_KAFKA_SECURE=1 FRESHREC_KAFKA_PORT=19302 deploy/kafka/local-kafka.sh start
#
# Settings (environment):
#   FRESHREC_KAFKA_PORT             client port (default 9092)
#   FRESHREC_KAFKA_CONTROLLER_PORT  KRaft controller port (default: client port + 1)
#   FRESHREC_KAFKA_DIR              data + log directory (default ~/.cache/freshrec/kafka/<port>)
#   FRESHREC_KAFKA_JARS             jar cache (default ~/.cache/freshrec/kafka-jars/<pom hash>)
#   FRESHREC_KAFKA_START_TIMEOUT    seconds to wait for the broker to answer (default 120)
#   FRESHREC_KAFKA_HEAP             JVM heap (default 768m)
#   JAVA                            java binary (default: java on PATH; needs 17+)
#   FRESHREC_KAFKA_SECURE           1: add the SASL_SSL listener (default 0)
#   FRESHREC_KAFKA_SECURE_PORT      its port (default: client port + 2)
#   FRESHREC_KAFKA_SCRAM_USER       SCRAM-SHA-512 user created at format time (default freshrec)
#   FRESHREC_KAFKA_SCRAM_PASSWORD   its password (default freshrec-test-secret)
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
SECURE="${FRESHREC_KAFKA_SECURE:-0}"
SPORT="${FRESHREC_KAFKA_SECURE_PORT:-$((PORT + 2))}"
SCRAM_USER="${FRESHREC_KAFKA_SCRAM_USER:-freshrec}"
SCRAM_PASSWORD="${FRESHREC_KAFKA_SCRAM_PASSWORD:-freshrec-test-secret}"
TLS="$DIR/tls"
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

secure() { [[ "$SECURE" == 1 ]]; }

answers() {
  # The broker answers once its client port accepts connections and it logged that it started.
  port_open "$PORT" && grep -q "Kafka Server started" "$LOG" 2>/dev/null \
    && { ! secure || port_open "$SPORT"; }
}

quietly() {
  # Runs a set-up command, showing its output only when it fails.
  local out
  if ! out="$("$@" 2>&1)"; then say "failed: $*"; echo "$out" >&2; exit 1; fi
}

make_tls() {
  # A throwaway CA and a broker certificate for 127.0.0.1 and localhost (so that clients can
  # keep checking the hostname), packed into a PKCS12 keystore with a random password.
  if [[ -f "$TLS/broker.p12" && -f "$TLS/ca.pem" && -f "$TLS/keystore.pass" ]] \
    && openssl x509 -checkend 86400 -noout -in "$TLS/broker.pem" > /dev/null 2>&1; then
    return
  fi
  say "making a throwaway CA and broker certificate in $TLS"
  rm -rf "$TLS" && mkdir -p "$TLS" && chmod 700 "$TLS"
  (umask 077 && openssl rand -hex 16 > "$TLS/keystore.pass")
  quietly openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 30 \
    -subj "/CN=freshrec local test CA" -keyout "$TLS/ca.key" -out "$TLS/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  quietly openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=localhost" \
    -keyout "$TLS/broker.key" -out "$TLS/broker.csr"
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid,issuer" > "$TLS/broker.ext"
  quietly openssl x509 -req -sha256 -days 30 -in "$TLS/broker.csr" -CA "$TLS/ca.pem" \
    -CAkey "$TLS/ca.key" -CAcreateserial -extfile "$TLS/broker.ext" -out "$TLS/broker.pem"
  quietly openssl pkcs12 -export -name broker -in "$TLS/broker.pem" -inkey "$TLS/broker.key" \
    -certfile "$TLS/ca.pem" -out "$TLS/broker.p12" -passout "file:$TLS/keystore.pass"
}

scram_credential() {
  # The --add-scram argument for SCRAM_USER with the password already salted and hashed
  # (PBKDF2-HMAC-SHA512, as SCRAM does) with salt $1 (base64): the password comes through the
  # environment and never appears on a command line.
  SCRAM_USER="$SCRAM_USER" SCRAM_PASSWORD="$SCRAM_PASSWORD" python3 - "$1" <<'PY'
import base64, hashlib, os, sys
salt, iterations = sys.argv[1], 8192
salted = hashlib.pbkdf2_hmac(
    "sha512", os.environ["SCRAM_PASSWORD"].encode(), base64.b64decode(salt), iterations
)
print(
    f"SCRAM-SHA-512=[name={os.environ['SCRAM_USER']},iterations={iterations},"
    f'salt="{salt}",saltedpassword="{base64.b64encode(salted).decode()}"]'
)
PY
}

check_scram() {
  # Storage formatted earlier holds the credentials of that time; say so if they differ.
  local stored salt
  if [[ ! -f "$DIR/scram.credential" ]]; then
    say "$DIR/data was formatted without the SCRAM user; run '$0 clean' first"; exit 1
  fi
  stored="$(cat "$DIR/scram.credential")"
  salt="$(sed 's/.*salt="\([^"]*\)".*/\1/' <<< "$stored")"
  if [[ "$(scram_credential "$salt")" != "$stored" ]]; then
    say "$DIR/data was formatted with other SCRAM credentials; run '$0 clean' to change them"
    exit 1
  fi
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
  if secure; then
    # The SASL_SSL listener is for clients only; the controller and inter-broker traffic stay
    # on the PLAINTEXT listeners above, so the node needs no credentials of its own.
    chmod 600 "$DIR/server.properties"
    local pass
    pass="$(cat "$TLS/keystore.pass")"
    sed -i -e "s|^listeners=.*|&,SASL_SSL://127.0.0.1:$SPORT|" \
      -e "s|^advertised.listeners=.*|&,SASL_SSL://127.0.0.1:$SPORT|" \
      -e "s|^listener.security.protocol.map=.*|&,SASL_SSL:SASL_SSL|" "$DIR/server.properties"
    cat >> "$DIR/server.properties" <<EOF
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$TLS/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$pass
listener.name.sasl_ssl.ssl.key.password=$pass
EOF
  fi
}

classpath() { echo "$JARS/*:$HERE"; }

start() {
  if pid="$(running_pid)"; then
    if secure && ! grep -q "^listener.name.sasl_ssl" "$DIR/server.properties"; then
      say "already running (pid $pid) without the SASL_SSL listener; stop it first"; exit 1
    fi
    if answers; then
      say "already running (pid $pid) on 127.0.0.1:$PORT"; ready_secure; return 0
    fi
    say "pid $pid exists but does not answer; waiting for it"
  else
    local major
    major="$(java_major)"
    if [[ -z "$major" || "$major" -lt 17 ]]; then
      say "Java 17+ is required (found '${major:-none}' from $JAVA)"; exit 1
    fi
    if port_open "$PORT"; then say "port $PORT is taken by another process"; exit 1; fi
    if secure && port_open "$SPORT"; then say "port $SPORT is taken by another process"; exit 1; fi
    fetch_jars
    mkdir -p "$DIR"
    if secure; then
      for tool in openssl python3; do
        command -v "$tool" > /dev/null || { say "FRESHREC_KAFKA_SECURE=1 needs $tool"; exit 1; }
      done
      if [[ ! "$SCRAM_USER" =~ ^[A-Za-z0-9._-]+$ ]]; then
        say "FRESHREC_KAFKA_SCRAM_USER may hold letters, digits, '.', '_' and '-' only"; exit 1
      fi
      make_tls
    fi
    write_config
    local jvm=(-Xms256m "-Xmx$HEAP" -XX:+UseG1GC -Djava.awt.headless=true
      "-Dlog4j2.configurationFile=$HERE/log4j2.properties")
    if [[ ! -f "$DIR/data/meta.properties" ]]; then
      local cluster_id
      cluster_id="$("$JAVA" -cp "$(classpath)" "${jvm[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
      say "formatting KRaft storage in $DIR/data (cluster $cluster_id)"
      local scram=()
      if secure; then
        (umask 077 && scram_credential "$(openssl rand -base64 16)" > "$DIR/scram.credential")
        scram=(--add-scram "$(cat "$DIR/scram.credential")")
        say "creating SCRAM-SHA-512 user '$SCRAM_USER'"
      fi
      "$JAVA" -cp "$(classpath)" "${jvm[@]}" kafka.tools.StorageTool format \
        --config "$DIR/server.properties" --cluster-id "$cluster_id" --standalone \
        --ignore-formatted "${scram[@]}" > "$DIR/format.log" 2>&1 \
        || { cat "$DIR/format.log" >&2; exit 1; }
    elif secure; then
      check_scram
    fi
    : > "$LOG"
    say "starting broker on 127.0.0.1:$PORT (controller $CPORT, data $DIR)"
    nohup "$JAVA" -cp "$(classpath)" "${jvm[@]}" kafka.Kafka "$DIR/server.properties" \
      >> "$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
  fi
  local deadline=$((SECONDS + TIMEOUT))
  while ! answers; do
    # Only whether the process lives: running_pid's check of the command line can fail in the
    # moment between the fork and the exec of java (seen on a loaded machine, where it
    # reported a starting broker as exited and left it running with no PID file).
    if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
      say "broker exited during start-up; log tail:"; tail -n 40 "$LOG" >&2; rm -f "$PIDFILE"; exit 1
    fi
    if ((SECONDS >= deadline)); then
      say "broker did not answer within ${TIMEOUT}s; log tail:"; tail -n 40 "$LOG" >&2
      stop; exit 1
    fi
    sleep 0.5
  done
  say "ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"
  ready_secure
}

ready_secure() {
  if secure; then
    say "SASL_SSL (SCRAM-SHA-512, user '$SCRAM_USER') on 127.0.0.1:$SPORT; CA file: $TLS/ca.pem"
  fi
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
  ca-file) echo "$TLS/ca.pem"; [[ -f "$TLS/ca.pem" ]] ;;
  *) echo "usage: $0 start|stop|status|restart|clean|ca-file" >&2; exit 2 ;;
esac
