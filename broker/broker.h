/*  broker.h -- the llmq broker: one event loop over the client socket, the
    worker socket and the store.

    Each loop turn drains what both sockets hold, applies it to the store in
    one transaction, runs the timers and the dispatcher, commits (one sync:
    group commit), and only then sends the replies, results and dispatches
    queued during the turn. So no client hears ACCEPTED for a job that is
    not on disk, and no worker runs a lease that is not.
*/
#ifndef LLMQ_BROKER_H
#define LLMQ_BROKER_H

#include <stdbool.h>
#include "config.h"

typedef struct llmq_broker llmq_broker_t;

/*  Opens the store and binds both sockets. Returns NULL with a reason in
    `err` (store cannot open, endpoint in use...). */
llmq_broker_t *llmq_broker_new (const llmq_config_t *config, char *err, size_t errlen);
void llmq_broker_destroy (llmq_broker_t **self_p);

/*  Runs until *stop becomes true (set it from a signal handler), then
    finishes the turn, commits and returns 0. Returns -1 if the store
    failed (the caller exits non-zero; a restart recovers from disk). */
int  llmq_broker_run (llmq_broker_t *self, volatile int *stop);

/*  The endpoints actually bound (with "*" ports resolved). */
const char *llmq_broker_frontend (llmq_broker_t *self);
const char *llmq_broker_backend (llmq_broker_t *self);
/*  The HTTP port bound ([broker] http), or 0 when the HTTP side is off. */
int  llmq_broker_http_port (llmq_broker_t *self);

#endif
