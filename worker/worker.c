/*  worker.c -- the worker's event loop. See worker.h.

    One thread, one zmq_poll. The poll set is the DEALER socket, the stop
    pipe, and whatever sockets libcurl asked us to watch (through
    CURLMOPT_SOCKETFUNCTION); the poll timeout is the nearest of curl's
    timer (CURLMOPT_TIMERFUNCTION), the next heartbeat and the broker's
    liveness deadline. Each turn: tell curl which of its sockets are ready,
    collect finished transfers, drain every message the broker sent (the
    DEALER is drained with its ZMQ_EVENTS flag, never trusted to wake us
    once per message), then heartbeat or reconnect as due.

    Slots: the worker owns `nslots` calls (call.c), each with its own curl
    easy handle, reused from job to job so that connections, TLS sessions
    and DNS answers (shared through one CURLSH) stay warm. Free calls sit
    on a stack. The broker sends at most as many DISPATCHes as we granted
    credit for; a DISPATCH with no free slot is a broker bug, answered
    FAILED(INTERNAL) without granting the credit back.

    Reconnect: a broker silent for liveness x heartbeat is presumed gone.
    We close the socket and open a new DEALER (new identity), and say HELLO
    with the slots free at that moment. Calls in flight go on; their
    DONE/FAILED then go out on the new socket, each granting its slot back,
    so the broker's credit for us adds up to `nslots` again. An ERROR
    UNKNOWN_WORKER (the broker restarted and does not know this identity)
    is answered the same way on the same socket: at once the first time,
    then at most once per heartbeat interval until the broker shows it
    knows us (one restart makes it refuse every message we had in flight
    to it, and a HELLO for each would grant our slots many times over).
*/
#include "worker.h"
#include "worker_int.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

/*  Most messages read from the broker in one loop turn, so that curl's
    sockets are serviced even under a flood. */
#define S_MAX_DRAIN 4096

/*  --- sending ----------------------------------------------------------- */

void
llmq_worker_send (llmq_worker_t *w, const llmq_msg_t *m)
{
    if (!w->sock) {
        return;
    }
    zmsg_t *z = llmq_msg_encode (m);
    if (!z) {
        llmq_error ("cannot encode %s: out of memory", llmq_cmd_name (m->cmd));
        return;
    }
    void *handle = zsock_resolve (w->sock);
    size_t nframes = zmsg_size (z);
    size_t i = 0;
    for (zframe_t *f = zmsg_first (z); f; f = zmsg_next (z), i++) {
        int flags = ZMQ_DONTWAIT | (i + 1 < nframes ? ZMQ_SNDMORE : 0);
        if (zmq_send (handle, zframe_data (f), zframe_size (f), flags) < 0) {
            /*  Only the first frame can fail (a multipart message is taken
                whole once its first part is): the queue to the broker is
                full, so it has been away a long time. Its lease timer
                covers what we drop. */
            llmq_warn ("dropped %s for the broker: %s", llmq_cmd_name (m->cmd), zmq_strerror (errno));
            break;
        }
    }
    zmsg_destroy (&z);
    w->last_send_ms = llmq_mono_ms ();
}

void
llmq_worker_flush_done (llmq_worker_t *w)
{
    if (w->nbatch == 0) {
        return;
    }
    llmq_msg_t m = { .cmd = LLMQ_CMD_DONE, .id = w->batch[0].id, .lease = w->batch[0].lease,
                     .slots = (uint32_t) w->nbatch, .results = w->batch, .nresults = w->nbatch };
    llmq_worker_send (w, &m);
    w->nbatch = 0;
    llmq_arena_reset (w->batch_arena);
}

static void
s_send_hello (llmq_worker_t *w)
{
    llmq_msg_t m = { .cmd = LLMQ_CMD_HELLO, .slots = w->nfree, .host = w->host,
                     .pid = (uint32_t) getpid (), .version = LLMQ_WORKER_VERSION };
    llmq_worker_send (w, &m);
    w->hello_ms = llmq_mono_ms ();
    w->hello_acked = false;
}

/*  FAILED for a job that never got a slot (or never reached a provider). */
static void
s_refuse (llmq_worker_t *w, uint64_t id, uint64_t lease, uint32_t slots, int ec,
          const char *deployment, const char *reason)
{
    llmq_result_t res = { .id = id, .error_class = (uint8_t) ec, .error = reason,
                          .deployment = deployment, .rl_requests = -1, .rl_tokens = -1 };
    llmq_msg_t m = { .cmd = LLMQ_CMD_FAILED, .id = id, .lease = lease, .slots = slots,
                     .results = &res, .nresults = 1 };
    llmq_worker_send (w, &m);
    w->nfailed++;
}

