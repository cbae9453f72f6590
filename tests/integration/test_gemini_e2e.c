/*  test_gemini.c -- the Gemini adapter end to end: a real broker, a real
    worker and the mock provider speaking Gemini's generateContent, on
    127.0.0.1, driven through the public client library.

    The harness's configuration knows only the echo and OpenAI-shaped
    deployments; each test appends a Gemini deployment (base_url at the
    mock's /v1beta) and a model group "gem" routing to it before it starts
    the broker and the worker. Waits are on replies, with timeouts.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */

/*  Error classes of a result (docs/protocol.md section 6.2). */
#define S_EC_NONE            0
#define S_EC_INVALID_REQUEST 1
#define S_EC_SERVER          4

/*  A harness whose config also has [deployment gemini-mock] and [group gem]. */
static harness_t *
s_harness (const char *extra_broker)
{
    harness_t *h = h_new (extra_broker);
    ck_assert_ptr_nonnull (h);
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "\n[deployment gemini-mock]\n"
                "provider = gemini\n"
                "model = gemini-2.0-flash\n"
                "base_url = http://127.0.0.1:%d/v1beta\n"
                "api_key_env = LLMQ_TEST_KEY\n"
                "timeout = 30s\n"
                "\n[group gem]\n"
                "deployments = gemini-mock\n", h->mock_port);
    ck_assert_int_eq (fclose (f), 0);
    return h;
}

