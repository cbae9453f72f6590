/*  cache.h -- the response cache's request key and admission rule.

    The broker answers a job from its response cache when the same request
    was answered before. "The same" is decided here: a SHA-256 over a
    canonical form of the request, the model group and the parts of the
    body that change the answer. The cache itself (entries, LRU, TTL, size
    bound) lives in the store (store.h, llmq_store_cache_*), the hit and
    the fill in the broker's loop (broker.c).

    The broker otherwise never parses job bodies: only a job that is a
    cache candidate (it asks for the cache, or the config caches
    temperature 0 and its body names "temperature") pays for a parse.
*/
#ifndef LLMQ_CACHE_H
#define LLMQ_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "codec.h"

#define LLMQ_CACHE_KEY_LEN 32       /* SHA-256 */

/*  When a job is cached: the [cache] section of the config. */
typedef struct {
    bool     enabled;               /* off: no job is a candidate */
    bool     auto_temperature_zero; /* jobs that do not say (cache_ttl_ms 0) with
                                       "temperature": 0 in their body are */
    uint64_t default_ttl_ms;        /* the TTL of those */
} llmq_cache_policy_t;

/*  The canonical key of a request: SHA-256 of
        "llmq-cache-1\n" + JSON {"model": GROUP, "messages": ..., PARAMS...}
    dumped with sorted keys and no spaces, where PARAMS are the body's
    temperature, top_p, max_tokens, max_completion_tokens, stop, seed,
    tools, tool_choice, response_format, n, presence_penalty,
    frequency_penalty and logit_bias, those present. Everything else in the
    body (stream, stream_options, user, metadata, a "model" of its own...)
    does not change the key, nor does the order of keys or white space;
    a number written 1.0 keys as 1. Returns 0, or -1 when the body is not
    a JSON object with a "messages" array (such a job is not cacheable).
    If temp_zero is not NULL, it says whether "temperature" is exactly 0. */
int  llmq_cache_key (const char *model, const char *body, uint8_t key[LLMQ_CACHE_KEY_LEN],
                     bool *temp_zero);

/*  Is `job` a cache candidate under `policy`? When it is, fills `key` and
    *ttl_ms (the job's own TTL, or the policy's default) and returns true.
    A job with cache_ttl_ms -1, a disabled cache, or a body that does not
    parse is not. Parses the body only when the job may be a candidate. */
bool llmq_cache_candidate (const llmq_cache_policy_t *policy, const llmq_job_t *job,
                           uint8_t key[LLMQ_CACHE_KEY_LEN], uint64_t *ttl_ms);

/*  The key as 64 lower-case hex digits and a NUL, for logs. */
void llmq_cache_key_hex (const uint8_t key[LLMQ_CACHE_KEY_LEN], char hex[2 * LLMQ_CACHE_KEY_LEN + 1]);

/*  Split `text` into pieces of about `size` bytes (at least one byte, never
    cutting a UTF-8 sequence): calls fn for each piece, with its offset and
    length, in order. An empty text makes no piece. Returns the pieces. */
typedef void (llmq_cache_piece_fn) (void *arg, uint32_t seq, const char *piece, size_t len);
uint32_t llmq_cache_split (const char *text, size_t size, llmq_cache_piece_fn *fn, void *arg);

#endif
