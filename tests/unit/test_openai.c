/*  test_openai.c -- provider adapters (worker/provider_openai.c,
    worker/provider_echo.c) and the helpers they share (worker/provider.c).

    Fixtures under fixtures/openai_* follow the examples of OpenAI's public
    API reference: a chat.completion object, a tool call, a stream with its
    usage chunk, and error bodies. No network: adapters never see one.
*/
#include "fixture.h"
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "provider.h"
#include "sse.h"


#define S_KEY_ENV "LLMQ_TEST_OPENAI_KEY"
#define S_KEY     "sk-test-0123456789abcdefSECRET"

static const llmq_provider_t *openai;
static const llmq_provider_t *echo;

static llmq_deployment_t s_dep = {
    .name = (char *) "openai-mini",
    .provider = (char *) "openai",
    .model = (char *) "gpt-4o-mini-2024-07-18",
    .base_url = (char *) "http://127.0.0.1:9/v1/",
    .api_key_env = (char *) S_KEY_ENV,
    .timeout_ms = 60000,
    .connect_timeout_ms = 5000,
};


static void
s_setup (void)
{
    openai = llmq_provider_find ("openai");
    echo = llmq_provider_find ("echo");
    ck_assert_ptr_nonnull (openai);
    ck_assert_ptr_nonnull (echo);
}

/*  Deltas emitted by an adapter, joined. */
typedef struct {
    llmq_text_t text;
    int count;
} s_deltas_t;

static void
s_on_delta (void *arg, const char *text, size_t len)
{
    s_deltas_t *d = arg;
    ck_assert_uint_gt (len, 0);
    ck_assert_int_eq (llmq_text_add (&d->text, text, len), 0);
    d->count++;
}

/* --- request --------------------------------------------------------- */

static json_t *
s_build (const char *body, bool stream, llmq_reply_t *reply, int expect_rc)
{
    llmq_job_t job = { .id = 7, .model = "mini", .body = body, .stream = stream, .lease = 1 };
    llmq_text_t out = { 0 };
    llmq_reply_reset (reply);
    int rc = openai->build (&s_dep, &job, &out, reply);
    ck_assert_int_eq (rc, expect_rc);
    json_t *root = NULL;
    if (rc == 0) {
        ck_assert_uint_eq (strlen (out.p), out.len);
        json_error_t jerr;
        root = json_loadb (out.p, out.len, 0, &jerr);
        ck_assert_msg (root != NULL, "built body is not JSON: %s", jerr.text);
    }
    llmq_text_free (&out);
    return root;
}

START_TEST (test_request_streamed)
{
    char *body = fixture_read ("openai_request.json", NULL);
    llmq_reply_t reply = { 0 };
    json_t *req = s_build (body, true, &reply, 0);
    ck_assert_str_eq (json_string_value (json_object_get (req, "model")), s_dep.model);
    ck_assert (json_is_true (json_object_get (req, "stream")));
    json_t *opts = json_object_get (req, "stream_options");
    ck_assert (json_is_true (json_object_get (opts, "include_usage")));
    /*  What the client put in stream_options stays. */
    ck_assert (json_is_false (json_object_get (opts, "include_obfuscation")));
    /*  Everything else passes through untouched. */
    ck_assert_uint_eq (json_array_size (json_object_get (req, "messages")), 2);
    ck_assert (json_real_value (json_object_get (req, "temperature")) == 0.2);
    ck_assert_int_eq (json_integer_value (json_object_get (req, "max_tokens")), 64);
    json_decref (req);
    llmq_reply_free (&reply);
    free (body);
}
END_TEST

START_TEST (test_request_not_streamed)
{
    char *body = fixture_read ("openai_request.json", NULL);
    llmq_reply_t reply = { 0 };
    json_t *req = s_build (body, false, &reply, 0);
    ck_assert_str_eq (json_string_value (json_object_get (req, "model")), s_dep.model);
    ck_assert (json_is_false (json_object_get (req, "stream")));
    /*  OpenAI refuses stream_options without stream: removed. */
    ck_assert_ptr_null (json_object_get (req, "stream_options"));
    json_decref (req);
    /*  The client's own "stream": true does not win over the job's flag. */
    req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stream\":true}",
                   false, &reply, 0);
    ck_assert (json_is_false (json_object_get (req, "stream")));
    ck_assert_ptr_nonnull (json_object_get (req, "model"));
    json_decref (req);
    llmq_reply_free (&reply);
    free (body);
}
END_TEST

