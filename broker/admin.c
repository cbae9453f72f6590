/*  admin.c -- the broker's admin operations: see admin.h. */
#include "admin.h"

#include <stdio.h>
#include <string.h>

typedef json_t *(s_op_fn) (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen);

static json_t *
s_fail (int *code, int rc, char *why, size_t whylen, const char *text)
{
    *code = rc;
    snprintf (why, whylen, "%s", text);
    return NULL;
}

/*  "breaker.reset" {"deployment": NAME} or {} for all: force closed. */
static json_t *
s_breaker_reset (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    if (!ctx->router) {
        return s_fail (code, LLMQ_ERR_STATE, why, whylen, "no router");
    }
    const char *name = json_string_value (json_object_get (req, "deployment"));
    json_t *done = json_array ();
    for (size_t i = 0; i < ctx->config->ndeployments; i++) {
        if (!name || strcmp (name, ctx->config->deployments[i].name) == 0) {
            llmq_router_reset (ctx->router, i, ctx->now_us / 1000);
            json_array_append_new (done, json_string (ctx->config->deployments[i].name));
        }
    }
    if (name && json_array_size (done) == 0) {
        json_decref (done);
        *code = LLMQ_ERR_NOT_FOUND;
        snprintf (why, whylen, "no deployment named '%s'", name);
        return NULL;
    }
    if (ctx->changed) {
        ctx->changed (ctx->changed_arg);
    }
    return json_pack ("{s:o}", "reset", done);
}

/*  "breaker.history" {}: the last state changes, oldest first. */
static json_t *
s_breaker_history (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    (void) req; (void) code; (void) why; (void) whylen;
    return json_pack ("{s:O}", "history", ctx->history ? (json_t *) ctx->history : json_array ());
}

static const struct {
    const char *name;
    s_op_fn *fn;
} s_ops[] = {
    { "breaker.reset",   s_breaker_reset },
    { "breaker.history", s_breaker_history },
};

json_t *
llmq_admin_run (llmq_admin_t *ctx, const json_t *req, int *code, char *why, size_t whylen)
{
    const char *op = json_string_value (json_object_get (req, "op"));
    if (!op) {
        return s_fail (code, LLMQ_ERR_INVALID, why, whylen, "admin request without \"op\"");
    }
    for (size_t i = 0; i < sizeof s_ops / sizeof s_ops[0]; i++) {
        if (strcmp (op, s_ops[i].name) == 0) {
            return s_ops[i].fn (ctx, req, code, why, whylen);
        }
    }
    *code = LLMQ_ERR_INVALID;
    snprintf (why, whylen, "unknown admin op '%s'", op);
    return NULL;
}
