#!/usr/bin/env bash
# smoke_test.sh -- end-to-end check of llmq-mock-provider with curl.
#
# usage: smoke_test.sh PATH/TO/llmq-mock-provider
#
# Starts the mock on an ephemeral 127.0.0.1 port, synchronises on its
# --port-file, exercises JSON, SSE, every fault (directives and control
# API) and the stats endpoints, then stops it with SIGTERM by PID.
# Every curl call has a time limit, so the whole run is bounded (well
# under a minute). Exits non-zero if any check fails.
set -u

BIN=${1:?usage: smoke_test.sh PATH/TO/llmq-mock-provider}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mock-smoke.XXXXXX")
PID=
FAILED=0
CHECKS=0

cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; FAILED=$((FAILED + 1)); }
pass() { CHECKS=$((CHECKS + 1)); }
check() {   # check DESCRIPTION COMMAND...
    local what=$1; shift
    if "$@"; then pass; else fail "$what"; fi
}
has() { grep -qF -- "$1" "$2"; }         # has TEXT FILE
lacks() { ! grep -qF -- "$1" "$2"; }

# ---------------------------------------------------------------- CLI
"$BIN" --help >/dev/null 2>&1
check "--help exits 0" [ $? -eq 0 ]
"$BIN" --port nope >/dev/null 2>"$WORK/bad.err"
check "bad option exits 2" [ $? -eq 2 ]
check "bad option is explained" has "--port" "$WORK/bad.err"

# ---------------------------------------------------------------- start
"$BIN" --port-file "$WORK/port" --quiet >"$WORK/stdout" 2>"$WORK/stderr" &
PID=$!
for _ in $(seq 1 200); do
    [ -s "$WORK/port" ] && break
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.025
done
if [ ! -s "$WORK/port" ]; then
    echo "FAIL: mock did not write its port file" >&2
    cat "$WORK/stderr" >&2
    exit 1
fi
PORT=$(cat "$WORK/port")
BASE="http://127.0.0.1:$PORT"
URL="$BASE/v1/chat/completions"
check "announces its port" has "listening on 127.0.0.1:$PORT" "$WORK/stdout"

# chat CONTENT [EXTRA_JSON] -- POST a one-message chat; the body lands in
# $WORK/body, headers in $WORK/headers, the HTTP code in $CODE and curl's
# exit status in $RC
chat() {
    local content=$1 extra=${2:-}
    curl -s -m 5 -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' \
        -H 'Content-Type: application/json' -H 'Authorization: Bearer sk-smoke' \
        -d "{\"model\":\"gpt-smoke\",\"messages\":[{\"role\":\"user\",\"content\":\"$content\"}]$extra}" \
        "$URL" >"$WORK/code"
    RC=$?
    CODE=$(cat "$WORK/code")
}
control() {   # control METHOD PATH [JSON]
    curl -s -m 5 -X "$1" ${3:+-d "$3"} "$BASE$2" >"$WORK/control"
}
# The content deltas of an SSE body, concatenated
deltas() {
    grep '^data: {' "$WORK/body" | grep -o '"delta":{"content":"[^"]*"' \
        | sed 's/^"delta":{"content":"//; s/"$//' | tr -d '\n'
}
content_chunks() { grep -c '"delta":{"content"' "$WORK/body"; }

# ---------------------------------------------------------------- JSON
chat "hello smoke test"
check "json: 200" [ "$CODE" = 200 ]
check "json: content" has '"content":"mock reply: hello smoke test"' "$WORK/body"
check "json: object" has '"object":"chat.completion"' "$WORK/body"
check "json: model echoed" has '"model":"gpt-smoke"' "$WORK/body"
check "json: finish_reason" has '"finish_reason":"stop"' "$WORK/body"
check "json: usage" has '"prompt_tokens":3,"completion_tokens":5,"total_tokens":8' "$WORK/body"
check "json: content-type" grep -qi '^content-type: application/json' "$WORK/headers"
check "json: x-request-id" grep -qi '^x-request-id: req_' "$WORK/headers"
check "json: rate-limit headers" grep -qi '^x-ratelimit-remaining-tokens: ' "$WORK/headers"

chat "cut short" ',"max_tokens":2'
check "max_tokens cuts the reply" has '"content":"mock reply:"' "$WORK/body"
check "max_tokens sets length" has '"finish_reason":"length"' "$WORK/body"

curl -s -m 5 -o "$WORK/body" -w '%{http_code}' -d \
    '{"model":"m","messages":[{"role":"user","content":"alias"}]}' \
    "$BASE/chat/completions" >"$WORK/code"