static void
s_start (harness_t *h, const char *const *mock_args)
{
    ck_assert_int_eq (h_start_mock (h, mock_args), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
}

static char *
s_body (const char *system, const char *prompt)
{
    json_t *msgs = json_array ();
    if (system) {
        json_array_append_new (msgs, json_pack ("{s:s,s:s}", "role", "system", "content", system));
    }
    json_array_append_new (msgs, json_pack ("{s:s,s:s}", "role", "user", "content", prompt));
    json_t *b = json_pack ("{s:o}", "messages", msgs);
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
}

static llmq_job
s_job (const char *body)
{
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "gem";
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    return j;
}

/*  Submit and wait for the final result. */
static llmq_result *
s_run (llmq *c, const char *body)
{
    llmq_job j = s_job (body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    return r;
}

START_TEST (test_job_completes)
{
    harness_t *h = s_harness (NULL);
    s_start (h, NULL);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    char *body = s_body ("be brief", "hello gemini world");
    llmq_result *r = s_run (c, body);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->content, "mock reply: hello gemini world");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_str_eq (r->deployment, "gemini-mock");
    ck_assert_int_eq (r->error_class, S_EC_NONE);
    ck_assert_int_eq (r->http_status, 200);
    ck_assert_uint_eq (r->attempts, 1);
    /*  The system instruction reached the mock: 2 + 3 words of prompt. */
    ck_assert_uint_eq (r->prompt_tokens, 5);
    ck_assert_uint_eq (r->completion_tokens, 5);
    ck_assert_ptr_nonnull (r->request_id);
    ck_assert_str_eq (r->request_id, "mockGemini000000000001");
    llmq_result_free (&r);
    /*  A job's max_tokens became maxOutputTokens: the mock cut the reply. */
    json_t *b = json_pack ("{s:[{s:s,s:s}], s:i}", "messages", "role", "user", "content",
                           "one two three four five", "max_tokens", 3);
    char *cut = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    r = s_run (c, cut);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "mock reply: one");
    ck_assert_str_eq (r->finish_reason, "length");
    ck_assert_uint_eq (r->completion_tokens, 3);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    ck_assert_int_eq (h_mock_stat (h, "faults_injected"), 0);
    free (cut);
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

/*  A streamed job goes to :streamGenerateContent?alt=sse and gets its
    whole answer, in order, one chunk per SSE event. */
START_TEST (test_stream_complete_in_order)
{
    harness_t *h = s_harness (NULL);
    const char *margs[] = { "--chunk-delay-ms", "2", NULL };
    s_start (h, margs);
    llmq *c = h_client (h);
    char *body = s_body (NULL, "[[mock:chunks=20]] stream me a rather long answer about durable "
                               "queues and priorities please");
    llmq_job j = s_job (body);
    j.stream = 1;
    s_stream_t s = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert (s.in_order);
    ck_assert_str_eq (r->content, "mock reply: stream me a rather long answer about durable "
                                  "queues and priorities please");
    ck_assert_str_eq (s.text, r->content);
    ck_assert_uint_eq (r->completion_tokens, 14);
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_int_eq (h_mock_stat (h, "streams"), 1);
    /* Pieces that reach the worker in one loop turn leave as one CHUNK:
       at most one per provider event, several with 2 ms between events. */
    ck_assert_uint_le (s.chunks, 20);
    ck_assert_uint_ge (s.chunks, 2);
    llmq_result_free (&r);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A job with tools whose prompt asks the mock for a call ({{call:NAME}},
    see tests/mock/mock_chat.h). */
#define S_TOOLS_BODY(prefix) \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"" prefix "{{call:find_book}} durable queues\"}]," \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"find_book\"," \
    "\"parameters\":{\"type\":\"object\",\"properties\":{\"q\":{\"type\":\"string\"}}}}}]," \
    "\"tool_choice\":\"required\"}"
#define S_TOOLS_CALLS \
    "[{\"id\":\"call_0\",\"type\":\"function\",\"function\":{\"name\":\"find_book\"," \
    "\"arguments\":\"{\\\"q\\\":\\\"durable queues\\\"}\"}}]"

START_TEST (test_function_call)
{
    harness_t *h = s_harness (NULL);
    s_start (h, NULL);
    llmq *c = h_client (h);
    llmq_result *r = s_run (c, S_TOOLS_BODY (""));
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->finish_reason, "tool_calls");
    ck_assert_str_eq (r->content, "");
    ck_assert_pstr_eq (r->tool_calls, S_TOOLS_CALLS);
    llmq_result_free (&r);

    /*  Streamed: the call comes whole in one chunk. */
    llmq_job j = s_job (S_TOOLS_BODY ("[[mock:chunks=4]] "));
    j.stream = 1;
    s_stream_t st = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &st, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->finish_reason, "tool_calls");
    ck_assert_pstr_eq (r->tool_calls, S_TOOLS_CALLS);
    ck_assert_uint_eq (st.chunks, 0);
    llmq_result_free (&r);

    /*  The next turn: the call and its result go back as functionCall and
        functionResponse parts, which the mock accepts; text again. */
    r = s_run (c, "{\"messages\":[{\"role\":\"user\",\"content\":\"find a book\"},"
                  "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_0\","
                  "\"type\":\"function\",\"function\":{\"name\":\"find_book\",\"arguments\":\"{}\"}}]},"
                  "{\"role\":\"tool\",\"tool_call_id\":\"call_0\",\"content\":\"Designing Data\"},"
                  "{\"role\":\"user\",\"content\":\"thanks\"}],"
                  "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"find_book\"}}]}");
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->content, "mock reply: thanks");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_ptr_null (r->tool_calls);
    llmq_result_free (&r);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_bad_request_fails_at_once)
{
    harness_t *h = s_harness ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    s_start (h, NULL);
    llmq *c = h_client (h);
    char *body = s_body (NULL, "[[mock:fail=400]] bad request");
    llmq_result *r = s_run (c, body);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->http_status, 400);
    ck_assert_int_eq (r->error_class, S_EC_INVALID_REQUEST);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_ptr_nonnull (r->error);
    ck_assert_msg (strstr (r->error, "INVALID_ARGUMENT") != NULL, "error: %s", r->error);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);

    /*  A prompt blocked for safety is a 200 the adapter turns into a typed
        failure: not retried (the same prompt would be blocked again). */
    char *blocked = s_body (NULL, "[[gemini:safety]] something dangerous");
    r = s_run (c, blocked);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, S_EC_INVALID_REQUEST);
    ck_assert_int_eq (r->http_status, 200);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_msg (strstr (r->error, "SAFETY") != NULL, "error: %s", r->error);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    free (blocked);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_unavailable_is_retried)
{
    harness_t *h = s_harness ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    s_start (h, NULL);
    llmq *c = h_client (h);
    /*  One 503 UNAVAILABLE queued: the first attempt gets it, the retry
        succeeds. */
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":503,\"count\":1}"), 0);
    char *body = s_body (NULL, "retry me");
    llmq_result *r = s_run (c, body);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_uint_eq (r->attempts, 2);
    ck_assert_str_eq (r->content, "mock reply: retry me");
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);

    /*  Always 503: retried up to max_attempts, then dead, the reason kept. */
    char *broken = s_body (NULL, "[[mock:fail=503]] always overloaded");
    r = s_run (c, broken);
    ck_assert_int_eq (r->state, LLMQ_STATE_DEAD);
    ck_assert_uint_eq (r->attempts, 3);
    ck_assert_int_eq (r->http_status, 503);
    ck_assert_int_eq (r->error_class, S_EC_SERVER);
    ck_assert_msg (strstr (r->error, "UNAVAILABLE") != NULL, "error: %s", r->error);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 5);
    free (broken);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("gemini_e2e");
    TCase *tc = tcase_create ("gemini");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_job_completes);
    tcase_add_test (tc, test_stream_complete_in_order);
    tcase_add_test (tc, test_function_call);
    tcase_add_test (tc, test_bad_request_fails_at_once);
    tcase_add_test (tc, test_unavailable_is_retried);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
