/*  test_tenants.c -- quotas, costs and budgets through a real broker and
    worker (echo provider; the mock for cached prompt tokens) on 127.0.0.1.
*/
#include "harness.h"

#include <check.h>
#include <curl/curl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T_WAIT 20000

static const char s_body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1}";

static harness_t *
s_start (const char *extra)
{
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "\n[deployment priced]\nprovider = echo\nprice_input = 1.5\nprice_output = 2\n"
                "\n[group priced]\ndeployments = priced\n%s", extra);
    ck_assert_int_eq (fclose (f), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

static int
s_submit (llmq *c, const char *user, const char *org, uint64_t *id)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "priced";
    j.body = s_body;
    j.user = user;
    j.org = org;
    return llmq_submit (c, &j, id, 5000);
}

static uint64_t
s_minute (void)
{
    return (uint64_t) time (NULL) / 60;
}

START_TEST (test_free_tier_eleventh_refused)
{
    harness_t *h = s_start ("");
    llmq *c = h_client (h);
    /*  Ten a minute on the free tier (the default). Calendar minutes: if
        one ends during the ten, the count starts over and we try again in
        the next minute. */
    for (int round = 0; round < 2; round++) {
        uint64_t minute = s_minute ();
        char user[32];
        snprintf (user, sizeof user, "ann%d", round);
        uint64_t id;
        for (int i = 0; i < 10; i++) {
            ck_assert_int_eq (s_submit (c, user, NULL, &id), LLMQ_OK);
        }
        int rc = s_submit (c, user, NULL, &id);
        if (s_minute () != minute) {
            continue;
        }
        ck_assert_int_eq (rc, LLMQ_ERR_QUOTA);
        ck_assert_msg (strstr (llmq_last_error (c), "10 requests a minute used"), "%s", llmq_last_error (c));
        ck_assert_ptr_nonnull (strstr (llmq_last_error (c), "(retry after "));
        /*  Another user is not held back. */
        ck_assert_int_eq (s_submit (c, "bob", NULL, &id), LLMQ_OK);
        ck_assert_int_eq (h_stat (c, "totals.quota_refused"), 1);
        /*  The counts survive a broker restart. */
        llmq_close (&c);
        ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
        ck_assert_int_eq (h_start_broker (h, NULL), 0);
        c = h_client (h);
        rc = s_submit (c, user, NULL, &id);
        if (s_minute () == minute) {
            ck_assert_int_eq (rc, LLMQ_ERR_QUOTA);
        }
        break;
    }
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_cost_and_budget)
{
    harness_t *h = s_start ("\n[user cy]\ntier = enterprise\nbudget_daily = 0.00005\n");
    llmq *c = h_client (h);
    /*  The echo answers "echo: hi": 1 prompt and 2 completion tokens, so
        1 x 1.5 + 2 x 2 = 5.5 -> 6 micro-dollars. The submit check counts
        the estimate: bytes / 4 prompt tokens and max_tokens 1 answer. */
    uint64_t estimate = (uint64_t) ((double) (strlen (s_body) / 4) * 1.5 + 2.0 + 0.5);
    uint64_t spent = 0;
    int done = 0;
    for (int i = 0; i < 100; i++) {
        uint64_t id;
        int rc = s_submit (c, "cy", "acme", &id);
        if (spent + estimate > 50) {
            ck_assert_int_eq (rc, LLMQ_ERR_BUDGET);
            ck_assert_msg (strstr (llmq_last_error (c), "user cy: daily budget spent"), "%s",
                           llmq_last_error (c));
            break;
        }
        ck_assert_int_eq (rc, LLMQ_OK);
        llmq_result *r = NULL;
        ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        ck_assert_uint_eq (r->prompt_tokens, 1);
        ck_assert_uint_eq (r->completion_tokens, 2);
        ck_assert_uint_eq (r->cost_micro, 6);
        llmq_result_free (&r);
        spent += 6;
        done++;
    }
    ck_assert_int_eq (done, (int) ((50 - estimate) / 6 + 1));
    ck_assert_int_eq (h_stat (c, "totals.budget_refused"), 1);

    /*  The report: totals are the sum of the jobs' costs. */
    char today[16];
    time_t now = time (NULL);
    struct tm tm;
    gmtime_r (&now, &tm);
    strftime (today, sizeof today, "%Y-%m-%d", &tm);
    char req[200], *rep = NULL;
    snprintf (req, sizeof req, "{\"op\":\"usage.report\",\"from\":\"%s\",\"to\":\"%s\",\"by\":\"user\"}",
              today, today);
    ck_assert_int_eq (llmq_admin (c, req, &rep, 5000), LLMQ_OK);
    json_t *j = json_loads (rep, 0, NULL);
    llmq_free (rep);
    json_t *total = json_object_get (j, "total");
    ck_assert_int_eq (json_integer_value (json_object_get (total, "requests")), done);
    ck_assert_int_eq (json_integer_value (json_object_get (total, "cost_micro")), 6 * done);
    json_t *row = json_array_get (json_object_get (j, "rows"), 0);
    ck_assert_str_eq (json_string_value (json_object_get (row, "key")), "cy");
    ck_assert_int_eq (json_integer_value (json_object_get (row, "prompt_tokens")), done);
    ck_assert_int_eq (json_integer_value (json_object_get (row, "completion_tokens")), 2 * done);
    json_decref (j);
    /*  The same through the CLI, as CSV with a 1.5 chargeback. */
    char cmd[600];
    snprintf (cmd, sizeof cmd, "%s/client/llmq --broker %s report --from %s --to %s --by org "
              "--format csv --chargeback 1.5", LLMQ_BIN_DIR, h->frontend, today, today);
    FILE *p = popen (cmd, "r");
    ck_assert_ptr_nonnull (p);
    char out[1024] = "";
    size_t n = fread (out, 1, sizeof out - 1, p);
    out[n] = '\0';
    ck_assert_int_eq (pclose (p), 0);
    char want[200];
    snprintf (want, sizeof want, "org,requests,failed,prompt_tokens,completion_tokens,cost_usd,charge_usd\n"
              "acme,%d,0,%d,%d,%.6f,%.6f\n", done, done, 2 * done, 6.0 * done / 1e6, 9.0 * done / 1e6);
    ck_assert_str_eq (out, want);
    /*  The quota view. */
    ck_assert_int_eq (llmq_admin (c, "{\"op\":\"quota.show\",\"user\":\"cy\"}", &rep, 5000), LLMQ_OK);
    j = json_loads (rep, 0, NULL);
    llmq_free (rep);
    ck_assert_str_eq (json_string_value (json_object_get (j, "tier")), "enterprise");
    ck_assert_int_eq (json_integer_value (json_object_get (json_object_get (j, "budget_micro"), "spent_today")),
                      6 * done);
    ck_assert_int_eq (json_integer_value (json_object_get (json_object_get (j, "used"), "day")), done);
    json_decref (j);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  GET a mock path; the parsed JSON, or NULL. */
static size_t
s_collect (char *data, size_t size, size_t n, void *arg)
{
    json_t **buf = arg;
    json_t *piece = json_stringn (data, size * n);
    json_array_append_new (*buf, piece);
    return size * n;
}

static json_t *
s_mock_get (harness_t *h, const char *path)
{
    char url[200];
    snprintf (url, sizeof url, "http://127.0.0.1:%d%s", h->mock_port, path);
    CURL *curl = curl_easy_init ();
    json_t *pieces = json_array ();
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &pieces);
    CURLcode rc = curl_easy_perform (curl);
    curl_easy_cleanup (curl);
    size_t i;
    json_t *p;
    size_t len = 0;
    json_array_foreach (pieces, i, p) {
        len += json_string_length (p);
    }
    char *text = calloc (1, len + 1);
    len = 0;
    json_array_foreach (pieces, i, p) {
        memcpy (text + len, json_string_value (p), json_string_length (p));
        len += json_string_length (p);
    }
    json_decref (pieces);
    json_t *out = rc == CURLE_OK ? json_loads (text, 0, NULL) : NULL;
    free (text);
    return out;
}