check "/chat/completions alias" [ "$(cat "$WORK/code")" = 200 ]

# ---------------------------------------------------------------- SSE
chat "stream me please" ',"stream":true,"stream_options":{"include_usage":true}'
check "sse: 200" [ "$CODE" = 200 ]
check "sse: content-type" grep -qi '^content-type: text/event-stream' "$WORK/headers"
check "sse: role first" has '"delta":{"role":"assistant"' "$WORK/body"
check "sse: deltas rebuild the reply" [ "$(deltas)" = "mock reply: stream me please" ]
check "sse: 8 content chunks by default" [ "$(content_chunks)" = 8 ]
check "sse: finish chunk" has '"finish_reason":"stop"' "$WORK/body"
check "sse: usage chunk" has '"choices":[],"usage":{"prompt_tokens":3' "$WORK/body"
check "sse: ends with [DONE]" [ "$(grep -v '^$' "$WORK/body" | tail -n 1)" = "data: [DONE]" ]

chat "[[mock:chunks=3]] three pieces" ',"stream":true'
check "chunks directive" [ "$(content_chunks)" = 3 ]
check "directive removed from reply" [ "$(deltas)" = "mock reply: three pieces" ]
check "no usage without include_usage" lacks '"usage"' "$WORK/body"

# ---------------------------------------------------------------- refusals
curl -s -m 5 -o "$WORK/body" -w '%{http_code}' -d '{not json' "$URL" >"$WORK/code"
check "bad json: 400" [ "$(cat "$WORK/code")" = 400 ]
check "bad json: error type" has '"type":"invalid_request_error"' "$WORK/body"
curl -s -m 5 -o "$WORK/body" -w '%{http_code}' -d '{"model":"m"}' "$URL" >"$WORK/code"
check "no messages: 400" [ "$(cat "$WORK/code")" = 400 ]
check "no messages: param" has '"param":"messages"' "$WORK/body"
head -c 9000000 /dev/zero | tr '\0' 'x' >"$WORK/big"
curl -s -m 10 -o "$WORK/body" -w '%{http_code}' --data-binary @"$WORK/big" "$URL" >"$WORK/code"
check "huge body: 413" [ "$(cat "$WORK/code")" = 413 ]

# ---------------------------------------------------------------- directives
chat "[[mock:fail=500]]"
check "fail=500" [ "$CODE" = 500 ]
check "fail=500 body" has '"type":"server_error"' "$WORK/body"
chat "[[mock:fail=429]] [[mock:retry_after=2]]"
check "fail=429" [ "$CODE" = 429 ]
check "429 Retry-After" grep -qi '^retry-after: 2' "$WORK/headers"
check "429 retry-after-ms" grep -qi '^retry-after-ms: 2000' "$WORK/headers"
check "429 body" has '"code":"rate_limit_exceeded"' "$WORK/body"
chat "[[mock:fail=quota]]"
check "quota: 429" [ "$CODE" = 429 ]
check "quota body" has '"type":"insufficient_quota"' "$WORK/body"
chat "[[mock:fail=401]]"
check "fail=401" [ "$CODE" = 401 ]
check "401 body" has '"code":"invalid_api_key"' "$WORK/body"
chat "[[mock:fail=503]]"
check "fail=503" [ "$CODE" = 503 ]
chat "[[mock:fail=529]]"
check "fail=529" [ "$CODE" = 529 ]
chat "[[mock:drop]]"
check "drop: empty reply (curl 52)" [ "$RC" = 52 ]
chat "[[mock:drop_after=2]] a b c d e f g h" ',"stream":true'
check "drop_after: cut mid-transfer (curl 18)" [ "$RC" = 18 ]
check "drop_after: 2 content chunks" [ "$(content_chunks)" = 2 ]
check "drop_after: no [DONE]" lacks '[DONE]' "$WORK/body"
chat "[[mock:error_after=2]] a b c d e f g h" ',"stream":true'
check "error_after: response ends normally (curl 0)" [ "$RC" = 0 ]
check "error_after: 200" [ "$CODE" = 200 ]
check "error_after: 2 content chunks" [ "$(content_chunks)" = 2 ]
check "error_after: the error event last" [ "$(grep -v '^$' "$WORK/body" | tail -n 1)" = \
    'data: {"error":{"message":"The server had an error while processing your request. Sorry about that!","type":"server_error","param":null,"code":null}}' ]
