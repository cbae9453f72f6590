/*  client_queue.h -- the events a handle keeps for later (private to libllmq).

    A handle has one socket, and the broker pushes results and chunks to it
    whenever they are ready, not when the caller happens to ask. Whatever
    arrives while a blocking call waits for its own reply is turned into a
    public llmq_event and kept here, in arrival order, until llmq_next(),
    llmq_wait() or llmq_stream() takes it.

    The queue is bounded in bytes (LLMQ_QUEUE_MAX_BYTES). Past the bound,
    pushed CHUNK and RESULT events are dropped and counted; ACCEPTED and
    REJECTED events (answers to llmq_send(), small and needed to know what
    was stored) are always kept. A dropped result is not lost for good: the
    job's result stays on the broker and llmq_wait() asks for it again.
*/
#ifndef LLMQ_CLIENT_QUEUE_H
#define LLMQ_CLIENT_QUEUE_H

#include <stddef.h>
#include <stdint.h>
#include "llmq.h"
#include "codec.h"

#define LLMQ_QUEUE_MAX_BYTES  (128u * 1024 * 1024)

typedef struct queue_node queue_node_t;

typedef struct {
    queue_node_t *head;         /* oldest event */
    queue_node_t *tail;         /* newest event */
    size_t count;               /* events held */
    size_t bytes;               /* their approximate size, for the bound */
    size_t max_bytes;           /* the bound (LLMQ_QUEUE_MAX_BYTES) */
    uint64_t dropped;           /* pushes refused since the last llmq_next() */
} client_queue_t;

void client_queue_init (client_queue_t *q, size_t max_bytes);
/*  Free every event held. */
void client_queue_clear (client_queue_t *q);
/*  Append an event; the queue owns it afterwards. Returns 0, or -1 if it was
    over the bound and freed (it is counted in `dropped`). */
int  client_queue_push (client_queue_t *q, llmq_event *ev);
/*  Remove and return the oldest event, or NULL. */
llmq_event *client_queue_pop (client_queue_t *q);
/*  Remove and return the oldest RESULT or CHUNK event of job `id` (a RESULT
    only if `want_chunks` is 0), or NULL. */
llmq_event *client_queue_take (client_queue_t *q, uint64_t id, int want_chunks);
/*  Free every queued CHUNK event of job `id`. */
void client_queue_drop_chunks (client_queue_t *q, uint64_t id);

/*  Conversions from decoded wire structs (whose strings live in an arena)
    to public, caller-owned objects. Each returns NULL when out of memory. */
llmq_result *client_result_new (const llmq_result_t *r);
llmq_event  *client_event_accepted (uint64_t ticket, const uint64_t *ids, size_t nids);
llmq_event  *client_event_rejected (uint64_t ticket, int code, const char *reason,
                                    long index, uint64_t retry_after_ms);
llmq_event  *client_event_chunk (uint64_t id, unsigned seq, const char *text);
llmq_event  *client_event_reset (uint64_t id, const char *reason);
llmq_event  *client_event_notice (const char *json);
/*  Takes ownership of `result` (freed on failure too). */
llmq_event  *client_event_result (llmq_result *result);

#endif
