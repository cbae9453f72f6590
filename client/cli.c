/*  cli.c -- `llmq`, the command-line client: global options, dispatch to
    the commands, and what they share (errors, connecting, progress bars).

    Exit status: 0 ok, 1 job failed or not found (or refused by the broker),
    2 usage error or invalid input, 3 broker unreachable or timeout.
*/
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char s_usage[] =
    "Usage: llmq [--broker ENDPOINT] [--timeout DUR] COMMAND [ARGS...]\n"
    "\n"
    "Submit LLM chat-completion jobs to an llmq broker and get their results.\n"
    "\n"
    "Commands:\n"
    "  submit [PROMPT]         submit one job (prints its id, or its answer with --wait)\n"
    "  status ID               show a job's state and result\n"
    "  cancel ID               cancel a queued or running job\n"
    "  stats                   show the broker's statistics\n"
    "  batch submit FILE       submit an OpenAI Batch API input file (JSONL)\n"
    "  batch status ID         show a batch's progress\n"
    "  batch results ID        write a batch's results as OpenAI Batch output (JSONL)\n"
    "  dead list|show ID       dead-lettered jobs (also: dead requeue, dead purge)\n"
    "  breaker reset|history   the broker's circuit breakers\n"
    "  report --from --to      requests, tokens and cost per org, user or model\n"
    "  quota USER              a user's tier limits, usage and budgets\n"
    "  events                  print the broker's notices (budget alerts) as they come\n"
    "  top                     a live view: throughput, queue, breakers, workers\n"
    "  admin VERB              operator's view: breakers, workers, queue, streams...\n"
    "  version                 print the client version\n"
    "\n"
    "Global options (also accepted after the command):\n"
    "  --broker ENDPOINT       broker's client endpoint (default: $LLMQ_BROKER or\n"
    "                          " CLI_DEFAULT_BROKER ")\n"
    "  --timeout DUR           limit for each round trip to the broker (default 10s);\n"
    "                          when given, also bounds --wait. DUR: 30, 500ms, 30s, 2m, 1h\n"
    "  -h, --help              this help; 'llmq COMMAND --help' for a command's\n"
    "\n"
    "Exit status: 0 ok, 1 job failed or not found, 2 usage error,\n"
    "3 broker unreachable or timeout.\n";

void
cli_error (const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    fputs ("llmq: ", stderr);
    vfprintf (stderr, fmt, args);
    fputc ('\n', stderr);
    va_end (args);
}

int
cli_usage_error (const cli_t *cli, const char *fmt, ...)
{
    va_list args;
    va_start (args, fmt);
    fprintf (stderr, "llmq %s: ", cli->command);
    vfprintf (stderr, fmt, args);
    fputc ('\n', stderr);
    va_end (args);
    fprintf (stderr, "Try 'llmq %s --help'.\n", cli->command);
    return CLI_EXIT_USAGE;
}

int
cli_option (cli_t *cli, int opt, const char *arg, char **argv)
{
    switch (opt) {
        case CLI_OPT_BROKER:
            if (!arg || !*arg) {
                return cli_usage_error (cli, "--broker needs an endpoint");
            }
            cli->broker = arg;
            return -1;
        case CLI_OPT_TIMEOUT: {
            int64_t ms;
            if (cli_parse_duration_ms (arg, &ms) != 0 || ms > 24 * 3600 * 1000) {
                return cli_usage_error (cli, "--timeout: '%s' is not a duration (e.g. 30s, 500ms, 2m)", arg);
            }
            cli->timeout_ms = (int) ms;
            cli->timeout_given = 1;
            return -1;
        }
        case ':':
            return cli_usage_error (cli, "option '%s' needs a value", argv[optind - 1]);
        case '?':
        default:
            if (optopt) {
                return cli_usage_error (cli, "unknown option '-%c'", optopt);
            }
            return cli_usage_error (cli, "unknown option '%s'", argv[optind - 1]);
    }
}

int
cli_connect (const cli_t *cli, llmq **h)
{
    int rc = llmq_connect (cli->broker, cli->timeout_ms, h);
    if (rc == LLMQ_OK) {
        return CLI_EXIT_OK;
    }
    if (rc == LLMQ_ERR_INVALID) {
        cli_error ("'%s' is not a valid broker endpoint (e.g. tcp://127.0.0.1:5555)", cli->broker);
        return CLI_EXIT_USAGE;
    }
    if (rc == LLMQ_ERR_TIMEOUT) {
        cli_error ("no broker answered at %s within %d ms", cli->broker, cli->timeout_ms);
        return CLI_EXIT_UNREACHABLE;
    }
    cli_error ("cannot connect to %s: %s", cli->broker, llmq_strerror (rc));
    return rc == LLMQ_ERR_VERSION ? CLI_EXIT_FAILED : CLI_EXIT_UNREACHABLE;
}

