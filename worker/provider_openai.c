/*  provider_openai.c -- OpenAI chat.completions, and every server that
    speaks it (vLLM, Ollama, llama.cpp, Groq, Together...).

    Jobs already carry an OpenAI request body, so building the request is
    small: replace "model" with the deployment's, set "stream", and ask for
    a usage chunk at the end of a stream (stream_options.include_usage).

    Everything else in the job -- tools, tool_choice, response_format,
    tool and assistant tool_calls messages -- goes to the provider as is.

    Answers:
      non-streamed  {"id", "choices":[{"message":{"content","tool_calls"},"finish_reason"}],
                     "usage":{"prompt_tokens","completion_tokens",
                              "prompt_tokens_details":{"cached_tokens"}}}
      streamed      data: {"id","choices":[{"delta":{"content"},"finish_reason"}]}
                    ... data: {"choices":[],"usage":{...}}   data: [DONE]
                    tool calls come as delta.tool_calls[{"index","id","function":
                    {"name","arguments"}}]: id and name in the first piece of
                    each index, the arguments text in pieces to concatenate
      tool calls    the reply's tool_calls keeps id, function.name and
                    function.arguments of each (content is "" when null)
      errors        {"error":{"message","type","param","code"}}
*/
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define S_PATH "/chat/completions"

static int
s_endpoint (const llmq_deployment_t *dep, const char *key, llmq_endpoint_t *ep, llmq_reply_t *reply)
{
    memset (ep, 0, sizeof *ep);
    if (!dep->base_url || !*dep->base_url) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "deployment %s has no base_url", dep->name);
    }
    if (key && strpbrk (key, "\r\n")) {
        return llmq_reply_fail (reply, LLMQ_EC_AUTH, "the key of deployment %s holds a line break",
                                dep->name);
    }
    size_t n = strlen (dep->base_url);
    while (n > 0 && dep->base_url[n - 1] == '/') {
        n--;
    }
    ep->url = malloc (n + sizeof S_PATH);
    if (!ep->url) {
        goto oom;
    }
    memcpy (ep->url, dep->base_url, n);
    memcpy (ep->url + n, S_PATH, sizeof S_PATH);

    struct curl_slist *h = curl_slist_append (NULL, "Content-Type: application/json");
    /*  No "Expect: 100-continue" round trip before large bodies. */
    struct curl_slist *h2 = h ? curl_slist_append (h, "Expect:") : NULL;
    if (!h2) {
        curl_slist_free_all (h);
        goto oom;
    }
    ep->headers = h2;
    if (key) {
        size_t len = strlen ("Authorization: Bearer ") + strlen (key) + 1;
        char *line = malloc (len);
        if (!line) {
            goto oom;
        }
        snprintf (line, len, "Authorization: Bearer %s", key);
        struct curl_slist *h3 = curl_slist_append (ep->headers, line);
        explicit_bzero (line, len);
        free (line);
        if (!h3) {
            goto oom;
        }
        ep->headers = h3;
    }
    return 0;

oom:
    llmq_endpoint_free (ep);
    return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
}

/*  True for a model name that needs no JSON escaping. */
static bool
s_plain (const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
            return false;
        }
    }
    return true;
}

/*  The common case without a JSON parse: a body that names neither
    "model" nor "stream" (the client library and the CLI leave the model
    out of it) gets our fields spliced in front of its own. Parsing and
    re-serialising a 1 KiB body with jansson was the worker's largest cost
    per call. Returns false when the body needs the full path. */
