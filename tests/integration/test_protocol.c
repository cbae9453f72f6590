/*  test_protocol.c -- what the broker and the worker do with bad frames,
    and the worker side of the protocol (credit, heartbeats, leases), seen
    from a raw ZeroMQ peer.

    Every malformed message must get an ERROR naming the problem, and the
    process must stay up and keep serving. Under -DLLMQ_SANITIZE=ON the
    processes' exit status after SIGTERM also reports leaks (LeakSanitizer
    exits non-zero), so "exits 0" checks that too.
*/
#include "harness.h"
#include "codec.h"

#include <check.h>
#include <czmq.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_WAIT 10000

static zsock_t *
s_dealer (const char *endpoint)
{
    zsock_t *s = zsock_new (ZMQ_DEALER);
    zsock_set_linger (s, 0);
    zsock_set_rcvtimeo (s, T_WAIT);
    ck_assert_int_eq (zsock_connect (s, "%s", endpoint), 0);
    return s;
}

/*  Send raw frames: a list of (data, size) pairs. */
static void
s_send_raw (zsock_t *s, int nframes, const void *const *data, const size_t *size)
{
    zmsg_t *m = zmsg_new ();
    for (int i = 0; i < nframes; i++) {
        zmsg_addmem (m, data[i], size[i]);
    }
    zmsg_send (&m, s);
}

static void
s_send_msg (zsock_t *s, const llmq_msg_t *m)
{
    zmsg_t *msg = llmq_msg_encode (m);
    zmsg_send (&msg, s);
}

/*  Receive one message and decode it; fails the test on timeout. */
static llmq_msg_t
s_recv (zsock_t *s, llmq_arena_t *arena)
{
    zmsg_t *msg = zmsg_recv (s);
    ck_assert_msg (msg != NULL, "no reply within %d ms", T_WAIT);
    llmq_msg_t m;
    char why[256];
    int rc = llmq_msg_decode (msg, 0, &m, arena, why, sizeof why);
    ck_assert_msg (rc == 0, "reply does not decode: %s", why);
    zmsg_destroy (&msg);
    return m;
}

/*  Receive, skipping heartbeats. */
static llmq_msg_t
s_recv_skip_hb (zsock_t *s, llmq_arena_t *arena)
{
    for (;;) {
        llmq_msg_t m = s_recv (s, arena);
        if (m.cmd != LLMQ_CMD_HEARTBEAT) {
            return m;
        }
    }
}

static void
s_expect_error (zsock_t *s, llmq_arena_t *arena, int code)
{
    llmq_msg_t m = s_recv_skip_hb (s, arena);
    ck_assert_int_eq (m.cmd, LLMQ_CMD_ERROR);
    ck_assert_int_eq (m.code, code);
    ck_assert_ptr_nonnull (m.reason);
}

static const byte s_sig[5] = { 'L', 'L', 'M', 'Q', LLMQ_PROTO_VERSION };

static zsock_t *
s_ping_ok (const char *endpoint, llmq_arena_t *arena)
{
    zsock_t *s = s_dealer (endpoint);
    llmq_msg_t ping = { 0 };
    ping.cmd = LLMQ_CMD_PING;
    ping.corr = 77;
    s_send_msg (s, &ping);
    llmq_msg_t r = s_recv (s, arena);
    ck_assert_int_eq (r.cmd, LLMQ_CMD_PONG);
    ck_assert_uint_eq (r.corr, 77);
    return s;
}

