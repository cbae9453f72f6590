/*  provider_gemini.c -- Google Gemini (Generative Language API,
    models.generateContent and models.streamGenerateContent).

    Jobs carry an OpenAI chat.completions body; Gemini wants another shape:
      messages[role=user]            -> contents[{role:"user",  parts:[{text}]}]
      messages[role=assistant]       -> contents[{role:"model", parts:[{text}]}]
      messages[role=system|developer]-> systemInstruction{parts:[{text}]}
      temperature, top_p, max_tokens / max_completion_tokens, stop, seed,
      presence_penalty, frequency_penalty (when not 0), response_format
      json_object / json_schema      -> generationConfig{temperature, topP,
                                        maxOutputTokens, stopSequences, ...,
                                        responseMimeType "application/json"}
      tools[{type:function,function:{name,description,parameters}}]
                                     -> tools[{functionDeclarations:[{name,
                                        description, parameters}]}]
      tool_choice auto|none|required -> toolConfig{functionCallingConfig{mode
                                        AUTO|NONE|ANY}}; {function:{name}} ->
                                        mode ANY, allowedFunctionNames [name]
      assistant tool_calls[]         -> "model" parts {functionCall:{name, args}}
      messages[role=tool]            -> a "user" content of {functionResponse:
                                        {name, response}} parts (tool messages
                                        in a row share one); the name is the
                                        one of the call the tool_call_id names,
                                        the response the content when it is a
                                        JSON object, else {"content": text}
    Consecutive messages of one role are kept as separate contents (the
    API accepts them), so every message stays one turn. An array content's
    text parts become parts of one content. Role "function" and the legacy
    functions/function_call fields are refused.

    The model is part of the URL, not the body:
      POST {base_url}/models/{model}:generateContent
    The key goes in the x-goog-api-key header, never in the URL (?key=...
    would put it in every proxy's access log).

    Streaming is a different method, so endpoint() builds two URLs: url
    for :generateContent and stream_url for :streamGenerateContent?alt=sse
    (alt=sse asks for server-sent events instead of one JSON array); the
    worker picks by the job's stream flag. The body is the same.

    Answers:
      body / each SSE chunk
                {"candidates":[{"content":{"role":"model","parts":[{"text"}]},
                                "finishReason":"STOP","index":0}],
                 "usageMetadata":{"promptTokenCount","candidatesTokenCount",
                                  "thoughtsTokenCount","totalTokenCount"},
                 "modelVersion","responseId"}
                A stream's chunks carry text pieces; the last one carries
                finishReason and the final usageMetadata. There is no [DONE].
                A part {"functionCall":{"name","args"[,"id"]}} is a tool call
                (whole, never split across chunks): the reply's tool calls
                get it, with id "call_<n>" when Gemini gives none, and a
                finishReason STOP becomes "tool_calls".
      blocked   {"promptFeedback":{"blockReason":"SAFETY",...}} and no
                candidates, or a candidate with finishReason SAFETY (or
                RECITATION, BLOCKLIST...) and no text: a typed failure,
                INVALID_REQUEST (the same prompt would be blocked again).
      errors    {"error":{"code":400,"message","status":"INVALID_ARGUMENT",
                          "details":[...]}}  (an array of those from the
                non-SSE stream form)
*/
#include "provider.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define S_MODELS   "/models/"
#define S_METHOD   ":generateContent"
#define S_STREAM   ":streamGenerateContent?alt=sse"
#define S_KEY_HDR  "x-goog-api-key: "

/*  Google API keys ("AIza" + 35 characters) are masked in error texts the
    way llmq_reply_fail masks OpenAI's "sk-" keys. */
static void
s_mask_google_keys (char *s)
{
    for (char *p = s; (p = strstr (p, "AIza")) != NULL; ) {
        char *e = p + 4;
        while (*e && (isalnum ((unsigned char) *e) || *e == '-' || *e == '_')) {
            e++;
        }
        if (e - p > 8) {
            memcpy (p + 4, "***", 3);
            memmove (p + 7, e, strlen (e) + 1);
            p += 7;
        }
        else {
            p = e;
        }
    }
}

