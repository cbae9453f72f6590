/*  broker.c -- the broker's event loop. See broker.h for the turn model and
    docs/protocol.md for every message.

    State kept in memory, all of it rebuildable: the workers we know (by
    ZeroMQ routing id) with their credit; the running leases (job id ->
    worker, token) so a dead worker's jobs can be found; and the
    subscriptions (job id -> client) so results and chunks can be pushed.
    Everything that must survive a crash is in the store.
*/
#include "broker.h"
#include "admin.h"
#include "cache.h"
#include "clock.h"
#include "codec.h"
#include "log.h"
#include "router.h"
#include "store.h"
#include "fair.h"
#include "tenants.h"
#include "webhook.h"
#include "http.h"
#include "metrics.h"

#include <curl/curl.h>
#include <errno.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_TICK_MS        100        /* timer granularity */
#define S_TURN_MAX       4096       /* messages applied per turn at most */
#define S_TICK_BUDGET    2000       /* timer records touched per tick */
#define S_HISTORY_MAX    200        /* breaker state changes kept */

typedef struct {
    char *key;                      /* routing id as hex: the hash key */
    zframe_t *identity;
    uint64_t credit;                /* jobs it may still be sent */
    uint64_t running;               /* leases it holds */
    uint64_t last_seen_ms;          /* monotonic */
    char *host;
    uint32_t pid;
    uint64_t dispatched;            /* total, for stats */
    llmq_worker_figures_t figures;  /* its own, from its last HEARTBEAT (/metrics) */
} s_worker_t;

typedef struct {
    s_worker_t *worker;             /* NULL if its worker is gone */
    uint64_t lease;
    uint32_t chunks;                /* chunks of this attempt forwarded to a client */
    bool restart;                   /* a broken stream may start over (RESET):
                                       the job asked, and has attempts left */
    llmq_router_t *router;          /* to give the grant back */
    uint64_t grant;                 /* the router's grant for this call */
    bool granted;                   /* grant not yet ended */
    size_t dep;                     /* deployment index */
    uint64_t dispatched_us;         /* unix µs of the DISPATCH, for the time to first chunk */
    bool chunked;                   /* a CHUNK of this attempt arrived */
    bool degraded;                  /* served by the fallback group */
    bool last_attempt;              /* a failure ends the job (max attempts) */
    bool probe;                     /* a health probe: no job in the store */
    char *user, *org;               /* tenant, to book the job's cost to */
    uint64_t est_tokens;            /* what its quota admission counted */
    uint8_t cache_key[LLMQ_CACHE_KEY_LEN];  /* response cache: the request's key, */
    uint64_t cache_ttl_ms;          /* and how long to keep its answer, */
    bool cacheable;                 /* if its answer is to be cached */
} s_lease_t;

typedef struct {
    zframe_t *client;               /* routing id of the subscriber */
    bool stream;                    /* forward chunks too */
} s_sub_t;

typedef struct {
    zsock_t *sock;
    zmsg_t *msg;                    /* NULL once sent */
    bool early;                     /* may go before the turn's commit */
} s_out_t;

struct llmq_broker {
    const llmq_config_t *config;
    llmq_store_t *store;
    zsock_t *frontend;              /* ROUTER for clients */
    zsock_t *backend;               /* ROUTER for workers */
    char *frontend_ep, *backend_ep;
    zhashx_t *workers;              /* key -> s_worker_t */
    zhashx_t *leases;               /* job id -> s_lease_t */
    zhashx_t *subs;                 /* job id -> s_sub_t */
    uint64_t worker_rr;
    s_out_t *out;                   /* messages to send after the commit */
    size_t nout, outcap;
    llmq_arena_t *arena;            /* decoded messages of the current turn */
    zlistx_t *deferred;             /* s_out_t*: messages that did not fit in the store, retried next turn */
    size_t out_mark;                /* outbox size at the open savepoint */
    uint64_t next_tick_ms, next_heartbeat_ms;
    bool full;                      /* store refuses submits */
    llmq_router_t *router;          /* breakers, limits, balancing */
    llmq_tenants_t *tenants;        /* tier quotas, budgets */
    llmq_webhook_t *webhook;        /* [tenants] budget_webhook, or NULL */
    llmq_fair_t *fair;              /* fair share between tenants ([tenants] fair_share) */
    zlistx_t *event_subs;           /* zframe_t*: clients that asked for EVENTs */
    zhashx_t *avoid;                /* job id -> deployment index + 1 its last attempt failed on */
    json_t *history;                /* breaker state changes, oldest first */
    bool history_dirty;
    uint64_t wake_ms;               /* monotonic: a blocked group may be free then (0: none) */
    /* Totals since start, for stats. */
    uint64_t n_submitted, n_dispatched, n_done, n_failed, n_retried, n_cancelled, n_expired,
             n_dead, n_lost_workers, n_commits, n_bad_messages, n_restarted, n_degraded,
             n_retry_budget, n_probes, n_probe_failures, n_budget_alerts;
    uint64_t n_cache_hits, n_cache_misses, n_cache_stale;   /* response cache, since start */
    uint64_t next_probe_id;
    uint64_t commit_us;             /* total time in commits (sync included) */
    uint64_t turn_us;               /* total time in turns, commits included */
    llmq_http_t *http;              /* [broker] http, or NULL: off (run in this loop) */
    llmq_metrics_t *metrics;        /* samples for /metrics not counted above */
};

/* ------------------------------------------------------------------------
   Small helpers
   ------------------------------------------------------------------------ */

static size_t
s_u64_hash (const void *key)
{
    uint64_t x = (uint64_t) (uintptr_t) key;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t) x;
}

static int
s_u64_cmp (const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) a, y = (uintptr_t) b;
    return x < y ? -1 : x > y ? 1 : 0;
}

static zhashx_t *
s_u64_map (zhashx_destructor_fn *destructor)
{
    zhashx_t *h = zhashx_new ();
    zhashx_set_key_hasher (h, s_u64_hash);
    zhashx_set_key_comparator (h, s_u64_cmp);
    zhashx_set_key_duplicator (h, NULL);
    zhashx_set_key_destructor (h, NULL);
    zhashx_set_destructor (h, destructor);
    return h;
}

#define U64_KEY(id) ((const void *) (uintptr_t) (id))

static void
s_worker_free (void **item)
{
    s_worker_t *w = (s_worker_t *) *item;
    if (w) {
        zframe_destroy (&w->identity);
        free (w->key);
        free (w->host);
        free (w);
        *item = NULL;
    }
}

static void
s_sub_free (void **item)
{
    s_sub_t *s = (s_sub_t *) *item;
    if (s) {
        zframe_destroy (&s->client);
        free (s);
        *item = NULL;
    }
}

/*  A lease that ends without a report (cancelled, its worker gone) gives
    its grant back to the router: the call's slot is free again. */
static void
s_lease_free (void **item)
{
    s_lease_t *l = (s_lease_t *) *item;
    if (l && l->granted && l->router) {
        llmq_outcome_t o = { .error_class = LLMQ_EC_CANCELLED, .remaining_requests = -1,
                             .remaining_tokens = -1 };
        llmq_router_outcome (l->router, l->grant, &o, llmq_now_us () / 1000);
    }
    if (l) {
        free (l->user);
        free (l->org);
    }
    free (l);
    *item = NULL;
}

/*  Queue a message for `to` (a routing id) on `sock`, sent after commit. */
static void
s_send (llmq_broker_t *self, zsock_t *sock, zframe_t *to, const llmq_msg_t *m)
{
    zmsg_t *msg = llmq_msg_encode (m);
    if (!msg) {
        llmq_error ("out of memory encoding %s", llmq_cmd_name (m->cmd));
        return;
    }
    zframe_t *id = zframe_dup (to);
    zmsg_prepend (msg, &id);
    if (self->nout == self->outcap) {
        size_t cap = self->outcap ? self->outcap * 2 : 1024;
        s_out_t *v = (s_out_t *) realloc (self->out, cap * sizeof *v);
        if (!v) {
            zmsg_destroy (&msg);
            return;
        }
        self->out = v;
        self->outcap = cap;
    }
    /*  What a worker gets (DISPATCH, ABORT, HEARTBEAT) and stream chunks need
        not wait for the commit: a job a worker runs before its lease is on
        disk is at worst run again after a crash, and chunks are not stored
        anyway. Sending them first lets the workers run while we sync.
        Replies and results to clients wait: they promise durability. */
    bool early = sock == self->backend || m->cmd == LLMQ_CMD_CHUNK || m->cmd == LLMQ_CMD_RESET;
    self->out[self->nout++] = (s_out_t) { sock, msg, early };
}

/*  Before the commit: send what may go early, in order. */
static void
s_flush_early (llmq_broker_t *self)
{
    for (size_t i = 0; i < self->nout; i++) {
        if (self->out[i].early && self->out[i].msg) {
            zmsg_send (&self->out[i].msg, self->out[i].sock);
            zmsg_destroy (&self->out[i].msg);
        }
    }
}

static void
s_flush (llmq_broker_t *self)
{
    for (size_t i = 0; i < self->nout; i++) {
        if (!self->out[i].msg) {
            continue;
        }
        /* ROUTER drops messages for peers that are gone: that is fine, a
           client that comes back asks again with WAIT or STATUS. */
        zmsg_send (&self->out[i].msg, self->out[i].sock);
        zmsg_destroy (&self->out[i].msg);
    }
    self->nout = 0;
}

/*  A savepoint covers the store and the messages queued since. Used for
    every write when the store is tight (and always for SUBMIT): a write
    that does not fit is undone alone and its message retried next turn,
    after the commit has freed pages or the map has grown. */
static bool
s_save (llmq_broker_t *self, bool always)
{
    if (!always && !llmq_store_tight (self->store)) {
        return false;
    }
    if (llmq_store_save (self->store)) {
        return false;
    }
    self->out_mark = self->nout;
    return true;
}

static void
s_rollback (llmq_broker_t *self, bool saved)
{
    if (!saved) {
        return;
    }
    llmq_store_rollback (self->store);
    while (self->nout > self->out_mark) {
        zmsg_destroy (&self->out[--self->nout].msg);
    }
}

/*  Returns the store's answer to committing the savepoint (0 if none). */
static int
s_release (llmq_broker_t *self, bool saved)
{
    if (!saved) {
        return 0;
    }
    int rc = llmq_store_release (self->store);
    if (rc) {
        while (self->nout > self->out_mark) {
            zmsg_destroy (&self->out[--self->nout].msg);
        }
    }
    return rc;
}

static void
s_defer (llmq_broker_t *self, zsock_t *sock, zframe_t **from, zmsg_t **msg)
{
    zmsg_prepend (*msg, from);
    s_out_t *d = (s_out_t *) malloc (sizeof *d);
    d->sock = sock;
    d->msg = *msg;
    *msg = NULL;
    zlistx_add_end (self->deferred, d);
}

static void
s_reply_error (llmq_broker_t *self, zsock_t *sock, zframe_t *to, uint64_t corr, int cmd, int code,
               const char *reason)
{
    llmq_msg_t m = { 0 };
    m.cmd = (uint8_t) cmd;
    m.corr = corr;
    m.code = (uint32_t) code;
    m.reason = reason;
    m.index = -1;
    s_send (self, sock, to, &m);
}

static s_worker_t *s_next_worker (llmq_broker_t *self);
static size_t s_group_index (const llmq_broker_t *self, const char *name);
static uint64_t s_scan_max_tokens (const char *body, uint32_t default_max);

/*  Push a final result to the job's subscriber, if any, and forget it. */
static void
s_push_result (llmq_broker_t *self, const llmq_result_t *res)
{
    switch (res->state) {
        case LLMQ_STATE_DONE:      self->n_done++; break;
        case LLMQ_STATE_FAILED:    self->n_failed++; break;
        case LLMQ_STATE_CANCELLED: self->n_cancelled++; break;
        case LLMQ_STATE_EXPIRED:   self->n_expired++; break;
        case LLMQ_STATE_DEAD:      self->n_dead++; break;
        default: break;
    }
    s_sub_t *sub = (s_sub_t *) zhashx_lookup (self->subs, U64_KEY (res->id));
    if (sub) {
        llmq_msg_t m = { 0 };
        m.cmd = LLMQ_CMD_RESULT;
        m.results = (llmq_result_t *) res;
        m.nresults = 1;
        s_send (self, self->frontend, sub->client, &m);
        zhashx_delete (self->subs, U64_KEY (res->id));
    }
}

static void
s_on_final (void *arg, const llmq_result_t *res)
{
    s_push_result ((llmq_broker_t *) arg, res);
}

static void
s_subscribe (llmq_broker_t *self, uint64_t id, zframe_t *client, bool stream)
{
    s_sub_t *sub = (s_sub_t *) calloc (1, sizeof *sub);
    if (!sub) {
        return;
    }
    sub->client = zframe_dup (client);
    sub->stream = stream;
    zhashx_update (self->subs, U64_KEY (id), sub);
}

static bool
s_is_final (int state)
{
    return state >= LLMQ_STATE_DONE;
}

/* ------------------------------------------------------------------------
   Response cache (cache.h has the key; the store holds the entries)
   ------------------------------------------------------------------------ */

#define S_REPLAY_PIECE 64           /* bytes of a replayed chunk, about */

static uint64_t s_job_estimate (llmq_broker_t *self, const llmq_job_t *job, uint64_t *cost);

/*  What a SUBMIT's job met in the cache. */
enum { S_CACHE_NONE = 0, S_CACHE_MISS, S_CACHE_HIT, S_CACHE_STALE };

static llmq_cache_policy_t
s_cache_policy (const llmq_broker_t *self)
{
    const llmq_config_t *c = self->config;
    llmq_cache_policy_t p = { c->cache_enabled, c->cache_auto_temperature_zero, c->cache_default_ttl_ms };
    return p;
}

/*  With serve_stale, an expired entry is kept as long again as it lived. */
static uint64_t
s_cache_stale_us (const llmq_broker_t *self, uint64_t ttl_ms)
{
    return self->config->cache_serve_stale ? ttl_ms * 1000 : 0;
}

/*  Is the group down: no deployment can take a call (its fallback groups
    neither), and every one of its own has its breaker open? A group held
    back by rate limits or busy deployments is not down: its jobs wait. */
