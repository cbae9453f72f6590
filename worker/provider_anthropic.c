/*  provider_anthropic.c -- Anthropic's Messages API (POST /v1/messages).

    Jobs carry an OpenAI chat.completions body; this adapter rewrites it:

      OpenAI job body                     Anthropic request
      messages[role=system|developer]  -> "system": their texts joined by a
                                          blank line ("\n\n")
      messages[role=user|assistant]    -> "messages": content a string, or
                                          [{"type":"text","text"}] blocks for
                                          an array of text parts
      max_completion_tokens, max_tokens-> "max_tokens" (the first given;
                                          else the deployment's; Anthropic
                                          requires it)
      temperature, top_p               -> the same names
      stop (string or array)           -> "stop_sequences" (array)
      user                             -> "metadata": {"user_id"}
      tools[{type:function,function:   -> "tools": [{name, description,
        {name,description,parameters}}]     input_schema}]
      tool_choice auto|none|required   -> {"type":"auto"|"none"|"any"}
      tool_choice {function:{name}}    -> {"type":"tool","name"}
      parallel_tool_calls false        -> tool_choice.disable_parallel_tool_use
      assistant tool_calls[]           -> content blocks {"type":"tool_use",
                                          id, name, input (the parsed arguments)}
      messages[role=tool]              -> a user message of {"type":"tool_result",
                                          tool_use_id, content} blocks (tool
                                          messages in a row share one)
      the job's stream flag            -> "stream"
      the deployment's model           -> "model"

    Anthropic refuses unknown fields ("Extra inputs are not permitted"), so
    every other field (n, response_format, logprobs...) is left out. What
    we cannot translate faithfully is refused as an invalid request rather
    than silently changed: the legacy "functions"/"function_call" fields
    and role "function", tools of a type other than "function", and
    content parts other than text (images, audio, files).

    Answers:
      non-streamed  {"id","type":"message","content":[{"type":"text","text"}...],
                     "stop_reason","usage":{"input_tokens","output_tokens"}}
                    tool_use blocks {id,name,input} become the reply's tool
                    calls (arguments: the input as JSON text)
      streamed      event: message_start / content_block_start / ping /
                    content_block_delta (text_delta) ... / content_block_stop /
                    (a tool_use block: content_block_start brings id and
                    name, input_json_delta pieces its input's JSON text) /
                    message_delta (stop_reason, usage) / message_stop, and
                    possibly "event: error" in the middle of it all
      errors        {"type":"error","error":{"type","message"}}

    Token counts: prompt_tokens is input_tokens plus the prompt-cache
    fields (cache_creation_input_tokens, cache_read_input_tokens), which
    Anthropic reports apart; OpenAI's prompt_tokens includes cached tokens.
    cached_tokens is cache_read_input_tokens (cache writes are not reads).

    A stream's answer counts as whole once message_delta brings a
    stop_reason (or message_stop arrives): the text and the usage are all
    in by then, and message_stop carries nothing more.
*/
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define S_PATH          "/messages"
#define S_DEFAULT_URL   "https://api.anthropic.com/v1"
#define S_VERSION       "2023-06-01"
#define S_MAX_TOKENS    1024    /* if neither the job nor the deployment says */

/*  --- endpoint --------------------------------------------------------- */

/*  True if `s` can go into a header line as is: printable ASCII, so no
    CR or LF can smuggle in a header of its own. */
static bool
s_header_safe (const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char) *s;
        if (c < 0x20 || c >= 0x7f) {
            return false;
        }
    }
    return true;
}

/*  Append "name: value" to the list; the line is wiped from our memory
    after curl copied it (it may hold the key). */
static int
s_header (struct curl_slist **list, const char *name, const char *value)
{
    size_t len = strlen (name) + 2 + strlen (value) + 1;
    char *line = malloc (len);
    if (!line) {
        return -1;
    }
    snprintf (line, len, "%s: %s", name, value);
    struct curl_slist *h = curl_slist_append (*list, line);
    explicit_bzero (line, len);
    free (line);
    if (!h) {
        return -1;
    }
    *list = h;
    return 0;
}

