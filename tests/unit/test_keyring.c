/*  test_keyring.c -- the API keys of a deployment: turn taking, benching
    after a refusal, the retry order within one call, loading from
    environment variables and files, and masking.
*/
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keyring.h"

#define S_NOW 1000000u          /* a monotonic "now", in ms */

static const char *s_keys[] = { "key-alpha-1111", "key-bravo-2222", "key-charlie-3333" };

static llmq_keyring_t *
s_ring (size_t n)
{
    llmq_keyring_t *ring = llmq_keyring_new (s_keys, n);
    ck_assert_ptr_nonnull (ring);
    return ring;
}

START_TEST (test_round_robin)
{
    llmq_keyring_t *ring = s_ring (3);
    ck_assert_uint_eq (llmq_keyring_size (ring), 3);
    size_t uses[3] = { 0 };
    for (size_t i = 0; i < 30; i++) {
        size_t k = llmq_keyring_next (ring, S_NOW);
        ck_assert_uint_eq (k, i % 3);
        uses[k]++;
    }
    ck_assert_uint_eq (uses[0], 10);
    ck_assert_uint_eq (uses[1], 10);
    ck_assert_uint_eq (uses[2], 10);
    ck_assert_str_eq (llmq_keyring_key (ring, 1), "key-bravo-2222");
    ck_assert_ptr_null (llmq_keyring_key (ring, 3));
    llmq_keyring_destroy (&ring);
    ck_assert_ptr_null (ring);
    llmq_keyring_destroy (&ring);           /* safe twice */
}
END_TEST

START_TEST (test_empty_ring)
{
    llmq_keyring_t *ring = s_ring (0);
    ck_assert_uint_eq (llmq_keyring_size (ring), 0);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), LLMQ_KEY_NONE);
    ck_assert_uint_eq (llmq_keyring_retry (ring, 0, 0, S_NOW), LLMQ_KEY_NONE);
    ck_assert_uint_eq (llmq_keyring_size (NULL), 0);
    llmq_keyring_destroy (&ring);
}
END_TEST

START_TEST (test_skip_after_refusal)
{
    llmq_keyring_t *ring = s_ring (3);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 0);
    llmq_keyring_refused (ring, 1, S_NOW);
    /*  Key 1 is benched: the turn goes 0, 2, 0, 2... */
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 2);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 0);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW + 1000), 2);
    /*  ...until the bench ends: then it takes its turn again. */
    uint64_t later = S_NOW + LLMQ_KEY_BENCH_MS;
    ck_assert_uint_eq (llmq_keyring_next (ring, later), 0);
    ck_assert_uint_eq (llmq_keyring_next (ring, later), 1);
    /*  Every key benched: turns go on regardless (a stale bench must not
        stop a deployment). */
    for (size_t i = 0; i < 3; i++) {
        llmq_keyring_refused (ring, i, later);
    }
    ck_assert_uint_eq (llmq_keyring_next (ring, later), 2);
    ck_assert_uint_eq (llmq_keyring_next (ring, later), 0);
    llmq_keyring_destroy (&ring);
}
END_TEST

START_TEST (test_retry_within_a_call)
{
    llmq_keyring_t *ring = s_ring (3);
    /*  A call on key 1 is refused: it tries 2, then 0, then gives up. */
    uint64_t tried = 0;
    size_t key = 1;
    llmq_keyring_refused (ring, key, S_NOW);
    tried |= UINT64_C (1) << key;
    key = llmq_keyring_retry (ring, key, tried, S_NOW);
    ck_assert_uint_eq (key, 2);
    llmq_keyring_refused (ring, key, S_NOW);
    tried |= UINT64_C (1) << key;
    key = llmq_keyring_retry (ring, key, tried, S_NOW);
    ck_assert_uint_eq (key, 0);
    llmq_keyring_refused (ring, key, S_NOW);
    tried |= UINT64_C (1) << key;
    /*  Every key failed: AUTH is what the call reports. */
    ck_assert_uint_eq (llmq_keyring_retry (ring, key, tried, S_NOW), LLMQ_KEY_NONE);

    /*  A key benched by another call counts as failed for this one. */
    llmq_keyring_t *other = s_ring (3);
    llmq_keyring_refused (other, 2, S_NOW);
    llmq_keyring_refused (other, 0, S_NOW);
    ck_assert_uint_eq (llmq_keyring_retry (other, 0, 1, S_NOW), 1);
    llmq_keyring_refused (other, 1, S_NOW);
    ck_assert_uint_eq (llmq_keyring_retry (other, 1, 3, S_NOW), LLMQ_KEY_NONE);
    /*  One key only: nothing to retry with. */
    llmq_keyring_t *one = s_ring (1);
    ck_assert_uint_eq (llmq_keyring_retry (one, 0, 1, S_NOW), LLMQ_KEY_NONE);
    llmq_keyring_destroy (&one);
    llmq_keyring_destroy (&other);
    llmq_keyring_destroy (&ring);
}
END_TEST

