/*  admin.h -- the broker's admin operations (ADMIN command, JSON in and
    out; docs/protocol.md, "Admin operations").

    One function per operation, in a table: `op` names it ("dead.list",
    "breaker.reset", ...). Each runs inside the broker's current turn
    (store writes commit with the turn) and answers a JSON object, or
    fails with an llmq_err code and a reason.
*/
#ifndef LLMQ_ADMIN_H
#define LLMQ_ADMIN_H

#include <jansson.h>
#include <stdint.h>

#include "config.h"
#include "router.h"
#include "store.h"
#include "tenants.h"

typedef struct {
    llmq_store_t *store;
    llmq_router_t *router;          /* may be NULL in tests */
    const llmq_config_t *config;
    llmq_arena_t *arena;
    uint64_t now_us;
    /*  Called when an operation put jobs back in the queue or changed a
        breaker (the broker then dispatches). May be NULL. */
    void (*changed) (void *arg);
    void *changed_arg;
    /*  Breaker history as JSON (array, oldest first); borrowed. */
    const json_t *history;
    llmq_tenants_t *tenants;        /* may be NULL in tests */
} llmq_admin_t;

/*  Run `req` ({"op": NAME, ...}). Returns a new JSON object to send back,
    or NULL with *code (llmq_err) and `why` set. */
json_t *llmq_admin_run (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen);

#endif
