/*  harness.c -- real llmq processes for integration tests. See harness.h. */
#include "harness.h"

#include <arpa/inet.h>
#include <check.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef LLMQ_BIN_DIR
#   error "LLMQ_BIN_DIR must point at the build tree"
#endif

static uint64_t
s_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/*  A port nobody listens on right now (the kernel's choice). */
static int
s_free_port (void)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset (&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = -1;
    if (fd >= 0 && bind (fd, (struct sockaddr *) &a, sizeof a) == 0
    &&  getsockname (fd, (struct sockaddr *) &a, &len) == 0) {
        port = ntohs (a.sin_port);
    }
    if (fd >= 0) {
        close (fd);
    }
    return port;
}

char *
h_slurp (const char *path)
{
    FILE *f = fopen (path, "rb");
    if (!f) {
        return NULL;
    }
    fseek (f, 0, SEEK_END);
    long n = ftell (f);
    fseek (f, 0, SEEK_SET);
    char *buf = (char *) malloc ((size_t) n + 1);
    size_t got = buf ? fread (buf, 1, (size_t) n, f) : 0;
    fclose (f);
    if (buf) {
        buf[got] = 0;
    }
    return buf;
}

static void
s_write (const char *path, const char *text)
{
    FILE *f = fopen (path, "w");
    if (f) {
        fputs (text, f);
        fclose (f);
    }
}

harness_t *
h_new (const char *extra_broker)
{
    /* The mock deployment reads its key from here; workers inherit it. */
    setenv ("LLMQ_TEST_KEY", "sk-test-harness-key-0123456789", 0);
    harness_t *self = (harness_t *) calloc (1, sizeof *self);
    snprintf (self->dir, sizeof self->dir, "/tmp/llmq-test-XXXXXX");
    if (!mkdtemp (self->dir)) {
        free (self);
        return NULL;
    }
    snprintf (self->conf, sizeof self->conf, "%s/llmq.conf", self->dir);
    snprintf (self->data, sizeof self->data, "%s/data", self->dir);
    snprintf (self->frontend, sizeof self->frontend, "tcp://127.0.0.1:%d", s_free_port ());
    snprintf (self->backend, sizeof self->backend, "tcp://127.0.0.1:%d", s_free_port ());
    self->mock_port = s_free_port ();
    char conf[4096];
    snprintf (conf, sizeof conf,
              "[broker]\n"
              "frontend = %s\n"
              "backend = %s\n"
              "data_dir = %s\n"
              "%s"
              "\n[worker]\n"
              "slots = 64\n"
              "\n[deployment echo]\n"
              "provider = echo\n"
              "\n[deployment mock]\n"
              "provider = openai\n"
              "model = mock-model\n"
              "base_url = http://127.0.0.1:%d/v1\n"
              "api_key_env = LLMQ_TEST_KEY\n"
              "timeout = 30s\n"
              /*  Suites fail this deployment on purpose, case after case:
                  its breaker stays out of their way (test_chaos.c tests
                  breakers with deployments of its own). */
              "breaker_failures = 1000000\n"
              "\n[group echo]\n"
              "deployments = echo\n"
              "\n[group gpt]\n"
              "deployments = mock\n",
              self->frontend, self->backend, self->data, extra_broker ? extra_broker : "",
              self->mock_port);
    s_write (self->conf, conf);
    return self;
}

static void
s_kill (h_proc_t *p)
{
    if (p->pid > 0) {
        kill (p->pid, SIGKILL);
        waitpid (p->pid, NULL, 0);
        p->pid = 0;
    }
}

void
h_destroy (harness_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    harness_t *self = *self_p;
    for (int i = 0; i < self->nworkers; i++) {
        s_kill (&self->workers[i]);
    }
    s_kill (&self->broker);
    s_kill (&self->mock);
    if (!getenv ("LLMQ_TEST_KEEP")) {
        char cmd[600];
        snprintf (cmd, sizeof cmd, "rm -rf '%s'", self->dir);
        if (system (cmd) != 0) {
            fprintf (stderr, "harness: could not remove %s\n", self->dir);
        }
    }
    else {
        fprintf (stderr, "harness: kept %s\n", self->dir);
    }
    free (self);
    *self_p = NULL;
}

static int
s_spawn (h_proc_t *p, const char *log, const char *const *argv)
{
    snprintf (p->log, sizeof p->log, "%s", log);
    pid_t pid = fork ();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        int fd = open (log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2 (fd, 1);
            dup2 (fd, 2);
            close (fd);
        }
        int null = open ("/dev/null", O_RDONLY);
        if (null >= 0) {
            dup2 (null, 0);
            close (null);
        }
        execv (argv[0], (char *const *) argv);
        _exit (127);
    }
    p->pid = pid;
    return 0;
}

