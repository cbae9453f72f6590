/*  test_anthropic.c -- the Anthropic Messages adapter (worker/provider_anthropic.c).

    Fixtures under fixtures/anthropic_* follow the examples of Anthropic's
    public API reference: a message, a message with a tool_use block, a
    stream (message_start ... message_stop), a stream cut by an error
    event, and error bodies. A job body (anthropic_job.json) is in the
    OpenAI shape every job has. No network: adapters never see one.
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


#define S_KEY_ENV "LLMQ_TEST_ANTHROPIC_KEY"
#define S_KEY     "sk-ant-api03-test0123456789SECRET"

static const llmq_provider_t *anthropic;

static llmq_deployment_t s_dep = {
    .name = (char *) "claude",
    .provider = (char *) "anthropic",
    .model = (char *) "claude-sonnet-4-20250514",
    .base_url = (char *) "http://127.0.0.1:9/v1/",
    .api_key_env = (char *) S_KEY_ENV,
    .timeout_ms = 60000,
    .connect_timeout_ms = 5000,
    .max_tokens = 1024,
};


static void
s_setup (void)
{
    anthropic = llmq_provider_find ("anthropic");
    ck_assert_ptr_nonnull (anthropic);
}

/*  Deltas emitted by the adapter, joined. */
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

/*  Build the request for `body` with `dep`; the parsed JSON, or NULL when
    the adapter refused (then rc was -1 as expected). */
static json_t *
s_build_dep (const llmq_deployment_t *dep, const char *body, bool stream, llmq_reply_t *reply,
             int expect_rc)
{
    llmq_job_t job = { .id = 7, .model = "claude", .body = body, .stream = stream, .lease = 1 };
    llmq_text_t out = { 0 };
    llmq_reply_reset (reply);
    int rc = anthropic->build (dep, &job, &out, reply);
    ck_assert_msg (rc == expect_rc, "build returned %d (%s) for %s", rc, reply->error, body);
    json_t *root = NULL;
    if (rc == 0) {
        ck_assert_int_eq (reply->error_class, LLMQ_EC_NONE);
        ck_assert_uint_eq (strlen (out.p), out.len);
        json_error_t jerr;
        root = json_loadb (out.p, out.len, 0, &jerr);
        ck_assert_msg (root != NULL, "built body is not JSON: %s", jerr.text);
    }
    llmq_text_free (&out);
    return root;
}

static json_t *
s_build (const char *body, bool stream, llmq_reply_t *reply, int expect_rc)
{
    return s_build_dep (&s_dep, body, stream, reply, expect_rc);
}

START_TEST (test_request_translated)
{
    char *body = fixture_read ("anthropic_job.json", NULL);
    llmq_reply_t reply = { 0 };
    json_t *req = s_build (body, true, &reply, 0);
    /*  Only fields the Messages API knows: it refuses any other. */
    static const char *allowed[] = { "model", "max_tokens", "system", "messages", "temperature",
                                     "top_p", "stop_sequences", "metadata", "stream", NULL };
    const char *key;
    json_t *value;
    json_object_foreach (req, key, value) {
        bool known = false;
        for (size_t i = 0; allowed[i]; i++) {
            known |= strcmp (key, allowed[i]) == 0;
        }
        ck_assert_msg (known, "field \"%s\" sent to Anthropic", key);
    }
    ck_assert_str_eq (json_string_value (json_object_get (req, "model")), s_dep.model);
    ck_assert_int_eq (json_integer_value (json_object_get (req, "max_tokens")), 1024);
    /*  System and developer messages, in order, become the system prompt. */
    ck_assert_str_eq (json_string_value (json_object_get (req, "system")),
                      "You are terse.\n\nAnswer in English.");
    json_t *msgs = json_object_get (req, "messages");
    ck_assert_uint_eq (json_array_size (msgs), 3);
    static const char *roles[] = { "user", "assistant", "user" };
    for (size_t i = 0; i < 3; i++) {
        json_t *m = json_array_get (msgs, i);
        ck_assert_str_eq (json_string_value (json_object_get (m, "role")), roles[i]);
        ck_assert_uint_eq (json_object_size (m), 2);
    }
    ck_assert_str_eq (json_string_value (json_object_get (json_array_get (msgs, 0), "content")),
                      "What is a queue?");
    ck_assert_str_eq (json_string_value (json_object_get (json_array_get (msgs, 1), "content")),
                      "A line of waiting items.");
    /*  An array of text parts becomes text blocks. */
    json_t *blocks = json_object_get (json_array_get (msgs, 2), "content");
    ck_assert_uint_eq (json_array_size (blocks), 2);
    ck_assert_str_eq (json_string_value (json_object_get (json_array_get (blocks, 0), "type")), "text");
    ck_assert_str_eq (json_string_value (json_object_get (json_array_get (blocks, 0), "text")),
                      "And a priority queue?");
    ck_assert_str_eq (json_string_value (json_object_get (json_array_get (blocks, 1), "text")),
                      "Be brief.");
    ck_assert (json_real_value (json_object_get (req, "temperature")) == 0.2);
    ck_assert (json_real_value (json_object_get (req, "top_p")) == 0.9);
    json_t *stops = json_object_get (req, "stop_sequences");
    ck_assert_uint_eq (json_array_size (stops), 1);
    ck_assert_str_eq (json_string_value (json_array_get (stops, 0)), "END");
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (req, "metadata"), "user_id")),
                      "user-1234");
    ck_assert (json_is_true (json_object_get (req, "stream")));
    json_decref (req);

    /*  Not streamed: the job's flag wins over the body's "stream": true. */
    req = s_build (body, false, &reply, 0);
    ck_assert (json_is_false (json_object_get (req, "stream")));
    json_decref (req);
    llmq_reply_free (&reply);
    free (body);
}
END_TEST

