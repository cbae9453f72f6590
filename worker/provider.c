/*  provider.c -- the adapter registry and the helpers adapters share:
    text buffers, replies, error classes, Retry-After. See provider.h.
*/
#include "provider.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

/*  The registry: one X(name) per adapter, defined in provider_NAME.c as
    `const llmq_provider_t llmq_provider_NAME`. */
#define LLMQ_PROVIDERS(X) \
    X(openai)             \
    X(azure)              \
    X(anthropic)          \
    X(gemini)             \
    X(echo)

#define S_DECLARE(name) extern const llmq_provider_t llmq_provider_##name;
#define S_ENTRY(name)   &llmq_provider_##name,
LLMQ_PROVIDERS (S_DECLARE)
static const llmq_provider_t *const s_providers[] = { LLMQ_PROVIDERS (S_ENTRY) NULL };

const llmq_provider_t *
llmq_provider_find (const char *name)
{
    for (size_t i = 0; name && s_providers[i]; i++) {
        if (strcmp (s_providers[i]->name, name) == 0) {
            return s_providers[i];
        }
    }
    return NULL;
}

/*  --- text ------------------------------------------------------------- */

int
llmq_text_reserve (llmq_text_t *t, size_t n)
{
    if (n + 1 <= t->cap) {
        return 0;
    }
    size_t cap = t->cap ? t->cap : 256;
    while (cap < n + 1) {
        cap *= 2;
    }
    char *p = realloc (t->p, cap);
    if (!p) {
        return -1;
    }
    t->p = p;
    t->cap = cap;
    return 0;
}

int
llmq_text_add (llmq_text_t *t, const char *s, size_t n)
{
    if (llmq_text_reserve (t, t->len + n)) {
        return -1;
    }
    if (n) {
        memcpy (t->p + t->len, s, n);
    }
    t->len += n;
    t->p[t->len] = '\0';
    return 0;
}

void
llmq_text_free (llmq_text_t *t)
{
    free (t->p);
    t->p = NULL;
    t->len = t->cap = 0;
}

/*  --- replies ---------------------------------------------------------- */

void
llmq_reply_reset (llmq_reply_t *r)
{
    r->content.len = 0;
    if (r->content.p) {
        r->content.p[0] = '\0';
    }
    r->tool_calls.len = 0;
    if (r->tool_calls.p) {
        r->tool_calls.p[0] = '\0';
    }
    r->ntools = 0;
    r->finish_reason[0] = '\0';
    r->request_id[0] = '\0';
    r->prompt_tokens = r->completion_tokens = r->cached_tokens = 0;
    r->finished = false;
    r->error_class = LLMQ_EC_NONE;
    r->error[0] = '\0';
}

void
llmq_reply_free (llmq_reply_t *r)
{
    llmq_text_free (&r->content);
    llmq_text_free (&r->tool_calls);
    for (size_t i = 0; i < r->tools_cap; i++) {
        llmq_text_free (&r->tools[i].id);
        llmq_text_free (&r->tools[i].name);
        llmq_text_free (&r->tools[i].args);
    }
    free (r->tools);
    r->tools = NULL;
    r->ntools = r->tools_cap = 0;
}

/*  Mask anything that looks like an OpenAI-style secret ("sk-...") in
    place: providers echo part of a wrong key in their 401 messages. */
static void
s_mask_keys (char *s)
{
    for (char *p = s; (p = strstr (p, "sk-")) != NULL; ) {
        bool word_start = p == s || !isalnum ((unsigned char) p[-1]);
        char *q = p + 3;
        if (word_start) {
            char *e = q;
            while (*e && (isalnum ((unsigned char) *e) || *e == '-' || *e == '_'
                          || *e == '*')) {
                e++;
            }
            size_t n = (size_t) (e - q);
            if (n >= 3) {
                memcpy (q, "***", 3);
                memmove (q + 3, e, strlen (e) + 1);
                q += 3;
            }
            else {
                memset (q, '*', n);
                q += n;
            }
        }
        p = q;
    }
}

int
llmq_reply_fail (llmq_reply_t *r, int error_class, const char *fmt, ...)
{
    r->error_class = error_class;
    va_list ap;
    va_start (ap, fmt);
    vsnprintf (r->error, sizeof r->error, fmt, ap);
    va_end (ap);
    s_mask_keys (r->error);
    return -1;
}

void
llmq_reply_set_finish (llmq_reply_t *r, const char *finish_reason)
{
    snprintf (r->finish_reason, sizeof r->finish_reason, "%s", finish_reason ? finish_reason : "");
    r->finished = true;
}

