/*  test_sse.c -- the incremental SSE parser (worker/sse.c).

    The parser must give the same events however the bytes are split, so
    most tests feed one input in every possible two-piece split, and one
    byte at a time, and compare with a single feed.
*/
#include "fixture.h"
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"


/*  Events seen, as "event|data" lines joined by a record separator, so that
    two runs compare with one strcmp. */
typedef struct {
    char  *log;
    size_t len;
    size_t count;
    int    stop_after;          /* ask the parser to stop after this many (0: never) */
} s_events_t;

static int
s_collect (void *arg, const char *event, const char *data, size_t len)
{
    s_events_t *ev = arg;
    ck_assert_uint_eq (strlen (data), len);          /* NUL-terminated at len */
    size_t add = (event ? strlen (event) : 6) + len + 3;
    ev->log = realloc (ev->log, ev->len + add + 1);
    ck_assert_ptr_nonnull (ev->log);
    ev->len += (size_t) sprintf (ev->log + ev->len, "%s|%s\x1e", event ? event : "(none)", data);
    ev->count++;
    return ev->stop_after && ev->count >= (size_t) ev->stop_after ? 1 : 0;
}

static void
s_events_free (s_events_t *ev)
{
    free (ev->log);
    memset (ev, 0, sizeof *ev);
}

static const char *
s_log (const s_events_t *ev)
{
    return ev->log ? ev->log : "";
}


/*  LF -> CRLF (or lone CR) copy of a text. */
static char *
s_relf (const char *text, size_t len, const char *eol, size_t *outlen)
{
    char *out = malloc (len * 2 + 1);
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == '\n') {
            for (const char *e = eol; *e; e++) {
                out[n++] = *e;
            }
        }
        else {
            out[n++] = text[i];
        }
    }
    out[n] = '\0';
    *outlen = n;
    return out;
}

/*  Events of `text` fed in one piece. */
static void
s_parse_whole (const char *text, size_t len, s_events_t *ev, bool *done)
{
    llmq_sse_t *sse = llmq_sse_new (s_collect, ev);
    ck_assert_ptr_nonnull (sse);
    ck_assert_int_eq (llmq_sse_feed (sse, text, len), 0);
    if (done) {
        *done = llmq_sse_done (sse);
    }
    llmq_sse_destroy (&sse);
    ck_assert_ptr_null (sse);
}

/*  Feed `text` split at every byte boundary, then byte by byte; each run
    must give `expected` (and the same [DONE] state). */
static void
s_check_all_splits (const char *text, size_t len, const char *expected, bool expect_done)
{
    /*  One parser for all runs: each run also checks llmq_sse_reset(). */
    s_events_t ev = { 0 };
    llmq_sse_t *sse = llmq_sse_new (s_collect, &ev);
    ck_assert_ptr_nonnull (sse);
    for (size_t cut = 0; cut <= len; cut++) {
        s_events_free (&ev);
        llmq_sse_reset (sse);
        ck_assert_int_eq (llmq_sse_feed (sse, text, cut), 0);
        ck_assert_int_eq (llmq_sse_feed (sse, text + cut, len - cut), 0);
        ck_assert_msg (strcmp (s_log (&ev), expected) == 0, "split at %zu differs:\n%s\nvs\n%s",
                       cut, s_log (&ev), expected);
        ck_assert_int_eq (llmq_sse_done (sse), expect_done);
    }
    s_events_free (&ev);
    llmq_sse_reset (sse);
    for (size_t i = 0; i < len; i++) {
        ck_assert_int_eq (llmq_sse_feed (sse, text + i, 1), 0);
    }
    ck_assert_str_eq (s_log (&ev), expected);
    ck_assert_int_eq (llmq_sse_done (sse), expect_done);
    s_events_free (&ev);
    llmq_sse_destroy (&sse);
}

START_TEST (test_openai_stream_every_split)
{
    size_t len;
    char *text = fixture_read ("openai_stream_usage.sse", &len);
    s_events_t whole = { 0 };
    bool done = false;
    s_parse_whole (text, len, &whole, &done);
    /*  12 JSON events (role, 10 deltas, finish) + the usage chunk; [DONE]
        is recorded, not passed on. */
    ck_assert_uint_eq (whole.count, 13);
    ck_assert (done);
    ck_assert_ptr_nonnull (strstr (whole.log, "(none)|{\"id\":\"chatcmpl-123\""));
    ck_assert_ptr_null (strstr (whole.log, "[DONE]"));
    s_check_all_splits (text, len, whole.log, true);
    s_events_free (&whole);
    free (text);
}
END_TEST

START_TEST (test_crlf_and_cr_line_ends)
{
    size_t len;
    char *text = fixture_read ("openai_stream_usage.sse", &len);
    s_events_t lf = { 0 };
    s_parse_whole (text, len, &lf, NULL);
    const char *eols[] = { "\r\n", "\r" };
    for (size_t i = 0; i < 2; i++) {
        size_t n;
        char *conv = s_relf (text, len, eols[i], &n);
        s_check_all_splits (conv, n, lf.log, true);
        free (conv);
    }
    s_events_free (&lf);
    free (text);
}
END_TEST

START_TEST (test_comments_fields_multiline)
{
    size_t len;
    char *text = fixture_read ("sse_mixed.sse", &len);
    const char *expected =
        "(none)|first\x1e"
        "message_start|{\"type\":\"message_start\"}\x1e"
        "(none)|line one\nline two\n\nline four\x1e"
        "(none)|no-space\n two-spaces\x1e"
        "ping|\x1e";
    /*  "data: last" has no blank line after it: dropped at end of stream. */
    s_check_all_splits (text, len, expected, false);
    size_t n;
    char *crlf = s_relf (text, len, "\r\n", &n);
    s_check_all_splits (crlf, n, expected, false);
    free (crlf);
    free (text);
}
END_TEST

