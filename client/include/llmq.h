/** @file llmq.h
 *  @brief llmq client library: submit LLM jobs to an llmq broker and get
 *  their results, one at a time or by the million.
 *
 *  A handle (#llmq) is one connection (a ZeroMQ DEALER socket) to one broker.
 *  Jobs are chat-completion requests in the OpenAI JSON shape; the broker
 *  queues them durably by priority and a fleet of workers runs them.
 *
 *  @par Threads
 *  A handle may be used by one thread at a time; it holds no threads of its
 *  own and no global state. Use one handle per thread, or serialise calls on
 *  a shared handle yourself. Different handles are fully independent.
 *
 *  @par Errors
 *  Every function that can fail returns an #llmq_err: 0 (#LLMQ_OK) on
 *  success, a positive code otherwise. Codes are never renumbered.
 *  llmq_strerror() names a code; llmq_last_error() gives the detailed reason
 *  of the last failure on a handle (for example the broker's text). The
 *  library never prints and never exits.
 *
 *  @par Time
 *  Every call that waits takes a timeout in milliseconds: 0 returns at once,
 *  -1 waits forever. On expiry the call returns #LLMQ_ERR_TIMEOUT and the
 *  handle stays usable.
 *
 *  @par Reconnection
 *  The socket reconnects by itself. When the connection comes back (after
 *  a broker restart, say), the handle asks again for the results of every
 *  job it still waits for (submitted here with notify, streamed, or waited
 *  for), so none is lost. A call in progress when the broker went away
 *  may end in #LLMQ_ERR_TIMEOUT: submit again with the same idempotency key.
 *
 *  @par Memory
 *  Pointers passed in are only read during the call. Objects returned
 *  (#llmq_result, #llmq_event, strings) are owned by the caller and freed
 *  with the matching free function.
 */
#ifndef LLMQ_H
#define LLMQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(LLMQ_BUILDING) && defined(__GNUC__)
#   define LLMQ_EXPORT __attribute__((visibility("default")))
#else
#   define LLMQ_EXPORT
#endif

#define LLMQ_VERSION_MAJOR 0
#define LLMQ_VERSION_MINOR 1
#define LLMQ_VERSION_PATCH 0
#define LLMQ_MAKE_VERSION(a, b, c) ((a) * 10000 + (b) * 100 + (c))
#define LLMQ_VERSION LLMQ_MAKE_VERSION(LLMQ_VERSION_MAJOR, LLMQ_VERSION_MINOR, LLMQ_VERSION_PATCH)

/** Return codes. Part of the protocol too (REJECTED/REPLY/ERROR carry them).
 *  Never renumbered; new codes are only appended. */
typedef enum {
    LLMQ_OK                  = 0,   /**< success */
    LLMQ_ERR_INVALID         = 1,   /**< bad argument or invalid job */
    LLMQ_ERR_PROTOCOL        = 2,   /**< malformed message */
    LLMQ_ERR_VERSION         = 3,   /**< peer speaks another protocol version */
    LLMQ_ERR_TOO_LARGE       = 4,   /**< message or job over the size limit */
    LLMQ_ERR_TIMEOUT         = 5,   /**< the call's timeout expired */
    LLMQ_ERR_NOT_FOUND       = 6,   /**< no such job or batch (or its result expired) */
    LLMQ_ERR_STORE_FULL      = 7,   /**< broker's store at its size limit: submits refused */
    LLMQ_ERR_STORE           = 8,   /**< broker's store failed */
    LLMQ_ERR_SHUTTING_DOWN   = 9,   /**< broker is stopping: submit again later */
    LLMQ_ERR_UNKNOWN_WORKER  = 10,  /**< (worker protocol) say HELLO first */
    LLMQ_ERR_NOMEM           = 11,  /**< out of memory */
    LLMQ_ERR_CONNECT         = 12,  /**< cannot set up the connection */
    LLMQ_ERR_UNKNOWN_COMMAND = 13,  /**< command not known to the peer */
    LLMQ_ERR_STATE           = 14,  /**< job is in a state that forbids this (e.g. cancel a finished job) */
    LLMQ_ERR_UNKNOWN_MODEL   = 15,  /**< no model group of that name */
    LLMQ_ERR_JOB_FAILED      = 16,  /**< the job ended failed or dead-lettered */
    LLMQ_ERR_CANCELLED       = 17,  /**< the job was cancelled */
    LLMQ_ERR_EXPIRED         = 18,  /**< the job's deadline passed before it started */
    LLMQ_ERR_INTERNAL        = 19,  /**< a bug: please report it */
    LLMQ_ERR_QUOTA           = 20,  /**< the user's tier quota is used up: retry after the hint */
    LLMQ_ERR_BUDGET          = 21   /**< a user's or org's budget is spent for the period */
} llmq_err;