/*  --- socket ------------------------------------------------------------ */

static int
s_connect (llmq_worker_t *w)
{
    zsock_destroy (&w->sock);
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    if (!sock) {
        llmq_error ("cannot create a socket: %s", zmq_strerror (errno));
        return -1;
    }
    zsock_set_linger (sock, 0);
    zsock_set_sndhwm (sock, 100000);
    zsock_set_rcvhwm (sock, 100000);
    if (zsock_connect (sock, "%s", w->endpoint) != 0) {
        llmq_error ("cannot connect to %s: %s", w->endpoint, zmq_strerror (errno));
        zsock_destroy (&sock);
        return -1;
    }
    w->sock = sock;
    uint64_t now = llmq_mono_ms ();
    w->last_recv_ms = now;
    s_send_hello (w);
    return 0;
}

/*  --- broker messages -------------------------------------------------- */

static void
s_on_dispatch (llmq_worker_t *w, const llmq_msg_t *m)
{
    if (m->njobs < 1) {
        llmq_warn ("DISPATCH without a job: ignored");
        return;
    }
    const llmq_job_t *job = &m->jobs[0];
    const char *depname = m->deployment ? m->deployment : "";
    if (w->nfree == 0) {
        llmq_warn ("DISPATCH of job %llu beyond the credit granted (%u slots busy): refused",
                   (unsigned long long) job->id, w->nslots);
        s_refuse (w, job->id, job->lease, 0, LLMQ_EC_INTERNAL, depname, "worker has no free slot");
        return;
    }
    const llmq_deployment_t *dep = llmq_config_deployment (w->cfg, depname);
    if (!dep) {
        llmq_debug ("job %llu: unknown deployment '%s'", (unsigned long long) job->id, depname);
        s_refuse (w, job->id, job->lease, 1, LLMQ_EC_INTERNAL, depname,
                  "deployment not in this worker's configuration");
        return;
    }
    const llmq_provider_t *prov = llmq_provider_find (dep->provider);
    if (!prov) {
        s_refuse (w, job->id, job->lease, 1, LLMQ_EC_INTERNAL, depname,
                  "deployment's provider is not supported by this worker");
        return;
    }
    if (prov->answer) {
        llmq_call_answer (w, prov, dep, job);
    }
    else {
        llmq_call_start (w, prov, dep, job, m->timeout_ms);
    }
}

static void
s_on_abort (llmq_worker_t *w, const llmq_msg_t *m)
{
    llmq_call_t *c = llmq_call_find (w, m->id, m->lease);
    if (!c) {
        /*  Already finished (its DONE/FAILED crossed the ABORT) or never ours. */
        llmq_debug ("ABORT of job %llu lease %llu: not running here",
                    (unsigned long long) m->id, (unsigned long long) m->lease);
        return;
    }
    llmq_call_abort (c, LLMQ_EC_CANCELLED, "cancelled", true);
}

static void
s_on_message (llmq_worker_t *w, zmsg_t *z)
{
    llmq_arena_reset (w->arena);
    llmq_msg_t m;
    char why[256];
    int rc = llmq_msg_decode (z, w->max_message, &m, w->arena, why, sizeof why);
    if (rc != LLMQ_OK) {
        /*  Tell the peer what was wrong, as the broker does: the protocol
            answers every malformed message it can with ERROR. */
        llmq_warn ("bad message from the broker (code %d): %s", rc, why);
        llmq_msg_t e = { .cmd = LLMQ_CMD_ERROR, .code = (uint32_t) rc, .reason = why };
        llmq_worker_send (w, &e);
        return;
    }
    if (m.cmd != LLMQ_CMD_ERROR) {
        w->hello_acked = true;      /* it talks to us: it knows us */
    }
    switch (m.cmd) {
        case LLMQ_CMD_DISPATCH:
            s_on_dispatch (w, &m);
            break;
        case LLMQ_CMD_ABORT:
            s_on_abort (w, &m);
            break;
        case LLMQ_CMD_HEARTBEAT:
            break;
        case LLMQ_CMD_ERROR:
            if (m.code == LLMQ_ERR_UNKNOWN_WORKER) {
                /*  Once the broker showed it knew us, the first refusal
                    means it forgot us: HELLO at once. Until it shows it
                    knows us again, the refusals of what we sent before
                    that HELLO are still arriving: one HELLO per heartbeat
                    interval at most. */
                uint64_t now = llmq_mono_ms ();
                if (w->hello_acked || now - w->hello_ms >= w->heartbeat_ms) {
                    llmq_info ("broker does not know this worker (restarted?): HELLO again");
                    s_send_hello (w);
                }
            }
            else {
                llmq_warn ("broker error %u: %s", m.code, m.reason ? m.reason : "");
            }
            break;
        default: {
            llmq_warn ("%s is not a broker-to-worker command: refused", llmq_cmd_name (m.cmd));
            llmq_msg_t e = { .cmd = LLMQ_CMD_ERROR, .code = LLMQ_ERR_UNKNOWN_COMMAND,
                             .reason = "command not accepted by a worker" };
            llmq_worker_send (w, &e);
            break;
        }
    }
}

