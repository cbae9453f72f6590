/*  cache.c -- the response cache's request key. See cache.h.

    Why a canonical form and not the body's bytes: two clients that send the
    same conversation with keys in another order, other white space, or a
    different `user` or `stream` flag asked the same question, and should
    get the same answer. So the key is computed over a JSON document built
    from the parts of the request that change the answer, dumped with
    sorted keys and no spaces (jansson sorts the keys of every object,
    nested ones included). The group name is in it, so one group's answers
    never answer another's jobs; the deployment is not, since any
    deployment of a group serves its jobs.

    SHA-256 comes from OpenSSL's libcrypto: 32 bytes, no collision known,
    and we do not write cryptography by hand.
*/
#include "cache.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

/*  Bumped when the canonical form changes, so that keys of an older form
    never match (their entries then age out by TTL and LRU). */
#define S_KEY_PREFIX "llmq-cache-1\n"

/*  The parameters of a chat.completions request that change its answer.
    Not stream, stream_options, user, metadata, store...: they change how
    or for whom it is delivered, not what it says. */
static const char *s_params[] = {
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "tools",
    "tool_choice", "response_format", "n", "presence_penalty", "frequency_penalty", "logit_bias"
};

/*  A real that holds a whole number exactly representable as an integer
    (|d| < 2^53). */
static bool
s_integral (const json_t *v)
{
    if (!json_is_real (v)) {
        return false;
    }
    double d = json_real_value (v);
    return d > -9007199254740992.0 && d < 9007199254740992.0 && (double) (json_int_t) d == d;
}

/*  A real with an integral value (1.0) becomes an integer (1), at any
    depth, so that "temperature": 0.0 and "temperature": 0 key alike.
    Works on the caller's (parsed, private) tree in place. */
static void
s_normalise (json_t *v)
{
    if (json_is_object (v)) {
        const char *k;
        json_t *item;
        void *tmp;
        json_object_foreach_safe (v, tmp, k, item) {
            if (s_integral (item)) {
                json_object_set_new (v, k, json_integer ((json_int_t) json_real_value (item)));
            }
            else {
                s_normalise (item);
            }
        }
    }
    else
    if (json_is_array (v)) {
        for (size_t i = 0; i < json_array_size (v); i++) {
            json_t *item = json_array_get (v, i);
            if (s_integral (item)) {
                json_array_set_new (v, i, json_integer ((json_int_t) json_real_value (item)));
            }
            else {
                s_normalise (item);
            }
        }
    }
}

/*  Recently keyed bodies, byte for byte: SHA-256 of (group, raw body) ->
    the canonical key. The same program sends the same bytes again, so
    most repeats skip the parse and the canonical dump (about 13 µs for a
    1 KiB body) for one SHA-256 of the raw bytes (about 1 µs). A table of
    4,096 slots, the newest entry winning a slot. The broker is one thread. */
#define S_MEMO_SLOTS 4096

typedef struct {
    uint8_t raw[LLMQ_CACHE_KEY_LEN];
    uint8_t key[LLMQ_CACHE_KEY_LEN];
    int8_t  state;                  /* 0 empty, 1 key, -1 not cacheable */
    bool    temp_zero;
} s_memo_t;

static s_memo_t s_memo[S_MEMO_SLOTS];

static int
s_sha256 (const void *a, size_t alen, const void *b, size_t blen, const void *c, size_t clen,
          uint8_t out[LLMQ_CACHE_KEY_LEN])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new ();
    unsigned int len = 0;
    int rc = md && EVP_DigestInit_ex (md, EVP_sha256 (), NULL) == 1
             && EVP_DigestUpdate (md, a, alen) == 1 && EVP_DigestUpdate (md, b, blen) == 1
             && EVP_DigestUpdate (md, c, clen) == 1 && EVP_DigestFinal_ex (md, out, &len) == 1
             && len == LLMQ_CACHE_KEY_LEN ? 0 : -1;
    EVP_MD_CTX_free (md);
    return rc;
}

static int s_cache_key_parsed (const char *model, const char *body, uint8_t key[LLMQ_CACHE_KEY_LEN],
                               bool *temp_zero);

