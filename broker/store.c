/*  store.c -- the broker's durable state in LMDB. See store.h for the
    contract and docs/storage.md for the layout.

    Why it looks like this:

    * One write transaction per broker loop turn. The broker calls begin,
      applies everything that arrived, and commits once; with sync on, that
      one commit is the fsync that makes every SUBMIT of the turn durable
      before any ACCEPTED goes out.
    * Jobs are written once at submit and rewritten only when their state
      changes on disk (retry, delay). A dispatch writes the small lease
      record, not the job: the lease token comes from a global counter
      (meta next_lease) so a report from an older lease, even one from
      before a restart, can never match a newer one.
    * All keys are big-endian so LMDB's memcmp order is numeric order: the
      ready index is ordered by route, then virtual deadline
      (enqueue time + priority offset), then id. A low-priority job's key
      never changes, so once enough time has passed it is ahead of any new
      urgent job: nothing starves.
    * Per-route depth counters live in memory, rebuilt at open. If a commit
      ever fails, the broker exits and rebuilds everything from disk on
      restart (crash-only), so these counters never drift from the truth.
*/
#include "store.h"
#include "depth.h"
#include "log.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_ROUTES 4096

typedef struct {
    char *name;
    llmq_route_stats_t stats;
} s_route_t;

/*  What the in-memory view was at some point, to go back to it when a
    transaction (or a nested one) is aborted. */
typedef struct {
    uint64_t next_id, next_lease;
    size_t nroutes;
    llmq_route_stats_t *stats;      /* nroutes entries */
    size_t depth_mark;              /* the tenant depth journal's length */
} s_view_t;

struct llmq_store {
    MDB_env *env;
    MDB_txn *txn;                   /* the turn's write transaction, or NULL */
    MDB_dbi state;                  /* name -> blob: the router's snapshots */
    MDB_dbi usage;                  /* day|org|user|model -> counts */
    MDB_dbi meta, routes, jobs, ready, delayed, deadlines, leases, results, expiry, idem,
            batches, batchjobs;
    MDB_dbi dead;                   /* id -> expire_at|route|job record: dead letters */
    MDB_dbi cache;                  /* sha256 -> expires|drop|last_used|result: response cache */
    MDB_dbi cachelru;               /* last_used|sha256 -> "": its LRU order */
    MDB_dbi cacheexp;               /* drop_at|sha256 -> "": when the timer drops an entry */
    llmq_store_opts_t opts;
    uint64_t next_id;               /* next job id */
    uint64_t next_lease;            /* next lease token */
    bool counters_dirty;            /* next_id/next_lease changed this turn */
    bool full;                      /* at max map size and nearly full: refuse submits */
    uint64_t map_size;
    s_route_t *routes_v;            /* index = route number - 1 */
    size_t nroutes;
    llmq_route_stats_t *stats_v;    /* view for llmq_store_routes */
    llmq_depth_t *depth;            /* queued jobs per tenant */
    llmq_buf_t buf;                 /* scratch for encoding records */
    /* The in-memory view at begin, put back by abort so that it never
       counts what the aborted transaction did. */
    s_view_t turn_view;             /* in-memory view at llmq_store_begin */
    s_view_t batch_view;            /* ... at llmq_store_save */
    MDB_txn *parent;                /* the turn's transaction while a savepoint is open */
    bool batch_dirty;               /* counters_dirty at llmq_store_save */
    bool tight;                     /* little room left: callers use savepoints */
    bool want_grow;                 /* a write did not fit: grow at the next check */
    uint64_t used;                  /* bytes in use at the last check_space */
    uint64_t file_end;              /* bytes of the data file written (preallocated) */
    uint64_t turn_bytes;            /* estimate of bytes written since then */
};

static uint64_t s_page_cost (llmq_store_t *self, size_t size);
static uint64_t s_reserve (llmq_store_t *self);
static bool s_room (llmq_store_t *self, uint64_t need);
static uint64_t s_dead_cost (llmq_store_t *self, const llmq_job_t *job);

/* ------------------------------------------------------------------------
   Keys
   ------------------------------------------------------------------------ */

static inline void
s_put64 (unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char) v;
        v >>= 8;
    }
}

static inline uint64_t
s_get64 (const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) {
        v = (v << 8) | p[i];
    }
    return v;
}

static inline void
s_put32 (unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char) (v >> 24);
    p[1] = (unsigned char) (v >> 16);
    p[2] = (unsigned char) (v >> 8);
    p[3] = (unsigned char) v;
}

static inline uint32_t
s_get32 (const unsigned char *p)
{
    return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) | ((uint32_t) p[2] << 8) | p[3];
}

/*  Keys of the ready index: route(4) vdeadline(8) id(8). */
typedef struct { unsigned char b[20]; } s_ready_key_t;
/*  Keys of time-ordered indexes: time(8) id(8). */
typedef struct { unsigned char b[16]; } s_time_key_t;
typedef struct { unsigned char b[8]; } s_id_key_t;

static MDB_val
s_ready_key (s_ready_key_t *k, uint32_t route, uint64_t vdl, uint64_t id)
{
    s_put32 (k->b, route);
    s_put64 (k->b + 4, vdl);
    s_put64 (k->b + 12, id);
    return (MDB_val) { sizeof k->b, k->b };
}

static MDB_val
s_time_key (s_time_key_t *k, uint64_t t, uint64_t id)
{
    s_put64 (k->b, t);
    s_put64 (k->b + 8, id);
    return (MDB_val) { sizeof k->b, k->b };
}

static MDB_val
s_id_key (s_id_key_t *k, uint64_t id)
{
    s_put64 (k->b, id);
    return (MDB_val) { sizeof k->b, k->b };
}

static MDB_val
s_str_val (const char *s)
{
    return (MDB_val) { strlen (s), (void *) s };
}

static MDB_val s_empty = { 0, (void *) "" };

/*  LMDB errors that mean "no space": the caller refuses the submit. */
static int
s_err (int rc)
{
    if (rc == MDB_MAP_FULL) {
        return LLMQ_ERR_STORE_FULL;
    }
    if (rc == MDB_NOTFOUND) {
        return LLMQ_ERR_NOT_FOUND;
    }
    if (rc) {
        llmq_error ("store: %s", mdb_strerror (rc));
        return LLMQ_ERR_STORE;
    }
    return 0;
}

#define TRY(expr) do { int rc_ = (expr); if (rc_) { return s_err (rc_); } } while (0)

/* ------------------------------------------------------------------------
   Routes
   ------------------------------------------------------------------------ */

static s_route_t *
s_route_by_name (llmq_store_t *self, const char *name)
{
    for (size_t i = 0; i < self->nroutes; i++) {
        if (strcmp (self->routes_v[i].name, name) == 0) {
            return &self->routes_v[i];
        }
    }
    return NULL;
}

static s_route_t *
s_route_add (llmq_store_t *self, const char *name, uint32_t number)
{
    if (number == 0 || number > S_MAX_ROUTES) {
        return NULL;
    }
    if (number > self->nroutes) {
        s_route_t *v = (s_route_t *) realloc (self->routes_v, number * sizeof *v);
        llmq_route_stats_t *sv = (llmq_route_stats_t *) realloc (self->stats_v, number * sizeof *sv);
        if (!v || !sv) {
            free (v ? v : self->routes_v);
            self->routes_v = NULL;
            self->stats_v = sv;
            return NULL;
        }
        memset (v + self->nroutes, 0, (number - self->nroutes) * sizeof *v);
        self->routes_v = v;
        self->stats_v = sv;
        self->nroutes = number;
    }
    s_route_t *r = &self->routes_v[number - 1];
    free (r->name);
    r->name = strdup (name);
    r->stats.name = r->name;
    r->stats.number = number;
    return r->name ? r : NULL;
}

int
llmq_store_route (llmq_store_t *self, const char *name, uint32_t *number)
{
    s_route_t *r = s_route_by_name (self, name);
    if (!r) {
        uint32_t n = (uint32_t) self->nroutes + 1;
        unsigned char nb[4];
        s_put32 (nb, n);
        MDB_val k = s_str_val (name), v = { 4, nb };
        TRY (mdb_put (self->txn, self->routes, &k, &v, MDB_NOOVERWRITE));
        r = s_route_add (self, name, n);
        if (!r) {
            return LLMQ_ERR_NOMEM;
        }
    }
    *number = r->stats.number;
    return 0;
}

size_t
llmq_store_routes (llmq_store_t *self, const llmq_route_stats_t **routes)
{
    for (size_t i = 0; i < self->nroutes; i++) {
        self->stats_v[i] = self->routes_v[i].stats;
    }
    *routes = self->stats_v;
    return self->nroutes;
}

size_t
llmq_store_tenants (llmq_store_t *self, llmq_depth_entry_t *out, size_t max, size_t *tenants,
                    uint64_t *rest)
{
    return llmq_depth_top (self->depth, out, max, tenants, rest);
}

uint64_t
llmq_store_dead_count (llmq_store_t *self)
{
    MDB_txn *txn = self->txn;
    if (!txn && mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0) {
        return 0;
    }
    MDB_stat st;
    uint64_t n = mdb_stat (txn, self->dead, &st) == 0 ? st.ms_entries : 0;
    if (txn != self->txn) {
        mdb_txn_abort (txn);
    }
    return n;
}

static llmq_route_stats_t *
s_stats (llmq_store_t *self, const char *model)
{
    s_route_t *r = model ? s_route_by_name (self, model) : NULL;
    return r ? &r->stats : NULL;
}

/* ------------------------------------------------------------------------
   Open, close, transactions, space
   ------------------------------------------------------------------------ */

static int
s_meta_get64 (llmq_store_t *self, MDB_txn *txn, const char *key, uint64_t *v)
{
    MDB_val k = s_str_val (key), d;
    int rc = mdb_get (txn, self->meta, &k, &d);
    if (rc == 0 && d.mv_size == 8) {
        *v = s_get64 ((const unsigned char *) d.mv_data);
    }
    return rc;
}

static int
s_meta_put64 (llmq_store_t *self, const char *key, uint64_t v)
{
    unsigned char b[8];
    s_put64 (b, v);
    MDB_val k = s_str_val (key), d = { 8, b };
    return mdb_put (self->txn, self->meta, &k, &d, 0);
}

/*  Brings the in-memory view back from disk and returns jobs that were
    running when the broker stopped to the ready index. */
