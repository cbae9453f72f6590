/*  mock_anthropic.c -- placeholder: serves nothing yet. */
#include "mock_anthropic.h"

static bool
s_match (const char *url)
{
    (void) url;
    return false;
}

const mock_dialect_t mock_anthropic_dialect = { .name = "anthropic", .match = s_match };
