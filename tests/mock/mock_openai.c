/*  mock_openai.c -- OpenAI Chat Completions: request validation, replies,
    stream chunks, error bodies and response headers.

    Fidelity notes, so nobody "fixes" them back:
    * The error types are the ones the real API sends, which are not
      always what one would guess: a bad key is 401 "invalid_request_error"
      with code "invalid_api_key"; a rate limit is 429 with type "requests"
      and code "rate_limit_exceeded"; an empty quota is 429 with type and
      code "insufficient_quota"; a refused region is 403 "request_forbidden".
    * 502 and 504 come from the CDN in front of the API, as an HTML page,
      not JSON. Clients must cope with that, so the mock does it too.
    * Validation messages follow the real wording ("Missing required
      parameter: 'messages'.") and set `param` and `code` the same way.
    * With stream_options.include_usage every chunk carries "usage": null
      and one extra chunk with empty "choices" carries the usage.
    * A stream that fails mid-way (error_after) gets one more event,
      data: {"error":{"message":...,"type":"server_error","param":null,
      "code":null}}, and then just ends: no finish chunk, no [DONE].
*/
#include "mock_openai.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FINGERPRINT         "fp_mock"
#define RATE_LIMIT_REQUESTS 10000
#define RATE_LIMIT_TOKENS   30000000

static bool
s_match (const char *url)
{
    //  Azure OpenAI: /openai/deployments/NAME/chat/completions
    static const char azure[] = "/openai/deployments/", tail[] = "/chat/completions";
    size_t n = strlen (url);
    bool is_azure = strncmp (url, azure, sizeof azure - 1) == 0 && n > sizeof azure - 1 + sizeof tail - 1
                 && strcmp (url + n - (sizeof tail - 1), tail) == 0;
    return strcmp (url, "/v1/chat/completions") == 0
        || strcmp (url, "/chat/completions") == 0 || is_azure;
}

//  Fill err with a 400 invalid_request_error; param and code may be NULL
static int
s_refuse (mock_error_t *err, const char *param, const char *code,
          const char *format, ...) __attribute__ ((format (printf, 4, 5)));

static int
s_refuse (mock_error_t *err, const char *param, const char *code,
          const char *format, ...)
{
    err->status = 400;
    va_list args;
    va_start (args, format);
    vsnprintf (err->message, sizeof (err->message), format, args);
    va_end (args);
    snprintf (err->param, sizeof (err->param), "%s", param ? param : "");
    snprintf (err->code, sizeof (err->code), "%s", code ? code : "");
    return -1;
}

//  The name the real API uses for a JSON type in "Invalid type" messages
static const char *
s_type_name (const json_t *value)
{
    switch (json_typeof (value)) {
        case JSON_OBJECT:   return "an object";
        case JSON_ARRAY:    return "an array";
        case JSON_STRING:   return "a string";
        case JSON_INTEGER:  return "an integer";
        case JSON_REAL:     return "a decimal";
        case JSON_TRUE:
        case JSON_FALSE:    return "a boolean";
        case JSON_NULL:     return "null";
    }
    return "something else";
}

static bool
s_valid_role (const char *role)
{
    static const char *roles [] = {
        "system", "developer", "user", "assistant", "tool", "function", NULL
    };
    for (int i = 0; roles [i]; i++) {
        if (strcmp (role, roles [i]) == 0) {
            return true;
        }
    }
    return false;
}

