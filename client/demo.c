/*  demo.c -- llmq-demo: a guided tour of llmq in one run.

    llmq-demo --broker EP [-n 240] [--model gpt] [--help]

    1. Submits N chat jobs of mixed priorities (urgent, high, normal, low)
       the pipelined way: llmq_send() with notify on, several messages in
       flight, and llmq_next() reading acks and results as they come.
       A progress bar on stderr follows them.
    2. Streams one more job live to stdout with llmq_stream(). Its prompt
       carries [[mock:...]] directives that the mock provider
       (llmq-mock-provider) obeys: 24 chunks, 40 ms apart, slow enough for
       a human to watch. A real provider just sees odd text in the prompt.
    3. Prints a summary: jobs done and failed, queue wait per priority
       (result started_us - enqueued_us), provider latency, throughput and
       wall time.

    It uses only the public API (llmq.h) and jansson, like any program
    built on libllmq would: read it as an example.

    Exit status: 0 every job done, 1 some job failed or was refused,
    2 usage error, 3 broker unreachable or silent.
*/
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "llmq.h"

#define S_DEFAULT_BROKER    "tcp://127.0.0.1:5555"
#define S_DEFAULT_MODEL     "gpt"
#define S_DEFAULT_JOBS      240
#define S_MAX_JOBS          100000
#define S_PER_SEND          10          //  jobs per llmq_send() message
#define S_MAX_RESENDS       5           //  for refusals that carry a retry hint
#define S_CONNECT_MS        3000
#define S_STALL_MS          30000       //  no event for this long: give up
#define S_STREAM_MS         60000
#define S_BAR_WIDTH         30
#define S_NPRIO             4

static const char s_usage[] =
    "Usage: llmq-demo [--broker ENDPOINT] [-n N] [--model GROUP] [--help]\n"
    "\n"
    "Shows llmq at work: submits N jobs of mixed priorities (pipelined), follows\n"
    "them with a progress bar, streams one job live, then prints queue wait per\n"
    "priority, provider latency and throughput. deploy/demo.sh starts a broker,\n"
    "two workers and a mock provider, then runs this.\n"
    "\n"
    "  --broker ENDPOINT   broker's client endpoint (default: $LLMQ_BROKER or\n"
    "                      " S_DEFAULT_BROKER ")\n"
    "  -n, --jobs N        jobs in the batch, 1 to 100000 (default 240)\n"
    "  -m, --model GROUP   model group to submit to (default " S_DEFAULT_MODEL ")\n"
    "  -h, --help          this help\n"
    "\n"
    "Exit status: 0 every job done, 1 some job failed or was refused,\n"
    "2 usage error, 3 broker unreachable or silent.\n";

//  One llmq_send() message: a slice of the batch
typedef enum {
    SEND_WAITING,               //  not sent yet, or waiting to be sent again
    SEND_IN_FLIGHT,             //  sent, no ACCEPTED or REJECTED yet
    SEND_ACCEPTED,              //  stored by the broker
    SEND_REFUSED                //  refused for good: its jobs count as failed
} s_send_state_t;

typedef struct {
    size_t first;               //  index of its first job in the batch
    size_t count;               //  jobs in it
    uint64_t ticket;            //  from llmq_send(), 0 while not in flight
    s_send_state_t state;
    int resends;                //  times sent again after a retry hint
    int64_t send_at_ms;         //  SEND_WAITING: not before this (monotonic)
} s_send_t;

//  What the run measured
typedef struct {
    size_t total;               //  jobs in the batch
    size_t accepted;            //  jobs the broker stored
    size_t refused;             //  jobs the broker refused for good
    size_t done;                //  results with state done
    size_t failed;              //  results in any other final state
    size_t by_state[9];         //  results per llmq_state
    uint64_t *wait_us[S_NPRIO]; //  queue waits of finished jobs, per priority
    size_t nwait[S_NPRIO];
    size_t submitted[S_NPRIO];  //  jobs per priority in the batch
    uint64_t *latency_us;       //  provider latency of done jobs
    size_t nlatency;
    int64_t start_ms;           //  first send
    int64_t end_ms;             //  last result
} s_stats_t;

//  The progress bar on stderr
typedef struct {
    bool tty;                   //  redraw in place, else a line per quarter
    int64_t drawn_ms;           //  last redraw
    int quarters;               //  quarters already printed (non-tty)
} s_progress_t;

