/*  codec.c -- msgpack encoding and decoding of llmq messages and records.

    The only file in llmq that includes msgpack. Design:

    * Every body is one msgpack map with short string keys. The encoder
      writes only the fields that are not zero, so the wire stays small and
      an old peer ignores what it does not know. The map header is written
      as a map32 with a placeholder count that is patched at the end, which
      saves counting fields twice (msgpack allows the longer form).
    * The decoder unpacks into the caller's arena (a msgpack zone), then
      walks the map. It checks every type, refuses embedded NUL bytes in
      strings (they would silently truncate a C string), and records which
      keys it saw so each command's required fields can be checked.
*/
#include "codec.h"

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------
   Arena and buffer
   ------------------------------------------------------------------------ */

struct llmq_arena {
    msgpack_zone zone;
};

llmq_arena_t *
llmq_arena_new (void)
{
    llmq_arena_t *self = (llmq_arena_t *) calloc (1, sizeof *self);
    if (self && !msgpack_zone_init (&self->zone, 64 * 1024)) {
        free (self);
        self = NULL;
    }
    return self;
}

void
llmq_arena_destroy (llmq_arena_t **self_p)
{
    if (self_p && *self_p) {
        msgpack_zone_destroy (&(*self_p)->zone);
        free (*self_p);
        *self_p = NULL;
    }
}

void
llmq_arena_reset (llmq_arena_t *self)
{
    msgpack_zone_clear (&self->zone);
}

void *
llmq_arena_alloc (llmq_arena_t *self, size_t size)
{
    return msgpack_zone_malloc (&self->zone, size ? size : 1);
}

static char *
s_arena_strndup (llmq_arena_t *arena, const char *s, size_t len)
{
    char *copy = (char *) msgpack_zone_malloc_no_align (&arena->zone, len + 1);
    if (copy) {
        memcpy (copy, s, len);
        copy[len] = 0;
    }
    return copy;
}

char *
llmq_arena_strdup (llmq_arena_t *self, const char *s)
{
    return s ? s_arena_strndup (self, s, strlen (s)) : NULL;
}

void
llmq_buf_init (llmq_buf_t *b)
{
    memset (b, 0, sizeof *b);
}

void
llmq_buf_clear (llmq_buf_t *b)
{
    b->size = 0;
}

void
llmq_buf_free (llmq_buf_t *b)
{
    free (b->data);
    memset (b, 0, sizeof *b);
}

static int
s_buf_write (void *data, const char *buf, size_t len)
{
    llmq_buf_t *b = (llmq_buf_t *) data;
    if (b->size + len > b->alloc) {
        size_t alloc = b->alloc ? b->alloc : 256;
        while (alloc < b->size + len) {
            alloc *= 2;
        }
        char *p = (char *) realloc (b->data, alloc);
        if (!p) {
            return -1;
        }
        b->data = p;
        b->alloc = alloc;
    }
    memcpy (b->data + b->size, buf, len);
    b->size += len;
    return 0;
}

/* ------------------------------------------------------------------------
   Names
   ------------------------------------------------------------------------ */

const char *
llmq_cmd_name (int cmd)
{
    switch (cmd) {
        case LLMQ_CMD_SUBMIT:    return "SUBMIT";
        case LLMQ_CMD_CANCEL:    return "CANCEL";
        case LLMQ_CMD_STATUS:    return "STATUS";
        case LLMQ_CMD_WAIT:      return "WAIT";
        case LLMQ_CMD_FETCH:     return "FETCH";
        case LLMQ_CMD_STATS:     return "STATS";
        case LLMQ_CMD_PING:      return "PING";
        case LLMQ_CMD_ADMIN:     return "ADMIN";
        case LLMQ_CMD_ADMIN_REP: return "ADMIN_REP";
        case LLMQ_CMD_EVENT:     return "EVENT";
        case LLMQ_CMD_ACCEPTED:  return "ACCEPTED";
        case LLMQ_CMD_REJECTED:  return "REJECTED";
        case LLMQ_CMD_CHUNK:     return "CHUNK";
        case LLMQ_CMD_RESULT:    return "RESULT";
        case LLMQ_CMD_REPLY:     return "REPLY";
        case LLMQ_CMD_RESULTS:   return "RESULTS";
        case LLMQ_CMD_STATS_REP: return "STATS_REP";
        case LLMQ_CMD_PONG:      return "PONG";
        case LLMQ_CMD_RESET:     return "RESET";
        case LLMQ_CMD_ERROR:     return "ERROR";
        case LLMQ_CMD_HELLO:     return "HELLO";
        case LLMQ_CMD_CREDIT:    return "CREDIT";
        case LLMQ_CMD_HEARTBEAT: return "HEARTBEAT";
        case LLMQ_CMD_DONE:      return "DONE";
        case LLMQ_CMD_FAILED:    return "FAILED";
        case LLMQ_CMD_BYE:       return "BYE";
        case LLMQ_CMD_DISPATCH:  return "DISPATCH";
        case LLMQ_CMD_ABORT:     return "ABORT";
        default:                 return NULL;
    }
}

