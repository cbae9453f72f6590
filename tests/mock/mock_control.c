/*  mock_control.c -- the control API under /mock/, for tests.

    Tests change the mock's behaviour without restarting it and read back
    exact counters:
        GET    /mock/stats      counters (see mock_stats.h)
        POST   /mock/reset      zero the counters and the timestamp ring
        GET    /mock/requests   {"timestamps_ms":[...]}, ?since=MS to filter
        POST   /mock/faults     queue a fault for the next N chat requests
        GET    /mock/faults     {"queued":N} entries waiting
        DELETE /mock/faults     clear the queue
        POST   /mock/config     change the default delays and chunk count
        GET    /mock/config     read them
        POST   /mock/hook       a webhook receiver: keeps the body (JSON)
        POST   /mock/hook/fail  {"count":N}: answer the next N hooks 500
        GET    /mock/hooks      {"received":N,"refused":N,"bodies":[...]}
    Control requests are not chat requests: they never count in the stats
    and never consume a queued fault. Bad input gets a 400 with the same
    error shape the OpenAI dialect uses, so one client helper reads both.
*/
#include "mock_server.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Queue a response; takes ownership of the malloc'd text
static enum MHD_Result
s_send (struct MHD_Connection *conn, int status, char *text,
        const char *content_type)
{
    if (!text) {
        return MHD_NO;
    }
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (text), text, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free (text);
        return MHD_NO;
    }
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    enum MHD_Result rc = MHD_queue_response (conn, (unsigned int) status, response);
    MHD_destroy_response (response);
    return rc;
}

static enum MHD_Result
s_send_json (struct MHD_Connection *conn, int status, json_t *object)
{
    if (!object) {
        return MHD_NO;
    }
    char *text = json_dumps (object, JSON_COMPACT);
    json_decref (object);
    return s_send (conn, status, text, "application/json");
}

static enum MHD_Result
s_send_error (struct MHD_Connection *conn, int status, const char *message)
{
    return s_send_json (conn, status, json_pack ("{s:{s:s, s:s, s:n, s:n}}",
        "error", "message", message, "type", "invalid_request_error",
        "param", "code"));
}

//  Read an optional integer field in [lo, hi]. Returns 0 (value set or
//  left alone when absent), or -1 if present but wrong.
static int
s_get_int (json_t *root, const char *key, long lo, long hi, int *value)
{
    json_t *field = json_object_get (root, key);
    if (!field || json_is_null (field)) {
        return 0;
    }
    if (!json_is_integer (field)
    ||  json_integer_value (field) < lo || json_integer_value (field) > hi) {
        return -1;
    }
    *value = (int) json_integer_value (field);
    return 0;
}

//  Turn a fault kind ("500", 500, "hang", ...) into a plan; -1 if unknown
static int
s_parse_kind (json_t *kind, mock_plan_t *plan)
{
    long status = -1;
    if (json_is_integer (kind)) {
        status = (long) json_integer_value (kind);
    }
    else
    if (json_is_string (kind)) {
        const char *name = json_string_value (kind);
        if (strcmp (name, "hang") == 0) {
            plan->fault = MOCK_FAULT_HANG;
            return 0;
        }
        if (strcmp (name, "drop") == 0) {
            plan->fault = MOCK_FAULT_DROP;
            return 0;
        }
        if (strcmp (name, "drop_after") == 0) {
            plan->fault = MOCK_FAULT_DROP_AFTER;
            return 0;
        }
        if (strcmp (name, "error_after") == 0) {
            plan->fault = MOCK_FAULT_ERROR_AFTER;
            return 0;
        }
        if (strcmp (name, "malformed") == 0) {
            plan->fault = MOCK_FAULT_MALFORMED;
            return 0;
        }
        if (strcmp (name, "quota") == 0) {
            plan->fault = MOCK_FAULT_QUOTA;
            plan->status = 429;
            return 0;
        }
        char *end = NULL;
        errno = 0;
        status = strtol (name, &end, 10);
        if (errno != 0 || end == name || *end != '\0') {
            return -1;
        }
    }
    if (status < 100 || status > 599) {
        return -1;
    }
    plan->fault = MOCK_FAULT_STATUS;
    plan->status = (int) status;
    return 0;
}