static int
s_recover (llmq_store_t *self, uint64_t now, char *err, size_t errlen)
{
    MDB_txn *txn = self->txn;
    /* Format version: refuse what we do not understand. */
    MDB_val k = s_str_val ("format"), d;
    int rc = mdb_get (txn, self->meta, &k, &d);
    if (rc == MDB_NOTFOUND) {
        unsigned char b[4];
        s_put32 (b, LLMQ_STORE_FORMAT);
        d = (MDB_val) { 4, b };
        if ((rc = mdb_put (txn, self->meta, &k, &d, 0))) {
            return rc;
        }
    }
    else if (rc) {
        return rc;
    }
    else if (d.mv_size != 4 || s_get32 ((const unsigned char *) d.mv_data) != LLMQ_STORE_FORMAT) {
        snprintf (err, errlen, "store format %u is not supported by this broker (it reads format %d); "
                  "see docs/storage.md", d.mv_size == 4 ? s_get32 ((const unsigned char *) d.mv_data) : 0,
                  LLMQ_STORE_FORMAT);
        return -1;
    }
    self->next_id = 1;
    self->next_lease = 1;
    s_meta_get64 (self, txn, "next_id", &self->next_id);
    s_meta_get64 (self, txn, "next_lease", &self->next_lease);

    MDB_cursor *c;
    if ((rc = mdb_cursor_open (txn, self->routes, &c))) {
        return rc;
    }
    MDB_val key, val;
    for (rc = mdb_cursor_get (c, &key, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get (c, &key, &val, MDB_NEXT)) {
        char name[512];
        size_t len = key.mv_size < sizeof name - 1 ? key.mv_size : sizeof name - 1;
        memcpy (name, key.mv_data, len);
        name[len] = 0;
        if (val.mv_size != 4 || !s_route_add (self, name, s_get32 ((const unsigned char *) val.mv_data))) {
            mdb_cursor_close (c);
            snprintf (err, errlen, "store: corrupt route record '%s'", name);
            return -1;
        }
    }
    mdb_cursor_close (c);

    /* Leases of the previous run: the jobs go back to ready, uncounted. */
    if ((rc = mdb_cursor_open (txn, self->leases, &c))) {
        return rc;
    }
    size_t requeued = 0;
    llmq_arena_t *arena = llmq_arena_new ();
    while ((rc = mdb_cursor_get (c, &key, &val, MDB_FIRST)) == 0) {
        uint64_t id = s_get64 ((const unsigned char *) key.mv_data);
        if ((rc = mdb_cursor_del (c, 0))) {
            break;
        }
        s_id_key_t ik;
        MDB_val jk = s_id_key (&ik, id), jv;
        if ((rc = mdb_get (txn, self->jobs, &jk, &jv)) == 0) {
            llmq_job_t job;
            if (llmq_job_decode (jv.mv_data, jv.mv_size, &job, arena) == 0) {
                s_route_t *r = s_route_by_name (self, job.model ? job.model : "");
                s_ready_key_t rk;
                MDB_val rkv = s_ready_key (&rk, r ? r->stats.number : 0, job.vdeadline_us, id);
                if ((rc = mdb_put (txn, self->ready, &rkv, &s_empty, 0))) {
                    break;
                }
                if (job.deadline_us) {
                    s_time_key_t dk;
                    MDB_val dkv = s_time_key (&dk, job.deadline_us, id);
                    mdb_put (txn, self->deadlines, &dkv, &s_empty, 0);
                }
                requeued++;
            }
        }
        llmq_arena_reset (arena);
        rc = 0;
    }
    mdb_cursor_close (c);
    if (rc && rc != MDB_NOTFOUND) {
        llmq_arena_destroy (&arena);
        return rc;
    }
    if (requeued) {
        llmq_info ("store: %zu job(s) running at the last stop are back in the queue", requeued);
    }

    /* Depth counters, from the job records. */
    if ((rc = mdb_cursor_open (txn, self->jobs, &c))) {
        llmq_arena_destroy (&arena);
        return rc;
    }
    size_t live = 0;
    for (rc = mdb_cursor_get (c, &key, &val, MDB_FIRST); rc == 0; rc = mdb_cursor_get (c, &key, &val, MDB_NEXT)) {
        llmq_job_t job;
        if (llmq_job_decode (val.mv_data, val.mv_size, &job, arena) == 0) {
            llmq_route_stats_t *st = s_stats (self, job.model);
            if (st) {
                if (job.state == LLMQ_STATE_DELAYED) {
                    st->delayed++;
                }
                else {
                    st->ready[job.priority < LLMQ_NPRIO ? job.priority : LLMQ_NPRIO - 1]++;
                }
                (void) llmq_depth_add (self->depth, job.user, job.org, 1);
            }
            live++;
        }
        llmq_arena_reset (arena);
    }
    mdb_cursor_close (c);
    llmq_arena_destroy (&arena);
    llmq_depth_settle (self->depth);
    (void) now;
    llmq_info ("store: %zu live job(s), next id %llu", live, (unsigned long long) self->next_id);
    return 0;
}

llmq_store_t *
llmq_store_open (const char *dir, const llmq_store_opts_t *opts, uint64_t now, char *err, size_t errlen)
{
    llmq_store_t *self = (llmq_store_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (err, errlen, "out of memory");
        return NULL;
    }
    self->opts = *opts;
    if (self->opts.max_map_size < self->opts.map_size) {
        self->opts.max_map_size = self->opts.map_size;
    }
    llmq_buf_init (&self->buf);
    if (!(self->depth = llmq_depth_new ())) {
        snprintf (err, errlen, "out of memory");
        free (self);
        return NULL;
    }
    if (mkdir (dir, 0750) != 0 && errno != EEXIST) {
        snprintf (err, errlen, "%s: cannot create data directory: %s", dir, strerror (errno));
        llmq_depth_destroy (&self->depth);
        free (self);
        return NULL;
    }
    int rc = mdb_env_create (&self->env);
    if (rc == 0) {
        mdb_env_set_maxdbs (self->env, 32);
        rc = mdb_env_set_mapsize (self->env, (size_t) opts->map_size);
    }
    if (rc == 0) {
        unsigned flags = MDB_NOTLS | MDB_NORDAHEAD | (opts->sync ? 0 : MDB_NOSYNC);
        rc = mdb_env_open (self->env, dir, flags, 0640);
    }
    if (rc) {
        snprintf (err, errlen, "%s: cannot open store: %s", dir, mdb_strerror (rc));
        llmq_store_close (&self);
        return NULL;
    }
    MDB_envinfo info;
    mdb_env_info (self->env, &info);
    self->map_size = info.me_mapsize;
    /* An existing store may have grown past the configured start size. */
    if ((rc = mdb_txn_begin (self->env, NULL, 0, &self->txn)) == 0) {
        struct { const char *name; MDB_dbi *dbi; } dbs[] = {
            { "meta", &self->meta }, { "routes", &self->routes }, { "jobs", &self->jobs },
            { "ready", &self->ready }, { "delayed", &self->delayed }, { "deadlines", &self->deadlines },
            { "leases", &self->leases }, { "results", &self->results }, { "expiry", &self->expiry },
            { "idem", &self->idem }, { "batches", &self->batches }, { "batchjobs", &self->batchjobs },
            { "state", &self->state }, { "usage", &self->usage }, { "dead", &self->dead },
            { "cache", &self->cache }, { "cachelru", &self->cachelru }, { "cacheexp", &self->cacheexp }
        };
        for (size_t i = 0; rc == 0 && i < sizeof dbs / sizeof dbs[0]; i++) {
            rc = mdb_dbi_open (self->txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
        }
        err[0] = 0;
        if (rc == 0) {
            rc = s_recover (self, now, err, errlen);
        }
        if (rc == 0) {
            rc = mdb_txn_commit (self->txn);
        }
        else {
            mdb_txn_abort (self->txn);
        }
        self->txn = NULL;
    }
    if (rc) {
        if (!err[0]) {
            snprintf (err, errlen, "%s: cannot open store: %s", dir, mdb_strerror (rc));
        }
        llmq_store_close (&self);
        return NULL;
    }
    llmq_store_check_space (self);
    return self;
}

void
llmq_store_close (llmq_store_t **self_p)
{
    if (self_p && *self_p) {
        llmq_store_t *self = *self_p;
        if (self->txn) {
            mdb_txn_abort (self->txn);
        }
        if (self->env) {
            mdb_env_close (self->env);
        }
        for (size_t i = 0; i < self->nroutes; i++) {
            free (self->routes_v[i].name);
        }
        free (self->routes_v);
        free (self->stats_v);
        free (self->turn_view.stats);
        free (self->batch_view.stats);
        llmq_depth_destroy (&self->depth);
        llmq_buf_free (&self->buf);
        free (self);
        *self_p = NULL;
    }
}

static int
s_view_save (llmq_store_t *self, s_view_t *v)
{
    llmq_route_stats_t *stats = (llmq_route_stats_t *) realloc (v->stats,
                                    (self->nroutes ? self->nroutes : 1) * sizeof *stats);
    if (!stats) {
        return LLMQ_ERR_NOMEM;
    }
    v->stats = stats;
    for (size_t i = 0; i < self->nroutes; i++) {
        stats[i] = self->routes_v[i].stats;
    }
    v->nroutes = self->nroutes;
    v->depth_mark = llmq_depth_mark (self->depth);
    v->next_id = self->next_id;
    v->next_lease = self->next_lease;
    return 0;
}

/*  Back to a saved view: routes created since are forgotten. */
static void
s_view_restore (llmq_store_t *self, const s_view_t *v)
{
    for (size_t i = v->nroutes; i < self->nroutes; i++) {
        free (self->routes_v[i].name);
        self->routes_v[i].name = NULL;
    }
    self->nroutes = v->nroutes;
    for (size_t i = 0; i < self->nroutes; i++) {
        self->routes_v[i].stats = v->stats[i];
    }
    self->next_id = v->next_id;
    self->next_lease = v->next_lease;
    llmq_depth_undo (self->depth, v->depth_mark);
}

int
llmq_store_begin (llmq_store_t *self)
{
    if (self->txn) {
        return 0;
    }
    int rc = s_view_save (self, &self->turn_view);
    return rc ? rc : s_err (mdb_txn_begin (self->env, NULL, 0, &self->txn));
}

static void
s_restore (llmq_store_t *self)
{
    s_view_restore (self, &self->turn_view);
    llmq_depth_settle (self->depth);
    self->counters_dirty = false;
}

int
llmq_store_commit (llmq_store_t *self)
{
    if (!self->txn) {
        return 0;
    }
    int rc = 0;
    if (self->counters_dirty) {
        rc = s_meta_put64 (self, "next_id", self->next_id);
        if (rc == 0) {
            rc = s_meta_put64 (self, "next_lease", self->next_lease);
        }
        self->counters_dirty = false;
    }
    if (rc == 0) {
        rc = mdb_txn_commit (self->txn);
    }
    else {
        mdb_txn_abort (self->txn);
    }
    self->txn = NULL;
    if (rc) {
        llmq_error ("store: commit failed: %s", mdb_strerror (rc));
        s_restore (self);
        return LLMQ_ERR_STORE;
    }
    llmq_depth_settle (self->depth);
    return 0;
}

void
llmq_store_abort (llmq_store_t *self)
{
    if (self->txn) {
        mdb_txn_abort (self->txn);
        self->txn = NULL;
        s_restore (self);
    }
}

/*  Pages in use: high-water mark less the pages on the free list. The free
    list is only read when the high-water mark says we are close. */
static uint64_t
s_used_bytes (llmq_store_t *self, bool exact)
{
    MDB_envinfo info;
    MDB_stat st;
    mdb_env_info (self->env, &info);
    mdb_env_stat (self->env, &st);
    uint64_t pages = info.me_last_pgno + 1;
    if (exact) {
        MDB_txn *txn;
        MDB_cursor *c;
        if (mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) == 0) {
            if (mdb_cursor_open (txn, 0, &c) == 0) {
                MDB_val k, v;
                uint64_t freep = 0;
                MDB_cursor_op op = MDB_FIRST;
                while (mdb_cursor_get (c, &k, &v, op) == 0) {
                    /* A free-list record is an ID list: its count comes first. */
                    size_t count;
                    memcpy (&count, v.mv_data, sizeof count);
                    freep += count;
                    op = MDB_NEXT;
                }
                pages = freep < pages ? pages - freep : 0;
                mdb_cursor_close (c);
            }
            mdb_txn_abort (txn);
        }
    }
    return pages * st.ms_psize;
}

/*  Keep the data file written with zeros ahead of the pages in use. An
    fdatasync that must also record a bigger file (and newly allocated
    blocks) costs a journal commit; on a store whose file grows with every
    commit that made durable throughput a third lower than on a store that
    had already grown. So between turns, in small steps, the file is
    extended and synced here, and LMDB's commits only overwrite blocks that
    exist. Sync mode only: without fsync there is nothing to gain. */
#define S_PREALLOC_AHEAD  (64u << 20)
#define S_PREALLOC_STEP   (4u << 20)

static void
s_preallocate (llmq_store_t *self, uint64_t hwm)
{
    if (!self->opts.sync || self->file_end >= self->map_size || self->file_end >= hwm + S_PREALLOC_AHEAD) {
        return;
    }
    int fd;
    if (mdb_env_get_fd (self->env, &fd) != 0) {
        return;
    }
    struct stat st;
    if (fstat (fd, &st) != 0) {
        return;
    }
    /*  Never below what LMDB wrote: only past the end of the file. */
    uint64_t at = (uint64_t) st.st_size > self->file_end ? (uint64_t) st.st_size : self->file_end;
    uint64_t end = at + S_PREALLOC_STEP;
    if (end > self->map_size) {
        end = self->map_size;
    }
    static const char zeros[64 * 1024];
    while (at < end) {
        size_t n = end - at < sizeof zeros ? (size_t) (end - at) : sizeof zeros;
        ssize_t w = pwrite (fd, zeros, n, (off_t) at);
        if (w <= 0) {
            llmq_warn ("store: cannot preallocate the data file: %s", strerror (errno));
            self->file_end = self->map_size;      /* do not try again */
            return;
        }
        at += (uint64_t) w;
    }
    fdatasync (fd);
    self->file_end = at;
}

bool
llmq_store_check_space (llmq_store_t *self)
{
    uint64_t used = s_used_bytes (self, false);
    s_preallocate (self, used);
    /* Grow at 3/4 full (or when a write did not fit), doubling, up to the limit. */
    while ((used > self->map_size / 4 * 3 || self->want_grow) && self->map_size < self->opts.max_map_size) {
        self->want_grow = false;
        uint64_t size = self->map_size * 2;
        if (size > self->opts.max_map_size) {
            size = self->opts.max_map_size;
        }
        int rc = mdb_env_set_mapsize (self->env, (size_t) size);
        if (rc) {
            llmq_error ("store: cannot grow map to %llu bytes: %s", (unsigned long long) size, mdb_strerror (rc));
            break;
        }
        llmq_info ("store: map grown to %llu MiB (limit %llu MiB)", (unsigned long long) (size >> 20),
                   (unsigned long long) (self->opts.max_map_size >> 20));
        self->map_size = size;
    }
    /* At the limit: refuse submits while two reserves remain, one for the
       results of what we hold and one for commits (s_reserve). Near
       it, measure exactly: the free list holds pages freed by results that
       expired and jobs that ended. */
    bool full = false;
    uint64_t reserve = s_reserve (self);
    uint64_t limit = self->map_size > 2 * reserve ? self->map_size - 2 * reserve : 0;
    if (self->map_size >= self->opts.max_map_size && used > self->map_size / 2) {
        used = s_used_bytes (self, true);
        full = used > limit;
    }
    self->used = used;
    self->turn_bytes = 0;
    if (full != self->full) {
        if (full) {
            llmq_warn ("store: full at its limit of %llu MiB: new submits are refused until results expire "
                       "or [broker] max_map_size is raised", (unsigned long long) (self->opts.max_map_size >> 20));
        }
        else {
            llmq_info ("store: space available again, accepting submits");
        }
    }
    self->full = full;
    self->want_grow = false;
    /* Past half of a map that cannot grow, any write might not fit. */
    self->tight = self->map_size >= self->opts.max_map_size && used > self->map_size / 2;
    return full;
}

void
llmq_store_space (llmq_store_t *self, uint64_t *used, uint64_t *map_size, uint64_t *max_size)
{
    *used = s_used_bytes (self, false);
    *map_size = self->map_size;
    *max_size = self->opts.max_map_size;
}

/* ------------------------------------------------------------------------
   Records
   ------------------------------------------------------------------------ */

static int
s_job_get (llmq_store_t *self, uint64_t id, llmq_job_t *job, llmq_arena_t *arena)
{
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, id), v;
    TRY (mdb_get (self->txn, self->jobs, &k, &v));
    if (llmq_job_decode (v.mv_data, v.mv_size, job, arena)) {
        llmq_error ("store: job %llu: corrupt record", (unsigned long long) id);
        return LLMQ_ERR_STORE;
    }
    return 0;
}

