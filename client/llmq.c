/*  llmq.c -- the client library: one DEALER socket to one broker.

    How a handle talks to the broker
    --------------------------------
    Every request carries a correlation number (`corr`) that the broker
    echoes in its answer. Blocking calls take odd numbers (1, 3, 5 ...) and
    llmq_send() tickets even ones (2, 4, 6 ...), so an answer can be sorted
    without any table: an ACCEPTED or REJECTED with an even corr belongs to
    a llmq_send() and becomes an event; an answer with an odd corr that is
    not the call in progress is a late answer to a call that timed out, and
    is dropped.

    The broker also pushes messages nobody asked for just now: RESULT
    (corr 0) when a job we submitted with notify, or waited for, ends, and
    CHUNK for streamed jobs. A blocking call that reads such a push while it
    waits for its own answer keeps it in the handle's queue (client_queue.c)
    for llmq_next() / llmq_wait() / llmq_stream() to find later.

    Tickets say one more thing: 4k+2 for a send with notify, 4k+4 without,
    so the ACCEPTED of a notify send tells which ids to expect results for.

    Subscriptions live in the broker's memory only. `pending` holds the ids
    whose results this handle still expects to be pushed; a socket monitor
    (an inproc PAIR polled next to the DEALER, no thread) reports when the
    connection comes back after a drop, and the handle then sends one WAIT
    for all of them, so a broker restart loses nothing a caller waits for.

    A job's final result may be pushed more than once (the submit's notify
    and a later WAIT both subscribe this socket). `seen` remembers the ids
    of results already kept or handed out, so the copy is dropped. It is a
    direct-mapped table: a collision only forgets an id, which at worst lets
    one duplicate through. `muted` works the same way for streamed jobs
    whose caller stopped listening to their chunks.

    The library starts no thread of its own (libzmq's context has its I/O
    thread), prints nothing and never exits. Every wait is a zmq_poll with
    what remains of the call's timeout.
*/
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <zmq.h>

#include "llmq.h"
#include "codec.h"
#include "clock.h"
#include "client_queue.h"
#include "client_ids.h"

#define LLMQ_MAX_REPLY   (256u * 1024 * 1024)   /* largest message body we decode */
#define SEEN_SLOTS       4096                    /* power of two */
#define MUTED_SLOTS      256                     /* power of two */
#define RESUBSCRIBE_IDS  10000                   /* ids per WAIT after a reconnect */

#define S_STR(x) #x
#define S_XSTR(x) S_STR (x)

struct llmq {
    void    *ctx;               /* this handle's own ZeroMQ context */
    void    *sock;              /* DEALER connected to the broker's frontend */
    void    *monitor;           /* PAIR reading sock's connect events, or NULL */
    int      link_lost;         /* sock was disconnected since the last connect */
    char    *endpoint;          /* for error messages */
    uint64_t next_corr;         /* next blocking call's corr: odd */
    uint64_t tickets;           /* llmq_send() calls so far: tickets 4k+2 / 4k+4 */
    llmq_arena_t  *arena;       /* the last decoded message lives here */
    client_queue_t queue;       /* pushes and async answers not yet taken */
    client_ids_t   pending;     /* jobs whose result we expect to be pushed */
    uint64_t seen[SEEN_SLOTS];  /* ids of final results already kept or handed out */
    uint64_t muted[MUTED_SLOTS];/* streamed jobs whose chunks are unwanted */
    char     error[512];        /* llmq_last_error() */
};

/* ------------------------------------------------------------------ names */

int
llmq_version (void)
{
    return LLMQ_VERSION;
}

const char *
llmq_version_string (void)
{
    return S_XSTR (LLMQ_VERSION_MAJOR) "." S_XSTR (LLMQ_VERSION_MINOR) "." S_XSTR (LLMQ_VERSION_PATCH);
}

/*  llmq_strerror(), llmq_state_name(), llmq_priority_name() and
    llmq_priority_parse() live in common/names.c: the broker and workers
    use them too. */

/* ---------------------------------------------------------------- helpers */

static int
s_fail (llmq *h, int code, const char *fmt, ...) __attribute__((format (printf, 3, 4)));

/*  Record why the call failed and return its code. */
static int
s_fail (llmq *h, int code, const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    vsnprintf (h->error, sizeof (h->error), fmt, args);
    va_end (args);
    return code;
}

static int
s_is_final (int state)
{
    return state >= LLMQ_STATE_DONE && state <= LLMQ_STATE_DEAD;
}

/*  Deadlines are monotonic ms; -1 means none. */
static int64_t
s_deadline (int timeout_ms)
{
    return timeout_ms < 0 ? -1 : (int64_t) llmq_mono_ms () + timeout_ms;
}

static long
s_remaining (int64_t deadline)
{
    if (deadline < 0) {
        return -1;
    }
    int64_t left = deadline - (int64_t) llmq_mono_ms ();
    return left > 0 ? (long) left : 0;
}

static int
s_seen (const llmq *h, uint64_t id)
{
    return id != 0 && h->seen[id & (SEEN_SLOTS - 1)] == id;
}

static void
s_mark_seen (llmq *h, uint64_t id)
{
    h->seen[id & (SEEN_SLOTS - 1)] = id;
}

static int
s_muted (const llmq *h, uint64_t id)
{
    return id != 0 && h->muted[id & (MUTED_SLOTS - 1)] == id;
}

/*  An ERROR aimed at the call `corr` (or at nobody in particular). */
static int
s_is_error_for (const llmq_msg_t *m, uint64_t corr)
{
    return m->cmd == LLMQ_CMD_ERROR && (m->corr == 0 || m->corr == corr);
}

