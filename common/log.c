/*  log.c -- leveled log lines to stderr. See log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/*  Process-wide settings, written once at start-up before any thread runs. */
static const char *s_process = "llmq";
static int s_level = LLMQ_LOG_INFO;
static const char *s_names[] = { "error", "warn", "info", "debug" };

void
llmq_log_init (const char *process)
{
    if (process) {
        s_process = process;
    }
}

int
llmq_log_set_level_name (const char *name)
{
    for (int i = 0; i < 4; i++) {
        if (name && strcasecmp (name, s_names[i]) == 0) {
            s_level = i;
            return 0;
        }
    }
    return -1;
}

void
llmq_log_set_level (int level)
{
    s_level = level < 0 ? 0 : level > 3 ? 3 : level;
}

int
llmq_log_level (void)
{
    return s_level;
}

void
llmq_log (int level, const char *fmt, ...)
{
    if (level > s_level) {
        return;
    }
    struct timeval tv;
    gettimeofday (&tv, NULL);
    struct tm tm;
    gmtime_r (&tv.tv_sec, &tm);
    char line[2048];
    int n = snprintf (line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ",
                      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                      tm.tm_sec, (long) tv.tv_usec / 1000, s_process, (int) getpid (),
                      s_names[level < 0 ? 0 : level > 3 ? 3 : level]);
    va_list ap;
    va_start (ap, fmt);
    if (n > 0 && (size_t) n < sizeof line) {
        vsnprintf (line + n, sizeof line - (size_t) n, fmt, ap);
    }
    va_end (ap);
    size_t len = strnlen (line, sizeof line - 2);
    line[len++] = '\n';
    /*  One write per line so lines from several processes sharing a file
        do not interleave. */
    ssize_t rc = write (STDERR_FILENO, line, len);
    (void) rc;
}
