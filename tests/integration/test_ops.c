/*  test_ops.c -- `llmq admin VERB`, the operator's view of a running
    broker, end to end: the real `llmq` binary (what an operator types and
    sees, the exit status) against a real broker, a worker and the mock
    provider, plus the admin ops behind it through llmq_admin().

    An "active stream" is a job streamed to this test's handle whose mock
    reply comes in slow pieces; it is listed once its first chunk reached
    the handle, then cancelled. Waits are on events, results and the
    mock's counters, with deadlines; nothing sleeps.
*/
#include "harness.h"

#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define T_WAIT   20000          /* ms: generous, these are not timing tests */
/*  Slow enough (20 pieces, 300 ms apart) to be listed and cancelled. */
#define T_SLOW   "[[mock:chunks=20,chunk_delay=300]] one two three four five six seven eight"

/* ------------------------------------------------------------ the CLI */

/*  Run `llmq ARGS...` against the harness's broker and check its exit
    status, saying what came out if it differs. */
static h_cli_t
s_expect (harness_t *h, int status, const char *const *args)
{
    h_cli_t r = h_cli (h, args);
    ck_assert_msg (r.status == status, "llmq %s %s: exit %d, expected %d\nstdout: %s\nstderr: %s",
                   args[0], args[1] ? args[1] : "", r.status, status, r.out, r.err);
    return r;
}

/*  Run and parse its stdout as a JSON object. */
static json_t *
s_expect_json (harness_t *h, const char *const *args)
{
    h_cli_t r = s_expect (h, 0, args);
    json_t *doc = json_loads (r.out, 0, NULL);
    ck_assert_msg (json_is_object (doc), "llmq %s %s: not a JSON object: %s", args[0], args[1], r.out);
    h_cli_free (&r);
    return doc;
}

static harness_t *
s_up (void)
{
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

/*  Stream a slow job from `c` (notify on) and return its id once its first
    chunk has arrived: from then on the broker has forwarded one. */
static uint64_t
s_start_stream (llmq *c)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", T_SLOW);
    char *body = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "gpt";
    j.body = body;
    j.stream = 1;
    uint64_t ticket = 0, id = 0;
    ck_assert_int_eq (llmq_send (c, &j, 1, 1, &ticket), LLMQ_OK);
    free (body);
    bool chunk = false;
    while (!chunk) {
        llmq_event *ev = NULL;
        ck_assert_int_eq (llmq_next (c, T_WAIT, &ev), LLMQ_OK);
        if (ev->type == LLMQ_EV_ACCEPTED && ev->ticket == ticket) {
            ck_assert_uint_eq (ev->nids, 1);
            id = ev->ids[0];
        }
        ck_assert_msg (ev->type != LLMQ_EV_REJECTED && ev->type != LLMQ_EV_RESULT,
                       "the stream ended before its first chunk (event %d)", ev->type);
        chunk = ev->type == LLMQ_EV_CHUNK && id && ev->id == id;
        llmq_event_free (&ev);
    }
    return id;
}

/* --------------------------------------------------------------- tests */

