/*  provider_gemini.c -- placeholder: the gemini adapter is being written. Until
    then a job routed to a gemini deployment fails with a clear reason. */
#include "provider.h"

static int
s_answer (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_reply_t *reply,
          llmq_delta_fn *emit, void *arg)
{
    return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "provider gemini is not built in this version");
}

const llmq_provider_t llmq_provider_gemini = { .name = "gemini", .answer = s_answer };
