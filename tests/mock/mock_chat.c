/*  mock_chat.c -- the provider-neutral chat request and its reply.
*/
#include "mock_chat.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define CALL_OPEN       "{{call:"
#define CALL_CLOSE      "}}"
#define CALL_NAME_MAX   64

//  Only ASCII whitespace separates words: bytes >= 0x80 belong to UTF-8
//  sequences, and isspace() of a locale could misread them
static bool
s_is_space (unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r'
        || c == '\v' || c == '\f';
}

//  A UTF-8 continuation byte (10xxxxxx) can never start a piece
static bool
s_is_continuation (unsigned char c)
{
    return (c & 0xC0) == 0x80;
}

size_t
mock_chat_count_words (const char *text, size_t len)
{
    size_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < len; i++) {
        bool space = s_is_space ((unsigned char) text [i]);
        if (!space && !in_word) {
            words++;
        }
        in_word = !space;
    }
    return words;
}

mock_chat_t *
mock_chat_new (void)
{
    mock_chat_t *self = calloc (1, sizeof (*self));
    if (!self) {
        return NULL;
    }
    self->max_tokens = -1;
    self->finish_reason = "stop";
    mock_plan_clear (&self->plan);
    return self;
}

void
mock_chat_destroy (mock_chat_t **self_p)
{
    if (!self_p || !*self_p) {
        return;
    }
    mock_chat_t *self = *self_p;
    free (self->model);
    free (self->last_user);
    free (self->reply);
    free (self->tool_name);
    free (self->cuts);
    free (self);
    *self_p = NULL;
}

int
mock_chat_set_model (mock_chat_t *self, const char *model)
{
    char *copy = strdup (model);
    if (!copy) {
        return -1;
    }
    free (self->model);
    self->model = copy;
    return 0;
}

int
mock_chat_add_message (mock_chat_t *self, bool is_user,
                       const char *text, size_t len)
{
    size_t clean_len = 0;
    char *clean = mock_directives_strip (text, len, &self->plan, &clean_len);
    if (!clean) {
        return -1;
    }
    self->prompt_words += mock_chat_count_words (clean, clean_len);
    if (!is_user) {
        free (clean);
        return 0;
    }
    //  Trim in place, then cut to MOCK_ECHO_MAX on a character boundary so
    //  the echo of a huge prompt stays a sane size
    size_t start = 0;
    while (start < clean_len && s_is_space ((unsigned char) clean [start])) {
        start++;
    }
    size_t end = clean_len;
    while (end > start && s_is_space ((unsigned char) clean [end - 1])) {
        end--;
    }
    if (end - start > MOCK_ECHO_MAX) {
        end = start + MOCK_ECHO_MAX;
        while (end > start && s_is_continuation ((unsigned char) clean [end])) {
            end--;
        }
    }
    memmove (clean, clean + start, end - start);
    clean [end - start] = '\0';
    free (self->last_user);
    self->last_user = clean;
    self->last_user_len = end - start;
    return 0;
}

//  Cut reply after its max_words-th word; returns the new length
static size_t
s_cut_words (const char *text, size_t len, size_t max_words)
{
    if (max_words == 0) {
        return 0;
    }
    size_t words = 0;
    bool in_word = false;
    for (size_t i = 0; i < len; i++) {
        bool space = s_is_space ((unsigned char) text [i]);
        if (space && in_word && words == max_words) {
            return i;
        }
        if (!space && !in_word) {
            words++;
        }
        in_word = !space;
    }
    return len;
}

