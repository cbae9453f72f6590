#!/usr/bin/env bash
# bench/run.sh -- run llmq's benchmark comparison and print a markdown table.
#
#   bench/run.sh [BUILD_DIR]          (default ./build; builds nothing)
#
# Starts, all on 127.0.0.1, a mock provider and, for every llmq run, a
# fresh broker (durable = fsync per group commit, or --no-sync) with its
# workers on a fresh store, and runs llmq-bench:
#   echo       jobs through llmq to the built-in echo provider (no HTTP)
#   mock       jobs through llmq to the mock provider over HTTP (0 ms)
#   direct     the same requests straight to the mock (libcurl; no queue)
#   rate       1,000 jobs/s offered through llmq (echo and mock): latency
# each RUNS times, the latency runs first (see below); the table shows the
# median of each column over the runs.
# docs/benchmarks.md explains the method and what the numbers mean.
#
# Settings (environment): RUNS (3), JOBS (100000), CONC (256), SIZE (1024),
# PER_MESSAGE (64), WORKERS (1), SLOTS (per worker, 128), MOCK_THREADS (2,
# the mock's epoll pool; 0 = a thread per connection), RATE (1000),
# RATE_JOBS (10000), DURATION (60: --duration-max of each run),
# MODES ("durable nosync"), RESULTS (file to keep every run's JSON line).
#
# Every process it starts is stopped by PID when it exits; every wait is
# bounded. Exit status: 0 if every run finished all its jobs ok, else 1.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
BUILD=${1:-./build}
RUNS=${RUNS:-3}
JOBS=${JOBS:-100000}
CONC=${CONC:-256}
SIZE=${SIZE:-1024}
PER_MESSAGE=${PER_MESSAGE:-64}
WORKERS=${WORKERS:-1}
SLOTS=${SLOTS:-128}
MOCK_THREADS=${MOCK_THREADS:-2}
RATE=${RATE:-1000}
RATE_JOBS=${RATE_JOBS:-10000}
DURATION=${DURATION:-60}
MODES=${MODES:-durable nosync}
RESULTS=${RESULTS:-}
for var in RUNS JOBS CONC SIZE PER_MESSAGE WORKERS SLOTS MOCK_THREADS RATE_JOBS DURATION; do
    if [[ ! ${!var} =~ ^[0-9]+$ ]]; then
        echo "run.sh: $var must be a whole number, not '${!var}'" >&2
        exit 2
    fi
done
if [[ ! $RATE =~ ^[0-9]+(\.[0-9]+)?$ ]] || (( RUNS < 1 || RUNS > 100 || WORKERS < 1 )); then
    echo "run.sh: RATE must be a number, RUNS 1-100 and WORKERS at least 1" >&2
    exit 2
fi
for mode in $MODES; do
    if [[ $mode != durable && $mode != nosync ]]; then
        echo "run.sh: MODES holds durable and/or nosync, not '$mode'" >&2
        exit 2
    fi
done

ME=run.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STATUS=0

# --- the mock provider, shared by every run --------------------------------
"$MOCK" --port 0 --port-file "$TMP/mock.port" --quiet --threads "$MOCK_THREADS" \
    >"$TMP/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_file "$TMP/mock.port" "$MOCK_PID" mock
MOCK_PORT=$(<"$TMP/mock.port")
MOCK_URL=http://127.0.0.1:$MOCK_PORT/v1

# --- broker and workers -----------------------------------------------------
# Starts a broker (durable: sync on, nosync: off) and WORKERS workers on
# a fresh store; sets FRONTEND and STACK_PIDS.
start_stack() {
    local mode=$1 conf=$TMP/llmq-$1.conf data=$TMP/data-$1 i
    rm -rf "$data" "$TMP/ready-$mode" "$TMP"/worker*.log
    cat >"$conf" <<EOF
# written by bench/run.sh
[broker]
frontend = tcp://127.0.0.1:*
backend = tcp://127.0.0.1:*
data_dir = $data
sync = $([[ $mode == durable ]] && echo on || echo off)
log_level = warn

[worker]
slots = $SLOTS

[deployment echo]
provider = echo

[deployment mock]
provider = openai
model = gpt-4o-mini
base_url = $MOCK_URL

[group echo]
deployments = echo

[group gpt]
deployments = mock
EOF
    local flags=()
    [[ $mode == nosync ]] && flags+=(--no-sync)
    "$BROKER" -c "$conf" "${flags[@]+"${flags[@]}"}" --ready-file "$TMP/ready-$mode" \
        >"$TMP/broker.log" 2>&1 &
    local broker_pid=$!
    PIDS+=("$broker_pid")
    STACK_PIDS=("$broker_pid")
    wait_file "$TMP/ready-$mode" "$broker_pid" broker
    FRONTEND=$(sed -n 1p "$TMP/ready-$mode")
    local backend
    backend=$(sed -n 2p "$TMP/ready-$mode")
    for ((i = 0; i < WORKERS; i++)); do
        "$WORKER" -c "$conf" --broker "$backend" >"$TMP/worker$i.log" 2>&1 &
        PIDS+=("$!")
        STACK_PIDS+=("$!")
    done
    # Ready when the broker counts every worker
    local count=0
    for ((i = 0; i < 100; i++)); do
        count=$("$CLI" --broker "$FRONTEND" stats --json 2>/dev/null \
                | sed -n 's/.*"worker_count": *\([0-9]*\).*/\1/p' || true)
        [[ ${count:-0} -ge $WORKERS ]] && return 0
        sleep 0.1
    done
    echo "run.sh: only ${count:-0} of $WORKERS workers joined the broker in 10 s" >&2
    cat "$TMP"/worker*.log "$TMP/broker.log" >&2
    exit 1
}

