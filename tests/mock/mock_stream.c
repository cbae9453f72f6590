/*  mock_stream.c -- server-sent-events replies, with chunk delays and the
    drop_after, error_after and malformed faults.
*/
#include "mock_stream.h"

#include <stdlib.h>
#include <string.h>
#include <microhttpd.h>

struct mock_stream_t {
    mock_server_t *server;          //  for waits (stop pipe)
    const mock_dialect_t *dialect;  //  renders each event
    mock_chat_t *chat;              //  owned; reply already cut in pieces
    mock_plan_t plan;               //  delays and fault for this request
    int conn_fd;                    //  client socket, watched while waiting
    mock_event_t next;              //  moment to render next
    size_t piece;                   //  next reply piece for MOCK_EVENT_DELTA
    bool started;                   //  an event went out: delay the rest
    bool ended;                     //  MOCK_EVENT_DONE rendered
    char *event;                    //  text being handed to libmicrohttpd
    size_t event_len;               //  bytes in event
    size_t event_off;               //  bytes of event already handed over
};

mock_stream_t *
mock_stream_new (mock_server_t *server, const mock_dialect_t *dialect,
                 mock_chat_t **chat_p, const mock_plan_t *plan, int conn_fd)
{
    mock_stream_t *self = calloc (1, sizeof (*self));
    if (!self) {
        mock_chat_destroy (chat_p);
        return NULL;
    }
    self->server = server;
    self->dialect = dialect;
    self->chat = *chat_p;
    *chat_p = NULL;
    self->plan = *plan;
    self->conn_fd = conn_fd;
    self->next = MOCK_EVENT_START;
    return self;
}

const mock_chat_t *
mock_stream_chat (const mock_stream_t *self)
{
    return self->chat;
}

void
mock_stream_free (void *cls)
{
    mock_stream_t *self = cls;
    if (!self) {
        return;
    }
    mock_chat_destroy (&self->chat);
    free (self->event);
    free (self);
}

//  Render the next event into self->event. Returns 1 when there is one,
//  0 at the regular end of the stream, -1 to close the connection now.
static int
s_next_event (mock_stream_t *self)
{
    while (!self->ended) {
        mock_event_t moment = self->next;
        size_t piece = self->piece;
        if (moment == MOCK_EVENT_DELTA && piece >= self->chat->pieces) {
            self->next = MOCK_EVENT_FINISH;
            continue;
        }
        //  drop_after=K: K content pieces went out, now vanish mid-stream
        if (self->plan.fault == MOCK_FAULT_DROP_AFTER
        &&  moment != MOCK_EVENT_START
        &&  (moment != MOCK_EVENT_DELTA || piece >= (size_t) self->plan.drop_after)) {
            return -1;
        }
        //  error_after=K: K content pieces went out, now the provider's
        //  error event instead of the rest, and a regular end of the
        //  response (no finish, no end marker), as real providers fail
        if (self->plan.fault == MOCK_FAULT_ERROR_AFTER
        &&  moment != MOCK_EVENT_START
        &&  (moment != MOCK_EVENT_DELTA || piece >= (size_t) self->plan.error_after)) {
            moment = MOCK_EVENT_ERROR;
        }
        char *text = NULL;
        if (self->dialect->event (self->chat, moment, piece, &text) != 0) {
            return -1;
        }
        if (moment == MOCK_EVENT_DELTA) {
            self->piece++;
        }
        else
        if (moment == MOCK_EVENT_DONE || moment == MOCK_EVENT_ERROR) {
            self->ended = true;
        }
        else {
            self->next = (mock_event_t) (moment + 1);
        }
        if (!text) {
            continue;       //  the dialect sends nothing at this moment
        }
        if (moment == MOCK_EVENT_DELTA && piece == 0
        &&  self->plan.fault == MOCK_FAULT_MALFORMED) {
            //  Cut the event's payload in half but keep the blank line, so
            //  the client's SSE parser hands it a broken JSON document
            size_t cut = strlen (text) / 2;
            memcpy (text + cut, "\n\n", 3);
        }
        if (self->started && self->plan.chunk_delay_ms > 0
        &&  mock_server_wait (self->server, self->conn_fd,
                              self->plan.chunk_delay_ms) != 0) {
            free (text);
            return -1;
        }
        self->started = true;
        self->event = text;
        self->event_len = strlen (text);
        self->event_off = 0;
        return 1;
    }
    return 0;
}

ssize_t
mock_stream_read (void *cls, uint64_t pos, char *buf, size_t max)
{
    mock_stream_t *self = cls;
    while (!self->event || self->event_off == self->event_len) {
        free (self->event);
        self->event = NULL;
        int rc = s_next_event (self);
        if (rc == 0) {
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (rc < 0) {
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
    //  An event larger than libmicrohttpd's buffer goes out over several
    //  calls; the wait above happens only once per event
    size_t size = self->event_len - self->event_off;
    if (size > max) {
        size = max;
    }
    memcpy (buf, self->event + self->event_off, size);
    self->event_off += size;
    return (ssize_t) size;
}
