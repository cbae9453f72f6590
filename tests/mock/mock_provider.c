/*  mock_provider.c -- llmq-mock-provider: an LLM provider stand-in for
    llmq's tests, demo and benchmarks. Main, options and HTTP plumbing.

    The machines llmq is tested on have no internet, so this is the only
    "provider" the worker ever talks to in tests. It speaks the real wire
    format (mock_openai.c; more dialects can be added beside it) and fails
    the ways real providers fail (mock_faults.h), with exact counters for
    tests to assert on (mock_stats.h) and a control API (mock_control.c).

    Threading, and why. The default runs libmicrohttpd with one thread per
    connection. A test that asks for latency, a slow stream or a hang gets
    a plain blocking wait on its own thread, which cannot stall any other
    connection. A benchmark's 64 keep-alive connections are then 64
    threads doing blocking reads: on two cores that measured about 35,000
    requests/s, against about 44,000 for an epoll pool (README.md); both
    are far above what llmq needs, so isolation wins the default. Waits
    are poll() calls on the stop pipe and the client's socket, so shutdown
    and a client that hangs up both end them at once. --threads N switches
    to an epoll pool of N threads for pure throughput runs; there a wait
    blocks every connection of its pool thread, so keep delays and hangs
    out of those runs.

    A request's life: the first access callback (headers only) creates an
    s_request_t, counts a chat request and checks Content-Length; further
    callbacks append the body (refusing > 8 MiB); the last one answers.
    The completion callback frees the request and settles the stats.
*/
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mock_chat.h"
#include "mock_dialect.h"
#include "mock_openai.h"
#include "mock_anthropic.h"
#include "mock_gemini.h"
#include "mock_server.h"
#include "mock_stream.h"

//  Every wire format the mock speaks; the first whose match() accepts a
//  URL serves it. Add Anthropic and Gemini here.
static const mock_dialect_t *s_dialects [] = {
    &mock_openai_dialect,
    &mock_anthropic_dialect,
    &mock_gemini_dialect,
    NULL
};

typedef enum {
    ROUTE_CHAT,                 //  a dialect's chat endpoint, POST
    ROUTE_CONTROL,              //  /mock/...
    ROUTE_OTHER                 //  anything else: 404/405
} s_route_t;

//  One HTTP request, from its headers to the end of its response
typedef struct {
    s_route_t route;
    const mock_dialect_t *dialect;  //  for ROUTE_CHAT, and errors elsewhere
    char *body;                 //  request body so far (not NUL-terminated)
    size_t len;                 //  bytes in body
    size_t cap;                 //  bytes allocated for body
    bool too_big;               //  body passed MOCK_BODY_MAX: answer 413
    bool answered;              //  a response is queued
    int status;                 //  status queued, for --verbose; 0 = none
    char *refused_key;          //  API key given to --reject-key, or NULL
    struct timespec start;      //  arrival, for openai-processing-ms
    uint64_t stats_handle;      //  its place in the timestamp ring (chat only)
} s_request_t;

static long
s_elapsed_ms (const struct timespec *start)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (long) ((now.tv_sec - start->tv_sec) * 1000
                 + (now.tv_nsec - start->tv_nsec) / 1000000);
}

int
mock_server_wait (mock_server_t *server, int conn_fd, long ms)
{
    struct timespec start;
    clock_gettime (CLOCK_MONOTONIC, &start);
    bool watch_conn = conn_fd >= 0;
    while (true) {
        long remaining = ms - s_elapsed_ms (&start);
        if (remaining <= 0) {
            return 0;
        }
        struct pollfd fds [2] = {
            { .fd = server->stop_fd, .events = POLLIN },
            { .fd = conn_fd, .events = POLLIN | POLLRDHUP }
        };
        int rc = poll (fds, watch_conn ? 2 : 1,
                       remaining > INT_MAX ? INT_MAX : (int) remaining);
        if (rc < 0 && errno != EINTR) {
            return -1;
        }
        if (rc <= 0) {
            continue;
        }
        if (fds [0].revents) {
            return -1;
        }
        if (watch_conn && fds [1].revents) {
            if (fds [1].revents & (POLLHUP | POLLERR | POLLRDHUP | POLLNVAL)) {
                return -1;
            }
            //  Readable: either EOF (the client left) or a pipelined
            //  request. Peek to tell; for the latter stop watching the
            //  socket, since it would stay readable and spin this loop
            char byte;
            ssize_t got = recv (conn_fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
                return -1;
            }
            watch_conn = false;
        }
    }
}

