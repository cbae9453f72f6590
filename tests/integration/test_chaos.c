/*  test_chaos.c -- the broker's router under provider failures, end to
    end: a real broker, real workers and one or two mock providers on
    127.0.0.1, with breakers, limits and timeouts scaled down to seconds.

    Every case counts what reached the providers (the mock's own counters
    and arrival timestamps, GET /mock/stats and /mock/requests) and checks
    it against the rule that should bound it:
      1. a deployment that always answers 500: its breaker opens after
         exactly breaker_failures calls, jobs fail over to the other
         deployment (all succeed), after breaker_open exactly
         breaker_probes probes reach it (still failing: open again), and
         once it heals breaker_successes good probes close it;
      2. a 429 with Retry-After: 2 pauses the deployment: nothing reaches
         the provider for 2 s, and the job still completes; the same for
         a 529, whose Retry-After is all that pauses it (the mock's 429
         also reports its request quota spent until then);
      3. 4 workers x 64 slots against rpm (then tpm) per rate_window: in
         no sliding window of the mock's arrival times more requests (or
         tokens, as the mock counted them) than the limit, and the limit
         is reached; a token estimate gives way to the usage reported;
      4. a deployment that starts hanging after 25 quick calls: the
         adaptive timeout (p95 x 1.5, at least timeout_min) ends the call
         long before the configured 30 s, the job completes elsewhere;
      5. every deployment of a group open: jobs with a deadline wait with
         "waiting: all deployments of group ... open until HH:MM:SS", then
         expire at their deadline, every id accounted for;
      6. 100 % failures: provider calls stay within the retry budget
         (retries <= max(retry_budget_min, 20 % of calls)), the rest end
         FAILED with the budget's reason;
      7. kill -9 of the broker while a breaker is open: after the restart
         it is still open until the same time, and jobs still fail over.

    Two deployments that must behave differently each get a mock of their
    own (h_start_mock_extra), so faults, latency and counts are per
    deployment. Waits are on conditions with timeouts; a wait for a time
    window to pass (breaker_open) polls the state that window enables.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T_WAIT 20000            /* ms: generous, for waits that are not measured */

/*  Retries at once; heartbeats fast enough for a broker restart. */
#define T_BROKER "retry_backoff = 10ms\nretry_backoff_max = 20ms\nheartbeat = 200ms\n"

/*  Error classes of docs/protocol.md section 6.2. */
#define T_EC_SERVER 4

/*  Wait for `cond` to hold, polling, up to timeout_ms; `ok` gets the
    last value. */
#define T_UNTIL(ok, cond, timeout_ms)                                       \
    do {                                                                    \
        uint64_t t_end_ = s_mono_ms () + (uint64_t) (timeout_ms);          \
        while (!((ok) = (cond)) && s_mono_ms () < t_end_) {                 \
            h_backoff ();                                                   \
        }                                                                   \
    } while (0)

static uint64_t
s_mono_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/*  A request body; max_tokens <= 0: none. */
static char *
s_body (const char *prompt, int max_tokens)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    if (max_tokens > 0) {
        json_object_set_new (b, "max_tokens", json_integer (max_tokens));
    }
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
}

static void
s_conf (harness_t *h, const char *fmt, ...)
{
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    va_list ap;
    va_start (ap, fmt);
    vfprintf (f, fmt, ap);
    va_end (ap);
    ck_assert_int_eq (fclose (f), 0);
}

/*  An OpenAI deployment on the mock at `port`, with more keys. */
static void
s_deployment (harness_t *h, const char *name, int port, const char *keys)
{
    s_conf (h, "\n[deployment %s]\n"
               "provider = openai\n"
               "model = mock-model\n"
               "base_url = http://127.0.0.1:%d/v1\n"
               "api_key_env = LLMQ_TEST_KEY\n"
               "%s",
            name, port, keys);
}

/*  deployments.DEP.FIELD of the broker's stats. */
static long
s_dep (llmq *c, const char *dep, const char *field)
{
    char path[128];
    snprintf (path, sizeof path, "deployments.%s.%s", dep, field);
    return h_stat (c, path);
}

/*  The breaker's state of DEP ("" if the broker does not say). */
static const char *
s_breaker (llmq *c, const char *dep, char *out, size_t len)
{
    char path[128];
    snprintf (path, sizeof path, "deployments.%s.breaker", dep);
    if (!h_stat_str (c, path, out, len)) {
        snprintf (out, len, "%s", "");
    }
    return out;
}

static bool
s_breaker_is (llmq *c, const char *dep, const char *state)
{
    char got[32];
    return strcmp (s_breaker (c, dep, got, sizeof got), state) == 0;
}

/*  Two integer fields of deployment DEP from one stats snapshot. */
static bool
s_dep_pair (llmq *c, const char *dep, const char *f1, long *v1, const char *f2, long *v2)
{
    char *text = NULL;
    if (llmq_stats (c, &text, 5000) != LLMQ_OK) {
        return false;
    }
    json_t *root = json_loads (text, 0, NULL);
    llmq_free (text);
    json_t *d = json_object_get (json_object_get (root, "deployments"), dep);
    json_t *a = json_object_get (d, f1), *b = json_object_get (d, f2);
    bool ok = json_is_integer (a) && json_is_integer (b);
    if (ok) {
        *v1 = (long) json_integer_value (a);
        *v2 = (long) json_integer_value (b);
    }
    json_decref (root);
    return ok;
}

