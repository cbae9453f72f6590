/*  test_client.c -- the client suite: libllmq's names and arguments, what
    it does when no broker answers, and how a handle sorts what a broker
    sends (answers, pushes, duplicates, late answers), against a scripted
    fake broker; plus the CLI's batch-line checks and output lines.

    The fake broker is a ROUTER on tcp://127.0.0.1:* in a thread of the test
    process. It speaks through common/codec.h, like the real one, and each
    test gives it a script: a function that answers one request.
*/
#include <check.h>

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zmq.h>

#include "llmq.h"
#include "codec.h"
#include "clock.h"
#include "cli_util.h"
#include "client_ids.h"
#include "client_queue.h"

//  --------------------------------------------------------------------------
//  Fake broker

typedef struct fake fake_t;
/*  Answer one decoded request; `reply` sends a message back. */
typedef void (fake_script_fn) (fake_t *fake, const llmq_msg_t *req);

struct fake {
    void *ctx;
    void *router;
    char endpoint[64];
    fake_script_fn *script;
    pthread_t thread;
    atomic_int stop;
    zframe_t *peer;             /* routing id of the request being answered */
    int requests;               /* requests seen */
    int version;                /* protocol version byte to answer with */
};

static void
s_fake_send (fake_t *fake, const llmq_msg_t *m)
{
    zmsg_t *msg = llmq_msg_encode (m);
    ck_assert_ptr_nonnull (msg);
    if (fake->version != LLMQ_PROTO_VERSION) {
        zframe_t *sig = zmsg_first (msg);
        zframe_data (sig)[4] = (byte) fake->version;
    }
    zmq_send (fake->router, zframe_data (fake->peer), zframe_size (fake->peer), ZMQ_SNDMORE);
    size_t n = zmsg_size (msg);
    size_t i = 0;
    for (zframe_t *f = zmsg_first (msg); f; f = zmsg_next (msg), i++) {
        zmq_send (fake->router, zframe_data (f), zframe_size (f), i + 1 < n ? ZMQ_SNDMORE : 0);
    }
    zmsg_destroy (&msg);
}

static void *
s_fake_run (void *arg)
{
    fake_t *fake = arg;
    llmq_arena_t *arena = llmq_arena_new ();
    while (!atomic_load (&fake->stop)) {
        zmq_pollitem_t item = { fake->router, 0, ZMQ_POLLIN, 0 };
        if (zmq_poll (&item, 1, 20) <= 0) {
            continue;
        }
        zmsg_t *msg = zmsg_new ();
        int more = 1;
        while (more) {
            zmq_msg_t part;
            zmq_msg_init (&part);
            zmq_msg_recv (&part, fake->router, 0);
            more = zmq_msg_more (&part);
            zmsg_addmem (msg, zmq_msg_data (&part), zmq_msg_size (&part));
            zmq_msg_close (&part);
        }
        fake->peer = zmsg_pop (msg);
        llmq_msg_t req;
        char why[128];
        llmq_arena_reset (arena);
        if (llmq_msg_decode (msg, 0, &req, arena, why, sizeof why) == LLMQ_OK) {
            fake->requests++;
            fake->script (fake, &req);
        }
        zframe_destroy (&fake->peer);
        zmsg_destroy (&msg);
    }
    llmq_arena_destroy (&arena);
    return NULL;
}