int
llmq_cache_key (const char *model, const char *body, uint8_t key[LLMQ_CACHE_KEY_LEN], bool *temp_zero)
{
    if (temp_zero) {
        *temp_zero = false;
    }
    if (!model || !body) {
        return -1;
    }
    uint8_t raw[LLMQ_CACHE_KEY_LEN];
    if (s_sha256 (model, strlen (model) + 1, body, strlen (body), "", 0, raw) != 0) {
        return s_cache_key_parsed (model, body, key, temp_zero);
    }
    uint64_t slot;
    memcpy (&slot, raw, sizeof slot);
    s_memo_t *m = &s_memo[slot % S_MEMO_SLOTS];
    if (m->state && memcmp (m->raw, raw, sizeof raw) == 0) {
        if (m->state < 0) {
            return -1;
        }
        memcpy (key, m->key, LLMQ_CACHE_KEY_LEN);
        if (temp_zero) {
            *temp_zero = m->temp_zero;
        }
        return 0;
    }
    bool tz = false;
    int rc = s_cache_key_parsed (model, body, key, &tz);
    memcpy (m->raw, raw, sizeof raw);
    m->state = rc == 0 ? 1 : -1;
    m->temp_zero = tz;
    if (rc == 0) {
        memcpy (m->key, key, LLMQ_CACHE_KEY_LEN);
    }
    if (temp_zero) {
        *temp_zero = tz;
    }
    return rc;
}

static int
s_cache_key_parsed (const char *model, const char *body, uint8_t key[LLMQ_CACHE_KEY_LEN], bool *temp_zero)
{
    json_t *root = json_loads (body, 0, NULL);
    json_t *messages = json_object_get (root, "messages");
    if (!json_is_object (root) || !json_is_array (messages)) {
        json_decref (root);
        return -1;
    }
    json_t *canon = json_object ();
    int rc = canon ? 0 : -1;
    if (rc == 0) {
        rc = json_object_set_new (canon, "model", json_string (model));
    }
    if (rc == 0) {
        rc = json_object_set (canon, "messages", messages);
    }
    for (size_t i = 0; rc == 0 && i < sizeof s_params / sizeof s_params[0]; i++) {
        json_t *v = json_object_get (root, s_params[i]);
        if (v) {
            rc = json_object_set (canon, s_params[i], v);
        }
    }
    if (rc == 0 && temp_zero) {
        json_t *t = json_object_get (root, "temperature");
        *temp_zero = json_is_number (t) && json_number_value (t) == 0.0;
    }
    char *text = NULL;
    if (rc == 0) {
        s_normalise (canon);
        text = json_dumps (canon, JSON_SORT_KEYS | JSON_COMPACT);
        rc = text ? 0 : -1;
    }
    json_decref (canon);
    json_decref (root);
    if (rc == 0) {
        rc = s_sha256 (S_KEY_PREFIX, strlen (S_KEY_PREFIX), text, strlen (text), "", 0, key);
    }
    free (text);
    return rc;
}

bool
llmq_cache_candidate (const llmq_cache_policy_t *policy, const llmq_job_t *job,
                      uint8_t key[LLMQ_CACHE_KEY_LEN], uint64_t *ttl_ms)
{
    if (!policy->enabled || job->cache_ttl_ms < 0 || !job->body) {
        return false;
    }
    if (job->cache_ttl_ms > 0) {
        *ttl_ms = (uint64_t) job->cache_ttl_ms;
        return llmq_cache_key (job->model, job->body, key, NULL) == 0;
    }
    /*  Not asked: only temperature 0, if the config says so. A scan first,
        so that the jobs that cannot be candidates are never parsed. */
    if (!policy->auto_temperature_zero || !strstr (job->body, "\"temperature\"")) {
        return false;
    }
    bool zero = false;
    if (llmq_cache_key (job->model, job->body, key, &zero) != 0 || !zero) {
        return false;
    }
    *ttl_ms = policy->default_ttl_ms;
    return true;
}

void
llmq_cache_key_hex (const uint8_t key[LLMQ_CACHE_KEY_LEN], char hex[2 * LLMQ_CACHE_KEY_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < LLMQ_CACHE_KEY_LEN; i++) {
        hex[2 * i] = digits[key[i] >> 4];
        hex[2 * i + 1] = digits[key[i] & 15];
    }
    hex[2 * LLMQ_CACHE_KEY_LEN] = 0;
}

uint32_t
llmq_cache_split (const char *text, size_t size, llmq_cache_piece_fn *fn, void *arg)
{
    uint32_t seq = 0;
    size_t len = text ? strlen (text) : 0, at = 0;
    if (size == 0) {
        size = 1;
    }
    while (at < len) {
        size_t end = at + size < len ? at + size : len;
        /*  Back off to the start of a UTF-8 sequence (a byte that is not
            10xxxxxx), unless that leaves nothing: then forward past it. */
        while (end < len && end > at && ((unsigned char) text[end] & 0xC0) == 0x80) {
            end--;
        }
        if (end == at) {
            end = at + 1;
            while (end < len && ((unsigned char) text[end] & 0xC0) == 0x80) {
                end++;
            }
        }
        fn (arg, seq++, text + at, end - at);
        at = end;
    }
    return seq;
}
