/*  cli_batch.c -- `llmq batch submit|status|results`: OpenAI Batch API files.

    `batch submit` reads the file twice. The first pass checks every line
    and submits nothing if one is bad, so a typo on line 900,000 does not
    leave 899,999 jobs running. The second pass sends the jobs in chunks
    (one SUBMIT message each, all or none), several chunks in flight at once
    with llmq_send()/llmq_next(). Every job's idempotency key is
    "BATCH_ID:CUSTOM_ID": if the command is interrupted, running it again
    with the same --batch-id submits only what is missing.
*/
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cli.h"

#define BATCH_CHUNK_JOBS     1000               /* jobs per SUBMIT (default) */
#define BATCH_CHUNK_BYTES    (8u * 1024 * 1024) /* and at most this much body */
#define BATCH_WINDOW         4                  /* SUBMITs in flight */
#define BATCH_MAX_ERRORS     20                 /* bad lines printed */
#define BATCH_RETRIES        5                  /* per chunk, when the broker says "retry after" */
#define BATCH_PAGE           1000               /* results per FETCH */

static const char s_batch_usage[] =
    "Usage: llmq batch submit FILE [OPTIONS]\n"
    "       llmq batch status ID [--json]\n"
    "       llmq batch results ID [-o FILE]\n"
    "\n"
    "Run OpenAI Batch API files through llmq. 'llmq batch SUBCOMMAND --help'\n"
    "for each one's options.\n";

static const char s_submit_usage[] =
    "Usage: llmq batch submit FILE [OPTIONS]\n"
    "\n"
    "Submit an OpenAI Batch API input file (JSONL; '-' reads stdin). Each line:\n"
    "  {\"custom_id\": \"...\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\",\n"
    "   \"body\": {\"model\": \"...\", \"messages\": [...], ...}}\n"
    "Every line is checked first; if one is bad, each bad line is reported as\n"
    "FILE:LINE: reason and nothing is submitted. Prints the batch id.\n"
    "Submitting the same file again with the same --batch-id does not\n"
    "duplicate jobs (each job's idempotency key is BATCH_ID:CUSTOM_ID).\n"
    "\n"
    "Options:\n"
    "  -b, --batch-id ID      batch id (default: batch_ + 16 random hex digits)\n"
    "  -p, --priority P       urgent, high, normal or low (default low)\n"
    "  -m, --model M          model group for every line (default: body.model)\n"
    "  -w, --wait             wait until every job has ended (progress on stderr)\n"
    "      --user U           tenant user\n"
    "      --org O            tenant org\n"
    "      --chunk N          jobs per message (default 1000)\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok (with --wait: every job done), 1 refused by the broker or\n"
    "(with --wait) some jobs did not end done, 2 invalid file or usage error,\n"
    "3 broker unreachable or timeout.\n";

static const char s_status_usage[] =
    "Usage: llmq batch status ID [--json]\n"
    "\n"
    "Show how many of a batch's jobs are done, failed, cancelled, expired,\n"
    "dead-lettered or still pending.\n"
    "\n"
    "Options:\n"
    "      --json    print the broker's counts JSON as it is\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n";

static const char s_results_usage[] =
    "Usage: llmq batch results ID [-o FILE]\n"
    "\n"
    "Write the results of a batch's finished jobs as an OpenAI Batch API output\n"
    "file (JSONL), one line per job, in submission order:\n"
    "  {\"id\", \"custom_id\", \"response\": {\"status_code\", \"request_id\", \"body\"},\n"
    "   \"error\": null | {\"code\", \"message\"}}\n"
    "Jobs not finished yet are left out (a note on stderr says how many).\n"
    "\n"
    "Options:\n"
    "  -o, --output FILE   write to FILE instead of stdout\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n";

/* ------------------------------------------------------------ file access */

/*  Open the input; stdin is spooled to a temporary file so it can be read
    twice. NULL (after a message) on failure. */