/*  The code a REJECTED/REPLY/ERROR carries; 0 from a refusal is a bug. */
static int
s_code (uint32_t code)
{
    return code == 0 ? LLMQ_ERR_INTERNAL : (int) code;
}

static int
s_fail_msg (llmq *h, const llmq_msg_t *m)
{
    int code = s_code (m->code);
    const char *reason = m->reason && *m->reason ? m->reason : llmq_strerror (code);
    return s_fail (h, code, "%s", reason);
}

/*  A refused SUBMIT of `njobs` jobs: name the offending one when the
    broker says which (and there is a choice). */
static int
s_fail_submit (llmq *h, const llmq_msg_t *m, size_t njobs)
{
    int code = s_code (m->code);
    const char *reason = m->reason && *m->reason ? m->reason : llmq_strerror (code);
    char hint[64] = "";
    if (m->cmd == LLMQ_CMD_REJECTED && m->retry_after_ms) {
        snprintf (hint, sizeof hint, " (retry after %llu ms)", (unsigned long long) m->retry_after_ms);
    }
    if (m->cmd == LLMQ_CMD_REJECTED && m->index >= 0 && njobs > 1) {
        return s_fail (h, code, "job %lld: %s%s", (long long) m->index, reason, hint);
    }
    return s_fail (h, code, "%s%s", reason, hint);
}

/* ----------------------------------------------------------------- socket */

/*  Send one message; wait for room in the send queue until `deadline`. */
static int
s_send (llmq *h, const llmq_msg_t *m, int64_t deadline)
{
    zmsg_t *msg = llmq_msg_encode (m);
    if (!msg) {
        return s_fail (h, LLMQ_ERR_NOMEM, "out of memory encoding %s", llmq_cmd_name (m->cmd));
    }
    int rc = LLMQ_OK;
    int first = 1;
    zframe_t *frame = zmsg_first (msg);
    while (frame && rc == LLMQ_OK) {
        zframe_t *next = zmsg_next (msg);
        int flags = ZMQ_DONTWAIT | (next ? ZMQ_SNDMORE : 0);
        while (zmq_send (h->sock, zframe_data (frame), zframe_size (frame), flags) == -1) {
            if (errno == EINTR) {
                continue;
            }
            if (errno != EAGAIN || !first) {
                rc = s_fail (h, LLMQ_ERR_CONNECT, "send to %s: %s", h->endpoint, zmq_strerror (errno));
                break;
            }
            /* The send queue is full: the broker is not reading. Only the
               first frame can meet this; the rest of a message follows it. */
            zmq_pollitem_t item = { h->sock, 0, ZMQ_POLLOUT, 0 };
            int n = zmq_poll (&item, 1, s_remaining (deadline));
            if (n == 0) {
                rc = s_fail (h, LLMQ_ERR_TIMEOUT, "send to %s: queue full, the broker is not reading",
                             h->endpoint);
                break;
            }
            if (n < 0 && errno != EINTR) {
                rc = s_fail (h, LLMQ_ERR_CONNECT, "send to %s: %s", h->endpoint, zmq_strerror (errno));
                break;
            }
        }
        first = 0;
        frame = next;
    }
    zmsg_destroy (&msg);
    return rc;
}

/*  After a reconnect: subscribe again to every job whose result we expect.
    Best effort: a full send queue only delays it to the next reconnect,
    and the caller's error text is kept. */
static void
s_resubscribe (llmq *h)
{
    if (h->pending.count == 0) {
        return;
    }
    uint64_t *ids = malloc (RESUBSCRIBE_IDS * sizeof (uint64_t));
    if (!ids) {
        return;
    }
    char saved[sizeof (h->error)];
    memcpy (saved, h->error, sizeof (saved));
    size_t cursor = 0, n;
    while ((n = client_ids_next (&h->pending, &cursor, ids, RESUBSCRIBE_IDS)) > 0) {
        llmq_msg_t req = { .cmd = LLMQ_CMD_WAIT, .corr = h->next_corr, .ids = ids, .nids = n };
        h->next_corr += 2;
        if (s_send (h, &req, s_deadline (0)) != LLMQ_OK) {
            break;
        }
    }
    memcpy (h->error, saved, sizeof (saved));
    free (ids);
}

/*  Read the socket monitor's events: a connect that follows a disconnect
    means a new session with the broker. */
static void
s_monitor_drain (llmq *h)
{
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init (&part);
        if (zmq_msg_recv (&part, h->monitor, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close (&part);
            return;
        }
        /* First frame: event number (16 bits) and value (32 bits); then
           the endpoint. */
        uint16_t event = 0;
        if (zmq_msg_size (&part) >= sizeof (event)) {
            memcpy (&event, zmq_msg_data (&part), sizeof (event));
        }
        int more = zmq_msg_more (&part);
        zmq_msg_close (&part);
        while (more) {
            zmq_msg_init (&part);
            if (zmq_msg_recv (&part, h->monitor, ZMQ_DONTWAIT) == -1) {
                more = 0;
            }
            else {
                more = zmq_msg_more (&part);
            }
            zmq_msg_close (&part);
        }
        if (event == ZMQ_EVENT_DISCONNECTED) {
            h->link_lost = 1;
        }
        else
        if (event == ZMQ_EVENT_CONNECTED && h->link_lost) {
            h->link_lost = 0;
            s_resubscribe (h);
        }
    }
}

