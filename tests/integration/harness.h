/*  harness.h -- real llmq processes for integration tests.

    A harness owns a scratch directory, a configuration file written into
    it, and the processes it starts there: the mock provider, a broker,
    workers. Every process is started with fork/exec, its output goes to a
    log file in the scratch directory, and it is ended by its PID only.
    Everything listens on 127.0.0.1.

    Readiness is awaited on handshakes, never on fixed sleeps: the mock's
    port file (inotify), the broker's PONG (llmq_connect), and the broker's
    own count of workers (STATS).
*/
#ifndef LLMQ_HARNESS_H
#define LLMQ_HARNESS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include "llmq.h"

#define H_MAX_WORKERS 8

typedef struct {
    pid_t pid;                  /* 0 when not running */
    char log[512];              /* its stdout and stderr */
} h_proc_t;

typedef struct {
    char dir[256];              /* scratch directory */
    char conf[300];             /* config file */
    char data[300];             /* broker data directory */
    char frontend[64];          /* tcp://127.0.0.1:PORT */
    char backend[64];
    int  mock_port;
    h_proc_t mock, broker;
    h_proc_t workers[H_MAX_WORKERS];
    int  nworkers;
} harness_t;

/*  A scratch dir and a config: groups "echo" (echo provider) and "gpt"
    (deployment "mock" on the mock provider). `extra` is appended to the
    [broker] section (e.g. "heartbeat = 200ms\nliveness = 3\n"). */
harness_t *h_new (const char *extra_broker);
/*  Stops everything still running (SIGKILL) and removes the directory. */
void h_destroy (harness_t **self_p);

/*  Start the mock provider with extra arguments (NULL-terminated list). */
int  h_start_mock (harness_t *self, const char *const *args);
/*  Start the broker and wait until it answers PING. */
int  h_start_broker (harness_t *self, const char *const *args);
/*  Start a worker; wait until the broker counts `expect` workers (expect
    < 0: do not wait). Returns the worker's index, or -1. */
int  h_start_worker (harness_t *self, int slots, int expect);

/*  Signal a process and reap it; returns its exit status (or -1). */
int  h_stop (h_proc_t *proc, int sig);
/*  Connect a client to the broker. */
llmq *h_client (harness_t *self);

/*  Broker statistics, parsed: returns a value by a dotted path such as
    "worker_count" or "totals.done", or -1. */
long h_stat (llmq *client, const char *path);
/*  Wait until h_stat(path) == value, up to timeout_ms. Polls the broker
    (a request/reply each time), which is the condition itself. */
bool h_wait_stat (llmq *client, const char *path, long value, int timeout_ms);

/*  Space out two checks of a condition (5 ms). Only between polls of a
    condition that has its own deadline; never as a wait for readiness. */
void h_backoff (void);

/*  The mock's counters (GET /mock/stats), by key: -1 on error. */
long h_mock_stat (harness_t *self, const char *key);
/*  Wait until the mock's counter `key` equals value, up to timeout_ms. */
bool h_wait_mock_stat (harness_t *self, const char *key, long value, int timeout_ms);
/*  h_mock_stat for a mock started with --tls-cert: over https, trusting
    only the CA certificate(s) in `ca_file` (PEM). Each call opens one new
    connection to the mock, counted in its "connections". -1 on error. */
long h_mock_stat_tls (harness_t *self, const char *key, const char *ca_file);
/*  POST a JSON body to a mock control path, e.g. "/mock/faults". */
int  h_mock_post (harness_t *self, const char *path, const char *json);

/*  Broker statistics, a string by a dotted path (e.g.
    "deployments.flaky.breaker") copied into out (cut to len). False if
    the broker does not answer or the value is not a string. */
bool h_stat_str (llmq *client, const char *path, char *out, size_t len);
/*  Wait until h_stat_str(path) equals value, up to timeout_ms. */
bool h_wait_stat_str (llmq *client, const char *path, const char *value, int timeout_ms);

/*  A mock provider besides the harness's own, for suites whose
    deployments must behave differently (test_chaos.c: one failing, one
    healthy): its own port, process, counters and fault queue. */
typedef struct {
    h_proc_t proc;
    int port;
} h_mock_t;

/*  Start one in the scratch directory (log NAME.log) on a free port, with
    extra arguments (NULL-terminated list, may be NULL); waits for its
    port file. The caller stops it (h_stop (&mock->proc, SIGTERM)) before
    h_destroy. Returns 0 or -1. */
int  h_start_mock_extra (harness_t *self, h_mock_t *mock, const char *name,
                         const char *const *args);
/*  h_mock_stat for the mock listening on `port`. */
long h_mock_stat_at (int port, const char *key);
/*  A control request to the mock on `port`: method "POST" (with a JSON
    body) or "DELETE" (json NULL), e.g. ("DELETE", "/mock/faults"). */
int  h_mock_call_at (int port, const char *method, const char *path, const char *json);
/*  GET /mock/requests of the mock on `port`: the arrival times (unix ms,
    sorted) of its chat requests since `since_ms` and, in the same order,
    the tokens of each reply (0: none made). Arrays allocated (free them);
    `tokens` may be NULL. Returns the count, or -1. */
long h_mock_requests_at (int port, int64_t since_ms, int64_t **times, int64_t **tokens);

/*  Run a Check suite (SIGPIPE ignored); returns main's exit status. */
struct Suite;
int  h_run_suite (struct Suite *suite);

/*  Whole text of a file, or NULL. Caller frees. */
char *h_slurp (const char *path);

/*  One run of the `llmq` CLI: its exit status (or 128 + signal) and what
    it wrote. */
typedef struct {
    int status;
    char *out;                  /* stdout */
    char *err;                  /* stderr */
} h_cli_t;
/*  Run `llmq ARGS...` (args NULL-terminated, without the program) with
    LLMQ_BROKER set to this harness's broker and stdin from /dev/null, and
    wait for it. Fails the test if it cannot be run. */
h_cli_t h_cli (harness_t *self, const char *const *args);
void h_cli_free (h_cli_t *r);

/*  The broker's HTTP port from its --ready-file (third line, written when
    [broker] http is set), or -1. Start the broker with
    "--ready-file", PATH; h_start_broker returns after its PING, by when
    the file is in place. */
int  h_broker_http_port (const char *ready_file);

/*  Make, under DIR/tls, a CA (ca.pem), a certificate for IP 127.0.0.1
    signed by it (server.pem, server.key), a directory holding the CA under
    its hash name (cas/, for ca_path) and an unrelated CA (other-ca.pem),
    with the openssl command; fails the test if it cannot. */
void h_make_certs (harness_t *h);

#endif