static enum MHD_Result
s_faults_post (mock_server_t *server, struct MHD_Connection *conn,
               json_t *root)
{
    mock_plan_t plan;
    mock_plan_clear (&plan);
    int count = 1;
    int after = 0;
    if (s_parse_kind (json_object_get (root, "kind"), &plan) != 0) {
        return s_send_error (conn, 400, "'kind' must be an HTTP status "
            "(100-599), \"quota\", \"hang\", \"drop\", \"drop_after\", "
            "\"error_after\" or \"malformed\"");
    }
    if (s_get_int (root, "count", -1, 1000000000, &count) != 0 || count == 0) {
        return s_send_error (conn, 400, "'count' must be a positive integer or -1");
    }
    if (s_get_int (root, "retry_after", 0, 86400, &plan.retry_after_s) != 0) {
        return s_send_error (conn, 400, "'retry_after' must be 0..86400 seconds");
    }
    if (s_get_int (root, "after", 0, MOCK_CHUNKS_MAX, &after) != 0) {
        return s_send_error (conn, 400, "'after' must be a chunk count >= 0");
    }
    if (plan.fault == MOCK_FAULT_DROP_AFTER) {
        plan.drop_after = after;
    }
    if (plan.fault == MOCK_FAULT_ERROR_AFTER) {
        plan.error_after = after;
    }
    if (mock_faults_push (server->faults, &plan, count) != 0) {
        return MHD_NO;
    }
    return s_send_json (conn, 200, json_pack ("{s:b, s:I}", "ok", 1,
        "queued", (json_int_t) mock_faults_size (server->faults)));
}

static json_t *
s_config_json (mock_server_t *server)
{
    return json_pack ("{s:i, s:i, s:i}",
        "latency_ms", atomic_load (&server->latency_ms),
        "chunk_delay_ms", atomic_load (&server->chunk_delay_ms),
        "chunks", atomic_load (&server->chunks));
}

static enum MHD_Result
s_config_post (mock_server_t *server, struct MHD_Connection *conn,
               json_t *root)
{
    //  Validate everything before changing anything
    int latency = atomic_load (&server->latency_ms);
    int chunk_delay = atomic_load (&server->chunk_delay_ms);
    int chunks = atomic_load (&server->chunks);
    if (s_get_int (root, "latency_ms", 0, MOCK_DELAY_MAX_MS, &latency) != 0
    ||  s_get_int (root, "chunk_delay_ms", 0, MOCK_DELAY_MAX_MS, &chunk_delay) != 0
    ||  s_get_int (root, "chunks", 1, MOCK_CHUNKS_MAX, &chunks) != 0) {
        return s_send_error (conn, 400, "latency_ms and chunk_delay_ms must be "
            "0..600000, chunks 1..100000");
    }
    atomic_store (&server->latency_ms, latency);
    atomic_store (&server->chunk_delay_ms, chunk_delay);
    atomic_store (&server->chunks, chunks);
    return s_send_json (conn, 200, s_config_json (server));
}

static enum MHD_Result
s_requests_get (mock_server_t *server, struct MHD_Connection *conn)
{
    long long since = 0;
    const char *arg = MHD_lookup_connection_value (conn, MHD_GET_ARGUMENT_KIND, "since");
    if (arg) {
        char *end = NULL;
        errno = 0;
        since = strtoll (arg, &end, 10);
        if (errno != 0 || end == arg || *end != '\0') {
            return s_send_error (conn, 400, "'since' must be milliseconds since the epoch");
        }
    }
    return s_send_json (conn, 200, mock_stats_timestamps_json (server->stats, since));
}

/*  The webhook receiver: bodies kept (the last 1,000), refusals armed. */
static pthread_mutex_t s_hook_lock = PTHREAD_MUTEX_INITIALIZER;
static json_t *s_hook_bodies;
static long s_hook_received, s_hook_refused, s_hook_fail_next;