static llmq_job
s_job (const char *group, const char *body)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = group;
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    return j;
}

/*  Submit one job and wait for its end. */
static llmq_result *
s_run (llmq *c, const char *group, const char *prompt)
{
    char *body = s_body (prompt, 0);
    llmq_job j = s_job (group, body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    free (body);
    return r;
}

/*  Submit n jobs in one message (all stored in one turn, so that they are
    dispatched together); bodies[i], or bodies[0] for all if one_body. */
static void
s_submit_n (llmq *c, const char *group, char **bodies, bool one_body, size_t n,
            unsigned max_attempts, int64_t deadline_ms, uint64_t *ids)
{
    llmq_job *jobs = (llmq_job *) calloc (n, sizeof *jobs);
    ck_assert_ptr_nonnull (jobs);
    for (size_t i = 0; i < n; i++) {
        jobs[i] = s_job (group, bodies[one_body ? 0 : i]);
        jobs[i].max_attempts = max_attempts;
        jobs[i].deadline_ms = deadline_ms;
    }
    ck_assert_int_eq (llmq_submit_many (c, jobs, n, ids, 10000), LLMQ_OK);
    free (jobs);
}

/*  The final results of n jobs, all within timeout_ms. */
static llmq_result **
s_wait_all (llmq *c, const uint64_t *ids, size_t n, int timeout_ms)
{
    llmq_result **rs = (llmq_result **) calloc (n, sizeof *rs);
    ck_assert_ptr_nonnull (rs);
    uint64_t end = s_mono_ms () + (uint64_t) timeout_ms;
    for (size_t i = 0; i < n; i++) {
        uint64_t now = s_mono_ms ();
        int left = now < end ? (int) (end - now) : 1;
        int rc = llmq_wait (c, ids[i], left, &rs[i]);
        ck_assert_msg (rc == LLMQ_OK, "job %zu of %zu (id %llu) did not end in time: %s", i, n,
                       (unsigned long long) ids[i], llmq_strerror (rc));
    }
    return rs;
}

/*  How many results ended `state` (and, if dep, on deployment dep). */
static size_t
s_count (llmq_result **rs, size_t n, int state, const char *dep)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        k += rs[i]->state == state && (!dep || (rs[i]->deployment && strcmp (rs[i]->deployment, dep) == 0));
    }
    return k;
}

static void
s_free_all (llmq_result **rs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        llmq_result_free (&rs[i]);
    }
    free (rs);
}

/*  Most arrivals in any window [t, t + window_ms) of the sorted times t. */
static size_t
s_max_in_window (const int64_t *t, size_t n, int64_t window_ms)
{
    size_t best = 0;
    for (size_t i = 0, j = 0; i < n; i++) {
        while (t[i] - t[j] >= window_ms) {
            j++;
        }
        best = i - j + 1 > best ? i - j + 1 : best;
    }
    return best;
}

/*  Most tokens in any window [t, t + window_ms). */
static int64_t
s_max_tokens_in_window (const int64_t *t, const int64_t *tok, size_t n, int64_t window_ms)
{
    int64_t best = 0, sum = 0;
    for (size_t i = 0, j = 0; i < n; i++) {
        sum += tok[i];
        while (t[i] - t[j] >= window_ms) {
            sum -= tok[j++];
        }
        best = sum > best ? sum : best;
    }
    return best;
}

/* ------------------------------------------------------------------------
   1. A deployment that always fails: open, fail over, probe, close
   ------------------------------------------------------------------------ */

#define T1_FAILURES  3
#define T1_PROBES    2
#define T1_SUCCESSES 3           /* more than T1_PROBES: a probe must follow a success */