//  True for a byte allowed in a tool name
static bool
s_is_name (unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
        || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

//  If the request has tools and the last user text holds {{call:NAME}},
//  make the reply a call of NAME: tool_name set, reply its arguments.
//  Returns 1 when it did, 0 when the reply is text, -1 if out of memory.
static int
s_tool_reply (mock_chat_t *self)
{
    if (!self->has_tools || !self->last_user) {
        return 0;
    }
    const char *text = self->last_user;
    size_t len = self->last_user_len;
    const size_t open_len = strlen (CALL_OPEN);
    for (size_t at = 0; at + open_len <= len; at++) {
        if (memcmp (text + at, CALL_OPEN, open_len) != 0) {
            continue;
        }
        size_t name = at + open_len, end = name;
        while (end < len && end - name <= CALL_NAME_MAX && s_is_name ((unsigned char) text [end])) {
            end++;
        }
        if (end == name || end - name > CALL_NAME_MAX || end + 2 > len
        ||  memcmp (text + end, CALL_CLOSE, 2) != 0) {
            continue;
        }
        //  q: the text around the marker, trimmed
        size_t after = end + 2;
        size_t q_len = at + (len - after);
        char *q = malloc (q_len + 1);
        char *tool = strndup (text + name, end - name);
        if (!q || !tool) {
            free (q);
            free (tool);
            return -1;
        }
        memcpy (q, text, at);
        memcpy (q + at, text + after, len - after);
        size_t start = 0;
        while (start < q_len && s_is_space ((unsigned char) q [start])) {
            start++;
        }
        while (q_len > start && s_is_space ((unsigned char) q [q_len - 1])) {
            q_len--;
        }
        //  Text that is not UTF-8 cannot go into JSON: the arguments are
        //  then {"q":""}
        json_t *args = json_pack ("{s:s%}", "q", q + start, q_len - start);
        if (!args) {
            args = json_pack ("{s:s}", "q", "");
        }
        free (q);
        char *dump = args ? json_dumps (args, JSON_COMPACT) : NULL;
        json_decref (args);
        if (!dump) {
            free (tool);
            return -1;
        }
        free (self->reply);
        self->reply = dump;
        self->reply_len = strlen (dump);
        free (self->tool_name);
        self->tool_name = tool;
        self->completion_words = mock_chat_count_words (self->reply, self->reply_len);
        self->finish_reason = "tool_calls";
        return 1;
    }
    return 0;
}

//  The text answer: the echo of the last user message
static int
s_text_reply (mock_chat_t *self)
{
    const char *echo = self->last_user ? self->last_user : "";
    size_t prefix_len = strlen (MOCK_REPLY_PREFIX);
    size_t echo_len = self->last_user ? self->last_user_len : 0;
    free (self->reply);
    self->reply = malloc (prefix_len + echo_len + 1);
    if (!self->reply) {
        return -1;
    }
    memcpy (self->reply, MOCK_REPLY_PREFIX, prefix_len);
    memcpy (self->reply + prefix_len, echo, echo_len);
    self->reply [prefix_len + echo_len] = '\0';
    self->reply_len = prefix_len + echo_len;

    self->completion_words = mock_chat_count_words (self->reply, self->reply_len);
    self->finish_reason = "stop";
    if (self->max_tokens >= 0
    &&  self->completion_words > (size_t) self->max_tokens) {
        self->reply_len = s_cut_words (self->reply, self->reply_len,
                                       (size_t) self->max_tokens);
        self->reply [self->reply_len] = '\0';
        self->completion_words = (size_t) self->max_tokens;
        self->finish_reason = "length";
    }
    return 0;
}

//  Piece boundaries of the reply for a stream of at most `chunks` pieces
static int
s_cut_pieces (mock_chat_t *self, int chunks)
{
    //  Piece boundaries: even byte splits, each moved forward off any
    //  continuation byte; a boundary that lands on the previous one is
    //  dropped so no piece is empty
    if (chunks < 1) {
        chunks = 1;
    }
    free (self->cuts);
    self->cuts = malloc (((size_t) chunks + 1) * sizeof (size_t));
    if (!self->cuts) {
        return -1;
    }
    size_t len = self->reply_len;
    size_t count = 0;
    self->cuts [count++] = 0;
    for (int i = 1; i < chunks; i++) {
        size_t cut = (size_t) ((unsigned long long) len * (unsigned) i / (unsigned) chunks);
        while (cut < len && s_is_continuation ((unsigned char) self->reply [cut])) {
            cut++;
        }
        if (cut > self->cuts [count - 1] && cut < len) {
            self->cuts [count++] = cut;
        }
    }
    self->cuts [count] = len;
    //  An empty reply (impossible with the prefix, but cheap to handle)
    //  still streams as one empty piece
    self->pieces = count;
    return 0;
}

int
mock_chat_finish (mock_chat_t *self, int chunks)
{
    int tool = s_tool_reply (self);
    if (tool < 0) {
        return -1;
    }
    if (tool == 0 && s_text_reply (self) != 0) {
        return -1;
    }
    if (self->prompt_words == 0) {
        self->prompt_words = 1;
    }
    return s_cut_pieces (self, chunks);
}

void
mock_chat_piece (const mock_chat_t *self, size_t index,
                 const char **text, size_t *len)
{
    *text = self->reply + self->cuts [index];
    *len = self->cuts [index + 1] - self->cuts [index];
}
