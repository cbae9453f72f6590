/*  cli_report.c -- `llmq report` (usage and cost per org, user, model or
    day: the chargeback report) and `llmq quota` (a user's tier limits,
    usage and budgets), through the broker's admin operations.
*/
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/*  One admin request (stolen) and its parsed answer; an exit code. */
static int
s_admin (llmq *h, const cli_t *cli, json_t *req, json_t **rep, const char *what)
{
    *rep = NULL;
    char *text = req ? json_dumps (req, JSON_COMPACT) : NULL;
    json_decref (req);
    char *answer = NULL;
    int rc = text ? llmq_admin (h, text, &answer, cli->timeout_ms) : LLMQ_ERR_NOMEM;
    free (text);
    if (rc != LLMQ_OK) {
        return cli_fail (h, rc, what);
    }
    *rep = json_loads (answer, 0, NULL);
    llmq_free (answer);
    if (!json_is_object (*rep)) {
        json_decref (*rep);
        *rep = NULL;
        cli_error ("%s: the broker's answer is not a JSON object", what);
        return CLI_EXIT_FAILED;
    }
    return CLI_EXIT_OK;
}

/* ------------------------------------------------------------------ report */

static const char s_report_usage[] =
    "Usage: llmq report --from DATE --to DATE [--by org|user|model|day]\n"
    "                   [--format table|csv|json] [--chargeback RATE]\n"
    "\n"
    "Requests, tokens and cost per org (or user, model, day) for the days from\n"
    "DATE to DATE inclusive (YYYY-MM-DD, UTC), as booked by the broker when each\n"
    "job ended. With --chargeback RATE each row also gets a charge: its cost\n"
    "times RATE (1.15 adds 15 %), for cost allocation.\n"
    "\n"
    "Options:\n"
    "      --from DATE, --to DATE   the days (required)\n"
    "      --by KEY                 org (default), user, model or day\n"
    "      --format F               table (default), csv or json\n"
    "      --chargeback RATE        multiply costs by RATE for a charge column\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 1 refused by the broker, 2 usage error, 3 unreachable.\n";

static double
s_num (const json_t *row, const char *field)
{
    return (double) json_integer_value (json_object_get (row, field));
}

static void
s_csv_field (const char *text)
{
    if (strpbrk (text, ",\"\n")) {
        fputc ('"', stdout);
        for (const char *p = text; *p; p++) {
            if (*p == '"') {
                fputc ('"', stdout);
            }
            fputc (*p, stdout);
        }
        fputc ('"', stdout);
    }
    else {
        fputs (text, stdout);
    }
}

