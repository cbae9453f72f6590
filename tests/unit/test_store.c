/*  test_store.c -- the store suite: the broker's durable queue, driven the
    way the broker drives it (one write transaction per turn) with the clock
    in the test's hands: every call takes `now`, so hours pass in no time and
    nothing here sleeps.

    Each test opens a store in a fresh mkdtemp directory (the fixture) and
    removes it after. Priority offsets are the defaults of docs/protocol.md:
    urgent 0 s, high 5 s, normal 30 s, low 120 s.
*/
#include "store.h"
#include "log.h"

#include <check.h>
#include <lmdb.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_SEC       1000000ull                  //  µs
#define S_T0        (1767225600ull * S_SEC)     //  2026-01-01T00:00:00Z
#define S_TTL       (3600 * S_SEC)              //  result time to live
#define S_MIB       (1ull << 20)

static char s_dir[64];
static llmq_arena_t *s_arena;

static void
s_setup (void)
{
    snprintf (s_dir, sizeof s_dir, "/tmp/llmq-test-store-XXXXXX");
    ck_assert_ptr_nonnull (mkdtemp (s_dir));
    s_arena = llmq_arena_new ();
    ck_assert_ptr_nonnull (s_arena);
}

static void
s_teardown (void)
{
    llmq_arena_destroy (&s_arena);
    char command[128];
    snprintf (command, sizeof command, "rm -rf '%s'", s_dir);
    ck_assert_int_eq (system (command), 0);
}

static llmq_store_opts_t
s_opts (void)
{
    llmq_store_opts_t opts = {
        .sync = false,
        .map_size = 16 * S_MIB,
        .max_map_size = 64 * S_MIB,
        .prio_offset_us = { 0, 5 * S_SEC, 30 * S_SEC, 120 * S_SEC },
        .result_ttl_us = S_TTL,
        .max_attempts = 3,
        .backoff_us = 1 * S_SEC,
        .backoff_max_us = 10 * S_SEC,
    };
    return opts;
}

static llmq_store_t *
s_open (const llmq_store_opts_t *opts, uint64_t now)
{
    char err[256] = "";
    llmq_store_t *store = llmq_store_open (s_dir, opts, now, err, sizeof err);
    ck_assert_msg (store, "open failed: %s", err);
    return store;
}

//  A job as a client sends it: model, body and the optional fields.
typedef struct {
    const char *model;
    int priority;
    const char *idem_key;
    const char *batch_id;
    const char *custom_id;
    uint64_t deadline_us;
    uint32_t max_attempts;
    const char *body;
} s_spec_t;

static uint64_t
s_submit_spec (llmq_store_t *store, const s_spec_t *spec, uint64_t now, bool *dup)
{
    llmq_job_t job = {
        .model = spec->model ? spec->model : "gpt-4o-mini",
        .body = spec->body ? spec->body : "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        .priority = (uint8_t) spec->priority,
        .idem_key = spec->idem_key,
        .batch_id = spec->batch_id,
        .custom_id = spec->custom_id,
        .deadline_us = spec->deadline_us,
        .max_attempts = spec->max_attempts,
    };
    bool was_dup = false;
    int rc = llmq_store_submit (store, &job, now, &was_dup);
    ck_assert_msg (rc == 0, "submit gave %d", rc);
    ck_assert_uint_ne (job.id, 0);
    if (!was_dup) {
        ck_assert_uint_eq (job.enqueued_us, now);
        ck_assert_uint_eq (job.vdeadline_us, now + s_opts ().prio_offset_us[spec->priority]);
    }
    if (dup) {
        *dup = was_dup;
    }
    return job.id;
}

//  The common case: a job of `model` at `priority`, nothing else.
static uint64_t
s_submit (llmq_store_t *store, const char *model, int priority, uint64_t now)
{
    s_spec_t spec = { .model = model, .priority = priority };
    return s_submit_spec (store, &spec, now, NULL);
}

static uint32_t
s_route (llmq_store_t *store, const char *model)
{
    uint32_t number = 0;
    ck_assert_int_eq (llmq_store_route (store, model, &number), 0);
    ck_assert_uint_ne (number, 0);
    return number;
}

//  Id at the head of the route, or 0 when the route has nothing ready.
static uint64_t
s_head (llmq_store_t *store, const char *model)
{
    uint64_t id = 0, vdl = 0;
    int rc = llmq_store_peek (store, s_route (store, model), &id, &vdl);
    if (rc == LLMQ_ERR_NOT_FOUND) {
        return 0;
    }
    ck_assert_int_eq (rc, 0);
    return id;
}

static llmq_route_stats_t
s_stats (llmq_store_t *store, const char *model)
{
    const llmq_route_stats_t *routes;
    size_t n = llmq_store_routes (store, &routes);
    for (size_t i = 0; i < n; i++) {
        if (routes[i].name && strcmp (routes[i].name, model) == 0) {
            return routes[i];
        }
    }
    return (llmq_route_stats_t) { 0 };
}

static uint64_t
s_ready (llmq_store_t *store, const char *model)
{
    llmq_route_stats_t st = s_stats (store, model);
    return st.ready[0] + st.ready[1] + st.ready[2] + st.ready[3];
}

//  Leases `id`, which must be ready; returns its lease token.
static uint64_t
s_lease (llmq_store_t *store, uint64_t id, uint64_t now)
{
    llmq_job_t job;
    llmq_result_t final;
    int rc = llmq_store_lease (store, id, now, &job, &final, s_arena);
    ck_assert_msg (rc == 0, "lease of %llu gave %d", (unsigned long long) id, rc);
    ck_assert_uint_eq (job.id, id);
    ck_assert_uint_eq (job.state, LLMQ_STATE_RUNNING);
    ck_assert_uint_ne (job.lease, 0);
    return job.lease;
}

static int
s_complete (llmq_store_t *store, uint64_t id, uint64_t lease, uint64_t now)
{
    llmq_result_t res = { .state = LLMQ_STATE_DONE, .content = "ok", .finish_reason = "stop" };
    llmq_result_t final;
    return llmq_store_complete (store, id, lease, &res, now, &final, s_arena);
}

static int
s_state (llmq_store_t *store, uint64_t id)
{
    llmq_result_t res;
    int rc = llmq_store_status (store, id, &res, s_arena);
    return rc == 0 ? res.state : -rc;       //  -LLMQ_ERR_NOT_FOUND when gone
}

//  What a tick finalised, for the callback.
typedef struct {
    int calls;
    uint64_t ids[8];
    int states[8];
} s_finals_t;

static void
s_on_final (void *arg, const llmq_result_t *res)
{
    s_finals_t *finals = (s_finals_t *) arg;
    ck_assert_int_lt (finals->calls, 8);
    finals->ids[finals->calls] = res->id;
    finals->states[finals->calls] = res->state;
    finals->calls++;
}


//  --------------------------------------------------------------------------
//  Order: virtual deadlines

//  The case, for each priority against urgent: a job submitted more
//  than its offset before an urgent one is served first; less, and the
//  urgent one is. Low: 121 s before wins, 119 s before loses.
START_TEST (test_aging_against_urgent)
{
    int prio = LLMQ_PRIO_HIGH + _i;
    uint64_t offset = s_opts ().prio_offset_us[prio];
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);

    uint64_t old = s_submit (store, "aged", prio, S_T0);
    uint64_t urgent = s_submit (store, "aged", LLMQ_PRIO_URGENT, S_T0 + offset + 1 * S_SEC);
    ck_assert_uint_eq (s_head (store, "aged"), old);

    uint64_t young = s_submit (store, "young", prio, S_T0);
    uint64_t urgent2 = s_submit (store, "young", LLMQ_PRIO_URGENT, S_T0 + offset - 1 * S_SEC);
    ck_assert_uint_eq (s_head (store, "young"), urgent2);

    //  The head's virtual deadline is its enqueue time plus its offset.
    uint64_t id, vdl;
    ck_assert_int_eq (llmq_store_peek (store, s_route (store, "aged"), &id, &vdl), 0);
    ck_assert_uint_eq (vdl, S_T0 + offset);
    ck_assert_int_eq (llmq_store_peek (store, s_route (store, "young"), &id, &vdl), 0);
    ck_assert_uint_eq (vdl, S_T0 + offset - 1 * S_SEC);

    //  Served in that order: lease the head, the next one comes up.
    s_lease (store, old, S_T0 + 200 * S_SEC);
    ck_assert_uint_eq (s_head (store, "aged"), urgent);
    s_lease (store, urgent2, S_T0 + 200 * S_SEC);
    ck_assert_uint_eq (s_head (store, "young"), young);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
    ck_assert_ptr_null (store);
    llmq_store_close (&store);          //  safe twice
}
END_TEST