static bool
s_group_down (llmq_broker_t *self, const char *model, uint64_t now_ms)
{
    const llmq_group_t *g = llmq_config_group (self->config, model);
    size_t gi = s_group_index (self, model);
    llmq_pick_t pick;
    uint64_t until;
    if (!g || gi == SIZE_MAX || g->ndeployments == 0
    ||  llmq_router_pick (self->router, gi, 1, SIZE_MAX, now_ms, &pick, &until, NULL, 0) == 0) {
        return false;
    }
    for (size_t k = 0; k < g->ndeployments; k++) {
        const llmq_deployment_t *d = llmq_config_deployment (self->config, g->deployments[k]);
        llmq_dep_view_t v;
        if (!d) {
            return false;
        }
        llmq_router_view (self->router, (size_t) (d - self->config->deployments), now_ms, &v);
        if (v.breaker != LLMQ_BREAKER_OPEN) {
            return false;
        }
    }
    return true;
}

/*  The cache's answers to a SUBMIT's jobs: answers[i] for a hit (a live
    entry, or with serve_stale an expired one when the group is down, then
    marked degraded), kind[i] what the job met. Returns the hits. */
static size_t
s_cache_lookup (llmq_broker_t *self, const llmq_msg_t *m, uint64_t now, const llmq_result_t **answers,
                uint8_t *kind)
{
    llmq_cache_policy_t policy = s_cache_policy (self);
    size_t hits = 0;
    for (size_t i = 0; i < m->njobs; i++) {
        answers[i] = NULL;
        kind[i] = S_CACHE_NONE;
        uint8_t key[LLMQ_CACHE_KEY_LEN];
        uint64_t ttl_ms;
        if (!llmq_cache_candidate (&policy, &m->jobs[i], key, &ttl_ms)) {
            continue;
        }
        kind[i] = S_CACHE_MISS;
        llmq_result_t *r = (llmq_result_t *) llmq_arena_alloc (self->arena, sizeof *r);
        if (!r) {
            continue;
        }
        int rc = llmq_store_cache_get (self->store, key, now, r, NULL, self->arena);
        if (rc == 0) {
            kind[i] = S_CACHE_HIT;
        }
        else
        if (rc == LLMQ_ERR_EXPIRED && self->config->cache_serve_stale
        &&  s_group_down (self, m->jobs[i].model, now / 1000)) {
            r->degraded = true;         /* an old answer, for want of a live one */
            kind[i] = S_CACHE_STALE;
        }
        if (kind[i] != S_CACHE_MISS) {
            answers[i] = r;
            hits++;
        }
    }
    return hits;
}

typedef struct {
    llmq_broker_t *self;
    zframe_t *client;
    uint64_t id;
} s_replay_t;

/*  One piece of a cached answer as a CHUNK. Unlike a worker's chunks it
    waits for the commit, with the job's ACCEPTED and RESULT: the client
    learns the job's id first. */
static void
s_replay_piece (void *arg, uint32_t seq, const char *piece, size_t len)
{
    s_replay_t *r = (s_replay_t *) arg;
    char *text = (char *) llmq_arena_alloc (r->self->arena, len + 1);
    if (!text) {
        return;
    }
    memcpy (text, piece, len);
    text[len] = 0;
    llmq_msg_t c = { 0 };
    c.cmd = LLMQ_CMD_CHUNK;
    c.id = r->id;
    c.seq = seq;
    c.text = text;
    size_t before = r->self->nout;
    s_send (r->self, r->self->frontend, r->client, &c);
    if (r->self->nout > before) {
        r->self->out[r->self->nout - 1].early = false;
    }
}

/*  After the ACCEPTED of a SUBMIT with hits: each hit's tenant books
    nothing, and with notify its subscriber gets the answer replayed as
    chunks (streamed jobs) and its RESULT, all after the commit. */
static void
s_cache_answer (llmq_broker_t *self, zframe_t *from, const llmq_msg_t *m, const llmq_result_t *const *answers,
                const uint8_t *dups, const uint8_t *kind, llmq_result_t *finals, uint64_t now)
{
    for (size_t i = 0; i < m->njobs; i++) {
        if (kind[i] == S_CACHE_NONE || dups[i]) {
            continue;
        }
        if (!answers[i]) {
            self->n_cache_misses++;
            continue;
        }
        self->n_cache_hits++;
        self->n_cache_stale += kind[i] == S_CACHE_STALE;
        const llmq_job_t *job = &m->jobs[i];
        const char *user = job->user && *job->user ? job->user : NULL;
        const char *org = job->org && *job->org ? job->org : NULL;
        if (user || org) {
            uint64_t cost;
            llmq_tenants_settle (self->tenants, user, org, s_job_estimate (self, job, &cost), 0, 0, now / 1000);
        }
        /*  In the usage report: a request, no tokens, no cost. */
        if (llmq_store_usage_add (self->store, (uint32_t) (now / 86400000000ull), org, user, job->model, true,
                                  0, 0, 0) != 0) {
            llmq_warn ("job %llu: usage not recorded", (unsigned long long) job->id);
        }
        if (m->notify) {
            s_subscribe (self, job->id, from, job->stream);
            if (job->stream) {
                s_replay_t r = { self, from, job->id };
                llmq_cache_split (finals[i].content, S_REPLAY_PIECE, s_replay_piece, &r);
            }
        }
        s_push_result (self, &finals[i]);
    }
}

/*  At dispatch: is the job's answer to be cached when it comes? Its key
    and TTL go in the lease (the DONE does not carry the body). Answers of
    a fallback group are not cached under the group's key. */
static void
s_cache_lease (llmq_broker_t *self, const llmq_job_t *job, s_lease_t *l)
{
    llmq_cache_policy_t policy = s_cache_policy (self);
    l->cacheable = !l->degraded && llmq_cache_candidate (&policy, job, l->cache_key, &l->cache_ttl_ms);
}

/*  A cacheable job ended done: its answer goes in the cache. Not caching
    (no room this turn, an answer over the whole bound) only costs a hit. */
static void
s_cache_fill (llmq_broker_t *self, const s_lease_t *l, const llmq_result_t *final, uint64_t now)
{
    size_t evicted = 0;
    int rc = llmq_store_cache_put (self->store, l->cache_key, l->cache_ttl_ms * 1000,
                                   s_cache_stale_us (self, l->cache_ttl_ms), final, now, &evicted);
    if (rc) {
        llmq_debug ("job %llu: answer not cached: %s", (unsigned long long) final->id, llmq_strerror (rc));
    }
}

/* ------------------------------------------------------------------------
   Clients
   ------------------------------------------------------------------------ */

/*  A SUBMIT refused for want of room: with a hint of when to try again
    (results expire, workers finish jobs). */
#define S_FULL_RETRY_MS 5000

static void
s_reply_full (llmq_broker_t *self, zframe_t *from, uint64_t corr)
{
    llmq_msg_t m = { 0 };
    m.cmd = LLMQ_CMD_REJECTED;
    m.corr = corr;
    m.code = LLMQ_ERR_STORE_FULL;
    m.reason = "broker store is full: new jobs are refused until results expire or its size limit is raised";
    m.retry_after_ms = S_FULL_RETRY_MS;
    m.index = -1;
    s_send (self, self->frontend, from, &m);
}

/*  The token estimate a job's quota counts (prompt bytes / 4 + its answer
    limit) and the most it may cost among its group's deployments. */
static uint64_t
s_job_estimate (llmq_broker_t *self, const llmq_job_t *job, uint64_t *cost)
{
    const llmq_group_t *g = llmq_config_group (self->config, job->model);
    uint64_t prompt = strlen (job->body) / 4, answer = 256;
    double price = 0;
    for (size_t k = 0; g && k < g->ndeployments; k++) {
        const llmq_deployment_t *d = llmq_config_deployment (self->config, g->deployments[k]);
        uint64_t max = s_scan_max_tokens (job->body, d ? d->max_tokens : 0);
        double c = d ? (double) prompt * d->price_input + (double) max * d->price_output : 0;
        answer = k == 0 || max > answer ? max : answer;
        price = c > price ? c : price;
    }
    *cost = (uint64_t) (price + 0.5);           /* µUSD: tokens x USD per 1M tokens */
    return prompt + answer;
}

/*  Give back the quota counted for jobs [0, n) of a SUBMIT (only those with
    dups[i] set, if dups is given). */
static void
s_unadmit (llmq_broker_t *self, const llmq_msg_t *m, size_t n, const uint8_t *dups, uint64_t now)
{
    for (size_t i = 0; i < n; i++) {
        const llmq_job_t *job = &m->jobs[i];
        if ((dups && !dups[i]) || !job->user || !*job->user) {
            continue;
        }
        uint64_t cost;
        llmq_tenants_unadmit (self->tenants, job->user, job->stream, s_job_estimate (self, job, &cost),
                              now / 1000);
    }
}

/*  Tier quotas and budgets: all the jobs of a SUBMIT, or none (then the
    REJECTED names the job, the code and when to try again). */
static bool
s_admit_all (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m, uint64_t now)
{
    for (size_t i = 0; i < m->njobs; i++) {
        const llmq_job_t *job = &m->jobs[i];
        if ((!job->user || !*job->user) && (!job->org || !*job->org)) {
            continue;
        }
        uint64_t cost, retry = 0;
        uint64_t tokens = s_job_estimate (self, job, &cost);
        char why[400];
        int rc = llmq_tenants_admit (self->tenants, job->user, job->org, job->stream, tokens, (int64_t) cost,
                                     now / 1000, &retry, why, sizeof why);
        if (rc) {
            s_unadmit (self, m, i, NULL, now);
            llmq_msg_t r = { 0 };
            r.cmd = LLMQ_CMD_REJECTED;
            r.corr = m->corr;
            r.code = (uint32_t) rc;
            r.reason = why;
            r.index = (int64_t) i;
            r.retry_after_ms = retry;
            s_send (self, self->frontend, from, &r);
            return false;
        }
    }
    return true;
}

/*  A tenant's fair-share weight: its org's, else its user's tier's. */
static uint32_t
s_tenant_weight (const llmq_config_t *c, const llmq_job_t *job)
{
    for (size_t i = 0; job->org && i < c->norgs; i++) {
        if (strcmp (c->orgs[i].name, job->org) == 0) {
            return c->orgs[i].weight;
        }
    }
    const char *tier = c->default_tier ? c->default_tier : "free";
    for (size_t i = 0; job->user && i < c->nusers; i++) {
        if (strcmp (c->users[i].name, job->user) == 0 && c->users[i].tier) {
            tier = c->users[i].tier;
        }
    }
    const llmq_cfg_tier_t *t = llmq_config_tier (c, tier);
    return t && t->weight ? t->weight : 1;
}

/*  Where each job goes in its group's queue. A client cannot choose
    (the field is cleared); jobs of a tenant (an org, else a user) get a
    fair-share tag (fair.h), others their enqueue time, plus the priority's
    offset either way. */
static void
s_fair_place (llmq_broker_t *self, llmq_msg_t *m, uint64_t now)
{
    const llmq_route_stats_t *rs = NULL;
    size_t nr = 0;
    for (size_t i = 0; i < m->njobs; i++) {
        llmq_job_t *job = &m->jobs[i];
        job->vdeadline_us = 0;
        if (!self->fair || !((job->org && *job->org) || (job->user && *job->user))) {
            continue;
        }
        uint32_t route;
        if (llmq_store_route (self->store, job->model, &route) != 0) {
            continue;
        }
        if (!rs) {
            nr = llmq_store_routes (self->store, &rs);
        }
        int prio = job->priority % LLMQ_NPRIO;
        bool idle = true;
        for (size_t r = 0; r < nr; r++) {
            if (rs[r].number == route) {
                idle = rs[r].ready[prio] == 0;
            }
        }
        char tenant[300];
        llmq_depth_tenant (tenant, sizeof tenant, job->user, job->org);
        uint64_t tag = llmq_fair_tag (self->fair, route, prio, tenant, s_tenant_weight (self->config, job),
                                      now, idle);
        job->vdeadline_us = tag + self->config->prio_offset_ms[prio] * 1000;
    }
}

/*  Returns true if the message must be retried next turn. */
static bool
s_client_submit (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m, uint64_t now)
{
    for (size_t i = 0; i < m->njobs; i++) {
        llmq_job_t *job = &m->jobs[i];
        char why[300];
        const char *bad = NULL;
        int code = LLMQ_ERR_INVALID;
        if (!job->model || !*job->model) {
            bad = "job has no model";
        }
        else if (!llmq_config_group (self->config, job->model)) {
            snprintf (why, sizeof why, "unknown model group '%.200s'", job->model);
            bad = why;
            code = LLMQ_ERR_UNKNOWN_MODEL;
        }
        else if (!job->body || job->body[0] != '{') {
            bad = "job body must be a JSON object (chat.completions request)";
        }
        else if (job->deadline_us && job->deadline_us <= now) {
            bad = "deadline is already past";
        }
        if (bad) {
            llmq_msg_t r = { 0 };
            r.cmd = LLMQ_CMD_REJECTED;
            r.corr = m->corr;
            r.code = (uint32_t) code;
            r.reason = bad;
            r.index = (int64_t) i;
            s_send (self, self->frontend, from, &r);
            return false;
        }
    }
    if (self->full) {
        s_reply_full (self, from, m->corr);
        return false;
    }
    if (!s_admit_all (self, from, m, now)) {
        return false;               /* over a quota or a budget: refused */
    }
    s_fair_place (self, m, now);
    uint64_t *ids = (uint64_t *) llmq_arena_alloc (self->arena, m->njobs * sizeof *ids);
    uint8_t *dups = (uint8_t *) llmq_arena_alloc (self->arena, m->njobs);
    /*  Response cache: a hit is stored finished at once, never queued. */
    const llmq_result_t **answers = (const llmq_result_t **) llmq_arena_alloc (self->arena,
                                                                               m->njobs * sizeof *answers);
    uint8_t *kind = (uint8_t *) llmq_arena_alloc (self->arena, m->njobs);
    llmq_result_t *finals = NULL;
    size_t nhits = answers && kind ? s_cache_lookup (self, m, now, answers, kind) : 0;
    if (nhits) {
        finals = (llmq_result_t *) llmq_arena_alloc (self->arena, m->njobs * sizeof *finals);
        if (!finals) {
            memset (answers, 0, m->njobs * sizeof *answers);    /* out of memory: all run */
            nhits = 0;
        }
    }
    int rc = nhits ? llmq_store_submit_cached (self->store, m->jobs, m->njobs, now, dups, answers, finals)
                   : llmq_store_submit_all (self->store, m->jobs, m->njobs, now, dups);
    if (rc) {
        s_unadmit (self, m, m->njobs, NULL, now);
    }
    if (rc == LLMQ_ERR_STORE_FULL && llmq_store_can_grow (self->store)) {
        llmq_store_want_grow (self->store);
        return true;                /* retried after the map has grown */
    }
    if (rc == LLMQ_ERR_STORE_FULL) {
        s_reply_full (self, from, m->corr);
        return false;
    }
    if (rc) {
        s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REJECTED, rc, "broker store error");
        return false;
    }
    s_unadmit (self, m, m->njobs, dups, now);     /* a known idempotency key runs nothing new */
    bool any_dup = false;
    for (size_t i = 0; i < m->njobs; i++) {
        llmq_job_t *job = &m->jobs[i];
        ids[i] = job->id;
        any_dup |= dups[i];
        if (!dups[i]) {
            self->n_submitted++;
        }
        if (m->notify && !(nhits && answers[i] && !dups[i])) {     /* hits: s_cache_answer */
            if (dups[i]) {
                llmq_result_t res;
                if (llmq_store_status (self->store, job->id, &res, self->arena) == 0 && s_is_final (res.state)) {
                    llmq_msg_t r = { 0 };
                    r.cmd = LLMQ_CMD_RESULT;
                    r.results = &res;
                    r.nresults = 1;
                    s_send (self, self->frontend, from, &r);
                    continue;
                }
            }
            s_subscribe (self, job->id, from, job->stream);
        }
    }
    llmq_msg_t r = { 0 };
    r.cmd = LLMQ_CMD_ACCEPTED;
    r.corr = m->corr;
    r.ids = ids;
    r.nids = m->njobs;
    r.dups = any_dup ? dups : NULL;
    s_send (self, self->frontend, from, &r);
    if (answers && kind) {
        s_cache_answer (self, from, m, answers, dups, kind, finals, now);   /* hits, misses counted */
    }
    return false;
}