check "error_after: no finish chunk" lacks '"finish_reason":"stop"' "$WORK/body"
check "error_after: no [DONE]" lacks '[DONE]' "$WORK/body"
check "error_after: connection closed" grep -qi '^connection: close' "$WORK/headers"
chat "[[mock:error_after=0]] a b c" ',"stream":true'
check "error_after=0: role, then the error" \
    [ "$(grep -c '^data: ' "$WORK/body") $(content_chunks)" = "2 0" ]
chat "[[mock:error_after=1]] not streamed"
check "error_after: non-streamed answered normally" \
    has '"content":"mock reply: not streamed"' "$WORK/body"
chat "[[mock:malformed]]"
check "malformed: 200" [ "$CODE" = 200 ]
check "malformed: JSON is cut" [ "$(tail -c 1 "$WORK/body")" != "}" ]
chat "[[mock:malformed]] streamed" ',"stream":true'
check "malformed stream: 200 and [DONE]" has '[DONE]' "$WORK/body"
check "malformed stream: a broken event" \
    [ "$(grep '^data: {' "$WORK/body" | grep -vc '}$')" -ge 1 ]
START=$(date +%s%N)
chat "[[mock:latency=300]] slow"
ELAPSED=$(( ($(date +%s%N) - START) / 1000000 ))
check "latency=300 waits (took ${ELAPSED}ms)" [ "$ELAPSED" -ge 300 ]
check "latency still answers" [ "$CODE" = 200 ]
START=$(date +%s%N)
chat "[[mock:chunk_delay=50,chunks=4]] paced" ',"stream":true'
ELAPSED=$(( ($(date +%s%N) - START) / 1000000 ))
check "chunk_delay paces the stream (took ${ELAPSED}ms)" [ "$ELAPSED" -ge 250 ]
curl -s -m 1 -o /dev/null -d '{"model":"m","messages":[{"role":"user","content":"[[mock:hang]]"}]}' "$URL"
check "hang: client times out (curl 28)" [ $? = 28 ]

# ---------------------------------------------------------------- control API
control POST /mock/faults '{"kind":"503","count":2}'
check "queue a fault" has '"ok":true' "$WORK/control"
chat "queued 1"; first=$CODE
chat "queued 2"; second=$CODE
chat "queued 3"; third=$CODE
check "queued 503 x2 then 200 ($first $second $third)" \
    [ "$first $second $third" = "503 503 200" ]
control POST /mock/faults '{"kind":"429","count":-1,"retry_after":1}'
chat "sticky 1"; first=$CODE
chat "sticky 2"; second=$CODE
control DELETE /mock/faults
chat "cleared"
check "count -1 until cleared ($first $second $CODE)" [ "$first $second $CODE" = "429 429 200" ]
control POST /mock/faults '{"kind":"drop"}'
chat "dropped"
check "queued drop" [ "$RC" = 52 ]
control POST /mock/faults '{"kind":"drop_after","after":1}'
chat "a b c d e f" ',"stream":true'
check "queued drop_after: cut" [ "$RC" = 18 ]
check "queued drop_after: 1 content chunk" [ "$(content_chunks)" = 1 ]
control POST /mock/faults '{"kind":"error_after","after":1}'
chat "a b c d e f" ',"stream":true'
check "queued error_after: 1 content chunk" [ "$(content_chunks)" = 1 ]
check "queued error_after: the error event" has '"type":"server_error"' "$WORK/body"
chat "a b c d e f" ',"stream":true'
check "queued error_after: used up" has '[DONE]' "$WORK/body"
control POST /mock/faults '{"kind":"malformed"}'
chat "broken"
check "queued malformed: 200" [ "$CODE" = 200 ]
check "queued malformed: JSON is cut" [ "$(tail -c 1 "$WORK/body")" != "}" ]
control POST /mock/faults '{"kind":"hang"}'
curl -s -m 1 -o /dev/null -d '{"model":"m","messages":[{"role":"user","content":"x"}]}' "$URL"
check "queued hang" [ $? = 28 ]
control POST /mock/faults '{"kind":"teapot"}'
check "bad fault kind refused" has '"error"' "$WORK/control"
control POST /mock/config '{"chunks":2}'
check "config echoes" has '"chunks":2' "$WORK/control"
chat "two chunks now" ',"stream":true'
check "config changes the default chunks" [ "$(content_chunks)" = 2 ]
control POST /mock/config '{"chunks":8}'