static int
s_conn_fd (struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info (conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? info->connect_fd : -1;
}

static void
s_add_header (void *ctx, const char *name, const char *value)
{
    MHD_add_response_header ((struct MHD_Response *) ctx, name, value);
}

//  mock_request_header_fn over the request's connection
static const char *
s_request_header (void *ctx, const char *name)
{
    return MHD_lookup_connection_value ((struct MHD_Connection *) ctx,
                                        MHD_HEADER_KIND, name);
}

//  Queue a response built by the caller, adding the dialect's headers;
//  records the status for stats and logs. Takes the response.
static enum MHD_Result
s_queue (mock_server_t *server, struct MHD_Connection *conn,
         s_request_t *request, struct MHD_Response *response, int status,
         const mock_chat_t *chat, uint64_t serial, int retry_after_s)
{
    if (!response) {
        return MHD_NO;
    }
    mock_reply_info_t info = {
        .serial = serial, .status = status, .retry_after_s = retry_after_s,
        .processing_ms = s_elapsed_ms (&request->start), .chat = chat
    };
    request->dialect->headers (&info, s_add_header, response);
    if (retry_after_s >= 0) {
        char value [16];
        snprintf (value, sizeof (value), "%d", retry_after_s);
        MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER, value);
    }
    enum MHD_Result rc = MHD_queue_response (conn, (unsigned int) status, response);
    MHD_destroy_response (response);
    if (rc == MHD_YES) {
        request->answered = true;
        request->status = status;
        if (request->route == ROUTE_CHAT) {
            mock_stats_status (server->stats, status);
        }
    }
    return rc;
}

static struct MHD_Response *
s_text_response (char *text, const char *content_type)
{
    if (!text) {
        return NULL;
    }
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (text), text, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free (text);
        return NULL;
    }
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return response;
}

//  An error in the request's dialect. err->status must be set.
static enum MHD_Result
s_send_error (mock_server_t *server, struct MHD_Connection *conn,
              s_request_t *request, mock_error_t *err, const mock_chat_t *chat,
              uint64_t serial)
{
    const char *content_type = "application/json";
    char *body = request->dialect->error (err, &content_type);
    return s_queue (server, conn, request,
                    s_text_response (body, content_type), err->status,
                    chat, serial, err->retry_after_s);
}

//  The non-streamed answer; "malformed" cuts the JSON in half
static enum MHD_Result
s_send_reply (mock_server_t *server, struct MHD_Connection *conn,
              s_request_t *request, mock_chat_t *chat, const mock_plan_t *plan)
{
    char *body = request->dialect->reply (chat);
    if (body && plan->fault == MOCK_FAULT_MALFORMED) {
        body [strlen (body) / 2] = '\0';
    }
    return s_queue (server, conn, request,
                    s_text_response (body, "application/json"), 200,
                    chat, chat->serial, -1);
}