START_TEST (test_request_text)
{
    /*  A body without "model" or "stream" keys is not re-serialised: our
        fields go in front, the client's text follows byte for byte, so
        numbers print as the client wrote them and text stays UTF-8. */
    llmq_job_t job = { .id = 1, .lease = 1, .stream = false,
                       .body = "{\"messages\":[{\"role\":\"user\",\"content\":\"café 🚀\"}],"
                               "\"temperature\":0.2,\"top_p\":0.95}" };
    llmq_text_t out = { 0 };
    llmq_reply_t reply = { 0 };
    ck_assert_int_eq (openai->build (&s_dep, &job, &out, &reply), 0);
    ck_assert_str_eq (out.p, "{\"model\":\"gpt-4o-mini-2024-07-18\",\"stream\":false,"
                             "\"messages\":[{\"role\":\"user\",\"content\":\"café 🚀\"}],"
                             "\"temperature\":0.2,\"top_p\":0.95}");
    /*  The buffer is reused: a shorter body after a longer one. */
    job.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ck_assert_int_eq (openai->build (&s_dep, &job, &out, &reply), 0);
    ck_assert_uint_eq (out.len, strlen (out.p));
    ck_assert_str_eq (out.p, "{\"model\":\"gpt-4o-mini-2024-07-18\",\"stream\":false,"
                             "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}");
    /*  A body that names its own model takes the full path: ours replaces it. */
    job.body = "{\"model\":\"theirs\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    ck_assert_int_eq (openai->build (&s_dep, &job, &out, &reply), 0);
    ck_assert_ptr_nonnull (strstr (out.p, "\"model\":\"gpt-4o-mini-2024-07-18\""));
    ck_assert_ptr_null (strstr (out.p, "theirs"));
    llmq_text_free (&out);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_request_bad_bodies)
{
    static const char *bad[] = {
        "", "not json", "[1,2]", "{}", "{\"messages\":[]}", "{\"messages\":\"hi\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]", /* truncated */
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_build (bad[i], i % 2 == 0, &reply, -1);
        ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
        ck_assert_str_ne (reply.error, "");
    }
    llmq_reply_free (&reply);
}
END_TEST

/*  Azure OpenAI: the deployment URL, the api-version query and an api-key
    header; the body, answers and errors are OpenAI's. */
