/*  cli_admin.c -- `llmq dead` and `llmq breaker`: the broker's admin
    operations (docs/protocol.md, "Admin operations") through the one
    generic call llmq_admin(), JSON in and out.

    Dead letters are listed page by page (the broker answers at most 1,000
    per request, and looks at a bounded number of records per request when
    a model filter is given); `--all` requeues and purges are repeated
    while the broker says "more" (it does at most 10,000 per request, one
    loop turn each).
*/
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ------------------------------------------------------------------ shared */

/*  Send one admin request (a JSON object; stolen) and parse the answer.
    Returns an exit code; on failure the error is printed, naming `what`. */
static int
s_call (llmq *h, const cli_t *cli, json_t *req, json_t **rep, const char *what)
{
    *rep = NULL;
    char *text = req ? json_dumps (req, JSON_COMPACT) : NULL;
    json_decref (req);
    if (!text) {
        cli_error ("out of memory");
        return CLI_EXIT_FAILED;
    }
    char *answer = NULL;
    int rc = llmq_admin (h, text, &answer, cli->timeout_ms);
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

static void
s_print_json (const json_t *v)
{
    json_dumpf (v, stdout, JSON_INDENT (2));
    fputc ('\n', stdout);
}

/*  Unix µs as "2026-11-23T16:40:00.123Z" ("-" for 0). */
static const char *
s_time (uint64_t us, char *buf, size_t len)
{
    if (us == 0) {
        return "-";
    }
    time_t secs = (time_t) (us / 1000000u);
    struct tm tm;
    gmtime_r (&secs, &tm);
    char date[32];
    strftime (date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf (buf, len, "%s.%03uZ", date, (unsigned) (us / 1000u % 1000u));
    return buf;
}

static const char *
s_str (const json_t *obj, const char *key, const char *none)
{
    const char *s = json_string_value (json_object_get (obj, key));
    return s ? s : none;
}

static uint64_t
s_uint (const json_t *obj, const char *key)
{
    json_int_t v = json_integer_value (json_object_get (obj, key));
    return v > 0 ? (uint64_t) v : 0;
}

/*  Parse options: the globals, plus the command's own in `extra` (before
    the terminating entry). Calls `fn` for each of its own; returns -1 to
    go on, or an exit code. */
typedef int (s_opt_fn) (cli_t *cli, int opt, const char *arg, void *state);

enum {
    OPT_JSON = 0x2001, OPT_MODEL, OPT_LIMIT, OPT_ALL, OPT_YES
};

static int
s_parse (cli_t *cli, int argc, char **argv, const struct option *extra, size_t nextra, const char *usage,
         s_opt_fn *fn, void *state)
{
    struct option options[16] = { CLI_GLOBAL_OPTIONS };
    size_t n = 3;
    for (size_t i = 0; i < nextra && n < 15; i++) {
        options[n++] = extra[i];
    }
    options[n] = (struct option) { NULL, 0, NULL, 0 };
    int opt;
    while ((opt = getopt_long (argc, argv, ":hm:n:y", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (usage, stdout);
            return CLI_EXIT_OK;
        }
        /* Short forms, where the command has the long one. */
        int lng = opt == 'm' ? OPT_MODEL : opt == 'n' ? OPT_LIMIT : opt == 'y' ? OPT_YES : 0;
        for (size_t i = 3; lng && i < n; i++) {
            if (options[i].val == lng) {
                opt = lng;
                break;
            }
        }
        if (opt == 'm' || opt == 'n' || opt == 'y') {
            return cli_usage_error (cli, "unknown option '-%c'", opt);
        }
        int rc = opt >= 0x2000 ? fn (cli, opt, optarg, state) : cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    return -1;
}


/*  What the dead subcommands take; each uses some. */
typedef struct {
    int json;
    int all;
    int yes;
    const char *model;
    unsigned long limit;
} s_args_t;

static int
s_on_opt (cli_t *cli, int opt, const char *arg, void *state)
{
    s_args_t *a = (s_args_t *) state;
    switch (opt) {
        case OPT_JSON:  a->json = 1; return -1;
        case OPT_ALL:   a->all = 1; return -1;
        case OPT_YES:   a->yes = 1; return -1;
        case OPT_MODEL:
            if (!arg || !*arg) {
                return cli_usage_error (cli, "--model needs a model group");
            }
            a->model = arg;
            return -1;
        case OPT_LIMIT:
            if (cli_parse_uint (arg, 1000000000ul, &a->limit) != 0) {
                return cli_usage_error (cli, "--limit: '%s' is not a positive number", arg);
            }
            return -1;
        default:
            return cli_usage_error (cli, "unknown option");
    }
}

/*  The one job ID operand, or none when `optional`. */
static int
s_id_operand (cli_t *cli, int argc, char **argv, bool optional, uint64_t *id)
{
    *id = 0;
    if (optind >= argc) {
        return optional ? 0 : cli_usage_error (cli, "missing job ID");
    }
    if (argc - optind > 1) {
        return cli_usage_error (cli, "expected one job ID, got %d arguments", argc - optind);
    }
    if (cli_parse_id (argv[optind], id) != 0) {
        return cli_usage_error (cli, "'%s' is not a job id (a positive number)", argv[optind]);
    }
    return 0;
}

/* -------------------------------------------------------------- dead list */

static const char s_dead_usage[] =
    "Usage: llmq dead list [--model M] [--limit N] [--json]\n"
    "       llmq dead show ID [--json]\n"
    "       llmq dead requeue ID | --all [--model M]\n"
    "       llmq dead purge ID | --all [--model M] --yes\n"
    "\n"
    "Dead-lettered jobs: jobs that failed with a retryable error on each of\n"
    "their attempts. The broker keeps them (body included) as long as their\n"
    "result ([broker] result_ttl). 'llmq dead SUBCOMMAND --help' for each one.\n";

static const char s_list_usage[] =
    "Usage: llmq dead list [--model M] [--limit N] [--json]\n"
    "\n"
    "List dead-lettered jobs, oldest id first: id, model group, attempts,\n"
    "error class and error (cut to the terminal's width, or 60 characters).\n"
    "\n"
    "Options:\n"
    "  -m, --model M   only the jobs of model group M\n"
    "  -n, --limit N   at most N jobs (default 100)\n"
    "      --json      print {\"jobs\": [...], \"next\": ID, \"more\": BOOL}\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok (even if none), 2 usage error, 3 broker unreachable.\n";

static const struct option s_list_opts[] = {
    { "model", required_argument, NULL, OPT_MODEL },
    { "limit", required_argument, NULL, OPT_LIMIT },
    { "json",  no_argument,       NULL, OPT_JSON },
};

/*  Columns left for the error: the terminal's width less the others, or
    60 characters when stdout is not a terminal. */
static int
s_error_width (int used)
{
    struct winsize ws;
    if (isatty (STDOUT_FILENO) && ioctl (STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) {
        int w = (int) ws.ws_col - used;
        return w < 20 ? 20 : w;
    }
    return 60;
}

/*  `text` on one line, at most `width` characters (UTF-8 sequences kept
    whole), "..." at the end when cut. */
static void
s_print_cut (const char *text, int width)
{
    size_t len = strlen (text);
    int chars = 0;
    size_t i = 0;
    /* Where the cut falls, counting characters rather than bytes. */
    while (i < len && chars < width) {
        i++;
        while (i < len && ((unsigned char) text[i] & 0xC0) == 0x80) {
            i++;
        }
        chars++;
    }
    size_t end = i;
    if (end < len && width > 3) {
        /* Cut: step back three characters for the "...". */
        for (int k = 0; k < 3 && end > 0; k++) {
            end--;
            while (end > 0 && ((unsigned char) text[end] & 0xC0) == 0x80) {
                end--;
            }
        }
    }
    for (size_t j = 0; j < end; j++) {
        char c = text[j];
        fputc (c == '\n' || c == '\r' || c == '\t' ? ' ' : c, stdout);
    }
    if (end < len) {
        fputs ("...", stdout);
    }
}

static void
s_print_table (const json_t *jobs)
{
    int wid = 2, wmodel = 5, wclass = 5;
    size_t i;
    json_t *job;
    json_array_foreach (jobs, i, job) {
        char id[24];
        int n = snprintf (id, sizeof id, "%llu", (unsigned long long) s_uint (job, "id"));
        wid = n > wid ? n : wid;
        int m = (int) strlen (s_str (job, "model", "-"));
        wmodel = m > wmodel ? (m > 32 ? 32 : m) : wmodel;
        int c = (int) strlen (s_str (job, "error_class", "-"));
        wclass = c > wclass ? c : wclass;
    }
    int used = wid + 2 + wmodel + 2 + 8 + 2 + wclass + 2;
    int werr = s_error_width (used);
    printf ("%-*s  %-*s  %-8s  %-*s  %s\n", wid, "ID", wmodel, "MODEL", "ATTEMPTS", wclass, "CLASS", "ERROR");
    json_array_foreach (jobs, i, job) {
        printf ("%-*llu  %-*.*s  %-8llu  %-*s  ", wid, (unsigned long long) s_uint (job, "id"), wmodel, wmodel,
                s_str (job, "model", "-"), (unsigned long long) s_uint (job, "attempts"), wclass,
                s_str (job, "error_class", "-"));
        s_print_cut (s_str (job, "error", ""), werr);
        fputc ('\n', stdout);
    }
}

static int
s_dead_list (cli_t *cli, int argc, char **argv)
{
    s_args_t a = { .limit = 100 };
    int rc = s_parse (cli, argc, argv, s_list_opts, sizeof s_list_opts / sizeof s_list_opts[0], s_list_usage,
                      s_on_opt, &a);
    if (rc >= 0) {
        return rc;
    }
    if (optind < argc) {
        return cli_usage_error (cli, "unexpected argument '%s'", argv[optind]);
    }
    llmq *h = NULL;
    if ((rc = cli_connect (cli, &h))) {
        return rc;
    }
    json_t *all = json_array ();
    uint64_t after = 0;
    bool more = true;
    int exit_code = CLI_EXIT_OK;
    while (more && json_array_size (all) < a.limit) {
        size_t want = a.limit - json_array_size (all);
        json_t *req = json_pack ("{s:s, s:I, s:I}", "op", "dead.list", "after", (json_int_t) after,
                                 "limit", (json_int_t) (want > 1000 ? 1000 : want));
        if (req && a.model) {
            json_object_set_new (req, "model", json_string (a.model));
        }
        json_t *rep;
        if ((exit_code = s_call (h, cli, req, &rep, "dead list")) != CLI_EXIT_OK) {
            break;
        }
        json_array_extend (all, json_object_get (rep, "jobs"));
        uint64_t next = s_uint (rep, "next");
        more = json_is_true (json_object_get (rep, "more")) && next > after;
        after = next;
        json_decref (rep);
    }
    if (exit_code == CLI_EXIT_OK) {
        if (a.json) {
            json_t *out = json_pack ("{s:O, s:I, s:b}", "jobs", all, "next", (json_int_t) after, "more", more);
            s_print_json (out);
            json_decref (out);
        }
        else
        if (json_array_size (all) == 0) {
            fprintf (stderr, "no dead jobs%s%s\n", a.model ? " of model group " : "", a.model ? a.model : "");
        }
        else {
            s_print_table (all);
            if (more) {
                fprintf (stderr, "%zu shown; there may be more: --limit N shows N\n", json_array_size (all));
            }
        }
    }
    json_decref (all);
    llmq_close (&h);
    return exit_code;
}

/* -------------------------------------------------------------- dead show */

static const char s_show_usage[] =
    "Usage: llmq dead show ID [--json]\n"
    "\n"
    "Show one dead-lettered job: its last error, error class, HTTP status,\n"
    "attempts, times, keys, and its request body and metadata.\n"
    "\n"
    "Options:\n"
    "      --json      print the broker's answer as one JSON object\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 1 not a dead job (or not found), 2 usage error,\n"
    "3 broker unreachable.\n";

static const struct option s_show_opts[] = {
    { "json", no_argument, NULL, OPT_JSON },
};

static void
s_print_dead (const json_t *d)
{
    char t1[48], t2[48], t3[48], t4[48];
    printf ("id:           %llu\n", (unsigned long long) s_uint (d, "id"));
    printf ("state:        %s\n", s_str (d, "state", "dead"));
    printf ("model:        %s\n", s_str (d, "model", "-"));
    printf ("priority:     %s\n", s_str (d, "priority", "-"));
    if (json_is_string (json_object_get (d, "batch"))) {
        printf ("batch:        %s (custom_id %s)\n", s_str (d, "batch", "-"), s_str (d, "custom_id", "-"));
    }
    printf ("attempts:     %llu\n", (unsigned long long) s_uint (d, "attempts"));
    printf ("error class:  %s\n", s_str (d, "error_class", "-"));
    if (s_uint (d, "http_status")) {
        printf ("http status:  %llu\n", (unsigned long long) s_uint (d, "http_status"));
    }
    printf ("error:        %s\n", s_str (d, "error", "-"));
    if (json_is_string (json_object_get (d, "deployment"))) {
        printf ("deployment:   %s\n", s_str (d, "deployment", "-"));
    }
    printf ("enqueued:     %s\n", s_time (s_uint (d, "enqueued_us"), t1, sizeof t1));
    printf ("last start:   %s\n", s_time (s_uint (d, "started_us"), t2, sizeof t2));
    printf ("dead since:   %s\n", s_time (s_uint (d, "finished_us"), t3, sizeof t3));
    printf ("kept until:   %s\n", s_time (s_uint (d, "expires_us"), t4, sizeof t4));
    if (json_is_string (json_object_get (d, "idempotency_key"))) {
        printf ("idem key:     %s\n", s_str (d, "idempotency_key", "-"));
    }
    if (json_is_string (json_object_get (d, "user")) || json_is_string (json_object_get (d, "org"))) {
        printf ("tenant:       user %s, org %s\n", s_str (d, "user", "-"), s_str (d, "org", "-"));
    }
    const json_t *meta = json_object_get (d, "meta");
    if (meta && !json_is_null (meta)) {
        char *text = json_dumps (meta, JSON_COMPACT | JSON_ENCODE_ANY);
        printf ("meta:         %s\n", text ? text : "?");
        free (text);
    }
    printf ("body:\n");
    const json_t *body = json_object_get (d, "body");
    if (json_is_string (body)) {
        printf ("%s\n", json_string_value (body));
    }
    else {
        s_print_json (body);
    }
}

static int
s_dead_show (cli_t *cli, int argc, char **argv)
{
    s_args_t a = { 0 };
    int rc = s_parse (cli, argc, argv, s_show_opts, 1, s_show_usage, s_on_opt, &a);
    if (rc >= 0) {
        return rc;
    }
    uint64_t id;
    if ((rc = s_id_operand (cli, argc, argv, false, &id))) {
        return rc;
    }
    llmq *h = NULL;
    if ((rc = cli_connect (cli, &h))) {
        return rc;
    }
    json_t *rep;
    rc = s_call (h, cli, json_pack ("{s:s, s:I}", "op", "dead.show", "id", (json_int_t) id), &rep, "dead show");
    if (rc == CLI_EXIT_OK) {
        if (a.json) {
            s_print_json (rep);
        }
        else {
            s_print_dead (rep);
        }
        json_decref (rep);
    }
    llmq_close (&h);
    return rc;
}

/* ----------------------------------------------------- dead requeue, purge */

static const char s_requeue_usage[] =
    "Usage: llmq dead requeue ID\n"
    "       llmq dead requeue --all [--model M]\n"
    "\n"
    "Put dead-lettered jobs back in the queue as fresh jobs: attempts start\n"
    "again from 0, their place in the queue is taken from now (by their\n"
    "priority), and 'llmq status ID' shows them queued. Same ids, same\n"
    "idempotency keys, same batches. With --all and no --model, jobs of a\n"
    "model group the broker no longer has stay dead.\n"
    "\n"
    "Options:\n"
    "      --all       every dead job (of model group M with --model)\n"
    "  -m, --model M   with --all: only the jobs of model group M\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Prints how many jobs were requeued. Exit status: 0 ok, 1 not a dead job\n"
    "(or not found) or refused by the broker, 2 usage error or unknown model\n"
    "group, 3 broker unreachable.\n";

static const char s_purge_usage[] =
    "Usage: llmq dead purge ID\n"
    "       llmq dead purge --all [--model M] --yes\n"
    "\n"
    "Delete dead-lettered jobs now instead of at the end of their result's\n"
    "time to live: their record, result, idempotency key and batch membership\n"
    "go. This cannot be undone; --all needs --yes.\n"
    "\n"
    "Options:\n"
    "      --all       every dead job (of model group M with --model)\n"
    "  -m, --model M   with --all: only the jobs of model group M\n"
    "  -y, --yes       confirm --all\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Prints how many jobs were deleted. Exit status: 0 ok, 1 not a dead job\n"
    "(or not found), 2 usage error (--all without --yes), 3 broker unreachable.\n";

static const struct option s_target_opts[] = {
    { "all",   no_argument,       NULL, OPT_ALL },
    { "model", required_argument, NULL, OPT_MODEL },
    { "yes",   no_argument,       NULL, OPT_YES },
};

/*  requeue or purge: "dead.requeue"/"dead.purge", answer key "requeued"/"purged". */
static int
s_dead_target (cli_t *cli, int argc, char **argv, bool requeue)
{
    const char *usage = requeue ? s_requeue_usage : s_purge_usage;
    const char *op = requeue ? "dead.requeue" : "dead.purge";
    const char *key = requeue ? "requeued" : "purged";
    s_args_t a = { 0 };
    int rc = s_parse (cli, argc, argv, s_target_opts, requeue ? 2 : 3, usage, s_on_opt, &a);
    if (rc >= 0) {
        return rc;
    }
    uint64_t id;
    if ((rc = s_id_operand (cli, argc, argv, a.all, &id))) {
        return rc;
    }
    if (a.all && id) {
        return cli_usage_error (cli, "a job ID or --all, not both");
    }
    if (!a.all && !id) {
        return cli_usage_error (cli, "missing job ID (or --all)");
    }
    if (a.model && !a.all) {
        return cli_usage_error (cli, "--model goes with --all");
    }
    if (!requeue && a.all && !a.yes) {
        return cli_usage_error (cli, "--all deletes every dead job%s%s for good: add --yes to confirm",
                                a.model ? " of model group " : "", a.model ? a.model : "");
    }
    llmq *h = NULL;
    if ((rc = cli_connect (cli, &h))) {
        return rc;
    }
    uint64_t total = 0;
    bool more = true;
    while (rc == CLI_EXIT_OK && more) {
        json_t *req = a.all ? json_pack ("{s:s, s:b}", "op", op, "all", 1)
                            : json_pack ("{s:s, s:I}", "op", op, "id", (json_int_t) id);
        if (req && a.model) {
            json_object_set_new (req, "model", json_string (a.model));
        }
        json_t *rep;
        if ((rc = s_call (h, cli, req, &rep, cli->command)) != CLI_EXIT_OK) {
            break;
        }
        uint64_t n = s_uint (rep, key);
        total += n;
        /* The broker says "more" when it stopped at its per-request bound;
           a round that did nothing ends the loop whatever it says. */
        more = a.all && n > 0 && json_is_true (json_object_get (rep, "more"));
        json_decref (rep);
    }
    if (rc == CLI_EXIT_OK) {
        if (a.all) {
            printf ("%s %llu job%s\n", key, (unsigned long long) total, total == 1 ? "" : "s");
        }
        else {
            printf ("%s %llu\n", key, (unsigned long long) id);
        }
    }
    else
    if (total) {
        fprintf (stderr, "llmq: %llu job%s %s before the error\n", (unsigned long long) total,
                 total == 1 ? " was" : "s were", key);
    }
    llmq_close (&h);
    return rc;
}

int
cmd_dead (cli_t *cli, int argc, char **argv)
{
    if (argc < 2 || strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "--help") == 0) {
        fputs (s_dead_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp (sub, "list") == 0) {
        cli->command = "dead list";
        return s_dead_list (cli, argc - 1, argv + 1);
    }
    if (strcmp (sub, "show") == 0) {
        cli->command = "dead show";
        return s_dead_show (cli, argc - 1, argv + 1);
    }
    if (strcmp (sub, "requeue") == 0) {
        cli->command = "dead requeue";
        return s_dead_target (cli, argc - 1, argv + 1, true);
    }
    if (strcmp (sub, "purge") == 0) {
        cli->command = "dead purge";
        return s_dead_target (cli, argc - 1, argv + 1, false);
    }
    cli_error ("unknown dead subcommand '%s'", sub);
    fputs ("Try 'llmq dead --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}

/* ---------------------------------------------------------------- breaker */

static const char s_breaker_usage[] =
    "Usage: llmq breaker reset [DEPLOYMENT]\n"
    "       llmq breaker history [--json]\n"
    "\n"
    "The broker's circuit breakers, one per deployment (docs/resilience.md).\n"
    "'llmq breaker SUBCOMMAND --help' for each one.\n";

static const char s_reset_usage[] =
    "Usage: llmq breaker reset [DEPLOYMENT]\n"
    "\n"
    "Close the breaker of DEPLOYMENT (of every deployment without one) at\n"
    "once: its failure window is forgotten and jobs waiting for it go out.\n"
    "\n"
    "Options:\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 1 no such deployment, 2 usage error, 3 broker unreachable.\n";

static const char s_history_usage[] =
    "Usage: llmq breaker history [--json]\n"
    "\n"
    "The breakers' last state changes, oldest first: time (UTC), deployment,\n"
    "from -> to, and why.\n"
    "\n"
    "Options:\n"
    "      --json      print the broker's answer as it is\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 2 usage error, 3 broker unreachable.\n";

static int
s_breaker_reset (cli_t *cli, int argc, char **argv)
{
    s_args_t a = { 0 };
    int rc = s_parse (cli, argc, argv, NULL, 0, s_reset_usage, s_on_opt, &a);
    if (rc >= 0) {
        return rc;
    }
    if (argc - optind > 1) {
        return cli_usage_error (cli, "expected at most one deployment, got %d arguments", argc - optind);
    }
    const char *name = optind < argc ? argv[optind] : NULL;
    llmq *h = NULL;
    if ((rc = cli_connect (cli, &h))) {
        return rc;
    }
    json_t *req = json_pack ("{s:s}", "op", "breaker.reset");
    if (req && name) {
        json_object_set_new (req, "deployment", json_string (name));
    }
    json_t *rep;
    rc = s_call (h, cli, req, &rep, "breaker reset");
    if (rc == CLI_EXIT_OK) {
        const json_t *done = json_object_get (rep, "reset");
        size_t i;
        const json_t *dep;
        printf ("reset:");
        json_array_foreach (done, i, dep) {
            printf ("%s %s", i ? "," : "", json_string_value (dep) ? json_string_value (dep) : "?");
        }
        printf ("%s\n", json_array_size (done) ? "" : " (no deployments)");
        json_decref (rep);
    }
    llmq_close (&h);
    return rc;
}

static int
s_breaker_history (cli_t *cli, int argc, char **argv)
{
    s_args_t a = { 0 };
    int rc = s_parse (cli, argc, argv, s_show_opts, 1, s_history_usage, s_on_opt, &a);
    if (rc >= 0) {
        return rc;
    }
    if (optind < argc) {
        return cli_usage_error (cli, "unexpected argument '%s'", argv[optind]);
    }
    llmq *h = NULL;
    if ((rc = cli_connect (cli, &h))) {
        return rc;
    }
    json_t *rep;
    rc = s_call (h, cli, json_pack ("{s:s}", "op", "breaker.history"), &rep, "breaker history");
    if (rc == CLI_EXIT_OK) {
        const json_t *list = json_object_get (rep, "history");
        if (a.json) {
            s_print_json (rep);
        }
        else
        if (json_array_size (list) == 0) {
            fprintf (stderr, "no breaker state changes\n");
        }
        else {
            size_t i;
            const json_t *e;
            json_array_foreach (list, i, e) {
                char t[48];
                printf ("%s  %s  %s -> %s  %s\n", s_time (s_uint (e, "at_ms") * 1000u, t, sizeof t),
                        s_str (e, "deployment", "?"), s_str (e, "from", "?"), s_str (e, "to", "?"),
                        s_str (e, "reason", ""));
            }
        }
        json_decref (rep);
    }
    llmq_close (&h);
    return rc;
}

int
cmd_breaker (cli_t *cli, int argc, char **argv)
{
    if (argc < 2 || strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "--help") == 0) {
        fputs (s_breaker_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp (sub, "reset") == 0) {
        cli->command = "breaker reset";
        return s_breaker_reset (cli, argc - 1, argv + 1);
    }
    if (strcmp (sub, "history") == 0) {
        cli->command = "breaker history";
        return s_breaker_history (cli, argc - 1, argv + 1);
    }
    cli_error ("unknown breaker subcommand '%s'", sub);
    fputs ("Try 'llmq breaker --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}
