/*  cli_submit.c -- `llmq submit`, `llmq status`, `llmq cancel`, `llmq stats`. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

/* ------------------------------------------------------------------ submit */

static const char s_submit_usage[] =
    "Usage: llmq submit [OPTIONS] [PROMPT...]\n"
    "\n"
    "Submit one chat-completion job. PROMPT (the remaining arguments, joined by\n"
    "spaces; '-' reads it from stdin) becomes one user message. Prints the job\n"
    "id, or with --wait / --stream the assistant's answer.\n"
    "\n"
    "Options:\n"
    "  -m, --model M             model group (default: $LLMQ_MODEL)\n"
    "  -p, --priority P          urgent, high, normal or low (default urgent)\n"
    "  -s, --stream              stream the answer to stdout as it is generated\n"
    "      --restartable         --stream, and if the stream breaks midway, run the\n"
    "                            job again instead of failing it (the whole answer\n"
    "                            is then printed at the end)\n"
    "  -w, --wait                wait for the job and print its answer\n"
    "  -k, --idempotency-key K   submitting K again returns the same job\n"
    "      --user U              tenant user\n"
    "      --org O               tenant org\n"
    "  -d, --deadline DUR        the job must start within DUR, or it expires\n"
    "      --max-tokens N        body.max_tokens\n"
    "      --max-attempts N      attempts before the job is dead-lettered\n"
    "      --cache TTL           answer from the broker's response cache if the same\n"
    "                            request was answered within TTL (e.g. 10m), else\n"
    "                            cache this answer for TTL\n"
    "      --no-cache            never answer from or store in the cache (even at\n"
    "                            temperature 0 with auto caching on)\n"
    "      --messages JSON       the messages array (instead of PROMPT), or a whole\n"
    "                            request body object with \"messages\"\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 ok, 1 job failed, 2 usage error, 3 broker unreachable or timeout.\n";

/*  Read all of stdin; NULL on error. */
static char *
s_read_stdin (void)
{
    size_t size = 0, alloc = 4096;
    char *text = malloc (alloc);
    while (text) {
        size_t n = fread (text + size, 1, alloc - size - 1, stdin);
        size += n;
        if (n == 0) {
            break;
        }
        if (alloc - size - 1 == 0) {
            alloc *= 2;
            char *bigger = realloc (text, alloc);
            if (!bigger) {
                free (text);
                return NULL;
            }
            text = bigger;
        }
    }
    if (text) {
        text[size] = '\0';
        /* A prompt piped in usually ends with a newline nobody meant. */
        while (size > 0 && (text[size - 1] == '\n' || text[size - 1] == '\r')) {
            text[--size] = '\0';
        }
    }
    return text;
}

/*  Build the request body from --messages or the prompt; NULL (after a
    usage message) if invalid. */
static char *
s_build_body (cli_t *cli, const char *messages, const char *prompt, unsigned long max_tokens)
{
    json_t *body = NULL;
    char why[256];
    if (messages) {
        json_error_t jerr;
        json_t *parsed = json_loads (messages, JSON_REJECT_DUPLICATES, &jerr);
        if (!parsed) {
            cli_usage_error (cli, "--messages is not valid JSON: %s (column %d)", jerr.text, jerr.column);
            return NULL;
        }
        if (json_is_array (parsed)) {
            body = json_pack ("{s:o}", "messages", parsed);
        }
        else
        if (json_is_object (parsed)) {
            body = parsed;
        }
        else {
            json_decref (parsed);
            cli_usage_error (cli, "--messages must be an array of messages or a request object");
            return NULL;
        }
    }
    else {
        body = json_pack ("{s:[{s:s, s:s}]}", "messages", "role", "user", "content", prompt);
        if (!body) {
            cli_usage_error (cli, "the prompt is not valid UTF-8");
            return NULL;
        }
    }
    if (!body) {
        cli_error ("out of memory");
        return NULL;
    }
    if (cli_check_messages (json_object_get (body, "messages"), why, sizeof (why)) != 0) {
        json_decref (body);
        cli_usage_error (cli, "--messages: %s", why);
        return NULL;
    }
    if (max_tokens) {
        json_object_set_new (body, "max_tokens", json_integer ((json_int_t) max_tokens));
    }
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    if (!text) {
        cli_error ("out of memory");
    }
    return text;
}