int
cli_fail (llmq *h, int rc, const char *what)
{
    const char *why = llmq_last_error (h);
    if (why && *why) {
        cli_error ("%s: %s (%s)", what, why, llmq_strerror (rc));
    }
    else {
        cli_error ("%s: %s", what, llmq_strerror (rc));
    }
    return cli_exit_code (rc);
}

int
cli_wait_timeout (const cli_t *cli)
{
    return cli->timeout_given ? cli->timeout_ms : -1;
}

uint64_t
cli_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

void
cli_sleep_ms (long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep (&ts, &ts) != 0) {
    }
}

void
cli_progress_init (cli_progress_t *p, const char *label)
{
    memset (p, 0, sizeof (*p));
    p->tty = isatty (STDERR_FILENO);
    p->label = label;
    p->start_ms = cli_now_ms ();
}

void
cli_progress_update (cli_progress_t *p, uint64_t done, uint64_t total)
{
    if (!p->tty) {
        return;
    }
    uint64_t now = cli_now_ms ();
    if (p->drawn && now - p->last_ms < 100 && done != total) {
        return;
    }
    p->last_ms = now;
    p->drawn = 1;
    enum { WIDTH = 30 };
    unsigned fill = total ? (unsigned) (done * WIDTH / total) : 0;
    if (fill > WIDTH) {
        fill = WIDTH;
    }
    char bar[WIDTH + 1];
    memset (bar, '#', fill);
    memset (bar + fill, '.', WIDTH - fill);
    bar[WIDTH] = '\0';
    double secs = (double) (now - p->start_ms) / 1000.0;
    double rate = secs > 0 ? (double) done / secs : 0;
    fprintf (stderr, "\r%s [%s] %3u%% %llu/%llu  %.0f/s  %.0fs ",
             p->label, bar, total ? (unsigned) (done * 100 / total) : 0,
             (unsigned long long) done, (unsigned long long) total, rate, secs);
    fflush (stderr);
}

void
cli_progress_end (cli_progress_t *p)
{
    if (p->drawn) {
        fputc ('\n', stderr);
        p->drawn = 0;
    }
}

static int
s_version (void)
{
    printf ("llmq %s\n", llmq_version_string ());
    return CLI_EXIT_OK;
}

int
main (int argc, char **argv)
{
    cli_t cli = { 0 };
    cli.broker = getenv ("LLMQ_BROKER");
    if (!cli.broker || !*cli.broker) {
        cli.broker = CLI_DEFAULT_BROKER;
    }
    cli.timeout_ms = CLI_DEFAULT_TIMEOUT;
    cli.command = "";

    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 }
    };
    /* '+': stop at the command; its own options are parsed by it. */
    opterr = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, "+:h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (s_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == 'V') {
            return s_version ();
        }
        int rc = cli_option (&cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    if (optind >= argc) {
        fputs (s_usage, stderr);
        return CLI_EXIT_USAGE;
    }
    const char *command = argv[optind];
    int cargc = argc - optind;
    char **cargv = argv + optind;
    optind = 0;             /* glibc: start the next getopt from scratch */
    cli.command = command;
    if (strcmp (command, "submit") == 0) {
        return cmd_submit (&cli, cargc, cargv);
    }
    if (strcmp (command, "status") == 0) {
        return cmd_status (&cli, cargc, cargv);
    }
    if (strcmp (command, "cancel") == 0) {
        return cmd_cancel (&cli, cargc, cargv);
    }
    if (strcmp (command, "stats") == 0) {
        return cmd_stats (&cli, cargc, cargv);
    }
    if (strcmp (command, "batch") == 0) {
        return cmd_batch (&cli, cargc, cargv);
    }
    if (strcmp (command, "dead") == 0) {
        return cmd_dead (&cli, cargc, cargv);
    }
    if (strcmp (command, "breaker") == 0) {
        return cmd_breaker (&cli, cargc, cargv);
    }
    if (strcmp (command, "report") == 0) {
        return cmd_report (&cli, cargc, cargv);
    }
    if (strcmp (command, "quota") == 0) {
        return cmd_quota (&cli, cargc, cargv);
    }
    if (strcmp (command, "events") == 0) {
        return cmd_events (&cli, cargc, cargv);
    }
    if (strcmp (command, "top") == 0) {
        return cmd_top (&cli, cargc, cargv);
    }
    if (strcmp (command, "admin") == 0) {
        return cmd_admin (&cli, cargc, cargv);
    }
    if (strcmp (command, "version") == 0) {
        return s_version ();
    }
    if (strcmp (command, "help") == 0) {
        fputs (s_usage, stdout);
        return CLI_EXIT_OK;
    }
    cli_error ("unknown command '%s'", command);
    fputs ("Try 'llmq --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}

int
cli_parse_json_only (cli_t *cli, int argc, char **argv, const char *usage, int *as_json)
{
    enum { OPT_JSON = 0x2001 };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "json", no_argument, NULL, OPT_JSON },
        { NULL, 0, NULL, 0 }
    };
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == OPT_JSON) {
            *as_json = 1;
            continue;
        }
        int rc = cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    return -1;
}
