/*  mock_dialect.h -- what a provider's wire format must supply to the mock.

    The HTTP plumbing (mock_provider.c) knows nothing about any provider's
    JSON: it routes a request to the first dialect whose match() accepts
    the URL, and from then on asks the dialect to parse the body, render the
    reply, each stream event, each error body and the provider's own
    response headers. Faults, delays, chunking and statistics stay in the
    plumbing, so they behave the same for every provider.

    Adding a provider (Anthropic, Gemini) is one file that defines a
    `const mock_dialect_t mock_<name>_dialect` plus one line in the
    s_dialects table in mock_provider.c.

    Every function may be called from many threads at once: a dialect
    holds no mutable state. Strings returned as `char *` are malloc'd and
    owned by the caller.
*/
#ifndef MOCK_DIALECT_H
#define MOCK_DIALECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mock_chat.h"

/*  The moments of a stream. A dialect turns each into zero or more SSE
    events (Anthropic, for one, sends several events at START). A regular
    stream goes START, DELTA per piece, FINISH, USAGE, DONE; the
    error_after fault ends it with ERROR instead, after START and some
    DELTAs (the order of the values is the regular order). */
typedef enum {
    MOCK_EVENT_START,       /* stream opens; nothing of the reply yet */
    MOCK_EVENT_DELTA,       /* one piece of the reply text */
    MOCK_EVENT_FINISH,      /* the reply is complete; carries finish_reason */
    MOCK_EVENT_USAGE,       /* token counts (dialect decides if and how) */
    MOCK_EVENT_DONE,        /* end-of-stream marker */
    MOCK_EVENT_ERROR        /* the provider's mid-stream error event (a server
                               error or overload); the stream ends after it */
} mock_event_t;

/*  An error to render. Empty strings mean "use the dialect's default for
    this status" (message) or JSON null (param, code). */
typedef struct {
    int status;             /* HTTP status, 100..599 */
    bool quota;             /* 429 for an exhausted quota, not a rate limit */
    int retry_after_s;      /* seconds the client should wait; -1 = unknown */
    const char *model;      /* model named in the request, or NULL */
    char message [512];     /* human-readable reason */
    char param [128];       /* offending request parameter */
    char code [64];         /* machine-readable code */
} mock_error_t;

/*  Facts about a response, for the dialect's headers. */
typedef struct {
    uint64_t serial;        /* request serial (same n as the chat id) */
    int status;             /* HTTP status being sent */
    int retry_after_s;      /* -1 = none */
    long processing_ms;     /* time spent before the headers */
    const mock_chat_t *chat;    /* the parsed request, or NULL if it did not parse */
} mock_reply_info_t;

/*  Adds one response header; ctx is the plumbing's. */
typedef void (mock_header_fn) (void *ctx, const char *name, const char *value);

/*  Looks up one request header by name (case-insensitive); returns the
    value (borrowed, valid during the call that was given the function),
    or NULL when the request did not send it. ctx is the plumbing's. */
typedef const char *(mock_request_header_fn) (void *ctx, const char *name);

typedef struct {
    const char *name;       /* "openai", ... for logs and the README */

    /*  True if this dialect serves the URL path (no query string). */
    bool (*match) (const char *url);

    /*  Optional (NULL: no checks). Check the request's headers the way the
        provider does before it reads the body (its API key header, a
        required version header). On a refusal fill err (status and message)
        and return -1; else return 0. `get` reads one request header. */
    int (*check) (mock_request_header_fn *get, void *ctx, mock_error_t *err);

    /*  Parse a request body into chat. On a request the real provider
        would refuse, fill err (status and the dialect's message, param,
        code) and return -1. Must never crash on any bytes. */
    int (*parse) (const char *url, const char *body, size_t len,
                  mock_chat_t *chat, mock_error_t *err);

    /*  The full non-streamed response body (JSON), or NULL if out of memory. */
    char *(*reply) (const mock_chat_t *chat);

    /*  The SSE text for one moment of the stream (for MOCK_EVENT_DELTA,
        piece `piece` of the reply; for MOCK_EVENT_ERROR, the error event
        the provider sends when it fails mid-stream). Sets *out to NULL when
        the dialect sends nothing at that moment. Returns 0, or -1 if out of
        memory. */
    int (*event) (const mock_chat_t *chat, mock_event_t event, size_t piece,
                  char **out);

    /*  The error body for err, and its content type (static string). */
    char *(*error) (const mock_error_t *err, const char **content_type);

    /*  Add the provider's own response headers (request id, rate limits). */
    void (*headers) (const mock_reply_info_t *info, mock_header_fn *add, void *ctx);
} mock_dialect_t;

#endif
