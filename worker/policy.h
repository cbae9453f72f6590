/*  policy.h -- opt-in input policy for job bodies, applied by the worker
    before the provider adapter builds its request.

    Off by default, because it changes what the caller sent:
      * strip_special_tokens removes chat-template control tokens from the
        text of every message: "<|...|>" (no spaces inside, at most 64
        bytes) and the literals [INST], [/INST], <<SYS>>, <</SYS>>, <s>, </s>;
      * max_prompt_chars refuses a job whose messages' text (after
        stripping) is longer than that many characters (UTF-8 code points),
        as an invalid request, before any provider is called.
*/
#ifndef LLMQ_POLICY_H
#define LLMQ_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t max_prompt_chars;      /* 0: no limit */
    bool     strip_special_tokens;
} llmq_policy_t;

/*  Apply `policy` to a chat-completions body. Returns 0 with *out NULL
    (nothing to change) or a new body (malloc'd, the caller frees), or -1
    with the reason in `why` when the prompt is over the limit. A body that
    is not a chat request is left alone (the adapter refuses it). */
int llmq_policy_apply (const llmq_policy_t *policy, const char *body, char **out,
                       char *why, size_t whylen);

#endif