/*  What to print for a done job: its text, or its tool calls (JSON) when
    the model answered with those only. */
static const char *
s_answer (const llmq_result *r)
{
    if ((!r->content || !*r->content) && r->tool_calls) {
        return r->tool_calls;
    }
    return r->content ? r->content : "";
}

/*  Say why a job did not end done; returns the exit code. */
static int
s_report_unfinished (const llmq_result *r)
{
    const char *err = r->error && *r->error ? r->error : "no reason given";
    switch (r->state) {
        case LLMQ_STATE_CANCELLED:
            cli_error ("job %llu was cancelled", (unsigned long long) r->id);
            break;
        case LLMQ_STATE_EXPIRED:
            cli_error ("job %llu expired: its deadline passed before it started", (unsigned long long) r->id);
            break;
        case LLMQ_STATE_DEAD:
            cli_error ("job %llu failed after %u attempts (dead-lettered): %s",
                       (unsigned long long) r->id, r->attempts, err);
            break;
        default:
            if (r->http_status) {
                cli_error ("job %llu failed: %s (HTTP %d)", (unsigned long long) r->id, err, r->http_status);
            }
            else {
                cli_error ("job %llu %s: %s", (unsigned long long) r->id, llmq_state_name (r->state), err);
            }
            break;
    }
    return CLI_EXIT_FAILED;
}

typedef struct {
    int  printed;               /* chunks were written */
    char last;                  /* last character written */
    unsigned next_seq;          /* the chunk expected next */
    int  broken;                /* chunks were missed or came again (a
                                   reconnect, a retried attempt) */
} stream_out_t;

static int
s_on_chunk (void *arg, uint64_t id, unsigned seq, const char *text)
{
    stream_out_t *out = arg;
    if (!text) {
        out->broken = 1;        /* RESET: the answer starts over */
        out->next_seq = 0;
        return 0;
    }
    if (seq != out->next_seq) {
        out->broken = 1;
    }
    out->next_seq = seq + 1;
    if (out->broken) {
        return 0;               /* the whole answer is printed at the end */
    }
    size_t len = strlen (text);
    if (len > 0) {
        fwrite (text, 1, len, stdout);
        fflush (stdout);
        out->printed = 1;
        out->last = text[len - 1];
    }
    return 0;
}