/*  Wait for `path` to appear (renamed into place) using inotify. */
static bool
s_wait_file (const char *dir, const char *path, int timeout_ms)
{
    int fd = inotify_init1 (IN_NONBLOCK | IN_CLOEXEC);
    inotify_add_watch (fd, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_CREATE);
    uint64_t end = s_ms () + (uint64_t) timeout_ms;
    bool found = false;
    while (!(found = access (path, F_OK) == 0) && s_ms () < end) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        poll (&pfd, 1, (int) (end - s_ms ()));
        char buf[4096];
        while (read (fd, buf, sizeof buf) > 0) {
        }
    }
    close (fd);
    return found;
}

int
h_start_mock (harness_t *self, const char *const *args)
{
    char port[16], portfile[300], log[300];
    snprintf (port, sizeof port, "%d", self->mock_port);
    snprintf (portfile, sizeof portfile, "%s/mock.port", self->dir);
    snprintf (log, sizeof log, "%s/mock.log", self->dir);
    unlink (portfile);
    const char *argv[32] = { LLMQ_BIN_DIR "/tests/mock/llmq-mock-provider", "--port", port,
                             "--port-file", portfile, "--quiet" };
    int n = 6;
    for (int i = 0; args && args[i] && n < 31; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    if (s_spawn (&self->mock, log, argv)) {
        return -1;
    }
    return s_wait_file (self->dir, portfile, 10000) ? 0 : -1;
}

int
h_start_broker (harness_t *self, const char *const *args)
{
    char log[300];
    snprintf (log, sizeof log, "%s/broker.log", self->dir);
    const char *argv[32] = { LLMQ_BIN_DIR "/broker/llmq-broker", "-c", self->conf };
    int n = 3;
    for (int i = 0; args && args[i] && n < 31; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    if (s_spawn (&self->broker, log, argv)) {
        return -1;
    }
    llmq *c = NULL;
    int rc = llmq_connect (self->frontend, 10000, &c);
    llmq_close (&c);
    return rc == LLMQ_OK ? 0 : -1;
}

int
h_start_worker (harness_t *self, int slots, int expect)
{
    if (self->nworkers == H_MAX_WORKERS) {
        return -1;
    }
    int i = self->nworkers++;
    char log[300], sl[16];
    snprintf (log, sizeof log, "%s/worker%d.log", self->dir, i);
    snprintf (sl, sizeof sl, "%d", slots);
    const char *argv[] = { LLMQ_BIN_DIR "/worker/llmq-worker", "-c", self->conf, "--slots", sl, NULL };
    if (s_spawn (&self->workers[i], log, argv)) {
        return -1;
    }
    if (expect < 0) {
        return i;               /* no broker to ask: the caller syncs itself */
    }
    llmq *c = h_client (self);
    bool ok = c && h_wait_stat (c, "worker_count", expect, 10000);
    llmq_close (&c);
    return ok ? i : -1;
}

int
h_stop (h_proc_t *p, int sig)
{
    if (p->pid <= 0) {
        return -1;
    }
    kill (p->pid, sig);
    int status = 0;
    waitpid (p->pid, &status, 0);
    p->pid = 0;
    return WIFEXITED (status) ? WEXITSTATUS (status) : 128 + WTERMSIG (status);
}

llmq *
h_client (harness_t *self)
{
    llmq *c = NULL;
    return llmq_connect (self->frontend, 10000, &c) == LLMQ_OK ? c : NULL;
}

static long
s_json_path (json_t *root, const char *path)
{
    char buf[256];
    snprintf (buf, sizeof buf, "%s", path);
    json_t *node = root;
    for (char *save = NULL, *part = strtok_r (buf, ".", &save); part && node;
         part = strtok_r (NULL, ".", &save)) {
        /*  An array element by its index: "workers.0.slots". */
        node = json_is_array (node) ? json_array_get (node, strtoul (part, NULL, 10))
                                    : json_object_get (node, part);
    }
    return node && json_is_integer (node) ? (long) json_integer_value (node)
         : node && json_is_true (node) ? 1 : node && json_is_false (node) ? 0 : -1;
}

long
h_stat (llmq *client, const char *path)
{
    char *text = NULL;
    if (llmq_stats (client, &text, 5000) != LLMQ_OK) {
        return -1;
    }
    json_t *root = json_loads (text, 0, NULL);
    llmq_free (text);
    long v = root ? s_json_path (root, path) : -1;
    json_decref (root);
    return v;
}

bool
h_wait_stat (llmq *client, const char *path, long value, int timeout_ms)
{
    uint64_t end = s_ms () + (uint64_t) timeout_ms;
    do {
        if (h_stat (client, path) == value) {
            return true;
        }
        h_backoff ();
    } while (s_ms () < end);
    return false;
}

void
h_backoff (void)
{
    struct timespec ts = { 0, 5 * 1000 * 1000 };
    nanosleep (&ts, NULL);
}

static size_t
s_collect (char *ptr, size_t size, size_t n, void *arg)
{
    json_t **out = (json_t **) arg;
    size_t len = size * n;
    json_t *s = *out ? *out : json_string ("");
    char *joined = NULL;
    if (asprintf (&joined, "%s%.*s", json_string_value (s), (int) len, ptr) >= 0) {
        json_string_set (s, joined);
        free (joined);
    }
    *out = s;
    return len;
}

static json_t *
s_http (harness_t *self, const char *method, const char *path, const char *body)
{
    CURL *curl = curl_easy_init ();
    char url[256];
    snprintf (url, sizeof url, "http://127.0.0.1:%d%s", self->mock_port, path);
    json_t *text = NULL;
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &text);
    struct curl_slist *headers = NULL;
    if (body) {
        headers = curl_slist_append (headers, "Content-Type: application/json");
        curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body);
    }
    CURLcode rc = curl_easy_perform (curl);
    curl_slist_free_all (headers);
    curl_easy_cleanup (curl);
    json_t *doc = NULL;
    if (rc == CURLE_OK && text) {
        doc = json_loads (json_string_value (text), 0, NULL);
        if (!doc) {
            doc = json_object ();
        }
    }
    json_decref (text);
    return doc;
}

