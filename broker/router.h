/*  router.h -- the broker's dispatch decisions: which deployment, if any,
    may take a job now.

    The broker grants every provider call before a worker makes it, so the
    state here is the whole fleet's: per deployment a circuit breaker, a
    sliding-window rate limiter (requests and tokens), a concurrency limit,
    a pause after a 429, latency statistics for adaptive timeouts and for
    the lowest-latency strategy, and a retry budget. Per group a strategy
    and a fallback group.

    Pure logic over an injected clock (unix ms), no I/O: the broker feeds
    it grants and outcomes and stores its snapshot (llmq_router_save) with
    each commit so that it survives a restart. Not thread-safe (the broker
    is one thread).
*/
#ifndef LLMQ_ROUTER_H
#define LLMQ_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    LLMQ_BREAKER_CLOSED    = 0,
    LLMQ_BREAKER_OPEN      = 1,
    LLMQ_BREAKER_HALF_OPEN = 2
} llmq_breaker_state;

typedef enum {
    LLMQ_STRATEGY_ORDER          = 0,   /* ordered failover: lowest `order` first */
    LLMQ_STRATEGY_ROUND_ROBIN    = 1,
    LLMQ_STRATEGY_WEIGHTED       = 2,   /* smooth weighted round robin */
    LLMQ_STRATEGY_LEAST_IN_FLIGHT = 3,
    LLMQ_STRATEGY_LOWEST_LATENCY = 4,   /* smallest latency EWMA; untried first */
    LLMQ_STRATEGY_CHEAPEST       = 5    /* smallest price per token */
} llmq_strategy;

/*  Name <-> value ("order", "round_robin", ...); -1 / NULL if unknown. */
int         llmq_strategy_parse (const char *name);
const char *llmq_strategy_name (int strategy);
const char *llmq_breaker_state_name (int state);

/*  A deployment's limits and policies (from its config section). Zero
    means "none" for the limits. */
typedef struct {
    const char *name;
    /* limits */
    uint32_t rpm;                   /* requests per rate window */
    uint64_t tpm;                   /* tokens per rate window */
    uint64_t rate_window_ms;        /* 60 s */
    uint64_t rate_margin_ms;        /* the window is held this much longer, for the
                                       time between a grant and the request's
                                       arrival at the provider */
    uint32_t max_concurrent;
    /* balancing */
    uint32_t weight;                /* weighted strategy (default 1) */
    int32_t  order;                 /* order strategy: lower first */
    double   price;                 /* cheapest strategy: price per 1M tokens
                                       (input + output) */
    /* breaker */
    uint32_t breaker_failures;      /* failures in the window that open it (5) */
    uint32_t breaker_failure_pct;   /* or this % of calls (0: count only) */
    uint32_t breaker_min_calls;     /* calls in the window before it may open (5) */
    uint64_t breaker_window_ms;     /* rolling window (60 s) */
    uint64_t breaker_open_ms;       /* open for (60 s) */
    uint32_t breaker_probes;        /* calls let through at once when half-open (1) */
    uint32_t breaker_successes;     /* successes in half-open that close it (2) */
    /* timeouts */
    uint64_t timeout_ms;            /* until enough samples (the provider's default) */
    uint64_t timeout_min_ms;        /* adaptive clamp */
    uint64_t timeout_max_ms;
    bool     adaptive_timeout;      /* p95 x 1.5 once 20 calls succeeded */
    /* retries */
    uint32_t retry_budget_pct;      /* retries <= this % of calls per minute (20) */
    uint32_t retry_budget_min;      /* retries always allowed per minute (10) */
} llmq_dep_policy_t;

/*  Fill `p` with the defaults above. */
void llmq_dep_policy_defaults (llmq_dep_policy_t *p);

typedef struct {
    const char *name;
    int        strategy;            /* llmq_strategy */
    const size_t *deps;             /* deployment indexes, in config order */
    size_t     ndeps;
    int        fallback;            /* group index, or -1 */
} llmq_group_policy_t;

typedef struct llmq_router llmq_router_t;

/*  Copies what it needs. NULL on out of memory. */
llmq_router_t *llmq_router_new (const llmq_dep_policy_t *deps, size_t ndeps,
                                const llmq_group_policy_t *groups, size_t ngroups);
void llmq_router_destroy (llmq_router_t **self_p);

/*  A choice for one job. */
typedef struct {
    size_t   dep;                   /* deployment index */
    size_t   group;                 /* group that served it (the fallback's if degraded) */
    bool     degraded;              /* served by the fallback group */
    bool     probe;                 /* a half-open breaker's probe */
} llmq_pick_t;