/*  A fake broker on `endpoint`, or on a fresh port if NULL. */
static fake_t *
s_fake_start_at (fake_script_fn *script, const char *endpoint)
{
    fake_t *fake = calloc (1, sizeof (fake_t));
    ck_assert_ptr_nonnull (fake);
    fake->script = script;
    fake->version = LLMQ_PROTO_VERSION;
    fake->ctx = zmq_ctx_new ();
    fake->router = zmq_socket (fake->ctx, ZMQ_ROUTER);
    int zero = 0;
    zmq_setsockopt (fake->router, ZMQ_LINGER, &zero, sizeof zero);
    ck_assert_int_eq (zmq_bind (fake->router, endpoint ? endpoint : "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof fake->endpoint;
    zmq_getsockopt (fake->router, ZMQ_LAST_ENDPOINT, fake->endpoint, &len);
    ck_assert_int_eq (pthread_create (&fake->thread, NULL, s_fake_run, fake), 0);
    return fake;
}

static fake_t *
s_fake_start (fake_script_fn *script)
{
    return s_fake_start_at (script, NULL);
}

static void
s_fake_stop (fake_t **fake_p)
{
    fake_t *fake = *fake_p;
    atomic_store (&fake->stop, 1);
    pthread_join (fake->thread, NULL);
    zmq_close (fake->router);
    zmq_ctx_term (fake->ctx);
    free (fake);
    *fake_p = NULL;
}

/*  Answers every PING; the other commands are the script's. */
static int
s_pong (fake_t *fake, const llmq_msg_t *req)
{
    if (req->cmd != LLMQ_CMD_PING) {
        return 0;
    }
    llmq_msg_t rep = { .cmd = LLMQ_CMD_PONG, .corr = req->corr };
    s_fake_send (fake, &rep);
    return 1;
}

static void
s_push_result (fake_t *fake, uint64_t id, int state, const char *content)
{
    llmq_result_t res = { .id = id, .state = (uint8_t) state, .content = content,
                          .model = "m", .finish_reason = "stop" };
    llmq_msg_t m = { .cmd = LLMQ_CMD_RESULT, .results = &res, .nresults = 1 };
    s_fake_send (fake, &m);
}

static void
s_push_chunk (fake_t *fake, uint64_t id, unsigned seq, const char *text)
{
    llmq_msg_t m = { .cmd = LLMQ_CMD_CHUNK, .id = id, .seq = seq, .text = text };
    s_fake_send (fake, &m);
}

static const char s_body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";

//  --------------------------------------------------------------------------
//  Names

START_TEST (test_strerror_complete)
{
    for (int a = LLMQ_OK; a <= LLMQ_ERR_BUDGET; a++) {
        const char *name = llmq_strerror (a);
        ck_assert_ptr_nonnull (name);
        ck_assert_str_ne (name, "unknown error");
        for (int b = LLMQ_OK; b < a; b++) {
            ck_assert_str_ne (name, llmq_strerror (b));
        }
    }
    ck_assert_str_eq (llmq_strerror (LLMQ_ERR_TIMEOUT), "timeout");
    ck_assert_str_eq (llmq_strerror (LLMQ_ERR_BUDGET + 1), "unknown error");
    ck_assert_str_eq (llmq_strerror (-1), "unknown error");
}
END_TEST

START_TEST (test_state_and_priority_names)
{
    const char *states[] = { "queued", "delayed", "running", "done", "failed",
                             "cancelled", "expired", "dead" };
    for (int s = LLMQ_STATE_QUEUED; s <= LLMQ_STATE_DEAD; s++) {
        ck_assert_str_eq (llmq_state_name (s), states[s - 1]);
    }
    ck_assert_str_eq (llmq_state_name (0), "unknown");
    ck_assert_str_eq (llmq_state_name (9), "unknown");
    for (int p = LLMQ_PRIO_URGENT; p <= LLMQ_PRIO_LOW; p++) {
        ck_assert_int_eq (llmq_priority_parse (llmq_priority_name (p)), p);
    }
    ck_assert_int_eq (llmq_priority_parse ("urgent"), LLMQ_PRIO_URGENT);
    ck_assert_int_eq (llmq_priority_parse ("LOW"), LLMQ_PRIO_LOW);
    ck_assert_int_eq (llmq_priority_parse ("2"), LLMQ_PRIO_NORMAL);
    ck_assert_int_eq (llmq_priority_parse ("4"), -1);
    ck_assert_int_eq (llmq_priority_parse ("-1"), -1);
    ck_assert_int_eq (llmq_priority_parse ("22"), -1);
    ck_assert_int_eq (llmq_priority_parse (""), -1);
    ck_assert_int_eq (llmq_priority_parse ("lowest"), -1);
    ck_assert_int_eq (llmq_priority_parse (NULL), -1);
    ck_assert_str_eq (llmq_priority_name (7), "unknown");
}
END_TEST

START_TEST (test_version)
{
    ck_assert_int_eq (llmq_version (), LLMQ_VERSION);
    char expect[32];
    snprintf (expect, sizeof expect, "%d.%d.%d", LLMQ_VERSION_MAJOR, LLMQ_VERSION_MINOR, LLMQ_VERSION_PATCH);
    ck_assert_str_eq (llmq_version_string (), expect);
}
END_TEST

START_TEST (test_null_arguments)
{
    llmq *h = (llmq *) 1;
    ck_assert_int_eq (llmq_connect (NULL, 100, &h), LLMQ_ERR_INVALID);
    ck_assert_ptr_null (h);
    ck_assert_int_eq (llmq_connect ("nonsense", 100, &h), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_connect ("bogus://x", 100, &h), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_connect ("tcp://127.0.0.1:5555", 100, NULL), LLMQ_ERR_INVALID);
    llmq_close (NULL);
    h = NULL;
    llmq_close (&h);
    ck_assert_str_eq (llmq_last_error (NULL), "");
    uint64_t id;
    llmq_job job = { .model = "m", .body = s_body };
    ck_assert_int_eq (llmq_submit (NULL, &job, &id, 0), LLMQ_ERR_INVALID);
    llmq_result_free (NULL);
    llmq_results_free (NULL, 0);
    llmq_event_free (NULL);
    llmq_free (NULL);
}
END_TEST

//  --------------------------------------------------------------------------
//  No broker

/*  A TCP port nobody listens on (just released by the kernel). */
static int
s_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
    ck_assert_int_eq (bind (fd, (struct sockaddr *) &addr, sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname (fd, (struct sockaddr *) &addr, &len);
    close (fd);
    return ntohs (addr.sin_port);
}

START_TEST (test_connect_nobody_listening)
{
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", s_free_port ());
    llmq *h = NULL;
    uint64_t start = llmq_mono_ms ();
    int rc = llmq_connect (endpoint, 300, &h);
    uint64_t took = llmq_mono_ms () - start;
    ck_assert (rc == LLMQ_ERR_TIMEOUT || rc == LLMQ_ERR_CONNECT);
    ck_assert_ptr_null (h);
    ck_assert_uint_ge (took, 250);
    ck_assert_uint_lt (took, 1500);
    /* A zero timeout answers at once. */
    start = llmq_mono_ms ();
    ck_assert_int_eq (llmq_connect (endpoint, 0, &h), LLMQ_ERR_TIMEOUT);
    ck_assert_uint_lt (llmq_mono_ms () - start, 200);
}
END_TEST

static void
s_script_silent (fake_t *fake, const llmq_msg_t *req)
{
}

START_TEST (test_connect_broker_silent)
{
    fake_t *fake = s_fake_start (s_script_silent);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 200, &h), LLMQ_ERR_TIMEOUT);
    ck_assert_ptr_null (h);
    s_fake_stop (&fake);
}
END_TEST

//  --------------------------------------------------------------------------
//  Against a fake broker

static void
s_script_ping (fake_t *fake, const llmq_msg_t *req)
{
    s_pong (fake, req);
}

START_TEST (test_connect_and_close)
{
    fake_t *fake = s_fake_start (s_script_ping);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    ck_assert_ptr_nonnull (h);
    ck_assert_str_eq (llmq_last_error (h), "");
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 0, &ev), LLMQ_ERR_TIMEOUT);
    ck_assert_ptr_null (ev);
    llmq_close (&h);
    ck_assert_ptr_null (h);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Before each PONG, a command from a newer protocol minor (0x50, unknown
    here) that the client must skip. */
static void
s_script_newer (fake_t *fake, const llmq_msg_t *req)
{
    if (req->cmd == LLMQ_CMD_PING) {
        const char sig[LLMQ_SIGNATURE_LEN] = { 'L', 'L', 'M', 'Q', LLMQ_PROTO_VERSION };
        const unsigned char cmd = 0x50, body = 0x80;       /* an empty msgpack map */
        zmq_send (fake->router, zframe_data (fake->peer), zframe_size (fake->peer), ZMQ_SNDMORE);
        zmq_send (fake->router, sig, sizeof sig, ZMQ_SNDMORE);
        zmq_send (fake->router, &cmd, 1, ZMQ_SNDMORE);
        zmq_send (fake->router, &body, 1, 0);
        s_pong (fake, req);
    }
    else
    if (req->cmd == LLMQ_CMD_STATS) {
        llmq_msg_t err = { .cmd = LLMQ_CMD_ERROR, .code = LLMQ_ERR_UNKNOWN_COMMAND,
                           .reason = "not on this socket" };
        s_fake_send (fake, &err);
    }
}

START_TEST (test_unknown_command_skipped)
{
    fake_t *fake = s_fake_start (s_script_newer);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    char *json = NULL;
    ck_assert_int_eq (llmq_stats (h, &json, 2000), LLMQ_ERR_UNKNOWN_COMMAND);
    ck_assert_str_eq (llmq_last_error (h), "not on this socket");
    ck_assert_ptr_null (json);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

START_TEST (test_connect_version_mismatch)
{
    fake_t *fake = s_fake_start (s_script_ping);
    fake->version = LLMQ_PROTO_VERSION + 1;
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_ERR_VERSION);
    ck_assert_ptr_null (h);
    s_fake_stop (&fake);
}
END_TEST