START_TEST (test_azure_endpoint)
{
    const llmq_provider_t *azure = llmq_provider_find ("azure");
    ck_assert_ptr_nonnull (azure);
    llmq_deployment_t dep = s_dep;
    dep.provider = (char *) "azure";
    dep.base_url = (char *) "https://res.openai.azure.com/openai/deployments/gpt4o/";
    llmq_reply_t reply = { 0 };
    llmq_endpoint_t ep;
    setenv (S_KEY_ENV, S_KEY, 1);
    ck_assert_int_eq (azure->endpoint (&dep, S_KEY, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "https://res.openai.azure.com/openai/deployments/gpt4o/chat/completions"
                              "?api-version=2024-10-21");
    bool key = false;
    for (struct curl_slist *h = ep.headers; h; h = h->next) {
        key |= strcmp (h->data, "api-key: " S_KEY) == 0;
        ck_assert_ptr_null (strstr (h->data, "Authorization"));
    }
    ck_assert (key);
    llmq_endpoint_free (&ep);
    dep.api_version = (char *) "2025-01-01-preview";
    ck_assert_int_eq (azure->endpoint (&dep, S_KEY, &ep, &reply), 0);
    ck_assert_ptr_nonnull (strstr (ep.url, "?api-version=2025-01-01-preview"));
    llmq_endpoint_free (&ep);
    dep.api_version = (char *) "1&x=y";
    ck_assert_int_eq (azure->endpoint (&dep, S_KEY, &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INTERNAL);
    /*  The rest is the OpenAI adapter's. */
    llmq_job_t job = { .id = 1, .lease = 1, .model = "g",
                       .body = "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}" };
    llmq_text_t out = { 0 };
    ck_assert_int_eq (azure->build (&dep, &job, &out, &reply), 0);
    ck_assert_ptr_nonnull (strstr (out.p, "\"messages\""));
    llmq_text_free (&out);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_endpoint_and_key)
{
    llmq_reply_t reply = { 0 };
    llmq_endpoint_t ep;
    setenv (S_KEY_ENV, S_KEY, 1);
    ck_assert_int_eq (openai->endpoint (&s_dep, S_KEY, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "http://127.0.0.1:9/v1/chat/completions");
    bool auth = false, ctype = false;
    for (struct curl_slist *h = ep.headers; h; h = h->next) {
        auth |= strcmp (h->data, "Authorization: Bearer " S_KEY) == 0;
        ctype |= strcmp (h->data, "Content-Type: application/json") == 0;
    }
    ck_assert (auth && ctype);
    llmq_endpoint_free (&ep);
    ck_assert_ptr_null (ep.url);

    /*  A key that cannot go in a header: AUTH, the key not quoted. */
    ck_assert_int_eq (openai->endpoint (&s_dep, "sk-bad\nkey", &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_AUTH);
    ck_assert_ptr_null (strstr (reply.error, "bad"));
    ck_assert_ptr_null (ep.url);

    /*  No api_key_env (local servers): no Authorization header. */
    llmq_deployment_t local = s_dep;
    local.api_key_env = NULL;
    local.base_url = (char *) "http://127.0.0.1:8080/v1";
    ck_assert_int_eq (openai->endpoint (&local, NULL, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "http://127.0.0.1:8080/v1/chat/completions");
    for (struct curl_slist *h = ep.headers; h; h = h->next) {
        ck_assert_ptr_null (strstr (h->data, "Authorization"));
    }
    llmq_endpoint_free (&ep);
    local.base_url = NULL;
    ck_assert_int_eq (openai->endpoint (&local, NULL, &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INTERNAL);
    llmq_reply_free (&reply);
}
END_TEST

/* --- responses ------------------------------------------------------- */

/*  Prompt caching: usage.prompt_tokens_details.cached_tokens, part of
    prompt_tokens, in a body and in a stream's usage chunk (the shape of
    OpenAI's prompt-caching guide). */
START_TEST (test_parse_cached_tokens)
{
    const char *body =
        "{\"id\":\"chatcmpl-c1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":2006,\"completion_tokens\":300,\"total_tokens\":2306,"
        "\"prompt_tokens_details\":{\"cached_tokens\":1920},"
        "\"completion_tokens_details\":{\"reasoning_tokens\":0}}}";
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_response (body, strlen (body), &reply), 0);
    ck_assert_uint_eq (reply.prompt_tokens, 2006);
    ck_assert_uint_eq (reply.cached_tokens, 1920);
    ck_assert_uint_eq (reply.completion_tokens, 300);

    /*  Streamed: the final usage chunk brings it. */
    const char *fin = "{\"id\":\"chatcmpl-c2\",\"object\":\"chat.completion.chunk\",\"choices\":"
                      "[{\"index\":0,\"delta\":{\"content\":\"Hi\"},\"finish_reason\":\"stop\"}],"
                      "\"usage\":null}";
    const char *usage = "{\"id\":\"chatcmpl-c2\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
                        "\"usage\":{\"prompt_tokens\":2006,\"completion_tokens\":1,\"total_tokens\":2007,"
                        "\"prompt_tokens_details\":{\"cached_tokens\":1024,\"audio_tokens\":0}}}";
    llmq_reply_reset (&reply);
    ck_assert_uint_eq (reply.cached_tokens, 0);
    ck_assert_int_eq (openai->parse_event (NULL, fin, strlen (fin), &reply, NULL, NULL), 0);
    ck_assert_uint_eq (reply.cached_tokens, 0);
    ck_assert_int_eq (openai->parse_event (NULL, usage, strlen (usage), &reply, NULL, NULL), 0);
    ck_assert_uint_eq (reply.prompt_tokens, 2006);
    ck_assert_uint_eq (reply.cached_tokens, 1024);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_parse_chat_completion)
{
    size_t len;
    char *body = fixture_read ("openai_chat_completion.json", &len);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_response (body, len, &reply), 0);
    ck_assert_str_eq (reply.content.p, "Hello! How can I assist you today?");
    ck_assert_str_eq (reply.finish_reason, "stop");
    ck_assert_str_eq (reply.request_id, "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT");
    ck_assert_uint_eq (reply.prompt_tokens, 19);
    ck_assert_uint_eq (reply.completion_tokens, 10);
    ck_assert_uint_eq (reply.cached_tokens, 0);             /* "cached_tokens": 0 */
    ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
    ck_assert (reply.finished);
    free (body);

    /*  A tool call: no text, but a whole answer. */
    body = fixture_read ("openai_tool_calls.json", &len);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_response (body, len, &reply), 0);
    ck_assert_str_eq (reply.content.p, "");
    ck_assert_str_eq (reply.finish_reason, "tool_calls");
    ck_assert_uint_eq (reply.prompt_tokens, 82);
    /*  The calls, in OpenAI's own shape; arguments stay the model's text. */
    ck_assert_str_eq (reply.tool_calls.p,
                      "[{\"id\":\"call_abc123\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"get_current_weather\",\"arguments\":"
                      "\"{\\n\\\"location\\\": \\\"Boston, MA\\\"\\n}\"}}]");
    free (body);
    /*  Text only: no tool calls. */
    body = fixture_read ("openai_chat_completion.json", &len);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_response (body, len, &reply), 0);
    ck_assert_uint_eq (reply.tool_calls.len, 0);
    free (body);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_parse_bad_responses)
{
    static const char *bad[] = {
        "", "<html>502 Bad Gateway</html>", "[]", "{\"choices\":[]}",
        "{\"choices\":[{\"message\":{\"content\":42}}]}", "{\"id\":\"x\"}",
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llmq_reply_reset (&reply);
        ck_assert_int_eq (openai->parse_response (bad[i], strlen (bad[i]), &reply), -1);
        ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    }
    /*  An error object in a 200 body. */
    const char *err = "{\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}";
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_response (err, strlen (err), &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_SERVER);
    ck_assert_str_eq (reply.error, "overloaded");
    llmq_reply_free (&reply);
}
END_TEST

/*  The SSE parser hands events to the adapter, as the worker does. */
typedef struct {
    llmq_reply_t *reply;
    s_deltas_t *deltas;
} s_stream_t;

static int
s_on_event (void *arg, const char *event, const char *data, size_t len)
{
    s_stream_t *st = arg;
    return openai->parse_event (event, data, len, st->reply, s_on_delta, st->deltas) ? 1 : 0;
}

START_TEST (test_parse_stream_with_usage)
{
    size_t len;
    char *text = fixture_read ("openai_stream_usage.sse", &len);
    llmq_reply_t reply = { 0 };
    s_deltas_t deltas = { { 0 }, 0 };
    s_stream_t st = { &reply, &deltas };
    llmq_reply_reset (&reply);
    llmq_sse_t *sse = llmq_sse_new (s_on_event, &st);
    /*  In awkward pieces, as a network would. */
    for (size_t off = 0; off < len; off += 7) {
        size_t n = len - off < 7 ? len - off : 7;
        ck_assert_int_eq (llmq_sse_feed (sse, text + off, n), 0);
    }
    ck_assert (llmq_sse_done (sse));
    const char *expected = "Hello! How can I help — café 🚀?";
    ck_assert_str_eq (reply.content.p, expected);
    ck_assert_str_eq (deltas.text.p, expected);
    ck_assert_int_eq (deltas.count, 10);        /* the empty role delta is not sent */
    ck_assert_str_eq (reply.finish_reason, "stop");
    ck_assert_str_eq (reply.request_id, "chatcmpl-123");
    ck_assert_uint_eq (reply.prompt_tokens, 19);
    ck_assert_uint_eq (reply.completion_tokens, 10);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
    llmq_sse_destroy (&sse);
    llmq_text_free (&deltas.text);
    llmq_reply_free (&reply);
    free (text);
}
END_TEST

/*  Tool calls streamed in pieces (two calls, by index), cut at every byte:
    always the same calls, and no text for the client. */
START_TEST (test_parse_stream_tool_calls)
{
    size_t len;
    char *text = fixture_read ("openai_tool_stream.sse", &len);
    const char *expected =
        "[{\"id\":\"call_DdmO9pD3xa9XTPNJ32zg2hcA\",\"type\":\"function\",\"function\":"
        "{\"name\":\"get_weather\",\"arguments\":\"{\\\"location\\\":\\\"Paris, France\\\"}\"}},"
        "{\"id\":\"call_5yZ0q2nGlTTYxB9TEj3hNn4M\",\"type\":\"function\",\"function\":"
        "{\"name\":\"get_time\",\"arguments\":"
        "\"{\\\"tz\\\": \\\"Europe/Paris\\\", \\\"note\\\": \\\"caf\xc3\xa9\\\"}\"}}]";
    llmq_reply_t reply = { 0 };
    for (size_t cut = 0; cut <= len; cut++) {
        s_deltas_t deltas = { { 0 }, 0 };
        s_stream_t st = { &reply, &deltas };
        llmq_reply_reset (&reply);
        llmq_sse_t *sse = llmq_sse_new (s_on_event, &st);
        ck_assert_ptr_nonnull (sse);
        ck_assert_int_eq (llmq_sse_feed (sse, text, cut), 0);
        ck_assert_int_eq (llmq_sse_feed (sse, text + cut, len - cut), 0);
        ck_assert (llmq_sse_done (sse));
        ck_assert_msg (reply.tool_calls.p && strcmp (reply.tool_calls.p, expected) == 0,
                       "cut at %zu: %s", cut, reply.tool_calls.p ? reply.tool_calls.p : "(null)");
        ck_assert_str_eq (reply.finish_reason, "tool_calls");
        ck_assert_uint_eq (reply.content.len, 0);
        ck_assert_int_eq (deltas.count, 0);
        ck_assert_uint_eq (reply.prompt_tokens, 81);
        ck_assert_uint_eq (reply.completion_tokens, 38);
        ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
        llmq_sse_destroy (&sse);
        llmq_text_free (&deltas.text);
    }
    /*  A piece that is not an object is a bad answer. */
    llmq_reply_reset (&reply);
    const char *bad = "{\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[7]}}]}";
    ck_assert_int_eq (openai->parse_event (NULL, bad, strlen (bad), &reply, NULL, NULL), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    llmq_reply_free (&reply);
    free (text);
}
END_TEST

/*  The shared tool-call helpers: calls keyed by index in order of
    arrival, pieces joined, ids made up when missing, "{}" for no
    arguments, and refusals for a call without a name or not UTF-8. */
START_TEST (test_reply_tool_calls)
{
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (llmq_reply_tools_end (&reply), 0);
    ck_assert_uint_eq (reply.tool_calls.len, 0);
    ck_assert_int_eq (llmq_reply_tool (&reply, 5, NULL, "b", "{\"x\"", 4), 0);
    ck_assert_int_eq (llmq_reply_tool (&reply, 2, "id_a", "a", NULL, 0), 0);
    ck_assert_int_eq (llmq_reply_tool (&reply, 5, "late", "ignored", ":1}", 3), 0);
    ck_assert_int_eq (llmq_reply_tools_end (&reply), 0);
    ck_assert_str_eq (reply.tool_calls.p,
                      "[{\"id\":\"late\",\"type\":\"function\",\"function\":{\"name\":\"b\","
                      "\"arguments\":\"{\\\"x\\\":1}\"}},"
                      "{\"id\":\"id_a\",\"type\":\"function\",\"function\":{\"name\":\"a\","
                      "\"arguments\":\"{}\"}}]");
    /*  Reset empties everything; a call without an id gets call_<n>. */
    llmq_reply_reset (&reply);
    ck_assert_uint_eq (reply.tool_calls.len, 0);
    ck_assert_int_eq (llmq_reply_tool (&reply, 0, NULL, "f", "{}", 2), 0);
    ck_assert_int_eq (llmq_reply_tools_end (&reply), 0);
    ck_assert_ptr_nonnull (strstr (reply.tool_calls.p, "\"id\":\"call_0\""));
    /*  No name; arguments that are not UTF-8. */
    llmq_reply_reset (&reply);
    ck_assert_int_eq (llmq_reply_tool (&reply, 0, "x", NULL, "{}", 2), 0);
    ck_assert_int_eq (llmq_reply_tools_end (&reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (llmq_reply_tool (&reply, 0, "x", "f", "\xff", 1), 0);
    ck_assert_int_eq (llmq_reply_tools_end (&reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    llmq_reply_free (&reply);
    ck_assert_ptr_null (reply.tools);
}
END_TEST

/*  tools, tool_choice, response_format and tool messages reach the
    provider unchanged, on the fast path (no "model" in the body) and on
    the full one. */
START_TEST (test_request_tools_pass_through)
{
    static const char *bodies[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
        "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"sunny\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{}}}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},"
        "\"response_format\":{\"type\":\"json_object\"}}",
        "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
        "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"sunny\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{}}}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}},"
        "\"response_format\":{\"type\":\"json_object\"}}",
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < 2; i++) {
        json_t *in = json_loads (bodies[i], 0, NULL);
        ck_assert_ptr_nonnull (in);
        json_t *req = s_build (bodies[i], i == 1, &reply, 0);
        ck_assert_str_eq (json_string_value (json_object_get (req, "model")), s_dep.model);
        static const char *keys[] = { "tools", "tool_choice", "response_format", "messages" };
        for (size_t k = 0; k < 4; k++) {
            ck_assert_msg (json_equal (json_object_get (in, keys[k]), json_object_get (req, keys[k])),
                           "body %zu: %s changed", i, keys[k]);
        }
        json_decref (req);
        json_decref (in);
    }
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_parse_stream_errors)
{
    llmq_reply_t reply = { 0 };
    s_deltas_t deltas = { { 0 }, 0 };
    const char *ev = "{\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\"}}";
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_event (NULL, ev, strlen (ev), &reply, s_on_delta, &deltas), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_SERVER);
    ck_assert_str_eq (reply.error, "The server had an error");
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_event (NULL, "{\"choices\":[", 12, &reply, s_on_delta, &deltas), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    /*  Other choices than index 0 (n > 1) are not mixed in. */
    const char *two = "{\"choices\":[{\"index\":1,\"delta\":{\"content\":\"B\"}},"
                      "{\"index\":0,\"delta\":{\"content\":\"A\"}}]}";
    llmq_reply_reset (&reply);
    ck_assert_int_eq (openai->parse_event (NULL, two, strlen (two), &reply, s_on_delta, &deltas), 0);
    ck_assert_str_eq (reply.content.p, "A");
    ck_assert_int_eq (deltas.count, 1);
    llmq_text_free (&deltas.text);
    llmq_reply_free (&reply);
}
END_TEST

