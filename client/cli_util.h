/*  cli_util.h -- the llmq CLI's pure helpers: argument parsing, OpenAI Batch
    input lines, output lines. No I/O, no broker, so that tests/unit can
    check them directly. Uses only the public llmq.h and jansson.
*/
#ifndef LLMQ_CLI_UTIL_H
#define LLMQ_CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "llmq.h"

/*  Parse a duration: an integer with an optional unit, ms, s, m or h; no
    unit means seconds ("30", "500ms", "2m"). Returns 0, or -1 if malformed
    or over a year. */
int  cli_parse_duration_ms (const char *text, int64_t *ms);

/*  Parse a job id (decimal, > 0). Returns 0 or -1. */
int  cli_parse_id (const char *text, uint64_t *id);

/*  Parse a positive integer no larger than `max`. Returns 0 or -1. */
int  cli_parse_uint (const char *text, unsigned long max, unsigned long *value);

/*  Check a chat request's messages: a non-empty array of objects, each
    with a non-empty string "role". Returns 0, or -1 with the reason. */
int  cli_check_messages (const json_t *messages, char *why, size_t whylen);

/*  One line of an OpenAI Batch API input file, checked:
        {"custom_id": "...", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "...", "messages": [...], ...}}
    `model` is body.model unless the caller overrides it; `body` is the
    request re-serialised without "model" (the route travels as the job's
    model). All three strings are allocated; cli_batch_line_clear() frees
    them. */
typedef struct {
    char *custom_id;
    char *model;
    char *body;
} cli_batch_line_t;

/*  Check one input line (`len` bytes, no NUL needed). With `out` NULL only
    checks. Returns 0 if valid, 1 if the line is blank (skip it), -1 if
    invalid with the reason in `why` (no file or line number: the caller
    prefixes "FILE:LINE: "). */
int  cli_batch_line_parse (const char *line, size_t len, const char *model_override,
                           cli_batch_line_t *out, char *why, size_t whylen);
void cli_batch_line_clear (cli_batch_line_t *line);

/*  A set of custom ids seen so far (64-bit hashes, so a million ids take
    16 MB), each with the line it was first seen on. */
typedef struct cli_idset cli_idset_t;
cli_idset_t *cli_idset_new (void);
void cli_idset_destroy (cli_idset_t **self_p);
/*  Add `key` first seen at `line` (> 0). Returns 0 if new, the line it was
    first seen on if already there, or -1 when out of memory. */
long cli_idset_add (cli_idset_t *self, const char *key, long line);

/*  A result as a JSON object (every field; times in unix µs). */
json_t *cli_result_json (const llmq_result *r);

/*  A result as one line of an OpenAI Batch API output file:
        {"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}
    with a chat.completion body for a done job, and "error": {"code",
    "message"} otherwise. NULL when out of memory. */
json_t *cli_batch_output_line (const llmq_result *r);

/*  Counts from llmq_fetch()'s counts JSON. Missing fields read as 0; returns
    -1 if the text is not a JSON object. */
typedef struct {
    uint64_t total, done, failed, cancelled, expired, dead, pending;
} cli_counts_t;
int  cli_counts_parse (const char *json, cli_counts_t *counts);

/*  Exit status of the CLI for an llmq_err: 0 ok, 1 job failed or not found
    (and other refusals), 2 invalid input, 3 broker unreachable or timeout. */
int  cli_exit_code (int err);

enum { CLI_EXIT_OK = 0, CLI_EXIT_FAILED = 1, CLI_EXIT_USAGE = 2, CLI_EXIT_UNREACHABLE = 3 };

#endif
