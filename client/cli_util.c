/*  cli_util.c -- the llmq CLI's pure helpers (see cli_util.h). */
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"

/* -------------------------------------------------------------- arguments */

int
cli_parse_duration_ms (const char *text, int64_t *ms)
{
    if (!text || !isdigit ((unsigned char) *text)) {
        return -1;
    }
    errno = 0;
    char *end;
    unsigned long long n = strtoull (text, &end, 10);
    if (errno) {
        return -1;
    }
    unsigned long long unit;
    if (*end == '\0' || strcmp (end, "s") == 0) {
        unit = 1000;
    }
    else
    if (strcmp (end, "ms") == 0) {
        unit = 1;
    }
    else
    if (strcmp (end, "m") == 0) {
        unit = 60 * 1000;
    }
    else
    if (strcmp (end, "h") == 0) {
        unit = 3600 * 1000;
    }
    else {
        return -1;
    }
    const unsigned long long year_ms = 366ull * 24 * 3600 * 1000;
    if (n > year_ms / unit) {
        return -1;
    }
    *ms = (int64_t) (n * unit);
    return 0;
}

int
cli_parse_id (const char *text, uint64_t *id)
{
    if (!text || !isdigit ((unsigned char) *text)) {
        return -1;
    }
    errno = 0;
    char *end;
    unsigned long long n = strtoull (text, &end, 10);
    if (errno || *end != '\0' || n == 0) {
        return -1;
    }
    *id = n;
    return 0;
}

int
cli_parse_uint (const char *text, unsigned long max, unsigned long *value)
{
    if (!text || !isdigit ((unsigned char) *text)) {
        return -1;
    }
    errno = 0;
    char *end;
    unsigned long n = strtoul (text, &end, 10);
    if (errno || *end != '\0' || n == 0 || n > max) {
        return -1;
    }
    *value = n;
    return 0;
}

/* ------------------------------------------------------------ batch input */

static int
s_why (char *why, size_t whylen, const char *fmt, ...) __attribute__((format (printf, 3, 4)));

static int
s_why (char *why, size_t whylen, const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    vsnprintf (why, whylen, fmt, args);
    va_end (args);
    return -1;
}

static const char *
s_type_name (const json_t *v)
{
    switch (json_typeof (v)) {
        case JSON_OBJECT:  return "an object";
        case JSON_ARRAY:   return "an array";
        case JSON_STRING:  return "a string";
        case JSON_INTEGER: return "an integer";
        case JSON_REAL:    return "a number";
        case JSON_TRUE:
        case JSON_FALSE:   return "a boolean";
        default:           return "null";
    }
}

int
cli_check_messages (const json_t *messages, char *why, size_t whylen)
{
    if (!messages) {
        return s_why (why, whylen, "body.messages is missing");
    }
    if (!json_is_array (messages)) {
        return s_why (why, whylen, "body.messages must be an array, not %s", s_type_name (messages));
    }
    if (json_array_size (messages) == 0) {
        return s_why (why, whylen, "body.messages is empty");
    }
    size_t i;
    const json_t *msg;
    json_array_foreach (messages, i, msg) {
        if (!json_is_object (msg)) {
            return s_why (why, whylen, "body.messages[%zu] must be an object, not %s", i, s_type_name (msg));
        }
        const json_t *role = json_object_get (msg, "role");
        if (!json_is_string (role) || json_string_length (role) == 0) {
            return s_why (why, whylen, "body.messages[%zu].role must be a non-empty string", i);
        }
    }
    return 0;
}