//  Among jobs of one priority, first in, first out; at the same instant, in
//  submit order.
START_TEST (test_fifo_within_a_priority)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t ids[8];
    for (int i = 0; i < 8; i++) {
        ids[i] = s_submit (store, "gpt", LLMQ_PRIO_NORMAL, S_T0 + (uint64_t) (i / 2));   //  pairs share a µs
    }
    for (int i = 0; i < 8; i++) {
        ck_assert_uint_eq (s_head (store, "gpt"), ids[i]);
        s_lease (store, ids[i], S_T0 + S_SEC);
    }
    ck_assert_uint_eq (s_head (store, "gpt"), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  A job's place is fixed when it is submitted: time passing, ticks and a
//  retry that is not counted leave its key as it was, so newer urgent jobs
//  line up behind it.
START_TEST (test_place_never_changes)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t low = s_submit (store, "gpt", LLMQ_PRIO_LOW, S_T0);
    uint32_t route = s_route (store, "gpt");
    ck_assert_int_eq (llmq_store_commit (store), 0);

    uint64_t id, vdl;
    for (uint64_t hours = 1; hours <= 3; hours++) {
        uint64_t now = S_T0 + hours * 3600 * S_SEC;
        ck_assert_int_eq (llmq_store_begin (store), 0);
        llmq_store_tick (store, now, 1000, NULL, NULL, s_arena);
        ck_assert_int_eq (llmq_store_peek (store, route, &id, &vdl), 0);
        ck_assert_uint_eq (id, low);
        ck_assert_uint_eq (vdl, S_T0 + 120 * S_SEC);
        ck_assert_int_eq (llmq_store_commit (store), 0);
    }
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t lease = s_lease (store, low, S_T0 + 4 * 3600 * S_SEC);
    llmq_result_t left = { .error_class = LLMQ_EC_CANCELLED, .error = "worker left" }, final;
    ck_assert_int_eq (llmq_store_requeue (store, low, lease, false, 0, &left, S_T0 + 4 * 3600 * S_SEC,
                                          &final, s_arena), 0);
    uint64_t urgent = s_submit (store, "gpt", LLMQ_PRIO_URGENT, S_T0 + 4 * 3600 * S_SEC);
    ck_assert_int_eq (llmq_store_peek (store, route, &id, &vdl), 0);
    ck_assert_uint_eq (id, low);
    ck_assert_uint_eq (vdl, S_T0 + 120 * S_SEC);
    s_lease (store, low, S_T0 + 4 * 3600 * S_SEC);
    ck_assert_uint_eq (s_head (store, "gpt"), urgent);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


//  --------------------------------------------------------------------------
//  Persistence

#define S_NJOBS 40

static const char *s_models[] = { "gpt-4o-mini", "claude-3-haiku" };

//  Job i of the persistence tests: two routes, every priority, a batch, an
//  idempotency key and a deadline on some, one second apart.
static s_spec_t
s_spec (int i, char *idem, char *cid)
{
    sprintf (idem, "idem-%d", i);
    sprintf (cid, "row-%d", i);
    s_spec_t spec = {
        .model = s_models[i % 2],
        .priority = (i * 7) % 4,
        .idem_key = i % 3 ? idem : NULL,
        .batch_id = i % 4 ? "nightly" : NULL,
        .custom_id = cid,
        .deadline_us = i % 5 ? S_T0 + (uint64_t) (10000 + i) * S_SEC : 0,
    };
    return spec;
}

static uint64_t
s_spec_now (int i)
{
    return S_T0 + (uint64_t) i * S_SEC;
}

//  Submitted jobs are on disk after commit and close; the order, the depth
//  counters and the idempotency keys come back; a turn that was aborted
//  left nothing.
START_TEST (test_reopen_keeps_everything)
{
    llmq_store_opts_t opts = s_opts ();
    opts.sync = true;
    llmq_store_t *store = s_open (&opts, S_T0);
    uint64_t ids[S_NJOBS];
    ck_assert_int_eq (llmq_store_begin (store), 0);
    for (int i = 0; i < S_NJOBS; i++) {
        char idem[32], cid[32];
        s_spec_t spec = s_spec (i, idem, cid);
        ids[i] = s_submit_spec (store, &spec, s_spec_now (i), NULL);
    }
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_route_stats_t before[2] = { s_stats (store, s_models[0]), s_stats (store, s_models[1]) };

    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t aborted = s_submit (store, s_models[0], LLMQ_PRIO_URGENT, S_T0 + 100 * S_SEC);
    llmq_store_abort (store);
    llmq_store_close (&store);

    store = s_open (&opts, S_T0 + 200 * S_SEC);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    //  The counters are rebuilt exactly, and match what was submitted.
    for (int r = 0; r < 2; r++) {
        llmq_route_stats_t after = s_stats (store, s_models[r]);
        uint64_t expected[LLMQ_NPRIO] = { 0 };
        for (int i = r; i < S_NJOBS; i += 2) {
            expected[(i * 7) % 4]++;
        }
        for (int p = 0; p < LLMQ_NPRIO; p++) {
            ck_assert_uint_eq (after.ready[p], before[r].ready[p]);
            ck_assert_uint_eq (after.ready[p], expected[p]);
        }
        ck_assert_uint_eq (after.delayed, 0);
        ck_assert_uint_eq (after.running, 0);
        ck_assert_uint_eq (after.number, before[r].number);
    }
    //  Nothing of the aborted turn.
    ck_assert_uint_gt (aborted, ids[S_NJOBS - 1]);
    ck_assert_int_eq (s_state (store, aborted), -LLMQ_ERR_NOT_FOUND);
    //  Keys still find their jobs.
    for (int i = 0; i < S_NJOBS; i++) {
        char idem[32], cid[32];
        s_spec_t spec = s_spec (i, idem, cid);
        if (spec.idem_key) {
            bool dup = false;
            ck_assert_uint_eq (s_submit_spec (store, &spec, S_T0 + 300 * S_SEC, &dup), ids[i]);
            ck_assert (dup);
        }
    }
    //  Every job is there as submitted, served in virtual-deadline order
    //  (enqueue time + offset, then id) within each route.
    for (int r = 0; r < 2; r++) {
        int order[S_NJOBS], n = 0;
        for (int i = r; i < S_NJOBS; i += 2) {
            order[n++] = i;
        }
        for (int a = 1; a < n; a++) {           //  insertion sort by (vdl, id)
            for (int b = a; b > 0; b--) {
                int x = order[b - 1], y = order[b];
                uint64_t vx = s_spec_now (x) + opts.prio_offset_us[(x * 7) % 4];
                uint64_t vy = s_spec_now (y) + opts.prio_offset_us[(y * 7) % 4];
                if (vx < vy || (vx == vy && ids[x] < ids[y])) {
                    break;
                }
                order[b - 1] = y;
                order[b] = x;
            }
        }
        for (int k = 0; k < n; k++) {
            int i = order[k];
            char idem[32], cid[32];
            s_spec_t spec = s_spec (i, idem, cid);
            ck_assert_uint_eq (s_head (store, s_models[r]), ids[i]);
            llmq_job_t job;
            llmq_result_t final;
            ck_assert_int_eq (llmq_store_lease (store, ids[i], S_T0 + 400 * S_SEC, &job, &final, s_arena), 0);
            ck_assert_str_eq (job.model, spec.model);
            ck_assert_uint_eq (job.priority, spec.priority);
            ck_assert_pstr_eq (job.idem_key, spec.idem_key);
            ck_assert_pstr_eq (job.batch_id, spec.batch_id);
            ck_assert_pstr_eq (job.custom_id, spec.custom_id);
            ck_assert_uint_eq (job.deadline_us, spec.deadline_us);
            ck_assert_uint_eq (job.enqueued_us, s_spec_now (i));
            ck_assert_uint_eq (job.attempts, 0);
        }
        ck_assert_uint_eq (s_head (store, s_models[r]), 0);
    }
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  An aborted turn leaves no trace in this process either: no job, no depth,
//  and a route it created is created for real when a later turn uses it.
START_TEST (test_abort_leaves_no_trace)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    s_submit (store, "kept", LLMQ_PRIO_NORMAL, S_T0);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t gone = s_submit (store, "kept", LLMQ_PRIO_NORMAL, S_T0 + 1);
    s_submit (store, "new-route", LLMQ_PRIO_NORMAL, S_T0 + 1);
    llmq_store_abort (store);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (s_state (store, gone), -LLMQ_ERR_NOT_FOUND);
    ck_assert_uint_eq (s_ready (store, "kept"), 1);
    ck_assert_uint_eq (s_ready (store, "new-route"), 0);
    uint64_t later = s_submit (store, "new-route", LLMQ_PRIO_NORMAL, S_T0 + 2);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);

    store = s_open (&opts, S_T0 + 3);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (s_ready (store, "new-route"), 1);
    ck_assert_uint_eq (s_head (store, "new-route"), later);
    s_lease (store, later, S_T0 + 4);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  A store written in a format this broker does not know is refused with a
//  reason, not misread.
START_TEST (test_refuses_unknown_format)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    llmq_store_close (&store);

    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi meta;
    ck_assert_int_eq (mdb_env_create (&env), 0);
    ck_assert_int_eq (mdb_env_set_maxdbs (env, 16), 0);
    ck_assert_int_eq (mdb_env_open (env, s_dir, 0, 0640), 0);
    ck_assert_int_eq (mdb_txn_begin (env, NULL, 0, &txn), 0);
    ck_assert_int_eq (mdb_dbi_open (txn, "meta", 0, &meta), 0);
    unsigned char v2[4] = { 0, 0, 0, LLMQ_STORE_FORMAT + 1 };
    MDB_val key = { 6, (void *) "format" }, val = { 4, v2 };
    ck_assert_int_eq (mdb_put (txn, meta, &key, &val, 0), 0);
    ck_assert_int_eq (mdb_txn_commit (txn), 0);
    mdb_env_close (env);

    char err[256] = "";
    store = llmq_store_open (s_dir, &opts, S_T0, err, sizeof err);
    ck_assert_ptr_null (store);
    ck_assert_ptr_nonnull (strstr (err, "format"));

    //  A data directory that is a file is refused too.
    char path[96];
    snprintf (path, sizeof path, "%s/file", s_dir);
    FILE *file = fopen (path, "w");
    ck_assert_ptr_nonnull (file);
    fclose (file);
    err[0] = 0;
    ck_assert_ptr_null (llmq_store_open (path, &opts, S_T0, err, sizeof err));
    ck_assert_str_ne (err, "");
}
END_TEST