static int
s_fail (llmq_reply_t *reply, int error_class, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
s_fail (llmq_reply_t *reply, int error_class, const char *fmt, ...)
{
    char text[sizeof reply->error];
    va_list ap;
    va_start (ap, fmt);
    vsnprintf (text, sizeof text, fmt, ap);
    va_end (ap);
    s_mask_google_keys (text);
    return llmq_reply_fail (reply, error_class, "%s", text);
}

/*  A model name safe to put in a URL path as is ("gemini-2.0-flash",
    "gemini-1.5-pro-002", "tunedModels/x" is not one: those have their own
    path and are not supported). */
static bool
s_model_ok (const char *m)
{
    if (!*m) {
        return false;
    }
    for (; *m; m++) {
        unsigned char c = (unsigned char) *m;
        if (!isalnum (c) && c != '-' && c != '_' && c != '.') {
            return false;
        }
    }
    return true;
}

static int
s_endpoint (const llmq_deployment_t *dep, const char *key, llmq_endpoint_t *ep, llmq_reply_t *reply)
{
    memset (ep, 0, sizeof *ep);
    if (!dep->base_url || !*dep->base_url) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "deployment %s has no base_url", dep->name);
    }
    const char *model = dep->model ? dep->model : "";
    if (strncmp (model, "models/", 7) == 0) {
        model += 7;                 /* the API's resource name form */
    }
    if (!s_model_ok (model)) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "deployment %s: model \"%.64s\" is not a Gemini model name",
                       dep->name, model);
    }
    if (key && strpbrk (key, "\r\n")) {
        return s_fail (reply, LLMQ_EC_AUTH, "the key of deployment %s holds a line break", dep->name);
    }
    size_t n = strlen (dep->base_url);
    while (n > 0 && dep->base_url[n - 1] == '/') {
        n--;
    }
    size_t len = n + strlen (S_MODELS) + strlen (model) + strlen (S_METHOD) + 1;
    ep->url = malloc (len);
    if (!ep->url) {
        goto oom;
    }
    snprintf (ep->url, len, "%.*s" S_MODELS "%s" S_METHOD, (int) n, dep->base_url, model);
    len += strlen (S_STREAM) - strlen (S_METHOD);
    ep->stream_url = malloc (len);
    if (!ep->stream_url) {
        goto oom;
    }
    snprintf (ep->stream_url, len, "%.*s" S_MODELS "%s" S_STREAM, (int) n, dep->base_url, model);

    struct curl_slist *h = curl_slist_append (NULL, "Content-Type: application/json");
    struct curl_slist *h2 = h ? curl_slist_append (h, "Expect:") : NULL;
    if (!h2) {
        curl_slist_free_all (h);
        goto oom;
    }
    ep->headers = h2;
    if (key) {
        size_t hlen = strlen (S_KEY_HDR) + strlen (key) + 1;
        char *line = malloc (hlen);
        if (!line) {
            goto oom;
        }
        snprintf (line, hlen, S_KEY_HDR "%s", key);
        struct curl_slist *h3 = curl_slist_append (ep->headers, line);
        explicit_bzero (line, hlen);
        free (line);
        if (!h3) {
            goto oom;
        }
        ep->headers = h3;
    }
    return 0;

oom:
    llmq_endpoint_free (ep);
    return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
}

/*  --- request ------------------------------------------------------------ */

/*  Append messages[i]'s content as text parts to `parts`. Returns 0, or -1
    with the reply failed. */
static int
s_add_parts (json_t *parts, json_t *content, size_t i, llmq_reply_t *reply)
{
    if (json_is_string (content)) {
        return json_array_append_new (parts, json_pack ("{s:O}", "text", content)) == 0 ? 0
             : s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    if (!json_is_array (content)) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                       "messages[%zu].content is neither a string nor an array of parts", i);
    }
    size_t k;
    json_t *part;
    json_array_foreach (content, k, part) {
        const char *type = json_string_value (json_object_get (part, "type"));
        json_t *text = json_object_get (part, "text");
        if (type && strcmp (type, "text") != 0) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "messages[%zu].content[%zu]: part type \"%.32s\" is not supported by gemini",
                           i, k, type);
        }
        if (!json_is_string (text)) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "messages[%zu].content[%zu] has no text", i, k);
        }
        if (json_array_append_new (parts, json_pack ("{s:O}", "text", text))) {
            return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    return 0;
}