/*  SUBMIT: pushes for other jobs arrive before the ACCEPTED; the result of
    job 7 is pushed (notify), and pushed again after WAIT. */
static void
s_script_submit (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req)) {
        return;
    }
    if (req->cmd == LLMQ_CMD_SUBMIT) {
        ck_assert_int_eq (req->njobs, 1);
        ck_assert_str_eq (req->jobs[0].model, "m");
        ck_assert_int_eq (req->jobs[0].priority, LLMQ_PRIO_LOW);
        ck_assert (req->notify);
        ck_assert_uint_gt (req->jobs[0].deadline_us, llmq_now_us ());
        s_push_result (fake, 99, LLMQ_STATE_DONE, "other");
        s_push_chunk (fake, 98, 0, "piece");
        uint64_t ids[1] = { 7 };
        llmq_msg_t rep = { .cmd = LLMQ_CMD_ACCEPTED, .corr = req->corr, .ids = ids, .nids = 1 };
        s_fake_send (fake, &rep);
        s_push_result (fake, 7, LLMQ_STATE_DONE, "seven");
    }
    else
    if (req->cmd == LLMQ_CMD_WAIT) {
        ck_assert_int_eq (req->nids, 1);
        s_push_result (fake, req->ids[0], LLMQ_STATE_DONE, "seven");
    }
}

START_TEST (test_submit_keeps_pushes)
{
    fake_t *fake = s_fake_start (s_script_submit);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    llmq_job job = { .model = "m", .body = s_body, .priority = LLMQ_PRIO_LOW, .deadline_ms = 60000 };
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (h, &job, &id, 2000), LLMQ_OK);
    ck_assert_uint_eq (id, 7);

    llmq_result *res = NULL;
    ck_assert_int_eq (llmq_wait (h, 7, 2000, &res), LLMQ_OK);
    ck_assert_uint_eq (res->id, 7);
    ck_assert_int_eq (res->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (res->content, "seven");
    ck_assert_str_eq (res->finish_reason, "stop");
    llmq_result_free (&res);
    ck_assert_ptr_null (res);

    /* What came in meanwhile, in order; the duplicate result of 7 is gone. */
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 1000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_RESULT);
    ck_assert_uint_eq (ev->id, 99);
    ck_assert_str_eq (ev->result->content, "other");
    llmq_event_free (&ev);
    ck_assert_int_eq (llmq_next (h, 1000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_CHUNK);
    ck_assert_uint_eq (ev->id, 98);
    ck_assert_str_eq (ev->text, "piece");
    llmq_event_free (&ev);
    ck_assert_int_eq (llmq_next (h, 200, &ev), LLMQ_ERR_TIMEOUT);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Refuses any SUBMIT of more than one job, naming job 1. */
static void
s_script_reject (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req)) {
        return;
    }
    if (req->cmd == LLMQ_CMD_SUBMIT && req->njobs > 1) {
        llmq_msg_t rep = { .cmd = LLMQ_CMD_REJECTED, .corr = req->corr,
                           .code = LLMQ_ERR_UNKNOWN_MODEL, .reason = "no model group 'nope'",
                           .index = 1 };
        s_fake_send (fake, &rep);
    }
    else
    if (req->cmd == LLMQ_CMD_SUBMIT) {
        uint64_t ids[1] = { 1 };
        llmq_msg_t rep = { .cmd = LLMQ_CMD_ACCEPTED, .corr = req->corr, .ids = ids, .nids = 1 };
        s_fake_send (fake, &rep);
    }
    else
    if (req->cmd == LLMQ_CMD_CANCEL) {
        llmq_msg_t rep = { .cmd = LLMQ_CMD_REPLY, .corr = req->corr,
                           .code = LLMQ_ERR_STATE, .reason = "job 5 has ended" };
        s_fake_send (fake, &rep);
    }
    else
    if (req->cmd == LLMQ_CMD_STATUS) {
        llmq_msg_t rep = { .cmd = LLMQ_CMD_ERROR, .corr = req->corr,
                           .code = LLMQ_ERR_PROTOCOL, .reason = "field 'id': bad" };
        s_fake_send (fake, &rep);
    }
}

START_TEST (test_rejections)
{
    fake_t *fake = s_fake_start (s_script_reject);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    llmq_job jobs[2] = { { .model = "m", .body = s_body }, { .model = "nope", .body = s_body } };
    uint64_t ids[2];
    ck_assert_int_eq (llmq_submit_many (h, jobs, 2, ids, 2000), LLMQ_ERR_UNKNOWN_MODEL);
    ck_assert_ptr_nonnull (strstr (llmq_last_error (h), "job 1"));
    ck_assert_ptr_nonnull (strstr (llmq_last_error (h), "nope"));

    ck_assert_int_eq (llmq_cancel (h, 5, 2000), LLMQ_ERR_STATE);
    ck_assert_str_eq (llmq_last_error (h), "job 5 has ended");

    llmq_result *res = NULL;
    ck_assert_int_eq (llmq_status (h, 5, 2000, &res), LLMQ_ERR_PROTOCOL);
    ck_assert_ptr_null (res);

    /* Invalid jobs never leave the handle. */
    int before = fake->requests;
    llmq_job bad = { .model = "m", .body = "{\"prompt\": \"no messages\"}" };
    ck_assert_int_eq (llmq_submit_many (h, &bad, 1, ids, 2000), LLMQ_ERR_INVALID);
    bad.body = "not json";
    ck_assert_int_eq (llmq_submit_many (h, &bad, 1, ids, 2000), LLMQ_ERR_INVALID);
    bad = (llmq_job) { .body = s_body };
    ck_assert_int_eq (llmq_submit_many (h, &bad, 1, ids, 2000), LLMQ_ERR_INVALID);
    bad = (llmq_job) { .model = "m", .body = s_body, .priority = 4 };
    ck_assert_int_eq (llmq_submit_many (h, &bad, 1, ids, 2000), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_submit_many (h, jobs, 0, ids, 2000), LLMQ_ERR_INVALID);

    /* The handle still works. */
    ck_assert_int_eq (llmq_submit_many (h, jobs, 1, ids, 2000), LLMQ_OK);
    ck_assert_uint_eq (ids[0], 1);
    ck_assert_int_eq (fake->requests, before + 1);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Streams three chunks, then the result; jobs 42, 43 ... */
static void
s_script_stream (fake_t *fake, const llmq_msg_t *req)
{
    static uint64_t next_id = 42;
    if (s_pong (fake, req)) {
        return;
    }
    if (req->cmd == LLMQ_CMD_SUBMIT) {
        ck_assert (req->jobs[0].stream);
        uint64_t id = next_id++;
        llmq_msg_t rep = { .cmd = LLMQ_CMD_ACCEPTED, .corr = req->corr, .ids = &id, .nids = 1 };
        s_fake_send (fake, &rep);
        s_push_chunk (fake, id, 0, "Hel");
        s_push_chunk (fake, id, 1, "lo ");
        s_push_chunk (fake, id, 2, "world");
        s_push_result (fake, id, LLMQ_STATE_DONE, "Hello world");
    }
    else
    if (req->cmd == LLMQ_CMD_WAIT) {
        s_push_result (fake, req->ids[0], LLMQ_STATE_DONE, "Hello world");
    }
}

typedef struct {
    char text[64];
    unsigned calls;
    unsigned stop_after;        /* 0: never stop */
} collect_t;

static int
s_collect (void *arg, uint64_t id, unsigned seq, const char *text)
{
    collect_t *c = arg;
    ck_assert_uint_ge (id, 42);
    ck_assert_uint_eq (seq, c->calls);
    strcat (c->text, text);
    c->calls++;
    return c->stop_after && c->calls >= c->stop_after;
}

START_TEST (test_stream)
{
    fake_t *fake = s_fake_start (s_script_stream);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    llmq_job job = { .model = "m", .body = s_body };
    collect_t got = { "", 0, 0 };
    uint64_t id = 0;
    llmq_result *res = NULL;
    ck_assert_int_eq (llmq_stream (h, &job, s_collect, &got, &id, 2000, &res), LLMQ_OK);
    ck_assert_uint_eq (id, 42);
    ck_assert_str_eq (got.text, "Hello world");
    ck_assert_ptr_nonnull (res);
    ck_assert_str_eq (res->content, "Hello world");
    llmq_result_free (&res);

    /* A caller that stops listening: no more chunks, result still there. */
    collect_t some = { "", 0, 1 };
    ck_assert_int_eq (llmq_stream (h, &job, s_collect, &some, &id, 2000, &res), LLMQ_OK);
    ck_assert_uint_eq (id, 43);
    ck_assert_ptr_null (res);
    ck_assert_str_eq (some.text, "Hel");
    ck_assert_int_eq (llmq_wait (h, 43, 2000, &res), LLMQ_OK);
    ck_assert_str_eq (res->content, "Hello world");
    llmq_result_free (&res);
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 200, &ev), LLMQ_ERR_TIMEOUT);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Restarts, three ways. A job streamed with restart gets, first, a RESET
    from the broker between its attempts; then (the second such job) a new
    attempt without RESET, as after a broker restart. A plain job gets the
    same unannounced new attempt. Each attempt sends "Hel" "lo" first; the
    last one "Hello" " world". */
