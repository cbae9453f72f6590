/*  test_codec.c -- the codec suite: how llmq turns messages into frames and
    back, and how the decoder refuses everything that is not a message.

    Round trips go through the real three-frame zmsg (llmq_msg_encode, then
    llmq_msg_decode), with every field of the C struct compared. Refusals use
    hand-written msgpack (the s_mp_* writers below) for the bodies our own
    encoder would never produce. docs/protocol.md is the source of the
    required fields and limits checked here.
*/
#include "codec.h"

#include <check.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_MAX_BODY  (64u << 20)         //  a broker's default max_message

//  A body written as a C literal: pointer and length, NULs included.
#define S_BYTES(lit) (lit), (sizeof (lit) - 1)

//  Every command of the protocol, with its required fields (in bold in
//  docs/protocol.md section 4), space separated.
static const struct {
    uint8_t cmd;
    const char *required;
} s_commands[] = {
    { LLMQ_CMD_SUBMIT,    "jobs" },
    { LLMQ_CMD_CANCEL,    "id" },
    { LLMQ_CMD_STATUS,    "id" },
    { LLMQ_CMD_WAIT,      "ids" },
    { LLMQ_CMD_FETCH,     "batch" },
    { LLMQ_CMD_STATS,     "" },
    { LLMQ_CMD_PING,      "" },
    { LLMQ_CMD_ACCEPTED,  "ids" },
    { LLMQ_CMD_REJECTED,  "code" },
    { LLMQ_CMD_CHUNK,     "id text" },
    { LLMQ_CMD_RESULT,    "results" },
    { LLMQ_CMD_REPLY,     "" },
    { LLMQ_CMD_RESULTS,   "" },
    { LLMQ_CMD_STATS_REP, "json" },
    { LLMQ_CMD_PONG,      "" },
    { LLMQ_CMD_RESET,     "id" },
    { LLMQ_CMD_ADMIN,     "json" },
    { LLMQ_CMD_ADMIN_REP, "json" },
    { LLMQ_CMD_EVENT,     "json" },
    { LLMQ_CMD_ERROR,     "code" },
    { LLMQ_CMD_HELLO,     "" },
    { LLMQ_CMD_CREDIT,    "" },
    { LLMQ_CMD_HEARTBEAT, "" },
    { LLMQ_CMD_DONE,      "id lease results" },
    { LLMQ_CMD_FAILED,    "id lease results" },
    { LLMQ_CMD_BYE,       "" },
    { LLMQ_CMD_DISPATCH,  "jobs dep" },
    { LLMQ_CMD_ABORT,     "id lease" },
};
#define S_NCOMMANDS ((int) (sizeof s_commands / sizeof s_commands[0]))

static const char *s_utf8 = "Grüße, 世界 — ça va? 🚀";


//  --------------------------------------------------------------------------
//  Sample jobs, results and messages with every field set

static llmq_job_t
s_full_job (uint64_t n)
{
    static const char *models[] = { "gpt-4o-mini", "claude-3-haiku", "モデル" };
    llmq_job_t job = {
        .id = 1000 + n,
        .model = models[n % 3],
        .body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Grüße, 世界 — ça va? 🚀\"}],\"max_tokens\":64}",
        .idem_key = n == 1 ? "" : "idem-Ω-7",          //  empty string, not NULL
        .user = "user-ü",
        .org = "org-世界",
        .batch_id = "batch-2026-01",
        .custom_id = n == 2 ? "row-2" : "row-0",
        .meta = "{\"trace\":\"abc\"}",
        .priority = (uint8_t) (n % 4),
        .stream = true,
        .restart = n % 2 == 1,
        .max_attempts = 5 + (uint32_t) n,
        .deadline_us = 1767225600000000ull + n,
        .cache_ttl_ms = n % 2 == 1 ? -1 : 3600000 + (int64_t) n,
        .state = LLMQ_STATE_RUNNING,
        .attempts = 2,
        .lease = UINT64_MAX - n,
        .enqueued_us = 1767225500000000ull,
        .vdeadline_us = 1767225530000000ull,
        .not_before_us = 1767225540000000ull,
        .last_error = "upstream 503 — retrying",
    };
    return job;
}

static llmq_result_t
s_full_result (uint64_t n)
{
    llmq_result_t res = {
        .id = 77 + n,
        .state = LLMQ_STATE_DONE,
        .content = s_utf8,
        .finish_reason = "stop",
        .deployment = "mock-gpt",
        .request_id = "req_01HZX",
        .error = n == 1 ? "" : "none at all",
        .model = "gpt-4o-mini",
        .batch_id = "batch-2026-01",
        .custom_id = "row-9",
        .tool_calls = "[{\"id\":\"call_1\",\"type\":\"function\",\"function\":"
                      "{\"name\":\"météo\",\"arguments\":\"{\\\"q\\\":\\\"Zürich\\\"}\"}}]",
        .error_class = LLMQ_EC_SERVER,
        .degraded = n % 2 == 0,
        .cached = n % 3 == 0,
        .cost_micro = 1234567 + (uint64_t) n,
        .priority = LLMQ_PRIO_LOW,
        .http_status = 503,
        .attempts = 3,
        .prompt_tokens = 1234567,
        .completion_tokens = UINT32_MAX,
        .cached_tokens = 1000,
        .enqueued_us = 1767225500000000ull,
        .started_us = 1767225501000000ull,
        .finished_us = 1767225502000000ull,
        .latency_us = 987654,
        .rl_requests = 0,                       //  used up: sent as 1
        .rl_tokens = n % 2 ? -1 : 149984,       //  not said: left out
        .rl_reset_ms = 6 * 60 * 1000,
    };
    return res;
}

static llmq_job_t s_one_job[1];
static llmq_result_t s_one_result[1];
static uint64_t s_three_ids[3] = { 1, 42, UINT64_MAX };
static uint8_t s_three_dups[3] = { 0, 1, 0 };

//  A message of `cmd` with every field of llmq_msg_t set (one job, one
//  result: the counts DISPATCH, DONE, FAILED and RESULT insist on).
static llmq_msg_t
s_full_msg (uint8_t cmd)
{
    s_one_job[0] = s_full_job (0);
    s_one_result[0] = s_full_result (0);
    llmq_msg_t m = {
        .cmd = cmd,
        .corr = 0x0102030405060708ull,
        .code = LLMQ_ERR_STORE_FULL,
        .reason = "store full — später",
        .retry_after_ms = 1500,
        .index = 7,
        .jobs = s_one_job, .njobs = 1,
        .notify = true,
        .ids = s_three_ids, .nids = 3,
        .dups = s_three_dups,
        .id = 123456789,
        .lease = 99,
        .seq = 4,
        .text = "chunk ✓",
        .results = s_one_result, .nresults = 1,
        .batch_id = "batch-α",
        .after = 10,
        .limit = 500,
        .more = true,
        .slots = 64,
        .host = "worker-1.example",
        .pid = 4242,
        .version = "0.1.0",
        .deployment = "mock-gpt",
        .timeout_ms = 60000,
        .json = "{\"ready\":{\"urgent\":1}}",
    };
    return m;
}

//  Sets the field `name` of a minimal message; with `on` false clears it.
static void
s_set_field (llmq_msg_t *m, const char *name, bool on)
{
    if (strcmp (name, "jobs") == 0) {
        s_one_job[0] = (llmq_job_t) { .model = "gpt-4o-mini", .body = "{}" };
        m->jobs = on ? s_one_job : NULL;
        m->njobs = on ? 1 : 0;
    }
    else if (strcmp (name, "results") == 0) {
        s_one_result[0] = (llmq_result_t) { .state = LLMQ_STATE_DONE, .content = "ok" };
        m->results = on ? s_one_result : NULL;
        m->nresults = on ? 1 : 0;
    }
    else if (strcmp (name, "ids") == 0) {
        m->ids = on ? s_three_ids : NULL;
        m->nids = on ? 3 : 0;
    }
    else if (strcmp (name, "id") == 0) {
        m->id = on ? 17 : 0;
    }
    else if (strcmp (name, "lease") == 0) {
        m->lease = on ? 3 : 0;
    }
    else if (strcmp (name, "corr") == 0) {
        m->corr = on ? 5 : 0;
    }
    else if (strcmp (name, "code") == 0) {
        m->code = on ? LLMQ_ERR_NOT_FOUND : 0;
    }
    else if (strcmp (name, "batch") == 0) {
        m->batch_id = on ? "b1" : NULL;
    }
    else if (strcmp (name, "text") == 0) {
        m->text = on ? "" : NULL;               //  empty text is still text
    }
    else if (strcmp (name, "dep") == 0) {
        m->deployment = on ? "echo" : NULL;
    }
    else if (strcmp (name, "json") == 0) {
        m->json = on ? "{}" : NULL;
    }
    else {
        ck_abort_msg ("no such required field '%s' in this test", name);
    }
}