void
llmq_reply_set_request_id (llmq_reply_t *r, const char *request_id)
{
    snprintf (r->request_id, sizeof r->request_id, "%s", request_id ? request_id : "");
}

/*  --- tool calls -------------------------------------------------------- */

/*  Empty a text kept for reuse. */
static void
s_text_clear (llmq_text_t *t)
{
    t->len = 0;
    if (t->p) {
        t->p[0] = '\0';
    }
}

int
llmq_reply_tool (llmq_reply_t *r, long key, const char *id, const char *name,
                 const char *args, size_t args_len)
{
    llmq_tool_call_t *call = NULL;
    for (size_t i = 0; i < r->ntools && !call; i++) {
        if (r->tools[i].key == key) {
            call = &r->tools[i];
        }
    }
    if (!call) {
        if (r->ntools == r->tools_cap) {
            size_t cap = r->tools_cap ? r->tools_cap * 2 : 4;
            llmq_tool_call_t *v = realloc (r->tools, cap * sizeof *v);
            if (!v) {
                return llmq_reply_fail (r, LLMQ_EC_INTERNAL, "out of memory");
            }
            memset (v + r->tools_cap, 0, (cap - r->tools_cap) * sizeof *v);
            r->tools = v;
            r->tools_cap = cap;
        }
        call = &r->tools[r->ntools++];
        call->key = key;
        s_text_clear (&call->id);
        s_text_clear (&call->name);
        s_text_clear (&call->args);
    }
    if ((id && *id && call->id.len == 0 && llmq_text_add (&call->id, id, strlen (id)))
        || (name && *name && call->name.len == 0 && llmq_text_add (&call->name, name, strlen (name)))
        || (args && args_len && llmq_text_add (&call->args, args, args_len))) {
        return llmq_reply_fail (r, LLMQ_EC_INTERNAL, "out of memory");
    }
    return 0;
}

int
llmq_reply_tools_end (llmq_reply_t *r)
{
    s_text_clear (&r->tool_calls);
    if (r->ntools == 0) {
        return 0;
    }
    json_t *calls = json_array ();
    if (!calls) {
        return llmq_reply_fail (r, LLMQ_EC_INTERNAL, "out of memory");
    }
    for (size_t i = 0; i < r->ntools; i++) {
        const llmq_tool_call_t *c = &r->tools[i];
        if (c->name.len == 0) {
            json_decref (calls);
            return llmq_reply_fail (r, LLMQ_EC_BAD_RESPONSE, "tool call %zu has no function name", i);
        }
        char made[32];
        snprintf (made, sizeof made, "call_%zu", i);
        const char *id = c->id.len ? c->id.p : made;
        size_t id_len = c->id.len ? c->id.len : strlen (made);
        /*  s% validates UTF-8: a name or arguments that are not make the
            pack fail (as would running out of memory, far less likely). */
        json_t *call = json_pack ("{s:s%,s:s,s:{s:s%,s:s%}}",
                                  "id", id, id_len, "type", "function",
                                  "function", "name", c->name.p, c->name.len,
                                  "arguments", c->args.len ? c->args.p : "{}",
                                  c->args.len ? c->args.len : (size_t) 2);
        if (!call || json_array_append_new (calls, call)) {
            json_decref (calls);
            return llmq_reply_fail (r, LLMQ_EC_BAD_RESPONSE, "tool call %zu is not valid UTF-8", i);
        }
    }
    char *text = json_dumps (calls, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref (calls);
    if (!text || llmq_text_add (&r->tool_calls, text, strlen (text))) {
        free (text);
        return llmq_reply_fail (r, LLMQ_EC_INTERNAL, "out of memory");
    }
    free (text);
    return 0;
}

void
llmq_endpoint_free (llmq_endpoint_t *ep)
{
    free (ep->url);
    ep->url = NULL;
    free (ep->stream_url);
    ep->stream_url = NULL;
    curl_slist_free_all (ep->headers);
    ep->headers = NULL;
}

/*  --- classification --------------------------------------------------- */

int
llmq_http_error_class (long status)
{
    switch (status) {
        case 401: case 403: return LLMQ_EC_AUTH;
        case 408:           return LLMQ_EC_TIMEOUT;
        case 409:           return LLMQ_EC_SERVER;
        case 429: case 529: return LLMQ_EC_RATE_LIMITED;
        default: break;
    }
    if (status >= 400 && status < 500) {
        return LLMQ_EC_INVALID_REQUEST;
    }
    if (status >= 500 && status < 600) {
        return LLMQ_EC_SERVER;
    }
    return LLMQ_EC_BAD_RESPONSE;
}

int
llmq_transport_error_class (int curlcode, bool streamed)
{
    switch ((CURLcode) curlcode) {
        case CURLE_OK:
            return LLMQ_EC_NONE;
        case CURLE_OPERATION_TIMEDOUT:
            return streamed ? LLMQ_EC_STREAM_BROKEN : LLMQ_EC_TIMEOUT;
        case CURLE_URL_MALFORMAT:
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_NOT_BUILT_IN:
        case CURLE_BAD_FUNCTION_ARGUMENT:
        case CURLE_UNKNOWN_OPTION:
        case CURLE_OUT_OF_MEMORY:
        case CURLE_WRITE_ERROR:         /* our own write callback refused */
        case CURLE_ABORTED_BY_CALLBACK:
            return LLMQ_EC_INTERNAL;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_ISSUER_ERROR:
        case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        case CURLE_SSL_CRL_BADFILE:
            /*  A certificate we do not trust is a configuration problem
                (ca_file, ca_path), not a passing one: not retried. */
            return LLMQ_EC_INTERNAL;
        case CURLE_TOO_MANY_REDIRECTS:
        case CURLE_BAD_CONTENT_ENCODING:
        case CURLE_WEIRD_SERVER_REPLY:
            return streamed ? LLMQ_EC_STREAM_BROKEN : LLMQ_EC_BAD_RESPONSE;
        default:
            /*  Resolve, connect, TLS, send, receive, reset, partial body. */
            return streamed ? LLMQ_EC_STREAM_BROKEN : LLMQ_EC_CONNECTION;
    }
}

#define S_RETRY_CAP_MS (24ull * 3600 * 1000)

/*  A non-negative decimal number filling the whole string (spaces around
    allowed), scaled to ms; -1 if not one. */
static double
s_number (const char *s, double scale)
{
    while (*s == ' ' || *s == '\t') {
        s++;
    }
    if (!isdigit ((unsigned char) *s) && *s != '.') {
        return -1;
    }
    char *end;
    double v = strtod (s, &end);
    while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') {
        end++;
    }
    if (end == s || *end != '\0' || !isfinite (v) || v < 0) {
        return -1;
    }
    return v * scale;
}