static void
s_script_restart (fake_t *fake, const llmq_msg_t *req)
{
    static uint64_t next_id = 70;
    if (s_pong (fake, req) || req->cmd != LLMQ_CMD_SUBMIT) {
        return;
    }
    uint64_t id = next_id++;
    llmq_msg_t rep = { .cmd = LLMQ_CMD_ACCEPTED, .corr = req->corr, .ids = &id, .nids = 1 };
    s_fake_send (fake, &rep);
    ck_assert (req->jobs[0].stream);
    ck_assert (req->jobs[0].restart == (id != 72));
    s_push_chunk (fake, id, 0, "Hel");
    s_push_chunk (fake, id, 1, "lo");
    if (id == 70) {
        llmq_msg_t reset = { .cmd = LLMQ_CMD_RESET, .id = id, .reason = "stream cut" };
        s_fake_send (fake, &reset);
    }
    s_push_chunk (fake, id, 0, "Hello");
    s_push_chunk (fake, id, 1, " world");
    s_push_result (fake, id, LLMQ_STATE_DONE, "Hello world");
}

typedef struct {
    char text[64];              /* what the caller holds: a RESET empties it */
    unsigned resets;
    unsigned next_seq;
} held_t;

static int
s_hold (void *arg, uint64_t id, unsigned seq, const char *text)
{
    (void) id;
    held_t *c = arg;
    if (!text) {
        c->resets++;
        c->text[0] = '\0';
        c->next_seq = 0;
        return 0;
    }
    ck_assert_uint_eq (seq, c->next_seq);
    c->next_seq++;
    strcat (c->text, text);
    return 0;
}

START_TEST (test_stream_restart)
{
    fake_t *fake = s_fake_start (s_script_restart);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    llmq_job job = { .model = "m", .body = s_body, .stream = LLMQ_STREAM_RESTART };
    llmq_result *res = NULL;
    /* RESET from the broker: passed on as text NULL. */
    held_t got = { "", 0, 0 };
    ck_assert_int_eq (llmq_stream (h, &job, s_hold, &got, NULL, 2000, &res), LLMQ_OK);
    ck_assert_uint_eq (got.resets, 1);
    ck_assert_str_eq (got.text, "Hello world");
    ck_assert_str_eq (res->content, "Hello world");
    llmq_result_free (&res);
    /* seq 0 again without a RESET: the library makes one up. */
    held_t again = { "", 0, 0 };
    ck_assert_int_eq (llmq_stream (h, &job, s_hold, &again, NULL, 2000, &res), LLMQ_OK);
    ck_assert_uint_eq (again.resets, 1);
    ck_assert_str_eq (again.text, "Hello world");
    llmq_result_free (&res);
    /* A plain stream never gets text twice: the new attempt is not passed
       on, the result has the whole answer. */
    job.stream = 1;
    held_t plain = { "", 0, 0 };
    ck_assert_int_eq (llmq_stream (h, &job, s_hold, &plain, NULL, 2000, &res), LLMQ_OK);
    ck_assert_uint_eq (plain.resets, 0);
    ck_assert_str_eq (plain.text, "Hello");
    ck_assert_str_eq (res->content, "Hello world");
    llmq_result_free (&res);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Answers pipelined SUBMITs in reverse order once three have come. */
static uint64_t s_corrs[3];
static size_t s_njobs[3];

static void
s_script_pipeline (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req) || req->cmd != LLMQ_CMD_SUBMIT) {
        return;
    }
    static int seen = 0;
    s_corrs[seen] = req->corr;
    s_njobs[seen] = req->njobs;
    seen++;
    if (seen < 3) {
        return;
    }
    for (int i = 2; i >= 0; i--) {
        if (i == 1) {
            llmq_msg_t rep = { .cmd = LLMQ_CMD_REJECTED, .corr = s_corrs[i], .code = LLMQ_ERR_STORE_FULL,
                               .reason = "store full", .retry_after_ms = 500, .index = -1 };
            s_fake_send (fake, &rep);
            continue;
        }
        uint64_t ids[4];
        for (size_t j = 0; j < s_njobs[i]; j++) {
            ids[j] = 100 * (uint64_t) (i + 1) + j;
        }
        llmq_msg_t rep = { .cmd = LLMQ_CMD_ACCEPTED, .corr = s_corrs[i], .ids = ids, .nids = s_njobs[i] };
        s_fake_send (fake, &rep);
    }
}