//  Parse messages[index] into chat. Content may be a string, an array of
//  parts (only "text" parts carry words), or null/absent for an assistant
//  turn that only made tool calls.
static int
s_parse_message (json_t *message, size_t index, mock_chat_t *chat,
                 mock_error_t *err)
{
    char name [64];
    snprintf (name, sizeof (name), "messages[%zu]", index);
    if (!json_is_object (message)) {
        return s_refuse (err, name, "invalid_type",
            "Invalid type for '%s': expected an object, but got %s instead.",
            name, s_type_name (message));
    }
    char field [80];
    json_t *role = json_object_get (message, "role");
    snprintf (field, sizeof (field), "%s.role", name);
    if (!role) {
        return s_refuse (err, field, "missing_required_parameter",
            "Missing required parameter: '%s'.", field);
    }
    if (!json_is_string (role) || !s_valid_role (json_string_value (role))) {
        return s_refuse (err, field, "invalid_value",
            "Invalid value: '%.64s'. Supported values are: 'system', "
            "'assistant', 'user', 'function', 'tool', and 'developer'.",
            json_is_string (role) ? json_string_value (role) : "?");
    }
    bool is_user = strcmp (json_string_value (role), "user") == 0;
    bool is_assistant = strcmp (json_string_value (role), "assistant") == 0;

    json_t *content = json_object_get (message, "content");
    snprintf (field, sizeof (field), "%s.content", name);
    if (!content || json_is_null (content)) {
        if (!is_assistant) {
            return s_refuse (err, field, "missing_required_parameter",
                "Missing required parameter: '%s'.", field);
        }
        return 0;
    }
    if (json_is_string (content)) {
        return mock_chat_add_message (chat, is_user, json_string_value (content),
                                      json_string_length (content));
    }
    if (!json_is_array (content)) {
        return s_refuse (err, field, "invalid_type",
            "Invalid type for '%s': expected one of a string or array of "
            "objects, but got %s instead.", field, s_type_name (content));
    }
    //  Join the text parts with a space, as llmq's echo provider does, so
    //  both answer a multi-part prompt with the same words
    size_t total = 0;
    size_t i;
    json_t *part;
    json_array_foreach (content, i, part) {
        json_t *text = json_object_get (part, "text");
        if (json_is_string (text)) {
            total += json_string_length (text) + 1;
        }
    }
    char *joined = malloc (total + 1);
    if (!joined) {
        return -1;
    }
    size_t len = 0;
    json_array_foreach (content, i, part) {
        json_t *text = json_object_get (part, "text");
        if (json_is_string (text)) {
            if (len > 0) {
                joined [len++] = ' ';
            }
            memcpy (joined + len, json_string_value (text), json_string_length (text));
            len += json_string_length (text);
        }
    }
    int rc = mock_chat_add_message (chat, is_user, joined, len);
    free (joined);
    return rc;
}

//  max_tokens and its newer name max_completion_tokens: integer >= 1
static int
s_parse_max_tokens (json_t *root, const char *key, mock_chat_t *chat,
                    mock_error_t *err)
{
    json_t *value = json_object_get (root, key);
    if (!value || json_is_null (value)) {
        return 0;
    }
    if (!json_is_integer (value)) {
        return s_refuse (err, key, "invalid_type",
            "Invalid type for '%s': expected an integer, but got %s instead.",
            key, s_type_name (value));
    }
    json_int_t n = json_integer_value (value);
    if (n < 1) {
        return s_refuse (err, key, "integer_below_min_value",
            "Invalid '%s': integer below minimum value. Expected a value "
            ">= 1, but got %" JSON_INTEGER_FORMAT " instead.", key, n);
    }
    if (chat->max_tokens < 0 || n < chat->max_tokens) {
        chat->max_tokens = n > 1000000000 ? 1000000000 : (long) n;
    }
    return 0;
}

