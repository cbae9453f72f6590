/*  provider_echo.c -- answers without any network call: "echo: " followed
    by the text of the last user message. For pipeline tests and for
    measuring the queue alone, so it stays cheap: one JSON parse per job.

    Usage is counted in words: prompt_tokens = words in all messages,
    completion_tokens = words in the reply. A streamed job gets its reply
    as four chunks (fewer for very short replies), cut on UTF-8 character
    boundaries so that every chunk is valid text.
*/
#include "provider.h"

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#define S_PREFIX "echo: "
#define S_NCHUNKS 4

/*  Text of one message's content: a string, or an array of parts of which
    the {"type":"text","text":...} ones count (joined with a space). When
    `out` is NULL only words are counted. Returns the words in it. */
static uint32_t
s_content (json_t *content, llmq_text_t *out, int *oom)
{
    if (json_is_string (content)) {
        const char *s = json_string_value (content);
        size_t n = json_string_length (content);
        if (out && llmq_text_add (out, s, n)) {
            *oom = 1;
        }
        return llmq_count_words (s, n);
    }
    uint32_t words = 0;
    size_t i;
    json_t *part;
    bool first = true;
    json_array_foreach (content, i, part) {
        json_t *text = json_object_get (part, "text");
        const char *type = json_string_value (json_object_get (part, "type"));
        if (!json_is_string (text) || (type && strcmp (type, "text") != 0)) {
            continue;
        }
        if (out && ((!first && llmq_text_add (out, " ", 1))
                    || llmq_text_add (out, json_string_value (text), json_string_length (text)))) {
            *oom = 1;
        }
        first = false;
        words += llmq_count_words (json_string_value (text), json_string_length (text));
    }
    return words;
}

static int
s_answer (const llmq_deployment_t *dep, const llmq_job_t *job, llmq_reply_t *reply,
          llmq_delta_fn *emit, void *arg)
{
    if (!job->body || !*job->body) {
        return llmq_reply_fail (reply, LLMQ_EC_INVALID_REQUEST, "job has no body");
    }
    json_error_t jerr;
    json_t *root = json_loadb (job->body, strlen (job->body), 0, &jerr);
    json_t *messages = json_object_get (root, "messages");
    if (!json_is_array (messages)) {
        json_decref (root);
        return llmq_reply_fail (reply, LLMQ_EC_INVALID_REQUEST,
                                "job body is not a JSON object with a \"messages\" array");
    }
    /*  Words of every message; the text of the last user message. */
    uint32_t words = 0;
    json_t *last_user = NULL;
    size_t i;
    json_t *msg;
    json_array_foreach (messages, i, msg) {
        words += s_content (json_object_get (msg, "content"), NULL, NULL);
        const char *role = json_string_value (json_object_get (msg, "role"));
        if (role && strcmp (role, "user") == 0) {
            last_user = msg;
        }
    }
    int oom = llmq_text_add (&reply->content, S_PREFIX, strlen (S_PREFIX));
    if (last_user) {
        s_content (json_object_get (last_user, "content"), &reply->content, &oom);
    }
    json_decref (root);
    if (oom) {
        return llmq_reply_fail (reply, LLMQ_EC_INTERNAL, "out of memory");
    }
    reply->prompt_tokens = words;
    reply->completion_tokens = llmq_count_words (reply->content.p, reply->content.len);
    llmq_reply_set_finish (reply, "stop");
    snprintf (reply->request_id, sizeof reply->request_id, "echo-%llu", (unsigned long long) job->id);

    if (job->stream && emit) {
        const char *p = reply->content.p;
        size_t len = reply->content.len;
        size_t start = 0;
        for (int c = 1; c <= S_NCHUNKS && start < len; c++) {
            size_t end = c == S_NCHUNKS ? len : len * (size_t) c / S_NCHUNKS;
            /*  Never cut inside a UTF-8 sequence (continuation bytes 10xxxxxx). */
            while (end < len && ((unsigned char) p[end] & 0xC0) == 0x80) {
                end++;
            }
            if (end > start) {
                emit (arg, p + start, end - start);
                start = end;
            }
        }
    }
    return 0;
}

const llmq_provider_t llmq_provider_echo = {
    .name = "echo",
    .answer = s_answer,
};