static void
s_monitor_start (llmq *h)
{
    char addr[64];
    snprintf (addr, sizeof (addr), "inproc://llmq-monitor-%p", (void *) h);
    if (zmq_socket_monitor (h->sock, addr, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0) {
        return;                 /* no monitor: no resubscription, all else works */
    }
    h->monitor = zmq_socket (h->ctx, ZMQ_PAIR);
    int zero = 0;
    if (!h->monitor
        || zmq_setsockopt (h->monitor, ZMQ_LINGER, &zero, sizeof (zero)) != 0
        || zmq_connect (h->monitor, addr) != 0) {
        if (h->monitor) {
            zmq_close (h->monitor);
            h->monitor = NULL;
        }
        zmq_socket_monitor (h->sock, NULL, 0);
    }
}

static int s_recv_one (llmq *h, int64_t deadline, llmq_msg_t *m);

/*  Receive and decode one message before `deadline`. On LLMQ_OK `m` is
    valid until the next s_recv() (its strings live in h->arena). Returns
    LLMQ_ERR_TIMEOUT without setting the error text: callers know better
    what they were waiting for. A command this library does not know (a
    newer broker's) is skipped: new commands are a compatible change. */
static int
s_recv (llmq *h, int64_t deadline, llmq_msg_t *m)
{
    int rc;
    do {
        rc = s_recv_one (h, deadline, m);
    } while (rc == LLMQ_ERR_UNKNOWN_COMMAND);
    return rc;
}

static int
s_recv_one (llmq *h, int64_t deadline, llmq_msg_t *m)
{
    for (;;) {
        zmq_pollitem_t items[2] = { { h->sock, 0, ZMQ_POLLIN, 0 }, { h->monitor, 0, ZMQ_POLLIN, 0 } };
        int n = zmq_poll (items, h->monitor ? 2 : 1, s_remaining (deadline));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return s_fail (h, LLMQ_ERR_CONNECT, "receive from %s: %s", h->endpoint, zmq_strerror (errno));
        }
        if (n == 0) {
            return LLMQ_ERR_TIMEOUT;
        }
        if (h->monitor && (items[1].revents & ZMQ_POLLIN)) {
            s_monitor_drain (h);
        }
        if (items[0].revents & ZMQ_POLLIN) {
            break;
        }
    }
    /* A ZeroMQ message arrives whole: once the first part is readable, so
       are the others. */
    zmsg_t *msg = zmsg_new ();
    if (!msg) {
        return s_fail (h, LLMQ_ERR_NOMEM, "out of memory receiving");
    }
    int more = 1;
    while (more) {
        zmq_msg_t part;
        zmq_msg_init (&part);
        if (zmq_msg_recv (&part, h->sock, ZMQ_DONTWAIT) == -1) {
            int err = errno;
            zmq_msg_close (&part);
            if (err == EINTR) {
                continue;
            }
            zmsg_destroy (&msg);
            return s_fail (h, LLMQ_ERR_CONNECT, "receive from %s: %s", h->endpoint, zmq_strerror (err));
        }
        more = zmq_msg_more (&part);
        int rc = zmsg_addmem (msg, zmq_msg_data (&part), zmq_msg_size (&part));
        zmq_msg_close (&part);
        if (rc != 0) {
            zmsg_destroy (&msg);
            return s_fail (h, LLMQ_ERR_NOMEM, "out of memory receiving");
        }
    }
    llmq_arena_reset (h->arena);
    memset (m, 0, sizeof (*m));
    char why[256] = "";
    int rc = llmq_msg_decode (msg, LLMQ_MAX_REPLY, m, h->arena, why, sizeof (why));
    zmsg_destroy (&msg);
    if (rc == LLMQ_ERR_UNKNOWN_COMMAND) {
        return rc;              /* skipped by s_recv() */
    }
    if (rc != LLMQ_OK) {
        return s_fail (h, rc, "bad message from the broker at %s: %s", h->endpoint,
                       *why ? why : llmq_strerror (rc));
    }
    return LLMQ_OK;
}

/*  Keep a message that is not the answer the current call waits for:
    pushes and llmq_send() answers become events, the rest is dropped. */
static void
s_stash (llmq *h, const llmq_msg_t *m)
{
    int is_ticket = m->corr != 0 && (m->corr & 1) == 0;
    llmq_event *ev = NULL;
    switch (m->cmd) {
        case LLMQ_CMD_ACCEPTED:
            if (!is_ticket) {
                return;
            }
            if ((m->corr & 3) == 2) {       /* a send with notify */
                for (size_t i = 0; i < m->nids; i++) {
                    client_ids_add (&h->pending, m->ids[i]);
                }
            }
            ev = client_event_accepted (m->corr, m->ids, m->nids);
            break;
        case LLMQ_CMD_REJECTED:
        case LLMQ_CMD_ERROR:
            if (m->cmd == LLMQ_CMD_REJECTED && m->code == LLMQ_ERR_NOT_FOUND && m->id) {
                /* A WAIT for a job the broker no longer knows. */
                client_ids_remove (&h->pending, m->id);
            }
            if (!is_ticket) {
                return;
            }
            ev = client_event_rejected (m->corr, s_code (m->code), m->reason,
                                        (long) m->index, m->retry_after_ms);
            break;
        case LLMQ_CMD_CHUNK:
            if (s_muted (h, m->id)) {
                return;
            }
            ev = client_event_chunk (m->id, m->seq, m->text);
            break;
        case LLMQ_CMD_RESET:
            if (s_muted (h, m->id)) {
                return;
            }
            ev = client_event_reset (m->id, m->reason ? m->reason : "");
            break;
        case LLMQ_CMD_EVENT:
            ev = client_event_notice (m->json);
            break;
        case LLMQ_CMD_RESULT: {
            /* A RESULT with a corr answers a STATUS that timed out. */
            if (m->corr != 0 || m->nresults < 1 || !s_is_final (m->results[0].state)
                || s_seen (h, m->results[0].id)) {
                return;
            }
            llmq_result *res = client_result_new (&m->results[0]);
            if (res) {
                ev = client_event_result (res);
            }
            if (ev) {
                s_mark_seen (h, m->results[0].id);
                client_ids_remove (&h->pending, m->results[0].id);
            }
            break;
        }
        default:
            return;             /* late answers to calls that timed out */
    }
    if (!ev) {
        h->queue.dropped++;     /* out of memory: as if over the bound */
        return;
    }
    client_queue_push (&h->queue, ev);
}