static FILE *
s_open_input (const char *path)
{
    if (strcmp (path, "-") != 0) {
        FILE *file = fopen (path, "r");
        if (!file) {
            cli_error ("%s: %s", path, strerror (errno));
        }
        return file;
    }
    FILE *spool = tmpfile ();
    if (!spool) {
        cli_error ("cannot create a temporary file for stdin: %s", strerror (errno));
        return NULL;
    }
    char buf[65536];
    size_t n;
    while ((n = fread (buf, 1, sizeof (buf), stdin)) > 0) {
        if (fwrite (buf, 1, n, spool) != n) {
            cli_error ("spooling stdin: %s", strerror (errno));
            fclose (spool);
            return NULL;
        }
    }
    if (ferror (stdin)) {
        cli_error ("reading stdin: %s", strerror (errno));
        fclose (spool);
        return NULL;
    }
    rewind (spool);
    return spool;
}

/*  Pass 1: check every line. Returns the number of jobs, or -1 after
    reporting the bad lines. */
static long
s_check_file (FILE *file, const char *name, const char *model)
{
    cli_idset_t *ids = cli_idset_new ();
    if (!ids) {
        cli_error ("out of memory");
        return -1;
    }
    char *line = NULL;
    size_t alloc = 0;
    ssize_t len;
    long lineno = 0, jobs = 0, bad = 0;
    char why[512];
    while ((len = getline (&line, &alloc, file)) >= 0) {
        lineno++;
        cli_batch_line_t item;
        int rc = cli_batch_line_parse (line, (size_t) len, model, &item, why, sizeof (why));
        if (rc == 0) {
            long first = cli_idset_add (ids, item.custom_id, lineno);
            if (first > 0) {
                snprintf (why, sizeof (why), "duplicate custom_id \"%.200s\" (first on line %ld)",
                          item.custom_id, first);
                rc = -1;
            }
            else
            if (first < 0) {
                snprintf (why, sizeof (why), "out of memory");
                rc = -1;
            }
            cli_batch_line_clear (&item);
        }
        if (rc < 0) {
            if (bad < BATCH_MAX_ERRORS) {
                fprintf (stderr, "%s:%ld: %s\n", name, lineno, why);
            }
            bad++;
        }
        else
        if (rc == 0) {
            jobs++;
        }
    }
    int read_failed = ferror (file);
    free (line);
    cli_idset_destroy (&ids);
    if (read_failed) {
        cli_error ("%s: read error", name);
        return -1;
    }
    if (bad > BATCH_MAX_ERRORS) {
        fprintf (stderr, "%s: ... and %ld more bad lines\n", name, bad - BATCH_MAX_ERRORS);
    }
    if (bad) {
        cli_error ("%s: %ld invalid line%s: nothing submitted", name, bad, bad == 1 ? "" : "s");
        return -1;
    }
    if (jobs == 0) {
        cli_error ("%s: no requests in the file: nothing submitted", name);
        return -1;
    }
    return jobs;
}

/* --------------------------------------------------------------- chunking */

/*  One SUBMIT message: its jobs and the strings they point into. */
typedef struct {
    uint64_t ticket;            /* llmq_send() ticket while in flight, 0 when free */
    size_t   njobs;
    size_t   bytes;             /* body bytes, for the chunk size bound */
    int      retries;
    llmq_job *jobs;             /* [chunk_jobs] */
    cli_batch_line_t *items;    /* [chunk_jobs] the strings */
    char    **keys;             /* [chunk_jobs] idempotency keys */
    long    *lines;             /* [chunk_jobs] line numbers, for errors */
} chunk_t;

typedef struct {
    cli_t   *cli;
    llmq    *h;
    const char *name;           /* file name for messages */
    const char *batch_id;
    int      priority;
    const char *user;
    const char *org;
    size_t   chunk_jobs;
    chunk_t  chunks[BATCH_WINDOW];
    size_t   inflight;
    uint64_t accepted;          /* jobs acknowledged */
    uint64_t total;             /* jobs in the file */
    cli_progress_t progress;
} submitter_t;

static void
s_chunk_reset (chunk_t *c)
{
    for (size_t i = 0; i < c->njobs; i++) {
        cli_batch_line_clear (&c->items[i]);
        free (c->keys[i]);
        c->keys[i] = NULL;
    }
    c->ticket = 0;
    c->njobs = 0;
    c->bytes = 0;
    c->retries = 0;
}

