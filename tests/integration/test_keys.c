/*  test_keys.c -- API keys end to end: one deployment with three keys (two
    environment variables, one file) on the mock provider, a real broker and
    a real worker.

    The mock counts requests per key under its last 4 characters
    ("by_key") and refuses the keys given to --reject-key with a 401 that
    quotes the whole key back. After each run every file the run left in
    its directory (logs, the broker's store) is searched for every key.
*/
#include "harness.h"

#include <check.h>
#include <dirent.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define T_WAIT   20000          /* ms: generous, these are not timing tests */
#define T_EC_AUTH 2             /* error class "auth" (docs/protocol.md) */

/*  Distinct last 4 characters: the mock counts them under "0aa1"... */
#define T_KEY_A "sk-keytest-alpha-7d1f0aa1"
#define T_KEY_B "sk-keytest-bravo-93be0bb2"
#define T_KEY_C "file-keytest-charlie-5c0e0cc3"

static const char *s_keys[] = { T_KEY_A, T_KEY_B, T_KEY_C };

/*  Replace the harness's configuration: deployment "keys" with two keys
    in variables and one in a file (a path relative to the config), group
    "gpt" on it, debug logs so every failure line is written. */
static void
s_configure (harness_t *h)
{
    setenv ("LLMQ_TEST_KEY_A", T_KEY_A, 1);
    setenv ("LLMQ_TEST_KEY_B", T_KEY_B, 1);
    char path[400];
    snprintf (path, sizeof path, "%s/key-c.txt", h->dir);
    FILE *f = fopen (path, "w");
    ck_assert_ptr_nonnull (f);
    fputs (T_KEY_C "\n", f);
    ck_assert_int_eq (fclose (f), 0);
    f = fopen (h->conf, "w");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "[broker]\nfrontend = %s\nbackend = %s\ndata_dir = %s\nlog_level = debug\n"
                "\n[worker]\nslots = 4\n"
                "\n[deployment keys]\nprovider = openai\nmodel = mock-model\n"
                "base_url = http://127.0.0.1:%d/v1\n"
                "api_key_env = LLMQ_TEST_KEY_A, LLMQ_TEST_KEY_B\n"
                "api_key_file = key-c.txt\n"
                "\n[group gpt]\ndeployments = keys\n",
             h->frontend, h->backend, h->data, h->mock_port);
    ck_assert_int_eq (fclose (f), 0);
}