//  The smallest valid message of command number `i` in s_commands: only its
//  required fields. REJECTED's `index` is -1 when no job is to blame.
static llmq_msg_t
s_minimal_msg (int i)
{
    llmq_msg_t m = { .cmd = s_commands[i].cmd };
    m.index = m.cmd == LLMQ_CMD_REJECTED ? -1 : 0;
    char names[64];
    snprintf (names, sizeof names, "%s", s_commands[i].required);
    char *save = NULL;
    for (char *name = strtok_r (names, " ", &save); name; name = strtok_r (NULL, " ", &save)) {
        s_set_field (&m, name, true);
    }
    return m;
}


//  --------------------------------------------------------------------------
//  Comparing decoded to sent

static void
s_assert_job_eq (const llmq_job_t *a, const llmq_job_t *b)
{
    ck_assert_uint_eq (a->id, b->id);
    ck_assert_pstr_eq (a->model, b->model);
    ck_assert_pstr_eq (a->body, b->body);
    ck_assert_pstr_eq (a->idem_key, b->idem_key);
    ck_assert_pstr_eq (a->user, b->user);
    ck_assert_pstr_eq (a->org, b->org);
    ck_assert_pstr_eq (a->batch_id, b->batch_id);
    ck_assert_pstr_eq (a->custom_id, b->custom_id);
    ck_assert_pstr_eq (a->meta, b->meta);
    ck_assert_uint_eq (a->priority, b->priority);
    ck_assert_int_eq (a->stream, b->stream);
    ck_assert_int_eq (a->restart, b->restart);
    ck_assert_uint_eq (a->max_attempts, b->max_attempts);
    ck_assert_uint_eq (a->deadline_us, b->deadline_us);
    ck_assert_int_eq (a->cache_ttl_ms, b->cache_ttl_ms);
    ck_assert_uint_eq (a->state, b->state);
    ck_assert_uint_eq (a->attempts, b->attempts);
    ck_assert_uint_eq (a->lease, b->lease);
    ck_assert_uint_eq (a->enqueued_us, b->enqueued_us);
    ck_assert_uint_eq (a->vdeadline_us, b->vdeadline_us);
    ck_assert_uint_eq (a->not_before_us, b->not_before_us);
    ck_assert_pstr_eq (a->last_error, b->last_error);
}

//  `quota`: the rate-limit fields travel too (DONE, FAILED); otherwise they
//  must come back as unknown.
static void
s_assert_result_eq (const llmq_result_t *a, const llmq_result_t *b, bool quota)
{
    ck_assert_uint_eq (a->id, b->id);
    ck_assert_uint_eq (a->state, b->state);
    ck_assert_pstr_eq (a->content, b->content);
    ck_assert_pstr_eq (a->finish_reason, b->finish_reason);
    ck_assert_pstr_eq (a->deployment, b->deployment);
    ck_assert_pstr_eq (a->request_id, b->request_id);
    ck_assert_pstr_eq (a->error, b->error);
    ck_assert_pstr_eq (a->model, b->model);
    ck_assert_pstr_eq (a->batch_id, b->batch_id);
    ck_assert_pstr_eq (a->custom_id, b->custom_id);
    ck_assert_pstr_eq (a->tool_calls, b->tool_calls);
    ck_assert_int_eq (a->degraded, b->degraded);
    ck_assert_int_eq (a->cached, b->cached);
    ck_assert_uint_eq (a->cost_micro, b->cost_micro);
    ck_assert_uint_eq (a->error_class, b->error_class);
    ck_assert_uint_eq (a->priority, b->priority);
    ck_assert_uint_eq (a->http_status, b->http_status);
    ck_assert_uint_eq (a->attempts, b->attempts);
    ck_assert_uint_eq (a->prompt_tokens, b->prompt_tokens);
    ck_assert_uint_eq (a->completion_tokens, b->completion_tokens);
    ck_assert_uint_eq (a->cached_tokens, b->cached_tokens);
    ck_assert_uint_eq (a->enqueued_us, b->enqueued_us);
    ck_assert_uint_eq (a->started_us, b->started_us);
    ck_assert_uint_eq (a->finished_us, b->finished_us);
    ck_assert_uint_eq (a->latency_us, b->latency_us);
    if (quota) {
        ck_assert_int_eq (a->rl_requests, b->rl_requests);
        ck_assert_int_eq (a->rl_tokens, b->rl_tokens);
        ck_assert_uint_eq (a->rl_reset_ms, b->rl_reset_ms);
    }
    else {
        ck_assert_int_eq (b->rl_requests, -1);
        ck_assert_int_eq (b->rl_tokens, -1);
        ck_assert_uint_eq (b->rl_reset_ms, 0);
    }
}

static void
s_assert_msg_eq (const llmq_msg_t *a, const llmq_msg_t *b)
{
    ck_assert_uint_eq (a->cmd, b->cmd);
    ck_assert_uint_eq (a->corr, b->corr);
    ck_assert_uint_eq (a->code, b->code);
    ck_assert_pstr_eq (a->reason, b->reason);
    ck_assert_uint_eq (a->retry_after_ms, b->retry_after_ms);
    ck_assert_int_eq (a->index, b->index);
    ck_assert_uint_eq (a->njobs, b->njobs);
    for (size_t i = 0; i < a->njobs; i++) {
        s_assert_job_eq (&a->jobs[i], &b->jobs[i]);
    }
    ck_assert_int_eq (a->notify, b->notify);
    ck_assert_uint_eq (a->nids, b->nids);
    for (size_t i = 0; i < a->nids; i++) {
        ck_assert_uint_eq (a->ids[i], b->ids[i]);
    }
    ck_assert_int_eq (a->dups != NULL, b->dups != NULL);
    if (a->dups && a->nids) {
        ck_assert_mem_eq (a->dups, b->dups, a->nids);
    }
    ck_assert_uint_eq (a->id, b->id);
    ck_assert_uint_eq (a->lease, b->lease);
    ck_assert_uint_eq (a->seq, b->seq);
    ck_assert_pstr_eq (a->text, b->text);
    ck_assert_uint_eq (a->nresults, b->nresults);
    for (size_t i = 0; i < a->nresults; i++) {
        s_assert_result_eq (&a->results[i], &b->results[i],
                            a->cmd == LLMQ_CMD_DONE || a->cmd == LLMQ_CMD_FAILED);
    }
    ck_assert_pstr_eq (a->batch_id, b->batch_id);
    ck_assert_uint_eq (a->after, b->after);
    ck_assert_uint_eq (a->limit, b->limit);
    ck_assert_int_eq (a->more, b->more);
    ck_assert_uint_eq (a->slots, b->slots);
    ck_assert_pstr_eq (a->host, b->host);
    ck_assert_uint_eq (a->pid, b->pid);
    ck_assert_pstr_eq (a->version, b->version);
    ck_assert_pstr_eq (a->deployment, b->deployment);
    ck_assert_uint_eq (a->timeout_ms, b->timeout_ms);
    ck_assert_pstr_eq (a->json, b->json);
}

