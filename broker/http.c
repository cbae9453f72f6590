/*  http.c -- the broker's HTTP side over libmicrohttpd, run from the
    broker's loop (no thread). See http.h.

    Routes:
      GET  /healthz                 200 "ok": the loop turns
      GET  /readyz                  200 "ready", or 503 with the reason
      GET  /metrics                 Prometheus text format 0.0.4
      GET  /admin/breakers          every deployment's breaker and limits
      POST /admin/breakers/reset    [?deployment=NAME] force closed
      GET  /admin/workers           connected workers
      GET  /admin/queue             depths by group and priority
      GET  /admin/quota?user=NAME   (or ?org=NAME) limits, usage, budgets
      POST /admin/quota/reset?user=NAME
      GET  /admin/history           the last breaker state changes
      GET  /admin/streams           running jobs streaming to a client
      POST /admin/streams/cancel?id=N   cancel one of them
      GET  /admin/budget?user=NAME  (or ?org=NAME) budgets and spend
    /admin/ wants "Authorization: Bearer TOKEN" when a token is configured
    and answers 403 when none is. Errors are JSON: {"error": "..."}.
*/
#include "http.h"
#include "config.h"
#include "log.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/*  LLMQ_ERR_* values used here (client/include/llmq.h; never renumbered). */
#define S_ERR_INVALID   1
#define S_ERR_NOT_FOUND 6
#define S_ERR_STATE     14

struct llmq_http {
    struct MHD_Daemon *daemon;
    llmq_http_handlers_t h;
    char *token;                    /* NULL: admin API disabled */
    char *cert, *key;               /* PEM texts for HTTPS, or NULL */
    int port;
};

/*  Constant-time comparison, so a wrong token's timing says nothing of the
    right one (only its length). */
static bool
s_token_eq (const char *a, const char *b)
{
    size_t la = strlen (a), lb = strlen (b);
    unsigned char diff = la == lb ? 0 : 1;
    for (size_t i = 0; i < la; i++) {
        diff |= (unsigned char) (a[i] ^ b[i % (lb ? lb : 1)]);
    }
    return diff == 0 && lb > 0;
}

