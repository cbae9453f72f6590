/*  test_stream_faults.c -- how a provider's failures reach the client, for
    every provider, end to end: a real broker and worker, and the mock
    provider speaking OpenAI (and Azure), Anthropic and Gemini on 127.0.0.1.

    The rule under test (docs/protocol.md section 6.2): a failure is
    retried only while no chunk of the answer has reached the client.
      * a provider's error *event* mid-stream (the mock's error_after
        fault: OpenAI's {"error":{..."server_error"...}}, Anthropic's
        "event: error" overloaded_error, Gemini's UNAVAILABLE chunk)
        before any content is retried, and the retry's stream reaches the
        client whole and in order; after content it ends the job FAILED
        stream_broken with the text the client holds and the provider's
        reason;
      * the same for a broken event (malformed) and a cut connection
        (drop_after);
      * a refused non-streamed call is classified by its status: 400, 404
        and 422 invalid_request, 401 and 403 auth (one key: final), 429
        rate_limited after its Retry-After, 5xx server, a body that does
        not parse bad_response; the retryable ones end DONE on attempt 2.
    Cases already covered by test_e2e.c, test_anthropic_e2e.c and
    test_gemini_e2e.c are not repeated here (OpenAI 500 until dead,
    Anthropic 400/529, Gemini 400/503).

    Every fault is queued through the mock's control API for one request
    (count 1), so a retry gets a sound answer. The worker logs each failed
    attempt at debug level ("job N failed on DEP: CLASS (HTTP S): ..."),
    which is how the class of an attempt that was retried is checked.
    Waits are on replies, with timeouts; nothing sleeps.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */

/*  Error classes of docs/protocol.md section 6.2. */
#define T_EC_NONE            0
#define T_EC_INVALID_REQUEST 1
#define T_EC_AUTH            2
#define T_EC_STREAM_BROKEN   7

#define T_BROKER "max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\nlog_level = debug\n"

#define T_PROMPT "one two three four five six"
#define T_REPLY  "mock reply: " T_PROMPT

/*  A provider as the tests see it: the model group that routes to it, its
    deployment, and the reason its mid-stream error event carries. */
typedef struct {
    const char *group;
    const char *deployment;
    const char *event_reason;       /* in the job's error after error_after */
    const char *event_class;        /* class of the error event itself */
} s_provider_t;

static const s_provider_t s_openai = {
    "gpt", "mock", "The server had an error while processing your request", "server"
};
static const s_provider_t s_azure = {
    "azure-gpt", "az", "The server had an error while processing your request", "server"
};
static const s_provider_t s_anthropic = {
    "claude", "claude", "overloaded_error: Overloaded", "rate_limited"
};
static const s_provider_t s_gemini = {
    "gem", "gemini-mock", "UNAVAILABLE: The model is overloaded. Please try again later.", "server"
};

static const s_provider_t *s_providers[] = { &s_openai, &s_azure, &s_anthropic, &s_gemini };
#define S_NPROVIDERS (sizeof s_providers / sizeof s_providers[0])

/*  A harness with all the providers' deployments, and everything started. */
static harness_t *
s_start (void)
{
    harness_t *h = h_new (T_BROKER);
    ck_assert_ptr_nonnull (h);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f,
             "\n[deployment az]\n"
             "provider = azure\n"
             "base_url = http://127.0.0.1:%d/openai/deployments/gpt4o\n"
             "api_key_env = LLMQ_TEST_KEY\n"
             "api_version = 2024-10-21\n"
             "breaker_failures = 1000000\n"
             "\n[deployment claude]\n"
             "provider = anthropic\n"
             "model = claude-mock-1\n"
             "base_url = http://127.0.0.1:%d/v1\n"
             "api_key_env = LLMQ_TEST_KEY\n"
             "timeout = 30s\n"
             "breaker_failures = 1000000\n"
             "\n[deployment claude-proxy]\n"
             "provider = anthropic\n"
             "model = claude-mock-1\n"
             "base_url = http://127.0.0.1:%d/v1\n"
             "\n[deployment gemini-mock]\n"
             "provider = gemini\n"
             "model = gemini-2.0-flash\n"
             "base_url = http://127.0.0.1:%d/v1beta\n"
             "api_key_env = LLMQ_TEST_KEY\n"
             "timeout = 30s\n"
             "breaker_failures = 1000000\n"
             "\n[group azure-gpt]\ndeployments = az\n"
             "\n[group claude]\ndeployments = claude\n"
             "\n[group claude-proxy]\ndeployments = claude-proxy\n"
             "\n[group gem]\ndeployments = gemini-mock\n",
             h->mock_port, h->mock_port, h->mock_port, h->mock_port);
    ck_assert_int_eq (fclose (f), 0);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

