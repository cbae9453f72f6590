/*  test_tls.c -- HTTPS to the provider end to end: a real broker, a real
    worker and the mock provider serving https://127.0.0.1 with a
    certificate from a throwaway CA made at test time (openssl command
    line, installed by deploy/install-deps.sh).

    What a deployment's TLS keys do: ca_file or ca_path trusts that CA and
    the call succeeds; the system's CAs (the default) or another CA refuse
    the certificate and the job fails within its attempts; tls_verify = off
    succeeds and the worker warns; a CA file that is not there stops the
    worker at start, naming the config line. And connections are reused:
    20 jobs in a row open at most one connection per worker slot.
*/
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define T_WAIT   20000          /* ms: generous, these are not timing tests */
#define T_SLOTS  4

/*  Replace the harness's configuration: deployment "tls" on the mock over
    https with `tls_keys` (ca_file, ca_path, tls_verify lines), group
    "gpt" on it, then `more` sections (where "{PORT}" may stand once for
    the mock's port); at most 2 attempts a job with short backoffs.
    Returns the line `tls_keys` starts on. */
static int
s_configure (harness_t *h, const char *tls_keys, const char *more)
{
    char text[4096];
    int n = snprintf (text, sizeof text,
        "[broker]\nfrontend = %s\nbackend = %s\ndata_dir = %s\nlog_level = debug\n"
        "max_attempts = 2\nretry_backoff = 10ms\nretry_backoff_max = 10ms\n"
        "\n[worker]\nslots = %d\n"
        "\n[deployment tls]\nprovider = openai\nmodel = mock-model\n"
        "base_url = https://127.0.0.1:%d/v1\n"
        "api_key_env = LLMQ_TEST_KEY\n"
        "timeout = 10s\n",
        h->frontend, h->backend, h->data, T_SLOTS, h->mock_port);
    ck_assert_int_lt (n, (int) sizeof text);
    int line = 1;
    for (const char *p = text; *p; p++) {
        line += *p == '\n';
    }
    more = more ? more : "";
    const char *port = strstr (more, "{PORT}");
    int head = port ? (int) (port - more) : (int) strlen (more);
    n += snprintf (text + n, sizeof text - (size_t) n, "%s\n[group gpt]\ndeployments = tls\n%.*s",
                   tls_keys, head, more);
    if (port) {
        n += snprintf (text + n, sizeof text - (size_t) n, "%d%s", h->mock_port, port + 6);
    }
    ck_assert_int_lt (n, (int) sizeof text);
    FILE *f = fopen (h->conf, "w");
    ck_assert_ptr_nonnull (f);
    fputs (text, f);
    ck_assert_int_eq (fclose (f), 0);
    return line;
}

/*  A harness with certificates, the config, the mock on HTTPS, a broker
    and one worker of `slots` slots. */
static harness_t *
s_start_with (const char *tls_keys, const char *more, int slots)
{
    /*  A proxy from the environment must not take loopback calls. */
    setenv ("no_proxy", "127.0.0.1,localhost", 1);
    setenv ("NO_PROXY", "127.0.0.1,localhost", 1);
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    h_make_certs (h);
    s_configure (h, tls_keys, more);
    char cert[400], key[400];
    snprintf (cert, sizeof cert, "%s/tls/server.pem", h->dir);
    snprintf (key, sizeof key, "%s/tls/server.key", h->dir);
    const char *const args[] = { "--tls-cert", cert, "--tls-key", key, NULL };
    ck_assert_int_eq (h_start_mock (h, args), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, slots, 1), 0);
    return h;
}

static harness_t *
s_start (const char *tls_keys)
{
    return s_start_with (tls_keys, NULL, T_SLOTS);
}

/*  Reap a process that is to exit by itself, polling up to timeout_ms;
    its exit status, or -1 if it is still running (then it is left to
    h_destroy). */