START_TEST (test_pipeline)
{
    fake_t *fake = s_fake_start (s_script_pipeline);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    llmq_job jobs[3] = { { .model = "m", .body = s_body }, { .model = "m", .body = s_body },
                         { .model = "m", .body = s_body } };
    uint64_t tickets[3];
    for (size_t i = 0; i < 3; i++) {
        ck_assert_int_eq (llmq_send (h, jobs, i + 1, 0, &tickets[i]), LLMQ_OK);
        ck_assert_uint_ne (tickets[i], 0);
    }
    ck_assert_uint_ne (tickets[0], tickets[1]);
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 2000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_ACCEPTED);
    ck_assert_uint_eq (ev->ticket, tickets[2]);
    ck_assert_uint_eq (ev->nids, 3);
    ck_assert_uint_eq (ev->ids[2], 302);
    llmq_event_free (&ev);
    ck_assert_int_eq (llmq_next (h, 2000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_REJECTED);
    ck_assert_uint_eq (ev->ticket, tickets[1]);
    ck_assert_int_eq (ev->code, LLMQ_ERR_STORE_FULL);
    ck_assert_str_eq (ev->reason, "store full");
    ck_assert_uint_eq (ev->retry_after_ms, 500);
    ck_assert_int_eq (ev->index, -1);
    llmq_event_free (&ev);
    ck_assert_int_eq (llmq_next (h, 2000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_ACCEPTED);
    ck_assert_uint_eq (ev->ticket, tickets[0]);
    ck_assert_uint_eq (ev->ids[0], 100);
    llmq_event_free (&ev);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  STATUS is answered late (after the caller gave up); STATS at once;
    FETCH with one page. */
static void
s_script_late (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req)) {
        return;
    }
    if (req->cmd == LLMQ_CMD_STATUS) {
        usleep (300 * 1000);
        llmq_result_t res = { .id = req->id, .state = LLMQ_STATE_RUNNING };
        llmq_msg_t rep = { .cmd = LLMQ_CMD_RESULT, .corr = req->corr, .results = &res, .nresults = 1 };
        s_fake_send (fake, &rep);
    }
    else
    if (req->cmd == LLMQ_CMD_STATS) {
        llmq_msg_t rep = { .cmd = LLMQ_CMD_STATS_REP, .corr = req->corr, .json = "{\"workers\":2}" };
        s_fake_send (fake, &rep);
    }
    else
    if (req->cmd == LLMQ_CMD_FETCH) {
        ck_assert_str_eq (req->batch_id, "b1");
        llmq_result_t res[2] = { { .id = 11, .state = LLMQ_STATE_DONE, .custom_id = "a", .content = "x" },
                                 { .id = 12, .state = LLMQ_STATE_FAILED, .custom_id = "b", .error = "boom" } };
        llmq_msg_t rep = { .cmd = LLMQ_CMD_RESULTS, .corr = req->corr, .results = res, .nresults = 2,
                           .after = 12, .more = true, .json = "{\"total\":3,\"done\":1,\"failed\":1,\"pending\":1}" };
        s_fake_send (fake, &rep);
    }
}

START_TEST (test_late_answer_dropped)
{
    fake_t *fake = s_fake_start (s_script_late);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    llmq_result *res = NULL;
    uint64_t start = llmq_mono_ms ();
    ck_assert_int_eq (llmq_status (h, 5, 50, &res), LLMQ_ERR_TIMEOUT);
    ck_assert_uint_lt (llmq_mono_ms () - start, 250);
    ck_assert_ptr_null (res);
    char *json = NULL;
    ck_assert_int_eq (llmq_stats (h, &json, 2000), LLMQ_OK);
    ck_assert_str_eq (json, "{\"workers\":2}");
    llmq_free (json);

    llmq_result **page = NULL;
    size_t n = 0;
    uint64_t next = 0;
    int more = 0;
    char *counts = NULL;
    ck_assert_int_eq (llmq_fetch (h, "b1", 0, 10, &page, &n, &next, &more, &counts, 2000), LLMQ_OK);
    ck_assert_uint_eq (n, 2);
    ck_assert_uint_eq (next, 12);
    ck_assert_int_eq (more, 1);
    ck_assert_str_eq (page[0]->custom_id, "a");
    ck_assert_str_eq (page[1]->error, "boom");
    cli_counts_t c;
    ck_assert_int_eq (cli_counts_parse (counts, &c), 0);
    ck_assert_uint_eq (c.total, 3);
    ck_assert_uint_eq (c.pending, 1);
    llmq_results_free (page, n);
    llmq_free (counts);

    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 100, &ev), LLMQ_ERR_TIMEOUT);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Before the restart: accepts job 5 with notify, never runs it. */
static void
s_script_before (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req) || req->cmd != LLMQ_CMD_SUBMIT) {
        return;
    }
    ck_assert (req->notify);
    uint64_t id = 5;
    llmq_msg_t rep = { .cmd = LLMQ_CMD_ACCEPTED, .corr = req->corr, .ids = &id, .nids = 1 };
    s_fake_send (fake, &rep);
}

/*  After the restart: knows nothing of subscriptions until a WAIT comes. */
static void
s_script_after (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req) || req->cmd != LLMQ_CMD_WAIT) {
        return;
    }
    for (size_t i = 0; i < req->nids; i++) {
        s_push_result (fake, req->ids[i], LLMQ_STATE_DONE, "after restart");
    }
}

START_TEST (test_resubscribe_after_restart)
{
    fake_t *fake = s_fake_start (s_script_before);
    char endpoint[64];
    snprintf (endpoint, sizeof endpoint, "%s", fake->endpoint);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (endpoint, 2000, &h), LLMQ_OK);
    llmq_job job = { .model = "m", .body = s_body };
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (h, &job, &id, 2000), LLMQ_OK);
    ck_assert_uint_eq (id, 5);
    s_fake_stop (&fake);
    fake = s_fake_start_at (s_script_after, endpoint);
    /* Nothing asks for job 5 but the handle itself, when it reconnects. */
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 5000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_RESULT);
    ck_assert_uint_eq (ev->id, 5);
    ck_assert_str_eq (ev->result->content, "after restart");
    llmq_event_free (&ev);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

//  --------------------------------------------------------------------------
//  Id set and event queue (private to the library, compiled into this test)