int
cmd_submit (cli_t *cli, int argc, char **argv)
{
    enum { OPT_USER = 0x2001, OPT_ORG, OPT_MAX_TOKENS, OPT_MAX_ATTEMPTS, OPT_MESSAGES, OPT_RESTARTABLE,
           OPT_CACHE, OPT_NO_CACHE };
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { "model",           required_argument, NULL, 'm' },
        { "priority",        required_argument, NULL, 'p' },
        { "stream",          no_argument,       NULL, 's' },
        { "wait",            no_argument,       NULL, 'w' },
        { "idempotency-key", required_argument, NULL, 'k' },
        { "user",            required_argument, NULL, OPT_USER },
        { "org",             required_argument, NULL, OPT_ORG },
        { "deadline",        required_argument, NULL, 'd' },
        { "max-tokens",      required_argument, NULL, OPT_MAX_TOKENS },
        { "max-attempts",    required_argument, NULL, OPT_MAX_ATTEMPTS },
        { "messages",        required_argument, NULL, OPT_MESSAGES },
        { "restartable",     no_argument,       NULL, OPT_RESTARTABLE },
        { "cache",           required_argument, NULL, OPT_CACHE },
        { "no-cache",        no_argument,       NULL, OPT_NO_CACHE },
        { NULL, 0, NULL, 0 }
    };
    llmq_job job = { 0 };
    job.model = getenv ("LLMQ_MODEL");
    int wait = 0;
    const char *messages = NULL;
    unsigned long max_tokens = 0;
    int opt;
    while ((opt = getopt_long (argc, argv, ":hm:p:swk:d:", options, NULL)) != -1) {
        unsigned long n;
        switch (opt) {
            case 'h':
                fputs (s_submit_usage, stdout);
                return CLI_EXIT_OK;
            case 'm':
                job.model = optarg;
                break;
            case 'p':
                job.priority = llmq_priority_parse (optarg);
                if (job.priority < 0) {
                    return cli_usage_error (cli, "--priority: '%s' is not urgent, high, normal or low", optarg);
                }
                break;
            case 's':
                if (!job.stream) {
                    job.stream = 1;
                }
                break;
            case OPT_RESTARTABLE:
                job.stream = LLMQ_STREAM_RESTART;
                break;
            case 'w':
                wait = 1;
                break;
            case 'k':
                job.idempotency_key = optarg;
                break;
            case OPT_USER:
                job.user = optarg;
                break;
            case OPT_ORG:
                job.org = optarg;
                break;
            case 'd':
                if (cli_parse_duration_ms (optarg, &job.deadline_ms) != 0 || job.deadline_ms == 0) {
                    return cli_usage_error (cli, "--deadline: '%s' is not a duration (e.g. 30s, 5m)", optarg);
                }
                break;
            case OPT_MAX_TOKENS:
                if (cli_parse_uint (optarg, 10000000, &max_tokens) != 0) {
                    return cli_usage_error (cli, "--max-tokens: '%s' is not a positive number", optarg);
                }
                break;
            case OPT_MAX_ATTEMPTS:
                if (cli_parse_uint (optarg, 1000, &n) != 0) {
                    return cli_usage_error (cli, "--max-attempts: '%s' is not a number from 1 to 1000", optarg);
                }
                job.max_attempts = (unsigned) n;
                break;
            case OPT_MESSAGES:
                messages = optarg;
                break;
            case OPT_CACHE:
                if (cli_parse_duration_ms (optarg, &job.cache_ttl_ms) != 0 || job.cache_ttl_ms == 0) {
                    return cli_usage_error (cli, "--cache: '%s' is not a duration (e.g. 10m, 1h)", optarg);
                }
                break;
            case OPT_NO_CACHE:
                job.cache_ttl_ms = -1;
                break;
            default: {
                int rc = cli_option (cli, opt, optarg, argv);
                if (rc >= 0) {
                    return rc;
                }
            }
        }
    }
    if (!job.model || !*job.model) {
        return cli_usage_error (cli, "no model: pass --model or set LLMQ_MODEL");
    }
    if (messages && optind < argc) {
        return cli_usage_error (cli, "give either --messages or a PROMPT, not both");
    }
    if (!messages && optind >= argc) {
        return cli_usage_error (cli, "nothing to submit: give a PROMPT or --messages");
    }
    /* The prompt: the arguments joined by spaces, or stdin for "-". */
    char *prompt = NULL;
    if (!messages) {
        if (argc - optind == 1 && strcmp (argv[optind], "-") == 0) {
            prompt = s_read_stdin ();
        }
        else {
            size_t len = 1;
            for (int i = optind; i < argc; i++) {
                len += strlen (argv[i]) + 1;
            }
            prompt = calloc (1, len);
            for (int i = optind; prompt && i < argc; i++) {
                if (i > optind) {
                    strcat (prompt, " ");
                }
                strcat (prompt, argv[i]);
            }
        }
        if (!prompt) {
            cli_error ("cannot read the prompt");
            return CLI_EXIT_FAILED;
        }
        if (!*prompt) {
            free (prompt);
            return cli_usage_error (cli, "the prompt is empty");
        }
    }
    char *body = s_build_body (cli, messages, prompt, max_tokens);
    free (prompt);
    if (!body) {
        return CLI_EXIT_USAGE;
    }
    job.body = body;

    llmq *h = NULL;
    int rc = cli_connect (cli, &h);
    if (rc != CLI_EXIT_OK) {
        free (body);
        return rc;
    }
    uint64_t id = 0;
    llmq_result *res = NULL;
    int exit_code = CLI_EXIT_OK;
    if (job.stream) {
        stream_out_t out = { 0, 0, 0, 0 };
        rc = llmq_stream (h, &job, s_on_chunk, &out, &id, cli_wait_timeout (cli), &res);
        if (out.printed && out.last != '\n') {
            fputc ('\n', stdout);
        }
        if (rc != LLMQ_OK) {
            exit_code = cli_fail (h, rc, id ? "streaming the job" : "submit");
            if (id) {
                cli_error ("the job (id %llu) may still run: see 'llmq status %llu'",
                           (unsigned long long) id, (unsigned long long) id);
            }
        }
        else
        if (res && res->state != LLMQ_STATE_DONE) {
            exit_code = s_report_unfinished (res);
        }
        else
        if (res && out.broken && res->content) {
            cli_error ("the stream of job %llu was interrupted; its whole answer follows",
                       (unsigned long long) id);
            fputs (res->content, stdout);
            fputc ('\n', stdout);
        }
        else
        if (res && !out.printed && (res->content || res->tool_calls)) {
            /* The provider answered in one piece, or with tool calls only. */
            fputs (s_answer (res), stdout);
            fputc ('\n', stdout);
        }
    }
    else {
        rc = llmq_submit (h, &job, &id, cli->timeout_ms);
        if (rc != LLMQ_OK) {
            exit_code = cli_fail (h, rc, "submit");
        }
        else
        if (!wait) {
            printf ("%llu\n", (unsigned long long) id);
        }
        else {
            rc = llmq_wait (h, id, cli_wait_timeout (cli), &res);
            if (rc == LLMQ_ERR_TIMEOUT) {
                cli_error ("job %llu has not ended after %d ms: see 'llmq status %llu'",
                           (unsigned long long) id, cli->timeout_ms, (unsigned long long) id);
                exit_code = CLI_EXIT_UNREACHABLE;
            }
            else
            if (rc != LLMQ_OK) {
                exit_code = cli_fail (h, rc, "wait");
            }
            else
            if (res->state != LLMQ_STATE_DONE) {
                exit_code = s_report_unfinished (res);
            }
            else {
                fputs (s_answer (res), stdout);
                fputc ('\n', stdout);
            }
        }
    }
    llmq_result_free (&res);
    llmq_close (&h);
    free (body);
    return exit_code;
}