static int
s_wait_exit (h_proc_t *p, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 5) {
        int status = 0;
        if (waitpid (p->pid, &status, WNOHANG) == p->pid) {
            p->pid = 0;
            return WIFEXITED (status) ? WEXITSTATUS (status) : 128 + WTERMSIG (status);
        }
        h_backoff ();
    }
    return -1;
}

static uint64_t
s_submit (llmq *c, const char *model, const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    char *body = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = model;
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    free (body);
    return id;
}

/*  Run one job to its end; the caller frees the result. */
static llmq_result *
s_run (llmq *c, const char *model, const char *prompt)
{
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, s_submit (c, model, prompt), T_WAIT, &r), LLMQ_OK);
    return r;
}

static void
s_assert_done (llmq *c, const char *model, const char *prompt)
{
    llmq_result *r = s_run (c, model, prompt);
    ck_assert_msg (r->state == LLMQ_STATE_DONE, "state %d, error %s", r->state,
                   r->error ? r->error : "(none)");
    char want[128];
    snprintf (want, sizeof want, "mock reply: %s", prompt);
    ck_assert_str_eq (r->content, want);
    ck_assert_int_eq (r->http_status, 200);
    ck_assert_uint_eq (r->attempts, 1);
    llmq_result_free (&r);
}

/*  The certificate is refused: a configuration problem, so the job ends
    failed at once (class internal, not retried), never having reached the
    mock's HTTP side. */
static void
s_assert_refused (llmq *c, const char *model)
{
    llmq_result *r = s_run (c, model, "who are you");
    ck_assert_msg (r->state == LLMQ_STATE_FAILED, "state %d", r->state);
    ck_assert_int_eq (r->error_class, 9);       /* internal: see docs/protocol.md */
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_int_eq (r->http_status, 0);
    ck_assert_ptr_nonnull (r->error);
    ck_assert_msg (strstr (r->error, "certificate"), "error: %s", r->error);
    fprintf (stderr, "test_tls: refused certificate: error class %d after %u attempt(s): %s\n",
             r->error_class, r->attempts, r->error);
    llmq_result_free (&r);
}

/*  The mock was reached (TLS handshakes) but answered no request. */
static void
s_assert_no_request (harness_t *h)
{
    char ca[400];
    snprintf (ca, sizeof ca, "%s/tls/ca.pem", h->dir);
    ck_assert_int_eq (h_mock_stat_tls (h, "requests", ca), 0);
    ck_assert_int_ge (h_mock_stat_tls (h, "connections", ca), 2);
}

/*  Whether the worker's log holds `text`. */
static bool
s_worker_log_has (harness_t *h, int i, const char *text)
{
    char *log = h_slurp (h->workers[i].log);
    ck_assert_ptr_nonnull (log);
    bool found = strstr (log, text) != NULL;
    free (log);
    return found;
}

static void
s_stop (harness_t *h)
{
    ck_assert_int_eq (h_stop (&h->workers[0], SIGTERM), 0);
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    ck_assert_int_eq (h_stop (&h->mock, SIGTERM), 0);
}