START_TEST (test_id_set)
{
    client_ids_t set;
    client_ids_init (&set);
    ck_assert (!client_ids_has (&set, 1));
    client_ids_remove (&set, 1);
    for (uint64_t id = 1; id <= 20000; id++) {
        ck_assert_int_eq (client_ids_add (&set, id * 7), 0);
    }
    ck_assert_int_eq (client_ids_add (&set, 0), 0);
    ck_assert_int_eq (client_ids_add (&set, 7), 0);
    ck_assert_uint_eq (set.count, 20000);
    for (uint64_t id = 1; id <= 20000; id += 2) {
        client_ids_remove (&set, id * 7);
    }
    ck_assert_uint_eq (set.count, 10000);
    for (uint64_t id = 1; id <= 20000; id++) {
        ck_assert_int_eq (client_ids_has (&set, id * 7), id % 2 == 0);
    }
    uint64_t out[333];
    size_t cursor = 0, n, total = 0;
    while ((n = client_ids_next (&set, &cursor, out, 333)) > 0) {
        for (size_t i = 0; i < n; i++) {
            ck_assert_uint_eq (out[i] % 14, 0);
        }
        total += n;
    }
    ck_assert_uint_eq (total, 10000);
    client_ids_clear (&set);
    ck_assert_uint_eq (set.count, 0);
    ck_assert (!client_ids_has (&set, 14));
}
END_TEST

START_TEST (test_queue_bound)
{
    client_queue_t q;
    client_queue_init (&q, 4096);
    char text[500];
    memset (text, 'x', sizeof text - 1);
    text[sizeof text - 1] = '\0';
    int kept = 0;
    for (unsigned i = 0; i < 100; i++) {
        if (client_queue_push (&q, client_event_chunk (9, i, text)) == 0) {
            kept++;
        }
    }
    ck_assert_int_gt (kept, 0);
    ck_assert_int_lt (kept, 10);
    ck_assert_uint_eq (q.dropped, (uint64_t) (100 - kept));
    ck_assert_uint_le (q.bytes, 4096);
    /* Acks are kept past the bound. */
    uint64_t ids[2] = { 1, 2 };
    ck_assert_int_eq (client_queue_push (&q, client_event_accepted (4, ids, 2)), 0);
    ck_assert_int_eq (client_queue_push (&q, client_event_rejected (8, LLMQ_ERR_STORE_FULL, NULL, -1, 0)), 0);
    /* Take picks the job's events; drop_chunks frees the rest. */
    llmq_event *ev = client_queue_take (&q, 9, 1);
    ck_assert_ptr_nonnull (ev);
    ck_assert_uint_eq (ev->seq, 0);
    llmq_event_free (&ev);
    ck_assert_ptr_null (client_queue_take (&q, 9, 0));
    client_queue_drop_chunks (&q, 9);
    ev = client_queue_pop (&q);
    ck_assert_int_eq (ev->type, LLMQ_EV_ACCEPTED);
    ck_assert_uint_eq (ev->ids[1], 2);
    llmq_event_free (&ev);
    ev = client_queue_pop (&q);
    ck_assert_int_eq (ev->type, LLMQ_EV_REJECTED);
    ck_assert_str_eq (ev->reason, "store full");
    llmq_event_free (&ev);
    ck_assert_ptr_null (client_queue_pop (&q));
    ck_assert_uint_eq (q.bytes, 0);
    client_queue_clear (&q);
}
END_TEST

//  --------------------------------------------------------------------------
//  CLI helpers

START_TEST (test_parse_duration)
{
    int64_t ms = 0;
    ck_assert_int_eq (cli_parse_duration_ms ("30", &ms), 0);
    ck_assert_int_eq (ms, 30000);
    ck_assert_int_eq (cli_parse_duration_ms ("500ms", &ms), 0);
    ck_assert_int_eq (ms, 500);
    ck_assert_int_eq (cli_parse_duration_ms ("2m", &ms), 0);
    ck_assert_int_eq (ms, 120000);
    ck_assert_int_eq (cli_parse_duration_ms ("1h", &ms), 0);
    ck_assert_int_eq (ms, 3600000);
    ck_assert_int_eq (cli_parse_duration_ms ("", &ms), -1);
    ck_assert_int_eq (cli_parse_duration_ms ("-1", &ms), -1);
    ck_assert_int_eq (cli_parse_duration_ms ("5d", &ms), -1);
    ck_assert_int_eq (cli_parse_duration_ms ("99999999999h", &ms), -1);
    uint64_t id;
    ck_assert_int_eq (cli_parse_id ("123", &id), 0);
    ck_assert_uint_eq (id, 123);
    ck_assert_int_eq (cli_parse_id ("0", &id), -1);
    ck_assert_int_eq (cli_parse_id ("12x", &id), -1);
    ck_assert_int_eq (cli_parse_id ("-3", &id), -1);
    ck_assert_int_eq (cli_parse_id ("99999999999999999999999", &id), -1);
}
END_TEST

static const char s_good_line[] =
    "{\"custom_id\":\"r1\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
    "\"body\":{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
    "\"max_tokens\":5}}\n";

START_TEST (test_batch_line_good)
{
    cli_batch_line_t line;
    char why[256];
    ck_assert_int_eq (cli_batch_line_parse (s_good_line, strlen (s_good_line), NULL, &line, why, sizeof why), 0);
    ck_assert_str_eq (line.custom_id, "r1");
    ck_assert_str_eq (line.model, "gpt-4o-mini");
    ck_assert_ptr_null (strstr (line.body, "model"));
    ck_assert_ptr_nonnull (strstr (line.body, "\"max_tokens\":5"));
    cli_batch_line_clear (&line);
    ck_assert_ptr_null (line.body);
    ck_assert_int_eq (cli_batch_line_parse (s_good_line, strlen (s_good_line), "other", &line, why, sizeof why), 0);
    ck_assert_str_eq (line.model, "other");
    cli_batch_line_clear (&line);
    ck_assert_int_eq (cli_batch_line_parse ("  \r\n", 4, NULL, &line, why, sizeof why), 1);
    ck_assert_int_eq (cli_batch_line_parse ("", 0, NULL, NULL, why, sizeof why), 1);
}
END_TEST

/*  Bad lines and a word the reason must contain. */
static const struct { const char *line; const char *why; } s_bad_lines[] = {
    { "{not json", "not valid JSON" },
    { "[1,2]", "expected a JSON object" },
    { "{\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}", "custom_id" },
    { "{\"custom_id\":5,\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}", "custom_id" },
    { "{\"custom_id\":\"a\",\"url\":\"/v1/chat/completions\",\"body\":{}}", "method" },
    { "{\"custom_id\":\"a\",\"method\":\"GET\",\"url\":\"/v1/chat/completions\",\"body\":{}}", "POST" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{}}", "/v1/embeddings" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\"}", "body" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":[]}", "body" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
      "\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}}", "body.model" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
      "\"body\":{\"model\":\"m\"}}", "body.messages" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
      "\"body\":{\"model\":\"m\",\"messages\":[]}}", "empty" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
      "\"body\":{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}}", "role" },
    { "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
      "\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}],\"stream\":true}}", "stream" },
    { "{\"custom_id\":\"a\",\"custom_id\":\"b\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\","
      "\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\"}]}}", "duplicate" },
};