# ---------------------------------------------------------------- other dialects
# anthropic [HEADERS...] JSON -- POST to /v1/messages
anthropic() {
    local body=${*: -1}
    curl -s -m 5 -o "$WORK/body" -w '%{http_code}' "${@:1:$#-1}" \
        -d "$body" "$BASE/v1/messages" >"$WORK/code"
    RC=$?
    CODE=$(cat "$WORK/code")
}
A_BODY='{"model":"claude-smoke","max_tokens":50,"messages":[{"role":"user","content":"hi there"}]}'
anthropic -H 'anthropic-version: 2023-06-01' "$A_BODY"
check "anthropic: no key, 401 ($CODE)" [ "$CODE" = 401 ]
check "anthropic: no key, authentication_error" \
    has '"type":"authentication_error","message":"x-api-key header is required"' "$WORK/body"
anthropic -H 'x-api-key: sk-ant-smoke' "$A_BODY"
check "anthropic: no version, 400 ($CODE)" [ "$CODE" = 400 ]
check "anthropic: no version, the reason" has 'anthropic-version: header is required' "$WORK/body"
anthropic -H 'x-api-key: sk-ant-smoke' -H 'anthropic-version: 2023-06-01' "$A_BODY"
check "anthropic: key and version, 200 ($CODE)" [ "$CODE" = 200 ]
check "anthropic: the reply" has '"text":"mock reply: hi there"' "$WORK/body"
anthropic -H 'x-api-key: sk-ant-smoke' -H 'anthropic-version: 2023-06-01' \
    '{"model":"c","max_tokens":50,"stream":true,"messages":[{"role":"user","content":"[[mock:error_after=1]] a b c d"}]}'
check "anthropic error_after: 200, ends normally" [ "$CODE $RC" = "200 0" ]
check "anthropic error_after: 1 delta" [ "$(grep -c '^event: content_block_delta' "$WORK/body")" = 1 ]
check "anthropic error_after: the error event last" \
    [ "$(grep -v '^$' "$WORK/body" | tail -n 2 | tr '\n' '|')" = \
      'event: error|data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}|' ]
check "anthropic error_after: no message_stop" lacks 'message_stop' "$WORK/body"
curl -s -m 5 -o "$WORK/body" -w '%{http_code}' -H 'x-goog-api-key: smoke' \
    -d '{"contents":[{"parts":[{"text":"[[mock:error_after=2]] a b c d e f"}]}]}' \
    "$BASE/v1beta/models/gemini-smoke:streamGenerateContent?alt=sse" >"$WORK/code"
RC=$?
check "gemini error_after: 200, ends normally" [ "$(cat "$WORK/code") $RC" = "200 0" ]
check "gemini error_after: 2 text chunks" [ "$(grep -c '"text":' "$WORK/body")" = 2 ]
check "gemini error_after: the error event last" \
    [ "$(tr -d '\r' <"$WORK/body" | grep -v '^$' | tail -n 1)" = \
      'data: {"error":{"code":503,"message":"The model is overloaded. Please try again later.","status":"UNAVAILABLE"}}' ]
check "gemini error_after: no finishReason" lacks 'finishReason' "$WORK/body"

# ---------------------------------------------------------------- stats
# The hanging requests above may take a moment to notice their client left
for _ in $(seq 1 100); do
    control GET /mock/stats
    has '"in_flight":0' "$WORK/control" && break
    sleep 0.02
done
check "nothing left in flight" has '"in_flight":0' "$WORK/control"
control POST /mock/reset
chat "one"
chat "two"
chat "[[mock:fail=500]]"
chat "four" ',"stream":true'
curl -s -m 5 -o /dev/null -d '{"model":"m","messages":[{"role":"user","content":"no auth"}]}' "$URL"
control GET /mock/stats
check "stats: requests" has '"requests":5,' "$WORK/control"
check "stats: completed" has '"completed":5,' "$WORK/control"
check "stats: streams" has '"streams":1,' "$WORK/control"
check "stats: faults" has '"faults_injected":1,' "$WORK/control"
check "stats: with_auth" has '"with_auth":4,' "$WORK/control"
check "stats: by_status" has '"by_status":{"200":4,"500":1}' "$WORK/control"
control GET /mock/requests
check "requests: 5 timestamps" \
    [ "$(grep -o '[0-9]\{13\}' "$WORK/control" | wc -l)" = 5 ]

# ---------------------------------------------------------------- stop
kill -TERM "$PID"
for _ in $(seq 1 200); do
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.025
done
if kill -0 "$PID" 2>/dev/null; then
    fail "mock did not stop on SIGTERM"
else
    wait "$PID"
    check "SIGTERM exits 0" [ $? -eq 0 ]
fi
PID=

echo "mock smoke test: $CHECKS passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