//  --------------------------------------------------------------------------
//  Leases, retries, dead letters

//  Jobs running when the broker stopped are queued again at open, their
//  attempt not counted; a report under the old lease is stale; the next
//  dispatch gets a token never used before.
START_TEST (test_leases_end_at_restart)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t a = s_submit (store, "gpt", LLMQ_PRIO_URGENT, S_T0);
    uint64_t b = s_submit (store, "gpt", LLMQ_PRIO_URGENT, S_T0 + 1);
    s_spec_t with_deadline = { .model = "gpt", .deadline_us = S_T0 + 3600 * S_SEC };
    uint64_t c = s_submit_spec (store, &with_deadline, S_T0 + 2, NULL);
    uint64_t lease_a = s_lease (store, a, S_T0 + 10);
    uint64_t lease_c = s_lease (store, c, S_T0 + 10);
    ck_assert_uint_ne (lease_a, lease_c);
    ck_assert_uint_eq (s_stats (store, "gpt").running, 2);
    ck_assert_int_eq (s_state (store, a), LLMQ_STATE_RUNNING);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);

    store = s_open (&opts, S_T0 + 60 * S_SEC);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_route_stats_t st = s_stats (store, "gpt");
    ck_assert_uint_eq (st.ready[LLMQ_PRIO_URGENT], 3);
    ck_assert_uint_eq (st.running, 0);
    llmq_result_t status;
    ck_assert_int_eq (llmq_store_status (store, a, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (status.attempts, 0);
    //  Back in their places: a, b, c.
    ck_assert_uint_eq (s_head (store, "gpt"), a);

    //  The worker that held the old lease reports: stale.
    ck_assert_int_eq (s_complete (store, a, lease_a, S_T0 + 61 * S_SEC), LLMQ_ERR_STATE);
    ck_assert_int_eq (s_state (store, a), LLMQ_STATE_QUEUED);

    uint64_t new_a = s_lease (store, a, S_T0 + 62 * S_SEC);
    ck_assert_uint_ne (new_a, lease_a);
    ck_assert_uint_ne (new_a, lease_c);
    ck_assert_int_eq (s_complete (store, a, lease_a, S_T0 + 63 * S_SEC), LLMQ_ERR_STATE);
    ck_assert_int_eq (s_complete (store, a, new_a, S_T0 + 63 * S_SEC), 0);
    ck_assert_uint_eq (s_head (store, "gpt"), b);
    s_lease (store, b, S_T0 + 64 * S_SEC);
    //  c kept its deadline through the restart: past it, it is not served.
    ck_assert_uint_eq (s_head (store, "gpt"), c);
    llmq_job_t job;
    llmq_result_t final;
    ck_assert_int_eq (llmq_store_lease (store, c, S_T0 + 3601 * S_SEC, &job, &final, s_arena), LLMQ_ERR_EXPIRED);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  Counted failures add up; at max_attempts (the store's default 3 here)
//  the job is dead-lettered with the last failure.
START_TEST (test_requeue_until_dead)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t id = s_submit (store, "gpt", LLMQ_PRIO_HIGH, S_T0);
    llmq_result_t failure = { .error_class = LLMQ_EC_SERVER, .http_status = 503, .error = "upstream 503" };
    llmq_result_t final, status;
    uint64_t now = S_T0;
    for (uint32_t attempt = 1; attempt < opts.max_attempts; attempt++) {
        uint64_t lease = s_lease (store, id, now += S_SEC);
        ck_assert_int_eq (llmq_store_requeue (store, id, lease, true, 0, &failure, now += S_SEC,
                                              &final, s_arena), 0);
        ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
        ck_assert_uint_eq (status.state, LLMQ_STATE_QUEUED);
        ck_assert_uint_eq (status.attempts, attempt);
        ck_assert_str_eq (status.error, "upstream 503");
        ck_assert_uint_eq (s_head (store, "gpt"), id);
    }
    uint64_t started = now + S_SEC;
    uint64_t lease = s_lease (store, id, now += S_SEC);
    ck_assert_int_eq (llmq_store_requeue (store, id, lease, true, 0, &failure, now += S_SEC, &final, s_arena),
                      LLMQ_ERR_JOB_FAILED);
    ck_assert_uint_eq (final.id, id);
    ck_assert_uint_eq (final.state, LLMQ_STATE_DEAD);
    ck_assert_uint_eq (final.attempts, opts.max_attempts);
    ck_assert_uint_eq (final.http_status, 503);
    ck_assert_uint_eq (final.started_us, started);
    ck_assert_uint_eq (final.finished_us, now);
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_DEAD);
    ck_assert_uint_eq (s_head (store, "gpt"), 0);
    ck_assert_uint_eq (s_stats (store, "gpt").running, 0);

    //  A job's own max_attempts wins over the default.
    s_spec_t once = { .model = "gpt", .max_attempts = 1 };
    id = s_submit_spec (store, &once, now, NULL);
    lease = s_lease (store, id, now);
    ck_assert_int_eq (llmq_store_requeue (store, id, lease, true, 0, &failure, now, &final, s_arena),
                      LLMQ_ERR_JOB_FAILED);

    //  Uncounted requeues (worker left, shutdown) never kill a job.
    id = s_submit (store, "gpt", LLMQ_PRIO_HIGH, now);
    for (int i = 0; i < 10; i++) {
        lease = s_lease (store, id, now);
        ck_assert_int_eq (llmq_store_requeue (store, id, lease, false, 0, &failure, now, &final, s_arena), 0);
    }
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (status.attempts, 0);

    //  A requeue under a lease that is not current is refused; lease 0
    //  means whatever lease it has.
    lease = s_lease (store, id, now);
    ck_assert_int_eq (llmq_store_requeue (store, id, lease + 1, true, 0, &failure, now, &final, s_arena),
                      LLMQ_ERR_STATE);
    ck_assert_int_eq (llmq_store_requeue (store, id, 0, false, 0, &failure, now, &final, s_arena), 0);
    ck_assert_int_eq (llmq_store_requeue (store, id, 0, false, 0, &failure, now, &final, s_arena),
                      LLMQ_ERR_STATE);          //  not leased any more
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  A retry with a backoff waits in delayed until its time: a tick before
//  leaves it there, a tick at that time makes it ready, in its old place.
START_TEST (test_backoff_delays_the_job)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t id = s_submit (store, "gpt", LLMQ_PRIO_NORMAL, S_T0);
    uint64_t lease = s_lease (store, id, S_T0 + S_SEC);
    uint64_t not_before = S_T0 + 10 * S_SEC;
    llmq_result_t failure = { .error_class = LLMQ_EC_RATE_LIMITED, .error = "429" }, final;
    ck_assert_int_eq (llmq_store_requeue (store, id, lease, true, not_before, &failure, S_T0 + 2 * S_SEC,
                                          &final, s_arena), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_DELAYED);
    ck_assert_uint_eq (s_head (store, "gpt"), 0);
    ck_assert_uint_eq (s_stats (store, "gpt").delayed, 1);
    ck_assert_uint_eq (s_ready (store, "gpt"), 0);
    ck_assert_uint_eq (llmq_store_next_delayed (store), not_before);

    llmq_store_tick (store, not_before - 1, 1000, NULL, NULL, s_arena);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_DELAYED);
    ck_assert_uint_eq (s_head (store, "gpt"), 0);

    ck_assert_uint_eq (llmq_store_tick (store, not_before, 1000, NULL, NULL, s_arena), 1);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (s_stats (store, "gpt").delayed, 0);
    ck_assert_uint_eq (s_stats (store, "gpt").ready[LLMQ_PRIO_NORMAL], 1);
    ck_assert_uint_eq (llmq_store_next_delayed (store), 0);
    uint64_t head, vdl;
    ck_assert_int_eq (llmq_store_peek (store, s_route (store, "gpt"), &head, &vdl), 0);
    ck_assert_uint_eq (head, id);
    ck_assert_uint_eq (vdl, S_T0 + 30 * S_SEC);
    llmq_result_t status;
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.attempts, 1);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


//  --------------------------------------------------------------------------
//  Idempotency

//  A key stores one job however often it comes, for as long as the job's
//  result lives; once the result has expired the key is free again.
START_TEST (test_idempotency_key)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    s_spec_t spec = { .model = "gpt", .idem_key = "order-7431" };
    bool dup = true;
    uint64_t id = s_submit_spec (store, &spec, S_T0, &dup);
    ck_assert (!dup);
    ck_assert_uint_eq (s_submit_spec (store, &spec, S_T0 + 1, &dup), id);     //  same turn
    ck_assert (dup);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (s_submit_spec (store, &spec, S_T0 + 2, &dup), id);     //  later turn
    ck_assert (dup);
    ck_assert_uint_eq (s_ready (store, "gpt"), 1);
    s_spec_t other = { .model = "gpt", .idem_key = "order-7432" };
    ck_assert_uint_ne (s_submit_spec (store, &other, S_T0 + 3, &dup), id);
    ck_assert (!dup);

    uint64_t finished = S_T0 + 10 * S_SEC;
    ck_assert_int_eq (s_complete (store, id, s_lease (store, id, S_T0 + 5 * S_SEC), finished), 0);
    ck_assert_uint_eq (s_submit_spec (store, &spec, S_T0 + 11 * S_SEC, &dup), id);
    ck_assert (dup);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_DONE);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_store_tick (store, finished + S_TTL - 1, 1000, NULL, NULL, s_arena);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_DONE);
    ck_assert_uint_eq (s_submit_spec (store, &spec, finished + S_TTL - 1, &dup), id);
    ck_assert (dup);
    ck_assert_uint_ge (llmq_store_tick (store, finished + S_TTL + 1, 1000, NULL, NULL, s_arena), 1);
    ck_assert_int_eq (s_state (store, id), -LLMQ_ERR_NOT_FOUND);
    uint64_t again = s_submit_spec (store, &spec, finished + S_TTL + 1, &dup);
    ck_assert (!dup);
    ck_assert_uint_ne (again, id);
    ck_assert_int_eq (s_state (store, again), LLMQ_STATE_QUEUED);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