static enum MHD_Result
s_respond (struct MHD_Connection *con, unsigned status, const char *type, char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer (len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free (body);
        return MHD_NO;
    }
    MHD_add_response_header (r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header (r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result rc = MHD_queue_response (con, status, r);
    MHD_destroy_response (r);
    return rc;
}

static enum MHD_Result
s_text (struct MHD_Connection *con, unsigned status, const char *text)
{
    char *body = strdup (text);
    return body ? s_respond (con, status, "text/plain; charset=utf-8", body, strlen (body)) : MHD_NO;
}

static enum MHD_Result
s_json (struct MHD_Connection *con, unsigned status, json_t *obj)
{
    char *body = obj ? json_dumps (obj, JSON_COMPACT) : NULL;
    json_decref (obj);
    if (!body) {
        return MHD_NO;
    }
    size_t len = strlen (body);
    char *nl = realloc (body, len + 2);
    if (nl) {
        body = nl;
        body[len++] = '\n';
        body[len] = '\0';
    }
    return s_respond (con, status, "application/json", body, len);
}

static enum MHD_Result
s_json_error (struct MHD_Connection *con, unsigned status, const char *why)
{
    return s_json (con, status, json_pack ("{s:s}", "error", why));
}

/*  Map an admin request to the broker's op, or answer 404/405. */
static enum MHD_Result
s_admin (llmq_http_t *self, struct MHD_Connection *con, const char *method, const char *url)
{
    if (!self->token) {
        return s_json_error (con, MHD_HTTP_FORBIDDEN, "admin API disabled: set [broker] admin_token_env");
    }
    const char *auth = MHD_lookup_connection_value (con, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!auth || strncmp (auth, "Bearer ", 7) != 0 || !s_token_eq (auth + 7, self->token)) {
        struct MHD_Response *r = NULL;
        char *body = strdup ("{\"error\":\"missing or wrong bearer token\"}\n");
        if (body) {
            r = MHD_create_response_from_buffer (strlen (body), body, MHD_RESPMEM_MUST_FREE);
        }
        if (!r) {
            free (body);
            return MHD_NO;
        }
        MHD_add_response_header (r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        MHD_add_response_header (r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"llmq\"");
        enum MHD_Result rc = MHD_queue_response (con, MHD_HTTP_UNAUTHORIZED, r);
        MHD_destroy_response (r);
        return rc;
    }
    static const struct {
        const char *method, *path, *op;
    } routes[] = {
        { "GET",  "/admin/breakers",       "breakers.list" },
        { "POST", "/admin/breakers/reset", "breaker.reset" },
        { "GET",  "/admin/limits",         "limits.show" },
        { "GET",  "/admin/workers",        "workers.list" },
        { "GET",  "/admin/queue",          "queue.show" },
        { "GET",  "/admin/quota",          "quota.show" },
        { "POST", "/admin/quota/reset",    "quota.reset" },
        { "GET",  "/admin/history",        "breaker.history" },
        { "GET",  "/admin/streams",        "streams.list" },
        { "POST", "/admin/streams/cancel", "streams.cancel" },
        { "GET",  "/admin/budget",         "budget.show" },
    };
    const char *op = NULL;
    bool path_known = false;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strcmp (url, routes[i].path) == 0) {
            path_known = true;
            if (strcmp (method, routes[i].method) == 0) {
                op = routes[i].op;
            }
        }
    }
    if (!op) {
        return path_known ? s_json_error (con, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed")
                          : s_json_error (con, MHD_HTTP_NOT_FOUND, "no such admin endpoint");
    }
    json_t *req = json_pack ("{s:s}", "op", op);
    static const char *args[] = { "deployment", "user", "org" };
    for (size_t i = 0; req && i < sizeof args / sizeof args[0]; i++) {
        const char *v = MHD_lookup_connection_value (con, MHD_GET_ARGUMENT_KIND, args[i]);
        if (v && *v) {
            json_object_set_new (req, args[i], json_string (v));
        }
    }
    /*  A job id travels as a JSON integer; anything else as given, for the
        op to refuse by name. */
    const char *id = MHD_lookup_connection_value (con, MHD_GET_ARGUMENT_KIND, "id");
    if (req && id && *id) {
        char *end = NULL;
        unsigned long long v = strtoull (id, &end, 10);
        bool digits = *end == '\0' && id[0] >= '0' && id[0] <= '9' && v <= (unsigned long long) INT64_MAX;
        json_object_set_new (req, "id", digits ? json_integer ((json_int_t) v) : json_string (id));
    }
    if (!req) {
        return MHD_NO;
    }
    int code = 0;
    char why[512] = "";
    json_t *rep = self->h.admin (self->h.arg, req, &code, why, sizeof why);
    json_decref (req);
    if (!rep) {
        unsigned status = code == S_ERR_INVALID ? MHD_HTTP_BAD_REQUEST
                        : code == S_ERR_NOT_FOUND ? MHD_HTTP_NOT_FOUND
                        : code == S_ERR_STATE ? MHD_HTTP_CONFLICT : MHD_HTTP_INTERNAL_SERVER_ERROR;
        return s_json_error (con, status, why[0] ? why : "admin operation failed");
    }
    return s_json (con, MHD_HTTP_OK, rep);
}

static enum MHD_Result
s_on_request (void *cls, struct MHD_Connection *con, const char *url, const char *method,
              const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    (void) version; (void) upload_data;
    llmq_http_t *self = (llmq_http_t *) cls;
    static int first_seen;
    if (*con_cls == NULL) {
        *con_cls = &first_seen;     /* headers in: answer once the body (ignored) is in */
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;      /* no endpoint takes a body */
        return MHD_YES;
    }
    bool get = strcmp (method, "GET") == 0 || strcmp (method, "HEAD") == 0;
    if (strncmp (url, "/admin/", 7) == 0) {
        return s_admin (self, con, method, url);
    }
    if (strcmp (url, "/healthz") == 0 || strcmp (url, "/readyz") == 0 || strcmp (url, "/metrics") == 0) {
        if (!get) {
            return s_text (con, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
        }
    }
    else {
        return s_text (con, MHD_HTTP_NOT_FOUND, "not found\n");
    }
    if (strcmp (url, "/healthz") == 0) {
        return s_text (con, MHD_HTTP_OK, "ok\n");
    }
    if (strcmp (url, "/readyz") == 0) {
        char why[256] = "";
        if (self->h.ready (self->h.arg, why, sizeof why) == 0) {
            return s_text (con, MHD_HTTP_OK, "ready\n");
        }
        char text[300];
        snprintf (text, sizeof text, "not ready: %s\n", why[0] ? why : "unknown");
        return s_text (con, MHD_HTTP_SERVICE_UNAVAILABLE, text);
    }
    size_t len = 0;
    char *body = self->h.metrics (self->h.arg, &len);
    if (!body) {
        return s_text (con, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    }
    return s_respond (con, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len);
}

/*  "HOST:PORT" into an IPv4 address (config.c checked it at load). */
static int
s_parse_address (const char *address, struct sockaddr_in *sa, char *err, size_t errlen)
{
    memset (sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    uint16_t port = 0;
    const char *expected = llmq_config_http_address (address, &sa->sin_addr, &port);
    if (expected) {
        snprintf (err, errlen, "[broker] http: %s, got '%s'", expected, address ? address : "");
        return -1;
    }
    sa->sin_port = htons (port);
    return 0;
}

llmq_http_t *
llmq_http_new (const char *address, const char *token, const char *cert_pem, const char *key_pem,
               const llmq_http_handlers_t *handlers, char *err, size_t errlen)
{
    struct sockaddr_in sa;
    if (s_parse_address (address, &sa, err, errlen)) {
        return NULL;
    }
    llmq_http_t *self = (llmq_http_t *) calloc (1, sizeof *self);
    if (!self) {
        snprintf (err, errlen, "out of memory");
        return NULL;
    }
    self->h = *handlers;
    if (token && *token) {
        self->token = strdup (token);
        if (!self->token) {
            snprintf (err, errlen, "out of memory");
            llmq_http_destroy (&self);
            return NULL;
        }
    }
    /*  HTTPS: the PEM texts are kept until the daemon stops. */
    bool tls = cert_pem && key_pem;
    if (tls && (!(self->cert = strdup (cert_pem)) || !(self->key = strdup (key_pem)))) {
        snprintf (err, errlen, "out of memory");
        llmq_http_destroy (&self);
        return NULL;
    }
    if (tls && MHD_is_feature_supported (MHD_FEATURE_TLS) != MHD_YES) {
        snprintf (err, errlen, "[broker] http_tls_cert: this libmicrohttpd was built without TLS");
        llmq_http_destroy (&self);
        return NULL;
    }
    /*  No thread: MHD_USE_EPOLL without MHD_USE_INTERNAL_POLLING_THREAD.
        Few connections, short timeouts: scrapers and operators, not the
        public. */
    struct MHD_OptionItem options[] = {
        { MHD_OPTION_SOCK_ADDR, 0, &sa },
        { MHD_OPTION_CONNECTION_LIMIT, 64, NULL },
        { MHD_OPTION_CONNECTION_TIMEOUT, 30, NULL },
        { tls ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, self->cert },
        { tls ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, self->key },
        { MHD_OPTION_END, 0, NULL },
    };
    self->daemon = MHD_start_daemon (MHD_USE_EPOLL | MHD_USE_ERROR_LOG | (tls ? MHD_USE_TLS : 0), 0, NULL, NULL,
                                     s_on_request, self, MHD_OPTION_ARRAY, options, MHD_OPTION_END);
    if (!self->daemon) {
        snprintf (err, errlen, tls ? "[broker] http: cannot serve HTTPS on %s (address in use, or "
                                     "http_tls_cert and http_tls_key not a PEM certificate and its key?)"
                                   : "[broker] http: cannot listen on %s (address in use?)", address);
        llmq_http_destroy (&self);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_BIND_PORT);
    self->port = info ? info->port : 0;
    return self;
}

void
llmq_http_destroy (llmq_http_t **self_p)
{
    if (self_p && *self_p) {
        llmq_http_t *self = *self_p;
        if (self->daemon) {
            MHD_stop_daemon (self->daemon);
        }
        free (self->token);
        free (self->cert);
        if (self->key) {
            explicit_bzero (self->key, strlen (self->key));
            free (self->key);
        }
        free (self);
        *self_p = NULL;
    }
}

int
llmq_http_port (llmq_http_t *self)
{
    return self->port;
}

int
llmq_http_fd (llmq_http_t *self)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    return info ? info->epoll_fd : -1;
}

long
llmq_http_timeout (llmq_http_t *self, long max_ms)
{
    MHD_UNSIGNED_LONG_LONG t = 0;
    if (MHD_get_timeout (self->daemon, &t) == MHD_YES && (long long) t < (long long) max_ms) {
        return (long) t;
    }
    return max_ms;
}

void
llmq_http_run (llmq_http_t *self)
{
    if (MHD_run (self->daemon) != MHD_YES) {
        llmq_debug ("http: MHD_run failed");
    }
}