START_TEST (test_request_max_tokens)
{
    llmq_reply_t reply = { 0 };
    const char *plain = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    /*  The deployment's default, and the adapter's own when it has none. */
    llmq_deployment_t dep = s_dep;
    dep.max_tokens = 300;
    json_t *req = s_build_dep (&dep, plain, false, &reply, 0);
    ck_assert_int_eq (json_integer_value (json_object_get (req, "max_tokens")), 300);
    ck_assert_ptr_null (json_object_get (req, "system"));
    ck_assert_ptr_null (json_object_get (req, "stop_sequences"));
    ck_assert_ptr_null (json_object_get (req, "temperature"));
    json_decref (req);
    dep.max_tokens = 0;
    req = s_build_dep (&dep, plain, false, &reply, 0);
    ck_assert_int_eq (json_integer_value (json_object_get (req, "max_tokens")), 1024);
    json_decref (req);
    /*  The job's own: max_completion_tokens (the newer name) first. */
    req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":64}",
                   false, &reply, 0);
    ck_assert_int_eq (json_integer_value (json_object_get (req, "max_tokens")), 64);
    json_decref (req);
    req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":64,"
                   "\"max_completion_tokens\":32}", false, &reply, 0);
    ck_assert_int_eq (json_integer_value (json_object_get (req, "max_tokens")), 32);
    ck_assert_ptr_null (json_object_get (req, "max_completion_tokens"));
    json_decref (req);
    /*  "stop" as one string; an empty list sends nothing. */
    req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":\"\\n\\n\"}",
                   false, &reply, 0);
    ck_assert_str_eq (json_string_value (json_array_get (json_object_get (req, "stop_sequences"), 0)),
                      "\n\n");
    ck_assert_ptr_null (json_object_get (req, "stop"));
    json_decref (req);
    req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[]}", false, &reply, 0);
    ck_assert_ptr_null (json_object_get (req, "stop_sequences"));
    json_decref (req);
    /*  With no model in the deployment, the job's model group is sent. */
    dep = s_dep;
    dep.model = NULL;
    req = s_build_dep (&dep, plain, false, &reply, 0);
    ck_assert_str_eq (json_string_value (json_object_get (req, "model")), "claude");
    json_decref (req);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_request_bad_bodies)
{
    static const char *bad[] = {
        "", "not json", "[1,2]", "{}", "{\"messages\":[]}", "{\"messages\":\"hi\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]",                 /* truncated */
        "{\"messages\":[{\"role\":\"system\",\"content\":\"only a system prompt\"}]}",
        "{\"messages\":[{\"content\":\"no role\"}]}",
        "{\"messages\":[{\"role\":\"function\",\"name\":\"f\",\"content\":\"42\"}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}]}",
        "{\"messages\":[{\"role\":\"user\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\","
            "\"image_url\":{\"url\":\"https://example.com/x.png\"}}]}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":\"function\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":0}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":\"many\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":5}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[\"a\",1]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":\"hot\"}",
        /*  Tools: what cannot be translated faithfully. */
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"functions\":[{\"name\":\"f\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":\"custom\","
            "\"custom\":{\"name\":\"f\"}}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":{}}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":\"function\","
            "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"sometimes\"}",
        "{\"messages\":[{\"role\":\"tool\",\"content\":\"42\"}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\","
            "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"[1]\"}}]}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\",\"tool_calls\":[{\"id\":\"c\"}]}]}",
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s_build (bad[i], i % 2 == 0, &reply, -1);
        ck_assert_msg (reply.error_class == LLMQ_EC_INVALID_REQUEST, "%s: class %d",
                       bad[i], reply.error_class);
        ck_assert_str_ne (reply.error, "");
    }
    /*  The reason says what is wrong. */
    s_build (bad[9], false, &reply, -1);
    ck_assert_ptr_nonnull (strstr (reply.error, "role 'function'"));
    s_build (bad[12], false, &reply, -1);
    ck_assert_ptr_nonnull (strstr (reply.error, "image_url"));
    llmq_reply_free (&reply);
}
END_TEST