/*  Choose a deployment of `group` for a job estimated at `tokens`. A retry
    names the deployment that failed (`avoid`, or SIZE_MAX) and prefers any
    other. Returns 0 and fills `pick`, or -1: nothing can take it now; then
    `*until_ms` is when something may (0: unknown, e.g. concurrency, which
    frees on an outcome) and `why` says what blocks, e.g. "all deployments
    of group gpt open until 12:03:10" (cut to whylen; may be NULL). Does not
    change the state: call llmq_router_grant() if the job is dispatched. */
int  llmq_router_pick (llmq_router_t *self, size_t group, uint64_t tokens, size_t avoid,
                       uint64_t now_ms, llmq_pick_t *pick, uint64_t *until_ms,
                       char *why, size_t whylen);

/*  True if `group` has deployments and every one's breaker is open (read
    as it stands; llmq_router_pick() moves an expired one to half-open). */
bool llmq_router_all_open (const llmq_router_t *self, size_t group);

/*  The call was made: counts against the limits. Returns a grant id for
    llmq_router_outcome(). */
uint64_t llmq_router_grant (llmq_router_t *self, const llmq_pick_t *pick, uint64_t tokens,
                            bool retry, uint64_t now_ms);

/*  What a call came to. */
typedef struct {
    int      error_class;           /* llmq_error_class; 0 for success */
    uint64_t tokens;                /* tokens it used (0: keep the estimate) */
    uint64_t latency_ms;            /* provider call time, successes */
    uint64_t retry_after_ms;        /* rate_limited: pause for this long */
    int64_t  remaining_requests;    /* provider's remaining quota headers, -1: none */
    int64_t  remaining_tokens;
    uint64_t reset_ms;              /* when that quota resets (from now), 0: unknown */
} llmq_outcome_t;

/*  Record a call's end (grant from llmq_router_grant; the deployment is
    found from it). Cancelled calls: error_class LLMQ_EC_CANCELLED frees the
    concurrency slot without counting for the breaker. */
void llmq_router_outcome (llmq_router_t *self, uint64_t grant, const llmq_outcome_t *o,
                          uint64_t now_ms);

/*  Whether the broker should send `dep` a health probe now: 1 if its
    breaker is half-open with a probe slot free, 2 if it is closed and no
    call was granted for `idle_ms` (0: never), 0 otherwise (also when its
    limits leave no room). A probe is granted like any call. */
int  llmq_router_probe_wanted (llmq_router_t *self, size_t dep, uint64_t now_ms, uint64_t idle_ms);

/*  Whether a failure on `dep` may be retried (the retry budget). */
bool llmq_router_retry_allowed (llmq_router_t *self, size_t dep, uint64_t now_ms);

/*  Total time to allow for the next call to `dep`. */
uint64_t llmq_router_timeout_ms (llmq_router_t *self, size_t dep);

/*  Breaker admin: force closed (reset counts). */
void llmq_router_reset (llmq_router_t *self, size_t dep, uint64_t now_ms);

/*  A change of breaker state, for the history. Called from the router
    while it decides; `reason` is valid during the call. */
typedef void (llmq_router_event_fn) (void *arg, size_t dep, int from, int to,
                                     const char *reason, uint64_t now_ms);
void llmq_router_on_event (llmq_router_t *self, llmq_router_event_fn *fn, void *arg);

/*  Read-only view of one deployment, for stats and status. */
typedef struct {
    int      breaker;               /* llmq_breaker_state */
    uint64_t open_until_ms;
    uint64_t paused_until_ms;       /* after a 429 */
    uint32_t in_flight;
    uint32_t window_requests;       /* granted in the current rate window */
    uint64_t window_tokens;
    uint32_t window_calls;          /* breaker window */
    uint32_t window_failures;
    uint64_t calls, failures, retries, retries_refused, probes;
    uint64_t latency_ewma_ms;
    uint64_t p50_ms, p95_ms;        /* of the last successes (0: none yet) */
    uint32_t samples;
    uint64_t timeout_ms;            /* what the next call gets */
} llmq_dep_view_t;
void llmq_router_view (llmq_router_t *self, size_t dep, uint64_t now_ms, llmq_dep_view_t *v);

/*  Whether `dep` changed since the last llmq_router_save() of it. */
bool llmq_router_dirty (const llmq_router_t *self, size_t dep);
/*  Snapshot of one deployment's breaker, pause, rate window and latency
    samples, to store; and back. The rate window is kept in 64 buckets: on
    load each bucket's grants count as made at its end, which only ever
    holds back more. Returns bytes written (0 if `cap` is too small). */
size_t llmq_router_save (llmq_router_t *self, size_t dep, void *buf, size_t cap);
size_t llmq_router_save_size (void);
int    llmq_router_load (llmq_router_t *self, size_t dep, const void *buf, size_t len,
                         uint64_t now_ms);

#endif