const char *
llmq_error_class_name (int ec)
{
    static const char *names[] = {
        "none", "invalid_request", "auth", "rate_limited", "server", "timeout",
        "connection", "stream_broken", "cancelled", "internal", "bad_response"
    };
    return ec >= 0 && ec < (int) (sizeof names / sizeof names[0]) ? names[ec] : "unknown";
}

bool
llmq_error_class_retryable (int ec)
{
    return ec == LLMQ_EC_RATE_LIMITED || ec == LLMQ_EC_SERVER || ec == LLMQ_EC_TIMEOUT
        || ec == LLMQ_EC_CONNECTION || ec == LLMQ_EC_BAD_RESPONSE;
}

/* ------------------------------------------------------------------------
   Encoding
   ------------------------------------------------------------------------ */

typedef struct {
    msgpack_packer pk;
    llmq_buf_t *out;
    size_t header_at;           /* offset of the map32 header to patch */
    uint32_t count;             /* fields written */
} s_map_t;

static void
s_map_begin (s_map_t *m, llmq_buf_t *out)
{
    m->out = out;
    m->count = 0;
    msgpack_packer_init (&m->pk, out, s_buf_write);
    m->header_at = out->size;
    static const char header[5] = { (char) 0xdf, 0, 0, 0, 0 };
    s_buf_write (out, header, sizeof header);
}

static int
s_map_end (s_map_t *m)
{
    if (m->out->size < m->header_at + 5 || !m->out->data) {
        return -1;              /* a write failed for lack of memory */
    }
    unsigned char *p = (unsigned char *) m->out->data + m->header_at + 1;
    p[0] = (unsigned char) (m->count >> 24);
    p[1] = (unsigned char) (m->count >> 16);
    p[2] = (unsigned char) (m->count >> 8);
    p[3] = (unsigned char) m->count;
    return 0;
}

static void
s_key (s_map_t *m, const char *key)
{
    size_t len = strlen (key);
    msgpack_pack_str (&m->pk, len);
    msgpack_pack_str_body (&m->pk, key, len);
    m->count++;
}

static void
s_put_u (s_map_t *m, const char *key, uint64_t v)
{
    if (v) {
        s_key (m, key);
        msgpack_pack_uint64 (&m->pk, v);
    }
}

static void
s_put_i (s_map_t *m, const char *key, int64_t v, int64_t dflt)
{
    if (v != dflt) {
        s_key (m, key);
        msgpack_pack_int64 (&m->pk, v);
    }
}

static void
s_put_b (s_map_t *m, const char *key, bool v)
{
    if (v) {
        s_key (m, key);
        msgpack_pack_true (&m->pk);
    }
}

static void
s_put_str (msgpack_packer *pk, const char *s)
{
    size_t len = strlen (s);
    msgpack_pack_str (pk, len);
    msgpack_pack_str_body (pk, s, len);
}

static void
s_put_s (s_map_t *m, const char *key, const char *v)
{
    if (v) {
        s_key (m, key);
        s_put_str (&m->pk, v);
    }
}

static int
s_encode_job (const llmq_job_t *j, llmq_buf_t *out)
{
    s_map_t m;
    s_map_begin (&m, out);
    s_put_u (&m, "id", j->id);
    s_put_s (&m, "model", j->model);
    s_put_s (&m, "body", j->body);
    s_put_s (&m, "idem", j->idem_key);
    s_put_s (&m, "user", j->user);
    s_put_s (&m, "org", j->org);
    s_put_s (&m, "batch", j->batch_id);
    s_put_s (&m, "cid", j->custom_id);
    s_put_s (&m, "meta", j->meta);
    s_put_u (&m, "prio", j->priority);
    s_put_b (&m, "stream", j->stream);
    s_put_b (&m, "restart", j->restart);
    s_put_u (&m, "maxatt", j->max_attempts);
    s_put_u (&m, "deadline", j->deadline_us);
    s_put_i (&m, "cttl", j->cache_ttl_ms, 0);
    s_put_u (&m, "state", j->state);
    s_put_u (&m, "att", j->attempts);
    s_put_u (&m, "lease", j->lease);
    s_put_u (&m, "enq", j->enqueued_us);
    s_put_u (&m, "vdl", j->vdeadline_us);
    s_put_u (&m, "nb", j->not_before_us);
    s_put_s (&m, "err", j->last_error);
    return s_map_end (&m);
}

/*  A remaining count on the wire: count + 1, so that 0 (left out) is
    "not said" (-1) and a quota used up (0) is sent as 1. */