//  --------------------------------------------------------------------------
//  Complete, cancel, deadlines

//  The worker's answer becomes the result, with the broker's bookkeeping
//  (times, attempts, the job's model and batch) filled in. Exactly once.
START_TEST (test_complete_stores_the_result)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    s_spec_t spec = { .model = "gpt", .priority = LLMQ_PRIO_LOW, .batch_id = "b", .custom_id = "row-1" };
    uint64_t id = s_submit_spec (store, &spec, S_T0, NULL);
    uint64_t started = S_T0 + 3 * S_SEC, finished = S_T0 + 5 * S_SEC;
    uint64_t lease = s_lease (store, id, started);
    llmq_result_t answer = {
        .state = LLMQ_STATE_DONE, .content = "Bonjour 🌍", .finish_reason = "stop",
        .deployment = "mock-gpt", .request_id = "req-1", .http_status = 200,
        .prompt_tokens = 12, .completion_tokens = 34, .latency_us = 1500000,
    };
    llmq_result_t final;
    ck_assert_int_eq (llmq_store_complete (store, id, lease, &answer, finished, &final, s_arena), 0);
    ck_assert_uint_eq (final.id, id);
    ck_assert_uint_eq (final.state, LLMQ_STATE_DONE);
    ck_assert_uint_eq (final.attempts, 1);
    ck_assert_uint_eq (final.enqueued_us, S_T0);
    ck_assert_uint_eq (final.started_us, started);
    ck_assert_uint_eq (final.finished_us, finished);
    ck_assert_str_eq (final.model, "gpt");
    ck_assert_str_eq (final.batch_id, "b");
    ck_assert_str_eq (final.custom_id, "row-1");
    ck_assert_uint_eq (final.priority, LLMQ_PRIO_LOW);
    ck_assert_uint_eq (s_stats (store, "gpt").running, 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_result_t status;
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_DONE);
    ck_assert_str_eq (status.content, "Bonjour 🌍");
    ck_assert_str_eq (status.finish_reason, "stop");
    ck_assert_str_eq (status.deployment, "mock-gpt");
    ck_assert_str_eq (status.request_id, "req-1");
    ck_assert_uint_eq (status.http_status, 200);
    ck_assert_uint_eq (status.prompt_tokens, 12);
    ck_assert_uint_eq (status.completion_tokens, 34);
    ck_assert_uint_eq (status.latency_us, 1500000);
    ck_assert_uint_eq (status.attempts, 1);
    ck_assert_uint_eq (status.started_us, started);
    ck_assert_uint_eq (status.finished_us, finished);
    ck_assert_str_eq (status.custom_id, "row-1");

    //  A second report for the same lease is stale: the first result stays.
    llmq_result_t late = { .state = LLMQ_STATE_FAILED, .error = "late" };
    ck_assert_int_eq (llmq_store_complete (store, id, lease, &late, finished + 1, &final, s_arena), LLMQ_ERR_STATE);
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_DONE);
    ck_assert_uint_eq (status.finished_us, finished);
    //  So is one for a job never leased.
    uint64_t queued = s_submit (store, "gpt", LLMQ_PRIO_URGENT, finished);
    ck_assert_int_eq (s_complete (store, queued, 1, finished), LLMQ_ERR_STATE);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