static int
s_job_put (llmq_store_t *self, const llmq_job_t *job, unsigned flags)
{
    llmq_buf_clear (&self->buf);
    if (llmq_job_encode (job, &self->buf)) {
        return LLMQ_ERR_NOMEM;
    }
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, job->id), v = { self->buf.size, self->buf.data };
    TRY (mdb_put (self->txn, self->jobs, &k, &v, flags));
    return 0;
}

static int
s_lease_get (llmq_store_t *self, uint64_t id, uint64_t *lease, uint64_t *started)
{
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, id), v;
    TRY (mdb_get (self->txn, self->leases, &k, &v));
    if (v.mv_size != 16) {
        return LLMQ_ERR_STORE;
    }
    *lease = s_get64 ((const unsigned char *) v.mv_data);
    *started = s_get64 ((const unsigned char *) v.mv_data + 8);
    return 0;
}

static int
s_del (llmq_store_t *self, MDB_dbi dbi, MDB_val key)
{
    int rc = mdb_del (self->txn, dbi, &key, NULL);
    return rc == MDB_NOTFOUND ? 0 : s_err (rc);
}

/*  Batch counters: a fixed record of six u64 (llmq_batch_counts_t). */
static int
s_batch_add (llmq_store_t *self, const char *batch, int state, int64_t delta)
{
    MDB_val k = s_str_val (batch), v;
    llmq_batch_counts_t c = { 0 };
    int rc = mdb_get (self->txn, self->batches, &k, &v);
    if (rc == 0 && v.mv_size == sizeof c) {
        memcpy (&c, v.mv_data, sizeof c);
    }
    uint64_t *field = &c.total;
    switch (state) {
        case LLMQ_STATE_DONE:      field = &c.done; break;
        case LLMQ_STATE_FAILED:    field = &c.failed; break;
        case LLMQ_STATE_CANCELLED: field = &c.cancelled; break;
        case LLMQ_STATE_EXPIRED:   field = &c.expired; break;
        case LLMQ_STATE_DEAD:      field = &c.dead; break;
        default:                   field = &c.total; break;
    }
    *field += (uint64_t) delta;
    if (c.total == 0) {
        return s_del (self, self->batches, k);
    }
    v = (MDB_val) { sizeof c, &c };
    TRY (mdb_put (self->txn, self->batches, &k, &v, 0));
    return 0;
}

/*  Key of batchjobs: batch \0 id. */
static MDB_val
s_batchjob_key (char *buf, size_t cap, const char *batch, uint64_t id)
{
    size_t len = strlen (batch);
    if (len + 9 > cap) {
        len = cap - 9;
    }
    memcpy (buf, batch, len);
    buf[len] = 0;
    s_put64 ((unsigned char *) buf + len + 1, id);
    return (MDB_val) { len + 9, buf };
}

/*  Dead letters: `dead` keeps the record of a dead-lettered job beside its
    result, for as long as the result lives, so that it can be looked at,
    queued again or deleted (llmq_store_dead_*). The value starts with the
    result's expiry time (the exact key of its `expiry` entry, whatever
    result_ttl is by then) and the job's route number (to filter by model
    without decoding the record). */
#define S_DEAD_HEAD 12

static int
s_dead_put (llmq_store_t *self, const llmq_job_t *job, uint64_t expire_at)
{
    llmq_buf_clear (&self->buf);
    if (llmq_job_encode (job, &self->buf)) {
        return LLMQ_ERR_NOMEM;
    }
    self->turn_bytes += s_page_cost (self, self->buf.size + S_DEAD_HEAD);
    s_route_t *r = job->model ? s_route_by_name (self, job->model) : NULL;
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, job->id), v = { self->buf.size + S_DEAD_HEAD, NULL };
    TRY (mdb_put (self->txn, self->dead, &k, &v, MDB_RESERVE));
    unsigned char *p = (unsigned char *) v.mv_data;
    s_put64 (p, expire_at);
    s_put32 (p + 8, r ? r->stats.number : 0);
    memcpy (p + S_DEAD_HEAD, self->buf.data, self->buf.size);
    return 0;
}

/*  The job is over: store its result, drop the live record and its indexes
    (the caller removed it from ready/delayed/leases). */