START_TEST (test_breaker_opens_fails_over_probes_and_closes)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    h_mock_t bad, good;
    ck_assert_int_eq (h_start_mock_extra (h, &bad, "mock-flaky", NULL), 0);
    ck_assert_int_eq (h_start_mock_extra (h, &good, "mock-steady", NULL), 0);
    /*  "order": flaky is always tried first while its breaker lets it. */
    char keys[512];
    snprintf (keys, sizeof keys,
              "order = 0\n"
              "breaker_failures = %d\n"
              "breaker_min_calls = %d\n"
              "breaker_window = 60s\n"
              "breaker_open = 2s\n"
              "breaker_probes = %d\n"
              "breaker_successes = %d\n"
              "retry_budget_min = 1000\n",
              T1_FAILURES, T1_FAILURES, T1_PROBES, T1_SUCCESSES);
    s_deployment (h, "flaky", bad.port, keys);
    s_deployment (h, "steady", good.port, "order = 1\nretry_budget_min = 1000\n");
    s_conf (h, "\n[group chaos]\ndeployments = flaky, steady\nstrategy = order\n");
    ck_assert_int_eq (h_mock_call_at (bad.port, "POST", "/mock/faults", "{\"kind\":500,\"count\":-1}"), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 8, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    char state[32];

    /*  Phase 1: one job at a time, so calls to flaky are sequential and
        each outcome is in before the next call is granted. */
    for (int i = 0; i < 10; i++) {
        char prompt[32];
        snprintf (prompt, sizeof prompt, "job %d", i);
        llmq_result *r = s_run (c, "chaos", prompt);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        ck_assert_str_eq (r->deployment, "steady");
        /* the first ones failed on flaky and went over; then flaky is open */
        ck_assert_uint_eq (r->attempts, i < T1_FAILURES ? 2 : 1);
        llmq_result_free (&r);
        if (i == T1_FAILURES - 1) {
            ck_assert_str_eq (s_breaker (c, "flaky", state, sizeof state), "open");
        }
    }
    ck_assert_int_eq (h_mock_stat_at (bad.port, "requests"), T1_FAILURES);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "by_status.500"), T1_FAILURES);
    ck_assert_int_eq (h_mock_stat_at (good.port, "requests"), 10);
    ck_assert_str_eq (s_breaker (c, "flaky", state, sizeof state), "open");
    ck_assert_int_eq (s_dep (c, "flaky", "probes"), 0);
    ck_assert_int_eq (s_dep (c, "flaky", "failures"), T1_FAILURES);
    ck_assert_int_eq (s_dep (c, "steady", "calls"), 10);
    long open1 = s_dep (c, "flaky", "open_until_ms");
    ck_assert_int_gt (open1, 0);

    /*  Phase 2: past breaker_open, probes; flaky still fails. Its answers
        now take 400 ms, so the probes of one round overlap whoever sends
        them (the jobs below, or the broker's own health probes), and the
        mock's max_in_flight shows how many went at once. */
    ck_assert_int_eq (h_mock_call_at (bad.port, "POST", "/mock/config", "{\"latency_ms\":400}"), 0);
    ck_assert_int_eq (h_mock_call_at (bad.port, "POST", "/mock/reset", "{}"), 0);
    bool ok;
    T_UNTIL (ok, !s_breaker_is (c, "flaky", "open") || s_dep (c, "flaky", "probes") > 0, 6000);
    ck_assert_msg (ok, "the breaker did not leave open after breaker_open");
    uint64_t ids[8];
    char *body = s_body ("probe round", 0);
    s_submit_n (c, "chaos", &body, true, 8, 0, 0, ids);
    llmq_result **rs = s_wait_all (c, ids, 8, T_WAIT);
    ck_assert_uint_eq (s_count (rs, 8, LLMQ_STATE_DONE, "steady"), 8);
    s_free_all (rs, 8);
    ck_assert (h_wait_stat (c, "deployments.flaky.in_flight", 0, T_WAIT));
    /*  The first failed probe opened it again; the other's late outcome
        changes nothing, and nothing more was let through. */
    ck_assert_int_eq (s_dep (c, "flaky", "probes"), T1_PROBES);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "requests"), T1_PROBES);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "max_in_flight"), T1_PROBES);
    ck_assert_str_eq (s_breaker (c, "flaky", state, sizeof state), "open");
    long open2 = s_dep (c, "flaky", "open_until_ms");
    ck_assert_int_ge (open2, open1 + 2000);     /* opened again, for breaker_open */

    /*  Phase 3: flaky heals; the next round's probes succeed and close it.
        Jobs come in rounds of 4 until it is closed (at most 10 rounds):
        each round's first jobs take the free probe slots. */
    ck_assert_int_eq (h_mock_call_at (bad.port, "DELETE", "/mock/faults", NULL), 0);
    T_UNTIL (ok, !s_breaker_is (c, "flaky", "open") || s_dep (c, "flaky", "probes") > T1_PROBES, 6000);
    ck_assert_msg (ok, "the breaker did not leave open after its second breaker_open");
    int rounds = 0;
    while (rounds < 10 && !s_breaker_is (c, "flaky", "closed")) {
        s_submit_n (c, "chaos", &body, true, 4, 0, 0, ids);
        rs = s_wait_all (c, ids, 4, T_WAIT);
        ck_assert_uint_eq (s_count (rs, 4, LLMQ_STATE_DONE, NULL), 4);
        s_free_all (rs, 4);
        rounds++;
    }
    ck_assert (h_wait_stat (c, "deployments.flaky.in_flight", 0, T_WAIT));
    /*  Closed after breaker_successes good probes. At most breaker_probes
        at once; a probe slot that a success frees may take one more probe
        before the last success is in (the broker's health probes do), so
        this round made from breaker_successes to breaker_probes +
        breaker_successes - 1 probes, and every call to flaky was one. */
    ck_assert_str_eq (s_breaker (c, "flaky", state, sizeof state), "closed");
    long probes3 = s_dep (c, "flaky", "probes") - T1_PROBES;
    ck_assert_int_ge (probes3, T1_SUCCESSES);
    ck_assert_int_le (probes3, T1_PROBES + T1_SUCCESSES - 1);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "requests"), T1_PROBES + probes3);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "by_status.200"), probes3);
    ck_assert_int_le (h_mock_stat_at (bad.port, "max_in_flight"), T1_PROBES);
    ck_assert_int_eq (s_dep (c, "flaky", "calls"), T1_FAILURES + T1_PROBES + probes3);

    printf ("chaos breaker: flaky got %d failing calls, then opened; %d failing probes (reopened "
            "until %ld ms after the first open_until); %ld good probes in %d rounds of jobs, closed; "
            "steady served %ld calls\n",
            T1_FAILURES, T1_PROBES, open2 - open1, probes3, rounds, h_mock_stat_at (good.port, "requests"));
    /*  Closed: flaky takes the next job again. */
    llmq_result *r = s_run (c, "chaos", "healed");
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->deployment, "flaky");
    ck_assert_uint_eq (r->attempts, 1);
    llmq_result_free (&r);
    ck_assert_int_eq (h_stat (c, "totals.done"), 10 + 8 + 4 * rounds + 1);
    ck_assert_int_eq (h_stat (c, "totals.failed"), 0);
    ck_assert_int_eq (h_stat (c, "totals.dead"), 0);
    free (body);
    llmq_close (&c);
    h_stop (&bad.proc, SIGTERM);
    h_stop (&good.proc, SIGTERM);
    h_destroy (&h);
}
END_TEST