static uint64_t
s_remaining_wire (int64_t v)
{
    return v < 0 ? 0 : v == INT64_MAX ? (uint64_t) INT64_MAX : (uint64_t) v + 1;
}

/*  `quota`: with the rate-limit fields (DONE, FAILED). */
static int
s_encode_result (const llmq_result_t *r, bool quota, llmq_buf_t *out)
{
    s_map_t m;
    s_map_begin (&m, out);
    s_put_u (&m, "id", r->id);
    s_put_u (&m, "state", r->state);
    s_put_s (&m, "content", r->content);
    s_put_s (&m, "finish", r->finish_reason);
    s_put_s (&m, "dep", r->deployment);
    s_put_s (&m, "reqid", r->request_id);
    s_put_s (&m, "err", r->error);
    s_put_s (&m, "model", r->model);
    s_put_s (&m, "batch", r->batch_id);
    s_put_s (&m, "cid", r->custom_id);
    s_put_s (&m, "tools", r->tool_calls);
    s_put_b (&m, "degr", r->degraded);
    s_put_b (&m, "hit", r->cached);
    s_put_u (&m, "cost", r->cost_micro);
    s_put_u (&m, "class", r->error_class);
    s_put_u (&m, "prio", r->priority);
    s_put_u (&m, "http", r->http_status);
    s_put_u (&m, "att", r->attempts);
    s_put_u (&m, "ptok", r->prompt_tokens);
    s_put_u (&m, "ctok", r->completion_tokens);
    s_put_u (&m, "ctk", r->cached_tokens);
    s_put_u (&m, "enq", r->enqueued_us);
    s_put_u (&m, "start", r->started_us);
    s_put_u (&m, "fin", r->finished_us);
    s_put_u (&m, "lat", r->latency_us);
    s_put_u (&m, "lease", r->lease);
    if (quota) {
        s_put_u (&m, "rlr", s_remaining_wire (r->rl_requests));
        s_put_u (&m, "rlt", s_remaining_wire (r->rl_tokens));
        s_put_u (&m, "rlms", r->rl_reset_ms);
    }
    return s_map_end (&m);
}

int
llmq_job_encode (const llmq_job_t *job, llmq_buf_t *out)
{
    return s_encode_job (job, out);
}

int
llmq_result_encode (const llmq_result_t *res, llmq_buf_t *out)
{
    return s_encode_result (res, false, out);
}

int
llmq_msg_encode_body (const llmq_msg_t *msg, llmq_buf_t *out)
{
    s_map_t m;
    s_map_begin (&m, out);
    s_put_u (&m, "corr", msg->corr);
    s_put_u (&m, "code", msg->code);
    s_put_s (&m, "reason", msg->reason);
    s_put_u (&m, "retry", msg->retry_after_ms);
    s_put_i (&m, "index", msg->index, msg->cmd == LLMQ_CMD_REJECTED ? -1 : 0);
    if (msg->njobs) {
        s_key (&m, "jobs");
        msgpack_pack_array (&m.pk, msg->njobs);
        for (size_t i = 0; i < msg->njobs; i++) {
            if (s_encode_job (&msg->jobs[i], out)) {
                return -1;
            }
        }
    }
    s_put_b (&m, "notify", msg->notify);
    if (msg->nids) {
        s_key (&m, "ids");
        msgpack_pack_array (&m.pk, msg->nids);
        for (size_t i = 0; i < msg->nids; i++) {
            msgpack_pack_uint64 (&m.pk, msg->ids[i]);
        }
        if (msg->dups) {
            s_key (&m, "dups");
            msgpack_pack_bin (&m.pk, msg->nids);
            msgpack_pack_bin_body (&m.pk, msg->dups, msg->nids);
        }
    }
    s_put_u (&m, "id", msg->id);
    s_put_u (&m, "lease", msg->lease);
    s_put_u (&m, "seq", msg->seq);
    s_put_s (&m, "text", msg->text);
    if (msg->nresults) {
        s_key (&m, "results");
        msgpack_pack_array (&m.pk, msg->nresults);
        for (size_t i = 0; i < msg->nresults; i++) {
            if (s_encode_result (&msg->results[i],
                                 msg->cmd == LLMQ_CMD_DONE || msg->cmd == LLMQ_CMD_FAILED, out)) {
                return -1;
            }
        }
    }
    s_put_s (&m, "batch", msg->batch_id);
    s_put_u (&m, "after", msg->after);
    s_put_u (&m, "limit", msg->limit);
    s_put_b (&m, "more", msg->more);
    s_put_u (&m, "slots", msg->slots);
    s_put_s (&m, "host", msg->host);
    s_put_u (&m, "pid", msg->pid);
    s_put_s (&m, "ver", msg->version);
    s_put_s (&m, "dep", msg->deployment);
    s_put_u (&m, "timeout", msg->timeout_ms);
    s_put_s (&m, "json", msg->json);
    return s_map_end (&m);
}