static int
s_finalise (llmq_store_t *self, const llmq_job_t *job, llmq_result_t *res, uint64_t now)
{
    res->id = job->id;
    res->model = job->model;
    res->batch_id = job->batch_id;
    res->custom_id = job->custom_id;
    res->priority = job->priority;
    res->enqueued_us = job->enqueued_us;
    res->finished_us = now;
    llmq_buf_clear (&self->buf);
    if (llmq_result_encode (res, &self->buf)) {
        return LLMQ_ERR_NOMEM;
    }
    self->turn_bytes += s_page_cost (self, self->buf.size);
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, job->id), v = { self->buf.size, self->buf.data };
    TRY (mdb_put (self->txn, self->results, &k, &v, 0));
    TRY (mdb_del (self->txn, self->jobs, &k, NULL));
    if (job->deadline_us) {
        s_time_key_t dk;
        int rc = s_del (self, self->deadlines, s_time_key (&dk, job->deadline_us, job->id));
        if (rc) {
            return rc;
        }
    }
    s_time_key_t ek;
    MDB_val ekv = s_time_key (&ek, now + self->opts.result_ttl_us, job->id);
    MDB_val idem = job->idem_key ? s_str_val (job->idem_key) : s_empty;
    TRY (mdb_put (self->txn, self->expiry, &ekv, &idem, 0));
    if (res->state == LLMQ_STATE_DEAD) {
        int rc = s_dead_put (self, job, now + self->opts.result_ttl_us);
        if (rc) {
            return rc;
        }
    }
    if (job->batch_id) {
        int rc = s_batch_add (self, job->batch_id, res->state, 1);
        if (rc) {
            return rc;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------
   Lifecycle
   ------------------------------------------------------------------------ */

int
llmq_store_submit (llmq_store_t *self, llmq_job_t *job, uint64_t now, bool *dup)
{
    *dup = false;
    if (self->full) {
        return LLMQ_ERR_STORE_FULL;
    }
    if (job->idem_key) {
        MDB_val k = s_str_val (job->idem_key), v;
        int rc = mdb_get (self->txn, self->idem, &k, &v);
        if (rc == 0 && v.mv_size == 8) {
            job->id = s_get64 ((const unsigned char *) v.mv_data);
            *dup = true;
            return 0;
        }
        if (rc != MDB_NOTFOUND) {
            return s_err (rc);
        }
    }
    uint32_t route;
    int rc = llmq_store_route (self, job->model, &route);
    if (rc) {
        return rc;
    }
    job->id = self->next_id;
    job->enqueued_us = now;
    if (!job->vdeadline_us) {       /* else the broker placed it (fair share) */
        job->vdeadline_us = now + self->opts.prio_offset_us[job->priority % LLMQ_NPRIO];
    }
    job->state = LLMQ_STATE_QUEUED;
    job->attempts = 0;
    job->lease = 0;
    job->not_before_us = 0;
    if ((rc = s_job_put (self, job, MDB_APPEND))) {
        return rc;
    }
    s_ready_key_t rk;
    MDB_val rkv = s_ready_key (&rk, route, job->vdeadline_us, job->id);
    TRY (mdb_put (self->txn, self->ready, &rkv, &s_empty, 0));
    if (job->deadline_us) {
        s_time_key_t dk;
        MDB_val dkv = s_time_key (&dk, job->deadline_us, job->id);
        TRY (mdb_put (self->txn, self->deadlines, &dkv, &s_empty, 0));
    }
    unsigned char idb[8];
    s_put64 (idb, job->id);
    if (job->idem_key) {
        MDB_val k = s_str_val (job->idem_key), v = { 8, idb };
        TRY (mdb_put (self->txn, self->idem, &k, &v, 0));
    }
    if (job->batch_id) {
        char kb[600];
        MDB_val bk = s_batchjob_key (kb, sizeof kb, job->batch_id, job->id);
        TRY (mdb_put (self->txn, self->batchjobs, &bk, &s_empty, 0));
        if ((rc = s_batch_add (self, job->batch_id, 0, 1))) {
            return rc;
        }
    }
    self->next_id++;
    self->counters_dirty = true;
    self->routes_v[route - 1].stats.ready[job->priority % LLMQ_NPRIO]++;
    (void) llmq_depth_add (self->depth, job->user, job->org, 1);
    return 0;
}

/*  Space never planned for writes at the size limit: every commit copies
    the pages it touches and rewrites the free list, so the estimate below
    (which counts records, not that) must leave this much. */
static uint64_t
s_reserve (llmq_store_t *self)
{
    uint64_t r = self->map_size / 8;
    return r > 256 * 1024 ? r : 256 * 1024;
}

/*  Bytes a record of `size` may take: LMDB puts values over about half a
    page on their own overflow pages, and an insert may split a page. A
    generous estimate: it only decides when to stop taking more work. */
static uint64_t
s_page_cost (llmq_store_t *self, size_t size)
{
    uint64_t psize = 4096;
    return ((size + 64 + psize - 1) / psize + 1) * psize;
}

/*  Is there room to write `need` more bytes in this turn? The commit itself
    needs pages too (free list, meta), so 1/16 of the map is never used by
    writes. Below the limit, the answer is "not before growing" past 3/4. */
/*  Room for the result a report will store? Checked before any write, so a
    "no" leaves nothing half done. */
static uint64_t
s_result_cost (llmq_store_t *self, const llmq_result_t *res)
{
    size_t size = 512;
    if (res) {
        size += (res->content ? strlen (res->content) : 0) + (res->error ? strlen (res->error) : 0)
              + (res->tool_calls ? strlen (res->tool_calls) : 0);
    }
    return s_page_cost (self, size);
}

static bool
s_room_for (llmq_store_t *self, const llmq_result_t *res)
{
    return s_room (self, s_result_cost (self, res));
}

/*  Bytes the dead letter of `job` may take (page-rounded, like a submit). */
static uint64_t
s_dead_cost (llmq_store_t *self, const llmq_job_t *job)
{
    size_t size = 256 + S_DEAD_HEAD + (job->body ? strlen (job->body) : 0) + (job->meta ? strlen (job->meta) : 0)
                + (job->last_error ? strlen (job->last_error) : 0);
    return s_page_cost (self, size);
}

static bool
s_room (llmq_store_t *self, uint64_t need)
{
    uint64_t after = self->used + self->turn_bytes + need;
    bool at_limit = self->map_size >= self->opts.max_map_size;
    return after <= (at_limit ? self->map_size - s_reserve (self) : self->map_size / 4 * 3);
}

int
llmq_store_save (llmq_store_t *self)
{
    if (!self->txn || self->parent) {
        return LLMQ_ERR_INTERNAL;
    }
    int rc = s_view_save (self, &self->batch_view);
    if (rc) {
        return rc;
    }
    MDB_txn *child;
    if ((rc = mdb_txn_begin (self->env, self->txn, 0, &child))) {
        return s_err (rc);
    }
    self->batch_dirty = self->counters_dirty;
    self->parent = self->txn;
    self->txn = child;
    return 0;
}

void
llmq_store_rollback (llmq_store_t *self)
{
    if (self->parent) {
        mdb_txn_abort (self->txn);
        self->txn = self->parent;
        self->parent = NULL;
        s_view_restore (self, &self->batch_view);
        self->counters_dirty = self->batch_dirty;
    }
}

int
llmq_store_release (llmq_store_t *self)
{
    if (!self->parent) {
        return 0;
    }
    int rc = mdb_txn_commit (self->txn);
    self->txn = self->parent;
    self->parent = NULL;
    if (rc) {
        /* A failed commit has freed the child already. */
        s_view_restore (self, &self->batch_view);
        self->counters_dirty = self->batch_dirty;
        return s_err (rc);
    }
    return 0;
}

bool
llmq_store_tight (llmq_store_t *self)
{
    return self->tight;
}

bool
llmq_store_can_grow (llmq_store_t *self)
{
    return self->map_size < self->opts.max_map_size;
}

void
llmq_store_want_grow (llmq_store_t *self)
{
    self->want_grow = true;
}

int
llmq_store_submit_all (llmq_store_t *self, llmq_job_t *jobs, size_t n, uint64_t now, uint8_t *dups)
{
    if (self->full) {
        return LLMQ_ERR_STORE_FULL;
    }
    /*  Room first (page-rounded estimate): a submit that would not fit is
        refused, or retried by the broker once the map has grown. */
    uint64_t need = 0;
    for (size_t i = 0; i < n; i++) {
        need += s_page_cost (self, strlen (jobs[i].body) + (jobs[i].meta ? strlen (jobs[i].meta) : 0) + 256);
    }
    if (!s_room (self, need)) {
        return LLMQ_ERR_STORE_FULL;
    }
    self->turn_bytes += need;
    /*  When the map is tight, a nested transaction, so that running out of
        space halfway leaves the turn's transaction as it was: the other
        messages of the turn still commit, and this one is refused whole.
        Otherwise the estimate above is the guard: a nested transaction
        costs LMDB a 2 MiB dirty-page list per message. */
    bool nested = self->tight;
    int rc = nested ? llmq_store_save (self) : 0;
    if (rc) {
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        bool dup = false;
        rc = llmq_store_submit (self, &jobs[i], now, &dup);
        dups[i] = dup;
    }
    if (rc && nested) {
        llmq_store_rollback (self);
        return rc;
    }
    return nested ? llmq_store_release (self) : rc;
}

int
llmq_store_peek (llmq_store_t *self, uint32_t route, uint64_t *id, uint64_t *vdeadline)
{
    if (route == 0 || route > self->nroutes) {
        return LLMQ_ERR_NOT_FOUND;
    }
    const llmq_route_stats_t *st = &self->routes_v[route - 1].stats;
    if (!(st->ready[0] | st->ready[1] | st->ready[2] | st->ready[3])) {
        return LLMQ_ERR_NOT_FOUND;      /* skip the B-tree for empty routes */
    }
    MDB_cursor *c;
    TRY (mdb_cursor_open (self->txn, self->ready, &c));
    s_ready_key_t rk;
    MDB_val k = s_ready_key (&rk, route, 0, 0), v;
    int rc = mdb_cursor_get (c, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && (k.mv_size != 20 || s_get32 ((const unsigned char *) k.mv_data) != route)) {
        rc = MDB_NOTFOUND;
    }
    if (rc == 0) {
        *vdeadline = s_get64 ((const unsigned char *) k.mv_data + 4);
        *id = s_get64 ((const unsigned char *) k.mv_data + 12);
    }
    mdb_cursor_close (c);
    return s_err (rc);
}

int
llmq_store_head_enqueued (llmq_store_t *self, uint32_t route, uint64_t *enqueued_us)
{
    if (route == 0 || route > self->nroutes) {
        return LLMQ_ERR_NOT_FOUND;
    }
    const llmq_route_stats_t *st = &self->routes_v[route - 1].stats;
    if (!(st->ready[0] | st->ready[1] | st->ready[2] | st->ready[3])) {
        return LLMQ_ERR_NOT_FOUND;
    }
    MDB_txn *txn = self->txn;
    if (!txn && mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0) {
        return LLMQ_ERR_STORE;
    }
    llmq_arena_t *arena = llmq_arena_new ();
    MDB_cursor *c = NULL;
    int rc = arena ? mdb_cursor_open (txn, self->ready, &c) : ENOMEM;
    s_ready_key_t rk;
    MDB_val k = s_ready_key (&rk, route, 0, 0), v;
    if (rc == 0) {
        rc = mdb_cursor_get (c, &k, &v, MDB_SET_RANGE);
        mdb_cursor_close (c);
    }
    if (rc == 0 && (k.mv_size != 20 || s_get32 ((const unsigned char *) k.mv_data) != route)) {
        rc = MDB_NOTFOUND;
    }
    if (rc == 0) {
        /*  The key lives in the transaction: copy the id out first. */
        s_id_key_t ik;
        MDB_val jk = s_id_key (&ik, s_get64 ((const unsigned char *) k.mv_data + 12)), jv;
        rc = mdb_get (txn, self->jobs, &jk, &jv);
        llmq_job_t job;
        if (rc == 0 && llmq_job_decode (jv.mv_data, jv.mv_size, &job, arena) == 0) {
            *enqueued_us = job.enqueued_us;
        }
        else if (rc == 0) {
            rc = MDB_CORRUPTED;
        }
    }
    if (txn != self->txn) {
        mdb_txn_abort (txn);
    }
    llmq_arena_destroy (&arena);
    return rc == ENOMEM ? LLMQ_ERR_NOMEM : s_err (rc);
}

int
llmq_store_lease (llmq_store_t *self, uint64_t id, uint64_t now, llmq_job_t *job,
                  llmq_result_t *final, llmq_arena_t *arena)
{
    int rc = s_job_get (self, id, job, arena);
    if (rc) {
        return rc;
    }
    s_route_t *r = s_route_by_name (self, job->model);
    if (!r) {
        return LLMQ_ERR_STORE;
    }
    s_ready_key_t rk;
    if ((rc = s_del (self, self->ready, s_ready_key (&rk, r->stats.number, job->vdeadline_us, id)))) {
        return rc;
    }
    r->stats.ready[job->priority % LLMQ_NPRIO]--;
    (void) llmq_depth_add (self->depth, job->user, job->org, -1);
    if (job->deadline_us && job->deadline_us <= now) {
        memset (final, 0, sizeof *final);
        final->state = LLMQ_STATE_EXPIRED;
        final->attempts = job->attempts;
        final->error = "deadline passed before the job started";
        if ((rc = s_finalise (self, job, final, now))) {
            return rc;
        }
        return LLMQ_ERR_EXPIRED;
    }
    if (job->deadline_us) {
        s_time_key_t dk;
        if ((rc = s_del (self, self->deadlines, s_time_key (&dk, job->deadline_us, id)))) {
            return rc;
        }
    }
    job->lease = self->next_lease++;
    self->counters_dirty = true;
    unsigned char lv[16];
    s_put64 (lv, job->lease);
    s_put64 (lv + 8, now);
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, id), v = { 16, lv };
    TRY (mdb_put (self->txn, self->leases, &k, &v, 0));
    job->state = LLMQ_STATE_RUNNING;
    r->stats.running++;
    return 0;
}

/*  Take the lease off a running job; checks the token unless lease is 0. */
static int
s_unlease (llmq_store_t *self, uint64_t id, uint64_t lease, uint64_t *started)
{
    uint64_t current;
    int rc = s_lease_get (self, id, &current, started);
    if (rc == LLMQ_ERR_NOT_FOUND || (rc == 0 && lease && current != lease)) {
        return LLMQ_ERR_STATE;
    }
    if (rc) {
        return rc;
    }
    s_id_key_t ik;
    return s_del (self, self->leases, s_id_key (&ik, id));
}

int
llmq_store_complete (llmq_store_t *self, uint64_t id, uint64_t lease, const llmq_result_t *res,
                     uint64_t now, llmq_result_t *final, llmq_arena_t *arena)
{
    if (!s_room_for (self, res)) {
        return LLMQ_ERR_STORE_FULL;
    }
    uint64_t started;
    int rc = s_unlease (self, id, lease, &started);
    if (rc) {
        return rc;
    }
    llmq_job_t job;
    if ((rc = s_job_get (self, id, &job, arena))) {
        return rc;
    }
    *final = *res;
    final->started_us = started;
    final->attempts = job.attempts + 1;
    llmq_route_stats_t *st = s_stats (self, job.model);
    if (st) {
        st->running--;
    }
    return s_finalise (self, &job, final, now);
}

int
llmq_store_requeue (llmq_store_t *self, uint64_t id, uint64_t lease, bool count_attempt,
                    uint64_t not_before, const llmq_result_t *failure, uint64_t now,
                    llmq_result_t *final, llmq_arena_t *arena)
{
    llmq_job_t job;
    int rc = s_job_get (self, id, &job, arena);
    if (rc) {
        return rc == LLMQ_ERR_NOT_FOUND ? LLMQ_ERR_STATE : rc;
    }
    /* Only a dead-lettering writes a result: room for it, before any write. */
    uint32_t max_att = job.max_attempts ? job.max_attempts : self->opts.max_attempts;
    if (count_attempt && job.attempts + 1 >= max_att
    &&  !s_room (self, s_result_cost (self, failure) + s_dead_cost (self, &job))) {      /* + its dead letter */
        return LLMQ_ERR_STORE_FULL;
    }
    uint64_t started;
    if ((rc = s_unlease (self, id, lease, &started))) {
        return rc;
    }
    llmq_route_stats_t *st = s_stats (self, job.model);
    if (st) {
        st->running--;
    }
    if (count_attempt) {
        job.attempts++;
        if (failure && failure->error) {
            job.last_error = failure->error;
        }
    }
    uint32_t max = job.max_attempts ? job.max_attempts : self->opts.max_attempts;
    if (count_attempt && job.attempts >= max) {
        if (failure) {
            *final = *failure;
        }
        else {
            memset (final, 0, sizeof *final);
        }
        final->state = LLMQ_STATE_DEAD;
        final->attempts = job.attempts;
        final->started_us = started;
        if (!final->error) {
            final->error = job.last_error ? job.last_error : "attempts exhausted";
        }
        if ((rc = s_finalise (self, &job, final, now))) {
            return rc;
        }
        return LLMQ_ERR_JOB_FAILED;
    }
    if (not_before > now) {
        job.state = LLMQ_STATE_DELAYED;
        job.not_before_us = not_before;
        s_time_key_t tk;
        MDB_val k = s_time_key (&tk, not_before, id);
        TRY (mdb_put (self->txn, self->delayed, &k, &s_empty, 0));
        if (st) {
            st->delayed++;
        }
    }
    else {
        job.state = LLMQ_STATE_QUEUED;
        job.not_before_us = 0;
        s_ready_key_t rk;
        MDB_val k = s_ready_key (&rk, st ? st->number : 0, job.vdeadline_us, id);
        TRY (mdb_put (self->txn, self->ready, &k, &s_empty, 0));
        if (st) {
            st->ready[job.priority % LLMQ_NPRIO]++;
        }
    }
    (void) llmq_depth_add (self->depth, job.user, job.org, 1);
    if (job.deadline_us) {
        s_time_key_t dk;
        MDB_val k = s_time_key (&dk, job.deadline_us, id);
        TRY (mdb_put (self->txn, self->deadlines, &k, &s_empty, 0));
    }
    return s_job_put (self, &job, 0);
}

/*  Take a queued or delayed job out of its index. */
static int
s_unqueue (llmq_store_t *self, const llmq_job_t *job)
{
    llmq_route_stats_t *st = s_stats (self, job->model);
    (void) llmq_depth_add (self->depth, job->user, job->org, -1);
    if (job->state == LLMQ_STATE_DELAYED) {
        s_time_key_t tk;
        if (st) {
            st->delayed--;
        }
        return s_del (self, self->delayed, s_time_key (&tk, job->not_before_us, job->id));
    }
    s_ready_key_t rk;
    if (st) {
        st->ready[job->priority % LLMQ_NPRIO]--;
    }
    return s_del (self, self->ready, s_ready_key (&rk, st ? st->number : 0, job->vdeadline_us, job->id));
}

int
llmq_store_cancel (llmq_store_t *self, uint64_t id, uint64_t now, int *was, uint64_t *lease,
                   llmq_result_t *final, llmq_arena_t *arena)
{
    llmq_job_t job;
    int rc = s_job_get (self, id, &job, arena);
    if (rc == LLMQ_ERR_NOT_FOUND) {
        s_id_key_t ik;
        MDB_val k = s_id_key (&ik, id), v;
        return mdb_get (self->txn, self->results, &k, &v) == 0 ? LLMQ_ERR_STATE : LLMQ_ERR_NOT_FOUND;
    }
    if (rc) {
        return rc;
    }
    uint64_t started = 0;
    *lease = 0;
    if (s_lease_get (self, id, lease, &started) == 0) {
        *was = LLMQ_STATE_RUNNING;
        if ((rc = s_unlease (self, id, 0, &started))) {
            return rc;
        }
        llmq_route_stats_t *st = s_stats (self, job.model);
        if (st) {
            st->running--;
        }
    }
    else {
        *was = job.state;
        if ((rc = s_unqueue (self, &job))) {
            return rc;
        }
    }
    memset (final, 0, sizeof *final);
    final->state = LLMQ_STATE_CANCELLED;
    final->attempts = job.attempts + (*was == LLMQ_STATE_RUNNING ? 1 : 0);
    final->started_us = started;
    final->error = "cancelled by request";
    return s_finalise (self, &job, final, now);
}

int
llmq_store_state_put (llmq_store_t *self, const char *key, const void *data, size_t len)
{
    MDB_val k = s_str_val (key), d = { len, (void *) data };
    return mdb_put (self->txn, self->state, &k, &d, 0) ? LLMQ_ERR_STORE : 0;
}

int
llmq_store_state_get (llmq_store_t *self, const char *key, const void **data, size_t *len)
{
    MDB_val k = s_str_val (key), d;
    int rc = mdb_get (self->txn, self->state, &k, &d);
    if (rc == MDB_NOTFOUND) {
        return LLMQ_ERR_NOT_FOUND;
    }
    if (rc) {
        return LLMQ_ERR_STORE;
    }
    *data = d.mv_data;
    *len = d.mv_size;
    return 0;
}

int
llmq_store_status (llmq_store_t *self, uint64_t id, llmq_result_t *out, llmq_arena_t *arena)
{
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, id), v;
    int rc = mdb_get (self->txn, self->results, &k, &v);
    if (rc == 0) {
        return llmq_result_decode (v.mv_data, v.mv_size, out, arena) ? LLMQ_ERR_STORE : 0;
    }
    llmq_job_t job;
    if ((rc = s_job_get (self, id, &job, arena))) {
        return rc;
    }
    memset (out, 0, sizeof *out);
    out->id = id;
    out->state = job.state;
    out->model = job.model;
    out->batch_id = job.batch_id;
    out->custom_id = job.custom_id;
    out->priority = job.priority;
    out->enqueued_us = job.enqueued_us;
    out->attempts = job.attempts;
    out->error = job.last_error;
    uint64_t lease, started;
    if (s_lease_get (self, id, &lease, &started) == 0) {
        out->state = LLMQ_STATE_RUNNING;
        out->started_us = started;
    }
    return 0;
}