/*  Cancel job `id` (CANCEL, admin op streams.cancel): a running job's
    worker is sent ABORT and its lease dropped; subscribers get the final
    result. Returns 0 or an llmq_err (STATE: already final, NOT_FOUND). */
static int
s_cancel_job (llmq_broker_t *self, uint64_t id, uint64_t now)
{
    int was = 0;
    uint64_t lease = 0;
    llmq_result_t final;
    int rc = llmq_store_cancel (self->store, id, now, &was, &lease, &final, self->arena);
    if (rc == 0) {
        if (was == LLMQ_STATE_RUNNING) {
            s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, U64_KEY (id));
            if (l && l->worker) {
                llmq_msg_t a = { 0 };
                a.cmd = LLMQ_CMD_ABORT;
                a.id = id;
                a.lease = lease;
                s_send (self, self->backend, l->worker->identity, &a);
                l->worker->running--;
            }
            zhashx_delete (self->leases, U64_KEY (id));
        }
        s_push_result (self, &final);
    }
    return rc;
}

static void
s_client_cancel (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m, uint64_t now)
{
    int rc = s_cancel_job (self, m->id, now);
    const char *reason = rc == 0 ? "cancelled"
                       : rc == LLMQ_ERR_STATE ? "job already finished"
                       : rc == LLMQ_ERR_NOT_FOUND ? "no such job" : "store error";
    s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REPLY, rc, reason);
}

static void
s_client_status (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m)
{
    llmq_result_t res;
    int rc = llmq_store_status (self->store, m->id, &res, self->arena);
    if (rc) {
        s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REJECTED, rc,
                       rc == LLMQ_ERR_NOT_FOUND ? "no such job (or its result expired)" : "store error");
        return;
    }
    if (res.state == LLMQ_STATE_QUEUED && res.model) {
        /*  Why is it waiting? No capacity now is not a failure: say what
            holds the group back, and until when. */
        size_t gi = s_group_index (self, res.model);
        llmq_pick_t pick;
        uint64_t until;
        char why[512];
        const char *reason = NULL;
        if (gi == SIZE_MAX) {
            reason = "waiting: its model group is not in the broker's config";
        }
        else
        if (llmq_router_pick (self->router, gi, 1, SIZE_MAX, llmq_now_us () / 1000, &pick, &until,
                              why, sizeof why) != 0) {
            reason = why;
        }
        else
        if (!s_next_worker (self)) {
            reason = zhashx_size (self->workers) ? "all workers busy" : "no worker connected";
        }
        if (reason) {
            size_t len = strlen (reason) + 16;
            char *text = (char *) llmq_arena_alloc (self->arena, len);
            if (text) {
                snprintf (text, len, "%s%s", strncmp (reason, "waiting", 7) ? "waiting: " : "", reason);
                res.error = text;
            }
        }
    }
    llmq_msg_t r = { 0 };
    r.cmd = LLMQ_CMD_RESULT;
    r.corr = m->corr;
    r.results = &res;
    r.nresults = 1;
    s_send (self, self->frontend, from, &r);
}

static json_t *s_ops_admin (llmq_broker_t *self, const json_t *req, uint64_t now, bool *handled, int *code,
                            char *why, size_t whylen);

/*  ADMIN: one operation of admin.c, JSON in and out. */
static void
s_client_admin (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m, uint64_t now)
{
    json_error_t jerr;
    json_t *req = json_loads (m->json, 0, &jerr);
    char why[512] = "";
    int code = 0;
    json_t *rep = NULL;
    const char *op = json_string_value (json_object_get (req, "op"));
    if (!json_is_object (req)) {
        code = LLMQ_ERR_INVALID;
        snprintf (why, sizeof why, "admin request is not a JSON object");
    }
    else
    if (op && strcmp (op, "events.subscribe") == 0) {
        /*  This client (its routing id) gets every EVENT from now on, as
            long as the broker runs; at most 256 subscribers, the oldest
            dropped first. */
        bool known = false;
        for (zframe_t *sub = (zframe_t *) zlistx_first (self->event_subs); sub;
             sub = (zframe_t *) zlistx_next (self->event_subs)) {
            known |= zframe_eq (sub, from);
        }
        if (!known) {
            if (zlistx_size (self->event_subs) >= 256 && zlistx_first (self->event_subs)) {
                zlistx_delete (self->event_subs, zlistx_cursor (self->event_subs));
            }
            zlistx_add_end (self->event_subs, zframe_dup (from));
        }
        rep = json_pack ("{s:b, s:I}", "subscribed", 1, "subscribers", (json_int_t) zlistx_size (self->event_subs));
    }
    else {
        bool handled = false;
        rep = s_ops_admin (self, req, now, &handled, &code, why, sizeof why);
        if (!handled) {
            llmq_admin_t ctx = { self->store, self->router, self->config, self->arena, now,
                                 NULL, NULL, self->history, self->tenants };
            rep = llmq_admin_run (&ctx, req, &code, why, sizeof why);
        }
    }
    json_decref (req);
    char *text = rep ? json_dumps (rep, JSON_COMPACT) : NULL;
    json_decref (rep);
    if (!text) {
        s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REJECTED,
                       code ? code : LLMQ_ERR_NOMEM, why[0] ? why : "out of memory");
        return;
    }
    llmq_msg_t r = { 0 };
    r.cmd = LLMQ_CMD_ADMIN_REP;
    r.corr = m->corr;
    r.json = text;
    s_send (self, self->frontend, from, &r);
    free (text);
}

static void
s_client_wait (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m)
{
    for (size_t i = 0; i < m->nids; i++) {
        llmq_result_t res;
        int rc = llmq_store_status (self->store, m->ids[i], &res, self->arena);
        if (rc) {
            llmq_msg_t r = { 0 };
            r.cmd = LLMQ_CMD_REJECTED;
            r.corr = m->corr;
            r.id = m->ids[i];
            r.code = (uint32_t) rc;
            r.reason = "no such job (or its result expired)";
            r.index = (int64_t) i;
            s_send (self, self->frontend, from, &r);
        }
        else if (s_is_final (res.state)) {
            llmq_msg_t r = { 0 };
            r.cmd = LLMQ_CMD_RESULT;
            r.results = &res;
            r.nresults = 1;
            s_send (self, self->frontend, from, &r);
        }
        else {
            s_subscribe (self, m->ids[i], from, true);
        }
    }
}

static void
s_client_fetch (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m)
{
    llmq_result_t *results = NULL;
    size_t n = 0;
    uint64_t next = 0;
    bool more = false;
    llmq_batch_counts_t c;
    int rc = llmq_store_fetch (self->store, m->batch_id, m->after, m->limit, &results, &n, &next, &more, &c,
                               self->arena);
    if (rc) {
        s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REJECTED, rc,
                       rc == LLMQ_ERR_NOT_FOUND ? "no such batch (or its results expired)" : "store error");
        return;
    }
    char json[400];
    uint64_t final = c.done + c.failed + c.cancelled + c.expired + c.dead;
    snprintf (json, sizeof json,
              "{\"total\":%llu,\"done\":%llu,\"failed\":%llu,\"cancelled\":%llu,\"expired\":%llu,"
              "\"dead\":%llu,\"pending\":%llu}",
              (unsigned long long) c.total, (unsigned long long) c.done, (unsigned long long) c.failed,
              (unsigned long long) c.cancelled, (unsigned long long) c.expired, (unsigned long long) c.dead,
              (unsigned long long) (c.total > final ? c.total - final : 0));
    llmq_msg_t r = { 0 };
    r.cmd = LLMQ_CMD_RESULTS;
    r.corr = m->corr;
    r.results = results;
    r.nresults = n;
    r.after = next;
    r.more = more;
    r.json = json;
    s_send (self, self->frontend, from, &r);
}

/*  The STATS reply's JSON (also the HTTP admin views'). */
static json_t *
s_stats_json (llmq_broker_t *self)
{
    static const char *prio[] = { "urgent", "high", "normal", "low" };
    json_t *root = json_object ();
    json_t *routes = json_object ();
    const llmq_route_stats_t *rs;
    size_t nr = llmq_store_routes (self->store, &rs);
    uint64_t queued = 0, delayed = 0, running = 0;
    uint64_t by_prio[LLMQ_NPRIO] = { 0 };
    for (size_t i = 0; i < nr; i++) {
        json_t *r = json_object ();
        for (int p = 0; p < LLMQ_NPRIO; p++) {
            json_object_set_new (r, prio[p], json_integer ((json_int_t) rs[i].ready[p]));
            queued += rs[i].ready[p];
            by_prio[p] += rs[i].ready[p];
        }
        json_object_set_new (r, "delayed", json_integer ((json_int_t) rs[i].delayed));
        json_object_set_new (r, "running", json_integer ((json_int_t) rs[i].running));
        delayed += rs[i].delayed;
        running += rs[i].running;
        json_object_set_new (routes, rs[i].name, r);
    }
    json_t *pj = json_object ();
    for (int p = 0; p < LLMQ_NPRIO; p++) {
        json_object_set_new (pj, prio[p], json_integer ((json_int_t) by_prio[p]));
    }
    json_object_set_new (root, "queued", json_integer ((json_int_t) queued));
    json_object_set_new (root, "queued_by_priority", pj);
    json_object_set_new (root, "delayed", json_integer ((json_int_t) delayed));
    json_object_set_new (root, "in_flight", json_integer ((json_int_t) running));
    json_object_set_new (root, "routes", routes);
    json_t *workers = json_array ();
    uint64_t now_ms = llmq_mono_ms (), slots_free = 0;
    for (s_worker_t *w = (s_worker_t *) zhashx_first (self->workers); w; w = (s_worker_t *) zhashx_next (self->workers)) {
        json_t *wj = json_object ();
        json_object_set_new (wj, "id", json_string (w->key));
        json_object_set_new (wj, "host", json_string (w->host ? w->host : ""));
        json_object_set_new (wj, "pid", json_integer (w->pid));
        json_object_set_new (wj, "credit", json_integer ((json_int_t) w->credit));
        json_object_set_new (wj, "slots", json_integer ((json_int_t) (w->figures.known ? w->figures.slots : 0)));
        json_object_set_new (wj, "in_flight", json_integer ((json_int_t) w->running));
        json_object_set_new (wj, "dispatched", json_integer ((json_int_t) w->dispatched));
        json_object_set_new (wj, "last_seen_ms", json_integer ((json_int_t) (now_ms - w->last_seen_ms)));
        json_array_append_new (workers, wj);
        slots_free += w->credit;
    }
    json_object_set_new (root, "workers", workers);
    json_object_set_new (root, "worker_count", json_integer ((json_int_t) zhashx_size (self->workers)));
    json_object_set_new (root, "free_slots", json_integer ((json_int_t) slots_free));
    json_t *t = json_object ();
    json_object_set_new (t, "submitted", json_integer ((json_int_t) self->n_submitted));
    json_object_set_new (t, "dispatched", json_integer ((json_int_t) self->n_dispatched));
    json_object_set_new (t, "done", json_integer ((json_int_t) self->n_done));
    json_object_set_new (t, "failed", json_integer ((json_int_t) self->n_failed));
    json_object_set_new (t, "retried", json_integer ((json_int_t) self->n_retried));
    json_object_set_new (t, "restarted", json_integer ((json_int_t) self->n_restarted));
    json_object_set_new (t, "degraded", json_integer ((json_int_t) self->n_degraded));
    json_object_set_new (t, "probes", json_integer ((json_int_t) self->n_probes));
    uint64_t quota_refused, budget_refused, alerts;
    llmq_tenants_totals (self->tenants, &quota_refused, &budget_refused, &alerts);
    json_object_set_new (t, "quota_refused", json_integer ((json_int_t) quota_refused));
    json_object_set_new (t, "budget_refused", json_integer ((json_int_t) budget_refused));
    json_object_set_new (t, "budget_alerts", json_integer ((json_int_t) alerts));
    if (self->webhook) {
        uint64_t sent, failed, dropped, retried;
        llmq_webhook_stats (self->webhook, &sent, &failed, &dropped, &retried);
        json_object_set_new (root, "webhook", json_pack ("{s:I, s:I, s:I, s:I}", "sent", (json_int_t) sent,
                                                         "failed", (json_int_t) failed,
                                                         "dropped", (json_int_t) dropped,
                                                         "retried", (json_int_t) retried));
    }
    json_object_set_new (t, "probe_failures", json_integer ((json_int_t) self->n_probe_failures));
    json_object_set_new (t, "retry_budget_refused", json_integer ((json_int_t) self->n_retry_budget));
    json_object_set_new (t, "cancelled", json_integer ((json_int_t) self->n_cancelled));
    json_object_set_new (t, "expired", json_integer ((json_int_t) self->n_expired));
    json_object_set_new (t, "dead", json_integer ((json_int_t) self->n_dead));
    json_object_set_new (t, "lost_workers", json_integer ((json_int_t) self->n_lost_workers));
    json_object_set_new (t, "commits", json_integer ((json_int_t) self->n_commits));
    json_object_set_new (t, "bad_messages", json_integer ((json_int_t) self->n_bad_messages));
    json_object_set_new (t, "commit_us", json_integer ((json_int_t) self->commit_us));
    json_object_set_new (t, "turn_us", json_integer ((json_int_t) self->turn_us));
    json_object_set_new (root, "totals", t);
    json_t *deps = json_object ();
    uint64_t unix_ms = llmq_now_us () / 1000;
    for (size_t i = 0; i < self->config->ndeployments; i++) {
        llmq_dep_view_t v;
        llmq_router_view (self->router, i, unix_ms, &v);
        json_object_set_new (deps, self->config->deployments[i].name, json_pack (
            "{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
            "breaker", llmq_breaker_state_name (v.breaker),
            "open_until_ms", (json_int_t) v.open_until_ms,
            "paused_until_ms", (json_int_t) v.paused_until_ms,
            "in_flight", (json_int_t) v.in_flight,
            "window_requests", (json_int_t) v.window_requests,
            "window_tokens", (json_int_t) v.window_tokens,
            "breaker_window_calls", (json_int_t) v.window_calls,
            "breaker_window_failures", (json_int_t) v.window_failures,
            "calls", (json_int_t) v.calls,
            "failures", (json_int_t) v.failures,
            "retries", (json_int_t) v.retries,
            "retries_refused", (json_int_t) v.retries_refused,
            "probes", (json_int_t) v.probes,
            "latency_ewma_ms", (json_int_t) v.latency_ewma_ms,
            "p50_ms", (json_int_t) v.p50_ms,
            "p95_ms", (json_int_t) v.p95_ms,
            "timeout_ms", (json_int_t) v.timeout_ms));
    }
    json_object_set_new (root, "deployments", deps);
    uint64_t used, size, max;
    llmq_store_space (self->store, &used, &size, &max);
    json_t *st = json_object ();
    json_object_set_new (st, "used_bytes", json_integer ((json_int_t) used));
    json_object_set_new (st, "map_bytes", json_integer ((json_int_t) size));
    json_object_set_new (st, "max_bytes", json_integer ((json_int_t) max));
    json_object_set_new (st, "full", json_boolean (self->full));
    json_object_set_new (root, "store", st);
    llmq_store_cache_stats_t cs;
    llmq_store_cache_stats (self->store, &cs);
    uint64_t lookups = self->n_cache_hits + self->n_cache_misses;
    json_object_set_new (root, "cache", json_pack ("{s:I, s:I, s:f, s:I, s:I, s:I, s:I}",
        "hits", (json_int_t) self->n_cache_hits, "misses", (json_int_t) self->n_cache_misses,
        "hit_rate", lookups ? (double) self->n_cache_hits / (double) lookups : 0.0,
        "entries", (json_int_t) cs.entries, "bytes", (json_int_t) cs.bytes,
        "evictions", (json_int_t) cs.evictions, "stale_served", (json_int_t) self->n_cache_stale));
    return root;
}

