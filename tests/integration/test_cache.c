/*  test_cache.c -- the response cache end to end: a real broker, a worker
    and the mock provider on 127.0.0.1, driven through the public client
    library. The mock counts the requests it gets, so a hit is seen as a
    request that never reached it.

    Each test starts what it needs in its own scratch directory and stops
    it by PID. Waits are on replies, with timeouts; the TTL test polls for
    the condition itself (a resubmit that misses), never sleeps for it.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */

/*  The config of these tests: temperature 0 is cached by itself. */
#define S_CONF "\n[cache]\nauto_temperature_zero = on\n"

static char *
s_body (const char *prompt, double temperature)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}], s:f}", "messages", "role", "user", "content", prompt,
                           "temperature", temperature);
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
}

static llmq_job
s_job (const char *body, int64_t cache_ttl_ms)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "gpt";
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    j.cache_ttl_ms = cache_ttl_ms;
    return j;
}

/*  Submit, wait for the result; the caller frees it. */
static llmq_result *
s_run (llmq *c, const llmq_job *j)
{
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_uint_eq (r->id, id);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    return r;
}

static uint64_t
s_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/*  The broker's "cache" statistics, as a JSON object (decref it). */
static json_t *
s_cache_stats (llmq *c)
{
    char *text = NULL;
    ck_assert_int_eq (llmq_stats (c, &text, 5000), LLMQ_OK);
    json_t *root = json_loads (text, 0, NULL);
    llmq_free (text);
    ck_assert_ptr_nonnull (root);
    json_t *cache = json_incref (json_object_get (root, "cache"));
    json_decref (root);
    ck_assert_ptr_nonnull (cache);
    return cache;
}

static long
s_cstat (llmq *c, const char *key)
{
    json_t *cache = s_cache_stats (c);
    long v = (long) json_integer_value (json_object_get (cache, key));
    json_decref (cache);
    return v;
}

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
    (void) id;
    if (!text) {
        s->in_order = false;        /* a RESET: never for a replay */
        return 0;
    }
    s->in_order &= seq == s->next_seq;
    s->next_seq = seq + 1;
    s->chunks++;
    size_t n = strlen (text);
    ck_assert_uint_lt (s->len + n, sizeof s->text);
    memcpy (s->text + s->len, text, n);
    s->len += n;
    s->text[s->len] = 0;
    return 0;
}

