/*  test_admin.c -- the broker's admin operations end to end: dead letters
    and breakers, through the real `llmq` binary (what an operator types,
    sees, and the exit status) and through llmq_admin() (what a program
    gets), against a real broker, a worker and the mock provider.

    Jobs are dead-lettered for real: the broker runs with max_attempts 2
    and a short backoff, and the mock fails them with HTTP 500, either by
    a directive in the prompt (every attempt fails, so a requeue fails
    again) or from its fault queue (only the first two attempts fail, so a
    requeued job then succeeds). Waits are on results and states, with
    timeouts; nothing sleeps.
*/
#include "harness.h"

#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define T_WAIT   20000          /* ms: generous, these are not timing tests */

static const char s_conf[] = "max_attempts = 2\nretry_backoff = 10ms\nretry_backoff_max = 20ms\n";

/* ------------------------------------------------------------ the CLI */

/*  Run and check the exit status, saying what came out if it differs. */
static h_cli_t
s_expect (harness_t *h, int status, const char *const *args)
{
    h_cli_t r = h_cli (h, args);
    ck_assert_msg (r.status == status, "llmq %s %s: exit %d, expected %d\nstdout: %s\nstderr: %s",
                   args[0], args[1] ? args[1] : "", r.status, status, r.out, r.err);
    return r;
}

/*  Lines of `text` that start with a digit (the rows of a table). */
static int
s_rows (const char *text)
{
    int rows = 0;
    for (const char *line = text; line && *line; ) {
        if (*line >= '0' && *line <= '9') {
            rows++;
        }
        line = strchr (line, '\n');
        line = line ? line + 1 : NULL;
    }
    return rows;
}

/* --------------------------------------------------------- the library */

static char *
s_body (const char *prompt)
{
    json_t *b = json_pack ("{s:[{s:s,s:s}]}", "messages", "role", "user", "content", prompt);
    char *text = json_dumps (b, JSON_COMPACT);
    json_decref (b);
    return text;
}

static uint64_t
s_submit (llmq *c, const char *model, const char *prompt)
{
    char *body = s_body (prompt);
    llmq_job j;
    memset (&j, 0, sizeof j);
    j.model = model;
    j.body = body;
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    free (body);
    return id;
}

/*  Wait for a job's end; returns its final state. */
static int
s_wait (llmq *c, uint64_t id)
{
    llmq_result *r = NULL;
    ck_assert_int_eq (llmq_wait (c, id, T_WAIT, &r), LLMQ_OK);
    int state = r->state;
    llmq_result_free (&r);
    return state;
}

/*  Poll STATUS until the job is in `state` (it may pass through others);
    returns its result (free it), or NULL on timeout. */
static llmq_result *
s_wait_state (llmq *c, uint64_t id, int state)
{
    for (int i = 0; i < T_WAIT / 5; i++) {
        llmq_result *r = NULL;
        if (llmq_status (c, id, 5000, &r) == LLMQ_OK && r->state == state) {
            return r;
        }
        llmq_result_free (&r);
        h_backoff ();
    }
    return NULL;
}

/*  llmq_admin() with a request built by json_pack; returns the code and
    the parsed answer in *rep (NULL on failure). */
static int
s_admin (llmq *c, json_t *req, json_t **rep)
{
    char *text = json_dumps (req, JSON_COMPACT);
    json_decref (req);
    char *answer = NULL;
    int rc = llmq_admin (c, text, &answer, 5000);
    free (text);
    *rep = NULL;
    if (rc == LLMQ_OK) {
        ck_assert_ptr_nonnull (answer);
        *rep = json_loads (answer, 0, NULL);
        ck_assert_ptr_nonnull (*rep);
    }
    else {
        ck_assert_ptr_null (answer);
    }
    llmq_free (answer);
    return rc;
}

static bool
s_has_id (const json_t *jobs, uint64_t id)
{
    size_t i;
    json_t *j;
    json_array_foreach (jobs, i, j) {
        if ((uint64_t) json_integer_value (json_object_get (j, "id")) == id) {
            return true;
        }
    }
    return false;
}

static harness_t *
s_up (void)
{
    harness_t *h = h_new (s_conf);
    ck_assert_ptr_nonnull (h);
    ck_assert_int_eq (h_start_mock (h, NULL), 0);
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 4, 1), 0);
    return h;
}

/* --------------------------------------------------------------- tests */

