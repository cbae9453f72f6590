/*  call.c -- provider calls: the curl side of the worker. See worker_int.h.

    Each slot owns one easy handle for its whole life. Options that never
    change (callbacks, share handle, HTTP version...) are set once; a new
    call sets only URL, headers, body, timeouts and its deployment's TLS
    trust, so starting a call costs a JSON rebuild of the job body and a
    few setopt calls.

    Response bodies: a 2xx answer to a streamed job that comes as
    text/event-stream goes through the SSE parser as it arrives, each
    content delta leaving at once as a CHUNK. Everything else (non-streamed
    answers, error bodies, a server that ignored "stream": true) is
    collected whole, up to S_MAX_BODY, and parsed at the end.
*/
#include "worker_int.h"
#include "policy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"
#include "log.h"

#define S_MAX_BODY (64u * 1024u * 1024u)
#define S_KEEP_BUFFER (1024u * 1024u)     /* larger buffers are freed after use */
#define S_DEFAULT_TIMEOUT_MS 60000
#define S_DEFAULT_CONNECT_MS 5000

/*  --- messages to the broker ------------------------------------------ */

static void
s_send_chunk (llmq_worker_t *w, uint64_t id, uint64_t lease, uint32_t *seq,
              const char *text, size_t len)
{
    /*  The codec takes NUL-terminated text; deltas are not. */
    w->chunk.len = 0;
    if (llmq_text_add (&w->chunk, text, len)) {
        llmq_error ("job %llu: out of memory for a chunk", (unsigned long long) id);
        return;
    }
    llmq_msg_t m = { .cmd = LLMQ_CMD_CHUNK, .id = id, .lease = lease, .seq = *seq,
                     .text = w->chunk.p };
    llmq_worker_send (w, &m);
    (*seq)++;
}

/*  Mask every API key this worker holds -- of any deployment, since a
    proxy in front of several may quote any of them -- in a reason we are
    about to send or log. */
static void
s_scrub (llmq_worker_t *w, char *reason)
{
    for (size_t i = 0; w->rings && i < w->cfg->ndeployments; i++) {
        llmq_keyring_scrub (w->rings[i], reason);
    }
}

/*  Keep a DONE result for the turn's batch: its strings are copied, as
    the reply buffers are reused by the next call. */
static int
s_batch_add (llmq_worker_t *w, const llmq_result_t *res, uint64_t lease)
{
    if (w->nbatch == w->batch_cap) {
        size_t cap = w->batch_cap ? w->batch_cap * 2 : 64;
        llmq_result_t *v = realloc (w->batch, cap * sizeof *v);
        if (!v) {
            return -1;
        }
        w->batch = v;
        w->batch_cap = cap;
    }
    llmq_result_t *r = &w->batch[w->nbatch];
    *r = *res;
    r->lease = lease;
    r->content = llmq_arena_strdup (w->batch_arena, res->content);
    r->finish_reason = llmq_arena_strdup (w->batch_arena, res->finish_reason);
    r->deployment = llmq_arena_strdup (w->batch_arena, res->deployment);
    r->request_id = llmq_arena_strdup (w->batch_arena, res->request_id);
    r->tool_calls = llmq_arena_strdup (w->batch_arena, res->tool_calls);
    if ((res->content && !r->content) || (res->finish_reason && !r->finish_reason)
    ||  (res->deployment && !r->deployment) || (res->request_id && !r->request_id)
    ||  (res->tool_calls && !r->tool_calls)) {
        return -1;
    }
    w->nbatch++;
    return 0;
}

/*  DONE or FAILED (slots=1) for a finished call. `rl`: the rate-limit
    headers of the answer (NULL: none, a local provider), with `rl_reset_ms`
    the ms from now until its limiting quota resets. */
