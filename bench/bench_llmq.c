/*  bench_llmq.c -- llmq-bench's llmq mode: jobs through the broker with the
    pipelined client API.

    Each thread has one handle. It keeps at most `concurrency` jobs
    outstanding (sent, result not yet received): whenever slots are free it
    sends as many jobs as it may, up to --per-message of them in one
    llmq_send() with notify on, then takes events with llmq_next(). After
    one blocking llmq_next() it drains what else has arrived without
    waiting, so many results free many slots at once and the next sends
    are large messages, which is what lets the broker batch its commits.

    A job's latency runs from just before the llmq_send() that carried it
    to the llmq_next() that handed out its RESULT. The ids only arrive with
    the ACCEPTED event, so the send time is kept per ticket until then, and
    per id after. A RESULT that arrives before its ACCEPTED (the protocol
    does not promise the order) is parked in `early` until the ids come.
*/
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llmq.h>

//  Events taken without waiting before the loop sends again
#define S_DRAIN_MAX 4096
//  Longest single wait: the deadline is checked at least this often (ms)
#define S_WAIT_MAX_MS 100

typedef struct {
    llmq *handle;
    llmq_job *jobs;             //  per_message copies of the one job
    bench_map_t tickets;        //  ticket -> send time, jobs in the send
    bench_map_t ids;            //  job id -> send time, until its result
    bench_map_t early;          //  job id -> result time, ok flag (n)
    uint64_t outstanding;       //  jobs sent whose result has not come
} s_ctx_t;

static int
s_setup (bench_run_t *run)
{
    const bench_options_t *options = run->options;
    s_ctx_t *ctx = calloc (1, sizeof (s_ctx_t));
    if (!ctx) {
        snprintf (run->fatal, sizeof (run->fatal), "out of memory");
        return -1;
    }
    run->ctx = ctx;
    ctx->jobs = calloc (options->per_message, sizeof (llmq_job));
    if (!ctx->jobs
    ||  bench_map_init (&ctx->tickets, run->concurrency)
    ||  bench_map_init (&ctx->ids, run->concurrency)
    ||  bench_map_init (&ctx->early, 64)) {
        snprintf (run->fatal, sizeof (run->fatal), "out of memory");
        return -1;
    }
    for (unsigned i = 0; i < options->per_message; i++) {
        ctx->jobs [i].model = options->model;
        ctx->jobs [i].body = run->body;
        ctx->jobs [i].priority = LLMQ_PRIO_URGENT;
        ctx->jobs [i].stream = options->stream_chunks > 0;
        ctx->jobs [i].cache_ttl_ms = (int64_t) options->cache_ttl_ms;
    }
    int rc = llmq_connect (options->broker, options->timeout_ms, &ctx->handle);
    if (rc != LLMQ_OK) {
        snprintf (run->fatal, sizeof (run->fatal), "cannot connect to %s: %s",
                  options->broker, llmq_strerror (rc));
        return -1;
    }
    if (options->cache_ttl_ms) {
        /*  Warm-up, untimed: the answer the timed jobs will find cached. */
        uint64_t id;
        llmq_result *res = NULL;
        rc = llmq_submit (ctx->handle, &ctx->jobs [0], &id, options->timeout_ms);
        if (rc == LLMQ_OK) {
            rc = llmq_wait (ctx->handle, id, options->timeout_ms, &res);
        }
        if (rc != LLMQ_OK || res->state != LLMQ_STATE_DONE) {
            snprintf (run->fatal, sizeof (run->fatal), "cache warm-up job: %s",
                      rc != LLMQ_OK ? llmq_strerror (rc) : llmq_state_name (res->state));
            llmq_result_free (&res);
            return -1;
        }
        llmq_result_free (&res);
    }
    return 0;
}

static void
s_teardown (bench_run_t *run)
{
    s_ctx_t *ctx = (s_ctx_t *) run->ctx;
    if (!ctx) {
        return;
    }
    llmq_close (&ctx->handle);
    bench_map_fini (&ctx->tickets);
    bench_map_fini (&ctx->ids);
    bench_map_fini (&ctx->early);
    free (ctx->jobs);
    free (ctx);
    run->ctx = NULL;
}

//  Rejections that would refuse every later send too: stop the run
static bool
s_hopeless (int code)
{
    return code == LLMQ_ERR_INVALID || code == LLMQ_ERR_UNKNOWN_MODEL
        || code == LLMQ_ERR_TOO_LARGE || code == LLMQ_ERR_VERSION
        || code == LLMQ_ERR_PROTOCOL;
}