/* ------------------------------------------------------------------------
   2. 429 with Retry-After: the deployment pauses
   ------------------------------------------------------------------------ */

START_TEST (test_rate_limited_pauses_for_retry_after)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    s_deployment (h, "limited", h->mock_port, "retry_budget_min = 1000\n");
    s_conf (h, "\n[group rl]\ndeployments = limited\n");
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 8, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":429,\"retry_after\":2,\"count\":1}"), 0);

    uint64_t ids[6];
    char *body = s_body ("after the pause", 0);
    s_submit_n (c, "rl", &body, true, 1, 0, 0, ids);
    ck_assert (h_wait_mock_stat (h, "by_status.429", 1, T_WAIT));
    bool ok;
    T_UNTIL (ok, s_dep (c, "limited", "paused_until_ms") > 0, T_WAIT);
    ck_assert (ok);
    long paused_until = s_dep (c, "limited", "paused_until_ms");
    /*  More work while it is paused: it must wait too. */
    s_submit_n (c, "rl", &body, true, 5, 0, 0, ids + 1);
    llmq_result **rs = s_wait_all (c, ids, 6, T_WAIT);
    ck_assert_uint_eq (s_count (rs, 6, LLMQ_STATE_DONE, "limited"), 6);
    ck_assert_uint_eq (rs[0]->attempts, 2);
    ck_assert_uint_ge (rs[0]->finished_us - rs[0]->enqueued_us, 2000000);
    for (size_t i = 1; i < 6; i++) {
        ck_assert_uint_eq (rs[i]->attempts, 1);
    }
    s_free_all (rs, 6);

    int64_t *t = NULL;
    long n = h_mock_requests_at (h->mock_port, 0, &t, NULL);
    ck_assert_int_eq (n, 7);
    ck_assert_int_eq (h_mock_stat (h, "by_status.429"), 1);
    ck_assert_int_eq (h_mock_stat (h, "by_status.200"), 6);
    /*  The 429 came first; nothing arrived in the 2 s after it. */
    for (long i = 1; i < n; i++) {
        ck_assert_msg (t[i] >= t[0] + 2000, "request %ld arrived %lld ms after the 429", i,
                       (long long) (t[i] - t[0]));
    }
    ck_assert_int_ge (paused_until, t[0] + 2000);
    ck_assert_int_le (paused_until, t[0] + 2000 + 1000);
    printf ("chaos 429: pause %ld ms after the 429's arrival; next arrival at +%lld ms\n",
            paused_until - (long) t[0], (long long) (t[1] - t[0]));
    free (t);

    /*  The mock's 429 also says x-ratelimit-remaining-requests: 0 until
        the same time, which pauses on its own. A 529 (overloaded, rate
        limited too) carries no exhausted quota: its Retry-After alone
        must pause the deployment. */
    ck_assert_int_eq (h_mock_post (h, "/mock/reset", "{}"), 0);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":529,\"retry_after\":2,\"count\":1}"), 0);
    s_submit_n (c, "rl", &body, true, 1, 0, 0, ids);
    ck_assert (h_wait_mock_stat (h, "by_status.529", 1, T_WAIT));
    T_UNTIL (ok, s_dep (c, "limited", "paused_until_ms") > 0, T_WAIT);
    ck_assert (ok);
    s_submit_n (c, "rl", &body, true, 5, 0, 0, ids + 1);
    rs = s_wait_all (c, ids, 6, T_WAIT);
    ck_assert_uint_eq (s_count (rs, 6, LLMQ_STATE_DONE, "limited"), 6);
    ck_assert_uint_eq (rs[0]->attempts, 2);
    s_free_all (rs, 6);
    n = h_mock_requests_at (h->mock_port, 0, &t, NULL);
    ck_assert_int_eq (n, 7);
    for (long i = 1; i < n; i++) {
        ck_assert_msg (t[i] >= t[0] + 2000, "request %ld arrived %lld ms after the 529", i,
                       (long long) (t[i] - t[0]));
    }
    printf ("chaos 529: next arrival %lld ms after the 529's\n", (long long) (t[1] - t[0]));
    free (t);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/* ------------------------------------------------------------------------
   3. Rate limits against many workers
   ------------------------------------------------------------------------ */

#define T3_WINDOW   500
#define T3_RPM      40
#define T3_JOBS     240
#define T3_TPM      600
#define T3_TJOBS    200

static harness_t *
s_rate_start (const char *keys)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    s_deployment (h, "metered", h->mock_port, keys);
    s_conf (h, "\n[group metered]\ndeployments = metered\n");
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    for (int i = 0; i < 4; i++) {
        ck_assert_int_ge (h_start_worker (h, 64, i + 1), 0);
    }
    return h;
}

