/*  test_http.c -- the broker's HTTP side ([broker] http): health,
    readiness, Prometheus metrics and the admin JSON API, through a real
    broker, worker and (for breakers) the mock provider on 127.0.0.1.

    The broker writes its HTTP port as the third line of --ready-file;
    h_start_broker returns once the broker answers PING, by when the file
    is in place.
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
#include <unistd.h>

#define T_WAIT  20000           /* ms: generous, these are not timing tests */
#define T_TOKEN "test-admin-token-5e1f"

typedef struct {
    char *data;
    size_t len;
} s_buf_t;

static size_t
s_on_data (char *ptr, size_t size, size_t n, void *arg)
{
    s_buf_t *b = (s_buf_t *) arg;
    char *grown = (char *) realloc (b->data, b->len + size * n + 1);
    if (!grown) {
        return 0;
    }
    b->data = grown;
    memcpy (b->data + b->len, ptr, size * n);
    b->len += size * n;
    b->data[b->len] = '\0';
    return size * n;
}

/*  One request to 127.0.0.1:port; returns the body (caller frees) and the
    status in *status. `token` NULL: no Authorization header. */
/*  One request to the broker's HTTP side; `ca` NULL: plain http, else
    https trusting that CA file. Returns curl's code; the body (to free)
    in *body, the status in *status. */
static CURLcode
s_request (int port, const char *ca, const char *method, const char *path, const char *token, long *status,
           char **body)
{
    CURL *curl = curl_easy_init ();
    ck_assert_ptr_nonnull (curl);
    char url[512], auth[256];
    snprintf (url, sizeof url, "%s://127.0.0.1:%d%s", ca ? "https" : "http", port, path);
    s_buf_t b = { calloc (1, 1), 0 };
    struct curl_slist *headers = NULL;
    if (token) {
        snprintf (auth, sizeof auth, "Authorization: Bearer %s", token);
        headers = curl_slist_append (headers, auth);
    }
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp (method, "POST") == 0) {
        curl_easy_setopt (curl, CURLOPT_POSTFIELDS, "");
    }
    curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_on_data);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, (long) T_WAIT);
    curl_easy_setopt (curl, CURLOPT_NOPROXY, "*");
    if (ca) {
        curl_easy_setopt (curl, CURLOPT_CAINFO, ca);
    }
    *status = 0;
    CURLcode rc = curl_easy_perform (curl);
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, status);
    curl_slist_free_all (headers);
    curl_easy_cleanup (curl);
    *body = b.data;
    return rc;
}

/*  Plain HTTP `method` `path`, which must get an answer; returns its body
    (to free). */
static char *
s_http (int port, const char *method, const char *path, const char *token, long *status)
{
    char *body = NULL;
    CURLcode rc = s_request (port, NULL, method, path, token, status, &body);
    ck_assert_msg (rc == CURLE_OK, "%s %s: %s", method, path, curl_easy_strerror (rc));
    return body;
}

/*  A harness whose broker has [broker] http on an ephemeral port; returns
    the port. `token_env` NULL: no admin_token_env. */
static harness_t *
s_start (const char *token_env, const char *deployment, int *port)
{
    char extra[512];
    snprintf (extra, sizeof extra, "http = 127.0.0.1:0\nprobe_interval = 0s\nmax_attempts = 1\n%s%s%s",
              token_env ? "admin_token_env = " : "", token_env ? token_env : "", token_env ? "\n" : "");
    harness_t *h = h_new (extra);
    ck_assert_ptr_nonnull (h);
    if (deployment) {
        FILE *f = fopen (h->conf, "a");
        ck_assert_ptr_nonnull (f);
        fprintf (f, "\n[deployment flaky]\nprovider = openai\nmodel = m\n"
                    "base_url = http://127.0.0.1:%d/v1\n%s"
                    "\n[group flaky]\ndeployments = flaky\n", h->mock_port, deployment);
        ck_assert_int_eq (fclose (f), 0);
        ck_assert_int_eq (h_start_mock (h, NULL), 0);
    }
    char ready[400];
    snprintf (ready, sizeof ready, "%s/broker.ready", h->dir);
    const char *args[] = { "--ready-file", ready, NULL };
    ck_assert_int_eq (h_start_broker (h, args), 0);
    *port = h_broker_http_port (ready);
    ck_assert_int_gt (*port, 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

static llmq_result *
s_run (llmq *c, const char *group)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = group;
    j.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}";
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    return r;
}