/*  OpenAI tools, tool_choice, assistant tool calls and tool results in
    Anthropic's shapes (the Messages API reference's tool use examples). */
START_TEST (test_request_tools)
{
    const char *body =
        "{\"messages\":["
        "{\"role\":\"user\",\"content\":\"What is the weather in Paris and in Rome?\"},"
        "{\"role\":\"assistant\",\"content\":\"Let me check.\",\"tool_calls\":["
        "{\"id\":\"toolu_01\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"arguments\":\"{\\\"location\\\":\\\"Paris\\\"}\"}},"
        "{\"id\":\"toolu_02\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"arguments\":\"\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"toolu_01\",\"content\":\"15 degrees\"},"
        "{\"role\":\"tool\",\"tool_call_id\":\"toolu_02\",\"content\":[{\"type\":\"text\",\"text\":\"18\"}]},"
        "{\"role\":\"user\",\"content\":\"Thanks\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
        "\"description\":\"Get the current weather in a given location\","
        "\"parameters\":{\"type\":\"object\",\"properties\":{\"location\":{\"type\":\"string\"}},"
        "\"required\":[\"location\"]}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}],"
        "\"tool_choice\":\"required\",\"parallel_tool_calls\":false,"
        "\"response_format\":{\"type\":\"json_object\"}}";
    llmq_reply_t reply = { 0 };
    json_t *req = s_build (body, false, &reply, 0);
    json_t *expect = json_loads (
        "{\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\","
        "\"properties\":{\"location\":{\"type\":\"string\"}},\"required\":[\"location\"]},"
        "\"description\":\"Get the current weather in a given location\"},"
        "{\"name\":\"get_time\",\"input_schema\":{\"type\":\"object\",\"properties\":{}}}],"
        "\"tool_choice\":{\"type\":\"any\",\"disable_parallel_tool_use\":true},"
        "\"messages\":["
        "{\"role\":\"user\",\"content\":\"What is the weather in Paris and in Rome?\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"Let me check.\"},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\",\"input\":{\"location\":\"Paris\"}},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_02\",\"name\":\"get_weather\",\"input\":{}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_01\","
        "\"content\":\"15 degrees\"},{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_02\","
        "\"content\":[{\"type\":\"text\",\"text\":\"18\"}]}]},"
        "{\"role\":\"user\",\"content\":\"Thanks\"}]}", 0, NULL);
    ck_assert_ptr_nonnull (expect);
    static const char *keys[] = { "tools", "tool_choice", "messages" };
    for (size_t k = 0; k < 3; k++) {
        char *got = json_dumps (json_object_get (req, keys[k]), JSON_COMPACT);
        ck_assert_msg (json_equal (json_object_get (req, keys[k]), json_object_get (expect, keys[k])),
                       "%s: %s", keys[k], got);
        free (got);
    }
    /*  response_format has no Anthropic field: left out, as before. */
    ck_assert_ptr_null (json_object_get (req, "response_format"));
    json_decref (expect);
    json_decref (req);

    /*  Each tool_choice. */
    static const char *choices[][2] = {
        { "\"auto\"", "{\"type\":\"auto\"}" },
        { "\"none\"", "{\"type\":\"none\"}" },
        { "\"required\"", "{\"type\":\"any\"}" },
        { "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}",
          "{\"type\":\"tool\",\"name\":\"get_time\"}" },
    };
    for (size_t i = 0; i < 4; i++) {
        char job[512];
        snprintf (job, sizeof job, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                  "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}],"
                  "\"tool_choice\":%s}", choices[i][0]);
        req = s_build (job, i % 2 == 0, &reply, 0);
        json_t *want = json_loads (choices[i][1], 0, NULL);
        ck_assert_msg (json_equal (json_object_get (req, "tool_choice"), want), "%s", choices[i][0]);
        json_decref (want);
        json_decref (req);
    }
    /*  No tools: no tool_choice either. */
    req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tool_choice\":\"auto\"}",
                   false, &reply, 0);
    ck_assert_ptr_null (json_object_get (req, "tools"));
    ck_assert_ptr_null (json_object_get (req, "tool_choice"));
    json_decref (req);
    llmq_reply_free (&reply);
}
END_TEST