START_TEST (test_rpm_holds_in_every_window)
{
    char keys[256];
    snprintf (keys, sizeof keys, "rpm = %d\nrate_window = %dms\nrate_margin = 100ms\n", T3_RPM, T3_WINDOW);
    harness_t *h = s_rate_start (keys);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    uint64_t *ids = (uint64_t *) calloc (T3_JOBS, sizeof *ids);
    char *body = s_body ("one request among many", 0);
    uint64_t t0 = s_mono_ms ();
    s_submit_n (c, "metered", &body, true, T3_JOBS, 0, 0, ids);
    llmq_result **rs = s_wait_all (c, ids, T3_JOBS, 30000);
    uint64_t took = s_mono_ms () - t0;
    ck_assert_uint_eq (s_count (rs, T3_JOBS, LLMQ_STATE_DONE, "metered"), T3_JOBS);
    s_free_all (rs, T3_JOBS);

    int64_t *t = NULL;
    long n = h_mock_requests_at (h->mock_port, 0, &t, NULL);
    ck_assert_int_eq (n, T3_JOBS);
    size_t most = s_max_in_window (t, (size_t) n, T3_WINDOW);
    printf ("chaos rpm: %d jobs in %llu ms; most arrivals in a %d ms window: %zu (limit %d)\n",
            T3_JOBS, (unsigned long long) took, T3_WINDOW, most, T3_RPM);
    ck_assert_uint_le (most, T3_RPM);
    ck_assert_uint_eq (most, T3_RPM);       /* and the limit was reached */
    /*  At most rpm per window + margin: the first rpm at once, then rpm
        per 600 ms. */
    ck_assert_uint_ge (took, (T3_JOBS / T3_RPM - 1) * T3_WINDOW);
    ck_assert_uint_lt (took, 20000);
    free (t);
    free (ids);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_tpm_holds_in_every_window)
{
    char keys[256];
    snprintf (keys, sizeof keys, "tpm = %d\nrate_window = %dms\nrate_margin = 100ms\n", T3_TPM, T3_WINDOW);
    harness_t *h = s_rate_start (keys);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    /*  Job i: p = 1 + i % 12 words; the mock answers "mock reply: " and
        those p words, so it uses p + (p + 2) tokens. max_tokens = p + 2
        does not cut that reply, and the broker's estimate (body bytes / 4
        + max_tokens) is above the use, as its TPM check needs. */
    char **bodies = (char **) calloc (T3_TJOBS, sizeof *bodies);
    uint64_t *ids = (uint64_t *) calloc (T3_TJOBS, sizeof *ids);
    int64_t expect_tokens = 0;
    for (int i = 0; i < T3_TJOBS; i++) {
        int p = 1 + i % 12;
        char prompt[128] = "";
        for (int k = 0; k < p; k++) {
            strcat (prompt, k ? " word" : "word");
        }
        bodies[i] = s_body (prompt, p + 2);
        expect_tokens += 2 * p + 2;
    }
    uint64_t t0 = s_mono_ms ();
    s_submit_n (c, "metered", bodies, false, T3_TJOBS, 0, 0, ids);
    llmq_result **rs = s_wait_all (c, ids, T3_TJOBS, 30000);
    uint64_t took = s_mono_ms () - t0;
    ck_assert_uint_eq (s_count (rs, T3_TJOBS, LLMQ_STATE_DONE, "metered"), T3_TJOBS);
    int64_t used = 0;
    for (int i = 0; i < T3_TJOBS; i++) {
        int p = 1 + i % 12;
        ck_assert_uint_eq (rs[i]->prompt_tokens, (unsigned) p);
        ck_assert_uint_eq (rs[i]->completion_tokens, (unsigned) p + 2);
        used += rs[i]->prompt_tokens + rs[i]->completion_tokens;
    }
    s_free_all (rs, T3_TJOBS);
    ck_assert_int_eq (used, expect_tokens);

    int64_t *t = NULL, *tok = NULL;
    long n = h_mock_requests_at (h->mock_port, 0, &t, &tok);
    ck_assert_int_eq (n, T3_TJOBS);
    int64_t sum = 0;
    for (long i = 0; i < n; i++) {
        sum += tok[i];
    }
    ck_assert_int_eq (sum, expect_tokens);  /* the mock counted what the jobs used */
    int64_t most = s_max_tokens_in_window (t, tok, (size_t) n, T3_WINDOW);
    printf ("chaos tpm: %d jobs, %lld tokens in %llu ms; most tokens in a %d ms window: %lld (limit %d)\n",
            T3_TJOBS, (long long) sum, (unsigned long long) took, T3_WINDOW, (long long) most, T3_TPM);
    ck_assert_int_le (most, T3_TPM);
    ck_assert_int_ge (most, T3_TPM / 2);    /* the limit, not something else, held it back */
    ck_assert_uint_ge (took, (uint64_t) (expect_tokens / T3_TPM - 1) * T3_WINDOW);
    ck_assert_uint_lt (took, 20000);
    free (t);
    free (tok);

    /*  The estimate gives way to the usage reported: alone in an empty
        window, a job of 12 words (estimate body / 4 + 14, use 26) leaves
        26 tokens in it. Read with its request count in one snapshot; if
        the window slid past it first (a slow machine), again. */
    bool checked = false;
    for (int attempt = 0; attempt < 3 && !checked; attempt++) {
        bool ok;
        T_UNTIL (ok, s_dep (c, "metered", "window_requests") == 0, 5000);
        ck_assert (ok);
        uint64_t id;
        s_submit_n (c, "metered", &bodies[11], true, 1, 0, 0, &id);
        rs = s_wait_all (c, &id, 1, T_WAIT);
        ck_assert_int_eq (rs[0]->state, LLMQ_STATE_DONE);
        s_free_all (rs, 1);
        long wreq = -1, wtok = -1;
        ck_assert (s_dep_pair (c, "metered", "window_requests", &wreq, "window_tokens", &wtok));
        if (wreq == 1) {
            ck_assert_int_eq (wtok, 2 * 12 + 2);
            checked = true;
        }
    }
    ck_assert (checked);
    for (int i = 0; i < T3_TJOBS; i++) {
        free (bodies[i]);
    }
    free (bodies);
    free (ids);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/* ------------------------------------------------------------------------
   4. A deployment that hangs: the adaptive timeout
   ------------------------------------------------------------------------ */

START_TEST (test_adaptive_timeout_ends_a_hang)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    h_mock_t quick, backup;
    /*  20 ms per answer: latencies are measured in whole ms, and a sample
        of 0 ms would not count. */
    const char *slow20[] = { "--latency-ms", "20", NULL };
    ck_assert_int_eq (h_start_mock_extra (h, &quick, "mock-quick", slow20), 0);
    ck_assert_int_eq (h_start_mock_extra (h, &backup, "mock-backup", NULL), 0);
    s_deployment (h, "quick", quick.port, "order = 0\ntimeout = 30s\ntimeout_min = 200ms\n");
    s_deployment (h, "backup", backup.port, "order = 1\ntimeout = 30s\ntimeout_min = 200ms\n");
    s_conf (h, "\n[group hang]\ndeployments = quick, backup\nstrategy = order\n");
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 8, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    /*  Before 20 successes: the configured timeout. */
    ck_assert_int_eq (s_dep (c, "quick", "timeout_ms"), 30000);

    uint64_t ids[25];
    char *body = s_body ("fast", 0);
    s_submit_n (c, "hang", &body, true, 25, 0, 0, ids);
    llmq_result **rs = s_wait_all (c, ids, 25, T_WAIT);
    ck_assert_uint_eq (s_count (rs, 25, LLMQ_STATE_DONE, "quick"), 25);
    s_free_all (rs, 25);
    long timeout = s_dep (c, "quick", "timeout_ms");
    long p95 = s_dep (c, "quick", "p95_ms");
    printf ("chaos hang: after 25 calls p95 %ld ms, adaptive timeout %ld ms\n", p95, timeout);
    ck_assert_int_ge (timeout, 200);            /* timeout_min */
    ck_assert_int_lt (timeout, 1000);
    ck_assert_int_eq (timeout, p95 * 3 / 2 > 200 ? p95 * 3 / 2 : 200);

    /*  Now quick hangs. */
    ck_assert_int_eq (h_mock_call_at (quick.port, "POST", "/mock/faults", "{\"kind\":\"hang\",\"count\":-1}"), 0);
    uint64_t t0 = s_mono_ms ();
    llmq_result *r = s_run (c, "hang", "stuck");
    uint64_t took = s_mono_ms () - t0;
    printf ("chaos hang: the job took %llu ms (%llu ms in the broker), attempts %u, on %s\n",
            (unsigned long long) took, (unsigned long long) ((r->finished_us - r->enqueued_us) / 1000),
            r->attempts, r->deployment);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->deployment, "backup");
    ck_assert_uint_eq (r->attempts, 2);
    ck_assert_uint_ge (r->finished_us - r->enqueued_us, (uint64_t) timeout * 1000);
    ck_assert_uint_lt (r->finished_us - r->enqueued_us, 10000000);
    ck_assert_uint_lt (took, 10000);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat_at (quick.port, "requests"), 26);
    ck_assert_int_eq (h_mock_stat_at (backup.port, "requests"), 1);
    ck_assert_int_eq (s_dep (c, "quick", "failures"), 1);
    free (body);
    llmq_close (&c);
    h_stop (&quick.proc, SIGTERM);
    h_stop (&backup.proc, SIGTERM);
    h_destroy (&h);
}
END_TEST

