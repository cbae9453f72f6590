/*  cli_top.c -- `llmq top`: a live view of the broker, refreshed every
    second from its statistics: throughput, the queue by priority, in
    flight, breakers, workers.
*/
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

static const char s_top_usage[] =
    "Usage: llmq top [--once] [--interval DUR] [--count N]\n"
    "\n"
    "A live view of the broker: throughput (jobs a second), the queue by\n"
    "priority, jobs delayed and in flight, each deployment's breaker, calls,\n"
    "failures and latency, and each worker, refreshed every second until\n"
    "interrupted (Ctrl-C).\n"
    "\n"
    "Options:\n"
    "      --once             print one view (no rates) and exit\n"
    "      --interval DUR     time between views (default 1s)\n"
    "      --count N          exit after N views\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 2 usage error, 3 broker unreachable.\n";

static json_int_t
s_int (const json_t *obj, const char *path)
{
    char buf[128];
    snprintf (buf, sizeof buf, "%s", path);
    const json_t *v = obj;
    for (char *part = strtok (buf, "."); part && v; part = strtok (NULL, ".")) {
        v = json_object_get (v, part);
    }
    return json_integer_value (v);
}

static double
s_rate (const json_t *now, const json_t *before, const char *path, double seconds)
{
    if (!before || seconds <= 0) {
        return 0;
    }
    return (double) (s_int (now, path) - s_int (before, path)) / seconds;
}

static void
s_view (const json_t *st, const json_t *prev, double seconds, bool clear, const char *endpoint)
{
    if (clear) {
        fputs ("\033[H\033[2J", stdout);
    }
    char when[32];
    time_t t = time (NULL);
    struct tm tm;
    localtime_r (&t, &tm);
    strftime (when, sizeof when, "%H:%M:%S", &tm);
    printf ("llmq top  %s  broker %s  workers %lld  free slots %lld\n\n", when, endpoint,
            (long long) s_int (st, "worker_count"), (long long) s_int (st, "free_slots"));
    if (prev) {
        printf ("jobs/s    submitted %8.1f  done %8.1f  failed %6.1f  retried %6.1f  dead %5.1f\n",
                s_rate (st, prev, "totals.submitted", seconds), s_rate (st, prev, "totals.done", seconds),
                s_rate (st, prev, "totals.failed", seconds), s_rate (st, prev, "totals.retried", seconds),
                s_rate (st, prev, "totals.dead", seconds));
    }
    printf ("totals    submitted %8lld  done %8lld  failed %6lld  dead %5lld  cancelled %lld  expired %lld\n",
            (long long) s_int (st, "totals.submitted"), (long long) s_int (st, "totals.done"),
            (long long) s_int (st, "totals.failed"), (long long) s_int (st, "totals.dead"),
            (long long) s_int (st, "totals.cancelled"), (long long) s_int (st, "totals.expired"));
    printf ("queue     urgent %lld  high %lld  normal %lld  low %lld   delayed %lld   in flight %lld\n\n",
            (long long) s_int (st, "queued_by_priority.urgent"), (long long) s_int (st, "queued_by_priority.high"),
            (long long) s_int (st, "queued_by_priority.normal"), (long long) s_int (st, "queued_by_priority.low"),
            (long long) s_int (st, "delayed"), (long long) s_int (st, "in_flight"));
    const json_t *deps = json_object_get (st, "deployments");
    if (json_object_size (deps)) {
        printf ("%-22s %-10s %9s %10s %9s %8s %8s %9s\n", "deployment", "breaker", "in flight", "calls",
                "failures", "p50 ms", "p95 ms", "timeout");
        const char *name;
        json_t *d;
        json_object_foreach ((json_t *) deps, name, d) {
            printf ("%-22.22s %-10s %9lld %10lld %9lld %8lld %8lld %8llds\n", name,
                    json_string_value (json_object_get (d, "breaker")),
                    (long long) s_int (d, "in_flight"), (long long) s_int (d, "calls"),
                    (long long) s_int (d, "failures"), (long long) s_int (d, "p50_ms"),
                    (long long) s_int (d, "p95_ms"), (long long) (s_int (d, "timeout_ms") / 1000));
        }
        fputc ('\n', stdout);
    }
    const json_t *workers = json_object_get (st, "workers");
    if (json_array_size (workers)) {
        printf ("%-12s %-20s %8s %9s %7s %10s %12s\n", "worker", "host", "pid", "in flight", "credit",
                "dispatched", "last seen ms");
        size_t i;
        json_t *w;
        json_array_foreach (workers, i, w) {
            printf ("%-12.12s %-20.20s %8lld %9lld %7lld %10lld %12lld\n",
                    json_string_value (json_object_get (w, "id")), json_string_value (json_object_get (w, "host")),
                    (long long) s_int (w, "pid"), (long long) s_int (w, "in_flight"),
                    (long long) s_int (w, "credit"), (long long) s_int (w, "dispatched"),
                    (long long) s_int (w, "last_seen_ms"));
        }
    }
    fflush (stdout);
}

int
cmd_top (cli_t *cli, int argc, char **argv)
{
    enum { OPT_ONCE = 0x2001, OPT_INTERVAL, OPT_COUNT };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "once",     no_argument,       NULL, OPT_ONCE },
        { "interval", required_argument, NULL, OPT_INTERVAL },
        { "count",    required_argument, NULL, OPT_COUNT },
        { NULL, 0, NULL, 0 }
    };
    int64_t interval = 1000;
    unsigned long count = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (s_top_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == OPT_ONCE) {
            count = 1;
            continue;
        }
        if (opt == OPT_INTERVAL) {
            if (cli_parse_duration_ms (optarg, &interval) != 0 || interval < 100) {
                return cli_usage_error (cli, "--interval: '%s' is not a duration of at least 100ms", optarg);
            }
            continue;
        }
        if (opt == OPT_COUNT) {
            char *end = NULL;
            count = strtoul (optarg, &end, 10);
            if (!end || *end || count == 0) {
                return cli_usage_error (cli, "--count: '%s' is not a positive number", optarg);
            }
            continue;
        }
        int rc = cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    if (optind < argc) {
        return cli_usage_error (cli, "unexpected argument '%s'", argv[optind]);
    }
    llmq *h = NULL;
    int rc = cli_connect (cli, &h);
    if (rc != CLI_EXIT_OK) {
        return rc;
    }
    bool clear = count != 1 && isatty (STDOUT_FILENO);
    json_t *prev = NULL;
    struct timespec t_prev = { 0, 0 };
    for (unsigned long n = 0; !count || n < count; n++) {
        if (n > 0) {
            struct timespec pause = { interval / 1000, (interval % 1000) * 1000000 };
            nanosleep (&pause, NULL);       /* the refresh period: a view a second */
        }
        char *text = NULL;
        int got = llmq_stats (h, &text, cli->timeout_ms);
        if (got != LLMQ_OK) {
            rc = cli_fail (h, got, "top");
            break;
        }
        json_t *st = json_loads (text, 0, NULL);
        llmq_free (text);
        struct timespec t_now;
        clock_gettime (CLOCK_MONOTONIC, &t_now);
        double seconds = prev ? (double) (t_now.tv_sec - t_prev.tv_sec) + (double) (t_now.tv_nsec - t_prev.tv_nsec) / 1e9
                              : 0;
        s_view (st, prev, seconds, clear, cli->broker ? cli->broker : "");
        json_decref (prev);
        prev = st;
        t_prev = t_now;
        if (count != 1) {
            fputc ('\n', stdout);
        }
    }
    json_decref (prev);
    llmq_close (&h);
    return rc;
}