START_TEST (test_mixed_line_ends_in_one_stream)
{
    const char *text = "data: a\r\ndata: b\rdata: c\n\r\n: note\r\revent: e\ndata: d\r\n\n";
    s_check_all_splits (text, strlen (text), "(none)|a\nb\nc\x1e" "e|d\x1e", false);
}
END_TEST

START_TEST (test_bom_skipped_once)
{
    const char *text = "\xEF\xBB\xBF" "data: x\n\n\xEF\xBB\xBF" "data: y\n\n";
    /*  The second BOM is not at the start: it belongs to a field name that
        is then not "data", so the event is empty and not dispatched. */
    s_check_all_splits (text, strlen (text), "(none)|x\x1e", false);
    /*  A partial BOM that is not one is kept. */
    const char *notbom = "\xEF" "data: x\n\ndata: y\n\n";
    s_check_all_splits (notbom, strlen (notbom), "(none)|y\x1e", false);
}
END_TEST

START_TEST (test_done_ends_the_stream)
{
    const char *text = "data: {\"a\":1}\n\ndata: [DONE]\n\ndata: after\n\n";
    s_check_all_splits (text, strlen (text), "(none)|{\"a\":1}\x1e", true);
    /*  "[DONE]" only counts as a whole data value. */
    const char *notdone = "data: [DONE] \n\ndata: [DONE]x\n\n";
    s_check_all_splits (notdone, strlen (notdone), "(none)|[DONE] \x1e(none)|[DONE]x\x1e", false);
}
END_TEST

START_TEST (test_callback_stops_parser)
{
    s_events_t ev = { .stop_after = 1 };
    llmq_sse_t *sse = llmq_sse_new (s_collect, &ev);
    const char *text = "data: 1\n\ndata: 2\n\n";
    ck_assert_int_eq (llmq_sse_feed (sse, text, strlen (text)), -1);
    ck_assert_uint_eq (ev.count, 1);
    /*  Failed until reset. */
    ck_assert_int_eq (llmq_sse_feed (sse, "data: 3\n\n", 9), -1);
    ck_assert_uint_eq (ev.count, 1);
    ev.stop_after = 0;
    llmq_sse_reset (sse);
    ck_assert_int_eq (llmq_sse_feed (sse, "data: 3\n\n", 9), 0);
    ck_assert_uint_eq (ev.count, 2);
    ck_assert_uint_eq (llmq_sse_events (sse), 1);
    s_events_free (&ev);
    llmq_sse_destroy (&sse);
}
END_TEST

START_TEST (test_reset_forgets_partial_input)
{
    s_events_t ev = { 0 };
    llmq_sse_t *sse = llmq_sse_new (s_collect, &ev);
    ck_assert_int_eq (llmq_sse_feed (sse, "data: half\ndata: line without end", 33), 0);
    llmq_sse_reset (sse);
    ck_assert_int_eq (llmq_sse_feed (sse, "data: new\n\n", 11), 0);
    ck_assert_str_eq (s_log (&ev), "(none)|new\x1e");
    s_events_free (&ev);
    llmq_sse_destroy (&sse);
}
END_TEST

START_TEST (test_event_size_limit)
{
    s_events_t ev = { 0 };
    llmq_sse_t *sse = llmq_sse_new (s_collect, &ev);
    size_t block = 1024 * 1024;
    char *junk = malloc (block);
    memset (junk, 'x', block);
    ck_assert_int_eq (llmq_sse_feed (sse, "data: ", 6), 0);
    int rc = 0;
    size_t fed = 0;
    while (rc == 0 && fed <= LLMQ_SSE_MAX_EVENT + block) {
        rc = llmq_sse_feed (sse, junk, block);
        fed += block;
    }
    ck_assert_int_eq (rc, -1);
    ck_assert_uint_le (fed, LLMQ_SSE_MAX_EVENT + block);
    ck_assert_uint_eq (ev.count, 0);
    free (junk);
    s_events_free (&ev);
    llmq_sse_destroy (&sse);
}
END_TEST

START_TEST (test_destroy_is_safe_twice)
{
    llmq_sse_t *sse = llmq_sse_new (NULL, NULL);
    ck_assert_int_eq (llmq_sse_feed (sse, "data: x\n\n", 9), 0);
    ck_assert_uint_eq (llmq_sse_events (sse), 1);
    llmq_sse_destroy (&sse);
    llmq_sse_destroy (&sse);
    llmq_sse_destroy (NULL);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *s = suite_create ("sse");
    TCase *tc = tcase_create ("parse");
    tcase_set_timeout (tc, 60);
    tcase_add_test (tc, test_openai_stream_every_split);
    tcase_add_test (tc, test_crlf_and_cr_line_ends);
    tcase_add_test (tc, test_comments_fields_multiline);
    tcase_add_test (tc, test_mixed_line_ends_in_one_stream);
    tcase_add_test (tc, test_bom_skipped_once);
    tcase_add_test (tc, test_done_ends_the_stream);
    tcase_add_test (tc, test_callback_stops_parser);
    tcase_add_test (tc, test_reset_forgets_partial_input);
    tcase_add_test (tc, test_event_size_limit);
    tcase_add_test (tc, test_destroy_is_safe_twice);
    suite_add_tcase (s, tc);
    return s;
}

int
main (void)
{
    SRunner *sr = srunner_create (s_suite ());
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
