/*  fair.h -- fair share between tenants inside one priority of one model
    group (start-time fair queueing).

    Each (route, priority) has a virtual time V: the tag of the last job
    dispatched from it (and at least the wall clock when it has nothing
    ready). A tenant's job is tagged start = max(V, the tenant's last
    finish); its finish is start + quantum / weight. The ready index orders
    jobs by start + the priority's offset, so tenants take turns in
    proportion to their weights whatever their backlog: an org that queues
    a million jobs does not hold back another org's ten, which start at V,
    next to the head of the queue.

    Tags are µs, like enqueue times, so priorities and aging still work:
    one tenant's flood counts as arriving at one job per quantum (1 ms).
    Memory only: after a restart V starts from the wall clock.
*/
#ifndef LLMQ_FAIR_H
#define LLMQ_FAIR_H

#include <stdbool.h>
#include <stdint.h>

#define LLMQ_FAIR_QUANTUM_US 1000

typedef struct llmq_fair llmq_fair_t;

llmq_fair_t *llmq_fair_new (void);
void llmq_fair_destroy (llmq_fair_t **self_p);

/*  The start tag of a new job of `tenant` (weight >= 1) in (route, prio).
    `idle`: the broker has nothing ready there now. */
uint64_t llmq_fair_tag (llmq_fair_t *self, uint32_t route, int prio, const char *tenant,
                        uint32_t weight, uint64_t now_us, bool idle);

/*  A job with start tag `tag` was dispatched from (route, prio). */
void llmq_fair_dispatched (llmq_fair_t *self, uint32_t route, int prio, uint64_t tag);

#endif
