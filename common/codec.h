/*  codec.h -- the llmq wire protocol: frames, commands and their fields.

    This module is the only code in llmq that touches msgpack. Everything
    else speaks in terms of the plain C structs below. docs/protocol.md is
    the specification; this header is its C mirror.

    A message on the wire (after the ROUTER identity frame, if any) is three
    frames:
        [0] signature  "LLMQ" followed by one version byte (LLMQ_PROTO_VERSION)
        [1] command    one byte (llmq_cmd)
        [2] body       one msgpack map; keys are short strings

    Every field is optional on the wire: an absent field reads as zero, NULL
    or false, and the encoder leaves out fields that are zero. Unknown keys
    are ignored, so a newer peer may add fields without a version bump. Each
    command has a list of required fields; the decoder refuses a message
    that lacks one (LLMQ_ERR_PROTOCOL, with the field named in the reason).

    Decoded strings are NUL-terminated copies that live in an arena (below),
    so a decoded message stays valid until its arena is reset or destroyed.
*/
#ifndef LLMQ_CODEC_H
#define LLMQ_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <czmq.h>

#include "llmq.h"       /* llmq_err codes and priorities are shared with the public API */

#define LLMQ_PROTO_VERSION   1
#define LLMQ_SIGNATURE       "LLMQ"
#define LLMQ_SIGNATURE_LEN   5          /* "LLMQ" + version byte */
#define LLMQ_MAX_BATCH       100000     /* jobs in one SUBMIT, results in one RESULTS */

/*  Commands. Numbers are part of the protocol: never renumber. */
typedef enum {
    /* client -> broker */
    LLMQ_CMD_SUBMIT     = 0x01,   /* jobs[], notify                         -> ACCEPTED | REJECTED */
    LLMQ_CMD_CANCEL     = 0x02,   /* id                                     -> REPLY */
    LLMQ_CMD_STATUS     = 0x03,   /* id                                     -> RESULT (state only if not final) | REJECTED */
    LLMQ_CMD_WAIT       = 0x04,   /* ids[]: subscribe to results and chunks -> RESULT/CHUNK pushes */
    LLMQ_CMD_FETCH      = 0x05,   /* batch, after, limit                    -> RESULTS */
    LLMQ_CMD_STATS      = 0x06,   /*                                        -> STATS */
    LLMQ_CMD_PING       = 0x07,   /*                                        -> PONG */
    LLMQ_CMD_ADMIN      = 0x08,   /* json: {"op":..., ...} (docs/protocol.md) -> ADMIN_REP | REJECTED */
    /* broker -> client */
    LLMQ_CMD_ACCEPTED   = 0x41,   /* corr, ids[] (dup[i] via flags: see `dups`) */
    LLMQ_CMD_REJECTED   = 0x42,   /* corr, code, reason, retry_after_ms, index */
    LLMQ_CMD_CHUNK      = 0x43,   /* id, seq, text (also worker -> broker, with lease) */
    LLMQ_CMD_RESULT     = 0x44,   /* corr (0 when pushed), results[0] */
    LLMQ_CMD_REPLY      = 0x45,   /* corr, code, reason: generic answer (CANCEL) */
    LLMQ_CMD_RESULTS    = 0x46,   /* corr, results[], after (cursor), more, json (batch counts) */
    LLMQ_CMD_STATS_REP  = 0x47,   /* corr, json */
    LLMQ_CMD_PONG       = 0x48,   /* corr */
    LLMQ_CMD_RESET      = 0x49,   /* id, reason: a restartable stream starts over */
    LLMQ_CMD_ADMIN_REP  = 0x4A,   /* corr, json */
    LLMQ_CMD_EVENT      = 0x4B,   /* json: a notice to clients that subscribed (budget alerts) */
    LLMQ_CMD_ERROR      = 0x4F,   /* code, reason: protocol error, to any peer */
    /* worker -> broker */
    LLMQ_CMD_HELLO      = 0x61,   /* slots, host, pid, version */
    LLMQ_CMD_CREDIT     = 0x62,   /* slots: more credit granted (added) */
    LLMQ_CMD_HEARTBEAT  = 0x63,   /* (both directions); a worker's may carry json (figures) */
    LLMQ_CMD_DONE       = 0x64,   /* id, lease, results[] (each with id and lease) */
    LLMQ_CMD_FAILED     = 0x65,   /* id, lease, results[0] (error_class, http_status, error), retry_after_ms */
    LLMQ_CMD_BYE        = 0x66,   /* */
    /* broker -> worker */
    LLMQ_CMD_DISPATCH   = 0x71,   /* jobs[0] (with id, lease), deployment, timeout_ms */
    LLMQ_CMD_ABORT      = 0x72    /* id, lease: cancel a running job */
} llmq_cmd;

