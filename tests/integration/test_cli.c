/*  test_cli.c -- the llmq command-line client against a real broker, a
    real worker and the mock provider: what a user types, what they see,
    and the exit status they get.
*/
#include "harness.h"

#include <check.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>


static harness_t *
s_up (bool mock)
{
    harness_t *h = h_new (NULL);
    if (mock) {
        ck_assert_int_eq (h_start_mock (h, NULL), 0);
    }
    ck_assert_int_eq (h_start_broker (h, NULL), 0);
    ck_assert_int_ge (h_start_worker (h, 16, 1), 0);
    return h;
}

START_TEST (test_help_everywhere)
{
    harness_t *h = h_new (NULL);
    const char *cmds[][4] = {
        { "--help", NULL }, { "submit", "--help", NULL }, { "status", "--help", NULL },
        { "cancel", "--help", NULL }, { "stats", "--help", NULL }, { "batch", "--help", NULL },
        { "batch", "submit", "--help", NULL }, { "batch", "results", "--help", NULL },
        { "batch", "status", "--help", NULL },
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        h_cli_t r = h_cli (h, cmds[i]);
        ck_assert_msg (r.status == 0, "llmq %s %s --help exited %d", cmds[i][0], cmds[i][1] ? cmds[i][1] : "",
                       r.status);
        ck_assert_msg (strstr (r.out, "usage") || strstr (r.out, "Usage"), "no usage text for %s", cmds[i][0]);
        h_cli_free (&r);
    }
    /* Unknown command and option: usage errors, exit 2. */
    h_cli_t r = h_cli (h, (const char *[]) { "frobnicate", NULL });
    ck_assert_int_eq (r.status, 2);
    ck_assert_int_gt ((int) strlen (r.err), 0);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "submit", "--no-such-flag", NULL });
    ck_assert_int_eq (r.status, 2);
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

START_TEST (test_submit_wait_stream_status_cancel)
{
    harness_t *h = s_up (true);
    h_cli_t r = h_cli (h, (const char *[]) { "submit", "-m", "echo", "--wait", "hello", "world", NULL });
    ck_assert_int_eq (r.status, 0);
    ck_assert_str_eq (r.out, "echo: hello world\n");
    h_cli_free (&r);

    r = h_cli (h, (const char *[]) { "submit", "-m", "gpt", "--stream", "[[mock:chunks=6]] stream this please", NULL });
    ck_assert_int_eq (r.status, 0);
    ck_assert_ptr_nonnull (strstr (r.out, "mock reply: stream this please"));
    h_cli_free (&r);

    /* Without --wait: the id, then status shows it done. */
    r = h_cli (h, (const char *[]) { "submit", "-m", "echo", "-p", "low", "status me", NULL });
    ck_assert_int_eq (r.status, 0);
    char id[32];
    snprintf (id, sizeof id, "%llu", strtoull (r.out, NULL, 10));
    ck_assert_uint_gt (strtoull (id, NULL, 10), 0);
    h_cli_free (&r);
    llmq *c = h_client (h);
    llmq_result *res = NULL;
    ck_assert_int_eq (llmq_wait (c, strtoull (id, NULL, 10), 20000, &res), LLMQ_OK);
    llmq_result_free (&res);
    llmq_close (&c);
    r = h_cli (h, (const char *[]) { "status", id, NULL });
    ck_assert_int_eq (r.status, 0);
    ck_assert_ptr_nonnull (strstr (r.out, "done"));
    ck_assert_ptr_nonnull (strstr (r.out, "echo: status me"));
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "status", "--json", id, NULL });
    ck_assert_int_eq (r.status, 0);
    json_t *j = json_loads (r.out, 0, NULL);
    ck_assert_ptr_nonnull (j);
    json_decref (j);
    h_cli_free (&r);
    /* Finished: cannot be cancelled. Unknown: not found. */
    r = h_cli (h, (const char *[]) { "cancel", id, NULL });
    ck_assert_int_eq (r.status, 1);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "status", "987654", NULL });
    ck_assert_int_eq (r.status, 1);
    h_cli_free (&r);
    /* A failing job: exit 1 with the reason on stderr. */
    r = h_cli (h, (const char *[]) { "submit", "-m", "gpt", "--wait", "[[mock:fail=400]] nope", NULL });
    ck_assert_int_eq (r.status, 1);
    ck_assert_int_gt ((int) strlen (r.err), 0);
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