//  Sends `in` through the three frames and back; `out` lives in `arena`.
static void
s_roundtrip (const llmq_msg_t *in, llmq_msg_t *out, llmq_arena_t *arena)
{
    zmsg_t *msg = llmq_msg_encode (in);
    ck_assert_ptr_nonnull (msg);
    ck_assert_uint_eq (zmsg_size (msg), 3);
    size_t body_size = zframe_size (zmsg_last (msg));
    char why[256] = "";
    int rc = llmq_msg_decode (msg, S_MAX_BODY, out, arena, why, sizeof why);
    ck_assert_msg (rc == LLMQ_OK, "%s: decode gave %d: %s", llmq_cmd_name (in->cmd), rc, why);
    //  The decoder reads the message, it does not consume it.
    ck_assert_uint_eq (zmsg_size (msg), 3);
    ck_assert_uint_eq (zframe_size (zmsg_last (msg)), body_size);
    zmsg_destroy (&msg);
}

//  Decodes a message built from raw frames; returns the code, reason in why.
static int
s_decode_frames (const void *sig, size_t siglen, const void *cmd, size_t cmdlen,
                 const void *body, size_t bodylen, char *why, size_t whylen)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addmem (msg, sig, siglen);
    zmsg_addmem (msg, cmd, cmdlen);
    zmsg_addmem (msg, body, bodylen);
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    int rc = llmq_msg_decode (msg, S_MAX_BODY, &out, arena, why, whylen);
    llmq_arena_destroy (&arena);
    zmsg_destroy (&msg);
    return rc;
}

//  Decodes a raw body of `cmd`; a refusal must come with a reason.
static int
s_decode_body (uint8_t cmd, const void *body, size_t len, char *why, size_t whylen)
{
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    why[0] = 0;
    int rc = llmq_msg_decode_body (cmd, body, len, &out, arena, why, whylen);
    llmq_arena_destroy (&arena);
    if (rc != LLMQ_OK) {
        ck_assert_msg (why[0], "refusal %d without a reason", rc);
    }
    return rc;
}


//  --------------------------------------------------------------------------
//  Hand-written msgpack, for bodies the encoder would never write

static void
s_append (llmq_buf_t *b, const void *data, size_t len)
{
    if (b->size + len > b->alloc) {
        b->alloc = (b->size + len) * 2;
        b->data = (char *) realloc (b->data, b->alloc);
        ck_assert_ptr_nonnull (b->data);
    }
    memcpy (b->data + b->size, data, len);
    b->size += len;
}

static void
s_mp_be (llmq_buf_t *b, uint8_t tag, uint64_t v, int bytes)
{
    unsigned char p[9] = { tag };
    for (int i = 0; i < bytes; i++) {
        p[bytes - i] = (unsigned char) (v >> (8 * i));
    }
    s_append (b, p, (size_t) bytes + 1);
}

static void
s_mp_map (llmq_buf_t *b, uint32_t n)
{
    s_mp_be (b, 0xdf, n, 4);                    //  map32
}

static void
s_mp_array (llmq_buf_t *b, uint32_t n)
{
    s_mp_be (b, 0xdd, n, 4);                    //  array32
}

static void
s_mp_uint (llmq_buf_t *b, uint64_t v)
{
    s_mp_be (b, 0xcf, v, 8);                    //  uint64
}

static void
s_mp_str (llmq_buf_t *b, const char *s, size_t len)
{
    s_mp_be (b, 0xdb, len, 4);                  //  str32
    s_append (b, s, len);
}

static void
s_mp_key (llmq_buf_t *b, const char *key)
{
    s_mp_str (b, key, strlen (key));
}

static void
s_mp_bin (llmq_buf_t *b, const void *data, uint32_t len)
{
    s_mp_be (b, 0xc6, len, 4);                  //  bin32
    s_append (b, data, len);
}


//  --------------------------------------------------------------------------
//  Round trips

//  Every command carries every field of the struct through the wire.
START_TEST (test_every_command_every_field)
{
    llmq_msg_t in = s_full_msg (s_commands[_i].cmd);
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);
    llmq_arena_destroy (&arena);
}
END_TEST

//  Only a command's required fields: the rest decodes as zero, NULL, false.
START_TEST (test_minimal_message)
{
    llmq_msg_t in = s_minimal_msg (_i);
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);
    llmq_arena_destroy (&arena);
}
END_TEST

//  A client's SUBMIT of a batch: three jobs with every field, one with only
//  the two a client must give.
START_TEST (test_submit_batch)
{
    llmq_job_t jobs[4] = { s_full_job (0), s_full_job (1), s_full_job (2) };
    jobs[3] = (llmq_job_t) { .model = "gpt-4o-mini", .body = "{\"messages\":[]}" };
    llmq_msg_t in = { .cmd = LLMQ_CMD_SUBMIT, .corr = 9, .jobs = jobs, .njobs = 4, .notify = true };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);
    ck_assert_str_eq (out.jobs[1].idem_key, "");        //  "" stays "", not NULL
    ck_assert_ptr_null (out.jobs[3].idem_key);           //  NULL stays NULL
    ck_assert_uint_eq (out.jobs[3].priority, LLMQ_PRIO_URGENT);
    ck_assert (!out.jobs[3].stream);
    llmq_arena_destroy (&arena);
}
END_TEST

//  ACCEPTED names the ids in submit order; dups marks the idempotent hits,
//  and is left out altogether when there are none.
START_TEST (test_accepted_ids_and_dups)
{
    uint64_t ids[5] = { 1, 2, 0, 1u << 31, UINT64_MAX };
    uint8_t dups[5] = { 0, 1, 0, 0, 1 };
    llmq_msg_t in = { .cmd = LLMQ_CMD_ACCEPTED, .corr = 3, .ids = ids, .nids = 5, .dups = dups };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);

    in.dups = NULL;
    llmq_arena_reset (arena);
    s_roundtrip (&in, &out, arena);
    ck_assert_ptr_null (out.dups);
    ck_assert_uint_eq (out.nids, 5);
    ck_assert_uint_eq (out.ids[4], UINT64_MAX);
    llmq_arena_destroy (&arena);
}
END_TEST

//  A page of a batch's results, with the cursor and the counts document.
START_TEST (test_results_page)
{
    llmq_result_t results[50];
    for (int i = 0; i < 50; i++) {
        results[i] = s_full_result ((uint64_t) i);
        results[i].state = i % 7 ? LLMQ_STATE_DONE : LLMQ_STATE_FAILED;
    }
    llmq_msg_t in = {
        .cmd = LLMQ_CMD_RESULTS, .corr = 11, .results = results, .nresults = 50,
        .after = 126, .more = true, .json = "{\"total\":60,\"done\":43,\"failed\":7}"
    };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);
    llmq_arena_destroy (&arena);
}
END_TEST

//  A REJECTED blames job 0 or no job (-1): both survive the wire.
START_TEST (test_rejected_index)
{
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    int64_t indexes[] = { -1, 0, 99999 };
    for (size_t i = 0; i < 3; i++) {
        llmq_msg_t in = { .cmd = LLMQ_CMD_REJECTED, .corr = 1, .code = LLMQ_ERR_UNKNOWN_MODEL,
                          .reason = "unknown model group 'x'", .index = indexes[i] };
        s_roundtrip (&in, &out, arena);
        ck_assert_int_eq (out.index, indexes[i]);
        llmq_arena_reset (arena);
    }
    llmq_arena_destroy (&arena);
}
END_TEST

//  Empty strings and NULL are different things on the wire too.
START_TEST (test_empty_string_is_not_null)
{
    llmq_msg_t in = { .cmd = LLMQ_CMD_ERROR, .code = LLMQ_ERR_PROTOCOL, .reason = "", .host = NULL };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    ck_assert_ptr_nonnull (out.reason);
    ck_assert_str_eq (out.reason, "");
    ck_assert_ptr_null (out.host);
    llmq_arena_destroy (&arena);
}
END_TEST