//  The live stream
typedef struct {
    unsigned chunks;            //  chunks printed
    int64_t first_ms;           //  first chunk's arrival
} s_stream_t;

static int64_t
s_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  Priorities of the batch, mixed the same way on every run: about 10 %
//  urgent, 20 % high, 40 % normal and 30 % low, interleaved.
static int
s_priority_of (size_t index)
{
    uint32_t x = (uint32_t) index * 2654435761u;    //  Knuth's multiplicative hash
    unsigned tenth = (x >> 16) % 10;
    return tenth < 1 ? LLMQ_PRIO_URGENT
         : tenth < 3 ? LLMQ_PRIO_HIGH
         : tenth < 7 ? LLMQ_PRIO_NORMAL
         :             LLMQ_PRIO_LOW;
}

//  A chat request body with one user message. Returns a string to free(),
//  or NULL if out of memory.
static char *
s_body_new (const char *prompt, int max_tokens)
{
    json_t *body = json_pack ("{s:[{s:s, s:s}], s:i}",
                              "messages", "role", "user", "content", prompt,
                              "max_tokens", max_tokens);
    if (!body) {
        return NULL;
    }
    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    return text;
}

//  --------------------------------------------------------------------------
//  Progress bar

static void
s_progress_draw (s_progress_t *self, const s_stats_t *stats, bool final)
{
    size_t ended = stats->done + stats->failed;      //  results received
    size_t finished = ended + stats->refused;       //  nothing more to come
    int64_t now = s_now_ms ();
    double secs = (double) (now - stats->start_ms) / 1000.0;
    double rate = secs > 0 ? (double) ended / secs : 0.0;
    if (self->tty) {
        if (!final && now - self->drawn_ms < 80) {
            return;
        }
        self->drawn_ms = now;
        char bar[S_BAR_WIDTH + 1];
        size_t filled = stats->total ? finished * S_BAR_WIDTH / stats->total : 0;
        for (size_t i = 0; i < S_BAR_WIDTH; i++) {
            bar[i] = i < filled ? '#' : '.';
        }
        bar[S_BAR_WIDTH] = '\0';
        fprintf (stderr, "\r  [%s] %zu/%zu jobs %3zu%%  %7.1f jobs/s",
                 bar, finished, stats->total,
                 stats->total ? finished * 100 / stats->total : 100, rate);
        if (stats->failed + stats->refused) {
            fprintf (stderr, "  (%zu failed)", stats->failed + stats->refused);
        }
        if (final) {
            fputc ('\n', stderr);
        }
        fflush (stderr);
        return;
    }
    //  Not a terminal (a log, CI): one line per quarter, no control codes
    int quarters = stats->total ? (int) (finished * 4 / stats->total) : 4;
    if (quarters > self->quarters) {
        self->quarters = quarters;
        fprintf (stderr, "  %zu/%zu jobs (%d%%), %.1f jobs/s\n",
                 finished, stats->total, quarters * 25, rate);
    }
}

//  --------------------------------------------------------------------------
//  Batch: send, then read events until every job has a result

//  Record one finished job
static void
s_stats_add (s_stats_t *stats, const llmq_result *result)
{
    if (stats->done + stats->failed >= stats->total) {
        return;                     //  not one of ours (cannot happen: see llmq_next())
    }
    if (result->state == LLMQ_STATE_DONE) {
        stats->done++;
        stats->latency_us[stats->nlatency++] = result->latency_us;
    }
    else {
        stats->failed++;
    }
    if (result->state >= 0 && result->state < 9) {
        stats->by_state[result->state]++;
    }
    int p = result->priority;
    if (p >= 0 && p < S_NPRIO && result->started_us >= result->enqueued_us
    &&  result->started_us && result->enqueued_us) {
        stats->wait_us[p][stats->nwait[p]++] = result->started_us - result->enqueued_us;
    }
    stats->end_ms = s_now_ms ();
}