static int
s_chunk_alloc (chunk_t *c, size_t n)
{
    memset (c, 0, sizeof (*c));
    c->jobs = calloc (n, sizeof (llmq_job));
    c->items = calloc (n, sizeof (cli_batch_line_t));
    c->keys = calloc (n, sizeof (char *));
    c->lines = calloc (n, sizeof (long));
    return c->jobs && c->items && c->keys && c->lines ? 0 : -1;
}

static void
s_chunk_free (chunk_t *c)
{
    s_chunk_reset (c);
    free (c->jobs);
    free (c->items);
    free (c->keys);
    free (c->lines);
}

/*  Report a chunk the broker refused; returns the exit code. */
static int
s_refused (submitter_t *s, const chunk_t *c, const llmq_event *ev)
{
    if (ev->index >= 0 && (size_t) ev->index < c->njobs) {
        fprintf (stderr, "%s:%ld: refused by the broker: %s (%s)\n", s->name, c->lines[ev->index],
                 ev->reason, llmq_strerror (ev->code));
    }
    else {
        fprintf (stderr, "%s:%ld-%ld: refused by the broker: %s (%s)\n", s->name, c->lines[0],
                 c->lines[c->njobs - 1], ev->reason, llmq_strerror (ev->code));
    }
    return cli_exit_code (ev->code) == CLI_EXIT_OK ? CLI_EXIT_FAILED : cli_exit_code (ev->code);
}

static int
s_send_chunk (submitter_t *s, chunk_t *c)
{
    int rc = llmq_send (s->h, c->jobs, c->njobs, 0, &c->ticket);
    if (rc != LLMQ_OK) {
        c->ticket = 0;
        return cli_fail (s->h, rc, "submit");
    }
    s->inflight++;
    return CLI_EXIT_OK;
}

/*  Wait for one answer to a chunk in flight and act on it. */
static int
s_collect (submitter_t *s)
{
    for (;;) {
        llmq_event *ev = NULL;
        int rc = llmq_next (s->h, s->cli->timeout_ms, &ev);
        if (rc != LLMQ_OK) {
            cli_progress_end (&s->progress);
            return cli_fail (s->h, rc, "waiting for the broker to store the jobs");
        }
        chunk_t *c = NULL;
        for (size_t i = 0; i < BATCH_WINDOW && ev->ticket; i++) {
            if (s->chunks[i].ticket == ev->ticket) {
                c = &s->chunks[i];
            }
        }
        if (!c) {               /* a push we did not ask for: ignore it */
            llmq_event_free (&ev);
            continue;
        }
        s->inflight--;
        c->ticket = 0;
        int exit_code = CLI_EXIT_OK;
        if (ev->type == LLMQ_EV_ACCEPTED) {
            s->accepted += c->njobs;
            cli_progress_update (&s->progress, s->accepted, s->total);
            s_chunk_reset (c);
        }
        else
        if (ev->retry_after_ms > 0 && c->retries < BATCH_RETRIES) {
            /* Busy or restarting broker: the same chunk again, later. */
            c->retries++;
            cli_sleep_ms (ev->retry_after_ms > 10000 ? 10000 : (long) ev->retry_after_ms);
            exit_code = s_send_chunk (s, c);
        }
        else {
            cli_progress_end (&s->progress);
            exit_code = s_refused (s, c, ev);
        }
        llmq_event_free (&ev);
        return exit_code;
    }
}

/*  A free chunk, waiting for one if all are in flight. */
static int
s_free_chunk (submitter_t *s, chunk_t **out)
{
    for (;;) {
        for (size_t i = 0; i < BATCH_WINDOW; i++) {
            if (s->chunks[i].ticket == 0) {
                *out = &s->chunks[i];
                return CLI_EXIT_OK;
            }
        }
        int rc = s_collect (s);
        if (rc != CLI_EXIT_OK) {
            return rc;
        }
    }
}