long
h_mock_stat (harness_t *self, const char *key)
{
    json_t *doc = s_http (self, "GET", "/mock/stats", NULL);
    long v = doc ? s_json_path (doc, key) : -1;
    json_decref (doc);
    return v;
}

long
h_mock_stat_tls (harness_t *self, const char *key, const char *ca_file)
{
    CURL *curl = curl_easy_init ();
    if (!curl) {
        return -1;
    }
    char url[256];
    snprintf (url, sizeof url, "https://127.0.0.1:%d/mock/stats", self->mock_port);
    json_t *text = NULL;
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_CAINFO, ca_file);
    curl_easy_setopt (curl, CURLOPT_CAPATH, NULL);
    curl_easy_setopt (curl, CURLOPT_PROXY, "");         /* loopback: never a proxy */
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &text);
    CURLcode rc = curl_easy_perform (curl);
    curl_easy_cleanup (curl);
    json_t *doc = rc == CURLE_OK && text ? json_loads (json_string_value (text), 0, NULL) : NULL;
    json_decref (text);
    long v = doc ? s_json_path (doc, key) : -1;
    json_decref (doc);
    return v;
}

int
h_mock_post (harness_t *self, const char *path, const char *json)
{
    json_t *doc = s_http (self, "POST", path, json);
    int rc = doc ? 0 : -1;
    json_decref (doc);
    return rc;
}

bool
h_wait_mock_stat (harness_t *self, const char *key, long value, int timeout_ms)
{
    uint64_t end = s_ms () + (uint64_t) timeout_ms;
    do {
        if (h_mock_stat (self, key) == value) {
            return true;
        }
        h_backoff ();
    } while (s_ms () < end);
    return false;
}

int
h_run_suite (Suite *suite)
{
    signal (SIGPIPE, SIG_IGN);
    SRunner *sr = srunner_create (suite);
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? 1 : 0;
}

/* ------------------------------------------------------------------------
   Additions for test_chaos.c: string stats, more than one mock provider.
   ------------------------------------------------------------------------ */

bool
h_stat_str (llmq *client, const char *path, char *out, size_t len)
{
    char *text = NULL;
    if (len == 0 || llmq_stats (client, &text, 5000) != LLMQ_OK) {
        return false;
    }
    json_t *root = json_loads (text, 0, NULL);
    llmq_free (text);
    char buf[256];
    snprintf (buf, sizeof buf, "%s", path);
    json_t *node = root;
    for (char *save = NULL, *part = strtok_r (buf, ".", &save); part && node;
         part = strtok_r (NULL, ".", &save)) {
        node = json_object_get (node, part);
    }
    bool ok = node && json_is_string (node);
    if (ok) {
        snprintf (out, len, "%s", json_string_value (node));
    }
    json_decref (root);
    return ok;
}