/*  What queue.show adds to the STATS view's queue figures: the age of
    each route's head, the dead letters held, and the queued jobs per
    tenant (the deepest LLMQ_ADMIN_TENANTS; the others summed). */
#define LLMQ_ADMIN_TENANTS 100

static int
s_queue_more (llmq_broker_t *self, json_t *rep, uint64_t now)
{
    json_t *routes = json_object_get (rep, "routes");
    const llmq_route_stats_t *rs;
    size_t nr = llmq_store_routes (self->store, &rs);
    for (size_t i = 0; i < nr; i++) {
        json_t *r = json_object_get (routes, rs[i].name);
        uint64_t enq = 0;
        double age = llmq_store_head_enqueued (self->store, rs[i].number, &enq) == 0 && now > enq
                   ? (double) (now - enq) / 1e6 : 0.0;
        if (r && json_object_set_new (r, "oldest_age_s", json_real (age)) != 0) {
            return -1;
        }
    }
    llmq_depth_entry_t top[LLMQ_ADMIN_TENANTS];
    size_t ntenants;
    uint64_t rest;
    size_t n = llmq_store_tenants (self->store, top, LLMQ_ADMIN_TENANTS, &ntenants, &rest);
    json_t *list = json_array ();
    for (size_t i = 0; list && i < n; i++) {
        if (json_array_append_new (list, json_pack ("{s:s, s:I}", "tenant", top[i].tenant,
                                                    "queued", (json_int_t) top[i].queued)) != 0) {
            json_decref (list);
            list = NULL;
        }
    }
    if (!list || json_object_set_new (rep, "tenants", list) != 0) {
        return -1;
    }
    return json_object_set_new (rep, "tenant_count", json_integer ((json_int_t) ntenants))
         | json_object_set_new (rep, "tenants_other_queued", json_integer ((json_int_t) rest))
         | json_object_set_new (rep, "dead", json_integer ((json_int_t) llmq_store_dead_count (self->store)));
}

/*  limits.show: each deployment's fleet-wide limits (0: none) next to
    what its current window holds; `only` one deployment, or SIZE_MAX. */
static json_t *
s_limits_json (llmq_broker_t *self, size_t only)
{
    json_t *deps = json_object ();
    uint64_t unix_ms = llmq_now_us () / 1000;
    for (size_t i = 0; deps && i < self->config->ndeployments; i++) {
        if (only != SIZE_MAX && i != only) {
            continue;
        }
        const llmq_deployment_t *d = &self->config->deployments[i];
        llmq_dep_view_t v;
        llmq_router_view (self->router, i, unix_ms, &v);
        json_t *e = json_pack ("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}",
            "rpm", (json_int_t) d->rpm,
            "tpm", (json_int_t) d->tpm,
            "rate_window_ms", (json_int_t) d->rate_window_ms,
            "max_concurrent", (json_int_t) d->max_concurrent,
            "window_requests", (json_int_t) v.window_requests,
            "window_tokens", (json_int_t) v.window_tokens,
            "in_flight", (json_int_t) v.in_flight,
            "paused_until_ms", (json_int_t) (v.paused_until_ms > unix_ms ? v.paused_until_ms : 0),
            "full", (d->rpm && v.window_requests >= d->rpm) || (d->tpm && v.window_tokens >= d->tpm)
                    || (d->max_concurrent && v.in_flight >= d->max_concurrent) || v.paused_until_ms > unix_ms);
        if (!e || json_object_set_new (deps, d->name, e) != 0) {
            json_decref (deps);
            return NULL;
        }
    }
    return deps ? json_pack ("{s:o}", "deployments", deps) : NULL;
}

/*  The admin ops that need the broker's own state (leases, subscribers,
    workers, the STATS view), which admin.c cannot see: "streams.list",
    "streams.cancel", "breakers.list", "limits.show", "workers.list",
    "queue.show". Sets
    *handled false (and returns NULL) for any other op; otherwise returns
    the answer, or NULL with *code and `why` set. */
static json_t *
s_ops_admin (llmq_broker_t *self, const json_t *req, uint64_t now, bool *handled, int *code, char *why,
             size_t whylen)
{
    static const struct {
        const char *op;
        const char *keys[6];
    } views[] = {
        { "breakers.list", { "deployments", NULL } },
        { "workers.list",  { "workers", "worker_count", "free_slots", NULL } },
        { "queue.show",    { "queued", "queued_by_priority", "delayed", "in_flight", "routes", NULL } },
    };
    const char *op = json_string_value (json_object_get (req, "op"));
    *handled = true;
    json_t *rep = NULL;
    if (!op) {
        *handled = false;
        return NULL;
    }
    /*  One deployment for breakers.list and limits.show with a
        "deployment" field; unknown names are NOT_FOUND. */
    const char *want = json_string_value (json_object_get (req, "deployment"));
    size_t want_dep = SIZE_MAX;
    if (want && (strcmp (op, "breakers.list") == 0 || strcmp (op, "limits.show") == 0)) {
        for (size_t i = 0; i < self->config->ndeployments; i++) {
            if (strcmp (self->config->deployments[i].name, want) == 0) {
                want_dep = i;
            }
        }
        if (want_dep == SIZE_MAX) {
            *code = LLMQ_ERR_NOT_FOUND;
            snprintf (why, whylen, "no deployment '%s'", want);
            return NULL;
        }
    }
    if (strcmp (op, "limits.show") == 0) {
        rep = s_limits_json (self, want_dep);
        goto done;
    }
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        if (strcmp (op, views[i].op) == 0) {
            json_t *root = s_stats_json (self);
            rep = root ? json_object () : NULL;
            for (size_t k = 0; rep && views[i].keys[k]; k++) {
                json_object_set (rep, views[i].keys[k], json_object_get (root, views[i].keys[k]));
            }
            json_decref (root);
            if (rep && want_dep != SIZE_MAX) {
                /*  breakers.list of one deployment: only its entry. */
                json_t *deps = json_object_get (rep, "deployments");
                json_t *one = json_object ();
                const char *name = self->config->deployments[want_dep].name;
                json_object_set (one, name, json_object_get (deps, name));
                json_object_set_new (rep, "deployments", one);
            }
            if (rep && strcmp (op, "queue.show") == 0 && s_queue_more (self, rep, now) != 0) {
                json_decref (rep);
                rep = NULL;
            }
            goto done;
        }
    }
    if (strcmp (op, "streams.list") == 0) {
        /*  Running jobs whose subscriber takes their chunks. */
        json_t *list = json_array ();
        for (s_lease_t *l = (s_lease_t *) zhashx_first (self->leases); l && list;
             l = (s_lease_t *) zhashx_next (self->leases)) {
            uint64_t id = (uint64_t) (uintptr_t) zhashx_cursor (self->leases);
            s_sub_t *sub = (s_sub_t *) zhashx_lookup (self->subs, U64_KEY (id));
            if (l->probe || !sub || !sub->stream) {
                continue;
            }
            llmq_result_t res;
            bool known = llmq_store_status (self->store, id, &res, self->arena) == 0;
            json_array_append_new (list, json_pack ("{s:I, s:s, s:s, s:s?, s:I, s:I}",
                "id", (json_int_t) id,
                "model", known && res.model ? res.model : "",
                "deployment", l->dep < self->config->ndeployments ? self->config->deployments[l->dep].name : "",
                "worker", l->worker ? l->worker->key : NULL,
                "chunks", (json_int_t) l->chunks,
                "started_us", (json_int_t) (known ? res.started_us : 0)));
        }
        rep = list ? json_pack ("{s:o}", "streams", list) : NULL;
        goto done;
    }
    if (strcmp (op, "streams.cancel") == 0) {
        json_t *jid = json_object_get (req, "id");
        json_int_t id = json_is_integer (jid) ? json_integer_value (jid) : 0;
        if (id <= 0) {
            *code = LLMQ_ERR_INVALID;
            snprintf (why, whylen, "field 'id': expected a job id (a positive integer)");
            return NULL;
        }
        s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, U64_KEY ((uint64_t) id));
        s_sub_t *sub = (s_sub_t *) zhashx_lookup (self->subs, U64_KEY ((uint64_t) id));
        if (!l || l->probe || !sub || !sub->stream) {
            *code = LLMQ_ERR_NOT_FOUND;
            snprintf (why, whylen, "no running stream %lld", (long long) id);
            return NULL;
        }
        int rc = s_cancel_job (self, (uint64_t) id, now);
        if (rc) {
            *code = rc;
            snprintf (why, whylen, "job %lld: %s", (long long) id,
                      rc == LLMQ_ERR_STATE ? "already finished" : "store error");
            return NULL;
        }
        rep = json_pack ("{s:I}", "cancelled", (json_int_t) id);
        goto done;
    }
    *handled = false;
    return NULL;
done:
    if (!rep) {
        *code = LLMQ_ERR_NOMEM;
        snprintf (why, whylen, "out of memory");
    }
    return rep;
}

static void
s_client_stats (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m)
{
    json_t *root = s_stats_json (self);
    char *text = root ? json_dumps (root, JSON_COMPACT) : NULL;
    json_decref (root);
    llmq_msg_t r = { 0 };
    r.cmd = LLMQ_CMD_STATS_REP;
    r.corr = m->corr;
    r.json = text ? text : "{}";
    s_send (self, self->frontend, from, &r);
    free (text);
}

/*  Handles one client message. Returns true if it was kept for the next
    turn (then *msg_p is NULL and the broker owns it in `deferred`). */
static bool
s_on_client (llmq_broker_t *self, zmsg_t **msg_p, uint64_t now)
{
    zmsg_t *msg = *msg_p;
    zframe_t *from = zmsg_pop (msg);
    if (!from) {
        return false;
    }
    llmq_msg_t m;
    char why[256];
    int rc = llmq_msg_decode (msg, self->config->max_message, &m, self->arena, why, sizeof why);
    if (rc) {
        self->n_bad_messages++;
        char *hex = zframe_strhex (from);
        llmq_warn ("client %s: refused message: %s", hex, why);
        zstr_free (&hex);
        s_reply_error (self, self->frontend, from, m.corr, LLMQ_CMD_ERROR, rc, why);
        zframe_destroy (&from);
        return false;
    }
    switch (m.cmd) {
        case LLMQ_CMD_SUBMIT:
            if (s_client_submit (self, from, &m, now)) {
                s_defer (self, self->frontend, &from, msg_p);
                return true;
            }
            break;
        case LLMQ_CMD_CANCEL: s_client_cancel (self, from, &m, now); break;
        case LLMQ_CMD_STATUS: s_client_status (self, from, &m); break;
        case LLMQ_CMD_WAIT:   s_client_wait (self, from, &m); break;
        case LLMQ_CMD_FETCH:  s_client_fetch (self, from, &m); break;
        case LLMQ_CMD_STATS:  s_client_stats (self, from, &m); break;
        case LLMQ_CMD_ADMIN:  s_client_admin (self, from, &m, now); break;
        case LLMQ_CMD_PING: {
            llmq_msg_t r = { 0 };
            r.cmd = LLMQ_CMD_PONG;
            r.corr = m.corr;
            s_send (self, self->frontend, from, &r);
            break;
        }
        default:
            self->n_bad_messages++;
            s_reply_error (self, self->frontend, from, m.corr, LLMQ_CMD_ERROR, LLMQ_ERR_UNKNOWN_COMMAND,
                           "command not accepted on the client socket");
            break;
    }
    zframe_destroy (&from);
    return false;
}