START_TEST (test_bad_input_is_refused_clearly)
{
    harness_t *h = s_up (false);
    h_cli_t r = h_cli (h, (const char *[]) { "submit", "-m", "no-such-group", "hi", NULL });
    ck_assert_int_eq (r.status, 2);
    ck_assert_ptr_nonnull (strstr (r.err, "no-such-group"));
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "submit", "--messages", "{not json", "-m", "echo", NULL });
    ck_assert_int_eq (r.status, 2);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "submit", "-m", "echo", "-p", "sometimes", "hi", NULL });
    ck_assert_int_eq (r.status, 2);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "--broker", "tcp://127.0.0.1:1", "--timeout", "300ms", "stats", NULL });
    ck_assert_int_eq (r.status, 3);
    h_cli_free (&r);
    llmq *c = h_client (h);
    ck_assert_int_eq (h_stat (c, "totals.submitted"), 0);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

static void
s_write_batch (const char *path, int n, int bad_line_a, int bad_line_b)
{
    FILE *f = fopen (path, "w");
    for (int i = 1; i <= n; i++) {
        if (i == bad_line_a) {
            fprintf (f, "{\"custom_id\": \"r%d\", \"method\": \"POST\", \"url\": \n", i);
        }
        else if (i == bad_line_b) {
            fprintf (f, "{\"custom_id\": \"r%d\", \"method\": \"POST\", \"url\": \"/v1/embeddings\", "
                        "\"body\": {\"model\": \"echo\", \"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}}\n", i);
        }
        else {
            fprintf (f, "{\"custom_id\": \"r%d\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
                        "\"body\": {\"model\": \"echo\", \"messages\": [{\"role\": \"user\", \"content\": "
                        "\"prompt %d\"}], \"max_tokens\": 50}}\n", i, i);
        }
    }
    fclose (f);
}

START_TEST (test_batch_bad_lines_named_nothing_sent)
{
    harness_t *h = s_up (false);
    char path[400];
    snprintf (path, sizeof path, "%s/bad.jsonl", h->dir);
    s_write_batch (path, 10, 3, 7);
    h_cli_t r = h_cli (h, (const char *[]) { "batch", "submit", path, NULL });
    ck_assert_int_eq (r.status, 2);
    char where[450];
    snprintf (where, sizeof where, "%s:3:", path);
    ck_assert_msg (strstr (r.err, where), "line 3 not named in: %s", r.err);
    snprintf (where, sizeof where, "%s:7:", path);
    ck_assert_msg (strstr (r.err, where), "line 7 not named in: %s", r.err);
    h_cli_free (&r);
    llmq *c = h_client (h);
    ck_assert_int_eq (h_stat (c, "totals.submitted"), 0);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

START_TEST (test_batch_submit_and_results_openai_format)
{
    harness_t *h = s_up (false);
    char path[400], outp[400];
    snprintf (path, sizeof path, "%s/good.jsonl", h->dir);
    snprintf (outp, sizeof outp, "%s/results.jsonl", h->dir);
    const int n = 300;
    s_write_batch (path, n, 0, 0);
    h_cli_t r = h_cli (h, (const char *[]) { "batch", "submit", path, "--batch-id", "nightly", "--wait", NULL });
    ck_assert_msg (r.status == 0, "batch submit exited %d: %s", r.status, r.err);
    ck_assert_ptr_nonnull (strstr (r.out, "nightly"));
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "batch", "status", "nightly", "--json", NULL });
    ck_assert_int_eq (r.status, 0);
    json_t *counts = json_loads (r.out, 0, NULL);
    ck_assert_int_eq (json_integer_value (json_object_get (counts, "total")), n);
    ck_assert_int_eq (json_integer_value (json_object_get (counts, "done")), n);
    json_decref (counts);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "batch", "results", "nightly", "-o", outp, NULL });
    ck_assert_int_eq (r.status, 0);
    h_cli_free (&r);
    /* One line per request, each custom id once, OpenAI's output shape. */
    FILE *f = fopen (outp, "r");
    ck_assert_ptr_nonnull (f);
    char *seen = (char *) calloc ((size_t) n + 1, 1);
    char line[8192];
    int lines = 0;
    while (fgets (line, sizeof line, f)) {
        json_error_t e;
        json_t *o = json_loads (line, 0, &e);
        ck_assert_msg (o != NULL, "line %d not JSON: %s", lines + 1, e.text);
        const char *cid = json_string_value (json_object_get (o, "custom_id"));
        ck_assert_ptr_nonnull (cid);
        int k = atoi (cid + 1);
        ck_assert (k >= 1 && k <= n);
        ck_assert_msg (!seen[k], "custom_id %s twice", cid);
        seen[k] = 1;
        ck_assert (json_is_null (json_object_get (o, "error")));
        json_t *resp = json_object_get (o, "response");
        ck_assert_int_eq (json_integer_value (json_object_get (resp, "status_code")), 200);
        json_t *body = json_object_get (resp, "body");
        ck_assert_str_eq (json_string_value (json_object_get (body, "object")), "chat.completion");
        json_t *msg = json_object_get (json_array_get (json_object_get (body, "choices"), 0), "message");
        char expect[64];
        snprintf (expect, sizeof expect, "echo: prompt %d", k);
        ck_assert_str_eq (json_string_value (json_object_get (msg, "content")), expect);
        json_t *usage = json_object_get (body, "usage");
        ck_assert_int_eq (json_integer_value (json_object_get (usage, "prompt_tokens")), 2);
        ck_assert_int_eq (json_integer_value (json_object_get (usage, "completion_tokens")), 3);
        json_decref (o);
        lines++;
    }
    fclose (f);
    ck_assert_int_eq (lines, n);
    free (seen);
    /* Submitting the same batch again stores nothing new (idempotency keys). */
    r = h_cli (h, (const char *[]) { "batch", "submit", path, "--batch-id", "nightly", NULL });
    ck_assert_int_eq (r.status, 0);
    h_cli_free (&r);
    llmq *c = h_client (h);
    ck_assert_int_eq (h_stat (c, "totals.submitted"), n);
    llmq_close (&c);
    h_destroy (&h);
}
END_TEST