bool
h_wait_stat_str (llmq *client, const char *path, const char *value, int timeout_ms)
{
    uint64_t end = s_ms () + (uint64_t) timeout_ms;
    do {
        char got[256];
        if (h_stat_str (client, path, got, sizeof got) && strcmp (got, value) == 0) {
            return true;
        }
        h_backoff ();
    } while (s_ms () < end);
    return false;
}

int
h_start_mock_extra (harness_t *self, h_mock_t *mock, const char *name, const char *const *args)
{
    memset (mock, 0, sizeof *mock);
    mock->port = s_free_port ();
    char port[16], portfile[320], log[320];
    snprintf (port, sizeof port, "%d", mock->port);
    snprintf (portfile, sizeof portfile, "%s/%s.port", self->dir, name);
    snprintf (log, sizeof log, "%s/%s.log", self->dir, name);
    unlink (portfile);
    const char *argv[32] = { LLMQ_BIN_DIR "/tests/mock/llmq-mock-provider", "--port", port,
                             "--port-file", portfile, "--quiet" };
    int n = 6;
    for (int i = 0; args && args[i] && n < 31; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    if (mock->port < 0 || s_spawn (&mock->proc, log, argv)) {
        return -1;
    }
    return s_wait_file (self->dir, portfile, 10000) ? 0 : -1;
}

/*  One request to the mock on `port`; its JSON answer, or NULL. */
static json_t *
s_http_at (int port, const char *method, const char *path, const char *body)
{
    CURL *curl = curl_easy_init ();
    if (!curl) {
        return NULL;
    }
    char url[256];
    snprintf (url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    json_t *text = NULL;
    curl_easy_setopt (curl, CURLOPT_URL, url);
    curl_easy_setopt (curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt (curl, CURLOPT_PROXY, "");         /* loopback: never a proxy */
    curl_easy_setopt (curl, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt (curl, CURLOPT_WRITEFUNCTION, s_collect);
    curl_easy_setopt (curl, CURLOPT_WRITEDATA, &text);
    struct curl_slist *headers = NULL;
    if (body) {
        headers = curl_slist_append (headers, "Content-Type: application/json");
        curl_easy_setopt (curl, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt (curl, CURLOPT_POSTFIELDS, body);
    }
    CURLcode rc = curl_easy_perform (curl);
    long status = 0;
    curl_easy_getinfo (curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all (headers);
    curl_easy_cleanup (curl);
    json_t *doc = NULL;
    if (rc == CURLE_OK && status >= 200 && status < 300) {
        doc = text ? json_loads (json_string_value (text), 0, NULL) : NULL;
        if (!doc) {
            doc = json_object ();
        }
    }
    json_decref (text);
    return doc;
}

long
h_mock_stat_at (int port, const char *key)
{
    json_t *doc = s_http_at (port, "GET", "/mock/stats", NULL);
    long v = doc ? s_json_path (doc, key) : -1;
    json_decref (doc);
    return v;
}

int
h_mock_call_at (int port, const char *method, const char *path, const char *json)
{
    json_t *doc = s_http_at (port, method, path, json);
    int rc = doc ? 0 : -1;
    json_decref (doc);
    return rc;
}

static int
s_cmp_i64 (const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return x < y ? -1 : x > y;
}

long
h_mock_requests_at (int port, int64_t since_ms, int64_t **times, int64_t **tokens)
{
    char path[64];
    snprintf (path, sizeof path, "/mock/requests?since=%lld", (long long) since_ms);
    json_t *doc = s_http_at (port, "GET", path, NULL);
    json_t *ts = doc ? json_object_get (doc, "timestamps_ms") : NULL;
    json_t *tk = doc ? json_object_get (doc, "tokens") : NULL;
    size_t n = json_array_size (ts);
    if (!json_is_array (ts) || (tokens && json_array_size (tk) != n)) {
        json_decref (doc);
        return -1;
    }
    /*  Sorted by time, tokens kept with their request: the mock records
        from many threads, so two arrivals in one ms may come in either
        order. */
    int64_t (*pairs)[2] = calloc (n ? n : 1, sizeof *pairs);
    *times = (int64_t *) calloc (n ? n : 1, sizeof (int64_t));
    if (tokens) {
        *tokens = (int64_t *) calloc (n ? n : 1, sizeof (int64_t));
    }
    if (!pairs || !*times || (tokens && !*tokens)) {
        free (pairs);
        free (*times);
        *times = NULL;
        if (tokens) {
            free (*tokens);
            *tokens = NULL;
        }
        json_decref (doc);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        pairs[i][0] = (int64_t) json_integer_value (json_array_get (ts, i));
        pairs[i][1] = tokens ? (int64_t) json_integer_value (json_array_get (tk, i)) : 0;
    }
    qsort (pairs, n, sizeof *pairs, s_cmp_i64);     /* by the first: the time */
    for (size_t i = 0; i < n; i++) {
        (*times)[i] = pairs[i][0];
        if (tokens) {
            (*tokens)[i] = pairs[i][1];
        }
    }
    free (pairs);
    json_decref (doc);
    return (long) n;
}

int
h_broker_http_port (const char *ready_file)
{
    char *text = h_slurp (ready_file);
    if (!text) {
        return -1;
    }
    /*  Lines: frontend, backend, then the HTTP port if [broker] http is on. */
    char *line = text;
    for (int i = 0; i < 2 && line; i++) {
        line = strchr (line, '\n');
        line = line ? line + 1 : NULL;
    }
    int port = line && *line ? atoi (line) : -1;
    free (text);
    return port > 0 ? port : -1;
}

h_cli_t
h_cli (harness_t *self, const char *const *args)
{
    char outp[400], errp[400];
    snprintf (outp, sizeof outp, "%s/cli.out", self->dir);
    snprintf (errp, sizeof errp, "%s/cli.err", self->dir);
    const char *argv[64] = { LLMQ_BIN_DIR "/client/llmq" };
    int n = 1;
    for (int i = 0; args[i] && n < 63; i++) {
        argv[n++] = args[i];
    }
    argv[n] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init (&fa);
    posix_spawn_file_actions_addopen (&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen (&fa, 1, outp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen (&fa, 2, errp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    setenv ("LLMQ_BROKER", self->frontend, 1);
    extern char **environ;
    pid_t pid;
    int rc = posix_spawn (&pid, argv[0], &fa, NULL, (char *const *) argv, environ);
    posix_spawn_file_actions_destroy (&fa);
    ck_assert_msg (rc == 0, "cannot run %s: %s", argv[0], strerror (rc));
    int status = 0;
    ck_assert_int_eq (waitpid (pid, &status, 0), pid);
    h_cli_t r;
    r.status = WIFEXITED (status) ? WEXITSTATUS (status) : 128 + WTERMSIG (status);
    r.out = h_slurp (outp);
    r.err = h_slurp (errp);
    ck_assert_ptr_nonnull (r.out);
    ck_assert_ptr_nonnull (r.err);
    return r;
}

void
h_cli_free (h_cli_t *r)
{
    free (r->out);
    free (r->err);
    memset (r, 0, sizeof *r);
}

/*  The certificates (harness.h). EC P-256 keys: quick to make. openssl's
    output goes to tls/openssl.log. */
void
h_make_certs (harness_t *h)
{
    char path[400];
    snprintf (path, sizeof path, "%s/tls/server.ext", h->dir);
    char cmd[2400];
    snprintf (cmd, sizeof cmd, "mkdir -p '%s/tls/cas'", h->dir);
    ck_assert_int_eq (system (cmd), 0);
    FILE *f = fopen (path, "w");
    ck_assert_ptr_nonnull (f);
    fputs ("basicConstraints = critical, CA:FALSE\n"
           "keyUsage = critical, digitalSignature\n"
           "extendedKeyUsage = serverAuth\n"
           "subjectAltName = IP:127.0.0.1\n", f);
    ck_assert_int_eq (fclose (f), 0);
    const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const char *ca_ext = "-addext 'basicConstraints=critical,CA:TRUE' "
                         "-addext 'keyUsage=critical,keyCertSign,cRLSign'";
    snprintf (cmd, sizeof cmd,
              "cd '%s/tls' && {"
              " openssl req -x509 %s -keyout ca.key -out ca.pem -days 2"
              "   -subj '/CN=llmq test CA' %s"
              " && openssl req -x509 %s -keyout other-ca.key -out other-ca.pem -days 2"
              "   -subj '/CN=llmq other CA' %s"
              " && openssl req %s -keyout server.key -out server.csr -subj '/CN=127.0.0.1'"
              " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
              "   -days 2 -extfile server.ext -out server.pem"
              " && cp ca.pem cas/ && openssl rehash cas; } >openssl.log 2>&1",
              h->dir, ec, ca_ext, ec, ca_ext, ec);
    int rc = system (cmd);
    ck_assert_msg (rc == 0, "openssl failed (%d): is the openssl package installed? "
                   "(deploy/install-deps.sh) See %s/tls/openssl.log", rc, h->dir);
}
