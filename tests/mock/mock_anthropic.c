/*  mock_anthropic.c -- Anthropic Messages: request validation, replies,
    stream events, error bodies and response headers.

    Fidelity notes, so nobody "fixes" them back:
    * Validation messages are "<field path>: <reason>", the way the real
      API words them ("max_tokens: Field required", "messages.0.role:
      Input should be 'user' or 'assistant'"), all 400
      invalid_request_error. A system prompt goes in the top-level
      "system", never in a message; a field the API does not know is
      refused ("stream_options: Extra inputs are not permitted"), which is
      what catches an adapter that forwards OpenAI fields.
    * max_tokens is required: the API has no default.
    * Error types by status: 400 invalid_request_error, 401
      authentication_error, 403 permission_error, 404 not_found_error,
      413 request_too_large, 429 rate_limit_error, 500 api_error, 529
      overloaded_error (Anthropic's own "overloaded" status).
    * A stream opens with three events (message_start, content_block_start,
      ping) and closes with three (content_block_stop, message_delta with
      stop_reason and the output token count, message_stop). Usage has no
      event of its own: input tokens come in message_start, output tokens
      in message_delta. There is no [DONE].
    * The request id is a response header, "request-id", not x-request-id.
    * A tool answer (mock_chat.h: tools and {{call:NAME}}) is one tool_use
      block, stop_reason "tool_use"; streamed, its content_block_start
      carries the id, the name and an empty input, and the input's JSON
      text follows in input_json_delta pieces.
    * Headers are checked before the body, as the real API does: no
      x-api-key (nor an Authorization header, which the API takes for
      OAuth tokens) is 401 authentication_error "x-api-key header is
      required"; no anthropic-version is 400 invalid_request_error
      "anthropic-version: header is required". The version's value and
      the key's are not checked (--reject-key refuses chosen keys).
    * A stream that fails mid-way (error_after) ends with the documented
      "event: error" carrying {"type":"error","error":{"type":
      "overloaded_error","message":"Overloaded"}}, and nothing after it.
*/
#include "mock_anthropic.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ORGANIZATION        "00000000-0000-4000-8000-00000000a11c"
#define RATE_LIMIT_REQUESTS 4000
#define RATE_LIMIT_TOKENS   400000

static bool
s_match (const char *url)
{
    return strcmp (url, "/v1/messages") == 0
        || strcmp (url, "/messages") == 0;
}

static int
s_check (mock_request_header_fn *get, void *ctx, mock_error_t *err)
{
    const char *key = get (ctx, "x-api-key");
    const char *authorization = get (ctx, "Authorization");
    if ((!key || !*key) && (!authorization || !*authorization)) {
        err->status = 401;
        snprintf (err->message, sizeof (err->message), "x-api-key header is required");
        return -1;
    }
    const char *version = get (ctx, "anthropic-version");
    if (!version || !*version) {
        err->status = 400;
        snprintf (err->message, sizeof (err->message),
                  "anthropic-version: header is required");
        return -1;
    }
    return 0;
}