START_TEST (test_hit_skips_the_provider)
{
    harness_t *h = h_new (S_CONF);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    //  A prompt long enough for several replayed chunks, with characters
    //  of 2, 3 and 4 bytes for the splitter to keep whole.
    const char *prompt = "Explain, in one line, what a durable priority queue is — précisément, "
                         "with an example 🙂 and without jargon, for a reader who has never used one.";
    char *body = s_body (prompt, 0.3);
    llmq_job j = s_job (body, 60000);

    //  First: a miss, answered by the mock, and cached.
    llmq_result *first = s_run (c, &j);
    ck_assert_int_eq (first->cached, 0);
    ck_assert_uint_eq (first->attempts, 1);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    ck_assert_ptr_nonnull (strstr (first->content, "durable priority queue"));

    //  Again: a hit. The mock sees nothing; the result says so and is free.
    llmq_result *second = s_run (c, &j);
    ck_assert_int_eq (second->cached, 1);
    ck_assert_uint_eq (second->cost_micro, 0);
    ck_assert_uint_eq (second->attempts, 0);
    ck_assert_uint_ne (second->id, first->id);
    ck_assert_str_eq (second->content, first->content);
    ck_assert_str_eq (second->finish_reason, first->finish_reason);
    ck_assert_str_eq (second->deployment, "mock");
    ck_assert_uint_eq (second->prompt_tokens, first->prompt_tokens);
    ck_assert_uint_eq (second->completion_tokens, first->completion_tokens);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    //  It is a job like any other: STATUS has it, done and cached.
    llmq_result *st = NULL;
    ck_assert_int_eq (llmq_status (c, second->id, 5000, &st), LLMQ_OK);
    ck_assert_int_eq (st->state, LLMQ_STATE_DONE);
    ck_assert_int_eq (st->cached, 1);
    ck_assert_str_eq (st->content, first->content);
    llmq_result_free (&st);

    //  A streamed hit: the cached answer replayed as chunks, in order,
    //  which put together are the answer.
    s_stream_t s = { .in_order = true };
    uint64_t sid = 0;
    llmq_result *streamed = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &sid, T_WAIT, &streamed), LLMQ_OK);
    ck_assert_int_eq (streamed->state, LLMQ_STATE_DONE);
    ck_assert_int_eq (streamed->cached, 1);
    ck_assert (s.in_order);
    ck_assert_uint_ge (s.chunks, 2);
    ck_assert_str_eq (s.text, first->content);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    llmq_result_free (&streamed);

    //  Another temperature is another request: a miss.
    char *warmer = s_body (prompt, 0.9);
    llmq_job w = s_job (warmer, 60000);
    llmq_result *third = s_run (c, &w);
    ck_assert_int_eq (third->cached, 0);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    llmq_result_free (&third);

    //  Stats: 2 hits, 2 misses, 2 entries.
    json_t *cache = s_cache_stats (c);
    ck_assert_int_eq (json_integer_value (json_object_get (cache, "hits")), 2);
    ck_assert_int_eq (json_integer_value (json_object_get (cache, "misses")), 2);
    ck_assert_int_eq (json_integer_value (json_object_get (cache, "entries")), 2);
    ck_assert_int_gt (json_integer_value (json_object_get (cache, "bytes")), 0);
    ck_assert (json_real_value (json_object_get (cache, "hit_rate")) == 0.5);
    json_decref (cache);

    llmq_result_free (&first);
    llmq_result_free (&second);
    free (warmer);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_temperature_zero_by_config)
{
    harness_t *h = h_new (S_CONF);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    //  Temperature 0, nothing asked: cached by the config's rule.
    char *zero = s_body ("what is a lease", 0);
    llmq_job j = s_job (zero, 0);
    llmq_result *r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 0);
    llmq_result_free (&r);
    r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 1);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    //  ... unless the job says never.
    j.cache_ttl_ms = -1;
    r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 0);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    //  Another temperature, nothing asked: never cached.
    char *warm = s_body ("what is a lease", 0.5);
    llmq_job w = s_job (warm, 0);
    for (int i = 0; i < 2; i++) {
        r = s_run (c, &w);
        ck_assert_int_eq (r->cached, 0);
        llmq_result_free (&r);
    }
    ck_assert_int_eq (h_mock_stat (h, "requests"), 4);
    ck_assert_int_eq (s_cstat (c, "hits"), 1);
    ck_assert_int_eq (s_cstat (c, "misses"), 1);     /* jobs that were not candidates do not count */
    free (zero);
    free (warm);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_ttl_expiry)
{
    harness_t *h = h_new (S_CONF);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("short lived", 0.2);
    llmq_job j = s_job (body, 200);
    uint64_t t_first = s_now_ms ();
    llmq_result *r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 0);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    //  Resubmit until one misses: the entry expired. Not before its TTL.
    bool missed = false;
    uint64_t end = s_now_ms () + T_WAIT, t_miss = 0;
    while (!missed && s_now_ms () < end) {
        uint64_t t = s_now_ms ();
        r = s_run (c, &j);
        if (!r->cached) {
            missed = true;
            t_miss = t;
        }
        llmq_result_free (&r);
        if (!missed) {
            h_backoff ();
        }
    }
    ck_assert_msg (missed, "the entry never expired");
    ck_assert_uint_ge (t_miss - t_first, 200);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_survives_a_restart)
{
    harness_t *h = h_new (S_CONF);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("remember me", 0.1);
    llmq_job j = s_job (body, 3600 * 1000);
    llmq_result *r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 0);
    char *content = strdup (r->content);
    llmq_result_free (&r);
    llmq_close (&c);
    //  A clean stop and a start on the same data directory.
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    c = h_client (h);
    ck_assert_int_eq (s_cstat (c, "entries"), 1);
    r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 1);
    ck_assert_str_eq (r->content, content);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    free (content);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_batch_with_hits)
{
    //  A SUBMIT of several jobs, hits and misses together: all get ids, the
    //  batch counts them all, FETCH returns them all.
    harness_t *h = h_new (S_CONF);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *known = s_body ("known question", 0);
    char *fresh = s_body ("fresh question", 0.4);
    llmq_job warm = s_job (known, 0);
    llmq_result *r = s_run (c, &warm);
    llmq_result_free (&r);
    llmq_job jobs[3] = { s_job (known, 0), s_job (fresh, 0), s_job (known, 0) };
    const char *cids[3] = { "a", "b", "c" };
    for (int i = 0; i < 3; i++) {
        jobs[i].batch_id = "mixed";
        jobs[i].custom_id = cids[i];
    }
    uint64_t ids[3];
    ck_assert_int_eq (llmq_submit_many (c, jobs, 3, ids, 5000), LLMQ_OK);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq (llmq_wait (c, ids[i], T_WAIT, &r), LLMQ_OK);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        ck_assert_int_eq (r->cached, i != 1);
        ck_assert_str_eq (r->custom_id, cids[i]);
        llmq_result_free (&r);
    }
    llmq_result **results = NULL;
    size_t n = 0;
    uint64_t next = 0;
    int more = 0;
    char *counts = NULL;
    ck_assert_int_eq (llmq_fetch (c, "mixed", 0, 10, &results, &n, &next, &more, &counts, 5000), LLMQ_OK);
    ck_assert_uint_eq (n, 3);
    ck_assert_int_eq (more, 0);
    ck_assert_ptr_nonnull (strstr (counts, "\"total\":3,\"done\":3,"));
    llmq_free (counts);
    llmq_results_free (results, n);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    free (known);
    free (fresh);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  The breaker state of deployment `name` in the broker's stats. */