//  Send every message that is due. Returns 0, or -1 on an error that
//  ends the demo (reported).
static int
s_send_due (llmq *h, const llmq_job *jobs, s_send_t *sends, size_t nsends)
{
    int64_t now = s_now_ms ();
    for (size_t i = 0; i < nsends; i++) {
        s_send_t *send = &sends[i];
        if (send->state != SEND_WAITING || send->send_at_ms > now) {
            continue;
        }
        int rc = llmq_send (h, jobs + send->first, send->count, 1, &send->ticket);
        if (rc == LLMQ_ERR_TIMEOUT) {
            //  The socket's send queue is full: read events, try again later
            return 0;
        }
        if (rc != LLMQ_OK) {
            fprintf (stderr, "\nllmq-demo: cannot send jobs: %s (%s)\n",
                     llmq_strerror (rc), llmq_last_error (h));
            return -1;
        }
        send->state = SEND_IN_FLIGHT;
    }
    return 0;
}

static s_send_t *
s_send_by_ticket (s_send_t *sends, size_t nsends, uint64_t ticket)
{
    for (size_t i = 0; i < nsends; i++) {
        if (sends[i].state == SEND_IN_FLIGHT && sends[i].ticket == ticket) {
            return &sends[i];
        }
    }
    return NULL;
}

//  An ACCEPTED or REJECTED for one of our sends
static void
s_on_ack (const llmq_event *ev, s_send_t *sends, size_t nsends, s_stats_t *stats,
          bool *told)
{
    s_send_t *send = s_send_by_ticket (sends, nsends, ev->ticket);
    if (!send) {
        return;
    }
    if (ev->type == LLMQ_EV_ACCEPTED) {
        send->state = SEND_ACCEPTED;
        stats->accepted += send->count;
        return;
    }
    //  Refused. With a retry hint (the broker is busy or restarting) the
    //  message is sent again after the hint; otherwise its jobs are lost.
    if (ev->retry_after_ms > 0 && send->resends < S_MAX_RESENDS) {
        send->resends++;
        send->state = SEND_WAITING;
        send->ticket = 0;
        send->send_at_ms = s_now_ms () + (int64_t) ev->retry_after_ms;
        return;
    }
    send->state = SEND_REFUSED;
    stats->refused += send->count;
    if (!*told) {
        //  Once: the other messages are most likely refused for the same reason
        *told = true;
        fprintf (stderr, "\nllmq-demo: the broker refused jobs: %s\n",
                 ev->reason && *ev->reason ? ev->reason : llmq_strerror (ev->code));
        if (ev->code == LLMQ_ERR_UNKNOWN_MODEL) {
            fprintf (stderr, "  The broker's configuration needs a [group NAME] section "
                     "for it (see docs/config.md), or use --model.\n");
        }
    }
}

//  True while some send is not yet settled or some stored job has no result
static bool
s_batch_busy (const s_send_t *sends, size_t nsends, const s_stats_t *stats)
{
    for (size_t i = 0; i < nsends; i++) {
        if (sends[i].state == SEND_WAITING || sends[i].state == SEND_IN_FLIGHT) {
            return true;
        }
    }
    return stats->done + stats->failed < stats->accepted;
}