//  Bodies and answers of 1 MiB of multi-byte UTF-8 come through intact, and
//  the size limit is the body frame's size, inclusive.
START_TEST (test_one_mebibyte)
{
    size_t size = 1u << 20;
    char *big = (char *) malloc (size + 1);
    ck_assert_ptr_nonnull (big);
    const char *piece = "é世🚀.";                      //  2 + 3 + 4 + 1 bytes
    size_t plen = strlen (piece), at = 0;
    for (; at + plen <= size; at += plen) {
        memcpy (big + at, piece, plen);
    }
    memset (big + at, '.', size - at);
    big[size] = 0;
    ck_assert_uint_eq (strlen (big), size);

    llmq_job_t job = { .model = "gpt-4o-mini", .body = big };
    llmq_msg_t in = { .cmd = LLMQ_CMD_SUBMIT, .corr = 1, .jobs = &job, .njobs = 1 };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    ck_assert_str_eq (out.jobs[0].body, big);

    llmq_result_t res = { .id = 5, .state = LLMQ_STATE_DONE, .content = big };
    llmq_msg_t answer = { .cmd = LLMQ_CMD_DONE, .id = 5, .lease = 1, .results = &res, .nresults = 1 };
    llmq_arena_reset (arena);
    s_roundtrip (&answer, &out, arena);
    ck_assert_str_eq (out.results[0].content, big);

    zmsg_t *msg = llmq_msg_encode (&in);
    size_t body_size = zframe_size (zmsg_last (msg));
    ck_assert_uint_gt (body_size, size);
    char why[256];
    llmq_arena_reset (arena);
    ck_assert_int_eq (llmq_msg_decode (msg, body_size, &out, arena, why, sizeof why), LLMQ_OK);
    ck_assert_int_eq (llmq_msg_decode (msg, body_size - 1, &out, arena, why, sizeof why), LLMQ_ERR_TOO_LARGE);
    ck_assert_ptr_nonnull (strstr (why, "too large"));
    zmsg_destroy (&msg);
    llmq_arena_destroy (&arena);
    free (big);
}
END_TEST

//  Integers at the edges of their C types.
START_TEST (test_integer_limits)
{
    llmq_result_t res = s_full_result (0);
    res.id = UINT64_MAX;
    res.finished_us = UINT64_MAX;
    res.prompt_tokens = UINT32_MAX;
    llmq_msg_t in = {
        .cmd = LLMQ_CMD_RESULT, .corr = UINT64_MAX, .results = &res, .nresults = 1,
        .code = UINT32_MAX, .seq = UINT32_MAX, .limit = UINT32_MAX, .pid = UINT32_MAX,
        .retry_after_ms = UINT64_MAX, .timeout_ms = UINT64_MAX, .after = UINT64_MAX,
        .index = INT64_MIN,
    };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);
    llmq_arena_destroy (&arena);
}
END_TEST

//  The provider's quota rides DONE and FAILED: remaining counts go as
//  count + 1 so that an absent field reads as "not said" (-1) and a used-up
//  quota (0) survives; other messages and stored records leave them out.
START_TEST (test_result_quota)
{
    llmq_result_t res[4] = {
        { .id = 1, .lease = 1, .rl_requests = -1, .rl_tokens = -1 },           //  nothing said
        { .id = 2, .lease = 2, .rl_requests = 0, .rl_tokens = 0, .rl_reset_ms = 1 },
        { .id = 3, .lease = 3, .rl_requests = 59, .rl_tokens = -1, .rl_reset_ms = 360000 },
        { .id = 4, .lease = 4, .rl_requests = INT64_MAX - 1, .rl_tokens = 149984,
          .rl_reset_ms = UINT64_MAX },
    };
    llmq_arena_t *arena = llmq_arena_new ();
    //  One DONE with the four, then each alone in a FAILED.
    for (size_t i = 0; i <= 4; i++) {
        llmq_msg_t in = { .cmd = i < 4 ? LLMQ_CMD_FAILED : LLMQ_CMD_DONE, .id = 1, .lease = 1,
                          .slots = 1, .results = i < 4 ? &res[i] : res, .nresults = i < 4 ? 1 : 4 };
        llmq_msg_t out;
        s_roundtrip (&in, &out, arena);
        s_assert_msg_eq (&in, &out);
        llmq_arena_reset (arena);
    }
    //  INT64_MAX itself saturates to INT64_MAX - 1 (the wire holds count + 1).
    res[0].rl_requests = INT64_MAX;
    llmq_msg_t in = { .cmd = LLMQ_CMD_FAILED, .id = 1, .lease = 1, .results = res, .nresults = 1 };
    llmq_msg_t out;
    s_roundtrip (&in, &out, arena);
    ck_assert_int_eq (out.results[0].rl_requests, INT64_MAX - 1);
    llmq_arena_reset (arena);

    //  A peer that knows nothing of quotas: absent reads as "not said".
    char why[256] = "";
    //  {"id": 1, "lease": 1, "results": [{"id": 1}]}
    ck_assert_int_eq (llmq_msg_decode_body (LLMQ_CMD_DONE,
                      S_BYTES ("\x83" "\xa2" "id" "\x01" "\xa5" "lease" "\x01" "\xa7" "results"
                               "\x91" "\x81" "\xa2" "id" "\x01"), &out, arena, why, sizeof why), LLMQ_OK);
    ck_assert_int_eq (out.results[0].rl_requests, -1);
    ck_assert_int_eq (out.results[0].rl_tokens, -1);
    ck_assert_uint_eq (out.results[0].rl_reset_ms, 0);
    llmq_arena_reset (arena);
    //  {"id": 1, "lease": 1, "results": [{"rlr": 1, "rlt": 0, "rlms": 1000}]}: none
    //  left, tokens not said, resets in a second.
    ck_assert_int_eq (llmq_msg_decode_body (LLMQ_CMD_FAILED,
                      S_BYTES ("\x83" "\xa2" "id" "\x01" "\xa5" "lease" "\x01" "\xa7" "results"
                               "\x91" "\x83" "\xa3" "rlr" "\x01" "\xa3" "rlt" "\x00"
                               "\xa4" "rlms" "\xcd\x03\xe8"), &out, arena, why, sizeof why), LLMQ_OK);
    ck_assert_int_eq (out.results[0].rl_requests, 0);
    ck_assert_int_eq (out.results[0].rl_tokens, -1);
    ck_assert_uint_eq (out.results[0].rl_reset_ms, 1000);
    llmq_arena_reset (arena);

    //  Not to clients: a RESULT with the same result carries no quota.
    in = (llmq_msg_t) { .cmd = LLMQ_CMD_RESULT, .results = &res[3], .nresults = 1 };
    s_roundtrip (&in, &out, arena);
    s_assert_msg_eq (&in, &out);        //  compares them as unknown
    llmq_arena_destroy (&arena);
}
END_TEST

//  The body-only pair, for callers that framed the message themselves.
START_TEST (test_body_only)
{
    llmq_msg_t in = s_full_msg (LLMQ_CMD_DISPATCH);
    llmq_buf_t body;
    llmq_buf_init (&body);
    ck_assert_int_eq (llmq_msg_encode_body (&in, &body), 0);
    ck_assert_uint_gt (body.size, 0);
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    char why[256] = "";
    ck_assert_int_eq (llmq_msg_decode_body (LLMQ_CMD_DISPATCH, body.data, body.size, &out, arena,
                                            why, sizeof why), LLMQ_OK);
    s_assert_msg_eq (&in, &out);
    llmq_buf_free (&body);
    ck_assert_ptr_null (body.data);
    llmq_arena_destroy (&arena);
}
END_TEST


//  --------------------------------------------------------------------------
//  Framing refused

START_TEST (test_refuses_wrong_frame_count)
{
    llmq_msg_t ping = { .cmd = LLMQ_CMD_PING, .corr = 1 };
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    char why[256];
    for (int extra = -3; extra <= 1; extra++) {
        if (extra == 0) {
            continue;
        }
        zmsg_t *msg = llmq_msg_encode (&ping);
        if (extra > 0) {
            zmsg_addstr (msg, "extra");
        }
        for (int drop = extra; drop < 0; drop++) {
            zframe_t *last = zmsg_last (msg);
            zmsg_remove (msg, last);
            zframe_destroy (&last);
        }
        why[0] = 0;
        ck_assert_int_eq (llmq_msg_decode (msg, S_MAX_BODY, &out, arena, why, sizeof why), LLMQ_ERR_PROTOCOL);
        ck_assert_ptr_nonnull (strstr (why, "frames"));
        zmsg_destroy (&msg);
    }
    llmq_arena_destroy (&arena);
}
END_TEST