/* ------------------------------------------------------------------------
   Workers
   ------------------------------------------------------------------------ */

/*  A streamed attempt whose chunks reached a client is starting over:
    tell the client to forget them (RESET). Sent ahead of the commit, like
    the chunks, so that it comes after the old attempt's chunks and before
    the new one's. */
static void
s_send_reset (llmq_broker_t *self, uint64_t id, const s_lease_t *l, const char *reason)
{
    s_sub_t *sub = (s_sub_t *) zhashx_lookup (self->subs, U64_KEY (id));
    if (l->chunks > 0 && sub && sub->stream) {
        llmq_msg_t m = { 0 };
        m.cmd = LLMQ_CMD_RESET;
        m.id = id;
        m.reason = reason;
        s_send (self, self->frontend, sub->client, &m);
    }
    self->n_restarted++;
}

/*  Give back every lease a worker holds. Lost workers count an attempt;
    a worker that said BYE does not. An attempt whose chunks reached a
    client cannot simply run again (the client would get the text twice):
    it starts over with a RESET if the job allows it, else it ends failed
    with class stream_broken. */
static void
s_worker_remove (llmq_broker_t *self, s_worker_t *w, bool lost, uint64_t now)
{
    zlistx_t *ids = zlistx_new ();
    for (s_lease_t *l = (s_lease_t *) zhashx_first (self->leases); l; l = (s_lease_t *) zhashx_next (self->leases)) {
        if (l->worker == w) {
            zlistx_add_end (ids, (void *) zhashx_cursor (self->leases));
        }
    }
    size_t n = 0;
    for (void *key = zlistx_first (ids); key; key = zlistx_next (ids)) {
        uint64_t id = (uint64_t) (uintptr_t) key;
        s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, key);
        if (l->probe) {
            zhashx_delete (self->leases, key);  /* a health probe: nothing to requeue */
            continue;
        }
        llmq_result_t failure = { 0 }, final;
        failure.error_class = LLMQ_EC_CONNECTION;
        failure.error = lost ? "worker stopped answering" : "worker left";
        if (l->chunks > 0 && !l->restart) {
            failure.error_class = LLMQ_EC_STREAM_BROKEN;
            failure.error = lost ? "worker stopped answering after chunks reached the client"
                                 : "worker left after chunks reached the client";
            failure.state = LLMQ_STATE_FAILED;
            failure.id = id;
            if (llmq_store_complete (self->store, id, l->lease, &failure, now, &final, self->arena) == 0) {
                s_push_result (self, &final);
            }
            zhashx_delete (self->leases, key);
            n++;
            continue;
        }
        int rc = llmq_store_requeue (self->store, id, l->lease, lost, 0, &failure, now, &final, self->arena);
        if (rc == 0 && l->chunks > 0) {
            s_send_reset (self, id, l, failure.error);
        }
        if (rc == LLMQ_ERR_STORE_FULL) {
            /* No room for a dead letter now: back to the queue uncounted,
               rather than leaving it leased to a worker that is gone. */
            rc = llmq_store_requeue (self->store, id, l->lease, false, 0, &failure, now, &final, self->arena);
        }
        if (rc == LLMQ_ERR_JOB_FAILED) {
            s_push_result (self, &final);
        }
        zhashx_delete (self->leases, key);
        n++;
    }
    zlistx_destroy (&ids);
    if (lost) {
        self->n_lost_workers++;
        llmq_warn ("worker %s (%s pid %u) silent for %u heartbeats: %zu job(s) back in the queue",
                   w->key, w->host ? w->host : "?", w->pid, self->config->liveness, n);
    }
    else {
        llmq_info ("worker %s (%s pid %u) left: %zu job(s) back in the queue", w->key,
                   w->host ? w->host : "?", w->pid, n);
    }
    zhashx_delete (self->workers, w->key);
}

/*  A small fast generator for jitter (xorshift64*). */
static uint64_t
s_random (void)
{
    static uint64_t x = 0;
    if (x == 0) {
        x = llmq_now_us () | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545F4914F6CDD1DULL;
}

/*  Retry delay for the n-th failed attempt: base * 2^(n-1), capped, with
    "equal jitter" (half fixed, half random) so that jobs that failed
    together do not come back together; never less than the provider's
    Retry-After. */
static uint64_t
s_backoff_us (const llmq_config_t *c, uint32_t attempts, uint64_t retry_after_ms)
{
    uint64_t ms = c->retry_backoff_ms;
    for (uint32_t i = 1; i < attempts && ms < c->retry_backoff_max_ms; i++) {
        ms *= 2;
    }
    if (ms > c->retry_backoff_max_ms) {
        ms = c->retry_backoff_max_ms;
    }
    ms = ms / 2 + s_random () % (ms / 2 + 1);
    if (retry_after_ms > ms) {
        ms = retry_after_ms;
    }
    return ms * 1000;
}

/*  Returns true if the report must be retried next turn (no space). */
static bool
s_worker_report (llmq_broker_t *self, s_worker_t *w, llmq_msg_t *m, uint64_t now)
{
    s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, U64_KEY (m->id));
    if (!l || l->lease != m->lease) {
        llmq_debug ("job %llu: stale %s for lease %llu dropped", (unsigned long long) m->id,
                    llmq_cmd_name (m->cmd), (unsigned long long) m->lease);
        if (w) {
            w->credit += m->slots;
        }
        return false;
    }
    llmq_result_t *res = &m->results[0];
    res->degraded = l->degraded;
    uint64_t now_ms = now / 1000;
    llmq_metrics_call (self->metrics, l->dep, m->cmd == LLMQ_CMD_DONE ? LLMQ_EC_NONE : res->error_class,
                       res->latency_us);
    if (l->granted) {
        llmq_outcome_t o = { .error_class = m->cmd == LLMQ_CMD_DONE ? LLMQ_EC_NONE : res->error_class,
                             .tokens = (uint64_t) res->prompt_tokens + res->completion_tokens,
                             .latency_ms = res->latency_us / 1000, .retry_after_ms = m->retry_after_ms,
                             .remaining_requests = res->rl_requests, .remaining_tokens = res->rl_tokens,
                             .reset_ms = res->rl_reset_ms };
        llmq_router_outcome (self->router, l->grant, &o, now_ms);
        l->granted = false;
        if (o.error_class == LLMQ_EC_RATE_LIMITED) {
            llmq_metrics_rate_paused (self->metrics, l->dep);   /* the router paused it */
        }
    }
    if (l->probe) {
        self->n_probes++;
        if (m->cmd == LLMQ_CMD_FAILED) {
            self->n_probe_failures++;
            llmq_info ("deployment %s: health probe failed: %s", self->config->deployments[l->dep].name,
                       res->error ? res->error : llmq_error_class_name (res->error_class));
        }
        if (w) {
            w->credit += m->slots;
        }
        if (l->worker) {
            l->worker->running--;
        }
        zhashx_delete (self->leases, U64_KEY (m->id));
        return false;
    }
    bool retry = m->cmd == LLMQ_CMD_FAILED
              && (llmq_error_class_retryable (res->error_class)
                  || (res->error_class == LLMQ_EC_STREAM_BROKEN && (l->chunks == 0 || l->restart)));
    if (retry && !l->last_attempt && !llmq_router_retry_allowed (self->router, l->dep, now_ms)) {
        /*  The deployment's retry budget is spent: a storm of retries
            would only add load to a provider that is failing. */
        retry = false;
        self->n_retry_budget++;
        const char *dep = self->config->deployments[l->dep].name;
        size_t len = strlen (res->error ? res->error : "") + strlen (dep) + 80;
        char *text = (char *) llmq_arena_alloc (self->arena, len);
        if (text) {
            snprintf (text, len, "%s (not retried: the retry budget of deployment %s is spent)",
                      res->error ? res->error : "failed", dep);
            res->error = text;
        }
    }
    /*  Its cost: the tokens it used at the serving deployment's prices
        (USD per million tokens, so tokens x price is micro-USD). Prompt
        tokens read from the provider's cache are part of prompt_tokens and
        cost price_cached_input (price_input when that is 0); rounded once. */
    const llmq_deployment_t *dd = &self->config->deployments[l->dep];
    uint32_t cached = res->cached_tokens < res->prompt_tokens ? res->cached_tokens : res->prompt_tokens;
    double cached_price = dd->price_cached_input > 0 ? dd->price_cached_input : dd->price_input;
    res->cost_micro = (uint64_t) ((double) (res->prompt_tokens - cached) * dd->price_input
                                  + (double) cached * cached_price
                                  + (double) res->completion_tokens * dd->price_output + 0.5);
    bool saved = s_save (self, false);
    llmq_result_t final;
    int rc;
    bool ended = false;             /* the job reached a final state */
    if (m->cmd == LLMQ_CMD_DONE) {
        res->state = LLMQ_STATE_DONE;
        rc = llmq_store_complete (self->store, m->id, m->lease, res, now, &final, self->arena);
        ended = rc == 0;
        if (ended && l->cacheable) {
            s_cache_fill (self, l, &final, now);
        }
    }
    else if (res->error_class == LLMQ_EC_CANCELLED && (l->chunks == 0 || l->restart)) {
        /* The worker aborted on its own (shutting down): run it elsewhere. */
        rc = llmq_store_requeue (self->store, m->id, m->lease, false, 0, res, now, &final, self->arena);
        if (rc == 0 && l->chunks > 0) {
            s_send_reset (self, m->id, l, "the worker stopped mid-stream");
        }
    }
    else if (retry) {
        /*  A stream that broke is retryable while none of its chunks
            reached a client (none was subscribed), or, if the job allows,
            starts over with a RESET. The retry prefers another
            deployment of the group. */
        llmq_result_t st;
        uint32_t attempt = 1;
        if (llmq_store_status (self->store, m->id, &st, self->arena) == 0) {
            attempt = st.attempts + 1;
        }
        uint64_t nb = now + s_backoff_us (self->config, attempt, m->retry_after_ms);
        rc = llmq_store_requeue (self->store, m->id, m->lease, true, nb, res, now, &final, self->arena);
        if (rc == 0) {
            self->n_retried++;
            zhashx_update (self->avoid, U64_KEY (m->id), (void *) (uintptr_t) (l->dep + 1));
            if (l->chunks > 0) {
                s_send_reset (self, m->id, l, res->error);
            }
        }
        ended = rc == LLMQ_ERR_JOB_FAILED;
    }
    else {
        if (res->error_class == LLMQ_EC_CANCELLED) {
            /* stopped by its worker after chunks reached the client */
            res->error_class = LLMQ_EC_STREAM_BROKEN;
        }
        res->state = LLMQ_STATE_FAILED;
        rc = llmq_store_complete (self->store, m->id, m->lease, res, now, &final, self->arena);
        ended = rc == 0;
    }
    if (ended) {
        /*  Booked with the result, in the same transaction. */
        int urc = llmq_store_usage_add (self->store, (uint32_t) (now / 86400000000ull), l->org, l->user,
                                        final.model, final.state == LLMQ_STATE_DONE, res->prompt_tokens,
                                        res->completion_tokens, res->cost_micro);
        if (urc) {
            llmq_warn ("job %llu: usage not recorded: %s", (unsigned long long) m->id, llmq_strerror (urc));
        }
    }
    /* Dead-lettering (JOB_FAILED) is a write too. */
    bool written = rc == 0 || rc == LLMQ_ERR_JOB_FAILED;
    int saved_rc = written ? s_release (self, saved) : (s_rollback (self, saved), rc);
    if (saved_rc == LLMQ_ERR_STORE_FULL) {
        return true;                /* undone; retried next turn */
    }
    if (written && saved_rc) {
        rc = saved_rc;
        ended = false;
    }
    if (w) {
        w->credit += m->slots;
    }
    if (l->worker) {
        l->worker->running--;
    }
    if (ended && (l->user || l->org)) {
        llmq_tenants_settle (self->tenants, l->user, l->org, l->est_tokens,
                             (uint64_t) res->prompt_tokens + res->completion_tokens,
                             (int64_t) res->cost_micro, now_ms);
    }
    if (ended) {
        llmq_metrics_usage (self->metrics, final.model, l->org, res->prompt_tokens, res->completion_tokens,
                            res->cost_micro);
    }
    zhashx_delete (self->leases, U64_KEY (m->id));
    if (ended) {
        s_push_result (self, &final);
    }
    else if (rc && rc != LLMQ_ERR_STATE && rc != LLMQ_ERR_JOB_FAILED) {
        llmq_error ("job %llu: cannot record %s: %s", (unsigned long long) m->id, llmq_cmd_name (m->cmd),
                    llmq_strerror (rc));
    }
    return false;
}

static void
s_worker_chunk (llmq_broker_t *self, llmq_msg_t *m, uint64_t now)
{
    s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, U64_KEY (m->id));
    if (!l || l->lease != m->lease) {
        return;                     /* from an older attempt: never forwarded */
    }
    if (!l->chunked) {
        l->chunked = true;
        llmq_metrics_first_chunk (self->metrics, l->dep, now > l->dispatched_us ? now - l->dispatched_us : 0);
    }
    s_sub_t *sub = (s_sub_t *) zhashx_lookup (self->subs, U64_KEY (m->id));
    if (sub && sub->stream) {
        l->chunks++;
        llmq_msg_t c = { 0 };
        c.cmd = LLMQ_CMD_CHUNK;
        c.id = m->id;
        c.seq = m->seq;
        c.text = m->text;
        s_send (self, self->frontend, sub->client, &c);
    }
}

