/*  depth.h -- queued jobs per tenant, for the admin queue view and
    /metrics.

    A tenant is "org:NAME" for a job with an org, "user:NAME" for one with
    only a user, "-" for neither (the names fair share uses). A job counts
    from the moment it is queued or delayed until it leaves the queue
    (leased, cancelled, expired): the store calls llmq_depth_add at each of
    those steps, inside its write transaction.

    The counts live in memory and follow the store's transactions: every
    change is journalled, so an aborted transaction (or savepoint) is undone
    with llmq_depth_undo back to a mark taken when it began, and
    llmq_depth_settle drops the journal once the transaction committed.
*/
#ifndef LLMQ_DEPTH_H
#define LLMQ_DEPTH_H

#include <stddef.h>
#include <stdint.h>

typedef struct llmq_depth llmq_depth_t;

typedef struct {
    const char *tenant;     /* valid until the next change */
    uint64_t queued;
} llmq_depth_entry_t;

llmq_depth_t *llmq_depth_new (void);
void llmq_depth_destroy (llmq_depth_t **self_p);

/*  The tenant name of a job's user and org (either may be NULL or ""). */
const char *llmq_depth_tenant (char *buf, size_t len, const char *user, const char *org);

/*  Count a job of `user`/`org` in (+1) or out (-1). Returns 0, or -1 out
    of memory (nothing changed). */
int llmq_depth_add (llmq_depth_t *self, const char *user, const char *org, int delta);

/*  The journal's length now; undo every change made since `mark`. */
size_t llmq_depth_mark (llmq_depth_t *self);
void llmq_depth_undo (llmq_depth_t *self, size_t mark);

/*  The changes are durable: forget the journal, drop tenants at zero. */
void llmq_depth_settle (llmq_depth_t *self);

/*  Tenants with queued jobs, deepest first (ties by name): at most `max`
    into `out`; *tenants gets how many there are, *rest the jobs of those
    left out. Returns how many were written. */
size_t llmq_depth_top (llmq_depth_t *self, llmq_depth_entry_t *out, size_t max, size_t *tenants,
                       uint64_t *rest);

#endif
