/*  mock_gemini.c -- Google Gemini generateContent: request validation,
    replies, stream chunks, error bodies and response headers.

    Routes: POST /v1beta/models/MODEL:generateContent and
    :streamGenerateContent, also under /v1 and with no version prefix (for
    base URLs that already end in /v1beta). The model is taken from the
    path, as the real API does; the body names none.

    Fidelity notes, so nobody "fixes" them back:
    * The query string never reaches a dialect (libmicrohttpd strips it),
      so "?alt=sse" cannot be checked: :streamGenerateContent always
      answers with server-sent events. Without alt=sse the real API sends
      one JSON array, delivered piecemeal; the mock does not do that form.
    * Stream events are "data: {GenerateContentResponse}\r\n\r\n" with CRLF,
      no "event:" names and no [DONE] marker: the stream just ends. Every
      chunk carries usageMetadata (prompt count only until the end); the
      last chunk carries finishReason and the complete counts. Its text
      part may be empty, as the real API's sometimes is.
    * A stream that fails mid-way (error_after) gets one more chunk,
      data: {"error":{"code":503,"message":"The model is overloaded. ...",
      "status":"UNAVAILABLE"}}, and then ends.
    * Errors are Google's RPC status JSON: {"error":{"code":400,
      "message":...,"status":"INVALID_ARGUMENT"}}. A 429 carries a RetryInfo
      detail when a retry delay is known. Google sends no request id header.
    * Unknown fields are refused ("Invalid JSON payload received. Unknown
      name ..."), at the top level and in generationConfig, with lowerCamel
      and snake_case both accepted as proto JSON does: an adapter sending
      OpenAI's field names is caught here rather than in production.
    * A prompt containing MOCK_GEMINI_SAFETY_MARKER is blocked: 200 with
      promptFeedback.blockReason "SAFETY", no candidates.
    * A tool answer (mock_chat.h: tools and {{call:NAME}}) is one
      functionCall part {name, args} with finishReason "STOP", as Gemini
      ends a call; Gemini never splits a call, so a stream sends it whole
      in its first chunk. A content of functionResponse parts only is the
      tool's answer, not the user's prompt.
*/
#include "mock_gemini.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METHOD_GENERATE     ":generateContent"
#define METHOD_STREAM       ":streamGenerateContent"

//  Find the model and method in a path. Returns false if the path is not
//  ours; else sets the model's span and whether the call streams.
static bool
s_route (const char *url, const char **model, size_t *model_len, bool *stream)
{
    if (strncmp (url, "/v1beta/", 8) == 0) {
        url += 7;
    }
    else
    if (strncmp (url, "/v1/", 4) == 0) {
        url += 3;
    }
    if (strncmp (url, "/models/", 8) != 0) {
        return false;
    }
    url += 8;
    const char *colon = strchr (url, ':');
    if (!colon || colon == url || memchr (url, '/', (size_t) (colon - url))) {
        return false;
    }
    if (strcmp (colon, METHOD_GENERATE) == 0) {
        *stream = false;
    }
    else
    if (strcmp (colon, METHOD_STREAM) == 0) {
        *stream = true;
    }
    else {
        return false;
    }
    *model = url;
    *model_len = (size_t) (colon - url);
    return true;
}

static bool
s_match (const char *url)
{
    const char *model;
    size_t len;
    bool stream;
    return s_route (url, &model, &len, &stream);
}

//  Fill err with a 400 INVALID_ARGUMENT
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
    snprintf (err->code, sizeof (err->code), "INVALID_ARGUMENT");
    return -1;
}

//  True if key names one of `known` (lowerCamel), in lowerCamel or snake_case
static bool
s_known (const char *key, const char *const *known)
{
    char folded [64];
    size_t n = 0;
    for (const char *p = key; *p && n + 1 < sizeof (folded); p++) {
        if (*p == '_' && p [1]) {
            folded [n++] = (char) toupper ((unsigned char) *++p);
        }
        else {
            folded [n++] = *p;
        }
    }
    folded [n] = '\0';
    for (int i = 0; known [i]; i++) {
        if (strcmp (folded, known [i]) == 0) {
            return true;
        }
    }
    return false;
}

static const char *const s_request_fields [] = {
    "contents", "systemInstruction", "generationConfig", "safetySettings",
    "tools", "toolConfig", "cachedContent", "labels", NULL
};

static const char *const s_config_fields [] = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
    "responseModalities", "candidateCount", "maxOutputTokens", "temperature",
    "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
    "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers",
    "speechConfig", "thinkingConfig", "mediaResolution", NULL
};