zmsg_t *
llmq_msg_encode (const llmq_msg_t *m)
{
    llmq_buf_t body;
    llmq_buf_init (&body);
    if (llmq_msg_encode_body (m, &body)) {
        llmq_buf_free (&body);
        return NULL;
    }
    zmsg_t *msg = zmsg_new ();
    byte sig[LLMQ_SIGNATURE_LEN] = { 'L', 'L', 'M', 'Q', LLMQ_PROTO_VERSION };
    byte cmd = m->cmd;
    zmsg_addmem (msg, sig, sizeof sig);
    zmsg_addmem (msg, &cmd, 1);
    zmsg_addmem (msg, body.data, body.size);
    llmq_buf_free (&body);
    return msg;
}

/* ------------------------------------------------------------------------
   Decoding
   ------------------------------------------------------------------------ */

typedef struct {
    llmq_arena_t *arena;
    char *why;
    size_t whylen;
    size_t ndups;               /* entries in the "dups" field */
} s_dec_t;

static int
s_fail (s_dec_t *d, const char *key, const char *what)
{
    if (d->why && d->whylen) {
        snprintf (d->why, d->whylen, "field '%s': %s", key, what);
    }
    return LLMQ_ERR_PROTOCOL;
}

static int
s_get_u (s_dec_t *d, const char *key, const msgpack_object *o, uint64_t max, uint64_t *v)
{
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        return s_fail (d, key, "expected an unsigned integer");
    }
    if (o->via.u64 > max) {
        return s_fail (d, key, "value out of range");
    }
    *v = o->via.u64;
    return 0;
}

static int
s_get_s (s_dec_t *d, const char *key, const msgpack_object *o, const char **v)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        *v = NULL;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_STR) {
        return s_fail (d, key, "expected a string");
    }
    if (memchr (o->via.str.ptr, 0, o->via.str.size)) {
        return s_fail (d, key, "string contains a NUL byte");
    }
    *v = s_arena_strndup (d->arena, o->via.str.ptr, o->via.str.size);
    return *v ? 0 : LLMQ_ERR_NOMEM;
}

static int
s_get_b (s_dec_t *d, const char *key, const msgpack_object *o, bool *v)
{
    if (o->type != MSGPACK_OBJECT_BOOLEAN) {
        return s_fail (d, key, "expected a boolean");
    }
    *v = o->via.boolean;
    return 0;
}

/*  Key matching: keys are short; compare length first. */
#define KEY_IS(k, lit) ((k)->size == sizeof (lit) - 1 && memcmp ((k)->ptr, lit, sizeof (lit) - 1) == 0)

/*  Reads an unsigned field of any integer width into `dst`. */
#define GET_U(lit, dst, max) \
    if (KEY_IS (k, lit)) { uint64_t v_; int rc_ = s_get_u (d, lit, o, (max), &v_); \
                           if (rc_) { return rc_; } (dst) = v_; continue; }
#define GET_S(lit, dst) \
    if (KEY_IS (k, lit)) { int rc_ = s_get_s (d, lit, o, &(dst)); if (rc_) { return rc_; } continue; }
#define GET_B(lit, dst) \
    if (KEY_IS (k, lit)) { int rc_ = s_get_b (d, lit, o, &(dst)); if (rc_) { return rc_; } continue; }

static int
s_decode_job (s_dec_t *d, const msgpack_object *map, llmq_job_t *j)
{
    memset (j, 0, sizeof *j);
    if (map->type != MSGPACK_OBJECT_MAP) {
        return s_fail (d, "jobs", "expected a map per job");
    }
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            return s_fail (d, "jobs", "map key is not a string");
        }
        const msgpack_object_str *k = &kv->key.via.str;
        const msgpack_object *o = &kv->val;
        GET_U ("id", j->id, UINT64_MAX);
        GET_S ("model", j->model);
        GET_S ("body", j->body);
        GET_S ("idem", j->idem_key);
        GET_S ("user", j->user);
        GET_S ("org", j->org);
        GET_S ("batch", j->batch_id);
        GET_S ("cid", j->custom_id);
        GET_S ("meta", j->meta);
        GET_U ("prio", j->priority, 3);
        GET_B ("stream", j->stream);
        GET_B ("restart", j->restart);
        GET_U ("maxatt", j->max_attempts, 1000);
        GET_U ("deadline", j->deadline_us, UINT64_MAX);
        if (KEY_IS (k, "cttl")) {
            /*  A TTL in ms, or -1 (never cache): the one signed job field. */
            if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
                j->cache_ttl_ms = (int64_t) o->via.u64;
            }
            else
            if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 == -1) {
                j->cache_ttl_ms = -1;
            }
            else {
                return s_fail (d, "cttl", "expected -1 or a number of ms");
            }
            continue;
        }
        GET_U ("state", j->state, 255);
        GET_U ("att", j->attempts, UINT32_MAX);
        GET_U ("lease", j->lease, UINT64_MAX);
        GET_U ("enq", j->enqueued_us, UINT64_MAX);
        GET_U ("vdl", j->vdeadline_us, UINT64_MAX);
        GET_U ("nb", j->not_before_us, UINT64_MAX);
        GET_S ("err", j->last_error);
        /* unknown key: ignored (a newer peer) */
    }
    return 0;
}

