/*  keyring.h -- the API keys of one deployment, handed out round robin.

    A deployment may hold several keys (api_key_env = A, B and
    api_key_file = PATH, PATH in the config). The worker reads them once,
    at start, into a keyring; each call takes the next key in turn. A key
    the provider refused (401/403) is benched for LLMQ_KEY_BENCH_MS: the
    ring skips it while other keys are usable, and the call that saw the
    refusal retries at once with a key it has not tried (llmq_keyring_retry).
    After a 429 the ring moves past the key that was refused, so the retry
    the broker makes later goes out with another key.

    Secrets: the texts are held in memory only, wiped when the ring is
    destroyed, and never logged; llmq_keyring_scrub masks them in a text.
    Names of variables and files are logged, never their contents.

    Not thread-safe: the worker's one thread owns its rings.
*/
#ifndef LLMQ_KEYRING_H
#define LLMQ_KEYRING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

/*  How long a key refused with 401/403 is passed over (5 minutes): long
    enough that a revoked key costs one wasted request per period, short
    enough that a key refused by a provider's hiccup comes back. */
#define LLMQ_KEY_BENCH_MS (5u * 60u * 1000u)

/*  No key: returned by llmq_keyring_next and _retry. */
#define LLMQ_KEY_NONE SIZE_MAX

typedef struct llmq_keyring llmq_keyring_t;

/*  A ring over copies of `keys` (nkeys <= LLMQ_MAX_KEYS; 0 is allowed).
    Returns NULL when out of memory or nkeys is too large. */
llmq_keyring_t *llmq_keyring_new (const char *const *keys, size_t nkeys);

/*  The keys of `dep`: its api_key_env variables in order, then its
    api_key_file files in order (each file's whole text, one trailing
    newline -- LF or CRLF -- stripped). A variable that is unset or empty
    is skipped with a warning naming it (as before: a worker serving many
    deployments keeps running; that deployment's calls fail AUTH when it
    ends up with no key). A file that cannot be read, is empty, or holds
    a line break or another control character is an error: returns NULL
    and writes "CONFIG:LINE: [deployment NAME] api_key_file: ..." into
    `err` (the path, never the content). `config_path` names the file in
    that message. */
llmq_keyring_t *llmq_keyring_load (const llmq_deployment_t *dep, const char *config_path,
                                   char *err, size_t errlen);

/*  Wipe the keys, free, set *self_p to NULL; safe on NULL and twice. */
void llmq_keyring_destroy (llmq_keyring_t **self_p);

/*  Number of keys. */
size_t llmq_keyring_size (const llmq_keyring_t *self);

/*  Key number `index` (borrowed, valid until destroy), or NULL. */
const char *llmq_keyring_key (const llmq_keyring_t *self, size_t index);

/*  Index of the key for a new call: the next in turn, skipping keys
    benched at `now_ms` (a monotonic clock) unless every key is, then the
    next in turn regardless. LLMQ_KEY_NONE if the ring is empty. */
size_t llmq_keyring_next (llmq_keyring_t *self, uint64_t now_ms);

/*  Key `index` was refused (401/403) at now_ms: bench it. */
void llmq_keyring_refused (llmq_keyring_t *self, size_t index, uint64_t now_ms);

/*  Key `index` was rate limited (429): make sure the next call does not
    take it next. */
void llmq_keyring_limited (llmq_keyring_t *self, size_t index);

/*  For a call refused with 401/403: the next key after `index` in ring
    order that is neither in `tried` (bit i set: key i was tried by this
    call) nor benched at now_ms. LLMQ_KEY_NONE when every key failed. */
size_t llmq_keyring_retry (const llmq_keyring_t *self, size_t index, uint64_t tried,
                           uint64_t now_ms);

/*  Replace every occurrence of any key of the ring in `text` by "***",
    in place. Keys shorter than 4 bytes are left alone (they would mask
    ordinary words). */
void llmq_keyring_scrub (const llmq_keyring_t *self, char *text);

#endif
