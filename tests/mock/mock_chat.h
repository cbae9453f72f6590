/*  mock_chat.h -- one chat request and its deterministic reply, in terms
    that no provider's wire format owns.

    A dialect (mock_openai.c, later Anthropic and Gemini) parses its own
    request JSON into a mock_chat_t by calling mock_chat_set_model() and
    mock_chat_add_message(); the server then calls mock_chat_finish(), and
    the dialect renders the reply, or the stream pieces, in its own format.
    Keeping the reply rules here means every dialect answers the same
    prompt with the same text and the same token counts, so tests can
    switch provider without changing their expectations.

    The rules (README.md repeats them for test authors):
    * reply = "mock reply: " + the last user message's text, with the
      [[mock:...]] directives removed, surrounding whitespace trimmed, and
      cut to MOCK_ECHO_MAX bytes (never inside a UTF-8 sequence);
    * prompt_tokens = whitespace-separated words in every message's text
      (directives removed), at least 1; completion_tokens = words in the
      reply; if max_tokens is set and smaller, the reply is cut after that
      many words and finish_reason is "length" instead of "stop";
    * a stream splits the reply into `chunks` pieces of about equal bytes,
      never splitting a UTF-8 sequence and never sending an empty piece;
    * tool calls: when the request defines tools and the last user message
      holds {{call:NAME}} (NAME of letters, digits, '_' and '-', at most 64),
      the answer is one call of tool NAME instead of text. Its arguments
      are {"q":"<that message's text without the marker, trimmed>"}
      (compact JSON), finish_reason is "tool_calls", completion_tokens the
      words in the arguments text, and max_tokens does not cut it. `reply`
      then holds the arguments text, and the stream pieces cut it, so a
      dialect streams the arguments as its provider does. (Not a [[mock:]]
      directive: those are stripped before the reply rules see the text.)

    A mock_chat_t is used by one thread at a time; it owns all its strings.
*/
#ifndef MOCK_CHAT_H
#define MOCK_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mock_faults.h"

#define MOCK_REPLY_PREFIX   "mock reply: "
#define MOCK_ECHO_MAX       4096        /* bytes of the user text we echo */

typedef struct {
    //  Filled by the dialect's parser
    char *model;                /* model name to echo back; never NULL after parse */
    bool stream;                /* answer as server-sent events */
    bool include_usage;         /* stream ends with a usage chunk */
    long max_tokens;            /* cut the reply after this many words; -1 = no limit */
    mock_plan_t plan;           /* what the [[mock:...]] directives asked for */
    size_t prompt_words;        /* words across all messages so far */
    char *last_user;            /* text of the last user message seen */
    size_t last_user_len;       /* its bytes (it may hold NULs) */
    bool has_tools;             /* the request defines at least one tool */

    //  Filled by the server
    uint64_t serial;            /* n in "chatcmpl-mock-<n>" and the request id */
    int64_t created;            /* unix seconds, for "created" */

    //  Filled by mock_chat_finish()
    char *reply;                /* the assistant's text, NUL-terminated */
    size_t reply_len;           /* bytes in reply */
    size_t completion_words;    /* words in reply */
    const char *finish_reason;  /* "stop", "length" or "tool_calls" (static string) */
    char *tool_name;            /* the tool the answer calls, or NULL for a text
                                   answer; reply then holds its arguments */
    size_t *cuts;               /* piece i is reply[cuts[i] .. cuts[i+1]) */
    size_t pieces;              /* number of pieces; cuts has pieces + 1 entries */
} mock_chat_t;

/*  A new, empty chat (plan all "not set", max_tokens -1). NULL if out of memory. */
mock_chat_t *mock_chat_new (void);

/*  Free the chat and NULL the caller's pointer; safe on NULL. */
void mock_chat_destroy (mock_chat_t **self_p);

/*  Set the model name (copied). Returns 0, or -1 if out of memory. */
int mock_chat_set_model (mock_chat_t *self, const char *model);

/*  Add one message's text (text[0..len), need not be NUL-terminated):
    directives in it go into self->plan, its words into prompt_words, and
    if is_user it becomes the text to echo. Returns 0, or -1 if out of memory. */
int mock_chat_add_message (mock_chat_t *self, bool is_user,
                           const char *text, size_t len);

/*  Build the reply and cut it into at most `chunks` pieces (>= 1).
    Returns 0, or -1 if out of memory. */
int mock_chat_finish (mock_chat_t *self, int chunks);

/*  Piece i (< self->pieces) of the reply, borrowed from the chat. */
void mock_chat_piece (const mock_chat_t *self, size_t index,
                      const char **text, size_t *len);

/*  Whitespace-separated words in text[0..len). */
size_t mock_chat_count_words (const char *text, size_t len);

#endif