static int
s_endpoint (const llmq_deployment_t *dep, const char *key, llmq_endpoint_t *ep, llmq_reply_t *reply)
{
    memset (ep, 0, sizeof *ep);
    /*  The config fills in the public URL; a deployment built by hand
        (tests, tools) gets it here too. */
    const char *base = dep->base_url && *dep->base_url ? dep->base_url : S_DEFAULT_URL;
    const char *version = dep->api_version && *dep->api_version ? dep->api_version : S_VERSION;
    if (!s_header_safe (version)) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL,
                                "api_version of deployment %s is not printable ASCII", dep->name);
    }
    if (key && !s_header_safe (key)) {
        return llmq_reply_fail (reply, LLMQ_EC_AUTH,
                                "the key of deployment %s holds characters not allowed in a header",
                                dep->name);
    }
    size_t n = strlen (base);
    while (n > 0 && base[n - 1] == '/') {
        n--;
    }
    ep->url = malloc (n + sizeof S_PATH);
    if (!ep->url) {
        goto oom;
    }
    memcpy (ep->url, base, n);
    memcpy (ep->url + n, S_PATH, sizeof S_PATH);
    if (s_header (&ep->headers, "Content-Type", "application/json")
        || s_header (&ep->headers, "anthropic-version", version)
        || (key && s_header (&ep->headers, "x-api-key", key))) {
        goto oom;
    }
    /*  No "Expect: 100-continue" round trip before large bodies. */
    struct curl_slist *h = curl_slist_append (ep->headers, "Expect:");
    if (!h) {
        goto oom;
    }
    ep->headers = h;
    return 0;

oom:
    llmq_endpoint_free (ep);
    return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
}

/*  --- request ---------------------------------------------------------- */

/*  Refuse the job with INVALID_REQUEST; returns -1. */
#define S_REFUSE(reply, ...) llmq_reply_fail ((reply), LLMQ_EC_INVALID_REQUEST, __VA_ARGS__)

/*  Append `text` to the system prompt, a blank line between pieces. */
static int
s_system_add (llmq_text_t *system, const char *text, size_t len)
{
    if (system->len > 0 && llmq_text_add (system, "\n\n", 2)) {
        return -1;
    }
    return llmq_text_add (system, text, len);
}

/*  The text parts of an OpenAI content array as Anthropic text blocks
    (into *blocks, new), or, when `system` is given, appended to it.
    Returns 0, or -1 with the reply failed. */