static int
s_parse_body (json_t *root, mock_chat_t *chat, mock_error_t *err)
{
    json_t *model = json_object_get (root, "model");
    if (!model) {
        return s_refuse (err, NULL, NULL, "you must provide a model parameter");
    }
    if (!json_is_string (model)) {
        return s_refuse (err, "model", "invalid_type",
            "Invalid type for 'model': expected a string, but got %s instead.",
            s_type_name (model));
    }
    json_t *messages = json_object_get (root, "messages");
    if (!messages) {
        return s_refuse (err, "messages", "missing_required_parameter",
            "Missing required parameter: 'messages'.");
    }
    if (!json_is_array (messages)) {
        return s_refuse (err, "messages", "invalid_type",
            "Invalid type for 'messages': expected an array of objects, "
            "but got %s instead.", s_type_name (messages));
    }
    if (json_array_size (messages) == 0) {
        return s_refuse (err, "messages", "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum "
            "length 1, but got an empty array instead.");
    }
    json_t *stream = json_object_get (root, "stream");
    if (stream && !json_is_null (stream) && !json_is_boolean (stream)) {
        return s_refuse (err, "stream", "invalid_type",
            "Invalid type for 'stream': expected a boolean, but got %s instead.",
            s_type_name (stream));
    }
    chat->stream = json_is_true (stream);
    json_t *options = json_object_get (root, "stream_options");
    if (options && !json_is_null (options)) {
        if (!chat->stream) {
            return s_refuse (err, "stream_options", NULL,
                "The 'stream_options' parameter is only allowed when 'stream' "
                "is enabled.");
        }
        chat->include_usage = json_is_true (json_object_get (options, "include_usage"));
    }
    json_t *temperature = json_object_get (root, "temperature");
    if (temperature && !json_is_null (temperature)) {
        if (!json_is_number (temperature)) {
            return s_refuse (err, "temperature", "invalid_type",
                "Invalid type for 'temperature': expected a decimal, but got "
                "%s instead.", s_type_name (temperature));
        }
        double t = json_number_value (temperature);
        if (t < 0.0) {
            return s_refuse (err, "temperature", "decimal_below_min_value",
                "Invalid 'temperature': decimal below minimum value. Expected "
                "a value >= 0, but got %g instead.", t);
        }
        if (t > 2.0) {
            return s_refuse (err, "temperature", "decimal_above_max_value",
                "Invalid 'temperature': decimal above maximum value. Expected "
                "a value <= 2, but got %g instead.", t);
        }
    }
    if (s_parse_max_tokens (root, "max_tokens", chat, err) != 0
    ||  s_parse_max_tokens (root, "max_completion_tokens", chat, err) != 0) {
        return -1;
    }
    json_t *tools = json_object_get (root, "tools");
    if (tools && !json_is_null (tools) && !json_is_array (tools)) {
        return s_refuse (err, "tools", "invalid_type",
            "Invalid type for 'tools': expected an array of objects, but got "
            "%s instead.", s_type_name (tools));
    }
    chat->has_tools = json_array_size (tools) > 0;
    if (mock_chat_set_model (chat, json_string_value (model)) != 0) {
        return -1;
    }
    size_t index;
    json_t *message;
    json_array_foreach (messages, index, message) {
        if (s_parse_message (message, index, chat, err) != 0) {
            return -1;
        }
    }
    return 0;
}

static int
s_parse (const char *url, const char *body, size_t len, mock_chat_t *chat,
         mock_error_t *err)
{
    json_error_t json_err;
    json_t *root = json_loadb (body, len, JSON_ALLOW_NUL, &json_err);
    if (!root || !json_is_object (root)) {
        json_decref (root);
        return s_refuse (err, NULL, NULL,
            "We could not parse the JSON body of your request. (HINT: This "
            "likely means you aren't using your HTTP library correctly. The "
            "OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON.)");
    }
    int rc = s_parse_body (root, chat, err);
    json_decref (root);
    //  An out-of-memory failure leaves err->status 0: make it a 500
    if (rc != 0 && err->status == 0) {
        err->status = 500;
    }
    return rc;
}