static json_t *
s_get (json_t *object, const char *camel, const char *snake)
{
    json_t *value = json_object_get (object, camel);
    return value ? value : json_object_get (object, snake);
}

//  The text parts of a Content joined with one space (as the OpenAI
//  dialect joins an array content), into chat as one message
static int
s_parse_content (json_t *content, const char *name, bool is_user,
                 mock_chat_t *chat, mock_error_t *err)
{
    json_t *parts = json_object_get (content, "parts");
    if (!json_is_array (parts) || json_array_size (parts) == 0) {
        return s_refuse (err, "* GenerateContentRequest.%s.parts: contents.parts "
                         "must not be empty.\n", name);
    }
    size_t total = 0;
    size_t i;
    json_t *part;
    json_array_foreach (parts, i, part) {
        json_t *text = json_object_get (part, "text");
        if (!json_is_object (part)) {
            return s_refuse (err, "Invalid JSON payload received. Expected an "
                             "object for %s.parts[%zu].", name, i);
        }
        if (text && !json_is_string (text)) {
            return s_refuse (err, "Invalid value at '%s.parts[%zu].text' "
                             "(TYPE_STRING)", name, i);
        }
        total += json_string_length (text) + 1;
    }
    char *joined = malloc (total + 1);
    if (!joined) {
        return -1;
    }
    size_t len = 0;
    json_array_foreach (parts, i, part) {
        json_t *text = json_object_get (part, "text");
        if (json_is_string (text)) {
            if (len > 0) {
                joined [len++] = ' ';
            }
            memcpy (joined + len, json_string_value (text), json_string_length (text));
            len += json_string_length (text);
        }
    }
    //  Only a content with text is a prompt to echo: function responses
    //  are the tool's answer
    bool has_text = false;
    json_array_foreach (parts, i, part) {
        has_text |= json_is_string (json_object_get (part, "text"));
    }
    int rc = mock_chat_add_message (chat, is_user && has_text, joined, len);
    free (joined);
    return rc;
}

static int
s_parse_config (json_t *config, mock_chat_t *chat, mock_error_t *err)
{
    if (!config || json_is_null (config)) {
        return 0;
    }
    if (!json_is_object (config)) {
        return s_refuse (err, "Invalid JSON payload received. Unknown name "
                         "\"generationConfig\": Proto field is not repeating, "
                         "cannot start list.");
    }
    const char *key;
    json_t *value;
    json_object_foreach (config, key, value) {
        if (!s_known (key, s_config_fields)) {
            return s_refuse (err, "Invalid JSON payload received. Unknown name "
                             "\"%.64s\" at 'generation_config': Cannot find field.", key);
        }
    }
    json_t *max = s_get (config, "maxOutputTokens", "max_output_tokens");
    if (max && !json_is_null (max)) {
        if (!json_is_integer (max)) {
            return s_refuse (err, "Invalid value at 'generation_config.max_output_tokens' "
                             "(TYPE_INT32)");
        }
        json_int_t n = json_integer_value (max);
        if (n >= 1) {
            //  0 or below means "model default" to the real API
            chat->max_tokens = n > 1000000000 ? 1000000000 : (long) n;
        }
    }
    json_t *temperature = json_object_get (config, "temperature");
    if (temperature && !json_is_null (temperature)) {
        if (!json_is_number (temperature)) {
            return s_refuse (err, "Invalid value at 'generation_config.temperature' "
                             "(TYPE_FLOAT)");
        }
        double t = json_number_value (temperature);
        if (t < 0.0 || t > 2.0) {
            return s_refuse (err, "* GenerateContentRequest.generation_config."
                             "temperature: temperature must be in [0.0, 2.0]\n");
        }
    }
    json_t *stop = s_get (config, "stopSequences", "stop_sequences");
    if (stop && !json_is_null (stop) && !json_is_array (stop)) {
        return s_refuse (err, "Invalid value at 'generation_config.stop_sequences' "
                         "(TYPE_STRING)");
    }
    return 0;
}

