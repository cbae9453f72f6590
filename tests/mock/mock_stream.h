/*  mock_stream.h -- a server-sent-events reply, produced event by event
    as libmicrohttpd asks for more bytes.

    The stream walks the moments of mock_dialect.h (START, each DELTA
    piece, FINISH, USAGE, DONE), asks the dialect for each one's text, and
    waits the plan's chunk delay before every event but the first. It also
    carries out the three stream faults: "drop_after" (close the connection
    after K content pieces, with no end marker), "error_after" (after K
    content pieces, the dialect's error event, then the response ends
    normally, with no finish and no end marker) and "malformed" (the first
    content event is cut in half).

    A stream is owned by its libmicrohttpd response: mock_stream_read and
    mock_stream_free are that response's callbacks, called on the
    connection's thread only.
*/
#ifndef MOCK_STREAM_H
#define MOCK_STREAM_H

#include <stdint.h>
#include <sys/types.h>

#include "mock_chat.h"
#include "mock_dialect.h"
#include "mock_server.h"

typedef struct mock_stream_t mock_stream_t;

/*  Create a stream for a finished chat (mock_chat_finish done). Takes
    ownership of *chat_p and NULLs it, on success and on failure alike.
    conn_fd is the client socket, watched during waits (-1 = don't).
    Returns NULL if out of memory. */
mock_stream_t *mock_stream_new (mock_server_t *server,
                                const mock_dialect_t *dialect,
                                mock_chat_t **chat_p, const mock_plan_t *plan,
                                int conn_fd);

/*  The chat being streamed (borrowed). */
const mock_chat_t *mock_stream_chat (const mock_stream_t *self);

/*  MHD_ContentReaderCallback: copy up to max bytes of the stream into
    buf. Blocks for chunk delays; returns MHD_CONTENT_READER_END_OF_STREAM
    after the last event, or MHD_CONTENT_READER_END_WITH_ERROR to close
    the connection (drop_after, shutdown, client gone, out of memory). */
ssize_t mock_stream_read (void *cls, uint64_t pos, char *buf, size_t max);

/*  MHD_ContentReaderFreeCallback: destroy the stream. */
void mock_stream_free (void *cls);

#endif