static json_t *
s_usage (const mock_chat_t *chat)
{
    //  [[mock:cached=N]]: N of the prompt tokens came from the cache
    size_t cached = chat->plan.cached > 0 ? (size_t) chat->plan.cached : 0;
    if (cached > chat->prompt_words) {
        cached = chat->prompt_words;
    }
    return json_pack ("{s:I, s:I, s:I, s:{s:I, s:i}, s:{s:i, s:i, s:i, s:i}}",
        "prompt_tokens", (json_int_t) chat->prompt_words,
        "completion_tokens", (json_int_t) chat->completion_words,
        "total_tokens", (json_int_t) (chat->prompt_words + chat->completion_words),
        "prompt_tokens_details", "cached_tokens", (json_int_t) cached, "audio_tokens", 0,
        "completion_tokens_details", "reasoning_tokens", 0, "audio_tokens", 0,
            "accepted_prediction_tokens", 0, "rejected_prediction_tokens", 0);
}

static char *
s_dump (json_t *object)
{
    if (!object) {
        return NULL;
    }
    char *text = json_dumps (object, JSON_COMPACT);
    json_decref (object);
    return text;
}

//  The one tool call of a tool answer, as the message carries it; with
//  `stream`, as the first delta carries it (index, empty arguments)
static json_t *
s_tool_calls (const mock_chat_t *chat, bool stream)
{
    char id [48];
    snprintf (id, sizeof (id), "call_mock_%" PRIu64, chat->serial);
    json_t *call = json_pack ("{s:s, s:s, s:{s:s, s:s%}}",
        "id", id, "type", "function",
        "function", "name", chat->tool_name,
            "arguments", stream ? "" : chat->reply, stream ? (size_t) 0 : chat->reply_len);
    if (call && stream) {
        json_object_set_new (call, "index", json_integer (0));
    }
    return call ? json_pack ("[o]", call) : NULL;
}

static char *
s_reply (const mock_chat_t *chat)
{
    char id [48];
    snprintf (id, sizeof (id), "chatcmpl-mock-%" PRIu64, chat->serial);
    if (chat->tool_name) {
        return s_dump (json_pack (
            "{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:n, s:o, s:n, s:[]}, s:n, s:s}],"
            " s:o, s:s, s:s}",
            "id", id,
            "object", "chat.completion",
            "created", (json_int_t) chat->created,
            "model", chat->model,
            "choices",
                "index", 0,
                "message", "role", "assistant", "content",
                    "tool_calls", s_tool_calls (chat, false),
                    "refusal", "annotations",
                "logprobs",
                "finish_reason", chat->finish_reason,
            "usage", s_usage (chat),
            "service_tier", "default",
            "system_fingerprint", FINGERPRINT));
    }
    return s_dump (json_pack (
        "{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s%, s:n, s:[]}, s:n, s:s}],"
        " s:o, s:s, s:s}",
        "id", id,
        "object", "chat.completion",
        "created", (json_int_t) chat->created,
        "model", chat->model,
        "choices",
            "index", 0,
            "message", "role", "assistant",
                "content", chat->reply, chat->reply_len,
                "refusal", "annotations",
            "logprobs",
            "finish_reason", chat->finish_reason,
        "usage", s_usage (chat),
        "service_tier", "default",
        "system_fingerprint", FINGERPRINT));
}

//  One chunk object: choices is either one choice with the given delta
//  and finish_reason (NULL = null), or empty when delta is NULL
static json_t *
s_chunk (const mock_chat_t *chat, json_t *delta, const char *finish_reason)
{
    char id [48];
    snprintf (id, sizeof (id), "chatcmpl-mock-%" PRIu64, chat->serial);
    json_t *choices = json_array ();
    if (delta) {
        json_array_append_new (choices, json_pack ("{s:i, s:o, s:n, s:o}",
            "index", 0, "delta", delta, "logprobs", "finish_reason",
            finish_reason ? json_string (finish_reason) : json_null ()));
    }
    json_t *chunk = json_pack ("{s:s, s:s, s:I, s:s, s:s, s:o}",
        "id", id,
        "object", "chat.completion.chunk",
        "created", (json_int_t) chat->created,
        "model", chat->model,
        "system_fingerprint", FINGERPRINT,
        "choices", choices);
    if (chunk && chat->include_usage) {
        json_object_set_new (chunk, "usage", delta ? json_null () : s_usage (chat));
    }
    return chunk;
}

