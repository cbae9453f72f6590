/*  mock_faults.h -- what the mock does to one chat request, and where
    that decision comes from.

    Every chat request gets a plan. The plan starts from the server's
    defaults (command line, then POST /mock/config), a fault queued with
    POST /mock/faults is laid over it, and finally the `[[mock:...]]`
    directives found in the request's message contents are laid over
    that, so a test can always override the queue for one request.

    Directive grammar (inside any message content, any number of times):
        [[mock:ITEM]]  or  [[mock:ITEM,ITEM,...]]
        ITEM = KEY | KEY=VALUE
    Known keys: fail=STATUS|quota, retry_after=S, latency=MS, chunk_delay=MS,
    chunks=N, hang, drop, drop_after=K, error_after=K, malformed, cached=N
    (not a fault: the usage reports N of the prompt tokens as cached). Unknown
    keys and bad values are ignored (the text is still removed): the mock
    must never refuse a request because a test misspelt a directive.
*/
#ifndef MOCK_FAULTS_H
#define MOCK_FAULTS_H

#include <stdbool.h>
#include <stddef.h>

/*  What goes wrong. Order matters only for readability. */
typedef enum {
    MOCK_FAULT_NONE = 0,    /* answer normally */
    MOCK_FAULT_STATUS,      /* answer with plan.status and the provider's error body */
    MOCK_FAULT_QUOTA,       /* 429 with the "insufficient_quota" body */
    MOCK_FAULT_HANG,        /* never answer; wait for the client to go away */
    MOCK_FAULT_DROP,        /* close the connection without any response */
    MOCK_FAULT_DROP_AFTER,  /* stream plan.drop_after content chunks, then close */
    MOCK_FAULT_ERROR_AFTER, /* stream plan.error_after content chunks, then the
                               provider's error event, then end the stream */
    MOCK_FAULT_MALFORMED    /* 200 with a broken JSON body or a broken SSE event */
} mock_fault_t;

/*  A plan. For the integer fields -1 means "not set here": merging only
    copies fields that are set, which is how the three layers stack. */
typedef struct {
    mock_fault_t fault;     /* MOCK_FAULT_NONE also means "not set" */
    int status;             /* HTTP status for MOCK_FAULT_STATUS */
    int retry_after_s;      /* Retry-After seconds on an error reply; -1 = no header */
    int drop_after;         /* content chunks sent before MOCK_FAULT_DROP_AFTER closes */
    int error_after;        /* content chunks sent before MOCK_FAULT_ERROR_AFTER's event */
    int latency_ms;         /* delay before the response headers */
    int chunk_delay_ms;     /* delay before each SSE event after the first */
    int chunks;             /* number of content pieces in a stream */
    int cached;             /* prompt tokens the usage reports as read from the
                               prompt cache (at most the prompt's) */
} mock_plan_t;

/*  The longest we ever hold a hanging request (the brief says 600 s). */
#define MOCK_HANG_MAX_MS    600000

/*  Upper bounds on the delays and chunk count a request may ask for, so a
    typo cannot wedge a test run for hours. */
#define MOCK_DELAY_MAX_MS   600000
#define MOCK_CHUNKS_MAX     100000

/*  Set every field of plan to "not set". */
void mock_plan_clear (mock_plan_t *plan);

/*  Copy the fields that are set in src over dst. */
void mock_plan_merge (mock_plan_t *dst, const mock_plan_t *src);

/*  True if the plan makes the request fail in some way (counted in the
    "faults_injected" statistic). Delays alone are not faults. */
bool mock_plan_is_fault (const mock_plan_t *plan);

/*  Find the directives in text[0..len), apply them to plan, and return a
    newly allocated, NUL-terminated copy of the text with the directives
    removed (owned by the caller), its length in *out_len (the text may
    hold NUL bytes of its own). Returns NULL only if out of memory. */
char *mock_directives_strip (const char *text, size_t len, mock_plan_t *plan,
                             size_t *out_len);

/*  A queue of faults set up by tests through POST /mock/faults. Safe to use
    from any number of threads: every call takes the queue's mutex, except
    that mock_faults_take() checks an atomic count first so the hot path
    costs nothing while the queue is empty. */
typedef struct mock_faults_t mock_faults_t;

/*  Create an empty queue. Returns NULL if out of memory. */
mock_faults_t *mock_faults_new (void);

/*  Destroy the queue and NULL the caller's pointer; safe on NULL. */
void mock_faults_destroy (mock_faults_t **self_p);

/*  Append a fault that applies to the next `count` chat requests (after
    the ones already queued); count -1 means until cleared. Only the fault,
    status, retry_after_s, drop_after and error_after fields of `fault` are
    used.
    Returns 0, or -1 if count is 0 or below -1, or out of memory. */
int mock_faults_push (mock_faults_t *self, const mock_plan_t *fault, int count);

/*  Remove every queued fault. */
void mock_faults_clear (mock_faults_t *self);

/*  If a fault is queued, lay it over plan, use up one of its count and
    return true; otherwise leave plan alone and return false. */
bool mock_faults_take (mock_faults_t *self, mock_plan_t *plan);

/*  Number of entries in the queue (an entry may cover several requests). */
size_t mock_faults_size (mock_faults_t *self);

/*  Name of a fault for JSON and logs ("none", "status", "quota", ...). */
const char *mock_fault_name (mock_fault_t fault);

#endif
