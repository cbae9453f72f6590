/*  names.c -- names of llmq codes, states and priorities (public API,
    shared by the library, the broker and the workers). */
#include "llmq.h"

#include <string.h>
#include <strings.h>

static const char *const s_errors[] = {
    [LLMQ_OK]                  = "ok",
    [LLMQ_ERR_INVALID]         = "invalid argument",
    [LLMQ_ERR_PROTOCOL]        = "protocol error",
    [LLMQ_ERR_VERSION]         = "protocol version mismatch",
    [LLMQ_ERR_TOO_LARGE]       = "too large",
    [LLMQ_ERR_TIMEOUT]         = "timeout",
    [LLMQ_ERR_NOT_FOUND]       = "not found",
    [LLMQ_ERR_STORE_FULL]      = "store full",
    [LLMQ_ERR_STORE]           = "store error",
    [LLMQ_ERR_SHUTTING_DOWN]   = "broker shutting down",
    [LLMQ_ERR_UNKNOWN_WORKER]  = "unknown worker",
    [LLMQ_ERR_NOMEM]           = "out of memory",
    [LLMQ_ERR_CONNECT]         = "cannot connect",
    [LLMQ_ERR_UNKNOWN_COMMAND] = "unknown command",
    [LLMQ_ERR_STATE]           = "wrong job state",
    [LLMQ_ERR_UNKNOWN_MODEL]   = "unknown model",
    [LLMQ_ERR_JOB_FAILED]      = "job failed",
    [LLMQ_ERR_CANCELLED]       = "job cancelled",
    [LLMQ_ERR_EXPIRED]         = "job expired",
    [LLMQ_ERR_INTERNAL]        = "internal error",
    [LLMQ_ERR_QUOTA]           = "quota exceeded",
    [LLMQ_ERR_BUDGET]          = "budget spent",
};

const char *
llmq_strerror (int code)
{
    if (code >= 0 && (size_t) code < sizeof (s_errors) / sizeof (s_errors[0]) && s_errors[code]) {
        return s_errors[code];
    }
    return "unknown error";
}

const char *
llmq_state_name (int state)
{
    switch (state) {
        case LLMQ_STATE_QUEUED:    return "queued";
        case LLMQ_STATE_DELAYED:   return "delayed";
        case LLMQ_STATE_RUNNING:   return "running";
        case LLMQ_STATE_DONE:      return "done";
        case LLMQ_STATE_FAILED:    return "failed";
        case LLMQ_STATE_CANCELLED: return "cancelled";
        case LLMQ_STATE_EXPIRED:   return "expired";
        case LLMQ_STATE_DEAD:      return "dead";
        default:                   return "unknown";
    }
}

static const char *const s_priorities[] = { "urgent", "high", "normal", "low" };

const char *
llmq_priority_name (int priority)
{
    if (priority >= LLMQ_PRIO_URGENT && priority <= LLMQ_PRIO_LOW) {
        return s_priorities[priority];
    }
    return "unknown";
}

int
llmq_priority_parse (const char *name)
{
    if (!name) {
        return -1;
    }
    for (int p = LLMQ_PRIO_URGENT; p <= LLMQ_PRIO_LOW; p++) {
        if (strcasecmp (name, s_priorities[p]) == 0) {
            return p;
        }
    }
    if (name[0] >= '0' && name[0] <= '3' && name[1] == '\0') {
        return name[0] - '0';
    }
    return -1;
}