/*  Wait for the answer to call `corr`, keeping everything else. A
    REJECTED or ERROR answer is returned as its code (`njobs`: jobs in the
    SUBMIT this answers, 0 for other commands). */
static int
s_await (llmq *h, uint64_t corr, int64_t deadline, llmq_msg_t *rep, size_t njobs)
{
    for (;;) {
        int rc = s_recv (h, deadline, rep);
        if (rc == LLMQ_ERR_TIMEOUT) {
            return s_fail (h, rc, "no answer from the broker at %s in time", h->endpoint);
        }
        if (rc != LLMQ_OK) {
            return rc;
        }
        if (s_is_error_for (rep, corr)) {
            return s_fail_msg (h, rep);
        }
        if (rep->corr == corr && rep->cmd != LLMQ_CMD_CHUNK) {
            if (rep->cmd != LLMQ_CMD_REJECTED) {
                return LLMQ_OK;
            }
            return njobs ? s_fail_submit (h, rep, njobs) : s_fail_msg (h, rep);
        }
        s_stash (h, rep);
    }
}

/*  Send a request and wait for its answer. */
static int
s_call (llmq *h, llmq_msg_t *req, int64_t deadline, llmq_msg_t *rep)
{
    req->corr = h->next_corr;
    h->next_corr += 2;
    int rc = s_send (h, req, deadline);
    if (rc != LLMQ_OK) {
        return rc;
    }
    return s_await (h, req->corr, deadline, rep, req->cmd == LLMQ_CMD_SUBMIT ? req->njobs : 0);
}

/*  The answer must be `cmd`. */
static int
s_expect (llmq *h, const llmq_msg_t *rep, int cmd)
{
    if (rep->cmd != cmd) {
        return s_fail (h, LLMQ_ERR_PROTOCOL, "broker answered %s where %s was expected",
                       llmq_cmd_name (rep->cmd), llmq_cmd_name (cmd));
    }
    return LLMQ_OK;
}

/* ------------------------------------------------------------- connection */

int
llmq_connect (const char *endpoint, int timeout_ms, llmq **out)
{
    if (!out) {
        return LLMQ_ERR_INVALID;
    }
    *out = NULL;
    if (!endpoint || !strstr (endpoint, "://")) {
        return LLMQ_ERR_INVALID;
    }
    llmq *h = calloc (1, sizeof (llmq));
    if (!h) {
        return LLMQ_ERR_NOMEM;
    }
    int rc = LLMQ_ERR_NOMEM;
    h->next_corr = 1;
    client_ids_init (&h->pending);
    client_queue_init (&h->queue, LLMQ_QUEUE_MAX_BYTES);
    h->endpoint = strdup (endpoint);
    h->arena = llmq_arena_new ();
    if (!h->endpoint || !h->arena) {
        goto failed;
    }
    rc = LLMQ_ERR_CONNECT;
    h->ctx = zmq_ctx_new ();
    if (!h->ctx) {
        goto failed;
    }
    h->sock = zmq_socket (h->ctx, ZMQ_DEALER);
    if (!h->sock) {
        goto failed;
    }
    /* Linger 0: closing a handle never waits for an absent broker.
       Receive HWM 0: the broker's pushes are never dropped on our side;
       the handle's own queue bounds what it keeps. */
    int zero = 0;
    zmq_setsockopt (h->sock, ZMQ_LINGER, &zero, sizeof (zero));
    zmq_setsockopt (h->sock, ZMQ_RCVHWM, &zero, sizeof (zero));
    /* ZMTP heartbeats (answered by libzmq itself, invisible to the broker's
       code) notice a broker that vanished without closing the connection,
       so the handle reconnects and subscribes again. */
    int ivl = 5000, ttl = 15000;
    zmq_setsockopt (h->sock, ZMQ_HEARTBEAT_IVL, &ivl, sizeof (ivl));
    zmq_setsockopt (h->sock, ZMQ_HEARTBEAT_TIMEOUT, &ttl, sizeof (ttl));
    s_monitor_start (h);
    if (zmq_connect (h->sock, endpoint) != 0) {
        int err = errno;
        rc = (err == EINVAL || err == EPROTONOSUPPORT || err == ENOCOMPATPROTO)
           ? LLMQ_ERR_INVALID : LLMQ_ERR_CONNECT;
        goto failed;
    }
    llmq_msg_t req = { .cmd = LLMQ_CMD_PING };
    llmq_msg_t rep;
    rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_PONG);
    }
    if (rc != LLMQ_OK) {
        goto failed;
    }
    *out = h;
    return LLMQ_OK;

failed:
    llmq_close (&h);
    return rc;
}

