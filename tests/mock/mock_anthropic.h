/*  mock_anthropic.h -- Anthropic's Messages API wire format for the mock.

    Serves POST /v1/messages and POST /messages (for base URLs that already
    end in /v1). Requests are validated the way the real API validates
    them (model, max_tokens and messages required; roles user and
    assistant only; unknown fields refused), with Anthropic's error JSON:
        {"type":"error","error":{"type":...,"message":...}}
    Replies are "message" objects, or with "stream": true the event
    sequence message_start, content_block_start, ping, content_block_delta
    per piece, content_block_stop, message_delta, message_stop, each as
    "event: NAME" plus "data: {json}".
*/
#ifndef MOCK_ANTHROPIC_H
#define MOCK_ANTHROPIC_H

#include "mock_dialect.h"

extern const mock_dialect_t mock_anthropic_dialect;

#endif