/*  Pass 2: read the file again and send it chunk by chunk. */
static int
s_submit_file (submitter_t *s, FILE *file, const char *model)
{
    char *line = NULL;
    size_t alloc = 0;
    ssize_t len;
    long lineno = 0;
    char why[512];
    chunk_t *c = NULL;
    int rc = s_free_chunk (s, &c);
    while (rc == CLI_EXIT_OK && (len = getline (&line, &alloc, file)) >= 0) {
        lineno++;
        cli_batch_line_t *item = &c->items[c->njobs];
        int parsed = cli_batch_line_parse (line, (size_t) len, model, item, why, sizeof (why));
        if (parsed == 1) {
            continue;
        }
        if (parsed < 0) {       /* the file changed since the first pass */
            fprintf (stderr, "%s:%ld: %s\n", s->name, lineno, why);
            rc = CLI_EXIT_USAGE;
            break;
        }
        size_t keylen = strlen (s->batch_id) + strlen (item->custom_id) + 2;
        char *key = malloc (keylen);
        if (!key) {
            cli_batch_line_clear (item);
            cli_error ("out of memory");
            rc = CLI_EXIT_FAILED;
            break;
        }
        snprintf (key, keylen, "%s:%s", s->batch_id, item->custom_id);
        c->keys[c->njobs] = key;
        c->lines[c->njobs] = lineno;
        c->jobs[c->njobs] = (llmq_job) {
            .model = item->model,
            .body = item->body,
            .priority = s->priority,
            .idempotency_key = key,
            .user = s->user,
            .org = s->org,
            .batch_id = s->batch_id,
            .custom_id = item->custom_id,
        };
        c->bytes += strlen (item->body);
        c->njobs++;
        if (c->njobs == s->chunk_jobs || c->bytes >= BATCH_CHUNK_BYTES) {
            rc = s_send_chunk (s, c);
            if (rc == CLI_EXIT_OK) {
                rc = s_free_chunk (s, &c);
            }
        }
    }
    free (line);
    if (rc == CLI_EXIT_OK && ferror (file)) {
        cli_error ("%s: read error", s->name);
        rc = CLI_EXIT_FAILED;
    }
    if (rc == CLI_EXIT_OK && c->njobs > 0) {
        rc = s_send_chunk (s, c);
    }
    while (rc == CLI_EXIT_OK && s->inflight > 0) {
        rc = s_collect (s);
    }
    cli_progress_end (&s->progress);
    return rc;
}

/* ----------------------------------------------------------------- counts */

/*  The batch's counts, from a FETCH that asks for no result (cursor past
    every job id). */
static int
s_fetch_counts (cli_t *cli, llmq *h, const char *batch_id, cli_counts_t *counts, char **raw)
{
    llmq_result **results = NULL;
    size_t n = 0;
    uint64_t next = 0;
    int more = 0;
    char *json = NULL;
    int rc = llmq_fetch (h, batch_id, UINT64_MAX, 1, &results, &n, &next, &more, &json, cli->timeout_ms);
    llmq_results_free (results, n);
    if (rc == LLMQ_ERR_NOT_FOUND) {
        cli_error ("batch %s not found", batch_id);
        return CLI_EXIT_FAILED;
    }
    if (rc != LLMQ_OK) {
        return cli_fail (h, rc, "batch counts");
    }
    if (cli_counts_parse (json, counts) != 0) {
        cli_error ("the broker's batch counts are not a JSON object: %s", json ? json : "(none)");
        llmq_free (json);
        return CLI_EXIT_FAILED;
    }
    if (raw) {
        *raw = json;
    }
    else {
        llmq_free (json);
    }
    return CLI_EXIT_OK;
}

static uint64_t
s_finished (const cli_counts_t *c)
{
    return c->done + c->failed + c->cancelled + c->expired + c->dead;
}

static void
s_print_counts (FILE *out, const char *batch_id, const cli_counts_t *c)
{
    fprintf (out, "batch %s: %llu jobs: %llu done, %llu failed, %llu cancelled, %llu expired,"
             " %llu dead, %llu pending\n", batch_id,
             (unsigned long long) c->total, (unsigned long long) c->done,
             (unsigned long long) c->failed, (unsigned long long) c->cancelled,
             (unsigned long long) c->expired, (unsigned long long) c->dead,
             (unsigned long long) (c->total > s_finished (c) ? c->total - s_finished (c) : 0));
}

