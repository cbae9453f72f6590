/*  mock_anthropic.h -- the anthropic wire format for the mock (placeholder). */
#ifndef MOCK_ANTHROPIC_H
#define MOCK_ANTHROPIC_H
#include "mock_dialect.h"
extern const mock_dialect_t mock_anthropic_dialect;
#endif
