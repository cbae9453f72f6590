/*  client_queue.c -- events kept by a handle, and the conversions that make
    them (see client_queue.h).

    Every public object is one allocation: an llmq_result is the struct
    followed by its strings, an llmq_event the struct followed by its ids
    and strings (its result, if any, is a separate llmq_result). Freeing is
    then one free() per object and a half-built object never leaks.
*/
#include <stdlib.h>
#include <string.h>

#include "client_queue.h"

struct queue_node {
    queue_node_t *next;
    queue_node_t *prev;
    llmq_event   *ev;
    size_t        bytes;        /* what this event counts against the bound */
};

/*  Strings are packed behind a struct; `s_pack` copies one and returns
    where it went (NULL stays NULL). */
static const char *
s_pack (char **cursor, const char *s)
{
    if (!s) {
        return NULL;
    }
    size_t len = strlen (s) + 1;
    char *dst = *cursor;
    memcpy (dst, s, len);
    *cursor += len;
    return dst;
}

static size_t
s_len (const char *s)
{
    return s ? strlen (s) + 1 : 0;
}

llmq_result *
client_result_new (const llmq_result_t *r)
{
    size_t extra = s_len (r->content) + s_len (r->finish_reason) + s_len (r->deployment)
                 + s_len (r->request_id) + s_len (r->error) + s_len (r->model)
                 + s_len (r->batch_id) + s_len (r->custom_id) + s_len (r->tool_calls);
    llmq_result *res = calloc (1, sizeof (llmq_result) + extra);
    if (!res) {
        return NULL;
    }
    char *cursor = (char *) (res + 1);
    res->id = r->id;
    res->state = r->state;
    res->content = s_pack (&cursor, r->content);
    res->finish_reason = s_pack (&cursor, r->finish_reason);
    res->deployment = s_pack (&cursor, r->deployment);
    res->request_id = s_pack (&cursor, r->request_id);
    res->error = s_pack (&cursor, r->error);
    res->model = s_pack (&cursor, r->model);
    res->batch_id = s_pack (&cursor, r->batch_id);
    res->custom_id = s_pack (&cursor, r->custom_id);
    res->tool_calls = s_pack (&cursor, r->tool_calls);
    res->error_class = r->error_class;
    res->degraded = r->degraded;
    res->cost_micro = r->cost_micro;
    res->cached = r->cached;
    res->priority = r->priority;
    res->http_status = r->http_status;
    res->attempts = r->attempts;
    res->prompt_tokens = r->prompt_tokens;
    res->completion_tokens = r->completion_tokens;
    res->cached_tokens = r->cached_tokens;
    res->enqueued_us = r->enqueued_us;
    res->started_us = r->started_us;
    res->finished_us = r->finished_us;
    res->latency_us = r->latency_us;
    return res;
}

/*  An event with `extra` bytes of room after it, aligned for uint64_t. */
static llmq_event *
s_event_alloc (int type, size_t extra)
{
    llmq_event *ev = calloc (1, sizeof (llmq_event) + extra);
    if (ev) {
        ev->type = type;
        ev->index = -1;
    }
    return ev;
}

llmq_event *
client_event_accepted (uint64_t ticket, const uint64_t *ids, size_t nids)
{
    /* sizeof (llmq_event) is a multiple of 8 (it holds uint64_t fields),
       so the ids that follow it are aligned. */
    llmq_event *ev = s_event_alloc (LLMQ_EV_ACCEPTED, nids * sizeof (uint64_t));
    if (!ev) {
        return NULL;
    }
    ev->ticket = ticket;
    if (nids > 0) {
        ev->ids = (uint64_t *) (ev + 1);
        memcpy (ev->ids, ids, nids * sizeof (uint64_t));
    }
    ev->nids = nids;
    return ev;
}

llmq_event *
client_event_rejected (uint64_t ticket, int code, const char *reason,
                       long index, uint64_t retry_after_ms)
{
    if (!reason) {
        reason = llmq_strerror (code);
    }
    llmq_event *ev = s_event_alloc (LLMQ_EV_REJECTED, s_len (reason));
    if (!ev) {
        return NULL;
    }
    char *cursor = (char *) (ev + 1);
    ev->ticket = ticket;
    ev->code = code;
    ev->reason = s_pack (&cursor, reason);
    ev->index = index;
    ev->retry_after_ms = retry_after_ms;
    return ev;
}

llmq_event *
client_event_chunk (uint64_t id, unsigned seq, const char *text)
{
    if (!text) {
        text = "";
    }
    llmq_event *ev = s_event_alloc (LLMQ_EV_CHUNK, s_len (text));
    if (!ev) {
        return NULL;
    }
    char *cursor = (char *) (ev + 1);
    ev->id = id;
    ev->seq = seq;
    ev->text = s_pack (&cursor, text);
    return ev;
}

