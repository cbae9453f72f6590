/*  llmq_bench.c -- llmq-bench: load generator and latency meter for llmq.

        llmq-bench llmq   --broker EP --model GROUP -n N -c C [options]
        llmq-bench direct --url URL -n N -c C [options]

    `llmq` runs N chat jobs through a broker, `direct` posts the same N
    requests straight to a provider URL (the baseline); both keep at most C
    outstanding, or with --rate offer R jobs/s on a fixed schedule (open
    loop), and both stop after N jobs or --duration-max seconds. The
    report: jobs ok and failed, wall time, jobs/s, latency percentiles.

    This file: command line, threads, report. The modes are
    bench_llmq.c and bench_direct.c, shared helpers bench_util.c;
    docs/benchmarks.md has the method.

    Exit: 0 if every job ended ok, 1 if some did not (or the run could not
    start), 2 for a bad command line.
*/
#include "bench.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <llmq.h>

#define S_MAX_JOBS  50000000ULL     //  -n; 8 bytes of latency each
#define S_MAX_CONC  100000          //  -c
#define S_MAX_SIZE  (16u << 20)     //  --size

static void
s_usage (FILE *out, const char *mode)
{
    if (!mode) {
        fprintf (out,
            "usage: llmq-bench MODE [options]\n"
            "Measures llmq's throughput and latency.\n"
            "\n"
            "Modes:\n"
            "  llmq      jobs through an llmq broker (pipelined client API)\n"
            "  direct    the same requests straight to a provider URL (libcurl):\n"
            "            the baseline that shows what the queue adds\n"
            "\n"
            "'llmq-bench MODE --help' lists a mode's options.\n");
        return;
    }
    bool is_llmq = strcmp (mode, "llmq") == 0;
    fprintf (out, "usage: llmq-bench %s %s [options]\n", mode,
             is_llmq ? "[--broker EP] [--model GROUP]" : "--url URL");
    if (is_llmq) {
        fprintf (out,
            "Runs chat jobs through an llmq broker and measures submit -> result.\n"
            "  --broker EP          broker client endpoint (default tcp://127.0.0.1:5555)\n"
            "  --model GROUP        model group to submit to (default echo)\n");
    }
    else {
        fprintf (out,
            "Posts chat requests straight to an OpenAI-compatible URL with libcurl\n"
            "(keep-alive, one connection per concurrent request).\n"
            "  --url URL            chat-completions URL, e.g.\n"
            "                       http://127.0.0.1:8089/v1/chat/completions (required)\n"
            "  --model NAME         \"model\" in the request body (default mock)\n");
    }
    fprintf (out,
        "  -n, --jobs N         jobs to run (default 10000)\n"
        "  -c, --concurrency C  most jobs outstanding at once (default 64)\n"
        "  --size BYTES         request body size, about (default 1024)\n"
        "  --rate R             open loop: offer R jobs/s on a fixed schedule;\n"
        "                       -c still caps what is outstanding (default: closed loop)\n"
        "  --duration-max S     stop after S seconds whatever is left (default 120)\n");
    if (is_llmq) {
        fprintf (out,
            "  --stream N           stream every job, asking the mock for N chunks\n"
            "  --per-message K      most jobs per llmq_send() (default 64; 1 = one job\n"
            "                       per message)\n"
            "  --cache-ttl MS       jobs ask for the broker's response cache (cache_ttl_ms);\n"
            "                       each thread first runs one job, untimed, so that the\n"
            "                       timed jobs are all cache hits\n");
    }
    fprintf (out,
        "  --handles H          threads, each with its own %s, sharing -n, -c\n"
        "                       and --rate (default 1)\n"
        "  --timeout S          %s (default 10)\n"
        "  --json               print the report as one JSON line\n"
        "  -h, --help           show this and exit\n"
        "Exit status: 0 all jobs ok, 1 some were not, 2 bad command line.\n",
        is_llmq ? "handle" : "curl multi handle",
        is_llmq ? "connect timeout, seconds" : "per-request timeout, seconds");
}

//  Whole number in [lo, hi]; -1 with a message otherwise
static int
s_parse_u64 (const char *flag, const char *text, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long value = strtoull (text, &end, 10);
    if (errno || end == text || *end || text [0] == '-' || value < lo || value > hi) {
        fprintf (stderr, "llmq-bench: %s must be a whole number from %" PRIu64
                 " to %" PRIu64 ", not '%s'\n", flag, lo, hi, text);
        return -1;
    }
    *out = value;
    return 0;
}