/** Priorities. A job's place in the queue is its enqueue time plus the
 *  priority's offset (configurable; default 0 s, 5 s, 30 s, 120 s), so a low
 *  job is never starved: it overtakes urgent jobs submitted long enough
 *  after it. */
typedef enum {
    LLMQ_PRIO_URGENT = 0,
    LLMQ_PRIO_HIGH   = 1,
    LLMQ_PRIO_NORMAL = 2,
    LLMQ_PRIO_LOW    = 3
} llmq_priority;

/** Job states. 1-3 are live, 4-8 final. */
typedef enum {
    LLMQ_STATE_QUEUED    = 1,
    LLMQ_STATE_DELAYED   = 2,   /**< waiting for a retry's backoff */
    LLMQ_STATE_RUNNING   = 3,   /**< leased to a worker */
    LLMQ_STATE_DONE      = 4,
    LLMQ_STATE_FAILED    = 5,
    LLMQ_STATE_CANCELLED = 6,
    LLMQ_STATE_EXPIRED   = 7,
    LLMQ_STATE_DEAD      = 8    /**< dead-lettered after max attempts */
} llmq_state;

/** llmq_job.stream: stream, and if the stream breaks after some chunks
 *  reached the client (the provider cut it, its worker died), run the job
 *  again instead of failing it: the client first gets a RESET (an
 *  #LLMQ_EV_RESET event, or a llmq_chunk_fn call with text NULL), meaning
 *  "forget the chunks received so far", then the new attempt's chunks from
 *  seq 0. Without it such a job ends #LLMQ_STATE_FAILED with error class
 *  stream_broken and the partial content. Either way no text comes twice. */
#define LLMQ_STREAM_RESTART 2

/** Opaque connection handle. */
typedef struct llmq llmq;

/** A job to submit. Only `model` and `body` are required; zero elsewhere
 *  means "default". Strings are copied during the call. */
typedef struct {
    const char *model;            /**< model group, e.g. "gpt-4o-mini" */
    const char *body;             /**< request JSON, OpenAI chat.completions shape
                                       ({"messages":[...], "max_tokens":...}).
                                       The library checks only its shape (an
                                       object naming "messages"); a worker
                                       fails a malformed body as an invalid
                                       request. */
    int         priority;         /**< #llmq_priority; default #LLMQ_PRIO_URGENT (0) */
    int         stream;           /**< non-zero: stream chunks to the submitter;
                                       #LLMQ_STREAM_RESTART: also let a stream
                                       that breaks after chunks were received
                                       run again (a RESET event comes first) */
    const char *idempotency_key;  /**< resubmitting a key returns the same job */
    const char *user;             /**< tenant user */
    const char *org;              /**< tenant org */
    const char *batch_id;         /**< group jobs into a batch for llmq_fetch() */
    const char *custom_id;        /**< caller's id for the job inside its batch */
    const char *meta;             /**< opaque metadata JSON, returned as is */
    unsigned    max_attempts;     /**< 0: broker default */
    int64_t     deadline_ms;      /**< must start within this many ms; 0: none */
    /** Response cache. > 0: the broker answers the job from its cache
        when the same request (model group, messages and the parameters
        that change the answer) was answered within this many ms, without
        queueing it or calling a provider (the result then has `cached`
        set and costs nothing), and else caches its answer this long.
        0: the broker's configured rule (`[cache] auto_temperature_zero`
        caches jobs whose body has "temperature": 0, for `default_ttl`).
        -1: never answered from or stored in the cache. Other negative
        values are refused (#LLMQ_ERR_INVALID). Added after the fields
        above so their offsets hold. */
    int64_t     cache_ttl_ms;
} llmq_job;