static void
s_send_outcome (llmq_worker_t *w, uint64_t id, uint64_t lease, const llmq_deployment_t *dep,
                llmq_reply_t *reply, long status, uint64_t latency_us,
                const char *request_id, uint64_t retry_after_ms,
                const llmq_ratelimit_t *rl, uint64_t rl_reset_ms)
{
    const char *rid = request_id && *request_id ? request_id : reply->request_id;
    llmq_result_t res = {
        .id = id,
        .content = reply->content.p ? reply->content.p : "",
        .finish_reason = reply->finish_reason[0] ? reply->finish_reason : NULL,
        .deployment = dep ? dep->name : NULL,
        .request_id = rid[0] ? rid : NULL,
        .tool_calls = reply->tool_calls.len ? reply->tool_calls.p : NULL,
        .http_status = status > 0 && status < 65536 ? (uint16_t) status : 0,
        .prompt_tokens = reply->prompt_tokens,
        .completion_tokens = reply->completion_tokens,
        .cached_tokens = reply->cached_tokens,
        .latency_us = latency_us,
        .rl_requests = rl ? rl->remaining_requests : -1,
        .rl_tokens = rl ? rl->remaining_tokens : -1,
        .rl_reset_ms = rl ? rl_reset_ms : 0,
    };
    llmq_msg_t m = { .id = id, .lease = lease, .slots = 1, .results = &res, .nresults = 1 };
    /*  The figures of our HEARTBEATs (worker.c s_figures). */
    w->ncalls++;
    if (reply->error_class != LLMQ_EC_NONE) {
        w->ncalls_failed++;
    }
    if (dep && w->deps && dep >= w->cfg->deployments && dep < w->cfg->deployments + w->cfg->ndeployments) {
        w->deps[dep - w->cfg->deployments].calls++;
    }
    if (reply->error_class == LLMQ_EC_NONE) {
        /*  Results that end in the same loop turn go as one DONE
            (llmq_worker_flush_done): one message instead of one per job. */
        w->ndone++;
        if (s_batch_add (w, &res, lease) == 0) {
            return;
        }
        m.cmd = LLMQ_CMD_DONE;          /* out of memory: send it alone */
    }
    else {
        m.cmd = LLMQ_CMD_FAILED;
        s_scrub (w, reply->error);
        res.error_class = (uint8_t) reply->error_class;
        res.error = reply->error;
        if (!reply->content.len) {
            res.content = NULL;
        }
        m.retry_after_ms = retry_after_ms;
        w->nfailed++;
        llmq_debug ("job %llu failed on %s: %s (HTTP %ld): %s", (unsigned long long) id,
                    dep ? dep->name : "?", llmq_error_class_name (reply->error_class),
                    status, reply->error);
    }
    llmq_worker_send (w, &m);
}

/*  --- curl callbacks -------------------------------------------------- */

static int
s_on_socket (CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    llmq_worker_t *w = userp;
    size_t i = 0;
    while (i < w->nfds && w->fds[i].fd != fd) {
        i++;
    }
    if (what == CURL_POLL_REMOVE) {
        if (i < w->nfds) {
            w->fds[i] = w->fds[--w->nfds];
        }
        return 0;
    }
    short events = (short) (((what & CURL_POLL_IN) ? ZMQ_POLLIN : 0)
                          | ((what & CURL_POLL_OUT) ? ZMQ_POLLOUT : 0));
    if (i == w->nfds) {
        if (w->nfds == w->fds_cap) {
            size_t cap = w->fds_cap * 2;
            llmq_watch_t *fds = realloc (w->fds, cap * sizeof *fds);
            if (!fds) {
                llmq_error ("out of memory watching curl's sockets");
                return -1;
            }
            w->fds = fds;
            w->fds_cap = cap;
        }
        w->nfds++;
    }
    w->fds[i] = (llmq_watch_t) { .fd = fd, .events = events };
    return 0;
}

static int
s_on_timer (CURLM *multi, long timeout_ms, void *userp)
{
    llmq_worker_t *w = userp;
    w->curl_timer_set = true;
    /*  curl rounds its timeouts down to the ms: add one so that we do not
        wake before curl's own clock says the timer is due. */
    w->curl_due_us = timeout_ms < 0 ? -1
                   : (int64_t) (llmq_mono_us () + (uint64_t) timeout_ms * 1000 + (timeout_ms ? 1000 : 0));
    return 0;
}

/*  A response begins: its rate-limit headers start from nothing, and their
    relative resets count from now. */
static void
s_rl_start (llmq_call_t *c)
{
    llmq_ratelimit_init (&c->rl);
    c->rl_wall_ms = (int64_t) (llmq_now_us () / 1000);
    c->rl_mono_ms = llmq_mono_ms ();
}

