/*  worker.h -- llmq-worker's event loop: one ZeroMQ DEALER to the broker
    and one libcurl multi handle, driven together by a single thread.

    The worker announces free slots to the broker as credit (HELLO, then
    slots=1 on every DONE/FAILED), runs each DISPATCHed job through its
    deployment's provider adapter (provider.h), streams CHUNKs as they come,
    and reports DONE or FAILED. It heartbeats, reconnects when the broker
    goes quiet, says HELLO again to a broker that forgot it, and on
    llmq_worker_stop() aborts its calls and says BYE.

    Not thread-safe: one thread runs llmq_worker_run(); only
    llmq_worker_stop() may be called from elsewhere (it is async-signal-safe).
*/
#ifndef LLMQ_WORKER_H
#define LLMQ_WORKER_H

#include <stdint.h>

#include "config.h"
#include "keyring.h"

typedef struct llmq_worker llmq_worker_t;

/*  New worker for the deployments of `cfg` (borrowed: it must outlive the
    worker). `rings` holds the API keys of each deployment, in config order
    (cfg->ndeployments entries, each may be NULL for "no key"); borrowed
    too, and the worker moves their cursors (llmq_keyring_next). `endpoint`
    is the broker's backend (e.g. tcp://host:5556), `slots` the number of
    concurrent calls (>= 1). Creates no socket yet. Returns NULL on failure
    (out of memory, curl not usable), logged. */
llmq_worker_t *llmq_worker_new (const llmq_config_t *cfg, llmq_keyring_t *const *rings,
                                const char *endpoint, uint32_t slots);

/*  Abort every call, close the socket and free; sets *self_p to NULL.
    Safe on NULL or a NULL *self_p. */
void llmq_worker_destroy (llmq_worker_t **self_p);

/*  Connect and serve until llmq_worker_stop(). Returns 0 after a clean stop
    (calls aborted, BYE sent), -2 if the endpoint is refused at start (bad
    syntax, unknown transport), -1 if polling or a later reconnect fails. */
int  llmq_worker_run (llmq_worker_t *self);

/*  Ask a running (or about to run) llmq_worker_run() to stop. Only writes
    one byte to a pipe: safe from a signal handler or another thread. */
void llmq_worker_stop (llmq_worker_t *self);

#endif
