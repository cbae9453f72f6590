/*  worker_int.h -- what worker.c (the loop, the broker side) and call.c
    (the provider calls, the curl side) share. Private to llmq-worker.
*/
#ifndef LLMQ_WORKER_INT_H
#define LLMQ_WORKER_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <curl/curl.h>
#include <czmq.h>

#include "codec.h"
#include "config.h"
#include "provider.h"
#include "sse.h"
#include "worker.h"

#define LLMQ_WORKER_STR2(x) #x
#define LLMQ_WORKER_STR(x)  LLMQ_WORKER_STR2 (x)
#define LLMQ_WORKER_VERSION LLMQ_WORKER_STR (LLMQ_VERSION_MAJOR) "." \
    LLMQ_WORKER_STR (LLMQ_VERSION_MINOR) "." LLMQ_WORKER_STR (LLMQ_VERSION_PATCH)

typedef struct llmq_call llmq_call_t;

/*  One slot: a provider call in flight, or a free slot waiting for one. */
struct llmq_call {
    llmq_worker_t *w;           /* owner */
    CURL   *easy;               /* reused from call to call */
    llmq_call_t *next_free;     /* free stack link */
    bool    busy;               /* a call is running in this slot */
    uint64_t id;                /* job id */
    uint64_t lease;             /* job lease of this attempt */
    const llmq_deployment_t *dep;    /* borrowed from the config */
    const llmq_provider_t *prov;     /* adapter of dep */
    size_t  dep_index;          /* of dep in the config (and in w->rings, w->deps) */
    size_t  key;                /* key of this attempt in dep's ring, or LLMQ_KEY_NONE */
    uint64_t tried;             /* keys refused (401/403) during this call, bit per key */
    bool    stream;             /* streamed job: CHUNKs, SSE body */
    bool    status_known;       /* `status` read for the current response */
    bool    is_sse;             /* response Content-Type is text/event-stream */
    long    status;             /* HTTP status of the response */
    uint32_t seq;               /* next CHUNK seq; > 0 means the client saw text */
    uint64_t start_us;          /* monotonic start, for latency_us */
    llmq_text_t req;            /* request body (kept: curl reads it during the call) */
    llmq_text_t resp;           /* response body when not parsed as a stream */
    llmq_text_t pending;        /* stream text not sent yet: one CHUNK per loop turn */
    llmq_sse_t *sse;            /* stream parser */
    llmq_reply_t reply;         /* what the adapter made of the answer */
    char    request_id[128];    /* x-request-id header, "" if none */
    char    retry_after[64];    /* Retry-After header, "" if none */
    char    retry_after_ms[32]; /* retry-after-ms header, "" if none */
    llmq_ratelimit_t rl;        /* rate-limit headers of the response (provider.h) */
    int64_t rl_wall_ms;         /* unix ms when the response's headers began */
    uint64_t rl_mono_ms;        /* monotonic ms of that moment, 0 before any response */
    char    errbuf[CURL_ERROR_SIZE];    /* curl's detailed error text */
};

/*  Per deployment: its endpoints, one per API key (one when it has no
    key), each built at first use, so a call only picks one. */
typedef struct {
    llmq_endpoint_t *eps;       /* max(1, number of keys) entries */
    bool   *ready;              /* eps[i] is built */
    size_t  neps;
    uint64_t calls;             /* provider calls reported (DONE / FAILED) since start */
} llmq_dep_eps_t;

/*  A socket curl asked us to watch. */
typedef struct {
    curl_socket_t fd;
    short   events;             /* ZMQ_POLLIN / ZMQ_POLLOUT */
} llmq_watch_t;