START_TEST (test_broker_refuses_malformed_frames)
{
    harness_t *h = h_new ("max_message = 64KiB\n");
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq_arena_t *arena = llmq_arena_new ();
    zsock_t *s = s_dealer (h->frontend);
    byte cmd = LLMQ_CMD_PING;
    byte body[] = { 0x80 };                     /* empty map */
    int bad = 0;

    /* Two frames only. */
    s_send_raw (s, 2, (const void *[]) { s_sig, &cmd }, (size_t[]) { 5, 1 });
    s_expect_error (s, arena, LLMQ_ERR_PROTOCOL); bad++;
    /* Wrong signature. */
    s_send_raw (s, 3, (const void *[]) { "XXXX\x01", &cmd, body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (s, arena, LLMQ_ERR_PROTOCOL); bad++;
    /* Another protocol version. */
    s_send_raw (s, 3, (const void *[]) { "LLMQ\x02", &cmd, body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (s, arena, LLMQ_ERR_VERSION); bad++;
    /* Command frame of two bytes, and an unknown command. */
    s_send_raw (s, 3, (const void *[]) { s_sig, "\x07\x07", body }, (size_t[]) { 5, 2, 1 });
    s_expect_error (s, arena, LLMQ_ERR_PROTOCOL); bad++;
    s_send_raw (s, 3, (const void *[]) { s_sig, "\x99", body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (s, arena, LLMQ_ERR_UNKNOWN_COMMAND); bad++;
    /* A body that is not msgpack, and a truncated one. */
    s_send_raw (s, 3, (const void *[]) { s_sig, &cmd, "\xc1\xc1" }, (size_t[]) { 5, 1, 2 });
    s_expect_error (s, arena, LLMQ_ERR_PROTOCOL); bad++;
    byte submit = LLMQ_CMD_SUBMIT;
    s_send_raw (s, 3, (const void *[]) { s_sig, &submit, "\x81\xa4jobs\x91\x82" }, (size_t[]) { 5, 1, 8 });
    s_expect_error (s, arena, LLMQ_ERR_PROTOCOL); bad++;
    /* SUBMIT without jobs; a worker command on the client socket. */
    s_send_raw (s, 3, (const void *[]) { s_sig, &submit, body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (s, arena, LLMQ_ERR_PROTOCOL); bad++;
    byte done = LLMQ_CMD_HEARTBEAT;
    s_send_raw (s, 3, (const void *[]) { s_sig, &done, body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (s, arena, LLMQ_ERR_UNKNOWN_COMMAND); bad++;
    /* Over max_message (64 KiB) but under ZeroMQ's hard limit: an error reply. */
    size_t big = 100 * 1024;
    byte *huge = (byte *) calloc (1, big);
    s_send_raw (s, 3, (const void *[]) { s_sig, &cmd, huge }, (size_t[]) { 5, 1, big });
    s_expect_error (s, arena, LLMQ_ERR_TOO_LARGE); bad++;
    /* A job that is invalid: the submit is refused with its index. */
    llmq_job_t jobs[2];
    memset (jobs, 0, sizeof jobs);
    jobs[0].model = "echo";
    jobs[0].body = "{\"messages\":[]}";
    jobs[1].model = "no-such-group";
    jobs[1].body = "{}";
    llmq_msg_t sm = { 0 };
    sm.cmd = LLMQ_CMD_SUBMIT;
    sm.corr = 5;
    sm.jobs = jobs;
    sm.njobs = 2;
    s_send_msg (s, &sm);
    llmq_msg_t r = s_recv (s, arena);
    ck_assert_int_eq (r.cmd, LLMQ_CMD_REJECTED);
    ck_assert_int_eq (r.code, LLMQ_ERR_UNKNOWN_MODEL);
    ck_assert_int_eq (r.index, 1);
    ck_assert_uint_eq (r.corr, 5);
    free (huge);

    /* Far over it: ZeroMQ drops that connection. The broker goes on. */
    zsock_t *s2 = s_dealer (h->frontend);
    size_t giant = 4 * 1024 * 1024;
    byte *g = (byte *) calloc (1, giant);
    s_send_raw (s2, 3, (const void *[]) { s_sig, &cmd, g }, (size_t[]) { 5, 1, giant });
    free (g);
    zsock_destroy (&s2);

    /* Still serving: the same socket and a new one get PONG, and nothing
       was stored from all that. */
    llmq_msg_t ping = { 0 };
    ping.cmd = LLMQ_CMD_PING;
    ping.corr = 9;
    s_send_msg (s, &ping);
    r = s_recv (s, arena);
    ck_assert_int_eq (r.cmd, LLMQ_CMD_PONG);
    zsock_t *s3 = s_ping_ok (h->frontend, arena);
    zsock_destroy (&s3);
    llmq *c = h_client (h);
    ck_assert_int_eq (h_stat (c, "totals.bad_messages"), bad);
    ck_assert_int_eq (h_stat (c, "queued"), 0);
    ck_assert_int_eq (h_stat (c, "totals.submitted"), 0);
    llmq_close (&c);
    zsock_destroy (&s);
    /* A clean exit, which also means no leaks under the sanitizer build. */
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    llmq_arena_destroy (&arena);
    h_destroy (&h);
}
END_TEST

START_TEST (test_broker_worker_side_errors)
{
    harness_t *h = h_new (NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq_arena_t *arena = llmq_arena_new ();
    zsock_t *w = s_dealer (h->backend);
    /* A worker that never said HELLO is told to. */
    llmq_msg_t hb = { 0 };
    hb.cmd = LLMQ_CMD_HEARTBEAT;
    s_send_msg (w, &hb);
    s_expect_error (w, arena, LLMQ_ERR_UNKNOWN_WORKER);
    /* Say HELLO (no credit), then send what a worker must not. */
    llmq_msg_t hello = { 0 };
    hello.cmd = LLMQ_CMD_HELLO;
    s_send_msg (w, &hello);
    byte body[] = { 0x80 };
    byte submit = LLMQ_CMD_SUBMIT;
    s_send_raw (w, 3, (const void *[]) { s_sig, &submit, body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (w, arena, LLMQ_ERR_PROTOCOL);
    s_send_raw (w, 3, (const void *[]) { s_sig, "\x99", body }, (size_t[]) { 5, 1, 1 });
    s_expect_error (w, arena, LLMQ_ERR_UNKNOWN_COMMAND);
    /* A DONE for a lease that does not exist is dropped, not stored. */
    llmq_result_t res = { 0 };
    res.content = "forged";
    llmq_msg_t d = { 0 };
    d.cmd = LLMQ_CMD_DONE;
    d.id = 1;
    d.lease = 12345;
    d.results = &res;
    d.nresults = 1;
    s_send_msg (w, &d);
    llmq *c = h_client (h);
    ck_assert (h_wait_stat (c, "worker_count", 1, T_WAIT));
    ck_assert_int_eq (h_stat (c, "totals.done"), 0);
    llmq_close (&c);
    zsock_destroy (&w);
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    llmq_arena_destroy (&arena);
    h_destroy (&h);
}
END_TEST

/*  A worker that takes a job and goes silent loses its lease after
    `liveness` heartbeats; the job goes back with the attempt counted and
    a real worker finishes it. Credit is respected: slots = 1 means one
    DISPATCH, never two. */
START_TEST (test_silent_worker_loses_its_lease)
{
    harness_t *h = h_new ("heartbeat = 100ms\nliveness = 3\n");
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    llmq_arena_t *arena = llmq_arena_new ();
    llmq *c = h_client (h);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "echo";
    j.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"lost and found\"}]}";
    uint64_t ids[2];
    llmq_job two[2] = { j, j };
    ck_assert_int_eq (llmq_submit_many (c, two, 2, ids, 5000), LLMQ_OK);

    zsock_t *w = s_dealer (h->backend);
    llmq_msg_t hello = { 0 };
    hello.cmd = LLMQ_CMD_HELLO;
    hello.slots = 1;
    hello.host = "fake";
    s_send_msg (w, &hello);
    llmq_msg_t m = s_recv_skip_hb (w, arena);
    ck_assert_int_eq (m.cmd, LLMQ_CMD_DISPATCH);
    ck_assert_uint_eq (m.njobs, 1);
    ck_assert_uint_eq (m.jobs[0].id, ids[0]);
    ck_assert_uint_gt (m.jobs[0].lease, 0);
    ck_assert_str_eq (m.deployment, "echo");
    uint64_t lease = m.jobs[0].lease;
    /* One credit: the second job is not sent while we hold the first. */
    ck_assert_int_eq (h_stat (c, "in_flight"), 1);
    ck_assert_int_eq (h_stat (c, "queued"), 1);
    /* Now silence. The broker declares us lost and requeues. */
    ck_assert (h_wait_stat (c, "totals.lost_workers", 1, T_WAIT));
    llmq_result *st = NULL;
    ck_assert_int_eq (llmq_status (c, ids[0], 5000, &st), LLMQ_OK);
    ck_assert_int_eq (st->state, LLMQ_STATE_QUEUED);
    ck_assert_uint_eq (st->attempts, 1);
    llmq_result_free (&st);
    /* Our late DONE is stale: refused, and we are told to say HELLO. */
    llmq_result_t res = { 0 };
    res.content = "too late";
    llmq_msg_t d = { 0 };
    d.cmd = LLMQ_CMD_DONE;
    d.id = ids[0];
    d.lease = lease;
    d.slots = 1;
    d.results = &res;
    d.nresults = 1;
    s_send_msg (w, &d);
    s_expect_error (w, arena, LLMQ_ERR_UNKNOWN_WORKER);
    zsock_destroy (&w);
    /* A real worker finishes both. */
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, ids[0], T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    ck_assert_str_eq (r->content, "echo: lost and found");
    ck_assert_uint_eq (r->attempts, 2);
    llmq_result_free (&r);
    ck_assert_int_eq (llmq_wait (c, ids[1], T_WAIT, &r), LLMQ_OK);
    ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
    llmq_result_free (&r);
    llmq_close (&c);
    llmq_arena_destroy (&arena);
    h_destroy (&h);
}
END_TEST

/*  The worker faces a broker that sends garbage: it answers ERROR, stays
    up, and still runs a good job. A fake broker binds the backend. */
START_TEST (test_worker_survives_malformed_frames)
{
    /* A long heartbeat: this fake broker sends none, and the worker must
       not give up on it and reconnect while the test runs. */
    harness_t *h = h_new ("heartbeat = 10s\nmax_message = 64KiB\n");
    llmq_arena_t *arena = llmq_arena_new ();
    zsock_t *b = zsock_new (ZMQ_ROUTER);
    zsock_set_rcvtimeo (b, T_WAIT);
    zsock_set_linger (b, 0);
    ck_assert_int_ge (zsock_bind (b, "%s", h->backend), 0);
    ck_assert_int_ge (h_start_worker (h, 2, -1), -1);   /* no broker stats to wait on */
    ck_assert_int_gt (h->workers[0].pid, 0);
    /* Its HELLO. */
    zframe_t *who = NULL;
    llmq_msg_t m;
    for (;;) {
        zmsg_t *msg = zmsg_recv (b);
        ck_assert_ptr_nonnull (msg);
        zframe_destroy (&who);
        who = zmsg_pop (msg);
        char why[256];
        ck_assert_int_eq (llmq_msg_decode (msg, 0, &m, arena, why, sizeof why), 0);
        zmsg_destroy (&msg);
        if (m.cmd == LLMQ_CMD_HELLO) {
            break;
        }
    }
    ck_assert_uint_eq (m.slots, 2);
    /* Garbage of each kind, and a body over max_message (64 KiB). */
    byte body[] = { 0x80 };
    byte dispatch = LLMQ_CMD_DISPATCH;
    byte submit = LLMQ_CMD_SUBMIT;
    byte *huge = (byte *) calloc (1, 100 * 1024);
    const void *bad[][3] = {
        { "XXXX\x01", &dispatch, body },
        { "LLMQ\x02", &dispatch, body },
        { s_sig, "\x99", body },
        { s_sig, &dispatch, body },                 /* DISPATCH without its fields */
        { s_sig, &dispatch, "\xc1" },              /* not msgpack */
        { s_sig, &dispatch, "\x81\xa4jobs\x91" }, /* truncated */
        { s_sig, &dispatch, huge },                 /* too large */
        { s_sig, &submit, "\x81\xa4jobs\x91\x82\xa5model\xa1m\xa4" "body\xa2{}" },  /* a client command */
    };
    size_t sizes[][3] = { { 5, 1, 1 }, { 5, 1, 1 }, { 5, 1, 1 }, { 5, 1, 1 }, { 5, 1, 1 }, { 5, 1, 7 },
                          { 5, 1, 100 * 1024 }, { 5, 1, 24 } };
    int expect[] = { LLMQ_ERR_PROTOCOL, LLMQ_ERR_VERSION, LLMQ_ERR_UNKNOWN_COMMAND, LLMQ_ERR_PROTOCOL,
                     LLMQ_ERR_PROTOCOL, LLMQ_ERR_PROTOCOL, LLMQ_ERR_TOO_LARGE, LLMQ_ERR_UNKNOWN_COMMAND };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
        zmsg_t *msg = zmsg_new ();
        zmsg_addmem (msg, zframe_data (who), zframe_size (who));
        for (int f = 0; f < 3; f++) {
            zmsg_addmem (msg, bad[i][f], sizes[i][f]);
        }
        zmsg_send (&msg, b);
        for (;;) {
            msg = zmsg_recv (b);
            ck_assert_msg (msg != NULL, "worker did not answer bad message %zu", i);
            zframe_t *id = zmsg_pop (msg);
            zframe_destroy (&id);
            char why[256];
            ck_assert_int_eq (llmq_msg_decode (msg, 0, &m, arena, why, sizeof why), 0);
            zmsg_destroy (&msg);
            if (m.cmd != LLMQ_CMD_HEARTBEAT) {
                break;
            }
        }
        ck_assert_int_eq (m.cmd, LLMQ_CMD_ERROR);
        ck_assert_msg ((int) m.code == expect[i], "bad message %zu: code %u, expected %d", i, m.code, expect[i]);
    }
    free (huge);
    /* An unknown deployment fails the job, and returns its slot. */
    llmq_job_t job = { 0 };
    job.id = 7;
    job.lease = 70;
    job.model = "echo";
    job.body = "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    llmq_msg_t d = { 0 };
    d.cmd = LLMQ_CMD_DISPATCH;
    d.jobs = &job;
    d.njobs = 1;
    d.deployment = "nowhere";
    d.timeout_ms = 5000;
    zmsg_t *msg = llmq_msg_encode (&d);
    zframe_t *to = zframe_dup (who);
    zmsg_prepend (msg, &to);
    zmsg_send (&msg, b);
    /* And a good job still runs. */
    job.id = 8;
    job.lease = 80;
    d.deployment = "echo";
    msg = llmq_msg_encode (&d);
    to = zframe_dup (who);
    zmsg_prepend (msg, &to);
    zmsg_send (&msg, b);
    bool failed7 = false, done8 = false;
    while (!(failed7 && done8)) {
        msg = zmsg_recv (b);
        ck_assert_ptr_nonnull (msg);
        zframe_t *id = zmsg_pop (msg);
        zframe_destroy (&id);
        char why[256];
        ck_assert_int_eq (llmq_msg_decode (msg, 0, &m, arena, why, sizeof why), 0);
        zmsg_destroy (&msg);
        if (m.cmd == LLMQ_CMD_FAILED && m.id == 7) {
            ck_assert_uint_eq (m.lease, 70);
            ck_assert_uint_eq (m.slots, 1);
            ck_assert_int_ne (m.results[0].error_class, LLMQ_EC_NONE);
            ck_assert (!llmq_error_class_retryable (m.results[0].error_class));
            failed7 = true;
        }
        if (m.cmd == LLMQ_CMD_DONE && m.id == 8) {
            ck_assert_uint_eq (m.lease, 80);
            ck_assert_uint_eq (m.slots, 1);
            ck_assert_str_eq (m.results[0].content, "echo: hi");
            done8 = true;
        }
    }
    zframe_destroy (&who);
    /* SIGTERM: it says BYE and exits 0. */
    ck_assert_int_eq (h_stop (&h->workers[0], SIGTERM), 0);
    bool bye = false;
    while (!bye && (msg = zmsg_recv (b)) != NULL) {
        zframe_t *id = zmsg_pop (msg);
        zframe_destroy (&id);
        char why[256];
        if (llmq_msg_decode (msg, 0, &m, arena, why, sizeof why) == 0 && m.cmd == LLMQ_CMD_BYE) {
            bye = true;
        }
        zmsg_destroy (&msg);
    }
    ck_assert (bye);
    zsock_destroy (&b);
    llmq_arena_destroy (&arena);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("protocol");
    TCase *tc = tcase_create ("protocol");
    tcase_set_timeout (tc, 60);
    tcase_add_test (tc, test_broker_refuses_malformed_frames);
    tcase_add_test (tc, test_broker_worker_side_errors);
    tcase_add_test (tc, test_silent_worker_loses_its_lease);
    tcase_add_test (tc, test_worker_survives_malformed_frames);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
