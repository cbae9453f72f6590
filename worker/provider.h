/*  provider.h -- the interface every provider adapter implements, and the
    helpers they share.

    An adapter turns a job (OpenAI chat.completions JSON, the one shape
    clients submit) into the provider's HTTP request, and the provider's
    answer -- a JSON body, a stream of SSE events, or an error -- back into
    an llmq_reply_t. The worker (worker.c) owns everything else: sockets,
    curl handles, timeouts, headers such as Retry-After and x-request-id,
    and the messages to the broker. Adapters hold no state between calls and
    never see the network, so each one is tested from fixtures alone.

    Adding a provider: write provider_NAME.c defining
    `const llmq_provider_t llmq_provider_NAME`, add X(NAME) to LLMQ_PROVIDERS
    in provider.c and the file to worker/CMakeLists.txt.

    Secrets: adapters see an API key only in `endpoint`, which gets it from
    the worker's keyring (keyring.h) and puts it in a header; they never
    put one in a reply, a log line or an error text.
*/
#ifndef LLMQ_PROVIDER_H
#define LLMQ_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <curl/curl.h>

#include "codec.h"
#include "config.h"

/*  Growable text buffer, NUL-terminated once anything was added. */
typedef struct {
    char  *p;
    size_t len;                 /* bytes used, excluding the NUL */
    size_t cap;                 /* bytes allocated */
} llmq_text_t;

int  llmq_text_add (llmq_text_t *t, const char *s, size_t n);
/*  Make room for at least `n` bytes in total (len unchanged). */
int  llmq_text_reserve (llmq_text_t *t, size_t n);
void llmq_text_free (llmq_text_t *t);

/*  One tool call being gathered (a stream brings it in pieces). */
typedef struct {
    long        key;            /* what the provider numbers it by (a stream's index) */
    llmq_text_t id;             /* provider's call id ("" until known) */
    llmq_text_t name;           /* function name ("" until known) */
    llmq_text_t args;           /* arguments JSON text, pieces concatenated */
} llmq_tool_call_t;

/*  Everything an adapter learned from one call. Fixed-size fields so that
    a reply reused from call to call costs no allocation (the buffers below
    are kept and reused too). */
typedef struct {
    llmq_text_t content;        /* assistant text (partial on a broken stream) */
    llmq_text_t tool_calls;     /* tool calls as JSON text in OpenAI's shape,
                                   built by llmq_reply_tools_end; len 0: none */
    llmq_tool_call_t *tools;    /* calls gathered so far, in order of arrival */
    size_t   ntools;
    size_t   tools_cap;
    char     finish_reason[32]; /* "stop", "length", ... ("" if not given) */
    char     request_id[128];   /* provider's id for the answer ("" if none) */
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    uint32_t cached_tokens;     /* prompt tokens read from the provider's
                                   prompt cache (part of prompt_tokens) */
    bool     finished;          /* a finish_reason arrived: the answer is whole */
    int      error_class;       /* llmq_error_class; LLMQ_EC_NONE while fine */
    char     error[256];        /* short reason when error_class is set */
} llmq_reply_t;

/*  Empty the reply for the next call; keeps the content buffer. */
void llmq_reply_reset (llmq_reply_t *r);
void llmq_reply_free (llmq_reply_t *r);
/*  Set error_class and a formatted reason (cut to fit, "sk-..." tokens
    masked). Returns -1 so adapters can `return llmq_reply_fail (...)`. */
int  llmq_reply_fail (llmq_reply_t *r, int error_class, const char *fmt, ...)
     __attribute__((format(printf, 3, 4)));
void llmq_reply_set_finish (llmq_reply_t *r, const char *finish_reason);
void llmq_reply_set_request_id (llmq_reply_t *r, const char *request_id);

/*  Tool calls. Adapters add what they learn with llmq_reply_tool and, once
    the answer is whole (with its finish reason), call llmq_reply_tools_end
    to write reply->tool_calls:
        [{"id","type":"function","function":{"name","arguments"}}, ...]
    llmq_reply_tool finds the call numbered `key` (a stream's index), or
    starts a new one after the others; it sets `id` and `name` if given and
    the call has none yet, and appends `args` (args_len bytes; NULL adds
    nothing). Both return 0, or -1 with the reply failed (INTERNAL when out
    of memory; BAD_RESPONSE from tools_end for a call with no name or text
    that is not UTF-8). A call without an id gets "call_<n>", n counting
    from 0 in the answer; one without arguments gets "{}". */