static int
s_decode_result (s_dec_t *d, const msgpack_object *map, llmq_result_t *r)
{
    memset (r, 0, sizeof *r);
    if (map->type != MSGPACK_OBJECT_MAP) {
        return s_fail (d, "results", "expected a map per result");
    }
    uint64_t rlr = 0, rlt = 0;          /* remaining + 1; 0: not said */
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            return s_fail (d, "results", "map key is not a string");
        }
        const msgpack_object_str *k = &kv->key.via.str;
        const msgpack_object *o = &kv->val;
        GET_U ("id", r->id, UINT64_MAX);
        GET_U ("state", r->state, 255);
        GET_S ("content", r->content);
        GET_S ("finish", r->finish_reason);
        GET_S ("dep", r->deployment);
        GET_S ("reqid", r->request_id);
        GET_S ("err", r->error);
        GET_S ("model", r->model);
        GET_S ("batch", r->batch_id);
        GET_S ("cid", r->custom_id);
        GET_S ("tools", r->tool_calls);
        GET_B ("degr", r->degraded);
        GET_B ("hit", r->cached);
        GET_U ("cost", r->cost_micro, UINT64_MAX);
        GET_U ("class", r->error_class, 255);
        GET_U ("prio", r->priority, 3);
        GET_U ("http", r->http_status, 999);
        GET_U ("att", r->attempts, UINT32_MAX);
        GET_U ("ptok", r->prompt_tokens, UINT32_MAX);
        GET_U ("ctok", r->completion_tokens, UINT32_MAX);
        GET_U ("ctk", r->cached_tokens, UINT32_MAX);
        GET_U ("enq", r->enqueued_us, UINT64_MAX);
        GET_U ("start", r->started_us, UINT64_MAX);
        GET_U ("fin", r->finished_us, UINT64_MAX);
        GET_U ("lat", r->latency_us, UINT64_MAX);
        GET_U ("lease", r->lease, UINT64_MAX);
        GET_U ("rlr", rlr, INT64_MAX);
        GET_U ("rlt", rlt, INT64_MAX);
        GET_U ("rlms", r->rl_reset_ms, UINT64_MAX);
    }
    r->rl_requests = (int64_t) rlr - 1;
    r->rl_tokens = (int64_t) rlt - 1;
    return 0;
}

/*  Bits for the fields a command may require. */
enum {
    F_ID = 1 << 0, F_LEASE = 1 << 1, F_JOBS = 1 << 2, F_IDS = 1 << 3, F_RESULTS = 1 << 4,
    F_BATCH = 1 << 5, F_TEXT = 1 << 6, F_DEP = 1 << 7, F_CODE = 1 << 8, F_CORR = 1 << 9,
    F_JSON = 1 << 10
};