/* ------------------------------------------------------------------------
   5. Every deployment down: jobs wait, then expire at their deadline
   ------------------------------------------------------------------------ */

#define T5_JOBS     10
#define T5_DEADLINE 1500

START_TEST (test_all_open_jobs_wait_then_expire)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    const char *keys = "breaker_failures = 2\nbreaker_min_calls = 2\nbreaker_open = 60s\n"
                       "retry_budget_min = 1000\n";
    s_deployment (h, "down1", h->mock_port, keys);
    s_deployment (h, "down2", h->mock_port, keys);
    s_conf (h, "\n[group down]\ndeployments = down1, down2\n");
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":-1}"), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 8, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);

    /*  Jobs of two attempts, one at a time, until both breakers are open:
        each attempt fails on a deployment of its own (a retry avoids the
        one that failed), so two jobs open both. */
    char *body = s_body ("into the void", 0);
    uint64_t trig[6];
    int ntrig = 0;
    while (ntrig < 6 && !(s_breaker_is (c, "down1", "open") && s_breaker_is (c, "down2", "open"))) {
        s_submit_n (c, "down", &body, true, 1, 2, 0, &trig[ntrig]);
        llmq_result **rs = s_wait_all (c, &trig[ntrig], 1, T_WAIT);
        ck_assert_int_eq (rs[0]->state, LLMQ_STATE_DEAD);
        ck_assert_int_eq (rs[0]->error_class, T_EC_SERVER);
        ck_assert_uint_eq (rs[0]->attempts, 2);
        s_free_all (rs, 1);
        ntrig++;
    }
    ck_assert_int_eq (ntrig, 2);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 4);
    long until1 = s_dep (c, "down1", "open_until_ms");
    long until2 = s_dep (c, "down2", "open_until_ms");
    long first = until1 < until2 ? until1 : until2;
    char hm[16];
    time_t secs = (time_t) (first / 1000);
    struct tm tm;
    localtime_r (&secs, &tm);
    strftime (hm, sizeof hm, "%H:%M:%S", &tm);

    uint64_t ids[T5_JOBS];
    s_submit_n (c, "down", &body, true, T5_JOBS, 0, T5_DEADLINE, ids);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_status (c, ids[0], 5000, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_QUEUED);
    ck_assert_ptr_nonnull (r->error);
    char expect[128];
    snprintf (expect, sizeof expect, "waiting: all deployments of group down open until %s", hm);
    printf ("chaos down: STATUS says \"%s\"\n", r->error);
    ck_assert_str_eq (r->error, expect);
    llmq_result_free (&r);

    llmq_result **rs = s_wait_all (c, ids, T5_JOBS, T_WAIT);
    ck_assert_uint_eq (s_count (rs, T5_JOBS, LLMQ_STATE_EXPIRED, NULL), T5_JOBS);
    for (size_t i = 0; i < T5_JOBS; i++) {
        uint64_t waited = rs[i]->finished_us - rs[i]->enqueued_us;
        ck_assert_uint_ge (waited, T5_DEADLINE * 1000);
        ck_assert_uint_lt (waited, (T5_DEADLINE + 2000) * 1000);
        ck_assert_ptr_nonnull (rs[i]->error);
        ck_assert_ptr_nonnull (strstr (rs[i]->error, "deadline"));
        ck_assert_uint_eq (rs[i]->attempts, 0);
        if (i == 0) {
            printf ("chaos down: expired after %llu ms: \"%s\"\n",
                    (unsigned long long) (waited / 1000), rs[i]->error);
        }
    }
    s_free_all (rs, T5_JOBS);
    /*  Every id accounted for, nothing reached the providers meanwhile. */
    ck_assert_int_eq (h_stat (c, "totals.submitted"), ntrig + T5_JOBS);
    ck_assert_int_eq (h_stat (c, "totals.expired"), T5_JOBS);
    ck_assert_int_eq (h_stat (c, "totals.dead"), ntrig);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 4);
    ck_assert_str_eq (s_breaker (c, "down1", expect, sizeof expect), "open");
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/* ------------------------------------------------------------------------
   6. 100 % failures: the retry budget bounds the calls
   ------------------------------------------------------------------------ */