START_TEST (test_refuses_bad_signature)
{
    const char cmd = LLMQ_CMD_PING;
    char why[256];
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMX\x01"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_frames (S_BYTES ("llmq\x01"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\x01\x01"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_frames (S_BYTES (""), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_ptr_nonnull (strstr (why, "signature"));
    //  The right signature with an empty map body is a good PING.
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\x01"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_OK);
}
END_TEST

//  Another version byte is its own error, naming both versions.
START_TEST (test_refuses_other_version)
{
    const char cmd = LLMQ_CMD_PING;
    char why[256];
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\x02"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_VERSION);
    ck_assert_ptr_nonnull (strstr (why, "2"));
    ck_assert_ptr_nonnull (strstr (why, "1"));
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\x00"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_VERSION);
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\xff"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_VERSION);
}
END_TEST

START_TEST (test_refuses_command_frame_size)
{
    char why[256];
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\x01"), S_BYTES ("\x07\x00"), S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_frames (S_BYTES ("LLMQ\x01"), S_BYTES (""), S_BYTES ("\x80"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
}
END_TEST

//  Over all 256 command bytes: exactly the protocol's commands are known.
START_TEST (test_refuses_unknown_commands)
{
    int known = 0;
    for (int c = 0; c < 256; c++) {
        bool listed = false;
        for (int i = 0; i < S_NCOMMANDS; i++) {
            listed |= s_commands[i].cmd == c;
        }
        char cmd = (char) c, why[256];
        int rc = s_decode_frames (S_BYTES ("LLMQ\x01"), &cmd, 1, S_BYTES ("\x80"), why, sizeof why);
        if (listed) {
            ck_assert_ptr_nonnull (llmq_cmd_name (c));
            ck_assert_msg (rc == LLMQ_OK || rc == LLMQ_ERR_PROTOCOL, "0x%02x gave %d", c, rc);
            known++;
        }
        else {
            ck_assert_ptr_null (llmq_cmd_name (c));
            ck_assert_msg (rc == LLMQ_ERR_UNKNOWN_COMMAND, "0x%02x gave %d", c, rc);
            ck_assert_int_eq (s_decode_body ((uint8_t) c, S_BYTES ("\x80"), why, sizeof why),
                              LLMQ_ERR_UNKNOWN_COMMAND);
        }
    }
    ck_assert_int_eq (known, S_NCOMMANDS);
}
END_TEST


//  --------------------------------------------------------------------------
//  Bodies refused

START_TEST (test_refuses_non_msgpack)
{
    char why[256];
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_PING, S_BYTES (""), why, sizeof why), LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_PING, S_BYTES ("\xc1"), why, sizeof why), LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_PING, S_BYTES ("{\"corr\":1}"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    //  msgpack, but not a map
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_PING, S_BYTES ("\x92\x01\x02"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_PING, S_BYTES ("\xc0"), why, sizeof why), LLMQ_ERR_PROTOCOL);
}
END_TEST

//  A SUBMIT cut at every byte: always refused, never garbage, never a crash.
START_TEST (test_refuses_every_truncation)
{
    llmq_job_t jobs[2] = { s_full_job (0), s_full_job (2) };
    llmq_msg_t in = { .cmd = LLMQ_CMD_SUBMIT, .corr = 1, .jobs = jobs, .njobs = 2, .notify = true };
    llmq_buf_t body;
    llmq_buf_init (&body);
    ck_assert_int_eq (llmq_msg_encode_body (&in, &body), 0);
    char why[256];
    for (size_t len = 0; len < body.size; len++) {
        //  A copy of exactly `len` bytes, so ASan sees any read past the end.
        char *cut = (char *) malloc (len ? len : 1);
        memcpy (cut, body.data, len);
        int rc = s_decode_body (LLMQ_CMD_SUBMIT, cut, len, why, sizeof why);
        ck_assert_msg (rc == LLMQ_ERR_PROTOCOL, "cut at %zu of %zu gave %d", len, body.size, rc);
        free (cut);
    }
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_SUBMIT, body.data, body.size, why, sizeof why), LLMQ_OK);
    llmq_buf_free (&body);
}
END_TEST

START_TEST (test_refuses_trailing_bytes)
{
    llmq_msg_t in = { .cmd = LLMQ_CMD_CANCEL, .corr = 1, .id = 5 };
    llmq_buf_t body;
    llmq_buf_init (&body);
    ck_assert_int_eq (llmq_msg_encode_body (&in, &body), 0);
    char why[256];
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_CANCEL, body.data, body.size, why, sizeof why), LLMQ_OK);
    s_append (&body, "\xc0", 1);
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_CANCEL, body.data, body.size, why, sizeof why), LLMQ_ERR_PROTOCOL);
    ck_assert_ptr_nonnull (strstr (why, "trailing"));
    llmq_buf_free (&body);
}
END_TEST

//  Bodies with a field of the wrong type (or a NUL inside a string); the
//  reason names the field. Written token by token: {"id": "abc"} is
//  "\x81" "\xa2" "id" "\xa3" "abc".
static const struct {
    uint8_t cmd;
    const char *body;
    size_t len;
    const char *why;
} s_bad_bodies[] = {
    //  {"id": "abc"}: an id as a string
    { LLMQ_CMD_CANCEL, S_BYTES ("\x81" "\xa2" "id" "\xa3" "abc"), "'id'" },
    //  {"id": -1}
    { LLMQ_CMD_CANCEL, S_BYTES ("\x81" "\xa2" "id" "\xff"), "'id'" },
    //  {"id": 1.5}
    { LLMQ_CMD_STATUS, S_BYTES ("\x81" "\xa2" "id" "\xcb" "\x3f\xf8\x00\x00\x00\x00\x00\x00"), "'id'" },
    //  {"jobs": {}}
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x80"), "'jobs'" },
    //  {"jobs": [1]}: a job that is not a map
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x01"), "'jobs'" },
    //  {"jobs": [{1: 2}]}: a key that is not a string
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\x01" "\x02"), "'jobs'" },
    //  {"jobs": [{"prio": "low"}]}
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa4" "prio" "\xa3" "low"), "'prio'" },
    //  {"jobs": [{"prio": 4}]}: priorities are 0 to 3
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa4" "prio" "\x04"), "'prio'" },
    //  {"jobs": [{"model": 7}]}
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa5" "model" "\x07"), "'model'" },
    //  {"jobs": [{"cttl": -2}]}: a cache TTL is -1 or a number of ms
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa4" "cttl" "\xfe"), "'cttl'" },
    //  {"jobs": [{"cttl": "1h"}]}
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa4" "cttl" "\xa2" "1h"), "'cttl'" },
    //  {"jobs": [{"stream": 1}]}
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa6" "stream" "\x01"), "'stream'" },
    //  {"jobs": [{"model": "gp\0t"}]}: a NUL would cut the C string
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x91" "\x81" "\xa5" "model" "\xa4" "gp\0t"), "NUL" },
    //  {"jobs": [{}], "notify": 1}
    { LLMQ_CMD_SUBMIT, S_BYTES ("\x82" "\xa4" "jobs" "\x91" "\x80" "\xa6" "notify" "\x01"), "'notify'" },
    //  {"ids": 5}
    { LLMQ_CMD_WAIT, S_BYTES ("\x81" "\xa3" "ids" "\x05"), "'ids'" },
    //  {"ids": [1, "2"]}
    { LLMQ_CMD_WAIT, S_BYTES ("\x81" "\xa3" "ids" "\x92" "\x01" "\xa1" "2"), "'ids'" },
    //  {"corr": 1, "ids": [1], "dups": "x"}
    { LLMQ_CMD_ACCEPTED, S_BYTES ("\x83" "\xa4" "corr" "\x01" "\xa3" "ids" "\x91" "\x01" "\xa4" "dups" "\xa1" "x"),
      "'dups'" },
    //  {"id": 1, "text": 5}
    { LLMQ_CMD_CHUNK, S_BYTES ("\x82" "\xa2" "id" "\x01" "\xa4" "text" "\x05"), "'text'" },
    //  {"id": 1, "text": "a\0b"}
    { LLMQ_CMD_CHUNK, S_BYTES ("\x82" "\xa2" "id" "\x01" "\xa4" "text" "\xa3" "a\0b"), "NUL" },
    //  {"code": 1, "index": "0"}
    { LLMQ_CMD_REJECTED, S_BYTES ("\x82" "\xa4" "code" "\x01" "\xa5" "index" "\xa1" "0"), "'index'" },
    //  {"results": [{"att": -3}]}
    { LLMQ_CMD_RESULT, S_BYTES ("\x81" "\xa7" "results" "\x91" "\x81" "\xa3" "att" "\xfd"), "'att'" },
    //  {"results": [[]]}
    { LLMQ_CMD_RESULT, S_BYTES ("\x81" "\xa7" "results" "\x91" "\x90"), "'results'" },
    //  {"results": [{"rlr": 2^64-1}]}: a count + 1 must fit an int64
    { LLMQ_CMD_RESULT, S_BYTES ("\x81" "\xa7" "results" "\x91" "\x81" "\xa3" "rlr"
                                "\xcf\xff\xff\xff\xff\xff\xff\xff\xff"), "'rlr'" },
    //  {"results": [{"rlt": -1}]}: "not said" is 0 or absent, never negative
    { LLMQ_CMD_RESULT, S_BYTES ("\x81" "\xa7" "results" "\x91" "\x81" "\xa3" "rlt" "\xff"), "'rlt'" },
    //  {1: 2}: a body key that is not a string
    { LLMQ_CMD_PING, S_BYTES ("\x81" "\x01" "\x02"), "'body'" },
};