int
llmq_store_fetch (llmq_store_t *self, const char *batch, uint64_t after, uint32_t limit,
                  llmq_result_t **results, size_t *n, uint64_t *next, bool *more,
                  llmq_batch_counts_t *counts, llmq_arena_t *arena)
{
    *n = 0;
    *more = false;
    *next = after;
    memset (counts, 0, sizeof *counts);
    MDB_val bk = s_str_val (batch), bv;
    int rc = mdb_get (self->txn, self->batches, &bk, &bv);
    if (rc == MDB_NOTFOUND) {
        return LLMQ_ERR_NOT_FOUND;
    }
    if (rc || bv.mv_size != sizeof *counts) {
        return rc ? s_err (rc) : LLMQ_ERR_STORE;
    }
    memcpy (counts, bv.mv_data, sizeof *counts);
    if (limit == 0 || limit > LLMQ_MAX_BATCH) {
        limit = 1000;
    }
    *results = (llmq_result_t *) llmq_arena_alloc (arena, limit * sizeof (llmq_result_t));
    if (!*results) {
        return LLMQ_ERR_NOMEM;
    }
    MDB_cursor *c;
    TRY (mdb_cursor_open (self->txn, self->batchjobs, &c));
    char kb[600];
    MDB_val k = s_batchjob_key (kb, sizeof kb, batch, after + 1), v;
    size_t prefix = k.mv_size - 8;
    for (rc = mdb_cursor_get (c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get (c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != prefix + 8 || memcmp (k.mv_data, kb, prefix) != 0) {
            break;
        }
        if (*n == limit) {
            *more = true;
            break;
        }
        uint64_t id = s_get64 ((const unsigned char *) k.mv_data + prefix);
        *next = id;
        s_id_key_t ik;
        MDB_val rk = s_id_key (&ik, id), rv;
        if (mdb_get (self->txn, self->results, &rk, &rv) == 0
        &&  llmq_result_decode (rv.mv_data, rv.mv_size, &(*results)[*n], arena) == 0) {
            (*n)++;
        }
    }
    mdb_cursor_close (c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : s_err (rc);
}

/*  First key of an index ordered by time, if due by `now`. */
static bool
s_due (MDB_cursor *c, uint64_t now, uint64_t *id, MDB_val *val)
{
    MDB_val k;
    if (mdb_cursor_get (c, &k, val, MDB_FIRST) != 0 || k.mv_size != 16) {
        return false;
    }
    if (s_get64 ((const unsigned char *) k.mv_data) > now) {
        return false;
    }
    *id = s_get64 ((const unsigned char *) k.mv_data + 8);
    return true;
}

static size_t s_cache_tick (llmq_store_t *self, uint64_t now, size_t budget);

size_t
llmq_store_tick (llmq_store_t *self, uint64_t now, size_t budget, llmq_store_final_fn *fn, void *arg,
                 llmq_arena_t *arena)
{
    size_t done = 0;
    MDB_cursor *c;
    MDB_val v;
    uint64_t id;
    /* Delayed jobs whose backoff is over go back to ready. */
    if (mdb_cursor_open (self->txn, self->delayed, &c) == 0) {
        while (done < budget && s_due (c, now, &id, &v)) {
            mdb_cursor_del (c, 0);
            llmq_job_t job;
            if (s_job_get (self, id, &job, arena) == 0) {
                llmq_route_stats_t *st = s_stats (self, job.model);
                job.state = LLMQ_STATE_QUEUED;
                job.not_before_us = 0;
                s_ready_key_t rk;
                MDB_val k = s_ready_key (&rk, st ? st->number : 0, job.vdeadline_us, id);
                if (mdb_put (self->txn, self->ready, &k, &s_empty, 0) == 0 && s_job_put (self, &job, 0) == 0 && st) {
                    st->delayed--;
                    st->ready[job.priority % LLMQ_NPRIO]++;
                }
            }
            done++;
        }
        mdb_cursor_close (c);
    }
    /* Queued jobs past their deadline end as expired. */
    if (mdb_cursor_open (self->txn, self->deadlines, &c) == 0) {
        while (done < budget && s_due (c, now, &id, &v)) {
            mdb_cursor_del (c, 0);
            llmq_job_t job;
            if (s_job_get (self, id, &job, arena) == 0) {
                job.deadline_us = 0;        /* its key is gone already */
                if (s_unqueue (self, &job) == 0) {
                    llmq_result_t final = { 0 };
                    final.state = LLMQ_STATE_EXPIRED;
                    final.attempts = job.attempts;
                    final.error = "deadline passed before the job started";
                    if (s_finalise (self, &job, &final, now) == 0 && fn) {
                        fn (arg, &final);
                    }
                }
            }
            done++;
        }
        mdb_cursor_close (c);
    }
    /* Results past their time to live are dropped with their keys. */
    if (mdb_cursor_open (self->txn, self->expiry, &c) == 0) {
        while (done < budget && s_due (c, now, &id, &v)) {
            if (v.mv_size) {
                MDB_val ik = { v.mv_size, v.mv_data };
                mdb_del (self->txn, self->idem, &ik, NULL);
            }
            mdb_cursor_del (c, 0);
            s_id_key_t rk;
            MDB_val k = s_id_key (&rk, id), rv;
            if (mdb_get (self->txn, self->results, &k, &rv) == 0) {
                llmq_result_t res;
                int drc = llmq_result_decode (rv.mv_data, rv.mv_size, &res, arena);
                if (drc == 0 && res.batch_id) {
                    char kb[600];
                    s_del (self, self->batchjobs, s_batchjob_key (kb, sizeof kb, res.batch_id, id));
                    s_batch_add (self, res.batch_id, res.state, -1);
                    s_batch_add (self, res.batch_id, 0, -1);
                }
                if (drc != 0 || res.state == LLMQ_STATE_DEAD) {
                    mdb_del (self->txn, self->dead, &k, NULL);   /* its dead letter goes with it */
                }
                mdb_del (self->txn, self->results, &k, NULL);
            }
            done++;
        }
        mdb_cursor_close (c);
    }
    /* Response cache entries past their time, and over the size bound. */
    if (done < budget) {
        done += s_cache_tick (self, now, budget - done);
    }
    return done;
}

uint64_t
llmq_store_next_delayed (llmq_store_t *self)
{
    MDB_cursor *c;
    uint64_t t = 0;
    if (self->txn && mdb_cursor_open (self->txn, self->delayed, &c) == 0) {
        MDB_val k, v;
        if (mdb_cursor_get (c, &k, &v, MDB_FIRST) == 0 && k.mv_size == 16) {
            t = s_get64 ((const unsigned char *) k.mv_data);
        }
        mdb_cursor_close (c);
    }
    return t;
}

/* ------------------------------------------------------------------------
   Response cache

   An entry is three records under the request's SHA-256 (broker/cache.c
   computes it): its value in `cache` (expires_at, drop_at, last_used, then
   the answer as a result record), its place in the LRU order in
   `cachelru` (last_used · sha) and in the timer's order in `cacheexp`
   (drop_at · sha). They are written and deleted together. `meta` keeps
   the bytes the entries hold ("cache_bytes": keys and values of the three
   databases, not LMDB's page overhead) and the evictions so far
   ("cache_evictions"), so the size bound holds across restarts without a
   scan.

   drop_at is expires_at, or later when the broker serves stale entries
   (an expired entry then stays until drop_at, for when every deployment
   of its group is down). A hit moves the entry to the back of the LRU
   order; a put that would take the bytes past the bound evicts from the
   front first.
   ------------------------------------------------------------------------ */

#define S_CACHE_HEAD 24             /* expires_at, drop_at, last_used */
#define S_CACHE_IDX  (8 + LLMQ_STORE_CACHE_KEY)

/*  Bytes one entry counts against the bound: its key and value, and its
    two index keys. */
static uint64_t
s_cache_entry_bytes (size_t value_size)
{
    return LLMQ_STORE_CACHE_KEY + value_size + 2 * S_CACHE_IDX;
}

static MDB_val
s_cache_idx (unsigned char *buf, uint64_t t, const uint8_t *sha)
{
    s_put64 (buf, t);
    memcpy (buf + 8, sha, LLMQ_STORE_CACHE_KEY);
    return (MDB_val) { S_CACHE_IDX, buf };
}

static uint64_t
s_cache_meta (llmq_store_t *self, MDB_txn *txn, const char *name)
{
    uint64_t v = 0;
    s_meta_get64 (self, txn, name, &v);
    return v;
}

/*  Delete the entry `sha` whose value is `v` (its header read from it),
    with its index records, and take its bytes off the count. `v` must be
    copied or done with before: it points into the database. */
static int
s_cache_del (llmq_store_t *self, const uint8_t *sha, MDB_val v)
{
    if (v.mv_size < S_CACHE_HEAD) {
        return LLMQ_ERR_STORE;
    }
    const unsigned char *p = (const unsigned char *) v.mv_data;
    uint64_t drop_at = s_get64 (p + 8), last_used = s_get64 (p + 16);
    uint64_t bytes = s_cache_meta (self, self->txn, "cache_bytes");
    uint64_t size = s_cache_entry_bytes (v.mv_size);
    unsigned char ib[S_CACHE_IDX];
    int rc;
    MDB_val k = { LLMQ_STORE_CACHE_KEY, (void *) sha };
    if ((rc = s_del (self, self->cachelru, s_cache_idx (ib, last_used, sha)))
    ||  (rc = s_del (self, self->cacheexp, s_cache_idx (ib, drop_at, sha)))
    ||  (rc = s_del (self, self->cache, k))) {
        return rc;
    }
    TRY (s_meta_put64 (self, "cache_bytes", bytes > size ? bytes - size : 0));
    return 0;
}

/*  Evict least recently used entries until `need` more bytes fit under
    the bound. *evicted counts them. */
static int
s_cache_evict (llmq_store_t *self, uint64_t need, size_t max, size_t *evicted)
{
    uint64_t bound = self->opts.cache_max_bytes;
    int rc = 0;
    while (bound && *evicted < max && s_cache_meta (self, self->txn, "cache_bytes") + need > bound) {
        MDB_cursor *c;
        TRY (mdb_cursor_open (self->txn, self->cachelru, &c));
        MDB_val k, v;
        rc = mdb_cursor_get (c, &k, &v, MDB_FIRST);
        uint8_t sha[LLMQ_STORE_CACHE_KEY];
        uint64_t used = 0;
        if (rc == 0 && k.mv_size == S_CACHE_IDX) {
            used = s_get64 ((const unsigned char *) k.mv_data);
            memcpy (sha, (const unsigned char *) k.mv_data + 8, sizeof sha);
        }
        else
        if (rc == 0) {
            rc = mdb_cursor_del (c, 0);         /* a stray key: drop it */
            mdb_cursor_close (c);
            if (rc) {
                return s_err (rc);
            }
            continue;
        }
        mdb_cursor_close (c);
        if (rc == MDB_NOTFOUND) {
            /* Nothing left to evict: the count is off (it never should
               be); start it again from nothing. */
            TRY (s_meta_put64 (self, "cache_bytes", 0));
            return 0;
        }
        if (rc) {
            return s_err (rc);
        }
        MDB_val ck = { sizeof sha, sha }, cv;
        rc = mdb_get (self->txn, self->cache, &ck, &cv);
        if (rc == MDB_NOTFOUND) {
            unsigned char ib[S_CACHE_IDX];
            if ((rc = s_del (self, self->cachelru, s_cache_idx (ib, used, sha)))) {
                return rc;          /* an index entry without its value */
            }
            continue;
        }
        if (rc) {
            return s_err (rc);
        }
        if ((rc = s_cache_del (self, sha, cv))) {
            return rc;
        }
        (*evicted)++;
    }
    if (*evicted) {
        uint64_t total = s_cache_meta (self, self->txn, "cache_evictions");
        TRY (s_meta_put64 (self, "cache_evictions", total + *evicted));
    }
    return 0;
}

int
llmq_store_cache_get (llmq_store_t *self, const uint8_t key[LLMQ_STORE_CACHE_KEY], uint64_t now,
                      llmq_result_t *out, uint64_t *expires_at, llmq_arena_t *arena)
{
    MDB_val k = { LLMQ_STORE_CACHE_KEY, (void *) key }, v;
    TRY (mdb_get (self->txn, self->cache, &k, &v));
    if (v.mv_size < S_CACHE_HEAD) {
        return LLMQ_ERR_STORE;
    }
    const unsigned char *p = (const unsigned char *) v.mv_data;
    uint64_t expires = s_get64 (p), drop_at = s_get64 (p + 8), last_used = s_get64 (p + 16);
    if (now >= drop_at) {
        return LLMQ_ERR_NOT_FOUND;      /* the timer has not dropped it yet */
    }
    if (llmq_result_decode (p + S_CACHE_HEAD, v.mv_size - S_CACHE_HEAD, out, arena) != 0) {
        llmq_error ("store: cache entry: corrupt record");
        return LLMQ_ERR_STORE;
    }
    if (expires_at) {
        *expires_at = expires;
    }
    if (now >= expires) {
        return LLMQ_ERR_EXPIRED;        /* stale: kept for serve_stale only */
    }
    /*  A hit: to the back of the LRU order. The value is rewritten with
        its new last_used (the pages are copied by the write anyway). When
        this turn has no room for it, the entry keeps its place. */
    uint64_t cost = s_page_cost (self, v.mv_size) + 2 * 4096;
    if (now == last_used || !s_room (self, cost)) {
        return 0;
    }
    self->turn_bytes += cost;
    unsigned char *copy = (unsigned char *) malloc (v.mv_size);
    if (!copy) {
        return 0;
    }
    memcpy (copy, v.mv_data, v.mv_size);
    s_put64 (copy + 16, now);
    MDB_val nv = { v.mv_size, copy };
    unsigned char ib[S_CACHE_IDX];
    int rc = s_del (self, self->cachelru, s_cache_idx (ib, last_used, key));
    if (rc == 0) {
        MDB_val ik = s_cache_idx (ib, now, key);
        rc = s_err (mdb_put (self->txn, self->cachelru, &ik, &s_empty, 0));
    }
    if (rc == 0) {
        rc = s_err (mdb_put (self->txn, self->cache, &k, &nv, 0));
    }
    free (copy);
    return rc;
}

int
llmq_store_cache_put (llmq_store_t *self, const uint8_t key[LLMQ_STORE_CACHE_KEY], uint64_t ttl_us,
                      uint64_t stale_us, const llmq_result_t *res, uint64_t now, size_t *evicted)
{
    size_t dummy = 0;
    evicted = evicted ? evicted : &dummy;
    *evicted = 0;
    /*  The answer, without what belongs to the job that produced it: a
        hit is a job of its own, with its own id, times and batch. */
    llmq_result_t a = { 0 };
    a.state = LLMQ_STATE_DONE;
    a.content = res->content;
    a.finish_reason = res->finish_reason;
    a.deployment = res->deployment;
    a.request_id = res->request_id;
    a.tool_calls = res->tool_calls;
    a.http_status = res->http_status;
    a.prompt_tokens = res->prompt_tokens;
    a.completion_tokens = res->completion_tokens;
    a.latency_us = res->latency_us;
    llmq_buf_clear (&self->buf);
    llmq_buf_t *b = &self->buf;
    if (llmq_result_encode (&a, b)) {
        return LLMQ_ERR_NOMEM;
    }
    size_t rsize = b->size;
    uint64_t entry = s_cache_entry_bytes (rsize + S_CACHE_HEAD);
    if (self->opts.cache_max_bytes && entry > self->opts.cache_max_bytes) {
        return LLMQ_ERR_TOO_LARGE;      /* would not fit even alone */
    }
    uint64_t cost = s_page_cost (self, rsize + S_CACHE_HEAD) + 2 * 4096;
    if (!s_room (self, cost)) {
        return LLMQ_ERR_STORE_FULL;
    }
    self->turn_bytes += cost;
    MDB_val k = { LLMQ_STORE_CACHE_KEY, (void *) key }, old;
    int rc = mdb_get (self->txn, self->cache, &k, &old);
    if (rc == 0) {
        rc = s_cache_del (self, key, old);     /* replaced: its bytes and places go */
    }
    else {
        rc = rc == MDB_NOTFOUND ? 0 : s_err (rc);
    }
    if (rc || (rc = s_cache_evict (self, entry, SIZE_MAX, evicted))) {
        return rc;
    }
    uint64_t expires = now + ttl_us, drop_at = expires + stale_us;
    MDB_val v = { rsize + S_CACHE_HEAD, NULL };
    TRY (mdb_put (self->txn, self->cache, &k, &v, MDB_RESERVE));
    unsigned char *p = (unsigned char *) v.mv_data;
    s_put64 (p, expires);
    s_put64 (p + 8, drop_at);
    s_put64 (p + 16, now);
    memcpy (p + S_CACHE_HEAD, b->data, rsize);
    unsigned char ib[S_CACHE_IDX];
    MDB_val ik = s_cache_idx (ib, now, key);
    TRY (mdb_put (self->txn, self->cachelru, &ik, &s_empty, 0));
    ik = s_cache_idx (ib, drop_at, key);
    TRY (mdb_put (self->txn, self->cacheexp, &ik, &s_empty, 0));
    uint64_t bytes = s_cache_meta (self, self->txn, "cache_bytes");
    TRY (s_meta_put64 (self, "cache_bytes", bytes + entry));
    return 0;
}

/*  The timer's part: entries past drop_at go, then the least recently
    used while over the bound (a bound lowered since they were put). */
static size_t
s_cache_tick (llmq_store_t *self, uint64_t now, size_t budget)
{
    size_t done = 0;
    MDB_cursor *c;
    while (done < budget && mdb_cursor_open (self->txn, self->cacheexp, &c) == 0) {
        MDB_val k, v;
        int rc = mdb_cursor_get (c, &k, &v, MDB_FIRST);
        bool due = rc == 0 && k.mv_size == S_CACHE_IDX && s_get64 ((const unsigned char *) k.mv_data) <= now;
        uint8_t sha[LLMQ_STORE_CACHE_KEY];
        uint64_t drop_at = 0;
        if (due) {
            drop_at = s_get64 ((const unsigned char *) k.mv_data);
            memcpy (sha, (const unsigned char *) k.mv_data + 8, sizeof sha);
        }
        else
        if (rc == 0 && k.mv_size != S_CACHE_IDX) {
            mdb_cursor_del (c, 0);              /* a stray key */
            mdb_cursor_close (c);
            done++;
            continue;
        }
        mdb_cursor_close (c);
        if (!due) {
            break;
        }
        MDB_val ck = { sizeof sha, sha }, cv;
        if (mdb_get (self->txn, self->cache, &ck, &cv) == 0) {
            if (s_cache_del (self, sha, cv) != 0) {
                break;
            }
        }
        else {
            unsigned char ib[S_CACHE_IDX];
            if (s_del (self, self->cacheexp, s_cache_idx (ib, drop_at, sha)) != 0) {
                break;              /* an index entry without its value */
            }
        }
        done++;
    }
    size_t evicted = 0;
    if (done < budget) {
        s_cache_evict (self, 0, budget - done, &evicted);
    }
    return done + evicted;
}

int
llmq_store_cache_stats (llmq_store_t *self, llmq_store_cache_stats_t *out)
{
    memset (out, 0, sizeof *out);
    MDB_txn *txn = self->txn;
    if (!txn && mdb_txn_begin (self->env, NULL, MDB_RDONLY, &txn) != 0) {
        return LLMQ_ERR_STORE;
    }
    MDB_stat st;
    if (mdb_stat (txn, self->cache, &st) == 0) {
        out->entries = st.ms_entries;
    }
    out->bytes = s_cache_meta (self, txn, "cache_bytes");
    out->evictions = s_cache_meta (self, txn, "cache_evictions");
    if (txn != self->txn) {
        mdb_txn_abort (txn);
    }
    return 0;
}

/*  A job answered at submit: it gets an id, its idempotency key and batch
    membership like any job, and is recorded finished at once, its result
    stored (state done, cached, cost 0, no attempt) with its expiry, by the
    one code that ends every job (s_finalise). It never enters a queue. */
static int
s_submit_finished (llmq_store_t *self, llmq_job_t *job, const llmq_result_t *answer, uint64_t now,
                   bool *dup, llmq_result_t *final)
{
    *dup = false;
    if (job->idem_key) {
        MDB_val k = s_str_val (job->idem_key), v;
        int rc = mdb_get (self->txn, self->idem, &k, &v);
        if (rc == 0 && v.mv_size == 8) {
            job->id = s_get64 ((const unsigned char *) v.mv_data);
            *dup = true;
            return 0;
        }
        if (rc != MDB_NOTFOUND) {
            return s_err (rc);
        }
    }
    job->id = self->next_id;
    job->enqueued_us = now;
    job->vdeadline_us = now;
    job->state = LLMQ_STATE_DONE;
    job->attempts = 0;
    job->lease = 0;
    job->not_before_us = 0;
    /*  s_finalise moves a live record to the results: write one for it to
        move (in the same transaction, so it never reaches the disk). It
        has no deadline entry to remove. */
    llmq_job_t record = *job;
    record.deadline_us = 0;
    int rc = s_job_put (self, &record, MDB_APPEND);
    if (rc) {
        return rc;
    }
    unsigned char idb[8];
    s_put64 (idb, job->id);
    if (job->idem_key) {
        MDB_val k = s_str_val (job->idem_key), v = { 8, idb };
        TRY (mdb_put (self->txn, self->idem, &k, &v, 0));
    }
    if (job->batch_id) {
        char kb[600];
        MDB_val bk = s_batchjob_key (kb, sizeof kb, job->batch_id, job->id);
        TRY (mdb_put (self->txn, self->batchjobs, &bk, &s_empty, 0));
        if ((rc = s_batch_add (self, job->batch_id, 0, 1))) {
            return rc;
        }
    }
    self->next_id++;
    self->counters_dirty = true;
    *final = *answer;
    final->state = LLMQ_STATE_DONE;
    final->cached = true;
    final->cost_micro = 0;
    final->attempts = 0;
    final->error = NULL;
    final->error_class = 0;
    final->lease = 0;
    final->started_us = now;
    return s_finalise (self, &record, final, now);
}

int
llmq_store_submit_cached (llmq_store_t *self, llmq_job_t *jobs, size_t n, uint64_t now, uint8_t *dups,
                          const llmq_result_t *const *answers, llmq_result_t *finals)
{
    if (self->full) {
        return LLMQ_ERR_STORE_FULL;
    }
    uint64_t need = 0;
    for (size_t i = 0; i < n; i++) {
        need += s_page_cost (self, strlen (jobs[i].body) + (jobs[i].meta ? strlen (jobs[i].meta) : 0) + 256);
        if (answers[i]) {
            need += s_result_cost (self, answers[i]);
        }
    }
    if (!s_room (self, need)) {
        return LLMQ_ERR_STORE_FULL;
    }
    self->turn_bytes += need;
    bool nested = self->tight && !self->parent;
    int rc = nested ? llmq_store_save (self) : 0;
    if (rc) {
        return rc;
    }
    for (size_t i = 0; i < n && rc == 0; i++) {
        bool dup = false;
        rc = answers[i] ? s_submit_finished (self, &jobs[i], answers[i], now, &dup, &finals[i])
                        : llmq_store_submit (self, &jobs[i], now, &dup);
        dups[i] = dup;
    }
    if (rc && nested) {
        llmq_store_rollback (self);
        return rc;
    }
    return nested ? llmq_store_release (self) : rc;
}

/* ------------------------------------------------------------------------
   Dead letters

   A dead letter is three records under the job's id: its result in
   `results` (state dead), its `expiry` entry, and its job record in `dead`
   (see s_dead_put). They live and go together: the timer drops all three
   when the result's time is up; a requeue drops all three and puts the job
   back in `jobs` and `ready`; a purge drops all three with the job's
   idempotency key and batch membership, as the timer would.
   ------------------------------------------------------------------------ */

/*  Decode the dead letter `id` whose `dead` value is `v`: the job and its
    result, strings in `arena`. LLMQ_ERR_NOT_FOUND with *orphan set when its
    result is gone: a record an older broker (which did not know `dead`)
    left behind when the result expired. Such orphans are never shown;
    purges delete them. */
static int
s_dead_decode (llmq_store_t *self, uint64_t id, MDB_val v, llmq_dead_t *out, bool *orphan,
               llmq_arena_t *arena)
{
    *orphan = false;
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, id), rv;
    int rc = mdb_get (self->txn, self->results, &k, &rv);
    if (rc == MDB_NOTFOUND) {
        *orphan = true;
        return LLMQ_ERR_NOT_FOUND;
    }
    if (rc) {
        return s_err (rc);
    }
    memset (out, 0, sizeof *out);
    if (v.mv_size < S_DEAD_HEAD
    ||  llmq_result_decode (rv.mv_data, rv.mv_size, &out->result, arena) != 0
    ||  llmq_job_decode ((const unsigned char *) v.mv_data + S_DEAD_HEAD, v.mv_size - S_DEAD_HEAD,
                         &out->job, arena) != 0) {
        llmq_error ("store: dead job %llu: corrupt record", (unsigned long long) id);
        return LLMQ_ERR_STORE;
    }
    if (out->result.state != LLMQ_STATE_DEAD) {
        *orphan = true;         /* the id's result is not a dead letter's: a stray record */
        return LLMQ_ERR_NOT_FOUND;
    }
    out->expire_at_us = s_get64 ((const unsigned char *) v.mv_data);
    return 0;
}

static int
s_dead_load (llmq_store_t *self, uint64_t id, llmq_dead_t *out, bool *orphan, llmq_arena_t *arena)
{
    *orphan = false;
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, id), v;
    TRY (mdb_get (self->txn, self->dead, &k, &v));
    return s_dead_decode (self, id, v, out, orphan, arena);
}

