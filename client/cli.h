/*  cli.h -- what the llmq CLI's commands share. The CLI uses only the public
    API (llmq.h) and jansson, like any other program would.
*/
#ifndef LLMQ_CLI_H
#define LLMQ_CLI_H

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

#include "llmq.h"
#include "cli_util.h"

#define CLI_DEFAULT_BROKER   "tcp://127.0.0.1:5555"
#define CLI_DEFAULT_TIMEOUT  10000      /* ms, for one round trip to the broker */

typedef struct {
    const char *broker;         /* --broker, $LLMQ_BROKER or the default */
    int  timeout_ms;            /* --timeout, or CLI_DEFAULT_TIMEOUT */
    int  timeout_given;         /* --timeout was given: it bounds waits too */
    const char *command;        /* "submit", "batch submit"...: for messages */
} cli_t;

/*  Options every command takes, for its getopt_long() table. */
#define CLI_OPT_BROKER   0x1001
#define CLI_OPT_TIMEOUT  0x1002
#define CLI_GLOBAL_OPTIONS \
    { "broker",  required_argument, NULL, CLI_OPT_BROKER }, \
    { "timeout", required_argument, NULL, CLI_OPT_TIMEOUT }, \
    { "help",    no_argument,       NULL, 'h' }

/*  Handle a global option or a getopt error. Returns -1 if the option was
    handled, otherwise the exit code to leave with (CLI_EXIT_USAGE). */
int  cli_option (cli_t *cli, int opt, const char *arg, char **argv);
/*  Parse the options of a command whose only own option is --json (and
    -h). Returns an exit code to return at once, or -1 to go on; optind is
    left at the first operand. */
int  cli_parse_json_only (cli_t *cli, int argc, char **argv, const char *usage, int *as_json);

/*  "llmq: " + message on stderr. */
void cli_error (const char *fmt, ...) __attribute__((format (printf, 1, 2)));
/*  A usage error: message, then "Try 'llmq CMD --help'". Returns 2. */
int  cli_usage_error (const cli_t *cli, const char *fmt, ...) __attribute__((format (printf, 2, 3)));

/*  Connect to the broker; prints why not. Returns the exit code (0 = ok). */
int  cli_connect (const cli_t *cli, llmq **h);
/*  Report a failed call on `h` and return its exit code. */
int  cli_fail (llmq *h, int rc, const char *what);
/*  Timeout for waiting on a job: --timeout if given, else forever. */
int  cli_wait_timeout (const cli_t *cli);

/*  Progress bar on stderr (only if stderr is a terminal): redrawn at most
    ten times a second, and always when done == total. */
typedef struct {
    int      tty;
    const char *label;
    uint64_t start_ms;
    uint64_t last_ms;
    int      drawn;
} cli_progress_t;
void cli_progress_init (cli_progress_t *p, const char *label);
void cli_progress_update (cli_progress_t *p, uint64_t done, uint64_t total);
/*  Ends the bar's line (if drawn). */
void cli_progress_end (cli_progress_t *p);
uint64_t cli_now_ms (void);
void cli_sleep_ms (long ms);

int  cmd_submit (cli_t *cli, int argc, char **argv);
int  cmd_status (cli_t *cli, int argc, char **argv);
int  cmd_cancel (cli_t *cli, int argc, char **argv);
int  cmd_stats  (cli_t *cli, int argc, char **argv);
int  cmd_batch  (cli_t *cli, int argc, char **argv);
int  cmd_dead   (cli_t *cli, int argc, char **argv);
int  cmd_breaker (cli_t *cli, int argc, char **argv);
int  cmd_report (cli_t *cli, int argc, char **argv);
int  cmd_quota  (cli_t *cli, int argc, char **argv);
int  cmd_events (cli_t *cli, int argc, char **argv);
int  cmd_top    (cli_t *cli, int argc, char **argv);
int  cmd_admin  (cli_t *cli, int argc, char **argv);

#endif
