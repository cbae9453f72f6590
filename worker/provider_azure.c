/*  provider_azure.c -- Azure OpenAI: the OpenAI chat-completions wire
    format behind a deployment URL.

    Differences from provider_openai.c are all in the endpoint: the URL is
    the deployment's (base_url = https://RESOURCE.openai.azure.com/openai/
    deployments/NAME) plus /chat/completions?api-version=V, and the key goes
    in an `api-key` header instead of `Authorization: Bearer`. Bodies,
    answers, streams and errors are OpenAI's, so those calls go to the
    OpenAI adapter.
*/
#include "provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_API_VERSION "2024-10-21"      /* a generally available version */

extern const llmq_provider_t llmq_provider_openai;

static int
s_endpoint (const llmq_deployment_t *dep, const char *key, llmq_endpoint_t *ep, llmq_reply_t *reply)
{
    memset (ep, 0, sizeof *ep);
    if (!dep->base_url || !*dep->base_url) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "deployment %s has no base_url", dep->name);
    }
    const char *version = dep->api_version && *dep->api_version ? dep->api_version : S_API_VERSION;
    if (strpbrk (version, "&?# \r\n")) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "deployment %s: api_version '%s' is not a version",
                                dep->name, version);
    }
    if (key && strpbrk (key, "\r\n")) {
        return llmq_reply_fail (reply, LLMQ_EC_AUTH, "the key of deployment %s holds a line break",
                                dep->name);
    }
    size_t n = strlen (dep->base_url);
    while (n > 0 && dep->base_url[n - 1] == '/') {
        n--;
    }
    if (asprintf (&ep->url, "%.*s/chat/completions?api-version=%s", (int) n, dep->base_url, version) < 0) {
        ep->url = NULL;
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    ep->headers = curl_slist_append (NULL, "Content-Type: application/json");
    struct curl_slist *h = ep->headers ? curl_slist_append (ep->headers, "Expect:") : NULL;
    if (!h) {
        llmq_endpoint_free (ep);
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    ep->headers = h;
    if (key) {
        char *line = NULL;
        if (asprintf (&line, "api-key: %s", key) < 0) {
            llmq_endpoint_free (ep);
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
        h = curl_slist_append (ep->headers, line);
        explicit_bzero (line, strlen (line));
        free (line);
        if (!h) {
            llmq_endpoint_free (ep);
            return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
        }
        ep->headers = h;
    }
    return 0;
}

static int
s_build (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_text_t *body, llmq_reply_t *reply)
{
    return llmq_provider_openai.build (dep, job, body, reply);
}

static int
s_parse_response (const char *body, size_t len, llmq_reply_t *reply)
{
    return llmq_provider_openai.parse_response (body, len, reply);
}

static int
s_parse_event (const char *event, const char *data, size_t len, llmq_reply_t *reply,
               llmq_delta_fn *emit, void *arg)
{
    return llmq_provider_openai.parse_event (event, data, len, reply, emit, arg);
}

static void
s_classify (long status, const char *body, size_t len, llmq_reply_t *reply)
{
    llmq_provider_openai.classify (status, body, len, reply);
}

const llmq_provider_t llmq_provider_azure = {
    .name = "azure",
    .endpoint = s_endpoint,
    .build = s_build,
    .parse_response = s_parse_response,
    .parse_event = s_parse_event,
    .classify = s_classify,
};