/*  As s_on_client, for the worker socket. */
static bool
s_on_worker (llmq_broker_t *self, zmsg_t **msg_p, uint64_t now)
{
    zmsg_t *msg = *msg_p;
    zframe_t *from = zmsg_pop (msg);
    if (!from) {
        return false;
    }
    char *key = zframe_strhex (from);
    s_worker_t *w = (s_worker_t *) zhashx_lookup (self->workers, key);
    if (w) {
        w->last_seen_ms = llmq_mono_ms ();
    }
    llmq_msg_t m;
    char why[256];
    int rc = llmq_msg_decode (msg, self->config->max_message, &m, self->arena, why, sizeof why);
    if (rc) {
        self->n_bad_messages++;
        llmq_warn ("worker %s: refused message: %s", key, why);
        s_reply_error (self, self->backend, from, 0, LLMQ_CMD_ERROR, rc, why);
    }
    else if (m.cmd == LLMQ_CMD_HELLO) {
        if (!w) {
            w = (s_worker_t *) calloc (1, sizeof *w);
            w->key = strdup (key);
            w->identity = zframe_dup (from);
            zhashx_insert (self->workers, key, w);
            llmq_info ("worker %s joined: %s pid %u, %u slot(s)", key, m.host ? m.host : "?", m.pid, m.slots);
        }
        free (w->host);
        w->host = m.host ? strdup (m.host) : NULL;
        w->pid = m.pid;
        w->credit = m.slots;
        w->last_seen_ms = llmq_mono_ms ();
        llmq_msg_t hb = { 0 };
        hb.cmd = LLMQ_CMD_HEARTBEAT;
        s_send (self, self->backend, from, &hb);
    }
    else if (m.cmd == LLMQ_CMD_DONE) {
        /*  A DONE may carry many results (the worker batches what finished
            in one loop turn), each with its own id and lease. Its credit
            counts once, now: the worker's slots are free whatever we do.
            Results that do not fit in the store are retried next turn, in
            a DONE of their own without credit. */
        if (w) {
            w->credit += m.slots;
        }
        for (size_t i = 0; i < m.nresults; i++) {
            llmq_msg_t one = m;
            one.results = &m.results[i];
            one.nresults = 1;
            one.id = m.results[i].id ? m.results[i].id : m.id;
            one.lease = m.results[i].lease ? m.results[i].lease : m.lease;
            one.slots = 0;
            if (s_worker_report (self, w, &one, now)) {
                llmq_msg_t rest = m;
                rest.results = &m.results[i];
                rest.nresults = m.nresults - i;
                rest.id = one.id;
                rest.lease = one.lease;
                rest.slots = 0;
                zmsg_t *again = llmq_msg_encode (&rest);
                if (again) {
                    zstr_free (&key);
                    s_defer (self, self->backend, &from, &again);
                    return false;
                }
                break;
            }
        }
    }
    else if (m.cmd == LLMQ_CMD_FAILED) {
        if (s_worker_report (self, w, &m, now)) {
            zstr_free (&key);
            s_defer (self, self->backend, &from, msg_p);
            return true;
        }
    }
    else if (m.cmd == LLMQ_CMD_CHUNK) {
        s_worker_chunk (self, &m, now);
    }
    else if (!w) {
        /* HEARTBEAT, CREDIT or BYE from a worker we do not know (we
           restarted, or it was declared lost): it must say HELLO again. */
        if (m.cmd != LLMQ_CMD_BYE) {
            s_reply_error (self, self->backend, from, 0, LLMQ_CMD_ERROR, LLMQ_ERR_UNKNOWN_WORKER,
                           "unknown worker: send HELLO");
        }
    }
    else if (m.cmd == LLMQ_CMD_CREDIT) {
        w->credit += m.slots;
    }
    else if (m.cmd == LLMQ_CMD_BYE) {
        s_worker_remove (self, w, false, now);
        w = NULL;
    }
    else if (m.cmd == LLMQ_CMD_HEARTBEAT) {
        /*  Its figures, if it sends any (older workers do not). */
        if (m.json && llmq_metrics_figures_parse (m.json, &w->figures) != 0) {
            llmq_debug ("worker %s: HEARTBEAT figures are not a JSON object: ignored", key);
        }
    }
    else {
        self->n_bad_messages++;
        s_reply_error (self, self->backend, from, 0, LLMQ_CMD_ERROR, LLMQ_ERR_UNKNOWN_COMMAND,
                       "command not accepted on the worker socket");
    }
    if (!w && (m.cmd == LLMQ_CMD_DONE || m.cmd == LLMQ_CMD_FAILED || m.cmd == LLMQ_CMD_CHUNK) && rc == 0) {
        s_reply_error (self, self->backend, from, 0, LLMQ_CMD_ERROR, LLMQ_ERR_UNKNOWN_WORKER,
                       "unknown worker: send HELLO");
    }
    zstr_free (&key);
    zframe_destroy (&from);
    return false;
}

/* ------------------------------------------------------------------------
   Dispatch, timers
   ------------------------------------------------------------------------ */

static s_worker_t *
s_next_worker (llmq_broker_t *self)
{
    size_t n = zhashx_size (self->workers);
    if (n == 0) {
        return NULL;
    }
    /* Round robin over workers with credit, starting after the last one. */
    s_worker_t *best = NULL;
    uint64_t best_seen = UINT64_MAX;
    for (s_worker_t *w = (s_worker_t *) zhashx_first (self->workers); w; w = (s_worker_t *) zhashx_next (self->workers)) {
        if (w->credit > 0 && w->dispatched < best_seen) {
            best = w;
            best_seen = w->dispatched;
        }
    }
    return best;
}

/*  The answer's limit: max_tokens or max_completion_tokens in the body,
    else the deployment's default, else 256. A scan, not a parse: the
    broker parses only the bodies of response cache candidates. */
static uint64_t
s_scan_max_tokens (const char *body, uint32_t default_max)
{
    uint64_t max = default_max ? default_max : 256;
    static const char *keys[] = { "\"max_tokens\"", "\"max_completion_tokens\"" };
    for (int k = 0; k < 2; k++) {
        const char *p = strstr (body, keys[k]);
        if (p) {
            p += strlen (keys[k]);
            while (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r') {
                p++;
            }
            if (*p >= '0' && *p <= '9') {
                max = strtoull (p, NULL, 10);
                break;
            }
        }
    }
    return max;
}

/*  Tokens a call may use, reserved against the deployment's TPM until the
    worker reports what it used: the prompt's bytes / 4 (about one token
    per 4 bytes of English) plus the answer's limit. */
static uint64_t
s_estimate_tokens (const char *body, uint32_t default_max)
{
    return strlen (body) / 4 + s_scan_max_tokens (body, default_max);
}

/*  Config group index of a name, or SIZE_MAX. */
static size_t
s_group_index (const llmq_broker_t *self, const char *name)
{
    const llmq_group_t *g = llmq_config_group (self->config, name);
    return g ? (size_t) (g - self->config->groups) : SIZE_MAX;
}

/*  Dispatch while a worker has credit: the ready job with the smallest
    virtual deadline among the groups the router can serve now. A group
    that cannot (breakers open, limits reached) is skipped this turn and
    its jobs wait in the queue; self->wake_ms says when to look again. */
static void
s_dispatch (llmq_broker_t *self, uint64_t now)
{
    const llmq_route_stats_t *rs;
    uint64_t now_ms = now / 1000;
    size_t nr = llmq_store_routes (self->store, &rs);
    bool blocked_small[64] = { false };
    size_t nblocked = nr <= 64 ? 64 : nr;   /* routes this turn can look at */
    bool *blocked = nr <= 64 ? blocked_small : (bool *) calloc (nr, sizeof (bool));
    if (!blocked) {
        return;
    }
    uint64_t wake = 0;              /* unix ms a blocked group may be free */
    for (;;) {
        s_worker_t *w = s_next_worker (self);
        if (!w) {
            break;
        }
        nr = llmq_store_routes (self->store, &rs);
        uint64_t best_id = 0, best_vdl = UINT64_MAX;
        size_t best_route = 0, best_group = SIZE_MAX;
        for (size_t i = 0; i < nr && i < nblocked; i++) {
            uint64_t id, vdl;
            if (blocked[i] || llmq_store_peek (self->store, rs[i].number, &id, &vdl) != 0 || vdl >= best_vdl) {
                continue;
            }
            size_t gi = s_group_index (self, rs[i].name);
            if (gi == SIZE_MAX) {
                continue;
            }
            best_id = id;
            best_vdl = vdl;
            best_route = i;
            best_group = gi;
        }
        if (!best_id) {
            break;
        }
        /*  Can anything of the group take a call at all? */
        uintptr_t avoid1 = (uintptr_t) zhashx_lookup (self->avoid, U64_KEY (best_id));
        size_t avoid = avoid1 ? avoid1 - 1 : SIZE_MAX;
        llmq_pick_t pick;
        uint64_t until = 0;
        if (llmq_router_pick (self->router, best_group, 1, avoid, now_ms, &pick, &until, NULL, 0) != 0) {
            blocked[best_route] = true;
            llmq_metrics_blocked (self->metrics, best_group, llmq_router_all_open (self->router, best_group));
            if (until && (!wake || until < wake)) {
                wake = until;
            }
            continue;
        }
        llmq_job_t job;
        llmq_result_t final;
        bool saved = s_save (self, false);
        int rc = llmq_store_lease (self->store, best_id, now, &job, &final, self->arena);
        bool written = rc == 0 || rc == LLMQ_ERR_EXPIRED;
        int saved_rc = written ? s_release (self, saved) : (s_rollback (self, saved), rc);
        if (saved_rc == LLMQ_ERR_STORE_FULL) {
            break;              /* no room to record a lease: next turn */
        }
        if (written && saved_rc) {
            rc = saved_rc;
        }
        if (rc == LLMQ_ERR_EXPIRED) {
            s_push_result (self, &final);
            continue;
        }
        if (rc) {
            llmq_error ("job %llu: cannot lease: %s", (unsigned long long) best_id, llmq_strerror (rc));
            break;
        }
        /*  Now with the job's own estimate (TPM). */
        const llmq_deployment_t *d = &self->config->deployments[pick.dep];
        uint64_t tokens = s_estimate_tokens (job.body ? job.body : "", d->max_tokens);
        if (llmq_router_pick (self->router, best_group, tokens, avoid, now_ms, &pick, &until, NULL, 0) != 0) {
            llmq_store_requeue (self->store, job.id, job.lease, false, 0, NULL, now, &final, self->arena);
            blocked[best_route] = true;
            llmq_metrics_blocked (self->metrics, best_group, llmq_router_all_open (self->router, best_group));
            if (until && (!wake || until < wake)) {
                wake = until;
            }
            continue;
        }
        if (avoid != SIZE_MAX && pick.dep != avoid) {
            llmq_metrics_failover (self->metrics, best_group);
        }
        zhashx_delete (self->avoid, U64_KEY (job.id));
        llmq_metrics_wait (self->metrics, job.priority, now > job.enqueued_us ? now - job.enqueued_us : 0);
        if (self->fair) {
            int prio = job.priority % LLMQ_NPRIO;
            uint64_t off = self->config->prio_offset_ms[prio] * 1000;
            llmq_fair_dispatched (self->fair, rs[best_route].number, prio,
                                  job.vdeadline_us > off ? job.vdeadline_us - off : 0);
        }
        d = &self->config->deployments[pick.dep];
        s_lease_t *l = (s_lease_t *) calloc (1, sizeof *l);
        if (!l) {
            llmq_store_requeue (self->store, job.id, job.lease, false, 0, NULL, now, &final, self->arena);
            break;
        }
        llmq_msg_t m = { 0 };
        m.cmd = LLMQ_CMD_DISPATCH;
        m.jobs = &job;
        m.njobs = 1;
        m.deployment = d->name;
        /*  The adaptive timeout is learnt from whole calls: a stream, or a
            retry (whose first attempt may have been cut by it), gets the
            configured one, so that a long answer is never cut for good. */
        m.timeout_ms = job.attempts > 0 || job.stream ? d->timeout_ms
                     : llmq_router_timeout_ms (self->router, pick.dep);
        s_send (self, self->backend, w->identity, &m);
        l->worker = w;
        l->lease = job.lease;
        uint32_t max = job.max_attempts ? job.max_attempts : self->config->max_attempts;
        l->restart = job.stream && job.restart && job.attempts + 1 < max;
        l->last_attempt = job.attempts + 1 >= max;
        l->router = self->router;
        l->grant = llmq_router_grant (self->router, &pick, tokens, job.attempts > 0, now_ms);
        l->granted = true;
        l->dep = pick.dep;
        l->dispatched_us = now;
        l->degraded = pick.degraded;
        s_cache_lease (self, &job, l);
        if ((job.user && *job.user) || (job.org && *job.org)) {
            uint64_t cost;
            l->user = job.user && *job.user ? strdup (job.user) : NULL;
            l->org = job.org && *job.org ? strdup (job.org) : NULL;
            l->est_tokens = s_job_estimate (self, &job, &cost);
        }
        if (pick.degraded) {
            self->n_degraded++;
        }
        zhashx_update (self->leases, U64_KEY (job.id), l);
        w->credit--;
        w->running++;
        w->dispatched++;
        self->n_dispatched++;
    }
    if (blocked != blocked_small) {
        free (blocked);
    }
    /*  Wake up when a blocked group may be free (a limit's window slides,
        a pause or an open breaker ends). */
    self->wake_ms = 0;
    if (wake) {
        uint64_t mono = llmq_mono_ms ();
        self->wake_ms = mono + (wake > now_ms ? wake - now_ms : 0);
    }
}

/*  Active health checks: a deployment whose breaker is half-open, or that
    had no call for probe_interval, gets a tiny real call through a worker
    (one user word, max_tokens 1). Its outcome feeds the breaker like any
    call's; it is never stored and has no client. Probe ids have the top
    bit set, so they never meet a job id. */
