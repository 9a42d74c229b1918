#!/usr/bin/env bash
# `make run`: a local Kafka, the ml-100k catalog and events replayed into it, the worker
# publishing recommendations, its metrics served, and a live view of the lists streaming out.
#
#   FRESHREC_DURATION    seconds to run, then stop everything (default: until Ctrl-C)
#   FRESHREC_REPLAY_RATE events/s of the replay (default 1500; 0 = as fast as possible)
#   FRESHREC_METRICS_PORT, FRESHREC_TOPIC_PREFIX, FRESHREC_KAFKA_PORT as everywhere else
set -euo pipefail
cd "$(dirname "$0")/.."

FRESHREC=.venv/bin/freshrec
DURATION="${FRESHREC_DURATION:-}"
RATE="${FRESHREC_REPLAY_RATE:-1500}"
export FRESHREC_KAFKA_PORT="${FRESHREC_KAFKA_PORT:-9092}"
export FRESHREC_BOOTSTRAP_SERVERS="${FRESHREC_BOOTSTRAP_SERVERS:-127.0.0.1:$FRESHREC_KAFKA_PORT}"
export FRESHREC_METRICS_PORT="${FRESHREC_METRICS_PORT:-9108}"
RUN_DIR=".run"
mkdir -p "$RUN_DIR"
pids=()
started_kafka=0

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping the worker and the replay"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ "$started_kafka" == 1 ]]; then deploy/kafka/local-kafka.sh stop; fi
  echo "run: done (worker log: $RUN_DIR/worker.log)"
}
trap cleanup INT TERM EXIT

if ! deploy/kafka/local-kafka.sh status 2>/dev/null; then
  deploy/kafka/local-kafka.sh start
  started_kafka=1
fi
"$FRESHREC" data ml-100k > /dev/null
"$FRESHREC" topics create
echo "run: publishing the ml-100k catalog"
"$FRESHREC" replay --dataset ml-100k --items-only --no-progress

echo "run: starting the worker (log: $RUN_DIR/worker.log)"
"$FRESHREC" worker >> "$RUN_DIR/worker.log" 2>&1 &
pids+=($!)
url="http://127.0.0.1:$FRESHREC_METRICS_PORT"
for _ in $(seq 1 360); do
  curl -fs "$url/readyz" > /dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || { echo "run: the worker exited:"; tail -20 "$RUN_DIR/worker.log"; exit 1; }
  sleep 0.5
done
curl -fs "$url/readyz" > /dev/null || { echo "run: worker not ready"; tail -20 "$RUN_DIR/worker.log"; exit 1; }
echo "run: worker ready; metrics at $url/metrics"

echo "run: replaying ml-100k events at ${RATE}/s (log: $RUN_DIR/replay.log)"
"$FRESHREC" replay --dataset ml-100k --events-only --rate "$RATE" --no-progress \
  >> "$RUN_DIR/replay.log" 2>&1 &
pids+=($!)

"$FRESHREC" watch --metrics-url "$url/metrics" --duration "${DURATION:-0}" || true