int  llmq_reply_tool (llmq_reply_t *r, long key, const char *id, const char *name,
                      const char *args, size_t args_len);
int  llmq_reply_tools_end (llmq_reply_t *r);

/*  Fixed parts of every request to one deployment, built once. */
typedef struct {
    char *url;                  /* full URL of the call (malloc'd) */
    char *stream_url;           /* URL of a streamed job when it differs from
                                   url (malloc'd; Gemini), or NULL */
    struct curl_slist *headers; /* request headers, may hold the API key */
} llmq_endpoint_t;

void llmq_endpoint_free (llmq_endpoint_t *ep);

/*  Streamed text for the client, in order. `text` is not NUL-terminated. */
typedef void (llmq_delta_fn) (void *arg, const char *text, size_t len);

typedef struct {
    const char *name;           /* value of `provider =` in a [deployment] */

    /*  Providers that answer without HTTP (echo) set `answer` only: fill the
        reply (or fail it) and, for a streamed job, emit the text as deltas.
        Returns 0, or -1 with reply->error_class set. */
    int  (*answer) (const llmq_deployment_t *dep, const llmq_job_t *job,
                    llmq_reply_t *reply, llmq_delta_fn *emit, void *arg);

    /*  HTTP providers set the rest. */
    /*  URL and headers for `dep` with API key `key` (borrowed; NULL: no key
        header, for endpoints that need none). Returns 0, or -1 with
        reply->error_class set (INTERNAL for a bad deployment, AUTH for a
        key that cannot go in a header). */
    int  (*endpoint) (const llmq_deployment_t *dep, const char *key, llmq_endpoint_t *ep,
                      llmq_reply_t *reply);
    /*  Request body for `job` into `body` (emptied first). Returns 0, or -1
        with reply->error_class set (INVALID_REQUEST for a bad job body). */
    int  (*build) (const llmq_deployment_t *dep, const llmq_job_t *job,
                   llmq_text_t *body, llmq_reply_t *reply);
    /*  A whole 2xx body of a non-streamed call. Returns 0, or -1 with
        reply->error_class set (BAD_RESPONSE when unparseable). */
    int  (*parse_response) (const char *body, size_t len, llmq_reply_t *reply);
    /*  One SSE event of a streamed call (data NUL-terminated). Appends the
        text to reply->content and emits it. Returns 0, or -1 with
        reply->error_class set (an error event, an unparseable event). */
    int  (*parse_event) (const char *event, const char *data, size_t len,
                         llmq_reply_t *reply, llmq_delta_fn *emit, void *arg);
    /*  A non-2xx answer: sets reply->error_class and reply->error from the
        status and the body (whatever it holds). */
    void (*classify) (long status, const char *body, size_t len, llmq_reply_t *reply);
} llmq_provider_t;

/*  A short printable excerpt (at most 120 bytes, control and non-ASCII
    bytes as spaces) of a body that is not the provider's error JSON, for
    an error text. */
void llmq_excerpt (const char *body, size_t len, char *out, size_t outlen);

/*  The adapter named `name`, or NULL. */
const llmq_provider_t *llmq_provider_find (const char *name);

/*  Error class of an HTTP status that is not 2xx:
        400, 404, 413, 422, other 4xx  -> INVALID_REQUEST
        401, 403                       -> AUTH
        408                            -> TIMEOUT
        409                            -> SERVER (a conflict: retry)
        429, 529                       -> RATE_LIMITED
        other 5xx                      -> SERVER
        anything else (1xx, 3xx, 0)    -> BAD_RESPONSE  */
int  llmq_http_error_class (long status);

/*  Error class of a curl transport failure (a CURLcode):
        timeout                               -> TIMEOUT
        resolve, connect, TLS, reset, partial -> CONNECTION
        bad URL or option, our write refusal  -> INTERNAL
        weird reply, bad encoding, redirects  -> BAD_RESPONSE
    `streamed`: chunks of this attempt already reached the client, so a
    cut or timed-out transfer is STREAM_BROKEN instead (not retried: the
    client holds part of the answer). */
int  llmq_transport_error_class (int curlcode, bool streamed);

/*  Milliseconds to wait from the headers of a refused call: `retry_ms` is
    the value of retry-after-ms (a number of ms, maybe fractional),
    `retry_after` the value of Retry-After (delta seconds, maybe fractional,
    or an HTTP date, compared with `now`). Either may be NULL. retry-after-ms
    wins when valid. Returns 0 when neither gives a usable value. Values are
    capped at one day. */