//  Answer a complete chat request. Returning MHD_NO closes the
//  connection without a response, which is exactly what "drop" needs.
static enum MHD_Result
s_chat (mock_server_t *server, struct MHD_Connection *conn,
        s_request_t *request, const char *url)
{
    mock_chat_t *chat = mock_chat_new ();
    if (!chat) {
        return MHD_NO;
    }
    chat->serial = atomic_fetch_add (&server->serial, 1) + 1;
    chat->created = (int64_t) time (NULL);

    mock_plan_t plan;
    plan.fault = MOCK_FAULT_NONE;
    plan.status = 0;
    plan.retry_after_s = -1;
    plan.drop_after = 0;
    plan.error_after = 0;
    plan.latency_ms = atomic_load (&server->latency_ms);
    plan.chunk_delay_ms = atomic_load (&server->chunk_delay_ms);
    plan.chunks = atomic_load (&server->chunks);
    plan.cached = -1;

    enum MHD_Result rc = MHD_NO;
    int conn_fd = s_conn_fd (conn);
    mock_error_t err;
    memset (&err, 0, sizeof (err));
    err.retry_after_s = -1;
    //  The provider's header checks (key, version) come before the body
    if (request->dialect->check
    &&  request->dialect->check (s_request_header, conn, &err) != 0) {
        if (plan.latency_ms > 0
        &&  mock_server_wait (server, conn_fd, plan.latency_ms) != 0) {
            goto done;
        }
        rc = s_send_error (server, conn, request, &err, NULL, chat->serial);
        goto done;
    }
    if (request->dialect->parse (url, request->body ? request->body : "",
                                 request->len, chat, &err) != 0) {
        //  A refused request still waits out the default latency: the
        //  real API's validation errors are not instant either
        if (plan.latency_ms > 0
        &&  mock_server_wait (server, conn_fd, plan.latency_ms) != 0) {
            goto done;
        }
        err.model = chat->model;
        rc = s_send_error (server, conn, request, &err, chat, chat->serial);
        goto done;
    }
    mock_faults_take (server->faults, &plan);
    mock_plan_merge (&plan, &chat->plan);
    if (mock_plan_is_fault (&plan)) {
        mock_stats_fault (server->stats);
    }
    if (plan.latency_ms > 0
    &&  mock_server_wait (server, conn_fd, plan.latency_ms) != 0) {
        goto done;
    }
    switch (plan.fault) {
        case MOCK_FAULT_HANG:
            mock_server_wait (server, conn_fd, MOCK_HANG_MAX_MS);
            goto done;
        case MOCK_FAULT_DROP:
            goto done;
        case MOCK_FAULT_STATUS:
        case MOCK_FAULT_QUOTA:
            err.status = plan.status;
            err.quota = plan.fault == MOCK_FAULT_QUOTA;
            err.retry_after_s = plan.retry_after_s;
            err.model = chat->model;
            rc = s_send_error (server, conn, request, &err, chat, chat->serial);
            goto done;
        default:
            break;
    }
    if (mock_chat_finish (chat, plan.chunks) != 0) {
        goto done;
    }
    mock_stats_tokens (server->stats, request->stats_handle,
                       (int64_t) (chat->prompt_words + chat->completion_words));
    if (chat->stream) {
        mock_stats_stream (server->stats);
        mock_stream_t *stream = mock_stream_new (server, request->dialect,
                                                 &chat, &plan, conn_fd);
        if (!stream) {
            goto done;
        }
        const mock_chat_t *view = mock_stream_chat (stream);
        struct MHD_Response *response = MHD_create_response_from_callback (
            MHD_SIZE_UNKNOWN, 16 * 1024, mock_stream_read, stream, mock_stream_free);
        if (!response) {
            mock_stream_free (stream);
            goto done;
        }
        MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                                 "text/event-stream; charset=utf-8");
        MHD_add_response_header (response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        if (plan.fault == MOCK_FAULT_ERROR_AFTER) {
            //  After its error event the stream ends normally and the
            //  connection is closed cleanly, not reused
            MHD_add_response_header (response, MHD_HTTP_HEADER_CONNECTION, "close");
        }
        rc = s_queue (server, conn, request, response, 200, view, view->serial, -1);
        goto done;
    }
    rc = s_send_reply (server, conn, request, chat, &plan);
done:
    mock_chat_destroy (&chat);
    return rc;
}

static enum MHD_Result
s_answer (mock_server_t *server, struct MHD_Connection *conn,
          s_request_t *request, const char *url, const char *method)
{
    if (request->too_big) {
        mock_error_t err = { .status = 413, .retry_after_s = -1 };
        return s_send_error (server, conn, request, &err, NULL, 0);
    }
    if (request->route == ROUTE_CHAT && request->refused_key) {
        //  Authentication comes before anything else, as at the real API.
        //  The whole key is quoted back, worse than the real API (which
        //  masks its middle), so that tests see the worker redact it.
        mock_error_t err = { .status = 401, .retry_after_s = -1 };
        snprintf (err.message, sizeof (err.message),
                  "Incorrect API key provided: %.400s.", request->refused_key);
        return s_send_error (server, conn, request, &err, NULL, 0);
    }
    if (request->route == ROUTE_CHAT) {
        return s_chat (server, conn, request, url);
    }
    if (request->route == ROUTE_CONTROL) {
        enum MHD_Result rc = mock_control_handle (server, conn, method, url,
                                                  request->body, request->len);
        request->answered = rc == MHD_YES;
        return rc;
    }
    //  A known chat path with the wrong method is a 405, anything else 404,
    //  both worded like the real API
    mock_error_t err = { .status = 404, .retry_after_s = -1 };
    for (int i = 0; s_dialects [i]; i++) {
        if (s_dialects [i]->match (url)) {
            err.status = 405;
        }
    }
    snprintf (err.message, sizeof (err.message), "%s (%.16s %.200s)",
              err.status == 405 ? "Invalid method for URL" : "Invalid URL",
              method, url);
    return s_send_error (server, conn, request, &err, NULL, 0);
}

