/*  test_anthropic.c -- the Anthropic adapter end to end: a real broker and
    worker, and the mock provider speaking the Messages API on 127.0.0.1.

    The harness's config gets one more group, "claude", whose deployment
    (provider anthropic) points at the mock's /v1/messages, and a group
    "claude-nokey" whose key variable is never set. Jobs are submitted in
    the OpenAI shape, as every client submits them; the mock refuses any
    request the real API would refuse (a system role in messages, a
    missing max_tokens, an OpenAI-only field), so a job that completes
    proves the translation too.

    Each test starts what it needs in its own scratch directory and stops
    it by PID. Waits are on replies and handshakes, with timeouts.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 20000            /* ms: generous, these are not timing tests */

/*  Error classes of docs/protocol.md section 6.2. */
#define T_EC_INVALID_REQUEST 1
#define T_EC_AUTH            2
#define T_EC_RATE_LIMITED    3
#define T_EC_STREAM_BROKEN   7

/*  A harness whose config also has the anthropic groups. */
static harness_t *
s_harness (const char *extra_broker)
{
    harness_t *h = h_new (extra_broker);
    ck_assert_ptr_nonnull (h);
    unsetenv ("LLMQ_TEST_ANTHROPIC_UNSET");
    FILE *f = fopen (h->conf, "a");
    ck_assert_ptr_nonnull (f);
    fprintf (f,
             "\n[deployment claude]\n"
             "provider = anthropic\n"
             "model = claude-mock-1\n"
             "base_url = http://127.0.0.1:%d/v1\n"
             "api_key_env = LLMQ_TEST_KEY\n"
             "api_version = 2023-06-01\n"
             "timeout = 30s\n"
             "\n[deployment claude-nokey]\n"
             "provider = anthropic\n"
             "base_url = http://127.0.0.1:%d/v1\n"
             "api_key_env = LLMQ_TEST_ANTHROPIC_UNSET\n"
             "\n[group claude]\n"
             "deployments = claude\n"
             "\n[group claude-nokey]\n"
             "deployments = claude-nokey\n",
             h->mock_port, h->mock_port);
    ck_assert_int_eq (fclose (f), 0);
    return h;
}

/*  Mock, broker and one worker up; a connected client. */
static llmq *
s_start (harness_t *h, const char *const *mock_args)
{
    ck_assert_int_eq (h_start_mock (h, mock_args), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    return c;
}

/*  An OpenAI-shaped body: a system prompt, then the user's prompt. */
static char *
s_body (const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s},{s:s,s:s}]}", "messages",
                           "role", "system", "content", "be brief",
                           "role", "user", "content", prompt);
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

/*  Submit and wait for the final result. */
static llmq_result *
s_run (llmq *c, const char *model, const char *body)
{
    llmq_job j = s_job (model, body);
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    return r;
}

START_TEST (test_message_completes)
{
    harness_t *h = s_harness (NULL);
    llmq *c = s_start (h, NULL);
    /*  OpenAI-only fields (n, response_format, stream_options) must not
        reach the API, which refuses unknown fields; stop and temperature
        are translated. */
    const char *body =
        "{\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":\"what is a queue\"}],"
        "\"temperature\":0.5,\"stop\":[\"\\n\\nHuman:\"],\"n\":1,"
        "\"response_format\":{\"type\":\"text\"},\"stream_options\":{\"include_usage\":true}}";
    llmq_result *r = s_run (c, "claude", body);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->content, "mock reply: what is a queue");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_uint_eq (r->prompt_tokens, 6);            /* "be brief" + 4 words */
    ck_assert_uint_eq (r->completion_tokens, 6);
    ck_assert_int_eq (r->http_status, 200);
    ck_assert_str_eq (r->request_id, "req_mock_0000000000000001");   /* the request-id header */
    ck_assert_str_eq (r->deployment, "claude");
    ck_assert_uint_eq (r->attempts, 1);
    llmq_result_free (&r);

    /*  The job's max_tokens reaches the API: the reply is cut. */
    r = s_run (c, "claude", "{\"messages\":[{\"role\":\"user\",\"content\":\"one two three four\"}],"
                            "\"max_tokens\":3}");
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "mock reply: one");
    ck_assert_str_eq (r->finish_reason, "length");
    ck_assert_uint_eq (r->completion_tokens, 3);
    ck_assert_str_eq (r->request_id, "req_mock_0000000000000002");
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    ck_assert_int_eq (h_mock_stat (h, "by_status.200"), 2);
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