static void
s_report_print (const json_t *rep, const char *format, double rate, bool charge)
{
    json_t *rows = json_object_get (rep, "rows");
    const json_t *total = json_object_get (rep, "total");
    const char *by = json_string_value (json_object_get (rep, "by"));
    size_t i;
    json_t *row;
    if (strcmp (format, "json") == 0) {
        json_t *copy = json_deep_copy (rep);
        if (charge) {
            json_array_foreach (json_object_get (copy, "rows"), i, row) {
                json_object_set_new (row, "charge_micro", json_integer ((json_int_t) (s_num (row, "cost_micro") * rate + 0.5)));
            }
            json_object_set_new (json_object_get (copy, "total"), "charge_micro",
                                 json_integer ((json_int_t) (s_num (total, "cost_micro") * rate + 0.5)));
        }
        json_dumpf (copy, stdout, JSON_INDENT (2));
        fputc ('\n', stdout);
        json_decref (copy);
        return;
    }
    if (strcmp (format, "csv") == 0) {
        printf ("%s,requests,failed,prompt_tokens,completion_tokens,cost_usd%s\n", by, charge ? ",charge_usd" : "");
        json_array_foreach (rows, i, row) {
            const char *key = json_string_value (json_object_get (row, "key"));
            s_csv_field (*key ? key : "(none)");
            printf (",%.0f,%.0f,%.0f,%.0f,%.6f", s_num (row, "requests"), s_num (row, "failed"),
                    s_num (row, "prompt_tokens"), s_num (row, "completion_tokens"), s_num (row, "cost_micro") / 1e6);
            if (charge) {
                printf (",%.6f", (double) (json_int_t) (s_num (row, "cost_micro") * rate + 0.5) / 1e6);
            }
            fputc ('\n', stdout);
        }
        return;
    }
    printf ("%-24s %10s %8s %14s %14s %14s%s\n", by, "requests", "failed", "prompt tok", "completion tok",
            "cost USD", charge ? "      charge USD" : "");
    json_array_foreach (rows, i, row) {
        const char *key = json_string_value (json_object_get (row, "key"));
        printf ("%-24.24s %10.0f %8.0f %14.0f %14.0f %14.6f", *key ? key : "(none)", s_num (row, "requests"),
                s_num (row, "failed"), s_num (row, "prompt_tokens"), s_num (row, "completion_tokens"),
                s_num (row, "cost_micro") / 1e6);
        if (charge) {
            printf (" %15.6f", (double) (json_int_t) (s_num (row, "cost_micro") * rate + 0.5) / 1e6);
        }
        fputc ('\n', stdout);
    }
    printf ("%-24s %10.0f %8.0f %14.0f %14.0f %14.6f", "TOTAL", s_num (total, "requests"), s_num (total, "failed"),
            s_num (total, "prompt_tokens"), s_num (total, "completion_tokens"), s_num (total, "cost_micro") / 1e6);
    if (charge) {
        printf (" %15.6f", (double) (json_int_t) (s_num (total, "cost_micro") * rate + 0.5) / 1e6);
    }
    fputc ('\n', stdout);
}

int
cmd_report (cli_t *cli, int argc, char **argv)
{
    enum { OPT_FROM = 0x2001, OPT_TO, OPT_BY, OPT_FORMAT, OPT_CHARGE };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "from",       required_argument, NULL, OPT_FROM },
        { "to",         required_argument, NULL, OPT_TO },
        { "by",         required_argument, NULL, OPT_BY },
        { "format",     required_argument, NULL, OPT_FORMAT },
        { "chargeback", required_argument, NULL, OPT_CHARGE },
        { NULL, 0, NULL, 0 }
    };
    const char *from = NULL, *to = NULL, *by = "org", *format = "table";
    double rate = 1;
    bool charge = false;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
            case 'h':
                fputs (s_report_usage, stdout);
                return CLI_EXIT_OK;
            case OPT_FROM: from = optarg; break;
            case OPT_TO: to = optarg; break;
            case OPT_BY:
                by = optarg;
                if (strcmp (by, "org") && strcmp (by, "user") && strcmp (by, "model") && strcmp (by, "day")) {
                    return cli_usage_error (cli, "--by: '%s' is not org, user, model or day", by);
                }
                break;
            case OPT_FORMAT:
                format = optarg;
                if (strcmp (format, "table") && strcmp (format, "csv") && strcmp (format, "json")) {
                    return cli_usage_error (cli, "--format: '%s' is not table, csv or json", format);
                }
                break;
            case OPT_CHARGE: {
                char *end = NULL;
                rate = strtod (optarg, &end);
                if (!end || *end || end == optarg || !(rate >= 0) || rate > 1000) {
                    return cli_usage_error (cli, "--chargeback: '%s' is not a rate such as 1.15", optarg);
                }
                charge = true;
                break;
            }
            default: {
                int rc = cli_option (cli, opt, optarg, argv);
                if (rc >= 0) {
                    return rc;
                }
            }
        }
    }
    if (!from || !to) {
        return cli_usage_error (cli, "--from and --to are required (YYYY-MM-DD)");
    }
    if (optind < argc) {
        return cli_usage_error (cli, "unexpected argument '%s'", argv[optind]);
    }
    llmq *h = NULL;
    int rc = cli_connect (cli, &h);
    if (rc != CLI_EXIT_OK) {
        return rc;
    }
    json_t *rep;
    rc = s_admin (h, cli, json_pack ("{s:s, s:s, s:s, s:s}", "op", "usage.report", "from", from, "to", to,
                                     "by", by), &rep, "report");
    if (rc == CLI_EXIT_OK) {
        s_report_print (rep, format, rate, charge);
        json_decref (rep);
    }
    llmq_close (&h);
    return rc;
}

