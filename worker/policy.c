/*  policy.c -- the opt-in input policy applied to a job before any
    adapter sees it. See policy.h.

    Why here and not in the broker: the broker never parses a job's body
    (that keeps a submit cheap), and the worker parses it anyway to build
    the provider's request. Why opt-in: both rules change what the caller
    sent. Stripping is for deployments of open models whose chat template
    would obey control tokens smuggled into user text ("<|im_start|>system",
    "[INST]"); the length cap is a guard against runaway prompts that a
    provider would bill before refusing.
*/
#include "policy.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  Literal tokens of common chat templates (Llama 2, Mistral, ...). */
static const char *s_tokens[] = {
    "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>"
};

/*  Length of a special token at p, or 0: "<|...|>" with no space or angle
    bracket inside (at most 64 bytes), or one of s_tokens. */
static size_t
s_token_at (const char *p)
{
    if (p[0] == '<' && p[1] == '|') {
        for (size_t i = 2; i < 64 && p[i]; i++) {
            if (p[i] == '|' && p[i + 1] == '>') {
                return i + 2;
            }
            if (p[i] == ' ' || p[i] == '<' || p[i] == '>' || p[i] == '\n') {
                return 0;
            }
        }
        return 0;
    }
    for (size_t t = 0; t < sizeof s_tokens / sizeof s_tokens[0]; t++) {
        size_t n = strlen (s_tokens[t]);
        if (strncmp (p, s_tokens[t], n) == 0) {
            return n;
        }
    }
    return 0;
}

/*  The text without special tokens, or NULL if it has none. */
static char *
s_strip (const char *text)
{
    const char *p = text;
    while (*p && !s_token_at (p)) {
        p++;
    }
    if (!*p) {
        return NULL;
    }
    char *out = (char *) malloc (strlen (text) + 1);
    if (!out) {
        return NULL;
    }
    size_t n = (size_t) (p - text);
    memcpy (out, text, n);
    while (*p) {
        size_t t = s_token_at (p);
        if (t) {
            p += t;
        }
        else {
            out[n++] = *p++;
        }
    }
    out[n] = 0;
    return out;
}

/*  UTF-8 code points in text. */
static uint64_t
s_chars (const char *text)
{
    uint64_t n = 0;
    for (const unsigned char *p = (const unsigned char *) text; *p; p++) {
        n += (*p & 0xC0) != 0x80;
    }
    return n;
}

/*  Visit a string node: strip it in place (through its parent) and count
    it. Returns true if it changed. */
static bool
s_visit (const llmq_policy_t *policy, json_t *str, uint64_t *chars)
{
    const char *text = json_string_value (str);
    if (!text) {
        return false;
    }
    char *stripped = policy->strip_special_tokens ? s_strip (text) : NULL;
    *chars += s_chars (stripped ? stripped : text);
    if (stripped) {
        json_string_set (str, stripped);
        free (stripped);
        return true;
    }
    return false;
}

int
llmq_policy_apply (const llmq_policy_t *policy, const char *body, char **out, char *why, size_t whylen)
{
    *out = NULL;
    if (!policy || (!policy->strip_special_tokens && policy->max_prompt_chars == 0)) {
        return 0;
    }
    json_t *root = json_loads (body, 0, NULL);
    json_t *messages = json_object_get (root, "messages");
    if (!json_is_array (messages)) {
        json_decref (root);
        return 0;               /* not ours to judge: the adapter says why */
    }
    uint64_t chars = 0;
    bool changed = false;
    size_t i;
    json_t *msg;
    json_array_foreach (messages, i, msg) {
        json_t *content = json_object_get (msg, "content");
        if (json_is_string (content)) {
            changed |= s_visit (policy, content, &chars);
        }
        else if (json_is_array (content)) {
            size_t k;
            json_t *part;
            json_array_foreach (content, k, part) {
                changed |= s_visit (policy, json_object_get (part, "text"), &chars);
            }
        }
    }
    if (policy->max_prompt_chars && chars > policy->max_prompt_chars) {
        snprintf (why, whylen, "prompt of %llu characters is over the limit of %u (input policy)",
                  (unsigned long long) chars, policy->max_prompt_chars);
        json_decref (root);
        return -1;
    }
    if (changed) {
        *out = json_dumps (root, JSON_COMPACT | JSON_REAL_PRECISION (15));
    }
    json_decref (root);
    return 0;
}