static int
s_decode_map (s_dec_t *d, const msgpack_object *root, llmq_msg_t *m, unsigned *seen)
{
    if (root->type != MSGPACK_OBJECT_MAP) {
        return s_fail (d, "body", "expected a map");
    }
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];
        if (kv->key.type != MSGPACK_OBJECT_STR) {
            return s_fail (d, "body", "map key is not a string");
        }
        const msgpack_object_str *k = &kv->key.via.str;
        const msgpack_object *o = &kv->val;
        if (KEY_IS (k, "jobs") || KEY_IS (k, "results")) {
            bool jobs = KEY_IS (k, "jobs");
            const char *name = jobs ? "jobs" : "results";
            if (o->type != MSGPACK_OBJECT_ARRAY) {
                return s_fail (d, name, "expected an array");
            }
            uint32_t n = o->via.array.size;
            if (n > LLMQ_MAX_BATCH) {
                return s_fail (d, name, "too many entries");
            }
            void *arr = llmq_arena_alloc (d->arena, (size_t) n * (jobs ? sizeof (llmq_job_t) : sizeof (llmq_result_t)));
            if (!arr) {
                return LLMQ_ERR_NOMEM;
            }
            for (uint32_t e = 0; e < n; e++) {
                int rc = jobs ? s_decode_job (d, &o->via.array.ptr[e], (llmq_job_t *) arr + e)
                              : s_decode_result (d, &o->via.array.ptr[e], (llmq_result_t *) arr + e);
                if (rc) {
                    return rc;
                }
            }
            if (jobs) {
                m->jobs = (llmq_job_t *) arr;
                m->njobs = n;
                *seen |= F_JOBS;
            }
            else {
                m->results = (llmq_result_t *) arr;
                m->nresults = n;
                *seen |= F_RESULTS;
            }
            continue;
        }
        if (KEY_IS (k, "ids")) {
            if (o->type != MSGPACK_OBJECT_ARRAY) {
                return s_fail (d, "ids", "expected an array");
            }
            uint32_t n = o->via.array.size;
            if (n > LLMQ_MAX_BATCH) {
                return s_fail (d, "ids", "too many entries");
            }
            m->ids = (uint64_t *) llmq_arena_alloc (d->arena, (size_t) n * sizeof (uint64_t));
            if (!m->ids) {
                return LLMQ_ERR_NOMEM;
            }
            for (uint32_t e = 0; e < n; e++) {
                int rc = s_get_u (d, "ids", &o->via.array.ptr[e], UINT64_MAX, &m->ids[e]);
                if (rc) {
                    return rc;
                }
            }
            m->nids = n;
            *seen |= F_IDS;
            continue;
        }
        if (KEY_IS (k, "dups")) {
            if (o->type != MSGPACK_OBJECT_BIN) {
                return s_fail (d, "dups", "expected binary");
            }
            m->dups = (uint8_t *) llmq_arena_alloc (d->arena, o->via.bin.size);
            if (!m->dups) {
                return LLMQ_ERR_NOMEM;
            }
            memcpy (m->dups, o->via.bin.ptr, o->via.bin.size);
            d->ndups = o->via.bin.size;
            continue;
        }
        if (KEY_IS (k, "index")) {
            if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX) {
                m->index = (int64_t) o->via.u64;
            }
            else if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) {
                m->index = o->via.i64;
            }
            else {
                return s_fail (d, "index", "expected an integer");
            }
            continue;
        }
        if (KEY_IS (k, "id")) { *seen |= F_ID; }
        if (KEY_IS (k, "lease")) { *seen |= F_LEASE; }
        if (KEY_IS (k, "batch")) { *seen |= F_BATCH; }
        if (KEY_IS (k, "text")) { *seen |= F_TEXT; }
        if (KEY_IS (k, "dep")) { *seen |= F_DEP; }
        if (KEY_IS (k, "code")) { *seen |= F_CODE; }
        if (KEY_IS (k, "corr")) { *seen |= F_CORR; }
        if (KEY_IS (k, "json")) { *seen |= F_JSON; }
        GET_U ("corr", m->corr, UINT64_MAX);
        GET_U ("code", m->code, UINT32_MAX);
        GET_S ("reason", m->reason);
        GET_U ("retry", m->retry_after_ms, UINT64_MAX);
        GET_B ("notify", m->notify);
        GET_U ("id", m->id, UINT64_MAX);
        GET_U ("lease", m->lease, UINT64_MAX);
        GET_U ("seq", m->seq, UINT32_MAX);
        GET_S ("text", m->text);
        GET_S ("batch", m->batch_id);
        GET_U ("after", m->after, UINT64_MAX);
        GET_U ("limit", m->limit, UINT32_MAX);
        GET_B ("more", m->more);
        GET_U ("slots", m->slots, 1u << 20);
        GET_S ("host", m->host);
        GET_U ("pid", m->pid, UINT32_MAX);
        GET_S ("ver", m->version);
        GET_S ("dep", m->deployment);
        GET_U ("timeout", m->timeout_ms, UINT64_MAX);
        GET_S ("json", m->json);
    }
    return 0;
}

/*  Fields each command must carry. */
static unsigned
s_required (int cmd)
{
    switch (cmd) {
        case LLMQ_CMD_SUBMIT:    return F_JOBS;
        case LLMQ_CMD_CANCEL:    return F_ID;
        case LLMQ_CMD_STATUS:    return F_ID;
        case LLMQ_CMD_WAIT:      return F_IDS;
        case LLMQ_CMD_FETCH:     return F_BATCH;
        case LLMQ_CMD_ACCEPTED:  return F_IDS;
        case LLMQ_CMD_REJECTED:  return F_CODE;
        case LLMQ_CMD_CHUNK:     return F_ID | F_TEXT;
        case LLMQ_CMD_RESET:     return F_ID;
        case LLMQ_CMD_RESULT:    return F_RESULTS;
        case LLMQ_CMD_REPLY:     return 0;
        case LLMQ_CMD_STATS_REP: return F_JSON;
        case LLMQ_CMD_ADMIN:     return F_JSON;
        case LLMQ_CMD_ADMIN_REP: return F_JSON;
        case LLMQ_CMD_EVENT:     return F_JSON;
        case LLMQ_CMD_ERROR:     return F_CODE;
        case LLMQ_CMD_DONE:      return F_ID | F_LEASE | F_RESULTS;
        case LLMQ_CMD_FAILED:    return F_ID | F_LEASE | F_RESULTS;
        case LLMQ_CMD_DISPATCH:  return F_JOBS | F_DEP;
        case LLMQ_CMD_ABORT:     return F_ID | F_LEASE;
        default:                 return 0;
    }
}

