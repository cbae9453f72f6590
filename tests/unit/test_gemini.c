/*  test_gemini.c -- the Gemini adapter (worker/provider_gemini.c).

    Fixtures under fixtures/gemini_* follow the shapes of Google's public
    Generative Language API reference: a GenerateContentResponse, an SSE
    stream of them (alt=sse, CRLF framed), Google RPC error bodies, and the
    two ways a safety block shows (promptFeedback.blockReason, and a
    candidate finished for SAFETY with no text). No network.
*/
#include "fixture.h"
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "provider.h"
#include "sse.h"


#define S_KEY_ENV "LLMQ_TEST_GEMINI_KEY"
#define S_KEY     "AIzaSyD-test0123456789abcdefSECRETxyz"

static const llmq_provider_t *gemini;

static llmq_deployment_t s_dep = {
    .name = (char *) "gemini-flash",
    .provider = (char *) "gemini",
    .model = (char *) "gemini-2.0-flash",
    .base_url = (char *) "http://127.0.0.1:9/v1beta/",
    .api_key_env = (char *) S_KEY_ENV,
    .timeout_ms = 60000,
    .connect_timeout_ms = 5000,
};


static void
s_setup (void)
{
    gemini = llmq_provider_find ("gemini");
    ck_assert_ptr_nonnull (gemini);
    setenv (S_KEY_ENV, S_KEY, 1);
}

/* --- registry -------------------------------------------------------- */

START_TEST (test_registered)
{
    const llmq_provider_t *p = llmq_provider_find ("gemini");
    ck_assert_ptr_nonnull (p);
    ck_assert_str_eq (p->name, "gemini");
    /*  An HTTP adapter: every callback but answer. */
    ck_assert_ptr_null (p->answer);
    ck_assert_ptr_nonnull (p->endpoint);
    ck_assert_ptr_nonnull (p->build);
    ck_assert_ptr_nonnull (p->parse_response);
    ck_assert_ptr_nonnull (p->parse_event);
    ck_assert_ptr_nonnull (p->classify);
}
END_TEST

/* --- endpoint -------------------------------------------------------- */

static bool
s_has_header (const struct curl_slist *h, const char *line)
{
    for (; h; h = h->next) {
        if (strcmp (h->data, line) == 0) {
            return true;
        }
    }
    return false;
}