static void
s_probe (llmq_broker_t *self, uint64_t now)
{
    if (!self->config->probe_interval_ms) {
        return;
    }
    static const char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"ping\"}],\"max_tokens\":1}";
    uint64_t now_ms = now / 1000;
    for (size_t i = 0; i < self->config->ndeployments; i++) {
        const llmq_deployment_t *d = &self->config->deployments[i];
        if (d->provider && strcmp (d->provider, "echo") == 0) {
            continue;
        }
        int want = llmq_router_probe_wanted (self->router, i, now_ms, self->config->probe_interval_ms);
        if (!want) {
            continue;
        }
        size_t gi = SIZE_MAX;
        for (size_t g = 0; g < self->config->ngroups && gi == SIZE_MAX; g++) {
            for (size_t k = 0; k < self->config->groups[g].ndeployments; k++) {
                if (strcmp (self->config->groups[g].deployments[k], d->name) == 0) {
                    gi = g;
                    break;
                }
            }
        }
        s_worker_t *w = gi == SIZE_MAX ? NULL : s_next_worker (self);
        if (!w) {
            continue;
        }
        s_lease_t *l = (s_lease_t *) calloc (1, sizeof *l);
        if (!l) {
            return;
        }
        llmq_job_t job = { 0 };
        job.id = (UINT64_C (1) << 63) | ++self->next_probe_id;
        job.lease = job.id;
        job.model = self->config->groups[gi].name;
        job.body = body;
        job.max_attempts = 1;
        job.enqueued_us = now;
        llmq_msg_t m = { 0 };
        m.cmd = LLMQ_CMD_DISPATCH;
        m.jobs = &job;
        m.njobs = 1;
        m.deployment = d->name;
        m.timeout_ms = llmq_router_timeout_ms (self->router, i);
        s_send (self, self->backend, w->identity, &m);
        llmq_pick_t pick = { .dep = i, .group = gi, .probe = want == 1 };
        l->worker = w;
        l->lease = job.lease;
        l->router = self->router;
        l->grant = llmq_router_grant (self->router, &pick, 1, false, now_ms);
        l->granted = true;
        l->dep = i;
        l->probe = true;
        zhashx_update (self->leases, U64_KEY (job.id), l);
        w->credit--;
        w->running++;
        w->dispatched++;
        llmq_debug ("deployment %s: health probe (%s)", d->name, want == 1 ? "half-open" : "idle");
    }
}

static void
s_timers (llmq_broker_t *self, uint64_t now)
{
    bool saved = s_save (self, false);
    llmq_store_tick (self->store, now, S_TICK_BUDGET, s_on_final, self, self->arena);
    if (s_release (self, saved)) {
        llmq_warn ("store tight: timer work postponed");
    }
    uint64_t now_ms = llmq_mono_ms ();
    uint64_t dead_after = self->config->heartbeat_ms * self->config->liveness;
    zlistx_t *lost = zlistx_new ();
    for (s_worker_t *w = (s_worker_t *) zhashx_first (self->workers); w; w = (s_worker_t *) zhashx_next (self->workers)) {
        if (now_ms - w->last_seen_ms > dead_after) {
            zlistx_add_end (lost, w);
        }
    }
    for (s_worker_t *w = (s_worker_t *) zlistx_first (lost); w; w = (s_worker_t *) zlistx_next (lost)) {
        s_worker_remove (self, w, true, now);
    }
    zlistx_destroy (&lost);
    if (now_ms >= self->next_heartbeat_ms) {
        llmq_msg_t hb = { 0 };
        hb.cmd = LLMQ_CMD_HEARTBEAT;
        for (s_worker_t *w = (s_worker_t *) zhashx_first (self->workers); w; w = (s_worker_t *) zhashx_next (self->workers)) {
            s_send (self, self->backend, w->identity, &hb);
        }
        self->next_heartbeat_ms = now_ms + self->config->heartbeat_ms;
    }
    s_probe (self, now);
}

/* ------------------------------------------------------------------------
   Life cycle
   ------------------------------------------------------------------------ */

static zsock_t *
s_bind (const char *endpoint, int maxmsg, char **bound, char *err, size_t errlen)
{
    zsock_t *sock = zsock_new (ZMQ_ROUTER);
    if (!sock) {
        snprintf (err, errlen, "cannot create socket");
        return NULL;
    }
    zsock_set_maxmsgsize (sock, maxmsg);
    zsock_set_sndhwm (sock, 1000000);
    zsock_set_rcvhwm (sock, 100000);
    zsock_set_linger (sock, 1000);
    zsock_set_rcvtimeo (sock, 0);
    zsock_set_sndtimeo (sock, 0);
    if (zsock_bind (sock, "%s", endpoint) < 0) {
        snprintf (err, errlen, "cannot bind %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        zsock_destroy (&sock);
        return NULL;
    }
    *bound = zsock_last_endpoint (sock);
    return sock;
}

/*  A breaker changed state: logged, and kept for the admin view. */
static void
s_on_router_event (void *arg, size_t dep, int from, int to, const char *reason, uint64_t now_ms)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    const char *name = self->config->deployments[dep].name;
    if (to == LLMQ_BREAKER_OPEN) {
        llmq_warn ("deployment %s: breaker %s -> open: %s", name, llmq_breaker_state_name (from), reason);
    }
    else {
        llmq_info ("deployment %s: breaker %s -> %s: %s", name, llmq_breaker_state_name (from),
                   llmq_breaker_state_name (to), reason);
    }
    json_array_append_new (self->history,
                           json_pack ("{s:I, s:s, s:s, s:s, s:s}", "at_ms", (json_int_t) now_ms,
                                      "deployment", name, "from", llmq_breaker_state_name (from),
                                      "to", llmq_breaker_state_name (to), "reason", reason));
    while (json_array_size (self->history) > S_HISTORY_MAX) {
        json_array_remove (self->history, 0);
    }
    self->history_dirty = true;
    llmq_metrics_transition (self->metrics, dep, to);
}

/*  The router from the config: one policy per deployment, one per group. */
static llmq_router_t *
s_router_new (const llmq_config_t *config)
{
    size_t nd = config->ndeployments, ng = config->ngroups;
    llmq_dep_policy_t *deps = (llmq_dep_policy_t *) calloc (nd ? nd : 1, sizeof *deps);
    llmq_group_policy_t *groups = (llmq_group_policy_t *) calloc (ng ? ng : 1, sizeof *groups);
    size_t **members = (size_t **) calloc (ng ? ng : 1, sizeof *members);
    llmq_router_t *router = NULL;
    if (!deps || !groups || !members) {
        goto done;
    }
    for (size_t i = 0; i < nd; i++) {
        const llmq_deployment_t *d = &config->deployments[i];
        llmq_dep_policy_t *p = &deps[i];
        llmq_dep_policy_defaults (p);
        p->name = d->name;
        p->rpm = d->rpm;
        p->tpm = d->tpm;
        p->rate_window_ms = d->rate_window_ms;
        p->rate_margin_ms = d->rate_margin_ms;
        p->max_concurrent = d->max_concurrent;
        p->weight = d->weight;
        p->order = (int32_t) d->order;
        p->price = d->price_input + d->price_output;
        p->breaker_failures = d->breaker_failures;
        p->breaker_failure_pct = d->breaker_failure_pct;
        p->breaker_min_calls = d->breaker_min_calls;
        p->breaker_window_ms = d->breaker_window_ms;
        p->breaker_open_ms = d->breaker_open_ms;
        p->breaker_probes = d->breaker_probes;
        p->breaker_successes = d->breaker_successes;
        p->timeout_ms = d->timeout_ms;
        p->timeout_max_ms = d->timeout_ms;
        p->timeout_min_ms = d->timeout_min_ms < d->timeout_ms ? d->timeout_min_ms : d->timeout_ms;
        p->adaptive_timeout = d->adaptive_timeout;
        p->retry_budget_pct = d->retry_budget_pct;
        p->retry_budget_min = d->retry_budget_min;
    }
    for (size_t i = 0; i < ng; i++) {
        const llmq_group_t *g = &config->groups[i];
        members[i] = (size_t *) calloc (g->ndeployments ? g->ndeployments : 1, sizeof (size_t));
        if (!members[i]) {
            goto done;
        }
        for (size_t j = 0; j < g->ndeployments; j++) {
            const llmq_deployment_t *d = llmq_config_deployment (config, g->deployments[j]);
            members[i][j] = d ? (size_t) (d - config->deployments) : 0;
        }
        const llmq_group_t *fb = g->fallback ? llmq_config_group (config, g->fallback) : NULL;
        int strategy = g->strategy ? llmq_strategy_parse (g->strategy) : LLMQ_STRATEGY_ROUND_ROBIN;
        groups[i] = (llmq_group_policy_t) { g->name, strategy < 0 ? LLMQ_STRATEGY_ROUND_ROBIN : strategy,
                                            members[i], g->ndeployments,
                                            fb ? (int) (fb - config->groups) : -1 };
    }
    router = llmq_router_new (deps, nd, groups, ng);
done:
    for (size_t i = 0; members && i < ng; i++) {
        free (members[i]);
    }
    free (members);
    free (groups);
    free (deps);
    return router;
}

static void
s_frame_free (void **item)
{
    zframe_destroy ((zframe_t **) item);
}

/*  A budget crossed 80, 90 or 100 %: logged, counted, pushed as an EVENT
    to subscribed clients and POSTed to the webhook. */
static void
s_on_budget_alert (void *arg, const char *kind, const char *name, const char *period, int pct,
                   int64_t spent, int64_t budget, uint64_t now_ms)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    (void) now_ms;
    self->n_budget_alerts++;
    json_t *j = json_pack ("{s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:I}", "type", "budget_alert",
                           "kind", kind, "name", name, "period", period, "pct", pct,
                           "spent_micro", (json_int_t) spent, "budget_micro", (json_int_t) budget,
                           "at_ms", (json_int_t) now_ms);
    char *text = j ? json_dumps (j, JSON_COMPACT) : NULL;
    json_decref (j);
    if (text && self->webhook) {
        llmq_webhook_post (self->webhook, text, llmq_mono_ms ());
    }
    for (zframe_t *sub = (zframe_t *) zlistx_first (self->event_subs); text && sub;
         sub = (zframe_t *) zlistx_next (self->event_subs)) {
        llmq_msg_t ev = { 0 };
        ev.cmd = LLMQ_CMD_EVENT;
        ev.json = text;
        s_send (self, self->frontend, sub, &ev);
    }
    free (text);
    llmq_warn ("budget alert: %s %s has spent %d %% of its %s budget ($%.6f of $%.6f)%s", kind, name, pct,
               period[0] == 'd' ? "daily" : "monthly", (double) spent / 1e6, (double) budget / 1e6,
               pct >= 100 ? "; its new jobs are refused" : "");
}

/*  Tiers (built-in, then the file's, which win), users and orgs. */
static llmq_tenants_t *
s_tenants_new (const llmq_config_t *config)
{
    const llmq_cfg_tier_t *builtin;
    size_t nb = llmq_config_builtin_tiers (&builtin);
    size_t nt = nb + config->ntiers;
    llmq_tier_t *tiers = (llmq_tier_t *) calloc (nt, sizeof *tiers);
    llmq_user_conf_t *users = (llmq_user_conf_t *) calloc (config->nusers + 1, sizeof *users);
    llmq_org_conf_t *orgs = (llmq_org_conf_t *) calloc (config->norgs + 1, sizeof *orgs);
    llmq_tenants_t *t = NULL;
    if (tiers && users && orgs) {
        size_t n = 0;
        for (size_t i = 0; i < nb; i++) {
            const llmq_cfg_tier_t *c = llmq_config_tier (config, builtin[i].name);
            tiers[n++] = (llmq_tier_t) { c->name, c->rpm, c->rph, c->rpd, c->tokens_per_day, c->weight };
        }
        for (size_t i = 0; i < config->ntiers; i++) {
            const llmq_cfg_tier_t *c = &config->tiers[i];
            const llmq_cfg_tier_t *b;
            bool is_builtin = false;
            for (size_t k = 0; k < nb; k++) {
                b = &builtin[k];
                is_builtin |= strcmp (b->name, c->name) == 0;
            }
            if (!is_builtin) {
                tiers[n++] = (llmq_tier_t) { c->name, c->rpm, c->rph, c->rpd, c->tokens_per_day, c->weight };
            }
        }
        for (size_t i = 0; i < config->nusers; i++) {
            const llmq_cfg_user_t *u = &config->users[i];
            users[i] = (llmq_user_conf_t) { u->name, u->tier, (int64_t) (u->budget_daily * 1e6 + 0.5),
                                            (int64_t) (u->budget_monthly * 1e6 + 0.5) };
        }
        for (size_t i = 0; i < config->norgs; i++) {
            const llmq_cfg_org_t *o = &config->orgs[i];
            orgs[i] = (llmq_org_conf_t) { o->name, (int64_t) (o->budget_daily * 1e6 + 0.5),
                                          (int64_t) (o->budget_monthly * 1e6 + 0.5) };
        }
        llmq_tenants_opts_t opts = { config->default_tier ? config->default_tier : "free",
                                     config->stream_weight, config->large_job_tokens };
        t = llmq_tenants_new (tiers, n, users, config->nusers, orgs, config->norgs, &opts);
    }
    free (tiers);
    free (users);
    free (orgs);
    return t;
}

static void
s_tenant_load (void *arg, const char *key, const void *data, size_t len)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    if (llmq_tenants_load (self->tenants, key + 7, (const char *) data, len) != 0) {
        llmq_warn ("%s: stored quota and budget state unreadable: starting afresh", key);
    }
}

/*  Snapshots of the router's state, stored under "router/<deployment>",
    the breaker history under "history", tenants' counts and spend under
    "tenant/user/NAME" and "tenant/org/NAME". */
static void
s_router_load (llmq_broker_t *self)
{
    if (llmq_store_begin (self->store)) {
        return;
    }
    uint64_t now_ms = llmq_now_us () / 1000;
    for (size_t i = 0; i < self->config->ndeployments; i++) {
        char key[128];
        snprintf (key, sizeof key, "router/%s", self->config->deployments[i].name);
        const void *data;
        size_t len;
        if (llmq_store_state_get (self->store, key, &data, &len) == 0
            && llmq_router_load (self->router, i, data, len, now_ms) != 0) {
            llmq_warn ("deployment %s: stored breaker and limit state unreadable: starting afresh", key + 7);
        }
    }
    const void *data;
    size_t len;
    if (llmq_store_state_get (self->store, "history", &data, &len) == 0) {
        json_t *h = json_loadb ((const char *) data, len, 0, NULL);
        if (json_is_array (h)) {
            json_decref (self->history);
            self->history = h;
        }
        else {
            json_decref (h);
        }
    }
    llmq_store_state_each (self->store, "tenant/", s_tenant_load, self);
    llmq_store_abort (self->store);
}

static void
s_tenant_save (void *arg, const char *key, const char *json)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    char name[400];
    snprintf (name, sizeof name, "tenant/%s", key);
    if (llmq_store_state_put (self->store, name, json, strlen (json)) != 0) {
        llmq_warn ("%s: cannot store quota and budget state", name);
    }
}