/*  Poll the counts until every job has ended. */
static int
s_wait_batch (cli_t *cli, llmq *h, const char *batch_id)
{
    cli_progress_t progress;
    cli_progress_init (&progress, "running   ");
    uint64_t start = cli_now_ms ();
    cli_counts_t counts;
    for (;;) {
        int rc = s_fetch_counts (cli, h, batch_id, &counts, NULL);
        if (rc != CLI_EXIT_OK) {
            cli_progress_end (&progress);
            return rc;
        }
        cli_progress_update (&progress, s_finished (&counts), counts.total);
        if (counts.total > 0 && s_finished (&counts) >= counts.total) {
            break;
        }
        if (cli->timeout_given && cli_now_ms () - start >= (uint64_t) cli->timeout_ms) {
            cli_progress_end (&progress);
            s_print_counts (stderr, batch_id, &counts);
            cli_error ("batch %s has not finished after %d ms", batch_id, cli->timeout_ms);
            return CLI_EXIT_UNREACHABLE;
        }
        cli_sleep_ms (1000);
    }
    cli_progress_end (&progress);
    s_print_counts (stderr, batch_id, &counts);
    return counts.done == counts.total ? CLI_EXIT_OK : CLI_EXIT_FAILED;
}

/* ----------------------------------------------------------------- submit */

static int
s_cmd_submit (cli_t *cli, int argc, char **argv)
{
    enum { OPT_USER = 0x2001, OPT_ORG, OPT_CHUNK };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "batch-id", required_argument, NULL, 'b' },
        { "priority", required_argument, NULL, 'p' },
        { "model",    required_argument, NULL, 'm' },
        { "wait",     no_argument,       NULL, 'w' },
        { "user",     required_argument, NULL, OPT_USER },
        { "org",      required_argument, NULL, OPT_ORG },
        { "chunk",    required_argument, NULL, OPT_CHUNK },
        { NULL, 0, NULL, 0 }
    };
    const char *batch_id = NULL, *model = NULL, *user = NULL, *org = NULL;
    int priority = LLMQ_PRIO_LOW, wait = 0;
    unsigned long chunk_jobs = BATCH_CHUNK_JOBS;
    int opt;
    while ((opt = getopt_long (argc, argv, ":hb:p:m:w", options, NULL)) != -1) {
        switch (opt) {
            case 'h':
                fputs (s_submit_usage, stdout);
                return CLI_EXIT_OK;
            case 'b':
                batch_id = optarg;
                break;
            case 'p':
                priority = llmq_priority_parse (optarg);
                if (priority < 0) {
                    return cli_usage_error (cli, "--priority: '%s' is not urgent, high, normal or low", optarg);
                }
                break;
            case 'm':
                model = optarg;
                break;
            case 'w':
                wait = 1;
                break;
            case OPT_USER:
                user = optarg;
                break;
            case OPT_ORG:
                org = optarg;
                break;
            case OPT_CHUNK:
                if (cli_parse_uint (optarg, 100000, &chunk_jobs) != 0) {
                    return cli_usage_error (cli, "--chunk: '%s' is not a number from 1 to 100000", optarg);
                }
                break;
            default: {
                int rc = cli_option (cli, opt, optarg, argv);
                if (rc >= 0) {
                    return rc;
                }
            }
        }
    }
    if (optind >= argc) {
        return cli_usage_error (cli, "missing FILE");
    }
    if (argc - optind > 1) {
        return cli_usage_error (cli, "expected one FILE, got %d arguments", argc - optind);
    }
    if (batch_id && (!*batch_id || strchr (batch_id, ':'))) {
        return cli_usage_error (cli, "--batch-id must be non-empty and without ':'");
    }
    if (model && !*model) {
        return cli_usage_error (cli, "--model must not be empty");
    }
    const char *path = argv[optind];
    const char *name = strcmp (path, "-") == 0 ? "<stdin>" : path;
    char generated[40];
    if (!batch_id) {
        uint8_t random[8];
        if (getrandom (random, sizeof (random), 0) != (ssize_t) sizeof (random)) {
            cli_error ("cannot get random bytes for a batch id: %s", strerror (errno));
            return CLI_EXIT_FAILED;
        }
        int off = snprintf (generated, sizeof (generated), "batch_");
        for (size_t i = 0; i < sizeof (random); i++) {
            off += snprintf (generated + off, sizeof (generated) - (size_t) off, "%02x", random[i]);
        }
        batch_id = generated;
    }

    FILE *file = s_open_input (path);
    if (!file) {
        return CLI_EXIT_USAGE;
    }
    long total = s_check_file (file, name, model);
    if (total < 0) {
        fclose (file);
        return CLI_EXIT_USAGE;
    }
    rewind (file);

    submitter_t s = { 0 };
    s.cli = cli;
    s.name = name;
    s.batch_id = batch_id;
    s.priority = priority;
    s.user = user;
    s.org = org;
    s.chunk_jobs = chunk_jobs;
    s.total = (uint64_t) total;
    int rc = CLI_EXIT_OK;
    for (size_t i = 0; i < BATCH_WINDOW; i++) {
        if (s_chunk_alloc (&s.chunks[i], chunk_jobs) != 0) {
            cli_error ("out of memory");
            rc = CLI_EXIT_FAILED;
        }
    }
    if (rc == CLI_EXIT_OK) {
        rc = cli_connect (cli, &s.h);
    }
    if (rc == CLI_EXIT_OK) {
        /* Named before anything is sent: an interrupted run can be resumed
           with --batch-id. */
        fprintf (stderr, "llmq: batch %s: submitting %ld jobs\n", batch_id, total);
        cli_progress_init (&s.progress, "submitted ");
        rc = s_submit_file (&s, file, model);
        if (rc == CLI_EXIT_OK) {
            if (!s.progress.tty) {
                fprintf (stderr, "llmq: submitted %llu jobs to batch %s in %.1f s\n",
                         (unsigned long long) s.accepted, batch_id,
                         (double) (cli_now_ms () - s.progress.start_ms) / 1000.0);
            }
            printf ("%s\n", batch_id);
            fflush (stdout);
        }
        else
        if (s.accepted > 0 || s.inflight > 0) {
            cli_error ("%llu of %llu jobs were stored before this error; run the same command "
                       "with --batch-id %s to submit the rest (stored jobs are not duplicated)",
                       (unsigned long long) s.accepted, (unsigned long long) s.total, batch_id);
        }
    }
    if (rc == CLI_EXIT_OK && wait) {
        rc = s_wait_batch (cli, s.h, batch_id);
    }
    for (size_t i = 0; i < BATCH_WINDOW; i++) {
        s_chunk_free (&s.chunks[i]);
    }
    llmq_close (&s.h);
    fclose (file);
    return rc;
}