/*  Cached prompt tokens at their own price: the mock (OpenAI dialect)
    reports 8 of the 10 prompt words as cached ([[mock:cached=8]], not a
    word itself); the reply "mock reply: <the 10 words>" is 12 words. So
    2 x 1.25 + 8 x 0.25 + 12 x 0.5 = 10.5 -> 11 micro-dollars (all 10 at
    price_input would be 19). */
START_TEST (test_cached_tokens_cost)
{
    harness_t *h = h_new (NULL);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "\n[deployment cmock]\nprovider = openai\nmodel = mock-model\n"
                "base_url = http://127.0.0.1:%d/v1\napi_key_env = LLMQ_TEST_KEY\n"
                "price_input = 1.25\nprice_cached_input = 0.25\nprice_output = 0.5\n"
                "\n[group cmock]\ndeployments = cmock\n", h->mock_port);
    ck_assert_int_eq (fclose (f), 0);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "cmock";
    j.body = "{\"messages\":[{\"role\":\"user\",\"content\":"
             "\"one two three four five six seven eight nine ten [[mock:cached=8]]\"}]}";
    uint64_t id;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_uint_eq (r->prompt_tokens, 10);
    ck_assert_uint_eq (r->cached_tokens, 8);
    ck_assert_uint_eq (r->completion_tokens, 12);
    ck_assert_uint_eq (r->cost_micro, 11);
    llmq_result_free (&r);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  Budget alerts at 80, 90 and 100 %, each once, POSTed to the webhook,
    the first POST refused and retried. Prices make each job cost twice
    its estimate (1 completion token estimated, 2 used), so the spend can
    pass the thresholds before the estimate refuses a job. */