uint64_t
llmq_retry_after_ms (const char *retry_after, const char *retry_ms, time_t now)
{
    double ms = -1;
    if (retry_ms) {
        ms = s_number (retry_ms, 1);
    }
    if (ms < 0 && retry_after) {
        ms = s_number (retry_after, 1000);
        if (ms < 0) {
            /*  HTTP date (RFC 9110 IMF-fixdate): "Sun, 06 Nov 1994 08:49:37 GMT". */
            struct tm tm;
            memset (&tm, 0, sizeof tm);
            const char *s = retry_after;
            while (*s == ' ') {
                s++;
            }
            const char *end = strptime (s, "%a, %d %b %Y %H:%M:%S", &tm);
            if (end) {
                while (*end == ' ') {
                    end++;
                }
                if (strncasecmp (end, "GMT", 3) == 0) {
                    time_t at = timegm (&tm);
                    ms = at > now ? (double) (at - now) * 1000.0 : 0;
                }
            }
        }
    }
    if (ms <= 0) {
        return 0;
    }
    if (ms >= (double) S_RETRY_CAP_MS) {
        return S_RETRY_CAP_MS;
    }
    return (uint64_t) ceil (ms);
}

/*  --- rate-limit headers ------------------------------------------------ */

#define S_NS_PER_MS 1000000ull
#define S_NS_PER_S  1000000000ull
#define S_CAP_NS    (S_RETRY_CAP_MS * S_NS_PER_MS)

/*  Units of a Go duration, largest first: a duration names them in this
    order, each at most once. Go writes µs as U+00B5 and accepts U+03BC. */
static const struct {
    const char *name;
    uint64_t    ns;
} s_units[] = {
    { "h", 3600 * S_NS_PER_S }, { "m", 60 * S_NS_PER_S }, { "s", S_NS_PER_S },
    { "ms", S_NS_PER_MS }, { "us", 1000 }, { "\xc2\xb5s", 1000 }, { "\xce\xbcs", 1000 },
    { "ns", 1 }
};
#define S_NUNITS (sizeof s_units / sizeof s_units[0])