static bool
s_build_fast (const char *model, const llmq_job_t *job, llmq_text_t *body)
{
    const char *p = job->body;
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
        p++;
    }
    if (*p != '{' || !s_plain (model) || strstr (p, "\"model\"") || strstr (p, "\"stream")) {
        return false;
    }
    /*  "messages": [ followed by something other than ], and the object
        closed: anything else takes the full path, which says what is wrong. */
    const char *m = strstr (p, "\"messages\"");
    if (!m) {
        return false;
    }
    m += 10;
    while (*m == ' ' || *m == '\n' || *m == '\r' || *m == '\t' || *m == ':') {
        m++;
    }
    if (*m != '[') {
        return false;
    }
    m++;
    while (*m == ' ' || *m == '\n' || *m == '\r' || *m == '\t') {
        m++;
    }
    size_t len = strlen (p);
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\n' || p[len - 1] == '\r' || p[len - 1] == '\t')) {
        len--;
    }
    if (*m == ']' || len < 2 || p[len - 1] != '}') {
        return false;
    }
    p++;
    while (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t') {
        p++;
    }
    if (*p == '}') {
        return false;               /* an empty object: let the full path say why */
    }
    const char *head = job->stream ? "\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                                   : "\",\"stream\":false,";
    return llmq_text_add (body, "{\"model\":\"", 10) == 0
        && llmq_text_add (body, model, strlen (model)) == 0
        && llmq_text_add (body, head, strlen (head)) == 0
        && llmq_text_add (body, p, strlen (p)) == 0;
}

static int
s_build (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_text_t *body,
         llmq_reply_t *reply)
{
    body->len = 0;
    if (!job->body || !*job->body) {
        return llmq_reply_fail (reply, LLMQ_EC_INVALID_REQUEST, "job has no body");
    }
    const char *fast_model = dep->model && *dep->model ? dep->model : job->model;
    if (fast_model && s_build_fast (fast_model, job, body)) {
        return 0;
    }
    body->len = 0;
    json_error_t jerr;
    json_t *root = json_loadb (job->body, strlen (job->body), 0, &jerr);
    if (!root) {
        return llmq_reply_fail (reply, LLMQ_EC_INVALID_REQUEST,
                                "job body is not JSON: %s at offset %d", jerr.text, jerr.position);
    }
    int rc = -1;
    if (!json_is_object (root)) {
        llmq_reply_fail (reply, LLMQ_EC_INVALID_REQUEST, "job body is not a JSON object");
        goto done;
    }
    json_t *messages = json_object_get (root, "messages");
    if (!json_is_array (messages) || json_array_size (messages) == 0) {
        llmq_reply_fail (reply, LLMQ_EC_INVALID_REQUEST, "job body has no \"messages\" array");
        goto done;
    }
    const char *model = dep->model && *dep->model ? dep->model : job->model;
    if (!model || json_object_set_new (root, "model", json_string (model))
        || json_object_set_new (root, "stream", json_boolean (job->stream))) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "cannot set model (out of memory or not UTF-8)");
        goto done;
    }
    if (job->stream) {
        json_t *opts = json_object_get (root, "stream_options");
        if (!json_is_object (opts)) {
            opts = json_object ();
            if (json_object_set_new (root, "stream_options", opts)) {
                llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
                goto done;
            }
        }
        json_object_set_new (opts, "include_usage", json_true ());
    }
    else {
        /*  OpenAI refuses stream_options on a call that does not stream. */
        json_object_del (root, "stream_options");
    }
    /*  Serialise into the reused buffer; a second pass only when it grows.
        15 significant digits print the client's 0.2 as 0.2, where the
        default 17 would send 0.20000000000000001 (the same double, but
        noise in every request log). */
    const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION (15);
    size_t need = json_dumpb (root, body->p, body->cap, flags);
    if (need == 0) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "cannot serialise the request");
        goto done;
    }
    if (need + 1 > body->cap) {
        if (llmq_text_reserve (body, need)) {
            llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            goto done;
        }
        json_dumpb (root, body->p, body->cap, flags);
    }
    body->len = need;
    body->p[need] = '\0';
    rc = 0;
done:
    json_decref (root);
    return rc;
}