static void
s_drain (llmq_worker_t *w)
{
    for (int i = 0; i < S_MAX_DRAIN && w->sock; i++) {
        if (!(zsock_events (w->sock) & ZMQ_POLLIN)) {
            break;
        }
        zmsg_t *z = zmsg_recv (w->sock);
        if (!z) {
            break;
        }
        w->last_recv_ms = llmq_mono_ms ();
        s_on_message (w, z);
        zmsg_destroy (&z);
    }
}

/*  --- the loop --------------------------------------------------------- */

llmq_worker_t *
llmq_worker_new (const llmq_config_t *cfg, llmq_keyring_t *const *rings,
                 const char *endpoint, uint32_t slots)
{
    llmq_worker_t *w = calloc (1, sizeof *w);
    if (!w) {
        return NULL;
    }
    w->cfg = cfg;
    w->rings = rings;
    w->pipe[0] = w->pipe[1] = -1;
    w->endpoint = strdup (endpoint);
    w->heartbeat_ms = cfg->heartbeat_ms ? cfg->heartbeat_ms : 1000;
    w->liveness = cfg->liveness ? cfg->liveness : 3;
    w->max_message = cfg->max_message ? cfg->max_message : 64u * 1024 * 1024;
    w->arena = llmq_arena_new ();
    w->batch_arena = llmq_arena_new ();
    if (gethostname (w->host, sizeof w->host - 1) != 0) {
        snprintf (w->host, sizeof w->host, "unknown");
    }
    if (!w->endpoint || !w->arena || pipe (w->pipe) != 0
        || fcntl (w->pipe[0], F_SETFL, O_NONBLOCK) != 0
        || fcntl (w->pipe[1], F_SETFL, O_NONBLOCK) != 0
        || llmq_calls_init (w, slots) != 0) {
        llmq_error ("cannot set up the worker: %s", errno ? strerror (errno) : "out of memory");
        llmq_worker_destroy (&w);
        return NULL;
    }
    return w;
}

void
llmq_worker_destroy (llmq_worker_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    llmq_worker_t *w = *self_p;
    llmq_calls_fini (w);
    zsock_destroy (&w->sock);
    llmq_arena_destroy (&w->arena);
    llmq_arena_destroy (&w->batch_arena);
    free (w->batch);
    for (int i = 0; i < 2; i++) {
        if (w->pipe[i] >= 0) {
            close (w->pipe[i]);
        }
    }
    free (w->endpoint);
    free (w);
    *self_p = NULL;
}

void
llmq_worker_stop (llmq_worker_t *self)
{
    if (self && self->pipe[1] >= 0) {
        char c = 1;
        ssize_t rc = write (self->pipe[1], &c, 1);
        (void) rc;              /* a full pipe already holds a stop request */
    }
}

/*  The figures a HEARTBEAT carries (docs/protocol.md, section 7): totals
    since start as a JSON object, or NULL on out of memory. Caller frees. */
static char *
s_figures (llmq_worker_t *w)
{
    struct rusage ru;
    double cpu = 0;
    if (getrusage (RUSAGE_SELF, &ru) == 0) {
        cpu = (double) ru.ru_utime.tv_sec + (double) ru.ru_utime.tv_usec / 1e6
            + (double) ru.ru_stime.tv_sec + (double) ru.ru_stime.tv_usec / 1e6;
    }
    json_t *providers = json_object ();
    for (size_t i = 0; providers && w->deps && i < w->cfg->ndeployments; i++) {
        const char *name = w->cfg->deployments[i].provider ? w->cfg->deployments[i].provider : "";
        json_t *n = json_object_get (providers, name);
        json_int_t prev = n ? json_integer_value (n) : 0;
        json_object_set_new (providers, name, json_integer (prev + (json_int_t) w->deps[i].calls));
    }
    json_t *root = json_object ();
    json_object_set_new (root, "calls", json_integer ((json_int_t) w->ncalls));
    json_object_set_new (root, "calls_failed", json_integer ((json_int_t) w->ncalls_failed));
    json_object_set_new (root, "cpu_seconds", json_real (cpu));
    json_object_set_new (root, "in_flight", json_integer ((json_int_t) (w->nslots - w->nfree)));
    json_object_set_new (root, "slots", json_integer ((json_int_t) w->nslots));
    json_object_set_new (root, "providers", providers);
    char *text = root && providers ? json_dumps (root, JSON_COMPACT) : NULL;
    json_decref (root);
    return text;
}