/*  Error classes a worker reports with FAILED. Part of the protocol. */
typedef enum {
    LLMQ_EC_NONE            = 0,
    LLMQ_EC_INVALID_REQUEST = 1,  /* 400/404/422, context too long: not retried */
    LLMQ_EC_AUTH            = 2,  /* 401/403 */
    LLMQ_EC_RATE_LIMITED    = 3,  /* 429, 529: retry after retry_after_ms */
    LLMQ_EC_SERVER          = 4,  /* 5xx: retryable */
    LLMQ_EC_TIMEOUT         = 5,  /* retryable */
    LLMQ_EC_CONNECTION      = 6,  /* connect/reset: retryable */
    LLMQ_EC_STREAM_BROKEN   = 7,  /* stream cut after chunks reached the client */
    LLMQ_EC_CANCELLED       = 8,  /* aborted on the broker's request */
    LLMQ_EC_INTERNAL        = 9,  /* worker-side bug or bad config */
    LLMQ_EC_BAD_RESPONSE    = 10  /* provider answered something unparseable */
} llmq_error_class;

const char *llmq_error_class_name (int ec);
/*  True for the classes worth another attempt. */
bool llmq_error_class_retryable (int ec);

/*  A job: what a client submits, what the broker stores, what it dispatches.
    The broker parses `body` only for jobs that are response cache
    candidates (broker/cache.c); workers translate it for their provider. */
typedef struct {
    uint64_t id;                /* assigned by the broker */
    const char *model;          /* model group (the route) */
    const char *body;           /* request JSON, OpenAI chat.completions shape */
    const char *idem_key;       /* idempotency key, or NULL */
    const char *user;           /* tenant user, or NULL */
    const char *org;            /* tenant org, or NULL */
    const char *batch_id;       /* batch this job belongs to, or NULL */
    const char *custom_id;      /* caller's id inside its batch, or NULL */
    const char *meta;           /* opaque caller metadata (JSON), or NULL */
    uint8_t  priority;          /* llmq_priority: 0 urgent .. 3 low */
    bool     stream;            /* forward chunks to the submitter */
    bool     restart;           /* with stream: a stream that breaks after chunks
                                   reached the client may run again (RESET) */
    uint32_t max_attempts;      /* 0: broker default */
    uint64_t deadline_us;       /* absolute unix µs by which it must start; 0: none */
    int64_t  cache_ttl_ms;      /* response cache: > 0 cache its answer this long (and
                                   answer it from the cache); 0: the broker's rule
                                   ([cache] auto_temperature_zero); -1: never */
    /* Broker-side state: stored with the job, sent in DISPATCH. */
    uint8_t  state;             /* llmq_state */
    uint32_t attempts;          /* attempts that failed or lost their worker */
    uint64_t lease;             /* lease token: bumped at every dispatch */
    uint64_t enqueued_us;       /* unix µs when accepted */
    uint64_t vdeadline_us;      /* ready-index key: enqueued + priority offset */
    uint64_t not_before_us;     /* delayed until (retry backoff) */
    const char *last_error;     /* reason of the last failed attempt */
} llmq_job_t;

/*  A result: the one shape every provider's answer ends in. */
typedef struct {
    uint64_t id;
    uint8_t  state;             /* llmq_state: final, or current for STATUS */
    const char *content;        /* assistant text (partial on a broken stream) */
    const char *finish_reason;  /* stop, length, tool_calls, content_filter */
    const char *deployment;     /* deployment that served it */
    const char *request_id;     /* provider's request id */
    const char *error;          /* human-readable reason when not ok */
    const char *model;          /* model group */
    const char *batch_id;
    const char *custom_id;
    const char *tool_calls;     /* JSON text, OpenAI's shape: [{"id","type":"function",
                                   "function":{"name","arguments"}}]; NULL when none */
    uint8_t  error_class;       /* llmq_error_class */
    bool     degraded;          /* served by its group's fallback group */
    bool     cached;            /* answered from the response cache */
    uint64_t cost_micro;        /* what it cost, in millionths of a USD */
    uint8_t  priority;
    uint16_t http_status;       /* provider HTTP status of the last attempt */
    uint32_t attempts;          /* dispatches it took */
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    uint32_t cached_tokens;     /* prompt tokens read from the provider's
                                   prompt cache (part of prompt_tokens) */
    uint64_t enqueued_us;       /* unix µs */
    uint64_t started_us;        /* unix µs of the last dispatch */
    uint64_t finished_us;       /* unix µs */
    uint64_t latency_us;        /* provider call time measured by the worker */
    uint64_t lease;             /* DONE: the lease this result is for (batched DONE) */
    /*  The provider's quota as its rate-limit headers said with this
        attempt's answer. Sent in DONE and FAILED only (worker to broker):
        the encoder leaves them out of every other message and of stored
        records, which decode them as unknown. */
    int64_t  rl_requests;       /* requests remaining, -1: not said */
    int64_t  rl_tokens;         /* tokens remaining, -1: not said */
    uint64_t rl_reset_ms;       /* ms from sending until the quota that is used
                                   up (else the sooner) resets, 0: not said */
} llmq_result_t;