/*  Rank of a unit in the order (the three spellings of µs share one). */
static size_t
s_unit_rank (size_t u)
{
    return u <= 4 ? u : u <= 6 ? 4 : 5;
}

int
llmq_ratelimit_duration_ms (const char *s, uint64_t *ms)
{
    if (!s || !*s) {
        return -1;
    }
    if (strcmp (s, "0") == 0) {
        *ms = 0;                        /* Go's one unitless duration */
        return 0;
    }
    uint64_t total = 0;                 /* ns, saturating at S_CAP_NS */
    size_t next_rank = 0;               /* smallest rank the next unit may have */
    const char *p = s;
    while (*p) {
        /*  <digits>[.<digits>] */
        uint64_t whole = 0;
        bool big = false;               /* whole part past any cap */
        const char *start = p;
        while (isdigit ((unsigned char) *p)) {
            if (whole > S_CAP_NS) {
                big = true;
            }
            else {
                whole = whole * 10 + (uint64_t) (*p - '0');
            }
            p++;
        }
        if (p == start) {
            return -1;
        }
        uint64_t frac = 0;              /* the first nine digits, in 1e-9 */
        bool frac_more = false;         /* a non-zero digit past the ninth */
        if (*p == '.') {
            p++;
            start = p;
            uint64_t scale = S_NS_PER_S / 10;
            while (isdigit ((unsigned char) *p)) {
                if (scale) {
                    frac += (uint64_t) (*p - '0') * scale;
                    scale /= 10;
                }
                else
                if (*p != '0') {
                    frac_more = true;
                }
                p++;
            }
            if (p == start) {
                return -1;
            }
        }
        /*  <unit>: the letters up to the next number */
        start = p;
        while (*p && !isdigit ((unsigned char) *p) && *p != '.') {
            p++;
        }
        size_t len = (size_t) (p - start), u = 0;
        while (u < S_NUNITS && (strlen (s_units[u].name) != len
                                || memcmp (s_units[u].name, start, len) != 0)) {
            u++;
        }
        if (u == S_NUNITS || s_unit_rank (u) < next_rank) {
            return -1;                  /* no unit, unknown, repeated or out of order */
        }
        next_rank = s_unit_rank (u) + 1;
        uint64_t unit = s_units[u].ns;
        if (big || whole > S_CAP_NS / unit) {
            total = S_CAP_NS;
            continue;
        }
        /*  frac * unit / 1e9 without overflow: units of a second or more
            are whole seconds, smaller ones are under 1e6 ns. */
        uint64_t part = whole * unit;
        if (unit >= S_NS_PER_S) {
            part += frac * (unit / S_NS_PER_S);
        }
        else {
            part += frac * unit / S_NS_PER_S + ((frac * unit) % S_NS_PER_S != 0);
        }
        part += frac_more;              /* round up what was cut */
        total = total + part > S_CAP_NS ? S_CAP_NS : total + part;
    }
    *ms = (total + S_NS_PER_MS - 1) / S_NS_PER_MS;
    return 0;
}

/*  Exactly `n` decimal digits at *p: their value, *p moved past them; -1
    if fewer. */
static int
s_fixed_digits (const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit ((unsigned char) (*p)[i])) {
            return -1;
        }
        v = v * 10 + ((*p)[i] - '0');
    }
    *p += n;
    return v;
}

/*  Reads `n` digits then, if `sep` is not NUL, that separator. */
static int
s_field (const char **p, int n, char sep)
{
    int v = s_fixed_digits (p, n);
    if (v < 0 || (sep && **p != sep)) {
        return -1;
    }
    if (sep) {
        (*p)++;
    }
    return v;
}

