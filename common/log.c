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
static int s_json = 0;

int
llmq_log_set_format (const char *name)
{
    if (name && strcasecmp (name, "text") == 0) {
        s_json = 0;
        return 0;
    }
    if (name && strcasecmp (name, "json") == 0) {
        s_json = 1;
        return 0;
    }
    return -1;
}

/*  `text` as a JSON string body (no quotes) into out; returns its length. */
static size_t
s_escape (const char *text, char *out, size_t cap)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *) text; *p && n + 7 < cap; p++) {
        if (*p == '"' || *p == '\\') {
            out[n++] = '\\';
            out[n++] = (char) *p;
        }
        else
        if (*p < 0x20) {
            n += (size_t) snprintf (out + n, cap - n, "\\u%04x", *p);
        }
        else {
            out[n++] = (char) *p;
        }
    }
    out[n] = '\0';
    return n;
}

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
    char line[4096];
    const char *lname = s_names[level < 0 ? 0 : level > 3 ? 3 : level];
    char ts[96];
    snprintf (ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
              tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long) tv.tv_usec / 1000);
    va_list ap;
    va_start (ap, fmt);
    size_t len;
    if (s_json) {
        char msg[1200], esc[1900];
        vsnprintf (msg, sizeof msg, fmt, ap);
        s_escape (msg, esc, sizeof esc);
        unsigned long long job = 0;
        char jobfield[40] = "";
        if (sscanf (msg, "job %llu", &job) == 1
            && snprintf (jobfield, sizeof jobfield, ",\"job\":%llu", job) >= (int) sizeof jobfield) {
            jobfield[0] = '\0';
        }
        int w = snprintf (line, sizeof line - 2, "{\"ts\":\"%s\",\"proc\":\"%s\",\"pid\":%d,\"level\":\"%s\","
                          "\"msg\":\"%s\"%s}", ts, s_process, (int) getpid (), lname, esc, jobfield);
        if (w < 0 || (size_t) w >= sizeof line - 2) {
            strcpy (line + sizeof line - 6, "\"}");     /* cut: still one line, maybe not JSON */
        }
    }
    else {
        int n = snprintf (line, sizeof line, "%s %s[%d] %s: ", ts, s_process, (int) getpid (), lname);
        if (n > 0 && (size_t) n < sizeof line) {
            vsnprintf (line + n, sizeof line - (size_t) n, fmt, ap);
        }
    }
    va_end (ap);
    len = strnlen (line, sizeof line - 2);
    line[len++] = '\n';
    /*  One write per line so lines from several processes sharing a file
        do not interleave. */
    ssize_t rc = write (STDERR_FILENO, line, len);
    (void) rc;
}