/*  Append an assistant's tool_calls to `parts` as functionCall parts. */
static int
s_call_parts (json_t *parts, json_t *calls, size_t i, llmq_reply_t *reply)
{
    size_t k;
    json_t *call;
    json_array_foreach (calls, k, call) {
        json_t *fn = json_object_get (call, "function");
        const char *type = json_string_value (json_object_get (call, "type"));
        const char *name = json_string_value (json_object_get (fn, "name"));
        json_t *args = json_object_get (fn, "arguments");
        if ((type && strcmp (type, "function") != 0) || !name || !*name) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "messages[%zu].tool_calls[%zu] is not a function call with a name", i, k);
        }
        json_t *obj = json_string_length (args) > 0
                    ? json_loadb (json_string_value (args), json_string_length (args), 0, NULL)
                    : json_is_object (args) ? json_incref (args) : json_object ();
        if (!json_is_object (obj)) {
            json_decref (obj);
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "messages[%zu].tool_calls[%zu]: arguments are not a JSON object", i, k);
        }
        if (json_array_append_new (parts, json_pack ("{s:{s:s, s:o}}", "functionCall",
                                                     "name", name, "args", obj))) {
            return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    return 0;
}

/*  The function name of the call `id` among the assistant messages before
    messages[upto], or NULL. */
static const char *
s_call_name (json_t *messages, size_t upto, const char *id)
{
    for (size_t i = upto; i-- > 0; ) {
        size_t k;
        json_t *call;
        json_array_foreach (json_object_get (json_array_get (messages, i), "tool_calls"), k, call) {
            const char *cid = json_string_value (json_object_get (call, "id"));
            if (cid && strcmp (cid, id) == 0) {
                return json_string_value (json_object_get (json_object_get (call, "function"), "name"));
            }
        }
    }
    return NULL;
}

/*  A role "tool" message as a functionResponse part appended to `parts`. */
static int
s_response_part (json_t *parts, json_t *messages, size_t i, llmq_reply_t *reply)
{
    json_t *m = json_array_get (messages, i);
    const char *id = json_string_value (json_object_get (m, "tool_call_id"));
    const char *name = id ? s_call_name (messages, i, id) : NULL;
    if (!name) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "messages[%zu]: the tool message's "
                       "tool_call_id names no earlier tool call (gemini needs its function name)", i);
    }
    json_t *content = json_object_get (m, "content");
    json_t *text = NULL;
    if (json_is_array (content)) {
        /*  Text parts joined: a function's answer is one value. */
        json_t *pieces = json_array ();
        if (!pieces || s_add_parts (pieces, content, i, reply)) {
            json_decref (pieces);
            return pieces ? -1 : s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
        llmq_text_t joined = { 0 };
        size_t k;
        json_t *piece;
        json_array_foreach (pieces, k, piece) {
            json_t *t = json_object_get (piece, "text");
            if (llmq_text_add (&joined, json_string_value (t), json_string_length (t))) {
                json_decref (pieces);
                llmq_text_free (&joined);
                return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            }
        }
        json_decref (pieces);
        text = json_stringn (joined.p ? joined.p : "", joined.len);
        llmq_text_free (&joined);
    }
    else if (json_is_string (content)) {
        text = json_incref (content);
    }
    else {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "messages[%zu]: a tool message needs content", i);
    }
    if (!text) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    /*  Gemini wants an object: a JSON object answer as is, else wrapped. */
    json_t *response = json_loadb (json_string_value (text), json_string_length (text), 0, NULL);
    if (!json_is_object (response)) {
        json_decref (response);
        response = json_pack ("{s:O}", "content", text);
    }
    json_decref (text);
    if (!response || json_array_append_new (parts, json_pack ("{s:{s:s, s:o}}", "functionResponse",
                                                              "name", name, "response", response))) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