static harness_t *
s_start (const char *const *mock_args)
{
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    s_configure (h);
    ck_assert_int_eq (h_start_mock (h, mock_args), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

static uint64_t
s_submit (llmq *c, const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    char *body = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = "gpt";
    j.body = body;
    j.priority = LLMQ_PRIO_NORMAL;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    free (body);
    return id;
}

/*  The job's final result; the caller frees it. Every text in it is
    checked for the keys. */
static llmq_result *
s_result (llmq *c, uint64_t id)
{
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    const char *texts[] = { r->content, r->error, r->request_id, r->deployment };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
        for (size_t k = 0; texts[i] && k < 3; k++) {
            ck_assert_msg (!strstr (texts[i], s_keys[k]), "job %llu quotes key %zu: %s",
                           (unsigned long long) id, k, texts[i]);
        }
    }
    return r;
}

/*  How many bytes of `path` hold a key; the key file itself excluded. */
static int
s_scan_file (const char *path, int *files)
{
    FILE *f = fopen (path, "rb");
    ck_assert_msg (f != NULL, "cannot open %s", path);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc (cap);
    ck_assert_ptr_nonnull (buf);
    size_t n;
    while ((n = fread (buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap) {
            cap *= 2;
            buf = realloc (buf, cap);
            ck_assert_ptr_nonnull (buf);
        }
    }
    fclose (f);
    int found = 0;
    for (size_t k = 0; k < 3; k++) {
        if (memmem (buf, len, s_keys[k], strlen (s_keys[k]))) {
            fprintf (stderr, "test_keys: key %zu found in %s\n", k, path);
            found++;
        }
    }
    free (buf);
    (*files)++;
    return found;
}

/*  Search every file under `dir` (logs, store, config) for every key. */
static int
s_scan_dir (const char *dir, const char *skip, int *files, int depth)
{
    ck_assert_int_lt (depth, 4);
    DIR *d = opendir (dir);
    ck_assert_ptr_nonnull (d);
    int found = 0;
    struct dirent *e;
    while ((e = readdir (d)) != NULL) {
        if (strcmp (e->d_name, ".") == 0 || strcmp (e->d_name, "..") == 0) {
            continue;
        }
        char path[600];
        snprintf (path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        ck_assert_int_eq (stat (path, &st), 0);
        if (S_ISDIR (st.st_mode)) {
            found += s_scan_dir (path, skip, files, depth + 1);
        }
        else if (S_ISREG (st.st_mode) && strcmp (path, skip) != 0) {
            found += s_scan_file (path, files);
        }
    }
    closedir (d);
    return found;
}

/*  Stop the processes (so that every log line is written), then search
    what they left: no key anywhere but in its own file. */
static void
s_stop_and_scan (harness_t *h)
{
    ck_assert_int_eq (h_stop (&h->workers[0], SIGTERM), 0);
    ck_assert_int_eq (h_stop (&h->broker, SIGTERM), 0);
    ck_assert_int_eq (h_stop (&h->mock, SIGTERM), 0);
    char skip[400];
    snprintf (skip, sizeof skip, "%s/key-c.txt", h->dir);
    int files = 0;
    ck_assert_int_eq (s_scan_dir (h->dir, skip, &files, 0), 0);
    /*  The scan saw the logs at least: llmq.conf, broker.log, worker0.log,
        mock.log, mock.port and the store. */
    ck_assert_int_ge (files, 6);
    char log[400];
    snprintf (log, sizeof log, "%s/worker0.log", h->dir);
    char *text = h_slurp (log);
    ck_assert_ptr_nonnull (text);
    ck_assert_ptr_nonnull (strstr (text, "deployment keys: 3 API keys, used in turn"));
    free (text);
}

START_TEST (test_round_robin)
{
    harness_t *h = s_start (NULL);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    enum { N = 30 };
    uint64_t ids[N];
    for (int i = 0; i < N; i++) {
        char prompt[32];
        snprintf (prompt, sizeof prompt, "job %d", i);
        ids[i] = s_submit (c, prompt);
    }
    for (int i = 0; i < N; i++) {
        llmq_result *r = s_result (c, ids[i]);
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        ck_assert_uint_eq (r->attempts, 1);
        llmq_result_free (&r);
    }
    /*  Each call took the next key: every key served a third of them. */
    ck_assert_int_eq (h_mock_stat (h, "requests"), N);
    ck_assert_int_eq (h_mock_stat (h, "with_auth"), N);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0aa1"), N / 3);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0bb2"), N / 3);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0cc3"), N / 3);
    llmq_close (&c);
    s_stop_and_scan (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_refused_key_is_skipped)
{
    const char *const args[] = { "--reject-key", T_KEY_B, NULL };
    harness_t *h = s_start (args);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    /*  One job at a time, so the order of keys is known: A; B refused and
        benched, the call retried at once with C; then C, A, C, A. */
    enum { N = 6 };
    for (int i = 0; i < N; i++) {
        char prompt[32];
        snprintf (prompt, sizeof prompt, "job %d", i);
        llmq_result *r = s_result (c, s_submit (c, prompt));
        ck_assert_int_eq (r->state, LLMQ_STATE_DONE);
        char want[64];
        snprintf (want, sizeof want, "mock reply: %s", prompt);
        ck_assert_str_eq (r->content, want);
        /*  The worker retried with another key itself: one dispatch. */
        ck_assert_uint_eq (r->attempts, 1);
        ck_assert_int_eq (r->http_status, 200);
        llmq_result_free (&r);
    }
    ck_assert_int_eq (h_mock_stat (h, "by_key.0bb2"), 1);
    ck_assert_int_eq (h_mock_stat (h, "by_status.401"), 1);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0aa1"), 3);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0cc3"), 3);
    ck_assert_int_eq (h_mock_stat (h, "requests"), N + 1);
    llmq_close (&c);
    s_stop_and_scan (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_every_key_refused)
{
    const char *const args[] = { "--reject-key", T_KEY_A, "--reject-key", T_KEY_B,
                                 "--reject-key", T_KEY_C, NULL };
    harness_t *h = s_start (args);
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);
    llmq_result *r = s_result (c, s_submit (c, "nobody lets me in"));
    /*  Each key tried once within the one attempt, then AUTH: final. */
    ck_assert_int_eq (r->state, LLMQ_STATE_FAILED);
    ck_assert_int_eq (r->error_class, T_EC_AUTH);
    ck_assert_uint_eq (r->attempts, 1);
    ck_assert_int_eq (r->http_status, 401);
    /*  The mock quoted the key back; the worker masked it. */
    ck_assert_ptr_nonnull (r->error);
    ck_assert_msg (strstr (r->error, "Incorrect API key provided: ***"), "error: %s", r->error);
    llmq_result_free (&r);
    ck_assert_int_eq (h_mock_stat (h, "requests"), 3);
    ck_assert_int_eq (h_mock_stat (h, "by_status.401"), 3);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0aa1"), 1);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0bb2"), 1);
    ck_assert_int_eq (h_mock_stat (h, "by_key.0cc3"), 1);
    llmq_close (&c);
    s_stop_and_scan (h);
    h_destroy (&h);
}
END_TEST

START_TEST (test_unreadable_key_file)
{
    /*  A key file that is not there stops the worker at start (exit 2),
        naming the config line and the path, before it takes any job. */
    harness_t *h = h_new (NULL);
    ck_assert_ptr_nonnull (h);
    s_configure (h);
    char path[400];
    snprintf (path, sizeof path, "%s/key-c.txt", h->dir);
    ck_assert_int_eq (unlink (path), 0);
    int i = h_start_worker (h, 1, -1);
    ck_assert_int_ge (i, 0);
    /*  waitpid: the worker exits by itself; SIGCONT is a no-op signal. */
    ck_assert_int_eq (h_stop (&h->workers[i], SIGCONT), 2);
    char *text = h_slurp (h->workers[i].log);
    ck_assert_ptr_nonnull (text);
    ck_assert_msg (strstr (text, "llmq.conf:15: [deployment keys] api_key_file: cannot use "),
                   "log: %s", text);
    ck_assert_ptr_nonnull (strstr (text, "key-c.txt: No such file or directory"));
    free (text);
    h_destroy (&h);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("keys");
    TCase *tc = tcase_create ("keys");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_round_robin);
    tcase_add_test (tc, test_refused_key_is_skipped);
    tcase_add_test (tc, test_every_key_refused);
    tcase_add_test (tc, test_unreadable_key_file);
    suite_add_tcase (s, tc);
    return h_run_suite (s);
}
