#!/usr/bin/env bash
# deploy/demo.sh -- run a whole llmq on this machine and show it working.
#
#   ./deploy/demo.sh [BUILD_DIR] [llmq-demo options...]
#
# BUILD_DIR defaults to ./build. Starts, all on 127.0.0.1:
#   * llmq-mock-provider: an OpenAI-compatible stand-in (20 ms per call),
#     so the demo needs no API key and no network;
#   * llmq-broker, with its store in ./demo-data/store;
#   * two llmq-worker processes;
# then runs llmq-demo against the broker, stops everything it started (by
# PID) and exits with llmq-demo's status. ./demo-data is wiped at the start
# and keeps the config and the logs (*.log) afterwards.
# Extra arguments go to llmq-demo, e.g. ./deploy/demo.sh build -n 2000
set -euo pipefail

BUILD=${1:-./build}
shift $(( $# > 0 ? 1 : 0 ))
DATA="$PWD/demo-data"

say() { printf 'demo.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ -d "$BUILD" ] || die "no build directory '$BUILD'. Build first: cmake -S . -B build && cmake --build build -j2"
BUILD=$(cd "$BUILD" && pwd)
MOCK="$BUILD/tests/mock/llmq-mock-provider"
BROKER="$BUILD/broker/llmq-broker"
WORKER="$BUILD/worker/llmq-worker"
CLI="$BUILD/client/llmq"
DEMO="$BUILD/client/llmq-demo"
for bin in "$MOCK" "$BROKER" "$WORKER" "$CLI" "$DEMO"; do
  [ -x "$bin" ] || die "missing $bin. Build first: cmake --build $BUILD -j2"
done

# --- processes we start, stopped by PID on any exit ------------------------
PIDS=()          # in start order; stopped in reverse
LOGS=()

# shellcheck disable=SC2317  # (called from the EXIT trap)
stop_all() {
  local i pid n
  for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    # Give it up to 5 s to finish cleanly (workers send BYE, the broker
    # commits), then insist.
    for (( n = 0; n < 50; n++ )); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}

# shellcheck disable=SC2317
on_exit() {
  local rc=$?
  trap - EXIT
  stop_all
  if [ "$rc" -ne 0 ] && [ ${#LOGS[@]} -gt 0 ]; then
    say "failed (status $rc). Logs:"
    for log in "${LOGS[@]}"; do
      say "  $log"
    done
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME LOG CMD...: run CMD in the background, output to LOG
start() {
  local name=$1 log=$2
  shift 2
  LOGS+=("$log")
  "$@" >"$log" 2>&1 &
  PIDS+=("$!")
  say "started $name (pid $!), log $log"
}

# alive PID NAME: fail with a pointer to the log if the process has exited
alive() {
  kill -0 "$1" 2>/dev/null || die "$2 exited early; see its log below"
}

# --- ports ------------------------------------------------------------------
# True if something accepts connections on 127.0.0.1:PORT.
port_busy() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The usual 5555/5556 if both are free, else the first free pair above 15555.
FRONT=""
for p in 5555 $(seq 15555 2 15753); do
  if ! port_busy "$p" && ! port_busy $(( p + 1 )); then
    FRONT=$p
    break
  fi
done
[ -n "$FRONT" ] || die "no free pair of ports found for the broker"
BACK=$(( FRONT + 1 ))
EP="tcp://127.0.0.1:$FRONT"

# --- data directory and mock provider -----------------------------------------
rm -rf -- "$DATA"
mkdir -p -- "$DATA"

PORT_FILE="$DATA/mock.port"
start "mock provider" "$DATA/mock.log" \
  "$MOCK" --port 0 --port-file "$PORT_FILE" --latency-ms 20 --quiet
MOCK_PID=${PIDS[-1]}
# The mock writes its port file (atomically) once it listens: poll for it,
# for at most 10 s.
for (( n = 0; n < 100; n++ )); do
  [ -s "$PORT_FILE" ] && break
  alive "$MOCK_PID" "llmq-mock-provider"
  sleep 0.1
done
[ -s "$PORT_FILE" ] || die "llmq-mock-provider did not write $PORT_FILE within 10 s"
MOCK_PORT=$(tr -dc '0-9' <"$PORT_FILE")
[ -n "$MOCK_PORT" ] || die "bad port file $PORT_FILE"

# --- configuration ------------------------------------------------------------
CONF="$DATA/llmq.conf"
cat >"$CONF" <<EOF
# Written by deploy/demo.sh; see deploy/llmq.conf and docs/config.md.
[broker]
frontend = tcp://127.0.0.1:$FRONT
backend = tcp://127.0.0.1:$BACK
data_dir = $DATA/store
sync = on
log_level = info

[worker]
# Few slots (2 workers x 8 calls at once) so that a queue builds up and
# the demo's queue wait per priority shows urgent jobs going first.
slots = 8

# The mock provider speaks the OpenAI chat-completions API.
[deployment mock]
provider = openai
model = gpt-4o-mini
base_url = http://127.0.0.1:$MOCK_PORT/v1
timeout = 30s

# Clients submit to model group "gpt"; its jobs run on deployment "mock".
[group gpt]
deployments = mock
EOF

# --- broker and workers ---------------------------------------------------------
start "broker" "$DATA/broker.log" "$BROKER" -c "$CONF"
BROKER_PID=${PIDS[-1]}
start "worker 1" "$DATA/worker-1.log" "$WORKER" -c "$CONF"
start "worker 2" "$DATA/worker-2.log" "$WORKER" -c "$CONF"

# Ready when the broker answers and counts both workers: at most ~20 s.
workers=0
for (( n = 0; n < 40; n++ )); do
  alive "$BROKER_PID" "llmq-broker"
  for pid in "${PIDS[@]:2}"; do
    alive "$pid" "llmq-worker"
  done
  stats=$("$CLI" --broker "$EP" --timeout 500ms stats --json 2>/dev/null || true)
  workers=$(printf '%s' "$stats" | grep -o '"worker_count": *[0-9]*' | grep -o '[0-9]*$' || true)
  [ "${workers:-0}" -ge 2 ] && break
  sleep 0.25
done
[ "${workers:-0}" -ge 2 ] || die "the broker at $EP did not report 2 workers in time (saw ${workers:-none})"
say "broker on $EP has 2 workers; mock provider on 127.0.0.1:$MOCK_PORT"
echo >&2

# --- the demo --------------------------------------------------------------------
rc=0
"$DEMO" --broker "$EP" "$@" || rc=$?
exit "$rc"