static char *
s_body (const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
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
    (void) id;
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

/*  One case: a fault queued for the next call, what the job must end as. */
typedef struct {
    const char *fault;          /* body of POST /mock/faults (count 1) */
    bool stream;
    int state;                  /* final state */
    unsigned attempts;
    int error_class;            /* final class (T_EC_NONE when DONE) */
    int http_status;            /* of the failed attempt: the one logged */
    const char *logged;         /* class the worker logged for it */
    const char *reason;         /* in the job's error (FAILED), or NULL */
} s_case_t;

/*  Number of times `needle` occurs in `hay`. */
static int
s_count (const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr (p, needle)) != NULL; p += strlen (needle)) {
        n++;
    }
    return n;
}

/*  Run one case against one provider; returns the calls it took. */
static unsigned
s_run_case (harness_t *h, llmq *c, const s_provider_t *p, const s_case_t *k)
{
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", k->fault), 0);
    char *body = s_body (T_PROMPT);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = p->group;
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    j.stream = k->stream ? 1 : 0;
    s_stream_t s = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    llmq_result *r = NULL;
    if (k->stream) {
        ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &id, T_WAIT, &r), LLMQ_OK);
    }
    else {
        ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
        ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    }
    ck_assert_ptr_nonnull (r);
    const char *what = p->group;
    ck_assert_msg (r->state == k->state && r->attempts == k->attempts
                   && r->error_class == k->error_class,
                   "%s, fault %s%s: state %d attempts %u class %d (%s), want %d %u %d",
                   what, k->fault, k->stream ? " streamed" : "", r->state, r->attempts,
                   r->error_class, r->error ? r->error : "", k->state, k->attempts,
                   k->error_class);
    ck_assert_str_eq (r->deployment, p->deployment);
    if (k->state == LLMQ_STATE_DONE) {
        ck_assert_str_eq (r->content, T_REPLY);
        ck_assert_int_eq (r->http_status, 200);
        if (k->stream) {
            /*  Only the retry streamed: all of it, in order, from seq 0. */
            ck_assert_msg (s.in_order, "%s, fault %s: chunks out of order", what, k->fault);
            ck_assert_uint_ge (s.chunks, 1);
            ck_assert_str_eq (s.text, r->content);
        }
    }
    else {
        ck_assert_int_eq (r->http_status, k->http_status);
        ck_assert_ptr_nonnull (r->error);
        if (k->reason) {
            ck_assert_msg (strstr (r->error, k->reason) != NULL,
                           "%s, fault %s: error \"%s\" lacks \"%s\"", what, k->fault,
                           r->error, k->reason);
        }
    }
    if (k->error_class == T_EC_STREAM_BROKEN) {
        /*  Two pieces reached the client (maybe coalesced into one
            chunk): the job holds what the client holds, a start of the
            answer. */
        ck_assert_msg (s.chunks >= 1 && s.chunks <= 2, "%s: %u chunks", what, s.chunks);
        ck_assert (s.in_order);
        ck_assert_ptr_nonnull (r->content);
        ck_assert_str_eq (r->content, s.text);
        ck_assert_uint_gt (strlen (s.text), 0);
        ck_assert_msg (strncmp (T_REPLY, s.text, strlen (s.text)) == 0 && strlen (s.text) < strlen (T_REPLY),
                       "%s: partial text \"%s\"", what, s.text);
    }
    if (k->http_status == 429) {
        /*  The retry waited the Retry-After (1 s), not the 10 ms backoff. */
        ck_assert_uint_ge (r->started_us, r->enqueued_us + 1000000);
    }
    /*  The worker's own account of each failed attempt: every failed
        attempt logged once with its class (a job retried once failed
        once; a failed job's one attempt was its end). */
    char log[600], line[200];
    snprintf (log, sizeof log, "%s/worker0.log", h->dir);
    char *text = h_slurp (log);
    ck_assert_ptr_nonnull (text);
    snprintf (line, sizeof line, "job %llu failed on %s: ", (unsigned long long) id, p->deployment);
    int failures = s_count (text, line);
    snprintf (line, sizeof line, "job %llu failed on %s: %s (HTTP %d)", (unsigned long long) id,
              p->deployment, k->logged, k->http_status);
    ck_assert_msg (failures == 1 && strstr (text, line) != NULL,
                   "%s, fault %s: want one \"%s\" in the worker's log, %d failures", what,
                   k->fault, line, failures);
    free (text);
    unsigned calls = r->attempts;
    llmq_result_free (&r);
    free (body);
    return calls;
}