START_TEST (test_refuses_bad_field)
{
    char why[256];
    int rc = s_decode_body (s_bad_bodies[_i].cmd, s_bad_bodies[_i].body, s_bad_bodies[_i].len, why, sizeof why);
    ck_assert_msg (rc == LLMQ_ERR_PROTOCOL, "case %d gave %d", _i, rc);
    ck_assert_msg (strstr (why, s_bad_bodies[_i].why), "case %d: reason '%s' does not name %s",
                   _i, why, s_bad_bodies[_i].why);
}
END_TEST

//  Each required field of each command, left out in turn: refused, and the
//  reason names it ("SUBMIT needs field 'jobs'").
START_TEST (test_refuses_missing_field)
{
    char names[64];
    snprintf (names, sizeof names, "%s", s_commands[_i].required);
    char *save = NULL;
    for (char *name = strtok_r (names, " ", &save); name; name = strtok_r (NULL, " ", &save)) {
        llmq_msg_t in = s_minimal_msg (_i);
        s_set_field (&in, name, false);
        zmsg_t *msg = llmq_msg_encode (&in);
        llmq_arena_t *arena = llmq_arena_new ();
        llmq_msg_t out;
        char why[256] = "", quoted[32];
        int rc = llmq_msg_decode (msg, S_MAX_BODY, &out, arena, why, sizeof why);
        ck_assert_msg (rc == LLMQ_ERR_PROTOCOL, "%s without %s gave %d", llmq_cmd_name (in.cmd), name, rc);
        snprintf (quoted, sizeof quoted, "'%s'", name);
        ck_assert_msg (strstr (why, quoted), "reason '%s' does not name %s", why, quoted);
        ck_assert_ptr_nonnull (strstr (why, llmq_cmd_name (in.cmd)));
        llmq_arena_destroy (&arena);
        zmsg_destroy (&msg);
    }
}
END_TEST

//  Arrays with a size the protocol fixes: a SUBMIT of at least one job, a
//  DISPATCH of exactly one, a DONE of at least one result (a worker batches
//  them), FAILED and RESULT with exactly one result.
START_TEST (test_refuses_wrong_entry_counts)
{
    char why[256];
    //  {"jobs": []}
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\x90"), why, sizeof why),
                      LLMQ_ERR_PROTOCOL);
    //  {"id": 1, "lease": 1, "results": []}
    ck_assert_int_eq (s_decode_body (LLMQ_CMD_DONE,
                                     S_BYTES ("\x83" "\xa2" "id" "\x01" "\xa5" "lease" "\x01" "\xa7" "results" "\x90"),
                                     why, sizeof why), LLMQ_ERR_PROTOCOL);

    llmq_job_t jobs[2] = { s_full_job (0), s_full_job (1) };
    llmq_result_t results[2] = { s_full_result (0), s_full_result (1) };
    uint8_t cmds[] = { LLMQ_CMD_DISPATCH, LLMQ_CMD_FAILED, LLMQ_CMD_RESULT };
    for (size_t i = 0; i < sizeof cmds; i++) {
        llmq_msg_t in = s_full_msg (cmds[i]);
        if (cmds[i] == LLMQ_CMD_DISPATCH) {
            in.jobs = jobs;
            in.njobs = 2;
        }
        else {
            in.results = results;
            in.nresults = 2;
        }
        llmq_buf_t body;
        llmq_buf_init (&body);
        ck_assert_int_eq (llmq_msg_encode_body (&in, &body), 0);
        ck_assert_int_eq (s_decode_body (cmds[i], body.data, body.size, why, sizeof why), LLMQ_ERR_PROTOCOL);
        ck_assert_ptr_nonnull (strstr (why, llmq_cmd_name (cmds[i])));
        llmq_buf_free (&body);
    }
}
END_TEST

//  A worker sends what finished in one loop turn as one DONE: every result
//  names its own job and lease.
START_TEST (test_batched_done)
{
    llmq_result_t res[3] = {
        { .id = 10, .lease = 100, .content = "a", .latency_us = 5 },
        { .id = 11, .lease = 101, .content = "bb" },
        { .id = 12, .lease = 102, .content = "" },
    };
    llmq_msg_t in = { .cmd = LLMQ_CMD_DONE, .id = 10, .lease = 100, .slots = 3, .results = res, .nresults = 3 };
    zmsg_t *msg = llmq_msg_encode (&in);
    llmq_arena_t *arena = llmq_arena_new ();
    llmq_msg_t out;
    char why[256];
    ck_assert_int_eq (llmq_msg_decode (msg, 0, &out, arena, why, sizeof why), LLMQ_OK);
    ck_assert_uint_eq (out.nresults, 3);
    ck_assert_uint_eq (out.slots, 3);
    for (size_t i = 0; i < 3; i++) {
        ck_assert_uint_eq (out.results[i].id, res[i].id);
        ck_assert_uint_eq (out.results[i].lease, res[i].lease);
        ck_assert_str_eq (out.results[i].content, res[i].content);
    }
    ck_assert_uint_eq (out.results[0].latency_us, 5);
    llmq_arena_destroy (&arena);
    zmsg_destroy (&msg);
}
END_TEST

//  At most LLMQ_MAX_BATCH jobs in a SUBMIT and ids in a WAIT.
START_TEST (test_refuses_too_many_entries)
{
    char why[256];
    llmq_buf_t body;
    llmq_buf_init (&body);
    for (uint32_t n = LLMQ_MAX_BATCH; n <= LLMQ_MAX_BATCH + 1; n++) {
        //  {"jobs": [{}, {}, ...]}
        llmq_buf_clear (&body);
        s_mp_map (&body, 1);
        s_mp_key (&body, "jobs");
        s_mp_array (&body, n);
        for (uint32_t i = 0; i < n; i++) {
            s_append (&body, "\x80", 1);
        }
        int rc = s_decode_body (LLMQ_CMD_SUBMIT, body.data, body.size, why, sizeof why);
        ck_assert_int_eq (rc, n <= LLMQ_MAX_BATCH ? LLMQ_OK : LLMQ_ERR_PROTOCOL);

        //  {"ids": [1, 1, ...]}
        llmq_buf_clear (&body);
        s_mp_map (&body, 1);
        s_mp_key (&body, "ids");
        s_mp_array (&body, n);
        for (uint32_t i = 0; i < n; i++) {
            s_append (&body, "\x01", 1);
        }
        rc = s_decode_body (LLMQ_CMD_WAIT, body.data, body.size, why, sizeof why);
        ck_assert_int_eq (rc, n <= LLMQ_MAX_BATCH ? LLMQ_OK : LLMQ_ERR_PROTOCOL);
    }
    ck_assert_ptr_nonnull (strstr (why, "'ids'"));
    llmq_buf_free (&body);
}
END_TEST