static void
s_usage (json_t *usage, llmq_reply_t *reply)
{
    if (json_is_object (usage)) {
        json_int_t p = json_integer_value (json_object_get (usage, "prompt_tokens"));
        json_int_t c = json_integer_value (json_object_get (usage, "completion_tokens"));
        reply->prompt_tokens = p > 0 && p <= UINT32_MAX ? (uint32_t) p : 0;
        reply->completion_tokens = c > 0 && c <= UINT32_MAX ? (uint32_t) c : 0;
        /*  Cached prompt tokens are part of prompt_tokens. */
        json_t *details = json_object_get (usage, "prompt_tokens_details");
        json_int_t k = json_integer_value (json_object_get (details, "cached_tokens"));
        reply->cached_tokens = k > 0 && k <= UINT32_MAX ? (uint32_t) k : 0;
    }
}

/*  Class of an {"error":{...}} object that arrived with a 2xx status (in a
    stream or a body): from its type when it names one, else SERVER. */
static int
s_error_object (json_t *error, llmq_reply_t *reply)
{
    const char *msg = json_string_value (json_object_get (error, "message"));
    const char *type = json_string_value (json_object_get (error, "type"));
    int ec = LLMQ_EC_SERVER;
    if (type && strcmp (type, "invalid_request_error") == 0) {
        ec = LLMQ_EC_INVALID_REQUEST;
    }
    else if (type && strcmp (type, "rate_limit_error") == 0) {
        ec = LLMQ_EC_RATE_LIMITED;
    }
    return llmq_reply_fail (reply, ec, "%s", msg ? msg : json_is_string (error) ? json_string_value (error)
                                                            : "provider sent an error");
}

/*  One element of message.tool_calls, or one piece of delta.tool_calls,
    into the reply's call numbered `key`. Arguments are a JSON text; a
    server that sends them as an object gets them serialised. */
static int
s_tool_call (json_t *call, long key, llmq_reply_t *reply)
{
    if (!json_is_object (call)) {
        return llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "a tool call is not an object");
    }
    json_t *fn = json_object_get (call, "function");
    json_t *args = json_object_get (fn, "arguments");
    if (json_is_object (args)) {
        char *text = json_dumps (args, JSON_COMPACT | JSON_PRESERVE_ORDER);
        int rc = text ? llmq_reply_tool (reply, key, json_string_value (json_object_get (call, "id")),
                                         json_string_value (json_object_get (fn, "name")),
                                         text, strlen (text))
                      : llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        free (text);
        return rc;
    }
    return llmq_reply_tool (reply, key, json_string_value (json_object_get (call, "id")),
                            json_string_value (json_object_get (fn, "name")),
                            json_string_value (args), json_string_length (args));
}

static int
s_parse_response (const char *body, size_t len, llmq_reply_t *reply)
{
    json_error_t jerr;
    json_t *root = json_loadb (body, len, 0, &jerr);
    if (!root) {
        return llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "response is not JSON: %s", jerr.text);
    }
    int rc = -1;
    if (!json_is_object (root)) {
        llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "response is not a JSON object");
        goto done;
    }
    json_t *error = json_object_get (root, "error");
    if (error && !json_is_null (error)) {
        s_error_object (error, reply);
        goto done;
    }
    json_t *choice = json_array_get (json_object_get (root, "choices"), 0);
    json_t *message = json_object_get (choice, "message");
    if (!json_is_object (message)) {
        llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "response has no choices[0].message");
        goto done;
    }
    json_t *content = json_object_get (message, "content");
    if (json_is_string (content)) {
        if (llmq_text_add (&reply->content, json_string_value (content), json_string_length (content))) {
            llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            goto done;
        }
    }
    else if (content && !json_is_null (content)) {
        llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "choices[0].message.content is not a string");
        goto done;
    }
    else if (llmq_text_add (&reply->content, "", 0)) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        goto done;
    }
    json_t *calls = json_object_get (message, "tool_calls");
    size_t i;
    json_t *call;
    json_array_foreach (calls, i, call) {
        if (s_tool_call (call, (long) i, reply)) {
            goto done;
        }
    }
    llmq_reply_set_finish (reply, json_string_value (json_object_get (choice, "finish_reason")));
    if (llmq_reply_tools_end (reply)) {
        goto done;
    }
    llmq_reply_set_request_id (reply, json_string_value (json_object_get (root, "id")));
    s_usage (json_object_get (root, "usage"), reply);
    rc = 0;
