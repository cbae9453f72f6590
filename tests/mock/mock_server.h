/*  mock_server.h -- state shared by the mock's HTTP plumbing
    (mock_provider.c) and its control API (mock_control.c).

    One mock_server_t lives for the whole process. The defaults can be
    changed at run time by POST /mock/config while requests are being
    served, so they are atomics; everything else is set before the HTTP
    daemon starts and only read afterwards.
*/
#ifndef MOCK_SERVER_H
#define MOCK_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <microhttpd.h>

#include "mock_faults.h"
#include "mock_stats.h"

/*  Request bodies above this are refused with 413, as the brief asks. */
#define MOCK_BODY_MAX   (8u * 1024 * 1024)

typedef struct {
    atomic_int latency_ms;      /* default delay before response headers */
    atomic_int chunk_delay_ms;  /* default delay between SSE events */
    atomic_int chunks;          /* default number of content pieces */
    atomic_ullong serial;       /* last request serial handed out */
    mock_stats_t *stats;        /* counters for GET /mock/stats */
    mock_faults_t *faults;      /* queue armed by POST /mock/faults */
    int stop_fd;                /* read end of the stop pipe: readable once
                                   we are shutting down, never drained, so
                                   every waiting thread sees it */
    bool verbose;               /* log every request to stderr */
} mock_server_t;

/*  Wait up to ms milliseconds. Returns early, with -1, if the server is
    stopping or, when conn_fd >= 0, if the client has closed the
    connection; returns 0 once the time has passed. Blocks only the
    calling thread. */
int mock_server_wait (mock_server_t *server, int conn_fd, long ms);

/*  Answer a request under /mock/ (the control API). body may be NULL.
    Queues the response on conn and returns MHD_YES, or MHD_NO to drop
    the connection when out of memory. */
enum MHD_Result mock_control_handle (mock_server_t *server,
                                     struct MHD_Connection *conn,
                                     const char *method, const char *url,
                                     const char *body, size_t len);

#endif