static const char *
s_field_name (unsigned bit)
{
    switch (bit) {
        case F_ID: return "id";
        case F_LEASE: return "lease";
        case F_JOBS: return "jobs";
        case F_IDS: return "ids";
        case F_RESULTS: return "results";
        case F_BATCH: return "batch";
        case F_TEXT: return "text";
        case F_DEP: return "dep";
        case F_CODE: return "code";
        case F_CORR: return "corr";
        case F_JSON: return "json";
        default: return "?";
    }
}

/*  Writes "<prefix><arg>" as the reason and returns rc. */
static int
s_set_why (char *why, size_t whylen, int rc, const char *prefix, const char *arg)
{
    if (why && whylen) {
        snprintf (why, whylen, "%s%s", prefix, arg ? arg : "");
    }
    return rc;
}

/*  msgpack-c allocates the entries of an array or map from the count in its
    header before it reads them: six bytes claiming 2^32 entries would cost a
    96 GiB malloc. This walk checks, allocating nothing, that every count and
    length fits in the bytes that are left (an entry takes at least one
    byte), so what msgpack allocates is bounded by the body's size. */
static bool
s_counts_fit (const unsigned char *p, size_t len)
{
    size_t pending = 1, off = 0;
    while (pending) {
        if (off >= len) {
            return false;
        }
        unsigned char b = p[off++];
        pending--;
        uint64_t entries = 0, skip = 0;
        int width = 0;              /* bytes of a length or count that follow */
        int extra = 0;              /* fixed bytes after it (ext type) */
        bool is_map = false, is_container = false;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            ;
        }
        else if ((b & 0xf0) == 0x80) {
            entries = 2u * (b & 0x0f);
        }
        else if ((b & 0xf0) == 0x90) {
            entries = b & 0x0f;
        }
        else if ((b & 0xe0) == 0xa0) {
            skip = b & 0x1f;
        }
        else {
            switch (b) {
                case 0xc4: case 0xd9: width = 1; break;                 /* bin8, str8 */
                case 0xc5: case 0xda: width = 2; break;
                case 0xc6: case 0xdb: width = 4; break;
                case 0xc7: width = 1; extra = 1; break;                 /* ext8 */
                case 0xc8: width = 2; extra = 1; break;
                case 0xc9: width = 4; extra = 1; break;
                case 0xcc: case 0xd0: skip = 1; break;
                case 0xcd: case 0xd1: skip = 2; break;
                case 0xca: case 0xce: case 0xd2: skip = 4; break;
                case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
                case 0xd4: skip = 2; break;                             /* fixext */
                case 0xd5: skip = 3; break;
                case 0xd6: skip = 5; break;
                case 0xd7: skip = 9; break;
                case 0xd8: skip = 17; break;
                case 0xdc: width = 2; is_container = true; break;       /* array16 */
                case 0xdd: width = 4; is_container = true; break;
                case 0xde: width = 2; is_container = is_map = true; break;
                case 0xdf: width = 4; is_container = is_map = true; break;
                default: return false;                                  /* 0xc1 */
            }
        }
        if (width) {
            if ((size_t) width > len - off) {
                return false;
            }
            uint64_t n = 0;
            for (int i = 0; i < width; i++) {
                n = (n << 8) | p[off++];
            }
            if (is_container) {
                entries = is_map ? 2 * n : n;
            }
            else {
                skip = n + (uint64_t) extra;
            }
        }
        if (skip > len - off) {
            return false;
        }
        off += (size_t) skip;
        if (entries > len - off) {
            return false;
        }
        pending += (size_t) entries;
    }
    return true;                    /* trailing bytes are msgpack's to report */
}