//  Append upload data; past MOCK_BODY_MAX stop storing and remember to 413
static void
s_append (s_request_t *request, const char *data, size_t size)
{
    if (request->too_big) {
        return;
    }
    if (request->len + size > MOCK_BODY_MAX) {
        request->too_big = true;
        free (request->body);
        request->body = NULL;
        request->len = request->cap = 0;
        return;
    }
    if (request->len + size > request->cap) {
        size_t cap = request->cap ? request->cap : 4096;
        while (cap < request->len + size) {
            cap *= 2;
        }
        char *body = realloc (request->body, cap);
        if (!body) {
            request->too_big = true;    //  a refusal is the best we can do
            return;
        }
        request->body = body;
        request->cap = cap;
    }
    memcpy (request->body + request->len, data, size);
    request->len += size;
}

static s_request_t *
s_request_new (mock_server_t *server, struct MHD_Connection *conn,
               const char *url, const char *method)
{
    s_request_t *request = calloc (1, sizeof (*request));
    if (!request) {
        return NULL;
    }
    clock_gettime (CLOCK_MONOTONIC, &request->start);
    request->dialect = s_dialects [0];
    request->route = ROUTE_OTHER;
    if (strncmp (url, "/mock/", 6) == 0) {
        request->route = ROUTE_CONTROL;
    }
    else
    if (strcmp (method, "POST") == 0) {
        for (int i = 0; s_dialects [i]; i++) {
            if (s_dialects [i]->match (url)) {
                request->route = ROUTE_CHAT;
                request->dialect = s_dialects [i];
                break;
            }
        }
    }
    if (request->route == ROUTE_CHAT) {
        const char *auth = MHD_lookup_connection_value (conn, MHD_HEADER_KIND,
                                                        MHD_HTTP_HEADER_AUTHORIZATION);
        bool with_auth = auth && strncasecmp (auth, "Bearer ", 7) == 0;
        request->stats_handle = mock_stats_request (server->stats, with_auth,
                                                    mock_stats_now_ms ());
        //  The key, in whichever header the dialect's provider reads it
        const char *key = with_auth ? auth + 7 : NULL;
        static const char *key_headers [] = { "x-api-key", "api-key", "x-goog-api-key" };
        for (size_t i = 0; !key && i < sizeof (key_headers) / sizeof (key_headers [0]); i++) {
            key = MHD_lookup_connection_value (conn, MHD_HEADER_KIND, key_headers [i]);
        }
        if (mock_stats_key (server->stats, key)) {
            request->refused_key = strdup (key);
            if (!request->refused_key) {
                free (request);
                return NULL;
            }
        }
    }
    //  Refuse an announced oversized body before reading any of it
    const char *length = MHD_lookup_connection_value (conn, MHD_HEADER_KIND,
                                                      MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length && strtoull (length, NULL, 10) > MOCK_BODY_MAX) {
        request->too_big = true;
    }
    return request;
}