int
cli_batch_line_parse (const char *line, size_t len, const char *model_override,
                      cli_batch_line_t *out, char *why, size_t whylen)
{
    if (out) {
        memset (out, 0, sizeof (*out));
    }
    size_t i = 0;
    while (i < len && isspace ((unsigned char) line[i])) {
        i++;
    }
    if (i == len) {
        return 1;
    }
    json_error_t jerr;
    json_t *root = json_loadb (line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        return s_why (why, whylen, "not valid JSON: %s (column %d)", jerr.text, jerr.column);
    }
    int rc = -1;
    json_t *body_copy = NULL;
    if (!json_is_object (root)) {
        s_why (why, whylen, "expected a JSON object, got %s", s_type_name (root));
        goto done;
    }
    const json_t *custom_id = json_object_get (root, "custom_id");
    if (!custom_id) {
        s_why (why, whylen, "\"custom_id\" is missing");
        goto done;
    }
    if (!json_is_string (custom_id) || json_string_length (custom_id) == 0) {
        s_why (why, whylen, "\"custom_id\" must be a non-empty string");
        goto done;
    }
    const json_t *method = json_object_get (root, "method");
    if (!method) {
        s_why (why, whylen, "\"method\" is missing (expected \"POST\")");
        goto done;
    }
    if (!json_is_string (method) || strcmp (json_string_value (method), "POST") != 0) {
        s_why (why, whylen, "\"method\" must be \"POST\"");
        goto done;
    }
    const json_t *url = json_object_get (root, "url");
    if (!url) {
        s_why (why, whylen, "\"url\" is missing (expected \"/v1/chat/completions\")");
        goto done;
    }
    if (!json_is_string (url) || strcmp (json_string_value (url), "/v1/chat/completions") != 0) {
        s_why (why, whylen, "\"url\" \"%s\" is not supported: only \"/v1/chat/completions\"",
               json_is_string (url) ? json_string_value (url) : "(not a string)");
        goto done;
    }
    const json_t *body = json_object_get (root, "body");
    if (!body) {
        s_why (why, whylen, "\"body\" is missing");
        goto done;
    }
    if (!json_is_object (body)) {
        s_why (why, whylen, "\"body\" must be an object, not %s", s_type_name (body));
        goto done;
    }
    const json_t *model = json_object_get (body, "model");
    if (model && (!json_is_string (model) || json_string_length (model) == 0)) {
        s_why (why, whylen, "body.model must be a non-empty string");
        goto done;
    }
    if (!model && !(model_override && *model_override)) {
        s_why (why, whylen, "body.model is missing (or pass --model)");
        goto done;
    }
    if (cli_check_messages (json_object_get (body, "messages"), why, whylen)) {
        goto done;
    }
    const json_t *stream = json_object_get (body, "stream");
    if (stream && json_is_true (stream)) {
        s_why (why, whylen, "body.stream must not be true in a batch");
        goto done;
    }
    rc = 0;
    if (out) {
        body_copy = json_copy ((json_t *) body);
        if (body_copy) {
            json_object_del (body_copy, "model");
        }
        out->custom_id = strdup (json_string_value (custom_id));
        out->model = strdup (model_override && *model_override ? model_override : json_string_value (model));
        out->body = body_copy ? json_dumps (body_copy, JSON_COMPACT) : NULL;
        if (!out->custom_id || !out->model || !out->body) {
            cli_batch_line_clear (out);
            rc = s_why (why, whylen, "out of memory");
        }
    }
done:
    json_decref (body_copy);
    json_decref (root);
    return rc;
}

void
cli_batch_line_clear (cli_batch_line_t *line)
{
    if (line) {
        free (line->custom_id);
        free (line->model);
        free (line->body);
        memset (line, 0, sizeof (*line));
    }
}

/* ------------------------------------------------------------- custom ids */

/*  Open addressing on 64-bit FNV-1a hashes. Two different ids with the same
    hash would be reported as a duplicate: at a million ids the odds are
    about one in 10^7. Hash 0 marks an empty slot (a real 0 becomes 1). */
struct cli_idset {
    uint64_t *hashes;
    long     *lines;
    size_t    slots;            /* power of two */
    size_t    used;
};

cli_idset_t *
cli_idset_new (void)
{
    cli_idset_t *self = calloc (1, sizeof (cli_idset_t));
    if (!self) {
        return NULL;
    }
    self->slots = 1024;
    self->hashes = calloc (self->slots, sizeof (uint64_t));
    self->lines = calloc (self->slots, sizeof (long));
    if (!self->hashes || !self->lines) {
        cli_idset_destroy (&self);
    }
    return self;
}

void
cli_idset_destroy (cli_idset_t **self_p)
{
    if (self_p && *self_p) {
        free ((*self_p)->hashes);
        free ((*self_p)->lines);
        free (*self_p);
        *self_p = NULL;
    }
}

static uint64_t
s_hash (const char *key)
{
    uint64_t h = 14695981039346656037ull;
    for (const unsigned char *p = (const unsigned char *) key; *p; p++) {
        h ^= *p;
        h *= 1099511628211ull;
    }
    return h ? h : 1;
}

/*  Insert without growing; returns the slot. */
static size_t
s_slot (const cli_idset_t *self, uint64_t hash)
{
    size_t mask = self->slots - 1;
    size_t i = (size_t) (hash ^ (hash >> 29)) & mask;
    while (self->hashes[i] && self->hashes[i] != hash) {
        i = (i + 1) & mask;
    }
    return i;
}

static int
s_grow (cli_idset_t *self)
{
    cli_idset_t bigger = { NULL, NULL, self->slots * 2, self->used };
    bigger.hashes = calloc (bigger.slots, sizeof (uint64_t));
    bigger.lines = calloc (bigger.slots, sizeof (long));
    if (!bigger.hashes || !bigger.lines) {
        free (bigger.hashes);
        free (bigger.lines);
        return -1;
    }
    for (size_t i = 0; i < self->slots; i++) {
        if (self->hashes[i]) {
            size_t j = s_slot (&bigger, self->hashes[i]);
            bigger.hashes[j] = self->hashes[i];
            bigger.lines[j] = self->lines[i];
        }
    }
    free (self->hashes);
    free (self->lines);
    *self = bigger;
    return 0;
}