static void
s_router_save (llmq_broker_t *self)
{
    llmq_tenants_save (self->tenants, s_tenant_save, self);
    size_t size = llmq_router_save_size ();
    char *buf = NULL;
    for (size_t i = 0; i < self->config->ndeployments; i++) {
        if (!llmq_router_dirty (self->router, i)) {
            continue;
        }
        if (!buf && !(buf = (char *) malloc (size))) {
            return;
        }
        char key[128];
        snprintf (key, sizeof key, "router/%s", self->config->deployments[i].name);
        size_t n = llmq_router_save (self->router, i, buf, size);
        if (n && llmq_store_state_put (self->store, key, buf, n) != 0) {
            llmq_warn ("deployment %s: cannot store breaker and limit state", key + 7);
        }
    }
    free (buf);
    if (self->history_dirty) {
        char *text = json_dumps (self->history, JSON_COMPACT);
        if (text && llmq_store_state_put (self->store, "history", text, strlen (text)) == 0) {
            self->history_dirty = false;
        }
        free (text);
    }
}

/* ------------------------------------------------------------------------
   HTTP side (http.h): its handlers run in llmq_http_run, inside a turn
   ------------------------------------------------------------------------ */

static int
s_http_ready (void *arg, char *why, size_t whylen)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    if (self->full) {
        snprintf (why, whylen, "store full: submits are refused until space is freed");
        return -1;
    }
    return 0;
}

static char *
s_http_metrics (void *arg, size_t *len)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    llmq_metrics_src_t src = {
        .store = self->store, .router = self->router, .tenants = self->tenants,
        .now_ms = llmq_now_us () / 1000,
        .submitted = self->n_submitted, .done = self->n_done, .failed = self->n_failed,
        .cancelled = self->n_cancelled, .expired = self->n_expired, .dead = self->n_dead,
        .retried = self->n_retried, .restarted = self->n_restarted, .degraded = self->n_degraded,
        .retry_budget_refused = self->n_retry_budget, .probes = self->n_probes,
        .cache_hits = self->n_cache_hits, .cache_misses = self->n_cache_misses,
        .commits = self->n_commits, .commit_us = self->commit_us,
        .workers = zhashx_size (self->workers)
    };
    size_t n = zhashx_size (self->workers), i = 0;
    llmq_metrics_worker_t *list = (llmq_metrics_worker_t *) calloc (n ? n : 1, sizeof *list);
    if (!list) {
        return NULL;
    }
    for (s_worker_t *w = (s_worker_t *) zhashx_first (self->workers); w; w = (s_worker_t *) zhashx_next (self->workers)) {
        src.slots_free += w->credit;
        if (i < n) {
            list[i++] = (llmq_metrics_worker_t) { .id = w->key, .host = w->host, .figures = &w->figures };
        }
    }
    src.worker_list = list;
    src.nworker_list = i;
    char *text = llmq_metrics_render (self->metrics, &src, len);
    free (list);
    return text;
}

/*  The broker-state ops (s_ops_admin: streams, breakers, workers, queue)
    here; the rest are admin.c's. */
static json_t *
s_http_admin (void *arg, json_t *req, int *code, char *why, size_t whylen)
{
    llmq_broker_t *self = (llmq_broker_t *) arg;
    bool handled = false;
    json_t *rep = s_ops_admin (self, req, llmq_now_us (), &handled, code, why, whylen);
    if (handled) {
        return rep;
    }
    llmq_admin_t ctx = { self->store, self->router, self->config, self->arena, llmq_now_us (),
                         NULL, NULL, self->history, self->tenants };
    return llmq_admin_run (&ctx, req, code, why, whylen);
}

/*  The whole of a PEM file named by [broker] `name` (at most 1 MiB), or
    NULL with "CONFIG:LINE: [broker] NAME: cannot read PATH: WHY" in err. */
static char *
s_read_pem (const llmq_config_t *c, const char *path, int line, const char *name, char *err, size_t errlen)
{
    FILE *f = fopen (path, "rb");
    char *text = f ? (char *) malloc ((1u << 20) + 1) : NULL;
    size_t n = text ? fread (text, 1, 1u << 20, f) : 0;
    int e = errno;
    bool whole = f && text && !ferror (f) && feof (f);
    if (f) {
        fclose (f);
    }
    if (!whole || n == 0 || !memmem (text, n, "-----BEGIN ", 11)) {
        snprintf (err, errlen, "%s:%d: [broker] %s: cannot read %s: %s", c->path, line, name, path,
                  !f ? strerror (e) : !text ? "out of memory" : !whole ? "larger than 1 MiB or unreadable"
                                                                       : "not PEM (no -----BEGIN line)");
        free (text);
        return NULL;
    }
    text[n] = '\0';
    return text;
}

/*  Start the HTTP side if [broker] http is set. The token is read from
    the environment once, here; the config names only the variable. */
static int
s_http_start (llmq_broker_t *self, char *err, size_t errlen)
{
    const llmq_config_t *c = self->config;
    if (!c->http || !*c->http) {
        return 0;
    }
    const char *token = c->admin_token_env ? getenv (c->admin_token_env) : NULL;
    if (c->admin_token_env && (!token || !*token)) {
        llmq_warn ("[broker] admin_token_env: %s is not set: the HTTP admin API is disabled",
                   c->admin_token_env);
    }
    char *cert = NULL, *key = NULL;
    if (c->http_tls_cert
    && (!(cert = s_read_pem (c, c->http_tls_cert, c->http_tls_cert_line, "http_tls_cert", err, errlen))
     || !(key = s_read_pem (c, c->http_tls_key, c->http_tls_key_line, "http_tls_key", err, errlen)))) {
        free (cert);
        return -1;
    }
    llmq_http_handlers_t h = { s_http_ready, s_http_metrics, s_http_admin, self };
    self->http = llmq_http_new (c->http, token, cert, key, &h, err, errlen);
    free (cert);
    if (key) {
        explicit_bzero (key, strlen (key));
        free (key);
    }
    if (!self->http) {
        return -1;
    }
    llmq_info ("http: listening on port %d (%s)", llmq_http_port (self->http), c->http_tls_cert ? "https" : "http");
    return 0;
}

int
llmq_broker_http_port (llmq_broker_t *self)
{
    return self->http ? llmq_http_port (self->http) : 0;
}

llmq_broker_t *
llmq_broker_new (const llmq_config_t *config, char *err, size_t errlen)
{
    llmq_broker_t *self = (llmq_broker_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (err, errlen, "out of memory");
        return NULL;
    }
    self->config = config;
    llmq_store_opts_t o = { 0 };
    o.sync = config->sync;
    o.map_size = config->map_size;
    o.max_map_size = config->max_map_size;
    for (int p = 0; p < LLMQ_NPRIO; p++) {
        o.prio_offset_us[p] = config->prio_offset_ms[p] * 1000;
    }
    o.result_ttl_us = config->result_ttl_ms * 1000;
    o.max_attempts = config->max_attempts;
    o.backoff_us = config->retry_backoff_ms * 1000;
    o.backoff_max_us = config->retry_backoff_max_ms * 1000;
    o.cache_max_bytes = config->cache_max_size;
    self->store = llmq_store_open (config->data_dir, &o, llmq_now_us (), err, errlen);
    if (!self->store) {
        free (self);
        return NULL;
    }
    /* Messages over max_message get an error reply; ZeroMQ drops the peer
       only past twice that, so the reply can be sent for moderate excess. */
    uint64_t hard = config->max_message * 2 + 65536;
    int maxmsg = hard > INT32_MAX ? INT32_MAX : (int) hard;
    self->frontend = s_bind (config->frontend, maxmsg, &self->frontend_ep, err, errlen);
    self->backend = self->frontend ? s_bind (config->backend, maxmsg, &self->backend_ep, err, errlen) : NULL;
    if (!self->backend) {
        llmq_broker_destroy (&self);
        return NULL;
    }
    self->workers = zhashx_new ();
    zhashx_set_destructor (self->workers, s_worker_free);
    self->leases = s_u64_map (s_lease_free);
    self->subs = s_u64_map (s_sub_free);
    self->avoid = s_u64_map (NULL);
    self->history = json_array ();
    self->router = s_router_new (config);
    self->tenants = s_tenants_new (config);
    self->fair = config->fair_share ? llmq_fair_new () : NULL;
    self->event_subs = zlistx_new ();
    zlistx_set_destructor (self->event_subs, s_frame_free);
    if (!self->router || !self->history || !self->tenants) {
        snprintf (err, errlen, "out of memory");
        llmq_broker_destroy (&self);
        return NULL;
    }
    llmq_router_on_event (self->router, s_on_router_event, self);
    llmq_tenants_on_alert (self->tenants, s_on_budget_alert, self);
    if (config->budget_webhook) {
        curl_global_init (CURL_GLOBAL_DEFAULT);
        self->webhook = llmq_webhook_new (config->budget_webhook);
        if (!self->webhook) {
            snprintf (err, errlen, "out of memory");
            llmq_broker_destroy (&self);
            return NULL;
        }
    }
    s_router_load (self);
    self->arena = llmq_arena_new ();
    self->deferred = zlistx_new ();
    self->full = llmq_store_check_space (self->store);
    self->metrics = llmq_metrics_new (config);
    if (!self->metrics) {
        snprintf (err, errlen, "out of memory");
        llmq_broker_destroy (&self);
        return NULL;
    }
    if (s_http_start (self, err, errlen)) {
        llmq_broker_destroy (&self);
        return NULL;
    }
    return self;
}

void
llmq_broker_destroy (llmq_broker_t **self_p)
{
    if (self_p && *self_p) {
        llmq_broker_t *self = *self_p;
        for (size_t i = 0; i < self->nout; i++) {
            zmsg_destroy (&self->out[i].msg);
        }
        free (self->out);
        if (self->deferred) {
            for (s_out_t *d = (s_out_t *) zlistx_first (self->deferred); d; d = (s_out_t *) zlistx_next (self->deferred)) {
                zmsg_destroy (&d->msg);
                free (d);
            }
            zlistx_destroy (&self->deferred);
        }
        zhashx_destroy (&self->workers);
        zhashx_destroy (&self->leases);     /* gives grants back: before the router */
        zhashx_destroy (&self->subs);
        zhashx_destroy (&self->avoid);
        llmq_router_destroy (&self->router);
        llmq_tenants_destroy (&self->tenants);
        llmq_fair_destroy (&self->fair);
        zlistx_destroy (&self->event_subs);
        if (self->webhook) {
            llmq_webhook_destroy (&self->webhook);
            curl_global_cleanup ();
        }
        json_decref (self->history);
        llmq_http_destroy (&self->http);
        llmq_metrics_destroy (&self->metrics);
        zsock_destroy (&self->frontend);
        zsock_destroy (&self->backend);
        zstr_free (&self->frontend_ep);
        zstr_free (&self->backend_ep);
        llmq_store_close (&self->store);
        llmq_arena_destroy (&self->arena);
        free (self);
        *self_p = NULL;
    }
}

const char *
llmq_broker_frontend (llmq_broker_t *self)
{
    return self->frontend_ep;
}

const char *
llmq_broker_backend (llmq_broker_t *self)
{
    return self->backend_ep;
}

int
llmq_broker_run (llmq_broker_t *self, volatile int *stop)
{
    zmq_pollitem_t items[] = {
        { zsock_resolve (self->frontend), 0, ZMQ_POLLIN, 0 },
        { zsock_resolve (self->backend), 0, ZMQ_POLLIN, 0 },
        { NULL, self->http ? llmq_http_fd (self->http) : -1, ZMQ_POLLIN, 0 }   /* HTTP: one epoll fd */
    };
    int nitems = self->http ? 3 : 2;
    self->next_tick_ms = llmq_mono_ms ();
    while (!*stop) {
        uint64_t now_ms = llmq_mono_ms ();
        uint64_t wake = self->next_tick_ms;
        if (self->wake_ms && self->wake_ms < wake) {
            wake = self->wake_ms;       /* a blocked group may be free before the tick */
        }
        long timeout = wake > now_ms ? (long) (wake - now_ms) : 0;
        if (self->http) {
            timeout = llmq_http_timeout (self->http, timeout);
        }
        int rc = zmq_poll (items, nitems, timeout);
        if (rc < 0 && zmq_errno () != EINTR) {
            llmq_error ("poll failed: %s", zmq_strerror (zmq_errno ()));
            return -1;
        }
        if (*stop) {
            break;              /* what arrived now is not acknowledged: clients retry */
        }
        uint64_t t_turn = llmq_mono_us ();
        if (llmq_store_begin (self->store)) {
            return -1;
        }
        uint64_t now = llmq_now_us ();
        size_t n = 0;
        /* First what did not fit last turn, in arrival order. */
        size_t ndef = zlistx_size (self->deferred);
        for (size_t i = 0; i < ndef; i++) {
            s_out_t *d = (s_out_t *) zlistx_first (self->deferred);
            zlistx_detach_cur (self->deferred);
            bool again = d->sock == self->frontend ? s_on_client (self, &d->msg, now)
                                                   : s_on_worker (self, &d->msg, now);
            if (!again) {
                zmsg_destroy (&d->msg);
            }
            free (d);
        }
        bool more = true;
        while (more && n < S_TURN_MAX) {
            more = false;
            zmsg_t *msg = zmsg_recv (self->frontend);
            if (msg) {
                if (!s_on_client (self, &msg, now)) {
                    zmsg_destroy (&msg);
                }
                more = true;
                n++;
            }
            msg = zmsg_recv (self->backend);
            if (msg) {
                if (!s_on_worker (self, &msg, now)) {
                    zmsg_destroy (&msg);
                }
                more = true;
                n++;
            }
        }
        now_ms = llmq_mono_ms ();
        if (now_ms >= self->next_tick_ms) {
            s_timers (self, now);
            self->next_tick_ms = now_ms + S_TICK_MS;
        }
        if (self->http) {
            llmq_http_run (self->http);     /* every turn: its handlers read and write in this turn */
        }
        s_dispatch (self, now);
        s_router_save (self);
        s_flush_early (self);
        uint64_t t_commit = llmq_mono_us ();
        if (llmq_store_commit (self->store)) {
            llmq_error ("store commit failed: exiting so that a restart recovers from disk");
            return -1;
        }
        uint64_t t_end = llmq_mono_us ();
        self->commit_us += t_end - t_commit;
        llmq_metrics_commit (self->metrics, t_end - t_commit);
        self->turn_us += t_end - t_turn;
        self->n_commits++;
        s_flush (self);
        if (self->webhook) {
            llmq_webhook_poll (self->webhook, llmq_mono_ms ());
        }
        llmq_arena_reset (self->arena);
        /* Between turns, no transaction open: the map may be resized. */
        self->full = llmq_store_check_space (self->store);
    }
    llmq_info ("stopping: all acknowledged work is on disk");
    return 0;
}
