/*  webhook.h -- the broker's outgoing notices (budget alerts): JSON POSTed
    to one URL, retried, never blocking the loop.
*/
#ifndef LLMQ_WEBHOOK_H
#define LLMQ_WEBHOOK_H

#include <stdbool.h>
#include <stdint.h>

typedef struct llmq_webhook llmq_webhook_t;

/*  NULL on out of memory. curl_global_init must have been called. */
llmq_webhook_t *llmq_webhook_new (const char *url);
void llmq_webhook_destroy (llmq_webhook_t **self_p);

/*  Queue one notice (copied). `now_ms` is monotonic. */
void llmq_webhook_post (llmq_webhook_t *self, const char *json, uint64_t now_ms);
/*  Do what is ready: start due POSTs, collect finished ones, schedule
    retries (1, 2, 4, 8 s; five attempts). Call it every loop turn. */
void llmq_webhook_poll (llmq_webhook_t *self, uint64_t now_ms);
/*  Notices waiting or in flight. */
bool llmq_webhook_busy (const llmq_webhook_t *self);
void llmq_webhook_stats (const llmq_webhook_t *self, uint64_t *sent, uint64_t *failed,
                         uint64_t *dropped, uint64_t *retried);

#endif