/* ------------------------------------------------------------------ status */

static const char s_status_usage[] =
    "Usage: llmq status [--json] ID\n"
    "\n"
    "Show a job's state and, once it has ended, its result.\n"
    "\n"
    "Options:\n"
    "      --json    print the result as one JSON object\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 the job exists (whatever its state), 1 not found,\n"
    "2 usage error, 3 broker unreachable or timeout.\n";

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
    strftime (date, sizeof (date), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf (buf, len, "%s.%03uZ", date, (unsigned) (us / 1000u % 1000u));
    return buf;
}

static void
s_print_result (const llmq_result *r)
{
    char t1[48], t2[48], t3[48];
    printf ("id:           %llu\n", (unsigned long long) r->id);
    printf ("state:        %s\n", llmq_state_name (r->state));
    printf ("model:        %s\n", r->model ? r->model : "-");
    printf ("priority:     %s\n", llmq_priority_name (r->priority));
    if (r->batch_id) {
        printf ("batch:        %s (custom_id %s)\n", r->batch_id, r->custom_id ? r->custom_id : "-");
    }
    printf ("attempts:     %u\n", r->attempts);
    printf ("enqueued:     %s\n", s_time (r->enqueued_us, t1, sizeof (t1)));
    printf ("started:      %s\n", s_time (r->started_us, t2, sizeof (t2)));
    printf ("finished:     %s\n", s_time (r->finished_us, t3, sizeof (t3)));
    if (r->started_us >= r->enqueued_us && r->enqueued_us) {
        printf ("queue wait:   %.3f s\n", (double) (r->started_us - r->enqueued_us) / 1e6);
    }
    if (r->latency_us) {
        printf ("latency:      %.3f s\n", (double) r->latency_us / 1e6);
    }
    if (r->deployment) {
        printf ("deployment:   %s%s\n", r->deployment, r->degraded ? " (degraded: the fallback group served it)" : "");
    }
    if (r->cached) {
        printf ("cached:       yes (answered from the response cache, no provider call)\n");
    }
    if (r->request_id) {
        printf ("request id:   %s\n", r->request_id);
    }
    if (r->prompt_tokens || r->completion_tokens) {
        printf ("tokens:       %u prompt, %u completion\n", r->prompt_tokens, r->completion_tokens);
    }
    if (r->http_status) {
        printf ("http status:  %d\n", r->http_status);
    }
    if (r->finish_reason) {
        printf ("finish:       %s\n", r->finish_reason);
    }
    if (r->error && *r->error) {
        printf ("error:        %s\n", r->error);
    }
    if (r->content && *r->content) {
        printf ("content:\n%s\n", r->content);
    }
    else
    if (r->tool_calls) {
        printf ("tool calls:\n%s\n", r->tool_calls);
    }
    else
    if (r->content) {
        printf ("content:\n\n");
    }
}