//  "data: " + compact JSON + blank line: exactly what the API sends
static char *
s_sse (json_t *chunk)
{
    char *json = s_dump (chunk);
    if (!json) {
        return NULL;
    }
    size_t len = strlen (json);
    char *event = malloc (len + 9);
    if (event) {
        memcpy (event, "data: ", 6);
        memcpy (event + 6, json, len);
        memcpy (event + 6 + len, "\n\n", 3);
    }
    free (json);
    return event;
}

static int
s_event (const mock_chat_t *chat, mock_event_t event, size_t piece, char **out)
{
    *out = NULL;
    switch (event) {
        case MOCK_EVENT_START:
            //  A tool answer opens with the call's id and name, then
            //  streams its arguments
            *out = s_sse (s_chunk (chat, chat->tool_name
                ? json_pack ("{s:s, s:n, s:o, s:n}", "role", "assistant", "content",
                             "tool_calls", s_tool_calls (chat, true), "refusal")
                : json_pack ("{s:s, s:s, s:n}", "role", "assistant", "content", "", "refusal"),
                NULL));
            break;
        case MOCK_EVENT_DELTA: {
            const char *text;
            size_t len;
            mock_chat_piece (chat, piece, &text, &len);
            *out = s_sse (s_chunk (chat, chat->tool_name
                ? json_pack ("{s:[{s:i, s:{s:s%}}]}", "tool_calls", "index", 0,
                             "function", "arguments", text, len)
                : json_pack ("{s:s%}", "content", text, len), NULL));
            break;
        }
        case MOCK_EVENT_FINISH:
            *out = s_sse (s_chunk (chat, json_object (), chat->finish_reason));
            break;
        case MOCK_EVENT_USAGE:
            if (!chat->include_usage) {
                return 0;
            }
            *out = s_sse (s_chunk (chat, NULL, NULL));
            break;
        case MOCK_EVENT_DONE:
            *out = strdup ("data: [DONE]\n\n");
            break;
        case MOCK_EVENT_ERROR:
            //  What the API sends when it fails mid-stream: the error
            //  object of a 500 as one more event, no [DONE] after it
            *out = s_sse (json_pack ("{s:{s:s, s:s, s:n, s:n}}", "error",
                "message", "The server had an error while processing your "
                           "request. Sorry about that!",
                "type", "server_error", "param", "code"));
            break;
    }
    return *out ? 0 : -1;
}

//  The real API's type, code and message for an error status
static void
s_error_defaults (const mock_error_t *err, const char **type,
                  const char **code, char *message, size_t size)
{
    const char *model = err->model ? err->model : "gpt-mock";
    *code = NULL;
    *type = err->status >= 500 ? "server_error" : "invalid_request_error";
    switch (err->status) {
        case 401:
            *code = "invalid_api_key";
            snprintf (message, size, "Incorrect API key provided: sk-mock****. "
                "You can find your API key at "
                "https://platform.openai.com/account/api-keys.");
            break;
        case 403:
            *type = "request_forbidden";
            *code = "unsupported_country_region_territory";
            snprintf (message, size, "Country, region, or territory not supported");
            break;
        case 404:
            *code = "model_not_found";
            snprintf (message, size, "The model `%.200s` does not exist or you "
                "do not have access to it.", model);
            break;
        case 413:
            *code = "request_too_large";
            snprintf (message, size, "Request body too large. The limit is 8 MiB.");
            break;
        case 429:
            if (err->quota) {
                *type = *code = "insufficient_quota";
                snprintf (message, size, "You exceeded your current quota, please "
                    "check your plan and billing details.");
            }
            else {
                *type = "requests";
                *code = "rate_limit_exceeded";
                snprintf (message, size, "Rate limit reached for %.200s in "
                    "organization org-mock on requests per min (RPM): Limit %d, "
                    "Used %d, Requested 1. Please try again in %ds.", model,
                    RATE_LIMIT_REQUESTS, RATE_LIMIT_REQUESTS,
                    err->retry_after_s > 0 ? err->retry_after_s : 1);
            }
            break;
        case 500:
            snprintf (message, size, "The server had an error while processing "
                "your request. Sorry about that!");
            break;
        case 503:
            snprintf (message, size, "The server is overloaded or not ready yet.");
            break;
        default:
            snprintf (message, size, "Mock provider injected HTTP %d.", err->status);
            break;
    }
}