START_TEST (test_help)
{
    harness_t *h = h_new (NULL);
    const char *cmds[][4] = {
        { "admin", "--help", NULL }, { "admin", "breakers", "--help", NULL },
        { "admin", "breaker-reset", "--help", NULL }, { "admin", "workers", "--help", NULL },
        { "admin", "queue", "--help", NULL }, { "admin", "streams", "--help", NULL },
        { "admin", "stream-cancel", "--help", NULL }, { "admin", "quota", "--help", NULL },
        { "admin", "quota-reset", "--help", NULL }, { "admin", "budget", "--help", NULL },
        { "admin", "history", "--help", NULL }, { "admin", "dead", "--help", NULL },
        { "admin", "limits", "--help", NULL },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        h_cli_t r = s_expect (h, 0, cmds[i]);
        ck_assert_msg (strstr (r.out, "Usage"), "no usage text for llmq admin %s", cmds[i][1]);
        h_cli_free (&r);
    }
    /* The top help names every verb. */
    h_cli_t r = s_expect (h, 0, (const char *[]) { "admin", "--help", NULL });
    const char *verbs[] = { "breakers", "breaker-reset", "workers", "queue", "streams", "stream-cancel",
                            "quota", "quota-reset", "budget", "history", "dead", "limits" };
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++) {
        ck_assert_msg (strstr (r.out, verbs[i]), "llmq admin --help lacks '%s'", verbs[i]);
    }
    h_cli_free (&r);
    /* Usage errors, found before any broker is needed (none runs): 2. */
    const char *bad[][6] = {
        { "admin", NULL }, { "admin", "frob", NULL }, { "admin", "stream-cancel", NULL },
        { "admin", "stream-cancel", "x1", NULL }, { "admin", "queue", "extra", NULL },
        { "admin", "budget", NULL }, { "admin", "budget", "u", "--org", "o", NULL },
        { "admin", "workers", "--org", "o", NULL }, { "admin", "limits", "a", "b", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r = s_expect (h, 2, bad[i]);
        ck_assert_int_gt ((int) strlen (r.err), 0);
        h_cli_free (&r);
    }
    /* A verb that needs the broker, with none there: 3. */
    r = s_expect (h, 3, (const char *[]) { "--timeout", "300ms", "admin", "queue", NULL });
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

START_TEST (test_views)
{
    harness_t *h = s_up ();
    json_t *doc = s_expect_json (h, (const char *[]) { "admin", "queue", "--json", NULL });
    const json_t *bp = json_object_get (doc, "queued_by_priority");
    const char *prio[] = { "urgent", "high", "normal", "low" };
    for (size_t i = 0; i < 4; i++) {
        ck_assert_msg (json_is_integer (json_object_get (bp, prio[i])), "queued_by_priority lacks %s", prio[i]);
    }
    ck_assert (json_is_integer (json_object_get (doc, "queued")));
    ck_assert (json_is_integer (json_object_get (doc, "delayed")));
    ck_assert (json_is_integer (json_object_get (doc, "in_flight")));
    ck_assert (json_is_object (json_object_get (doc, "routes")));   /* a route shows once it had jobs */
    json_decref (doc);

    /*  The worker's own slot count arrives with its first HEARTBEAT. */
    llmq *c = h_client (h);
    ck_assert (h_wait_stat (c, "workers.0.slots", 4, T_WAIT));
    llmq_close (&c);
    doc = s_expect_json (h, (const char *[]) { "admin", "workers", "--json", NULL });
    ck_assert_int_eq (json_array_size (json_object_get (doc, "workers")), 1);
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "worker_count")), 1);
    ck_assert_int_eq (json_integer_value (json_object_get (json_array_get (json_object_get (doc, "workers"), 0),
                                                          "slots")), 4);
    json_decref (doc);
    h_cli_t wr = s_expect (h, 0, (const char *[]) { "admin", "workers", NULL });
    ck_assert_ptr_nonnull (strstr (wr.out, "SLOTS"));
    h_cli_free (&wr);

    doc = s_expect_json (h, (const char *[]) { "admin", "breakers", "--json", NULL });
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (json_object_get (doc, "deployments"),
                                                                           "mock"), "breaker")), "closed");
    json_decref (doc);

    doc = s_expect_json (h, (const char *[]) { "admin", "budget", "alice", "--json", NULL });
    ck_assert_str_eq (json_string_value (json_object_get (doc, "user")), "alice");
    ck_assert (json_is_object (json_object_get (doc, "budget_micro")));
    json_decref (doc);
    doc = s_expect_json (h, (const char *[]) { "admin", "budget", "--org", "acme", "--json", NULL });
    ck_assert_str_eq (json_string_value (json_object_get (doc, "org")), "acme");
    json_decref (doc);

    /* The tables, and the verbs handed to the older commands. */
    const char *ok[][5] = {
        { "admin", "queue", NULL }, { "admin", "workers", NULL }, { "admin", "breakers", NULL },
        { "admin", "streams", NULL }, { "admin", "budget", "alice", NULL }, { "admin", "quota", "alice", NULL },
        { "admin", "quota-reset", "alice", NULL }, { "admin", "history", NULL }, { "admin", "dead", NULL },
        { "admin", "breaker-reset", "mock", NULL },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        h_cli_t r = s_expect (h, 0, ok[i]);
        h_cli_free (&r);
    }
    h_cli_t r = s_expect (h, 0, (const char *[]) { "admin", "queue", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "queued 0 (urgent 0, high 0, normal 0, low 0)"));
    h_cli_free (&r);
    /* Not an active stream: refused, 1. */
    r = s_expect (h, 1, (const char *[]) { "admin", "stream-cancel", "424242", NULL });
    ck_assert_ptr_nonnull (strstr (r.err, "no running stream 424242"));
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