/* ------------------------------------------------------------------- quota */

static const char s_quota_usage[] =
    "Usage: llmq quota USER [--json]\n"
    "       llmq quota --org ORG [--json]\n"
    "       llmq quota reset USER\n"
    "\n"
    "A user's tier, its limits and what is used of them now (requests this\n"
    "minute, hour and day; tokens today), and its budgets and spend; or an\n"
    "org's budgets and spend. 'reset' zeroes a user's request and token counts\n"
    "(not its spend).\n"
    "\n"
    "Options:\n"
    "      --org ORG          show an org instead of a user\n"
    "      --json             print the broker's JSON\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 1 refused by the broker, 2 usage error, 3 unreachable.\n";

static void
s_money (const char *label, const json_t *budget, const char *limit_key, const char *spent_key)
{
    double limit = (double) json_integer_value (json_object_get (budget, limit_key));
    double spent = (double) json_integer_value (json_object_get (budget, spent_key));
    if (limit > 0) {
        printf ("%-18s $%.6f of $%.6f (%.0f %%)\n", label, spent / 1e6, limit / 1e6, spent * 100 / limit);
    }
    else {
        printf ("%-18s $%.6f (no budget)\n", label, spent / 1e6);
    }
}

static void
s_quota_print (const json_t *rep)
{
    const json_t *b = json_object_get (rep, "budget_micro");
    const char *user = json_string_value (json_object_get (rep, "user"));
    if (user) {
        const json_t *l = json_object_get (rep, "limits"), *u = json_object_get (rep, "used");
        printf ("user %s, tier %s\n", user, json_string_value (json_object_get (rep, "tier")));
        static const char *rows[][3] = {
            { "requests/minute", "minute", "rpm" }, { "requests/hour", "hour", "rph" },
            { "requests/day", "day", "rpd" }, { "tokens/day", "tokens_today", "tokens_per_day" },
        };
        for (size_t i = 0; i < 4; i++) {
            json_int_t used = json_integer_value (json_object_get (u, rows[i][1]));
            json_int_t limit = json_integer_value (json_object_get (l, rows[i][2]));
            if (limit) {
                printf ("%-18s %lld of %lld\n", rows[i][0], (long long) used, (long long) limit);
            }
            else {
                printf ("%-18s %lld (no limit)\n", rows[i][0], (long long) used);
            }
        }
        printf ("%-18s %lld\n", "refused (quota)", (long long) json_integer_value (json_object_get (rep, "quota_refused")));
    }
    else {
        printf ("org %s\n", json_string_value (json_object_get (rep, "org")));
    }
    s_money ("spent today", b, "daily", "spent_today");
    s_money ("spent this month", b, "monthly", "spent_this_month");
    printf ("%-18s %lld\n", "refused (budget)", (long long) json_integer_value (json_object_get (rep, "budget_refused")));
}