/* ----------------------------------------------------------------- status */

/*  The one ID argument (a batch id). */
static int
s_one_batch_id (cli_t *cli, int argc, char **argv, const char **id)
{
    if (optind >= argc) {
        return cli_usage_error (cli, "missing batch ID");
    }
    if (argc - optind > 1) {
        return cli_usage_error (cli, "expected one batch ID, got %d arguments", argc - optind);
    }
    if (!*argv[optind]) {
        return cli_usage_error (cli, "the batch ID is empty");
    }
    *id = argv[optind];
    return CLI_EXIT_OK;
}

static int
s_cmd_status (cli_t *cli, int argc, char **argv)
{
    int as_json = 0;
    int rc = cli_parse_json_only (cli, argc, argv, s_status_usage, &as_json);
    if (rc >= 0) {
        return rc;
    }
    const char *batch_id;
    rc = s_one_batch_id (cli, argc, argv, &batch_id);
    if (rc) {
        return rc;
    }
    llmq *h = NULL;
    rc = cli_connect (cli, &h);
    if (rc) {
        return rc;
    }
    cli_counts_t counts;
    char *raw = NULL;
    rc = s_fetch_counts (cli, h, batch_id, &counts, &raw);
    if (rc == CLI_EXIT_OK) {
        if (as_json) {
            puts (raw);
        }
        else {
            s_print_counts (stdout, batch_id, &counts);
        }
    }
    llmq_free (raw);
    llmq_close (&h);
    return rc;
}

/* ---------------------------------------------------------------- results */