/*  Submit a job of `user`/`org` (either NULL) to `model`. */
static uint64_t
s_submit (llmq *c, const char *model, const char *user, const char *org, const char *text, unsigned attempts)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", text);
    char *body = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = model;
    j.body = body;
    j.user = user;
    j.org = org;
    j.max_attempts = attempts;
    j.priority = LLMQ_PRIO_NORMAL;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, T_WAIT), LLMQ_OK);
    free (body);
    return id;
}

/*  The queue view: depths per tenant while no worker runs, then the dead
    letter and an empty queue once one has; one deployment's breaker and
    the limits view. */
START_TEST (test_queue_view)
{
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq *c = h_client (h);
    uint64_t ids[6];
    for (int i = 0; i < 3; i++) {
        ids[i] = s_submit (c, "gpt", "ann", "acme", "hello", 0);
    }
    for (int i = 3; i < 5; i++) {
        ids[i] = s_submit (c, "echo", "bob", NULL, "hello", 0);
    }
    ids[5] = s_submit (c, "gpt", NULL, NULL, "[[mock:fail=500]] doomed", 1);

    json_t *doc = s_expect_json (h, (const char *[]) { "admin", "queue", "--json", NULL });
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "queued")), 6);
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "tenant_count")), 3);
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "tenants_other_queued")), 0);
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "dead")), 0);
    const json_t *tenants = json_object_get (doc, "tenants");
    const char *want[] = { "org:acme", "user:bob", "-" };
    const json_int_t depth[] = { 3, 2, 1 };
    ck_assert_int_eq (json_array_size (tenants), 3);
    for (size_t i = 0; i < 3; i++) {
        const json_t *t = json_array_get (tenants, i);
        ck_assert_str_eq (json_string_value (json_object_get (t, "tenant")), want[i]);
        ck_assert_int_eq (json_integer_value (json_object_get (t, "queued")), depth[i]);
    }
    const json_t *gpt = json_object_get (json_object_get (doc, "routes"), "gpt");
    ck_assert_int_eq (json_integer_value (json_object_get (gpt, "normal")), 4);
    ck_assert (json_is_real (json_object_get (gpt, "oldest_age_s")));
    ck_assert (json_real_value (json_object_get (gpt, "oldest_age_s")) >= 0.0);
    json_decref (doc);
    h_cli_t r = s_expect (h, 0, (const char *[]) { "admin", "queue", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "TENANT"));
    ck_assert_ptr_nonnull (strstr (r.out, "org:acme"));
    ck_assert_ptr_nonnull (strstr (r.out, "OLDEST"));
    h_cli_free (&r);

    /*  One deployment; an unknown one is refused (1). */
    doc = s_expect_json (h, (const char *[]) { "admin", "breakers", "mock", "--json", NULL });
    ck_assert_int_eq (json_object_size (json_object_get (doc, "deployments")), 1);
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (json_object_get (doc, "deployments"),
                                                                           "mock"), "breaker")), "closed");
    json_decref (doc);
    r = s_expect (h, 1, (const char *[]) { "admin", "breakers", "nosuch", NULL });
    ck_assert_ptr_nonnull (strstr (r.err, "no deployment 'nosuch'"));
    h_cli_free (&r);
    doc = s_expect_json (h, (const char *[]) { "admin", "limits", "--json", NULL });
    const json_t *lim = json_object_get (json_object_get (doc, "deployments"), "mock");
    ck_assert_int_eq (json_integer_value (json_object_get (lim, "rate_window_ms")), 60000);
    ck_assert_int_eq (json_integer_value (json_object_get (lim, "in_flight")), 0);
    ck_assert (json_is_false (json_object_get (lim, "full")));
    json_decref (doc);
    r = s_expect (h, 0, (const char *[]) { "admin", "limits", "mock", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "mock"));
    ck_assert_ptr_null (strstr (r.out, "echo"));
    h_cli_free (&r);
    r = s_expect (h, 1, (const char *[]) { "admin", "limits", "nosuch", NULL });
    h_cli_free (&r);

    /*  A worker runs them all: the doomed one is a dead letter. */
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    for (int i = 0; i < 6; i++) {
        llmq_result *res = NULL;
        ck_assert_int_eq (llmq_wait (c, ids[i], T_WAIT, &res), LLMQ_OK);
        ck_assert_int_eq (res->state, i == 5 ? LLMQ_STATE_DEAD : LLMQ_STATE_DONE);
        llmq_result_free (&res);
    }
    doc = s_expect_json (h, (const char *[]) { "admin", "queue", "--json", NULL });
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "queued")), 0);
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "tenant_count")), 0);
    ck_assert_int_eq (json_array_size (json_object_get (doc, "tenants")), 0);
    ck_assert_int_eq (json_integer_value (json_object_get (doc, "dead")), 1);
    json_decref (doc);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_stream_cancel)
{
    harness_t *h = s_up ();
    llmq *c = h_client (h);
    uint64_t id = s_start_stream (c);
    char ids[24];
    snprintf (ids, sizeof ids, "%llu", (unsigned long long) id);

    json_t *doc = s_expect_json (h, (const char *[]) { "admin", "streams", "--json", NULL });
    const json_t *list = json_object_get (doc, "streams");
    ck_assert_int_eq (json_array_size (list), 1);
    const json_t *s = json_array_get (list, 0);
    ck_assert_uint_eq ((uint64_t) json_integer_value (json_object_get (s, "id")), id);
    ck_assert_int_ge (json_integer_value (json_object_get (s, "chunks")), 1);
    ck_assert_str_eq (json_string_value (json_object_get (s, "deployment")), "mock");
    ck_assert_str_eq (json_string_value (json_object_get (s, "model")), "gpt");
    ck_assert (json_is_string (json_object_get (s, "worker")));
    ck_assert_int_gt (json_integer_value (json_object_get (s, "started_us")), 0);
    json_decref (doc);
    h_cli_t r = s_expect (h, 0, (const char *[]) { "admin", "streams", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, ids));
    h_cli_free (&r);

    r = s_expect (h, 0, (const char *[]) { "admin", "stream-cancel", ids, NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "cancelled"));
    h_cli_free (&r);
    llmq_result *res = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &res), LLMQ_OK);
    ck_assert_int_eq (res->state, LLMQ_STATE_CANCELLED);
    llmq_result_free (&res);
    /* The worker was told: the provider call is dropped. */
    ck_assert (h_wait_mock_stat (h, "in_flight", 0, T_WAIT));
    /* No longer active: listed no more, a second cancel is refused. */
    doc = s_expect_json (h, (const char *[]) { "admin", "streams", "--json", NULL });
    ck_assert_int_eq (json_array_size (json_object_get (doc, "streams")), 0);
    json_decref (doc);
    r = s_expect (h, 1, (const char *[]) { "admin", "stream-cancel", ids, NULL });
    h_cli_free (&r);

    /* Through the library: a bad id is INVALID. */
    char *answer = NULL;
    ck_assert_int_eq (llmq_admin (c, "{\"op\":\"streams.cancel\",\"id\":\"x\"}", &answer, 5000), LLMQ_ERR_INVALID);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("ops");
    TCase *tc = tcase_create ("ops");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_help);
    tcase_add_test (tc, test_views);
    tcase_add_test (tc, test_queue_view);
    tcase_add_test (tc, test_stream_cancel);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