int
llmq_rfc3339_ms (const char *s, int64_t now_ms, uint64_t *ms)
{
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (!s) {
        return -1;
    }
    const char *p = s;
    int year = s_field (&p, 4, '-');
    int mon = s_field (&p, 2, '-');
    int day = s_field (&p, 2, '\0');
    if (year < 0 || mon < 1 || mon > 12 || day < 1 || (*p != 'T' && *p != 't')) {
        return -1;
    }
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > mdays[mon - 1] + (mon == 2 && leap)) {
        return -1;
    }
    p++;
    int hour = s_field (&p, 2, ':');
    int min = s_field (&p, 2, ':');
    int sec = s_field (&p, 2, '\0');
    if (hour < 0 || hour > 23 || min < 0 || min > 59 || sec < 0 || sec > 60) {
        return -1;                      /* 60: a leap second */
    }
    int64_t frac_ms = 0;
    if (*p == '.') {
        p++;
        const char *start = p;
        int64_t scale = 100;
        bool more = false;
        while (isdigit ((unsigned char) *p)) {
            if (scale) {
                frac_ms += (*p - '0') * scale;
                scale /= 10;
            }
            else
            if (*p != '0') {
                more = true;
            }
            p++;
        }
        if (p == start) {
            return -1;
        }
        frac_ms += more;                /* round the instant up */
    }
    int64_t offset_s = 0;               /* local time minus UTC */
    if (*p == 'Z' || *p == 'z') {
        p++;
    }
    else
    if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1;
        p++;
        int oh = s_field (&p, 2, ':');
        int om = s_field (&p, 2, '\0');
        if (oh < 0 || oh > 23 || om < 0 || om > 59) {
            return -1;
        }
        offset_s = sign * (oh * 3600 + om * 60);
    }
    else {
        return -1;
    }
    if (*p) {
        return -1;
    }
    struct tm tm;
    memset (&tm, 0, sizeof tm);
    tm.tm_year = year - 1900;
    tm.tm_mon = mon - 1;
    tm.tm_mday = day;
    tm.tm_hour = hour;
    tm.tm_min = min;
    tm.tm_sec = sec;
    time_t at = timegm (&tm);
    if (at == (time_t) -1 && !(year == 1969 && mon == 12 && day == 31)) {
        return -1;
    }
    int64_t at_ms = ((int64_t) at - offset_s) * 1000 + frac_ms;
    if (at_ms <= now_ms) {
        *ms = 0;
    }
    else {
        uint64_t d = (uint64_t) (at_ms - now_ms);
        *ms = d > S_RETRY_CAP_MS ? S_RETRY_CAP_MS : d;
    }
    return 0;
}

/*  The quotas of llmq_ratelimit_t's arrays, and what a header gives. */
enum { S_Q_REQUESTS, S_Q_TOKENS, S_Q_INPUT, S_Q_OUTPUT };
enum { S_V_COUNT, S_V_DURATION, S_V_TIME };

static const struct {
    const char *name;
    uint8_t     quota;
    uint8_t     kind;
} s_rl_headers[] = {
    /*  OpenAI (and Azure OpenAI) */
    { "x-ratelimit-remaining-requests", S_Q_REQUESTS, S_V_COUNT },
    { "x-ratelimit-remaining-tokens", S_Q_TOKENS, S_V_COUNT },
    { "x-ratelimit-reset-requests", S_Q_REQUESTS, S_V_DURATION },
    { "x-ratelimit-reset-tokens", S_Q_TOKENS, S_V_DURATION },
    /*  Anthropic */
    { "anthropic-ratelimit-requests-remaining", S_Q_REQUESTS, S_V_COUNT },
    { "anthropic-ratelimit-requests-reset", S_Q_REQUESTS, S_V_TIME },
    { "anthropic-ratelimit-tokens-remaining", S_Q_TOKENS, S_V_COUNT },
    { "anthropic-ratelimit-tokens-reset", S_Q_TOKENS, S_V_TIME },
    { "anthropic-ratelimit-input-tokens-remaining", S_Q_INPUT, S_V_COUNT },
    { "anthropic-ratelimit-input-tokens-reset", S_Q_INPUT, S_V_TIME },
    { "anthropic-ratelimit-output-tokens-remaining", S_Q_OUTPUT, S_V_COUNT },
    { "anthropic-ratelimit-output-tokens-reset", S_Q_OUTPUT, S_V_TIME },
};

void
llmq_ratelimit_init (llmq_ratelimit_t *rl)
{
    memset (rl, 0, sizeof *rl);
    rl->remaining_requests = rl->remaining_tokens = -1;
    for (size_t q = 0; q < 4; q++) {
        rl->quota_remaining[q] = -1;
    }
}

/*  The public fields from the per-quota ones. The tokens quota is
    Anthropic's (and OpenAI's only) tokens header; without it, the input or
    output tokens quota with fewer left (the later reset on a tie). */
