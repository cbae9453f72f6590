/*  store.h -- the broker's durable state: jobs, queue indexes and results in
    one LMDB environment.

    Every mutating call runs inside the current write transaction, opened
    with llmq_store_begin() and made durable by llmq_store_commit(): the
    broker opens one per loop turn, so one sync covers everything that
    arrived in that turn (group commit). Every call that depends on time
    takes `now` (unix µs) from the caller, so tests drive the clock.

    Databases (docs/storage.md has the byte layout):
      meta      "format" -> u32, "next_id" -> u64, "next_lease" -> u64
      routes    route name -> u32 route number
      jobs      id -> job record (codec)               live jobs only
      ready     route|vdeadline|id -> ""               ordered by virtual deadline
      delayed   not_before|id -> ""                    retry backoff
      deadlines deadline|id -> ""                      queued jobs with a deadline
      leases    id -> lease|started                     jobs running at a worker
      results   id -> result record (codec)            final outcomes
      expiry    expire_at|id -> idempotency key         result TTL
      idem      idempotency key -> id
      batches   batch -> counts;  batchjobs  batch\0id -> ""
      state     name -> blob                           the router's snapshots
      usage     day|org|user|model -> counts            requests, tokens, cost
      dead      id -> expire_at|route|job record       dead-lettered jobs, while
                                                       their result lives
      cache     sha256 -> expires|drop|used|result     response cache entries
      cachelru  used|sha256 -> "";  cacheexp  drop|sha256 -> ""   their LRU and
                                                       timer orders
*/
#ifndef LLMQ_STORE_H
#define LLMQ_STORE_H

#include <stdbool.h>
#include <stdint.h>
#include "codec.h"
#include "config.h"
#include "depth.h"

#define LLMQ_STORE_FORMAT 1

typedef struct llmq_store llmq_store_t;

typedef struct {
    bool     sync;                    /* fsync each commit */
    uint64_t map_size;                /* initial map bytes */
    uint64_t max_map_size;            /* growth limit */
    uint64_t prio_offset_us[LLMQ_NPRIO];
    uint64_t result_ttl_us;
    uint32_t max_attempts;            /* default for jobs that give 0 */
    uint64_t backoff_us;              /* first retry delay */
    uint64_t backoff_max_us;
    uint64_t cache_max_bytes;         /* response cache bound (0: none) */
} llmq_store_opts_t;

/*  Counts of one batch. */
typedef struct {
    uint64_t total, done, failed, cancelled, expired, dead;
} llmq_batch_counts_t;

/*  Depth of one route, by priority, for stats. */
typedef struct {
    const char *name;
    uint32_t number;
    uint64_t ready[LLMQ_NPRIO];
    uint64_t delayed;
    uint64_t running;
} llmq_route_stats_t;

/*  Called for each job the store finalises by itself during a tick
    (expired at its deadline). `res` lives until the callback returns. */
typedef void (llmq_store_final_fn) (void *arg, const llmq_result_t *res);

/*  Open (creating if needed) the store in `dir`. Jobs leased when the broker
    last stopped go back to ready, their attempt not counted. Returns NULL
    with a reason in `err` (unknown format version, LMDB error...). */
llmq_store_t *llmq_store_open (const char *dir, const llmq_store_opts_t *opts,
                               uint64_t now, char *err, size_t errlen);
void llmq_store_close (llmq_store_t **self_p);

/*  Turn transaction. commit returns 0 or an LMDB error (logged). */
int  llmq_store_begin (llmq_store_t *self);
int  llmq_store_commit (llmq_store_t *self);
void llmq_store_abort (llmq_store_t *self);

/*  Between turns: grow the map when it is getting full, up to the limit.
    Returns true when it is at its limit and nearly full: submits must be
    refused (llmq_store_submit does so by itself). */
bool llmq_store_check_space (llmq_store_t *self);
void llmq_store_space (llmq_store_t *self, uint64_t *used, uint64_t *map_size, uint64_t *max_size);

/*  Savepoints: a nested transaction inside the turn's. A write that fails
    for lack of space (LLMQ_ERR_STORE_FULL) inside one is rolled back alone,
    in-memory view included, and the turn's transaction stays usable.
    release commits it into the turn (returns an error if that fails, having
    rolled back). One savepoint at a time. */
int  llmq_store_save (llmq_store_t *self);
int  llmq_store_release (llmq_store_t *self);
void llmq_store_rollback (llmq_store_t *self);
/*  True when the map is at its limit and more than half used: every write
    should then run in a savepoint. */