START_TEST (test_endpoint_url_and_key)
{
    llmq_endpoint_t ep;
    llmq_reply_t reply = { 0 };
    ck_assert_int_eq (gemini->endpoint (&s_dep, S_KEY, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "http://127.0.0.1:9/v1beta/models/gemini-2.0-flash:generateContent");
    ck_assert_str_eq (ep.stream_url,
                      "http://127.0.0.1:9/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse");
    ck_assert (s_has_header (ep.headers, "x-goog-api-key: " S_KEY));
    ck_assert (s_has_header (ep.headers, "Content-Type: application/json"));
    /*  The key is in the header only: not in the URL, no Bearer token. */
    ck_assert_ptr_null (strstr (ep.url, "key="));
    for (const struct curl_slist *h = ep.headers; h; h = h->next) {
        ck_assert_ptr_null (strstr (h->data, "Authorization"));
    }
    llmq_endpoint_free (&ep);
    llmq_endpoint_free (&ep);       /* safe twice */

    /*  The resource-name form of a model and a base URL without a slash. */
    llmq_deployment_t dep = s_dep;
    dep.model = (char *) "models/gemini-1.5-pro-002";
    dep.base_url = (char *) "https://generativelanguage.googleapis.com/v1beta";
    ck_assert_int_eq (gemini->endpoint (&dep, S_KEY, &ep, &reply), 0);
    ck_assert_str_eq (ep.url, "https://generativelanguage.googleapis.com/v1beta/models/"
                      "gemini-1.5-pro-002:generateContent");
    llmq_endpoint_free (&ep);

    /*  No api_key_env: no key header at all (a local gateway). */
    dep.api_key_env = NULL;
    ck_assert_int_eq (gemini->endpoint (&dep, NULL, &ep, &reply), 0);
    for (const struct curl_slist *h = ep.headers; h; h = h->next) {
        ck_assert_ptr_null (strstr (h->data, "x-goog-api-key"));
    }
    llmq_endpoint_free (&ep);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_endpoint_refusals)
{
    llmq_endpoint_t ep;
    llmq_reply_t reply = { 0 };
    llmq_deployment_t dep = s_dep;
    ck_assert_int_eq (gemini->endpoint (&dep, "AIza-bad\r\nX-Evil: 1", &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_AUTH);
    ck_assert_ptr_null (strstr (reply.error, "bad"));
    ck_assert_ptr_null (ep.url);

    llmq_reply_reset (&reply);
    dep = s_dep;
    dep.model = (char *) "gemini/../../admin?x=";
    ck_assert_int_eq (gemini->endpoint (&dep, S_KEY, &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INTERNAL);

    llmq_reply_reset (&reply);
    dep = s_dep;
    dep.base_url = NULL;
    ck_assert_int_eq (gemini->endpoint (&dep, S_KEY, &ep, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INTERNAL);
    llmq_reply_free (&reply);
}
END_TEST

/* --- request --------------------------------------------------------- */

static json_t *
s_build_dep (const llmq_deployment_t *dep, const char *body, bool stream, llmq_reply_t *reply,
             int expect_rc)
{
    llmq_job_t job = { .id = 7, .model = "flash", .body = body, .stream = stream, .lease = 1 };
    llmq_text_t out = { 0 };
    llmq_reply_reset (reply);
    int rc = gemini->build (dep, &job, &out, reply);
    ck_assert_msg (rc == expect_rc, "build returned %d (%s)", rc, reply->error);
    json_t *root = NULL;
    if (rc == 0) {
        ck_assert_uint_eq (strlen (out.p), out.len);
        json_error_t jerr;
        root = json_loadb (out.p, out.len, 0, &jerr);
        ck_assert_msg (root != NULL, "built body is not JSON: %s", jerr.text);
    }
    else {
        ck_assert_int_ne (reply->error_class, LLMQ_EC_NONE);
        ck_assert (reply->error[0] != '\0');
    }
    llmq_text_free (&out);
    return root;
}

static json_t *
s_build (const char *body, llmq_reply_t *reply, int expect_rc)
{
    return s_build_dep (&s_dep, body, false, reply, expect_rc);
}

static const char *
s_text_at (json_t *contents, size_t i, size_t part)
{
    json_t *parts = json_object_get (json_array_get (contents, i), "parts");
    return json_string_value (json_object_get (json_array_get (parts, part), "text"));
}

START_TEST (test_request_translated)
{
    char *body = fixture_read ("gemini_request.json", NULL);
    llmq_reply_t reply = { 0 };
    json_t *req = s_build (body, &reply, 0);

    /*  Only Gemini's fields: no model, stream or OpenAI names. */
    ck_assert_ptr_null (json_object_get (req, "messages"));
    ck_assert_ptr_null (json_object_get (req, "model"));
    ck_assert_ptr_null (json_object_get (req, "stream"));
    ck_assert_uint_eq (json_object_size (req), 3);

    json_t *contents = json_object_get (req, "contents");
    ck_assert_uint_eq (json_array_size (contents), 3);
    const char *roles[] = { "user", "model", "user" };
    for (size_t i = 0; i < 3; i++) {
        ck_assert_str_eq (json_string_value (json_object_get (json_array_get (contents, i), "role")),
                          roles[i]);
    }
    ck_assert_str_eq (s_text_at (contents, 0, 0), "Write a story about a magic backpack.");
    ck_assert_str_eq (s_text_at (contents, 1, 0), "Which genre?");
    /*  An array content keeps its parts. */
    ck_assert_str_eq (s_text_at (contents, 2, 0), "Fantasy,");
    ck_assert_str_eq (s_text_at (contents, 2, 1), "short please.");

    json_t *sys = json_object_get (json_object_get (req, "systemInstruction"), "parts");
    ck_assert_uint_eq (json_array_size (sys), 1);
    ck_assert_str_eq (json_string_value (json_object_get (json_array_get (sys, 0), "text")),
                      "You are a terse assistant.");

    json_t *gc = json_object_get (req, "generationConfig");
    ck_assert (json_real_value (json_object_get (gc, "temperature")) == 0.2);
    ck_assert (json_real_value (json_object_get (gc, "topP")) == 0.9);
    ck_assert_int_eq (json_integer_value (json_object_get (gc, "maxOutputTokens")), 64);
    json_t *stop = json_object_get (gc, "stopSequences");
    ck_assert_uint_eq (json_array_size (stop), 2);
    ck_assert_str_eq (json_string_value (json_array_get (stop, 0)), "THE END");
    ck_assert_uint_eq (json_object_size (gc), 4);
    json_decref (req);

    /*  The same job streamed builds the same body (the URL differs). */
    req = s_build_dep (&s_dep, body, true, &reply, 0);
    ck_assert_ptr_null (json_object_get (req, "stream"));
    ck_assert_uint_eq (json_array_size (json_object_get (req, "contents")), 3);
    json_decref (req);
    free (body);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_request_generation_config)
{
    llmq_reply_t reply = { 0 };
    /*  Nothing to configure: no generationConfig, no systemInstruction. */
    json_t *req = s_build ("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &reply, 0);
    ck_assert_ptr_null (json_object_get (req, "generationConfig"));
    ck_assert_ptr_null (json_object_get (req, "systemInstruction"));
    json_decref (req);

    /*  The deployment's default applies when the job gives none... */
    llmq_deployment_t dep = s_dep;
    dep.max_tokens = 300;
    req = s_build_dep (&dep, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", false, &reply, 0);
    ck_assert_int_eq (json_integer_value (json_object_get (json_object_get (req, "generationConfig"),
                                                           "maxOutputTokens")), 300);
    json_decref (req);
    /*  ...and the job's wins, max_completion_tokens over max_tokens. */
    req = s_build_dep (&dep, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                       "\"max_tokens\":5,\"max_completion_tokens\":9,\"stop\":\"END\",\"seed\":42,"
                       "\"presence_penalty\":0,\"frequency_penalty\":0.5,"
                       "\"response_format\":{\"type\":\"json_object\"}}",
                       false, &reply, 0);
    json_t *gc = json_object_get (req, "generationConfig");
    /*  A zero penalty is OpenAI's default: not sent (some models refuse it). */
    ck_assert_ptr_null (json_object_get (gc, "presencePenalty"));
    ck_assert (json_real_value (json_object_get (gc, "frequencyPenalty")) == 0.5);
    ck_assert_str_eq (json_string_value (json_object_get (gc, "responseMimeType")), "application/json");
    ck_assert_int_eq (json_integer_value (json_object_get (gc, "maxOutputTokens")), 9);
    ck_assert_str_eq (json_string_value (json_array_get (json_object_get (gc, "stopSequences"), 0)), "END");
    ck_assert_int_eq (json_integer_value (json_object_get (gc, "seed")), 42);
    json_decref (req);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_request_refusals)
{
    llmq_reply_t reply = { 0 };
    const char *bad[] = {
        "",
        "not json",
        "[1,2]",
        "{\"messages\":[]}",
        "{\"messages\":[{\"role\":\"system\",\"content\":\"only a system prompt\"}]}",
        "{\"messages\":[{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"x\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"temperature\":\"hot\"}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":0}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"stop\":[1]}",
        "{\"messages\":[{\"content\":\"no role\"}]}",
        /*  Tools: the call a tool message answers must be known (Gemini
            wants its function name); legacy fields and types. */
        "{\"messages\":[{\"role\":\"function\",\"name\":\"f\",\"content\":\"42\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"functions\":[{\"name\":\"f\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":\"function\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":\"function\","
            "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"maybe\"}",
        "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c\","
            "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"nope\"}}]}]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *req = s_build (bad[i], &reply, -1);
        ck_assert_ptr_null (req);
        ck_assert_msg (reply.error_class == LLMQ_EC_INVALID_REQUEST, "case %zu: class %d (%s)",
                       i, reply.error_class, reply.error);
    }
    llmq_reply_free (&reply);
}
END_TEST

/*  Tools, tool_choice, calls and their results in Gemini's shapes (the
    function calling guide's request examples). */
START_TEST (test_request_tools)
{
    const char *body =
        "{\"messages\":["
        "{\"role\":\"user\",\"content\":\"Schedule a meeting with Bob\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":["
        "{\"id\":\"call_0\",\"type\":\"function\",\"function\":{\"name\":\"schedule_meeting\","
        "\"arguments\":\"{\\\"attendees\\\":[\\\"Bob\\\"]}\"}},"
        "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_0\",\"content\":\"{\\\"ok\\\":true}\"},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"10:00\"},"
        "{\"role\":\"user\",\"content\":\"Thanks\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"schedule_meeting\","
        "\"description\":\"Schedules a meeting\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{\"attendees\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}}}}},"
        "{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}],"
        "\"tool_choice\":{\"type\":\"function\",\"function\":{\"name\":\"get_time\"}}}";
    llmq_reply_t reply = { 0 };
    json_t *req = s_build (body, &reply, 0);
    json_t *expect = json_loads (
        "{\"contents\":["
        "{\"role\":\"user\",\"parts\":[{\"text\":\"Schedule a meeting with Bob\"}]},"
        "{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"schedule_meeting\","
        "\"args\":{\"attendees\":[\"Bob\"]}}},{\"functionCall\":{\"name\":\"get_time\",\"args\":{}}}]},"
        "{\"role\":\"user\",\"parts\":[{\"functionResponse\":{\"name\":\"schedule_meeting\","
        "\"response\":{\"ok\":true}}},{\"functionResponse\":{\"name\":\"get_time\","
        "\"response\":{\"content\":\"10:00\"}}}]},"
        "{\"role\":\"user\",\"parts\":[{\"text\":\"Thanks\"}]}],"
        "\"tools\":[{\"functionDeclarations\":[{\"name\":\"schedule_meeting\","
        "\"description\":\"Schedules a meeting\",\"parameters\":{\"type\":\"object\","
        "\"properties\":{\"attendees\":{\"type\":\"array\",\"items\":{\"type\":\"string\"}}}}},"
        "{\"name\":\"get_time\"}]}],"
        "\"toolConfig\":{\"functionCallingConfig\":{\"mode\":\"ANY\","
        "\"allowedFunctionNames\":[\"get_time\"]}}}", 0, NULL);
    ck_assert_ptr_nonnull (expect);
    static const char *keys[] = { "contents", "tools", "toolConfig" };
    for (size_t k = 0; k < 3; k++) {
        char *got = json_dumps (json_object_get (req, keys[k]), JSON_COMPACT);
        ck_assert_msg (json_equal (json_object_get (req, keys[k]), json_object_get (expect, keys[k])),
                       "%s: %s", keys[k], got);
        free (got);
    }
    json_decref (expect);
    json_decref (req);
    static const char *modes[][2] = { { "auto", "AUTO" }, { "none", "NONE" }, { "required", "ANY" } };
    for (size_t i = 0; i < 3; i++) {
        char job[300];
        snprintf (job, sizeof job, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                  "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}],"
                  "\"tool_choice\":\"%s\"}", modes[i][0]);
        req = s_build (job, &reply, 0);
        ck_assert_str_eq (json_string_value (json_object_get (json_object_get (json_object_get (req,
                          "toolConfig"), "functionCallingConfig"), "mode")), modes[i][1]);
        json_decref (req);
    }
    llmq_reply_free (&reply);
}
END_TEST

/* --- responses ------------------------------------------------------- */

START_TEST (test_response_function_call)
{
    size_t len;
    char *body = fixture_read ("gemini_function_call.json", &len);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response (body, len, &reply), 0);
    ck_assert_str_eq (reply.content.p, "");
    ck_assert_str_eq (reply.finish_reason, "tool_calls");
    ck_assert_str_eq (reply.tool_calls.p,
                      "[{\"id\":\"call_0\",\"type\":\"function\",\"function\":{\"name\":\"schedule_meeting\","
                      "\"arguments\":\"{\\\"attendees\\\":[\\\"Bob\\\",\\\"Alice\\\"],\\\"date\\\":"
                      "\\\"2025-03-27\\\",\\\"time\\\":\\\"10:00\\\",\\\"topic\\\":\\\"Q3 planning\\\"}\"}}]");
    ck_assert_uint_eq (reply.prompt_tokens, 111);
    ck_assert_uint_eq (reply.completion_tokens, 23);
    free (body);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_response_parsed)
{
    size_t len;
    char *body = fixture_read ("gemini_response.json", &len);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response (body, len, &reply), 0);
    ck_assert_str_eq (reply.content.p, "In a village nestled between rolling hills, "
                      "lived a girl whose backpack could hold the sky — café 🚀.");
    ck_assert_str_eq (reply.finish_reason, "stop");
    ck_assert (reply.finished);
    ck_assert_uint_eq (reply.prompt_tokens, 8);
    ck_assert_uint_eq (reply.completion_tokens, 27);
    ck_assert_str_eq (reply.request_id, "Fj3xZ8D2Lq-Yz7IP7ZLa4Ag");
    ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);

    /*  Not JSON, no candidates: BAD_RESPONSE (retried). */
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response (body, len / 2, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response ("{\"modelVersion\":\"x\"}", 20, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    free (body);
    llmq_reply_free (&reply);
}
END_TEST

static void
s_parse_finish (const char *reason, const char *text, int expect_rc, const char *expect)
{
    char body[512];
    snprintf (body, sizeof body,
              "{\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"%s\"}]},"
              "\"finishReason\":\"%s\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":3,"
              "\"candidatesTokenCount\":2,\"thoughtsTokenCount\":5,\"totalTokenCount\":10}}",
              text, reason);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    int rc = gemini->parse_response (body, strlen (body), &reply);
    ck_assert_msg (rc == expect_rc, "%s: rc %d (%s)", reason, rc, reply.error);
    if (rc == 0) {
        ck_assert_str_eq (reply.finish_reason, expect);
        ck_assert_str_eq (reply.content.p, text);
        ck_assert_uint_eq (reply.prompt_tokens, 3);
        ck_assert_uint_eq (reply.completion_tokens, 7);    /* thoughts are billed output */
    }
    else {
        ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
        ck_assert_msg (strstr (reply.error, reason) != NULL, "%s not in \"%s\"", reason, reply.error);
    }
    llmq_reply_free (&reply);
}

START_TEST (test_finish_reasons_mapped)
{
    s_parse_finish ("STOP", "done", 0, "stop");
    s_parse_finish ("MAX_TOKENS", "cut sh", 0, "length");
    const char *filters[] = { "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII" };
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++) {
        /*  Text before the block is kept, marked content_filter... */
        s_parse_finish (filters[i], "partial", 0, "content_filter");
        /*  ...no text at all is a typed failure. */
        s_parse_finish (filters[i], "", -1, NULL);
    }
    s_parse_finish ("OTHER", "x", 0, "other");
}
END_TEST

START_TEST (test_safety_block)
{
    size_t len;
    char *body = fixture_read ("gemini_blocked_prompt.json", &len);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response (body, len, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    ck_assert_ptr_nonnull (strstr (reply.error, "blocked the prompt"));
    ck_assert_ptr_nonnull (strstr (reply.error, "SAFETY"));
    ck_assert_uint_eq (reply.prompt_tokens, 12);
    ck_assert_str_eq (reply.request_id, "bl0ckedPr0mptAbCdEfGhIj");
    free (body);

    /*  The same as a stream chunk. */
    body = fixture_read ("gemini_blocked_prompt.json", &len);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_event (NULL, body, len, &reply, NULL, NULL), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    free (body);

    body = fixture_read ("gemini_finish_safety.json", &len);
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response (body, len, &reply), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    ck_assert_ptr_nonnull (strstr (reply.error, "blocked the answer"));
    ck_assert_ptr_nonnull (strstr (reply.error, "SAFETY"));
    free (body);
    llmq_reply_free (&reply);
}
END_TEST

/* --- streams --------------------------------------------------------- */

typedef struct {
    llmq_reply_t *reply;
    llmq_text_t deltas;
    int ndeltas;
} s_stream_t;

static void
s_on_delta (void *arg, const char *text, size_t len)
{
    s_stream_t *st = arg;
    ck_assert_uint_gt (len, 0);
    ck_assert_int_eq (llmq_text_add (&st->deltas, text, len), 0);
    st->ndeltas++;
}

static int
s_on_event (void *arg, const char *event, const char *data, size_t len)
{
    s_stream_t *st = arg;
    return gemini->parse_event (event, data, len, st->reply, s_on_delta, st) ? 1 : 0;
}

/*  Feed `text` split at `cut` (and byte by byte when cut is 0). */
static void
s_stream (const char *text, size_t len, size_t cut, llmq_reply_t *reply, s_stream_t *st)
{
    llmq_reply_reset (reply);
    st->reply = reply;
    st->deltas.len = 0;
    st->ndeltas = 0;
    llmq_sse_t *sse = llmq_sse_new (s_on_event, st);
    ck_assert_ptr_nonnull (sse);
    if (cut == 0) {
        for (size_t i = 0; i < len; i++) {
            ck_assert_int_eq (llmq_sse_feed (sse, text + i, 1), 0);
        }
    }
    else {
        ck_assert_int_eq (llmq_sse_feed (sse, text, cut), 0);
        ck_assert_int_eq (llmq_sse_feed (sse, text + cut, len - cut), 0);
    }
    /*  Gemini sends no [DONE]: the stream just ends. */
    ck_assert (!llmq_sse_done (sse));
    ck_assert_uint_eq (llmq_sse_events (sse), 3);
    llmq_sse_destroy (&sse);
}

START_TEST (test_stream_every_split)
{
    size_t len;
    char *text = fixture_read ("gemini_stream.sse", &len);
    const char *expected = "In a village nestled between rolling hills, lived a girl "
                           "whose backpack could hold the sky — café 🚀.";
    llmq_reply_t reply = { 0 };
    s_stream_t st = { 0 };
    for (size_t cut = 0; cut < len; cut++) {
        s_stream (text, len, cut, &reply, &st);
        ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
        ck_assert_str_eq (reply.content.p, expected);
        ck_assert_int_eq (st.ndeltas, 3);
        ck_assert_uint_eq (st.deltas.len, strlen (expected));
        ck_assert_int_eq (memcmp (st.deltas.p, expected, st.deltas.len), 0);
        ck_assert (reply.finished);
        ck_assert_str_eq (reply.finish_reason, "stop");
        ck_assert_uint_eq (reply.prompt_tokens, 8);
        ck_assert_uint_eq (reply.completion_tokens, 27);
        ck_assert_str_eq (reply.request_id, "Wj3xZ4vXEcPGz7IPq7TUwQY");
    }
    free (text);
    llmq_text_free (&st.deltas);
    llmq_reply_free (&reply);
}
END_TEST

/*  Text, then two whole functionCall parts in later chunks, cut at every
    byte: the text streams, the calls come with the finish. */
START_TEST (test_stream_function_calls)
{
    size_t len;
    char *text = fixture_read ("gemini_function_stream.sse", &len);
    const char *said = "Scheduling it — café 🚀.";
    const char *calls =
        "[{\"id\":\"call_0\",\"type\":\"function\",\"function\":{\"name\":\"schedule_meeting\","
        "\"arguments\":\"{\\\"attendees\\\":[\\\"Bob\\\",\\\"Alice\\\"],\\\"date\\\":"
        "\\\"2025-03-27\\\",\\\"time\\\":\\\"10:00\\\",\\\"topic\\\":\\\"Q3 planning\\\"}\"}},"
        "{\"id\":\"fc_7\",\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]";
    llmq_reply_t reply = { 0 };
    s_stream_t st = { 0 };
    for (size_t cut = 0; cut < len; cut++) {
        s_stream (text, len, cut, &reply, &st);
        ck_assert_int_eq (reply.error_class, LLMQ_EC_NONE);
        ck_assert_str_eq (reply.content.p, said);
        ck_assert_int_eq (st.ndeltas, 1);
        ck_assert_msg (reply.tool_calls.p && strcmp (reply.tool_calls.p, calls) == 0, "cut %zu: %s",
                       cut, reply.tool_calls.p ? reply.tool_calls.p : "(null)");
        ck_assert (reply.finished);
        ck_assert_str_eq (reply.finish_reason, "tool_calls");
        ck_assert_uint_eq (reply.completion_tokens, 31);
    }
    free (text);
    llmq_text_free (&st.deltas);
    llmq_reply_free (&reply);
}
END_TEST

START_TEST (test_stream_bad_events)
{
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    const char *cut = "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"In a";
    ck_assert_int_eq (gemini->parse_event (NULL, cut, strlen (cut), &reply, NULL, NULL), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_BAD_RESPONSE);
    /*  An error object inside a 200 stream. */
    llmq_reply_reset (&reply);
    const char *err = "{\"error\":{\"code\":503,\"message\":\"The model is overloaded.\","
                      "\"status\":\"UNAVAILABLE\"}}";
    ck_assert_int_eq (gemini->parse_event (NULL, err, strlen (err), &reply, NULL, NULL), -1);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_SERVER);
    ck_assert_ptr_nonnull (strstr (reply.error, "overloaded"));
    /*  A usage-only chunk is fine and not the end. */
    llmq_reply_reset (&reply);
    const char *usage = "{\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4}}";
    ck_assert_int_eq (gemini->parse_event (NULL, usage, strlen (usage), &reply, NULL, NULL), 0);
    ck_assert (!reply.finished);
    ck_assert_uint_eq (reply.prompt_tokens, 4);
    llmq_reply_free (&reply);
}
END_TEST

/*  Context caching: usageMetadata.cachedContentTokenCount is the part of
    promptTokenCount read from the cache, in a body and in a stream. */
START_TEST (test_cached_tokens)
{
    const char *body =
        "{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},"
        "\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":2100,"
        "\"candidatesTokenCount\":5,\"totalTokenCount\":2105,\"cachedContentTokenCount\":2048},"
        "\"modelVersion\":\"gemini-2.0-flash\",\"responseId\":\"c1\"}";
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_response (body, strlen (body), &reply), 0);
    ck_assert_uint_eq (reply.prompt_tokens, 2100);
    ck_assert_uint_eq (reply.cached_tokens, 2048);
    ck_assert_uint_eq (reply.completion_tokens, 5);
    /*  Streamed: the last usageMetadata wins. */
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_event (NULL, body, strlen (body), &reply, NULL, NULL), 0);
    ck_assert_uint_eq (reply.cached_tokens, 2048);
    const char *plain = "{\"usageMetadata\":{\"promptTokenCount\":4,\"totalTokenCount\":4}}";
    llmq_reply_reset (&reply);
    ck_assert_int_eq (gemini->parse_event (NULL, plain, strlen (plain), &reply, NULL, NULL), 0);
    ck_assert_uint_eq (reply.cached_tokens, 0);
    llmq_reply_free (&reply);
}
END_TEST

/* --- errors ---------------------------------------------------------- */

static void
s_classify (long status, const char *fixture, int expect_class, const char *expect_text)
{
    size_t len;
    char *body = fixture_read (fixture, &len);
    llmq_reply_t reply = { 0 };
    llmq_reply_reset (&reply);
    gemini->classify (status, body, len, &reply);
    ck_assert_msg (reply.error_class == expect_class, "%s: class %d", fixture, reply.error_class);
    ck_assert_msg (strstr (reply.error, expect_text) != NULL, "%s: \"%s\"", fixture, reply.error);
    free (body);
    llmq_reply_free (&reply);
}

START_TEST (test_errors_classified)
{
    s_classify (400, "gemini_error_400.json", LLMQ_EC_INVALID_REQUEST,
                "INVALID_ARGUMENT: * GenerateContentRequest.contents: contents is not specified");
    s_classify (400, "gemini_error_key.json", LLMQ_EC_AUTH, "API key not valid");
    s_classify (403, "gemini_error_403.json", LLMQ_EC_AUTH, "PERMISSION_DENIED");
    s_classify (429, "gemini_error_429.json", LLMQ_EC_RATE_LIMITED, "RESOURCE_EXHAUSTED");
    s_classify (503, "gemini_error_503.json", LLMQ_EC_SERVER, "UNAVAILABLE: The model is overloaded");

    llmq_reply_t reply = { 0 };
    /*  Not JSON (a proxy's page): the status decides, an excerpt explains. */
    llmq_reply_reset (&reply);
    const char *html = "<html><body>502 Bad Gateway</body></html>";
    gemini->classify (502, html, strlen (html), &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_SERVER);
    ck_assert_ptr_nonnull (strstr (reply.error, "HTTP 502"));
    llmq_reply_reset (&reply);
    gemini->classify (404, NULL, 0, &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_INVALID_REQUEST);
    /*  The array form of streamGenerateContent without alt=sse. */
    llmq_reply_reset (&reply);
    const char *arr = "[{\"error\":{\"code\":429,\"message\":\"Resource has been exhausted\","
                      "\"status\":\"RESOURCE_EXHAUSTED\"}}]";
    gemini->classify (429, arr, strlen (arr), &reply);
    ck_assert_int_eq (reply.error_class, LLMQ_EC_RATE_LIMITED);
    ck_assert_ptr_nonnull (strstr (reply.error, "Resource has been exhausted"));
    /*  A key echoed in a message never reaches the error text. */
    llmq_reply_reset (&reply);
    const char *echo = "{\"error\":{\"code\":400,\"message\":\"API key " S_KEY " not valid\","
                       "\"status\":\"INVALID_ARGUMENT\"}}";
    gemini->classify (400, echo, strlen (echo), &reply);
    ck_assert_ptr_null (strstr (reply.error, S_KEY));
    ck_assert_ptr_null (strstr (reply.error, "SECRET"));
    ck_assert_ptr_nonnull (strstr (reply.error, "AIza***"));
    llmq_reply_free (&reply);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("gemini");
    TCase *tc = tcase_create ("registry");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_registered);
    suite_add_tcase (s, tc);

    tc = tcase_create ("request");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_endpoint_url_and_key);
    tcase_add_test (tc, test_endpoint_refusals);
    tcase_add_test (tc, test_request_translated);
    tcase_add_test (tc, test_request_generation_config);
    tcase_add_test (tc, test_request_refusals);
    tcase_add_test (tc, test_request_tools);
    suite_add_tcase (s, tc);

    tc = tcase_create ("response");
    tcase_add_checked_fixture (tc, s_setup, NULL);
    tcase_add_test (tc, test_response_parsed);
    tcase_add_test (tc, test_response_function_call);
    tcase_add_test (tc, test_finish_reasons_mapped);
    tcase_add_test (tc, test_safety_block);
    tcase_add_test (tc, test_stream_every_split);
    tcase_add_test (tc, test_stream_function_calls);
    tcase_add_test (tc, test_stream_bad_events);
    tcase_add_test (tc, test_cached_tokens);
    tcase_add_test (tc, test_errors_classified);
    suite_add_tcase (s, tc);

    SRunner *sr = srunner_create (s);
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
