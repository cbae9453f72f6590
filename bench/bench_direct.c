/*  bench_direct.c -- llmq-bench's direct mode: the baseline. The same load
    posted straight to a chat-completions URL with a libcurl multi handle,
    so the difference to llmq mode is what the queue adds.

    Each thread has one multi handle and `concurrency` easy handles, each
    set up once and reused: curl keeps their connections alive, so after
    the first round every request goes over an open connection, as a
    worker's do. A job's latency runs from adding its easy handle to the
    multi to reading its CURLMSG_DONE; a job is ok on a 2xx answer.
*/
#include "bench.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#define S_WAIT_MAX_MS 100

typedef struct {
    CURLM *multi;
    CURL **easy;                //  concurrency handles
    int64_t *started;           //  per easy handle: when its job was added
    size_t *idle;               //  stack of idle easy handle indexes
    size_t nidle;
    struct curl_slist *headers;
} s_ctx_t;

static int
s_global_init (void)
{
    return curl_global_init (CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static void
s_global_fini (void)
{
    curl_global_cleanup ();
}

//  The answer is not looked at, only its status
static size_t
s_discard (char *data, size_t size, size_t nmemb, void *arg)
{
    (void) data;
    (void) arg;
    return size * nmemb;
}

static int
s_setup (bench_run_t *run)
{
    const bench_options_t *options = run->options;
    s_ctx_t *ctx = calloc (1, sizeof (s_ctx_t));
    if (!ctx) {
        snprintf (run->fatal, sizeof (run->fatal), "out of memory");
        return -1;
    }
    run->ctx = ctx;
    size_t n = run->concurrency;
    ctx->multi = curl_multi_init ();
    ctx->easy = calloc (n, sizeof (CURL *));
    ctx->started = calloc (n, sizeof (int64_t));
    ctx->idle = calloc (n, sizeof (size_t));
    //  No "Expect: 100-continue" round trip before a large body
    ctx->headers = curl_slist_append (NULL, "Content-Type: application/json");
    ctx->headers = ctx->headers ? curl_slist_append (ctx->headers, "Expect:") : NULL;
    if (!ctx->multi || !ctx->easy || !ctx->started || !ctx->idle || !ctx->headers) {
        snprintf (run->fatal, sizeof (run->fatal), "out of memory");
        return -1;
    }
    curl_multi_setopt (ctx->multi, CURLMOPT_MAXCONNECTS, (long) n);
    for (size_t i = 0; i < n; i++) {
        CURL *easy = curl_easy_init ();
        if (!easy) {
            snprintf (run->fatal, sizeof (run->fatal), "curl_easy_init failed");
            return -1;
        }
        ctx->easy [i] = easy;
        curl_easy_setopt (easy, CURLOPT_URL, options->url);
        curl_easy_setopt (easy, CURLOPT_HTTPHEADER, ctx->headers);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDS, run->body);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen (run->body));
        curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_discard);
        curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, (long) options->timeout_ms);
        curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt (easy, CURLOPT_TCP_NODELAY, 1L);
        //  Its slot in `started` tells which handle finished
        curl_easy_setopt (easy, CURLOPT_PRIVATE, (void *) &ctx->started [i]);
        ctx->idle [ctx->nidle++] = i;
    }
    return 0;
}

static void
s_teardown (bench_run_t *run)
{
    s_ctx_t *ctx = (s_ctx_t *) run->ctx;
    if (!ctx) {
        return;
    }
    for (size_t i = 0; ctx->easy && i < run->concurrency; i++) {
        if (ctx->easy [i]) {
            if (ctx->multi) {
                curl_multi_remove_handle (ctx->multi, ctx->easy [i]);
            }
            curl_easy_cleanup (ctx->easy [i]);
        }
    }
    if (ctx->multi) {
        curl_multi_cleanup (ctx->multi);
    }
    curl_slist_free_all (ctx->headers);
    free (ctx->easy);
    free (ctx->started);
    free (ctx->idle);
    free (ctx);
    run->ctx = NULL;
}