static int
s_contents (json_t *messages, json_t *contents, json_t *system, llmq_reply_t *reply)
{
    json_t *responses = NULL;   /* parts of the user content the tool messages in a row share */
    size_t i;
    json_t *m;
    json_array_foreach (messages, i, m) {
        const char *role = json_string_value (json_object_get (m, "role"));
        json_t *content = json_object_get (m, "content");
        if (!role) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "messages[%zu] has no role", i);
        }
        if (strcmp (role, "tool") == 0) {
            if (!responses) {
                json_t *turn = json_pack ("{s:s, s:[]}", "role", "user", "parts");
                if (!turn || json_array_append_new (contents, turn)) {
                    return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
                }
                responses = json_object_get (turn, "parts");
            }
            if (s_response_part (responses, messages, i, reply)) {
                return -1;
            }
            continue;
        }
        responses = NULL;
        if (strcmp (role, "system") == 0 || strcmp (role, "developer") == 0) {
            if (s_add_parts (system, content, i, reply)) {
                return -1;
            }
            continue;
        }
        const char *grole = strcmp (role, "user") == 0 ? "user"
                          : strcmp (role, "assistant") == 0 ? "model" : NULL;
        if (!grole) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "messages[%zu]: role \"%.32s\" is not supported by gemini", i, role);
        }
        json_t *calls = json_object_get (m, "tool_calls");
        if (calls && !json_is_null (calls) && (!json_is_array (calls) || strcmp (grole, "model") != 0)) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "messages[%zu]: \"tool_calls\" must be an array, in an assistant message", i);
        }
        bool no_content = json_is_null (content) || !content
                       || (json_is_string (content) && json_string_length (content) == 0 && calls);
        if (no_content && json_array_size (calls) == 0) {
            continue;               /* an empty assistant turn says nothing */
        }
        json_t *parts = json_array ();
        if (!parts || json_array_append_new (contents, json_pack ("{s:s, s:o}", "role", grole,
                                                                   "parts", parts))) {
            return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
        if ((!no_content && s_add_parts (parts, content, i, reply))
            || s_call_parts (parts, calls, i, reply)) {
            return -1;
        }
    }
    return 0;
}

/*  OpenAI tools and tool_choice as Gemini's tools and toolConfig in `out`. */
static int
s_tools (json_t *root, json_t *out, llmq_reply_t *reply)
{
    if (json_object_get (root, "functions") || json_object_get (root, "function_call")) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "the legacy \"functions\" and \"function_call\" "
                       "fields are not supported by gemini (use tools)");
    }
    json_t *tools = json_object_get (root, "tools");
    if (!tools || json_is_null (tools) || (json_is_array (tools) && json_array_size (tools) == 0)) {
        return 0;                   /* without tools, a tool_choice has nothing to choose */
    }
    if (!json_is_array (tools)) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "\"tools\" must be an array");
    }
    json_t *decls = json_array ();
    if (!decls || json_object_set_new (out, "tools", json_pack ("[{s:o}]", "functionDeclarations", decls))) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    size_t i;
    json_t *tool;
    json_array_foreach (tools, i, tool) {
        const char *type = json_string_value (json_object_get (tool, "type"));
        json_t *fn = json_object_get (tool, "function");
        json_t *name = json_object_get (fn, "name");
        json_t *description = json_object_get (fn, "description");
        json_t *parameters = json_object_get (fn, "parameters");
        if (!type || strcmp (type, "function") != 0 || !json_is_string (name)
            || (parameters && !json_is_null (parameters) && !json_is_object (parameters))) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "tools[%zu] is not a function with a name "
                           "(and object parameters)", i);
        }
        json_t *decl = json_pack ("{s:O}", "name", name);
        if (decl && json_is_string (description)) {
            json_object_set (decl, "description", description);
        }
        if (decl && json_is_object (parameters)) {
            json_object_set (decl, "parameters", parameters);
        }
        if (!decl || json_array_append_new (decls, decl)) {
            return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    json_t *choice = json_object_get (root, "tool_choice");
    json_t *config = NULL;
    if (json_is_string (choice)) {
        static const char *map[][2] = { { "auto", "AUTO" }, { "none", "NONE" }, { "required", "ANY" } };
        for (size_t k = 0; k < 3 && !config; k++) {
            if (strcmp (json_string_value (choice), map[k][0]) == 0) {
                config = json_pack ("{s:s}", "mode", map[k][1]);
            }
        }
        if (!config) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "\"tool_choice\" \"%.32s\" is not auto, "
                           "none or required", json_string_value (choice));
        }
    }
    else if (json_is_object (choice)) {
        json_t *name = json_object_get (json_object_get (choice, "function"), "name");
        if (!json_is_string (name)) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "\"tool_choice\" names no function");
        }
        config = json_pack ("{s:s, s:[O]}", "mode", "ANY", "allowedFunctionNames", name);
    }
    else if (choice && !json_is_null (choice)) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "\"tool_choice\" must be a string or an object");
    }
    else {
        return 0;
    }
    if (!config || json_object_set_new (out, "toolConfig",
                                        json_pack ("{s:o}", "functionCallingConfig", config))) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

