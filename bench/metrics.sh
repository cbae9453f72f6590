#!/usr/bin/env bash
# bench/metrics.sh -- what a Prometheus scrape of the broker costs, with
# the issue's sizes: 1,000 deployments and 100 orgs.
#
#   bench/metrics.sh [BUILD_DIR]        (default ./build; builds nothing)
#
# Writes a config of DEPLOYMENTS echo deployments (d0000..) in groups of
# 10, ORGS [org] sections with a daily budget, probes off, sync on, and
# starts one broker on it (127.0.0.1, ports picked by the system; no
# worker, so jobs stay queued). It queues one job for each of TENANTS
# tenants (half orgs, half users without an org), so the per-tenant
# series are there, then:
#   1. SCRAPES timed scrapes (curl's time_total): min, median, max, the
#      exposition's lines and bytes;
#   2. CPU of the broker process (/proc/PID/schedstat) over IDLE seconds
#      without scrapes, then over CPU_SCRAPES scrapes one second apart:
#      the CPU per scrape and the share of one core at a scrape a second.
# docs/benchmarks.md ("/metrics scrape time") has the method and numbers.
#
# Settings (environment): DEPLOYMENTS (1000), ORGS (100), TENANTS (200),
# SCRAPES (21), IDLE (10), CPU_SCRAPES (20).
#
# Every process it starts is stopped by PID when it exits; every wait is
# bounded. Exit status: 0 when every scrape answered 200, else 1.
set -euo pipefail

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
BUILD=${1:-./build}
DEPLOYMENTS=${DEPLOYMENTS:-1000}
ORGS=${ORGS:-100}
TENANTS=${TENANTS:-200}
SCRAPES=${SCRAPES:-21}
IDLE=${IDLE:-10}
CPU_SCRAPES=${CPU_SCRAPES:-20}
ME=metrics.sh
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

# The config.
{
    printf '[broker]\ndata_dir = %s/data\nhttp = 127.0.0.1:0\nprobe_interval = 0s\nsync = on\n' "$TMP"
    for ((i = 0; i < DEPLOYMENTS; i++)); do
        printf '\n[deployment d%04d]\nprovider = echo\n' "$i"
    done
    for ((g = 0; g * 10 < DEPLOYMENTS; g++)); do
        printf '\n[group g%02d]\ndeployments =' "$g"
        sep=' '
        for ((i = g * 10; i < g * 10 + 10 && i < DEPLOYMENTS; i++)); do
            printf '%sd%04d' "$sep" "$i"
            sep=', '
        done
        printf '\n'
    done
    for ((o = 0; o < ORGS; o++)); do
        printf '\n[org org%03d]\nbudget_daily = 10\n' "$o"
    done
} >"$TMP/bench.conf"

"$BROKER" -c "$TMP/bench.conf" --frontend 'tcp://127.0.0.1:*' --backend 'tcp://127.0.0.1:*' \
    --ready-file "$TMP/ready" >"$TMP/broker.log" 2>&1 &
BPID=$!
PIDS+=("$BPID")
wait_file "$TMP/ready" "$BPID" broker
FE=$(sed -n 1p "$TMP/ready")
PORT=$(sed -n 3p "$TMP/ready")
URL="http://127.0.0.1:$PORT/metrics"

# One queued job per tenant: orgs first, then users without an org.
for ((t = 0; t < TENANTS; t++)); do
    if ((t % 2 == 0)); then
        tenant=(--org "org$(printf %03d $((t / 2 % ORGS)))" --user "u$t")
    else
        tenant=(--user "solo$t")
    fi
    "$CLI" --broker "$FE" --timeout 10s submit -m g00 "${tenant[@]}" "job $t" >/dev/null
done

# 1. Scrape time.
bad=0
times=()
for ((i = 0; i < SCRAPES; i++)); do
    out=$(curl -s -o "$TMP/metrics.txt" -w '%{http_code} %{time_total}' "$URL") || out="000 0"
    [[ ${out%% *} == 200 ]] || bad=1
    times+=("${out#* }")
done
read -r lines bytes < <(wc -l -c <"$TMP/metrics.txt")
tenant_series=$(grep -c '^llmq_queue_tenant_depth{' "$TMP/metrics.txt" || true)
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
min=$(head -1 <<<"$sorted")
max=$(tail -1 <<<"$sorted")
med=$(sed -n "$(((SCRAPES + 1) / 2))p" <<<"$sorted")

# 2. CPU per scrape: the broker's schedstat run time (ns), idle then scraping.
cpu_ns() { awk '{print $1}' "/proc/$BPID/schedstat"; }
c0=$(cpu_ns)
sleep "$IDLE"
c1=$(cpu_ns)
t1=$(date +%s%N)
for ((i = 0; i < CPU_SCRAPES; i++)); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$URL") || code=000
    [[ $code == 200 ]] || bad=1
    sleep 1
done
c2=$(cpu_ns)
t2=$(date +%s%N)

awk -v d="$DEPLOYMENTS" -v o="$ORGS" -v t="$TENANTS" -v ts="$tenant_series" -v l="$lines" -v b="$bytes" \
    -v mn="$min" -v md="$med" -v mx="$max" -v n="$SCRAPES" \
    -v c0="$c0" -v c1="$c1" -v c2="$c2" -v idle="$IDLE" -v t1="$t1" -v t2="$t2" -v k="$CPU_SCRAPES" 'BEGIN {
    printf "| exposition | lines | bytes | min | median (%d scrapes) | max |\n|---|---|---|---|---|---|\n", n
    printf "| %d deployments, %d orgs, %d tenants queued (%d tenant series) | %d | %d | %.1f ms | %.1f ms | %.1f ms |\n\n",
           d, o, t, ts, l, b, mn * 1000, md * 1000, mx * 1000
    idle_rate = (c1 - c0) / idle                    # ns of CPU per s, idle
    span = (t2 - t1) / 1e9
    over = (c2 - c1) - idle_rate * span             # ns spent on the scrapes
    printf "idle: %.0f ms CPU in %d s (%.1f ms/s)\n", (c1 - c0) / 1e6, idle, idle_rate / 1e6
    printf "scraping: %.0f ms CPU in %.1f s, %.0f ms over idle: %.2f ms per scrape\n",
           (c2 - c1) / 1e6, span, over / 1e6, over / k / 1e6
    printf "a scrape a second: %.2f %% of one core (%.2f %% with the idle work)\n",
           over / k / 1e7, (over / k + idle_rate) / 1e7
}'
[[ -n ${KEEP_METRICS:-} ]] && cp "$TMP/metrics.txt" "$KEEP_METRICS"
exit "$bad"
