/*  mock_stats.h -- exact counters and the ring of request timestamps that
    GET /mock/stats and GET /mock/requests expose.

    Tests assert on these numbers ("the worker retried exactly 3 times",
    "never more than 8 requests in flight", "no more than 10 requests in
    any second"), so they must be exact under any concurrency: counters are
    C11 atomics, the timestamp ring sits under a mutex. All calls are safe
    from any thread.
*/
#ifndef MOCK_STATS_H
#define MOCK_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

/*  How many request timestamps the ring keeps (the newest ones). */
#define MOCK_STATS_RING     100000

typedef struct mock_stats_t mock_stats_t;

/*  Create zeroed statistics. Returns NULL if out of memory. */
mock_stats_t *mock_stats_new (void);

/*  Destroy and NULL the caller's pointer; safe on NULL. */
void mock_stats_destroy (mock_stats_t **self_p);

/*  A chat request arrived (headers read): count it, count it in flight,
    note whether it carried "Authorization: Bearer", and record now_ms
    (CLOCK_REALTIME milliseconds) in the ring. Pair with mock_stats_done.
    Returns the request's handle in the ring, for mock_stats_tokens. */
uint64_t mock_stats_request (mock_stats_t *self, bool with_auth, int64_t now_ms);

/*  The reply made for request `handle` (from mock_stats_request) uses
    `tokens` (prompt + completion): kept next to its timestamp, so that
    tests can check a token rate limit. Nothing if the ring moved on (or
    was reset) since. Requests never given a reply keep 0. */
void mock_stats_tokens (mock_stats_t *self, uint64_t handle, int64_t tokens);

/*  A chat request left: no longer in flight; `completed` is true when its
    response was delivered in full (any status). */
void mock_stats_done (mock_stats_t *self, bool completed);

/*  A chat response with this HTTP status was queued (100..599). */
void mock_stats_status (mock_stats_t *self, int status);

/*  Most distinct API keys counted in "by_key", and refused keys. */
#define MOCK_STATS_KEYS     32

/*  Refuse chat requests carrying API key `key` (with 401, see
    mock_stats_key); for --reject-key. Call before serving. Returns 0, or
    -1 when the table is full or out of memory. */
int mock_stats_reject_key (mock_stats_t *self, const char *key);

/*  A chat request carried API key `key` (the Bearer token, or the value
    of x-api-key, api-key or x-goog-api-key): count it under the key's
    last 4 characters in "by_key" (never the whole key: tests grep logs
    for keys). Returns true if the key is to be refused. NULL: no key. */
bool mock_stats_key (mock_stats_t *self, const char *key);

/*  A chat request was answered with a stream. */
void mock_stats_stream (mock_stats_t *self);

/*  A fault (directive or queued) was applied to a chat request. */
void mock_stats_fault (mock_stats_t *self);

/*  A client connection was accepted (counted before any TLS handshake or
    request: control connections too). Shows keep-alive at work. */
void mock_stats_connection (mock_stats_t *self);

/*  Zero every counter and empty the ring. "in_flight" is a gauge, not a
    counter, so it is kept, and "max_in_flight" restarts from it. */
void mock_stats_reset (mock_stats_t *self);

/*  The counters as a new JSON object (caller owns the reference):
    {"requests","completed","streams","faults_injected","in_flight",
     "max_in_flight","with_auth","by_status":{"200":N,...},
     "by_key":{"LAST4":N,...},"connections"}. */
json_t *mock_stats_json (mock_stats_t *self);

/*  The ring, oldest first, as {"timestamps_ms":[...],"tokens":[...]}
    (tokens[i] belongs to timestamps_ms[i]), keeping only the timestamps
    >= since_ms (pass 0 for all). Caller owns the reference. */
json_t *mock_stats_timestamps_json (mock_stats_t *self, int64_t since_ms);

/*  CLOCK_REALTIME now, in milliseconds. */
int64_t mock_stats_now_ms (void);

#endif