START_TEST (test_rate_limited_moves_on)
{
    llmq_keyring_t *ring = s_ring (3);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 0);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 1);
    /*  Key 0 answered 429 after key 1 was handed out: the turn is already
        past it, nothing changes. */
    llmq_keyring_limited (ring, 0);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 2);
    /*  Key 0 is next in turn when it answers 429: the turn skips it, so
        the broker's retry goes out with key 1. */
    llmq_keyring_limited (ring, 0);
    ck_assert_uint_eq (llmq_keyring_next (ring, S_NOW), 1);
    llmq_keyring_destroy (&ring);
}
END_TEST

START_TEST (test_scrub)
{
    llmq_keyring_t *ring = s_ring (3);
    char text[256] = "bad key-bravo-2222 and key-charlie-3333, key-bravo-2222!";
    llmq_keyring_scrub (ring, text);
    ck_assert_str_eq (text, "bad *** and ***, ***!");
    llmq_keyring_scrub (NULL, text);           /* no ring: nothing to mask */
    llmq_keyring_destroy (&ring);
}
END_TEST

/*  A file in a fresh directory holding `text`. */
static void
s_write_file (char *path, size_t size, const char *dir, const char *name, const char *text)
{
    snprintf (path, size, "%s/%s", dir, name);
    FILE *f = fopen (path, "w");
    ck_assert_ptr_nonnull (f);
    fputs (text, f);
    fclose (f);
}

START_TEST (test_load_env_and_files)
{
    char dir[] = "/tmp/llmq-keyring-XXXXXX";
    ck_assert_ptr_nonnull (mkdtemp (dir));
    char f1[256], f2[256];
    s_write_file (f1, sizeof f1, dir, "k1", "file-key-one\n");
    s_write_file (f2, sizeof f2, dir, "k2", "file-key-two\r\n");
    setenv ("LLMQ_TEST_RING_A", "env-key-a", 1);
    setenv ("LLMQ_TEST_RING_B", "env-key-b", 1);
    unsetenv ("LLMQ_TEST_RING_UNSET");
    char *envs[] = { (char *) "LLMQ_TEST_RING_A", (char *) "LLMQ_TEST_RING_UNSET",
                     (char *) "LLMQ_TEST_RING_B" };
    char *files[] = { f1, f2 };
    llmq_deployment_t dep = { .name = (char *) "d", .api_key_env = envs[0],
                              .api_key_envs = envs, .napi_key_envs = 3,
                              .api_key_files = files, .napi_key_files = 2,
                              .api_key_file_line = 7 };
    char err[600];
    llmq_keyring_t *ring = llmq_keyring_load (&dep, "x.conf", err, sizeof err);
    ck_assert_ptr_nonnull (ring);
    /*  Variables first, in order, the unset one left out; then files. */
    ck_assert_uint_eq (llmq_keyring_size (ring), 4);
    ck_assert_str_eq (llmq_keyring_key (ring, 0), "env-key-a");
    ck_assert_str_eq (llmq_keyring_key (ring, 1), "env-key-b");
    ck_assert_str_eq (llmq_keyring_key (ring, 2), "file-key-one");
    ck_assert_str_eq (llmq_keyring_key (ring, 3), "file-key-two");
    llmq_keyring_destroy (&ring);

    /*  A file that is not there: an error naming config line and path. */
    char missing[300];
    snprintf (missing, sizeof missing, "%s/nope", dir);
    files[1] = missing;
    ck_assert_ptr_null (llmq_keyring_load (&dep, "x.conf", err, sizeof err));
    ck_assert_msg (strncmp (err, "x.conf:7: [deployment d] api_key_file: cannot use ", 50) == 0,
                   "got '%s'", err);
    ck_assert_ptr_nonnull (strstr (err, missing));
    ck_assert_ptr_nonnull (strstr (err, "No such file"));

    /*  Two lines, an empty file: refused, the content never shown. */
    char bad[256];
    s_write_file (bad, sizeof bad, dir, "bad", "secret-line-one\nsecret-line-two\n");
    files[1] = bad;
    ck_assert_ptr_null (llmq_keyring_load (&dep, "x.conf", err, sizeof err));
    ck_assert_ptr_nonnull (strstr (err, "line break"));
    ck_assert_ptr_null (strstr (err, "secret"));
    s_write_file (bad, sizeof bad, dir, "bad", "");
    ck_assert_ptr_null (llmq_keyring_load (&dep, "x.conf", err, sizeof err));
    ck_assert_ptr_nonnull (strstr (err, "empty"));

    /*  No key configured: an empty ring, not an error. */
    llmq_deployment_t none = { .name = (char *) "n" };
    ring = llmq_keyring_load (&none, "x.conf", err, sizeof err);
    ck_assert_ptr_nonnull (ring);
    ck_assert_uint_eq (llmq_keyring_size (ring), 0);
    llmq_keyring_destroy (&ring);

    unlink (f1);
    unlink (f2);
    unlink (bad);
    rmdir (dir);
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("keyring");
    TCase *tc = tcase_create ("keyring");
    tcase_add_test (tc, test_round_robin);
    tcase_add_test (tc, test_empty_ring);
    tcase_add_test (tc, test_skip_after_refusal);
    tcase_add_test (tc, test_retry_within_a_call);
    tcase_add_test (tc, test_rate_limited_moves_on);
    tcase_add_test (tc, test_scrub);
    tcase_add_test (tc, test_load_env_and_files);
    suite_add_tcase (s, tc);
    SRunner *sr = srunner_create (s);
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? 1 : 0;
}