/*  A job that ends in a tool call: `llmq batch results` writes it as
    OpenAI does (message.tool_calls, null content, finish_reason
    "tool_calls"), and `llmq status` shows the calls. The mock calls a tool
    when the request has tools and the prompt says {{call:NAME}}. */
START_TEST (test_batch_results_tool_calls)
{
    harness_t *h = s_up (true);
    char path[400], outp[400];
    snprintf (path, sizeof path, "%s/tools.jsonl", h->dir);
    snprintf (outp, sizeof outp, "%s/tools-out.jsonl", h->dir);
    FILE *f = fopen (path, "w");
    ck_assert_ptr_nonnull (f);
    fprintf (f, "{\"custom_id\": \"t1\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
                "\"body\": {\"model\": \"gpt\", \"messages\": [{\"role\": \"user\", \"content\": "
                "\"{{call:lookup}} queues\"}], \"tools\": [{\"type\": \"function\", \"function\": "
                "{\"name\": \"lookup\", \"parameters\": {\"type\": \"object\", \"properties\": {}}}}]}}\n");
    fprintf (f, "{\"custom_id\": \"t2\", \"method\": \"POST\", \"url\": \"/v1/chat/completions\", "
                "\"body\": {\"model\": \"gpt\", \"messages\": [{\"role\": \"user\", \"content\": "
                "\"just text\"}]}}\n");
    ck_assert_int_eq (fclose (f), 0);
    h_cli_t r = h_cli (h, (const char *[]) { "batch", "submit", path, "--batch-id", "tools", "--wait", NULL });
    ck_assert_msg (r.status == 0, "batch submit exited %d: %s", r.status, r.err);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "batch", "results", "tools", "-o", outp, NULL });
    ck_assert_int_eq (r.status, 0);
    h_cli_free (&r);
    f = fopen (outp, "r");
    ck_assert_ptr_nonnull (f);
    char line[8192];
    int lines = 0;
    while (fgets (line, sizeof line, f) && lines < 10) {
        json_t *o = json_loads (line, 0, NULL);
        ck_assert_ptr_nonnull (o);
        const char *cid = json_string_value (json_object_get (o, "custom_id"));
        ck_assert_ptr_nonnull (cid);
        json_t *choice = json_array_get (json_object_get (json_object_get (json_object_get (o, "response"),
                                                                           "body"), "choices"), 0);
        json_t *msg = json_object_get (choice, "message");
        if (strcmp (cid, "t1") == 0) {
            ck_assert_str_eq (json_string_value (json_object_get (choice, "finish_reason")), "tool_calls");
            ck_assert (json_is_null (json_object_get (msg, "content")));
            json_t *calls = json_object_get (msg, "tool_calls");
            ck_assert_uint_eq (json_array_size (calls), 1);
            json_t *call = json_array_get (calls, 0);
            ck_assert_str_eq (json_string_value (json_object_get (call, "type")), "function");
            ck_assert_ptr_nonnull (strstr (json_string_value (json_object_get (call, "id")), "call_mock_"));
            json_t *fn = json_object_get (call, "function");
            ck_assert_str_eq (json_string_value (json_object_get (fn, "name")), "lookup");
            ck_assert_str_eq (json_string_value (json_object_get (fn, "arguments")), "{\"q\":\"queues\"}");
        }
        else {
            ck_assert_str_eq (cid, "t2");
            ck_assert_str_eq (json_string_value (json_object_get (choice, "finish_reason")), "stop");
            ck_assert_str_eq (json_string_value (json_object_get (msg, "content")), "mock reply: just text");
            ck_assert_ptr_null (json_object_get (msg, "tool_calls"));
        }
        json_decref (o);
        lines++;
    }
    fclose (f);
    ck_assert_int_eq (lines, 2);

    /*  `llmq status` prints the calls of a job that has no text. */
    llmq *c = h_client (h);
    llmq_job j = { .model = "gpt", .priority = LLMQ_PRIO_NORMAL,
                   .body = "{\"messages\":[{\"role\":\"user\",\"content\":\"{{call:lookup}} status\"}],"
                           "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"lookup\"}}]}" };
    uint64_t id = 0;
    ck_assert_int_eq (llmq_submit (c, &j, &id, 5000), LLMQ_OK);
    llmq_result *res = NULL;
    ck_assert_int_eq (llmq_wait (c, id, 20000, &res), LLMQ_OK);
    ck_assert_int_eq (res->state, LLMQ_STATE_DONE);
    llmq_result_free (&res);
    llmq_close (&c);
    char ids[32];
    snprintf (ids, sizeof ids, "%llu", (unsigned long long) id);
    r = h_cli (h, (const char *[]) { "status", ids, NULL });
    ck_assert_int_eq (r.status, 0);
    ck_assert_msg (strstr (r.out, "finish:       tool_calls"), "%s", r.out);
    ck_assert_msg (strstr (r.out, "tool calls:\n[{\"id\":\"call_mock_"), "%s", r.out);
    ck_assert_msg (strstr (r.out, "\"arguments\":\"{\\\"q\\\":\\\"status\\\"}\""), "%s", r.out);
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