//  Fill err with a 400 invalid_request_error
static int
s_refuse (mock_error_t *err, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

static int
s_refuse (mock_error_t *err, const char *format, ...)
{
    err->status = 400;
    va_list args;
    va_start (args, format);
    vsnprintf (err->message, sizeof (err->message), format, args);
    va_end (args);
    return -1;
}

//  The fields the Messages API accepts; any other is refused
static bool
s_known_field (const char *key)
{
    static const char *fields [] = {
        "model", "messages", "max_tokens", "system", "metadata", "stop_sequences",
        "stream", "temperature", "top_p", "top_k", "tools", "tool_choice",
        "thinking", "service_tier", "container", "mcp_servers", NULL
    };
    for (int i = 0; fields [i]; i++) {
        if (strcmp (key, fields [i]) == 0) {
            return true;
        }
    }
    return false;
}

//  The words of a content value: a string, or an array of blocks of which
//  the "text" blocks carry words (joined with one space, as the OpenAI
//  dialect joins parts). `path` names the value in messages. Adds it to
//  chat as one message.
static int
s_add_content (json_t *content, const char *path, bool is_user, mock_chat_t *chat,
               mock_error_t *err)
{
    if (json_is_string (content)) {
        return mock_chat_add_message (chat, is_user, json_string_value (content),
                                      json_string_length (content));
    }
    if (!json_is_array (content)) {
        return s_refuse (err, "%s: Input should be a valid string or a valid list", path);
    }
    size_t total = 0;
    size_t i;
    json_t *block;
    json_array_foreach (content, i, block) {
        if (!json_is_object (block)) {
            return s_refuse (err, "%s.%zu: Input should be a valid dictionary", path, i);
        }
        const char *type = json_string_value (json_object_get (block, "type"));
        if (!type) {
            return s_refuse (err, "%s.%zu.type: Field required", path, i);
        }
        if (strcmp (type, "text") == 0) {
            json_t *text = json_object_get (block, "text");
            if (!json_is_string (text)) {
                return s_refuse (err, "%s.%zu.text: Field required", path, i);
            }
            total += json_string_length (text) + 1;
        }
    }
    char *joined = malloc (total + 1);
    if (!joined) {
        return -1;
    }
    size_t len = 0;
    json_array_foreach (content, i, block) {
        json_t *text = json_object_get (block, "text");
        const char *type = json_string_value (json_object_get (block, "type"));
        if (strcmp (type, "text") == 0) {
            if (len > 0) {
                joined [len++] = ' ';
            }
            memcpy (joined + len, json_string_value (text), json_string_length (text));
            len += json_string_length (text);
        }
    }
    //  Only text is a prompt to echo: a message of tool_result blocks is
    //  the tool's answer (as a "tool" message is in the OpenAI dialect)
    bool has_text = false;
    json_array_foreach (content, i, block) {
        has_text |= strcmp (json_string_value (json_object_get (block, "type")), "text") == 0;
    }
    int rc = mock_chat_add_message (chat, is_user && has_text, joined, len);
    free (joined);
    return rc;
}

static int
s_parse_message (json_t *message, size_t index, mock_chat_t *chat, mock_error_t *err)
{
    char path [64];
    snprintf (path, sizeof (path), "messages.%zu", index);
    if (!json_is_object (message)) {
        return s_refuse (err, "%s: Input should be a valid dictionary", path);
    }
    json_t *role = json_object_get (message, "role");
    if (!role) {
        return s_refuse (err, "%s.role: Field required", path);
    }
    const char *name = json_string_value (role);
    if (!name || (strcmp (name, "user") != 0 && strcmp (name, "assistant") != 0)) {
        return s_refuse (err, "%s.role: Input should be 'user' or 'assistant'", path);
    }
    json_t *content = json_object_get (message, "content");
    if (!content) {
        return s_refuse (err, "%s.content: Field required", path);
    }
    char field [80];
    snprintf (field, sizeof (field), "%s.content", path);
    return s_add_content (content, field, strcmp (name, "user") == 0, chat, err);
}

//  A number in [0, 1], when present
static int
s_unit_number (json_t *root, const char *key, mock_error_t *err)
{
    json_t *value = json_object_get (root, key);
    if (!value || json_is_null (value)) {
        return 0;
    }
    if (!json_is_number (value)) {
        return s_refuse (err, "%s: Input should be a valid number", key);
    }
    double v = json_number_value (value);
    if (v < 0.0) {
        return s_refuse (err, "%s: Input should be greater than or equal to 0", key);
    }
    if (v > 1.0) {
        return s_refuse (err, "%s: Input should be less than or equal to 1", key);
    }
    return 0;
}

static int
s_parse_body (json_t *root, mock_chat_t *chat, mock_error_t *err)
{
    const char *key;
    json_t *value;
    json_object_foreach (root, key, value) {
        if (!s_known_field (key)) {
            return s_refuse (err, "%.200s: Extra inputs are not permitted", key);
        }
    }
    json_t *model = json_object_get (root, "model");
    if (!model) {
        return s_refuse (err, "model: Field required");
    }
    if (!json_is_string (model)) {
        return s_refuse (err, "model: Input should be a valid string");
    }
    json_t *max_tokens = json_object_get (root, "max_tokens");
    if (!max_tokens) {
        return s_refuse (err, "max_tokens: Field required");
    }
    if (!json_is_integer (max_tokens)) {
        return s_refuse (err, "max_tokens: Input should be a valid integer");
    }
    if (json_integer_value (max_tokens) < 1) {
        return s_refuse (err, "max_tokens: Input should be greater than or equal to 1");
    }
    json_t *messages = json_object_get (root, "messages");
    if (!messages) {
        return s_refuse (err, "messages: Field required");
    }
    if (!json_is_array (messages)) {
        return s_refuse (err, "messages: Input should be a valid list");
    }
    if (json_array_size (messages) == 0) {
        return s_refuse (err, "messages: at least one message is required");
    }
    json_t *stream = json_object_get (root, "stream");
    if (stream && !json_is_boolean (stream)) {
        return s_refuse (err, "stream: Input should be a valid boolean");
    }
    if (s_unit_number (root, "temperature", err) != 0
    ||  s_unit_number (root, "top_p", err) != 0) {
        return -1;
    }
    json_t *stops = json_object_get (root, "stop_sequences");
    if (stops) {
        if (!json_is_array (stops)) {
            return s_refuse (err, "stop_sequences: Input should be a valid list");
        }
        size_t i;
        json_t *stop;
        json_array_foreach (stops, i, stop) {
            if (!json_is_string (stop)) {
                return s_refuse (err, "stop_sequences.%zu: Input should be a valid string", i);
            }
        }
    }
    chat->stream = json_is_true (stream);
    json_int_t limit = json_integer_value (max_tokens);
    chat->max_tokens = limit > 1000000000 ? 1000000000 : (long) limit;
    if (mock_chat_set_model (chat, json_string_value (model)) != 0) {
        return -1;
    }
    json_t *tools = json_object_get (root, "tools");
    if (tools && !json_is_array (tools)) {
        return s_refuse (err, "tools: Input should be a valid list");
    }
    size_t t;
    json_t *tool;
    json_array_foreach (tools, t, tool) {
        if (!json_is_string (json_object_get (tool, "name"))) {
            return s_refuse (err, "tools.%zu.name: Field required", t);
        }
        if (!json_is_object (json_object_get (tool, "input_schema"))) {
            return s_refuse (err, "tools.%zu.input_schema: Field required", t);
        }
    }
    chat->has_tools = json_array_size (tools) > 0;
    json_t *system = json_object_get (root, "system");
    if (system && s_add_content (system, "system", false, chat, err) != 0) {
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
    (void) url;
    //  The model echoed in error messages even when the body is refused
    if (mock_chat_set_model (chat, "claude-mock") != 0) {
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb (body, len, 0, &jerr);
    if (!root) {
        return s_refuse (err, "There was an issue with the request body: not valid JSON "
                         "(%.200s at position %d)", jerr.text, jerr.position);
    }
    int rc;
    if (!json_is_object (root)) {
        rc = s_refuse (err, "Input should be a valid dictionary");
    }
    else {
        rc = s_parse_body (root, chat, err);
    }
    json_decref (root);
    return rc;
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

static const char *
s_stop_reason (const mock_chat_t *chat)
{
    if (chat->tool_name) {
        return "tool_use";
    }
    return strcmp (chat->finish_reason, "length") == 0 ? "max_tokens" : "end_turn";
}

static void
s_tool_id (const mock_chat_t *chat, char *id, size_t size)
{
    snprintf (id, size, "toolu_mock_%" PRIu64, chat->serial);
}

//  The answer's one content block: text, or (a tool answer) tool_use with
//  the whole input, or with `empty` input as a stream starts it
static json_t *
s_block (const mock_chat_t *chat, bool empty)
{
    if (!chat->tool_name) {
        return json_pack ("{s:s, s:s%}", "type", "text",
                          "text", empty ? "" : chat->reply, empty ? (size_t) 0 : chat->reply_len);
    }
    char id [48];
    s_tool_id (chat, id, sizeof (id));
    json_t *input = empty ? json_object () : json_loadb (chat->reply, chat->reply_len, 0, NULL);
    return json_pack ("{s:s, s:s, s:s, s:o}", "type", "tool_use", "id", id,
                      "name", chat->tool_name, "input", input);
}

static void
s_message_id (const mock_chat_t *chat, char *id, size_t size)
{
    snprintf (id, size, "msg_mock_%" PRIu64, chat->serial);
}

static char *
s_reply (const mock_chat_t *chat)
{
    char id [48];
    s_message_id (chat, id, sizeof (id));
    return s_dump (json_pack (
        "{s:s, s:s, s:s, s:s, s:[o], s:s, s:n,"
        " s:{s:I, s:i, s:i, s:I, s:s}}",
        "id", id,
        "type", "message",
        "role", "assistant",
        "model", chat->model,
        "content", s_block (chat, false),
        "stop_reason", s_stop_reason (chat),
        "stop_sequence",
        "usage",
            "input_tokens", (json_int_t) chat->prompt_words,
            "cache_creation_input_tokens", 0,
            "cache_read_input_tokens", 0,
            "output_tokens", (json_int_t) chat->completion_words,
            "service_tier", "standard"));
}

//  "event: NAME\ndata: JSON\n\n" appended to *out (a malloc'd string or
//  NULL); takes the object. Returns 0, or -1 if out of memory.
static int
s_sse (char **out, const char *name, json_t *data)
{
    char *json = s_dump (data);
    if (!json) {
        return -1;
    }
    size_t have = *out ? strlen (*out) : 0;
    size_t need = have + strlen (name) + strlen (json) + 20;
    char *text = realloc (*out, need);
    if (!text) {
        free (json);
        return -1;
    }
    snprintf (text + have, need - have, "event: %s\ndata: %s\n\n", name, json);
    free (json);
    *out = text;
    return 0;
}

static int
s_event (const mock_chat_t *chat, mock_event_t event, size_t piece, char **out)
{
    *out = NULL;
    char id [48];
    s_message_id (chat, id, sizeof (id));
    int rc = 0;
    switch (event) {
        case MOCK_EVENT_START:
            //  The real API counts one output token in message_start
            rc = s_sse (out, "message_start", json_pack (
                    "{s:s, s:{s:s, s:s, s:s, s:[], s:s, s:n, s:n,"
                    " s:{s:I, s:i, s:i, s:i, s:s}}}",
                    "type", "message_start",
                    "message", "id", id, "type", "message", "role", "assistant",
                        "content", "model", chat->model,
                        "stop_reason", "stop_sequence",
                        "usage", "input_tokens", (json_int_t) chat->prompt_words,
                            "cache_creation_input_tokens", 0,
                            "cache_read_input_tokens", 0, "output_tokens", 1,
                            "service_tier", "standard"))
              || s_sse (out, "content_block_start", json_pack (
                    "{s:s, s:i, s:o}", "type", "content_block_start",
                    "index", 0, "content_block", s_block (chat, true)))
              || s_sse (out, "ping", json_pack ("{s:s}", "type", "ping"));
            break;
        case MOCK_EVENT_DELTA: {
            const char *text;
            size_t len;
            mock_chat_piece (chat, piece, &text, &len);
            rc = s_sse (out, "content_block_delta", chat->tool_name
                ? json_pack ("{s:s, s:i, s:{s:s, s:s%}}", "type", "content_block_delta",
                    "index", 0, "delta", "type", "input_json_delta", "partial_json", text, len)
                : json_pack ("{s:s, s:i, s:{s:s, s:s%}}", "type", "content_block_delta",
                    "index", 0, "delta", "type", "text_delta", "text", text, len));
            break;
        }
        case MOCK_EVENT_FINISH:
            rc = s_sse (out, "content_block_stop", json_pack (
                    "{s:s, s:i}", "type", "content_block_stop", "index", 0))
              || s_sse (out, "message_delta", json_pack (
                    "{s:s, s:{s:s, s:n}, s:{s:I}}", "type", "message_delta",
                    "delta", "stop_reason", s_stop_reason (chat), "stop_sequence",
                    "usage", "output_tokens", (json_int_t) chat->completion_words));
            break;
        case MOCK_EVENT_USAGE:
            return 0;       //  carried by message_start and message_delta
        case MOCK_EVENT_DONE:
            rc = s_sse (out, "message_stop", json_pack ("{s:s}", "type", "message_stop"));
            break;
        case MOCK_EVENT_ERROR:
            //  The documented mid-stream failure: an "error" event with
            //  the error body of a 529, and nothing after it
            rc = s_sse (out, "error", json_pack ("{s:s, s:{s:s, s:s}}", "type", "error",
                    "error", "type", "overloaded_error", "message", "Overloaded"));
            break;
    }
    if (rc != 0) {
        free (*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

//  The real API's type and message for an error status
static const char *
s_error_defaults (const mock_error_t *err, char *message, size_t size)
{
    const char *model = err->model ? err->model : "claude-mock";
    switch (err->status) {
        case 400:
            snprintf (message, size, "Invalid request.");
            return "invalid_request_error";
        case 401:
            snprintf (message, size, "invalid x-api-key");
            return "authentication_error";
        case 403:
            snprintf (message, size, "Your API key does not have permission to use "
                      "the specified resource.");
            return "permission_error";
        case 404:
            snprintf (message, size, "model: %.200s", model);
            return "not_found_error";
        case 413:
            snprintf (message, size, "Request exceeds the maximum allowed number of bytes.");
            return "request_too_large";
        case 429:
            if (err->quota) {
                snprintf (message, size, "You have reached your specified API usage "
                          "limits. You will regain access on the first of next month.");
            }
            else {
                snprintf (message, size, "This request would exceed the rate limit for "
                          "your organization (" ORGANIZATION ") of %d requests per minute.",
                          RATE_LIMIT_REQUESTS);
            }
            return "rate_limit_error";
        case 500:
            snprintf (message, size, "Internal server error");
            return "api_error";
        case 529:
            snprintf (message, size, "Overloaded");
            return "overloaded_error";
        default:
            snprintf (message, size, "Mock provider injected HTTP %d.", err->status);
            return err->status >= 500 ? "api_error" : "invalid_request_error";
    }
}

static char *
s_error (const mock_error_t *err, const char **content_type)
{
    *content_type = "application/json";
    char message [512];
    const char *type = s_error_defaults (err, message, sizeof (message));
    if (err->message [0]) {
        snprintf (message, sizeof (message), "%s", err->message);
    }
    return s_dump (json_pack ("{s:s, s:{s:s, s:s}}", "type", "error",
                              "error", "type", type, "message", message));
}

//  RFC 3339 UTC time `seconds` from now, as the rate-limit resets are given
static void
s_reset_time (int seconds, char *out, size_t size)
{
    time_t at = time (NULL) + seconds;
    struct tm tm;
    gmtime_r (&at, &tm);
    strftime (out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void
s_headers (const mock_reply_info_t *info, mock_header_fn *add, void *ctx)
{
    char value [64];
    snprintf (value, sizeof (value), "req_mock_%016" PRIx64, info->serial);
    add (ctx, "request-id", value);
    add (ctx, "anthropic-organization-id", ORGANIZATION);

    bool limited = info->status == 429;
    long input = info->chat ? (long) info->chat->prompt_words : 0;
    long output = info->chat ? (long) info->chat->completion_words : 0;
    char reset [32];
    s_reset_time (limited && info->retry_after_s > 0 ? info->retry_after_s : 1,
                  reset, sizeof (reset));
    snprintf (value, sizeof (value), "%d", RATE_LIMIT_REQUESTS);
    add (ctx, "anthropic-ratelimit-requests-limit", value);
    snprintf (value, sizeof (value), "%d", limited ? 0 : RATE_LIMIT_REQUESTS - 1);
    add (ctx, "anthropic-ratelimit-requests-remaining", value);
    add (ctx, "anthropic-ratelimit-requests-reset", reset);
    snprintf (value, sizeof (value), "%d", RATE_LIMIT_TOKENS);
    add (ctx, "anthropic-ratelimit-tokens-limit", value);
    snprintf (value, sizeof (value), "%ld", limited ? 0 : RATE_LIMIT_TOKENS - input - output);
    add (ctx, "anthropic-ratelimit-tokens-remaining", value);
    add (ctx, "anthropic-ratelimit-tokens-reset", reset);
    snprintf (value, sizeof (value), "%d", RATE_LIMIT_TOKENS / 2);
    add (ctx, "anthropic-ratelimit-input-tokens-limit", value);
    snprintf (value, sizeof (value), "%ld", limited ? 0 : RATE_LIMIT_TOKENS / 2 - input);
    add (ctx, "anthropic-ratelimit-input-tokens-remaining", value);
    add (ctx, "anthropic-ratelimit-input-tokens-reset", reset);
    snprintf (value, sizeof (value), "%d", RATE_LIMIT_TOKENS / 2);
    add (ctx, "anthropic-ratelimit-output-tokens-limit", value);
    snprintf (value, sizeof (value), "%ld", limited ? 0 : RATE_LIMIT_TOKENS / 2 - output);
    add (ctx, "anthropic-ratelimit-output-tokens-remaining", value);
    add (ctx, "anthropic-ratelimit-output-tokens-reset", reset);
}

const mock_dialect_t mock_anthropic_dialect = {
    .name = "anthropic",
    .match = s_match,
    .check = s_check,
    .parse = s_parse,
    .reply = s_reply,
    .event = s_event,
    .error = s_error,
    .headers = s_headers,
};