//  One dup flag per id, no more, no fewer.
START_TEST (test_refuses_dups_mismatch)
{
    char why[256];
    llmq_buf_t body;
    llmq_buf_init (&body);
    for (uint32_t ndups = 2; ndups <= 4; ndups++) {
        llmq_buf_clear (&body);
        s_mp_map (&body, 3);
        s_mp_key (&body, "corr");
        s_mp_uint (&body, 1);
        s_mp_key (&body, "ids");
        s_mp_array (&body, 3);
        for (int i = 0; i < 3; i++) {
            s_mp_uint (&body, 10 + (uint64_t) i);
        }
        s_mp_key (&body, "dups");
        s_mp_bin (&body, "\x00\x01\x00\x01", ndups);
        int rc = s_decode_body (LLMQ_CMD_ACCEPTED, body.data, body.size, why, sizeof why);
        ck_assert_int_eq (rc, ndups == 3 ? LLMQ_OK : LLMQ_ERR_PROTOCOL);
    }
    llmq_buf_free (&body);
}
END_TEST

//  The decoder never believes a count the body cannot hold: an array that
//  claims 4 billion entries in a 14-byte body is malformed, and must not
//  make the broker allocate 100 GB first.
START_TEST (test_refuses_counts_beyond_the_body)
{
    char why[256];
    //  {"jobs": array32 of 0xffffffff entries, none present}
    int rc = s_decode_body (LLMQ_CMD_SUBMIT, S_BYTES ("\x81" "\xa4" "jobs" "\xdd" "\xff\xff\xff\xff"), why, sizeof why);
    ck_assert_msg (rc == LLMQ_ERR_PROTOCOL, "gave %d: %s", rc, why);
    //  a map32 of 0xffffffff pairs
    rc = s_decode_body (LLMQ_CMD_PING, S_BYTES ("\xdf" "\xff\xff\xff\xff"), why, sizeof why);
    ck_assert_msg (rc == LLMQ_ERR_PROTOCOL, "gave %d: %s", rc, why);
    //  a str32 of 4 GiB
    rc = s_decode_body (LLMQ_CMD_CHUNK, S_BYTES ("\x81" "\xa4" "text" "\xdb" "\xff\xff\xff\xff"), why, sizeof why);
    ck_assert_msg (rc == LLMQ_ERR_PROTOCOL, "gave %d: %s", rc, why);
}
END_TEST

//  Hostile input: random bytes, then a valid SUBMIT with random damage.
//  Every answer is OK or PROTOCOL; whatever decodes OK is sane. Fixed seeds,
//  so a failure replays; run under ASan and valgrind for reads and leaks.
static size_t
s_len (const char *s)
{
    return s ? strlen (s) : 0;
}

static void
s_check_decoded (int rc, const llmq_msg_t *m, const char *why, unsigned iteration)
{
    ck_assert_msg (rc == LLMQ_OK || rc == LLMQ_ERR_PROTOCOL, "iteration %u gave %d: %s", iteration, rc, why);
    if (rc != LLMQ_OK) {
        ck_assert_msg (why[0], "iteration %u: refused without a reason", iteration);
        return;
    }
    //  Every string is a terminated copy (ASan checks each read), every
    //  array within its limits.
    size_t total = s_len (m->reason) + s_len (m->text) + s_len (m->batch_id) + s_len (m->host)
                 + s_len (m->version) + s_len (m->deployment) + s_len (m->json);
    ck_assert_uint_le (m->njobs, LLMQ_MAX_BATCH);
    ck_assert_uint_le (m->nids, LLMQ_MAX_BATCH);
    ck_assert_uint_le (m->nresults, LLMQ_MAX_BATCH);
    for (size_t i = 0; i < m->njobs; i++) {
        const llmq_job_t *j = &m->jobs[i];
        ck_assert_uint_le (j->priority, LLMQ_PRIO_LOW);
        total += s_len (j->model) + s_len (j->body) + s_len (j->idem_key) + s_len (j->user) + s_len (j->org)
               + s_len (j->batch_id) + s_len (j->custom_id) + s_len (j->meta) + s_len (j->last_error);
    }
    for (size_t i = 0; i < m->nresults; i++) {
        const llmq_result_t *r = &m->results[i];
        ck_assert_uint_le (r->priority, LLMQ_PRIO_LOW);
        total += s_len (r->content) + s_len (r->finish_reason) + s_len (r->deployment) + s_len (r->request_id)
               + s_len (r->error) + s_len (r->model) + s_len (r->batch_id) + s_len (r->custom_id);
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < m->nids; i++) {
        sum += m->ids[i] + (m->dups ? m->dups[i] : 0);
    }
    (void) sum;
    ck_assert_uint_lt (total, 1u << 20);        //  all of it came from a small body
}

START_TEST (test_survives_random_bodies)
{
    srand (20260101);
    llmq_arena_t *arena = llmq_arena_new ();
    unsigned char bytes[96];
    char why[256];
    for (unsigned it = 0; it < 20000; it++) {
        size_t len = (size_t) rand () % sizeof bytes;
        for (size_t i = 0; i < len; i++) {
            bytes[i] = (unsigned char) rand ();
        }
        if (len && it % 2) {
            bytes[0] = (unsigned char) (0x80 | (rand () % 16));    //  half start like a map
        }
        llmq_msg_t out;
        why[0] = 0;
        uint8_t cmd = s_commands[rand () % S_NCOMMANDS].cmd;
        int rc = llmq_msg_decode_body (cmd, bytes, len, &out, arena, why, sizeof why);
        s_check_decoded (rc, &out, why, it);
        llmq_arena_reset (arena);
    }
    llmq_arena_destroy (&arena);
}
END_TEST

START_TEST (test_survives_damaged_submits)
{
    llmq_job_t jobs[2] = { s_full_job (0), s_full_job (1) };
    llmq_msg_t in = { .cmd = LLMQ_CMD_SUBMIT, .corr = 1, .jobs = jobs, .njobs = 2, .notify = true };
    llmq_buf_t body;
    llmq_buf_init (&body);
    ck_assert_int_eq (llmq_msg_encode_body (&in, &body), 0);
    char *copy = (char *) malloc (body.size);
    srand (4242);
    llmq_arena_t *arena = llmq_arena_new ();
    char why[256];
    unsigned refused = 0;
    for (unsigned it = 0; it < 20000; it++) {
        memcpy (copy, body.data, body.size);
        int damage = 1 + rand () % 4;
        for (int d = 0; d < damage; d++) {
            copy[(size_t) rand () % body.size] = (char) rand ();
        }
        llmq_msg_t out;
        why[0] = 0;
        int rc = llmq_msg_decode_body (LLMQ_CMD_SUBMIT, copy, body.size, &out, arena, why, sizeof why);
        s_check_decoded (rc, &out, why, it);
        refused += rc != LLMQ_OK;
        llmq_arena_reset (arena);
    }
    //  Damage is mostly noticed (a flipped byte inside a string is not).
    ck_assert_uint_gt (refused, 1000);
    llmq_arena_destroy (&arena);
    free (copy);
    llmq_buf_free (&body);
}
END_TEST


//  --------------------------------------------------------------------------
//  Stored records