static bool
s_breaker_is (llmq *c, const char *name, const char *state)
{
    char *text = NULL;
    if (llmq_stats (c, &text, 5000) != LLMQ_OK) {
        return false;
    }
    json_t *root = json_loads (text, 0, NULL);
    llmq_free (text);
    const char *got = json_string_value (json_object_get (json_object_get (json_object_get (root, "deployments"),
                                                                           name), "breaker"));
    bool same = got && strcmp (got, state) == 0;
    json_decref (root);
    return same;
}

START_TEST (test_stale_when_the_group_is_down)
{
    //  serve_stale: an expired entry is kept as long again as it lived, and
    //  answers (marked degraded) only while every deployment of its group
    //  has its breaker open. Group "frail": one deployment on the mock whose
    //  breaker opens at the first failure and stays open.
    harness_t *h = h_new ("\n[cache]\nserve_stale = on\n");
    char extra[512];
    snprintf (extra, sizeof extra,
              "\n[deployment frail]\nprovider = openai\nmodel = mock-model\n"
              "base_url = http://127.0.0.1:%d/v1\napi_key_env = LLMQ_TEST_KEY\n"
              "breaker_failures = 1\nbreaker_min_calls = 1\nbreaker_open = 10m\n"
              "\n[group frail]\ndeployments = frail\n", h->mock_port);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fputs (extra, f);
    fclose (f);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    char *body = s_body ("still there?", 0.2);
    llmq_job j = s_job (body, 2000);
    j.model = "frail";
    uint64_t t_fill = s_now_ms ();
    llmq_result *r = s_run (c, &j);
    ck_assert_int_eq (r->cached, 0);
    char *content = strdup (r->content);
    llmq_result_free (&r);
    //  The group goes down: one failed call opens its only breaker.
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":-1}"), 0);
    char *other = s_body ("trip the breaker", 0.2);
    llmq_job trip = s_job (other, -1);
    trip.model = "frail";
    uint64_t tid;
    ck_assert_int_eq (llmq_submit (c, &trip, &tid, 5000), LLMQ_OK);
    bool open = false;
    for (uint64_t end = s_now_ms () + T_WAIT; !open && s_now_ms () < end; ) {
        open = s_breaker_is (c, "frail", "open");
        if (!open) {
            h_backoff ();
        }
    }
    ck_assert_msg (open, "the breaker did not open");
    //  Resubmit: live hits until the entry expires, then stale answers,
    //  degraded, still without a provider call.
    long calls = h_mock_stat (h, "requests");
    bool stale = false;
    for (uint64_t end = s_now_ms () + T_WAIT; !stale && s_now_ms () < end; ) {
        uint64_t t = s_now_ms ();
        r = s_run (c, &j);
        ck_assert_int_eq (r->cached, 1);
        ck_assert_str_eq (r->content, content);
        if (r->degraded) {
            stale = true;
            ck_assert_uint_ge (t - t_fill, 2000);
        }
        llmq_result_free (&r);
        if (!stale) {
            h_backoff ();
        }
    }
    ck_assert_msg (stale, "no stale answer");
    ck_assert_int_eq (h_mock_stat (h, "requests"), calls);
    ck_assert_int_ge (s_cstat (c, "stale_served"), 1);
    free (content);
    free (other);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("cache");
    TCase *tc = tcase_create ("cache");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_hit_skips_the_provider);
    tcase_add_test (tc, test_temperature_zero_by_config);
    tcase_add_test (tc, test_ttl_expiry);
    tcase_add_test (tc, test_survives_a_restart);
    tcase_add_test (tc, test_batch_with_hits);
    tcase_add_test (tc, test_stale_when_the_group_is_down);
    suite_add_tcase (s, tc);
    return h_run_suite (s);
}