done:
    json_decref (root);
    return rc;
}

static int
s_parse_event (const char *event, const char *data, size_t len, llmq_reply_t *reply,
               llmq_delta_fn *emit, void *arg)
{
    json_error_t jerr;
    json_t *root = json_loadb (data, len, 0, &jerr);
    if (!root || !json_is_object (root)) {
        json_decref (root);
        return llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "stream event is not a JSON object");
    }
    int rc = -1;
    json_t *error = json_object_get (root, "error");
    if ((error && !json_is_null (error)) || (event && strcmp (event, "error") == 0)) {
        s_error_object (error ? error : root, reply);
        goto done;
    }
    if (!reply->request_id[0]) {
        llmq_reply_set_request_id (reply, json_string_value (json_object_get (root, "id")));
    }
    json_t *choices = json_object_get (root, "choices");
    size_t i;
    json_t *choice;
    json_array_foreach (choices, i, choice) {
        /*  Only the first choice is kept (jobs with n > 1 get choice 0). */
        json_t *index = json_object_get (choice, "index");
        if (index && json_integer_value (index) != 0) {
            continue;
        }
        json_t *delta = json_object_get (choice, "delta");
        json_t *content = json_object_get (delta, "content");
        size_t n = json_string_length (content);
        if (json_is_string (content) && n > 0) {
            if (llmq_text_add (&reply->content, json_string_value (content), n)) {
                llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
                goto done;
            }
            if (emit) {
                emit (arg, json_string_value (content), n);
            }
        }
        json_t *calls = json_object_get (delta, "tool_calls");
        size_t j;
        json_t *call;
        json_array_foreach (calls, j, call) {
            /*  A piece names its call by index; one without is taken as
                the j-th call of the answer. */
            json_t *tindex = json_object_get (call, "index");
            long key = json_is_integer (tindex) ? (long) json_integer_value (tindex) : (long) j;
            if (s_tool_call (call, key, reply)) {
                goto done;
            }
        }
        const char *finish = json_string_value (json_object_get (choice, "finish_reason"));
        if (finish) {
            llmq_reply_set_finish (reply, finish);
            if (llmq_reply_tools_end (reply)) {
                goto done;
            }
        }
    }
    s_usage (json_object_get (root, "usage"), reply);
    rc = 0;
done:
    json_decref (root);
    return rc;
}

static void
s_classify (long status, const char *body, size_t len, llmq_reply_t *reply)
{
    int ec = llmq_http_error_class (status);
    json_t *root = body && len ? json_loadb (body, len, 0, NULL) : NULL;
    json_t *error = json_object_get (root, "error");
    const char *msg = json_string_value (json_object_get (error, "message"));
    if (!msg) {
        msg = json_string_value (error);    /* some servers send {"error": "text"} */
    }
    if (msg && *msg) {
        llmq_reply_fail (reply, ec, "%s", msg);
    }
    else {
        char excerpt[128];
        llmq_excerpt (body ? body : "", body ? len : 0, excerpt, sizeof excerpt);
        llmq_reply_fail (reply, ec, "HTTP %ld%s%s", status, *excerpt ? ": " : "", excerpt);
    }
    json_decref (root);
}

const llmq_provider_t llmq_provider_openai = {
    .name = "openai",
    .endpoint = s_endpoint,
    .build = s_build,
    .parse_response = s_parse_response,
    .parse_event = s_parse_event,
    .classify = s_classify,
};