#define T6_JOBS     200
#define T6_PCT      20
#define T6_MIN      5
#define T6_ATTEMPTS 5

START_TEST (test_retry_budget_bounds_calls)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    char keys[256];
    snprintf (keys, sizeof keys, "breaker_failures = 1000000\nretry_budget = %d\nretry_budget_min = %d\n",
              T6_PCT, T6_MIN);
    s_deployment (h, "doomed", h->mock_port, keys);
    s_conf (h, "\n[group doomed]\ndeployments = doomed\n");
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":-1}"), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 64, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);

    uint64_t ids[T6_JOBS];
    char *body = s_body ("fails every time", 0);
    s_submit_n (c, "doomed", &body, true, T6_JOBS, T6_ATTEMPTS, 0, ids);
    llmq_result **rs = s_wait_all (c, ids, T6_JOBS, 30000);

    /*  The rule: a retry is allowed while retries + 1 <= max(min, calls *
        pct / 100) over the last minute, calls counting retries. So all R
        retries satisfy R <= max(min, (J + R) * pct / 100); the largest
        such R bounds them. */
    long bound = 0;
    for (long r = 0; r <= (long) T6_JOBS * (T6_ATTEMPTS - 1); r++) {
        long allowed = (T6_JOBS + r) * T6_PCT / 100;
        if (r <= (allowed > T6_MIN ? allowed : T6_MIN)) {
            bound = r;
        }
    }
    ck_assert_int_eq (bound, T6_JOBS * T6_PCT / (100 - T6_PCT));     /* 50 */
    size_t refused = 0, dead = 0;
    long attempts = 0;
    const char *why = "(not retried: the retry budget of deployment doomed is spent)";
    for (size_t i = 0; i < T6_JOBS; i++) {
        attempts += rs[i]->attempts;
        ck_assert_int_eq (rs[i]->error_class, T_EC_SERVER);
        if (rs[i]->state == LLMQ_STATE_FAILED) {
            ck_assert_ptr_nonnull (rs[i]->error);
            ck_assert_msg (strstr (rs[i]->error, why), "job %zu: %s", i, rs[i]->error);
            refused++;
        }
        else {
            ck_assert_int_eq (rs[i]->state, LLMQ_STATE_DEAD);
            ck_assert_uint_eq (rs[i]->attempts, T6_ATTEMPTS);
            dead++;
        }
    }
    s_free_all (rs, T6_JOBS);
    long calls = h_mock_stat (h, "requests");
    long retries = s_dep (c, "doomed", "retries");
    long budget_refused = h_stat (c, "totals.retry_budget_refused");
    printf ("chaos budget: %d jobs, %ld provider calls (%ld retries, bound %ld), %zu refused, %zu dead\n",
            T6_JOBS, calls, retries, bound, refused, dead);
    ck_assert_int_eq (refused + dead, T6_JOBS);
    ck_assert_int_eq (calls, attempts);
    ck_assert_int_eq (calls, s_dep (c, "doomed", "calls"));
    ck_assert_int_eq (calls, T6_JOBS + retries);
    ck_assert_int_le (retries, bound);
    ck_assert_int_le (calls, T6_JOBS + bound);
    ck_assert_int_ge (retries, T6_MIN);
    ck_assert_int_gt (budget_refused, 0);
    ck_assert_int_eq (budget_refused, (long) refused);
    ck_assert_int_eq (s_dep (c, "doomed", "retries_refused"), (long) refused);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/* ------------------------------------------------------------------------
   7. kill -9 of the broker while a breaker is open
   ------------------------------------------------------------------------ */

