/*  mock_faults.c -- request plans, [[mock:...]] directives and the queue
    of faults that tests arm through the control API.
*/
#include "mock_faults.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define DIRECTIVE_OPEN      "[[mock:"
#define DIRECTIVE_OPEN_LEN  7
#define DIRECTIVE_CLOSE     "]]"

void
mock_plan_clear (mock_plan_t *plan)
{
    plan->fault = MOCK_FAULT_NONE;
    plan->status = -1;
    plan->retry_after_s = -1;
    plan->drop_after = -1;
    plan->error_after = -1;
    plan->latency_ms = -1;
    plan->chunk_delay_ms = -1;
    plan->chunks = -1;
    plan->cached = -1;
}

void
mock_plan_merge (mock_plan_t *dst, const mock_plan_t *src)
{
    if (src->fault != MOCK_FAULT_NONE) {
        dst->fault = src->fault;
    }
    if (src->status >= 0) {
        dst->status = src->status;
    }
    if (src->retry_after_s >= 0) {
        dst->retry_after_s = src->retry_after_s;
    }
    if (src->drop_after >= 0) {
        dst->drop_after = src->drop_after;
    }
    if (src->error_after >= 0) {
        dst->error_after = src->error_after;
    }
    if (src->latency_ms >= 0) {
        dst->latency_ms = src->latency_ms;
    }
    if (src->chunk_delay_ms >= 0) {
        dst->chunk_delay_ms = src->chunk_delay_ms;
    }
    if (src->chunks >= 0) {
        dst->chunks = src->chunks;
    }
    if (src->cached >= 0) {
        dst->cached = src->cached;
    }
}

bool
mock_plan_is_fault (const mock_plan_t *plan)
{
    return plan->fault != MOCK_FAULT_NONE;
}

const char *
mock_fault_name (mock_fault_t fault)
{
    switch (fault) {
        case MOCK_FAULT_NONE:       return "none";
        case MOCK_FAULT_STATUS:     return "status";
        case MOCK_FAULT_QUOTA:      return "quota";
        case MOCK_FAULT_HANG:       return "hang";
        case MOCK_FAULT_DROP:       return "drop";
        case MOCK_FAULT_DROP_AFTER: return "drop_after";
        case MOCK_FAULT_ERROR_AFTER: return "error_after";
        case MOCK_FAULT_MALFORMED:  return "malformed";
    }
    return "unknown";
}