static size_t
s_on_header (char *line, size_t size, size_t nitems, void *arg)
{
    llmq_call_t *c = arg;
    size_t n = size * nitems;
    if (n >= 5 && memcmp (line, "HTTP/", 5) == 0) {
        /*  A new response (after a 100 Continue, say): forget the last. */
        c->status_known = false;
        c->is_sse = false;
        c->request_id[0] = c->retry_after[0] = c->retry_after_ms[0] = '\0';
        s_rl_start (c);
        return n;
    }
    const char *colon = memchr (line, ':', n);
    if (!colon) {
        return n;
    }
    size_t nlen = (size_t) (colon - line);
    const char *v = colon + 1;
    const char *end = line + n;
    while (v < end && (*v == ' ' || *v == '\t')) {
        v++;
    }
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) {
        end--;
    }
    int vlen = (int) (end - v);
    if ((nlen == 12 && strncasecmp (line, "x-request-id", 12) == 0)
    ||  (nlen == 10 && strncasecmp (line, "request-id", 10) == 0)) {
        /*  OpenAI says x-request-id, Anthropic request-id. */
        snprintf (c->request_id, sizeof c->request_id, "%.*s", vlen, v);
    }
    else if (nlen == 11 && strncasecmp (line, "retry-after", 11) == 0) {
        snprintf (c->retry_after, sizeof c->retry_after, "%.*s", vlen, v);
    }
    else if (nlen == 14 && strncasecmp (line, "retry-after-ms", 14) == 0) {
        snprintf (c->retry_after_ms, sizeof c->retry_after_ms, "%.*s", vlen, v);
    }
    else if (nlen == 12 && strncasecmp (line, "content-type", 12) == 0) {
        c->is_sse = vlen >= 17 && strncasecmp (v, "text/event-stream", 17) == 0;
    }
    else {
        if (!c->rl_mono_ms) {
            s_rl_start (c);             /* headers without a status line: not from curl */
        }
        /*  x-ratelimit-*, anthropic-ratelimit-*: a malformed one is ignored. */
        llmq_ratelimit_header (&c->rl, line, nlen, v, (size_t) vlen, c->rl_wall_ms);
    }
    return n;
}

/*  Stream text waits in c->pending until the end of the loop turn, so that
    deltas that arrived together leave as one CHUNK: one ZeroMQ message
    instead of one per SSE event, and no later than before. */
#define S_CHUNK_MAX (64u * 1024u)

static void
s_flush_chunk (llmq_call_t *c)
{
    if (c->pending.len > 0) {
        s_send_chunk (c->w, c->id, c->lease, &c->seq, c->pending.p, c->pending.len);
        c->pending.len = 0;
    }
}

static void
s_on_delta (void *arg, const char *text, size_t len)
{
    llmq_call_t *c = arg;
    if (llmq_text_add (&c->pending, text, len) != 0) {
        s_flush_chunk (c);
        s_send_chunk (c->w, c->id, c->lease, &c->seq, text, len);
        return;
    }
    if (c->pending.len >= S_CHUNK_MAX) {
        s_flush_chunk (c);
    }
}

void
llmq_calls_flush_chunks (llmq_worker_t *w)
{
    for (uint32_t i = 0; i < w->nslots; i++) {
        if (w->calls[i].busy && w->calls[i].pending.len) {
            s_flush_chunk (&w->calls[i]);
        }
    }
}

static int
s_on_event (void *arg, const char *event, const char *data, size_t len)
{
    llmq_call_t *c = arg;
    return c->prov->parse_event (event, data, len, &c->reply, s_on_delta, c) ? 1 : 0;
}

static size_t
s_on_write (char *data, size_t size, size_t nmemb, void *arg)
{
    llmq_call_t *c = arg;
    size_t n = size * nmemb;
    if (!c->status_known) {
        long status = 0;
        curl_easy_getinfo (c->easy, CURLINFO_RESPONSE_CODE, &status);
        c->status = status;
        c->status_known = true;
    }
    if (c->stream && c->is_sse && c->status >= 200 && c->status < 300) {
        if (llmq_sse_feed (c->sse, data, n) != 0) {
            if (c->reply.error_class == LLMQ_EC_NONE) {
                llmq_reply_fail (&c->reply, LLMQ_EC_BAD_RESPONSE, "stream event over %u bytes",
                                 LLMQ_SSE_MAX_EVENT);
            }
            return 0;               /* curl ends the transfer: CURLE_WRITE_ERROR */
        }
        return n;
    }
    if (c->resp.len + n > S_MAX_BODY) {
        llmq_reply_fail (&c->reply, LLMQ_EC_BAD_RESPONSE, "response body over %u bytes", S_MAX_BODY);
        return 0;
    }
    if (llmq_text_add (&c->resp, data, n)) {
        llmq_reply_fail (&c->reply, LLMQ_EC_INTERNAL, "out of memory for the response");
        return 0;
    }
    return n;
}

/*  --- slots ------------------------------------------------------------ */

static void
s_release (llmq_call_t *c)
{
    llmq_worker_t *w = c->w;
    c->busy = false;
    c->next_free = w->free_top;
    w->free_top = c;
    w->nfree++;
}

