/*  test_e2e.c -- llmq end to end: a real broker, real workers and the mock
    provider on 127.0.0.1, driven through the public client library.

    Each test starts what it needs in its own scratch directory and stops
    it by PID. Waits are on replies and handshakes, with timeouts.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */

static char *
s_body (const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
}

static llmq_job
s_job (const char *model, const char *body)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = model;
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    return j;
}

/*  Poll STATUS until the job reaches `state`. */
static bool
s_wait_state (llmq *c, uint64_t id, int state, int timeout_ms)
{
    for (int i = 0; i < timeout_ms / 5; i++) {
        llmq_result *r = NULL;
        if (llmq_status (c, id, 5000, &r) == LLMQ_OK && r->state == state) {
            llmq_result_free (&r);
            return true;
        }
        llmq_result_free (&r);
        h_backoff ();
    }
    return false;
}

START_TEST (test_submit_result_echo)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    char *body = s_body ("hello there");
    llmq_job j = s_job ("echo", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    ck_assert_uint_gt (id, 0);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "echo: hello there");
    ck_assert_uint_eq (r->prompt_tokens, 2);
    ck_assert_uint_eq (r->completion_tokens, 3);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_str_eq (r->deployment, "echo");
    ck_assert_uint_ge (r->finished_us, r->started_us);
    ck_assert_uint_ge (r->started_us, r->enqueued_us);
    llmq_result_free (&r);
    /* The result stays queryable by id. */
    ck_assert_int_eq (llmq_status (c, id, 5000, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_submit_result_openai_mock)
{
    setenv ("LLMQ_TEST_KEY", "sk-test-e2e-secret", 1);
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("what is a queue");
    llmq_job j = s_job ("gpt", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "mock reply: what is a queue");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_uint_eq (r->prompt_tokens, 4);
    ck_assert_uint_eq (r->completion_tokens, 6);
    ck_assert_int_eq (r->http_status, 200);
    ck_assert_ptr_nonnull (r->request_id);
    ck_assert_int_gt ((int) strlen (r->request_id), 0);
    ck_assert_uint_gt (r->latency_us, 0);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    ck_assert_int_eq (h_mock_stat (h, "with_auth"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

typedef struct {
    unsigned next_seq;
    bool in_order;
    char text[8192];
    size_t len;
    unsigned chunks;
} s_stream_t;

static int
s_on_chunk (void *arg, uint64_t id, unsigned seq, const char *text)
{
    s_stream_t *s = (s_stream_t *) arg;
    if (seq != s->next_seq) {
        s->in_order = false;
    }
    s->next_seq = seq + 1;
    s->chunks++;
    size_t n = strlen (text);
    if (s->len + n < sizeof s->text) {
        memcpy (s->text + s->len, text, n);
        s->len += n;
        s->text[s->len] = 0;
    }
    return 0;
}

START_TEST (test_stream_chunks_complete_in_order)
{
    harness_t *h = h_new (NULL);
    const char *margs[] = { "--chunk-delay-ms", "2", NULL };
    ck_assert_int_eq (h_start_mock (h, margs), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("[[mock:chunks=20]] stream me a rather long answer about durable queues and priorities please");
    llmq_job j = s_job ("gpt", body);
    j.stream = 1;
    s_stream_t s = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert (s.in_order);
    /* Pieces that reach the worker in one loop turn leave as one CHUNK:
       at most one per provider event, several with 2 ms between events. */
    ck_assert_uint_le (s.chunks, 20);
    ck_assert_uint_ge (s.chunks, 2);
    ck_assert_str_eq (s.text, r->content);
    ck_assert_str_eq (r->content, "mock reply: stream me a rather long answer about durable queues and priorities please");
    ck_assert_uint_gt (r->completion_tokens, 0);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A job with tools whose prompt asks the mock for a call ({{call:NAME}},
    see tests/mock/mock_chat.h). */
#define S_TOOLS_BODY(prefix) \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"" prefix "{{call:lookup}} durable queues\"}]," \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"lookup\"," \
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"}}}}}]," \
    "\"tool_choice\":\"auto\"}"

START_TEST (test_tool_calls_openai_mock)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    llmq_job j = s_job ("gpt", S_TOOLS_BODY (""));
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->finish_reason, "tool_calls");
    ck_assert_str_eq (r->content, "");
    ck_assert_ptr_nonnull (r->tool_calls);
    ck_assert_str_eq (r->tool_calls,
                      "[{\"id\":\"call_mock_1\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"lookup\",\"arguments\":\"{\\\"q\\\":\\\"durable queues\\\"}\"}}]");
    llmq_result_free (&r);

    /*  Streamed: the arguments arrive in delta.tool_calls pieces. */
    j = s_job ("gpt", S_TOOLS_BODY ("[[mock:chunks=6]] "));
    j.stream = 1;
    s_stream_t st = { 0, true, "", 0, 0 };
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &st, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->finish_reason, "tool_calls");
    ck_assert_str_eq (r->tool_calls,
                      "[{\"id\":\"call_mock_2\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"lookup\",\"arguments\":\"{\\\"q\\\":\\\"durable queues\\\"}\"}}]");
    ck_assert_uint_eq (st.chunks, 0);
    llmq_result_free (&r);

    /*  Without tools the marker is only text. */
    char *body = s_body ("{{call:lookup}} plain");
    j = s_job ("gpt", body);
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_str_eq (r->content, "mock reply: {{call:lookup}} plain");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_ptr_null (r->tool_calls);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_cancel_queued_job)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq *c = h_client (h);
    char *body = s_body ("never run me");
    llmq_job j = s_job ("echo", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    ck_assert_int_eq (h_stat (c, "queued"), 1);
    ck_assert_int_eq (llmq_cancel (c, id, 5000), LLMQ_OK);
    ck_assert_int_eq (h_stat (c, "queued"), 0);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, 5000, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_CANCELLED);
    llmq_result_free (&r);
    /* A second cancel is refused: the job is final. */
    ck_assert_int_eq (llmq_cancel (c, id, 5000), LLMQ_ERR_STATE);
    ck_assert_int_eq (llmq_cancel (c, 999999, 5000), LLMQ_ERR_NOT_FOUND);
    /* A worker that joins later never sees it. */
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    char *body2 = s_body ("run me");
    llmq_job j2 = s_job ("echo", body2);
    uint64_t id2 = 0;
    ck_assert_int_eq (llmq_submit (c, &j2, &id2, 5000), LLMQ_OK);
    ck_assert_int_eq (llmq_wait (c, id2, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.dispatched"), 1);
    free (body);
    free (body2);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_cancel_running_job)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    /* One slot: the next job can only run if the cancel freed it. */
    ck_assert_int_ge (h_start_worker (h, 1, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("[[mock:hang]] wait forever");
    llmq_job j = s_job ("gpt", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    ck_assert (s_wait_state (c, id, LLMQ_STATE_RUNNING, T_WAIT));
    ck_assert (h_wait_stat (c, "in_flight", 1, T_WAIT));
    /* The call has reached the provider and hangs there. */
    ck_assert (h_wait_mock_stat (h, "in_flight", 1, T_WAIT));
    ck_assert_int_eq (llmq_cancel (c, id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, 5000, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_CANCELLED);
    llmq_result_free (&r);
    char *body2 = s_body ("after the cancel");
    llmq_job j2 = s_job ("gpt", body2);
    uint64_t id2 = 0;
    ck_assert_int_eq (llmq_submit (c, &j2, &id2, 5000), LLMQ_OK);
    ck_assert_int_eq (llmq_wait (c, id2, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "mock reply: after the cancel");
    llmq_result_free (&r);
    /* The hung transfer was really aborted: the mock holds nothing now. */
    ck_assert (h_wait_mock_stat (h, "in_flight", 0, T_WAIT));
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    free (body);
    free (body2);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  kill -9 of the broker in the middle of a 5,000-job batch, then restart:
    every acknowledged job ends in the results exactly once. The client
    resubmits what was not acknowledged with the same idempotency keys, as
    a real client would. */
#define B_JOBS   5000
#define B_CHUNK  50
#define B_WINDOW 8

typedef struct {
    char *bodies[B_JOBS];
    char keys[B_JOBS][24];
    char cids[B_JOBS][24];
    uint64_t ids[B_JOBS];       /* 0 until acknowledged */
    uint64_t ticket_first[B_JOBS / B_CHUNK + 1];
} s_batch_t;

static void
s_batch_jobs (s_batch_t *b, size_t first, size_t n, llmq_job *out)
{
    for (size_t i = 0; i < n; i++) {
        size_t k = first + i;
        out[i] = s_job ("echo", b->bodies[k]);
        out[i].batch_id = "crashbatch";
        out[i].custom_id = b->cids[k];
        out[i].idempotency_key = b->keys[k];
        out[i].priority = (int) (k % 4);
    }
}

/*  Submit chunks [from, to) pipelined; stop early once `kill_after` jobs
    are acknowledged (0: never). Returns acknowledged count. */
static size_t
s_batch_submit (llmq *c, s_batch_t *b, size_t kill_after, h_proc_t *broker)
{
    size_t nchunks = B_JOBS / B_CHUNK, next = 0, inflight = 0, acked = 0;
    uint64_t tickets[B_JOBS / B_CHUNK];
    memset (tickets, 0, sizeof tickets);
    while (next < nchunks || inflight > 0) {
        while (next < nchunks && inflight < B_WINDOW) {
            bool todo = false;
            for (size_t i = 0; i < B_CHUNK; i++) {
                todo |= b->ids[next * B_CHUNK + i] == 0;
            }
            if (todo) {
                llmq_job jobs[B_CHUNK];
                s_batch_jobs (b, next * B_CHUNK, B_CHUNK, jobs);
                if (llmq_send (c, jobs, B_CHUNK, 0, &tickets[next]) != LLMQ_OK) {
                    return acked;
                }
                inflight++;
            }
            next++;
        }
        llmq_event *ev = NULL;
        if (llmq_next (c, 10000, &ev) != LLMQ_OK) {
            return acked;       /* the broker is gone */
        }
        if (ev->type == LLMQ_EV_ACCEPTED || ev->type == LLMQ_EV_REJECTED) {
            for (size_t k = 0; k < nchunks; k++) {
                if (tickets[k] == ev->ticket) {
                    for (size_t i = 0; ev->type == LLMQ_EV_ACCEPTED && i < ev->nids; i++) {
                        b->ids[k * B_CHUNK + i] = ev->ids[i];
                    }
                    acked += ev->type == LLMQ_EV_ACCEPTED ? ev->nids : 0;
                }
            }
            inflight--;
        }
        llmq_event_free (&ev);
        if (kill_after && acked >= kill_after && broker->pid) {
            h_stop (broker, SIGKILL);
            return acked;
        }
    }
    return acked;
}

START_TEST (test_broker_kill9_mid_batch_loses_nothing)
{
    harness_t *h = h_new ("heartbeat = 200ms\n");
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 64, 1), 0);
    ck_assert_int_ge (h_start_worker (h, 64, 2), 0);
    s_batch_t *b = (s_batch_t *) calloc (1, sizeof *b);
    for (size_t i = 0; i < B_JOBS; i++) {
        char prompt[64];
        snprintf (prompt, sizeof prompt, "job number %zu", i);
        b->bodies[i] = s_body (prompt);
        snprintf (b->keys[i], sizeof b->keys[i], "key-%zu", i);
        snprintf (b->cids[i], sizeof b->cids[i], "c%zu", i);
    }
    llmq *c = h_client (h);
    size_t acked = s_batch_submit (c, b, 1500, &h->broker);
    llmq_close (&c);
    ck_assert_uint_ge (acked, 1500);
    ck_assert_int_eq (h->broker.pid, 0);          /* killed mid-batch */
    uint64_t acked_ids[B_JOBS];
    memcpy (acked_ids, b->ids, sizeof acked_ids);

    /* Restart on the same data; the workers find it by themselves. */
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    c = h_client (h);
    ck_assert (h_wait_stat (c, "worker_count", 2, T_WAIT));
    s_batch_submit (c, b, 0, &h->broker);
    for (size_t i = 0; i < B_JOBS; i++) {
        ck_assert_msg (b->ids[i] != 0, "job %zu never acknowledged", i);
        if (acked_ids[i]) {
            ck_assert_uint_eq (b->ids[i], acked_ids[i]);    /* same job, by its key */
        }
    }
    /* Wait for the batch to finish: FETCH counts. */
    bool finished = false;
    for (int round = 0; round < 4000 && !finished; round++) {
        llmq_result **res = NULL;
        size_t n = 0;
        uint64_t next = 0;
        int more = 0;
        char *counts = NULL;
        ck_assert_int_eq (llmq_fetch (c, "crashbatch", 0, 1, &res, &n, &next, &more, &counts, 5000), LLMQ_OK);
        json_t *cj = json_loads (counts, 0, NULL);
        finished = json_integer_value (json_object_get (cj, "pending")) == 0
                && json_integer_value (json_object_get (cj, "total")) == B_JOBS;
        json_decref (cj);
        llmq_free (counts);
        llmq_results_free (res, n);
        if (!finished) {
            h_backoff ();
        }
    }
    ck_assert_msg (finished, "batch did not finish");
    /* Page through every result: each job exactly once, all done. */
    uint8_t *seen = (uint8_t *) calloc (B_JOBS, 1);
    size_t total = 0;
    uint64_t after = 0;
    int more = 1;
    while (more) {
        llmq_result **res = NULL;
        size_t n = 0;
        uint64_t next = 0;
        ck_assert_int_eq (llmq_fetch (c, "crashbatch", after, 700, &res, &n, &next, &more, NULL, 5000), LLMQ_OK);
        for (size_t i = 0; i < n; i++) {
            ck_assert_int_eq (res[i]->state, LLMQ_STATE_DONE);
            size_t k = (size_t) atol (res[i]->custom_id + 1);
            ck_assert_uint_lt (k, B_JOBS);
            ck_assert_msg (!seen[k], "custom id %s has two results", res[i]->custom_id);
            seen[k] = 1;
            ck_assert_uint_eq (res[i]->id, b->ids[k]);
            char expect[64];
            snprintf (expect, sizeof expect, "echo: job number %zu", k);
            ck_assert_str_eq (res[i]->content, expect);
            total++;
        }
        llmq_results_free (res, n);
        after = next;
    }
    ck_assert_uint_eq (total, B_JOBS);
    free (seen);
    for (size_t i = 0; i < B_JOBS; i++) {
        free (b->bodies[i]);
    }
    free (b);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_worker_kill9_mid_job_completes_elsewhere)
{
    harness_t *h = h_new ("heartbeat = 200ms\nliveness = 3\n");
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    int a = h_start_worker (h, 4, 1);
    ck_assert_int_ge (a, 0);
    llmq *c = h_client (h);
    char *body = s_body ("[[mock:latency=1500]] slow one");
    llmq_job j = s_job ("gpt", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    ck_assert (s_wait_state (c, id, LLMQ_STATE_RUNNING, T_WAIT));
    /* Only now a second worker: the job is certainly on the first. */
    ck_assert_int_ge (h_start_worker (h, 4, 2), 0);
    h_stop (&h->workers[a], SIGKILL);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "mock reply: slow one");
    ck_assert_uint_eq (r->attempts, 2);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.lost_workers"), 1);
    ck_assert_int_eq (h_stat (c, "worker_count"), 1);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_idempotent_submit_runs_once)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("only once");
    llmq_job j = s_job ("gpt", body);
    j.idempotency_key = "order-42";
    uint64_t id1 = 0, id2 = 0, id3 = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id1, 5000), LLMQ_OK);
    ck_assert_int_eq (llmq_submit (c, &j, &id2, 5000), LLMQ_OK);
    ck_assert_uint_eq (id1, id2);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id1, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    /* After it finished, the key still names the same job, not a new run. */
    ck_assert_int_eq (llmq_submit (c, &j, &id3, 5000), LLMQ_OK);
    ck_assert_uint_eq (id3, id1);
    ck_assert_int_eq (llmq_wait (c, id3, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    ck_assert_int_eq (h_stat (c, "totals.submitted"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_deadline_expires_queued_job)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq *c = h_client (h);
    char *body = s_body ("too late");
    llmq_job j = s_job ("echo", body);
    j.deadline_ms = 300;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_EXPIRED);
    ck_assert_uint_ge (r->finished_us, r->enqueued_us + 300000);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_max_attempts_then_dead_letter)
{
    harness_t *h = h_new ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("[[mock:fail=500]] always broken");
    llmq_job j = s_job ("gpt", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DEAD);
    ck_assert_uint_eq (r->attempts, 3);
    ck_assert_int_eq (r->http_status, 500);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 3);
    /* A request error is not retried at all. */
    char *body2 = s_body ("[[mock:fail=400]] bad request");
    llmq_job j2 = s_job ("gpt", body2);
    ck_assert_int_eq (llmq_submit (c, &j2, &id, 5000), LLMQ_OK);
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->http_status, 400);
    ck_assert_uint_eq (r->attempts, 1);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 4);
    free (body);
    free (body2);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_sigterm_commits_and_exits_zero)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq *c = h_client (h);
    char *body = s_body ("kept across a clean stop");
    llmq_job j = s_job ("echo", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_close (&c);
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    c = h_client (h);
    ck_assert_int_eq (h_stat (c, "queued"), 1);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST


/*  More model groups than the dispatcher's small table: every group's
    jobs still go out. */
START_TEST (test_many_groups_all_served)
{
    harness_t *h = h_new (NULL);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    for (int g = 0; g < 70; g++) {
        fprintf (f, "\n[group g%d]\ndeployments = echo\n", g);
    }
    ck_assert_int_eq (fclose (f), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 8, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("hello");
    uint64_t ids[70];
    for (int g = 0; g < 70; g++) {
        char name[16];
        snprintf (name, sizeof name, "g%d", g);
        llmq_job j = s_job (name, body);
        ck_assert_int_eq (llmq_submit (c, &j, &ids[g], 5000), LLMQ_OK);
    }
    for (int g = 0; g < 70; g++) {
        llmq_result *r = NULL;
        ck_assert_int_eq (llmq_wait (c, ids[g], T_WAIT, &r), LLMQ_OK);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        llmq_result_free (&r);
    }
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A broker at its store size limit refuses new submits with a clear error
    and keeps serving every job it holds. */
START_TEST (test_full_store_refuses_submits_serves_the_rest)
{
    harness_t *h = h_new ("map_size = 1MiB\nmax_map_size = 1MiB\n");
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq *c = h_client (h);
    char prompt[4096];
    memset (prompt, 'x', sizeof prompt - 1);
    prompt[sizeof prompt - 1] = 0;
    char *body = s_body (prompt);
    llmq_job jobs[20];
    for (int i = 0; i < 20; i++) {
        jobs[i] = s_job ("echo", body);
    }
    uint64_t ids[2000];
    size_t stored = 0;
    int rc = LLMQ_OK;
    while (stored + 20 <= 2000 && (rc = llmq_submit_many (c, jobs, 20, ids + stored, 5000)) == LLMQ_OK) {
        stored += 20;
    }
    ck_assert_int_eq (rc, LLMQ_ERR_STORE_FULL);
    ck_assert_ptr_nonnull (strstr (llmq_last_error (c), "full"));
    ck_assert_ptr_nonnull (strstr (llmq_last_error (c), "(retry after 5000 ms)"));
    ck_assert_uint_gt (stored, 0);
    ck_assert_int_eq (h_stat (c, "queued"), (long) stored);
    /* Everything held is still served. */
    ck_assert_int_ge (h_start_worker (h, 16, 1), 0);
    for (size_t i = 0; i < stored; i++) {
        llmq_result *r = NULL;
        ck_assert_int_eq (llmq_wait (c, ids[i], T_WAIT, &r), LLMQ_OK);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        llmq_result_free (&r);
    }
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  An Azure OpenAI deployment: the worker calls the deployment URL with
    api-version and an api-key header; the mock serves Azure's path. */
START_TEST (test_azure_deployment)
{
    harness_t *h = h_new (NULL);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "\n[deployment az]\nprovider = azure\n"
                "base_url = http://127.0.0.1:%d/openai/deployments/gpt4o\n"
                "api_key_env = LLMQ_TEST_KEY\napi_version = 2024-10-21\n"
                "\n[group azure-gpt]\ndeployments = az\n", h->mock_port);
    fclose (f);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("hello azure");
    llmq_job j = s_job ("azure-gpt", body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "mock reply: hello azure");
    ck_assert_str_eq (r->deployment, "az");
    ck_assert_uint_eq (r->prompt_tokens, 2);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("e2e");
    TCase *tc = tcase_create ("e2e");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_submit_result_echo);
    tcase_add_test (tc, test_submit_result_openai_mock);
    tcase_add_test (tc, test_azure_deployment);
    tcase_add_test (tc, test_stream_chunks_complete_in_order);
    tcase_add_test (tc, test_tool_calls_openai_mock);
    tcase_add_test (tc, test_cancel_queued_job);
    tcase_add_test (tc, test_cancel_running_job);
    tcase_add_test (tc, test_idempotent_submit_runs_once);
    tcase_add_test (tc, test_deadline_expires_queued_job);
    tcase_add_test (tc, test_max_attempts_then_dead_letter);
    tcase_add_test (tc, test_sigterm_commits_and_exits_zero);
    tcase_add_test (tc, test_full_store_refuses_submits_serves_the_rest);
    tcase_add_test (tc, test_many_groups_all_served);
    tcase_add_test (tc, test_worker_kill9_mid_job_completes_elsewhere);
    tcase_add_test (tc, test_broker_kill9_mid_batch_loses_nothing);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