//  Parse a whole decimal integer in [lo, hi] from value[0..len).
//  Returns 0 and sets *out, or -1 (the caller then ignores the item).
static int
s_parse_int (const char *value, size_t len, long lo, long hi, int *out)
{
    if (len == 0 || len > 12) {
        return -1;
    }
    char tmp [16];
    memcpy (tmp, value, len);
    tmp [len] = '\0';
    char *end = NULL;
    errno = 0;
    long v = strtol (tmp, &end, 10);
    if (errno != 0 || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    *out = (int) v;
    return 0;
}

static bool
s_key_is (const char *key, size_t key_len, const char *name)
{
    return strlen (name) == key_len && memcmp (key, name, key_len) == 0;
}

//  Apply one KEY or KEY=VALUE item to plan. Whitespace around both halves
//  is tolerated because people type "[[mock: fail = 500 ]]".
static void
s_apply_item (const char *item, size_t len, mock_plan_t *plan)
{
    while (len > 0 && isspace ((unsigned char) *item)) {
        item++;
        len--;
    }
    while (len > 0 && isspace ((unsigned char) item [len - 1])) {
        len--;
    }
    const char *eq = memchr (item, '=', len);
    size_t key_len = eq ? (size_t) (eq - item) : len;
    const char *value = eq ? eq + 1 : item + len;
    size_t value_len = eq ? len - key_len - 1 : 0;
    while (key_len > 0 && isspace ((unsigned char) item [key_len - 1])) {
        key_len--;
    }
    while (value_len > 0 && isspace ((unsigned char) *value)) {
        value++;
        value_len--;
    }
    int n = 0;
    if (s_key_is (item, key_len, "fail")) {
        if (value_len == 5 && memcmp (value, "quota", 5) == 0) {
            plan->fault = MOCK_FAULT_QUOTA;
            plan->status = 429;
        }
        else
        if (s_parse_int (value, value_len, 100, 599, &n) == 0) {
            plan->fault = MOCK_FAULT_STATUS;
            plan->status = n;
        }
    }
    else
    if (s_key_is (item, key_len, "retry_after")) {
        if (s_parse_int (value, value_len, 0, 86400, &n) == 0) {
            plan->retry_after_s = n;
        }
    }
    else
    if (s_key_is (item, key_len, "latency")) {
        if (s_parse_int (value, value_len, 0, MOCK_DELAY_MAX_MS, &n) == 0) {
            plan->latency_ms = n;
        }
    }
    else
    if (s_key_is (item, key_len, "chunk_delay")) {
        if (s_parse_int (value, value_len, 0, MOCK_DELAY_MAX_MS, &n) == 0) {
            plan->chunk_delay_ms = n;
        }
    }
    else
    if (s_key_is (item, key_len, "chunks")) {
        if (s_parse_int (value, value_len, 1, MOCK_CHUNKS_MAX, &n) == 0) {
            plan->chunks = n;
        }
    }
    else
    if (s_key_is (item, key_len, "cached")) {
        if (s_parse_int (value, value_len, 0, 1000000000, &n) == 0) {
            plan->cached = n;
        }
    }
    else
    if (s_key_is (item, key_len, "drop_after")) {
        if (s_parse_int (value, value_len, 0, MOCK_CHUNKS_MAX, &n) == 0) {
            plan->fault = MOCK_FAULT_DROP_AFTER;
            plan->drop_after = n;
        }
    }
    else
    if (s_key_is (item, key_len, "error_after")) {
        if (s_parse_int (value, value_len, 0, MOCK_CHUNKS_MAX, &n) == 0) {
            plan->fault = MOCK_FAULT_ERROR_AFTER;
            plan->error_after = n;
        }
    }
    else
    if (s_key_is (item, key_len, "hang")) {
        plan->fault = MOCK_FAULT_HANG;
    }
    else
    if (s_key_is (item, key_len, "drop")) {
        plan->fault = MOCK_FAULT_DROP;
    }
    else
    if (s_key_is (item, key_len, "malformed")) {
        plan->fault = MOCK_FAULT_MALFORMED;
    }
}

//  memmem() is a GNU extension; the project defines _GNU_SOURCE, but a
//  bounded search of our own keeps this file portable to a strict build.
static const char *
s_find (const char *hay, size_t hay_len, const char *needle, size_t needle_len)
{
    if (needle_len > hay_len) {
        return NULL;
    }
    const char *last = hay + hay_len - needle_len;
    for (const char *p = hay; p <= last; p++) {
        p = memchr (p, needle [0], (size_t) (last - p) + 1);
        if (!p) {
            return NULL;
        }
        if (memcmp (p, needle, needle_len) == 0) {
            return p;
        }
    }
    return NULL;
}

char *
mock_directives_strip (const char *text, size_t len, mock_plan_t *plan,
                       size_t *out_len_p)
{
    //  The stripped text is never longer than the input
    char *out = malloc (len + 1);
    if (!out) {
        return NULL;
    }
    size_t out_len = 0;
    const char *cursor = text;
    const char *end = text + len;
    while (cursor < end) {
        const char *open = s_find (cursor, (size_t) (end - cursor),
                                   DIRECTIVE_OPEN, DIRECTIVE_OPEN_LEN);
        const char *close = NULL;
        if (open) {
            const char *body = open + DIRECTIVE_OPEN_LEN;
            close = s_find (body, (size_t) (end - body), DIRECTIVE_CLOSE, 2);
        }
        if (!open || !close) {
            //  No (complete) directive left: keep the rest as it is
            memcpy (out + out_len, cursor, (size_t) (end - cursor));
            out_len += (size_t) (end - cursor);
            break;
        }
        memcpy (out + out_len, cursor, (size_t) (open - cursor));
        out_len += (size_t) (open - cursor);
        const char *item = open + DIRECTIVE_OPEN_LEN;
        while (item < close) {
            const char *comma = memchr (item, ',', (size_t) (close - item));
            const char *item_end = comma ? comma : close;
            s_apply_item (item, (size_t) (item_end - item), plan);
            item = comma ? comma + 1 : close;
        }
        cursor = close + 2;
    }
    out [out_len] = '\0';
    *out_len_p = out_len;
    return out;
}


//  --------------------------------------------------------------------------
//  The fault queue: a singly linked FIFO under one mutex.

typedef struct s_entry_t {
    struct s_entry_t *next;
    mock_plan_t fault;          //  only fault/status/retry_after_s/drop_after/error_after
    int remaining;              //  requests left; -1 = until cleared
} s_entry_t;

struct mock_faults_t {
    pthread_mutex_t mutex;      //  guards head, tail and size
    s_entry_t *head;            //  next fault to hand out
    s_entry_t *tail;            //  where pushes go
    size_t size;                //  entries in the list
    atomic_size_t armed;        //  copy of size, read without the mutex
};

mock_faults_t *
mock_faults_new (void)
{
    mock_faults_t *self = calloc (1, sizeof (*self));
    if (!self) {
        return NULL;
    }
    if (pthread_mutex_init (&self->mutex, NULL) != 0) {
        free (self);
        return NULL;
    }
    atomic_init (&self->armed, 0);
    return self;
}

void
mock_faults_destroy (mock_faults_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    mock_faults_t *self = *self_p;
    mock_faults_clear (self);
    pthread_mutex_destroy (&self->mutex);
    free (self);
    *self_p = NULL;
}

int
mock_faults_push (mock_faults_t *self, const mock_plan_t *fault, int count)
{
    if (count == 0 || count < -1) {
        return -1;
    }
    s_entry_t *entry = calloc (1, sizeof (*entry));
    if (!entry) {
        return -1;
    }
    mock_plan_clear (&entry->fault);
    entry->fault.fault = fault->fault;
    entry->fault.status = fault->status;
    entry->fault.retry_after_s = fault->retry_after_s;
    entry->fault.drop_after = fault->drop_after;
    entry->fault.error_after = fault->error_after;
    entry->remaining = count;

    pthread_mutex_lock (&self->mutex);
    if (self->tail) {
        self->tail->next = entry;
    }
    else {
        self->head = entry;
    }
    self->tail = entry;
    self->size++;
    atomic_store (&self->armed, self->size);
    pthread_mutex_unlock (&self->mutex);
    return 0;
}

void
mock_faults_clear (mock_faults_t *self)
{
    pthread_mutex_lock (&self->mutex);
    s_entry_t *entry = self->head;
    self->head = self->tail = NULL;
    self->size = 0;
    atomic_store (&self->armed, 0);
    pthread_mutex_unlock (&self->mutex);
    while (entry) {
        s_entry_t *next = entry->next;
        free (entry);
        entry = next;
    }
}

bool
mock_faults_take (mock_faults_t *self, mock_plan_t *plan)
{
    //  Benchmarks run with an empty queue: do not serialise them on a lock
    if (atomic_load (&self->armed) == 0) {
        return false;
    }
    s_entry_t *spent = NULL;
    bool taken = false;
    pthread_mutex_lock (&self->mutex);
    s_entry_t *entry = self->head;
    if (entry) {
        mock_plan_merge (plan, &entry->fault);
        taken = true;
        if (entry->remaining > 0 && --entry->remaining == 0) {
            self->head = entry->next;
            if (!self->head) {
                self->tail = NULL;
            }
            self->size--;
            atomic_store (&self->armed, self->size);
            spent = entry;
        }
    }
    pthread_mutex_unlock (&self->mutex);
    free (spent);
    return taken;
}

size_t
mock_faults_size (mock_faults_t *self)
{
    pthread_mutex_lock (&self->mutex);
    size_t size = self->size;
    pthread_mutex_unlock (&self->mutex);
    return size;
}