void
llmq_close (llmq **h_p)
{
    if (!h_p || !*h_p) {
        return;
    }
    llmq *h = *h_p;
    if (h->monitor) {
        zmq_socket_monitor (h->sock, NULL, 0);
        zmq_close (h->monitor);
    }
    if (h->sock) {
        zmq_close (h->sock);
    }
    if (h->ctx) {
        zmq_ctx_term (h->ctx);
    }
    client_queue_clear (&h->queue);
    client_ids_clear (&h->pending);
    llmq_arena_destroy (&h->arena);
    free (h->endpoint);
    free (h);
    *h_p = NULL;
}

const char *
llmq_last_error (const llmq *h)
{
    return h ? h->error : "";
}

/* ------------------------------------------------------------------- jobs */

/*  An object ("{ ... }", spaces around allowed) with a "messages" key. */
static bool
s_looks_like_chat (const char *body)
{
    const char *p = body;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') {
        p++;
    }
    size_t len = strlen (p);
    while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\n' || p[len - 1] == '\r')) {
        len--;
    }
    return len >= 2 && p[0] == '{' && p[len - 1] == '}' && strstr (p, "\"messages\"") != NULL;
}

/*  Check a public job and map it onto the wire struct (strings borrowed). */
static int
s_job_from (llmq *h, const llmq_job *in, size_t index, llmq_job_t *out)
{
    memset (out, 0, sizeof (*out));
    if (!in->model || !*in->model) {
        return s_fail (h, LLMQ_ERR_INVALID, "job %zu: model is required", index);
    }
    if (!in->body || !*in->body) {
        return s_fail (h, LLMQ_ERR_INVALID, "job %zu: body is required", index);
    }
    if (in->priority < LLMQ_PRIO_URGENT || in->priority > LLMQ_PRIO_LOW) {
        return s_fail (h, LLMQ_ERR_INVALID, "job %zu: priority %d is not 0-3", index, in->priority);
    }
    if (in->deadline_ms < 0) {
        return s_fail (h, LLMQ_ERR_INVALID, "job %zu: negative deadline", index);
    }
    if (in->cache_ttl_ms < -1) {
        return s_fail (h, LLMQ_ERR_INVALID, "job %zu: cache_ttl_ms %lld is not -1, 0 or a number of ms",
                       index, (long long) in->cache_ttl_ms);
    }
    /* A body that is not a chat request would only fail later, at a
       worker, after waiting its turn in the queue: refuse what is plainly
       not one now. Only the shape is checked (an object naming
       "messages"): a full JSON parse here cost more than the broker spends
       on the whole job, and the worker parses the body anyway and fails a
       malformed one as an invalid request. */
    if (!s_looks_like_chat (in->body)) {
        return s_fail (h, LLMQ_ERR_INVALID, "job %zu: body must be a JSON object with a \"messages\" array",
                       index);
    }
    out->model = in->model;
    out->body = in->body;
    out->idem_key = in->idempotency_key;
    out->user = in->user;
    out->org = in->org;
    out->batch_id = in->batch_id;
    out->custom_id = in->custom_id;
    out->meta = in->meta;
    out->priority = (uint8_t) in->priority;
    out->stream = in->stream != 0;
    out->restart = in->stream == LLMQ_STREAM_RESTART;
    out->max_attempts = in->max_attempts;
    out->cache_ttl_ms = in->cache_ttl_ms;
    if (in->deadline_ms > 0) {
        out->deadline_us = llmq_now_us () + (uint64_t) in->deadline_ms * 1000u;
    }
    return LLMQ_OK;
}

/*  Map n jobs; *wire is allocated (free it). */
static int
s_jobs_from (llmq *h, const llmq_job *jobs, size_t n, llmq_job_t **wire)
{
    *wire = NULL;
    if (n == 0 || !jobs) {
        return s_fail (h, LLMQ_ERR_INVALID, "no jobs");
    }
    if (n > LLMQ_MAX_BATCH) {
        return s_fail (h, LLMQ_ERR_TOO_LARGE, "%zu jobs in one message: at most %d",
                       n, LLMQ_MAX_BATCH);
    }
    llmq_job_t *out = calloc (n, sizeof (llmq_job_t));
    if (!out) {
        return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        int rc = s_job_from (h, &jobs[i], i, &out[i]);
        if (rc != LLMQ_OK) {
            free (out);
            return rc;
        }
    }
    *wire = out;
    return LLMQ_OK;
}

int
llmq_submit (llmq *h, const llmq_job *job, uint64_t *id, int timeout_ms)
{
    if (!h || !job || !id) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_submit: NULL argument") : LLMQ_ERR_INVALID;
    }
    *id = 0;
    llmq_job_t wire;
    int rc = s_job_from (h, job, 0, &wire);
    if (rc != LLMQ_OK) {
        return rc;
    }
    llmq_msg_t req = { .cmd = LLMQ_CMD_SUBMIT, .jobs = &wire, .njobs = 1, .notify = true };
    llmq_msg_t rep;
    rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_ACCEPTED);
    }
    if (rc == LLMQ_OK && rep.nids != 1) {
        rc = s_fail (h, LLMQ_ERR_PROTOCOL, "broker accepted 1 job with %zu ids", rep.nids);
    }
    if (rc == LLMQ_OK) {
        *id = rep.ids[0];
        client_ids_add (&h->pending, *id);
    }
    return rc;
}