//  Run the batch. Returns 0 when every job has ended (well or not), 3 if
//  the broker went silent, 1 on another error.
static int
s_run_batch (llmq *h, const llmq_job *jobs, s_stats_t *stats)
{
    size_t nsends = (stats->total + S_PER_SEND - 1) / S_PER_SEND;
    s_send_t *sends = calloc (nsends, sizeof *sends);
    if (!sends) {
        fprintf (stderr, "llmq-demo: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < nsends; i++) {
        sends[i].first = i * S_PER_SEND;
        sends[i].count = stats->total - sends[i].first < S_PER_SEND
                       ? stats->total - sends[i].first : S_PER_SEND;
    }
    s_progress_t progress = { .tty = isatty (STDERR_FILENO) == 1 };
    bool told = false;
    int rc = 0;
    stats->start_ms = stats->end_ms = s_now_ms ();
    int64_t last_event_ms = stats->start_ms;

    while (s_batch_busy (sends, nsends, stats)) {
        if (s_send_due (h, jobs, sends, nsends) != 0) {
            rc = 1;
            break;
        }
        llmq_event *ev = NULL;
        int err = llmq_next (h, 50, &ev);
        if (err == LLMQ_ERR_TIMEOUT) {
            if (s_now_ms () - last_event_ms > S_STALL_MS) {
                fprintf (stderr, "\nllmq-demo: nothing heard from the broker for %d s "
                         "(%zu of %zu stored jobs still without a result).\n"
                         "  Are workers running? Check with: llmq stats\n",
                         S_STALL_MS / 1000, stats->accepted - stats->done - stats->failed,
                         stats->accepted);
                rc = 3;
                break;
            }
            s_progress_draw (&progress, stats, false);
            continue;
        }
        if (err != LLMQ_OK) {
            fprintf (stderr, "\nllmq-demo: %s (%s)\n", llmq_strerror (err), llmq_last_error (h));
            rc = err == LLMQ_ERR_CONNECT ? 3 : 1;
            break;
        }
        last_event_ms = s_now_ms ();
        switch (ev->type) {
            case LLMQ_EV_ACCEPTED:
            case LLMQ_EV_REJECTED:
                s_on_ack (ev, sends, nsends, stats, &told);
                break;
            case LLMQ_EV_RESULT:
                if (ev->result) {
                    s_stats_add (stats, ev->result);
                }
                break;
            default:
                break;              //  no chunks: the batch does not stream
        }
        llmq_event_free (&ev);
        s_progress_draw (&progress, stats, false);
    }
    s_progress_draw (&progress, stats, true);
    free (sends);
    return rc;
}

//  --------------------------------------------------------------------------
//  Stream one job live

static int
s_on_chunk (void *arg, uint64_t id, unsigned seq, const char *text)
{
    (void) id;
    (void) seq;
    s_stream_t *stream = arg;
    if (stream->chunks == 0) {
        stream->first_ms = s_now_ms ();
    }
    stream->chunks++;
    fputs (text, stdout);
    fflush (stdout);
    return 0;                       //  keep listening
}

//  Returns 0 if the job streamed and ended done, 1 if it failed, 3 if the
//  broker did not answer.
static int
s_run_stream (llmq *h, const char *model)
{
    char *body = s_body_new (
        "[[mock:chunks=24]] [[mock:chunk_delay=40]] "
        "Explain in one breath what llmq does: clients submit LLM jobs, the "
        "broker stores them durably in a priority queue, workers call the "
        "providers, and every chunk streams back to the caller as it is written.",
        256);
    if (!body) {
        fprintf (stderr, "llmq-demo: out of memory\n");
        return 1;
    }
    llmq_job job = { .model = model, .body = body, .priority = LLMQ_PRIO_URGENT };
    s_stream_t stream = { 0 };
    llmq_result *result = NULL;
    uint64_t id = 0;
    printf ("\nStreaming one job live (urgent priority):\n\n  ");
    fflush (stdout);
    int64_t start = s_now_ms ();
    int err = llmq_stream (h, &job, s_on_chunk, &stream, &id, S_STREAM_MS, &result);
    int64_t end = s_now_ms ();
    free (body);
    printf ("\n\n");
    fflush (stdout);
    if (err != LLMQ_OK) {
        fprintf (stderr, "llmq-demo: streamed job %" PRIu64 ": %s (%s)\n",
                 id, llmq_strerror (err), llmq_last_error (h));
        return err == LLMQ_ERR_TIMEOUT || err == LLMQ_ERR_CONNECT ? 3 : 1;
    }
    int rc = 0;
    if (result && result->state == LLMQ_STATE_DONE) {
        printf ("  job %" PRIu64 ": %u chunks in %.2f s (first after %" PRId64 " ms), "
                "finish \"%s\", served by %s\n",
                id, stream.chunks, (double) (end - start) / 1000.0,
                stream.chunks ? stream.first_ms - start : 0,
                result->finish_reason ? result->finish_reason : "",
                result->deployment ? result->deployment : "?");
        if (stream.chunks == 0 && result->content) {
            //  A provider that does not stream: the text comes whole
            printf ("  %s\n", result->content);
        }
    }
    else {
        fprintf (stderr, "llmq-demo: streamed job %" PRIu64 " ended %s: %s\n", id,
                 result ? llmq_state_name (result->state) : "without a result",
                 result && result->error ? result->error : "");
        rc = 1;
    }
    llmq_result_free (&result);
    return rc;
}

//  --------------------------------------------------------------------------
//  Summary

static int
s_cmp_u64 (const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a;
    uint64_t y = *(const uint64_t *) b;
    return x < y ? -1 : x > y;
}

//  Median by nearest rank; values sorted in place. 0 if n is 0.
static uint64_t
s_p50 (uint64_t *values, size_t n)
{
    if (n == 0) {
        return 0;
    }
    qsort (values, n, sizeof *values, s_cmp_u64);
    return values[(n - 1) / 2];
}

//  "850 us", "12.3 ms" or "4.56 s"
static const char *
s_fmt_us (char *buf, size_t size, uint64_t us)
{
    if (us < 1000) {
        snprintf (buf, size, "%" PRIu64 " us", us);
    }
    else
    if (us < 10000000) {
        snprintf (buf, size, "%.1f ms", (double) us / 1000.0);
    }
    else {
        snprintf (buf, size, "%.2f s", (double) us / 1e6);
    }
    return buf;
}

static void
s_print_summary (s_stats_t *stats, int64_t demo_start_ms)
{
    char a[32], b[32];
    printf ("\nSummary\n");
    printf ("  jobs             %zu submitted: %zu done, %zu failed",
            stats->total, stats->done, stats->failed + stats->refused);
    if (stats->refused) {
        printf (" (%zu refused by the broker)", stats->refused);
    }
    printf ("\n");
    for (int s = LLMQ_STATE_FAILED; s <= LLMQ_STATE_DEAD; s++) {
        if (stats->by_state[s]) {
            printf ("                   %zu %s\n", stats->by_state[s], llmq_state_name (s));
        }
    }
    printf ("  queue wait       %-8s %5s %10s %10s\n", "priority", "jobs", "p50", "max");
    for (int p = 0; p < S_NPRIO; p++) {
        size_t n = stats->nwait[p];
        uint64_t p50 = s_p50 (stats->wait_us[p], n);
        uint64_t max = n ? stats->wait_us[p][n - 1] : 0;
        printf ("                   %-8s %5zu %10s %10s\n", llmq_priority_name (p), n,
                n ? s_fmt_us (a, sizeof a, p50) : "-", n ? s_fmt_us (b, sizeof b, max) : "-");
    }
    printf ("  provider latency p50 %s over %zu calls\n",
            stats->nlatency ? s_fmt_us (a, sizeof a, s_p50 (stats->latency_us, stats->nlatency)) : "-",
            stats->nlatency);
    double batch_s = (double) (stats->end_ms - stats->start_ms) / 1000.0;
    printf ("  throughput       %.1f jobs/s (%zu jobs in %.2f s)\n",
            batch_s > 0 ? (double) stats->done / batch_s : 0.0, stats->done, batch_s);
    printf ("  wall time        %.2f s (batch %.2f s, then the stream)\n",
            (double) (s_now_ms () - demo_start_ms) / 1000.0, batch_s);
}

//  --------------------------------------------------------------------------

//  Parse a job count in [1, S_MAX_JOBS]. Returns 0 or -1.
static int
s_parse_jobs (const char *text, size_t *jobs)
{
    char *end;
    errno = 0;
    long v = strtol (text, &end, 10);
    if (errno || end == text || *end || v < 1 || v > S_MAX_JOBS) {
        return -1;
    }
    *jobs = (size_t) v;
    return 0;
}

//  Build the batch: the jobs, and the bodies they point to (bodies[i] is
//  jobs[i].body, to free). Returns 0 or -1 (out of memory).
static int
s_batch_new (const char *model, s_stats_t *stats, llmq_job **jobs_p, char ***bodies_p)
{
    size_t n = stats->total;
    llmq_job *jobs = calloc (n, sizeof *jobs);
    char **bodies = calloc (n, sizeof *bodies);
    *jobs_p = jobs;
    *bodies_p = bodies;
    if (!jobs || !bodies) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        int prio = s_priority_of (i);
        char prompt[160];
        snprintf (prompt, sizeof prompt,
                  "Demo job %zu of %zu (%s priority): one short fact about queues, please.",
                  i + 1, n, llmq_priority_name (prio));
        bodies[i] = s_body_new (prompt, 64);
        if (!bodies[i]) {
            return -1;
        }
        jobs[i] = (llmq_job) { .model = model, .body = bodies[i], .priority = prio };
        stats->submitted[prio]++;
    }
    return 0;
}

