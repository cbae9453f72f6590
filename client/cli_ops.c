/*  cli_ops.c -- `llmq admin VERB`: the operator's view of a running broker
    (breakers, workers, queue, active streams, quotas, budgets, dead
    letters), one verb per admin operation (docs/protocol.md, "Admin
    operations"), through the one generic call llmq_admin().

    Verbs that an older command already does are handed to it (`admin dead`
    is `llmq dead list`, `admin history` is `llmq breaker history`, ...), so
    both print the same. The others print a table, or with --json the
    broker's answer as it is.
*/
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

static const char s_usage[] =
    "Usage: llmq admin VERB [ARGS...] [--json]\n"
    "\n"
    "Look at and steer a running broker (docs/protocol.md, \"Admin operations\").\n"
    "\n"
    "Verbs:\n"
    "  breakers [DEPLOYMENT]   every deployment's breaker, calls and latency (or one's)\n"
    "  breaker-reset [DEP]     force a breaker closed (every one without DEP)\n"
    "  workers                 connected workers: host, slots, in flight, last heartbeat\n"
    "  queue                   depths by priority, route and tenant, oldest age, delayed, dead\n"
    "  limits [DEPLOYMENT]     rate windows and concurrency against each deployment's limits\n"
    "  streams                 running jobs streaming to a client\n"
    "  stream-cancel ID        cancel one of them (as 'llmq cancel ID')\n"
    "  quota USER              a user's limits, usage and budgets ('llmq quota')\n"
    "  quota-reset USER        zero a user's request and token counts\n"
    "  budget USER | --org ORG a user's or an org's budgets and spend\n"
    "  history                 the breakers' last state changes\n"
    "  dead                    dead-lettered jobs ('llmq dead list')\n"
    "\n"
    "Options (every verb):\n"
    "      --json              print the broker's JSON answer\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "'llmq admin VERB --help' for a verb's own.\n"
    "\n"
    "Exit status: 0 ok, 1 refused or not found, 2 usage error, 3 broker unreachable.\n";

/*  A verb answered here: its admin op, what it takes, how it prints. */
typedef enum { S_ARG_NONE, S_ARG_ID, S_ARG_NAME, S_ARG_DEPLOYMENT } s_arg_t;
typedef void (s_print_fn) (const json_t *rep);

typedef struct {
    const char *verb;
    const char *op;
    s_arg_t arg;
    bool org;                       /* takes --org ORG instead of the NAME */
    const char *usage;
    s_print_fn *print;
} s_verb_t;

/* ---------------------------------------------------------------- helpers */

static const char *
s_str (const json_t *obj, const char *key, const char *none)
{
    const char *s = json_string_value (json_object_get (obj, key));
    return s ? s : none;
}

static long long
s_int (const json_t *obj, const char *key)
{
    return (long long) json_integer_value (json_object_get (obj, key));
}

