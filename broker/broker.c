/*  broker.c -- the broker's event loop. See broker.h for the turn model and
    docs/protocol.md for every message.

    State kept in memory, all of it rebuildable: the workers we know (by
    ZeroMQ routing id) with their credit; the running leases (job id ->
    worker, token) so a dead worker's jobs can be found; and the
    subscriptions (job id -> client) so results and chunks can be pushed.
    Everything that must survive a crash is in the store.
*/
#include "broker.h"
#include "clock.h"
#include "codec.h"
#include "log.h"
#include "store.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_TICK_MS        100        /* timer granularity */
#define S_TURN_MAX       4096       /* messages applied per turn at most */
#define S_TICK_BUDGET    2000       /* timer records touched per tick */

typedef struct {
    char *key;                      /* routing id as hex: the hash key */
    zframe_t *identity;
    uint64_t credit;                /* jobs it may still be sent */
    uint64_t running;               /* leases it holds */
    uint64_t last_seen_ms;          /* monotonic */
    char *host;
    uint32_t pid;
    uint64_t dispatched;            /* total, for stats */
} s_worker_t;

typedef struct {
    s_worker_t *worker;             /* NULL if its worker is gone */
    uint64_t lease;
    uint32_t chunks;                /* chunks of this attempt forwarded to a client */
    bool restart;                   /* a broken stream may start over (RESET):
                                       the job asked, and has attempts left */
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
    uint64_t *group_rr;             /* round robin position per config group */
    uint64_t worker_rr;
    s_out_t *out;                   /* messages to send after the commit */
    size_t nout, outcap;
    llmq_arena_t *arena;            /* decoded messages of the current turn */
    zlistx_t *deferred;             /* s_out_t*: messages that did not fit in the store, retried next turn */
    size_t out_mark;                /* outbox size at the open savepoint */
    uint64_t next_tick_ms, next_heartbeat_ms;
    bool full;                      /* store refuses submits */
    /* Totals since start, for stats. */
    uint64_t n_submitted, n_dispatched, n_done, n_failed, n_retried, n_cancelled, n_expired,
             n_dead, n_lost_workers, n_commits, n_bad_messages, n_restarted;
    uint64_t commit_us;             /* total time in commits (sync included) */
    uint64_t turn_us;               /* total time in turns, commits included */
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

static void
s_lease_free (void **item)
{
    free (*item);
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
   Clients
   ------------------------------------------------------------------------ */

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
        s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REJECTED, LLMQ_ERR_STORE_FULL,
                       "broker store is full: new jobs are refused until results expire or its size limit is raised");
        return false;
    }
    uint64_t *ids = (uint64_t *) llmq_arena_alloc (self->arena, m->njobs * sizeof *ids);
    uint8_t *dups = (uint8_t *) llmq_arena_alloc (self->arena, m->njobs);
    int rc = llmq_store_submit_all (self->store, m->jobs, m->njobs, now, dups);
    if (rc == LLMQ_ERR_STORE_FULL && llmq_store_can_grow (self->store)) {
        llmq_store_want_grow (self->store);
        return true;                /* retried after the map has grown */
    }
    if (rc) {
        s_reply_error (self, self->frontend, from, m->corr, LLMQ_CMD_REJECTED, rc,
                       rc == LLMQ_ERR_STORE_FULL
                       ? "broker store is full: new jobs are refused until results expire or its size limit is raised"
                       : "broker store error");
        return false;
    }
    bool any_dup = false;
    for (size_t i = 0; i < m->njobs; i++) {
        llmq_job_t *job = &m->jobs[i];
        ids[i] = job->id;
        any_dup |= dups[i];
        if (!dups[i]) {
            self->n_submitted++;
        }
        if (m->notify) {
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
    return false;
}

static void
s_client_cancel (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m, uint64_t now)
{
    int was = 0;
    uint64_t lease = 0;
    llmq_result_t final;
    int rc = llmq_store_cancel (self->store, m->id, now, &was, &lease, &final, self->arena);
    if (rc == 0) {
        if (was == LLMQ_STATE_RUNNING) {
            s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, U64_KEY (m->id));
            if (l && l->worker) {
                llmq_msg_t a = { 0 };
                a.cmd = LLMQ_CMD_ABORT;
                a.id = m->id;
                a.lease = lease;
                s_send (self, self->backend, l->worker->identity, &a);
                l->worker->running--;
            }
            zhashx_delete (self->leases, U64_KEY (m->id));
        }
        s_push_result (self, &final);
    }
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
    llmq_msg_t r = { 0 };
    r.cmd = LLMQ_CMD_RESULT;
    r.corr = m->corr;
    r.results = &res;
    r.nresults = 1;
    s_send (self, self->frontend, from, &r);
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

static void
s_client_stats (llmq_broker_t *self, zframe_t *from, llmq_msg_t *m)
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
    json_object_set_new (t, "cancelled", json_integer ((json_int_t) self->n_cancelled));
    json_object_set_new (t, "expired", json_integer ((json_int_t) self->n_expired));
    json_object_set_new (t, "dead", json_integer ((json_int_t) self->n_dead));
    json_object_set_new (t, "lost_workers", json_integer ((json_int_t) self->n_lost_workers));
    json_object_set_new (t, "commits", json_integer ((json_int_t) self->n_commits));
    json_object_set_new (t, "bad_messages", json_integer ((json_int_t) self->n_bad_messages));
    json_object_set_new (t, "commit_us", json_integer ((json_int_t) self->commit_us));
    json_object_set_new (t, "turn_us", json_integer ((json_int_t) self->turn_us));
    json_object_set_new (root, "totals", t);
    uint64_t used, size, max;
    llmq_store_space (self->store, &used, &size, &max);
    json_t *st = json_object ();
    json_object_set_new (st, "used_bytes", json_integer ((json_int_t) used));
    json_object_set_new (st, "map_bytes", json_integer ((json_int_t) size));
    json_object_set_new (st, "max_bytes", json_integer ((json_int_t) max));
    json_object_set_new (st, "full", json_boolean (self->full));
    json_object_set_new (root, "store", st);
    char *text = json_dumps (root, JSON_COMPACT);
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

/*  Retry delay for the n-th failed attempt: base * 2^(n-1), capped. */
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
    bool saved = s_save (self, false);
    llmq_result_t *res = &m->results[0];
    llmq_result_t final;
    int rc;
    bool ended = false;             /* the job reached a final state */
    if (m->cmd == LLMQ_CMD_DONE) {
        res->state = LLMQ_STATE_DONE;
        rc = llmq_store_complete (self->store, m->id, m->lease, res, now, &final, self->arena);
        ended = rc == 0;
    }
    else if (res->error_class == LLMQ_EC_CANCELLED && (l->chunks == 0 || l->restart)) {
        /* The worker aborted on its own (shutting down): run it elsewhere. */
        rc = llmq_store_requeue (self->store, m->id, m->lease, false, 0, res, now, &final, self->arena);
        if (rc == 0 && l->chunks > 0) {
            s_send_reset (self, m->id, l, "the worker stopped mid-stream");
        }
    }
    else if (llmq_error_class_retryable (res->error_class)
             || (res->error_class == LLMQ_EC_STREAM_BROKEN && (l->chunks == 0 || l->restart))) {
        /*  A stream that broke is retryable while none of its chunks
            reached a client (none was subscribed), or, if the job allows,
            starts over with a RESET. */
        llmq_result_t st;
        uint32_t attempt = 1;
        if (llmq_store_status (self->store, m->id, &st, self->arena) == 0) {
            attempt = st.attempts + 1;
        }
        uint64_t nb = now + s_backoff_us (self->config, attempt, m->retry_after_ms);
        rc = llmq_store_requeue (self->store, m->id, m->lease, true, nb, res, now, &final, self->arena);
        if (rc == 0) {
            self->n_retried++;
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
s_worker_chunk (llmq_broker_t *self, llmq_msg_t *m)
{
    s_lease_t *l = (s_lease_t *) zhashx_lookup (self->leases, U64_KEY (m->id));
    if (!l || l->lease != m->lease) {
        return;                     /* from an older attempt: never forwarded */
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
        s_worker_chunk (self, &m);
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
    else if (m.cmd != LLMQ_CMD_HEARTBEAT) {
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

static void
s_dispatch (llmq_broker_t *self, uint64_t now)
{
    const llmq_route_stats_t *rs;
    for (;;) {
        s_worker_t *w = s_next_worker (self);
        if (!w) {
            return;
        }
        size_t nr = llmq_store_routes (self->store, &rs);
        uint64_t best_id = 0, best_vdl = UINT64_MAX;
        for (size_t i = 0; i < nr; i++) {
            uint64_t id, vdl;
            if (llmq_store_peek (self->store, rs[i].number, &id, &vdl) == 0 && vdl < best_vdl
            &&  llmq_config_group (self->config, rs[i].name)) {
                best_id = id;
                best_vdl = vdl;
            }
        }
        if (!best_id) {
            return;
        }
        llmq_job_t job;
        llmq_result_t final;
        bool saved = s_save (self, false);
        int rc = llmq_store_lease (self->store, best_id, now, &job, &final, self->arena);
        bool written = rc == 0 || rc == LLMQ_ERR_EXPIRED;
        int saved_rc = written ? s_release (self, saved) : (s_rollback (self, saved), rc);
        if (saved_rc == LLMQ_ERR_STORE_FULL) {
            return;             /* no room to record a lease: next turn */
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
            return;
        }
        const llmq_group_t *g = llmq_config_group (self->config, job.model);
        size_t gi = (size_t) (g - self->config->groups);
        const char *dep = g->deployments[self->group_rr[gi]++ % g->ndeployments];
        const llmq_deployment_t *d = llmq_config_deployment (self->config, dep);
        llmq_msg_t m = { 0 };
        m.cmd = LLMQ_CMD_DISPATCH;
        m.jobs = &job;
        m.njobs = 1;
        m.deployment = dep;
        m.timeout_ms = d ? d->timeout_ms : 60000;
        s_send (self, self->backend, w->identity, &m);
        s_lease_t *l = (s_lease_t *) calloc (1, sizeof *l);
        l->worker = w;
        l->lease = job.lease;
        uint32_t max = job.max_attempts ? job.max_attempts : self->config->max_attempts;
        l->restart = job.stream && job.restart && job.attempts + 1 < max;
        zhashx_update (self->leases, U64_KEY (job.id), l);
        w->credit--;
        w->running++;
        w->dispatched++;
        self->n_dispatched++;
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
    self->group_rr = (uint64_t *) calloc (config->ngroups + 1, sizeof (uint64_t));
    self->arena = llmq_arena_new ();
    self->deferred = zlistx_new ();
    self->full = llmq_store_check_space (self->store);
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
        zhashx_destroy (&self->leases);
        zhashx_destroy (&self->subs);
        zsock_destroy (&self->frontend);
        zsock_destroy (&self->backend);
        zstr_free (&self->frontend_ep);
        zstr_free (&self->backend_ep);
        llmq_store_close (&self->store);
        llmq_arena_destroy (&self->arena);
        free (self->group_rr);
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
        { zsock_resolve (self->backend), 0, ZMQ_POLLIN, 0 }
    };
    self->next_tick_ms = llmq_mono_ms ();
    while (!*stop) {
        uint64_t now_ms = llmq_mono_ms ();
        long timeout = self->next_tick_ms > now_ms ? (long) (self->next_tick_ms - now_ms) : 0;
        int rc = zmq_poll (items, 2, timeout);
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
        s_dispatch (self, now);
        s_flush_early (self);
        uint64_t t_commit = llmq_mono_us ();
        if (llmq_store_commit (self->store)) {
            llmq_error ("store commit failed: exiting so that a restart recovers from disk");
            return -1;
        }
        uint64_t t_end = llmq_mono_us ();
        self->commit_us += t_end - t_commit;
        self->turn_us += t_end - t_turn;
        self->n_commits++;
        s_flush (self);
        llmq_arena_reset (self->arena);
        /* Between turns, no transaction open: the map may be resized. */
        self->full = llmq_store_check_space (self->store);
    }
    llmq_info ("stopping: all acknowledged work is on disk");
    return 0;
}