int
main (int argc, char *argv[])
{
    const char *broker = getenv ("LLMQ_BROKER");
    if (!broker || !*broker) {
        broker = S_DEFAULT_BROKER;
    }
    const char *model = S_DEFAULT_MODEL;
    size_t njobs = S_DEFAULT_JOBS;

    enum { OPT_BROKER = 256 };
    static const struct option options[] = {
        { "broker", required_argument, NULL, OPT_BROKER },
        { "jobs",   required_argument, NULL, 'n' },
        { "model",  required_argument, NULL, 'm' },
        { "help",   no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    int opt;
    while ((opt = getopt_long (argc, argv, "n:m:h", options, NULL)) != -1) {
        switch (opt) {
            case OPT_BROKER:
                broker = optarg;
                break;
            case 'n':
                if (s_parse_jobs (optarg, &njobs) != 0) {
                    fprintf (stderr, "llmq-demo: -n: expected a number of jobs from 1 to %d, got '%s'\n",
                             S_MAX_JOBS, optarg);
                    return 2;
                }
                break;
            case 'm':
                model = optarg;
                break;
            case 'h':
                fputs (s_usage, stdout);
                return 0;
            default:
                fputs (s_usage, stderr);
                return 2;
        }
    }
    if (optind < argc) {
        fprintf (stderr, "llmq-demo: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }

    int64_t demo_start = s_now_ms ();
    llmq *h = NULL;
    int err = llmq_connect (broker, S_CONNECT_MS, &h);
    if (err != LLMQ_OK) {
        //  No handle, so no llmq_last_error(): the code says it all
        const char *why = err == LLMQ_ERR_TIMEOUT ? "no broker answered within 3 s"
                        : err == LLMQ_ERR_INVALID ? "not a valid endpoint (expected e.g. tcp://127.0.0.1:5555)"
                        : err == LLMQ_ERR_VERSION ? "the broker speaks another protocol version"
                        : llmq_strerror (err);
        fprintf (stderr, "llmq-demo: cannot reach the broker at %s: %s\n", broker, why);
        if (err != LLMQ_ERR_INVALID) {
            fprintf (stderr, "  Is llmq-broker running there? deploy/demo.sh starts one "
                     "with two workers and a mock provider.\n");
        }
        return err == LLMQ_ERR_INVALID ? 2 : 3;
    }

    s_stats_t stats = { .total = njobs };
    llmq_job *jobs = NULL;
    char **bodies = NULL;
    int rc = 1;
    if (s_batch_new (model, &stats, &jobs, &bodies) != 0) {
        fprintf (stderr, "llmq-demo: out of memory\n");
        goto cleanup;
    }
    stats.latency_us = calloc (njobs, sizeof *stats.latency_us);
    for (int p = 0; p < S_NPRIO; p++) {
        stats.wait_us[p] = calloc (njobs, sizeof *stats.wait_us[p]);
        if (!stats.wait_us[p]) {
            break;
        }
    }
    if (!stats.latency_us || !stats.wait_us[S_NPRIO - 1]) {
        fprintf (stderr, "llmq-demo: out of memory\n");
        goto cleanup;
    }

    printf ("llmq-demo: broker %s, model group '%s' (libllmq %s)\n",
            broker, model, llmq_version_string ());
    printf ("Submitting %zu jobs (%zu urgent, %zu high, %zu normal, %zu low), "
            "%d per message, all messages in flight at once:\n",
            njobs, stats.submitted[0], stats.submitted[1], stats.submitted[2],
            stats.submitted[3], S_PER_SEND);
    fflush (stdout);
    rc = s_run_batch (h, jobs, &stats);
    bool all_done = rc == 0 && stats.done == stats.total;

    //  Stream only when the batch shows the broker and workers work: a
    //  refused or silent batch has already said what is wrong.
    if (rc == 0 && stats.done > 0) {
        int src = s_run_stream (h, model);
        if (src != 0) {
            all_done = false;
            rc = src;
        }
    }
    s_print_summary (&stats, demo_start);
    if (rc == 0 && !all_done) {
        rc = 1;
    }
    printf ("%s\n", rc == 0 ? "All jobs done." : "Some jobs did not end done (see above).");

cleanup:
    if (bodies) {
        for (size_t i = 0; i < njobs; i++) {
            free (bodies[i]);
        }
    }
    free (bodies);
    free (jobs);
    free (stats.latency_us);
    for (int p = 0; p < S_NPRIO; p++) {
        free (stats.wait_us[p]);
    }
    llmq_close (&h);
    return rc;
}