START_TEST (test_budget_alerts_webhook)
{
    harness_t *h = h_new (NULL);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "\n[tenants]\nbudget_webhook = http://127.0.0.1:%d/mock/hook\n"
                "\n[deployment dear]\nprovider = echo\nprice_output = 10\n"
                "\n[group dear]\ndeployments = dear\n"
                "\n[user dee]\ntier = enterprise\nbudget_daily = 0.00005\n", h->mock_port);
    ck_assert_int_eq (fclose (f), 0);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_mock_post (h, "/mock/hook/fail", "{\"count\":1}"), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    /*  Another handle subscribes to the broker's notices. */
    llmq *watch = h_client (h);
    char *answer = NULL;
    ck_assert_int_eq (llmq_admin (watch, "{\"op\":\"events.subscribe\"}", &answer, 5000), LLMQ_OK);
    ck_assert_ptr_nonnull (strstr (answer, "\"subscribed\":true"));
    llmq_free (answer);
    /*  Spend 20, 40 (80 %), 60 (120 %: 90 and 100 %); the 4th is refused. */
    for (int i = 0; i < 4; i++) {
        llmq_job j;
        memset (&j, 0, sizeof j);
        j.model = "dear";
        j.body = s_body;
        j.user = "dee";
        uint64_t id;
        int rc = llmq_submit (c, &j, &id, 5000);
        if (i == 3) {
            ck_assert_int_eq (rc, LLMQ_ERR_BUDGET);
            break;
        }
        ck_assert_int_eq (rc, LLMQ_OK);
        llmq_result *r = NULL;
        ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
        ck_assert_uint_eq (r->cost_micro, 20);
        llmq_result_free (&r);
    }
    ck_assert_int_eq (h_stat (c, "totals.budget_alerts"), 3);
    /*  All three reach the hook, one after a retry (1 s later). */
    json_t *hooks = NULL;
    for (int i = 0; i < T_WAIT / 5; i++) {
        json_decref (hooks);
        hooks = s_mock_get (h, "/mock/hooks");
        if (hooks && json_integer_value (json_object_get (hooks, "received")) >= 3) {
            break;
        }
        h_backoff ();
    }
    ck_assert_ptr_nonnull (hooks);
    ck_assert_int_eq (json_integer_value (json_object_get (hooks, "received")), 3);
    ck_assert_int_eq (json_integer_value (json_object_get (hooks, "refused")), 1);
    int seen[3] = { 0 };
    size_t i;
    json_t *b;
    json_array_foreach (json_object_get (hooks, "bodies"), i, b) {
        ck_assert_str_eq (json_string_value (json_object_get (b, "type")), "budget_alert");
        ck_assert_str_eq (json_string_value (json_object_get (b, "name")), "dee");
        ck_assert_str_eq (json_string_value (json_object_get (b, "period")), "day");
        ck_assert_int_eq (json_integer_value (json_object_get (b, "budget_micro")), 50);
        json_int_t pct = json_integer_value (json_object_get (b, "pct"));
        seen[pct == 80 ? 0 : pct == 90 ? 1 : 2]++;
    }
    ck_assert (seen[0] == 1 && seen[1] == 1 && seen[2] == 1);
    json_decref (hooks);
    /*  The broker counts a POST as sent once it has read the answer,
        which may be just after the mock kept the body. */
    ck_assert (h_wait_stat (c, "webhook.sent", 3, T_WAIT));
    ck_assert_int_eq (h_stat (c, "webhook.retried"), 1);
    /*  The same three notices reached the subscriber, in order. */
    int want[3] = { 80, 90, 100 };
    for (int k = 0; k < 3; k++) {
        llmq_event *ev = NULL;
        ck_assert_int_eq (llmq_next (watch, T_WAIT, &ev), LLMQ_OK);
        ck_assert_int_eq (ev->type, LLMQ_EV_NOTICE);
        json_t *n = json_loads (ev->text, 0, NULL);
        ck_assert_str_eq (json_string_value (json_object_get (n, "type")), "budget_alert");
        ck_assert_int_eq (json_integer_value (json_object_get (n, "pct")), want[k]);
        json_decref (n);
        llmq_event_free (&ev);
    }
    llmq_close (&watch);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  Org B's 10 jobs, submitted after org A's 10,000, all finish before A's
    100th job after B's submission. */