/*  Run every case against `p`; check the mock saw exactly those calls. */
static void
s_run_cases (harness_t *h, llmq *c, const s_provider_t *p, const s_case_t *cases, size_t n)
{
    long before = h_mock_stat (h, "requests");
    long faults = h_mock_stat (h, "faults_injected");
    unsigned calls = 0;
    for (size_t i = 0; i < n; i++) {
        calls += s_run_case (h, c, p, &cases[i]);
    }
    ck_assert_int_eq (h_mock_stat (h, "requests"), before + (long) calls);
    ck_assert_int_eq (h_mock_stat (h, "faults_injected"), faults + (long) n);
}

/*  error_after=0: the error event comes before any content, so nothing
    reached the client and the job is retried; the retry streams whole. */
START_TEST (test_error_event_before_content_is_retried)
{
    harness_t *h = s_start ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    for (size_t i = 0; i < S_NPROVIDERS; i++) {
        const s_provider_t *p = s_providers[i];
        s_case_t k = { "{\"kind\":\"error_after\",\"after\":0,\"count\":1}", true,
                       LLMQ_STATE_DONE, 2, T_EC_NONE, 200, p->event_class, NULL };
        s_run_cases (h, c, p, &k, 1);
    }
    ck_assert_int_eq (h_mock_stat (h, "streams"), 2 * (long) S_NPROVIDERS);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  error_after=2: two pieces reached the client before the error event, so
    the job is not retried: FAILED stream_broken, the partial text kept,
    the provider's reason in the error. */
START_TEST (test_error_event_after_content_is_broken)
{
    harness_t *h = s_start ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    for (size_t i = 0; i < S_NPROVIDERS; i++) {
        const s_provider_t *p = s_providers[i];
        s_case_t k = { "{\"kind\":\"error_after\",\"after\":2,\"count\":1}", true,
                       LLMQ_STATE_FAILED, 1, T_EC_STREAM_BROKEN, 200, "stream_broken",
                       p->event_reason };
        s_run_cases (h, c, p, &k, 1);
    }
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A broken event and a cut connection follow the same rule: retried
    while the client has nothing, stream_broken once it has something. */
START_TEST (test_broken_and_cut_streams)
{
    static const s_case_t cases[] = {
        { "{\"kind\":\"malformed\",\"count\":1}", true,
          LLMQ_STATE_DONE, 2, T_EC_NONE, 200, "bad_response", NULL },
        { "{\"kind\":\"drop_after\",\"after\":0,\"count\":1}", true,
          LLMQ_STATE_DONE, 2, T_EC_NONE, 200, "connection", NULL },
        { "{\"kind\":\"drop_after\",\"after\":2,\"count\":1}", true,
          LLMQ_STATE_FAILED, 1, T_EC_STREAM_BROKEN, 200, "stream_broken", NULL },
    };
    harness_t *h = s_start ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    for (size_t i = 0; i < S_NPROVIDERS; i++) {
        s_run_cases (h, c, s_providers[i], cases, sizeof cases / sizeof cases[0]);
    }
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  Shorthands for the non-streamed tables. */
#define S_FATAL(kind, status, ec, logged) \
    { "{\"kind\":" kind ",\"count\":1}", false, LLMQ_STATE_FAILED, 1, ec, status, logged, NULL }
#define S_RETRIED(kind, status, logged) \
    { "{\"kind\":" kind ",\"count\":1}", false, LLMQ_STATE_DONE, 2, T_EC_NONE, status, logged, NULL }
#define S_RATE_LIMITED \
    { "{\"kind\":429,\"count\":1,\"retry_after\":1}", false, LLMQ_STATE_DONE, 2, T_EC_NONE, 429, \
      "rate_limited", NULL }

START_TEST (test_http_errors_openai)
{
    /*  (500 until dead is test_e2e.c's; its 400 does not check the class.)
        502 and 504 come as the CDN's HTML page, not JSON. */
    static const s_case_t cases[] = {
        S_FATAL ("400", 400, T_EC_INVALID_REQUEST, "invalid_request"),
        S_FATAL ("401", 401, T_EC_AUTH, "auth"),
        S_FATAL ("403", 403, T_EC_AUTH, "auth"),
        S_FATAL ("404", 404, T_EC_INVALID_REQUEST, "invalid_request"),
        S_FATAL ("422", 422, T_EC_INVALID_REQUEST, "invalid_request"),
        S_RATE_LIMITED,
        S_RETRIED ("500", 500, "server"),
        S_RETRIED ("502", 502, "server"),
        S_RETRIED ("503", 503, "server"),
        S_RETRIED ("504", 504, "server"),
        S_RETRIED ("\"malformed\"", 200, "bad_response"),
    };
    harness_t *h = s_start ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_run_cases (h, c, &s_openai, cases, sizeof cases / sizeof cases[0]);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_http_errors_anthropic)
{
    /*  (400 and 529 are test_anthropic_e2e.c's.) */
    static const s_case_t cases[] = {
        S_FATAL ("401", 401, T_EC_AUTH, "auth"),
        S_FATAL ("403", 403, T_EC_AUTH, "auth"),
        S_FATAL ("404", 404, T_EC_INVALID_REQUEST, "invalid_request"),
        S_RATE_LIMITED,
        S_RETRIED ("500", 500, "server"),
        S_RETRIED ("503", 503, "server"),
        S_RETRIED ("\"malformed\"", 200, "bad_response"),
    };
    harness_t *h = s_start ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_run_cases (h, c, &s_anthropic, cases, sizeof cases / sizeof cases[0]);

    /*  A deployment with no key (meant for a proxy that adds it) sends no
        x-api-key: the API's 401 is final. */
    char *body = s_body ("let me in");
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "claude-proxy";
    j.body = body;
    uint64_t id = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_AUTH);
    ck_assert_int_eq (r->http_status, 401);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_msg (strstr (r->error, "authentication_error: x-api-key header is required") != NULL,
                   "error: %s", r->error);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_http_errors_gemini)
{
    /*  (400 and 503 are test_gemini_e2e.c's.) */
    static const s_case_t cases[] = {
        S_FATAL ("401", 401, T_EC_AUTH, "auth"),
        S_FATAL ("403", 403, T_EC_AUTH, "auth"),
        S_FATAL ("404", 404, T_EC_INVALID_REQUEST, "invalid_request"),
        S_RATE_LIMITED,
        S_RETRIED ("500", 500, "server"),
        S_RETRIED ("\"malformed\"", 200, "bad_response"),
    };
    harness_t *h = s_start ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_run_cases (h, c, &s_gemini, cases, sizeof cases / sizeof cases[0]);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("stream_faults");
    TCase *tc = tcase_create ("stream_faults");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_error_event_before_content_is_retried);
    tcase_add_test (tc, test_error_event_after_content_is_broken);
    tcase_add_test (tc, test_broken_and_cut_streams);
    tcase_add_test (tc, test_http_errors_openai);
    tcase_add_test (tc, test_http_errors_anthropic);
    tcase_add_test (tc, test_http_errors_gemini);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