long
cli_idset_add (cli_idset_t *self, const char *key, long line)
{
    if ((self->used + 1) * 2 > self->slots && s_grow (self) != 0) {
        return -1;
    }
    uint64_t hash = s_hash (key);
    size_t i = s_slot (self, hash);
    if (self->hashes[i]) {
        return self->lines[i];
    }
    self->hashes[i] = hash;
    self->lines[i] = line;
    self->used++;
    return 0;
}

/* ---------------------------------------------------------------- results */

/*  Length of the valid UTF-8 sequence at `p` (1-4), or 0 if invalid. */
static size_t
s_utf8_len (const unsigned char *p)
{
    if (p[0] < 0x80) {
        return 1;
    }
    size_t n;
    uint32_t cp;
    if ((p[0] & 0xE0) == 0xC0) {
        n = 2;
        cp = p[0] & 0x1F;
    }
    else
    if ((p[0] & 0xF0) == 0xE0) {
        n = 3;
        cp = p[0] & 0x0F;
    }
    else
    if ((p[0] & 0xF8) == 0xF0) {
        n = 4;
        cp = p[0] & 0x07;
    }
    else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) {
            return 0;
        }
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    static const uint32_t min[] = { 0, 0, 0x80, 0x800, 0x10000 };
    if (cp < min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        return 0;
    }
    return n;
}

/*  A JSON string of `s`, or null for NULL. Text from a provider may hold
    invalid UTF-8 (a stream cut inside a character): such bytes become
    U+FFFD rather than failing the whole line. */
