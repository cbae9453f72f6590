/*  metrics.h -- the broker's Prometheus metrics (docs/metrics.md lists
    every name, type and label; dashboards and alert rules are built from
    exactly those names, so never rename one).

    Two halves. Samples the broker does not already count (provider calls
    by outcome, latency and queue-wait histograms, breaker transitions,
    tokens and cost per model and org, dispatch waits, rate-limit pauses)
    are recorded here as they happen, by the broker's own thread.
    Everything else (queue depths, breaker states, store space, the
    broker's totals) is read at scrape time from a llmq_metrics_src_t the
    broker fills, so nothing is counted twice.

    Cardinality is bounded: deployments and groups come from the config
    and models from the groups, and any label set is cut at
    LLMQ_METRICS_MAX_LABELS values, the rest folded into "other"; orgs
    (from finished jobs) are cut at LLMQ_METRICS_MAX_ORGS.

    Not thread-safe: the broker is one thread, and the HTTP side runs in
    its loop (http.h).
*/
#ifndef LLMQ_METRICS_H
#define LLMQ_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "router.h"
#include "store.h"
#include "tenants.h"

#define LLMQ_METRICS_MAX_LABELS 1000
/*  Orgs kept apart in llmq_tokens_total and llmq_cost_usd_total; the rest
    are folded into org="other". */
#define LLMQ_METRICS_MAX_ORGS 100

typedef struct llmq_metrics llmq_metrics_t;

/*  For the config's deployments. NULL on out of memory. The config is
    borrowed and must outlive the object. */
llmq_metrics_t *llmq_metrics_new (const llmq_config_t *config);
/*  Free it and set *self_p to NULL; safe on NULL and twice. */
void llmq_metrics_destroy (llmq_metrics_t **self_p);

/*  One provider call's outcome reported by a worker (DONE: error_class
    LLMQ_EC_NONE) on deployment `dep`, with its latency. */
void llmq_metrics_call (llmq_metrics_t *self, size_t dep, int error_class, uint64_t latency_us);
/*  A job dispatched after waiting `wait_us` since it was enqueued. */
void llmq_metrics_wait (llmq_metrics_t *self, int priority, uint64_t wait_us);
/*  A store commit took `us` (sync included). */
void llmq_metrics_commit (llmq_metrics_t *self, uint64_t us);
/*  A breaker of deployment `dep` went to state `to` (llmq_breaker_state). */
void llmq_metrics_transition (llmq_metrics_t *self, size_t dep, int to);
/*  A finished job's tokens and cost (micro-USD), booked to `model` and
    `org` (NULL or "": "none"; past LLMQ_METRICS_MAX_ORGS orgs, "other"). */
void llmq_metrics_usage (llmq_metrics_t *self, const char *model, const char *org, uint64_t prompt_tokens,
                         uint64_t completion_tokens, uint64_t cost_micro);

/*  The first CHUNK of a streamed attempt on deployment `dep` arrived
    `ttfc_us` after its DISPATCH (once per attempt). */
void llmq_metrics_first_chunk (llmq_metrics_t *self, size_t dep, uint64_t ttfc_us);
/*  A retry of a job of config group `group` (index in config->groups) was
    dispatched to another deployment than the one its last attempt failed on. */
void llmq_metrics_failover (llmq_metrics_t *self, size_t group);

/*  A group (config index) with ready jobs could not be served this turn:
    its router pick failed, with every deployment's breaker open or not. */
void llmq_metrics_blocked (llmq_metrics_t *self, size_t group, bool all_open);
/*  A rate-limited outcome (429/529) paused deployment `dep`. */
void llmq_metrics_rate_paused (llmq_metrics_t *self, size_t dep);

/*  A worker's own figures, totals since it started, as its HEARTBEAT
    carries them (docs/protocol.md, section 7). */
typedef struct {
    bool known;                     /* a HEARTBEAT with figures arrived */
    uint64_t calls, calls_failed;   /* provider calls reported, of which failed */
    double cpu_seconds;             /* user + system */
    uint64_t in_flight, slots;
} llmq_worker_figures_t;

/*  Read a HEARTBEAT's `json` into *out. Returns 0, or -1 (and leaves *out
    alone) when it is not a JSON object; missing or mistyped members read
    as 0. Outside input: never trusted beyond that. */
int llmq_metrics_figures_parse (const char *json, llmq_worker_figures_t *out);

/*  One connected worker, for llmq_worker_* (borrowed). */
typedef struct {
    const char *id;                 /* as in STATS: its routing id in hex */
    const char *host;               /* from HELLO, or NULL */
    const llmq_worker_figures_t *figures;
} llmq_metrics_worker_t;

/*  What is read at scrape time. All borrowed for the call. */
typedef struct {
    llmq_store_t *store;
    llmq_router_t *router;
    llmq_tenants_t *tenants;
    uint64_t now_ms;                /* unix ms, for the router's views */
    uint64_t submitted, done, failed, cancelled, expired, dead;
    uint64_t retried, restarted, degraded, retry_budget_refused, probes;
    uint64_t cache_hits, cache_misses;
    uint64_t commits, commit_us;
    uint64_t workers, slots_free;
    const llmq_metrics_worker_t *worker_list;   /* nworker_list connected workers */
    size_t nworker_list;
} llmq_metrics_src_t;

/*  The whole exposition, Prometheus text format 0.0.4. Returns a string
    the caller frees (its length in *len), or NULL on out of memory. */
char *llmq_metrics_render (llmq_metrics_t *self, const llmq_metrics_src_t *src, size_t *len);

/*  Write `value` into `out` (`len` bytes, always terminated) escaped as a
    label value: backslash, double quote and newline. Returns out. */
char *llmq_metrics_escape (const char *value, char *out, size_t len);

#endif