/*  The value of the sample whose name and labels are exactly `series`
    ("name" or "name{a=\"b\"}"); fails the test if absent. */
static double
s_sample (const char *text, const char *series)
{
    size_t n = strlen (series);
    for (const char *line = text; line && *line; ) {
        if (strncmp (line, series, n) == 0 && line[n] == ' ') {
            return strtod (line + n + 1, NULL);
        }
        line = strchr (line, '\n');
        line = line ? line + 1 : NULL;
    }
    ck_abort_msg ("no sample %s", series);
    return -1;
}

/*  A histogram's buckets for one label set ("deployment=\"echo\""): they
    are cumulative and +Inf equals _count. Returns _count. */
static double
s_check_histogram (const char *text, const char *name, const char *labels)
{
    char prefix[256];
    snprintf (prefix, sizeof prefix, "%s_bucket{%s%sle=\"", name, labels, *labels ? "," : "");
    size_t n = strlen (prefix);
    double last = 0, inf = -1;
    int buckets = 0;
    for (const char *line = text; line && *line; ) {
        if (strncmp (line, prefix, n) == 0) {
            const char *close = strstr (line + n, "\"} ");
            ck_assert_ptr_nonnull (close);
            double v = strtod (close + 3, NULL);
            ck_assert_msg (v >= last, "%s: buckets not cumulative", name);
            last = v;
            buckets++;
            if (strncmp (line + n, "+Inf\"", 5) == 0) {
                inf = v;
            }
        }
        line = strchr (line, '\n');
        line = line ? line + 1 : NULL;
    }
    ck_assert_int_eq (buckets, 11);
    char series[256];
    if (*labels) {
        snprintf (series, sizeof series, "%s_count{%s}", name, labels);
    }
    else {
        snprintf (series, sizeof series, "%s_count", name);
    }
    double count = s_sample (text, series);
    ck_assert (inf == count);
    return count;
}

/*  promtool check metrics on the text, when promtool is installed
    (deploy/install-deps.sh installs it). */
static void
s_promtool (harness_t *h, const char *text)
{
    if (system ("command -v promtool > /dev/null 2>&1") != 0) {
        fprintf (stderr, "test_http: promtool not installed: lint skipped\n");
        return;
    }
    char path[400], cmd[900];
    snprintf (path, sizeof path, "%s/metrics.txt", h->dir);
    FILE *f = fopen (path, "w");
    ck_assert_ptr_nonnull (f);
    fputs (text, f);
    ck_assert_int_eq (fclose (f), 0);
    snprintf (cmd, sizeof cmd, "promtool check metrics < '%s' > '%s/promtool.log' 2>&1", path, h->dir);
    int rc = system (cmd);
    if (rc != 0) {
        snprintf (cmd, sizeof cmd, "%s/promtool.log", h->dir);
        char *log = h_slurp (cmd);
        ck_abort_msg ("promtool check metrics failed: %s", log ? log : "?");
    }
}