struct llmq_worker {
    const llmq_config_t *cfg;   /* borrowed */
    char   *endpoint;           /* broker backend */
    char    host[256];          /* for HELLO */
    zsock_t *sock;              /* DEALER to the broker, NULL until run */
    llmq_arena_t *arena;        /* decoded broker messages, reset per message */
    llmq_arena_t *batch_arena;  /* strings of the DONE results not sent yet */
    llmq_result_t *batch;       /* DONE results of this loop turn, sent as one message */
    size_t nbatch, batch_cap;
    int     pipe[2];            /* stop requests: [1] written, [0] polled */
    uint64_t heartbeat_ms;      /* [broker] heartbeat */
    uint32_t liveness;          /* heartbeats of silence before reconnecting */
    uint64_t max_message;       /* largest message body we decode */
    uint64_t last_send_ms;      /* monotonic: last message to the broker */
    uint64_t last_recv_ms;      /* monotonic: last message from the broker */
    uint64_t hello_ms;          /* monotonic: last HELLO */
    bool    hello_acked;        /* broker sent something but ERROR since that HELLO */
    /* slots */
    llmq_call_t *calls;         /* nslots calls */
    uint32_t nslots;
    uint32_t nfree;             /* calls on the free stack */
    llmq_call_t *free_top;      /* free stack */
    /* curl */
    CURLM  *multi;
    CURLSH *share;              /* DNS cache, TLS sessions, connections */
    llmq_watch_t *fds;          /* sockets curl watches */
    size_t  nfds;
    size_t  fds_cap;
    int64_t curl_due_us;        /* monotonic µs when curl's timer is due, -1 none */
    bool    curl_timer_set;     /* curl's timer callback ran (see llmq_calls_timeout) */
    llmq_keyring_t *const *rings;   /* keys per deployment (config order), borrowed */
    llmq_dep_eps_t *deps;       /* endpoints per deployment (config order) */
    llmq_reply_t scratch;       /* reply of local providers (echo) */
    llmq_text_t chunk;          /* NUL-terminated copy of a delta for CHUNK */
    uint64_t ndone;             /* counters for the exit line */
    uint64_t nfailed;
    /* Figures sent with each HEARTBEAT (docs/protocol.md, section 7). */
    uint64_t ncalls;            /* provider calls reported (DONE / FAILED) since start */
    uint64_t ncalls_failed;     /* of which FAILED */
    uint64_t figures_ms;        /* monotonic: last HEARTBEAT, figures sent */
};

/*  worker.c */
void llmq_worker_send (llmq_worker_t *w, const llmq_msg_t *m);

/*  call.c */
int  llmq_calls_init (llmq_worker_t *w, uint32_t slots);
void llmq_calls_fini (llmq_worker_t *w);
/*  Run a DISPATCHed job on an HTTP provider (takes a free slot). */
void llmq_call_start (llmq_worker_t *w, const llmq_provider_t *prov,
                      const llmq_deployment_t *dep, const llmq_job_t *job, uint64_t timeout_ms);
/*  Run a job on a local provider (echo) at once: CHUNKs, DONE/FAILED. */
void llmq_call_answer (llmq_worker_t *w, const llmq_provider_t *prov,
                       const llmq_deployment_t *dep, const llmq_job_t *job);
llmq_call_t *llmq_call_find (llmq_worker_t *w, uint64_t id, uint64_t lease);
/*  Stop a running call; with `report`, send FAILED(ec, reason, slots=1). */
void llmq_call_abort (llmq_call_t *c, int ec, const char *reason, bool report);
/*  Abort every running call without reporting; returns how many. */
uint32_t llmq_calls_abort_all (llmq_worker_t *w);
void llmq_calls_socket_ready (llmq_worker_t *w, int fd, short revents);
void llmq_calls_timeout (llmq_worker_t *w);
/*  Finish the transfers curl completed: DONE or FAILED for each. */
void llmq_calls_collect (llmq_worker_t *w);
/*  Send, as one CHUNK per call, the stream text that arrived this loop turn. */
void llmq_calls_flush_chunks (llmq_worker_t *w);

/*  Send the DONE results gathered this loop turn as one message. */
void llmq_worker_flush_done (llmq_worker_t *w);

#endif