/*  Unix µs as "2026-11-23T16:40:00Z" ("-" for 0). */
static const char *
s_time (uint64_t us, char *buf, size_t len)
{
    if (us == 0) {
        return "-";
    }
    time_t secs = (time_t) (us / 1000000u);
    struct tm tm;
    gmtime_r (&secs, &tm);
    strftime (buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/* --------------------------------------------------------------- printers */

static void
s_print_breakers (const json_t *rep)
{
    const json_t *deps = json_object_get (rep, "deployments");
    printf ("%-24s  %-9s  %-20s  %9s  %8s  %8s  %7s\n", "DEPLOYMENT", "BREAKER", "OPEN_UNTIL", "IN_FLIGHT",
            "CALLS", "FAILURES", "P95_MS");
    const char *name;
    const json_t *d;
    json_object_foreach ((json_t *) deps, name, d) {
        char t[32];
        printf ("%-24s  %-9s  %-20s  %9lld  %8lld  %8lld  %7lld\n", name, s_str (d, "breaker", "?"),
                s_time ((uint64_t) s_int (d, "open_until_ms") * 1000u, t, sizeof t), s_int (d, "in_flight"),
                s_int (d, "calls"), s_int (d, "failures"), s_int (d, "p95_ms"));
    }
}

/*  "12/60" for a window's use against its limit, "5/-" with no limit. */
static const char *
s_of (char *buf, size_t len, long long used, long long limit)
{
    if (limit) {
        snprintf (buf, len, "%lld/%lld", used, limit);
    }
    else {
        snprintf (buf, len, "%lld/-", used);
    }
    return buf;
}

static void
s_print_limits (const json_t *rep)
{
    const json_t *deps = json_object_get (rep, "deployments");
    printf ("%-24s  %8s  %-13s  %-21s  %-11s  %-20s  %s\n", "DEPLOYMENT", "WINDOW", "REQUESTS", "TOKENS",
            "IN_FLIGHT", "PAUSED_UNTIL", "FULL");
    const char *name;
    const json_t *d;
    json_object_foreach ((json_t *) deps, name, d) {
        char w[24], rq[32], tk[48], fl[32], t[32];
        snprintf (w, sizeof w, "%llds", s_int (d, "rate_window_ms") / 1000);
        printf ("%-24s  %8s  %-13s  %-21s  %-11s  %-20s  %s\n", name, w,
                s_of (rq, sizeof rq, s_int (d, "window_requests"), s_int (d, "rpm")),
                s_of (tk, sizeof tk, s_int (d, "window_tokens"), s_int (d, "tpm")),
                s_of (fl, sizeof fl, s_int (d, "in_flight"), s_int (d, "max_concurrent")),
                s_time ((uint64_t) s_int (d, "paused_until_ms") * 1000u, t, sizeof t),
                json_is_true (json_object_get (d, "full")) ? "yes" : "no");
    }
}

static void
s_print_workers (const json_t *rep)
{
    const json_t *list = json_object_get (rep, "workers");
    printf ("%-12s  %-20s  %7s  %5s  %5s  %9s  %10s  %13s\n", "ID", "HOST", "PID", "SLOTS", "FREE", "IN_FLIGHT",
            "DISPATCHED", "HEARTBEAT_AGO");
    size_t i;
    const json_t *w;
    json_array_foreach (list, i, w) {
        char slots[24];
        snprintf (slots, sizeof slots, "%lld", s_int (w, "slots"));
        printf ("%-12.12s  %-20.20s  %7lld  %5s  %5lld  %9lld  %10lld  %11lldms\n", s_str (w, "id", "?"),
                s_str (w, "host", "-"), s_int (w, "pid"), s_int (w, "slots") ? slots : "-", s_int (w, "credit"),
                s_int (w, "in_flight"), s_int (w, "dispatched"), s_int (w, "last_seen_ms"));
    }
    printf ("%lld worker(s), %lld free slot(s)\n", s_int (rep, "worker_count"), s_int (rep, "free_slots"));
}

static void
s_print_queue (const json_t *rep)
{
    static const char *prio[] = { "urgent", "high", "normal", "low" };
    const json_t *bp = json_object_get (rep, "queued_by_priority");
    printf ("queued %lld (urgent %lld, high %lld, normal %lld, low %lld), delayed %lld, in flight %lld, "
            "dead %lld\n", s_int (rep, "queued"), s_int (bp, prio[0]), s_int (bp, prio[1]), s_int (bp, prio[2]),
            s_int (bp, prio[3]), s_int (rep, "delayed"), s_int (rep, "in_flight"), s_int (rep, "dead"));
    const json_t *routes = json_object_get (rep, "routes");
    if (json_object_size (routes) > 0) {
        printf ("\n%-24s  %7s  %7s  %7s  %7s  %7s  %7s  %10s\n", "ROUTE", "URGENT", "HIGH", "NORMAL", "LOW",
                "DELAYED", "RUNNING", "OLDEST(s)");
        const char *name;
        const json_t *r;
        json_object_foreach ((json_t *) routes, name, r) {
            const json_t *age = json_object_get (r, "oldest_age_s");
            printf ("%-24s  %7lld  %7lld  %7lld  %7lld  %7lld  %7lld  %10.1f\n", name, s_int (r, prio[0]),
                    s_int (r, prio[1]), s_int (r, prio[2]), s_int (r, prio[3]), s_int (r, "delayed"),
                    s_int (r, "running"), json_number_value (age));
        }
    }
    const json_t *tenants = json_object_get (rep, "tenants");
    if (json_array_size (tenants) > 0) {
        printf ("\n%-40s  %9s\n", "TENANT", "QUEUED");
        size_t i;
        const json_t *t;
        json_array_foreach (tenants, i, t) {
            printf ("%-40s  %9lld\n", s_str (t, "tenant", "-"), s_int (t, "queued"));
        }
        long long shown = (long long) json_array_size (tenants), all = s_int (rep, "tenant_count");
        if (all > shown) {
            char label[64];
            snprintf (label, sizeof label, "(%lld other tenants)", all - shown);
            printf ("%-40s  %9lld\n", label, s_int (rep, "tenants_other_queued"));
        }
    }
}

static void
s_print_streams (const json_t *rep)
{
    const json_t *list = json_object_get (rep, "streams");
    if (json_array_size (list) == 0) {
        fprintf (stderr, "no active streams\n");
        return;
    }
    printf ("%-10s  %-16s  %-20s  %-12s  %6s  %s\n", "ID", "MODEL", "DEPLOYMENT", "WORKER", "CHUNKS", "STARTED");
    size_t i;
    const json_t *s;
    json_array_foreach (list, i, s) {
        char t[32];
        printf ("%-10lld  %-16.16s  %-20.20s  %-12.12s  %6lld  %s\n", s_int (s, "id"), s_str (s, "model", "-"),
                s_str (s, "deployment", "-"), s_str (s, "worker", "-"), s_int (s, "chunks"),
                s_time ((uint64_t) s_int (s, "started_us"), t, sizeof t));
    }
}

static void
s_print_cancelled (const json_t *rep)
{
    printf ("cancelled %lld\n", s_int (rep, "cancelled"));
}

static void
s_print_budget (const json_t *rep)
{
    const char *kind = json_object_get (rep, "user") ? "user" : "org";
    const json_t *b = json_object_get (rep, "budget_micro");
    printf ("%s %s\n", kind, s_str (rep, kind, "?"));
    printf ("  daily budget     %.6f USD, spent today      %.6f USD\n", (double) s_int (b, "daily") / 1e6,
            (double) s_int (b, "spent_today") / 1e6);
    printf ("  monthly budget   %.6f USD, spent this month %.6f USD\n", (double) s_int (b, "monthly") / 1e6,
            (double) s_int (b, "spent_this_month") / 1e6);
    printf ("  refused over budget: %lld\n", s_int (rep, "budget_refused"));
}

/* ------------------------------------------------------------------ verbs */

#define S_OPTS_HELP \
    "\n" \
    "Options:\n" \
    "      --json      print the broker's answer as it is\n" \
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"

static const s_verb_t s_verbs[] = {
    { "breakers", "breakers.list", S_ARG_DEPLOYMENT, false,
      "Usage: llmq admin breakers [DEPLOYMENT] [--json]\n"
      "\n"
      "Every deployment (or only DEPLOYMENT): breaker state, open until (UTC),\n"
      "calls in flight, calls and failures since start, p95 latency. With\n"
      "--json, everything the broker knows of it: breaker window counts,\n"
      "latency figures, the timeout its next call gets.\n" S_OPTS_HELP
      "\n"
      "Exit status: 0 ok, 1 no such deployment, 2 usage error, 3 broker unreachable.\n",
      s_print_breakers },
    { "limits", "limits.show", S_ARG_DEPLOYMENT, false,
      "Usage: llmq admin limits [DEPLOYMENT] [--json]\n"
      "\n"
      "The fleet-wide limits the broker holds for every deployment (or only\n"
      "DEPLOYMENT): requests and tokens per rate window and what the current\n"
      "window has granted, calls in flight against max_concurrent, and a\n"
      "pause after a 429 (until, UTC). FULL says no call may start now. A\n"
      "user's quota is 'llmq admin quota USER'.\n" S_OPTS_HELP
      "\n"
      "Exit status: 0 ok, 1 no such deployment, 2 usage error, 3 broker unreachable.\n",
      s_print_limits },
    { "workers", "workers.list", S_ARG_NONE, false,
      "Usage: llmq admin workers [--json]\n"
      "\n"
      "Connected workers: id, host, pid, slots (from its heartbeats; - until\n"
      "the first), free slots (what the broker may still send it), jobs in\n"
      "flight, jobs dispatched, and how long ago it was last heard from.\n" S_OPTS_HELP,
      s_print_workers },
    { "queue", "queue.show", S_ARG_NONE, false,
      "Usage: llmq admin queue [--json]\n"
      "\n"
      "Queued jobs by priority and by route (model group) with the age of\n"
      "each route's next job, delayed jobs (waiting out a backoff), jobs in\n"
      "flight, dead letters held, and queued jobs per tenant (org:NAME, or\n"
      "user:NAME for jobs without an org; the 100 deepest).\n" S_OPTS_HELP,
      s_print_queue },
    { "streams", "streams.list", S_ARG_NONE, false,
      "Usage: llmq admin streams [--json]\n"
      "\n"
      "Running jobs whose client takes their chunks: id, model group,\n"
      "deployment, worker, chunks forwarded so far, when it started (UTC).\n" S_OPTS_HELP,
      s_print_streams },
    { "stream-cancel", "streams.cancel", S_ARG_ID, false,
      "Usage: llmq admin stream-cancel ID [--json]\n"
      "\n"
      "Cancel active stream ID as 'llmq cancel' does: its worker is told to\n"
      "stop and its client gets the result, state cancelled.\n" S_OPTS_HELP
      "\n"
      "Exit status: 0 ok, 1 not an active stream, 2 usage error, 3 broker unreachable.\n",
      s_print_cancelled },
    { "budget", "budget.show", S_ARG_NAME, true,
      "Usage: llmq admin budget USER [--json]\n"
      "       llmq admin budget --org ORG [--json]\n"
      "\n"
      "A user's or an org's daily and monthly budgets, what it spent, and how\n"
      "many jobs were refused over budget.\n" S_OPTS_HELP
      "      --org ORG   an org instead of a user\n",
      s_print_budget },
};

/*  Run one verb of s_verbs: argv[0] is the verb. */
static int
s_run (cli_t *cli, const s_verb_t *v, int argc, char **argv)
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
            fputs (v->usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == OPT_JSON) {
            as_json = 1;
            continue;
        }
        if (opt == OPT_ORG) {
            if (!v->org) {
                return cli_usage_error (cli, "unknown option '--org'");
            }
            if (!optarg || !*optarg) {
                return cli_usage_error (cli, "--org needs an org name");
            }
            org = optarg;
            continue;
        }
        int rc = cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    const char *operand = optind < argc ? argv[optind++] : NULL;
    if (operand && v->arg == S_ARG_DEPLOYMENT && !*operand) {
        return cli_usage_error (cli, "expected a deployment name");
    }
    if (optind < argc || (operand && v->arg == S_ARG_NONE)) {
        return cli_usage_error (cli, "unexpected argument '%s'", optind < argc ? argv[optind] : operand);
    }
    json_t *req = json_pack ("{s:s}", "op", v->op);
    if (v->arg == S_ARG_ID) {
        uint64_t id;
        if (!operand) {
            json_decref (req);
            return cli_usage_error (cli, "missing job ID");
        }
        if (cli_parse_id (operand, &id) != 0) {
            json_decref (req);
            return cli_usage_error (cli, "'%s' is not a job id (a positive number)", operand);
        }
        json_object_set_new (req, "id", json_integer ((json_int_t) id));
    }
    else
    if (v->arg == S_ARG_DEPLOYMENT) {
        if (operand) {
            json_object_set_new (req, "deployment", json_string (operand));
        }
    }
    else
    if (v->arg == S_ARG_NAME) {
        if ((!operand && !org) || (operand && org)) {
            json_decref (req);
            return cli_usage_error (cli, v->org ? "expected a USER or --org ORG" : "expected a USER");
        }
        json_object_set_new (req, org ? "org" : "user", json_string (org ? org : operand));
    }
    char *text = req ? json_dumps (req, JSON_COMPACT) : NULL;
    json_decref (req);
    if (!text) {
        cli_error ("out of memory");
        return CLI_EXIT_FAILED;
    }
    llmq *h = NULL;
    int rc = cli_connect (cli, &h);
    if (rc != CLI_EXIT_OK) {
        free (text);
        return rc;
    }
    char *answer = NULL;
    int err = llmq_admin (h, text, &answer, cli->timeout_ms);
    free (text);
    if (err != LLMQ_OK) {
        rc = cli_fail (h, err, cli->command);
        llmq_close (&h);
        return rc;
    }
    json_t *rep = json_loads (answer, 0, NULL);
    if (!json_is_object (rep)) {
        cli_error ("%s: the broker's answer is not a JSON object", cli->command);
        rc = CLI_EXIT_FAILED;
    }
    else
    if (as_json) {
        json_dumpf (rep, stdout, JSON_INDENT (2));
        fputc ('\n', stdout);
    }
    else {
        v->print (rep);
    }
    json_decref (rep);
    llmq_free (answer);
    llmq_close (&h);
    return rc;
}

/*  Hand the verb to an older command: its argv is `w0` (and `w1` if not
    NULL) followed by the verb's own arguments. */
static int
s_delegate (cli_t *cli, int (*cmd) (cli_t *, int, char **), const char *w0, const char *w1, int argc,
            char **argv)
{
    int n = argc - 1;
    char **args = (char **) calloc ((size_t) n + 3, sizeof *args);
    if (!args) {
        cli_error ("out of memory");
        return CLI_EXIT_FAILED;
    }
    int k = 0;
    args[k++] = (char *) w0;
    if (w1) {
        args[k++] = (char *) w1;
    }
    for (int i = 0; i < n; i++) {
        args[k++] = argv[i + 1];
    }
    args[k] = NULL;
    optind = 0;
    cli->command = w0;
    int rc = cmd (cli, k, args);
    free (args);
    return rc;
}

int
cmd_admin (cli_t *cli, int argc, char **argv)
{
    if (argc < 2 || strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "--help") == 0) {
        fputs (s_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *verb = argv[1];
    char command[48];               /* "admin VERB", for messages; lives as long as the verb runs */
    for (size_t i = 0; i < sizeof s_verbs / sizeof s_verbs[0]; i++) {
        if (strcmp (verb, s_verbs[i].verb) == 0) {
            snprintf (command, sizeof command, "admin %s", verb);
            cli->command = command;
            return s_run (cli, &s_verbs[i], argc - 1, argv + 1);
        }
    }
    if (strcmp (verb, "breaker-reset") == 0) {
        return s_delegate (cli, cmd_breaker, "breaker", "reset", argc - 1, argv + 1);
    }
    if (strcmp (verb, "history") == 0) {
        return s_delegate (cli, cmd_breaker, "breaker", "history", argc - 1, argv + 1);
    }
    if (strcmp (verb, "quota") == 0) {
        return s_delegate (cli, cmd_quota, "quota", NULL, argc - 1, argv + 1);
    }
    if (strcmp (verb, "quota-reset") == 0) {
        return s_delegate (cli, cmd_quota, "quota", "reset", argc - 1, argv + 1);
    }
    if (strcmp (verb, "dead") == 0) {
        return s_delegate (cli, cmd_dead, "dead", "list", argc - 1, argv + 1);
    }
    cli_error ("unknown admin verb '%s'", verb);
    fputs ("Try 'llmq admin --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}