static int
s_parse_body (json_t *root, mock_chat_t *chat, mock_error_t *err)
{
    const char *key;
    json_t *value;
    json_object_foreach (root, key, value) {
        if (!s_known (key, s_request_fields)) {
            return s_refuse (err, "Invalid JSON payload received. Unknown name "
                             "\"%.64s\": Cannot find field.", key);
        }
    }
    json_t *tools = json_object_get (root, "tools");
    if (tools && !json_is_array (tools)) {
        return s_refuse (err, "Invalid value at 'tools' (type.googleapis.com/google.ai."
                         "generativelanguage.v1beta.Tool)");
    }
    size_t t;
    json_t *tool;
    json_array_foreach (tools, t, tool) {
        json_t *decls = s_get (tool, "functionDeclarations", "function_declarations");
        size_t d;
        json_t *decl;
        json_array_foreach (decls, d, decl) {
            if (!json_is_string (json_object_get (decl, "name"))) {
                return s_refuse (err, "* GenerateContentRequest.tools[%zu].function_declarations[%zu]"
                                 ".name: Name cannot be empty.\n", t, d);
            }
            chat->has_tools = true;
        }
    }
    json_t *contents = json_object_get (root, "contents");
    if (!json_is_array (contents) || json_array_size (contents) == 0) {
        return s_refuse (err, "* GenerateContentRequest.contents: contents is "
                         "not specified\n");
    }
    json_t *system = s_get (root, "systemInstruction", "system_instruction");
    if (system && !json_is_null (system)) {
        if (!json_is_object (system)
        ||  s_parse_content (system, "system_instruction", false, chat, err) != 0) {
            return err->status ? -1
                 : s_refuse (err, "Invalid value at 'system_instruction' (Content)");
        }
    }
    size_t index;
    json_t *content;
    json_array_foreach (contents, index, content) {
        char name [48];
        snprintf (name, sizeof (name), "contents[%zu]", index);
        if (!json_is_object (content)) {
            return s_refuse (err, "Invalid value at '%s' (Content)", name);
        }
        json_t *role = json_object_get (content, "role");
        const char *r = json_string_value (role);
        if (role && (!r || (strcmp (r, "user") != 0 && strcmp (r, "model") != 0))) {
            return s_refuse (err, "Please use a valid role: user, model.");
        }
        //  A content without a role is the user's, as the API takes it
        if (s_parse_content (content, name, !r || strcmp (r, "user") == 0, chat, err) != 0) {
            return -1;
        }
    }
    return s_parse_config (s_get (root, "generationConfig", "generation_config"), chat, err);
}

static int
s_parse (const char *url, const char *body, size_t len, mock_chat_t *chat,
         mock_error_t *err)
{
    const char *model;
    size_t model_len;
    bool stream;
    if (!s_route (url, &model, &model_len, &stream)) {
        err->status = 404;
        return -1;
    }
    char name [256];
    snprintf (name, sizeof (name), "%.*s", (int) (model_len < 200 ? model_len : 200), model);
    if (mock_chat_set_model (chat, name) != 0) {
        err->status = 500;
        return -1;
    }
    chat->stream = stream;
    chat->include_usage = true;     //  Gemini always reports usage
    json_error_t json_err;
    json_t *root = json_loadb (body, len, JSON_ALLOW_NUL, &json_err);
    if (!root || !json_is_object (root)) {
        json_decref (root);
        return s_refuse (err, "Invalid JSON payload received. Unexpected token.");
    }
    int rc = s_parse_body (root, chat, err);
    json_decref (root);
    if (rc != 0 && err->status == 0) {
        err->status = 500;          //  out of memory
    }
    return rc;
}

//  --- answers --------------------------------------------------------------