START_TEST (test_stream_complete_in_order)
{
    harness_t *h = s_harness (NULL);
    const char *margs[] = { "--chunk-delay-ms", "2", NULL };
    llmq *c = s_start (h, margs);
    char *body = s_body ("[[mock:chunks=20]] stream me a rather long answer about durable "
                         "queues and priorities please");
    llmq_job j = s_job ("claude", body);
    j.stream = 1;
    s_stream_t s = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert (s.in_order);
    /* Pieces that reach the worker in one loop turn leave as one CHUNK:
       at most one per provider event, several with 2 ms between events. */
    ck_assert_uint_le (s.chunks, 20);
    ck_assert_uint_ge (s.chunks, 2);
    ck_assert_str_eq (s.text, r->content);
    ck_assert_str_eq (r->content, "mock reply: stream me a rather long answer about durable "
                                  "queues and priorities please");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_uint_eq (r->prompt_tokens, 2 + 12);
    ck_assert_uint_eq (r->completion_tokens, 14);
    ck_assert_str_eq (r->request_id, "req_mock_0000000000000001");   /* the request-id header */
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "streams"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A job with tools whose prompt asks the mock for a call ({{call:NAME}},
    see tests/mock/mock_chat.h). */
#define S_TOOLS_BODY(prefix) \
    "{\"messages\":[{\"role\":\"user\",\"content\":\"" prefix "{{call:get_weather}} weather in Paris\"}]," \
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"," \
    "\"description\":\"Weather of a city\",\"parameters\":{\"type\":\"object\"," \
    "\"properties\":{\"q\":{\"type\":\"string\"}}}}}],\"tool_choice\":\"auto\"}"

START_TEST (test_tool_call)
{
    harness_t *h = s_harness (NULL);
    llmq *c = s_start (h, NULL);
    llmq_result *r = s_run (c, "claude", S_TOOLS_BODY (""));
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->finish_reason, "tool_calls");
    ck_assert_str_eq (r->content, "");
    ck_assert_ptr_nonnull (r->tool_calls);
    ck_assert_str_eq (r->tool_calls,
                      "[{\"id\":\"toolu_mock_1\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"get_weather\",\"arguments\":\"{\\\"q\\\":\\\"weather in Paris\\\"}\"}}]");
    llmq_result_free (&r);

    /*  Streamed: the input arrives in input_json_delta pieces. */
    llmq_job j = s_job ("claude", S_TOOLS_BODY ("[[mock:chunks=5]] "));
    j.stream = 1;
    s_stream_t st = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &st, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->finish_reason, "tool_calls");
    ck_assert_str_eq (r->tool_calls,
                      "[{\"id\":\"toolu_mock_2\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"get_weather\",\"arguments\":\"{\\\"q\\\":\\\"weather in Paris\\\"}\"}}]");
    ck_assert_uint_eq (st.chunks, 0);
    llmq_result_free (&r);

    /*  The next turn: the call and its result go back (as tool_use and
        tool_result blocks the mock accepts); the answer is text again. */
    r = s_run (c, "claude",
               "{\"messages\":[{\"role\":\"user\",\"content\":\"weather in Paris\"},"
               "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"toolu_mock_1\","
               "\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
               "\"arguments\":\"{\\\"q\\\":\\\"Paris\\\"}\"}}]},"
               "{\"role\":\"tool\",\"tool_call_id\":\"toolu_mock_1\",\"content\":\"sunny\"},"
               "{\"role\":\"user\",\"content\":\"thanks\"}],"
               "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}]}");
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->content, "mock reply: thanks");
    ck_assert_str_eq (r->finish_reason, "stop");
    ck_assert_ptr_null (r->tool_calls);
    llmq_result_free (&r);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_stream_cut_is_broken)
{
    harness_t *h = s_harness ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    llmq *c = s_start (h, NULL);
    char *body = s_body ("[[mock:chunks=5,drop_after=2]] one two three four five six");
    llmq_job j = s_job ("claude", body);
    j.stream = 1;
    s_stream_t s = { 0, true, "", 0, 0 };
    uint64_t id = 0;
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_stream (c, &j, s_on_chunk, &s, &id, T_WAIT, &r), LLMQ_OK);
    ck_assert_ptr_nonnull (r);
    /*  Two pieces reached the client (the worker may coalesce them into
        one chunk): not retried, reported broken, with the text the client
        holds. */
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_STREAM_BROKEN);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert (s.chunks >= 1 && s.chunks <= 2);
    ck_assert (s.in_order);
    ck_assert_str_eq (r->content, s.text);
    ck_assert_ptr_nonnull (strstr ("mock reply: one two three four five six", s.text));
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_overloaded_retried_then_succeeds)
{
    harness_t *h = s_harness ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    llmq *c = s_start (h, NULL);
    /*  The next call is refused with 529 overloaded_error and
        "retry-after: 1"; the broker waits that long, not its 10 ms. */
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":529,\"count\":1,\"retry_after\":1}"), 0);
    char *body = s_body ("are you there");
    llmq_result *r = s_run (c, "claude", body);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d: %s", r->state, r->error ? r->error : "");
    ck_assert_str_eq (r->content, "mock reply: are you there");
    ck_assert_uint_eq (r->attempts, 2);
    ck_assert_int_eq (r->http_status, 200);
    ck_assert_uint_ge (r->started_us, r->enqueued_us + 1000000);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 2);
    ck_assert_int_eq (h_mock_stat (h, "by_status.529"), 1);
    ck_assert_int_eq (h_mock_stat (h, "by_status.200"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_overloaded_dead_letters)
{
    harness_t *h = s_harness ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    llmq *c = s_start (h, NULL);
    char *body = s_body ("[[mock:fail=529]] always overloaded");
    llmq_result *r = s_run (c, "claude", body);
    ck_assert_int_eq (r->state, LLMQ_STATE_DEAD);
    ck_assert_int_eq (r->error_class, T_EC_RATE_LIMITED);
    ck_assert_uint_eq (r->attempts, 3);
    ck_assert_int_eq (r->http_status, 529);
    ck_assert_ptr_nonnull (r->error);
    ck_assert_ptr_nonnull (strstr (r->error, "overloaded_error: Overloaded"));
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 3);
    ck_assert_int_eq (h_mock_stat (h, "by_status.529"), 3);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_bad_request_fails_at_once)
{
    harness_t *h = s_harness ("max_attempts = 3\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n");
    llmq *c = s_start (h, NULL);
    char *body = s_body ("[[mock:fail=400]] bad request");
    llmq_result *r = s_run (c, "claude", body);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_INVALID_REQUEST);
    ck_assert_int_eq (r->http_status, 400);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_ptr_nonnull (strstr (r->error, "invalid_request_error"));
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);

    /*  A job the adapter cannot translate never reaches the provider. */
    r = s_run (c, "claude", "{\"messages\":[{\"role\":\"function\",\"name\":\"f\",\"content\":\"1\"}]}");
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_INVALID_REQUEST);
    ck_assert_uint_eq (r->attempts, 1);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 1);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_missing_key_is_auth)
{
    harness_t *h = s_harness (NULL);
    llmq *c = s_start (h, NULL);
    char *body = s_body ("hello");
    llmq_result *r = s_run (c, "claude-nokey", body);
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_AUTH);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_ptr_nonnull (strstr (r->error, "LLMQ_TEST_ANTHROPIC_UNSET"));
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 0);
    free (body);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("anthropic");
    TCase *tc = tcase_create ("anthropic");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_message_completes);
    tcase_add_test (tc, test_stream_complete_in_order);
    tcase_add_test (tc, test_stream_cut_is_broken);
    tcase_add_test (tc, test_tool_call);
    tcase_add_test (tc, test_overloaded_retried_then_succeeds);
    tcase_add_test (tc, test_overloaded_dead_letters);
    tcase_add_test (tc, test_bad_request_fails_at_once);
    tcase_add_test (tc, test_missing_key_is_auth);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