static int
s_parts (json_t *content, size_t index, json_t **blocks, llmq_text_t *system,
         llmq_reply_t *reply)
{
    if (blocks) {
        *blocks = json_array ();
        if (!*blocks) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    size_t i;
    json_t *part;
    json_array_foreach (content, i, part) {
        const char *type = json_string_value (json_object_get (part, "type"));
        json_t *text = json_object_get (part, "text");
        if (!type || strcmp (type, "text") != 0) {
            return S_REFUSE (reply, "messages[%zu].content[%zu]: part type '%.40s' is not "
                             "supported by the anthropic adapter (text only)",
                             index, i, type ? type : "?");
        }
        if (!json_is_string (text)) {
            return S_REFUSE (reply, "messages[%zu].content[%zu] has no \"text\" string", index, i);
        }
        if (system) {
            if (s_system_add (system, json_string_value (text), json_string_length (text))) {
                return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            }
        }
        else if (json_array_append_new (*blocks, json_pack ("{s:s,s:O}", "type", "text", "text", text))) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    return 0;
}

/*  An assistant's OpenAI tool_calls as tool_use blocks appended to
    `blocks`. Returns 0, or -1 with the reply failed. */
static int
s_tool_uses (json_t *calls, size_t index, json_t *blocks, llmq_reply_t *reply)
{
    size_t j;
    json_t *call;
    json_array_foreach (calls, j, call) {
        json_t *fn = json_object_get (call, "function");
        const char *type = json_string_value (json_object_get (call, "type"));
        const char *id = json_string_value (json_object_get (call, "id"));
        const char *name = json_string_value (json_object_get (fn, "name"));
        json_t *args = json_object_get (fn, "arguments");
        if (type && strcmp (type, "function") != 0) {
            return S_REFUSE (reply, "messages[%zu].tool_calls[%zu]: type '%.40s' is not supported "
                             "by the anthropic adapter (function only)", index, j, type);
        }
        if (!id || !*id || !name || !*name) {
            return S_REFUSE (reply, "messages[%zu].tool_calls[%zu] needs an \"id\" and a "
                             "function \"name\"", index, j);
        }
        /*  Anthropic wants the input as an object, OpenAI sends the
            arguments as its JSON text ("" or none for no arguments). */
        json_t *input = NULL;
        if (json_is_string (args) && json_string_length (args) > 0) {
            input = json_loadb (json_string_value (args), json_string_length (args), 0, NULL);
        }
        else if (!args || json_is_null (args) || json_is_string (args)) {
            input = json_object ();
        }
        else if (json_is_object (args)) {
            input = json_incref (args);
        }
        if (!json_is_object (input)) {
            json_decref (input);
            return S_REFUSE (reply, "messages[%zu].tool_calls[%zu]: function arguments are not "
                             "a JSON object", index, j);
        }
        if (json_array_append_new (blocks, json_pack ("{s:s,s:s,s:s,s:o}", "type", "tool_use",
                                                      "id", id, "name", name, "input", input))) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    return 0;
}

/*  A role "tool" message as a tool_result block, appended to `results`
    (the content of the user message that carries them). */
static int
s_tool_result (json_t *m, json_t *content, size_t index, json_t *results, llmq_reply_t *reply)
{
    const char *call_id = json_string_value (json_object_get (m, "tool_call_id"));
    if (!call_id || !*call_id) {
        return S_REFUSE (reply, "messages[%zu]: a tool message needs a \"tool_call_id\" string", index);
    }
    json_t *value = NULL;
    if (json_is_string (content)) {
        value = json_incref (content);
    }
    else if (s_parts (content, index, &value, NULL, reply)) {
        json_decref (value);
        return -1;
    }
    if (json_array_append_new (results, json_pack ("{s:s,s:s,s:o}", "type", "tool_result",
                                                   "tool_use_id", call_id, "content", value))) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

/*  The content blocks of an assistant message with tool calls: its text,
    if any, then one tool_use block per call. */
static int
s_assistant_calls (json_t *content, json_t *calls, size_t index, json_t **blocks,
                   llmq_reply_t *reply)
{
    if (json_is_array (content)) {
        if (s_parts (content, index, blocks, NULL, reply)) {
            return -1;
        }
    }
    else {
        *blocks = json_array ();
        if (!*blocks) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
        if (json_string_length (content) > 0
            && json_array_append_new (*blocks, json_pack ("{s:s,s:O}", "type", "text",
                                                          "text", content))) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    return s_tool_uses (calls, index, *blocks, reply);
}

/*  OpenAI "messages" into Anthropic's "messages" (out, an array) and the
    system prompt. Returns 0, or -1 with the reply failed. */
static int
s_messages (json_t *messages, json_t *out, llmq_text_t *system, llmq_reply_t *reply)
{
    json_t *results = NULL;     /* tool_result blocks of the tool messages in a row */
    size_t i;
    json_t *m;
    json_array_foreach (messages, i, m) {
        const char *role = json_string_value (json_object_get (m, "role"));
        if (!role) {
            return S_REFUSE (reply, "messages[%zu] has no \"role\" string", i);
        }
        json_t *content = json_object_get (m, "content");
        bool is_system = strcmp (role, "system") == 0 || strcmp (role, "developer") == 0;
        bool is_tool = strcmp (role, "tool") == 0;
        bool is_assistant = strcmp (role, "assistant") == 0;
        if (!is_system && !is_tool && !is_assistant && strcmp (role, "user") != 0) {
            return S_REFUSE (reply, "messages[%zu]: role '%.40s' is not supported by the "
                             "anthropic adapter (system, developer, user, assistant, tool)", i, role);
        }
        if (json_object_get (m, "function_call")) {
            return S_REFUSE (reply, "messages[%zu]: function_call is not supported by the "
                             "anthropic adapter (use tool_calls)", i);
        }
        json_t *calls = json_object_get (m, "tool_calls");
        if (calls && !json_is_null (calls) && (!json_is_array (calls) || !is_assistant)) {
            return S_REFUSE (reply, "messages[%zu]: \"tool_calls\" must be an array, in an "
                             "assistant message", i);
        }
        bool has_calls = json_array_size (calls) > 0;
        bool no_content = !content || json_is_null (content);
        if (!(has_calls && no_content) && !json_is_string (content) && !json_is_array (content)) {
            return S_REFUSE (reply, "messages[%zu] has no \"content\" string or array", i);
        }
        if (is_tool) {
            if (!results) {
                json_t *turn = json_pack ("{s:s,s:[]}", "role", "user", "content");
                if (!turn || json_array_append_new (out, turn)) {
                    return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
                }
                results = json_object_get (turn, "content");
            }
            if (s_tool_result (m, content, i, results, reply)) {
                return -1;
            }
            continue;
        }
        results = NULL;
        if (is_system && json_is_array (content)) {
            if (s_parts (content, i, NULL, system, reply)) {
                return -1;
            }
            continue;
        }
        if (is_system) {
            if (s_system_add (system, json_string_value (content), json_string_length (content))) {
                return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            }
            continue;
        }
        json_t *value = NULL;
        if (has_calls) {
            if (s_assistant_calls (content, calls, i, &value, reply)) {
                json_decref (value);
                return -1;
            }
        }
        else if (json_is_string (content)) {
            value = json_incref (content);
        }
        else if (s_parts (content, i, &value, NULL, reply)) {
            json_decref (value);
            return -1;
        }
        if (json_array_append_new (out, json_pack ("{s:s,s:o}", "role", role, "content", value))) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    if (json_array_size (out) == 0) {
        return S_REFUSE (reply, "job body has no user or assistant message");
    }
    return 0;
}

/*  max_tokens for the request: the job's max_completion_tokens or
    max_tokens, else the deployment's, else S_MAX_TOKENS. Returns 0, or -1
    with the reply failed for a bad value. */
static int
s_max_tokens (json_t *root, const llmq_deployment_t *dep, json_int_t *out, llmq_reply_t *reply)
{
    static const char *keys[] = { "max_completion_tokens", "max_tokens" };
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_object_get (root, keys[i]);
        if (!v || json_is_null (v)) {
            continue;
        }
        if (!json_is_integer (v) || json_integer_value (v) < 1) {
            return S_REFUSE (reply, "\"%s\" must be an integer >= 1", keys[i]);
        }
        *out = json_integer_value (v);
        return 0;
    }
    *out = dep->max_tokens ? (json_int_t) dep->max_tokens : S_MAX_TOKENS;
    return 0;
}

/*  Copy the numeric field `key` if the job sets it. */
static int
s_number (json_t *root, json_t *req, const char *key, llmq_reply_t *reply)
{
    json_t *v = json_object_get (root, key);
    if (!v || json_is_null (v)) {
        return 0;
    }
    if (!json_is_number (v)) {
        return S_REFUSE (reply, "\"%s\" must be a number", key);
    }
    if (json_object_set (req, key, v)) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

/*  OpenAI "stop" (a string or an array of strings) as "stop_sequences". */
static int
s_stop (json_t *root, json_t *req, llmq_reply_t *reply)
{
    json_t *stop = json_object_get (root, "stop");
    if (!stop || json_is_null (stop)) {
        return 0;
    }
    json_t *seqs = json_array ();
    if (!seqs) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    if (json_is_string (stop)) {
        json_array_append (seqs, stop);
    }
    else if (json_is_array (stop)) {
        size_t i;
        json_t *s;
        json_array_foreach (stop, i, s) {
            if (!json_is_string (s)) {
                json_decref (seqs);
                return S_REFUSE (reply, "\"stop\" must be a string or an array of strings");
            }
            json_array_append (seqs, s);
        }
    }
    else {
        json_decref (seqs);
        return S_REFUSE (reply, "\"stop\" must be a string or an array of strings");
    }
    if (json_array_size (seqs) == 0) {
        json_decref (seqs);
        return 0;
    }
    if (json_object_set_new (req, "stop_sequences", seqs)) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

/*  OpenAI's tool definitions as Anthropic's "tools" in req. */
static int
s_tool_defs (json_t *tools, json_t *req, llmq_reply_t *reply)
{
    if (!json_is_array (tools)) {
        return S_REFUSE (reply, "\"tools\" must be an array");
    }
    json_t *defs = json_array ();
    if (!defs || json_object_set_new (req, "tools", defs)) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    size_t i;
    json_t *tool;
    json_array_foreach (tools, i, tool) {
        const char *type = json_string_value (json_object_get (tool, "type"));
        json_t *fn = json_object_get (tool, "function");
        json_t *name = json_object_get (fn, "name");
        json_t *description = json_object_get (fn, "description");
        json_t *parameters = json_object_get (fn, "parameters");
        if (!type || strcmp (type, "function") != 0) {
            return S_REFUSE (reply, "tools[%zu]: type '%.40s' is not supported by the anthropic "
                             "adapter (function only)", i, type ? type : "?");
        }
        if (!json_is_string (name) || json_string_length (name) == 0) {
            return S_REFUSE (reply, "tools[%zu] has no function \"name\" string", i);
        }
        if (parameters && !json_is_null (parameters) && !json_is_object (parameters)) {
            return S_REFUSE (reply, "tools[%zu]: function parameters must be an object", i);
        }
        /*  A function without parameters takes none: Anthropic requires a schema. */
        json_t *def = json_is_object (parameters)
                    ? json_pack ("{s:O,s:O}", "name", name, "input_schema", parameters)
                    : json_pack ("{s:O,s:{s:s,s:{}}}", "name", name,
                                 "input_schema", "type", "object", "properties");
        if (def && json_is_string (description)) {
            json_object_set (def, "description", description);
        }
        if (!def || json_array_append_new (defs, def)) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    return 0;
}

/*  OpenAI "tool_choice" (and parallel_tool_calls: false) as Anthropic's
    "tool_choice" in req. Without tools it is left out, as the choice has
    nothing to choose from. */
static int
s_tool_choice (json_t *root, json_t *req, llmq_reply_t *reply)
{
    json_t *choice = json_object_get (root, "tool_choice");
    json_t *tc = NULL;
    if (json_is_string (choice)) {
        static const char *map[][2] = { { "auto", "auto" }, { "none", "none" }, { "required", "any" } };
        for (size_t i = 0; i < 3 && !tc; i++) {
            if (strcmp (json_string_value (choice), map[i][0]) == 0) {
                tc = json_pack ("{s:s}", "type", map[i][1]);
                if (!tc) {
                    return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
                }
            }
        }
        if (!tc) {
            return S_REFUSE (reply, "\"tool_choice\" '%.40s' is not auto, none or required",
                             json_string_value (choice));
        }
    }
    else if (json_is_object (choice)) {
        json_t *name = json_object_get (json_object_get (choice, "function"), "name");
        if (!json_is_string (name)) {
            return S_REFUSE (reply, "\"tool_choice\" names no function");
        }
        tc = json_pack ("{s:s,s:O}", "type", "tool", "name", name);
        if (!tc) {
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    else if (choice && !json_is_null (choice)) {
        return S_REFUSE (reply, "\"tool_choice\" must be a string or an object");
    }
    if (!json_object_get (req, "tools")) {
        json_decref (tc);
        return 0;
    }
    if (json_is_false (json_object_get (root, "parallel_tool_calls"))) {
        if (!tc) {
            tc = json_pack ("{s:s}", "type", "auto");
        }
        if (!tc || (strcmp (json_string_value (json_object_get (tc, "type")), "none") != 0
                    && json_object_set_new (tc, "disable_parallel_tool_use", json_true ()))) {
            json_decref (tc);
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
    }
    if (tc && json_object_set_new (req, "tool_choice", tc)) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

/*  Tools and the tool choice, when the job has them. */
static int
s_tools (json_t *root, json_t *req, llmq_reply_t *reply)
{
    if (json_object_get (root, "functions") || json_object_get (root, "function_call")) {
        return S_REFUSE (reply, "the legacy \"functions\" and \"function_call\" fields are not "
                         "supported by the anthropic adapter (use tools)");
    }
    json_t *tools = json_object_get (root, "tools");
    bool empty = json_is_array (tools) && json_array_size (tools) == 0;
    if (tools && !json_is_null (tools) && !empty && s_tool_defs (tools, req, reply)) {
        return -1;
    }
    return s_tool_choice (root, req, reply);
}

static int
s_build (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_text_t *body,
         llmq_reply_t *reply)
{
    body->len = 0;
    if (!job->body || !*job->body) {
        return S_REFUSE (reply, "job has no body");
    }
    json_error_t jerr;
    json_t *root = json_loadb (job->body, strlen (job->body), 0, &jerr);
    if (!root) {
        return S_REFUSE (reply, "job body is not JSON: %s at offset %d", jerr.text, jerr.position);
    }
    json_t *req = NULL;
    json_t *msgs = NULL;
    llmq_text_t system = { 0 };
    int rc = -1;
    if (!json_is_object (root)) {
        S_REFUSE (reply, "job body is not a JSON object");
        goto done;
    }
    json_t *messages = json_object_get (root, "messages");
    if (!json_is_array (messages) || json_array_size (messages) == 0) {
        S_REFUSE (reply, "job body has no \"messages\" array");
        goto done;
    }
    const char *model = dep->model && *dep->model ? dep->model : job->model;
    if (!model || !*model) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "deployment %s has no model", dep->name);
        goto done;
    }
    json_int_t max_tokens = 0;
    if (s_max_tokens (root, dep, &max_tokens, reply)) {
        goto done;
    }
    msgs = json_array ();
    if (!msgs) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        goto done;
    }
    if (s_messages (messages, msgs, &system, reply)) {
        goto done;
    }
    /*  Fields in the order of Anthropic's own examples. */
    req = json_pack ("{s:s,s:I}", "model", model, "max_tokens", max_tokens);
    if (!req) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "cannot set model (out of memory or not UTF-8)");
        goto done;
    }
    if ((system.len > 0 && json_object_set_new (req, "system", json_stringn (system.p, system.len)))
        || json_object_set (req, "messages", msgs)) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory or system text not UTF-8");
        goto done;
    }
    if (s_number (root, req, "temperature", reply) || s_number (root, req, "top_p", reply)
        || s_stop (root, req, reply) || s_tools (root, req, reply)) {
        goto done;
    }
    json_t *user = json_object_get (root, "user");
    if (json_is_string (user) && json_string_length (user) > 0
        && json_object_set_new (req, "metadata", json_pack ("{s:O}", "user_id", user))) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        goto done;
    }
    if (json_object_set_new (req, "stream", json_boolean (job->stream))) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        goto done;
    }
    /*  Serialise into the reused buffer; 15 digits print 0.2 as 0.2. */
    const size_t flags = JSON_COMPACT | JSON_REAL_PRECISION (15);
    size_t need = json_dumpb (req, body->p, body->cap, flags);
    if (need == 0) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "cannot serialise the request");
        goto done;
    }
    if (need + 1 > body->cap) {
        if (llmq_text_reserve (body, need)) {
            llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            goto done;
        }
        json_dumpb (req, body->p, body->cap, flags);
    }
    body->len = need;
    body->p[need] = '\0';
    rc = 0;
done:
    llmq_text_free (&system);
    json_decref (msgs);
    json_decref (req);
    json_decref (root);
    return rc;
}

/*  --- answers ---------------------------------------------------------- */

/*  OpenAI's finish_reason for an Anthropic stop_reason; unknown reasons
    pass through unchanged (a new one is better seen than hidden). */
static const char *
s_finish (const char *stop_reason)
{
    static const char *map[][2] = {
        { "end_turn", "stop" },
        { "stop_sequence", "stop" },
        { "max_tokens", "length" },
        { "model_context_window_exceeded", "length" },
        { "tool_use", "tool_calls" },
        { "refusal", "content_filter" },
    };
    for (size_t i = 0; stop_reason && i < sizeof map / sizeof map[0]; i++) {
        if (strcmp (stop_reason, map[i][0]) == 0) {
            return map[i][1];
        }
    }
    return stop_reason;
}

/*  Error class of an Anthropic error type (an error event in a stream or
    a 2xx body carries no status). */
static int
s_type_class (const char *type)
{
    static const struct { const char *type; int ec; } map[] = {
        { "invalid_request_error", LLMQ_EC_INVALID_REQUEST },
        { "not_found_error", LLMQ_EC_INVALID_REQUEST },
        { "request_too_large", LLMQ_EC_INVALID_REQUEST },
        { "authentication_error", LLMQ_EC_AUTH },
        { "permission_error", LLMQ_EC_AUTH },
        { "billing_error", LLMQ_EC_AUTH },
        { "rate_limit_error", LLMQ_EC_RATE_LIMITED },
        { "overloaded_error", LLMQ_EC_RATE_LIMITED },
        { "timeout_error", LLMQ_EC_TIMEOUT },
        { "api_error", LLMQ_EC_SERVER },
    };
    for (size_t i = 0; type && i < sizeof map / sizeof map[0]; i++) {
        if (strcmp (type, map[i].type) == 0) {
            return map[i].ec;
        }
    }
    return LLMQ_EC_SERVER;
}

/*  Fail the reply from {"type":"error","error":{"type","message"}} (the
    outer object); `ec` < 0 takes the class from the error's type. */
static int
s_error (json_t *root, int ec, llmq_reply_t *reply)
{
    json_t *error = json_object_get (root, "error");
    const char *type = json_string_value (json_object_get (error, "type"));
    const char *msg = json_string_value (json_object_get (error, "message"));
    if (ec < 0) {
        ec = s_type_class (type);
    }
    if (type && msg) {
        return llmq_reply_fail (reply, ec, "%s: %s", type, msg);
    }
    return llmq_reply_fail (reply, ec, "%s", msg ? msg : type ? type : "provider sent an error");
}

static uint32_t
s_count (json_t *usage, const char *key)
{
    json_int_t n = json_integer_value (json_object_get (usage, key));
    return n > 0 && n <= UINT32_MAX ? (uint32_t) n : 0;
}

/*  Token counts from a usage object; fields absent leave the counts as
    they are (a stream reports input in message_start, output later). */
static void
s_usage (json_t *usage, llmq_reply_t *reply)
{
    if (!json_is_object (usage)) {
        return;
    }
    if (json_object_get (usage, "input_tokens")) {
        uint64_t p = (uint64_t) s_count (usage, "input_tokens")
                   + s_count (usage, "cache_creation_input_tokens")
                   + s_count (usage, "cache_read_input_tokens");
        reply->prompt_tokens = p <= UINT32_MAX ? (uint32_t) p : UINT32_MAX;
        reply->cached_tokens = s_count (usage, "cache_read_input_tokens");
    }
    if (json_object_get (usage, "output_tokens")) {
        reply->completion_tokens = s_count (usage, "output_tokens");
    }
}

/*  A tool_use block {"id","name","input"} as the reply's call `key`. In
    a stream the input starts empty ({}) and comes as input_json_delta
    pieces, so an empty input adds no arguments there. */
static int
s_tool_use (json_t *block, long key, llmq_reply_t *reply)
{
    const char *id = json_string_value (json_object_get (block, "id"));
    const char *name = json_string_value (json_object_get (block, "name"));
    json_t *input = json_object_get (block, "input");
    char *args = json_object_size (input) > 0 ? json_dumps (input, JSON_COMPACT | JSON_PRESERVE_ORDER)
                                              : NULL;
    if (json_object_size (input) > 0 && !args) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    int rc = llmq_reply_tool (reply, key, id, name, args, args ? strlen (args) : 0);
    free (args);
    return rc;
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
    const char *type = json_string_value (json_object_get (root, "type"));
    if ((type && strcmp (type, "error") == 0) || json_is_object (json_object_get (root, "error"))) {
        s_error (root, -1, reply);
        goto done;
    }
    json_t *content = json_object_get (root, "content");
    if (!json_is_array (content)) {
        llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "response has no \"content\" array");
        goto done;
    }
    /*  Text blocks in order, tool_use blocks as tool calls; thinking and
        other blocks carry nothing for the client. */
    if (llmq_text_add (&reply->content, "", 0)) {
        llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        goto done;
    }
    size_t i;
    json_t *block;
    json_array_foreach (content, i, block) {
        const char *btype = json_string_value (json_object_get (block, "type"));
        if (btype && strcmp (btype, "tool_use") == 0) {
            if (s_tool_use (block, (long) i, reply)) {
                goto done;
            }
            continue;
        }
        if (!btype || strcmp (btype, "text") != 0) {
            continue;
        }
        json_t *text = json_object_get (block, "text");
        if (!json_is_string (text)) {
            llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "content[%zu] has no \"text\" string", i);
            goto done;
        }
        if (llmq_text_add (&reply->content, json_string_value (text), json_string_length (text))) {
            llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
            goto done;
        }
    }
    llmq_reply_set_finish (reply, s_finish (json_string_value (json_object_get (root, "stop_reason"))));
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

/*  Add streamed text to the reply and hand it on. */
static int
s_text (json_t *text, llmq_reply_t *reply, llmq_delta_fn *emit, void *arg)
{
    size_t n = json_string_length (text);
    if (!json_is_string (text) || n == 0) {
        return 0;
    }
    if (llmq_text_add (&reply->content, json_string_value (text), n)) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    if (emit) {
        emit (arg, json_string_value (text), n);
    }
    return 0;
}

static int
s_parse_event (const char *event, const char *data, size_t len, llmq_reply_t *reply,
               llmq_delta_fn *emit, void *arg)
{
    json_error_t jerr;
    json_t *root = json_loadb (data, len, 0, &jerr);
    if (!root || !json_is_object (root)) {
        json_decref (root);
        return llmq_reply_fail (reply, LLMQ_EC_BAD_RESPONSE, "stream event%s%s is not a JSON object",
                                event ? " " : "", event ? event : "");
    }
    /*  The data's "type" names the event; the "event:" line repeats it. */
    const char *type = json_string_value (json_object_get (root, "type"));
    if (!type) {
        type = event ? event : "";
    }
    int rc = 0;
    if (strcmp (type, "content_block_delta") == 0) {
        json_t *delta = json_object_get (root, "delta");
        const char *dtype = json_string_value (json_object_get (delta, "type"));
        /*  thinking_delta, signature_delta: nothing for the client. */
        if (dtype && strcmp (dtype, "text_delta") == 0) {
            rc = s_text (json_object_get (delta, "text"), reply, emit, arg);
        }
        else if (dtype && strcmp (dtype, "input_json_delta") == 0) {
            json_t *piece = json_object_get (delta, "partial_json");
            rc = llmq_reply_tool (reply, (long) json_integer_value (json_object_get (root, "index")),
                                  NULL, NULL, json_string_value (piece), json_string_length (piece));
        }
    }
    else if (strcmp (type, "message_start") == 0) {
        json_t *message = json_object_get (root, "message");
        llmq_reply_set_request_id (reply, json_string_value (json_object_get (message, "id")));
        s_usage (json_object_get (message, "usage"), reply);
    }
    else if (strcmp (type, "content_block_start") == 0) {
        /*  Text blocks start empty, but nothing says they must. */
        json_t *block = json_object_get (root, "content_block");
        const char *btype = json_string_value (json_object_get (block, "type"));
        if (btype && strcmp (btype, "text") == 0) {
            rc = s_text (json_object_get (block, "text"), reply, emit, arg);
        }
        else if (btype && strcmp (btype, "tool_use") == 0) {
            rc = s_tool_use (block, (long) json_integer_value (json_object_get (root, "index")), reply);
        }
    }
    else if (strcmp (type, "message_delta") == 0) {
        const char *stop = json_string_value (json_object_get (json_object_get (root, "delta"),
                                                               "stop_reason"));
        if (stop) {
            llmq_reply_set_finish (reply, s_finish (stop));
            rc = llmq_reply_tools_end (reply);
        }
        s_usage (json_object_get (root, "usage"), reply);
    }
    else if (strcmp (type, "message_stop") == 0) {
        reply->finished = true;
        rc = llmq_reply_tools_end (reply);
    }
    else if (strcmp (type, "error") == 0 || (event && strcmp (event, "error") == 0)) {
        rc = s_error (root, -1, reply);
    }
    /*  ping, content_block_stop and event types added later: nothing to do. */
    json_decref (root);
    return rc;
}

static void
s_classify (long status, const char *body, size_t len, llmq_reply_t *reply)
{
    /*  The status decides the class (529 overloaded is RATE_LIMITED);
        the body only says why. */
    int ec = llmq_http_error_class (status);
    json_t *root = body && len ? json_loadb (body, len, 0, NULL) : NULL;
    json_t *error = json_object_get (root, "error");
    if (json_is_string (json_object_get (error, "message"))
        || json_is_string (json_object_get (error, "type"))) {
        s_error (root, ec, reply);
    }
    else {
        char excerpt[128];
        llmq_excerpt (body ? body : "", body ? len : 0, excerpt, sizeof excerpt);
        llmq_reply_fail (reply, ec, "HTTP %ld%s%s", status, *excerpt ? ": " : "", excerpt);
    }
    json_decref (root);
}

const llmq_provider_t llmq_provider_anthropic = {
    .name = "anthropic",
    .endpoint = s_endpoint,
    .build = s_build,
    .parse_response = s_parse_response,
    .parse_event = s_parse_event,
    .classify = s_classify,
};