int
llmq_msg_decode_body (uint8_t cmd, const void *body, size_t len, llmq_msg_t *out,
                      llmq_arena_t *arena, char *why, size_t whylen)
{
    memset (out, 0, sizeof *out);
    out->cmd = cmd;
    out->index = cmd == LLMQ_CMD_REJECTED ? -1 : 0;    /* the encoder's default */
    if (!llmq_cmd_name (cmd)) {
        char hex[8];
        snprintf (hex, sizeof hex, "0x%02x", cmd);
        return s_set_why (why, whylen, LLMQ_ERR_UNKNOWN_COMMAND, "unknown command ", hex);
    }
    if (!s_counts_fit ((const unsigned char *) body, len)) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "body truncated or malformed", NULL);
    }
    s_dec_t d = { arena, why, whylen, 0 };
    msgpack_object root;
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack ((const char *) body, len, &off, &arena->zone, &root);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR) {
        return s_set_why (why, whylen, LLMQ_ERR_NOMEM, "out of memory decoding body", NULL);
    }
    if (ur == MSGPACK_UNPACK_CONTINUE) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "body truncated", NULL);
    }
    if (ur != MSGPACK_UNPACK_SUCCESS) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL,
                          ur == MSGPACK_UNPACK_EXTRA_BYTES ? "trailing bytes after body" : "body is not valid msgpack", NULL);
    }
    unsigned seen = 0;
    int rc = s_decode_map (&d, &root, out, &seen);
    if (rc) {
        return rc;
    }
    unsigned missing = s_required (cmd) & ~seen;
    if (missing) {
        unsigned bit = missing & -missing;
        char what[64];
        snprintf (what, sizeof what, "%s needs field", llmq_cmd_name (cmd));
        if (why && whylen) {
            snprintf (why, whylen, "%s '%s'", what, s_field_name (bit));
        }
        return LLMQ_ERR_PROTOCOL;
    }
    if ((cmd == LLMQ_CMD_SUBMIT && out->njobs == 0)
    ||  (cmd == LLMQ_CMD_DISPATCH && out->njobs != 1)
    ||  (cmd == LLMQ_CMD_DONE && out->nresults == 0)
    ||  ((cmd == LLMQ_CMD_FAILED || cmd == LLMQ_CMD_RESULT) && out->nresults != 1)) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "wrong number of entries in ", llmq_cmd_name (cmd));
    }
    if (out->dups && d.ndups != out->nids) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "field 'dups': length differs from 'ids'", NULL);
    }
    return LLMQ_OK;
}

int
llmq_msg_decode (zmsg_t *msg, size_t max_body, llmq_msg_t *out, llmq_arena_t *arena,
                 char *why, size_t whylen)
{
    memset (out, 0, sizeof *out);
    out->index = -1;
    if (zmsg_size (msg) != 3) {
        char n[16];
        snprintf (n, sizeof n, "%zu", zmsg_size (msg));
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "expected 3 frames, got ", n);
    }
    zframe_t *sig = zmsg_first (msg);
    zframe_t *cmd = zmsg_next (msg);
    zframe_t *body = zmsg_next (msg);
    if (zframe_size (sig) != LLMQ_SIGNATURE_LEN || memcmp (zframe_data (sig), LLMQ_SIGNATURE, 4) != 0) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "bad signature frame (expected \"LLMQ\" + version)", NULL);
    }
    int version = zframe_data (sig)[4];
    if (version != LLMQ_PROTO_VERSION) {
        char v[32];
        snprintf (v, sizeof v, "%d (this peer speaks %d)", version, LLMQ_PROTO_VERSION);
        return s_set_why (why, whylen, LLMQ_ERR_VERSION, "unsupported protocol version ", v);
    }
    if (zframe_size (cmd) != 1) {
        return s_set_why (why, whylen, LLMQ_ERR_PROTOCOL, "command frame must be one byte", NULL);
    }
    if (max_body && zframe_size (body) > max_body) {
        char n[64];
        snprintf (n, sizeof n, "%zu bytes, limit %zu", zframe_size (body), max_body);
        return s_set_why (why, whylen, LLMQ_ERR_TOO_LARGE, "message too large: ", n);
    }
    uint8_t c = zframe_data (cmd)[0];
    int rc = llmq_msg_decode_body (c, zframe_data (body), zframe_size (body), out, arena, why, whylen);
    out->cmd = c;
    return rc;
}

/*  Stored records share the job and result decoders. */
static int
s_decode_record (const void *data, size_t len, llmq_arena_t *arena, bool job, void *dst)
{
    msgpack_object root;
    size_t off = 0;
    if (!s_counts_fit ((const unsigned char *) data, len)
    ||  msgpack_unpack ((const char *) data, len, &off, &arena->zone, &root) != MSGPACK_UNPACK_SUCCESS) {
        return LLMQ_ERR_PROTOCOL;
    }
    s_dec_t d = { arena, NULL, 0, 0 };
    return job ? s_decode_job (&d, &root, (llmq_job_t *) dst)
               : s_decode_result (&d, &root, (llmq_result_t *) dst);
}

int
llmq_job_decode (const void *data, size_t len, llmq_job_t *job, llmq_arena_t *arena)
{
    return s_decode_record (data, len, arena, true, job);
}

int
llmq_result_decode (const void *data, size_t len, llmq_result_t *res, llmq_arena_t *arena)
{
    return s_decode_record (data, len, arena, false, res);
}
