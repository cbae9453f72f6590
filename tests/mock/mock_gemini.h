/*  mock_gemini.h -- Google Gemini (Generative Language API) wire format for
    the mock: POST [/v1beta]/models/MODEL:generateContent and
    :streamGenerateContent. See mock_gemini.c for the fidelity notes.
*/
#ifndef MOCK_GEMINI_H
#define MOCK_GEMINI_H

#include "mock_dialect.h"

/*  Put this marker in the last user message (it is not a [[mock:...]]
    directive, so it stays in the text) and the answer is a prompt blocked
    for safety: 200 with promptFeedback.blockReason "SAFETY" and no
    candidates, as the real API answers. */
#define MOCK_GEMINI_SAFETY_MARKER "[[gemini:safety]]"

extern const mock_dialect_t mock_gemini_dialect;

#endif