/*  Parse the one ID argument. Returns 0 or the usage exit code. */
static int
s_one_id (cli_t *cli, int argc, char **argv, uint64_t *id)
{
    if (optind >= argc) {
        return cli_usage_error (cli, "missing job ID");
    }
    if (argc - optind > 1) {
        return cli_usage_error (cli, "expected one job ID, got %d arguments", argc - optind);
    }
    if (cli_parse_id (argv[optind], id) != 0) {
        return cli_usage_error (cli, "'%s' is not a job id (a positive number)", argv[optind]);
    }
    return 0;
}

int
cmd_status (cli_t *cli, int argc, char **argv)
{
    int as_json = 0;
    int rc = cli_parse_json_only (cli, argc, argv, s_status_usage, &as_json);
    if (rc >= 0) {
        return rc;
    }
    uint64_t id;
    rc = s_one_id (cli, argc, argv, &id);
    if (rc) {
        return rc;
    }
    llmq *h = NULL;
    rc = cli_connect (cli, &h);
    if (rc) {
        return rc;
    }
    llmq_result *res = NULL;
    rc = llmq_status (h, id, cli->timeout_ms, &res);
    int exit_code = CLI_EXIT_OK;
    if (rc == LLMQ_ERR_NOT_FOUND) {
        cli_error ("job %llu not found (or its result expired)", (unsigned long long) id);
        exit_code = CLI_EXIT_FAILED;
    }
    else
    if (rc != LLMQ_OK) {
        exit_code = cli_fail (h, rc, "status");
    }
    else
    if (as_json) {
        json_t *obj = cli_result_json (res);
        if (obj) {
            json_dumpf (obj, stdout, JSON_INDENT (2));
            fputc ('\n', stdout);
            json_decref (obj);
        }
        else {
            cli_error ("out of memory");
            exit_code = CLI_EXIT_FAILED;
        }
    }
    else {
        s_print_result (res);
    }
    llmq_result_free (&res);
    llmq_close (&h);
    return exit_code;
}

/* ------------------------------------------------------------------ cancel */

static const char s_cancel_usage[] =
    "Usage: llmq cancel ID\n"
    "\n"
    "Cancel a job: a queued job is removed, a running one is aborted at its worker.\n"
    "\n"
    "Options:\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n"
    "\n"
    "Exit status: 0 cancelled, 1 not found or already ended, 2 usage error,\n"
    "3 broker unreachable or timeout.\n";

int
cmd_cancel (cli_t *cli, int argc, char **argv)
{
    static const struct option options[] = {
        CLI_GLOBAL_OPTIONS,
        { NULL, 0, NULL, 0 }
    };
    int opt;
    while ((opt = getopt_long (argc, argv, ":h", options, NULL)) != -1) {
        if (opt == 'h') {
            fputs (s_cancel_usage, stdout);
            return CLI_EXIT_OK;
        }
        int rc = cli_option (cli, opt, optarg, argv);
        if (rc >= 0) {
            return rc;
        }
    }
    uint64_t id;
    int rc = s_one_id (cli, argc, argv, &id);
    if (rc) {
        return rc;
    }
    llmq *h = NULL;
    rc = cli_connect (cli, &h);
    if (rc) {
        return rc;
    }
    rc = llmq_cancel (h, id, cli->timeout_ms);
    int exit_code = CLI_EXIT_OK;
    if (rc == LLMQ_OK) {
        printf ("cancelled %llu\n", (unsigned long long) id);
    }
    else
    if (rc == LLMQ_ERR_NOT_FOUND) {
        cli_error ("job %llu not found", (unsigned long long) id);
        exit_code = CLI_EXIT_FAILED;
    }
    else
    if (rc == LLMQ_ERR_STATE) {
        cli_error ("job %llu cannot be cancelled: %s", (unsigned long long) id, llmq_last_error (h));
        exit_code = CLI_EXIT_FAILED;
    }
    else {
        exit_code = cli_fail (h, rc, "cancel");
    }
    llmq_close (&h);
    return exit_code;
}

/* ------------------------------------------------------------------- stats */

static const char s_stats_usage[] =
    "Usage: llmq stats [--json]\n"
    "\n"
    "Show the broker's statistics: queue depth per priority and route, jobs in\n"
    "flight, workers and their slots.\n"
    "\n"
    "Options:\n"
    "      --json    print the broker's JSON document as it is\n"
    "      --broker ENDPOINT, --timeout DUR, -h, --help   as for 'llmq'\n";