/* --- errors ---------------------------------------------------------- */

START_TEST (test_classify_error_bodies)
{
    static const struct {
        const char *file;
        long status;
        int ec;
        const char *starts;
    } cases[] = {
        { "openai_error_400.json", 400, LLMQ_EC_INVALID_REQUEST, "This model's maximum context length" },
        { "openai_error_401.json", 401, LLMQ_EC_AUTH, "Incorrect API key provided: sk-***" },
        { "openai_error_429.json", 429, LLMQ_EC_RATE_LIMITED, "Rate limit reached for gpt-4o-mini" },
        { "openai_error_500.json", 500, LLMQ_EC_SERVER, "The server had an error" },
        { "openai_error_500.json", 503, LLMQ_EC_SERVER, "The server had an error" },
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        char *body = fixture_read (cases[i].file, &len);
        llmq_reply_reset (&reply);
        openai->classify (cases[i].status, body, len, &reply);
        ck_assert_int_eq (reply.error_class, cases[i].ec);
        ck_assert_msg (strncmp (reply.error, cases[i].starts, strlen (cases[i].starts)) == 0,
                       "%s: got '%s'", cases[i].file, reply.error);
        free (body);
    }
    /*  The 401 message quotes part of the key: masked. */
    char *body = fixture_read ("openai_error_401.json", NULL);
    llmq_reply_reset (&reply);
    openai->classify (401, body, strlen (body), &reply);
    ck_assert_ptr_null (strstr (reply.error, "abc1"));
    ck_assert_ptr_null (strstr (reply.error, "wxyz"));
    ck_assert_ptr_nonnull (strstr (reply.error, "You can find your API key"));
    free (body);
    /*  Not JSON (a proxy's page): status and a printable excerpt. */
    const char *html = "<html>\r\n<h1>502 Bad Gateway</h1></html>";
    llmq_reply_reset (&reply);
    openai->classify (502, html, strlen (html), &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_SERVER);
    ck_assert_str_eq (reply.error, "HTTP 502: <html>  <h1>502 Bad Gateway</h1></html>");
    llmq_reply_reset (&reply);
    openai->classify (529, NULL, 0, &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_RATE_LIMITED);
    ck_assert_str_eq (reply.error, "HTTP 529");
    /*  {"error": "text"} as some compatible servers send. */
    llmq_reply_reset (&reply);
    openai->classify (404, "{\"error\":\"model 'x' not found\"}", 31, &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    ck_assert_str_eq (reply.error, "model 'x' not found");
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_status_classes)
{
    static const struct { long status; int ec; } table[] = {
        { 400, LLMQ_EC_INVALID_REQUEST }, { 404, LLMQ_EC_INVALID_REQUEST },
        { 413, LLMQ_EC_INVALID_REQUEST }, { 422, LLMQ_EC_INVALID_REQUEST },
        { 401, LLMQ_EC_AUTH }, { 403, LLMQ_EC_AUTH },
        { 408, LLMQ_EC_TIMEOUT }, { 409, LLMQ_EC_SERVER },
        { 429, LLMQ_EC_RATE_LIMITED }, { 529, LLMQ_EC_RATE_LIMITED },
        { 500, LLMQ_EC_SERVER }, { 502, LLMQ_EC_SERVER }, { 503, LLMQ_EC_SERVER },
        { 504, LLMQ_EC_SERVER }, { 599, LLMQ_EC_SERVER },
        { 0, LLMQ_EC_BAD_RESPONSE }, { 101, LLMQ_EC_BAD_RESPONSE }, { 302, LLMQ_EC_BAD_RESPONSE },
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        ck_assert_msg (llmq_http_error_class (table[i].status) == table[i].ec,
                       "HTTP %ld", table[i].status);
    }
    ck_assert_int_eq (llmq_transport_error_class (CURLE_OPERATION_TIMEDOUT, false), LLMQ_EC_TIMEOUT);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_OPERATION_TIMEDOUT, true), LLMQ_EC_STREAM_BROKEN);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_COULDNT_CONNECT, false), LLMQ_EC_CONNECTION);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_COULDNT_RESOLVE_HOST, false), LLMQ_EC_CONNECTION);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_RECV_ERROR, false), LLMQ_EC_CONNECTION);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_RECV_ERROR, true), LLMQ_EC_STREAM_BROKEN);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_PARTIAL_FILE, true), LLMQ_EC_STREAM_BROKEN);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_GOT_NOTHING, false), LLMQ_EC_CONNECTION);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_URL_MALFORMAT, false), LLMQ_EC_INTERNAL);
    ck_assert_int_eq (llmq_transport_error_class (CURLE_OK, false), LLMQ_EC_NONE);
}
END_TEST

