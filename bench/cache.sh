#!/usr/bin/env bash
# bench/cache.sh -- response cache hits against the same jobs through the
# mock provider at 0 ms, and print a markdown table.
#
#   bench/cache.sh [BUILD_DIR]        (default ./build; builds nothing)
#
# Starts, all on 127.0.0.1, a mock provider (no delay) and, for every run,
# a fresh broker (durable = fsync per group commit, or --no-sync) with one
# worker on a fresh store, and runs llmq-bench llmq --model gpt:
#   mock         the jobs go to the mock over HTTP (not cacheable)
#   cache hits   the same jobs with --cache-ttl: one untimed warm-up job
#                fills the cache, then every timed job is a hit, answered
#                at submit without a worker or a provider call
# both closed loop (-c CONC, PER_MESSAGE jobs per message: throughput) and
# one job at a time (-c 1, one job per message: the latency of one job on
# an idle system). Each RUNS times; the table shows medians over the runs
# and the ratios of the medians. docs/benchmarks.md ("Response cache")
# has the method and the numbers.
#
# Settings (environment): RUNS (5), JOBS (50000), CONC (256), LAT_JOBS
# (2000), SIZE (1024), PER_MESSAGE (64), SLOTS (128), MODES ("durable
# nosync"), DURATION (60), RESULTS (file to keep every run's JSON line).
#
# Every process it starts is stopped by PID when it exits; every wait is
# bounded. Exit status: 0 if every run finished all its jobs ok, else 1.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
BUILD=${1:-./build}
RUNS=${RUNS:-5}
JOBS=${JOBS:-50000}
CONC=${CONC:-256}
LAT_JOBS=${LAT_JOBS:-2000}
SIZE=${SIZE:-1024}
PER_MESSAGE=${PER_MESSAGE:-64}
SLOTS=${SLOTS:-128}
MODES=${MODES:-durable nosync}
DURATION=${DURATION:-60}
RESULTS=${RESULTS:-}
for var in RUNS JOBS CONC LAT_JOBS SIZE PER_MESSAGE SLOTS DURATION; do
    if [[ ! ${!var} =~ ^[0-9]+$ ]] || (( ${!var} < 1 )); then
        echo "cache.sh: $var must be a whole number above 0, not '${!var}'" >&2
        exit 2
    fi
done
for mode in $MODES; do
    if [[ $mode != durable && $mode != nosync ]]; then
        echo "cache.sh: MODES holds durable and/or nosync, not '$mode'" >&2
        exit 2
    fi
done

ME=cache.sh
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STATUS=0

"$MOCK" --port 0 --port-file "$TMP/mock.port" --quiet --threads 2 >"$TMP/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_file "$TMP/mock.port" "$MOCK_PID" mock
MOCK_URL=http://127.0.0.1:$(<"$TMP/mock.port")/v1

# A broker (durable or nosync) and one worker on a fresh store; sets
# FRONTEND and STACK_PIDS.
start_stack() {
    local mode=$1 conf=$TMP/llmq.conf data=$TMP/data i
    rm -rf "$data" "$TMP/ready" "$TMP/worker.log"
    cat >"$conf" <<EOF
# written by bench/cache.sh
[broker]
frontend = tcp://127.0.0.1:*
backend = tcp://127.0.0.1:*
data_dir = $data
sync = $([[ $mode == durable ]] && echo on || echo off)
log_level = warn

[worker]
slots = $SLOTS

[cache]
max_size = 256MiB

[deployment mock]
provider = openai
model = gpt-4o-mini
base_url = $MOCK_URL

[group gpt]
deployments = mock
EOF
    local flags=()
    [[ $mode == nosync ]] && flags+=(--no-sync)
    "$BROKER" -c "$conf" "${flags[@]+"${flags[@]}"}" --ready-file "$TMP/ready" >"$TMP/broker.log" 2>&1 &
    local broker_pid=$!
    PIDS+=("$broker_pid")
    STACK_PIDS=("$broker_pid")
    wait_file "$TMP/ready" "$broker_pid" broker
    FRONTEND=$(sed -n 1p "$TMP/ready")
    "$WORKER" -c "$conf" --broker "$(sed -n 2p "$TMP/ready")" >"$TMP/worker.log" 2>&1 &
    PIDS+=("$!")
    STACK_PIDS+=("$!")
    local count=0
    for ((i = 0; i < 100; i++)); do
        count=$("$CLI" --broker "$FRONTEND" stats --json 2>/dev/null \
                | sed -n 's/.*"worker_count": *\([0-9]*\).*/\1/p' || true)
        [[ ${count:-0} -ge 1 ]] && return 0
        sleep 0.1
    done
    echo "cache.sh: the worker did not join the broker in 10 s" >&2
    cat "$TMP/worker.log" "$TMP/broker.log" >&2
    exit 1
}