int
cmd_quota (cli_t *cli, int argc, char **argv)
{
    enum { OPT_JSON = 0x2001, OPT_ORG };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "json", no_argument,       NULL, OPT_JSON },
        { "org",  required_argument, NULL, OPT_ORG },
        { NULL, 0, NULL, 0 }
    };
    int as_json = 0;
    const char *org = NULL;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (s_quota_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == OPT_JSON) {
            as_json = 1;
            continue;
        }
        if (opt == OPT_ORG) {
            org = optarg;
            continue;
        }
        int rc = cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    bool reset = optind < argc && strcmp (argv[optind], "reset") == 0;
    if (reset) {
        optind++;
    }
    const char *user = optind < argc ? argv[optind++] : NULL;
    if (optind < argc) {
        return cli_usage_error (cli, "unexpected argument '%s'", argv[optind]);
    }
    if ((!user && !org) || (user && org) || (reset && !user)) {
        return cli_usage_error (cli, reset ? "quota reset needs a USER" : "expected a USER or --org ORG");
    }
    llmq *h = NULL;
    int rc = cli_connect (cli, &h);
    if (rc != CLI_EXIT_OK) {
        return rc;
    }
    json_t *rep;
    json_t *req = reset ? json_pack ("{s:s, s:s}", "op", "quota.reset", "user", user)
                : json_pack ("{s:s, s:s}", "op", "quota.show", user ? "user" : "org", user ? user : org);
    rc = s_admin (h, cli, req, &rep, reset ? "quota reset" : "quota");
    if (rc == CLI_EXIT_OK) {
        if (as_json) {
            json_dumpf (rep, stdout, JSON_INDENT (2));
            fputc ('\n', stdout);
        }
        else
        if (reset) {
            printf ("quota counts of user %s reset\n", user);
        }
        else {
            s_quota_print (rep);
        }
        json_decref (rep);
    }
    llmq_close (&h);
    return rc;
}

/* ------------------------------------------------------------------ events */

static const char s_events_usage[] =
    "Usage: llmq events [--count N] [--for DUR]\n"
    "\n"
    "Subscribe to the broker's notices (budget alerts) and print each as one\n"
    "line of JSON as it comes, until N were printed or DUR has passed (default:\n"
    "until interrupted).\n"
    "\n"
    "Options:\n"
    "      --count N          stop after N notices\n"
    "      --for DUR          stop after DUR (30s, 5m...)\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 2 usage error, 3 unreachable.\n";

int
cmd_events (cli_t *cli, int argc, char **argv)
{
    enum { OPT_COUNT = 0x2001, OPT_FOR };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "count", required_argument, NULL, OPT_COUNT },
        { "for",   required_argument, NULL, OPT_FOR },
        { NULL, 0, NULL, 0 }
    };
    unsigned long count = 0;
    int64_t for_ms = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (s_events_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == OPT_COUNT) {
            char *end = NULL;
            count = strtoul (optarg, &end, 10);
            if (!end || *end || count == 0) {
                return cli_usage_error (cli, "--count: '%s' is not a positive number", optarg);
            }
            continue;
        }
        if (opt == OPT_FOR) {
            if (cli_parse_duration_ms (optarg, &for_ms) != 0 || for_ms <= 0) {
                return cli_usage_error (cli, "--for: '%s' is not a duration such as 30s", optarg);
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
    json_t *rep;
    rc = s_admin (h, cli, json_pack ("{s:s}", "op", "events.subscribe"), &rep, "events");
    json_decref (rep);
    struct timespec t0;
    clock_gettime (CLOCK_MONOTONIC, &t0);
    unsigned long printed = 0;
    while (rc == CLI_EXIT_OK && (!count || printed < count)) {
        int wait = 1000;
        if (for_ms) {
            struct timespec t;
            clock_gettime (CLOCK_MONOTONIC, &t);
            int64_t spent = (int64_t) (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
            if (spent >= for_ms) {
                break;
            }
            wait = for_ms - spent < 1000 ? (int) (for_ms - spent) : 1000;
        }
        llmq_event *ev = NULL;
        int got = llmq_next (h, wait, &ev);
        if (got == LLMQ_OK && ev->type == LLMQ_EV_NOTICE) {
            printf ("%s\n", ev->text);
            fflush (stdout);
            printed++;
        }
        llmq_event_free (&ev);
        if (got != LLMQ_OK && got != LLMQ_ERR_TIMEOUT) {
            rc = cli_fail (h, got, "events");
        }
    }
    llmq_close (&h);
    return rc;
}
