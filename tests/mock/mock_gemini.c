/*  mock_gemini.c -- placeholder: serves nothing yet. */
#include "mock_gemini.h"

static bool
s_match (const char *url)
{
    (void) url;
    return false;
}

const mock_dialect_t mock_gemini_dialect = { .name = "gemini", .match = s_match };