START_TEST (test_fair_share)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    enum { NA = 10000, NB = 10 };
    llmq_job *jobs = calloc (NA, sizeof *jobs);
    uint64_t *ids = calloc (NA, sizeof *ids);
    for (int i = 0; i < NA; i++) {
        jobs[i] = (llmq_job) { .model = "echo", .body = s_body, .org = "A", .batch_id = "A",
                               .priority = LLMQ_PRIO_NORMAL };
    }
    ck_assert_int_eq (llmq_submit_many (c, jobs, NA, ids, 20000), LLMQ_OK);
    for (int i = 0; i < NB; i++) {
        jobs[i] = (llmq_job) { .model = "echo", .body = s_body, .org = "B", .batch_id = "B",
                               .priority = LLMQ_PRIO_NORMAL };
    }
    uint64_t bids[NB];
    ck_assert_int_eq (llmq_submit_many (c, jobs, NB, bids, 5000), LLMQ_OK);
    uint64_t b_enqueued = UINT64_MAX, b_last = 0;
    for (int i = 0; i < NB; i++) {
        llmq_result *r = NULL;
        ck_assert_int_eq (llmq_wait (c, bids[i], T_WAIT, &r), LLMQ_OK);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        b_enqueued = r->enqueued_us < b_enqueued ? r->enqueued_us : b_enqueued;
        b_last = r->finished_us > b_last ? r->finished_us : b_last;
        llmq_result_free (&r);
    }
    /*  A's jobs that finished between B's submission and B's last. */
    int between = 0, seen = 0;
    uint64_t after = 0;
    int more = 1;
    while (more) {
        llmq_result **rs = NULL;
        size_t n = 0;
        uint64_t next = 0;
        ck_assert_int_eq (llmq_fetch (c, "A", after, 1000, &rs, &n, &next, &more, NULL, 5000), LLMQ_OK);
        for (size_t i = 0; i < n; i++) {
            seen++;
            if (rs[i]->finished_us > b_enqueued && rs[i]->finished_us <= b_last) {
                between++;
            }
        }
        llmq_results_free (rs, n);
        if (n == 0) {
            break;
        }
        after = next;
    }
    ck_assert_int_gt (seen, 0);
    ck_assert_msg (between < 100, "%d of A's jobs finished while B's 10 waited", between);
    free (jobs);
    free (ids);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("tenants_e2e");
    TCase *tc = tcase_create ("tenants");
    tcase_set_timeout (tc, 60);
    tcase_add_test (tc, test_free_tier_eleventh_refused);
    tcase_add_test (tc, test_cost_and_budget);
    tcase_add_test (tc, test_cached_tokens_cost);
    tcase_add_test (tc, test_budget_alerts_webhook);
    tcase_add_test (tc, test_fair_share);
    suite_add_tcase (s, tc);
    return h_run_suite (s);
}