START_TEST (test_batch_line_bad)
{
    const char *text = s_bad_lines[_i].line;
    cli_batch_line_t line;
    char why[256] = "";
    ck_assert_int_eq (cli_batch_line_parse (text, strlen (text), NULL, &line, why, sizeof why), -1);
    ck_assert_msg (strstr (why, s_bad_lines[_i].why), "line %d: '%s' lacks '%s'", _i, why, s_bad_lines[_i].why);
    ck_assert_ptr_null (line.body);
}
END_TEST

START_TEST (test_idset)
{
    cli_idset_t *set = cli_idset_new ();
    ck_assert_ptr_nonnull (set);
    char key[32];
    for (long i = 1; i <= 5000; i++) {
        snprintf (key, sizeof key, "req-%ld", i);
        ck_assert_int_eq (cli_idset_add (set, key, i), 0);
    }
    ck_assert_int_eq (cli_idset_add (set, "req-77", 9000), 77);
    ck_assert_int_eq (cli_idset_add (set, "", 9001), 0);
    cli_idset_destroy (&set);
    ck_assert_ptr_null (set);
    cli_idset_destroy (&set);
}
END_TEST

START_TEST (test_output_line)
{
    llmq_result done = { .id = 5, .state = LLMQ_STATE_DONE, .content = "hello", .custom_id = "r1",
                         .model = "m", .request_id = "req_1", .prompt_tokens = 3, .completion_tokens = 2,
                         .finished_us = 1700000000000000ull };
    json_t *line = cli_batch_output_line (&done);
    ck_assert_ptr_nonnull (line);
    ck_assert_str_eq (json_string_value (json_object_get (line, "custom_id")), "r1");
    ck_assert (json_is_null (json_object_get (line, "error")));
    json_t *resp = json_object_get (line, "response");
    ck_assert_int_eq (json_integer_value (json_object_get (resp, "status_code")), 200);
    json_t *body = json_object_get (resp, "body");
    ck_assert_str_eq (json_string_value (json_object_get (body, "object")), "chat.completion");
    ck_assert_int_eq (json_integer_value (json_object_get (body, "created")), 1700000000);
    json_t *choice = json_array_get (json_object_get (body, "choices"), 0);
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (choice, "message"), "content")), "hello");
    ck_assert_str_eq (json_string_value (json_object_get (choice, "finish_reason")), "stop");
    ck_assert_int_eq (json_integer_value (json_object_get (json_object_get (body, "usage"), "total_tokens")), 5);
    json_decref (line);

    /* A failure, with content cut inside a UTF-8 character. */
    llmq_result failed = { .id = 6, .state = LLMQ_STATE_DEAD, .error = "HTTP 503", .http_status = 503,
                           .custom_id = "r2", .content = "caf\xc3" };
    line = cli_batch_output_line (&failed);
    ck_assert_ptr_nonnull (line);
    json_t *err = json_object_get (line, "error");
    ck_assert_str_eq (json_string_value (json_object_get (err, "code")), "dead_lettered");
    ck_assert_str_eq (json_string_value (json_object_get (err, "message")), "HTTP 503");
    ck_assert_int_eq (json_integer_value (json_object_get (json_object_get (line, "response"), "status_code")), 503);
    json_decref (line);
    failed.http_status = 0;
    line = cli_batch_output_line (&failed);
    ck_assert (json_is_null (json_object_get (line, "response")));
    json_decref (line);

    json_t *obj = cli_result_json (&failed);
    ck_assert_ptr_nonnull (obj);
    ck_assert_str_eq (json_string_value (json_object_get (obj, "content")), "caf\xef\xbf\xbd");
    ck_assert (json_is_null (json_object_get (obj, "tool_calls")));
    json_decref (obj);

    /*  Tool calls: message.tool_calls as OpenAI writes it, a null content. */
    llmq_result tools = { .id = 7, .state = LLMQ_STATE_DONE, .content = "", .custom_id = "r3",
                          .finish_reason = "tool_calls",
                          .tool_calls = "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":"
                                        "{\"name\":\"lookup\",\"arguments\":\"{\\\"q\\\":\\\"x\\\"}\"}}]" };
    line = cli_batch_output_line (&tools);
    ck_assert_ptr_nonnull (line);
    choice = json_array_get (json_object_get (json_object_get (json_object_get (line, "response"), "body"),
                                              "choices"), 0);
    json_t *message = json_object_get (choice, "message");
    ck_assert (json_is_null (json_object_get (message, "content")));
    ck_assert_str_eq (json_string_value (json_object_get (choice, "finish_reason")), "tool_calls");
    json_t *call = json_array_get (json_object_get (message, "tool_calls"), 0);
    ck_assert_str_eq (json_string_value (json_object_get (call, "id")), "call_1");
    ck_assert_str_eq (json_string_value (json_object_get (json_object_get (call, "function"), "arguments")),
                      "{\"q\":\"x\"}");
    json_decref (line);
    obj = cli_result_json (&tools);
    ck_assert_uint_eq (json_array_size (json_object_get (obj, "tool_calls")), 1);
    json_decref (obj);
    /*  Text without tool calls has no tool_calls key. */
    line = cli_batch_output_line (&done);
    choice = json_array_get (json_object_get (json_object_get (json_object_get (line, "response"), "body"),
                                              "choices"), 0);
    ck_assert_ptr_null (json_object_get (json_object_get (choice, "message"), "tool_calls"));
    json_decref (line);
}
END_TEST

START_TEST (test_exit_codes)
{
    ck_assert_int_eq (cli_exit_code (LLMQ_OK), 0);
    ck_assert_int_eq (cli_exit_code (LLMQ_ERR_NOT_FOUND), 1);
    ck_assert_int_eq (cli_exit_code (LLMQ_ERR_JOB_FAILED), 1);
    ck_assert_int_eq (cli_exit_code (LLMQ_ERR_INVALID), 2);
    ck_assert_int_eq (cli_exit_code (LLMQ_ERR_TIMEOUT), 3);
    ck_assert_int_eq (cli_exit_code (LLMQ_ERR_CONNECT), 3);
}
END_TEST

//  --------------------------------------------------------------------------
//  Admin

/*  ADMIN: "dead.list" answered with the request echoed inside (after a
    pushed result, which the handle must keep for later); "dead.show"
    refused as the broker refuses an unknown id. */