static enum MHD_Result
s_access (void *cls, struct MHD_Connection *conn, const char *url,
          const char *method, const char *version, const char *upload_data,
          size_t *upload_data_size, void **req_cls)
{
    mock_server_t *server = cls;
    s_request_t *request = *req_cls;
    if (!request) {
        request = s_request_new (server, conn, url, method);
        if (!request) {
            return MHD_NO;
        }
        *req_cls = request;
        if (request->too_big) {
            //  Answering now makes libmicrohttpd skip the body and close
            return s_answer (server, conn, request, url, method);
        }
        return MHD_YES;
    }
    if (request->answered) {
        *upload_data_size = 0;      //  discard the rest of a refused body
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        s_append (request, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    return s_answer (server, conn, request, url, method);
}

static void
s_completed (void *cls, struct MHD_Connection *conn, void **req_cls,
             enum MHD_RequestTerminationCode toe)
{
    mock_server_t *server = cls;
    s_request_t *request = *req_cls;
    if (!request) {
        return;
    }
    bool completed = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (request->route == ROUTE_CHAT) {
        mock_stats_done (server->stats, completed && request->answered);
    }
    if (server->verbose) {
        fprintf (stderr, "llmq-mock-provider: %s %d %ldms%s\n",
                 request->route == ROUTE_CHAT ? "chat"
               : request->route == ROUTE_CONTROL ? "control" : "other",
                 request->status, s_elapsed_ms (&request->start),
                 completed ? "" : " (connection closed)");
    }
    free (request->body);
    free (request->refused_key);
    free (request);
    *req_cls = NULL;
}

//  A client connected: counted, so that tests see keep-alive at work
static void
s_connection (void *cls, struct MHD_Connection *conn, void **socket_context,
              enum MHD_ConnectionNotificationCode toe)
{
    mock_server_t *server = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        mock_stats_connection (server->stats);
    }
}

//  --------------------------------------------------------------------------
//  Command line, daemon start and the "listening on" handshake

typedef struct {
    const char *host;           //  address to bind; default 127.0.0.1
    int port;                   //  0 = ephemeral
    const char *port_file;      //  write the bound port here, or NULL
    int latency_ms;             //  default delay before headers
    int chunk_delay_ms;         //  default delay between SSE events
    int chunks;                 //  default content pieces per stream
    int threads;                //  0 = thread per connection, else pool size
    bool quiet;                 //  no informational stderr output
    bool verbose;               //  one stderr line per request
    const char *reject_keys [MOCK_STATS_KEYS];  //  --reject-key KEY, repeatable
    int nreject_keys;
    const char *tls_cert;       //  PEM certificate (chain) file: serve HTTPS
    const char *tls_key;        //  PEM private key file of tls_cert
} s_options_t;

static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: llmq-mock-provider [options]\n"
        "An OpenAI-compatible mock LLM provider for llmq's tests.\n"
        "  --host ADDR           address to bind (default 127.0.0.1)\n"
        "  --port N              port (default 0 = ephemeral)\n"
        "  --port-file PATH      write the bound port to PATH (atomically)\n"
        "  --latency-ms N        delay before response headers (default 0)\n"
        "  --chunk-delay-ms N    delay between stream events (default 0)\n"
        "  --chunks N            content pieces per stream (default 8)\n"
        "  --threads N           0 = a thread per connection (default);\n"
        "                        N > 0 = epoll pool of N threads (delays\n"
        "                        then block the whole pool thread)\n"
        "  --quiet               no informational output on stderr\n"
        "  --verbose             log every request to stderr\n"
        "  --reject-key KEY      answer 401 to chat requests carrying API key\n"
        "                        KEY (repeatable, up to 32)\n"
        "  --tls-cert FILE       serve HTTPS with this PEM certificate (chain)\n"
        "  --tls-key FILE        and this PEM private key (both or neither)\n"
        "  --help                show this and exit\n"
        "See tests/mock/README.md for endpoints and [[mock:...]] directives.\n");
}

//  Parse a whole decimal integer option in [lo, hi], or complain
static int
s_option_int (const char *name, const char *text, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long value = strtol (text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < lo || value > hi) {
        fprintf (stderr, "llmq-mock-provider: --%s must be an integer from "
                 "%ld to %ld, not '%s'\n", name, lo, hi, text);
        return -1;
    }
    *out = (int) value;
    return 0;
}