# --- runs and the table -----------------------------------------------------
declare -A ROWS=()      # "label" -> JSON lines of its runs
ORDER=()

# run_case LABEL STACK llmq-bench arguments...: RUNS runs, their JSON kept.
# STACK is durable or nosync (a fresh broker and workers for each run, on
# a fresh store, so that no run inherits another's store or processes)
# or - (no broker: direct mode). Before each run, sync(1) writes back what
# earlier runs left dirty, so that it does not land in this run's fsyncs.
run_case() {
    local label=$1 stack=$2 i out rc
    shift 2
    [[ -n ${ROWS[$label]+x} ]] || { ORDER+=("$label"); ROWS[$label]=; }
    for ((i = 1; i <= RUNS; i++)); do
        sync
        FRONTEND=
        [[ $stack == - ]] || start_stack "$stack"
        # In the background, so that a signal is handled at once (bash
        # runs traps only between foreground commands, but during a wait)
        rc=0
        "$BENCH" "$@" ${FRONTEND:+--broker "$FRONTEND"} --size "$SIZE" \
            --duration-max "$DURATION" --json >"$TMP/report" &
        PIDS+=("$!")
        wait "$!" || rc=$?
        stop_pids "$!"
        out=$(<"$TMP/report")
        [[ $stack == - ]] || { stop_pids "${STACK_PIDS[@]}"; rm -rf "$TMP/data-$stack"; }
        if [[ $rc -ne 0 ]]; then
            STATUS=1
            echo "run.sh: $label run $i: llmq-bench exited $rc: ${out:-no report}" >&2
        fi
        [[ -n $out ]] || continue
        ROWS[$label]+="$out"$'\n'
        [[ -z $RESULTS ]] || echo "$out" >>"$RESULTS"
        echo "  ${label//|/, } #$i: $(field "$out" jobs_per_s) jobs/s, p50 $(field "$out" p50_ms) ms," \
             "p99 $(field "$out" p99_ms) ms" >&2
    done
}

# field JSON NAME: a number or word of the report
field() {
    sed -n "s/.*\"$2\":\\([^,}]*\\).*/\\1/p" <<<"$1" | tr -d '"'
}

# median of the numbers on stdin
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf (m >= 100 || m == int (m) ? "%d" : "%.2f"), m }'
}

# column LABEL NAME: median of NAME over LABEL's runs
column() {
    local line
    while IFS= read -r line; do
        [[ -n $line ]] && field "$line" "$2"
    done <<<"${ROWS[$1]}" | median
}

echo "run.sh: $WORKERS worker(s) x $SLOTS slots, mock on $MOCK_URL; $(uptime)" >&2
# Latency runs first: each closed-loop run below writes gigabytes to the
# store, and the disk (on a virtual machine, the host's cache) takes its
# time to absorb them, which shows up in later fsyncs as tens of ms.
for mode in $MODES; do
    run_case "echo at $RATE jobs/s|$mode|open, $RATE/s" "$mode" llmq --model echo \
        -n "$RATE_JOBS" -c "$CONC" --rate "$RATE"
    run_case "mock at $RATE jobs/s|$mode|open, $RATE/s" "$mode" llmq --model gpt \
        -n "$RATE_JOBS" -c "$CONC" --rate "$RATE"
done
run_case "direct at $RATE jobs/s|-|open, $RATE/s" - direct --url "$MOCK_URL/chat/completions" \
    -n "$RATE_JOBS" -c "$CONC" --rate "$RATE"
for mode in $MODES; do
    run_case "echo|$mode|closed, -c $CONC" "$mode" llmq --model echo \
        -n "$JOBS" -c "$CONC" --per-message "$PER_MESSAGE"
    run_case "echo, 1 job/message|$mode|closed, -c $CONC" "$mode" llmq --model echo \
        -n "$JOBS" -c "$CONC" --per-message 1
    run_case "mock over HTTP, 0 ms|$mode|closed, -c $CONC" "$mode" llmq --model gpt \
        -n "$JOBS" -c "$CONC" --per-message "$PER_MESSAGE"
done
# The baseline needs no broker
run_case "direct to mock (no queue)|-|closed, -c $CONC" - direct --url "$MOCK_URL/chat/completions" \
    -n "$JOBS" -c "$CONC"

echo
echo "llmq-bench medians of $RUNS runs; $JOBS jobs of $SIZE B (rate runs: $RATE_JOBS);" \
     "$WORKERS worker(s) x $SLOTS slots; $(nproc) CPUs; $(date -u +%Y-%m-%d)"
echo
echo "| scenario | broker | load | jobs/s | p50 ms | p90 ms | p99 ms | max ms | errors | unfinished |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
for label in "${ORDER[@]}"; do
    IFS='|' read -r name broker load <<<"$label"
    echo "| $name | $broker | $load | $(column "$label" jobs_per_s) | $(column "$label" p50_ms)" \
         "| $(column "$label" p90_ms) | $(column "$label" p99_ms) | $(column "$label" max_ms)" \
         "| $(column "$label" errors) | $(column "$label" unfinished) |"
done
for label in "${ORDER[@]}"; do
    if grep -q '"kept_up":false' <<<"${ROWS[$label]}"; then
        echo
        echo "Note: in '${label%%|*}' ($(cut -d'|' -f2 <<<"$label")) the bench could not keep" \
             "to the offered rate in some runs (over 1 % of sends more than 10 ms late)."
    fi
done
exit "$STATUS"