static void
s_script_admin (fake_t *fake, const llmq_msg_t *req)
{
    if (s_pong (fake, req)) {
        return;
    }
    if (req->cmd != LLMQ_CMD_ADMIN) {
        return;
    }
    ck_assert_ptr_nonnull (req->json);
    json_t *r = json_loads (req->json, 0, NULL);
    ck_assert_ptr_nonnull (r);
    const char *op = json_string_value (json_object_get (r, "op"));
    if (op && strcmp (op, "dead.list") == 0) {
        s_push_result (fake, 9, LLMQ_STATE_DONE, "pushed meanwhile");
        json_t *rep = json_pack ("{s:[], s:i, s:b, s:O}", "jobs", "next", 0, "more", 0, "request", r);
        char *text = json_dumps (rep, JSON_COMPACT);
        llmq_msg_t m = { .cmd = LLMQ_CMD_ADMIN_REP, .corr = req->corr, .json = text };
        s_fake_send (fake, &m);
        free (text);
        json_decref (rep);
    }
    else {
        llmq_msg_t m = { .cmd = LLMQ_CMD_REJECTED, .corr = req->corr, .code = LLMQ_ERR_NOT_FOUND,
                         .reason = "no dead job 7 (no such job, or its result expired)" };
        s_fake_send (fake, &m);
    }
    json_decref (r);
}

START_TEST (test_admin)
{
    fake_t *fake = s_fake_start (s_script_admin);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    char *reply = (char *) 1;
    ck_assert_int_eq (llmq_admin (h, "{\"op\":\"dead.list\",\"limit\":5,\"model\":\"gpt\"}", &reply, 2000), LLMQ_OK);
    ck_assert_ptr_nonnull (reply);
    json_t *rep = json_loads (reply, 0, NULL);
    ck_assert_ptr_nonnull (rep);
    ck_assert_uint_eq (json_array_size (json_object_get (rep, "jobs")), 0);
    json_t *sent = json_object_get (rep, "request");
    ck_assert_str_eq (json_string_value (json_object_get (sent, "op")), "dead.list");
    ck_assert_int_eq (json_integer_value (json_object_get (sent, "limit")), 5);
    ck_assert_str_eq (json_string_value (json_object_get (sent, "model")), "gpt");
    json_decref (rep);
    llmq_free (reply);

    /* The result pushed before the answer waits in the handle. */
    llmq_event *ev = NULL;
    ck_assert_int_eq (llmq_next (h, 1000, &ev), LLMQ_OK);
    ck_assert_int_eq (ev->type, LLMQ_EV_RESULT);
    ck_assert_uint_eq (ev->result->id, 9);
    llmq_event_free (&ev);

    /* A refusal: its code, and the broker's reason. */
    reply = (char *) 1;
    ck_assert_int_eq (llmq_admin (h, "{\"op\":\"dead.show\",\"id\":7}", &reply, 2000), LLMQ_ERR_NOT_FOUND);
    ck_assert_ptr_null (reply);
    ck_assert_str_eq (llmq_last_error (h), "no dead job 7 (no such job, or its result expired)");

    /* What is not a request never leaves the handle. */
    int before = fake->requests;
    ck_assert_int_eq (llmq_admin (h, "not json", &reply, 2000), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_admin (h, "[\"op\"]", &reply, 2000), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_admin (h, "{\"id\":7}", &reply, 2000), LLMQ_ERR_INVALID);
    ck_assert_ptr_nonnull (strstr (llmq_last_error (h), "op"));
    ck_assert_int_eq (llmq_admin (h, NULL, &reply, 2000), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_admin (h, "{\"op\":\"x\"}", NULL, 2000), LLMQ_ERR_INVALID);
    ck_assert_int_eq (llmq_admin (NULL, "{\"op\":\"x\"}", &reply, 2000), LLMQ_ERR_INVALID);
    ck_assert_int_eq (fake->requests, before);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST

/*  Never answers ADMIN: the call times out and the handle stays usable. */
static void
s_script_admin_silent (fake_t *fake, const llmq_msg_t *req)
{
    s_pong (fake, req);
}

START_TEST (test_admin_timeout)
{
    fake_t *fake = s_fake_start (s_script_admin_silent);
    llmq *h = NULL;
    ck_assert_int_eq (llmq_connect (fake->endpoint, 2000, &h), LLMQ_OK);
    char *reply = NULL;
    uint64_t start = llmq_mono_ms ();
    ck_assert_int_eq (llmq_admin (h, "{\"op\":\"breaker.history\"}", &reply, 100), LLMQ_ERR_TIMEOUT);
    ck_assert_uint_lt (llmq_mono_ms () - start, 1000);
    ck_assert_ptr_null (reply);
    llmq_close (&h);
    s_fake_stop (&fake);
}
END_TEST


static Suite *
s_client_suite (void)
{
    Suite *suite = suite_create ("client");

    TCase *names = tcase_create ("names");
    tcase_add_test (names, test_strerror_complete);
    tcase_add_test (names, test_state_and_priority_names);
    tcase_add_test (names, test_version);
    tcase_add_test (names, test_null_arguments);
    suite_add_tcase (suite, names);

    TCase *alone = tcase_create ("no broker");
    tcase_add_test (alone, test_connect_nobody_listening);
    tcase_add_test (alone, test_connect_broker_silent);
    suite_add_tcase (suite, alone);

    TCase *fake = tcase_create ("fake broker");
    tcase_set_timeout (fake, 10);
    tcase_add_test (fake, test_connect_and_close);
    tcase_add_test (fake, test_connect_version_mismatch);
    tcase_add_test (fake, test_unknown_command_skipped);
    tcase_add_test (fake, test_submit_keeps_pushes);
    tcase_add_test (fake, test_rejections);
    tcase_add_test (fake, test_stream);
    tcase_add_test (fake, test_stream_restart);
    tcase_add_test (fake, test_pipeline);
    tcase_add_test (fake, test_late_answer_dropped);
    tcase_add_test (fake, test_resubscribe_after_restart);
    tcase_add_test (fake, test_admin);
    tcase_add_test (fake, test_admin_timeout);
    suite_add_tcase (suite, fake);

    TCase *inside = tcase_create ("internals");
    tcase_add_test (inside, test_id_set);
    tcase_add_test (inside, test_queue_bound);
    suite_add_tcase (suite, inside);

    TCase *cli = tcase_create ("cli");
    tcase_add_test (cli, test_parse_duration);
    tcase_add_test (cli, test_batch_line_good);
    tcase_add_loop_test (cli, test_batch_line_bad, 0, (int) (sizeof s_bad_lines / sizeof s_bad_lines[0]));
    tcase_add_test (cli, test_idset);
    tcase_add_test (cli, test_output_line);
    tcase_add_test (cli, test_exit_codes);
    suite_add_tcase (suite, cli);
    return suite;
}

int
main (void)
{
    SRunner *runner = srunner_create (s_client_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