bool llmq_store_tight (llmq_store_t *self);
/*  The map is below its limit; want_grow makes the next check_space grow it
    whatever its use (a write did not fit). */
bool llmq_store_can_grow (llmq_store_t *self);
void llmq_store_want_grow (llmq_store_t *self);

/*  Store a new job (job->model must be a route name). Sets job->id,
    enqueued_us, vdeadline_us. With an idempotency key already known, sets
    job->id to the existing job and *dup = true, storing nothing.
    Errors: LLMQ_ERR_STORE_FULL, LLMQ_ERR_STORE. */
int  llmq_store_submit (llmq_store_t *self, llmq_job_t *job, uint64_t now, bool *dup);

/*  Store the jobs of one SUBMIT, all or none: on any error (no space
    left, most likely) nothing of them is stored, the rest of the turn's
    transaction is intact, and the error is returned. dups[i] as above. */
int  llmq_store_submit_all (llmq_store_t *self, llmq_job_t *jobs, size_t n, uint64_t now,
                            uint8_t *dups);

/*  The head of a route's ready index (smallest virtual deadline).
    Returns 0 and fills *id, *vdeadline, or LLMQ_ERR_NOT_FOUND if empty. */
int  llmq_store_peek (llmq_store_t *self, uint32_t route, uint64_t *id, uint64_t *vdeadline);

/*  When the head of a route's ready index (as llmq_store_peek) was
    enqueued, unix µs, into *enqueued_us (a retry keeps its first
    enqueue). Inside the turn's transaction or, between turns, in a read
    transaction of its own. Returns 0, LLMQ_ERR_NOT_FOUND if the route has
    no ready job, LLMQ_ERR_STORE or LLMQ_ERR_NOMEM. */
int  llmq_store_head_enqueued (llmq_store_t *self, uint32_t route, uint64_t *enqueued_us);

/*  Lease a ready job: out of the ready index, into leases with a new lease
    token. Fills *job (strings in `arena`). A job whose deadline passed is
    expired instead: returns LLMQ_ERR_EXPIRED and fills *final. */
int  llmq_store_lease (llmq_store_t *self, uint64_t id, uint64_t now, llmq_job_t *job,
                       llmq_result_t *final, llmq_arena_t *arena);

/*  Finish a leased job with the worker's result (state set by the caller:
    DONE or FAILED). Fails with LLMQ_ERR_STATE when (id, lease) is not the
    current lease: a stale report, to be dropped. On success fills *final
    with the stored result (strings in `arena`). */
int  llmq_store_complete (llmq_store_t *self, uint64_t id, uint64_t lease,
                          const llmq_result_t *res, uint64_t now,
                          llmq_result_t *final, llmq_arena_t *arena);

/*  Give a leased job back: to ready (not_before 0) or delayed. With
    count_attempt the attempt counts; when attempts reach max_attempts the
    job is dead-lettered instead: returns LLMQ_ERR_JOB_FAILED and fills
    *final. `lease` 0 means any lease (broker restart, lost worker).
    Errors: LLMQ_ERR_STATE (not leased under that token). */
int  llmq_store_requeue (llmq_store_t *self, uint64_t id, uint64_t lease, bool count_attempt,
                         uint64_t not_before, const llmq_result_t *failure, uint64_t now,
                         llmq_result_t *final, llmq_arena_t *arena);

/*  Cancel a live job. *was is its state before; for a running job *lease is
    its lease token (the caller aborts it at the worker). Fills *final.
    Errors: LLMQ_ERR_NOT_FOUND, LLMQ_ERR_STATE (already final). */
int  llmq_store_cancel (llmq_store_t *self, uint64_t id, uint64_t now, int *was,
                        uint64_t *lease, llmq_result_t *final, llmq_arena_t *arena);

/*  A job's state: the stored result if final, else its live state. */
int  llmq_store_status (llmq_store_t *self, uint64_t id, llmq_result_t *out, llmq_arena_t *arena);

/*  Small named records kept with the queue (the router's snapshots).
    Put: in the current write transaction. Get: inside a transaction too
    (llmq_store_begin first); *data is valid until it ends. Returns 0,
    LLMQ_ERR_NOT_FOUND or LLMQ_ERR_STORE. */