START_TEST (test_job_record)
{
    llmq_job_t job = s_full_job (1), back;
    llmq_buf_t rec;
    llmq_buf_init (&rec);
    ck_assert_int_eq (llmq_job_encode (&job, &rec), 0);
    llmq_arena_t *arena = llmq_arena_new ();
    ck_assert_int_eq (llmq_job_decode (rec.data, rec.size, &back, arena), 0);
    s_assert_job_eq (&job, &back);

    //  A record cut short, or with bytes after it, is corrupt.
    for (size_t len = 0; len < rec.size; len++) {
        ck_assert_int_ne (llmq_job_decode (rec.data, len, &back, arena), 0);
    }
    s_append (&rec, "\xc0", 1);
    ck_assert_int_ne (llmq_job_decode (rec.data, rec.size, &back, arena), 0);
    ck_assert_int_ne (llmq_job_decode (S_BYTES ("\x93\x01\x02\x03"), &back, arena), 0);

    //  A zero job is an empty record that reads back as zero.
    llmq_job_t zero = { 0 };
    llmq_buf_clear (&rec);
    ck_assert_int_eq (llmq_job_encode (&zero, &rec), 0);
    ck_assert_int_eq (llmq_job_decode (rec.data, rec.size, &back, arena), 0);
    s_assert_job_eq (&zero, &back);
    llmq_arena_destroy (&arena);
    llmq_buf_free (&rec);
}
END_TEST

START_TEST (test_result_record)
{
    llmq_result_t res = s_full_result (1), back;
    llmq_buf_t rec;
    llmq_buf_init (&rec);
    ck_assert_int_eq (llmq_result_encode (&res, &rec), 0);
    llmq_arena_t *arena = llmq_arena_new ();
    ck_assert_int_eq (llmq_result_decode (rec.data, rec.size, &back, arena), 0);
    s_assert_result_eq (&res, &back, false);    //  not stored
    for (size_t len = 0; len < rec.size; len++) {
        ck_assert_int_ne (llmq_result_decode (rec.data, len, &back, arena), 0);
    }
    ck_assert_int_ne (llmq_result_decode (S_BYTES ("\xa3" "abc"), &back, arena), 0);
    llmq_arena_destroy (&arena);
    llmq_buf_free (&rec);
}
END_TEST


//  --------------------------------------------------------------------------
//  Names, error classes, arena

//  docs/protocol.md 6.2: retried are rate_limited, server, timeout,
//  connection and bad_response; never the others.
START_TEST (test_error_class_retryable)
{
    static const struct { int ec; bool retry; } table[] = {
        { LLMQ_EC_NONE, false },            { LLMQ_EC_INVALID_REQUEST, false },
        { LLMQ_EC_AUTH, false },            { LLMQ_EC_RATE_LIMITED, true },
        { LLMQ_EC_SERVER, true },           { LLMQ_EC_TIMEOUT, true },
        { LLMQ_EC_CONNECTION, true },       { LLMQ_EC_STREAM_BROKEN, false },
        { LLMQ_EC_CANCELLED, false },       { LLMQ_EC_INTERNAL, false },
        { LLMQ_EC_BAD_RESPONSE, true },     { -1, false },
        { 11, false },                      { 255, false },
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        ck_assert_msg (llmq_error_class_retryable (table[i].ec) == table[i].retry,
                       "class %d (%s)", table[i].ec, llmq_error_class_name (table[i].ec));
    }
    //  Each class has its own name.
    for (int a = LLMQ_EC_NONE; a <= LLMQ_EC_BAD_RESPONSE; a++) {
        ck_assert_ptr_nonnull (llmq_error_class_name (a));
        for (int b = 0; b < a; b++) {
            ck_assert_str_ne (llmq_error_class_name (a), llmq_error_class_name (b));
        }
    }
    ck_assert_str_eq (llmq_error_class_name (LLMQ_EC_RATE_LIMITED), "rate_limited");
    ck_assert_str_eq (llmq_error_class_name (LLMQ_EC_BAD_RESPONSE), "bad_response");
}
END_TEST

START_TEST (test_command_names)
{
    ck_assert_str_eq (llmq_cmd_name (LLMQ_CMD_SUBMIT), "SUBMIT");
    ck_assert_str_eq (llmq_cmd_name (LLMQ_CMD_DISPATCH), "DISPATCH");
    for (int a = 0; a < S_NCOMMANDS; a++) {
        for (int b = 0; b < a; b++) {
            ck_assert_str_ne (llmq_cmd_name (s_commands[a].cmd), llmq_cmd_name (s_commands[b].cmd));
        }
    }
}
END_TEST

START_TEST (test_arena)
{
    llmq_arena_t *arena = llmq_arena_new ();
    ck_assert_ptr_nonnull (arena);
    char *copy = llmq_arena_strdup (arena, s_utf8);
    ck_assert_str_eq (copy, s_utf8);
    ck_assert_ptr_ne (copy, s_utf8);
    ck_assert_ptr_null (llmq_arena_strdup (arena, NULL));
    ck_assert_ptr_nonnull (llmq_arena_alloc (arena, 0));
    for (int i = 0; i < 100; i++) {
        memset (llmq_arena_alloc (arena, 100000), 0xa5, 100000);   //  past one chunk
    }
    llmq_arena_reset (arena);
    ck_assert_str_eq (llmq_arena_strdup (arena, "again"), "again");
    llmq_arena_destroy (&arena);
    ck_assert_ptr_null (arena);
    llmq_arena_destroy (&arena);         //  safe twice
    llmq_arena_destroy (NULL);
}
END_TEST


static Suite *
s_codec_suite (void)
{
    Suite *suite = suite_create ("codec");

    TCase *roundtrip = tcase_create ("roundtrip");
    tcase_add_loop_test (roundtrip, test_every_command_every_field, 0, S_NCOMMANDS);
    tcase_add_loop_test (roundtrip, test_minimal_message, 0, S_NCOMMANDS);
    tcase_add_test (roundtrip, test_submit_batch);
    tcase_add_test (roundtrip, test_accepted_ids_and_dups);
    tcase_add_test (roundtrip, test_results_page);
    tcase_add_test (roundtrip, test_rejected_index);
    tcase_add_test (roundtrip, test_empty_string_is_not_null);
    tcase_add_test (roundtrip, test_one_mebibyte);
    tcase_add_test (roundtrip, test_integer_limits);
    tcase_add_test (roundtrip, test_body_only);
    tcase_add_test (roundtrip, test_result_quota);
    suite_add_tcase (suite, roundtrip);

    TCase *framing = tcase_create ("framing");
    tcase_add_test (framing, test_refuses_wrong_frame_count);
    tcase_add_test (framing, test_refuses_bad_signature);
    tcase_add_test (framing, test_refuses_other_version);
    tcase_add_test (framing, test_refuses_command_frame_size);
    tcase_add_test (framing, test_refuses_unknown_commands);
    suite_add_tcase (suite, framing);

    TCase *bodies = tcase_create ("bodies");
    tcase_set_timeout (bodies, 60);     //  the hostile loops take seconds under valgrind
    tcase_add_test (bodies, test_refuses_non_msgpack);
    tcase_add_test (bodies, test_refuses_every_truncation);
    tcase_add_test (bodies, test_refuses_trailing_bytes);
    tcase_add_loop_test (bodies, test_refuses_bad_field, 0, (int) (sizeof s_bad_bodies / sizeof s_bad_bodies[0]));
    tcase_add_loop_test (bodies, test_refuses_missing_field, 0, S_NCOMMANDS);
    tcase_add_test (bodies, test_refuses_wrong_entry_counts);
    tcase_add_test (bodies, test_batched_done);
    tcase_add_test (bodies, test_refuses_too_many_entries);
    tcase_add_test (bodies, test_refuses_dups_mismatch);
    tcase_add_test (bodies, test_refuses_counts_beyond_the_body);
    tcase_add_test (bodies, test_survives_random_bodies);
    tcase_add_test (bodies, test_survives_damaged_submits);
    suite_add_tcase (suite, bodies);

    TCase *records = tcase_create ("records");
    tcase_add_test (records, test_job_record);
    tcase_add_test (records, test_result_record);
    suite_add_tcase (suite, records);

    TCase *names = tcase_create ("names");
    tcase_add_test (names, test_error_class_retryable);
    tcase_add_test (names, test_command_names);
    tcase_add_test (names, test_arena);
    suite_add_tcase (suite, names);
    return suite;
}

int
main (void)
{
    SRunner *runner = srunner_create (s_codec_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