/*  One message of any command. Fields a command does not use stay zero. */
typedef struct {
    uint8_t cmd;                /* llmq_cmd */
    uint64_t corr;              /* request id chosen by the client, echoed */
    uint32_t code;              /* llmq_err in REJECTED, REPLY, ERROR */
    const char *reason;         /* text for code */
    uint64_t retry_after_ms;    /* REJECTED, FAILED */
    int64_t  index;             /* REJECTED: index of the offending job, -1 none */
    llmq_job_t *jobs;           /* SUBMIT, DISPATCH */
    size_t   njobs;
    bool     notify;            /* SUBMIT: push results (and chunks) back */
    uint64_t *ids;              /* ACCEPTED, WAIT */
    size_t   nids;
    uint8_t  *dups;             /* ACCEPTED: dups[i]=1 if ids[i] came from an idempotency key */
    uint64_t id;                /* CANCEL, STATUS, CHUNK, DONE, FAILED, ABORT */
    uint64_t lease;             /* CHUNK, DONE, FAILED, ABORT (worker side) */
    uint32_t seq;               /* CHUNK: 0, 1, 2 ... per attempt */
    const char *text;           /* CHUNK */
    llmq_result_t *results;     /* RESULT, RESULTS, DONE, FAILED */
    size_t   nresults;
    const char *batch_id;       /* FETCH */
    uint64_t after;             /* FETCH/RESULTS: cursor (last job id seen) */
    uint32_t limit;             /* FETCH: max results */
    bool     more;              /* RESULTS: more to fetch */
    uint32_t slots;             /* HELLO, CREDIT */
    const char *host;           /* HELLO */
    uint32_t pid;               /* HELLO */
    const char *version;        /* HELLO: software version string */
    const char *deployment;     /* DISPATCH */
    uint64_t timeout_ms;        /* DISPATCH: total time allowed for the call */
    const char *json;           /* STATS_REP, RESULTS: a JSON document;
                                   HEARTBEAT from a worker: its figures, or NULL */
} llmq_msg_t;

/*  Arena: decoded strings and arrays live here until reset. */
typedef struct llmq_arena llmq_arena_t;
llmq_arena_t *llmq_arena_new (void);
void  llmq_arena_destroy (llmq_arena_t **self_p);
void  llmq_arena_reset (llmq_arena_t *self);
void *llmq_arena_alloc (llmq_arena_t *self, size_t size);
char *llmq_arena_strdup (llmq_arena_t *self, const char *s);

/*  Growable byte buffer the encoders write into. */
typedef struct {
    char  *data;
    size_t size;
    size_t alloc;
} llmq_buf_t;
void llmq_buf_init (llmq_buf_t *b);
void llmq_buf_clear (llmq_buf_t *b);       /* size = 0, keeps memory */
void llmq_buf_free (llmq_buf_t *b);

/*  Encode a message body (the msgpack map) into `out` (appended). */
int  llmq_msg_encode_body (const llmq_msg_t *m, llmq_buf_t *out);
/*  Build the whole three-frame message. Returns NULL only when out of memory. */
zmsg_t *llmq_msg_encode (const llmq_msg_t *m);

/*  Decode frames [signature][command][body] from the front of `msg` (an
    identity frame must have been popped already). Returns LLMQ_OK and fills
    `out` (strings in `arena`), or an error code with a reason in `why`:
    LLMQ_ERR_PROTOCOL (bad framing, msgpack, field types, missing field),
    LLMQ_ERR_VERSION (signature right, version byte different),
    LLMQ_ERR_UNKNOWN_COMMAND, LLMQ_ERR_TOO_LARGE (body over max_body).
    Never asserts on input; `msg` is not modified. */
int  llmq_msg_decode (zmsg_t *msg, size_t max_body, llmq_msg_t *out,
                      llmq_arena_t *arena, char *why, size_t whylen);
/*  Same, from a raw body whose command is already known. */
int  llmq_msg_decode_body (uint8_t cmd, const void *body, size_t len,
                           llmq_msg_t *out, llmq_arena_t *arena,
                           char *why, size_t whylen);

/*  Stored records (LMDB values): a job with its state, a result. */
int  llmq_job_encode (const llmq_job_t *job, llmq_buf_t *out);
int  llmq_job_decode (const void *data, size_t len, llmq_job_t *job, llmq_arena_t *arena);
int  llmq_result_encode (const llmq_result_t *res, llmq_buf_t *out);
int  llmq_result_decode (const void *data, size_t len, llmq_result_t *res, llmq_arena_t *arena);

const char *llmq_cmd_name (int cmd);

#endif
