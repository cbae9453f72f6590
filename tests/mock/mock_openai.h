/*  mock_openai.h -- the OpenAI Chat Completions wire format for the mock.

    Serves POST /v1/chat/completions and POST /chat/completions (for base
    URLs that already end in /v1). Requests are validated the way the real
    API validates them, with the same error JSON:
        {"error":{"message":...,"type":...,"param":...,"code":...}}
    Replies are "chat.completion" objects, or with "stream": true a series
    of "data: {chat.completion.chunk}" events ending in "data: [DONE]".
*/
#ifndef MOCK_OPENAI_H
#define MOCK_OPENAI_H

#include "mock_dialect.h"

extern const mock_dialect_t mock_openai_dialect;

#endif