/*  A number from the job copied under a new name (null or absent: left
    out; any other type: refused). With `skip_zero`, 0 is left out too:
    several Gemini models refuse the penalty fields outright, and clients
    often send OpenAI's default 0 explicitly. */
static int
s_copy_number (json_t *root, const char *from, json_t *config, const char *to, bool skip_zero,
               llmq_reply_t *reply)
{
    json_t *v = json_object_get (root, from);
    if (!v || json_is_null (v)) {
        return 0;
    }
    if (!json_is_number (v)) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "\"%s\" is not a number", from);
    }
    if (skip_zero && json_number_value (v) == 0) {
        return 0;
    }
    return json_object_set (config, to, v) ? s_fail (reply, LLMQ_EC_INTERNAL, "out of memory") : 0;
}

static int
s_generation_config (const llmq_deployment_t *dep, json_t *root, json_t *config, llmq_reply_t *reply)
{
    if (s_copy_number (root, "temperature", config, "temperature", false, reply)
        || s_copy_number (root, "top_p", config, "topP", false, reply)
        || s_copy_number (root, "presence_penalty", config, "presencePenalty", true, reply)
        || s_copy_number (root, "frequency_penalty", config, "frequencyPenalty", true, reply)
        || s_copy_number (root, "seed", config, "seed", false, reply)) {
        return -1;
    }
    /*  JSON mode; a json_schema is not translated (Gemini's responseSchema
        is an OpenAPI subset), only the MIME type is asked for. */
    const char *fmt = json_string_value (json_object_get (json_object_get (root, "response_format"),
                                                          "type"));
    if (fmt && (strcmp (fmt, "json_object") == 0 || strcmp (fmt, "json_schema") == 0)) {
        json_object_set_new (config, "responseMimeType", json_string ("application/json"));
    }
    /*  max_completion_tokens is the newer name; either wins over the
        deployment's default. */
    json_t *max = json_object_get (root, "max_completion_tokens");
    if (!max || json_is_null (max)) {
        max = json_object_get (root, "max_tokens");
    }
    if (max && !json_is_null (max)) {
        if (!json_is_integer (max) || json_integer_value (max) < 1) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "max_tokens is not a positive integer");
        }
        json_object_set (config, "maxOutputTokens", max);
    }
    else if (dep->max_tokens > 0) {
        json_object_set_new (config, "maxOutputTokens", json_integer (dep->max_tokens));
    }
    json_t *stop = json_object_get (root, "stop");
    if (json_is_string (stop)) {
        json_object_set_new (config, "stopSequences", json_pack ("[O]", stop));
    }
    else if (json_is_array (stop) && json_array_size (stop) > 0) {
        size_t i;
        json_t *s;
        json_array_foreach (stop, i, s) {
            if (!json_is_string (s)) {
                return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "stop[%zu] is not a string", i);
            }
        }
        json_object_set (config, "stopSequences", stop);
    }
    else if (stop && !json_is_null (stop) && !json_is_array (stop)) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "\"stop\" is neither a string nor an array");
    }
    return 0;
}