int  llmq_store_state_put (llmq_store_t *self, const char *key, const void *data, size_t len);
int  llmq_store_state_get (llmq_store_t *self, const char *key, const void **data, size_t *len);
/*  Every record whose name starts with `prefix`, in name order. */
typedef void (llmq_state_fn) (void *arg, const char *key, const void *data, size_t len);
int  llmq_store_state_each (llmq_store_t *self, const char *prefix, llmq_state_fn *fn, void *arg);

/*  Up to `limit` final results of a batch with id > after, in id order.
    *more is true if the batch has jobs beyond the last one returned. */
int  llmq_store_fetch (llmq_store_t *self, const char *batch, uint64_t after, uint32_t limit,
                       llmq_result_t **results, size_t *n, uint64_t *next, bool *more,
                       llmq_batch_counts_t *counts, llmq_arena_t *arena);

/*  Timers: promote delayed jobs whose time came, expire queued jobs past
    their deadline (calling fn for each), purge results past their TTL.
    Bounded work per call (`budget` records); returns records touched. */
size_t llmq_store_tick (llmq_store_t *self, uint64_t now, size_t budget,
                        llmq_store_final_fn *fn, void *arg, llmq_arena_t *arena);

/*  Response cache: answers by the SHA-256 of their request (cache.h
    computes it). Entries expire by their TTL (llmq_store_tick drops them)
    and the least recently used go first when a put would take the bytes
    held past opts.cache_max_bytes. All run in the current transaction. */
#define LLMQ_STORE_CACHE_KEY 32

typedef struct {
    uint64_t entries;               /* entries held (live and stale) */
    uint64_t bytes;                 /* their keys and values, as counted against the bound */
    uint64_t evictions;             /* entries evicted for room, since the store was created */
} llmq_store_cache_stats_t;

/*  The answer cached under `key` into *out (strings in `arena`; the
    record has no job fields: no id, times, batch). A live entry returns 0
    and becomes the most recently used. One past its expiry but kept for
    stale serving returns LLMQ_ERR_EXPIRED, *out filled, its place kept.
    *expires_at (may be NULL) says when it expires or expired.
    Errors: LLMQ_ERR_NOT_FOUND, LLMQ_ERR_STORE. */
int  llmq_store_cache_get (llmq_store_t *self, const uint8_t key[LLMQ_STORE_CACHE_KEY], uint64_t now,
                           llmq_result_t *out, uint64_t *expires_at, llmq_arena_t *arena);

/*  Cache the answer `res` (a done job's result: content, finish, tools,
    tokens, deployment, request id, latency are kept) under `key` until
    now + ttl_us, replacing any entry under that key, and keep it stale_us
    longer for stale serving. Evicts least recently used entries first
    while the bound would be passed; *evicted (may be NULL) counts them.
    Errors: LLMQ_ERR_TOO_LARGE (bigger than the whole bound: not cached),
    LLMQ_ERR_STORE_FULL (no room in this turn: nothing written),
    LLMQ_ERR_STORE. */
int  llmq_store_cache_put (llmq_store_t *self, const uint8_t key[LLMQ_STORE_CACHE_KEY], uint64_t ttl_us,
                           uint64_t stale_us, const llmq_result_t *res, uint64_t now, size_t *evicted);

/*  Entries, bytes and evictions. In the current transaction, or a read
    transaction of its own between turns. */
int  llmq_store_cache_stats (llmq_store_t *self, llmq_store_cache_stats_t *out);

/*  As llmq_store_submit_all, with cache hits: a job whose answers[i] is
    not NULL is recorded finished at once with that answer (state done,
    `cached` set, cost 0, no attempt, started and finished now; `degraded`
    as given) and never queued. It gets its id, idempotency key and batch
    membership like any job, and a batch counts it done; finals[i] is its
    stored result. A known idempotency key still returns the existing job
    (dups[i] = 1, nothing stored, finals[i] untouched). All or none. */
int  llmq_store_submit_cached (llmq_store_t *self, llmq_job_t *jobs, size_t n, uint64_t now, uint8_t *dups,
                               const llmq_result_t *const *answers, llmq_result_t *finals);

/*  Dead letters: jobs that ended DEAD (max_attempts retryable failures).
    Their job record (body, meta, keys...) is kept beside their result for
    as long as the result lives (result_ttl), so that an operator can look
    at them, put them back in the queue, or delete them early. All of these
    run inside the current write transaction. */
typedef struct {
    llmq_job_t    job;              /* as it was dead-lettered: attempts, last_error */
    llmq_result_t result;           /* its stored result: error, class, http status */
    uint64_t      expire_at_us;     /* when the timer drops it */
} llmq_dead_t;

