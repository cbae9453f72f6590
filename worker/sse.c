/*  sse.c -- incremental Server-Sent Events parser. See sse.h.

    Input is scanned for line ends with memchr-like loops; a line that lies
    wholly inside one fed block is parsed in place, so only lines split
    across blocks are copied into `line`. The only state carried between
    blocks is that partial line, the event being built, and whether the
    last byte was a CR (so that a CRLF split between two blocks counts as
    one line end, not two).
*/
#include "sse.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    char  *p;                   /* bytes, NUL-terminated when len > 0 */
    size_t len;                 /* bytes used, excluding the NUL */
    size_t cap;                 /* bytes allocated */
} s_buf_t;

struct llmq_sse {
    llmq_sse_fn *fn;            /* event callback */
    void   *arg;                /* its argument */
    s_buf_t line;               /* partial line carried over from the last block */
    s_buf_t data;               /* data of the event being built ("a\nb\n") */
    s_buf_t event;              /* event type of the event being built */
    bool    has_event;          /* an "event:" line was seen for this event */
    bool    after_cr;           /* last byte fed was CR: skip an LF that follows */
    size_t  bom_seen;           /* bytes of a leading UTF-8 BOM matched so far */
    bool    started;            /* past the point where a BOM may appear */
    bool    done;               /* "data: [DONE]" seen */
    bool    failed;             /* callback stopped us, or limit/oom */
    size_t  nevents;            /* events dispatched */
};

static int
s_buf_add (s_buf_t *b, const char *src, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) {
            cap *= 2;
        }
        char *p = realloc (b->p, cap);
        if (!p) {
            return -1;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) {
        memcpy (b->p + b->len, src, n);
    }
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

llmq_sse_t *
llmq_sse_new (llmq_sse_fn *fn, void *arg)
{
    llmq_sse_t *self = calloc (1, sizeof *self);
    if (self) {
        self->fn = fn;
        self->arg = arg;
    }
    return self;
}

void
llmq_sse_destroy (llmq_sse_t **self_p)
{
    if (self_p && *self_p) {
        llmq_sse_t *self = *self_p;
        free (self->line.p);
        free (self->data.p);
        free (self->event.p);
        free (self);
        *self_p = NULL;
    }
}

void
llmq_sse_reset (llmq_sse_t *self)
{
    self->line.len = 0;
    self->data.len = 0;
    self->event.len = 0;
    self->has_event = false;
    self->after_cr = false;
    self->bom_seen = 0;
    self->started = false;
    self->done = false;
    self->failed = false;
    self->nevents = 0;
}

bool
llmq_sse_done (const llmq_sse_t *self)
{
    return self->done;
}

size_t
llmq_sse_events (const llmq_sse_t *self)
{
    return self->nevents;
}

/*  Blank line: hand the event over, then start a new one. */
static int
s_dispatch (llmq_sse_t *self)
{
    int rc = 0;
    if (self->data.len > 0) {
        self->data.len--;               /* drop the LF after the last data line */
        self->data.p[self->data.len] = '\0';
        if (self->data.len == 6 && memcmp (self->data.p, "[DONE]", 6) == 0) {
            self->done = true;
        }
        else {
            self->nevents++;
            const char *event = self->has_event ? (self->event.p ? self->event.p : "") : NULL;
            if (self->fn && self->fn (self->arg, event, self->data.p, self->data.len) != 0) {
                rc = -1;
            }
        }
    }
    self->data.len = 0;
    self->event.len = 0;
    self->has_event = false;
    return rc;
}

/*  One complete line, without its line end. */
static int
s_line (llmq_sse_t *self, const char *p, size_t n)
{
    if (n == 0) {
        return s_dispatch (self);
    }
    if (p[0] == ':') {
        return 0;                       /* comment (keep-alives use these) */
    }
    const char *colon = memchr (p, ':', n);
    size_t flen = colon ? (size_t) (colon - p) : n;
    const char *value = colon ? colon + 1 : p + n;
    size_t vlen = (size_t) (p + n - value);
    if (vlen > 0 && value[0] == ' ') {
        value++;
        vlen--;
    }
    if (flen == 4 && memcmp (p, "data", 4) == 0) {
        if (self->data.len + vlen + 1 > LLMQ_SSE_MAX_EVENT) {
            return -1;
        }
        if (s_buf_add (&self->data, value, vlen) || s_buf_add (&self->data, "\n", 1)) {
            return -1;
        }
    }
    else if (flen == 5 && memcmp (p, "event", 5) == 0) {
        self->event.len = 0;
        if (vlen > 1024 || s_buf_add (&self->event, value, vlen)) {
            return -1;
        }
        self->has_event = true;
    }
    /*  "id", "retry" and unknown fields are ignored. */
    return 0;
}

int
llmq_sse_feed (llmq_sse_t *self, const char *data, size_t len)
{
    if (self->failed) {
        return -1;
    }
    const char *p = data;
    const char *end = data + len;

    /*  Skip a UTF-8 BOM at the very start, even if split across blocks. */
    static const char bom[3] = { (char) 0xEF, (char) 0xBB, (char) 0xBF };
    while (!self->started && p < end) {
        if (*p == bom[self->bom_seen]) {
            p++;
            if (++self->bom_seen == 3) {
                self->started = true;
            }
        }
        else {
            if (self->bom_seen > 0) {
                /*  A partial BOM that turned out not to be one: keep it. */
                if (s_buf_add (&self->line, bom, self->bom_seen)) {
                    goto fail;
                }
            }
            self->started = true;
        }
    }

    while (p < end && !self->done) {
        if (self->after_cr) {
            self->after_cr = false;
            if (*p == '\n') {
                p++;
                continue;
            }
        }
        /*  Find the next line end. */
        const char *eol = p;
        while (eol < end && *eol != '\n' && *eol != '\r') {
            eol++;
        }
        if (eol == end) {
            /*  No line end in this block: keep the rest for later. */
            if (self->line.len + (size_t) (end - p) + self->data.len > LLMQ_SSE_MAX_EVENT
                || s_buf_add (&self->line, p, (size_t) (end - p))) {
                goto fail;
            }
            break;
        }
        int rc;
        if (self->line.len > 0) {
            if (s_buf_add (&self->line, p, (size_t) (eol - p))) {
                goto fail;
            }
            rc = s_line (self, self->line.p, self->line.len);
            self->line.len = 0;
        }
        else {
            rc = s_line (self, p, (size_t) (eol - p));
        }
        if (rc) {
            goto fail;
        }
        if (*eol == '\r') {
            self->after_cr = true;
        }
        p = eol + 1;
    }
    return 0;

fail:
    self->failed = true;
    return -1;
}