//  Handle one event; -1 when the run must stop (run->fatal says why)
static int
s_event (bench_run_t *run, s_ctx_t *ctx, const llmq_event *ev)
{
    int64_t now = bench_now_ns ();
    bench_slot_t slot;
    if (ev->type == LLMQ_EV_ACCEPTED) {
        if (!bench_map_take (&ctx->tickets, ev->ticket, &slot)) {
            return 0;           //  not ours: cannot happen on a private handle
        }
        for (size_t i = 0; i < ev->nids; i++) {
            bench_slot_t result;
            if (bench_map_take (&ctx->early, ev->ids [i], &result)) {
                bench_record (run, slot.t_ns, result.t_ns, result.n != 0);
                ctx->outstanding--;
            }
            else
            if (bench_map_put (&ctx->ids, ev->ids [i], slot.t_ns, 0)) {
                snprintf (run->fatal, sizeof (run->fatal), "out of memory");
                return -1;
            }
        }
    }
    else
    if (ev->type == LLMQ_EV_REJECTED) {
        if (!bench_map_take (&ctx->tickets, ev->ticket, &slot)) {
            return 0;
        }
        for (uint32_t i = 0; i < slot.n; i++) {
            bench_record (run, slot.t_ns, now, false);
        }
        ctx->outstanding -= slot.n;
        if (!run->note [0]) {
            snprintf (run->note, sizeof (run->note), "send refused: %s: %s",
                      llmq_strerror (ev->code), ev->reason ? ev->reason : "");
        }
        if (s_hopeless (ev->code)) {
            snprintf (run->fatal, sizeof (run->fatal), "%s", run->note);
            return -1;
        }
    }
    else
    if (ev->type == LLMQ_EV_RESULT && ev->result) {
        bool ok = ev->result->state == LLMQ_STATE_DONE;
        run->cached += ok && ev->result->cached;
        if (!ok && !run->note [0]) {
            snprintf (run->note, sizeof (run->note), "job %llu ended %s: %s",
                      (unsigned long long) ev->result->id,
                      llmq_state_name (ev->result->state),
                      ev->result->error ? ev->result->error : "");
        }
        if (bench_map_take (&ctx->ids, ev->result->id, &slot)) {
            bench_record (run, slot.t_ns, now, ok);
            ctx->outstanding--;
        }
        else
        if (bench_map_put (&ctx->early, ev->result->id, now, ok ? 1 : 0)) {
            snprintf (run->fatal, sizeof (run->fatal), "out of memory");
            return -1;
        }
    }
    return 0;
}

//  Send what the window and the schedule allow. Returns -1 on a fatal
//  error, else 0; sets *stalled when the socket queue was full.
static int
s_send (bench_run_t *run, s_ctx_t *ctx, bool *stalled)
{
    const bench_options_t *options = run->options;
    *stalled = false;
    uint64_t want = run->jobs - run->sent;
    uint64_t room = run->concurrency - ctx->outstanding;
    if (room < want) {
        want = room;
    }
    int64_t now = bench_now_ns ();
    if (run->rate > 0) {
        uint64_t due = bench_due (run->rate, run->start_ns, now);
        due = due > run->sent ? due - run->sent : 0;
        if (due < want) {
            want = due;
        }
    }
    while (want > 0) {
        size_t n = want < options->per_message ? (size_t) want : options->per_message;
        uint64_t ticket;
        now = bench_now_ns ();
        int rc = llmq_send (ctx->handle, ctx->jobs, n, 1, &ticket);
        if (rc == LLMQ_ERR_TIMEOUT) {
            run->stalls++;
            *stalled = true;
            return 0;
        }
        if (rc != LLMQ_OK) {
            snprintf (run->fatal, sizeof (run->fatal), "llmq_send: %s: %s",
                      llmq_strerror (rc), llmq_last_error (ctx->handle));
            return -1;
        }
        if (bench_map_put (&ctx->tickets, ticket, now, (uint32_t) n)) {
            snprintf (run->fatal, sizeof (run->fatal), "out of memory");
            return -1;
        }
        if (run->rate > 0) {
            bench_lag (run, now, n);
        }
        if (!run->first_send_ns) {
            run->first_send_ns = now;
        }
        run->sent += n;
        run->messages++;
        ctx->outstanding += n;
        want -= n;
    }
    return 0;
}

//  How long the next llmq_next() may wait, in ms
static int
s_wait_ms (const bench_run_t *run, const s_ctx_t *ctx, bool stalled)
{
    int64_t now = bench_now_ns ();
    int64_t until = run->deadline_ns;
    if (stalled) {
        until = now + 1000000;      //  retry the send in 1 ms
    }
    else
    if (run->rate > 0 && run->sent < run->jobs && ctx->outstanding < run->concurrency) {
        int64_t due = bench_due_time (run->rate, run->start_ns, run->sent);
        if (due < until) {
            until = due;
        }
    }
    if (until <= now) {
        return 0;
    }
    int64_t ms = (until - now + 999999) / 1000000;
    return ms > S_WAIT_MAX_MS ? S_WAIT_MAX_MS : (int) ms;
}

static void *
s_loop (void *arg)
{
    bench_run_t *run = (bench_run_t *) arg;
    s_ctx_t *ctx = (s_ctx_t *) run->ctx;
    while (run->ok + run->errors < run->jobs && bench_now_ns () < run->deadline_ns) {
        bool stalled;
        if (s_send (run, ctx, &stalled)) {
            break;
        }
        llmq_event *ev;
        int rc = llmq_next (ctx->handle, s_wait_ms (run, ctx, stalled), &ev);
        if (rc == LLMQ_ERR_TIMEOUT) {
            continue;
        }
        if (rc != LLMQ_OK) {
            snprintf (run->fatal, sizeof (run->fatal), "llmq_next: %s: %s",
                      llmq_strerror (rc), llmq_last_error (ctx->handle));
            break;
        }
        //  One event, then whatever else is already here
        int failed = 0;
        for (int drained = 0; ev && !failed; drained++) {
            failed = s_event (run, ctx, ev);
            llmq_event_free (&ev);
            if (drained < S_DRAIN_MAX && !failed
            &&  llmq_next (ctx->handle, 0, &ev) != LLMQ_OK) {
                ev = NULL;
            }
        }
        if (failed) {
            break;
        }
    }
    return NULL;
}

const bench_mode_ops_t bench_llmq_ops = {
    .name = "llmq",
    .global_init = NULL,
    .global_fini = NULL,
    .setup = s_setup,
    .loop = s_loop,
    .teardown = s_teardown
};