static enum MHD_Result
s_hook_post (struct MHD_Connection *conn, const char *body, size_t len)
{
    json_t *parsed = json_loadb (body, len, 0, NULL);
    pthread_mutex_lock (&s_hook_lock);
    bool refuse = s_hook_fail_next > 0;
    if (refuse) {
        s_hook_fail_next--;
        s_hook_refused++;
    }
    else {
        if (!s_hook_bodies) {
            s_hook_bodies = json_array ();
        }
        json_array_append_new (s_hook_bodies, parsed ? parsed : json_stringn (body, len));
        parsed = NULL;
        while (json_array_size (s_hook_bodies) > 1000) {
            json_array_remove (s_hook_bodies, 0);
        }
        s_hook_received++;
    }
    pthread_mutex_unlock (&s_hook_lock);
    json_decref (parsed);
    return refuse ? s_send_error (conn, 500, "hook refused on request (/mock/hook/fail)")
                  : s_send_json (conn, 200, json_pack ("{s:b}", "ok", 1));
}

static enum MHD_Result
s_hooks_get (struct MHD_Connection *conn)
{
    pthread_mutex_lock (&s_hook_lock);
    json_t *out = json_pack ("{s:I, s:I, s:O}", "received", (json_int_t) s_hook_received,
                             "refused", (json_int_t) s_hook_refused,
                             "bodies", s_hook_bodies ? s_hook_bodies : json_array ());
    pthread_mutex_unlock (&s_hook_lock);
    return s_send_json (conn, 200, out);
}

enum MHD_Result
mock_control_handle (mock_server_t *server, struct MHD_Connection *conn,
                     const char *method, const char *url,
                     const char *body, size_t len)
{
    bool get = strcmp (method, "GET") == 0;
    bool post = strcmp (method, "POST") == 0;
    bool del = strcmp (method, "DELETE") == 0;

    //  Bodies matter only to the two POSTs that take JSON; an empty body
    //  there reads as {} so `curl -X POST .../mock/config` is harmless
    json_t *root = NULL;
    if (post && strcmp (url, "/mock/hook") == 0) {
        return s_hook_post (conn, body, len);
    }
    bool takes_body = post && (strcmp (url, "/mock/faults") == 0
                            || strcmp (url, "/mock/config") == 0
                            || strcmp (url, "/mock/hook/fail") == 0);
    if (takes_body) {
        json_error_t error;
        root = len > 0 ? json_loadb (body, len, 0, &error) : json_object ();
        if (!json_is_object (root)) {
            json_decref (root);
            return s_send_error (conn, 400, "body must be a JSON object");
        }
    }
    enum MHD_Result rc;
    if (strcmp (url, "/mock/stats") == 0 && get) {
        rc = s_send_json (conn, 200, mock_stats_json (server->stats));
    }
    else
    if (strcmp (url, "/mock/reset") == 0 && post) {
        mock_stats_reset (server->stats);
        rc = s_send_json (conn, 200, json_pack ("{s:b}", "ok", 1));
    }
    else
    if (strcmp (url, "/mock/requests") == 0 && get) {
        rc = s_requests_get (server, conn);
    }
    else
    if (strcmp (url, "/mock/faults") == 0 && post) {
        rc = s_faults_post (server, conn, root);
    }
    else
    if (strcmp (url, "/mock/faults") == 0 && get) {
        rc = s_send_json (conn, 200, json_pack ("{s:I}", "queued",
            (json_int_t) mock_faults_size (server->faults)));
    }
    else
    if (strcmp (url, "/mock/faults") == 0 && del) {
        mock_faults_clear (server->faults);
        rc = s_send_json (conn, 200, json_pack ("{s:b, s:i}", "ok", 1, "queued", 0));
    }
    else
    if (strcmp (url, "/mock/config") == 0 && post) {
        rc = s_config_post (server, conn, root);
    }
    else
    if (strcmp (url, "/mock/config") == 0 && get) {
        rc = s_send_json (conn, 200, s_config_json (server));
    }
    else
    if (strcmp (url, "/mock/hook/fail") == 0 && post) {
        json_int_t n = json_integer_value (json_object_get (root, "count"));
        pthread_mutex_lock (&s_hook_lock);
        s_hook_fail_next = n > 0 ? (long) n : 0;
        pthread_mutex_unlock (&s_hook_lock);
        rc = s_send_json (conn, 200, json_pack ("{s:b}", "ok", 1));
    }
    else
    if (strcmp (url, "/mock/hooks") == 0 && get) {
        rc = s_hooks_get (conn);
    }
    else {
        char message [160];
        snprintf (message, sizeof (message), "Invalid URL (%.16s %.100s)", method, url);
        rc = s_send_error (conn, 404, message);
    }
    json_decref (root);
    return rc;
}