llmq_event *
client_event_reset (uint64_t id, const char *reason)
{
    llmq_event *ev = s_event_alloc (LLMQ_EV_RESET, s_len (reason));
    if (!ev) {
        return NULL;
    }
    char *cursor = (char *) (ev + 1);
    ev->id = id;
    ev->reason = s_pack (&cursor, reason);
    return ev;
}

llmq_event *
client_event_notice (const char *json)
{
    if (!json) {
        json = "{}";
    }
    llmq_event *ev = s_event_alloc (LLMQ_EV_NOTICE, s_len (json));
    if (!ev) {
        return NULL;
    }
    char *cursor = (char *) (ev + 1);
    ev->text = s_pack (&cursor, json);
    return ev;
}

llmq_event *
client_event_result (llmq_result *result)
{
    llmq_event *ev = s_event_alloc (LLMQ_EV_RESULT, 0);
    if (!ev) {
        free (result);
        return NULL;
    }
    ev->id = result->id;
    ev->result = result;
    return ev;
}

/*  Rough size of an event, strings included. */
static size_t
s_event_bytes (const llmq_event *ev)
{
    size_t bytes = sizeof (queue_node_t) + sizeof (llmq_event) + ev->nids * sizeof (uint64_t)
                 + s_len (ev->reason) + s_len (ev->text);
    const llmq_result *r = ev->result;
    if (r) {
        bytes += sizeof (llmq_result) + s_len (r->content) + s_len (r->finish_reason)
               + s_len (r->deployment) + s_len (r->request_id) + s_len (r->error)
               + s_len (r->model) + s_len (r->batch_id) + s_len (r->custom_id)
               + s_len (r->tool_calls);
    }
    return bytes;
}

void
client_queue_init (client_queue_t *q, size_t max_bytes)
{
    memset (q, 0, sizeof (*q));
    q->max_bytes = max_bytes;
}

static void
s_unlink (client_queue_t *q, queue_node_t *node)
{
    if (node->prev) {
        node->prev->next = node->next;
    }
    else {
        q->head = node->next;
    }
    if (node->next) {
        node->next->prev = node->prev;
    }
    else {
        q->tail = node->prev;
    }
    q->count--;
    q->bytes -= node->bytes;
}

void
client_queue_clear (client_queue_t *q)
{
    queue_node_t *node = q->head;
    while (node) {
        queue_node_t *next = node->next;
        llmq_event_free (&node->ev);
        free (node);
        node = next;
    }
    q->head = q->tail = NULL;
    q->count = 0;
    q->bytes = 0;
}

int
client_queue_push (client_queue_t *q, llmq_event *ev)
{
    size_t bytes = s_event_bytes (ev);
    int droppable = ev->type == LLMQ_EV_CHUNK || ev->type == LLMQ_EV_RESULT;
    queue_node_t *node = NULL;
    if (!(droppable && q->bytes + bytes > q->max_bytes)) {
        node = malloc (sizeof (queue_node_t));
    }
    if (!node) {
        q->dropped++;
        llmq_event_free (&ev);
        return -1;
    }
    node->ev = ev;
    node->bytes = bytes;
    node->next = NULL;
    node->prev = q->tail;
    if (q->tail) {
        q->tail->next = node;
    }
    else {
        q->head = node;
    }
    q->tail = node;
    q->count++;
    q->bytes += bytes;
    return 0;
}

static llmq_event *
s_remove (client_queue_t *q, queue_node_t *node)
{
    llmq_event *ev = node->ev;
    s_unlink (q, node);
    free (node);
    return ev;
}

llmq_event *
client_queue_pop (client_queue_t *q)
{
    return q->head ? s_remove (q, q->head) : NULL;
}

llmq_event *
client_queue_take (client_queue_t *q, uint64_t id, int want_chunks)
{
    for (queue_node_t *node = q->head; node; node = node->next) {
        const llmq_event *ev = node->ev;
        if (ev->id != id) {
            continue;
        }
        if (ev->type == LLMQ_EV_RESULT
            || (want_chunks && (ev->type == LLMQ_EV_CHUNK || ev->type == LLMQ_EV_RESET))) {
            return s_remove (q, node);
        }
    }
    return NULL;
}

void
client_queue_drop_chunks (client_queue_t *q, uint64_t id)
{
    queue_node_t *node = q->head;
    while (node) {
        queue_node_t *next = node->next;
        if ((node->ev->type == LLMQ_EV_CHUNK || node->ev->type == LLMQ_EV_RESET) && node->ev->id == id) {
            llmq_event *ev = s_remove (q, node);
            llmq_event_free (&ev);
        }
        node = next;
    }
}