/** A job's result (or, from llmq_status(), its current state). */
typedef struct {
    uint64_t id;
    int      state;               /**< #llmq_state */
    const char *content;          /**< assistant text; partial if a stream broke */
    const char *finish_reason;    /**< "stop", "length", "tool_calls", "content_filter" */
    const char *deployment;       /**< deployment that served it */
    const char *request_id;       /**< provider's request id */
    const char *error;            /**< reason, when not done */
    const char *model;            /**< model group */
    const char *batch_id;
    const char *custom_id;
    int      error_class;         /**< worker's error class (see docs/protocol.md) */
    int      priority;
    int      http_status;         /**< provider status of the last attempt */
    unsigned attempts;            /**< dispatches it took */
    unsigned prompt_tokens;
    unsigned completion_tokens;
    uint64_t enqueued_us;         /**< unix time, µs */
    uint64_t started_us;          /**< last dispatch, unix µs (0 if never) */
    uint64_t finished_us;         /**< unix µs (0 if not final) */
    uint64_t latency_us;          /**< provider call time */
    /** Tool (function) calls the model asked for, as JSON text in OpenAI's
        shape: `[{"id":"call_..","type":"function","function":{"name":"..",
        "arguments":"<JSON text>"}}]`, whatever the provider; NULL when the
        answer has none. finish_reason is then "tool_calls" and content is
        often empty. Added after the fields above so their offsets hold. */
    const char *tool_calls;
    /** Non-zero: every deployment of the job's group was unavailable and
        its fallback group served it (`deployment` names which). */
    int      degraded;
    /** What the job cost, in millionths of a US dollar: its tokens at the
        serving deployment's prices (0 if no price is configured, and for
        cache hits). */
    uint64_t cost_micro;
    /** Non-zero: answered from the response cache, without a provider call. */
    int      cached;
    /** Prompt tokens the provider read from its prompt cache, part of
        prompt_tokens (0 if it reported none); they cost the deployment's
        price_cached_input. Added last so the offsets above hold. */
    unsigned cached_tokens;
} llmq_result;

/** What llmq_next() returns. */
typedef enum {
    LLMQ_EV_ACCEPTED = 1,   /**< a llmq_send() was stored: ids[] valid */
    LLMQ_EV_REJECTED = 2,   /**< a llmq_send() was refused: code, reason */
    LLMQ_EV_CHUNK    = 3,   /**< a piece of a streamed job: id, seq, text */
    LLMQ_EV_RESULT   = 4,   /**< a job ended: result */
    LLMQ_EV_RESET    = 5,   /**< a streamed job starts over (#LLMQ_STREAM_RESTART):
                                 id, reason; drop its chunks so far, seq
                                 starts again at 0 */
    LLMQ_EV_NOTICE   = 6    /**< a broker notice, for handles that subscribed
                                 with llmq_admin() `{"op":"events.subscribe"}`:
                                 text is its JSON (a budget alert:
                                 `{"type":"budget_alert","kind","name",
                                 "period","pct","spent_micro","budget_micro",
                                 "at_ms"}`) */
} llmq_event_type;

typedef struct {
    int         type;             /**< #llmq_event_type */
    uint64_t    ticket;           /**< ACCEPTED/REJECTED: the llmq_send() ticket */
    uint64_t   *ids;              /**< ACCEPTED: job ids, in submit order */
    size_t      nids;
    int         code;             /**< REJECTED: #llmq_err */
    const char *reason;           /**< REJECTED; RESET: why the stream broke */
    long        index;            /**< REJECTED: offending job in the send, or -1 */
    uint64_t    retry_after_ms;   /**< REJECTED: hint, 0 if none */
    uint64_t    id;               /**< CHUNK */
    unsigned    seq;              /**< CHUNK: 0, 1, 2 ... */
    const char *text;             /**< CHUNK */
    llmq_result *result;          /**< RESULT */
} llmq_event;

/** Library version as a number (LLMQ_MAKE_VERSION) and as text. */
LLMQ_EXPORT int         llmq_version (void);
LLMQ_EXPORT const char *llmq_version_string (void);

/** Name of an error code ("timeout", ...). Never NULL. */
LLMQ_EXPORT const char *llmq_strerror (int code);
/** Name of a state ("queued", "done"...) and of a priority ("urgent"...). */
LLMQ_EXPORT const char *llmq_state_name (int state);
LLMQ_EXPORT const char *llmq_priority_name (int priority);
/** Parse "urgent", "high", "normal", "low" (or 0-3). @return -1 if invalid. */
LLMQ_EXPORT int         llmq_priority_parse (const char *name);

