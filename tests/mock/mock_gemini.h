/*  mock_gemini.h -- the gemini wire format for the mock (placeholder). */
#ifndef MOCK_GEMINI_H
#define MOCK_GEMINI_H
#include "mock_dialect.h"
extern const mock_dialect_t mock_gemini_dialect;
#endif