int
llmq_submit_many (llmq *h, const llmq_job *jobs, size_t n, uint64_t *ids, int timeout_ms)
{
    if (!h || !ids) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_submit_many: NULL argument") : LLMQ_ERR_INVALID;
    }
    llmq_job_t *wire;
    int rc = s_jobs_from (h, jobs, n, &wire);
    if (rc != LLMQ_OK) {
        return rc;
    }
    llmq_msg_t req = { .cmd = LLMQ_CMD_SUBMIT, .jobs = wire, .njobs = n, .notify = false };
    llmq_msg_t rep;
    rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    free (wire);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_ACCEPTED);
    }
    if (rc == LLMQ_OK && rep.nids != n) {
        rc = s_fail (h, LLMQ_ERR_PROTOCOL, "broker accepted %zu jobs with %zu ids", n, rep.nids);
    }
    if (rc == LLMQ_OK) {
        memcpy (ids, rep.ids, n * sizeof (uint64_t));
    }
    return rc;
}

int
llmq_send (llmq *h, const llmq_job *jobs, size_t n, int notify, uint64_t *ticket)
{
    if (!h || !ticket) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_send: NULL argument") : LLMQ_ERR_INVALID;
    }
    *ticket = 0;
    llmq_job_t *wire;
    int rc = s_jobs_from (h, jobs, n, &wire);
    if (rc != LLMQ_OK) {
        return rc;
    }
    uint64_t next = h->tickets * 4 + (notify ? 2 : 4);
    llmq_msg_t req = { .cmd = LLMQ_CMD_SUBMIT, .corr = next,
                       .jobs = wire, .njobs = n, .notify = notify != 0 };
    /* No timeout to honour: a full send queue fails at once. */
    rc = s_send (h, &req, s_deadline (0));
    free (wire);
    if (rc == LLMQ_OK) {
        *ticket = next;
        h->tickets++;
    }
    return rc;
}

/* ---------------------------------------------------------------- results */

/*  Hand out a final result taken by llmq_wait()/llmq_stream(): the job's
    leftover chunks go too, since nobody will ask for them. */
static void
s_took_result (llmq *h, uint64_t id)
{
    s_mark_seen (h, id);
    client_ids_remove (&h->pending, id);
    client_queue_drop_chunks (&h->queue, id);
}

/*  Ask the broker to push job `id`'s result (and chunks) to this socket. */
static int
s_send_wait (llmq *h, uint64_t id, int64_t deadline, uint64_t *corr)
{
    uint64_t ids[1] = { id };
    llmq_msg_t req = { .cmd = LLMQ_CMD_WAIT, .corr = h->next_corr, .ids = ids, .nids = 1 };
    *corr = h->next_corr;
    h->next_corr += 2;
    return s_send (h, &req, deadline);
}

int
llmq_wait (llmq *h, uint64_t id, int timeout_ms, llmq_result **result)
{
    if (!h || !result) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_wait: NULL argument") : LLMQ_ERR_INVALID;
    }
    *result = NULL;
    llmq_event *ev = client_queue_take (&h->queue, id, 0);
    if (ev) {
        *result = ev->result;
        ev->result = NULL;
        llmq_event_free (&ev);
        s_took_result (h, id);
        return LLMQ_OK;
    }
    int64_t deadline = s_deadline (timeout_ms);
    if (client_ids_add (&h->pending, id) != 0) {
        return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
    }
    uint64_t corr;
    int rc = s_send_wait (h, id, deadline, &corr);
    if (rc != LLMQ_OK) {
        return rc;
    }
    llmq_msg_t m;
    for (;;) {
        rc = s_recv (h, deadline, &m);
        if (rc == LLMQ_ERR_TIMEOUT) {
            return s_fail (h, rc, "job %llu did not end in time", (unsigned long long) id);
        }
        if (rc != LLMQ_OK) {
            return rc;
        }
        if (m.cmd == LLMQ_CMD_RESULT && m.corr == 0 && m.nresults >= 1
            && m.results[0].id == id && s_is_final (m.results[0].state)) {
            *result = client_result_new (&m.results[0]);
            if (!*result) {
                return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
            }
            s_took_result (h, id);
            return LLMQ_OK;
        }
        if (s_is_error_for (&m, corr) || (m.cmd == LLMQ_CMD_REJECTED && m.corr == corr)
            || (m.cmd == LLMQ_CMD_REJECTED && m.code == LLMQ_ERR_NOT_FOUND && m.id == id)) {
            client_ids_remove (&h->pending, id);
            return s_fail_msg (h, &m);
        }
        s_stash (h, &m);
    }
}

/*  llmq_stream()'s view of its job's chunks. A RESET from the broker is
    passed on as text NULL. A chunk with seq 0 after others without a RESET
    is a new attempt the broker could not announce (it restarted): a job
    that allows restarts gets a RESET made up here, one that does not gets
    no more chunks (its result has the whole answer). Never text twice. */
typedef struct {
    llmq_chunk_fn *fn;
    void *arg;
    uint64_t id;
    bool restart;               /* the job allows restarts */
    bool received;              /* chunks of this attempt were handed out */
    bool muted;                 /* an unannounced new attempt: no more chunks */
} s_streamed_t;

/*  Returns 1 while the caller wants more. */
static int
s_streamed_reset (s_streamed_t *st)
{
    st->received = false;
    return st->fn (st->arg, st->id, 0, NULL) == 0;
}

static int
s_streamed_chunk (s_streamed_t *st, unsigned seq, const char *text)
{
    if (seq == 0 && st->received) {
        if (!st->restart) {
            st->muted = true;
        }
        else
        if (!s_streamed_reset (st)) {
            return 0;
        }
    }
    if (st->muted) {
        return 1;
    }
    st->received = true;
    return st->fn (st->arg, st->id, seq, text) == 0;
}