/** Connect to a broker's client endpoint and check it answers.
 *  @param[in] endpoint e.g. "tcp://127.0.0.1:5555"
 *  @param[in] timeout_ms how long to wait for the broker's PONG
 *  @param[out] out the new handle, NULL on failure
 *  @return #LLMQ_OK, #LLMQ_ERR_INVALID (bad endpoint), #LLMQ_ERR_CONNECT,
 *  #LLMQ_ERR_TIMEOUT (no broker answered), #LLMQ_ERR_VERSION, #LLMQ_ERR_NOMEM. */
LLMQ_EXPORT int  llmq_connect (const char *endpoint, int timeout_ms, llmq **out);
/** Close a handle; sets *h to NULL. Safe on NULL or a NULL *h. */
LLMQ_EXPORT void llmq_close (llmq **h);
/** Reason for the last failed call on this handle ("" if none). Valid until
 *  the next call on the handle. */
LLMQ_EXPORT const char *llmq_last_error (const llmq *h);

/** Submit one job and wait until the broker has stored it durably.
 *  Results of the job are pushed to this handle; get them with llmq_wait().
 *  @param[out] id the job id
 *  @return #LLMQ_OK, #LLMQ_ERR_INVALID, #LLMQ_ERR_UNKNOWN_MODEL,
 *  #LLMQ_ERR_STORE_FULL, #LLMQ_ERR_TOO_LARGE, #LLMQ_ERR_SHUTTING_DOWN,
 *  #LLMQ_ERR_TIMEOUT (the job may or may not be stored: resubmit with the
 *  same idempotency key to be sure it runs once). */
LLMQ_EXPORT int  llmq_submit (llmq *h, const llmq_job *job, uint64_t *id, int timeout_ms);

/** Submit n jobs in one message, all or none, and wait for the ack.
 *  Results are not pushed (batch work): read them with llmq_fetch(), or
 *  with llmq_wait() per id.
 *  @param[out] ids array of n ids, in order
 *  @return as llmq_submit(); on a refused job llmq_last_error() names its index. */
LLMQ_EXPORT int  llmq_submit_many (llmq *h, const llmq_job *jobs, size_t n,
                                   uint64_t *ids, int timeout_ms);

/** Wait for a job's final result.
 *  @param[out] result allocated result, free with llmq_result_free()
 *  @return #LLMQ_OK when the job ended (check result->state), #LLMQ_ERR_TIMEOUT,
 *  #LLMQ_ERR_NOT_FOUND. */
LLMQ_EXPORT int  llmq_wait (llmq *h, uint64_t id, int timeout_ms, llmq_result **result);

/** Called for each chunk of a streamed job, in order. Return non-zero to
 *  stop receiving (the job goes on; its result can still be waited for).
 *  `text` NULL is a RESET (only for jobs streamed with
 *  #LLMQ_STREAM_RESTART): forget the chunks so far; the next attempt's
 *  chunks follow from seq 0. */
typedef int (llmq_chunk_fn) (void *arg, uint64_t id, unsigned seq, const char *text);

/** Submit a job with streaming on and call `fn` for each chunk as it
 *  arrives, until the job ends or the timeout expires. job->stream may be
 *  0 or 1 (stream) or #LLMQ_STREAM_RESTART. If a broker restart makes a
 *  job run again, a job without #LLMQ_STREAM_RESTART gets no more chunks
 *  (its result holds the whole answer); one with it gets a RESET. If `fn` returns
 *  non-zero, llmq_stream() returns #LLMQ_OK at once with *result NULL; the
 *  job's later chunks are dropped and llmq_wait() gets its result.
 *  @param[out] id the job id (set as soon as it is accepted; may be NULL)
 *  @param[out] result final result (may be NULL if not wanted)
 *  @return as llmq_submit() and llmq_wait(). */
LLMQ_EXPORT int  llmq_stream (llmq *h, const llmq_job *job, llmq_chunk_fn *fn, void *arg,
                              uint64_t *id, int timeout_ms, llmq_result **result);