static bool
s_blocked (const mock_chat_t *chat)
{
    size_t n = strlen (MOCK_GEMINI_SAFETY_MARKER);
    if (!chat->last_user || chat->last_user_len < n) {
        return false;
    }
    for (size_t i = 0; i + n <= chat->last_user_len; i++) {
        if (memcmp (chat->last_user + i, MOCK_GEMINI_SAFETY_MARKER, n) == 0) {
            return true;
        }
    }
    return false;
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

//  usageMetadata; `final` adds the candidates' count (a stream sends the
//  prompt count alone until its last chunk)
static json_t *
s_usage (const mock_chat_t *chat, bool final)
{
    json_int_t prompt = (json_int_t) chat->prompt_words;
    json_int_t completion = final ? (json_int_t) chat->completion_words : 0;
    json_t *usage = json_pack ("{s:I}", "promptTokenCount", prompt);
    if (usage && final
    &&  json_object_set_new (usage, "candidatesTokenCount", json_integer (completion)) != 0) {
        json_decref (usage);
        return NULL;
    }
    if (usage
    &&  (json_object_set_new (usage, "totalTokenCount", json_integer (prompt + completion)) != 0
    ||   json_object_set_new (usage, "promptTokensDetails", json_pack ("[{s:s, s:I}]",
            "modality", "TEXT", "tokenCount", prompt)) != 0)) {
        json_decref (usage);
        return NULL;
    }
    return usage;
}

//  The envelope every answer shares, around `candidates` (NULL: none)
static json_t *
s_response (const mock_chat_t *chat, json_t *candidates, json_t *usage)
{
    char id [40];
    snprintf (id, sizeof (id), "mockGemini%012" PRIu64, chat->serial);
    //  Fields in the real API's order: candidates first
    json_t *response = json_object ();
    if (!response || !usage) {
        json_decref (candidates);
        json_decref (usage);
        json_decref (response);
        return NULL;
    }
    //  json_object_set_new takes the value even when it fails
    int rc = candidates ? json_object_set_new (response, "candidates", candidates) : 0;
    rc |= json_object_set_new (response, "usageMetadata", usage);
    rc |= json_object_set_new (response, "modelVersion", json_string (chat->model));
    rc |= json_object_set_new (response, "responseId", json_string (id));
    if (rc != 0) {
        json_decref (response);
        return NULL;
    }
    return response;
}

static json_t *
s_candidates (const char *text, size_t len, const char *finish_reason)
{
    json_t *candidate = json_pack ("{s:{s:[{s:s%}], s:s}, s:i}",
        "content", "parts", "text", text, len, "role", "model", "index", 0);
    if (candidate && finish_reason) {
        json_object_set_new (candidate, "finishReason", json_string (
            strcmp (finish_reason, "length") == 0 ? "MAX_TOKENS" : "STOP"));
    }
    return candidate ? json_pack ("[o]", candidate) : NULL;
}

static json_t *
s_block (const mock_chat_t *chat)
{
    json_t *response = s_response (chat, NULL, s_usage (chat, false));
    if (response) {
        json_object_set_new (response, "promptFeedback", json_pack (
            "{s:s, s:[{s:s, s:s}, {s:s, s:s}]}",
            "blockReason", "SAFETY",
            "safetyRatings",
                "category", "HARM_CATEGORY_DANGEROUS_CONTENT", "probability", "HIGH",
                "category", "HARM_CATEGORY_HARASSMENT", "probability", "NEGLIGIBLE"));
    }
    return response;
}

//  The candidates of a tool answer: one functionCall part
static json_t *
s_call_candidates (const mock_chat_t *chat, bool finish)
{
    json_t *args = json_loadb (chat->reply, chat->reply_len, 0, NULL);
    json_t *candidate = json_pack ("{s:{s:[{s:{s:s, s:o}}], s:s}, s:i}",
        "content", "parts", "functionCall", "name", chat->tool_name, "args", args,
        "role", "model", "index", 0);
    if (candidate && finish) {
        json_object_set_new (candidate, "finishReason", json_string ("STOP"));
    }
    return candidate ? json_pack ("[o]", candidate) : NULL;
}

static char *
s_reply (const mock_chat_t *chat)
{
    if (s_blocked (chat)) {
        return s_dump (s_block (chat));
    }
    if (chat->tool_name) {
        return s_dump (s_response (chat, s_call_candidates (chat, true), s_usage (chat, true)));
    }
    return s_dump (s_response (chat,
        s_candidates (chat->reply, chat->reply_len, chat->finish_reason),
        s_usage (chat, true)));
}

//  "data: " + compact JSON + CRLF CRLF, as the real API frames events
static char *
s_sse (json_t *chunk)
{
    char *json = s_dump (chunk);
    if (!json) {
        return NULL;
    }
    size_t len = strlen (json);
    char *event = malloc (len + 11);
    if (event) {
        memcpy (event, "data: ", 6);
        memcpy (event + 6, json, len);
        memcpy (event + 6 + len, "\r\n\r\n", 5);
    }
    free (json);
    return event;
}

static int
s_event (const mock_chat_t *chat, mock_event_t event, size_t piece, char **out)
{
    *out = NULL;
    bool blocked = s_blocked (chat);
    switch (event) {
        case MOCK_EVENT_START:
            if (!blocked) {
                return 0;           //  no opening event: the text comes first
            }
            *out = s_sse (s_block (chat));
            break;
        case MOCK_EVENT_DELTA: {
            if (blocked || (chat->tool_name && piece > 0)) {
                return 0;
            }
            if (chat->tool_name) {
                *out = s_sse (s_response (chat, s_call_candidates (chat, false),
                                          s_usage (chat, false)));
                break;
            }
            const char *text;
            size_t len;
            mock_chat_piece (chat, piece, &text, &len);
            *out = s_sse (s_response (chat, s_candidates (text, len, NULL),
                                      s_usage (chat, false)));
            break;
        }
        case MOCK_EVENT_FINISH:
            if (blocked) {
                return 0;
            }
            *out = s_sse (s_response (chat, s_candidates ("", 0, chat->finish_reason),
                                      s_usage (chat, true)));
            break;
        case MOCK_EVENT_USAGE:      //  the finish chunk carried it
        case MOCK_EVENT_DONE:       //  the stream just ends
            return 0;
        case MOCK_EVENT_ERROR:
            //  A failure mid-stream: the RPC status of a 503 as one more
            //  chunk, then the stream ends
            *out = s_sse (json_pack ("{s:{s:i, s:s, s:s}}", "error", "code", 503,
                "message", "The model is overloaded. Please try again later.",
                "status", "UNAVAILABLE"));
            break;
    }
    return *out ? 0 : -1;
}

//  --- errors ---------------------------------------------------------------

static const char *
s_status_name (int status)
{
    switch (status) {
        case 400: return "INVALID_ARGUMENT";
        case 401: return "UNAUTHENTICATED";
        case 403: return "PERMISSION_DENIED";
        case 404: return "NOT_FOUND";
        case 409: return "ABORTED";
        case 429: return "RESOURCE_EXHAUSTED";
        case 499: return "CANCELLED";
        case 501: return "UNIMPLEMENTED";
        case 503: return "UNAVAILABLE";
        case 504: return "DEADLINE_EXCEEDED";
        default:  return status >= 500 ? "INTERNAL" : "FAILED_PRECONDITION";
    }
}

static void
s_default_message (const mock_error_t *err, char *message, size_t size)
{
    const char *model = err->model ? err->model : "gemini-mock";
    switch (err->status) {
        case 400:
            snprintf (message, size, "Request contains an invalid argument.");
            break;
        case 401:
            snprintf (message, size, "Request had invalid authentication credentials. "
                "Expected OAuth 2 access token, login cookie or other valid "
                "authentication credential.");
            break;
        case 403:
            snprintf (message, size, "The caller does not have permission");
            break;
        case 404:
            snprintf (message, size, "models/%.200s is not found for API version "
                "v1beta, or is not supported for generateContent. Call ListModels "
                "to see the list of available models and their supported methods.",
                model);
            break;
        case 413:
            snprintf (message, size, "Request payload size exceeds the limit: "
                "8388608 bytes.");
            break;
        case 429:
            snprintf (message, size, err->quota
                ? "You exceeded your current quota, please check your plan and "
                  "billing details."
                : "Resource has been exhausted (e.g. check quota).");
            break;
        case 500:
            snprintf (message, size, "An internal error has occurred. Please retry "
                "or report in https://developers.generativeai.google/guide/troubleshooting");
            break;
        case 503:
            snprintf (message, size, "The model is overloaded. Please try again later.");
            break;
        case 504:
            snprintf (message, size, "The request timed out. Please try again.");
            break;
        default:
            snprintf (message, size, "Mock provider injected HTTP %d.", err->status);
            break;
    }
}

static char *
s_error (const mock_error_t *err, const char **content_type)
{
    *content_type = "application/json; charset=UTF-8";
    char message [512];
    if (err->message [0]) {
        snprintf (message, sizeof (message), "%s", err->message);
    }
    else {
        s_default_message (err, message, sizeof (message));
    }
    const char *status = err->code [0] ? err->code : s_status_name (err->status);
    json_t *body = json_pack ("{s:{s:i, s:s, s:s}}", "error",
        "code", err->status, "message", message, "status", status);
    if (body && err->status == 429 && err->retry_after_s >= 0) {
        char delay [24];
        snprintf (delay, sizeof (delay), "%ds", err->retry_after_s);
        json_object_set_new (json_object_get (body, "error"), "details", json_pack (
            "[{s:s, s:s}]", "@type", "type.googleapis.com/google.rpc.RetryInfo",
            "retryDelay", delay));
    }
    return s_dump (body);
}

static void
s_headers (const mock_reply_info_t *info, mock_header_fn *add, void *ctx)
{
    char value [64];
    snprintf (value, sizeof (value), "gfet4t7; dur=%ld", info->processing_ms);
    add (ctx, "Server-Timing", value);
    add (ctx, "Server", "scaffolding on HTTPServer2");
    add (ctx, "Vary", "Origin, X-Origin, Referer");
    add (ctx, "X-Content-Type-Options", "nosniff");
    add (ctx, "X-Frame-Options", "SAMEORIGIN");
    add (ctx, "X-XSS-Protection", "0");
}

const mock_dialect_t mock_gemini_dialect = {
    .name = "gemini",
    .match = s_match,
    .parse = s_parse,
    .reply = s_reply,
    .event = s_event,
    .error = s_error,
    .headers = s_headers,
};
