/*  test_restart.c -- streams that break: never text twice.

    A real broker, real workers and the mock provider on 127.0.0.1. A
    stream cut before any chunk reached a client is retried; one cut after
    ends failed with its partial text, unless the job was streamed with
    LLMQ_STREAM_RESTART: then the client gets a RESET and the whole answer
    again from seq 0. Cuts come from the mock (a queued drop_after fault)
    and from a worker killed mid-stream.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */
#define T_EC_STREAM_BROKEN 7    /* error class, docs/protocol.md */

#define S_PROMPT "[[mock:chunks=5]] one two three four five six"
#define S_ANSWER "mock reply: one two three four five six"

static char *
s_body (const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
}

static llmq_job
s_job (const char *body, int stream)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "gpt";
    j.body = body;
    j.stream = stream;
    return j;
}

/*  What the chunk callback saw. `text` is what the client holds now: a
    RESET empties it. */
typedef struct {
    char text[4096];
    unsigned chunks;            /* chunks since the last RESET */
    unsigned total;             /* chunks in all */
    unsigned resets;
    bool in_order;              /* seq 0, 1, 2 ... after each RESET */
    /*  Kill the worker running the job at its first chunk. */
    harness_t *h;
    int victim;                 /* worker index, -1: none */
    bool second_worker;         /* start another worker first */
} s_seen_t;

static int
s_on_chunk (void *arg, uint64_t id, unsigned seq, const char *text)
{
    (void) id;
    s_seen_t *s = arg;
    if (!text) {
        s->resets++;
        s->text[0] = '\0';
        s->chunks = 0;
        return 0;
    }
    if (seq != s->chunks) {
        s->in_order = false;
    }
    s->chunks++;
    s->total++;
    strncat (s->text, text, sizeof s->text - strlen (s->text) - 1);
    if (s->victim >= 0) {
        if (s->second_worker) {
            ck_assert_int_ge (h_start_worker (s->h, 4, 2), 0);
        }
        h_stop (&s->h->workers[s->victim], SIGKILL);
        s->victim = -1;
    }
    return 0;
}

static harness_t *
s_start (const char *extra)
{
    harness_t *h = h_new (extra ? extra
                                : "max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    ck_assert_ptr_nonnull (h);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    return h;
}

/*  The next request's stream is cut after two content pieces. */
static void
s_cut_next (harness_t *h)
{
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":\"drop_after\",\"after\":2,\"count\":1}"), 0);
}

START_TEST (test_restartable_stream_starts_over)
{
    harness_t *h = s_start (NULL);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    s_cut_next (h);
    char *body = s_body (S_PROMPT);
    llmq_job j = s_job (body, LLMQ_STREAM_RESTART);
    s_seen_t s = { .in_order = true, .victim = -1 };
    uint64_t id = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_uint_eq (r->attempts, 2);
    ck_assert_str_eq (r->content, S_ANSWER);
    /*  The first attempt's chunks reached us, then RESET, then the second
        attempt whole: what we hold is the answer once. */
    ck_assert_uint_eq (s.resets, 1);
    ck_assert (s.in_order);
    ck_assert_str_eq (s.text, S_ANSWER);
    ck_assert_uint_gt (s.total, s.chunks);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.restarted"), 1);
    ck_assert_int_eq (h_stat (c, "totals.retried"), 1);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_plain_stream_fails_with_partial_text)
{
    harness_t *h = s_start (NULL);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    s_cut_next (h);
    char *body = s_body (S_PROMPT);
    llmq_job j = s_job (body, 1);
    s_seen_t s = { .in_order = true, .victim = -1 };
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, NULL, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_STREAM_BROKEN);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_uint_eq (s.resets, 0);
    ck_assert (s.in_order);
    ck_assert_uint_ge (s.total, 1);
    ck_assert_str_eq (r->content, s.text);
    ck_assert_int_lt ((int) strlen (s.text), (int) strlen (S_ANSWER));
    ck_assert_int_eq (strncmp (S_ANSWER, s.text, strlen (s.text)), 0);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.restarted"), 0);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  Nobody listens to the chunks (submitted without notify, waited for
    only after the cut): no text reached a client, so the cut stream is
    retried like any failure, restart or not. */