static json_t *
s_str_or_null (const char *s)
{
    if (!s) {
        return json_null ();
    }
    json_t *str = json_string (s);
    if (str) {
        return str;
    }
    size_t len = strlen (s);
    char *clean = malloc (len * 3 + 1);
    if (!clean) {
        return NULL;
    }
    size_t o = 0;
    const unsigned char *p = (const unsigned char *) s;
    while (*p) {
        size_t n = s_utf8_len (p);
        if (n == 0) {
            memcpy (clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
            p++;
        }
        else {
            memcpy (clean + o, p, n);
            o += n;
            p += n;
        }
    }
    clean[o] = '\0';
    str = json_string (clean);
    free (clean);
    return str;
}

/*  The result's tool calls as a JSON array, or NULL when it has none (or
    the text is not an array: the broker stores what a worker sent). */
static json_t *
s_tool_calls (const llmq_result *r)
{
    if (!r->tool_calls || !*r->tool_calls) {
        return NULL;
    }
    json_t *calls = json_loads (r->tool_calls, 0, NULL);
    if (!json_is_array (calls) || json_array_size (calls) == 0) {
        json_decref (calls);
        return NULL;
    }
    return calls;
}

json_t *
cli_result_json (const llmq_result *r)
{
    json_t *obj = json_pack ("{s:I, s:s, s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:i, s:i,"
                      " s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b}",
        "id", (json_int_t) r->id,
        "state", llmq_state_name (r->state),
        "model", s_str_or_null (r->model),
        "priority", llmq_priority_name (r->priority),
        "batch_id", s_str_or_null (r->batch_id),
        "custom_id", s_str_or_null (r->custom_id),
        "content", s_str_or_null (r->content),
        "finish_reason", s_str_or_null (r->finish_reason),
        "deployment", s_str_or_null (r->deployment),
        "request_id", s_str_or_null (r->request_id),
        "error", s_str_or_null (r->error),
        "error_class", r->error_class,
        "http_status", r->http_status,
        "attempts", (json_int_t) r->attempts,
        "prompt_tokens", (json_int_t) r->prompt_tokens,
        "completion_tokens", (json_int_t) r->completion_tokens,
        "enqueued_us", (json_int_t) r->enqueued_us,
        "started_us", (json_int_t) r->started_us,
        "finished_us", (json_int_t) r->finished_us,
        "latency_us", (json_int_t) r->latency_us,
        "cached", r->cached != 0);
    if (obj) {
        json_t *calls = s_tool_calls (r);
        if (json_object_set_new (obj, "tool_calls", calls ? calls : json_null ()) != 0) {
            json_decref (obj);
            return NULL;
        }
    }
    return obj;
}

/*  The "error.code" of a job that did not end done. */
static const char *
s_error_code (int state)
{
    switch (state) {
        case LLMQ_STATE_FAILED:    return "failed";
        case LLMQ_STATE_DEAD:      return "dead_lettered";
        case LLMQ_STATE_CANCELLED: return "cancelled";
        case LLMQ_STATE_EXPIRED:   return "expired";
        default:                   return llmq_state_name (state);
    }
}

json_t *
cli_batch_output_line (const llmq_result *r)
{
    char line_id[40];
    snprintf (line_id, sizeof (line_id), "batch_req_%llu", (unsigned long long) r->id);
    json_t *response = NULL;
    json_t *error = NULL;
    if (r->state == LLMQ_STATE_DONE) {
        char completion_id[40];
        snprintf (completion_id, sizeof (completion_id), "chatcmpl-%llu", (unsigned long long) r->id);
        /* With tool calls, OpenAI's message has "tool_calls" and a null
           content unless the model also wrote text. */
        json_t *calls = s_tool_calls (r);
        json_t *content = calls && (!r->content || !*r->content)
                        ? json_null () : s_str_or_null (r->content ? r->content : "");
        const char *finish = r->finish_reason ? r->finish_reason : calls ? "tool_calls" : "stop";
        json_t *body = json_pack ("{s:s, s:s, s:I, s:o, s:[{s:i, s:{s:s, s:o}, s:o, s:s}],"
                                  " s:{s:I, s:I, s:I}}",
            "id", completion_id,
            "object", "chat.completion",
            "created", (json_int_t) (r->finished_us / 1000000u),
            "model", s_str_or_null (r->model),
            "choices",
                "index", 0,
                "message", "role", "assistant", "content", content,
                "logprobs", json_null (),
                "finish_reason", finish,
            "usage",
                "prompt_tokens", (json_int_t) r->prompt_tokens,
                "completion_tokens", (json_int_t) r->completion_tokens,
                "total_tokens", (json_int_t) r->prompt_tokens + (json_int_t) r->completion_tokens);
        if (calls && !body) {
            json_decref (calls);
        }
        else
        if (calls) {
            json_t *message = json_object_get (json_array_get (json_object_get (body, "choices"), 0),
                                               "message");
            if (!message || json_object_set_new (message, "tool_calls", calls) != 0) {
                json_decref (body);
                body = NULL;
            }
        }
        response = json_pack ("{s:i, s:o, s:o}",
            "status_code", r->http_status ? r->http_status : 200,
            "request_id", s_str_or_null (r->request_id),
            "body", body);
        error = json_null ();
    }
    else {
        const char *message = r->error && *r->error ? r->error : llmq_state_name (r->state);
        if (r->http_status) {
            response = json_pack ("{s:i, s:o, s:{s:{s:s}}}",
                "status_code", r->http_status,
                "request_id", s_str_or_null (r->request_id),
                "body", "error", "message", message);
        }
        else {
            response = json_null ();
        }
        error = json_pack ("{s:s, s:s}", "code", s_error_code (r->state), "message", message);
    }
    if (!response || !error) {
        json_decref (response);
        json_decref (error);
        return NULL;
    }
    return json_pack ("{s:s, s:o, s:o, s:o}",
        "id", line_id,
        "custom_id", s_str_or_null (r->custom_id),
        "response", response,
        "error", error);
}

int
cli_counts_parse (const char *text, cli_counts_t *counts)
{
    memset (counts, 0, sizeof (*counts));
    json_t *root = text ? json_loads (text, 0, NULL) : NULL;
    if (!json_is_object (root)) {
        json_decref (root);
        return -1;
    }
    struct { const char *key; uint64_t *field; } fields[] = {
        { "total", &counts->total }, { "done", &counts->done }, { "failed", &counts->failed },
        { "cancelled", &counts->cancelled }, { "expired", &counts->expired },
        { "dead", &counts->dead }, { "pending", &counts->pending },
    };
    for (size_t i = 0; i < sizeof (fields) / sizeof (fields[0]); i++) {
        json_t *v = json_object_get (root, fields[i].key);
        if (json_is_integer (v) && json_integer_value (v) > 0) {
            *fields[i].field = (uint64_t) json_integer_value (v);
        }
    }
    json_decref (root);
    return 0;
}

int
cli_exit_code (int err)
{
    switch (err) {
        case LLMQ_OK:
            return CLI_EXIT_OK;
        case LLMQ_ERR_INVALID:
        case LLMQ_ERR_TOO_LARGE:
        case LLMQ_ERR_UNKNOWN_MODEL:
            return CLI_EXIT_USAGE;
        case LLMQ_ERR_TIMEOUT:
        case LLMQ_ERR_CONNECT:
        case LLMQ_ERR_SHUTTING_DOWN:
            return CLI_EXIT_UNREACHABLE;
        default:
            return CLI_EXIT_FAILED;
    }
}