START_TEST (test_help)
{
    harness_t *h = h_new (NULL);
    const char *cmds[][4] = {
        { "dead", "--help", NULL }, { "dead", "list", "--help", NULL }, { "dead", "show", "--help", NULL },
        { "dead", "requeue", "--help", NULL }, { "dead", "purge", "--help", NULL },
        { "breaker", "--help", NULL }, { "breaker", "reset", "--help", NULL },
        { "breaker", "history", "--help", NULL },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        h_cli_t r = s_expect (h, 0, cmds[i]);
        ck_assert_msg (strstr (r.out, "Usage"), "no usage text for llmq %s %s", cmds[i][0], cmds[i][1]);
        h_cli_free (&r);
    }
    /* Usage errors, found before any broker is needed (none runs): 2. */
    const char *bad[][6] = {
        { "dead", NULL }, { "dead", "frob", NULL }, { "dead", "show", NULL }, { "dead", "show", "x1", NULL },
        { "dead", "requeue", NULL }, { "dead", "requeue", "5", "--all", NULL },
        { "dead", "requeue", "5", "--model", "gpt", NULL }, { "dead", "purge", "--all", NULL },
        { "dead", "list", "--limit", "0", NULL }, { "breaker", "reset", "a", "b", NULL },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        h_cli_t r = s_expect (h, 2, bad[i]);
        ck_assert_int_gt ((int) strlen (r.err), 0);
        h_cli_free (&r);
    }
    /* A command that needs the broker, with none there: 3. */
    h_cli_t r = s_expect (h, 3, (const char *[]) { "--timeout", "300ms", "dead", "list", NULL });
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

START_TEST (test_dead_letters)
{
    harness_t *h = s_up ();
    llmq *c = h_client (h);
    ck_assert_ptr_nonnull (c);

    /* Three jobs the mock fails on every attempt; one that ends well. */
    uint64_t dead[3];
    for (int i = 0; i < 3; i++) {
        char prompt[64];
        snprintf (prompt, sizeof prompt, "[[mock:fail=500]] doomed %d", i);
        dead[i] = s_submit (c, "gpt", prompt);
    }
    uint64_t fine = s_submit (c, "echo", "all is well");
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq (s_wait (c, dead[i]), LLMQ_STATE_DEAD);
    }
    ck_assert_int_eq (s_wait (c, fine), LLMQ_STATE_DONE);

    /* The table: exactly those three, class server. */
    h_cli_t r = s_expect (h, 0, (const char *[]) { "dead", "list", NULL });
    ck_assert_int_eq (s_rows (r.out), 3);
    ck_assert_ptr_nonnull (strstr (r.out, "CLASS"));
    const char *err_col = strstr (r.out, "ERROR");
    ck_assert_ptr_nonnull (err_col);
    size_t err_at = (size_t) (err_col - r.out);
    for (int i = 0; i < 3; i++) {
        char id[32];
        snprintf (id, sizeof id, "\n%llu ", (unsigned long long) dead[i]);
        const char *row = strstr (r.out, id);
        ck_assert_msg (row, "id %s not listed:\n%s", id + 1, r.out);
        row++;
        const char *end = strchr (row, '\n');
        ck_assert_ptr_nonnull (end);
        ck_assert_ptr_nonnull (memmem (row, (size_t) (end - row), "server", 6));
        ck_assert_ptr_nonnull (memmem (row, (size_t) (end - row), " 2 ", 3));    /* attempts */
        /* Not a terminal: the error is cut to 60 characters. */
        ck_assert_int_le ((int) (end - row), (int) err_at + 60);
    }
    h_cli_free (&r);

    /* The same as JSON, from the CLI and from the library. */
    r = s_expect (h, 0, (const char *[]) { "dead", "list", "--json", NULL });
    json_t *doc = json_loads (r.out, 0, NULL);
    ck_assert_ptr_nonnull (doc);
    json_t *jobs = json_object_get (doc, "jobs");
    ck_assert_uint_eq (json_array_size (jobs), 3);
    ck_assert (json_is_false (json_object_get (doc, "more")));
    size_t i;
    json_t *j;
    json_array_foreach (jobs, i, j) {
        ck_assert_uint_eq ((uint64_t) json_integer_value (json_object_get (j, "id")), dead[i]);
        ck_assert_str_eq (json_string_value (json_object_get (j, "error_class")), "server");
        ck_assert_str_eq (json_string_value (json_object_get (j, "model")), "gpt");
        ck_assert_int_eq (json_integer_value (json_object_get (j, "attempts")), 2);
        ck_assert_int_eq (json_integer_value (json_object_get (j, "http_status")), 500);
    }
    json_decref (doc);
    h_cli_free (&r);

    json_t *rep;
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s}", "op", "dead.list"), &rep), LLMQ_OK);
    jobs = json_object_get (rep, "jobs");
    ck_assert_uint_eq (json_array_size (jobs), 3);
    for (int k = 0; k < 3; k++) {
        ck_assert (s_has_id (jobs, dead[k]));
    }
    ck_assert (!s_has_id (jobs, fine));
    json_array_foreach (jobs, i, j) {
        ck_assert_str_eq (json_string_value (json_object_get (j, "error_class")), "server");
    }
    json_decref (rep);
    /* Paged: one at a time, by the cursor. */
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:i}", "op", "dead.list", "limit", 1), &rep), LLMQ_OK);
    ck_assert_uint_eq (json_array_size (json_object_get (rep, "jobs")), 1);
    ck_assert (json_is_true (json_object_get (rep, "more")));
    json_int_t next = json_integer_value (json_object_get (rep, "next"));
    json_decref (rep);
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:I, s:i}", "op", "dead.list", "after", next, "limit", 5), &rep),
                      LLMQ_OK);
    ck_assert_uint_eq (json_array_size (json_object_get (rep, "jobs")), 2);
    ck_assert (!s_has_id (json_object_get (rep, "jobs"), dead[0]));
    json_decref (rep);
    /* By model: none of group echo. */
    r = s_expect (h, 0, (const char *[]) { "dead", "list", "--model", "echo", NULL });
    ck_assert_int_eq (s_rows (r.out), 0);
    h_cli_free (&r);

    /* One in full, body included. */
    char id0[32], id1[32], idfine[32];
    snprintf (id0, sizeof id0, "%llu", (unsigned long long) dead[0]);
    snprintf (id1, sizeof id1, "%llu", (unsigned long long) dead[1]);
    snprintf (idfine, sizeof idfine, "%llu", (unsigned long long) fine);
    r = s_expect (h, 0, (const char *[]) { "dead", "show", id0, NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "server"));
    ck_assert_ptr_nonnull (strstr (r.out, "[[mock:fail=500]] doomed 0"));
    ck_assert_ptr_nonnull (strstr (r.out, "500"));
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "dead", "show", "--json", id0, NULL });
    doc = json_loads (r.out, 0, NULL);
    ck_assert_ptr_nonnull (doc);
    ck_assert_str_eq (json_string_value (json_object_get (doc, "state")), "dead");
    ck_assert_str_eq (json_string_value (json_object_get (doc, "deployment")), "mock");
    json_t *msg = json_array_get (json_object_get (json_object_get (doc, "body"), "messages"), 0);
    ck_assert_str_eq (json_string_value (json_object_get (msg, "content")), "[[mock:fail=500]] doomed 0");
    json_decref (doc);
    h_cli_free (&r);
    /* Not dead letters: a job that ended well, one never known. */
    r = s_expect (h, 1, (const char *[]) { "dead", "show", idfine, NULL });
    ck_assert_ptr_nonnull (strstr (r.err, "not dead-lettered"));
    h_cli_free (&r);
    r = s_expect (h, 1, (const char *[]) { "dead", "show", "987654", NULL });
    h_cli_free (&r);
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:i}", "op", "dead.show", "id", 987654), &rep),
                      LLMQ_ERR_NOT_FOUND);
    ck_assert_ptr_nonnull (strstr (llmq_last_error (c), "987654"));
    /* Bad arguments name the field. */
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:s}", "op", "dead.list", "limit", "lots"), &rep),
                      LLMQ_ERR_INVALID);
    ck_assert_ptr_nonnull (strstr (llmq_last_error (c), "limit"));
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s}", "op", "dead.requeue"), &rep), LLMQ_ERR_INVALID);
    ck_assert_ptr_nonnull (strstr (llmq_last_error (c), "id"));
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:b, s:s}", "op", "dead.requeue", "all", 1, "model", "nosuch"),
                               &rep), LLMQ_ERR_UNKNOWN_MODEL);
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s}", "op", "dead.nothing"), &rep), LLMQ_ERR_INVALID);

    /* A requeued job runs again from scratch: this one fails again (its
       prompt says so) and is dead once more, with a later end. */
    llmq_result *before = NULL;
    ck_assert_int_eq (llmq_status (c, dead[2], 5000, &before), LLMQ_OK);
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:I}", "op", "dead.requeue", "id", (json_int_t) dead[2]), &rep),
                      LLMQ_OK);
    ck_assert_int_eq (json_integer_value (json_object_get (rep, "requeued")), 1);
    json_decref (rep);
    llmq_result *after = s_wait_state (c, dead[2], LLMQ_STATE_DEAD);
    ck_assert_ptr_nonnull (after);
    ck_assert_uint_gt (after->finished_us, before->finished_us);
    ck_assert_uint_gt (after->enqueued_us, before->enqueued_us);
    ck_assert_uint_eq (after->attempts, 2);
    llmq_result_free (&before);
    llmq_result_free (&after);

    /* A job dead from the mock's fault queue: its first two attempts fail,
       so once requeued it succeeds. */
    ck_assert_int_eq (h_mock_post (h, "/mock/faults", "{\"kind\":500,\"count\":2}"), 0);
    uint64_t revived = s_submit (c, "gpt", "second time lucky");
    ck_assert_int_eq (s_wait (c, revived), LLMQ_STATE_DEAD);
    char idr[32];
    snprintf (idr, sizeof idr, "%llu", (unsigned long long) revived);
    r = s_expect (h, 0, (const char *[]) { "dead", "requeue", idr, NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "requeued"));
    h_cli_free (&r);
    llmq_result *res = s_wait_state (c, revived, LLMQ_STATE_DONE);
    ck_assert_msg (res, "the requeued job did not end done");
    ck_assert_str_eq (res->content, "mock reply: second time lucky");
    ck_assert_uint_eq (res->attempts, 1);
    llmq_result_free (&res);
    r = s_expect (h, 0, (const char *[]) { "status", idr, NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "done"));
    h_cli_free (&r);
    /* Requeued once: not a dead letter any more. */
    r = s_expect (h, 1, (const char *[]) { "dead", "requeue", idr, NULL });
    h_cli_free (&r);

    /* Purge: one through the library, the rest with --all --yes; --all
       without --yes is refused and deletes nothing. */
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:I}", "op", "dead.purge", "id", (json_int_t) dead[1]), &rep),
                      LLMQ_OK);
    ck_assert_int_eq (json_integer_value (json_object_get (rep, "purged")), 1);
    json_decref (rep);
    r = s_expect (h, 2, (const char *[]) { "dead", "purge", "--all", NULL });
    ck_assert_ptr_nonnull (strstr (r.err, "--yes"));
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "dead", "list", NULL });
    ck_assert_int_eq (s_rows (r.out), 2);
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "dead", "purge", "--all", "--yes", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "purged 2 jobs"));
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "dead", "list", "--json", NULL });
    doc = json_loads (r.out, 0, NULL);
    ck_assert_ptr_nonnull (doc);
    ck_assert_uint_eq (json_array_size (json_object_get (doc, "jobs")), 0);
    json_decref (doc);
    h_cli_free (&r);
    for (int k = 0; k < 3; k++) {
        llmq_result *gone = NULL;
        ck_assert_int_eq (llmq_status (c, dead[k], 5000, &gone), LLMQ_ERR_NOT_FOUND);
    }
    r = s_expect (h, 1, (const char *[]) { "dead", "show", id1, NULL });
    h_cli_free (&r);
    /* What did not die is untouched. */
    r = s_expect (h, 0, (const char *[]) { "status", idfine, NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "done"));
    h_cli_free (&r);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_breakers)
{
    harness_t *h = s_up ();
    h_cli_t r = s_expect (h, 0, (const char *[]) { "breaker", "reset", "mock", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "mock"));
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "breaker", "reset", NULL });
    ck_assert_ptr_nonnull (strstr (r.out, "mock"));
    ck_assert_ptr_nonnull (strstr (r.out, "echo"));
    h_cli_free (&r);
    r = s_expect (h, 1, (const char *[]) { "breaker", "reset", "nosuch", NULL });
    ck_assert_ptr_nonnull (strstr (r.err, "no deployment named 'nosuch'"));
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "breaker", "history", "--json", NULL });
    json_t *doc = json_loads (r.out, 0, NULL);
    ck_assert_ptr_nonnull (doc);
    ck_assert (json_is_array (json_object_get (doc, "history")));
    json_decref (doc);
    h_cli_free (&r);
    r = s_expect (h, 0, (const char *[]) { "breaker", "history", NULL });
    h_cli_free (&r);

    llmq *c = h_client (h);
    json_t *rep;
    ck_assert_int_eq (s_admin (c, json_pack ("{s:s, s:s}", "op", "breaker.reset", "deployment", "nosuch"), &rep),
                      LLMQ_ERR_NOT_FOUND);
    ck_assert_str_eq (llmq_last_error (c), "no deployment named 'nosuch'");
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("admin");
    TCase *tc = tcase_create ("admin");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_help);
    tcase_add_test (tc, test_dead_letters);
    tcase_add_test (tc, test_breakers);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