static int
s_build (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_text_t *body,
         llmq_reply_t *reply)
{
    body->len = 0;
    if (!job->body || !*job->body) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "job has no body");
    }
    json_error_t jerr;
    json_t *root = json_loadb (job->body, strlen (job->body), 0, &jerr);
    if (!root) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "job body is not JSON: %s at offset %d",
                       jerr.text, jerr.position);
    }
    int rc = -1;
    json_t *out = json_object ();
    json_t *contents = json_array ();
    json_t *system = json_array ();
    json_t *config = json_object ();
    if (!out || !contents || !system || !config) {
        s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        goto done;
    }
    if (!json_is_object (root)) {
        s_fail (reply, LLMQ_EC_INVALID_REQUEST, "job body is not a JSON object");
        goto done;
    }
    json_t *messages = json_object_get (root, "messages");
    if (!json_is_array (messages) || json_array_size (messages) == 0) {
        s_fail (reply, LLMQ_EC_INVALID_REQUEST, "job body has no \"messages\" array");
        goto done;
    }
    if (s_contents (messages, contents, system, reply)
        || s_generation_config (dep, root, config, reply)
        || s_tools (root, out, reply)) {
        goto done;
    }
    if (json_array_size (contents) == 0) {
        s_fail (reply, LLMQ_EC_INVALID_REQUEST, "job has no user or assistant message (gemini needs one)");
        goto done;
    }
    json_object_set (out, "contents", contents);
    if (json_array_size (system) > 0) {
        json_object_set_new (out, "systemInstruction", json_pack ("{s:O}", "parts", system));
    }
    if (json_object_size (config) > 0) {
        json_object_set (out, "generationConfig", config);
    }
    const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION (15);
    size_t need = json_dumpb (out, body->p, body->cap, flags);
    if (need == 0) {
        s_fail (reply, LLMQ_EC_INTERNAL, "cannot serialise the request");
        goto done;
    }
    if (need + 1 > body->cap) {
        if (llmq_text_reserve (body, need)) {
            s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            goto done;
        }
        json_dumpb (out, body->p, body->cap, flags);
    }
    body->len = need;
    body->p[need] = '\0';
    rc = 0;
done:
    json_decref (config);
    json_decref (system);
    json_decref (contents);
    json_decref (out);
    json_decref (root);
    return rc;
}

/*  --- answers ------------------------------------------------------------- */

/*  OpenAI's finish_reason for a Gemini finishReason; NULL for one that
    means "blocked" (content_filter). Unknown values are passed on in
    lower case, so a new reason still reads sensibly. */
static const char *
s_finish (const char *reason, char *buf, size_t size, bool *blocked)
{
    static const char *const filters[] = {
        "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
        "IMAGE_SAFETY", NULL
    };
    *blocked = false;
    if (strcmp (reason, "STOP") == 0) {
        return "stop";
    }
    if (strcmp (reason, "MAX_TOKENS") == 0) {
        return "length";
    }
    for (int i = 0; filters[i]; i++) {
        if (strcmp (reason, filters[i]) == 0) {
            *blocked = true;
            return "content_filter";
        }
    }
    size_t n = 0;
    for (; reason[n] && n + 1 < size; n++) {
        buf[n] = (char) tolower ((unsigned char) reason[n]);
    }
    buf[n] = '\0';
    return buf;
}

static uint32_t
s_count (json_t *usage, const char *key)
{
    json_int_t v = json_integer_value (json_object_get (usage, key));
    return v > 0 && v <= UINT32_MAX ? (uint32_t) v : 0;
}

/*  Token counts. Thinking models bill their thoughts as output tokens, so
    thoughtsTokenCount is counted as completion tokens too.
    cachedContentTokenCount is the part of promptTokenCount read from a
    context cache. A stream repeats
    usageMetadata; the last one is complete and wins. */
static void
s_usage (json_t *usage, llmq_reply_t *reply)
{
    if (json_is_object (usage)) {
        reply->prompt_tokens = s_count (usage, "promptTokenCount");
        reply->cached_tokens = s_count (usage, "cachedContentTokenCount");
        uint64_t c = (uint64_t) s_count (usage, "candidatesTokenCount")
                   + s_count (usage, "thoughtsTokenCount");
        reply->completion_tokens = c > UINT32_MAX ? UINT32_MAX : (uint32_t) c;
    }
}