static char *
s_error (const mock_error_t *err, const char **content_type)
{
    if (err->status == 502 || err->status == 504) {
        //  The CDN's page, as the API's clients really receive it
        *content_type = "text/html";
        const char *title = err->status == 502 ? "502 Bad Gateway" : "504 Gateway Time-out";
        char page [256];
        snprintf (page, sizeof (page), "<html>\r\n<head><title>%s</title></head>\r\n"
            "<body>\r\n<center><h1>%s</h1></center>\r\n<hr><center>cloudflare"
            "</center>\r\n</body>\r\n</html>\r\n", title, title);
        return strdup (page);
    }
    *content_type = "application/json";
    const char *type;
    const char *code;
    char message [512];
    s_error_defaults (err, &type, &code, message, sizeof (message));
    if (err->message [0]) {
        //  A specific reason brings its own code (or none): the status's
        //  default code would mislabel it
        snprintf (message, sizeof (message), "%s", err->message);
        code = err->code [0] ? err->code : NULL;
    }
    json_t *body = json_pack ("{s:{s:s, s:s, s:o, s:o}}", "error",
        "message", message,
        "type", type,
        "param", err->param [0] ? json_string (err->param) : json_null (),
        "code", code ? json_string (code) : json_null ());
    return s_dump (body);
}

static void
s_headers (const mock_reply_info_t *info, mock_header_fn *add, void *ctx)
{
    char value [64];
    snprintf (value, sizeof (value), "req_%032" PRIx64, info->serial);
    add (ctx, "x-request-id", value);
    snprintf (value, sizeof (value), "%ld", info->processing_ms);
    add (ctx, "openai-processing-ms", value);
    add (ctx, "openai-version", "2020-10-01");
    add (ctx, "openai-organization", "org-mock");

    bool limited = info->status == 429;
    long tokens = info->chat
                ? (long) (info->chat->prompt_words + info->chat->completion_words)
                : 0;
    snprintf (value, sizeof (value), "%d", RATE_LIMIT_REQUESTS);
    add (ctx, "x-ratelimit-limit-requests", value);
    snprintf (value, sizeof (value), "%d", limited ? 0 : RATE_LIMIT_REQUESTS - 1);
    add (ctx, "x-ratelimit-remaining-requests", value);
    if (limited && info->retry_after_s >= 0) {
        snprintf (value, sizeof (value), "%ds", info->retry_after_s);
    }
    else {
        snprintf (value, sizeof (value), "%s", limited ? "1s" : "6ms");
    }
    add (ctx, "x-ratelimit-reset-requests", value);
    snprintf (value, sizeof (value), "%d", RATE_LIMIT_TOKENS);
    add (ctx, "x-ratelimit-limit-tokens", value);
    snprintf (value, sizeof (value), "%ld", RATE_LIMIT_TOKENS - tokens);
    add (ctx, "x-ratelimit-remaining-tokens", value);
    add (ctx, "x-ratelimit-reset-tokens", "0s");
    if (info->retry_after_s >= 0) {
        //  The official SDKs prefer this over Retry-After when present
        snprintf (value, sizeof (value), "%ld", (long) info->retry_after_s * 1000);
        add (ctx, "retry-after-ms", value);
    }
}

const mock_dialect_t mock_openai_dialect = {
    .name = "openai",
    .match = s_match,
    .parse = s_parse,
    .reply = s_reply,
    .event = s_event,
    .error = s_error,
    .headers = s_headers,
};