START_TEST (test_open_breaker_survives_kill9)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    h_mock_t bad, good;
    ck_assert_int_eq (h_start_mock_extra (h, &bad, "mock-fragile", NULL), 0);
    ck_assert_int_eq (h_start_mock_extra (h, &good, "mock-sturdy", NULL), 0);
    s_deployment (h, "fragile", bad.port,
                  "order = 0\nbreaker_failures = 3\nbreaker_min_calls = 3\nbreaker_open = 60s\n"
                  "retry_budget_min = 1000\n");
    s_deployment (h, "sturdy", good.port, "order = 1\n");
    s_conf (h, "\n[group persist]\ndeployments = fragile, sturdy\nstrategy = order\n");
    ck_assert_int_eq (h_mock_call_at (bad.port, "POST", "/mock/faults", "{\"kind\":500,\"count\":-1}"), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 8, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    for (int i = 0; i < 3; i++) {
        llmq_result *r = s_run (c, "persist", "before the crash");
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        ck_assert_str_eq (r->deployment, "sturdy");
        ck_assert_uint_eq (r->attempts, 2);
        llmq_result_free (&r);
    }
    ck_assert (s_breaker_is (c, "fragile", "open"));
    long until = s_dep (c, "fragile", "open_until_ms");
    ck_assert_int_gt (until, 0);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "requests"), 3);
    llmq_close (&c);

    /*  The stats answer came after the commit that holds the open state. */
    ck_assert_int_eq (h_stop (&h->broker, SIGKILL), 128 + SIGKILL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    c = h_client (h);
    ck_assert_ptr_nonnull (c);
    ck_assert (s_breaker_is (c, "fragile", "open"));
    ck_assert_int_eq (s_dep (c, "fragile", "open_until_ms"), until);
    ck_assert_int_eq (s_dep (c, "fragile", "failures"), 3);
    ck_assert_int_eq (s_dep (c, "fragile", "calls"), 3);
    printf ("chaos kill9: fragile still open until %ld after the restart\n", until);
    /*  The worker finds the new broker by itself. */
    ck_assert (h_wait_stat (c, "worker_count", 1, T_WAIT));
    uint64_t ids[5];
    char *body = s_body ("after the crash", 0);
    s_submit_n (c, "persist", &body, true, 5, 0, 0, ids);
    llmq_result **rs = s_wait_all (c, ids, 5, T_WAIT);
    ck_assert_uint_eq (s_count (rs, 5, LLMQ_STATE_DONE, "sturdy"), 5);
    for (size_t i = 0; i < 5; i++) {
        ck_assert_uint_eq (rs[i]->attempts, 1);
    }
    s_free_all (rs, 5);
    ck_assert_int_eq (h_mock_stat_at (bad.port, "requests"), 3);
    ck_assert_int_eq (h_mock_stat_at (good.port, "requests"), 3 + 5);
    ck_assert (s_breaker_is (c, "fragile", "open"));
    free (body);
    llmq_close (&c);
    h_stop (&bad.proc, SIGTERM);
    h_stop (&good.proc, SIGTERM);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("chaos");
    TCase *tc = tcase_create ("router");
    tcase_set_timeout (tc, 90);
    tcase_add_test (tc, test_breaker_opens_fails_over_probes_and_closes);
    tcase_add_test (tc, test_rate_limited_pauses_for_retry_after);
    tcase_add_test (tc, test_rpm_holds_in_every_window);
    tcase_add_test (tc, test_tpm_holds_in_every_window);
    tcase_add_test (tc, test_adaptive_timeout_ends_a_hang);
    tcase_add_test (tc, test_all_open_jobs_wait_then_expire);
    tcase_add_test (tc, test_retry_budget_bounds_calls);
    tcase_add_test (tc, test_open_breaker_survives_kill9);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    setvbuf (stdout, NULL, _IONBF, 0);
    return h_run_suite (s_suite ());
}