int
llmq_stream (llmq *h, const llmq_job *job, llmq_chunk_fn *fn, void *arg,
             uint64_t *id, int timeout_ms, llmq_result **result)
{
    if (id) {
        *id = 0;
    }
    if (result) {
        *result = NULL;
    }
    if (!h || !job || !fn) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_stream: NULL argument") : LLMQ_ERR_INVALID;
    }
    llmq_job streamed = *job;
    streamed.stream = job->stream == LLMQ_STREAM_RESTART ? LLMQ_STREAM_RESTART : 1;
    llmq_job_t wire;
    int rc = s_job_from (h, &streamed, 0, &wire);
    if (rc != LLMQ_OK) {
        return rc;
    }
    int64_t deadline = s_deadline (timeout_ms);
    llmq_msg_t req = { .cmd = LLMQ_CMD_SUBMIT, .jobs = &wire, .njobs = 1, .notify = true };
    llmq_msg_t m;
    rc = s_call (h, &req, deadline, &m);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &m, LLMQ_CMD_ACCEPTED);
    }
    if (rc == LLMQ_OK && m.nids != 1) {
        rc = s_fail (h, LLMQ_ERR_PROTOCOL, "broker accepted 1 job with %zu ids", m.nids);
    }
    if (rc != LLMQ_OK) {
        return rc;
    }
    uint64_t jid = m.ids[0];
    if (id) {
        *id = jid;
    }
    client_ids_add (&h->pending, jid);
    /* An idempotency key that names an existing job: that job may have
       ended already, and the notify of this submit then brings nothing. */
    uint64_t wait_corr = 0;
    if (m.dups && m.dups[0]) {
        rc = s_send_wait (h, jid, deadline, &wait_corr);
        if (rc != LLMQ_OK) {
            return rc;
        }
    }
    llmq_result *res = NULL;
    int listening = 1;
    s_streamed_t st = { fn, arg, jid, streamed.stream == LLMQ_STREAM_RESTART, 0, 0 };
    /* First what arrived before the ACCEPTED was read, then the socket. */
    llmq_event *ev;
    while (!res && (ev = client_queue_take (&h->queue, jid, 1))) {
        if (ev->type == LLMQ_EV_CHUNK) {
            listening = s_streamed_chunk (&st, ev->seq, ev->text);
        }
        else
        if (ev->type == LLMQ_EV_RESET) {
            listening = s_streamed_reset (&st);
        }
        else {
            res = ev->result;
            ev->result = NULL;
        }
        llmq_event_free (&ev);
        if (!listening) {
            break;
        }
    }
    while (!res && listening) {
        rc = s_recv (h, deadline, &m);
        if (rc == LLMQ_ERR_TIMEOUT) {
            return s_fail (h, rc, "job %llu did not end in time", (unsigned long long) jid);
        }
        if (rc != LLMQ_OK) {
            return rc;
        }
        if (m.cmd == LLMQ_CMD_CHUNK && m.id == jid) {
            listening = s_streamed_chunk (&st, m.seq, m.text ? m.text : "");
        }
        else
        if (m.cmd == LLMQ_CMD_RESET && m.id == jid) {
            listening = s_streamed_reset (&st);
        }
        else
        if (m.cmd == LLMQ_CMD_RESULT && m.corr == 0 && m.nresults >= 1
            && m.results[0].id == jid && s_is_final (m.results[0].state)) {
            res = client_result_new (&m.results[0]);
            if (!res) {
                return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
            }
        }
        else
        if (wait_corr && (s_is_error_for (&m, wait_corr)
                          || (m.cmd == LLMQ_CMD_REJECTED && m.corr == wait_corr))) {
            return s_fail_msg (h, &m);
        }
        else
        if (s_is_error_for (&m, 0)) {
            return s_fail_msg (h, &m);
        }
        else {
            s_stash (h, &m);
        }
    }
    if (!res) {
        /* The caller stopped listening: the job goes on, its chunks are
           not wanted any more, its result can still be waited for. */
        h->muted[jid & (MUTED_SLOTS - 1)] = jid;
        client_queue_drop_chunks (&h->queue, jid);
        return LLMQ_OK;
    }
    s_took_result (h, jid);
    if (result) {
        *result = res;
    }
    else {
        llmq_result_free (&res);
    }
    return LLMQ_OK;
}

int
llmq_cancel (llmq *h, uint64_t id, int timeout_ms)
{
    if (!h) {
        return LLMQ_ERR_INVALID;
    }
    llmq_msg_t req = { .cmd = LLMQ_CMD_CANCEL, .id = id };
    llmq_msg_t rep;
    int rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_REPLY);
    }
    if (rc == LLMQ_OK && rep.code != LLMQ_OK) {
        rc = s_fail_msg (h, &rep);
    }
    return rc;
}

int
llmq_status (llmq *h, uint64_t id, int timeout_ms, llmq_result **result)
{
    if (!h || !result) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_status: NULL argument") : LLMQ_ERR_INVALID;
    }
    *result = NULL;
    llmq_msg_t req = { .cmd = LLMQ_CMD_STATUS, .id = id };
    llmq_msg_t rep;
    int rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_RESULT);
    }
    if (rc == LLMQ_OK && rep.nresults < 1) {
        rc = s_fail (h, LLMQ_ERR_PROTOCOL, "broker answered STATUS with no result");
    }
    if (rc == LLMQ_OK) {
        *result = client_result_new (&rep.results[0]);
        if (!*result) {
            rc = s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
        }
    }
    return rc;
}