/*  Poll timeout in ms: the nearest of curl's timer, our heartbeat and the
    broker's liveness deadline, rounded up so that we never wake early. */
static long
s_poll_timeout (llmq_worker_t *w)
{
    uint64_t now = llmq_mono_us ();
    uint64_t last = w->figures_ms < w->last_send_ms ? w->figures_ms : w->last_send_ms;
    uint64_t due = (last + w->heartbeat_ms) * 1000;
    uint64_t dead = (w->last_recv_ms + w->heartbeat_ms * w->liveness) * 1000;
    if (dead < due) {
        due = dead;
    }
    if (w->curl_due_us >= 0 && (uint64_t) w->curl_due_us < due) {
        due = (uint64_t) w->curl_due_us;
    }
    return due > now ? (long) ((due - now + 999) / 1000) : 0;
}

int
llmq_worker_run (llmq_worker_t *w)
{
    if (s_connect (w) != 0) {
        return -2;
    }
    llmq_info ("serving broker %s with %u slots", w->endpoint, w->nslots);
    size_t items_cap = w->fds_cap + 2;
    zmq_pollitem_t *items = calloc (items_cap, sizeof *items);
    int rc = items ? 0 : -1;
    while (items) {
        /*  The fd set can change under curl callbacks; poll a copy. */
        if (w->nfds + 2 > items_cap) {
            zmq_pollitem_t *bigger = realloc (items, (w->nfds + 2) * sizeof *items);
            if (!bigger) {
                llmq_error ("out of memory");
                rc = -1;
                break;
            }
            items = bigger;
            items_cap = w->nfds + 2;
        }
        size_t n = 0;
        items[n++] = (zmq_pollitem_t) { .socket = zsock_resolve (w->sock), .events = ZMQ_POLLIN };
        items[n++] = (zmq_pollitem_t) { .fd = w->pipe[0], .events = ZMQ_POLLIN };
        for (size_t i = 0; i < w->nfds; i++) {
            items[n++] = (zmq_pollitem_t) { .fd = w->fds[i].fd, .events = w->fds[i].events };
        }
        long timeout = s_poll_timeout (w);
        if (zmq_poll (items, (int) n, timeout) < 0) {
            if (errno == EINTR) {
                continue;
            }
            llmq_error ("poll failed: %s", zmq_strerror (errno));
            rc = -1;
            break;
        }
        if (items[1].revents & ZMQ_POLLIN) {
            break;                  /* llmq_worker_stop () */
        }
        for (size_t i = 2; i < n; i++) {
            if (items[i].revents) {
                llmq_calls_socket_ready (w, items[i].fd, items[i].revents);
            }
        }
        if (w->curl_due_us >= 0 && (uint64_t) w->curl_due_us <= llmq_mono_us ()) {
            llmq_calls_timeout (w);
        }
        llmq_calls_flush_chunks (w);
        llmq_calls_collect (w);
        s_drain (w);
        llmq_worker_flush_done (w);

        uint64_t now = llmq_mono_ms ();
        if (now - w->last_recv_ms >= w->heartbeat_ms * w->liveness) {
            llmq_warn ("no word from the broker for %llu ms: reconnecting",
                       (unsigned long long) (now - w->last_recv_ms));
            if (s_connect (w) != 0) {
                rc = -1;
                break;
            }
        }
        else if (now - w->last_send_ms >= w->heartbeat_ms || now - w->figures_ms >= w->heartbeat_ms) {
            /*  Also when busy (other messages count as signs of life), so
                that the figures stay at most a heartbeat old. */
            char *figures = s_figures (w);
            llmq_msg_t hb = { .cmd = LLMQ_CMD_HEARTBEAT, .json = figures };
            llmq_worker_send (w, &hb);
            w->figures_ms = now;
            free (figures);
        }
    }
    free (items);
    llmq_worker_flush_done (w);
    /*  Stop: abort what runs (the broker requeues it on BYE), say BYE and
        give the socket a moment to deliver it. */
    uint32_t aborted = llmq_calls_abort_all (w);
    if (w->sock) {
        llmq_msg_t bye = { .cmd = LLMQ_CMD_BYE };
        llmq_worker_send (w, &bye);
        zsock_set_linger (w->sock, 1000);
        zsock_destroy (&w->sock);
    }
    llmq_info ("stopped: %llu done, %llu failed, %u aborted at exit",
               (unsigned long long) w->ndone, (unsigned long long) w->nfailed, aborted);
    return rc;
}