declare -A ROWS=()      # "label" -> JSON lines of its runs
ORDER=()

# field JSON NAME: a number or word of the report
field() {
    sed -n "s/.*\"$2\":\\([^,}]*\\).*/\\1/p" <<<"$1" | tr -d '"'
}

# run_case LABEL MODE llmq-bench arguments...: one run on a fresh stack
run_case() {
    local label=$1 mode=$2 out rc=0
    shift 2
    [[ -n ${ROWS[$label]+x} ]] || { ORDER+=("$label"); ROWS[$label]=; }
    sync
    start_stack "$mode"
    "$BENCH" llmq --broker "$FRONTEND" --model gpt --size "$SIZE" --duration-max "$DURATION" \
        --json "$@" >"$TMP/report" &
    PIDS+=("$!")
    wait "$!" || rc=$?
    stop_pids "$!"
    out=$(<"$TMP/report")
    stop_pids "${STACK_PIDS[@]}"
    if [[ $rc -ne 0 ]]; then
        STATUS=1
        echo "cache.sh: $label: llmq-bench exited $rc: ${out:-no report}" >&2
    fi
    [[ -n $out ]] || return 0
    ROWS[$label]+="$out"$'\n'
    [[ -z $RESULTS ]] || echo "$out" >>"$RESULTS"
    echo "  ${label//|/, }: $(field "$out" jobs_per_s) jobs/s, p50 $(field "$out" p50_ms) ms," \
         "$(field "$out" cached) hits" >&2
}

# median of the numbers on stdin
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "-"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf (m >= 100 || m == int (m) ? "%d" : "%.3f"), m }'
}

column() {
    local line
    while IFS= read -r line; do
        [[ -n $line ]] && field "$line" "$2"
    done <<<"${ROWS[$1]}" | median
}

echo "cache.sh: mock on $MOCK_URL; $(uptime)" >&2
# The runs of each kind interleave (mock, hits, mock, hits...), so that a
# change of load on the machine touches both alike.
for ((r = 1; r <= RUNS; r++)); do
    for mode in $MODES; do
        run_case "mock, 0 ms|$mode|one at a time" "$mode" -n "$LAT_JOBS" -c 1 --per-message 1
        run_case "cache hits|$mode|one at a time" "$mode" -n "$LAT_JOBS" -c 1 --per-message 1 \
            --cache-ttl 3600000
        run_case "mock, 0 ms|$mode|closed, -c $CONC" "$mode" -n "$JOBS" -c "$CONC" --per-message "$PER_MESSAGE"
        run_case "cache hits|$mode|closed, -c $CONC" "$mode" -n "$JOBS" -c "$CONC" --per-message "$PER_MESSAGE" \
            --cache-ttl 3600000
    done
done

echo
echo "llmq-bench medians of $RUNS runs; $SIZE B jobs, $JOBS per closed run, $LAT_JOBS one at a time;" \
     "$(nproc) CPUs; $(date -u +%Y-%m-%d)"
echo
echo "| scenario | broker | load | jobs/s | p50 ms | p90 ms | p99 ms | max ms | cache hits | errors |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
for label in "${ORDER[@]}"; do
    IFS='|' read -r name broker load <<<"$label"
    echo "| $name | $broker | $load | $(column "$label" jobs_per_s) | $(column "$label" p50_ms)" \
         "| $(column "$label" p90_ms) | $(column "$label" p99_ms) | $(column "$label" max_ms)" \
         "| $(column "$label" cached) | $(column "$label" errors) |"
done
echo
echo "| broker | load | p50: mock / hit | jobs/s: hit / mock |"
echo "|---|---|---:|---:|"
for mode in $MODES; do
    for load in "one at a time" "closed, -c $CONC"; do
        m="mock, 0 ms|$mode|$load" h="cache hits|$mode|$load"
        echo "| $mode | $load | $(awk -v a="$(column "$m" p50_ms)" -v b="$(column "$h" p50_ms)" \
                                      'BEGIN { printf "%.1f x", (b > 0 ? a / b : 0) }')" \
             "| $(awk -v a="$(column "$h" jobs_per_s)" -v b="$(column "$m" jobs_per_s)" \
                  'BEGIN { printf "%.1f x", (b > 0 ? a / b : 0) }') |"
    done
done
exit "$STATUS"