/*  Class of a Google error status string, or -1 when it names none we
    map differently from the HTTP status. */
static int
s_status_class (const char *status)
{
    if (!status) {
        return -1;
    }
    if (strcmp (status, "RESOURCE_EXHAUSTED") == 0) {
        return LLMQ_EC_RATE_LIMITED;
    }
    if (strcmp (status, "UNAVAILABLE") == 0 || strcmp (status, "INTERNAL") == 0
        || strcmp (status, "ABORTED") == 0) {
        return LLMQ_EC_SERVER;
    }
    if (strcmp (status, "DEADLINE_EXCEEDED") == 0) {
        return LLMQ_EC_TIMEOUT;
    }
    if (strcmp (status, "UNAUTHENTICATED") == 0 || strcmp (status, "PERMISSION_DENIED") == 0) {
        return LLMQ_EC_AUTH;
    }
    if (strcmp (status, "INVALID_ARGUMENT") == 0 || strcmp (status, "NOT_FOUND") == 0
        || strcmp (status, "FAILED_PRECONDITION") == 0) {
        return LLMQ_EC_INVALID_REQUEST;
    }
    return -1;
}

/*  A wrong key is 400 INVALID_ARGUMENT with an ErrorInfo reason
    API_KEY_INVALID: that is an AUTH failure, not a bad job. */
static bool
s_key_invalid (json_t *error)
{
    size_t i;
    json_t *d;
    json_array_foreach (json_object_get (error, "details"), i, d) {
        const char *reason = json_string_value (json_object_get (d, "reason"));
        if (reason && strcmp (reason, "API_KEY_INVALID") == 0) {
            return true;
        }
    }
    return false;
}

/*  Fail the reply from {"code","message","status"}; `ec` is the class
    the HTTP status gave (-1 when the error came with a 2xx). */
static int
s_error_object (json_t *error, int ec, llmq_reply_t *reply)
{
    const char *msg = json_string_value (json_object_get (error, "message"));
    const char *status = json_string_value (json_object_get (error, "status"));
    int sc = s_status_class (status);
    if (s_key_invalid (error)) {
        ec = LLMQ_EC_AUTH;
    }
    else if (ec < 0 || ec == LLMQ_EC_BAD_RESPONSE) {
        ec = sc >= 0 ? sc : LLMQ_EC_SERVER;
    }
    return s_fail (reply, ec, "%s%s%s", status ? status : "", status ? ": " : "",
                   msg ? msg : "provider sent an error");
}

/*  Fold one GenerateContentResponse (a whole body or one stream chunk)
    into the reply. Returns 0, or -1 with the reply failed. */