int
llmq_fetch (llmq *h, const char *batch_id, uint64_t after, unsigned limit,
            llmq_result ***results, size_t *n, uint64_t *next, int *more,
            char **counts_json, int timeout_ms)
{
    if (results) {
        *results = NULL;
    }
    if (n) {
        *n = 0;
    }
    if (counts_json) {
        *counts_json = NULL;
    }
    if (!h || !results || !n || !next || !more) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_fetch: NULL argument") : LLMQ_ERR_INVALID;
    }
    *next = after;
    *more = 0;
    if (!batch_id || !*batch_id) {
        return s_fail (h, LLMQ_ERR_INVALID, "llmq_fetch: batch id is required");
    }
    if (limit > LLMQ_MAX_BATCH) {
        limit = LLMQ_MAX_BATCH;
    }
    llmq_msg_t req = { .cmd = LLMQ_CMD_FETCH, .batch_id = batch_id, .after = after, .limit = limit };
    llmq_msg_t rep;
    int rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_RESULTS);
    }
    if (rc != LLMQ_OK) {
        return rc;
    }
    llmq_result **list = NULL;
    char *counts = NULL;
    if (rep.nresults > 0) {
        list = calloc (rep.nresults, sizeof (llmq_result *));
        if (!list) {
            return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
        }
        for (size_t i = 0; i < rep.nresults; i++) {
            list[i] = client_result_new (&rep.results[i]);
            if (!list[i]) {
                llmq_results_free (list, i);
                return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
            }
        }
    }
    if (counts_json) {
        counts = strdup (rep.json ? rep.json : "{}");
        if (!counts) {
            llmq_results_free (list, rep.nresults);
            return s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
        }
        *counts_json = counts;
    }
    *results = list;
    *n = rep.nresults;
    *next = rep.after;
    *more = rep.more ? 1 : 0;
    return LLMQ_OK;
}

int
llmq_stats (llmq *h, char **json, int timeout_ms)
{
    if (json) {
        *json = NULL;
    }
    if (!h || !json) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_stats: NULL argument") : LLMQ_ERR_INVALID;
    }
    llmq_msg_t req = { .cmd = LLMQ_CMD_STATS };
    llmq_msg_t rep;
    int rc = s_call (h, &req, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_STATS_REP);
    }
    if (rc == LLMQ_OK) {
        *json = strdup (rep.json ? rep.json : "{}");
        if (!*json) {
            rc = s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
        }
    }
    return rc;
}

int
llmq_admin (llmq *h, const char *request_json, char **reply_json, int timeout_ms)
{
    if (reply_json) {
        *reply_json = NULL;
    }
    if (!h || !request_json || !reply_json) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_admin: NULL argument") : LLMQ_ERR_INVALID;
    }
    /* Parsed here only to refuse what the broker would refuse anyway,
       without a round trip; the text goes as given. */
    json_error_t jerr;
    json_t *req = json_loads (request_json, 0, &jerr);
    int is_op = json_is_object (req) && json_is_string (json_object_get (req, "op"));
    json_decref (req);
    if (!is_op) {
        return s_fail (h, LLMQ_ERR_INVALID, "llmq_admin: the request must be a JSON object with an \"op\"");
    }
    llmq_msg_t msg = { .cmd = LLMQ_CMD_ADMIN, .json = request_json };
    llmq_msg_t rep;
    int rc = s_call (h, &msg, s_deadline (timeout_ms), &rep);
    if (rc == LLMQ_OK) {
        rc = s_expect (h, &rep, LLMQ_CMD_ADMIN_REP);
    }
    if (rc == LLMQ_OK) {
        *reply_json = strdup (rep.json ? rep.json : "{}");
        if (!*reply_json) {
            rc = s_fail (h, LLMQ_ERR_NOMEM, "out of memory");
        }
    }
    return rc;
}

int
llmq_next (llmq *h, int timeout_ms, llmq_event **ev)
{
    if (!h || !ev) {
        return h ? s_fail (h, LLMQ_ERR_INVALID, "llmq_next: NULL argument") : LLMQ_ERR_INVALID;
    }
    *ev = NULL;
    int64_t deadline = s_deadline (timeout_ms);
    for (;;) {
        if (h->queue.dropped) {
            /* Not a failure of this call; the text says what was lost. */
            s_fail (h, LLMQ_OK, "%llu pushed chunks or results were dropped: "
                    "the handle's queue was over %u bytes",
                    (unsigned long long) h->queue.dropped, (unsigned) h->queue.max_bytes);
            h->queue.dropped = 0;
        }
        *ev = client_queue_pop (&h->queue);
        if (*ev) {
            return LLMQ_OK;
        }
        llmq_msg_t m;
        int rc = s_recv (h, deadline, &m);
        if (rc == LLMQ_ERR_TIMEOUT) {
            return s_fail (h, rc, "no event in time");
        }
        if (rc != LLMQ_OK) {
            return rc;
        }
        if (s_is_error_for (&m, 0)) {
            return s_fail_msg (h, &m);
        }
        s_stash (h, &m);
    }
}

/* ------------------------------------------------------------------ frees */

void
llmq_result_free (llmq_result **result)
{
    if (result && *result) {
        free (*result);
        *result = NULL;
    }
}

void
llmq_results_free (llmq_result **results, size_t n)
{
    if (!results) {
        return;
    }
    for (size_t i = 0; i < n; i++) {
        free (results[i]);
    }
    free (results);
}

void
llmq_event_free (llmq_event **ev)
{
    if (ev && *ev) {
        free ((*ev)->result);
        free (*ev);
        *ev = NULL;
    }
}

void
llmq_free (void *p)
{
    free (p);
}