static void
s_rl_derive (llmq_ratelimit_t *rl)
{
    const int64_t *left = rl->quota_remaining;
    const uint64_t *reset = rl->quota_reset_ms;
    int q = S_Q_TOKENS;
    if (left[S_Q_TOKENS] < 0 && (left[S_Q_INPUT] >= 0 || left[S_Q_OUTPUT] >= 0)) {
        if (left[S_Q_OUTPUT] < 0 || (left[S_Q_INPUT] >= 0 && left[S_Q_INPUT] < left[S_Q_OUTPUT])) {
            q = S_Q_INPUT;
        }
        else
        if (left[S_Q_INPUT] < 0 || left[S_Q_OUTPUT] < left[S_Q_INPUT]) {
            q = S_Q_OUTPUT;
        }
        else {
            q = reset[S_Q_INPUT] >= reset[S_Q_OUTPUT] ? S_Q_INPUT : S_Q_OUTPUT;
        }
    }
    rl->remaining_requests = left[S_Q_REQUESTS];
    rl->reset_requests_ms = reset[S_Q_REQUESTS];
    rl->remaining_tokens = left[q];
    rl->reset_tokens_ms = reset[q];
}

int
llmq_ratelimit_header (llmq_ratelimit_t *rl, const char *name, size_t nlen,
                       const char *value, size_t vlen, int64_t now_ms)
{
    /*  Most headers are none of these: one compare sends them away. */
    if (!(nlen > 12 && strncasecmp (name, "x-ratelimit-", 12) == 0)
        && !(nlen > 20 && strncasecmp (name, "anthropic-ratelimit-", 20) == 0)) {
        return 0;
    }
    size_t h = 0;
    while (h < sizeof s_rl_headers / sizeof s_rl_headers[0]
           && (strlen (s_rl_headers[h].name) != nlen
               || strncasecmp (s_rl_headers[h].name, name, nlen) != 0)) {
        h++;
    }
    if (h == sizeof s_rl_headers / sizeof s_rl_headers[0]) {
        return 0;                       /* x-ratelimit-limit-requests, ... */
    }
    while (vlen && (*value == ' ' || *value == '\t')) {
        value++;
        vlen--;
    }
    while (vlen && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'
                    || value[vlen - 1] == '\r' || value[vlen - 1] == '\n')) {
        vlen--;
    }
    char v[64];
    if (vlen == 0 || vlen >= sizeof v) {
        return -1;
    }
    memcpy (v, value, vlen);
    v[vlen] = '\0';
    int q = s_rl_headers[h].quota;
    if (s_rl_headers[h].kind == S_V_COUNT) {
        int64_t n = 0;
        for (size_t i = 0; i < vlen; i++) {
            if (!isdigit ((unsigned char) v[i]) || n > (INT64_MAX - 9) / 10) {
                return -1;
            }
            n = n * 10 + (v[i] - '0');
        }
        rl->quota_remaining[q] = n;
    }
    else {
        uint64_t ms;
        int rc = s_rl_headers[h].kind == S_V_DURATION ? llmq_ratelimit_duration_ms (v, &ms)
                                                      : llmq_rfc3339_ms (v, now_ms, &ms);
        if (rc != 0) {
            return -1;
        }
        rl->quota_reset_ms[q] = ms;
    }
    s_rl_derive (rl);
    return 1;
}

uint64_t
llmq_ratelimit_wait_ms (const llmq_ratelimit_t *rl)
{
    uint64_t wait = 0;
    if (rl->remaining_requests == 0) {
        wait = rl->reset_requests_ms;
    }
    if (rl->remaining_tokens == 0 && rl->reset_tokens_ms > wait) {
        wait = rl->reset_tokens_ms;
    }
    if (wait) {
        return wait;
    }
    uint64_t a = rl->reset_requests_ms, b = rl->reset_tokens_ms;
    return a && b ? (a < b ? a : b) : a ? a : b;
}

uint32_t
llmq_count_words (const char *s, size_t len)
{
    uint32_t n = 0;
    bool in_word = false;
    for (size_t i = 0; i < len; i++) {
        /*  ASCII whitespace only, inline: isspace() is a locale-aware call
            per byte and was the echo provider's top cost. */
        char ch = s[i];
        bool space = ch == ' ' || (ch >= '\t' && ch <= '\r');
        if (!space && !in_word) {
            n++;
        }
        in_word = !space;
    }
    return n;
}

void
llmq_excerpt (const char *body, size_t len, char *out, size_t outlen)
{
    size_t n = 0;
    for (size_t i = 0; i < len && n + 1 < outlen && n < 120; i++) {
        unsigned char c = (unsigned char) body[i];
        out[n++] = c >= 0x20 && c < 0x7f ? (char) c : ' ';
    }
    if (outlen) {
        out[n] = '\0';
    }
}
