/*  keyring.c -- the API keys of one deployment. See keyring.h.

    The ring is an array of key texts, a cursor (the key the next call
    takes) and, per key, the monotonic time until which it is benched.
    Everything is O(number of keys), at most LLMQ_MAX_KEYS, and nothing
    allocates after the ring is built.
*/
#include "keyring.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define S_MAX_KEY_FILE 16384    /* a key file larger than this is not a key */

struct llmq_keyring {
    char   **keys;              /* nkeys NUL-terminated texts */
    size_t   nkeys;
    size_t   cursor;            /* key the next call takes, before skipping */
    uint64_t bench_until[LLMQ_MAX_KEYS];    /* monotonic ms; 0: usable */
};

llmq_keyring_t *
llmq_keyring_new (const char *const *keys, size_t nkeys)
{
    if (nkeys > LLMQ_MAX_KEYS) {
        return NULL;
    }
    llmq_keyring_t *self = calloc (1, sizeof *self);
    if (!self) {
        return NULL;
    }
    self->keys = calloc (nkeys ? nkeys : 1, sizeof *self->keys);
    if (!self->keys) {
        free (self);
        return NULL;
    }
    for (size_t i = 0; i < nkeys; i++) {
        self->keys[i] = strdup (keys[i]);
        if (!self->keys[i]) {
            llmq_keyring_destroy (&self);
            return NULL;
        }
        self->nkeys++;
    }
    return self;
}

void
llmq_keyring_destroy (llmq_keyring_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    llmq_keyring_t *self = *self_p;
    for (size_t i = 0; i < self->nkeys; i++) {
        explicit_bzero (self->keys[i], strlen (self->keys[i]));
        free (self->keys[i]);
    }
    free (self->keys);
    free (self);
    *self_p = NULL;
}

/*  A key goes into an HTTP header: printable ASCII, no spaces. */
static bool
s_key_ok (const char *key)
{
    if (!*key) {
        return false;
    }
    for (const unsigned char *p = (const unsigned char *) key; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            return false;
        }
    }
    return true;
}

/*  The whole of a key file, one trailing newline stripped; NULL and
    `why` set otherwise. The buffer is wiped by the caller. */
static char *
s_read_key_file (const char *path, const char **why)
{
    FILE *f = fopen (path, "rb");
    if (!f) {
        *why = strerror (errno);
        return NULL;
    }
    char *buf = malloc (S_MAX_KEY_FILE + 1);
    size_t n = buf ? fread (buf, 1, S_MAX_KEY_FILE + 1, f) : 0;
    bool failed = ferror (f);
    fclose (f);
    if (!buf || failed || n > S_MAX_KEY_FILE) {
        *why = !buf ? "out of memory" : failed ? "read error" : "file too large for a key";
        if (buf) {
            explicit_bzero (buf, n);
        }
        free (buf);
        return NULL;
    }
    buf[n] = '\0';
    if (n > 0 && buf[n - 1] == '\n') {
        buf[--n] = '\0';
        if (n > 0 && buf[n - 1] == '\r') {
            buf[--n] = '\0';
        }
    }
    if (strlen (buf) != n || !s_key_ok (buf)) {
        *why = n == 0 ? "the file is empty"
             : "the key holds a space, line break or other byte not allowed in a header "
               "(one key per file, nothing else)";
        explicit_bzero (buf, n);
        free (buf);
        return NULL;
    }
    return buf;
}

