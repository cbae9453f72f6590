/*  test_health.c -- active health probes, through a real broker, worker and
    the mock provider on 127.0.0.1.

    A deployment idle for probe_interval gets a tiny call; one whose
    breaker is half-open gets its probes even when no job comes, so it
    closes again by itself once the provider heals.
*/
#include "harness.h"

#include <check.h>
#include <signal.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */

/*  A harness with deployment "flaky" (group "flaky") on the mock. */
static harness_t *
s_start (const char *broker, const char *deployment)
{
    harness_t *h = h_new (broker);
    ck_assert_ptr_nonnull (h);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "\n[deployment flaky]\nprovider = openai\nmodel = m\n"
                "base_url = http://127.0.0.1:%d/v1\n%s"
                "\n[group flaky]\ndeployments = flaky\n", h->mock_port, deployment);
    ck_assert_int_eq (fclose (f), 0);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

START_TEST (test_idle_deployment_is_probed)
{
    harness_t *h = s_start ("probe_interval = 300ms\n", "");
    llmq *c = h_client (h);
    /*  No job at all: the probes alone reach the mock (the harness's own
        "mock" deployment and "flaky", both idle). */
    ck_assert (h_wait_stat (c, "totals.probes", 2, T_WAIT));
    ck_assert_int_ge (h_mock_stat (h, "requests"), 2);
    ck_assert_int_eq (h_stat (c, "totals.probe_failures"), 0);
    /*  Never stored: no job, no result. */
    ck_assert_int_eq (h_stat (c, "totals.submitted"), 0);
    ck_assert_int_eq (h_stat (c, "totals.done"), 0);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static llmq_result *
s_run (llmq *c, const char *group)
{
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}";
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = group;
    j.body = body;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    return r;
}

START_TEST (test_half_open_breaker_probed_closed)
{
    /*  Idle probes off in effect (1 h); the breaker opens after 2 server
        errors for 300 ms, and closes after 2 successful probes. */
    harness_t *h = s_start ("probe_interval = 1h\nmax_attempts = 1\n",
                            "breaker_failures = 2\nbreaker_min_calls = 2\nbreaker_open = 300ms\n"
                            "breaker_successes = 2\n");
    llmq *c = h_client (h);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":2}"), 0);
    for (int i = 0; i < 2; i++) {
        llmq_result *r = s_run (c, "flaky");
        ck_assert_int_eq (r->state, LLMQ_STATE_DEAD);
        llmq_result_free (&r);
    }
    json_t *st = NULL;
    char *json = NULL;
    ck_assert_int_eq (llmq_stats (c, &json, 5000), LLMQ_OK);
    st = json_loads (json, 0, NULL);
    llmq_free (json);
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (
                          json_object_get (st, "deployments"), "flaky"), "breaker")), "open");
    json_decref (st);
    /*  No more jobs: probes alone, one at a time, close it. */
    for (int i = 0; i < T_WAIT / 5; i++) {
        ck_assert_int_eq (llmq_stats (c, &json, 5000), LLMQ_OK);
        st = json_loads (json, 0, NULL);
        llmq_free (json);
        const char *state = json_string_value (json_object_get (json_object_get (
                                json_object_get (st, "deployments"), "flaky"), "breaker"));
        bool closed = state && strcmp (state, "closed") == 0;
        json_decref (st);
        if (closed) {
            break;
        }
        h_backoff ();
    }
    ck_assert_int_eq (h_stat (c, "deployments.flaky.probes"), 2);
    ck_assert_int_eq (h_stat (c, "totals.probes"), 2);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 4);
    llmq_result *r = s_run (c, "flaky");
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  llmq top: two views, the second with rates; deployments and workers. */
START_TEST (test_top)
{
    harness_t *h = s_start ("", "");
    llmq *c = h_client (h);
    llmq_result *r = s_run (c, "echo");
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    char cmd[600];
    snprintf (cmd, sizeof cmd, "%s/client/llmq --broker %s top --count 2 --interval 100ms", LLMQ_BIN_DIR,
              h->frontend);
    FILE *p = popen (cmd, "r");
    ck_assert_ptr_nonnull (p);
    char out[8192];
    size_t n = fread (out, 1, sizeof out - 1, p);
    out[n] = '\0';
    ck_assert_int_eq (pclose (p), 0);
    ck_assert_ptr_nonnull (strstr (out, "llmq top"));
    ck_assert_ptr_nonnull (strstr (out, "jobs/s"));
    ck_assert_ptr_nonnull (strstr (out, "totals    submitted        1  done        1"));
    ck_assert_ptr_nonnull (strstr (out, "flaky"));
    ck_assert_ptr_nonnull (strstr (out, "closed"));
    ck_assert_ptr_nonnull (strstr (out, "last seen ms"));
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  Every line of every log is one JSON object; lines about a job carry
    its id as a field. */
static int
s_check_json_log (const char *path, uint64_t job)
{
    char *text = h_slurp (path);
    ck_assert_ptr_nonnull (text);
    int with_job = 0, lines = 0;
    for (char *line = strtok (text, "\n"); line; line = strtok (NULL, "\n")) {
        json_error_t err;
        json_t *j = json_loads (line, 0, &err);
        ck_assert_msg (json_is_object (j), "%s: not a JSON line: %s", path, line);
        ck_assert_ptr_nonnull (json_object_get (j, "ts"));
        ck_assert_ptr_nonnull (json_object_get (j, "level"));
        ck_assert_ptr_nonnull (json_object_get (j, "msg"));
        if ((uint64_t) json_integer_value (json_object_get (j, "job")) == job) {
            with_job++;
        }
        lines++;
        json_decref (j);
    }
    free (text);
    ck_assert_int_gt (lines, 0);
    return with_job;
}

START_TEST (test_json_logs)
{
    harness_t *h = s_start ("log_format = json\nlog_level = debug\nmax_attempts = 2\n"
                            "retry_backoff = 10ms\nretry_backoff_max = 20ms\n", "");
    llmq *c = h_client (h);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":1}"), 0);
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}";
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "flaky";
    j.body = body;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_uint_eq (r->attempts, 2);
    llmq_result_free (&r);
    llmq_close (&c);
    ck_assert_int_eq (h_stop (&h->workers[0], SIGTERM), 0);
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    int about_job = s_check_json_log (h->workers[0].log, id) + s_check_json_log (h->broker.log, id);
    ck_assert_int_gt (about_job, 0);
    h_destroy (&h);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("health");
    TCase *tc = tcase_create ("health");
    tcase_set_timeout (tc, 60);
    tcase_add_test (tc, test_idle_deployment_is_probed);
    tcase_add_test (tc, test_half_open_breaker_probed_closed);
    tcase_add_test (tc, test_top);
    tcase_add_test (tc, test_json_logs);
    suite_add_tcase (s, tc);
    return h_run_suite (s);
}