int
llmq_store_dead_get (llmq_store_t *self, uint64_t id, llmq_dead_t *out, llmq_arena_t *arena)
{
    bool orphan;
    return s_dead_load (self, id, out, &orphan, arena);
}

/*  Route number of `model` for a filter: 0 for no filter, UINT32_MAX for a
    model the store has never seen (nothing matches). */
static uint32_t
s_dead_filter (llmq_store_t *self, const char *model)
{
    if (!model) {
        return 0;
    }
    s_route_t *r = s_route_by_name (self, model);
    return r ? r->stats.number : UINT32_MAX;
}

static bool
s_dead_matches (MDB_val v, uint32_t route)
{
    return route == 0 || (v.mv_size >= S_DEAD_HEAD && s_get32 ((const unsigned char *) v.mv_data + 8) == route);
}

int
llmq_store_dead_list (llmq_store_t *self, const char *model, uint64_t after, uint32_t limit,
                      llmq_dead_t **jobs, size_t *n, uint64_t *next, bool *more, llmq_arena_t *arena)
{
    *n = 0;
    *more = false;
    *next = after;
    *jobs = NULL;
    if (limit == 0 || limit > LLMQ_STORE_DEAD_PAGE_MAX) {
        limit = limit ? LLMQ_STORE_DEAD_PAGE_MAX : LLMQ_STORE_DEAD_PAGE;
    }
    uint32_t route = s_dead_filter (self, model);
    if (route == UINT32_MAX) {
        return 0;
    }
    *jobs = (llmq_dead_t *) llmq_arena_alloc (arena, limit * sizeof (llmq_dead_t));
    if (!*jobs) {
        return LLMQ_ERR_NOMEM;
    }
    MDB_cursor *c;
    TRY (mdb_cursor_open (self->txn, self->dead, &c));
    s_id_key_t ik;
    MDB_val k = s_id_key (&ik, after + 1), v;
    size_t scanned = 0;
    int rc, err = 0;
    for (rc = mdb_cursor_get (c, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get (c, &k, &v, MDB_NEXT)) {
        if (*n == limit || scanned == LLMQ_STORE_DEAD_SCAN) {
            *more = true;       /* with a filter, perhaps only more to look at */
            break;
        }
        scanned++;
        if (k.mv_size != 8) {
            continue;
        }
        uint64_t id = s_get64 ((const unsigned char *) k.mv_data);
        *next = id;
        if (!s_dead_matches (v, route)) {
            continue;
        }
        bool orphan;
        int drc = s_dead_decode (self, id, v, &(*jobs)[*n], &orphan, arena);
        if (drc == 0) {
            (*n)++;
        }
        else
        if (!orphan) {
            err = drc;
            break;
        }
    }
    mdb_cursor_close (c);
    if (err) {
        return err;
    }
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : s_err (rc);
}

/*  Put the dead letter `d` back in the queue as a fresh job. Its records
    go; its idempotency key stays (it names the same id). */
static int
s_dead_requeue (llmq_store_t *self, llmq_dead_t *d, uint64_t now)
{
    llmq_job_t *job = &d->job;
    uint64_t need = s_dead_cost (self, job);
    if (!s_room (self, need)) {
        return LLMQ_ERR_STORE_FULL;
    }
    uint32_t route;
    int rc = llmq_store_route (self, job->model ? job->model : "", &route);
    if (rc) {
        return rc;
    }
    s_id_key_t ik;
    s_time_key_t ek;
    if ((rc = s_del (self, self->results, s_id_key (&ik, job->id)))
    ||  (rc = s_del (self, self->dead, s_id_key (&ik, job->id)))
    ||  (rc = s_del (self, self->expiry, s_time_key (&ek, d->expire_at_us, job->id)))) {
        return rc;
    }
    /*  A fresh job: its place from now, no attempts, no error. Its start
        deadline was set for its first run and has no meaning any more. */
    job->state = LLMQ_STATE_QUEUED;
    job->attempts = 0;
    job->lease = 0;
    job->not_before_us = 0;
    job->deadline_us = 0;
    job->last_error = NULL;
    job->enqueued_us = now;
    job->vdeadline_us = now + self->opts.prio_offset_us[job->priority % LLMQ_NPRIO];
    if ((rc = s_job_put (self, job, 0))) {
        return rc;
    }
    s_ready_key_t rk;
    MDB_val rkv = s_ready_key (&rk, route, job->vdeadline_us, job->id);
    TRY (mdb_put (self->txn, self->ready, &rkv, &s_empty, 0));
    /*  Still a member of its batch (total unchanged): one dead less, one
        pending more, and FETCH skips it until it ends again. */
    if (job->batch_id && (rc = s_batch_add (self, job->batch_id, LLMQ_STATE_DEAD, -1))) {
        return rc;
    }
    self->turn_bytes += need;
    self->routes_v[route - 1].stats.ready[job->priority % LLMQ_NPRIO]++;
    (void) llmq_depth_add (self->depth, job->user, job->org, 1);
    return 0;
}

/*  Delete the dead letter `d` as the timer would at the end of its TTL. */
static int
s_dead_purge (llmq_store_t *self, const llmq_dead_t *d)
{
    const llmq_job_t *job = &d->job;
    s_id_key_t ik;
    s_time_key_t ek;
    int rc;
    if ((rc = s_del (self, self->results, s_id_key (&ik, job->id)))
    ||  (rc = s_del (self, self->dead, s_id_key (&ik, job->id)))
    ||  (rc = s_del (self, self->expiry, s_time_key (&ek, d->expire_at_us, job->id)))) {
        return rc;
    }
    if (job->idem_key) {
        MDB_val k = s_str_val (job->idem_key), v;
        if (mdb_get (self->txn, self->idem, &k, &v) == 0 && v.mv_size == 8
        &&  s_get64 ((const unsigned char *) v.mv_data) == job->id
        &&  (rc = s_del (self, self->idem, k))) {
            return rc;
        }
    }
    if (job->batch_id) {
        char kb[600];
        if ((rc = s_del (self, self->batchjobs, s_batchjob_key (kb, sizeof kb, job->batch_id, job->id)))
        ||  (rc = s_batch_add (self, job->batch_id, LLMQ_STATE_DEAD, -1))
        ||  (rc = s_batch_add (self, job->batch_id, 0, -1))) {
            return rc;
        }
    }
    return 0;
}

/*  Run a requeue or purge in a savepoint when the map is tight (as
    llmq_store_submit_all does), so that running out of space halfway
    leaves the turn's transaction as it was. */
static int
s_dead_apply (llmq_store_t *self, llmq_dead_t *d, uint64_t now, bool requeue)
{
    bool nested = self->tight && !self->parent;
    int rc = nested ? llmq_store_save (self) : 0;
    if (rc) {
        return rc;
    }
    rc = requeue ? s_dead_requeue (self, d, now) : s_dead_purge (self, d);
    if (rc && nested) {
        llmq_store_rollback (self);
        return rc;
    }
    return nested ? llmq_store_release (self) : rc;
}

static int
s_dead_one (llmq_store_t *self, uint64_t id, uint64_t now, bool requeue)
{
    llmq_arena_t *arena = llmq_arena_new ();
    if (!arena) {
        return LLMQ_ERR_NOMEM;
    }
    llmq_dead_t d;
    bool orphan;
    int rc = s_dead_load (self, id, &d, &orphan, arena);
    if (rc == 0) {
        rc = s_dead_apply (self, &d, now, requeue);
        if (rc == LLMQ_ERR_STORE_FULL) {
            llmq_store_want_grow (self);
        }
    }
    else
    if (orphan && !requeue) {
        s_id_key_t ik;
        int drc = s_del (self, self->dead, s_id_key (&ik, id));
        rc = drc ? drc : LLMQ_ERR_NOT_FOUND;
    }
    llmq_arena_destroy (&arena);
    return rc;
}

int
llmq_store_dead_requeue (llmq_store_t *self, uint64_t id, uint64_t now)
{
    return s_dead_one (self, id, now, true);
}

int
llmq_store_dead_purge (llmq_store_t *self, uint64_t id)
{
    return s_dead_one (self, id, 0, false);
}

/*  Ids of up to `max` dead letters of `route` (0: all), in id order; with
    orphans (for a purge) or without. *more: there are others past them. */
static int
s_dead_collect (llmq_store_t *self, uint32_t route, size_t max, bool orphans, uint64_t **ids, size_t *n,
                bool *more)
{
    *n = 0;
    *more = false;
    size_t cap = 0;
    MDB_cursor *c;
    TRY (mdb_cursor_open (self->txn, self->dead, &c));
    MDB_val k, v;
    int rc;
    for (rc = mdb_cursor_get (c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get (c, &k, &v, MDB_NEXT)) {
        if (k.mv_size != 8 || !s_dead_matches (v, route)) {
            continue;
        }
        if (!orphans) {
            MDB_val rv;
            if (mdb_get (self->txn, self->results, &k, &rv) != 0) {
                continue;
            }
        }
        if (max && *n == max) {
            *more = true;
            break;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 256;
            uint64_t *grown = (uint64_t *) realloc (*ids, cap * sizeof (uint64_t));
            if (!grown) {
                mdb_cursor_close (c);
                return LLMQ_ERR_NOMEM;
            }
            *ids = grown;
        }
        (*ids)[(*n)++] = s_get64 ((const unsigned char *) k.mv_data);
    }
    mdb_cursor_close (c);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : s_err (rc);
}

static int
s_dead_all (llmq_store_t *self, const char *model, uint64_t now, bool requeue, size_t max, size_t *done,
            bool *more)
{
    *done = 0;
    *more = false;
    uint32_t route = s_dead_filter (self, model);
    if (route == UINT32_MAX) {
        return 0;
    }
    uint64_t *ids = NULL;
    size_t n = 0;
    int rc = s_dead_collect (self, route, max, !requeue, &ids, &n, more);
    llmq_arena_t *arena = rc == 0 ? llmq_arena_new () : NULL;
    if (rc == 0 && !arena) {
        rc = LLMQ_ERR_NOMEM;
    }
    for (size_t i = 0; rc == 0 && i < n; i++) {
        llmq_dead_t d;
        bool orphan;
        rc = s_dead_load (self, ids[i], &d, &orphan, arena);
        if (rc == 0) {
            rc = s_dead_apply (self, &d, now, requeue);
            if (rc == 0) {
                (*done)++;
            }
        }
        else
        if (orphan) {
            s_id_key_t ik;
            rc = requeue ? 0 : s_del (self, self->dead, s_id_key (&ik, ids[i]));
        }
        if (rc == LLMQ_ERR_STORE_FULL) {
            llmq_store_want_grow (self);        /* grow at the next check if it can */
        }
        if (rc == LLMQ_ERR_STORE_FULL && *done) {
            *more = true;       /* what is done stays done; the rest after the commit */
            rc = 0;
            break;
        }
        llmq_arena_reset (arena);
    }
    llmq_arena_destroy (&arena);
    free (ids);
    return rc;
}

int
llmq_store_dead_requeue_all (llmq_store_t *self, const char *model, uint64_t now, size_t max,
                             size_t *requeued, bool *more)
{
    return s_dead_all (self, model, now, true, max, requeued, more);
}

int
llmq_store_dead_purge_all (llmq_store_t *self, const char *model, size_t max, size_t *purged, bool *more)
{
    return s_dead_all (self, model, 0, false, max, purged, more);
}

/* ------------------------------------------------------------------------
   Usage: requests, tokens and cost per (day, org, user, model)
   ------------------------------------------------------------------------ */

#define S_USAGE_VALUE 40            /* requests, failed, prompt, completion, cost: u64 each */

/*  Key: day (u32, big-endian, so days sort) then org, user, model, each
    NUL-terminated ("" for none). */
static size_t
s_usage_key (unsigned char *buf, size_t cap, uint32_t day, const char *org, const char *user,
             const char *model)
{
    const char *parts[3] = { org ? org : "", user ? user : "", model ? model : "" };
    size_t len = 4;
    if (cap < 4) {
        return 0;
    }
    s_put32 (buf, day);
    for (int i = 0; i < 3; i++) {
        size_t n = strlen (parts[i]) + 1;
        if (len + n > cap) {
            return 0;
        }
        memcpy (buf + len, parts[i], n);
        len += n;
    }
    return len;
}

int
llmq_store_usage_add (llmq_store_t *self, uint32_t day, const char *org, const char *user,
                      const char *model, bool ok, uint64_t prompt_tokens, uint64_t completion_tokens,
                      uint64_t cost_micro)
{
    unsigned char key[512];
    size_t klen = s_usage_key (key, sizeof key, day, org, user, model);
    if (!klen) {
        return LLMQ_ERR_INVALID;
    }
    MDB_val k = { klen, key }, v;
    uint64_t counts[5] = { 0 };
    int rc = mdb_get (self->txn, self->usage, &k, &v);
    if (rc == 0 && v.mv_size == S_USAGE_VALUE) {
        for (int i = 0; i < 5; i++) {
            counts[i] = s_get64 ((const unsigned char *) v.mv_data + 8 * i);
        }
    }
    else
    if (rc != 0 && rc != MDB_NOTFOUND) {
        return LLMQ_ERR_STORE;
    }
    counts[0]++;
    counts[1] += ok ? 0 : 1;
    counts[2] += prompt_tokens;
    counts[3] += completion_tokens;
    counts[4] += cost_micro;
    unsigned char value[S_USAGE_VALUE];
    for (int i = 0; i < 5; i++) {
        s_put64 (value + 8 * i, counts[i]);
    }
    MDB_val d = { sizeof value, value };
    rc = mdb_put (self->txn, self->usage, &k, &d, 0);
    return rc == MDB_MAP_FULL ? LLMQ_ERR_STORE_FULL : rc ? LLMQ_ERR_STORE : 0;
}

int
llmq_store_usage_each (llmq_store_t *self, uint32_t from_day, uint32_t to_day,
                       llmq_usage_fn *fn, void *arg)
{
    MDB_cursor *cur;
    if (mdb_cursor_open (self->txn, self->usage, &cur)) {
        return LLMQ_ERR_STORE;
    }
    unsigned char start[4];
    s_put32 (start, from_day);
    MDB_val k = { sizeof start, start }, v;
    int rc = mdb_cursor_get (cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
        const unsigned char *p = (const unsigned char *) k.mv_data;
        if (k.mv_size < 7 || v.mv_size != S_USAGE_VALUE || p[k.mv_size - 1] != '\0') {
            rc = mdb_cursor_get (cur, &k, &v, MDB_NEXT);
            continue;               /* not ours: skipped */
        }
        uint32_t day = (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
        if (day > to_day) {
            break;
        }
        llmq_usage_t u;
        u.day = day;
        u.org = (const char *) p + 4;
        u.user = u.org + strlen (u.org) + 1;
        u.model = u.user + strlen (u.user) + 1;
        if ((const unsigned char *) u.model + strlen (u.model) + 1 != p + k.mv_size) {
            rc = mdb_cursor_get (cur, &k, &v, MDB_NEXT);
            continue;
        }
        const unsigned char *q = (const unsigned char *) v.mv_data;
        u.requests = s_get64 (q);
        u.failed = s_get64 (q + 8);
        u.prompt_tokens = s_get64 (q + 16);
        u.completion_tokens = s_get64 (q + 24);
        u.cost_micro = s_get64 (q + 32);
        fn (arg, &u);
        rc = mdb_cursor_get (cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close (cur);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : LLMQ_ERR_STORE;
}

int
llmq_store_state_each (llmq_store_t *self, const char *prefix, llmq_state_fn *fn, void *arg)
{
    MDB_cursor *cur;
    if (mdb_cursor_open (self->txn, self->state, &cur)) {
        return LLMQ_ERR_STORE;
    }
    size_t plen = strlen (prefix);
    MDB_val k = { plen, (void *) prefix }, v;
    int rc = mdb_cursor_get (cur, &k, &v, MDB_SET_RANGE);
    char key[512];
    while (rc == 0 && k.mv_size >= plen && memcmp (k.mv_data, prefix, plen) == 0) {
        if (k.mv_size < sizeof key) {
            memcpy (key, k.mv_data, k.mv_size);
            key[k.mv_size] = '\0';
            fn (arg, key, v.mv_data, v.mv_size);
        }
        rc = mdb_cursor_get (cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close (cur);
    return rc == 0 || rc == MDB_NOTFOUND ? 0 : LLMQ_ERR_STORE;
}