static int
s_cmd_results (cli_t *cli, int argc, char **argv)
{
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "output", required_argument, NULL, 'o' },
        { NULL, 0, NULL, 0 }
    };
    const char *output = NULL;
    int opt;
    while ((opt = getopt_long (argc, argv, ":ho:", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (s_results_usage, stdout);
            return CLI_EXIT_OK;
        }
        if (opt == 'o') {
            output = optarg;
            continue;
        }
        int rc = cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    const char *batch_id;
    int rc = s_one_batch_id (cli, argc, argv, &batch_id);
    if (rc) {
        return rc;
    }
    llmq *h = NULL;
    rc = cli_connect (cli, &h);
    if (rc) {
        return rc;
    }
    FILE *out = stdout;
    if (output && strcmp (output, "-") != 0) {
        out = fopen (output, "w");
        if (!out) {
            cli_error ("%s: %s", output, strerror (errno));
            llmq_close (&h);
            return CLI_EXIT_FAILED;
        }
    }
    cli_progress_t progress;
    cli_progress_init (&progress, "fetched   ");
    cli_counts_t counts = { 0 };
    uint64_t after = 0, written = 0;
    int exit_code = CLI_EXIT_OK;
    for (;;) {
        llmq_result **results = NULL;
        size_t n = 0;
        uint64_t next = 0;
        int more = 0;
        char *json = NULL;
        rc = llmq_fetch (h, batch_id, after, BATCH_PAGE, &results, &n, &next, &more, &json,
                         cli->timeout_ms);
        if (rc != LLMQ_OK) {
            cli_progress_end (&progress);
            if (rc == LLMQ_ERR_NOT_FOUND) {
                cli_error ("batch %s not found", batch_id);
                exit_code = CLI_EXIT_FAILED;
            }
            else {
                exit_code = cli_fail (h, rc, "fetch");
            }
            break;
        }
        cli_counts_parse (json, &counts);
        llmq_free (json);
        for (size_t i = 0; i < n && exit_code == CLI_EXIT_OK; i++) {
            if (results[i]->state < LLMQ_STATE_DONE) {
                continue;       /* not finished: not an output line yet */
            }
            json_t *line = cli_batch_output_line (results[i]);
            if (!line || json_dumpf (line, out, JSON_COMPACT) != 0 || fputc ('\n', out) == EOF) {
                cli_error ("%s: cannot write: %s", output ? output : "stdout", strerror (errno));
                exit_code = CLI_EXIT_FAILED;
            }
            json_decref (line);
            written++;
        }
        llmq_results_free (results, n);
        if (exit_code != CLI_EXIT_OK) {
            break;
        }
        cli_progress_update (&progress, written, s_finished (&counts));
        /* Stop when the broker has nothing more finished, or (defensively)
           when the cursor does not move. */
        if (n == 0 || !more || next <= after) {
            break;
        }
        after = next;
    }
    cli_progress_end (&progress);
    if (out != stdout) {
        if (fclose (out) != 0 && exit_code == CLI_EXIT_OK) {
            cli_error ("%s: %s", output, strerror (errno));
            exit_code = CLI_EXIT_FAILED;
        }
    }
    else
    if (fflush (stdout) != 0 && exit_code == CLI_EXIT_OK) {
        cli_error ("stdout: %s", strerror (errno));
        exit_code = CLI_EXIT_FAILED;
    }
    if (exit_code == CLI_EXIT_OK && counts.total > s_finished (&counts)) {
        cli_error ("note: %llu of %llu jobs of batch %s have not finished: their lines are missing",
                   (unsigned long long) (counts.total - s_finished (&counts)),
                   (unsigned long long) counts.total, batch_id);
    }
    llmq_close (&h);
    return exit_code;
}

/* -------------------------------------------------------------- dispatch */

int
cmd_batch (cli_t *cli, int argc, char **argv)
{
    if (argc < 2 || strcmp (argv[1], "-h") == 0 || strcmp (argv[1], "--help") == 0) {
        fputs (s_batch_usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? CLI_EXIT_USAGE : CLI_EXIT_OK;
    }
    const char *sub = argv[1];
    if (strcmp (sub, "submit") == 0) {
        cli->command = "batch submit";
        return s_cmd_submit (cli, argc - 1, argv + 1);
    }
    if (strcmp (sub, "status") == 0) {
        cli->command = "batch status";
        return s_cmd_status (cli, argc - 1, argv + 1);
    }
    if (strcmp (sub, "results") == 0) {
        cli->command = "batch results";
        return s_cmd_results (cli, argc - 1, argv + 1);
    }
    cli_error ("unknown batch subcommand '%s'", sub);
    fputs ("Try 'llmq batch --help'.\n", stderr);
    return CLI_EXIT_USAGE;
}