uint64_t llmq_retry_after_ms (const char *retry_after, const char *retry_ms, time_t now);

/*  --- rate-limit headers ----------------------------------------------

    Providers say with every answer how much of their quota is left and when
    it fills up again:
        OpenAI, Azure  x-ratelimit-remaining-requests, -remaining-tokens:
                       counts; x-ratelimit-reset-requests, -reset-tokens:
                       durations from now, Go style ("1s", "6m0s", "20ms")
        Anthropic      anthropic-ratelimit-requests-remaining, -tokens-
                       remaining (and -input-tokens-, -output-tokens-):
                       counts; the matching -reset headers: RFC 3339 times
                       ("2024-09-25T17:53:05Z")
        Gemini         none
    The worker feeds every header of an answer to llmq_ratelimit_header and
    sends what it learned with the DONE or FAILED (result fields rlr, rlt,
    rlms), so that the broker pauses a deployment whose quota is used up
    until it resets; on a 429 without Retry-After the reset is the wait. */

/*  What the headers of one answer said. The first four fields are what
    callers read; the rest is llmq_ratelimit_header's bookkeeping. */
typedef struct {
    int64_t  remaining_requests;    /* -1: not said */
    int64_t  remaining_tokens;      /* -1: not said. Anthropic: the tokens
                                       quota, else the smaller of the input
                                       and output token quotas */
    uint64_t reset_requests_ms;     /* ms from the answer until the requests
                                       quota resets; 0: not said (or now) */
    uint64_t reset_tokens_ms;       /* same for the tokens quota of
                                       remaining_tokens */
    int64_t  quota_remaining[4];    /* per quota: requests, tokens, input, output */
    uint64_t quota_reset_ms[4];
} llmq_ratelimit_t;

/*  Forget everything: all unknown (-1 and 0), for a new answer. */
void llmq_ratelimit_init (llmq_ratelimit_t *rl);

/*  Take one response header: `name` (nlen bytes, any case) and `value`
    (vlen bytes, surrounding spaces already cut; neither need be
    NUL-terminated). `now_ms` is the wall clock (unix ms) when the answer
    arrived, for Anthropic's absolute reset times. Returns 1 if the header
    is one of the rate-limit headers above and its value was taken, 0 if it
    is not one of them, -1 if it is one but its value is malformed (then
    ignored: `rl` is unchanged). A header seen twice: the last one counts. */
int  llmq_ratelimit_header (llmq_ratelimit_t *rl, const char *name, size_t nlen,
                            const char *value, size_t vlen, int64_t now_ms);

/*  Milliseconds until the quota that holds us back resets: the later reset
    of the quotas whose remaining count is 0, or, when none is used up (or
    the used-up one's reset was not said), the sooner non-zero reset of the
    two. 0 when the headers said no reset. */
uint64_t llmq_ratelimit_wait_ms (const llmq_ratelimit_t *rl);

/*  A duration as OpenAI writes its reset headers (Go's time.Duration
    format): one or more <number><unit>, units in decreasing order and
    each at most once, h m s ms us (or µs) ns; the number is decimal digits
    with an optional fraction (".5", at least one digit on each side of the
    dot). "0" alone is allowed (zero). No sign, no spaces inside. Examples:
    "1s", "6m0s", "59.5s", "20ms", "1h2m3s". Sets *ms to the duration
    rounded up to a whole ms, capped at one day, and returns 0; -1 (and *ms
    unchanged) if `s` is not such a duration. */
int  llmq_ratelimit_duration_ms (const char *s, uint64_t *ms);

/*  An RFC 3339 date-time, "2024-09-25T17:53:05Z": date, 'T', time with
    optional fraction of a second, then 'Z' or an offset "+02:00" ('t' and
    'z' also; no spaces). Sets *ms to the milliseconds from `now_ms` (unix
    ms) to that instant, rounded up, 0 if it is not after `now_ms`, capped
    at one day, and returns 0; -1 (and *ms unchanged) if malformed or out
    of range (month 13, 30 February, hour 24...). */
int  llmq_rfc3339_ms (const char *s, int64_t now_ms, uint64_t *ms);

/*  Words (runs of non-space bytes) in `s`. */
uint32_t llmq_count_words (const char *s, size_t len);

#endif
