/*  sse.h -- incremental parser for Server-Sent Events (text/event-stream).

    Feed the bytes of a response body as they arrive, split anywhere (in the
    middle of a line, between the CR and the LF of a CRLF, inside a UTF-8
    sequence); the parser calls back once per complete event, in order.

    What it follows from the WHATWG "server-sent events" parsing rules:
      * lines end with LF, CRLF or a lone CR;
      * a line starting with ':' is a comment and is ignored;
      * "field: value" or "field:value" (one leading space is dropped);
        a line with no colon is a field with an empty value;
      * every "data" line appends its value plus LF to the event's data;
        a blank line dispatches the event with the last LF removed;
        an event whose data buffer is empty is not dispatched;
      * "event" sets the event type (NULL in the callback when not given);
        "id" and "retry" are accepted and ignored (we never reconnect);
      * a UTF-8 byte order mark at the very start is skipped;
      * bytes after the last blank line at end of stream are dropped.

    OpenAI-style streams end with "data: [DONE]". That event is not passed
    to the callback: the parser records it (llmq_sse_done) and ignores all
    input after it.

    One parser per response; llmq_sse_reset() makes it ready for the next.
    Not thread-safe; no global state.
*/
#ifndef LLMQ_SSE_H
#define LLMQ_SSE_H

#include <stdbool.h>
#include <stddef.h>

/*  Largest event (data plus one line being assembled) we accept. A longer
    one makes llmq_sse_feed() fail: a stream that never ends a line must not
    eat all memory. */
#define LLMQ_SSE_MAX_EVENT (16u * 1024u * 1024u)

typedef struct llmq_sse llmq_sse_t;

/*  Called for each event. `event` is the "event:" field or NULL; `data` is
    NUL-terminated (len excludes the NUL) and valid only during the call.
    Return 0 to go on, non-zero to stop: llmq_sse_feed() then returns -1
    and the parser ignores further input until reset. */
typedef int (llmq_sse_fn) (void *arg, const char *event, const char *data, size_t len);

/*  New parser calling fn(arg, ...). Returns NULL when out of memory. */
llmq_sse_t *llmq_sse_new (llmq_sse_fn *fn, void *arg);
/*  Destroy; sets *self_p to NULL. Safe on NULL or a NULL *self_p. */
void llmq_sse_destroy (llmq_sse_t **self_p);
/*  Forget all state (partial line, data, [DONE], error); keeps memory. */
void llmq_sse_reset (llmq_sse_t *self);

/*  Parse `len` more bytes. Returns 0, or -1 if the callback asked to stop,
    an event grew past LLMQ_SSE_MAX_EVENT, or memory ran out (the parser
    then stays failed until reset). */
int  llmq_sse_feed (llmq_sse_t *self, const char *data, size_t len);

/*  True once "data: [DONE]" was seen. */
bool llmq_sse_done (const llmq_sse_t *self);
/*  Number of events dispatched to the callback so far. */
size_t llmq_sse_events (const llmq_sse_t *self);

#endif