START_TEST (test_retry_after)
{
    time_t now = 784111777;     /* Sun, 06 Nov 1994 08:49:37 GMT */
    ck_assert_uint_eq (llmq_retry_after_ms ("20", NULL, now), 20000);
    ck_assert_uint_eq (llmq_retry_after_ms (" 1.5 ", NULL, now), 1500);
    ck_assert_uint_eq (llmq_retry_after_ms ("0", NULL, now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms ("20", "250", now), 250);      /* -ms wins */
    ck_assert_uint_eq (llmq_retry_after_ms ("20", "12.2", now), 13);
    ck_assert_uint_eq (llmq_retry_after_ms ("20", "soon", now), 20000);   /* bad -ms ignored */
    ck_assert_uint_eq (llmq_retry_after_ms ("Sun, 06 Nov 1994 08:50:07 GMT", NULL, now), 30000);
    ck_assert_uint_eq (llmq_retry_after_ms ("Sun, 06 Nov 1994 08:49:00 GMT", NULL, now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms ("tomorrow", NULL, now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms ("-5", NULL, now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms ("12abc", NULL, now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms ("", "", now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms (NULL, NULL, now), 0);
    ck_assert_uint_eq (llmq_retry_after_ms ("99999999999", NULL, now), 24ull * 3600 * 1000);
}
END_TEST

START_TEST (test_reply_masks_keys)
{
    llmq_reply_t reply = { 0 };
    llmq_reply_fail (&reply, LLMQ_EC_AUTH, "bad key sk-abcdefghij and (sk-proj-XYZ_123) and task-x");
    ck_assert_str_eq (reply.error, "bad key sk-*** and (sk-***) and task-x");
    ck_assert_int_eq (reply.error_class, LLMQ_EC_AUTH);
    /*  Long reasons are cut, never overflow. */
    char longtext[1000];
    memset (longtext, 'a', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    llmq_reply_fail (&reply, LLMQ_EC_SERVER, "%s", longtext);
    ck_assert_uint_eq (strlen (reply.error), sizeof reply.error - 1);
}
END_TEST

START_TEST (test_registry)
{
    ck_assert_str_eq (openai->name, "openai");
    ck_assert_ptr_nonnull (openai->build);
    ck_assert_ptr_null (openai->answer);
    ck_assert_ptr_nonnull (echo->answer);
    ck_assert_ptr_null (llmq_provider_find ("nope"));
    ck_assert_ptr_null (llmq_provider_find (NULL));
    ck_assert_uint_eq (llmq_count_words ("  two\twords\n", 12), 2);
    ck_assert_uint_eq (llmq_count_words ("", 0), 0);
}
END_TEST

/* --- echo ------------------------------------------------------------ */

static void
s_echo (const char *body, bool stream, llmq_reply_t *reply, s_deltas_t *deltas, int expect_rc)
{
    llmq_job_t job = { .id = 42, .lease = 3, .model = "echo", .body = body, .stream = stream };
    llmq_deployment_t dep = { .name = (char *) "echo", .provider = (char *) "echo" };
    llmq_reply_reset (reply);
    ck_assert_int_eq (echo->answer (&dep, &job, reply, s_on_delta, deltas), expect_rc);
}

START_TEST (test_echo_content)
{
    llmq_reply_t reply = { 0 };
    s_deltas_t deltas = { { 0 }, 0 };
    s_echo ("{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
            "{\"role\":\"user\",\"content\":\"first question\"},"
            "{\"role\":\"assistant\",\"content\":\"an answer\"},"
            "{\"role\":\"user\",\"content\":\"say hello world\"}]}", false, &reply, &deltas, 0);
    ck_assert_str_eq (reply.content.p, "echo: say hello world");
    ck_assert_str_eq (reply.finish_reason, "stop");
    ck_assert_str_eq (reply.request_id, "echo-42");
    ck_assert_uint_eq (reply.prompt_tokens, 9);         /* 2 + 2 + 2 + 3 */
    ck_assert_uint_eq (reply.completion_tokens, 4);
    ck_assert_int_eq (deltas.count, 0);                 /* not streamed */

    /*  Content as an array of parts: the text parts count. */
    s_echo ("{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"look at\"},"
            "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x\"}},"
            "{\"type\":\"text\",\"text\":\"this\"}]}]}", false, &reply, &deltas, 0);
    ck_assert_str_eq (reply.content.p, "echo: look at this");
    ck_assert_uint_eq (reply.prompt_tokens, 3);
    ck_assert_uint_eq (reply.completion_tokens, 4);

    /*  No user message: the prefix alone. */
    s_echo ("{\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", false, &reply, &deltas, 0);
    ck_assert_str_eq (reply.content.p, "echo: ");

    s_echo ("{\"no\":\"messages\"}", false, &reply, &deltas, -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    s_echo ("garbage", true, &reply, &deltas, -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    llmq_text_free (&deltas.text);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_echo_streams_in_chunks)
{
    llmq_reply_t reply = { 0 };
    s_deltas_t deltas = { { 0 }, 0 };
    s_echo ("{\"messages\":[{\"role\":\"user\",\"content\":\"a fairly long sentence to split\"}]}",
            true, &reply, &deltas, 0);
    ck_assert_int_eq (deltas.count, 4);
    ck_assert_str_eq (deltas.text.p, reply.content.p);
    ck_assert_str_eq (reply.content.p, "echo: a fairly long sentence to split");

    /*  Multi-byte text: every chunk is whole UTF-8 (no chunk starts with a
        continuation byte), and together they are the content. */
    llmq_text_free (&deltas.text);
    deltas.count = 0;
    s_echo ("{\"messages\":[{\"role\":\"user\",\"content\":\"日本語のテキスト🚀🚀\"}]}",
            true, &reply, &deltas, 0);
    ck_assert_str_eq (deltas.text.p, reply.content.p);
    ck_assert_int_ge (deltas.count, 1);
    ck_assert_int_le (deltas.count, 4);
    llmq_text_free (&deltas.text);
    llmq_reply_free (&reply);
}
END_TEST

/*  Checks every chunk boundary of a stream lands on a UTF-8 start byte. */
typedef struct {
    int count;
    bool bad;
} s_utf8_t;

static void
s_on_utf8_delta (void *arg, const char *text, size_t len)
{
    s_utf8_t *u = arg;
    u->count++;
    if (((unsigned char) text[0] & 0xC0) == 0x80 || len == 0) {
        u->bad = true;
    }
}

START_TEST (test_echo_chunks_are_whole_utf8)
{
    llmq_job_t job = { .id = 1, .lease = 1, .stream = true,
                       .body = "{\"messages\":[{\"role\":\"user\",\"content\":\"🚀🚀🚀🚀🚀🚀\"}]}" };
    llmq_deployment_t dep = { .name = (char *) "echo", .provider = (char *) "echo" };
    llmq_reply_t reply = { 0 };
    s_utf8_t u = { 0, false };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (echo->answer (&dep, &job, &reply, s_on_utf8_delta, &u), 0);
    ck_assert (!u.bad);
    ck_assert_int_ge (u.count, 2);
    llmq_reply_free (&reply);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("provider_openai");
    TCase *tc = tcase_create ("request");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_request_streamed);
    tcase_add_test (tc, test_request_not_streamed);
    tcase_add_test (tc, test_request_text);
    tcase_add_test (tc, test_request_bad_bodies);
    tcase_add_test (tc, test_request_tools_pass_through);
    tcase_add_test (tc, test_endpoint_and_key);
    tcase_add_test (tc, test_azure_endpoint);
    suite_add_tcase (s, tc);

    tc = tcase_create ("response");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_parse_chat_completion);
    tcase_add_test (tc, test_parse_cached_tokens);
    tcase_add_test (tc, test_parse_bad_responses);
    tcase_add_test (tc, test_parse_stream_with_usage);
    tcase_add_test (tc, test_parse_stream_tool_calls);
    tcase_add_test (tc, test_reply_tool_calls);
    tcase_add_test (tc, test_parse_stream_errors);
    suite_add_tcase (s, tc);

    tc = tcase_create ("errors");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_classify_error_bodies);
    tcase_add_test (tc, test_status_classes);
    tcase_add_test (tc, test_retry_after);
    tcase_add_test (tc, test_reply_masks_keys);
    tcase_add_test (tc, test_registry);
    suite_add_tcase (s, tc);

    tc = tcase_create ("echo");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_echo_content);
    tcase_add_test (tc, test_echo_streams_in_chunks);
    tcase_add_test (tc, test_echo_chunks_are_whole_utf8);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    SRunner *sr = srunner_create (s_suite ());
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