START_TEST (test_unwatched_stream_is_retried)
{
    harness_t *h = s_start (NULL);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    s_cut_next (h);
    char *body = s_body (S_PROMPT);
    llmq_job j = s_job (body, 1);
    uint64_t ticket = 0;
    ck_assert_int_eq (llmq_send (c, &j, 1, 0, &ticket), LLMQ_OK);
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (c, T_WAIT, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_ACCEPTED);
    uint64_t id = ev->ids[0];
    llmq_event_free (&ev);
    ck_assert (h_wait_mock_stat (h, "requests", 2, T_WAIT));
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_uint_eq (r->attempts, 2);
    ck_assert_str_eq (r->content, S_ANSWER);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.restarted"), 0);
    ck_assert_int_eq (h_stat (c, "totals.retried"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

#define S_SLOW_PROMPT "[[mock:chunks=4,chunk_delay=300]] alpha beta gamma delta"
#define S_SLOW_ANSWER "mock reply: alpha beta gamma delta"
#define S_LIVENESS "heartbeat = 100ms\nliveness = 3\nmax_attempts = 3\n" \
                   "retry_backoff = 10ms\nretry_backoff_max = 20ms\n"

/*  The worker dies after the first chunk reached us; another worker takes
    the job over. */
START_TEST (test_worker_killed_mid_stream_restarts)
{
    harness_t *h = s_start (S_LIVENESS);
    int a = h_start_worker (h, 4, 1);
    ck_assert_int_ge (a, 0);
    llmq *c = h_client (h);
    char *body = s_body (S_SLOW_PROMPT);
    llmq_job j = s_job (body, LLMQ_STREAM_RESTART);
    s_seen_t s = { .in_order = true, .h = h, .victim = a, .second_worker = true };
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, NULL, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_uint_eq (r->attempts, 2);
    ck_assert_str_eq (r->content, S_SLOW_ANSWER);
    ck_assert_uint_eq (s.resets, 1);
    ck_assert (s.in_order);
    ck_assert_str_eq (s.text, S_SLOW_ANSWER);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.lost_workers"), 1);
    ck_assert_int_eq (h_stat (c, "totals.restarted"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_worker_killed_mid_plain_stream_fails)
{
    harness_t *h = s_start (S_LIVENESS);
    int a = h_start_worker (h, 4, 1);
    ck_assert_int_ge (a, 0);
    llmq *c = h_client (h);
    char *body = s_body (S_SLOW_PROMPT);
    llmq_job j = s_job (body, 1);
    s_seen_t s = { .in_order = true, .h = h, .victim = a, .second_worker = true };
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, NULL, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_STREAM_BROKEN);
    ck_assert_ptr_nonnull (strstr (r->error, "after chunks reached the client"));
    ck_assert_uint_eq (s.resets, 0);
    ck_assert_uint_ge (s.total, 1);
    ck_assert_int_eq (strncmp (S_SLOW_ANSWER, s.text, strlen (s.text)), 0);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.lost_workers"), 1);
    ck_assert_int_eq (h_stat (c, "totals.restarted"), 0);
    /*  Not run again: one request to the mock. */
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("restart");
    TCase *tc = tcase_create ("restart");
    tcase_set_timeout (tc, 60);
    tcase_add_test (tc, test_restartable_stream_starts_over);
    tcase_add_test (tc, test_plain_stream_fails_with_partial_text);
    tcase_add_test (tc, test_unwatched_stream_is_retried);
    tcase_add_test (tc, test_worker_killed_mid_stream_restarts);
    tcase_add_test (tc, test_worker_killed_mid_plain_stream_fails);
    suite_add_tcase (s, tc);
    return h_run_suite (s);
}