/*  Report a call that failed before or after its transfer, free its slot. */
static void
s_finish (llmq_call_t *c)
{
    uint64_t latency = c->start_us ? llmq_mono_us () - c->start_us : 0;
    /*  The quota resets count from the response's headers; the broker
        reads them as from when it gets the result: take off the time the
        body took (a long stream). */
    uint64_t rl_wait = llmq_ratelimit_wait_ms (&c->rl);
    if (rl_wait && c->rl_mono_ms) {
        uint64_t since = llmq_mono_ms () - c->rl_mono_ms;
        rl_wait = rl_wait > since ? rl_wait - since : 0;
    }
    uint64_t retry_ms = 0;
    if (c->reply.error_class != LLMQ_EC_NONE && (c->retry_after[0] || c->retry_after_ms[0])) {
        retry_ms = llmq_retry_after_ms (c->retry_after[0] ? c->retry_after : NULL,
                                        c->retry_after_ms[0] ? c->retry_after_ms : NULL,
                                        time (NULL));
    }
    if (!retry_ms && c->reply.error_class == LLMQ_EC_RATE_LIMITED
        && (c->status == 429 || c->status == 529)) {
        /*  Refused without (a usable) Retry-After: wait for the quota that
            is used up to reset, as the rate-limit headers tell. */
        retry_ms = rl_wait;
    }
    s_send_outcome (c->w, c->id, c->lease, c->dep, &c->reply, c->status, latency,
                    c->request_id, retry_ms, &c->rl, rl_wait);
    s_release (c);
}

/*  Say at start what the deployments' TLS settings mean: a CA file or
    directory that cannot be used stops the worker (its calls could only
    fail), verification turned off is a warning. -1 after logging. */
static int
s_tls_check (llmq_worker_t *w)
{
    for (size_t i = 0; i < w->cfg->ndeployments; i++) {
        const llmq_deployment_t *dep = &w->cfg->deployments[i];
        char err[600];
        if (llmq_config_check_ca (w->cfg, dep, err, sizeof err) != 0) {
            llmq_error ("%s", err);
            return -1;
        }
#if LIBCURL_VERSION_NUM < 0x075400
        if (dep->ca_file || dep->ca_path) {
            llmq_error ("deployment %s: ca_file and ca_path need libcurl 7.84 or later",
                        dep->name);
            return -1;
        }
#endif
        if (!dep->tls_verify) {
            llmq_warn ("deployment %s: tls_verify is off: the provider's certificate is "
                       "not checked, so anyone on the path can read its calls and keys",
                       dep->name);
        }
    }
    return 0;
}

/*  The deployment's TLS trust, set on each transfer since a slot serves
    every deployment in turn. With ca_file or ca_path only those CAs are
    trusted; with neither, libcurl's built-in defaults (the system's
    bundle and directory): CURLINFO_CAINFO/CAPATH give those whatever the
    handle was last set to. curl compares these settings before it reuses
    a pooled connection or a TLS session, so deployments with different
    trust never share one. */
static void
s_tls_options (CURL *e, const llmq_deployment_t *dep)
{
    const char *file = dep->ca_file;
    const char *dir = dep->ca_path;
#if LIBCURL_VERSION_NUM >= 0x075400
    if (!file && !dir) {
        char *builtin = NULL;
        curl_easy_getinfo (e, CURLINFO_CAINFO, &builtin);
        file = builtin;
        builtin = NULL;
        curl_easy_getinfo (e, CURLINFO_CAPATH, &builtin);
        dir = builtin;
    }
    curl_easy_setopt (e, CURLOPT_CAINFO, file);
    curl_easy_setopt (e, CURLOPT_CAPATH, dir);
#endif
    curl_easy_setopt (e, CURLOPT_SSL_VERIFYPEER, dep->tls_verify ? 1L : 0L);
    curl_easy_setopt (e, CURLOPT_SSL_VERIFYHOST, dep->tls_verify ? 2L : 0L);
}