/** Cancel a job: a queued job is removed, a running one is aborted at its
 *  worker. Its result becomes #LLMQ_STATE_CANCELLED.
 *  @return #LLMQ_OK, #LLMQ_ERR_NOT_FOUND, #LLMQ_ERR_STATE (already final),
 *  #LLMQ_ERR_TIMEOUT. */
LLMQ_EXPORT int  llmq_cancel (llmq *h, uint64_t id, int timeout_ms);

/** A job's state (and its result if final).
 *  @param[out] result allocated, free with llmq_result_free() */
LLMQ_EXPORT int  llmq_status (llmq *h, uint64_t id, int timeout_ms, llmq_result **result);

/** Fetch finished results of a batch, in job-id order, after cursor `after`
 *  (0 to start).
 *  @param[out] results array of *n pointers; free with llmq_results_free()
 *  @param[out] next cursor to pass as `after` for the next page
 *  @param[out] more 1 if the batch has jobs not yet returned (finished or not)
 *  @param[out] counts_json (may be NULL) JSON with the batch's counts
 *  ({"total":..,"done":..,"failed":..,...}); free with llmq_free(). */
LLMQ_EXPORT int  llmq_fetch (llmq *h, const char *batch_id, uint64_t after, unsigned limit,
                             llmq_result ***results, size_t *n, uint64_t *next, int *more,
                             char **counts_json, int timeout_ms);

/** Broker statistics as a JSON document; free with llmq_free(). */
LLMQ_EXPORT int  llmq_stats (llmq *h, char **json, int timeout_ms);

/** An administrative operation on the broker (docs/protocol.md, "Admin
 *  operations"; the `llmq dead` and `llmq breaker` commands use it): the
 *  request is a JSON object naming the operation, the answer a JSON object.
 *  For example `{"op":"dead.list","limit":50}` answers
 *  `{"jobs":[{"id":..,"model":..,"error":..},...],"next":..,"more":false}`;
 *  `{"op":"dead.requeue","id":42}` answers `{"requeued":1,"more":false}`.
 *  @param[in] request_json `{"op": NAME, ...}`; sent as given
 *  @param[out] reply_json the broker's answer; free with llmq_free()
 *  @return #LLMQ_OK, #LLMQ_ERR_INVALID (not a JSON object with "op",
 *  an unknown operation, or a bad field: llmq_last_error() names it),
 *  #LLMQ_ERR_NOT_FOUND (no such job or deployment), #LLMQ_ERR_STATE
 *  (e.g. the job is not dead-lettered), #LLMQ_ERR_UNKNOWN_MODEL,
 *  #LLMQ_ERR_STORE_FULL, #LLMQ_ERR_TIMEOUT (a write operation may or may
 *  not have been applied: look before repeating it). */
LLMQ_EXPORT int  llmq_admin (llmq *h, const char *request_json, char **reply_json, int timeout_ms);

/** Pipelined use. Send n jobs (one message) without waiting for the ack.
 *  Never blocks: if the socket's send queue is full (the broker is not
 *  reading), returns #LLMQ_ERR_TIMEOUT and nothing is sent.
 *  @param[in] notify non-zero: push results (and chunks of streamed jobs)
 *  @param[out] ticket identifies the ACCEPTED/REJECTED event for this send
 *  (never 0) */
LLMQ_EXPORT int  llmq_send (llmq *h, const llmq_job *jobs, size_t n, int notify, uint64_t *ticket);
/** Next event (ack, rejection, chunk, result) for this handle, oldest
 *  first. Events that arrive while another call waits are kept in the
 *  handle, up to 128 MiB; past that, pushed chunks and results are dropped
 *  (acks never are), and the next llmq_next() sets llmq_last_error() to
 *  say how many. A dropped result can still be had with llmq_wait().
 *  A result pushed again (after a WAIT, say) once the handle has kept or
 *  handed it out is dropped, so llmq_next() shows each job's result once.
 *  @param[out] ev allocated event; free with llmq_event_free() */
LLMQ_EXPORT int  llmq_next (llmq *h, int timeout_ms, llmq_event **ev);

LLMQ_EXPORT void llmq_result_free (llmq_result **result);
LLMQ_EXPORT void llmq_results_free (llmq_result **results, size_t n);
LLMQ_EXPORT void llmq_event_free (llmq_event **ev);
LLMQ_EXPORT void llmq_free (void *p);

#ifdef __cplusplus
}
#endif
#endif