START_TEST (test_health_ready_and_metrics)
{
    int port;
    harness_t *h = s_start (NULL, NULL, &port);
    long status = 0;
    char *body = s_http (port, "GET", "/healthz", NULL, &status);
    ck_assert_int_eq (status, 200);
    ck_assert_str_eq (body, "ok\n");
    free (body);
    body = s_http (port, "GET", "/readyz", NULL, &status);
    ck_assert_int_eq (status, 200);
    free (body);
    body = s_http (port, "GET", "/nope", NULL, &status);
    ck_assert_int_eq (status, 404);
    free (body);

    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    enum { N = 7 };
    for (int i = 0; i < N; i++) {
        llmq_result *r = s_run (c, "echo");
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        llmq_result_free (&r);
    }
    /*  Every result was pushed after its commit, so the counters are in. */
    char *text = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert_int_eq (status, 200);
    ck_assert (s_sample (text, "llmq_jobs_submitted_total") == N);
    ck_assert (s_sample (text, "llmq_jobs_finished_total{state=\"done\"}") == N);
    ck_assert (s_sample (text, "llmq_jobs_finished_total{state=\"failed\"}") == 0);
    ck_assert (s_sample (text, "llmq_provider_calls_total{deployment=\"echo\",outcome=\"ok\"}") == N);
    ck_assert (s_sample (text, "llmq_provider_calls_total{deployment=\"echo\",outcome=\"server\"}") == 0);
    ck_assert (s_check_histogram (text, "llmq_provider_latency_seconds", "deployment=\"echo\"") == N);
    ck_assert (s_check_histogram (text, "llmq_provider_latency_seconds", "deployment=\"mock\"") == 0);
    double waits = 0;
    const char *prio[] = { "urgent", "high", "normal", "low" };
    for (int p = 0; p < 4; p++) {
        char labels[64];
        snprintf (labels, sizeof labels, "priority=\"%s\"", prio[p]);
        waits += s_check_histogram (text, "llmq_queue_wait_seconds", labels);
    }
    ck_assert (waits == N);
    ck_assert (s_sample (text, "llmq_queue_depth{group=\"echo\",priority=\"normal\"}") == 0);
    ck_assert (s_sample (text, "llmq_queue_running{group=\"echo\"}") == 0);
    ck_assert (s_sample (text, "llmq_breaker_state{deployment=\"echo\"}") == 0);
    ck_assert (s_sample (text, "llmq_deployment_in_flight{deployment=\"echo\"}") == 0);
    ck_assert (s_sample (text, "llmq_workers") == 1);
    ck_assert (s_sample (text, "llmq_worker_slots_free") == 4);
    ck_assert (s_sample (text, "llmq_commits_total") > 0);
    /*  Read in the same turn: one commit time per commit. */
    ck_assert (s_check_histogram (text, "llmq_commit_duration_seconds", "") == s_sample (text, "llmq_commits_total"));
    ck_assert (s_sample (text, "llmq_dead_letters") == 0);
    ck_assert (s_sample (text, "llmq_store_max_bytes") > 0);
    ck_assert (s_sample (text, "llmq_tokens_total{model=\"echo\",org=\"none\",kind=\"prompt\"}") >= 0);
    ck_assert (s_sample (text, "llmq_cost_usd_total{model=\"echo\",org=\"none\"}") == 0);
    ck_assert (s_sample (text, "llmq_dispatch_blocked_total{group=\"echo\",reason=\"open\"}") == 0);
    ck_assert (s_sample (text, "llmq_rate_limited_pauses_total{deployment=\"echo\"}") == 0);
    s_promtool (h, text);
    free (text);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_admin_needs_token)
{
    setenv ("LLMQ_TEST_ADMIN_TOKEN", T_TOKEN, 1);
    int port;
    harness_t *h = s_start ("LLMQ_TEST_ADMIN_TOKEN", NULL, &port);
    long status = 0;
    char *body = s_http (port, "GET", "/admin/breakers", NULL, &status);
    ck_assert_int_eq (status, 401);
    json_error_t jerr;
    json_t *j = json_loads (body, 0, &jerr);
    ck_assert (json_is_string (json_object_get (j, "error")));
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/breakers", "wrong-token-5e1f0000", &status);
    ck_assert_int_eq (status, 401);
    free (body);
    body = s_http (port, "GET", "/admin/breakers", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (json_object_get (j, "deployments"),
                                                                             "echo"), "breaker")), "closed");
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/workers", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert_int_eq (json_integer_value (json_object_get (j, "worker_count")), 1);
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/queue", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert (json_is_array (json_object_get (j, "tenants")));
    ck_assert (json_is_integer (json_object_get (j, "dead")));
    json_decref (j);
    free (body);
    /*  One deployment's breaker; its limits; an unknown one is 404. */
    body = s_http (port, "GET", "/admin/breakers?deployment=echo", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert_int_eq (json_object_size (json_object_get (j, "deployments")), 1);
    ck_assert (json_is_object (json_object_get (json_object_get (j, "deployments"), "echo")));
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/breakers?deployment=nosuch", T_TOKEN, &status);
    ck_assert_int_eq (status, 404);
    free (body);
    body = s_http (port, "GET", "/admin/limits", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert (json_is_integer (json_object_get (json_object_get (json_object_get (j, "deployments"), "echo"),
                                                 "window_requests")));
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/limits?deployment=nosuch", T_TOKEN, &status);
    ck_assert_int_eq (status, 404);
    free (body);
    body = s_http (port, "GET", "/admin/quota?user=alice", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert_str_eq (json_string_value (json_object_get (j, "user")), "alice");
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/quota", T_TOKEN, &status);
    ck_assert_int_eq (status, 400);
    free (body);
    body = s_http (port, "POST", "/admin/quota/reset?user=alice", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    free (body);
    body = s_http (port, "GET", "/admin/history", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    free (body);
    body = s_http (port, "POST", "/admin/breakers", T_TOKEN, &status);
    ck_assert_int_eq (status, 405);
    free (body);
    /*  The operator views: no stream runs, so none listed and none to cancel. */
    body = s_http (port, "GET", "/admin/streams", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert_int_eq (json_array_size (json_object_get (j, "streams")), 0);
    json_decref (j);
    free (body);
    body = s_http (port, "POST", "/admin/streams/cancel?id=99", T_TOKEN, &status);
    ck_assert_int_eq (status, 404);
    free (body);
    body = s_http (port, "POST", "/admin/streams/cancel?id=x", T_TOKEN, &status);
    ck_assert_int_eq (status, 400);
    free (body);
    body = s_http (port, "GET", "/admin/budget?org=acme", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    j = json_loads (body, 0, &jerr);
    ck_assert_str_eq (json_string_value (json_object_get (j, "org")), "acme");
    ck_assert (json_is_object (json_object_get (j, "budget_micro")));
    json_decref (j);
    free (body);
    body = s_http (port, "GET", "/admin/budget", T_TOKEN, &status);
    ck_assert_int_eq (status, 400);
    free (body);
    h_destroy (&h);
}
END_TEST

START_TEST (test_admin_disabled_without_token)
{
    int port;
    harness_t *h = s_start (NULL, NULL, &port);
    long status = 0;
    char *body = s_http (port, "GET", "/admin/breakers", T_TOKEN, &status);
    ck_assert_int_eq (status, 403);
    ck_assert_ptr_nonnull (strstr (body, "admin_token_env"));
    free (body);
    h_destroy (&h);
}
END_TEST

START_TEST (test_breaker_reset_over_http)
{
    setenv ("LLMQ_TEST_ADMIN_TOKEN", T_TOKEN, 1);
    int port;
    /*  Two server errors open the breaker for an hour: only a reset closes it. */
    harness_t *h = s_start ("LLMQ_TEST_ADMIN_TOKEN",
                            "breaker_failures = 2\nbreaker_min_calls = 2\nbreaker_open = 1h\n", &port);
    llmq *c = h_client (h);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":2}"), 0);
    for (int i = 0; i < 2; i++) {
        llmq_result *r = s_run (c, "flaky");
        ck_assert_int_eq (r->state, LLMQ_STATE_DEAD);
        llmq_result_free (&r);
    }
    ck_assert (h_wait_stat_str (c, "deployments.flaky.breaker", "open", T_WAIT));
    long status = 0;
    char *text = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert (s_sample (text, "llmq_breaker_state{deployment=\"flaky\"}") == 1);
    ck_assert (s_sample (text, "llmq_breaker_transitions_total{deployment=\"flaky\",to=\"open\"}") == 1);
    ck_assert (s_sample (text, "llmq_provider_calls_total{deployment=\"flaky\",outcome=\"server\"}") == 2);
    ck_assert (s_sample (text, "llmq_jobs_finished_total{state=\"dead\"}") == 2);
    ck_assert (s_sample (text, "llmq_dead_letters") == 2);
    free (text);

    char *body = s_http (port, "POST", "/admin/breakers/reset?deployment=nosuch", T_TOKEN, &status);
    ck_assert_int_eq (status, 404);
    free (body);
    body = s_http (port, "POST", "/admin/breakers/reset?deployment=flaky", T_TOKEN, &status);
    ck_assert_int_eq (status, 200);
    ck_assert_ptr_nonnull (strstr (body, "flaky"));
    free (body);
    /*  The reset ran inside a broker turn: its effect is visible at once. */
    char state[16];
    ck_assert (h_stat_str (c, "deployments.flaky.breaker", state, sizeof state));
    ck_assert_str_eq (state, "closed");
    text = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert (s_sample (text, "llmq_breaker_state{deployment=\"flaky\"}") == 0);
    s_promtool (h, text);
    free (text);
    llmq_result *r = s_run (c, "flaky");
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  As s_start, with `broker` appended to [broker], `tail` to the config
    (the mock provider started when `tail` is not NULL; "@PORT@" in it is
    the mock's port), and `workers`
    workers of 4 slots each (0: none yet). */
static harness_t *
s_start_conf (const char *broker, const char *tail, int workers, int *port)
{
    char extra[512];
    snprintf (extra, sizeof extra, "http = 127.0.0.1:0\nprobe_interval = 0s\n%s", broker);
    harness_t *h = h_new (extra);
    ck_assert_ptr_nonnull (h);
    if (tail) {
        FILE *f = fopen (h->conf, "a");
        ck_assert_ptr_nonnull (f);
        for (const char *p = tail; *p; p++) {
            if (strncmp (p, "@PORT@", 6) == 0) {
                fprintf (f, "%d", h->mock_port);
                p += 5;
            }
            else {
                fputc (*p, f);
            }
        }
        ck_assert_int_eq (fclose (f), 0);
        ck_assert_int_eq (h_start_mock (h, NULL), 0);
    }
    char ready[400];
    snprintf (ready, sizeof ready, "%s/broker.ready", h->dir);
    const char *args[] = { "--ready-file", ready, NULL };
    ck_assert_int_eq (h_start_broker (h, args), 0);
    *port = h_broker_http_port (ready);
    ck_assert_int_gt (*port, 0);
    for (int i = 0; i < workers; i++) {
        ck_assert_int_ge (h_start_worker (h, 4, i + 1), 0);
    }
    return h;
}

static int64_t
s_ms (clockid_t clock)
{
    struct timespec ts;
    clock_gettime (clock, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*  Sum of the samples of every series of `name` (with labels); -1 if none. */
static double
s_sum (const char *text, const char *name)
{
    size_t n = strlen (name);
    double sum = -1;
    for (const char *line = text; line && *line; ) {
        if (strncmp (line, name, n) == 0 && line[n] == '{') {
            const char *close = strstr (line + n, "} ");
            ck_assert_ptr_nonnull (close);
            sum = (sum < 0 ? 0 : sum) + strtod (close + 2, NULL);
        }
        line = strchr (line, '\n');
        line = line ? line + 1 : NULL;
    }
    return sum;
}

/*  Scrape until the sum over `name`'s series is `want`, up to T_WAIT;
    returns the last scrape (caller frees). */
static char *
s_wait_sum (int port, const char *name, double want)
{
    int64_t deadline = s_ms (CLOCK_MONOTONIC) + T_WAIT;
    for (;;) {
        long status = 0;
        char *text = s_http (port, "GET", "/metrics", NULL, &status);
        ck_assert_int_eq (status, 200);
        if (s_sum (text, name) == want || s_ms (CLOCK_MONOTONIC) > deadline) {
            return text;
        }
        free (text);
        h_backoff ();
    }
}

static int
s_count_chunk (void *arg, uint64_t id, unsigned seq, const char *text)
{
    (void) id;
    (void) seq;
    if (text) {
        (*(int *) arg)++;
    }
    return 0;
}

/*  Workers' own figures ride on their HEARTBEATs; the broker exports the
    last ones. A streamed job gives one time-to-first-chunk sample. */
START_TEST (test_worker_figures_and_ttfc)
{
    int port;
    harness_t *h = s_start_conf ("heartbeat = 100ms\nmax_attempts = 1\n", NULL, 2, &port);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    enum { N = 6 };
    for (int i = 0; i < N; i++) {
        llmq_result *r = s_run (c, "echo");
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        llmq_result_free (&r);
    }
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "echo";
    j.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"stream me\"}]}";
    j.stream = 1;
    int chunks = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_count_chunk, &chunks, NULL, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_int_gt (chunks, 0);
    llmq_result_free (&r);

    /*  The figures come with the workers' next heartbeats. */
    char *text = s_wait_sum (port, "llmq_worker_calls_total", N + 1);
    ck_assert (s_sum (text, "llmq_worker_calls_total") == N + 1);
    ck_assert (s_sum (text, "llmq_worker_slots") == 8);
    ck_assert (s_sum (text, "llmq_worker_in_flight") == 0);
    ck_assert (s_sum (text, "llmq_worker_cpu_seconds_total") >= 0);
    ck_assert_ptr_nonnull (strstr (text, "llmq_worker_calls_total{worker=\""));
    ck_assert_ptr_nonnull (strstr (text, "\",host=\""));
    ck_assert (s_check_histogram (text, "llmq_time_to_first_chunk_seconds", "deployment=\"echo\"") == 1);
    ck_assert (s_check_histogram (text, "llmq_time_to_first_chunk_seconds", "deployment=\"mock\"") == 0);
    ck_assert (s_sample (text, "llmq_failovers_total{group=\"echo\"}") == 0);
    s_promtool (h, text);
    free (text);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A 500 on one of the two deployments of a group, then success on the
    other: one failover. */
START_TEST (test_failover_metric)
{
    int port;
    harness_t *h = s_start_conf ("max_attempts = 3\nretry_backoff = 0s\n",
                                 "\n[deployment pa]\nprovider = openai\nmodel = m\n"
                                 "base_url = http://127.0.0.1:@PORT@/v1\n"
                                 "\n[deployment pb]\nprovider = openai\nmodel = m\n"
                                 "base_url = http://127.0.0.1:@PORT@/v1\n"
                                 "\n[group pair]\ndeployments = pa, pb\nstrategy = order\n", 1, &port);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":1}"), 0);
    llmq_result *r = s_run (c, "pair");
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    long status = 0;
    char *text = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert_int_eq (status, 200);
    ck_assert (s_sample (text, "llmq_jobs_retried_total") == 1);
    ck_assert (s_sample (text, "llmq_failovers_total{group=\"pair\"}") == 1);
    ck_assert (s_sample (text, "llmq_failovers_total{group=\"echo\"}") == 0);
    ck_assert (s_sample (text, "llmq_provider_calls_total{deployment=\"pa\",outcome=\"server\"}")
               + s_sample (text, "llmq_provider_calls_total{deployment=\"pb\",outcome=\"server\"}") == 1);
    ck_assert (s_sample (text, "llmq_provider_calls_total{deployment=\"pa\",outcome=\"ok\"}")
               + s_sample (text, "llmq_provider_calls_total{deployment=\"pb\",outcome=\"ok\"}") == 1);
    s_promtool (h, text);
    free (text);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A job no worker takes ages at the head of its group's queue; the
    gauge is read at scrape time and drops to 0 once the queue is empty. */
START_TEST (test_queue_oldest_age)
{
    int port;
    harness_t *h = s_start_conf ("max_attempts = 1\n", NULL, 0, &port);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "echo";
    j.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"wait\"}]}";
    j.priority = LLMQ_PRIO_NORMAL;
    j.org = "acme";
    int64_t t0 = s_ms (CLOCK_REALTIME);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    /*  Poll until it is at least 0.3 s old; the age never exceeds the
        time since the submit began. */
    double age = 0;
    int64_t deadline = s_ms (CLOCK_MONOTONIC) + T_WAIT;
    while (age < 0.3 && s_ms (CLOCK_MONOTONIC) < deadline) {
        long status = 0;
        char *text = s_http (port, "GET", "/metrics", NULL, &status);
        int64_t t2 = s_ms (CLOCK_REALTIME);
        age = s_sample (text, "llmq_queue_oldest_age_seconds{group=\"echo\"}");
        ck_assert (s_sample (text, "llmq_queue_depth{group=\"echo\",priority=\"normal\"}") == 1);
        ck_assert (s_sample (text, "llmq_queue_tenant_depth{tenant=\"org:acme\"}") == 1);
        ck_assert_msg (age <= (double) (t2 - t0) / 1000 + 0.002, "age %g > %g s since submit", age,
                       (double) (t2 - t0) / 1000);
        free (text);
        h_backoff ();
    }
    ck_assert (age >= 0.3);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    long status = 0;
    char *text = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert (s_sample (text, "llmq_queue_oldest_age_seconds{group=\"echo\"}") == 0);
    ck_assert_ptr_null (strstr (text, "llmq_queue_tenant_depth{"));     /* no tenant has a queued job */
    s_promtool (h, text);
    free (text);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  Cost per model and org; a 429 pauses its deployment; a group whose
    only breaker is open counts its blocked dispatch turns. */
START_TEST (test_org_cost_and_limiter_metrics)
{
    int port;
    harness_t *h = s_start_conf ("max_attempts = 1\n",
                                 "\n[deployment priced]\nprovider = echo\nprice_input = 1.5\nprice_output = 2\n"
                                 "\n[group priced]\ndeployments = priced\n"
                                 "\n[deployment flaky]\nprovider = openai\nmodel = m\n"
                                 "base_url = http://127.0.0.1:@PORT@/v1\n"
                                 "breaker_failures = 2\nbreaker_min_calls = 2\nbreaker_open = 1h\n"
                                 "\n[group flaky]\ndeployments = flaky\n"
                                 "\n[deployment rl]\nprovider = openai\nmodel = m\n"
                                 "base_url = http://127.0.0.1:@PORT@/v1\n"
                                 "\n[group rl]\ndeployments = rl\n", 1, &port);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    uint64_t cost = 0, tokens = 0;
    for (int i = 0; i < 3; i++) {
        llmq_job j;
        memset (&j, 0, sizeof j);
        j.model = "priced";
        j.org = i < 2 ? "acme" : NULL;
        j.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hello\"}]}";
        uint64_t id = 0;
        ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
        llmq_result *r = NULL;
        ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        if (i < 2) {
            cost += r->cost_micro;
            tokens += r->prompt_tokens;
        }
        llmq_result_free (&r);
    }
    ck_assert_uint_gt (cost, 0);
    /*  One 429: the deployment pauses once. */
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":429,\"retry_after\":1,\"count\":1}"), 0);
    llmq_result *r = s_run (c, "rl");
    llmq_result_free (&r);
    long status = 0;
    char *text = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert_int_eq (status, 200);
    ck_assert (s_sample (text, "llmq_cost_usd_total{model=\"priced\",org=\"acme\"}") == (double) cost / 1e6);
    ck_assert (s_sample (text, "llmq_tokens_total{model=\"priced\",org=\"acme\",kind=\"prompt\"}")
               == (double) tokens);
    ck_assert (s_sample (text, "llmq_cost_usd_total{model=\"priced\",org=\"none\"}") > 0);
    ck_assert (s_sample (text, "llmq_rate_limited_pauses_total{deployment=\"rl\"}") == 1);
    ck_assert (s_sample (text, "llmq_rate_limited_pauses_total{deployment=\"flaky\"}") == 0);
    ck_assert (s_sample (text, "llmq_dispatch_blocked_total{group=\"flaky\",reason=\"open\"}") == 0);
    free (text);

    /*  Two 500s open flaky's breaker for an hour; a job for it then waits,
        and every dispatch turn that cannot serve it counts as "open". */
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":2}"), 0);
    for (int i = 0; i < 2; i++) {
        r = s_run (c, "flaky");
        llmq_result_free (&r);
    }
    ck_assert (h_wait_stat_str (c, "deployments.flaky.breaker", "open", T_WAIT));
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "flaky";
    j.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"wait\"}]}";
    j.priority = LLMQ_PRIO_NORMAL;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    double blocked = 0;
    int64_t deadline = s_ms (CLOCK_MONOTONIC) + T_WAIT;
    while (blocked == 0 && s_ms (CLOCK_MONOTONIC) < deadline) {
        text = s_http (port, "GET", "/metrics", NULL, &status);
        blocked = s_sample (text, "llmq_dispatch_blocked_total{group=\"flaky\",reason=\"open\"}");
        ck_assert (s_sample (text, "llmq_dispatch_blocked_total{group=\"flaky\",reason=\"limits\"}") == 0);
        ck_assert (s_sample (text, "llmq_queue_depth{group=\"flaky\",priority=\"normal\"}") == 1);
        if (blocked > 0) {
            s_promtool (h, text);
        }
        free (text);
        h_backoff ();
    }
    ck_assert (blocked > 0);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  An exposition far past the renderer's first buffer (sized from the
    last one, 64 KiB at start): 300 deployments, about 1 MB. The first
    scrape, which must grow the buffer, and the second, sized from the
    first, are whole and the same. */
START_TEST (test_large_exposition)
{
    enum { NDEP = 300 };
    size_t cap = (size_t) NDEP * 80 + 64;
    char *tail = (char *) malloc (cap);
    ck_assert_ptr_nonnull (tail);
    size_t n = 0;
    for (int i = 0; i < NDEP; i++) {
        n += (size_t) snprintf (tail + n, cap - n, "\n[deployment d%03d]\nprovider = echo\n", i);
    }
    int port;
    harness_t *h = s_start_conf ("", tail, 0, &port);
    free (tail);
    long status = 0;
    char *first = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert_int_eq (status, 200);
    ck_assert_uint_gt (strlen (first), 512 * 1024);
    ck_assert (s_sample (first, "llmq_provider_calls_total{deployment=\"d299\",outcome=\"ok\"}") == 0);
    ck_assert (s_check_histogram (first, "llmq_time_to_first_chunk_seconds", "deployment=\"d299\"") == 0);
    /*  The last family is there, whole. */
    ck_assert (s_check_histogram (first, "llmq_commit_duration_seconds", "") >= 0);
    char *second = s_http (port, "GET", "/metrics", NULL, &status);
    ck_assert_int_eq (status, 200);
    size_t lines[2] = { 0, 0 };
    for (const char *p = first; *p; p++) {
        lines[0] += *p == '\n';
    }
    for (const char *p = second; *p; p++) {
        lines[1] += *p == '\n';
    }
    ck_assert_uint_eq (lines[0], lines[1]);
    s_promtool (h, second);
    free (first);
    free (second);
    h_destroy (&h);
}
END_TEST

/*  GET `path` over HTTPS trusting `ca`; returns curl's code. */
static CURLcode
s_https (int port, const char *path, const char *ca, const char *token, long *status)
{
    char *body = NULL;
    CURLcode rc = s_request (port, ca, "GET", path, token, status, &body);
    free (body);
    return rc;
}

/*  http_tls_cert and http_tls_key: the HTTP side speaks HTTPS only, with
    the certificate given (checked by a client trusting its CA); the admin
    token still applies. A key file that cannot be read stops the broker
    with the config line. */
START_TEST (test_https)
{
    setenv ("LLMQ_TEST_ADMIN_TOKEN", T_TOKEN, 1);
    harness_t *h = h_new ("http = 127.0.0.1:0\nprobe_interval = 0s\nadmin_token_env = LLMQ_TEST_ADMIN_TOKEN\n"
                          "http_tls_cert = tls/server.pem\nhttp_tls_key = tls/server.key\n");
    ck_assert_ptr_nonnull (h);
    h_make_certs (h);
    char ready[400], ca[400];
    snprintf (ready, sizeof ready, "%s/broker.ready", h->dir);
    snprintf (ca, sizeof ca, "%s/tls/ca.pem", h->dir);
    const char *args[] = { "--ready-file", ready, NULL };
    ck_assert_int_eq (h_start_broker (h, args), 0);
    int port = h_broker_http_port (ready);
    ck_assert_int_gt (port, 0);

    long status = 0;
    ck_assert_int_eq (s_https (port, "/healthz", ca, NULL, &status), CURLE_OK);
    ck_assert_int_eq (status, 200);
    ck_assert_int_eq (s_https (port, "/metrics", ca, NULL, &status), CURLE_OK);
    ck_assert_int_eq (status, 200);
    ck_assert_int_eq (s_https (port, "/admin/queue", ca, NULL, &status), CURLE_OK);
    ck_assert_int_eq (status, 401);
    ck_assert_int_eq (s_https (port, "/admin/queue", ca, T_TOKEN, &status), CURLE_OK);
    ck_assert_int_eq (status, 200);
    /*  A client that does not trust the CA refuses the certificate. */
    char other[400];
    snprintf (other, sizeof other, "%s/tls/other-ca.pem", h->dir);
    ck_assert_int_eq (s_https (port, "/healthz", other, NULL, &status), CURLE_PEER_FAILED_VERIFICATION);
    /*  Plain HTTP gets no answer. */
    char *body = NULL;
    CURLcode rc = s_request (port, NULL, "GET", "/healthz", NULL, &status, &body);
    free (body);
    ck_assert_msg (rc != CURLE_OK || status != 200, "plain HTTP answered %ld", status);
    h_stop (&h->broker, SIGTERM);

    /*  The key file gone: the broker does not start, and says which line. */
    char key[400], cmd[1400], log[400];
    snprintf (key, sizeof key, "%s/tls/server.key", h->dir);
    ck_assert_int_eq (unlink (key), 0);
    snprintf (log, sizeof log, "%s/broker-nokey.log", h->dir);
    snprintf (cmd, sizeof cmd, "'%s/broker/llmq-broker' -c '%s' > '%s' 2>&1", LLMQ_BIN_DIR, h->conf, log);
    ck_assert_int_ne (system (cmd), 0);
    char *text = h_slurp (log);
    ck_assert_ptr_nonnull (text);
    ck_assert_msg (strstr (text, "[broker] http_tls_key: cannot read") && strstr (text, "server.key"),
                   "broker said: %s", text);
    char at[400];
    snprintf (at, sizeof at, "%s:", h->conf);
    ck_assert_msg (strstr (text, at), "no config file and line in: %s", text);
    free (text);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("http");
    TCase *tc = tcase_create ("http");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_health_ready_and_metrics);
    tcase_add_test (tc, test_admin_needs_token);
    tcase_add_test (tc, test_admin_disabled_without_token);
    tcase_add_test (tc, test_breaker_reset_over_http);
    tcase_add_test (tc, test_worker_figures_and_ttfc);
    tcase_add_test (tc, test_failover_metric);
    tcase_add_test (tc, test_queue_oldest_age);
    tcase_add_test (tc, test_org_cost_and_limiter_metrics);
    tcase_add_test (tc, test_large_exposition);
    tcase_add_test (tc, test_https);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    curl_global_init (CURL_GLOBAL_DEFAULT);
    int rc = h_run_suite (s_suite ());
    curl_global_cleanup ();
    return rc;
}