static bool
s_has_header (const llmq_endpoint_t *ep, const char *line)
{
    for (struct curl_slist *h = ep->headers; h; h = h->next) {
        if (strcmp (h->data, line) == 0) {
            return true;
        }
    }
    return false;
}

START_TEST (test_endpoint_and_key)
{
    llmq_reply_t reply = { 0 };
    llmq_endpoint_t ep;
    setenv (S_KEY_ENV, S_KEY, 1);
    ck_assert_int_eq (anthropic->endpoint (&s_dep, S_KEY, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "http://127.0.0.1:9/v1/messages");
    ck_assert (s_has_header (&ep, "x-api-key: " S_KEY));
    ck_assert (s_has_header (&ep, "anthropic-version: 2023-06-01"));
    ck_assert (s_has_header (&ep, "Content-Type: application/json"));
    for (struct curl_slist *h = ep.headers; h; h = h->next) {
        ck_assert_ptr_null (strstr (h->data, "Authorization"));
    }
    llmq_endpoint_free (&ep);
    ck_assert_ptr_null (ep.url);

    /*  api_version is the anthropic-version header; no base_url is the
        public API. */
    llmq_deployment_t dep = s_dep;
    dep.api_version = (char *) "2024-10-22";
    dep.base_url = NULL;
    ck_assert_int_eq (anthropic->endpoint (&dep, S_KEY, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "https://api.anthropic.com/v1/messages");
    ck_assert (s_has_header (&ep, "anthropic-version: 2024-10-22"));
    ck_assert (!s_has_header (&ep, "anthropic-version: 2023-06-01"));
    llmq_endpoint_free (&ep);
    /*  No header smuggled in through a value. */
    dep.api_version = (char *) "2023-06-01\r\nX-Evil: 1";
    ck_assert_int_eq (anthropic->endpoint (&dep, S_KEY, &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INTERNAL);
    ck_assert_ptr_null (ep.url);

    /*  A key that cannot go in a header: AUTH, the key not quoted. */
    ck_assert_int_eq (anthropic->endpoint (&s_dep, "sk-ant-bad\nkey", &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_AUTH);
    ck_assert_ptr_null (strstr (reply.error, "bad"));
    ck_assert_ptr_null (ep.url);

    /*  No api_key_env (a local proxy that adds the key): no x-api-key. */
    dep = s_dep;
    dep.api_key_env = NULL;
    ck_assert_int_eq (anthropic->endpoint (&dep, NULL, &ep, &reply), 0);
    for (struct curl_slist *h = ep.headers; h; h = h->next) {
        ck_assert_ptr_null (strstr (h->data, "x-api-key"));
    }
    llmq_endpoint_free (&ep);
    llmq_reply_free (&reply);
}
END_TEST

/* --- responses ------------------------------------------------------- */

START_TEST (test_parse_message)
{
    size_t len;
    char *body = fixture_read ("anthropic_message.json", &len);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_response (body, len, &reply), 0);
    ck_assert_str_eq (reply.content.p, "Hi! My name is Claude.");
    ck_assert_str_eq (reply.finish_reason, "stop");
    ck_assert_str_eq (reply.request_id, "msg_013Zva2CMHLNnXjNJJKqJ2EF");
    ck_assert_uint_eq (reply.prompt_tokens, 2095);
    ck_assert_uint_eq (reply.completion_tokens, 503);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
    ck_assert (reply.finished);
    free (body);

    /*  Text around a tool_use block: the text blocks, joined; cached
        prompt tokens count as prompt tokens. */
    body = fixture_read ("anthropic_tool_use.json", &len);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_response (body, len, &reply), 0);
    ck_assert_str_eq (reply.content.p, "I'll check the weather in San Francisco. One moment.");
    ck_assert_str_eq (reply.finish_reason, "tool_calls");
    ck_assert_uint_eq (reply.prompt_tokens, 472 + 100 + 1000);
    ck_assert_uint_eq (reply.cached_tokens, 1000);          /* reads; writes are not */
    ck_assert_uint_eq (reply.completion_tokens, 91);
    /*  The tool_use block as an OpenAI tool call; its input as JSON text. */
    ck_assert_str_eq (reply.tool_calls.p,
                      "[{\"id\":\"toolu_01A09q90qw90lq917835lq9\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"get_weather\",\"arguments\":"
                      "\"{\\\"location\\\":\\\"San Francisco, CA\\\",\\\"unit\\\":\\\"celsius\\\"}\"}}]");
    free (body);

    /*  Only a tool_use block: empty text, not NULL. */
    const char *tool = "{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":\"tool_use\","
                       "\"id\":\"t\",\"name\":\"f\",\"input\":{}}],\"stop_reason\":\"tool_use\"}";
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_response (tool, strlen (tool), &reply), 0);
    ck_assert_ptr_nonnull (reply.content.p);
    ck_assert_str_eq (reply.content.p, "");
    ck_assert_str_eq (reply.tool_calls.p, "[{\"id\":\"t\",\"type\":\"function\",\"function\":"
                                          "{\"name\":\"f\",\"arguments\":\"{}\"}}]");
    /*  A tool_use block without a name is a bad answer. */
    const char *noname = "{\"id\":\"msg_1\",\"type\":\"message\",\"content\":[{\"type\":"
                         "\"tool_use\",\"id\":\"t\",\"input\":{}}],\"stop_reason\":\"tool_use\"}";
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_response (noname, strlen (noname), &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_stop_reasons)
{
    static const char *map[][2] = {
        { "end_turn", "stop" }, { "stop_sequence", "stop" }, { "max_tokens", "length" },
        { "tool_use", "tool_calls" }, { "refusal", "content_filter" },
        { "pause_turn", "pause_turn" },         /* unknown to us: passed on as is */
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        /*  In a whole message... */
        char body[256];
        snprintf (body, sizeof body, "{\"id\":\"m\",\"type\":\"message\",\"content\":"
                  "[{\"type\":\"text\",\"text\":\"x\"}],\"stop_reason\":\"%s\"}", map[i][0]);
        llmq_reply_reset (&reply);
        ck_assert_int_eq (anthropic->parse_response (body, strlen (body), &reply), 0);
        ck_assert_str_eq (reply.finish_reason, map[i][1]);
        /*  ...and in a stream's message_delta. */
        snprintf (body, sizeof body, "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"%s\","
                  "\"stop_sequence\":null},\"usage\":{\"output_tokens\":7}}", map[i][0]);
        llmq_reply_reset (&reply);
        ck_assert_int_eq (anthropic->parse_event ("message_delta", body, strlen (body), &reply,
                                                  NULL, NULL), 0);
        ck_assert_str_eq (reply.finish_reason, map[i][1]);
        ck_assert (reply.finished);
        ck_assert_uint_eq (reply.completion_tokens, 7);
    }
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_parse_bad_responses)
{
    static const char *bad[] = {
        "", "<html>502 Bad Gateway</html>", "[]", "{}", "{\"id\":\"x\",\"type\":\"message\"}",
        "{\"content\":\"text\"}", "{\"content\":[{\"type\":\"text\",\"text\":42}]}",
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        llmq_reply_reset (&reply);
        ck_assert_int_eq (anthropic->parse_response (bad[i], strlen (bad[i]), &reply), -1);
        ck_assert_msg (reply.error_class == LLMQ_EC_BAD_RESPONSE, "%s: class %d", bad[i],
                       reply.error_class);
    }
    /*  An error object in a 2xx body: its type gives the class. */
    size_t len;
    char *body = fixture_read ("anthropic_error_529.json", &len);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_response (body, len, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_RATE_LIMITED);
    ck_assert_str_eq (reply.error, "overloaded_error: Overloaded");
    free (body);
    llmq_reply_free (&reply);
}
END_TEST

/*  The SSE parser hands events to the adapter, as the worker does. */
typedef struct {
    llmq_reply_t reply;
    s_deltas_t deltas;
} s_stream_t;

static int
s_on_event (void *arg, const char *event, const char *data, size_t len)
{
    s_stream_t *st = arg;
    return anthropic->parse_event (event, data, len, &st->reply, s_on_delta, &st->deltas) ? 1 : 0;
}

static void
s_stream_free (s_stream_t *st)
{
    llmq_reply_free (&st->reply);
    llmq_text_free (&st->deltas.text);
}

/*  Feed text[0..len) to a fresh parser in two pieces cut at `cut`;
    returns the last llmq_sse_feed result. */
static int
s_feed_split (const char *text, size_t len, size_t cut, s_stream_t *st)
{
    memset (st, 0, sizeof *st);
    llmq_reply_reset (&st->reply);
    llmq_sse_t *sse = llmq_sse_new (s_on_event, st);
    ck_assert_ptr_nonnull (sse);
    int rc = llmq_sse_feed (sse, text, cut);
    if (rc == 0) {
        rc = llmq_sse_feed (sse, text + cut, len - cut);
    }
    /*  Anthropic ends with message_stop, never with [DONE]. */
    ck_assert (!llmq_sse_done (sse));
    llmq_sse_destroy (&sse);
    return rc;
}

/*  A stream with text, then two tool_use blocks (one without input),
    cut at every byte: the text streams, the calls come whole at the end. */
START_TEST (test_parse_stream_tool_use)
{
    size_t len;
    char *text = fixture_read ("anthropic_tool_stream.sse", &len);
    const char *said = "Okay, let's check the weather for San Francisco, CA:";
    const char *calls =
        "[{\"id\":\"toolu_01T1x1fJ34qAmk2tNTrN7Up6\",\"type\":\"function\",\"function\":"
        "{\"name\":\"get_weather\",\"arguments\":"
        "\"{\\\"location\\\": \\\"San Francisco, CA\\\", \\\"unit\\\": \\\"fahrenheit\\\"}\"}},"
        "{\"id\":\"toolu_01Ab2cD3eF4gH5iJ6kL7mN8o\",\"type\":\"function\",\"function\":"
        "{\"name\":\"get_time\",\"arguments\":\"{}\"}}]";
    for (size_t cut = 0; cut <= len; cut++) {
        s_stream_t st;
        ck_assert_int_eq (s_feed_split (text, len, cut, &st), 0);
        ck_assert_msg (st.reply.tool_calls.p && strcmp (st.reply.tool_calls.p, calls) == 0,
                       "cut at %zu: %s", cut, st.reply.tool_calls.p ? st.reply.tool_calls.p : "(null)");
        ck_assert_str_eq (st.reply.content.p, said);
        ck_assert_str_eq (st.deltas.text.p, said);
        ck_assert_str_eq (st.reply.finish_reason, "tool_calls");
        ck_assert (st.reply.finished);
        ck_assert_uint_eq (st.reply.prompt_tokens, 472);
        ck_assert_uint_eq (st.reply.completion_tokens, 89);
        ck_assert_int_eq (st.reply.error_class, LLMQ_EC_NONE);
        s_stream_free (&st);
    }
    free (text);
}
END_TEST

START_TEST (test_parse_stream)
{
    size_t len;
    char *text = fixture_read ("anthropic_stream.sse", &len);
    const char *expected = "Hello! How can I help — café 🚀?";
    /*  Cut at every byte, as a network may: always the same answer. */
    for (size_t cut = 0; cut <= len; cut++) {
        s_stream_t st;
        ck_assert_int_eq (s_feed_split (text, len, cut, &st), 0);
        ck_assert_msg (st.reply.content.p && strcmp (st.reply.content.p, expected) == 0,
                       "cut at %zu: '%s'", cut, st.reply.content.p ? st.reply.content.p : "(null)");
        ck_assert_str_eq (st.deltas.text.p, expected);
        ck_assert_int_eq (st.deltas.count, 4);
        ck_assert_str_eq (st.reply.finish_reason, "stop");
        ck_assert (st.reply.finished);
        ck_assert_str_eq (st.reply.request_id, "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY");
        ck_assert_uint_eq (st.reply.prompt_tokens, 25);
        ck_assert_uint_eq (st.reply.completion_tokens, 15);
        ck_assert_int_eq (st.reply.error_class, LLMQ_EC_NONE);
        s_stream_free (&st);
    }
    /*  One byte at a time. */
    s_stream_t st;
    memset (&st, 0, sizeof st);
    llmq_reply_reset (&st.reply);
    llmq_sse_t *sse = llmq_sse_new (s_on_event, &st);
    for (size_t i = 0; i < len; i++) {
        ck_assert_int_eq (llmq_sse_feed (sse, text + i, 1), 0);
    }
    ck_assert_str_eq (st.reply.content.p, expected);
    ck_assert_int_eq (st.deltas.count, 4);
    llmq_sse_destroy (&sse);
    s_stream_free (&st);

    /*  Cut before message_delta: text so far, but not a whole answer (the
        worker then reports the stream broken). */
    const char *md = strstr (text, "event: message_delta");
    ck_assert_ptr_nonnull (md);
    ck_assert_int_eq (s_feed_split (text, (size_t) (md - text), 0, &st), 0);
    ck_assert_str_eq (st.reply.content.p, expected);
    ck_assert (!st.reply.finished);
    ck_assert_uint_eq (st.reply.completion_tokens, 1);     /* message_start's count */
    s_stream_free (&st);
    free (text);
}
END_TEST

/*  Prompt caching in a stream: message_start's usage brings the cache
    read (input_tokens excludes it); a message_delta with output_tokens only
    keeps it, one repeating the input counts (cumulative) sets it again. */
START_TEST (test_parse_stream_cached_tokens)
{
    const char *start =
        "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_c1\",\"type\":\"message\","
        "\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,"
        "\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,"
        "\"cache_read_input_tokens\":2000,\"output_tokens\":1}}}";
    const char *delta = "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
                        "\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}";
    const char *cumulative =
        "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},"
        "\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":10,"
        "\"cache_read_input_tokens\":1990,\"output_tokens\":15}}";
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_event ("message_start", start, strlen (start), &reply, NULL, NULL), 0);
    ck_assert_uint_eq (reply.prompt_tokens, 2025);
    ck_assert_uint_eq (reply.cached_tokens, 2000);
    ck_assert_int_eq (anthropic->parse_event ("message_delta", delta, strlen (delta), &reply, NULL, NULL), 0);
    ck_assert (reply.finished);
    ck_assert_uint_eq (reply.prompt_tokens, 2025);
    ck_assert_uint_eq (reply.cached_tokens, 2000);
    ck_assert_uint_eq (reply.completion_tokens, 15);

    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_event ("message_start", start, strlen (start), &reply, NULL, NULL), 0);
    ck_assert_int_eq (anthropic->parse_event ("message_delta", cumulative, strlen (cumulative), &reply,
                                              NULL, NULL), 0);
    ck_assert_uint_eq (reply.prompt_tokens, 25 + 10 + 1990);
    ck_assert_uint_eq (reply.cached_tokens, 1990);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_parse_stream_error_event)
{
    size_t len;
    char *text = fixture_read ("anthropic_stream_error.sse", &len);
    for (size_t cut = 0; cut <= len; cut += 5) {
        s_stream_t st;
        /*  The error event stops the parser: the call fails. */
        ck_assert_int_eq (s_feed_split (text, len, cut, &st), -1);
        ck_assert_int_eq (st.reply.error_class, LLMQ_EC_RATE_LIMITED);
        ck_assert_str_eq (st.reply.error, "overloaded_error: Overloaded");
        ck_assert_str_eq (st.reply.content.p, "Once upon");      /* what the client got */
        ck_assert (!st.reply.finished);
        s_stream_free (&st);
    }
    free (text);

    /*  Other error types mid-stream, by type; the "event:" line alone
        also marks an error. */
    static const struct { const char *type; int ec; } types[] = {
        { "api_error", LLMQ_EC_SERVER }, { "overloaded_error", LLMQ_EC_RATE_LIMITED },
        { "rate_limit_error", LLMQ_EC_RATE_LIMITED }, { "invalid_request_error", LLMQ_EC_INVALID_REQUEST },
        { "authentication_error", LLMQ_EC_AUTH }, { "something_new", LLMQ_EC_SERVER },
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        char ev[200];
        snprintf (ev, sizeof ev, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"m\"}}",
                  types[i].type);
        llmq_reply_reset (&reply);
        ck_assert_int_eq (anthropic->parse_event ("error", ev, strlen (ev), &reply, NULL, NULL), -1);
        ck_assert_int_eq (reply.error_class, types[i].ec);
        snprintf (ev, sizeof ev, "{\"error\":{\"type\":\"%s\",\"message\":\"m\"}}", types[i].type);
        llmq_reply_reset (&reply);
        ck_assert_int_eq (anthropic->parse_event ("error", ev, strlen (ev), &reply, NULL, NULL), -1);
        ck_assert_int_eq (reply.error_class, types[i].ec);
    }
    /*  An event that is not JSON; an unknown event type and ping are fine. */
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_event ("content_block_delta", "{\"type\":\"cont", 13,
                                              &reply, NULL, NULL), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (anthropic->parse_event ("ping", "{\"type\":\"ping\"}", 15, &reply, NULL, NULL), 0);
    ck_assert_int_eq (anthropic->parse_event ("future", "{\"type\":\"future\"}", 17, &reply, NULL, NULL), 0);
    /*  Deltas that are not text (tool input, thinking) are not sent. */
    const char *json_delta = "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":"
                             "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}";
    ck_assert_int_eq (anthropic->parse_event (NULL, json_delta, strlen (json_delta), &reply,
                                              NULL, NULL), 0);
    ck_assert_uint_eq (reply.content.len, 0);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
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
        /*  Too long a prompt is a 400 like any invalid request: not retried. */
        { "anthropic_error_400.json", 400, LLMQ_EC_INVALID_REQUEST,
          "invalid_request_error: prompt is too long: 208310 tokens > 200000 maximum" },
        { "anthropic_error_401.json", 401, LLMQ_EC_AUTH, "authentication_error: invalid x-api-key" },
        { "anthropic_error_429.json", 429, LLMQ_EC_RATE_LIMITED, "rate_limit_error: This request would" },
        { "anthropic_error_500.json", 500, LLMQ_EC_SERVER, "api_error: Internal server error" },
        { "anthropic_error_529.json", 529, LLMQ_EC_RATE_LIMITED, "overloaded_error: Overloaded" },
    };
    llmq_reply_t reply = { 0 };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len;
        char *body = fixture_read (cases[i].file, &len);
        llmq_reply_reset (&reply);
        anthropic->classify (cases[i].status, body, len, &reply);
        ck_assert_int_eq (reply.error_class, cases[i].ec);
        ck_assert_msg (strncmp (reply.error, cases[i].starts, strlen (cases[i].starts)) == 0,
                       "%s: got '%s'", cases[i].file, reply.error);
        free (body);
    }
    /*  429 and 529 are retried, after the wait the provider asks for
        (Anthropic sends retry-after in seconds; the worker reads it). */
    ck_assert (llmq_error_class_retryable (LLMQ_EC_RATE_LIMITED));
    ck_assert (!llmq_error_class_retryable (LLMQ_EC_INVALID_REQUEST));
    ck_assert_uint_eq (llmq_retry_after_ms ("17", NULL, time (NULL)), 17000);
    /*  Not JSON (a proxy's page): status and a printable excerpt. */
    const char *html = "<html>\r\n<h1>502 Bad Gateway</h1></html>";
    llmq_reply_reset (&reply);
    anthropic->classify (502, html, strlen (html), &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_SERVER);
    ck_assert_str_eq (reply.error, "HTTP 502: <html>  <h1>502 Bad Gateway</h1></html>");
    llmq_reply_reset (&reply);
    anthropic->classify (529, NULL, 0, &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_RATE_LIMITED);
    ck_assert_str_eq (reply.error, "HTTP 529");
    /*  The status decides, whatever the type says. */
    const char *odd = "{\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"busy\"}}";
    llmq_reply_reset (&reply);
    anthropic->classify (404, odd, strlen (odd), &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    ck_assert_str_eq (reply.error, "api_error: busy");
    /*  A key quoted back is masked. */
    const char *leak = "{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\","
                       "\"message\":\"invalid x-api-key " S_KEY "\"}}";
    llmq_reply_reset (&reply);
    anthropic->classify (401, leak, strlen (leak), &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_AUTH);
    ck_assert_ptr_null (strstr (reply.error, "SECRET"));
    ck_assert_ptr_nonnull (strstr (reply.error, "invalid x-api-key sk-***"));
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_registered)
{
    const llmq_provider_t *p = llmq_provider_find ("anthropic");
    ck_assert_ptr_nonnull (p);
    ck_assert_str_eq (p->name, "anthropic");
    /*  An HTTP provider: every hook but answer. */
    ck_assert_ptr_null (p->answer);
    ck_assert_ptr_nonnull (p->endpoint);
    ck_assert_ptr_nonnull (p->build);
    ck_assert_ptr_nonnull (p->parse_response);
    ck_assert_ptr_nonnull (p->parse_event);
    ck_assert_ptr_nonnull (p->classify);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("provider_anthropic");
    TCase *tc = tcase_create ("registry");
    tcase_add_test (tc, test_registered);
    suite_add_tcase (s, tc);

    tc = tcase_create ("request");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_request_translated);
    tcase_add_test (tc, test_request_max_tokens);
    tcase_add_test (tc, test_request_bad_bodies);
    tcase_add_test (tc, test_request_tools);
    tcase_add_test (tc, test_endpoint_and_key);
    suite_add_tcase (s, tc);

    tc = tcase_create ("response");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_parse_message);
    tcase_add_test (tc, test_stop_reasons);
    tcase_add_test (tc, test_parse_bad_responses);
    tcase_add_test (tc, test_parse_stream);
    tcase_add_test (tc, test_parse_stream_tool_use);
    tcase_add_test (tc, test_parse_stream_cached_tokens);
    tcase_add_test (tc, test_parse_stream_error_event);
    suite_add_tcase (s, tc);

    tc = tcase_create ("errors");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_classify_error_bodies);
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
