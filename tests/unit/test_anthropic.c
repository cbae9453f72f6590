/*  test_anthropic.c -- the anthropic adapter (placeholder suite until the adapter lands). */
#include "provider.h"

#include <check.h>
#include <stdlib.h>

START_TEST (test_registered)
{
    const llmq_provider_t *p = llmq_provider_find ("anthropic");
    ck_assert_ptr_nonnull (p);
    ck_assert_str_eq (p->name, "anthropic");
}
END_TEST

int
main (void)
{
    Suite *s = suite_create ("anthropic");
    TCase *tc = tcase_create ("registry");
    tcase_add_test (tc, test_registered);
    suite_add_tcase (s, tc);
    SRunner *sr = srunner_create (s);
    srunner_run_all (sr, CK_NORMAL);
    int failed = srunner_ntests_failed (sr);
    srunner_free (sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
