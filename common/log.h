/*  log.h -- leveled log lines to stderr, one line per call.

    Text: "2026-11-23T16:40:00.123Z llmq-broker[42] info: message".
    JSON (llmq_log_set_format ("json")), one object a line:
    {"ts":"2026-11-23T16:40:00.123Z","proc":"llmq-broker","pid":42,
     "level":"info","msg":"job 7: ...","job":7}
    A message about a job starts "job ID" (the convention every caller
    follows); in JSON the id is also its own field. The process name is set
    once with llmq_log_init(). Secrets never reach this module: callers
    redact before logging (worker/keyring.c scrubs keys).
*/
#ifndef LLMQ_LOG_H
#define LLMQ_LOG_H

enum { LLMQ_LOG_ERROR = 0, LLMQ_LOG_WARN = 1, LLMQ_LOG_INFO = 2, LLMQ_LOG_DEBUG = 3 };

void llmq_log_init (const char *process);
/*  Set the level by name; returns -1 for an unknown name. */
int  llmq_log_set_level_name (const char *name);
void llmq_log_set_level (int level);
/*  "text" (default) or "json"; returns -1 for an unknown name. */
int  llmq_log_set_format (const char *name);
int  llmq_log_level (void);
void llmq_log (int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define llmq_error(...) llmq_log (LLMQ_LOG_ERROR, __VA_ARGS__)
#define llmq_warn(...)  llmq_log (LLMQ_LOG_WARN, __VA_ARGS__)
#define llmq_info(...)  llmq_log (LLMQ_LOG_INFO, __VA_ARGS__)
#define llmq_debug(...) do { if (llmq_log_level () >= LLMQ_LOG_DEBUG) llmq_log (LLMQ_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