#define LLMQ_STORE_DEAD_PAGE      100       /* default page of llmq_store_dead_list */
#define LLMQ_STORE_DEAD_PAGE_MAX  1000
#define LLMQ_STORE_DEAD_SCAN      10000     /* records one list call looks at, at most */

/*  Up to `limit` dead letters (0: LLMQ_STORE_DEAD_PAGE; at most
    LLMQ_STORE_DEAD_PAGE_MAX) with id > after, in id order, of model group
    `model` (NULL: all). *jobs is an array in `arena`. *next is the cursor
    for the next page (the last id looked at); *more is true when there may
    be more: with a filter, a page stops after LLMQ_STORE_DEAD_SCAN
    records, so a page may be short, even empty, with *more true. */
int  llmq_store_dead_list (llmq_store_t *self, const char *model, uint64_t after, uint32_t limit,
                           llmq_dead_t **jobs, size_t *n, uint64_t *next, bool *more,
                           llmq_arena_t *arena);

/*  One dead letter (strings in `arena`). LLMQ_ERR_NOT_FOUND when `id` is
    not a dead letter (live, ended otherwise, expired or never known). */
int  llmq_store_dead_get (llmq_store_t *self, uint64_t id, llmq_dead_t *out, llmq_arena_t *arena);

/*  Put a dead letter back in the queue as a fresh job: state queued,
    attempts 0, no last error, no start deadline, enqueued `now` with the
    virtual deadline of its priority. Its result goes, so STATUS shows it
    queued; its idempotency key still names it; in its batch one dead less
    (and one more pending). Errors: LLMQ_ERR_NOT_FOUND, LLMQ_ERR_STORE_FULL
    (no room this turn: nothing changed), LLMQ_ERR_STORE. */
int  llmq_store_dead_requeue (llmq_store_t *self, uint64_t id, uint64_t now);

/*  Delete a dead letter now, as the timer would when its result expires:
    result, job record, idempotency key, batch membership and counts.
    Errors: LLMQ_ERR_NOT_FOUND, LLMQ_ERR_STORE. */
int  llmq_store_dead_purge (llmq_store_t *self, uint64_t id);

/*  The same for every dead letter of `model` (NULL: all), in id order, at
    most `max` of them (0: no limit). *n says how many; *more is true when
    others are left (past `max`, or for lack of room: a requeue that finds
    no room for its first job fails with LLMQ_ERR_STORE_FULL, one that has
    done some stops there, commits them, and says *more). */
int  llmq_store_dead_requeue_all (llmq_store_t *self, const char *model, uint64_t now, size_t max,
                                  size_t *n, bool *more);
int  llmq_store_dead_purge_all (llmq_store_t *self, const char *model, size_t max, size_t *n,
                                bool *more);

/*  Route numbers. llmq_store_route creates the route if needed (in the
    current transaction). */
int  llmq_store_route (llmq_store_t *self, const char *name, uint32_t *number);
size_t llmq_store_routes (llmq_store_t *self, const llmq_route_stats_t **routes);
/*  Queued and delayed jobs per tenant ("org:NAME", "user:NAME" or "-"),
    deepest first: see llmq_depth_top. */
size_t llmq_store_tenants (llmq_store_t *self, llmq_depth_entry_t *out, size_t max, size_t *tenants,
                           uint64_t *rest);
/*  Dead letters held. */
uint64_t llmq_store_dead_count (llmq_store_t *self);
/*  Earliest not_before among delayed jobs, or 0 when none. */
uint64_t llmq_store_next_delayed (llmq_store_t *self);

/*  Usage, per (UTC day, org, user, model), written in the same
    transaction as the job's result: one request, its tokens and cost
    (micro-USD); `ok` false counts it failed too. Day = unix days. */
typedef struct {
    uint32_t day;
    const char *org, *user, *model;     /* "" for none */
    uint64_t requests, failed, prompt_tokens, completion_tokens, cost_micro;
} llmq_usage_t;
typedef void (llmq_usage_fn) (void *arg, const llmq_usage_t *u);
int  llmq_store_usage_add (llmq_store_t *self, uint32_t day, const char *org, const char *user,
                           const char *model, bool ok, uint64_t prompt_tokens,
                           uint64_t completion_tokens, uint64_t cost_micro);
/*  Every record of days [from_day, to_day], in day order (inside a
    transaction). */
int  llmq_store_usage_each (llmq_store_t *self, uint32_t from_day, uint32_t to_day,
                            llmq_usage_fn *fn, void *arg);

#endif