START_TEST (test_ca_file)
{
    /*  A path relative to the config file. */
    harness_t *h = s_start ("ca_file = tls/ca.pem\n");
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_assert_done (c, "gpt", "hello over tls");
    /*  One job at a time: each call finds the previous one's connection
        idle in the shared cache and takes it, TLS handshake and all. */
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        char prompt[32];
        snprintf (prompt, sizeof prompt, "job %d", i);
        s_assert_done (c, "gpt", prompt);
    }
    char ca[400];
    snprintf (ca, sizeof ca, "%s/tls/ca.pem", h->dir);
    ck_assert_int_eq (h_mock_stat_tls (h, "requests", ca), N + 1);
    /*  Connections so far: the worker's, plus the two stat queries. */
    long conns = h_mock_stat_tls (h, "connections", ca) - 2;
    fprintf (stderr, "test_tls: %d sequential jobs over https used %ld connection(s)\n",
             N + 1, conns);
    ck_assert_int_ge (conns, 1);
    ck_assert_int_le (conns, T_SLOTS);
    ck_assert (!s_worker_log_has (h, 0, "tls_verify is off"));
    llmq_close (&c);
    s_stop (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_system_cas_refuse)
{
    /*  No ca_file: the system's CAs, which do not know our CA. */
    harness_t *h = s_start ("");
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_assert_refused (c, "gpt");
    s_assert_no_request (h);
    llmq_close (&c);
    s_stop (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_other_ca_refuses)
{
    /*  ca_file replaces the trusted CAs: another CA does not vouch for the
        mock's certificate, and tls_verify = on (said explicitly) holds. */
    harness_t *h = s_start ("ca_file = tls/other-ca.pem\ntls_verify = on\n");
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_assert_refused (c, "gpt");
    s_assert_no_request (h);
    llmq_close (&c);
    s_stop (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_ca_path)
{
    /*  A directory with the CA under its hash name (openssl rehash). */
    harness_t *h = s_start ("ca_path = tls/cas\n");
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_assert_done (c, "gpt", "hello by hash");
    llmq_close (&c);
    s_stop (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_verify_off)
{
    harness_t *h = s_start ("tls_verify = off\n");
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_assert_done (c, "gpt", "trust me");
    llmq_close (&c);
    s_stop (h);
    ck_assert (s_worker_log_has (h, 0, "deployment tls: tls_verify is off"));
    h_destroy (&h);
}
END_TEST

START_TEST (test_missing_ca_file)
{
    /*  The broker loads the same file and never opens the CA file: it
        starts. The worker stops at start, naming the line and the path. */
    setenv ("no_proxy", "127.0.0.1,localhost", 1);
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    int line = s_configure (h, "ca_file = tls/missing.pem\n", NULL);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    int i = h_start_worker (h, 1, -1);
    ck_assert_int_ge (i, 0);
    /*  Exit 2, a configuration error (-1: still running). */
    int status = s_wait_exit (&h->workers[i], T_WAIT);
    ck_assert_msg (status == 2, "worker exit status %d", status);
    char want[600];
    snprintf (want, sizeof want, "llmq.conf:%d: [deployment tls] ca_file: cannot use "
              "%s/tls/missing.pem: No such file or directory", line, h->dir);
    ck_assert_msg (s_worker_log_has (h, i, want), "no '%s' in %s", want, h->workers[i].log);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    ck_assert_int_eq (h_stat (c, "worker_count"), 0);
    llmq_close (&c);
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    h_destroy (&h);
}
END_TEST

START_TEST (test_trust_per_deployment)
{
    /*  Two deployments on the same mock through one slot, one trusting our
        CA and one the system's: the slot's easy handle takes each call's
        own trust, and a pooled connection verified with our CA is not
        handed to the deployment that does not trust it. */
    harness_t *h = s_start_with ("ca_file = tls/ca.pem\n",
                                 "\n[deployment sys]\nprovider = openai\nmodel = mock-model\n"
                                 "base_url = https://127.0.0.1:{PORT}/v1\n"
                                 "api_key_env = LLMQ_TEST_KEY\n"
                                 "\n[group sys]\ndeployments = sys\n", 1);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    s_assert_done (c, "gpt", "first with our CA");
    s_assert_refused (c, "sys");
    s_assert_done (c, "gpt", "again with our CA");
    char ca[400];
    snprintf (ca, sizeof ca, "%s/tls/ca.pem", h->dir);
    ck_assert_int_eq (h_mock_stat_tls (h, "requests", ca), 2);
    llmq_close (&c);
    s_stop (h);
    h_destroy (&h);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("tls");
    TCase *tc = tcase_create ("tls");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_ca_file);
    tcase_add_test (tc, test_system_cas_refuse);
    tcase_add_test (tc, test_other_ca_refuses);
    tcase_add_test (tc, test_ca_path);
    tcase_add_test (tc, test_verify_off);
    tcase_add_test (tc, test_missing_ca_file);
    tcase_add_test (tc, test_trust_per_deployment);
    suite_add_tcase (s, tc);
    return h_run_suite (s);
}
