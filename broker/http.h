/*  http.h -- the broker's HTTP side: health, readiness, Prometheus metrics
    and the admin JSON API ([broker] http; docs/metrics.md lists the
    endpoints and every metric).

    libmicrohttpd runs without a thread of its own: in external-select mode
    with epoll, it hands the broker one file descriptor (llmq_http_fd) that
    the broker adds to its zmq_poll set, and the broker calls llmq_http_run
    once per loop turn, inside the turn's transaction. So every handler
    runs on the broker's thread and reads its state directly, and an admin
    operation's store writes commit with the turn like any message's.

    The handlers are the broker's (llmq_http_handlers_t); this module only
    parses requests, checks the bearer token and writes responses.
*/
#ifndef LLMQ_HTTP_H
#define LLMQ_HTTP_H

#include <jansson.h>
#include <stddef.h>

typedef struct llmq_http llmq_http_t;

typedef struct {
    /*  0 when the broker accepts submits, else -1 with a reason in `why`. */
    int (*ready) (void *arg, char *why, size_t whylen);
    /*  The Prometheus exposition, allocated (caller frees), or NULL. */
    char *(*metrics) (void *arg, size_t *len);
    /*  An admin operation {"op": NAME, ...}: the broker's ops
        ("breaker.reset", "quota.show"...; broker/admin.h) plus "http.queue",
        "http.workers" and "http.breakers". Returns a new JSON object, or
        NULL with an llmq_err in *code and a reason in `why`. */
    json_t *(*admin) (void *arg, json_t *req, int *code, char *why, size_t whylen);
    void *arg;
} llmq_http_handlers_t;

/*  Listen on `address` ("HOST:PORT", HOST an IPv4 address or localhost;
    port 0: one the kernel picks). `token` is the admin bearer token, or
    NULL/"" for none (then /admin/ answers 403). With `cert_pem` and
    `key_pem` (a PEM certificate chain and its private key, the texts) it
    speaks HTTPS only; NULL: plain HTTP. The handlers are copied.
    Returns NULL with a reason in `err`. */
llmq_http_t *llmq_http_new (const char *address, const char *token, const char *cert_pem,
                            const char *key_pem, const llmq_http_handlers_t *handlers, char *err, size_t errlen);
/*  Close every connection and the listener; *self_p becomes NULL. Safe on
    NULL and twice. */
void llmq_http_destroy (llmq_http_t **self_p);

/*  The port actually bound. */
int  llmq_http_port (llmq_http_t *self);
/*  The one descriptor to poll for input (an epoll set). */
int  llmq_http_fd (llmq_http_t *self);
/*  `max_ms` capped by what the HTTP side needs (a connection timeout, or
    0 when it has work pending). */
long llmq_http_timeout (llmq_http_t *self, long max_ms);
/*  Accept, read, answer and close what is ready, without blocking. */
void llmq_http_run (llmq_http_t *self);

#endif