START_TEST (test_stats_json)
{
    harness_t *h = s_up (false);
    h_cli_t r = h_cli (h, (const char *[]) { "stats", "--json", NULL });
    ck_assert_int_eq (r.status, 0);
    json_t *j = json_loads (r.out, 0, NULL);
    ck_assert_ptr_nonnull (j);
    ck_assert_int_eq (json_integer_value (json_object_get (j, "worker_count")), 1);
    json_decref (j);
    h_cli_free (&r);
    r = h_cli (h, (const char *[]) { "stats", NULL });
    ck_assert_int_eq (r.status, 0);
    ck_assert_ptr_nonnull (strstr (r.out, "worker"));
    h_cli_free (&r);
    h_destroy (&h);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("cli");
    TCase *tc = tcase_create ("cli");
    tcase_set_timeout (tc, 120);
    tcase_add_test (tc, test_help_everywhere);
    tcase_add_test (tc, test_submit_wait_stream_status_cancel);
    tcase_add_test (tc, test_bad_input_is_refused_clearly);
    tcase_add_test (tc, test_batch_bad_lines_named_nothing_sent);
    tcase_add_test (tc, test_batch_submit_and_results_openai_format);
    tcase_add_test (tc, test_batch_results_tool_calls);
    tcase_add_test (tc, test_stats_json);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    return h_run_suite (s_suite ());
}
