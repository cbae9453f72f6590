#!/usr/bin/env bash
# bench/worker_cpu.sh -- CPU time one worker spends per provider call.
#
#   bench/worker_cpu.sh [BUILD_DIR]     (default ./build; builds nothing)
#
# Starts on 127.0.0.1 a mock provider, a broker and ONE worker with 64
# slots, sends JOBS jobs (default 20000) through them with llmq-bench at
# -c 256, non-streamed and then streamed in 20 chunks, RUNS times each
# (default 3), and prints the worker's CPU time per call (user + system,
# from /proc/PID/schedstat) for each run and the median. Every process it
# starts is stopped by PID on exit.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
BUILD=${1:-build}
JOBS=${JOBS:-20000}
RUNS=${RUNS:-3}
dir=$(mktemp -d /tmp/llmq-wcpu.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

"$BUILD/tests/mock/llmq-mock-provider" --port 0 --port-file "$dir/port" --threads 2 --quiet > "$dir/mock.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s "$dir/port" ] && break; sleep 0.05; done
port=$(cat "$dir/port")
cat > "$dir/llmq.conf" <<CONF
[broker]
frontend = tcp://127.0.0.1:*
backend = tcp://127.0.0.1:*
data_dir = $dir/data
[worker]
slots = 64
[deployment mock]
provider = openai
base_url = http://127.0.0.1:$port/v1
[group gpt]
deployments = mock
CONF
"$BUILD/broker/llmq-broker" -c "$dir/llmq.conf" --ready-file "$dir/ready" > "$dir/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s "$dir/ready" ] && break; sleep 0.05; done
fe=$(sed -n 1p "$dir/ready"); be=$(sed -n 2p "$dir/ready")
"$BUILD/worker/llmq-worker" -c "$dir/llmq.conf" --broker "$be" > "$dir/worker.log" 2>&1 &
wpid=$!
pids+=($wpid)
for _ in $(seq 200); do
  "$BUILD/client/llmq" --broker "$fe" stats --json 2>/dev/null | grep -q '"worker_count":1' && break
  sleep 0.05
done

cpu_ns() { awk '{print $1}' "/proc/$wpid/schedstat"; }
measure() {   # $1: label, rest: extra llmq-bench flags
  local label=$1; shift
  local vals=()
  for r in $(seq "$RUNS"); do
    local a b
    a=$(cpu_ns)
    "$BUILD/bench/llmq-bench" llmq --broker "$fe" --model gpt -n "$JOBS" -c 256 "$@" > "$dir/run.txt" 2>&1
    b=$(cpu_ns)
    vals+=("$(( (b - a) / JOBS / 1000 ))")
    echo "  $label run $r: $(( (b - a) / JOBS / 1000 )) us/call ($(grep throughput "$dir/run.txt" | awk '{print $2}') jobs/s)" >&2
  done
  printf '%s\n' "${vals[@]}" | sort -n | awk -v l="$label" '{v[NR]=$1} END {print "| " l " | " v[int((NR+1)/2)] " |"}'
}
echo "| worker CPU per call, 64 slots, mock at 0 ms | µs (median of $RUNS) |"
echo "|---|---:|"
measure "non-streamed"
measure "streamed, 20 chunks" --stream 20