//  Positive decimal number up to hi; -1 with a message otherwise
static int
s_parse_positive (const char *flag, const char *text, double hi, double *out)
{
    char *end = NULL;
    errno = 0;
    double value = strtod (text, &end);
    if (errno || end == text || *end || !isfinite (value) || value <= 0 || value > hi) {
        fprintf (stderr, "llmq-bench: %s must be a number above 0 and at most %g, "
                 "not '%s'\n", flag, hi, text);
        return -1;
    }
    *out = value;
    return 0;
}

//  A model name goes into JSON unescaped: keep it to name characters
static bool
s_valid_name (const char *name)
{
    size_t n = strlen (name);
    if (n == 0 || n > 256) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        char c = name [i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
               || strchr ("._-:/@+", c);
        if (!ok) {
            return false;
        }
    }
    return true;
}

//  0 to run, 1 after --help, 2 on a bad command line
static int
s_parse (bench_options_t *o, int argc, char *argv [])
{
    const char *mode = argv [1];
    bool is_llmq = strcmp (mode, "llmq") == 0;
    enum { O_BROKER = 256, O_MODEL, O_URL, O_SIZE, O_RATE, O_DURATION,
           O_PER_MESSAGE, O_HANDLES, O_TIMEOUT, O_JSON, O_STREAM, O_CACHE_TTL };
    static const struct option longs [] = {
        { "broker",       required_argument, NULL, O_BROKER },
        { "model",        required_argument, NULL, O_MODEL },
        { "url",          required_argument, NULL, O_URL },
        { "jobs",         required_argument, NULL, 'n' },
        { "concurrency",  required_argument, NULL, 'c' },
        { "size",         required_argument, NULL, O_SIZE },
        { "rate",         required_argument, NULL, O_RATE },
        { "duration-max", required_argument, NULL, O_DURATION },
        { "per-message",  required_argument, NULL, O_PER_MESSAGE },
        { "handles",      required_argument, NULL, O_HANDLES },
        { "timeout",      required_argument, NULL, O_TIMEOUT },
        { "json",         no_argument,       NULL, O_JSON },
        { "stream",       required_argument, NULL, O_STREAM },
        { "cache-ttl",    required_argument, NULL, O_CACHE_TTL },
        { "help",         no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    *o = (bench_options_t) {
        .mode = is_llmq ? BENCH_MODE_LLMQ : BENCH_MODE_DIRECT,
        .broker = "tcp://127.0.0.1:5555",
        .model = is_llmq ? "echo" : "mock",
        .jobs = 10000, .concurrency = 64, .size = 1024,
        .duration_max = 120, .per_message = 64, .handles = 1,
        .timeout_ms = 10000
    };
    //  getopt sees the mode's arguments only, and names problems as
    //  "llmq-bench MODE: ..."
    char name [32];
    snprintf (name, sizeof (name), "llmq-bench %s", is_llmq ? "llmq" : "direct");
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    char *mode_arg = argv [1];
    argv [1] = name;
    uint64_t value;
    double seconds;
    int rc = 0;
    int opt;
    optind = 1;
    while (rc == 0 && (opt = getopt_long (sub_argc, sub_argv, "n:c:h", longs, NULL)) != -1) {
        switch (opt) {
            case O_BROKER:
            case O_PER_MESSAGE:
                if (!is_llmq) {
                    fprintf (stderr, "llmq-bench: --%s is for llmq mode only\n",
                             opt == O_BROKER ? "broker" : "per-message");
                    rc = -1;
                    break;
                }
                if (opt == O_BROKER) {
                    o->broker = optarg;
                }
                else
                if (s_parse_u64 ("--per-message", optarg, 1, BENCH_MAX_PER_MESSAGE, &value) == 0) {
                    o->per_message = (unsigned) value;
                }
                else {
                    rc = -1;
                }
                break;
            case O_STREAM:
                if (!is_llmq || s_parse_u64 ("--stream", optarg, 1, 1000, &value) != 0) {
                    if (!is_llmq) {
                        fprintf (stderr, "llmq-bench: --stream is for llmq mode only\n");
                    }
                    rc = -1;
                    break;
                }
                o->stream_chunks = (unsigned) value;
                break;
            case O_CACHE_TTL:
                if (!is_llmq || s_parse_u64 ("--cache-ttl", optarg, 1, UINT64_C (365) * 86400000, &value) != 0) {
                    if (!is_llmq) {
                        fprintf (stderr, "llmq-bench: --cache-ttl is for llmq mode only\n");
                    }
                    rc = -1;
                    break;
                }
                o->cache_ttl_ms = value;
                break;
            case O_URL:
                if (is_llmq) {
                    fprintf (stderr, "llmq-bench: --url is for direct mode only\n");
                    rc = -1;
                }
                o->url = optarg;
                break;
            case O_MODEL:
                if (!s_valid_name (optarg)) {
                    fprintf (stderr, "llmq-bench: --model must be 1-256 letters, digits "
                             "or ._-:/@+, not '%s'\n", optarg);
                    rc = -1;
                }
                o->model = optarg;
                break;
            case 'n':
                rc = s_parse_u64 ("-n", optarg, 1, S_MAX_JOBS, &o->jobs);
                break;
            case 'c':
                rc = s_parse_u64 ("-c", optarg, 1, S_MAX_CONC, &value);
                o->concurrency = (unsigned) value;
                break;
            case O_SIZE:
                rc = s_parse_u64 ("--size", optarg, 1, S_MAX_SIZE, &value);
                o->size = (size_t) value;
                break;
            case O_RATE:
                rc = s_parse_positive ("--rate", optarg, 1e7, &o->rate);
                break;
            case O_DURATION:
                rc = s_parse_positive ("--duration-max", optarg, 86400, &o->duration_max);
                break;
            case O_HANDLES:
                rc = s_parse_u64 ("--handles", optarg, 1, BENCH_MAX_HANDLES, &value);
                o->handles = (unsigned) value;
                break;
            case O_TIMEOUT:
                rc = s_parse_positive ("--timeout", optarg, 86400, &seconds);
                o->timeout_ms = (int) ceil (seconds * 1000);
                break;
            case O_JSON:
                o->json = true;
                break;
            case 'h':
                argv [1] = mode_arg;
                s_usage (stdout, mode);
                return 1;
            default:            //  getopt has named the problem
                rc = -1;
                break;
        }
    }
    if (rc == 0 && optind < sub_argc) {
        fprintf (stderr, "llmq-bench: unexpected argument '%s'\n", sub_argv [optind]);
        rc = -1;
    }
    argv [1] = mode_arg;
    if (rc == 0 && !is_llmq && !o->url) {
        fprintf (stderr, "llmq-bench: direct mode needs --url\n");
        rc = -1;
    }
    if (rc == 0 && o->handles > o->concurrency) {
        fprintf (stderr, "llmq-bench: --handles (%u) cannot exceed -c (%u)\n",
                 o->handles, o->concurrency);
        rc = -1;
    }
    if (rc != 0) {
        fprintf (stderr, "Try 'llmq-bench %s --help'.\n", mode);
        return 2;
    }
    return 0;
}

static int
s_cmp_i64 (const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return (x > y) - (x < y);
}

//  Nearest-rank percentile of a sorted array, in ms
static double
s_percentile_ms (const int64_t *sorted, uint64_t n, double p)
{
    if (n == 0) {
        return 0;
    }
    uint64_t rank = (uint64_t) ceil (p / 100.0 * (double) n);
    if (rank < 1) {
        rank = 1;
    }
    return (double) sorted [rank - 1] / 1e6;
}

//  The summary of all threads
typedef struct {
    uint64_t ok, errors, sent, messages, stalls, unfinished, late, cached;
    double wall_s, jobs_per_s, p50, p90, p99, max;
    double lag_max_ms;
    bool kept_up;               //  --rate: sends stayed on schedule
    const char *fatal;          //  first thread's fatal error, or NULL
    const char *note;           //  first thread's note, or NULL
} s_summary_t;

static int
s_summarise (const bench_options_t *o, bench_run_t *runs, int64_t end_ns, s_summary_t *s)
{
    memset (s, 0, sizeof (*s));
    int64_t first = 0, last = 0;
    for (unsigned i = 0; i < o->handles; i++) {
        bench_run_t *r = &runs [i];
        s->ok += r->ok;
        s->errors += r->errors;
        s->cached += r->cached;
        s->sent += r->sent;
        s->messages += r->messages;
        s->stalls += r->stalls;
        s->late += r->late;
        if (r->first_send_ns && (!first || r->first_send_ns < first)) {
            first = r->first_send_ns;
        }
        if (r->last_done_ns > last) {
            last = r->last_done_ns;
        }
        if ((double) r->lag_max_ns / 1e6 > s->lag_max_ms) {
            s->lag_max_ms = (double) r->lag_max_ns / 1e6;
        }
        if (r->fatal [0] && !s->fatal) {
            s->fatal = r->fatal;
        }
        if (r->note [0] && !s->note) {
            s->note = r->note;
        }
    }
    s->unfinished = o->jobs - s->ok - s->errors;
    //  Wall time: first send to last result, or to the end if jobs were
    //  left unfinished (the run was cut by --duration-max)
    if (s->unfinished) {
        last = end_ns;
    }
    s->wall_s = first && last > first ? (double) (last - first) / 1e9 : 0;
    s->jobs_per_s = s->wall_s > 0 ? (double) s->ok / s->wall_s : 0;
    //  Behind schedule: over 1 % of the sends late, or jobs never sent.
    //  (One late send is a hiccup, seen in the max lag; many mean the
    //  system or -c could not take the rate.)
    s->kept_up = o->rate <= 0 || (s->late * 100 <= s->sent && s->sent == o->jobs);
    int64_t *all = malloc ((s->ok ? s->ok : 1) * sizeof (int64_t));
    if (!all) {
        return -1;
    }
    uint64_t k = 0;
    for (unsigned i = 0; i < o->handles; i++) {
        memcpy (all + k, runs [i].latency_ns, runs [i].ok * sizeof (int64_t));
        k += runs [i].ok;
    }
    qsort (all, k, sizeof (int64_t), s_cmp_i64);
    s->p50 = s_percentile_ms (all, k, 50);
    s->p90 = s_percentile_ms (all, k, 90);
    s->p99 = s_percentile_ms (all, k, 99);
    s->max = k ? (double) all [k - 1] / 1e6 : 0;
    free (all);
    return 0;
}

//  Text for a JSON string: our strings are names, URLs and error texts;
//  escape what JSON requires and drop other control characters
static void
s_json_string (FILE *out, const char *text)
{
    fputc ('"', out);
    for (const char *p = text ? text : ""; *p; p++) {
        if (*p == '"' || *p == '\\') {
            fprintf (out, "\\%c", *p);
        }
        else
        if ((unsigned char) *p >= 0x20) {
            fputc (*p, out);
        }
    }
    fputc ('"', out);
}

static void
s_report (const bench_options_t *o, const s_summary_t *s)
{
    bool is_llmq = o->mode == BENCH_MODE_LLMQ;
    if (o->json) {
        printf ("{\"mode\":\"%s\",\"target\":", is_llmq ? "llmq" : "direct");
        s_json_string (stdout, is_llmq ? o->broker : o->url);
        printf (",\"model\":");
        s_json_string (stdout, o->model);
        printf (",\"size\":%zu,\"concurrency\":%u,\"per_message\":%u,\"handles\":%u,"
                "\"rate\":%.1f,\"jobs\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64
                ",\"unfinished\":%" PRIu64 ",\"sent\":%" PRIu64 ",\"messages\":%" PRIu64
                ",\"stalls\":%" PRIu64 ",\"wall_s\":%.3f,\"jobs_per_s\":%.1f,"
                "\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
                "\"send_lag_max_ms\":%.3f,\"late\":%" PRIu64 ",\"kept_up\":%s,\"cached\":%" PRIu64
                ",\"error\":",
                o->size, o->concurrency, is_llmq ? o->per_message : 1, o->handles, o->rate,
                o->jobs, s->ok, s->errors, s->unfinished, s->sent,
                is_llmq ? s->messages : s->sent, s->stalls, s->wall_s, s->jobs_per_s,
                s->p50, s->p90, s->p99, s->max, s->lag_max_ms, s->late,
                s->kept_up ? "true" : "false", s->cached);
        if (s->fatal || s->note) {
            s_json_string (stdout, s->fatal ? s->fatal : s->note);
        }
        else {
            printf ("null");
        }
        printf ("}\n");
        return;
    }
    printf ("llmq-bench %s: %s, model %s, %" PRIu64 " jobs of %zu B, -c %u",
            is_llmq ? "llmq" : "direct", is_llmq ? o->broker : o->url, o->model,
            o->jobs, o->size, o->concurrency);
    if (is_llmq) {
        printf (", %u jobs/message", o->per_message);
    }
    printf (", %u handle%s", o->handles, o->handles == 1 ? "" : "s");
    if (o->rate > 0) {
        printf (", offered %.0f jobs/s\n", o->rate);
    }
    else {
        printf (", closed loop\n");
    }
    printf ("  jobs        %" PRIu64 " ok, %" PRIu64 " errors, %" PRIu64 " unfinished",
            s->ok, s->errors, s->unfinished);
    if (is_llmq) {
        printf (" (%" PRIu64 " sent in %" PRIu64 " messages, %" PRIu64 " stalls, %" PRIu64 " cache hits)",
                s->sent, s->messages, s->stalls, s->cached);
    }
    printf ("\n  wall        %.3f s\n", s->wall_s);
    printf ("  throughput  %.0f jobs/s\n", s->jobs_per_s);
    printf ("  latency ms  p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n",
            s->p50, s->p90, s->p99, s->max);
    if (o->rate > 0) {
        printf ("  schedule    %" PRIu64 " of %" PRIu64 " jobs sent over %d ms late, the worst"
                " %.3f ms late%s\n", s->late, s->sent, BENCH_LATE_NS / 1000000, s->lag_max_ms,
                s->kept_up ? "" : ": COULD NOT KEEP UP with the offered rate");
    }
    if (s->fatal) {
        printf ("  stopped     %s\n", s->fatal);
    }
    else
    if (s->note) {
        printf ("  first error %s\n", s->note);
    }
}

int
main (int argc, char *argv [])
{
    if (argc < 2 || strcmp (argv [1], "--help") == 0 || strcmp (argv [1], "-h") == 0) {
        s_usage (argc < 2 ? stderr : stdout, NULL);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp (argv [1], "llmq") != 0 && strcmp (argv [1], "direct") != 0) {
        fprintf (stderr, "llmq-bench: unknown mode '%s' (expected llmq or direct)\n"
                 "Try 'llmq-bench --help'.\n", argv [1]);
        return 2;
    }
    bench_options_t options;
    int rc = s_parse (&options, argc, argv);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    const bench_mode_ops_t *ops =
        options.mode == BENCH_MODE_LLMQ ? &bench_llmq_ops : &bench_direct_ops;

    int exit_code = 1;
    bool initialised = false;
    unsigned started = 0;
    pthread_t threads [BENCH_MAX_HANDLES];
    char prefix[64];
    snprintf (prefix, sizeof prefix, "[[mock:chunks=%u]] ", options.stream_chunks);
    char *body = bench_body_new (options.size,
                                 options.mode == BENCH_MODE_DIRECT ? options.model : NULL,
                                 options.stream_chunks ? prefix : NULL);
    bench_run_t *runs = calloc (options.handles, sizeof (bench_run_t));
    if (!body || !runs) {
        fprintf (stderr, "llmq-bench: out of memory\n");
        goto cleanup;
    }
    if (ops->global_init && ops->global_init ()) {
        fprintf (stderr, "llmq-bench: %s mode cannot initialise\n", ops->name);
        goto cleanup;
    }
    initialised = true;
    for (unsigned i = 0; i < options.handles; i++) {
        bench_run_t *run = &runs [i];
        run->options = &options;
        run->body = body;
        run->jobs = bench_share (options.jobs, options.handles, i);
        run->concurrency = (unsigned) bench_share (options.concurrency, options.handles, i);
        run->rate = options.rate / options.handles;
        run->latency_ns = malloc ((run->jobs ? run->jobs : 1) * sizeof (int64_t));
        if (!run->latency_ns) {
            fprintf (stderr, "llmq-bench: out of memory\n");
            goto cleanup;
        }
        if (ops->setup (run)) {
            fprintf (stderr, "llmq-bench: %s\n", run->fatal);
            goto cleanup;
        }
    }
    //  One start for all, so the rate schedules line up
    int64_t start = bench_now_ns ();
    int64_t deadline = start + (int64_t) (options.duration_max * 1e9);
    for (unsigned i = 0; i < options.handles; i++) {
        runs [i].start_ns = start;
        runs [i].deadline_ns = deadline;
    }
    for (; started < options.handles; started++) {
        int err = pthread_create (&threads [started], NULL, ops->loop, &runs [started]);
        if (err) {
            fprintf (stderr, "llmq-bench: cannot start a thread: %s\n", strerror (err));
            break;
        }
    }
    for (unsigned i = 0; i < started; i++) {
        pthread_join (threads [i], NULL);
    }
    if (started == options.handles) {
        s_summary_t summary;
        if (s_summarise (&options, runs, bench_now_ns (), &summary)) {
            fprintf (stderr, "llmq-bench: out of memory\n");
            goto cleanup;
        }
        s_report (&options, &summary);
        exit_code = summary.ok == options.jobs ? 0 : 1;
    }
cleanup:
    for (unsigned i = 0; runs && i < options.handles; i++) {
        ops->teardown (&runs [i]);
        free (runs [i].latency_ns);
    }
    if (ops->global_fini && initialised) {
        ops->global_fini ();
    }
    free (runs);
    free (body);
    return exit_code;
}