llmq_keyring_t *
llmq_keyring_load (const llmq_deployment_t *dep, const char *config_path,
                   char *err, size_t errlen)
{
    if (err && errlen) {
        *err = '\0';
    }
    char *owned[LLMQ_MAX_KEYS];
    const char *keys[LLMQ_MAX_KEYS];
    size_t nkeys = 0, nowned = 0;
    llmq_keyring_t *self = NULL;
    bool failed = false;
    for (size_t i = 0; i < dep->napi_key_envs && nkeys < LLMQ_MAX_KEYS; i++) {
        const char *name = dep->api_key_envs[i];
        const char *key = getenv (name);
        if (!key || !*key) {
            llmq_warn ("deployment %s: environment variable %s is not set; its key is left out",
                       dep->name, name);
        }
        else
        if (!s_key_ok (key)) {
            llmq_warn ("deployment %s: environment variable %s holds a space, line break or "
                       "other byte not allowed in a header; its key is left out", dep->name, name);
        }
        else {
            keys[nkeys++] = key;
        }
    }
    for (size_t i = 0; i < dep->napi_key_files && nkeys < LLMQ_MAX_KEYS; i++) {
        const char *why = NULL;
        char *key = s_read_key_file (dep->api_key_files[i], &why);
        if (!key) {
            if (err && errlen) {
                snprintf (err, errlen, "%s:%d: [deployment %s] api_key_file: cannot use %s: %s",
                          config_path ? config_path : "config", dep->api_key_file_line,
                          dep->name, dep->api_key_files[i], why);
            }
            failed = true;
            break;
        }
        owned[nowned++] = key;
        keys[nkeys++] = key;
    }
    if (!failed) {
        self = llmq_keyring_new (keys, nkeys);
        if (!self && err && errlen) {
            snprintf (err, errlen, "deployment %s: out of memory for its keys", dep->name);
        }
    }
    for (size_t i = 0; i < nowned; i++) {
        explicit_bzero (owned[i], strlen (owned[i]));
        free (owned[i]);
    }
    return self;
}

size_t
llmq_keyring_size (const llmq_keyring_t *self)
{
    return self ? self->nkeys : 0;
}

const char *
llmq_keyring_key (const llmq_keyring_t *self, size_t index)
{
    return self && index < self->nkeys ? self->keys[index] : NULL;
}

size_t
llmq_keyring_next (llmq_keyring_t *self, uint64_t now_ms)
{
    if (!self || self->nkeys == 0) {
        return LLMQ_KEY_NONE;
    }
    size_t pick = self->cursor % self->nkeys;
    for (size_t step = 0; step < self->nkeys; step++) {
        size_t i = (self->cursor + step) % self->nkeys;
        if (self->bench_until[i] <= now_ms) {
            pick = i;
            break;
        }
    }
    self->cursor = (pick + 1) % self->nkeys;
    return pick;
}

void
llmq_keyring_refused (llmq_keyring_t *self, size_t index, uint64_t now_ms)
{
    if (self && index < self->nkeys) {
        self->bench_until[index] = now_ms + LLMQ_KEY_BENCH_MS;
    }
}

void
llmq_keyring_limited (llmq_keyring_t *self, size_t index)
{
    if (self && index < self->nkeys && self->cursor % self->nkeys == index) {
        self->cursor = (index + 1) % self->nkeys;
    }
}

size_t
llmq_keyring_retry (const llmq_keyring_t *self, size_t index, uint64_t tried, uint64_t now_ms)
{
    if (!self || self->nkeys == 0) {
        return LLMQ_KEY_NONE;
    }
    for (size_t step = 1; step <= self->nkeys; step++) {
        size_t i = (index + step) % self->nkeys;
        if (!(tried & (UINT64_C (1) << i)) && self->bench_until[i] <= now_ms) {
            return i;
        }
    }
    return LLMQ_KEY_NONE;
}

void
llmq_keyring_scrub (const llmq_keyring_t *self, char *text)
{
    for (size_t k = 0; self && text && k < self->nkeys; k++) {
        const char *key = self->keys[k];
        size_t klen = strlen (key);
        if (klen < 4) {
            continue;
        }
        for (char *p; (p = strstr (text, key)) != NULL; ) {
            memcpy (p, "***", 3);
            memmove (p + 3, p + klen, strlen (p + klen) + 1);
        }
    }
}