int
llmq_calls_init (llmq_worker_t *w, uint32_t slots)
{
    w->nslots = slots ? slots : 1;
    w->curl_due_us = -1;
    w->multi = curl_multi_init ();
    w->share = curl_share_init ();
    w->calls = calloc (w->nslots, sizeof *w->calls);
    w->fds_cap = (size_t) w->nslots * 2 + 8;
    w->fds = calloc (w->fds_cap, sizeof *w->fds);
    size_t ndeps = w->cfg->ndeployments ? w->cfg->ndeployments : 1;
    w->deps = calloc (ndeps, sizeof *w->deps);
    if (!w->multi || !w->share || !w->calls || !w->fds || !w->deps || s_tls_check (w) != 0) {
        return -1;
    }
    for (size_t i = 0; i < w->cfg->ndeployments; i++) {
        size_t nkeys = w->rings ? llmq_keyring_size (w->rings[i]) : 0;
        llmq_dep_eps_t *d = &w->deps[i];
        d->neps = nkeys ? nkeys : 1;
        d->eps = calloc (d->neps, sizeof *d->eps);
        d->ready = calloc (d->neps, sizeof *d->ready);
        if (!d->eps || !d->ready) {
            return -1;
        }
    }
    curl_share_setopt (w->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt (w->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt (w->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    curl_multi_setopt (w->multi, CURLMOPT_SOCKETFUNCTION, s_on_socket);
    curl_multi_setopt (w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt (w->multi, CURLMOPT_TIMERFUNCTION, s_on_timer);
    curl_multi_setopt (w->multi, CURLMOPT_TIMERDATA, w);
    /*  Keep an idle connection per slot (curl's default, 4 per handle in
        use, would close them whenever the load dips). */
    curl_multi_setopt (w->multi, CURLMOPT_MAXCONNECTS, (long) w->nslots + 16);
    for (uint32_t i = 0; i < w->nslots; i++) {
        llmq_call_t *c = &w->calls[i];
        c->w = w;
        c->easy = curl_easy_init ();
        c->sse = llmq_sse_new (s_on_event, c);
        if (!c->easy || !c->sse) {
            return -1;
        }
        CURL *e = c->easy;
        curl_easy_setopt (e, CURLOPT_PRIVATE, c);
        curl_easy_setopt (e, CURLOPT_WRITEFUNCTION, s_on_write);
        curl_easy_setopt (e, CURLOPT_WRITEDATA, c);
        curl_easy_setopt (e, CURLOPT_HEADERFUNCTION, s_on_header);
        curl_easy_setopt (e, CURLOPT_HEADERDATA, c);
        curl_easy_setopt (e, CURLOPT_ERRORBUFFER, c->errbuf);
        curl_easy_setopt (e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt (e, CURLOPT_SHARE, w->share);
        curl_easy_setopt (e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt (e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt (e, CURLOPT_TCP_KEEPALIVE, 1L);
        /*  TLS verification: per deployment, in s_tls_options. Proxies:
            no CURLOPT_PROXY here, so libcurl follows http_proxy,
            https_proxy and no_proxy from the environment. */
        curl_easy_setopt (e, CURLOPT_USERAGENT, "llmq-worker/" LLMQ_WORKER_VERSION);
#if LIBCURL_VERSION_NUM >= 0x075500
        curl_easy_setopt (e, CURLOPT_PROTOCOLS_STR, "http,https");
#else
        curl_easy_setopt (e, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
        c->next_free = w->free_top;
        w->free_top = c;
        w->nfree++;
    }
    return 0;
}

void
llmq_calls_fini (llmq_worker_t *w)
{
    if (w->calls) {
        for (uint32_t i = 0; i < w->nslots; i++) {
            llmq_call_t *c = &w->calls[i];
            if (c->busy && w->multi) {
                curl_multi_remove_handle (w->multi, c->easy);
            }
            if (c->easy) {
                curl_easy_cleanup (c->easy);
            }
            llmq_sse_destroy (&c->sse);
            llmq_text_free (&c->req);
            llmq_text_free (&c->resp);
            llmq_text_free (&c->pending);
            llmq_reply_free (&c->reply);
        }
        free (w->calls);
        w->calls = NULL;
    }
    if (w->multi) {
        curl_multi_cleanup (w->multi);
        w->multi = NULL;
    }
    if (w->share) {
        curl_share_cleanup (w->share);
        w->share = NULL;
    }
    if (w->deps) {
        for (size_t i = 0; i < w->cfg->ndeployments; i++) {
            llmq_dep_eps_t *d = &w->deps[i];
            for (size_t k = 0; d->eps && k < d->neps; k++) {
                llmq_endpoint_free (&d->eps[k]);
            }
            free (d->eps);
            free (d->ready);
        }
    }
    free (w->deps);
    free (w->fds);
    w->deps = NULL;
    w->fds = NULL;
    llmq_reply_free (&w->scratch);
    llmq_text_free (&w->chunk);
}

/*  Index of `dep` in the configuration, or ndeployments if it is not there. */
static size_t
s_dep_index (const llmq_worker_t *w, const llmq_deployment_t *dep)
{
    size_t i = 0;
    while (i < w->cfg->ndeployments && &w->cfg->deployments[i] != dep
           && strcmp (w->cfg->deployments[i].name, dep->name) != 0) {
        i++;
    }
    return i;
}

/*  The endpoint of the call's deployment and key, built at first use and
    kept: a call costs no allocation for its URL and headers. NULL (reply
    failed) if the adapter cannot build it. */
static const llmq_endpoint_t *
s_endpoint (llmq_call_t *c)
{
    llmq_worker_t *w = c->w;
    llmq_dep_eps_t *d = &w->deps[c->dep_index];
    size_t k = c->key == LLMQ_KEY_NONE ? 0 : c->key;
    if (k >= d->neps) {
        llmq_reply_fail (&c->reply, LLMQ_EC_INTERNAL, "key not in the deployment's ring");
        return NULL;
    }
    if (!d->ready[k]) {
        const char *key = w->rings ? llmq_keyring_key (w->rings[c->dep_index], c->key) : NULL;
        if (c->prov->endpoint (c->dep, key, &d->eps[k], &c->reply) != 0) {
            return NULL;
        }
        d->ready[k] = true;
    }
    return &d->eps[k];
}

/*  Start the transfer of the call's body with its key: URL and headers of
    that key, then hand the easy handle to the multi. Reports and frees the
    slot on failure. */
static void
s_transfer (llmq_call_t *c)
{
    const llmq_endpoint_t *ep = s_endpoint (c);
    if (!ep) {
        s_finish (c);
        return;
    }
    CURL *e = c->easy;
    curl_easy_setopt (e, CURLOPT_URL, c->stream && ep->stream_url ? ep->stream_url : ep->url);
    curl_easy_setopt (e, CURLOPT_HTTPHEADER, ep->headers);
    s_tls_options (e, c->dep);
    CURLMcode mrc = curl_multi_add_handle (c->w->multi, e);
    if (mrc != CURLM_OK) {
        llmq_reply_fail (&c->reply, LLMQ_EC_INTERNAL, "cannot start the call: %s",
                         curl_multi_strerror (mrc));
        s_finish (c);
    }
}

/*  Forget the last response, for a new one (a retry with another key). */
static void
s_response_reset (llmq_call_t *c)
{
    c->status_known = false;
    c->is_sse = false;
    c->status = 0;
    c->resp.len = 0;
    c->pending.len = 0;             /* an aborted or retried call's text goes nowhere */
    c->request_id[0] = c->retry_after[0] = c->retry_after_ms[0] = '\0';
    llmq_ratelimit_init (&c->rl);
    c->rl_wall_ms = 0;
    c->rl_mono_ms = 0;
    c->errbuf[0] = '\0';
    llmq_reply_reset (&c->reply);
    llmq_sse_reset (c->sse);
}

void
llmq_call_start (llmq_worker_t *w, const llmq_provider_t *prov, const llmq_deployment_t *dep,
                 const llmq_job_t *job, uint64_t timeout_ms)
{
    llmq_call_t *c = w->free_top;
    w->free_top = c->next_free;
    w->nfree--;
    c->busy = true;
    c->id = job->id;
    c->lease = job->lease;
    c->dep = dep;
    c->prov = prov;
    c->stream = job->stream;
    c->seq = 0;
    c->start_us = 0;
    c->key = LLMQ_KEY_NONE;
    c->tried = 0;
    /*  A rare huge body should not pin its memory to the slot for good. */
    if (c->resp.cap > S_KEEP_BUFFER) {
        llmq_text_free (&c->resp);
    }
    if (c->req.cap > S_KEEP_BUFFER) {
        llmq_text_free (&c->req);
    }
    s_response_reset (c);

    c->dep_index = s_dep_index (w, dep);
    if (c->dep_index == w->cfg->ndeployments) {
        llmq_reply_fail (&c->reply, LLMQ_EC_INTERNAL, "deployment not in the configuration");
        s_finish (c);
        return;
    }
    llmq_keyring_t *ring = w->rings ? w->rings[c->dep_index] : NULL;
    if (llmq_keyring_size (ring) > 0) {
        c->key = llmq_keyring_next (ring, llmq_mono_ms ());
    }
    else
    if (dep->napi_key_envs + dep->napi_key_files > 0) {
        /*  Keys configured, none usable (their variables were not set at
            start, as the start-up warning said). */
        llmq_reply_fail (&c->reply, LLMQ_EC_AUTH, "deployment %s has no API key: "
                         "environment variable %s%s was not set when the worker started",
                         dep->name, dep->api_key_env ? dep->api_key_env : "?",
                         dep->napi_key_envs > 1 ? " (and the others of its api_key_env)" : "");
        s_finish (c);
        return;
    }
    /*  The opt-in input policy (policy.h) runs before the adapter. */
    llmq_policy_t policy = { dep->max_prompt_chars, dep->strip_special_tokens };
    char *policed = NULL;
    char why[160];
    if (llmq_policy_apply (&policy, job->body, &policed, why, sizeof why) != 0) {
        llmq_reply_fail (&c->reply, LLMQ_EC_INVALID_REQUEST, "%s", why);
        s_finish (c);
        return;
    }
    llmq_job_t policed_job;
    if (policed) {
        policed_job = *job;
        policed_job.body = policed;
        job = &policed_job;
    }
    int built = prov->build (dep, job, &c->req, &c->reply);
    free (policed);
    if (built != 0) {
        s_finish (c);
        return;
    }
    if (!timeout_ms) {
        timeout_ms = dep->timeout_ms ? dep->timeout_ms : S_DEFAULT_TIMEOUT_MS;
    }
    uint64_t connect_ms = dep->connect_timeout_ms ? dep->connect_timeout_ms : S_DEFAULT_CONNECT_MS;
    CURL *e = c->easy;
    curl_easy_setopt (e, CURLOPT_POSTFIELDS, c->req.p);
    curl_easy_setopt (e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) c->req.len);
    curl_easy_setopt (e, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
    curl_easy_setopt (e, CURLOPT_CONNECTTIMEOUT_MS, (long) connect_ms);
    /*  Stall: under one byte a second for stall_timeout (whole seconds)
        fails the call as a timeout, long before the total timeout. */
    long stall_s = (long) ((dep->stall_timeout_ms + 999) / 1000);
    curl_easy_setopt (e, CURLOPT_LOW_SPEED_LIMIT, stall_s ? 1L : 0L);
    curl_easy_setopt (e, CURLOPT_LOW_SPEED_TIME, stall_s);
    c->start_us = llmq_mono_us ();
    s_transfer (c);
}

/*  After a refused key: 401/403 benches it and, while keys this call has
    not tried remain, starts the call again at once with the next one
    (true: the call goes on). 429 moves the ring past the key so that the
    broker's retry takes another. */
static bool
s_next_key (llmq_call_t *c)
{
    llmq_keyring_t *ring = c->w->rings ? c->w->rings[c->dep_index] : NULL;
    if (c->key == LLMQ_KEY_NONE || !ring) {
        return false;
    }
    if (c->status == 429) {
        llmq_keyring_limited (ring, c->key);
        return false;
    }
    if (c->status != 401 && c->status != 403) {
        return false;
    }
    uint64_t now = llmq_mono_ms ();
    llmq_keyring_refused (ring, c->key, now);
    c->tried |= UINT64_C (1) << c->key;
    size_t next = llmq_keyring_retry (ring, c->key, c->tried, now);
    if (next == LLMQ_KEY_NONE) {
        return false;                   /* every key failed: AUTH goes out */
    }
    /*  Key numbers only, never a key. */
    llmq_info ("job %llu: key %zu of deployment %s refused (HTTP %ld): trying key %zu",
               (unsigned long long) c->id, c->key + 1, c->dep->name, c->status, next + 1);
    c->key = next;
    s_response_reset (c);
    s_transfer (c);
    return true;
}

/*  A server that streams without saying text/event-stream: its body was
    collected whole, and is parsed as a stream now. */
static bool
s_looks_like_sse (const llmq_text_t *body)
{
    return body->len >= 5 && (memcmp (body->p, "data:", 5) == 0 || body->p[0] == ':');
}

/*  A transfer curl finished, well or not. */
static void
s_done (llmq_call_t *c, CURLcode rc)
{
    curl_multi_remove_handle (c->w->multi, c->easy);
    s_flush_chunk (c);              /* what streamed in before the end */
    if (!c->status_known) {
        long status = 0;
        curl_easy_getinfo (c->easy, CURLINFO_RESPONSE_CODE, &status);
        c->status = status;
    }
    llmq_reply_t *r = &c->reply;
    if (rc != CURLE_OK) {
        if (r->error_class == LLMQ_EC_NONE) {
            llmq_reply_fail (r, llmq_transport_error_class (rc, c->seq > 0), "%s",
                             c->errbuf[0] ? c->errbuf : curl_easy_strerror (rc));
        }
    }
    else if (c->status < 200 || c->status >= 300) {
        c->prov->classify (c->status, c->resp.p, c->resp.len, r);
    }
    else if (c->stream && (c->is_sse || s_looks_like_sse (&c->resp))) {
        if (!c->is_sse && llmq_sse_feed (c->sse, c->resp.p, c->resp.len) != 0
            && r->error_class == LLMQ_EC_NONE) {
            llmq_reply_fail (r, LLMQ_EC_BAD_RESPONSE, "stream event over %u bytes", LLMQ_SSE_MAX_EVENT);
        }
        s_flush_chunk (c);
        if (r->error_class == LLMQ_EC_NONE && !r->finished && !llmq_sse_done (c->sse)) {
            if (c->seq > 0) {
                llmq_reply_fail (r, LLMQ_EC_STREAM_BROKEN, "stream ended before the answer did");
            }
            else {
                llmq_reply_fail (r, LLMQ_EC_BAD_RESPONSE, "stream ended without an answer");
            }
        }
    }
    else if (c->prov->parse_response (c->resp.p ? c->resp.p : "", c->resp.len, r) == 0
             && c->stream && r->content.len > 0) {
        /*  Asked to stream, answered in one piece: one chunk. */
        s_send_chunk (c->w, c->id, c->lease, &c->seq, r->content.p, r->content.len);
    }
    if (c->seq > 0 && llmq_error_class_retryable (r->error_class)) {
        /*  Part of the answer already reached the client (an error event or
            a bad event mid-stream): a retry would start it over, so the
            stream is reported broken, with the reason kept. */
        r->error_class = LLMQ_EC_STREAM_BROKEN;
    }
    if (rc == CURLE_OK && c->seq == 0 && r->error_class != LLMQ_EC_NONE && s_next_key (c)) {
        return;
    }
    s_finish (c);
}

void
llmq_calls_collect (llmq_worker_t *w)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (w->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE) {
            llmq_call_t *c = NULL;
            curl_easy_getinfo (msg->easy_handle, CURLINFO_PRIVATE, (char **) &c);
            if (c) {
                s_done (c, msg->data.result);
            }
        }
    }
}

void
llmq_calls_socket_ready (llmq_worker_t *w, int fd, short revents)
{
    int ev = ((revents & ZMQ_POLLIN) ? CURL_CSELECT_IN : 0)
           | ((revents & ZMQ_POLLOUT) ? CURL_CSELECT_OUT : 0)
           | ((revents & ZMQ_POLLERR) ? CURL_CSELECT_ERR : 0);
    int running;
    curl_multi_socket_action (w->multi, fd, ev, &running);
}

void
llmq_calls_timeout (llmq_worker_t *w)
{
    /*  curl calls the timer callback only when its next timeout changes.
        If it does not (we woke a hair before curl's own clock says the
        timer is due), keep the old deadline so that it fires again. */
    w->curl_timer_set = false;
    int running;
    curl_multi_socket_action (w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    if (!w->curl_timer_set) {
        /*  Ask curl for its deadline: keeping the old one would leave a
            past deadline behind once no transfer is left (curl does not
            call back then) and the loop would spin at a 0 ms timeout. */
        long ms = -1;
        curl_multi_timeout (w->multi, &ms);
        w->curl_due_us = ms < 0 ? -1 : (int64_t) (llmq_mono_us () + (uint64_t) (ms > 0 ? ms : 1) * 1000);
    }
}

llmq_call_t *
llmq_call_find (llmq_worker_t *w, uint64_t id, uint64_t lease)
{
    for (uint32_t i = 0; i < w->nslots; i++) {
        llmq_call_t *c = &w->calls[i];
        if (c->busy && c->id == id && c->lease == lease) {
            return c;
        }
    }
    return NULL;
}

void
llmq_call_abort (llmq_call_t *c, int ec, const char *reason, bool report)
{
    curl_multi_remove_handle (c->w->multi, c->easy);
    if (report) {
        llmq_reply_fail (&c->reply, ec, "%s", reason);
        s_finish (c);
    }
    else {
        s_release (c);
    }
}

uint32_t
llmq_calls_abort_all (llmq_worker_t *w)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < w->nslots; i++) {
        if (w->calls[i].busy) {
            llmq_call_abort (&w->calls[i], LLMQ_EC_CANCELLED, "worker stopping", false);
            n++;
        }
    }
    return n;
}

/*  --- local providers ------------------------------------------------- */

typedef struct {
    llmq_worker_t *w;
    uint64_t id;
    uint64_t lease;
    uint32_t seq;
} s_local_t;

static void
s_on_local_delta (void *arg, const char *text, size_t len)
{
    s_local_t *l = arg;
    s_send_chunk (l->w, l->id, l->lease, &l->seq, text, len);
}

void
llmq_call_answer (llmq_worker_t *w, const llmq_provider_t *prov, const llmq_deployment_t *dep,
                  const llmq_job_t *job)
{
    uint64_t start = llmq_mono_us ();
    s_local_t l = { .w = w, .id = job->id, .lease = job->lease };
    llmq_reply_reset (&w->scratch);
    prov->answer (dep, job, &w->scratch, s_on_local_delta, &l);
    s_send_outcome (w, job->id, job->lease, dep, &w->scratch, 0, llmq_mono_us () - start, NULL, 0,
                    NULL, 0);
}
