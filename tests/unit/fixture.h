/*  fixture.h -- reading the provider fixtures of the unit suites.

    Fixtures live in tests/unit/fixtures/ (LLMQ_FIXTURES, set by CMake):
    request and response bodies and streams written from the providers'
    public API references.
*/
#ifndef LLMQ_TEST_FIXTURE_H
#define LLMQ_TEST_FIXTURE_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef LLMQ_FIXTURES
#   define LLMQ_FIXTURES "tests/unit/fixtures"
#endif

/*  The whole fixture `name`, NUL-terminated; its length in *len if len is
    not NULL. Fails the test if it cannot be read. Caller frees. */
static inline char *
fixture_read (const char *name, size_t *len)
{
    char path[512];
    snprintf (path, sizeof path, "%s/%s", LLMQ_FIXTURES, name);
    FILE *f = fopen (path, "rb");
    ck_assert_msg (f != NULL, "cannot open %s", path);
    fseek (f, 0, SEEK_END);
    long n = ftell (f);
    fseek (f, 0, SEEK_SET);
    char *buf = (char *) malloc ((size_t) n + 1);
    ck_assert_ptr_nonnull (buf);
    ck_assert_uint_eq (fread (buf, 1, (size_t) n, f), (size_t) n);
    buf[n] = '\0';
    fclose (f);
    if (len) {
        *len = (size_t) n;
    }
    return buf;
}

#endif