START_TEST (test_cancel)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t queued = s_submit (store, "gpt", LLMQ_PRIO_HIGH, S_T0);
    uint64_t running = s_submit (store, "gpt", LLMQ_PRIO_HIGH, S_T0 + 1);
    uint64_t delayed = s_submit (store, "gpt", LLMQ_PRIO_HIGH, S_T0 + 2);
    uint64_t lease = s_lease (store, running, S_T0 + S_SEC);
    uint64_t lease_d = s_lease (store, delayed, S_T0 + S_SEC);
    llmq_result_t failure = { .error_class = LLMQ_EC_TIMEOUT, .error = "timeout" }, final;
    ck_assert_int_eq (llmq_store_requeue (store, delayed, lease_d, true, S_T0 + 60 * S_SEC, &failure,
                                          S_T0 + 2 * S_SEC, &final, s_arena), 0);
    ck_assert_uint_eq (s_stats (store, "gpt").ready[LLMQ_PRIO_HIGH], 1);

    //  Queued: out of the queue at once.
    int was = 0;
    uint64_t its_lease = 99;
    uint64_t now = S_T0 + 3 * S_SEC;
    ck_assert_int_eq (llmq_store_cancel (store, queued, now, &was, &its_lease, &final, s_arena), 0);
    ck_assert_int_eq (was, LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (its_lease, 0);
    ck_assert_uint_eq (final.state, LLMQ_STATE_CANCELLED);
    ck_assert_uint_eq (final.finished_us, now);
    ck_assert_uint_eq (s_stats (store, "gpt").ready[LLMQ_PRIO_HIGH], 0);
    ck_assert_uint_eq (s_head (store, "gpt"), 0);
    ck_assert_int_eq (s_state (store, queued), LLMQ_STATE_CANCELLED);

    //  Running: the caller gets the lease to abort at the worker, whose
    //  report then is stale.
    ck_assert_int_eq (llmq_store_cancel (store, running, now, &was, &its_lease, &final, s_arena), 0);
    ck_assert_int_eq (was, LLMQ_STATE_RUNNING);
    ck_assert_uint_eq (its_lease, lease);
    ck_assert_uint_eq (final.state, LLMQ_STATE_CANCELLED);
    ck_assert_uint_eq (s_stats (store, "gpt").running, 0);
    ck_assert_int_eq (s_complete (store, running, lease, now + 1), LLMQ_ERR_STATE);
    ck_assert_int_eq (s_state (store, running), LLMQ_STATE_CANCELLED);

    //  Delayed: out of the delayed index, never promoted.
    ck_assert_int_eq (llmq_store_cancel (store, delayed, now, &was, &its_lease, &final, s_arena), 0);
    ck_assert_int_eq (was, LLMQ_STATE_DELAYED);
    ck_assert_uint_eq (s_stats (store, "gpt").delayed, 0);
    ck_assert_uint_eq (llmq_store_next_delayed (store), 0);
    llmq_store_tick (store, S_T0 + 61 * S_SEC, 1000, NULL, NULL, s_arena);
    ck_assert_int_eq (s_state (store, delayed), LLMQ_STATE_CANCELLED);
    ck_assert_uint_eq (s_head (store, "gpt"), 0);

    //  Final already, or never heard of.
    ck_assert_int_eq (llmq_store_cancel (store, queued, now, &was, &its_lease, &final, s_arena), LLMQ_ERR_STATE);
    ck_assert_int_eq (llmq_store_cancel (store, 987654, now, &was, &its_lease, &final, s_arena),
                      LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  A queued job not started by its deadline ends EXPIRED at the first tick
//  past it, reported once through the callback.
START_TEST (test_tick_expires_at_deadline)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t deadline = S_T0 + 30 * S_SEC;
    s_spec_t spec = { .model = "gpt", .priority = LLMQ_PRIO_LOW, .deadline_us = deadline };
    uint64_t id = s_submit_spec (store, &spec, S_T0, NULL);
    uint64_t patient = s_submit (store, "gpt", LLMQ_PRIO_LOW, S_T0);
    //  A delayed job expires the same way.
    spec.priority = LLMQ_PRIO_URGENT;
    uint64_t retried = s_submit_spec (store, &spec, S_T0, NULL);
    uint64_t lease = s_lease (store, retried, S_T0 + 1);
    llmq_result_t failure = { .error_class = LLMQ_EC_SERVER, .error = "500" }, final;
    ck_assert_int_eq (llmq_store_requeue (store, retried, lease, true, deadline + 60 * S_SEC, &failure,
                                          S_T0 + 2, &final, s_arena), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    s_finals_t finals = { 0 };
    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_store_tick (store, deadline - 1, 1000, s_on_final, &finals, s_arena);
    ck_assert_int_eq (finals.calls, 0);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_QUEUED);

    llmq_store_tick (store, deadline + 1, 1000, s_on_final, &finals, s_arena);
    ck_assert_int_eq (finals.calls, 2);             //  one call per job
    ck_assert_int_eq (finals.states[0], LLMQ_STATE_EXPIRED);
    ck_assert_int_eq (finals.states[1], LLMQ_STATE_EXPIRED);
    ck_assert ((finals.ids[0] == id && finals.ids[1] == retried) || (finals.ids[0] == retried && finals.ids[1] == id));
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_EXPIRED);
    ck_assert_int_eq (s_state (store, retried), LLMQ_STATE_EXPIRED);
    ck_assert_int_eq (s_state (store, patient), LLMQ_STATE_QUEUED);
    llmq_route_stats_t st = s_stats (store, "gpt");
    ck_assert_uint_eq (st.ready[LLMQ_PRIO_LOW], 1);
    ck_assert_uint_eq (st.ready[LLMQ_PRIO_URGENT], 0);
    ck_assert_uint_eq (st.delayed, 0);
    ck_assert_uint_eq (s_head (store, "gpt"), patient);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_store_tick (store, deadline + 3600 * S_SEC - 1, 1000, s_on_final, &finals, s_arena);
    ck_assert_int_eq (finals.calls, 2);             //  once only
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  At dispatch a job already past its deadline is expired instead of leased.
START_TEST (test_lease_past_deadline)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t deadline = S_T0 + 30 * S_SEC;
    s_spec_t spec = { .model = "gpt", .deadline_us = deadline };
    uint64_t late = s_submit_spec (store, &spec, S_T0, NULL);
    uint64_t in_time = s_submit_spec (store, &spec, S_T0 + 1, NULL);
    llmq_job_t job;
    llmq_result_t final;
    ck_assert_int_eq (llmq_store_lease (store, late, deadline + 1, &job, &final, s_arena), LLMQ_ERR_EXPIRED);
    ck_assert_uint_eq (final.id, late);
    ck_assert_uint_eq (final.state, LLMQ_STATE_EXPIRED);
    ck_assert_uint_eq (final.finished_us, deadline + 1);
    ck_assert_int_eq (s_state (store, late), LLMQ_STATE_EXPIRED);
    ck_assert_uint_eq (s_ready (store, "gpt"), 1);
    ck_assert_uint_eq (s_stats (store, "gpt").running, 0);

    ck_assert_int_eq (llmq_store_lease (store, in_time, deadline - 1, &job, &final, s_arena), 0);
    //  Started in time: its deadline no longer applies.
    s_finals_t finals = { 0 };
    llmq_store_tick (store, deadline + 10 * S_SEC, 1000, s_on_final, &finals, s_arena);
    ck_assert_int_eq (finals.calls, 0);
    ck_assert_int_eq (s_state (store, in_time), LLMQ_STATE_RUNNING);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


//  --------------------------------------------------------------------------
//  Batches

//  A batch's results page by page in id order, with its counts; another
//  batch whose name starts the same never mixes in.
START_TEST (test_fetch_a_batch)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t ids[7];
    for (int i = 0; i < 7; i++) {
        s_spec_t mine = { .model = "gpt", .batch_id = "b" };
        s_spec_t theirs = { .model = "gpt", .batch_id = "b2" };
        ids[i] = s_submit_spec (store, &mine, S_T0 + (uint64_t) i, NULL);
        s_submit_spec (store, &theirs, S_T0 + (uint64_t) i, NULL);
    }
    uint64_t now = S_T0 + S_SEC;
    //  4 done, 1 failed, 1 cancelled, 1 still queued (the fourth)
    int states[7] = { LLMQ_STATE_DONE, LLMQ_STATE_FAILED, LLMQ_STATE_DONE, 0, LLMQ_STATE_CANCELLED,
                      LLMQ_STATE_DONE, LLMQ_STATE_DONE };
    for (int i = 0; i < 7; i++) {
        llmq_result_t final;
        if (states[i] == LLMQ_STATE_DONE || states[i] == LLMQ_STATE_FAILED) {
            llmq_result_t res = { .state = (uint8_t) states[i], .content = "x" };
            uint64_t lease = s_lease (store, ids[i], now);
            ck_assert_int_eq (llmq_store_complete (store, ids[i], lease, &res, now, &final, s_arena), 0);
        }
        else if (states[i] == LLMQ_STATE_CANCELLED) {
            int was;
            uint64_t lease;
            ck_assert_int_eq (llmq_store_cancel (store, ids[i], now, &was, &lease, &final, s_arena), 0);
        }
    }
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t after = 0, seen[8];
    size_t nseen = 0;
    int pages = 0;
    bool more = true;
    while (more) {
        llmq_result_t *results;
        size_t n;
        uint64_t next;
        llmq_batch_counts_t counts;
        ck_assert_int_eq (llmq_store_fetch (store, "b", after, 2, &results, &n, &next, &more, &counts, s_arena), 0);
        ck_assert_uint_le (n, 2);
        ck_assert_uint_eq (counts.total, 7);
        ck_assert_uint_eq (counts.done, 4);
        ck_assert_uint_eq (counts.failed, 1);
        ck_assert_uint_eq (counts.cancelled, 1);
        ck_assert_uint_eq (counts.expired, 0);
        ck_assert_uint_eq (counts.dead, 0);
        for (size_t i = 0; i < n; i++) {
            ck_assert_uint_gt (results[i].id, after);
            ck_assert_str_eq (results[i].batch_id, "b");
            ck_assert_uint_lt (nseen, 8);
            seen[nseen++] = results[i].id;
        }
        if (n) {
            ck_assert_uint_ge (next, results[n - 1].id);   //  the last id seen
        }
        ck_assert_uint_ge (next, after);
        after = next;
        ck_assert_int_lt (++pages, 10);
    }
    uint64_t expected[6] = { ids[0], ids[1], ids[2], ids[4], ids[5], ids[6] };
    ck_assert_uint_eq (nseen, 6);
    for (size_t i = 0; i < 6; i++) {
        ck_assert_uint_eq (seen[i], expected[i]);
    }

    //  One page of everything, and a batch nobody submitted.
    llmq_result_t *results;
    size_t n;
    uint64_t next;
    llmq_batch_counts_t counts;
    ck_assert_int_eq (llmq_store_fetch (store, "b", 0, 100, &results, &n, &next, &more, &counts, s_arena), 0);
    ck_assert_uint_eq (n, 6);
    ck_assert (!more);
    ck_assert_uint_eq (results[1].state, LLMQ_STATE_FAILED);
    ck_assert_uint_eq (results[3].state, LLMQ_STATE_CANCELLED);
    ck_assert_int_eq (llmq_store_fetch (store, "nope", 0, 100, &results, &n, &next, &more, &counts, s_arena),
                      LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


//  --------------------------------------------------------------------------
//  Space

//  Submits 4 KiB jobs in turns of four until the store says it is full,
//  either refusing a submit or after a commit. Returns how many were
//  committed; their ids in ids[].
static size_t
s_fill (llmq_store_t *store, uint64_t *ids, size_t cap, bool *full)
{
    static char body[4096];
    memset (body, 'x', sizeof body - 1);
    body[0] = '{';
    s_spec_t spec = { .model = "gpt", .body = body };
    size_t committed = 0;
    *full = false;
    for (int turn = 0; turn < 1000 && !*full; turn++) {
        ck_assert_int_eq (llmq_store_begin (store), 0);
        size_t n = committed;
        for (int k = 0; k < 4 && !*full; k++) {
            llmq_job_t job = { .model = spec.model, .body = spec.body };
            bool dup;
            int rc = llmq_store_submit (store, &job, S_T0 + (uint64_t) n, &dup);
            if (rc == LLMQ_ERR_STORE_FULL) {
                *full = true;
            }
            else {
                ck_assert_msg (rc == 0, "submit gave %d", rc);
                ck_assert_uint_lt (n, cap);
                ids[n++] = job.id;
            }
        }
        if (*full) {
            llmq_store_abort (store);   //  the broker refuses the whole turn
            break;
        }
        ck_assert_int_eq (llmq_store_commit (store), 0);
        committed = n;
        *full = llmq_store_check_space (store);
    }
    return committed;
}

//  At its size limit the store refuses new jobs but still serves the ones
//  it holds: leases and results fit in the reserve.
START_TEST (test_full_store_serves_what_it_holds)
{
    llmq_store_opts_t opts = s_opts ();
    opts.map_size = opts.max_map_size = 1 * S_MIB;
    llmq_store_t *store = s_open (&opts, S_T0);
    uint64_t ids[1024];
    bool full;
    size_t n = s_fill (store, ids, 1024, &full);
    ck_assert (full);
    ck_assert_uint_gt (n, 8);
    uint64_t used, map_size, max_size;
    llmq_store_space (store, &used, &map_size, &max_size);
    ck_assert_uint_eq (map_size, 1 * S_MIB);
    ck_assert_uint_eq (max_size, 1 * S_MIB);

    //  Refused, without breaking the turn.
    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_job_t job = { .model = "gpt", .body = "{}" };
    bool dup;
    ck_assert_int_eq (llmq_store_submit (store, &job, S_T0 + S_SEC, &dup), LLMQ_ERR_STORE_FULL);
    ck_assert_uint_eq (s_head (store, "gpt"), ids[0]);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  Everything held is served, in order, four per turn, checking space
    //  between turns as the broker does (that is when freed pages count).
    uint64_t now = S_T0 + 2 * S_SEC;
    for (size_t i = 0; i < n; i++) {
        if (i % 4 == 0) {
            ck_assert_int_eq (llmq_store_begin (store), 0);
        }
        ck_assert_uint_eq (s_head (store, "gpt"), ids[i]);
        ck_assert_int_eq (s_complete (store, ids[i], s_lease (store, ids[i], now), now), 0);
        if (i % 4 == 3 || i == n - 1) {
            ck_assert_int_eq (llmq_store_commit (store), 0);
            llmq_store_check_space (store);
        }
    }
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (s_head (store, "gpt"), 0);
    ck_assert_int_eq (s_state (store, ids[n - 1]), LLMQ_STATE_DONE);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  The jobs' space is free again: submits are accepted.
    ck_assert (!llmq_store_check_space (store));
    ck_assert_int_eq (llmq_store_begin (store), 0);
    s_submit (store, "gpt", LLMQ_PRIO_URGENT, now);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  Below its limit the map grows as it fills, between turns, and nothing is
//  refused; the grown store opens again with a small configured start.
START_TEST (test_map_grows)
{
    llmq_store_opts_t opts = s_opts ();
    opts.map_size = 1 * S_MIB;
    opts.max_map_size = 64 * S_MIB;
    llmq_store_t *store = s_open (&opts, S_T0);
    static char body[4096];
    memset (body, 'y', sizeof body - 1);
    body[0] = '{';
    s_spec_t spec = { .model = "gpt", .body = body };
    int submitted = 0;
    for (int turn = 0; turn < 40; turn++) {
        ck_assert_int_eq (llmq_store_begin (store), 0);
        for (int k = 0; k < 10; k++) {
            s_submit_spec (store, &spec, S_T0 + (uint64_t) submitted++, NULL);
        }
        ck_assert_int_eq (llmq_store_commit (store), 0);
        ck_assert (!llmq_store_check_space (store));
    }
    uint64_t used, map_size, max_size;
    llmq_store_space (store, &used, &map_size, &max_size);
    ck_assert_uint_gt (used, 400 * 4096);
    ck_assert_uint_gt (map_size, 1 * S_MIB);
    ck_assert_uint_le (map_size, 64 * S_MIB);
    ck_assert_uint_lt (used, map_size);
    ck_assert_uint_eq (max_size, 64 * S_MIB);
    llmq_store_close (&store);

    store = s_open (&opts, S_T0 + S_SEC);
    llmq_store_space (store, &used, &map_size, &max_size);
    ck_assert_uint_gt (map_size, used);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (s_ready (store, "gpt"), (uint64_t) submitted);
    s_submit_spec (store, &spec, S_T0 + S_SEC, NULL);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


//  --------------------------------------------------------------------------
//  Dead letters

//  Fails `id` with a retryable error on every attempt, as the broker does
//  with a worker's FAILED, until the store dead-letters it. Returns the
//  time it ended.
static uint64_t
s_kill (llmq_store_t *store, uint64_t id, uint64_t now)
{
    llmq_result_t failure = { .error_class = LLMQ_EC_SERVER, .http_status = 503,
                              .error = "upstream 503: service unavailable", .deployment = "gpt-east" };
    llmq_result_t final;
    for (int attempt = 1; attempt <= 10; attempt++) {
        uint64_t lease = s_lease (store, id, now += S_SEC);
        int rc = llmq_store_requeue (store, id, lease, true, 0, &failure, now += S_SEC, &final, s_arena);
        if (rc == LLMQ_ERR_JOB_FAILED) {
            ck_assert_uint_eq (final.state, LLMQ_STATE_DEAD);
            return now;
        }
        ck_assert_int_eq (rc, 0);
    }
    ck_abort_msg ("job %llu was never dead-lettered", (unsigned long long) id);
    return now;
}

static llmq_batch_counts_t
s_counts (llmq_store_t *store, const char *batch)
{
    llmq_result_t *results;
    size_t n;
    uint64_t next;
    bool more;
    llmq_batch_counts_t counts;
    ck_assert_int_eq (llmq_store_fetch (store, batch, 0, 100, &results, &n, &next, &more, &counts, s_arena), 0);
    return counts;
}

//  Ids of every dead letter of `model` (NULL: all), page by page of 2.
static size_t
s_dead_ids (llmq_store_t *store, const char *model, uint64_t *ids, size_t cap)
{
    size_t count = 0;
    uint64_t after = 0;
    bool more = true;
    for (int pages = 0; more; pages++) {
        ck_assert_int_lt (pages, 100);
        llmq_dead_t *jobs;
        size_t n;
        uint64_t next;
        ck_assert_int_eq (llmq_store_dead_list (store, model, after, 2, &jobs, &n, &next, &more, s_arena), 0);
        ck_assert_uint_le (n, 2);
        for (size_t i = 0; i < n; i++) {
            ck_assert_uint_gt (jobs[i].job.id, after);
            ck_assert_uint_eq (jobs[i].result.state, LLMQ_STATE_DEAD);
            if (model) {
                ck_assert_str_eq (jobs[i].job.model, model);
            }
            ck_assert_uint_lt (count, cap);
            ids[count++] = jobs[i].job.id;
        }
        ck_assert_uint_ge (next, after);
        after = next;
    }
    return count;
}

//  Dead letters keep their job: listed (by model too), shown with body and
//  last error, kept across a restart, dropped with their result at the TTL.
START_TEST (test_dead_list_and_show)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"dead on arrival\"}]}";
    uint64_t ids[5];
    for (int i = 0; i < 5; i++) {
        s_spec_t spec = { .model = i % 2 ? "claude" : "gpt", .priority = LLMQ_PRIO_NORMAL, .body = body,
                          .batch_id = "b", .custom_id = i == 0 ? "first" : NULL };
        ids[i] = s_submit_spec (store, &spec, S_T0, NULL);
    }
    uint64_t alive = s_submit (store, "gpt", LLMQ_PRIO_NORMAL, S_T0);
    uint64_t now = S_T0;
    for (int i = 0; i < 5; i++) {
        now = s_kill (store, ids[i], now);
    }
    uint64_t died = now;
    ck_assert_int_eq (s_complete (store, alive, s_lease (store, alive, now), now), 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t seen[8];
    ck_assert_uint_eq (s_dead_ids (store, NULL, seen, 8), 5);
    for (int i = 0; i < 5; i++) {
        ck_assert_uint_eq (seen[i], ids[i]);
    }
    ck_assert_uint_eq (s_dead_ids (store, "gpt", seen, 8), 3);
    ck_assert_uint_eq (seen[0], ids[0]);
    ck_assert_uint_eq (seen[1], ids[2]);
    ck_assert_uint_eq (seen[2], ids[4]);
    ck_assert_uint_eq (s_dead_ids (store, "claude", seen, 8), 2);
    ck_assert_uint_eq (s_dead_ids (store, "never-seen", seen, 8), 0);

    llmq_dead_t d;
    ck_assert_int_eq (llmq_store_dead_get (store, ids[0], &d, s_arena), 0);
    ck_assert_uint_eq (d.job.id, ids[0]);
    ck_assert_str_eq (d.job.model, "gpt");
    ck_assert_str_eq (d.job.body, body);
    ck_assert_str_eq (d.job.batch_id, "b");
    ck_assert_str_eq (d.job.custom_id, "first");
    ck_assert_uint_eq (d.job.attempts, opts.max_attempts);
    ck_assert_uint_eq (d.result.attempts, opts.max_attempts);
    ck_assert_str_eq (d.result.error, "upstream 503: service unavailable");
    ck_assert_uint_eq (d.result.error_class, LLMQ_EC_SERVER);
    ck_assert_uint_eq (d.result.http_status, 503);
    ck_assert_uint_eq (d.expire_at_us, d.result.finished_us + S_TTL);
    //  Not dead letters: a job that ended done, one never known.
    ck_assert_int_eq (llmq_store_dead_get (store, alive, &d, s_arena), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_dead_get (store, 999999, &d, s_arena), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  They survive a restart.
    llmq_store_close (&store);
    store = s_open (&opts, died);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (s_dead_ids (store, NULL, seen, 8), 5);
    llmq_batch_counts_t counts = s_counts (store, "b");
    ck_assert_uint_eq (counts.total, 5);
    ck_assert_uint_eq (counts.dead, 5);

    //  And go with their results when those expire.
    llmq_store_tick (store, died + S_TTL + S_SEC, 1000, NULL, NULL, s_arena);
    ck_assert_uint_eq (s_dead_ids (store, NULL, seen, 8), 0);
    ck_assert_int_eq (llmq_store_dead_get (store, ids[4], &d, s_arena), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (s_state (store, ids[4]), -LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  Nothing left in `dead` behind them.
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    MDB_stat st;
    llmq_store_close (&store);
    ck_assert_int_eq (mdb_env_create (&env), 0);
    mdb_env_set_maxdbs (env, 32);
    ck_assert_int_eq (mdb_env_open (env, s_dir, MDB_RDONLY, 0640), 0);
    ck_assert_int_eq (mdb_txn_begin (env, NULL, MDB_RDONLY, &txn), 0);
    ck_assert_int_eq (mdb_dbi_open (txn, "dead", 0, &dbi), 0);
    ck_assert_int_eq (mdb_stat (txn, dbi, &st), 0);
    ck_assert_uint_eq (st.ms_entries, 0);
    mdb_txn_abort (txn);
    mdb_env_close (env);
}
END_TEST

//  A requeued dead letter is a fresh job under the same id and key: queued
//  from now, no attempts, its result gone; it leases and completes again.
START_TEST (test_dead_requeue)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    s_spec_t spec = { .model = "gpt", .priority = LLMQ_PRIO_HIGH, .idem_key = "order-1", .batch_id = "b",
                      .deadline_us = S_T0 + 30 * S_SEC };
    uint64_t id = s_submit_spec (store, &spec, S_T0, NULL);
    s_spec_t other = { .model = "gpt", .batch_id = "b" };
    uint64_t done = s_submit_spec (store, &other, S_T0, NULL);
    uint64_t died = s_kill (store, id, S_T0);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t now = died + 60 * S_SEC;   //  past its start deadline
    ck_assert_int_eq (s_complete (store, done, s_lease (store, done, now), now), 0);
    llmq_batch_counts_t counts = s_counts (store, "b");
    ck_assert_uint_eq (counts.total, 2);
    ck_assert_uint_eq (counts.dead, 1);
    ck_assert_uint_eq (counts.done, 1);
    ck_assert_uint_eq (s_ready (store, "gpt"), 0);
    //  Only dead letters: the done job and an unknown id are refused.
    ck_assert_int_eq (llmq_store_dead_requeue (store, done, now), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_dead_requeue (store, 424242, now), LLMQ_ERR_NOT_FOUND);

    ck_assert_int_eq (llmq_store_dead_requeue (store, id, now), 0);
    llmq_result_t status;
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (status.attempts, 0);
    ck_assert_ptr_null (status.error);
    ck_assert_uint_eq (status.enqueued_us, now);
    ck_assert_uint_eq (s_stats (store, "gpt").ready[LLMQ_PRIO_HIGH], 1);
    ck_assert_uint_eq (s_head (store, "gpt"), id);
    llmq_dead_t d;
    ck_assert_int_eq (llmq_store_dead_get (store, id, &d, s_arena), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (llmq_store_dead_requeue (store, id, now), LLMQ_ERR_NOT_FOUND);     //  once
    //  Its batch: one dead less, total the same, so one pending again; a
    //  fetch shows only what has ended.
    counts = s_counts (store, "b");
    ck_assert_uint_eq (counts.total, 2);
    ck_assert_uint_eq (counts.dead, 0);
    ck_assert_uint_eq (counts.done, 1);
    llmq_result_t *results;
    size_t n;
    uint64_t next;
    bool more;
    ck_assert_int_eq (llmq_store_fetch (store, "b", 0, 100, &results, &n, &next, &more, &counts, s_arena), 0);
    ck_assert_uint_eq (n, 1);
    ck_assert_uint_eq (results[0].id, done);
    //  The key still names it.
    bool dup = false;
    ck_assert_uint_eq (s_submit_spec (store, &spec, now, &dup), id);
    ck_assert (dup);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  The old expiry is gone with the old result: the timer at the old
    //  TTL does not touch the new run (nor its key).
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (llmq_store_tick (store, died + S_TTL + S_SEC, 1000, NULL, NULL, s_arena), 0);
    ck_assert_int_eq (s_state (store, id), LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (s_submit_spec (store, &spec, now + S_SEC, &dup), id);
    ck_assert (dup);
    //  It runs again, with all its attempts (the deadline it had is gone).
    uint64_t lease = s_lease (store, id, now + 2 * S_SEC);
    llmq_result_t failure = { .error_class = LLMQ_EC_SERVER, .error = "once more" }, final;
    ck_assert_int_eq (llmq_store_requeue (store, id, lease, true, 0, &failure, now + 3 * S_SEC, &final, s_arena), 0);
    ck_assert_int_eq (s_complete (store, id, s_lease (store, id, now + 4 * S_SEC), now + 5 * S_SEC), 0);
    ck_assert_int_eq (llmq_store_status (store, id, &status, s_arena), 0);
    ck_assert_uint_eq (status.state, LLMQ_STATE_DONE);
    ck_assert_uint_eq (status.attempts, 2);
    counts = s_counts (store, "b");
    ck_assert_uint_eq (counts.total, 2);
    ck_assert_uint_eq (counts.done, 2);
    ck_assert_uint_eq (counts.dead, 0);
    ck_assert_uint_eq (s_stats (store, "gpt").running, 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  A purge deletes a dead letter as the timer would: result, key, batch
//  membership and counts; by id, by model, or all.
START_TEST (test_dead_purge)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t ids[6];
    char keys[6][16];
    for (int i = 0; i < 6; i++) {
        snprintf (keys[i], sizeof keys[i], "key-%d", i);
        s_spec_t spec = { .model = i < 4 ? "gpt" : "claude", .idem_key = keys[i], .batch_id = "b" };
        ids[i] = s_submit_spec (store, &spec, S_T0, NULL);
    }
    uint64_t now = S_T0;
    for (int i = 0; i < 6; i++) {
        now = s_kill (store, ids[i], now);
    }
    ck_assert_int_eq (llmq_store_commit (store), 0);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_int_eq (llmq_store_dead_purge (store, ids[0]), 0);
    ck_assert_int_eq (llmq_store_dead_purge (store, ids[0]), LLMQ_ERR_NOT_FOUND);
    ck_assert_int_eq (s_state (store, ids[0]), -LLMQ_ERR_NOT_FOUND);
    llmq_batch_counts_t counts = s_counts (store, "b");
    ck_assert_uint_eq (counts.total, 5);
    ck_assert_uint_eq (counts.dead, 5);
    //  Its key is free: the same key is a new job.
    bool dup = true;
    s_spec_t again = { .model = "gpt", .idem_key = keys[0] };
    uint64_t fresh = s_submit_spec (store, &again, now, &dup);
    ck_assert (!dup);
    ck_assert_uint_ne (fresh, ids[0]);
    //  The others' keys still hold.
    s_spec_t kept = { .model = "gpt", .idem_key = keys[1] };
    ck_assert_uint_eq (s_submit_spec (store, &kept, now, &dup), ids[1]);
    ck_assert (dup);

    size_t n = 99;
    bool more = true;
    ck_assert_int_eq (llmq_store_dead_purge_all (store, "claude", 0, &n, &more), 0);
    ck_assert_uint_eq (n, 2);
    ck_assert (!more);
    ck_assert_int_eq (llmq_store_dead_purge_all (store, "no-such-model", 0, &n, &more), 0);
    ck_assert_uint_eq (n, 0);
    uint64_t seen[8];
    ck_assert_uint_eq (s_dead_ids (store, NULL, seen, 8), 3);
    //  A bound: two now, the last one after.
    ck_assert_int_eq (llmq_store_dead_purge_all (store, NULL, 2, &n, &more), 0);
    ck_assert_uint_eq (n, 2);
    ck_assert (more);
    ck_assert_int_eq (llmq_store_dead_purge_all (store, NULL, 2, &n, &more), 0);
    ck_assert_uint_eq (n, 1);
    ck_assert (!more);
    ck_assert_uint_eq (s_dead_ids (store, NULL, seen, 8), 0);
    //  The batch had only dead letters: it is gone with them.
    llmq_result_t *results;
    uint64_t next;
    size_t nr;
    ck_assert_int_eq (llmq_store_fetch (store, "b", 0, 100, &results, &nr, &next, &more, &counts, s_arena),
                      LLMQ_ERR_NOT_FOUND);
    for (int i = 1; i < 6; i++) {
        ck_assert_int_eq (s_state (store, ids[i]), -LLMQ_ERR_NOT_FOUND);
    }
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  The timer later finds nothing of them to drop, and the fresh job
    //  under the freed key is untouched.
    ck_assert_int_eq (llmq_store_begin (store), 0);
    llmq_store_tick (store, now + S_TTL + S_SEC, 1000, NULL, NULL, s_arena);
    ck_assert_int_eq (s_state (store, fresh), LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (s_submit_spec (store, &again, now, &dup), fresh);
    ck_assert (dup);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST

//  A thousand dead letters back in the queue in one transaction, by
//  model; then every one of them runs to the end.
START_TEST (test_dead_requeue_thousand)
{
    enum { N = 1000 };
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    static uint64_t ids[N];
    uint64_t now = S_T0;
    for (int turn = 0; turn < N / 100; turn++) {
        ck_assert_int_eq (llmq_store_begin (store), 0);
        for (int i = turn * 100; i < (turn + 1) * 100; i++) {
            s_spec_t spec = { .model = "gpt", .priority = i % LLMQ_NPRIO, .max_attempts = 1, .batch_id = "big" };
            ids[i] = s_submit_spec (store, &spec, now, NULL);
            now = s_kill (store, ids[i], now);
        }
        ck_assert_int_eq (llmq_store_commit (store), 0);
        llmq_store_check_space (store);     //  between turns, as the broker does
    }
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t other = s_submit (store, "claude", LLMQ_PRIO_URGENT, now);
    now = s_kill (store, other, now);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_check_space (store);

    ck_assert_int_eq (llmq_store_begin (store), 0);
    size_t n = 0;
    bool more = true;
    ck_assert_int_eq (llmq_store_dead_requeue_all (store, "gpt", now, 0, &n, &more), 0);
    ck_assert_uint_eq (n, N);
    ck_assert (!more);
    ck_assert_uint_eq (s_ready (store, "gpt"), N);
    for (int p = 0; p < LLMQ_NPRIO; p++) {
        ck_assert_uint_eq (s_stats (store, "gpt").ready[p], N / LLMQ_NPRIO);
    }
    ck_assert_int_eq (s_state (store, other), LLMQ_STATE_DEAD);      //  another model's
    llmq_batch_counts_t counts = s_counts (store, "big");
    ck_assert_uint_eq (counts.total, N);
    ck_assert_uint_eq (counts.dead, 0);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_check_space (store);

    //  Each leases and completes, in queue order (priority offsets apply
    //  from the requeue on, so urgent ones come first).
    ck_assert_int_eq (llmq_store_begin (store), 0);
    size_t completed = 0;
    uint64_t id;
    uint64_t prev_prio = 0;
    while ((id = s_head (store, "gpt")) != 0) {
        llmq_job_t job;
        llmq_result_t final;
        ck_assert_int_eq (llmq_store_lease (store, id, now, &job, &final, s_arena), 0);
        ck_assert_uint_ge (job.priority, prev_prio);
        prev_prio = job.priority;
        ck_assert_int_eq (s_complete (store, id, job.lease, now), 0);
        completed++;
        llmq_arena_reset (s_arena);
    }
    ck_assert_uint_eq (completed, N);
    counts = s_counts (store, "big");
    ck_assert_uint_eq (counts.done, N);
    uint64_t seen[4];
    ck_assert_uint_eq (s_dead_ids (store, NULL, seen, 4), 1);
    ck_assert_uint_eq (seen[0], other);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    llmq_store_close (&store);
}
END_TEST


/* ------------------------------------------------------------ tenants */

//  A job of tenant `user`/`org` (either NULL) on "gpt".
static uint64_t
s_submit_tenant (llmq_store_t *store, const char *user, const char *org, uint64_t now)
{
    llmq_job_t job = {
        .model = "gpt",
        .body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
        .priority = LLMQ_PRIO_NORMAL,
        .user = user,
        .org = org,
    };
    bool dup = false;
    ck_assert_int_eq (llmq_store_submit (store, &job, now, &dup), 0);
    return job.id;
}

//  Queued jobs of `tenant` per llmq_store_tenants (0 when not listed);
//  *count gets how many tenants have any.
static uint64_t
s_tenant (llmq_store_t *store, const char *tenant, size_t *count)
{
    llmq_depth_entry_t top[16];
    uint64_t rest = 0;
    size_t n = llmq_store_tenants (store, top, 16, count, &rest), found = 0;
    ck_assert_uint_eq (rest, 0);
    uint64_t queued = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_uint_gt (top[i].queued, 0);
        ck_assert_msg (i == 0 || top[i - 1].queued >= top[i].queued, "not deepest first at %zu", i);
        if (strcmp (top[i].tenant, tenant) == 0) {
            queued = top[i].queued;
            found++;
        }
    }
    ck_assert_uint_le (found, 1);
    return queued;
}

//  Queued jobs per tenant follow every way into and out of the queue, are
//  put back by an aborted turn or savepoint, and are the same after a
//  reopen (counted from the job records).
START_TEST (test_depth_per_tenant)
{
    llmq_store_opts_t opts = s_opts ();
    llmq_store_t *store = s_open (&opts, S_T0);
    uint64_t now = S_T0;
    size_t count = 0;
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t acme[3], bob[2];
    for (int i = 0; i < 3; i++) {
        acme[i] = s_submit_tenant (store, "ann", "acme", ++now);
    }
    for (int i = 0; i < 2; i++) {
        bob[i] = s_submit_tenant (store, "bob", NULL, ++now);
    }
    s_submit_tenant (store, NULL, NULL, ++now);
    ck_assert_int_eq (llmq_store_commit (store), 0);
    ck_assert_uint_eq (s_tenant (store, "org:acme", &count), 3);
    ck_assert_uint_eq (s_tenant (store, "user:bob", &count), 2);
    ck_assert_uint_eq (s_tenant (store, "-", &count), 1);
    ck_assert_uint_eq (count, 3);

    //  Leased: out; back after a failure with a backoff (delayed): in.
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t lease = s_lease (store, acme[0], now += S_SEC);
    ck_assert_uint_eq (s_tenant (store, "org:acme", &count), 2);
    llmq_result_t failure = { .error_class = LLMQ_EC_SERVER, .error = "upstream 503" }, final;
    ck_assert_int_eq (llmq_store_requeue (store, acme[0], lease, true, now + 60 * S_SEC, &failure, now, &final,
                                          s_arena), 0);
    ck_assert_uint_eq (s_tenant (store, "org:acme", &count), 3);
    //  Cancelled while queued: out.
    int was = 0;
    uint64_t its_lease = 0;
    ck_assert_int_eq (llmq_store_cancel (store, bob[0], now, &was, &its_lease, &final, s_arena), 0);
    ck_assert_uint_eq (s_tenant (store, "user:bob", &count), 1);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  A savepoint rolled back, then the whole turn aborted: as before.
    ck_assert_int_eq (llmq_store_begin (store), 0);
    s_submit_tenant (store, "zoe", "zed", ++now);
    ck_assert_int_eq (llmq_store_save (store), 0);
    s_submit_tenant (store, "zoe", "zed", ++now);
    s_lease (store, bob[1], now);
    ck_assert_uint_eq (s_tenant (store, "org:zed", &count), 2);
    ck_assert_uint_eq (s_tenant (store, "user:bob", &count), 0);
    llmq_store_rollback (store);
    ck_assert_uint_eq (s_tenant (store, "org:zed", &count), 1);
    ck_assert_uint_eq (s_tenant (store, "user:bob", &count), 1);
    llmq_store_abort (store);
    ck_assert_uint_eq (s_tenant (store, "org:zed", &count), 0);
    ck_assert_uint_eq (count, 3);

    //  Dead-lettered: out, and counted dead; requeued: in again.
    ck_assert_int_eq (llmq_store_begin (store), 0);
    ck_assert_uint_eq (llmq_store_dead_count (store), 0);
    now = s_kill (store, acme[1], now);
    ck_assert_uint_eq (s_tenant (store, "org:acme", &count), 2);
    ck_assert_uint_eq (llmq_store_dead_count (store), 1);
    ck_assert_int_eq (llmq_store_dead_requeue (store, acme[1], now), 0);
    ck_assert_uint_eq (s_tenant (store, "org:acme", &count), 3);
    ck_assert_uint_eq (llmq_store_dead_count (store), 0);
    //  A job run to the end: in at submit, out at its lease, nothing more
    //  when it completes.
    uint64_t anon = s_submit_tenant (store, NULL, NULL, ++now);
    ck_assert_uint_eq (s_tenant (store, "-", &count), 2);
    lease = s_lease (store, anon, ++now);
    ck_assert_int_eq (s_complete (store, anon, lease, ++now), 0);
    ck_assert_uint_eq (s_tenant (store, "-", &count), 1);
    ck_assert_int_eq (llmq_store_commit (store), 0);

    //  The deepest first, the others summed.
    llmq_depth_entry_t top[1];
    uint64_t rest = 0;
    ck_assert_uint_eq (llmq_store_tenants (store, top, 1, &count, &rest), 1);
    ck_assert_str_eq (top[0].tenant, "org:acme");
    ck_assert_uint_eq (top[0].queued, 3);
    ck_assert_uint_eq (count, 3);
    ck_assert_uint_eq (rest, 2);
    llmq_store_close (&store);

    //  Reopened: the same, from the job records.
    store = s_open (&opts, now + S_SEC);
    ck_assert_uint_eq (s_tenant (store, "org:acme", &count), 3);
    ck_assert_uint_eq (s_tenant (store, "user:bob", &count), 1);
    ck_assert_uint_eq (s_tenant (store, "-", &count), 1);
    ck_assert_uint_eq (count, 3);
    //  Everything leased: no tenant left.
    ck_assert_int_eq (llmq_store_begin (store), 0);
    uint64_t id = 0, vdl = 0;
    llmq_store_tick (store, now + 61 * S_SEC, 1000, NULL, NULL, s_arena);   //  the delayed one is due
    for (int i = 0; i < 10 && llmq_store_peek (store, s_route (store, "gpt"), &id, &vdl) == 0; i++) {
        s_lease (store, id, now + 62 * S_SEC);
    }
    ck_assert_int_eq (llmq_store_commit (store), 0);
    s_tenant (store, "-", &count);
    ck_assert_uint_eq (count, 0);
    llmq_store_close (&store);
}
END_TEST

static Suite *
s_store_suite (void)
{
    Suite *suite = suite_create ("store");

    TCase *order = tcase_create ("order");
    tcase_add_checked_fixture (order, s_setup, s_teardown);
    tcase_add_loop_test (order, test_aging_against_urgent, 0, 3);      //  high, normal, low
    tcase_add_test (order, test_fifo_within_a_priority);
    tcase_add_test (order, test_place_never_changes);
    suite_add_tcase (suite, order);

    TCase *durability = tcase_create ("durability");
    tcase_add_checked_fixture (durability, s_setup, s_teardown);
    tcase_add_test (durability, test_reopen_keeps_everything);
    tcase_add_test (durability, test_abort_leaves_no_trace);
    tcase_add_test (durability, test_refuses_unknown_format);
    tcase_add_test (durability, test_leases_end_at_restart);
    suite_add_tcase (suite, durability);

    TCase *lifecycle = tcase_create ("lifecycle");
    tcase_add_checked_fixture (lifecycle, s_setup, s_teardown);
    tcase_add_test (lifecycle, test_requeue_until_dead);
    tcase_add_test (lifecycle, test_backoff_delays_the_job);
    tcase_add_test (lifecycle, test_idempotency_key);
    tcase_add_test (lifecycle, test_complete_stores_the_result);
    tcase_add_test (lifecycle, test_cancel);
    tcase_add_test (lifecycle, test_tick_expires_at_deadline);
    tcase_add_test (lifecycle, test_lease_past_deadline);
    tcase_add_test (lifecycle, test_fetch_a_batch);
    tcase_add_test (lifecycle, test_depth_per_tenant);
    suite_add_tcase (suite, lifecycle);

    TCase *dead = tcase_create ("dead letters");
    tcase_add_checked_fixture (dead, s_setup, s_teardown);
    tcase_set_timeout (dead, 60);
    tcase_add_test (dead, test_dead_list_and_show);
    tcase_add_test (dead, test_dead_requeue);
    tcase_add_test (dead, test_dead_purge);
    tcase_add_test (dead, test_dead_requeue_thousand);
    suite_add_tcase (suite, dead);

    TCase *space = tcase_create ("space");
    tcase_add_checked_fixture (space, s_setup, s_teardown);
    tcase_set_timeout (space, 60);
    tcase_add_test (space, test_full_store_serves_what_it_holds);
    tcase_add_test (space, test_map_grows);
    suite_add_tcase (suite, space);
    return suite;
}

int
main (void)
{
    llmq_log_set_level (LLMQ_LOG_WARN);     //  the store's info lines are noise here
    SRunner *runner = srunner_create (s_store_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
