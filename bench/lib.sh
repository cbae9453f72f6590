# bench/lib.sh -- what the benchmark scripts share: the binaries of a
# build, a scratch directory, and starting and stopping processes by PID.
# Source it after setting BUILD (a build directory) and ME (the script's
# name, for messages). Defines BENCH BROKER WORKER CLI MOCK, TMP, PIDS,
# stop_pid, stop_pids, wait_file, and an EXIT trap that stops every PID in
# PIDS (newest first) and removes TMP.

BENCH=$BUILD/bench/llmq-bench
BROKER=$BUILD/broker/llmq-broker
WORKER=$BUILD/worker/llmq-worker
CLI=$BUILD/client/llmq
MOCK=$BUILD/tests/mock/llmq-mock-provider
for exe in "$BENCH" "$BROKER" "$WORKER" "$CLI" "$MOCK"; do
    if [[ ! -x $exe ]]; then
        echo "$ME: $exe not found: build first (cmake --build $BUILD)" >&2
        exit 2
    fi
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/llmq-${ME%.sh}.XXXXXX")
PIDS=()                 # everything we started, in start order

# Stop one process by PID: TERM, up to 5 s, then KILL
stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stop the PIDs given, newest first, and forget them
stop_pids() {
    local i pid keep=()
    for ((i = $# ; i >= 1; i--)); do
        stop_pid "${!i}"
    done
    for pid in "${PIDS[@]}"; do
        [[ " $* " == *" $pid "* ]] || keep+=("$pid")
    done
    PIDS=("${keep[@]+"${keep[@]}"}")
}

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${PIDS[i]}"
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait (bounded) until file $1 is non-empty, while PID $2 lives ($3 names
# it: its log is $TMP/$3.log)
wait_file() {
    local file=$1 pid=$2 what=$3 i
    for ((i = 0; i < 100; i++)); do
        [[ -s $file ]] && return 0
        kill -0 "$pid" 2>/dev/null || { echo "$ME: $what exited; its log:" >&2; cat "$TMP/$what.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$ME: $what did not start in 10 s" >&2
    exit 1
}