//  Returns 0 to run, 1 after --help, 2 on a bad command line
static int
s_options_parse (s_options_t *options, int argc, char *argv [])
{
    static const struct option longs [] = {
        { "host",           required_argument, NULL, 'H' },
        { "port",           required_argument, NULL, 'p' },
        { "port-file",      required_argument, NULL, 'f' },
        { "latency-ms",     required_argument, NULL, 'l' },
        { "chunk-delay-ms", required_argument, NULL, 'd' },
        { "chunks",         required_argument, NULL, 'c' },
        { "threads",        required_argument, NULL, 't' },
        { "quiet",          no_argument,       NULL, 'q' },
        { "verbose",        no_argument,       NULL, 'v' },
        { "reject-key",     required_argument, NULL, 'k' },
        { "tls-cert",       required_argument, NULL, 'C' },
        { "tls-key",        required_argument, NULL, 'K' },
        { "help",           no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    *options = (s_options_t) { .host = "127.0.0.1", .chunks = 8 };
    int opt;
    int rc = 0;
    while (rc == 0 && (opt = getopt_long (argc, argv, "", longs, NULL)) != -1) {
        switch (opt) {
            case 'H': options->host = optarg; break;
            case 'f': options->port_file = optarg; break;
            case 'q': options->quiet = true; break;
            case 'v': options->verbose = true; break;
            case 'C': options->tls_cert = optarg; break;
            case 'K': options->tls_key = optarg; break;
            case 'k':
                if (options->nreject_keys == MOCK_STATS_KEYS || !*optarg) {
                    fprintf (stderr, "llmq-mock-provider: --reject-key: at most %d, "
                             "none empty\n", MOCK_STATS_KEYS);
                    rc = -1;
                    break;
                }
                options->reject_keys [options->nreject_keys++] = optarg;
                break;
            case 'p':
                rc = s_option_int ("port", optarg, 0, 65535, &options->port);
                break;
            case 'l':
                rc = s_option_int ("latency-ms", optarg, 0, MOCK_DELAY_MAX_MS,
                                   &options->latency_ms);
                break;
            case 'd':
                rc = s_option_int ("chunk-delay-ms", optarg, 0, MOCK_DELAY_MAX_MS,
                                   &options->chunk_delay_ms);
                break;
            case 'c':
                rc = s_option_int ("chunks", optarg, 1, MOCK_CHUNKS_MAX,
                                   &options->chunks);
                break;
            case 't':
                rc = s_option_int ("threads", optarg, 0, 1024, &options->threads);
                break;
            case 'h':
                s_usage (stdout);
                return 1;
            default:
                rc = -1;        //  getopt has already named the problem
                break;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf (stderr, "llmq-mock-provider: unexpected argument '%s'\n", argv [optind]);
        rc = -1;
    }
    if (rc == 0 && !options->tls_cert != !options->tls_key) {
        fprintf (stderr, "llmq-mock-provider: --tls-cert and --tls-key go together\n");
        rc = -1;
    }
    if (rc != 0) {
        fprintf (stderr, "Try 'llmq-mock-provider --help'.\n");
        return 2;
    }
    return 0;
}

//  The whole of a PEM file, NUL-terminated (libmicrohttpd takes them from
//  memory), or NULL after saying why
#define S_PEM_MAX   (1024 * 1024)

static char *
s_read_pem (const char *option, const char *path)
{
    FILE *file = fopen (path, "rb");
    char *text = file ? malloc (S_PEM_MAX + 1) : NULL;
    size_t len = text ? fread (text, 1, S_PEM_MAX, file) : 0;
    bool ok = text && !ferror (file) && len > 0 && len < S_PEM_MAX;
    int saved = errno;
    if (file) {
        fclose (file);
    }
    if (!ok) {
        fprintf (stderr, "llmq-mock-provider: --%s %s: %s\n", option, path,
                 !file ? strerror (saved) : !text ? "out of memory"
                 : len == 0 ? "empty" : "unreadable, or over 1 MiB");
        free (text);
        return NULL;
    }
    text [len] = '\0';
    return text;
}

static struct MHD_Daemon *
s_daemon_start (const s_options_t *options, mock_server_t *server,
                MHD_AccessHandlerCallback access,
                MHD_RequestCompletedCallback completed,
                const char *tls_cert, const char *tls_key)
{
    //  Resolve --host to exactly one address and bind only that: the mock
    //  must never be reachable from outside the machine by accident
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    struct addrinfo *found = NULL;
    int gai = getaddrinfo (options->host, NULL, &hints, &found);
    if (gai != 0) {
        fprintf (stderr, "llmq-mock-provider: cannot resolve --host '%s': %s\n",
                 options->host, gai_strerror (gai));
        return NULL;
    }
    struct sockaddr_storage addr;
    memset (&addr, 0, sizeof (addr));
    memcpy (&addr, found->ai_addr, found->ai_addrlen);
    bool ipv6 = found->ai_family == AF_INET6;
    freeaddrinfo (found);
    if (ipv6) {
        ((struct sockaddr_in6 *) &addr)->sin6_port = htons ((uint16_t) options->port);
    }
    else {
        ((struct sockaddr_in *) &addr)->sin_port = htons ((uint16_t) options->port);
    }
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD;
    if (options->threads == 0) {
        flags |= MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL;
    }
    else {
        flags |= MHD_USE_EPOLL;
    }
    if (ipv6) {
        flags |= MHD_USE_IPv6;
    }
    if (options->verbose) {
        flags |= MHD_USE_ERROR_LOG;
    }
    if (tls_cert) {
        flags |= MHD_USE_TLS;
    }
    //  An MHD_OPTION_END entry ends the array early: unused options are
    //  left out that way
    struct MHD_OptionItem pool [] = {
        { options->threads > 0 ? MHD_OPTION_THREAD_POOL_SIZE : MHD_OPTION_END,
          options->threads, NULL },
        { MHD_OPTION_END, 0, NULL }
    };
    struct MHD_OptionItem tls [] = {
        { tls_cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, (void *) tls_cert },
        { MHD_OPTION_HTTPS_MEM_KEY, 0, (void *) tls_key },
        { MHD_OPTION_END, 0, NULL }
    };
    struct MHD_Daemon *daemon = MHD_start_daemon (flags,
        (uint16_t) options->port, NULL, NULL, access, server,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
        MHD_OPTION_NOTIFY_COMPLETED, completed, server,
        MHD_OPTION_NOTIFY_CONNECTION, s_connection, server,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 4096,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int) 1024,
        MHD_OPTION_ARRAY, pool,
        MHD_OPTION_ARRAY, tls,
        MHD_OPTION_END);
    if (!daemon) {
        fprintf (stderr, "llmq-mock-provider: cannot listen on %s port %d "
                 "(in use, or not a local address?)%s\n", options->host, options->port,
                 tls_cert ? "; or libmicrohttpd refuses the certificate or key "
                 "(--verbose says why)" : "");
    }
    return daemon;
}

//  Print "listening on ADDR:PORT" and write the port file. The file is
//  written to a temporary name and renamed, so a test polling for it
//  never reads a half-written number.
static int
s_announce (const s_options_t *options, struct MHD_Daemon *daemon)
{
    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info (daemon, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_storage addr;
    socklen_t addr_len = sizeof (addr);
    if (!info || getsockname (info->listen_fd, (struct sockaddr *) &addr, &addr_len) != 0) {
        perror ("llmq-mock-provider: getsockname");
        return -1;
    }
    char host [INET6_ADDRSTRLEN];
    int port;
    if (addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) &addr;
        inet_ntop (AF_INET6, &in6->sin6_addr, host, sizeof (host));
        port = ntohs (in6->sin6_port);
        printf ("listening on [%s]:%d\n", host, port);
    }
    else {
        struct sockaddr_in *in4 = (struct sockaddr_in *) &addr;
        inet_ntop (AF_INET, &in4->sin_addr, host, sizeof (host));
        port = ntohs (in4->sin_port);
        printf ("listening on %s:%d\n", host, port);
    }
    fflush (stdout);
    if (options->port_file) {
        char temp [PATH_MAX];
        snprintf (temp, sizeof (temp), "%s.%ld.tmp", options->port_file, (long) getpid ());
        FILE *file = fopen (temp, "w");
        bool ok = file && fprintf (file, "%d\n", port) > 0;
        if (file && fclose (file) != 0) {
            ok = false;
        }
        if (!ok || rename (temp, options->port_file) != 0) {
            fprintf (stderr, "llmq-mock-provider: cannot write --port-file %s: %s\n",
                     options->port_file, strerror (errno));
            unlink (temp);
            return -1;
        }
    }
    if (!options->quiet) {
        fprintf (stderr, "llmq-mock-provider: serving %s on port %d (%s%s)\n",
                 s_dialects [0]->name, port, options->threads == 0
                 ? "a thread per connection" : "epoll thread pool",
                 options->tls_cert ? ", HTTPS" : "");
    }
    return 0;
}

//  The signal handler's only way to reach main: one write end of a pipe,
//  which is why this is the one piece of static mutable state
static int s_signal_fd = -1;

static void
s_on_signal (int signum)
{
    int saved = errno;
    if (write (s_signal_fd, "x", 1) < 0) {
        //  Pipe full means a stop is already pending: nothing to do
    }
    errno = saved;
}

int
main (int argc, char *argv [])
{
    s_options_t options;
    int rc = s_options_parse (&options, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    int stop_pipe [2];
    if (pipe (stop_pipe) != 0) {
        perror ("llmq-mock-provider: pipe");
        return 1;
    }
    fcntl (stop_pipe [0], F_SETFD, FD_CLOEXEC);
    fcntl (stop_pipe [1], F_SETFD, FD_CLOEXEC);
    fcntl (stop_pipe [1], F_SETFL, O_NONBLOCK);
    s_signal_fd = stop_pipe [1];
    struct sigaction action;
    memset (&action, 0, sizeof (action));
    action.sa_handler = s_on_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);
    signal (SIGPIPE, SIG_IGN);

    mock_server_t server;
    memset (&server, 0, sizeof (server));
    atomic_init (&server.latency_ms, options.latency_ms);
    atomic_init (&server.chunk_delay_ms, options.chunk_delay_ms);
    atomic_init (&server.chunks, options.chunks);
    atomic_init (&server.serial, 0);
    server.stop_fd = stop_pipe [0];
    server.verbose = options.verbose;
    server.stats = mock_stats_new ();
    server.faults = mock_faults_new ();
    int exit_code = 1;
    struct MHD_Daemon *daemon = NULL;
    char *tls_cert = NULL, *tls_key = NULL;
    if (options.tls_cert) {
        if (MHD_is_feature_supported (MHD_FEATURE_TLS) != MHD_YES) {
            fprintf (stderr, "llmq-mock-provider: --tls-cert: this libmicrohttpd was "
                     "built without TLS (GnuTLS)\n");
            goto cleanup;
        }
        tls_cert = s_read_pem ("tls-cert", options.tls_cert);
        tls_key = tls_cert ? s_read_pem ("tls-key", options.tls_key) : NULL;
        if (!tls_key) {
            goto cleanup;
        }
    }
    if (!server.stats || !server.faults) {
        fprintf (stderr, "llmq-mock-provider: out of memory\n");
        goto cleanup;
    }
    for (int i = 0; i < options.nreject_keys; i++) {
        if (mock_stats_reject_key (server.stats, options.reject_keys [i]) != 0) {
            fprintf (stderr, "llmq-mock-provider: out of memory\n");
            goto cleanup;
        }
    }
    daemon = s_daemon_start (&options, &server, s_access, s_completed, tls_cert, tls_key);
    if (!daemon) {
        goto cleanup;
    }
    if (s_announce (&options, daemon) != 0) {
        goto cleanup;
    }
    //  Sleep until a signal writes to the stop pipe
    struct pollfd stop = { .fd = stop_pipe [0], .events = POLLIN };
    while (poll (&stop, 1, -1) < 0 && errno == EINTR) {
        //  interrupted by the very signal that will make the pipe readable
    }
    exit_code = 0;

cleanup:
    //  Stopping joins every connection thread; the readable stop pipe has
    //  already woken any that were waiting
    if (daemon) {
        MHD_stop_daemon (daemon);
    }
    if (exit_code == 0 && !options.quiet) {
        json_t *stats = mock_stats_json (server.stats);
        char *text = stats ? json_dumps (stats, JSON_COMPACT) : NULL;
        fprintf (stderr, "llmq-mock-provider: stopped; %s\n", text ? text : "");
        free (text);
        json_decref (stats);
    }
    mock_stats_destroy (&server.stats);
    mock_faults_destroy (&server.faults);
    free (tls_cert);
    if (tls_key) {
        explicit_bzero (tls_key, strlen (tls_key));
        free (tls_key);
    }
    close (stop_pipe [0]);
    close (stop_pipe [1]);
    return exit_code;
}
