/*  provider_anthropic.c -- placeholder: the anthropic adapter is being written. Until
    then a job routed to a anthropic deployment fails with a clear reason. */
#include "provider.h"

static int
s_answer (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_reply_t *reply,
          llmq_delta_fn *emit, void *arg)
{
    return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "provider anthropic is not built in this version");
}

const llmq_provider_t llmq_provider_anthropic = { .name = "anthropic", .answer = s_answer };