static void s_print_tree (const json_t *value, int depth);

static void
s_print_scalar (const json_t *v)
{
    switch (json_typeof (v)) {
        case JSON_STRING:  fputs (json_string_value (v), stdout); break;
        case JSON_INTEGER: printf ("%" JSON_INTEGER_FORMAT, json_integer_value (v)); break;
        case JSON_REAL:    printf ("%g", json_real_value (v)); break;
        case JSON_TRUE:    fputs ("true", stdout); break;
        case JSON_FALSE:   fputs ("false", stdout); break;
        case JSON_NULL:    fputs ("-", stdout); break;
        default:           break;
    }
}

static int
s_is_scalar (const json_t *v)
{
    return !json_is_object (v) && !json_is_array (v);
}

/*  An array of scalars prints on one line; anything else as a tree. */
static int
s_is_flat_array (const json_t *v)
{
    if (!json_is_array (v)) {
        return 0;
    }
    size_t i;
    const json_t *item;
    json_array_foreach (v, i, item) {
        if (!s_is_scalar (item)) {
            return 0;
        }
    }
    return 1;
}

static void
s_print_inline (const json_t *v)
{
    if (s_is_scalar (v)) {
        s_print_scalar (v);
        return;
    }
    size_t i;
    const json_t *item;
    json_array_foreach (v, i, item) {
        if (i > 0) {
            fputs (", ", stdout);
        }
        s_print_scalar (item);
    }
}

/*  An object's pairs, one per line, at `indent` spaces. As an item of an
    array (`dash`), its first key takes a "- " and the others line up
    with it, as YAML writes it. */
static void
s_print_object (const json_t *obj, int indent, int dash)
{
    int first = 1;
    int key_indent = dash ? indent + 2 : indent;
    const char *key;
    const json_t *v;
    json_object_foreach ((json_t *) obj, key, v) {
        if (dash && first) {
            printf ("%*s- %s:", indent, "", key);
        }
        else {
            printf ("%*s%s:", key_indent, "", key);
        }
        first = 0;
        if (s_is_scalar (v) || s_is_flat_array (v)) {
            fputc (' ', stdout);
            s_print_inline (v);
            fputc ('\n', stdout);
        }
        else {
            fputc ('\n', stdout);
            s_print_tree (v, key_indent + 2);
        }
    }
    if (dash && first) {
        printf ("%*s- {}\n", indent, "");
    }
}

static void
s_print_tree (const json_t *value, int indent)
{
    if (json_is_object (value)) {
        s_print_object (value, indent, 0);
    }
    else
    if (json_is_array (value)) {
        size_t i;
        const json_t *v;
        json_array_foreach (value, i, v) {
            if (s_is_scalar (v) || s_is_flat_array (v)) {
                printf ("%*s- ", indent, "");
                s_print_inline (v);
                fputc ('\n', stdout);
            }
            else
            if (json_is_object (v)) {
                s_print_object (v, indent, 1);
            }
            else {
                printf ("%*s-\n", indent, "");
                s_print_tree (v, indent + 2);
            }
        }
    }
    else {
        printf ("%*s", indent, "");
        s_print_scalar (value);
        fputc ('\n', stdout);
    }
}

int
cmd_stats (cli_t *cli, int argc, char **argv)
{
    int as_json = 0;
    int rc = cli_parse_json_only (cli, argc, argv, s_stats_usage, &as_json);
    if (rc >= 0) {
        return rc;
    }
    if (optind < argc) {
        return cli_usage_error (cli, "unexpected argument '%s'", argv[optind]);
    }
    llmq *h = NULL;
    rc = cli_connect (cli, &h);
    if (rc) {
        return rc;
    }
    char *text = NULL;
    rc = llmq_stats (h, &text, cli->timeout_ms);
    int exit_code = CLI_EXIT_OK;
    if (rc != LLMQ_OK) {
        exit_code = cli_fail (h, rc, "stats");
    }
    else
    if (as_json) {
        puts (text);
    }
    else {
        json_t *root = json_loads (text, JSON_DECODE_ANY, NULL);
        if (root) {
            s_print_tree (root, 0);
            json_decref (root);
        }
        else {
            puts (text);    /* not JSON after all: show it as it came */
        }
    }
    llmq_free (text);
    llmq_close (&h);
    return exit_code;
}