static int
s_response (json_t *root, llmq_reply_t *reply, llmq_delta_fn *emit, void *arg, bool whole)
{
    if (!json_is_object (root)) {
        return s_fail (reply, LLMQ_EC_BAD_RESPONSE, "response is not a JSON object");
    }
    json_t *error = json_object_get (root, "error");
    if (json_is_object (error)) {
        return s_error_object (error, -1, reply);
    }
    if (!reply->request_id[0]) {
        llmq_reply_set_request_id (reply, json_string_value (json_object_get (root, "responseId")));
    }
    s_usage (json_object_get (root, "usageMetadata"), reply);
    const char *block = json_string_value (json_object_get (json_object_get (root, "promptFeedback"),
                                                            "blockReason"));
    if (block) {
        return s_fail (reply, LLMQ_EC_INVALID_REQUEST, "gemini blocked the prompt (blockReason %.64s)",
                       block);
    }
    json_t *cands = json_object_get (root, "candidates");
    json_t *cand = json_array_get (cands, 0);
    if (!json_is_object (cand)) {
        if (whole) {
            return s_fail (reply, LLMQ_EC_BAD_RESPONSE, "response has no candidates[0]");
        }
        return 0;                   /* a usage-only chunk */
    }
    size_t i;
    json_t *part;
    json_array_foreach (json_object_get (json_object_get (cand, "content"), "parts"), i, part) {
        json_t *call = json_object_get (part, "functionCall");
        if (json_is_object (call)) {
            /*  Each part is a whole call: a new one, after those before. */
            json_t *args = json_object_get (call, "args");
            char *text = json_is_object (args) ? json_dumps (args, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                               : NULL;
            if (json_is_object (args) && !text) {
                return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            }
            int rc = llmq_reply_tool (reply, (long) reply->ntools,
                                      json_string_value (json_object_get (call, "id")),
                                      json_string_value (json_object_get (call, "name")),
                                      text, text ? strlen (text) : 0);
            free (text);
            if (rc) {
                return -1;
            }
            continue;
        }
        json_t *text = json_object_get (part, "text");
        size_t n = json_string_length (text);
        if (!json_is_string (text) || n == 0 || json_is_true (json_object_get (part, "thought"))) {
            continue;               /* thoughts are not the answer */
        }
        if (llmq_text_add (&reply->content, json_string_value (text), n)) {
            return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
        if (emit) {
            emit (arg, json_string_value (text), n);
        }
    }
    if (llmq_text_add (&reply->content, "", 0)) {
        return s_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    const char *reason = json_string_value (json_object_get (cand, "finishReason"));
    if (reason) {
        char buf[32];
        bool blocked;
        const char *finish = s_finish (reason, buf, sizeof buf, &blocked);
        if (blocked && reply->content.len == 0 && reply->ntools == 0) {
            return s_fail (reply, LLMQ_EC_INVALID_REQUEST,
                           "gemini blocked the answer (finishReason %.64s)", reason);
        }
        /*  Gemini ends a function call with STOP; OpenAI says tool_calls. */
        llmq_reply_set_finish (reply, reply->ntools > 0 && strcmp (finish, "stop") == 0
                                      ? "tool_calls" : finish);
        return llmq_reply_tools_end (reply);
    }
    else if (whole) {
        llmq_reply_set_finish (reply, reply->ntools > 0 ? "tool_calls" : "");
        return llmq_reply_tools_end (reply);
    }
    return 0;
}

static int
s_parse_response (const char *body, size_t len, llmq_reply_t *reply)
{
    json_error_t jerr;
    json_t *root = json_loadb (body, len, 0, &jerr);
    if (!root) {
        return s_fail (reply, LLMQ_EC_BAD_RESPONSE, "response is not JSON: %s", jerr.text);
    }
    int rc = s_response (root, reply, NULL, NULL, true);
    json_decref (root);
    return rc;
}

static int
s_parse_event (const char *event, const char *data, size_t len, llmq_reply_t *reply,
               llmq_delta_fn *emit, void *arg)
{
    (void) event;                   /* Gemini names no events */
    json_t *root = json_loadb (data, len, 0, NULL);
    if (!root) {
        return s_fail (reply, LLMQ_EC_BAD_RESPONSE, "stream event is not a JSON object");
    }
    int rc = s_response (root, reply, emit, arg, false);
    json_decref (root);
    return rc;
}

static void
s_classify (long status, const char *body, size_t len, llmq_reply_t *reply)
{
    int ec = llmq_http_error_class (status);
    json_t *root = body && len ? json_loadb (body, len, 0, NULL) : NULL;
    /*  streamGenerateContent without alt=sse answers with a JSON array. */
    json_t *obj = json_is_array (root) ? json_array_get (root, 0) : root;
    json_t *error = json_object_get (obj, "error");
    if (json_is_object (error) && json_is_string (json_object_get (error, "message"))) {
        s_error_object (error, ec, reply);
    }
    else {
        char excerpt[128];
        llmq_excerpt (body ? body : "", body ? len : 0, excerpt, sizeof excerpt);
        s_fail (reply, ec, "HTTP %ld%s%s", status, *excerpt ? ": " : "", excerpt);
    }
    json_decref (root);
}

const llmq_provider_t llmq_provider_gemini = {
    .name = "gemini",
    .endpoint = s_endpoint,
    .build = s_build,
    .parse_response = s_parse_response,
    .parse_event = s_parse_event,
    .classify = s_classify,
};