//  Start what the free handles and the schedule allow; -1 on failure
static int
s_start (bench_run_t *run, s_ctx_t *ctx)
{
    uint64_t want = run->jobs - run->sent;
    if (ctx->nidle < want) {
        want = ctx->nidle;
    }
    if (run->rate > 0) {
        uint64_t due = bench_due (run->rate, run->start_ns, bench_now_ns ());
        due = due > run->sent ? due - run->sent : 0;
        if (due < want) {
            want = due;
        }
    }
    for (; want > 0; want--) {
        size_t i = ctx->idle [--ctx->nidle];
        int64_t now = bench_now_ns ();
        CURLMcode mc = curl_multi_add_handle (ctx->multi, ctx->easy [i]);
        if (mc != CURLM_OK) {
            snprintf (run->fatal, sizeof (run->fatal), "curl_multi_add_handle: %s",
                      curl_multi_strerror (mc));
            return -1;
        }
        ctx->started [i] = now;
        if (run->rate > 0) {
            bench_lag (run, now, 1);
        }
        if (!run->first_send_ns) {
            run->first_send_ns = now;
        }
        run->sent++;
    }
    return 0;
}

//  Settle finished transfers
static void
s_finish (bench_run_t *run, s_ctx_t *ctx)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (ctx->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) {
            continue;
        }
        int64_t now = bench_now_ns ();
        CURL *easy = msg->easy_handle;
        CURLcode code = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo (easy, CURLINFO_PRIVATE, &priv);
        const int64_t *started = (const int64_t *) (void *) priv;
        size_t i = started ? (size_t) (started - ctx->started) : run->concurrency;
        long status = 0;
        curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &status);
        bool ok = code == CURLE_OK && status >= 200 && status < 300;
        if (!ok && !run->note [0]) {
            if (code != CURLE_OK) {
                snprintf (run->note, sizeof (run->note), "transfer failed: %s",
                          curl_easy_strerror (code));
            }
            else {
                snprintf (run->note, sizeof (run->note), "HTTP status %ld", status);
            }
        }
        curl_multi_remove_handle (ctx->multi, easy);
        if (i < run->concurrency) {
            bench_record (run, ctx->started [i], now, ok);
            ctx->idle [ctx->nidle++] = i;
        }
    }
}

static int
s_wait_ms (const bench_run_t *run, const s_ctx_t *ctx)
{
    int64_t now = bench_now_ns ();
    int64_t until = run->deadline_ns;
    if (run->rate > 0 && run->sent < run->jobs && ctx->nidle > 0) {
        int64_t due = bench_due_time (run->rate, run->start_ns, run->sent);
        if (due < until) {
            until = due;
        }
    }
    if (until <= now) {
        return 0;
    }
    int64_t ms = (until - now + 999999) / 1000000;
    return ms > S_WAIT_MAX_MS ? S_WAIT_MAX_MS : (int) ms;
}

static void *
s_loop (void *arg)
{
    bench_run_t *run = (bench_run_t *) arg;
    s_ctx_t *ctx = (s_ctx_t *) run->ctx;
    while (run->ok + run->errors < run->jobs && bench_now_ns () < run->deadline_ns) {
        if (s_start (run, ctx)) {
            break;
        }
        int running;
        CURLMcode mc = curl_multi_perform (ctx->multi, &running);
        if (mc == CURLM_OK) {
            s_finish (run, ctx);
            if (ctx->nidle == 0 || run->sent == run->jobs || run->rate > 0) {
                mc = curl_multi_poll (ctx->multi, NULL, 0, s_wait_ms (run, ctx), NULL);
            }
        }
        if (mc != CURLM_OK) {
            snprintf (run->fatal, sizeof (run->fatal), "curl multi: %s",
                      curl_multi_strerror (mc));
            break;
        }
    }
    return NULL;
}

const bench_mode_ops_t bench_direct_ops = {
    .name = "direct",
    .global_init = s_global_init,
    .global_fini = s_global_fini,
    .setup = s_setup,
    .loop = s_loop,
    .teardown = s_teardown
};
